//! HTTP routes: every dialect's WebSocket upgrade, Pocket's HTTP transport, the token
//! endpoints, health, stats, metrics, the dashboard and the admin endpoints.

mod admin;
mod client_limits;
mod cluster;
mod cors;
mod dashboard;
mod pocket;
pub(crate) mod recorder;
mod request_checks;
mod stats;
mod tokens;
pub mod upgrade;
mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use synchub_actors::connection::{IpSlots, Limit};
use synchub_actors::{AuthError, Hub, Identity, TokenVerifier};

use crate::auth::JwtVerifier;
use crate::config::Config;
pub use request_checks::check as check_request;

/// What every route shares.
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub verifier: Arc<JwtVerifier>,
    /// The last ten minutes of figures, sampled by [`start_recording`].
    pub(crate) recorder: Mutex<recorder::Recorder>,
    /// Open WebSocket connections per client address.
    pub(crate) ip_slots: IpSlots,
    /// The message rate and rooms of clients that come over HTTP.
    pub(crate) client_limits: client_limits::ClientLimits,
}

impl AppState {
    pub fn new(hub: Hub, config: Arc<Config>, verifier: Arc<JwtVerifier>) -> AppState {
        for action in admin::ACTIONS {
            hub.metrics().admin_actions.with_label_values(&[action]);
        }
        AppState {
            hub,
            ip_slots: IpSlots::new(config.limits.max_connections_per_ip),
            client_limits: client_limits::ClientLimits::new(
                config.limits.max_messages_per_second,
                config.limits.max_rooms_per_session,
                std::time::Duration::from_secs(config.server.room_idle_timeout_s.max(1)),
            ),
            config,
            verifier,
            recorder: Mutex::default(),
        }
    }

    /// The caller's identity: anonymous with auth off, else the verified token.
    pub(crate) fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        if !self.config.auth.required {
            return Ok(Identity::anonymous());
        }
        self.verifier.verify(token.ok_or(AuthError::Missing)?)
    }

    /// Takes one sample of the hub's figures.
    pub(crate) fn record(&self) {
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(self.hub.metrics());
    }

    /// Admin endpoints need the admin token when one is configured. Without one they are open
    /// only in development mode (auth off); with auth required they are closed to everyone.
    pub(crate) fn admin_allowed(&self, req: &HttpRequest) -> bool {
        let Some(expected) = &self.config.auth.admin_token else {
            return !self.config.auth.required;
        };
        bearer(req).is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
    }
}

/// Samples the hub's figures every [`recorder::EVERY`] for as long as the state lives (the task
/// holds it weakly, so it never keeps a stopped hub's storage open).
pub fn start_recording(state: &web::Data<AppState>) -> actix_web::rt::task::JoinHandle<()> {
    let weak = Arc::downgrade(&state.clone().into_inner());
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(recorder::EVERY);
        loop {
            ticks.tick().await;
            match weak.upgrade() {
                Some(state) => state.record(),
                None => break,
            }
        }
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub(crate) type Query = web::Query<HashMap<String, String>>;

/// The token from `?token=` or `Authorization: Bearer`.
pub(crate) fn token<'a>(req: &'a HttpRequest, query: &'a Query) -> Option<&'a str> {
    query
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(req))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // What browser apps call with `fetch`: answered to pages of the allowed origins.
    cors::for_browsers(cfg, "/sync/push", web::post().to(pocket::push));
    cors::for_browsers(cfg, "/sync/pull", web::post().to(pocket::pull));
    cors::for_browsers(cfg, "/auth/verify", web::post().to(tokens::verify));
    cors::for_browsers(cfg, "/auth/me", web::get().to(tokens::me));
    cors::for_browsers(cfg, "/auth/refresh", web::post().to(tokens::refresh));
    cors::for_browsers(cfg, "/auth/login", web::post().to(tokens::login));
    websocket::routes(cfg);
    cfg.route("/health", web::get().to(stats::health))
        .route("/stats", web::get().to(stats::stats))
        .route("/stats/stream", web::get().to(stats::stats_stream))
        .route("/stats/history", web::get().to(stats::stats_history))
        .route(
            "/stats/rooms/{namespace}/{room}",
            web::get().to(stats::room_stats),
        )
        .route("/metrics", web::get().to(stats::metrics))
        .route("/dashboard", web::get().to(dashboard::page))
        .route("/dashboard/{asset}", web::get().to(dashboard::asset))
        .route("/admin/sessions", web::get().to(admin::list_sessions))
        .route("/admin/backup", web::get().to(admin::backup))
        .route(
            "/admin/sessions/{id}",
            web::delete().to(admin::close_session),
        )
        .route(
            "/admin/rooms/{namespace}/{room}/publish",
            web::post().to(admin::publish),
        )
        .route(
            "/admin/rooms/{namespace}/{room}/compact",
            web::post().to(admin::compact_room),
        )
        .route(
            "/cluster/rooms/{namespace}/{room}/history",
            web::get().to(cluster::history),
        );
}

/// Every error the HTTP layer answers on its own (a body over the limit, a bad
/// `Content-Encoding`, an unknown route) is JSON `{"error": …}` like the hub's own errors.
pub fn json_errors<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(actix_web::middleware::ErrorHandlerResponse::Response(
            res.map_into_left_body(),
        ));
    }
    let status = res.status();
    let message = match res.response().error() {
        Some(e) => error_text(e),
        None => status.canonical_reason().unwrap_or("Error").to_owned(),
    };
    let (req, res) = res.into_parts();
    let mut body = HttpResponse::build(status);
    // The headers stay (those of CORS among them, so a page can read the error), but not those
    // describing the body being replaced.
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            body.append_header((name.clone(), value.clone()));
        }
    }
    let body = body.json(json!({ "error": message }));
    Ok(actix_web::middleware::ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(req, body).map_into_right_body(),
    ))
}

/// What a client is told of an error the HTTP layer met: a sentence, never the decoder's own
/// description of its state.
fn error_text(e: &actix_web::Error) -> String {
    use actix_web::error::{JsonPayloadError, PayloadError};
    let payload = e
        .as_error::<PayloadError>()
        .or_else(|| match e.as_error::<JsonPayloadError>() {
            Some(JsonPayloadError::Payload(p)) => Some(p),
            _ => None,
        });
    match payload {
        Some(PayloadError::Overflow) => "Request body too large".into(),
        Some(
            PayloadError::EncodingCorrupted | PayloadError::Incomplete(_) | PayloadError::Io(_),
        ) => "Request body cut short, or not valid in its Content-Encoding".into(),
        Some(_) => "Request body could not be read".into(),
        None => e.to_string(),
    }
}

pub(crate) fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({"error": "Admin token required"}))
}

/// A browser page from an origin not in `server.allowed_origins` may not open a socket nor call
/// the endpoints browser apps use; answered 403 (before the upgrade, or before the preflight).
/// Requests without an `Origin` (not from a browser) pass.
pub(crate) fn origin_refused(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let allowed = &state.config.server.allowed_origins;
    if allowed.is_empty() {
        return None;
    }
    let origin = req.headers().get(header::ORIGIN)?;
    let ok = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    if ok {
        return None;
    }
    state.hub.metrics().limit_hit(Limit::Origin);
    Some(HttpResponse::Forbidden().json(json!({"error": "Origin not allowed"})))
}
