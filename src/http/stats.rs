//! What the hub reports about itself: health, `/stats` (once, as a stream, and the last ten
//! minutes), a room's status, and the Prometheus metrics.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use synchub_actors::admin::{ActorKind, GetCensus, GetRoomStatus, ListSessions, LiveRoomStatuses};
use synchub_actors::dialects::DIALECTS;
use synchub_actors::{RoomKey, RoomReply, RoomRequest, RoomStatus};

use super::{AppState, admin::admin_room, recorder, unauthorized};

pub(super) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let hub = &state.hub;
    let storage_problem = hub.storage_problem();
    let cluster_ok = hub.cluster_healthy();
    let healthy = storage_problem.is_none() && cluster_ok;
    let census = hub.directory().send(GetCensus).await.ok();
    // SyncKit's server reports its documents: the live rooms of the dialects whose rooms are
    // one document each.
    let documents: usize = census.as_ref().map_or(0, |c| {
        DIALECTS
            .iter()
            .filter(|d| d.rooms.room_is_document)
            .filter_map(|d| c.rooms.get(&d.namespace()))
            .sum()
    });
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
        // "ok", or why writes are refused ("disk full", or the error).
        "storage": storage_problem.as_deref().unwrap_or("ok"),
        "cluster": cluster,
        "connections": {
            "totalConnections": census.as_ref().map_or(0, |c| c.sessions_total),
            "totalUsers": census.as_ref().map_or(0, |c| c.users),
            "totalClients": census.as_ref().map_or(0, |c| c.sessions_total),
        },
        "documents": {
            "totalDocuments": documents,
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

/// `GET /stats/history`: the samples of the last ten minutes, oldest first.
pub(super) async fn stats_history(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.admin_allowed(&req) {
        return unauthorized();
    }
    let recorder = state.recorder.lock().unwrap_or_else(|p| p.into_inner());
    let samples: Vec<_> = recorder.samples().collect();
    HttpResponse::Ok().json(json!({
        "every_s": recorder::EVERY.as_secs(),
        "keep": recorder::KEEP,
        "dialects": dialect_names(),
        "samples": samples,
    }))
}

/// The most rooms `/stats` lists one by one; the busiest come first.
const LISTED_ROOMS: usize = 200;

/// What `/stats` reports.
async fn figures(state: &AppState) -> Value {
    let hub = &state.hub;
    let m = hub.metrics();
    let census = hub.directory().send(GetCensus).await.unwrap_or_default();
    let statuses = hub
        .directory()
        .send(LiveRoomStatuses)
        .await
        .unwrap_or_default();
    let latest = state
        .recorder
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latest()
        .cloned();
    let mut actors = serde_json::Map::new();
    for kind in ActorKind::ALL {
        let series = m.actor(kind);
        let kind = kind.as_str();
        let rate = latest
            .as_ref()
            .and_then(|s| s.messages_per_s.get(kind).copied());
        actors.insert(
            kind.into(),
            json!({
                "count": series.count.get(),
                "messages": series.messages.get(),
                "message_rate": rate.unwrap_or(0.0),
                "mailbox_backlog": series.backlog.get().max(0),
            }),
        );
    }
    let flushes = m.flushes.get();
    let batch_count = m.flush_batch.get_sample_count();
    let latency_count = m.flush_seconds.get_sample_count();
    let mean = |sum: f64, n: u64| if n == 0 { 0.0 } else { sum / n as f64 };
    let counter = |v: &prometheus::IntCounterVec, d: &str| v.with_label_values(&[d]).get();
    let changes = per_dialect(|d| Value::from(counter(&m.changes, d)));
    let frames =
        per_dialect(|d| json!({"in": counter(&m.frames_in, d), "out": counter(&m.frames_out, d)}));
    let connections = per_dialect(
        |d| json!({"connects": counter(&m.connects, d), "disconnects": counter(&m.disconnects, d)}),
    );
    // Every dialect's count, by its name, beside the totals.
    let mut sessions = serde_json::Map::new();
    sessions.insert("total".into(), json!(census.sessions_total));
    for dialect in DIALECTS {
        let n = census
            .sessions
            .get(&dialect.namespace())
            .copied()
            .unwrap_or(0);
        sessions.insert(dialect.name().into(), json!(n));
    }
    sessions.insert("users".into(), json!(census.users));
    json!({
        "node_id": hub.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": hub.uptime().as_secs(),
        // The names every per-dialect figure is keyed by, in the registry's order.
        "dialects": dialect_names(),
        "health": {
            "storage": hub.storage_problem().unwrap_or_else(|| "ok".into()),
            "cluster": hub.cluster().map(|_| if hub.cluster_healthy() { "ok" } else { "stuck" }),
        },
        "sessions": sessions,
        "connections": connections,
        "rooms": {
            "active": census.rooms_active,
            "by_namespace": census.rooms,
            "started_total": m.rooms_started.get(),
            "stopped_total": m.rooms_stopped.get(),
            "list": room_rows(&statuses),
        },
        "actors": actors,
        "changes": changes,
        "frames": frames,
        "limits": m.limits(),
        "rates": latest,
        "storage": {
            "durability": state.config.storage.durability,
            "healthy": hub.storage_healthy(),
            "problem": hub.storage_problem(),
            "flushes": flushes,
            "flush_errors": m.flush_errors.get(),
            "recoveries": m.storage_recoveries.get(),
            "batch_size_mean": mean(m.flush_batch.get_sample_sum(), batch_count),
            "batched_commits": m.flush_batch.get_sample_sum() as u64,
            "changes_per_flush_mean": mean(m.flush_changes.get_sample_sum(), batch_count),
            "flush_latency_ms_mean": mean(m.flush_seconds.get_sample_sum() * 1000.0, latency_count),
            "size_on_disk_bytes": hub.store().size_on_disk(),
        },
        "admin_actions": admin_actions(state),
        "cluster": super::cluster::stats(hub, statuses).await,
    })
}

/// One value per dialect, keyed by its name.
fn per_dialect(value: impl Fn(&str) -> Value) -> serde_json::Map<String, Value> {
    DIALECTS
        .iter()
        .map(|d| (d.name().to_owned(), value(d.name())))
        .collect()
}

fn dialect_names() -> Vec<&'static str> {
    DIALECTS.iter().map(|d| d.name()).collect()
}

