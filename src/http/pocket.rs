//! Pocket's HTTP transport (its clients' `useWebSocket: false`): `/sync/push` and
//! `/sync/pull`, each one message through the Pocket codec. Its WebSocket is served like every
//! dialect's (`websocket.rs`).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use synchub_actors::dialects::{DEFAULT_ROOM, Written, binary, drive, rate_limited};
use synchub_actors::pocket::wire::{WireError, code, request_id};
use synchub_actors::pocket::{self, PocketDialect};
use synchub_actors::{Identity, RoomKey};

use super::client_limits::{Client, Refusal};
use super::{AppState, Query, token};

/// The room of an HTTP request. Pocket's HTTP client builds its URLs as
/// `new URL('/sync/push', serverUrl)`, which drops any `?room=`; what it does send is its token.
/// So: `?room=`, else an `X-Pocket-Room` header, else the token's `room` claim (verified when
/// auth is on), else `default`.
fn http_room(req: &HttpRequest, query: &Query, state: &AppState) -> Option<RoomKey> {
    let named = query.get("room").cloned().or_else(|| {
        req.headers()
            .get("x-pocket-room")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let named = named.or_else(|| {
        let token = token(req, query)?;
        if state.config.auth.required {
            state.verifier.verify_access(token).ok()?.1.room
        } else {
            crate::auth::unverified_room(token)
        }
    });
    RoomKey::new(pocket::NAMESPACE, named.as_deref().unwrap_or(DEFAULT_ROOM))
}

fn pocket_error(e: WireError) -> HttpResponse {
    pocket_reply(
        e.to_json(synchub_actors::pocket::wire::now_ms())
            .to_string(),
    )
}

/// Answers with a Pocket reply; errors keep their JSON body and get a matching HTTP status.
fn pocket_reply(body: String) -> HttpResponse {
    let status = match serde_json::from_str::<Value>(&body) {
        Ok(v) if v["type"] == "error" => match v["code"].as_str() {
            Some(code::FORBIDDEN) if v["message"] == "Authentication failed" => {
                StatusCode::UNAUTHORIZED
            }
            Some(code::FORBIDDEN) => StatusCode::FORBIDDEN,
            Some(code::TOO_LARGE) => StatusCode::PAYLOAD_TOO_LARGE,
            Some(code::RATE_LIMITED) => StatusCode::TOO_MANY_REQUESTS,
            Some(code::INTERNAL) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        _ => StatusCode::OK,
    };
    HttpResponse::build(status)
        .content_type(ContentType::json())
        .body(body)
}

/// The message each HTTP endpoint answers: a proxy rule that exposes only one of the paths
/// then exposes only that operation.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Push,
    Pull,
}

impl Endpoint {
    fn message_type(self) -> &'static str {
        match self {
            Endpoint::Push => "push",
            Endpoint::Pull => "pull",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Push => "/sync/push",
            Endpoint::Pull => "/sync/pull",
        }
    }
}

/// The `type` of a message when it is JSON with a string `type`; the codec answers the rest.
fn message_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<Value>,
    }
    match serde_json::from_slice::<Typed>(body).ok()?.kind? {
        Value::String(kind) => Some(kind),
        _ => None,
    }
}

/// Who an HTTP request counts against: its token's user, else its address.
fn client_of(req: &HttpRequest, identity: Option<&Identity>) -> Client {
    match identity {
        Some(id) if id.authenticated => Client::User(id.user_id.clone()),
        _ => req
            .peer_addr()
            .map_or(Client::Unknown, |a| Client::Address(a.ip())),
    }
}

/// A refusal by the per-client limits: 429 with Pocket's retryable error under the request's
/// id, and `Retry-After`.
fn refused(
    state: &AppState,
    dialect: &mut PocketDialect,
    identity: &Identity,
    body: &[u8],
    refusal: Refusal,
) -> HttpResponse {
    state.hub.metrics().limit_hit(refusal.limit());
    let text = match refusal {
        // Word for word what a WebSocket message over the rate gets.
        Refusal::Rate { .. } => rate_limited(&state.hub, dialect, identity, body, binary),
        Refusal::Rooms { max, .. } => WireError::new(
            request_id(body),
            code::RATE_LIMITED,
            format!(
                "Too many rooms for one client (max {max} in {} s)",
                state.client_limits.window().as_secs()
            ),
        )
        .to_json(synchub_actors::pocket::wire::now_ms())
        .to_string(),
    };
    let mut response = pocket_reply(text);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(refusal.retry_after_s()),
    );
    response
}

pub(super) async fn push(
    req: HttpRequest,
    body: web::Bytes,
    query: Query,
    state: web::Data<AppState>,
) -> HttpResponse {
    http(Endpoint::Push, req, body, query, state).await
}

pub(super) async fn pull(
    req: HttpRequest,
    body: web::Bytes,
    query: Query,
    state: web::Data<AppState>,
) -> HttpResponse {
    http(Endpoint::Pull, req, body, query, state).await
}

/// `POST /sync/push` and `POST /sync/pull`: one request through the same codec the WebSocket
/// uses, answered with the same reply, under the per-client limits a WebSocket session has.
async fn http(
    endpoint: Endpoint,
    req: HttpRequest,
    body: web::Bytes,
    query: Query,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(room) = http_room(&req, &query, &state) else {
        return pocket_error(WireError::new(
            None,
            code::INVALID_MESSAGE,
            "Invalid room id: 1-256 characters of [A-Za-z0-9_.:-]",
        ));
    };
    let authenticated = state.authenticate(token(&req, &query));
    let client = client_of(&req, authenticated.as_ref().ok());
    let admitted = state.client_limits.admit(client, &room.room);
    let identity = match authenticated {
        Ok(id) => id,
        // A client spraying bad tokens is held to its address's rate all the same.
        Err(_) if admitted.is_ok() => {
            return pocket_error(WireError::new(
                None,
                code::FORBIDDEN,
                "Authentication failed",
            ));
        }
        Err(_) => Identity::unauthenticated(),
    };
    let mut dialect = pocket::codec(state.hub.settings(), room);
    if let Err(refusal) = admitted {
        return refused(&state, &mut dialect, &identity, &body, refusal);
    }
    if let Some(kind) = message_type(&body).filter(|k| k != endpoint.message_type()) {
        return pocket_error(WireError::new(
            request_id(&body),
            code::INVALID_MESSAGE,
            format!(
                "POST {} takes a {} message, not {kind:?}",
                endpoint.path(),
                endpoint.message_type()
            ),
        ));
    }
    // One request per HTTP call: a session of its own that nothing is broadcast to.
    let outcome = drive(&state.hub, &mut dialect, &identity, &body, binary, true).await;
    if let Some(Written::Text(text)) = outcome.written.into_iter().next() {
        return pocket_reply(text);
    }
    if outcome.authenticate {
        return pocket_error(WireError::new(
            None,
            code::INVALID_MESSAGE,
            "Send the token in the Authorization header over HTTP",
        ));
    }
    pocket_error(WireError::new(None, code::INTERNAL, "No reply"))
}
