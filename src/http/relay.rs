//! The relay dialect: WebSocket at `/relay?channel=` and `/?channel=`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use synchub_actors::relay::{RelayDialect, RelayLimits};
use synchub_actors::session::Session;
use synchub_actors::{Namespace, RoomKey};

use super::{AppState, Query, start_session, token};

fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `GET /`: a relay socket when it is a WebSocket upgrade, else a description of the hub.
pub(super) async fn root(
    req: HttpRequest,
    stream: web::Payload,
    query: Query,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if is_upgrade(&req) {
        return websocket(req, stream, query, state).await;
    }
    Ok(HttpResponse::Ok().json(json!({
        "name": "synchub",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Real-time sync hub for local-first apps",
        "endpoints": {
            "health": "/health",
            "pocket": "/sync",
            "ws": "/ws",
            "relay": "/relay",
            "auth": "/auth",
        },
    })))
}

/// Authentication happens before the upgrade: 401 without a valid token, 403 without read
/// permission on the channel, 400 for an invalid channel name.
pub(super) async fn websocket(
    req: HttpRequest,
    stream: web::Payload,
    query: Query,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let channel = query.get("channel").map_or("default", String::as_str);
    let Some(room) = RoomKey::new(Namespace::Relay, channel) else {
        return Ok(HttpResponse::BadRequest().json(json!({
            "error": "Invalid channel: 1-256 characters of [A-Za-z0-9_.:-]"
        })));
    };
    let identity = match state.authenticate(token(&req, &query)) {
        Ok(identity) => identity,
        Err(e) => {
            log::debug!("relay upgrade refused: {e}");
            return Ok(HttpResponse::Unauthorized().json(json!({"error": "Authentication failed"})));
        }
    };
    if !identity.permissions.can_read(&room.room) {
        return Ok(HttpResponse::Forbidden().json(json!({"error": "Permission denied"})));
    }
    start_session(
        Session::new(state.hub.clone(), dialect(&state, room), identity),
        &req,
        stream,
        &state,
    )
}

/// The relay codec for one channel.
pub(super) fn dialect(state: &AppState, room: RoomKey) -> RelayDialect {
    let settings = state.hub.settings();
    RelayDialect::new(
        room,
        state.hub.site_id().to_owned(),
        RelayLimits {
            max_per_message: settings.relay_max_changes_per_message,
            max_json_depth: settings.max_json_depth,
            max_value_bytes: settings.max_document_bytes,
        },
    )
}
