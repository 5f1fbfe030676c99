//! Bringing a room up to a number: from the Redis stream while it holds the batches, from a
//! peer's log once it does not (trimmed, or lost with Redis).

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

use super::wire::{BatchBody, OrderedBatch};
use super::{ClusterError, ClusterHandle, peers};
use crate::room_key::RoomKey;
use crate::store::HistoryPage;

/// Batches read from the stream per round trip.
const STREAM_PAGE: usize = 1000;

/// Entries read from a peer per request.
const PEER_PAGE: usize = 10_000;

/// What a room applies to catch up, in order.
#[derive(Debug)]
pub enum Step {
    /// Ordered batches from the Redis stream: the room merges them.
    Batches(Vec<OrderedBatch>),
    /// A peer's history: the room replays it (the peer merged it in the same order).
    History(HistoryPage),
}

/// Everything between `applied` (exclusive) and `target` (inclusive), in order.
pub async fn catch_up(
    cluster: &ClusterHandle,
    room: &RoomKey,
    applied: u64,
    target: u64,
) -> Result<Vec<Step>, ClusterError> {
    let mut pos = applied;
    let mut steps = Vec::new();
    while pos < target {
        let batches = read_stream(cluster, room, pos, target).await?;
        match batches.first() {
            Some(b) if b.first <= pos + 1 => {
                pos = batches.last().map_or(pos, OrderedBatch::last);
                steps.push(Step::Batches(batches));
            }
            next => {
                let upto = next.map_or(target, |b| b.first - 1);
                let page = read_from_peers(cluster, room, pos, upto).await?;
                pos = page.upto;
                steps.push(Step::History(page));
            }
        }
    }
    Ok(steps)
}

/// The stream's batches from the one holding `after + 1` up to `target`; empty, or starting
/// later, when the stream no longer holds `after + 1`.
async fn read_stream(
    cluster: &ClusterHandle,
    room: &RoomKey,
    after: u64,
    target: u64,
) -> Result<Vec<OrderedBatch>, ClusterError> {
    let key = cluster.keys().log(room);
    let mut conn = cluster.conn();
    let counters = cluster.counters();
    // A batch is filed under its first number: the one holding `after + 1` may start before.
    counters.round_trips.inc_by(2);
    let before: StreamRangeReply = conn
        .xrevrange_count(&key, format!("{}-0", after + 1), "-", 1)
        .await?;
    let start = match before.ids.first().and_then(parse_entry) {
        Some(b) if b.last() > after => b.first,
        _ => after + 1,
    };
    let reply: StreamRangeReply = conn
        .xrange_count(
            &key,
            format!("{start}-0"),
            format!("{target}-0"),
            STREAM_PAGE,
        )
        .await?;
    Ok(reply
        .ids
        .iter()
        .filter_map(parse_entry)
        .filter(|b| b.last() > after)
        .collect())
}

fn parse_entry(entry: &redis::streams::StreamId) -> Option<OrderedBatch> {
    let first = entry.id.split_once('-')?.0.parse().ok()?;
    let body: String = redis::from_redis_value(entry.map.get("e")?.clone()).ok()?;
    Some(OrderedBatch {
        first,
        body: BatchBody::decode(&body)?,
    })
}

/// One page of history after `after`, from the first peer that has some.
async fn read_from_peers(
    cluster: &ClusterHandle,
    room: &RoomKey,
    after: u64,
    upto: u64,
) -> Result<HistoryPage, ClusterError> {
    let token = cluster.settings().peer_token.clone();
    for peer in cluster.peers() {
        cluster.counters().peer_reads.inc();
        match peers::read_history(&peer, token.as_deref(), room, after, upto, PEER_PAGE).await {
            Ok(page) if page.upto > after => return Ok(page),
            Ok(_) => {}
            Err(e) => log::warn!("reading {room} history from a peer: {e}"),
        }
    }
    Err(ClusterError::HistoryUnavailable {
        room: room.to_string(),
        after,
    })
}
