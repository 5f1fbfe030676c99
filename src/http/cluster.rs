//! The cluster's HTTP side: the history endpoint peers read when the Redis stream no longer
//! holds what they lack, and the `cluster` figures of `/stats`, `/health` and room stats.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use synchub_actors::admin::{ClusterLink, GetBridgeStatus, HistoryResponse, LiveRoomStatuses};
use synchub_actors::{Hub, RoomKey, RoomStatus, now_ms};

use super::{AppState, admin::admin_room};

/// The most entries one history page carries.
const MAX_HISTORY_PAGE: usize = 50_000;

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    after: u64,
    upto: Option<u64>,
    limit: Option<usize>,
}

/// `GET /cluster/rooms/<ns>/<room>/history?after=N&upto=M&limit=L`: the room's durable log
/// after N (and the records kept outside it), in sequence order, for a peer catching up.
pub(super) async fn history(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let key = match admin_room(&req, &path, &state) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let limit = query
        .limit
        .unwrap_or(MAX_HISTORY_PAGE)
        .clamp(1, MAX_HISTORY_PAGE);
    let upto = query.upto.unwrap_or(u64::MAX);
    match state.hub.history(&key, query.after, upto, limit).await {
        Ok(page) => HttpResponse::Ok().json(HistoryResponse::from_page(page)),
        Err(e) => HttpResponse::InternalServerError().json(json!({"error": e.to_string()})),
    }
}

/// The `cluster` object of `/stats`, from the statuses of the live rooms: `null` on a single
/// node.
pub(super) async fn stats(hub: &Hub, statuses: Vec<RoomStatus>) -> Value {
    let Some(cluster) = hub.cluster() else {
        return Value::Null;
    };
    let bridge = cluster.bridge.send(GetBridgeStatus).await.ok();
    let now = now_ms();
    let peers: Vec<Value> = cluster
        .handle
        .peers()
        .into_iter()
        .map(|p| {
            json!({"node_id": p.node, "url": p.url,
                   "last_heard_ms_ago": (now - p.last_heard_ms).max(0)})
        })
        .collect();
    let rooms: Vec<Value> = positions(cluster, statuses)
        .await
        .iter()
        .map(|(s, redis_seq)| {
            json!({
                "room": format!("{}/{}", s.namespace, s.room),
                "seq": s.seq,
                "durable_seq": s.durable_seq,
                "redis_seq": redis_seq,
                "lag": redis_seq.map(|r| r.saturating_sub(s.seq)),
                "ready": s.replica.as_ref().map(|r| r.ready),
            })
        })
        .collect();
    let m = &hub.metrics().cluster;
    let ordered = m.ordered_changes.get();
    json!({
        "node_id": hub.node_id(),
        "redis": bridge.as_ref().map_or("unknown", |b| b.redis),
        "primary": cluster.handle.primary_address(),
        "pubsub_node": cluster.handle.listening_to(),
        "epoch": cluster.handle.epoch(),
        "healthy": cluster.handle.healthy(),
        "last_echo_ms_ago": bridge.and_then(|b| b.last_echo_ms_ago),
        "peers": peers,
        "rooms": rooms,
        "orders": m.orders.get(),
        "ordered_changes": ordered,
        "redis_round_trips": m.round_trips.get(),
        "redis_round_trips_per_change": if ordered == 0 {
            0.0
        } else {
            m.round_trips.get() as f64 / ordered as f64
        },
        "gaps_repaired": m.gaps_repaired.get(),
        "catch_ups": m.catch_ups.get(),
        "peer_reads": m.peer_reads.get(),
        "epoch_changes": m.epoch_changes.get(),
    })
}

/// Each room's status with its counter in Redis (`None` while Redis does not answer).
async fn positions(
    cluster: &ClusterLink,
    statuses: Vec<RoomStatus>,
) -> Vec<(RoomStatus, Option<u64>)> {
    let keys: Vec<RoomKey> = statuses
        .iter()
        .filter_map(|s| RoomKey::parse(&format!("{}/{}", s.namespace, s.room)))
        .collect();
    let counters = cluster.handle.counters_of(&keys).await.ok();
    statuses
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, counters.as_ref().and_then(|c| c.get(i).copied())))
        .collect()
}

/// Sets the cluster gauges that are only worth computing when someone scrapes `/metrics`.
pub(super) async fn refresh_gauges(hub: &Hub) {
    let Some(cluster) = hub.cluster() else {
        return;
    };
    let m = &hub.metrics().cluster;
    let bridge = cluster.bridge.send(GetBridgeStatus).await.ok();
    m.redis_up
        .set(i64::from(bridge.as_ref().is_some_and(|b| b.redis == "up")));
    m.epoch.reset();
    if let Some(epoch) = cluster.handle.epoch() {
        m.epoch.with_label_values(&[epoch.as_str()]).set(1);
    }
    let statuses = hub
        .directory()
        .send(LiveRoomStatuses)
        .await
        .unwrap_or_default();
    let lags: Vec<u64> = positions(cluster, statuses)
        .await
        .iter()
        .filter_map(|(s, redis_seq)| redis_seq.map(|r| r.saturating_sub(s.seq)))
        .collect();
    m.rooms_behind
        .set(lags.iter().filter(|l| **l > 0).count() as i64);
    m.lag_max
        .set(lags.iter().copied().max().unwrap_or(0) as i64);
}

/// A room's position in the cluster, for its `/stats/rooms/…` answer.
pub(super) async fn room_position(hub: &Hub, key: &RoomKey, seq: u64) -> Value {
    let Some(cluster) = hub.cluster() else {
        return Value::Null;
    };
    match cluster.handle.counter(key).await {
        Ok(redis_seq) => json!({"redis_seq": redis_seq, "lag": redis_seq.saturating_sub(seq)}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// How long the hub waits for a peer's answer about a room.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A room as every other node of the cluster has it (`[]` on a single node): each peer's own
/// answer to `/stats/rooms/…`, or why there is none.
pub(super) async fn room_on_peers(state: &AppState, key: &RoomKey) -> Value {
    let Some(cluster) = state.hub.cluster() else {
        return json!([]);
    };
    let client = awc::Client::builder().timeout(PEER_STATUS_TIMEOUT).finish();
    let token = &state.config.auth.admin_token;
    let mut nodes = Vec::new();
    for peer in cluster.handle.peers() {
        let url = format!(
            "{}/stats/rooms/{}/{}",
            peer.url.trim_end_matches('/'),
            key.namespace,
            key.room
        );
        let mut request = client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = match request.send().await {
            Ok(mut res) if res.status().is_success() => match res.json::<Value>().await {
                Ok(v) => json!({
                    "node_id": peer.node,
                    "seq": v["seq"],
                    "durable_seq": v["durable_seq"],
                    "digest": v["digest"],
                    "sessions": v["sessions"],
                    "live": v["live"],
                }),
                Err(e) => json!({"node_id": peer.node, "error": e.to_string()}),
            },
            Ok(res) => json!({"node_id": peer.node, "error": format!("answered {}", res.status())}),
            Err(e) => json!({"node_id": peer.node, "error": e.to_string()}),
        };
        nodes.push(answer);
    }
    Value::Array(nodes)
}
