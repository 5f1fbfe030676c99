//! What every request must pass before a route sees it: a body in an encoding the hub can
//! read, and, for a WebSocket upgrade, the protocol version the hub speaks.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, ContentEncoding, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

/// The only WebSocket version there is (RFC 6455); the HTTP layer would also upgrade the drafts'
/// 7 and 8, whose framing differs.
const WEBSOCKET_VERSION: &str = "13";

/// The body encodings the HTTP layer decodes. It passes others through as they are, so a body in
/// one of them would be read as if it were plain.
const DECODED: [ContentEncoding; 4] = [
    ContentEncoding::Identity,
    ContentEncoding::Gzip,
    ContentEncoding::Deflate,
    ContentEncoding::Brotli,
];

pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(refusal) = refusal(req.request()) {
        return Ok(req.into_response(refusal).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn refusal(req: &HttpRequest) -> Option<HttpResponse> {
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        let decoded = encoding
            .to_str()
            .ok()
            .and_then(|e| e.parse::<ContentEncoding>().ok())
            .is_some_and(|e| DECODED.contains(&e));
        if !decoded {
            return Some(HttpResponse::BadRequest().json(json!({
                "error": "Unsupported Content-Encoding: send gzip, deflate, br or none"
            })));
        }
    }
    if is_websocket_upgrade(req) {
        let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
        // Without the header the upgrade is malformed, which the WebSocket layer answers (400).
        if version.is_some_and(|v| v.as_bytes() != WEBSOCKET_VERSION.as_bytes()) {
            // RFC 6455 4.2.2: 426 naming the version the server speaks.
            return Some(
                HttpResponse::UpgradeRequired()
                    .insert_header((
                        header::SEC_WEBSOCKET_VERSION,
                        HeaderValue::from_static(WEBSOCKET_VERSION),
                    ))
                    .json(json!({
                        "error": "Unsupported WebSocket version: this server speaks 13 (RFC 6455)"
                    })),
            );
        }
    }
    None
}

fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}