fn admin_actions(state: &AppState) -> HashMap<&'static str, u64> {
    super::admin::ACTIONS
        .iter()
        .map(|a| {
            (
                *a,
                state
                    .hub
                    .metrics()
                    .admin_actions
                    .with_label_values(&[a])
                    .get(),
            )
        })
        .collect()
}

/// One row per live room, the busiest first, at most [`LISTED_ROOMS`].
fn room_rows(statuses: &[RoomStatus]) -> Vec<Value> {
    let mut rows: Vec<&RoomStatus> = statuses.iter().collect();
    rows.sort_by(|a, b| {
        let rate = |s: &RoomStatus| s.writes_per_s.unwrap_or(0.0);
        rate(b)
            .total_cmp(&rate(a))
            .then(b.sessions.cmp(&a.sessions))
            .then(a.idle_ms.cmp(&b.idle_ms))
    });
    rows.iter()
        .take(LISTED_ROOMS)
        .map(|s| {
            json!({
                "namespace": s.namespace,
                "room": s.room,
                "sessions": s.sessions,
                "seq": s.seq,
                "durable_seq": s.durable_seq,
                "durable_lag": s.seq.saturating_sub(s.durable_seq),
                "writes_per_s": s.writes_per_s.unwrap_or(0.0),
                "idle_ms": s.idle_ms,
                "pending": s.pending,
            })
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct RoomQuery {
    /// Also the room's position on every other node of the cluster.
    #[serde(default)]
    nodes: bool,
    /// Also the room's members and its latest changes.
    #[serde(default)]
    detail: bool,
}

/// How many of a room's latest changes its detail shows.
const RECENT_CHANGES: u64 = 20;

pub(super) async fn room_stats(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<RoomQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let key = match admin_room(&req, &path, &state) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let status = match state
        .hub
        .directory()
        .send(GetRoomStatus { key: key.clone() })
        .await
    {
        Ok(Ok(Some(status))) => status,
        Ok(Ok(None)) => return HttpResponse::NotFound().json(json!({"error": "Unknown room"})),
        Ok(Err(e)) => {
            return HttpResponse::InternalServerError().json(json!({"error": e.to_string()}));
        }
        Err(e) => {
            return HttpResponse::InternalServerError().json(json!({"error": e.to_string()}));
        }
    };
    // In a cluster a room at rest may be behind: loading it catches it up, so what is reported
    // is where every node that has the room converges.
    let status = if !status.live && state.hub.cluster().is_some() {
        match state.hub.call(&key, RoomRequest::Status).await {
            Ok(RoomReply::Status(live)) => live,
            Ok(_) => status,
            Err(e) => {
                log::warn!("{key}: cannot bring the room up to date: {e}");
                status
            }
        }
    } else {
        status
    };
    let cluster = super::cluster::room_position(&state.hub, &key, status.seq).await;
    let mut body = serde_json::to_value(&status).unwrap_or(Value::Null);
    let Some(o) = body.as_object_mut() else {
        return HttpResponse::InternalServerError().json(json!({"error": "status"}));
    };
    o.insert("node_id".into(), Value::from(state.hub.node_id()));
    if !cluster.is_null() {
        o.insert("cluster".into(), cluster);
    }
    if query.detail {
        o.insert("members".into(), members(&state, &key).await);
        o.insert("recent".into(), recent(&state, &key, status.seq).await);
    }
    if query.nodes {
        o.insert(
            "nodes".into(),
            super::cluster::room_on_peers(&state, &key).await,
        );
    }
    HttpResponse::Ok().json(body)
}

/// The sessions on this node that are in the room.
async fn members(state: &AppState, key: &RoomKey) -> Value {
    let sessions = state
        .hub
        .directory()
        .send(ListSessions)
        .await
        .unwrap_or_default();
    let inside: Vec<_> = sessions
        .into_iter()
        .filter(|s| s.dialect == key.namespace && s.rooms.contains(&key.room))
        .collect();
    serde_json::to_value(inside).unwrap_or(Value::Null)
}

/// The room's latest changes, newest last.
async fn recent(state: &AppState, key: &RoomKey, seq: u64) -> Value {
    let after = seq.saturating_sub(RECENT_CHANGES);
    match state
        .hub
        .history(key, after, seq, RECENT_CHANGES as usize)
        .await
    {
        Ok(page) => page
            .entries
            .iter()
            .map(|e| {
                let change: Value = serde_json::from_str(e.body.as_str()).unwrap_or(Value::Null);
                json!({"seq": e.seq, "stream": e.stream, "key": e.key, "change": change})
            })
            .collect(),
        Err(e) => json!({"error": e.to_string()}),
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
