//! Every dialect's WebSocket, as its description in the registry has it: the room its query
//! names, the token and the permission checks, then a session of the dialect. And `/`, which is
//! the socket of the dialect served there for an upgrade and the hub's description otherwise.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};
use synchub_actors::connection::{Limit, Upgrade};
use synchub_actors::dialects::{AuthRefusal, DEFAULT_ROOM, DIALECTS, DialectSpec};
use synchub_actors::{AuthError, Identity, RoomKey};

use super::upgrade::HandOver;
use super::{AppState, Query, origin_refused, token};

/// Serves every dialect's upgrade on its paths, and `/`.
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    for &dialect in DIALECTS {
        for &path in dialect.websocket.paths.iter().filter(|p| **p != "/") {
            cfg.route(
                path,
                web::get().to(
                    move |req: HttpRequest, query: Query, state: web::Data<AppState>| {
                        upgrade(dialect, req, query, state)
                    },
                ),
            );
        }
    }
    cfg.route("/", web::get().to(root));
}

/// Refused before the upgrade: 400 for an invalid room name, 403 without read permission on
/// the room (or, for a socket not bound to a room, for a token that can read nothing at all);
/// a refused token as the dialect's clients expect it ([`AuthRefusal`]).
async fn upgrade(
    dialect: &'static DialectSpec,
    req: HttpRequest,
    query: Query,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let route = &dialect.websocket;
    let room = match route.room {
        None => None,
        Some(param) => {
            let name = query.get(param.name).map_or(DEFAULT_ROOM, String::as_str);
            let Some(room) = RoomKey::new(dialect.namespace(), name) else {
                return Ok(HttpResponse::BadRequest().json(json!({"error": param.invalid})));
            };
            Some(room)
        }
    };
    let token = token(&req, &query);
    let identity = if state.config.auth.required && token.is_none() && route.token_in_band {
        Identity::unauthenticated()
    } else {
        match state.authenticate(token) {
            Ok(identity) => identity,
            Err(e) => return refuse(dialect, e, &req, &state),
        }
    };
    let allowed = match &room {
        Some(room) => identity.permissions.can_read(&room.room),
        None => !identity.authenticated || identity.permissions.grants_anything(),
    };
    if !allowed {
        return Ok(HttpResponse::Forbidden().json(json!({"error": "Permission denied"})));
    }
    let session = (dialect.open)(&state.hub, room, identity);
    start_session(session, &req, &state)
}

fn refuse(
    dialect: &DialectSpec,
    e: AuthError,
    req: &HttpRequest,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error> {
    log::debug!("{} connection refused: {e}", dialect.name());
    state
        .hub
        .metrics()
        .connections_refused
        .with_label_values(&["auth"])
        .inc();
    match dialect.websocket.refused {
        AuthRefusal::Unauthorized => {
            Ok(HttpResponse::Unauthorized().json(json!({"error": "Authentication failed"})))
        }
        AuthRefusal::Close { code, reason } => hand_over(req, HandOver::Refuse { code, reason }),
    }
}

fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `GET /`: the socket of the dialect served at `/` when it is a WebSocket upgrade, else a
/// description of the hub.
async fn root(
    req: HttpRequest,
    query: Query,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let at_root = DIALECTS.iter().find(|d| d.websocket.paths.contains(&"/"));
    if let Some(&dialect) = at_root
        && is_upgrade(&req)
    {
        return upgrade(dialect, req, query, state).await;
    }
    let mut endpoints = Map::new();
    endpoints.insert("health".into(), Value::from("/health"));
    for dialect in DIALECTS {
        if let Some(path) = dialect.websocket.paths.first() {
            endpoints.insert(dialect.name().into(), Value::from(*path));
        }
    }
    endpoints.insert("auth".into(), Value::from("/auth"));
    Ok(HttpResponse::Ok().json(json!({
        "name": "synchub",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Real-time sync hub for local-first apps",
        "endpoints": endpoints,
    })))
}

/// Upgrades to `session`, unless the page's origin is not allowed (403) or the client's address
/// already holds `limits.max_connections_per_ip` connections (429), both before the upgrade.
/// The session keeps the address's slot.
fn start_session(
    session: Box<dyn Upgrade>,
    req: &HttpRequest,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error> {
    if let Some(refused) = origin_refused(req, state) {
        return Ok(refused);
    }
    let slot = match req.peer_addr().map(|a| a.ip()) {
        Some(ip) => match state.ip_slots.acquire(ip) {
            Some(slot) => Some(slot),
            None => {
                state.hub.metrics().limit_hit(Limit::ConnectionsPerIp);
                return Ok(HttpResponse::TooManyRequests()
                    .json(json!({"error": "Too many connections from this address"})));
            }
        },
        None => None,
    };
    hand_over(req, HandOver::Session { session, slot })
}

/// Accepts the handshake of `req`; the connection then goes to `what` (see [`HandOver`]). A
/// malformed handshake is answered 400, and `what` dropped.
fn hand_over(req: &HttpRequest, what: HandOver) -> Result<HttpResponse, actix_web::Error> {
    let mut accepted =
        HttpResponse::from(actix_http::ws::handshake(req.head())?.finish()).map_into_boxed_body();
    accepted.extensions_mut().insert(what);
    Ok(accepted)
}
