//! Admin actions: list and close sessions, publish a change into a room, compact a room. Each
//! is behind the admin token, logged and counted (`synchub_admin_actions_total{action}`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};
use synchub_actors::admin::{CloseSessionById, ListSessions};
use synchub_actors::connection::close_code;
use synchub_actors::dialects::{self, Outcome, Written};
use synchub_actors::storage::RoomLayout;
use synchub_actors::{RoomKey, RoomReply, RoomRequest};

use super::{AppState, unauthorized};

/// The actions counted, as their metric label.
pub(super) const ACTIONS: [&str; 5] = [
    "list_sessions",
    "close_session",
    "publish",
    "compact",
    "backup",
];

/// The close code a session closed by an operator gets: a policy close, which every client
/// treats as a server-side decision and answers by reconnecting after its back-off.
const CLOSED_BY_ADMIN: u16 = close_code::POLICY;
const CLOSED_BY_ADMIN_REASON: &str = "Closed by an administrator";

/// The room an admin path names, in a dialect's namespace, or the response refusing it.
fn room_key(path: &(String, String)) -> Result<RoomKey, Box<HttpResponse>> {
    let Some(dialect) = dialects::find(&path.0) else {
        return Err(Box::new(
            HttpResponse::NotFound().json(json!({"error": "Unknown namespace"})),
        ));
    };
    RoomKey::new(dialect.namespace(), &path.1).ok_or_else(|| {
        Box::new(HttpResponse::BadRequest().json(json!({"error": "Invalid room id"})))
    })
}

/// The room an admin request names, once the request passed the admin check.
pub(super) fn admin_room(
    req: &HttpRequest,
    path: &(String, String),
    state: &AppState,
) -> Result<RoomKey, Box<HttpResponse>> {
    if !state.admin_allowed(req) {
        return Err(Box::new(unauthorized()));
    }
    room_key(path)
}

/// Counts and logs an admin action that was carried out.
fn done(state: &AppState, req: &HttpRequest, action: &'static str, what: &str) {
    state
        .hub
        .metrics()
        .admin_actions
        .with_label_values(&[action])
        .inc();
    let from = req
        .peer_addr()
        .map_or_else(|| "?".to_owned(), |a| a.ip().to_string());
    log::info!("admin {action} {what} (from {from})");
}

/// `GET /admin/sessions`: every session on this node.
pub(super) async fn list_sessions(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    match state.hub.directory().send(ListSessions).await {
        Ok(sessions) => {
            done(
                &state,
                &req,
                "list_sessions",
                &format!("({})", sessions.len()),
            );
            HttpResponse::Ok().json(json!({
                "node_id": state.hub.node_id(),
                "sessions": sessions,
            }))
        }
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// `DELETE /admin/sessions/<id>`: closes the session with a policy close.
pub(super) async fn close_session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let Ok(id) = path.parse::<u64>() else {
        return HttpResponse::BadRequest().json(json!({"error": "A session id is a number"}));
    };
    let close = CloseSessionById {
        id,
        code: CLOSED_BY_ADMIN,
        reason: CLOSED_BY_ADMIN_REASON.into(),
    };
    match state.hub.directory().send(close).await {
        Ok(true) => {
            done(&state, &req, "close_session", &format!("session {id}"));
            HttpResponse::Ok().json(json!({
                "closed": id,
                "code": CLOSED_BY_ADMIN,
                "reason": CLOSED_BY_ADMIN_REASON,
            }))
        }
        Ok(false) => HttpResponse::NotFound().json(json!({"error": "Unknown session"})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// `POST /admin/rooms/<namespace>/<room>/publish`: one client message in the room's dialect
/// (a Pocket `push`, a SyncKit `delta`, a relay `update`), taken through the dialect's codec and
/// the room like a connected client's, so it is merged, made durable and broadcast to every
/// member: the dialect's `publish` in the registry. Answered with the dialect's own replies;
/// 400 when the dialect refused the message.
pub(super) async fn publish(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let key = match admin_room(&req, &path, &state) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let Some(dialect) = dialects::find(key.namespace.as_str()) else {
        return HttpResponse::NotFound().json(json!({"error": "Unknown namespace"}));
    };
    let outcome = match (dialect.publish)(&state.hub, key.clone(), &body).await {
        Ok(outcome) => outcome,
        Err(why) => return HttpResponse::BadRequest().json(json!({"error": why})),
    };
    let replies = replies(outcome);
    let refused = replies
        .iter()
        .any(|r| r["type"] == "error" || r["success"] == false);
    if refused {
        return HttpResponse::BadRequest().json(json!({
            "error": "The dialect refused the message",
            "replies": replies,
        }));
    }
    done(&state, &req, "publish", &key.to_string());
    let seq = match state.hub.call(&key, RoomRequest::Status).await {
        Ok(RoomReply::Status(s)) => Some(s.seq),
        _ => None,
    };
    HttpResponse::Ok().json(json!({
        "namespace": key.namespace.as_str(),
        "room": key.room,
        "seq": seq,
        "replies": replies,
    }))
}

/// The dialect's replies as JSON (binary replies as their length: none of the dialects answers a
/// JSON message in binary).
fn replies(outcome: Outcome) -> Vec<Value> {
    let mut out: Vec<Value> = outcome
        .written
        .into_iter()
        .map(|w| match w {
            Written::Text(t) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
            Written::Binary(b) => json!({"binary_bytes": b.len()}),
        })
        .collect();
    if let Some(closed) = outcome.closed {
        let mut m = Map::new();
        m.insert("type".into(), "error".into());
        m.insert("error".into(), Value::from(closed.reason));
        m.insert("close_code".into(), Value::from(closed.code));
        out.push(Value::Object(m));
    }
    out
}

pub(super) async fn compact_room(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let key = match admin_room(&req, &path, &state) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    match state.hub.store().room_meta(&RoomLayout::new(&key)) {
        Ok(Some(_)) => {}
        Ok(None) => return HttpResponse::NotFound().json(json!({"error": "Unknown room"})),
        Err(e) => return HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
    match state.hub.call(&key, RoomRequest::Compact).await {
        Ok(RoomReply::Compacted(report)) => {
            done(&state, &req, "compact", &key.to_string());
            HttpResponse::Ok().json(report)
        }
        Ok(other) => HttpResponse::InternalServerError()
            .json(json!({"error": format!("unexpected answer {other:?}")})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// Hands what a backup writes to the HTTP response in chunks, waiting while the client is
/// slower than the disk (the channel is bounded).
struct ToResponse {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>,
}

const BACKUP_CHUNK: usize = 64 << 10;

impl std::io::Write for ToResponse {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BACKUP_CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = web::Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

/// `GET /admin/backup`: a consistent backup of every room, streamed while the hub goes on
/// serving (see `synchub backup`).
pub(super) async fn backup(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let store = state.hub.store().clone();
    let failed = tx.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut out = ToResponse {
            buf: Vec::with_capacity(BACKUP_CHUNK),
            tx,
        };
        match store.backup(&mut out) {
            Ok(r) => log::info!(
                "backup of {} rooms, {} bytes, in {:.1} s",
                r.rooms,
                r.bytes,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                log::error!("backup failed: {e}");
                // Ends the response early: the client sees a cut-off file and says so.
                let _ = failed.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    done(&state, &req, "backup", "every room");
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"synchub.backup\"",
        ))
        .streaming(body)
}
