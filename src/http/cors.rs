//! CORS for the endpoints browser apps call with `fetch` (Pocket's HTTP transport, SyncKit's
//! auth): a page of an origin `server.allowed_origins` admits gets the preflight answered and
//! the headers that let it read the response; a page of any other origin gets 403 and no CORS
//! header, as its WebSocket upgrade would.

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{Route, web};

use super::{AppState, origin_refused};

/// How long a browser may keep a preflight's answer: the allowed origins change only with a
/// restart.
const PREFLIGHT_MAX_AGE_S: usize = 600;

/// Serves `route` at `path` with CORS.
pub(super) fn for_browsers(cfg: &mut web::ServiceConfig, path: &str, route: Route) {
    cfg.service(
        web::resource(path)
            .wrap(cors())
            // Outermost: an origin that is not allowed never reaches CORS (nor the handler).
            .wrap(from_fn(refuse_foreign_origin))
            .route(route),
    );
}

/// The origin was checked by [`refuse_foreign_origin`]; what is left to say is which requests
/// a page may make: the methods and headers of these endpoints' clients.
fn cors() -> Cors {
    Cors::default()
        .allow_any_origin()
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::HeaderName::from_static("x-pocket-room"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE_S)
}

async fn refuse_foreign_origin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refused = req
        .app_data::<web::Data<AppState>>()
        .and_then(|state| origin_refused(req.request(), state));
    match refused {
        Some(response) => Ok(req.into_response(response).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}
