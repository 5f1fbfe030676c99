//! HTTP routes: the WebSocket upgrades, Pocket's HTTP transport, health, stats and metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, ActorContext, StreamHandler};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde_json::{Value, json};
use synchub_actors::directory::{GetCensus, GetRoomStatus};
use synchub_actors::metrics::ACTOR_KINDS;
use synchub_actors::pocket::PocketDialect;
use synchub_actors::pocket::wire::{WireError, code};
use synchub_actors::room::{RoomReply, RoomRequest, SessionId};
use synchub_actors::session::{Action, Dialect, Env, Frame, Session, close_code};
use synchub_actors::{AuthError, Hub, Identity, Namespace, RoomKey, TokenVerifier};

use crate::auth::JwtVerifier;
use crate::config::Config;

/// What every route shares.
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub verifier: Arc<JwtVerifier>,
    rates: Mutex<RateWindow>,
}

/// Per actor kind, the message rate over the window between two `/stats` reads.
struct RateWindow {
    at: Instant,
    counts: HashMap<&'static str, u64>,
    rates: HashMap<&'static str, f64>,
}

impl AppState {
    pub fn new(hub: Hub, config: Arc<Config>, verifier: Arc<JwtVerifier>) -> AppState {
        AppState {
            hub,
            config,
            verifier,
            rates: Mutex::new(RateWindow {
                at: Instant::now(),
                counts: HashMap::new(),
                rates: HashMap::new(),
            }),
        }
    }

    /// The caller's identity: anonymous with auth off, else the verified token.
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        if !self.config.auth.required {
            return Ok(Identity::anonymous());
        }
        self.verifier.verify(token.ok_or(AuthError::Missing)?)
    }

    /// Admin endpoints need the admin token when one is configured.
    fn admin_allowed(&self, req: &HttpRequest) -> bool {
        let expected = &self.config.auth.admin_token;
        if expected.is_empty() {
            return true;
        }
        bearer(req).is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

type Query = web::Query<HashMap<String, String>>;

/// The token from `?token=` or `Authorization: Bearer`.
fn token<'a>(req: &'a HttpRequest, query: &'a Query) -> Option<&'a str> {
    query
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(req))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sync", web::get().to(pocket_ws))
        .route("/sync/push", web::post().to(pocket_http))
        .route("/sync/pull", web::post().to(pocket_http))
        .route("/health", web::get().to(health))
        .route("/stats", web::get().to(stats))
        .route("/stats/rooms/{namespace}/{room}", web::get().to(room_stats))
        .route("/metrics", web::get().to(metrics))
        .route(
            "/admin/rooms/{namespace}/{room}/compact",
            web::post().to(compact_room),
        );
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({"error": "Admin token required"}))
}

/// A WebSocket that is accepted only to be closed with a code, as clients of some dialects
/// expect (Pocket's 4001) rather than an HTTP error.
struct Refused {
    code: u16,
    reason: &'static str,
}

