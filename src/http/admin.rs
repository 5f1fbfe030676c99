//! Health, stats, metrics and room administration.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use synchub_actors::directory::{GetCensus, GetRoomStatus};
use synchub_actors::metrics::ActorKind;
use synchub_actors::room::{RoomReply, RoomRequest};
use synchub_actors::store::RoomLayout;
use synchub_actors::{Namespace, RoomKey};

use super::{AppState, unauthorized};

pub(super) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let hub = &state.hub;
    let storage_ok = hub.storage_healthy();
    let cluster_ok = hub.cluster_healthy();
    let healthy = storage_ok && cluster_ok;
    let census = hub.directory().send(GetCensus).await.ok();
    let cluster = match hub.cluster() {
        None => Value::Null,
        Some(c) => json!({
            "bridge": if cluster_ok { "ok" } else { "stuck" },
            "epoch": c.handle.epoch(),
            "peers": c.handle.peers().len(),
        }),
    };
    let body = json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        // Seconds with a fraction, as SyncKit's server reports it (`process.uptime()`).
        "uptime": (hub.uptime().as_secs_f64() * 1000.0).round() / 1000.0,
        "uptime_s": hub.uptime().as_secs(),
        "node_id": hub.node_id(),
        "storage": if storage_ok { "ok" } else { "failing" },
        "cluster": cluster,
        "connections": {
            "totalConnections": census.as_ref().map_or(0, |c| c.sessions_total),
            "totalUsers": census.as_ref().map_or(0, |c| c.users),
            "totalClients": census.as_ref().map_or(0, |c| c.sessions_total),
        },
        "documents": {
            "totalDocuments": census.as_ref().and_then(|c| c.rooms.get("synckit").copied()).unwrap_or(0),
        },
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub(super) async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    HttpResponse::Ok().json(figures(&state).await)
}

/// How often `/stats/stream` sends the figures.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// `GET /stats/stream`: the figures of `/stats` as server-sent events, one `stats` event a
/// second, for as long as the client stays.
pub(super) async fn stats_stream(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let ticks = tokio::time::interval(STREAM_EVERY);
    let events = futures_util::stream::unfold((state, ticks), |(state, mut ticks)| async move {
        ticks.tick().await;
        let event = format!("event: stats\ndata: {}\n\n", figures(&state).await);
        Some((
            Ok::<_, actix_web::Error>(web::Bytes::from(event)),
            (state, ticks),
        ))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Proxies that buffer responses (nginx) would hold the events back.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}

/// What `/stats` reports.
async fn figures(state: &AppState) -> Value {
    let hub = &state.hub;
    let m = hub.metrics();
    let census = hub.directory().send(GetCensus).await.unwrap_or_default();
    let mut actors = serde_json::Map::new();
    {
        let mut window = state.rates.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = window.at.elapsed().as_secs_f64();
        let refresh = elapsed >= 1.0 || window.counts.is_empty();
        for kind in ActorKind::ALL {
            let series = m.actor(kind);
            let kind = kind.as_str();
            let handled = series.messages.get();
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
                    "count": series.count.get(),
                    "messages": handled,
                    "message_rate": window.rates.get(kind).copied().unwrap_or(0.0),
                    "mailbox_backlog": series.backlog.get().max(0),
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
    let frames: serde_json::Map<String, Value> = Namespace::ALL
        .iter()
        .map(|ns| {
            let d = ns.as_str();
            let counts = json!({
                "in": m.frames_in.with_label_values(&[d]).get(),
                "out": m.frames_out.with_label_values(&[d]).get(),
            });
            (d.to_owned(), counts)
        })
        .collect();
    json!({
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
            "by_namespace": census.rooms,
            "started_total": m.rooms_started.get(),
            "stopped_total": m.rooms_stopped.get(),
        },
        "actors": actors,
        "changes": changes,
        "frames": frames,
        "limits": m.limits(),
        "storage": {
            "durability": state.config.storage.durability,
            "healthy": hub.storage_healthy(),
            "flushes": flushes,
            "flush_errors": m.flush_errors.get(),
            "batch_size_mean": mean(m.flush_batch.get_sample_sum(), batch_count),
            "batched_commits": m.flush_batch.get_sample_sum() as u64,
            "changes_per_flush_mean": mean(m.flush_changes.get_sample_sum(), batch_count),
            "flush_latency_ms_mean": mean(m.flush_seconds.get_sample_sum() * 1000.0, latency_count),
            "size_on_disk_bytes": hub.store().size_on_disk(),
        },
        "cluster": super::cluster::stats(hub).await,
    })
}

/// The room an admin path names, or the response refusing it.
pub(super) fn room_key(path: &(String, String)) -> Result<RoomKey, Box<HttpResponse>> {
    let Some(ns) = Namespace::parse(&path.0) else {
        return Err(Box::new(
            HttpResponse::NotFound().json(json!({"error": "Unknown namespace"})),
        ));
    };
    RoomKey::new(ns, &path.1).ok_or_else(|| {
        Box::new(HttpResponse::BadRequest().json(json!({"error": "Invalid room id"})))
    })
}

/// The room an admin request names, once the request passed the admin check.
fn admin_room(
    req: &HttpRequest,
    path: &(String, String),
    state: &AppState,
) -> Result<RoomKey, Box<HttpResponse>> {
    if !state.admin_allowed(req) {
        return Err(Box::new(unauthorized()));
    }
    room_key(path)
}

pub(super) async fn room_stats(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let key = match admin_room(&req, &path, &state) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    match state
        .hub
        .directory()
        .send(GetRoomStatus { key: key.clone() })
        .await
    {
        Ok(Ok(Some(mut status))) => {
            // In a cluster a room at rest may be behind: loading it catches it up, so what is
            // reported is where every node that has the room converges.
            if !status.live && state.hub.cluster().is_some() {
                match state.hub.call(&key, RoomRequest::Status).await {
                    Ok(RoomReply::Status(live)) => status = live,
                    Ok(_) => {}
                    Err(e) => log::warn!("{key}: cannot bring the room up to date: {e}"),
                }
            }
            let cluster = super::cluster::room_position(&state.hub, &key, status.seq).await;
            let mut body = serde_json::to_value(&status).unwrap_or(Value::Null);
            if let Some(o) = body.as_object_mut()
                && !cluster.is_null()
            {
                o.insert("cluster".into(), cluster);
            }
            HttpResponse::Ok().json(body)
        }
        Ok(Ok(None)) => HttpResponse::NotFound().json(json!({"error": "Unknown room"})),
        Ok(Err(e)) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
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
        Ok(RoomReply::Compacted(report)) => HttpResponse::Ok().json(report),
        Ok(other) => HttpResponse::InternalServerError()
            .json(json!({"error": format!("unexpected answer {other:?}")})),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

pub(super) async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    super::cluster::refresh_gauges(&state.hub).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.hub.metrics().render())
}