impl Actor for Refused {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(self.code),
            description: Some(self.reason.into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Refused {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, _: &mut Self::Context) {}
}

fn start_ws<A>(
    actor: A,
    req: &HttpRequest,
    stream: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = ws::WebsocketContext<A>>
        + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let max = state.hub.session_settings().codec_max_bytes();
    ws::WsResponseBuilder::new(actor, req, stream)
        .codec(actix_http::ws::Codec::new().max_size(max))
        .frame_size(max)
        .start()
}

fn pocket_room(query: &Query) -> Option<RoomKey> {
    let room = query.get("room").map_or("default", String::as_str);
    RoomKey::new(Namespace::Pocket, room)
}

async fn pocket_ws(
    req: HttpRequest,
    stream: web::Payload,
    query: Query,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let Some(room) = pocket_room(&query) else {
        return Ok(HttpResponse::BadRequest().json(json!({
            "error": "Invalid room id: 1-256 characters of [A-Za-z0-9_.:-]"
        })));
    };
    match state.authenticate(token(&req, &query)) {
        Err(e) => {
            log::debug!("pocket connection refused: {e}");
            state
                .hub
                .metrics()
                .connections_refused
                .with_label_values(&["auth"])
                .inc();
            let refused = Refused {
                code: close_code::AUTH_FAILED,
                reason: "Authentication failed",
            };
            start_ws(refused, &req, stream, &state)
        }
        Ok(identity) => {
            let dialect = PocketDialect::new(room, state.hub.settings().pocket_limits);
            start_ws(
                Session::new(state.hub.clone(), dialect, identity),
                &req,
                stream,
                &state,
            )
        }
    }
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

/// `POST /sync/push` and `POST /sync/pull`: one request through the same codec the WebSocket
/// uses, answered with the same reply.
async fn pocket_http(
    req: HttpRequest,
    body: web::Bytes,
    query: Query,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(room) = pocket_room(&query) else {
        return pocket_error(WireError::new(
            None,
            code::INVALID_MESSAGE,
            "Invalid room id: 1-256 characters of [A-Za-z0-9_.:-]",
        ));
    };
    let identity = match state.authenticate(token(&req, &query)) {
        Ok(id) => id,
        Err(_) => {
            return pocket_error(WireError::new(
                None,
                code::FORBIDDEN,
                "Authentication failed",
            ));
        }
    };
    let mut dialect = PocketDialect::new(room, state.hub.settings().pocket_limits);
    let env = Env {
        session: SessionId(0),
        identity: &identity,
    };
    let max = state.hub.session_settings().max_frame_bytes;
    let mut actions: VecDeque<_> = if body.len() > max {
        dialect.on_oversized(&env, body.len(), max).into()
    } else {
        dialect.on_frame(&env, Frame::Binary(&body)).into()
    };
    while let Some(action) = actions.pop_front() {
        match action {
            Action::Text(text) => return pocket_reply(text),
            Action::Request { room, body, tag } => {
                let reply = state.hub.call(&room, body).await;
                actions.extend(dialect.on_reply(&env, tag, reply));
            }
            Action::Authenticate { .. } => {
                return pocket_error(WireError::new(
                    None,
                    code::INVALID_MESSAGE,
                    "Send the token in the Authorization header over HTTP",
                ));
            }
            Action::Binary(_) | Action::Close { .. } => {}
        }
    }
    pocket_error(WireError::new(None, code::INTERNAL, "No reply"))
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    let hub = &state.hub;
    let storage_ok = hub.storage_healthy();
    let census = hub.directory().send(GetCensus).await.ok();
    let body = json!({
        "status": if storage_ok { "healthy" } else { "degraded" },
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": hub.uptime().as_secs(),
        "uptime_s": hub.uptime().as_secs(),
        "node_id": hub.node_id(),
        "storage": if storage_ok { "ok" } else { "failing" },
        "cluster": Value::Null,
        "connections": {
            "totalConnections": census.as_ref().map_or(0, |c| c.sessions_total),
        },
    });
    if storage_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let hub = &state.hub;
    let m = hub.metrics();
    let census = hub.directory().send(GetCensus).await.unwrap_or_default();
    let mut actors = serde_json::Map::new();
    {
        let mut window = state.rates.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = window.at.elapsed().as_secs_f64();
        let refresh = elapsed >= 1.0 || window.counts.is_empty();
        for kind in ACTOR_KINDS {
            let handled = m.messages.with_label_values(&[kind]).get();
            if refresh {
                let before = window.counts.insert(kind, handled).unwrap_or(0);
                let rate = if elapsed > 0.0 {
                    (handled - before.min(handled)) as f64 / elapsed
                } else {
                    0.0
                };
                window.rates.insert(kind, rate);
            }
            actors.insert(
                kind.into(),
                json!({
                    "count": m.actors.with_label_values(&[kind]).get(),
                    "messages": handled,
                    "message_rate": window.rates.get(kind).copied().unwrap_or(0.0),
                    "mailbox_backlog": m.backlog.with_label_values(&[kind]).get().max(0),
                }),
            );
        }
        if refresh {
            window.at = Instant::now();
        }
    }
    let flushes = m.flushes.get();
    let batch_count = m.flush_batch.get_sample_count();
    let latency_count = m.flush_seconds.get_sample_count();
    let mean = |sum: f64, n: u64| if n == 0 { 0.0 } else { sum / n as f64 };
    let changes: serde_json::Map<String, Value> = Namespace::ALL
        .iter()
        .map(|ns| {
            let n = m.changes.with_label_values(&[ns.as_str()]).get();
            (ns.as_str().to_owned(), Value::from(n))
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "node_id": hub.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": hub.uptime().as_secs(),
        "sessions": {
            "total": census.sessions_total,
            "pocket": census.sessions.get("pocket").copied().unwrap_or(0),
            "synckit": census.sessions.get("synckit").copied().unwrap_or(0),
            "relay": census.sessions.get("relay").copied().unwrap_or(0),
        },
        "rooms": {
            "active": census.rooms_active,
            "started_total": m.rooms_started.get(),
            "stopped_total": m.rooms_stopped.get(),
        },
        "actors": actors,
        "changes": changes,
        "storage": {
            "durability": state.config.storage.durability,
            "healthy": hub.storage_healthy(),
            "flushes": flushes,
            "flush_errors": m.flush_errors.get(),
            "batch_size_mean": mean(m.flush_batch.get_sample_sum(), batch_count),
            "batched_commits": m.flush_batch.get_sample_sum() as u64,
            "flush_latency_ms_mean": mean(m.flush_seconds.get_sample_sum() * 1000.0, latency_count),
            "size_on_disk_bytes": hub.store().size_on_disk(),
        },
        "cluster": Value::Null,
    }))
}

/// The room an admin path names, or the response refusing it.
fn room_key(path: &(String, String)) -> Result<RoomKey, Box<HttpResponse>> {
    let Some(ns) = Namespace::parse(&path.0) else {
        return Err(Box::new(
            HttpResponse::NotFound().json(json!({"error": "Unknown namespace"})),
        ));
    };
    RoomKey::new(ns, &path.1).ok_or_else(|| {
        Box::new(HttpResponse::BadRequest().json(json!({"error": "Invalid room id"})))
    })
}

async fn room_stats(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let key = match room_key(&path) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    match state.hub.directory().send(GetRoomStatus { key }).await {
        Ok(Ok(Some(status))) => HttpResponse::Ok().json(status),
        Ok(Ok(None)) => HttpResponse::NotFound().json(json!({"error": "Unknown room"})),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

async fn compact_room(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let key = match room_key(&path) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    match state.hub.store().room_meta(&key) {
        Ok(Some(_)) => {}
        Ok(None) => return HttpResponse::NotFound().json(json!({"error": "Unknown room"})),
        Err(e) => return HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
    match state.hub.call(&key, RoomRequest::Compact).await {
        Ok(RoomReply::Compacted(report)) => HttpResponse::Ok().json(report),
        Ok(other) => HttpResponse::InternalServerError()
            .json(json!({"error": format!("unexpected answer {other:?}")})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.hub.metrics().render())
}
