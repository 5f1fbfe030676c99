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

/// Where a catch-up reads: the sequencer's stream, and the other nodes' logs for what the
/// stream no longer holds. The cluster reads Redis and the peers' HTTP API; the cluster
/// simulation reads its own stand-ins.
pub trait Sources {
    /// The stream's batches from the one holding `after + 1` up to `target`; empty, or
    /// starting later, when the stream no longer holds `after + 1`.
    fn stream(
        &self,
        room: &RoomKey,
        after: u64,
        target: u64,
    ) -> impl Future<Output = Result<Vec<OrderedBatch>, ClusterError>>;

    /// One page of history after `after`, up to `upto`, from the first peer that has some.
    fn peers(
        &self,
        room: &RoomKey,
        after: u64,
        upto: u64,
    ) -> impl Future<Output = Result<HistoryPage, ClusterError>>;
}

impl Sources for ClusterHandle {
    async fn stream(
        &self,
        room: &RoomKey,
        after: u64,
        target: u64,
    ) -> Result<Vec<OrderedBatch>, ClusterError> {
        read_stream(self, room, after, target).await
    }

    async fn peers(
        &self,
        room: &RoomKey,
        after: u64,
        upto: u64,
    ) -> Result<HistoryPage, ClusterError> {
        read_from_peers(self, room, after, upto).await
    }
}

/// Everything between `applied` (exclusive) and `target` (inclusive), in order; or as far as
/// the sources reach: what was read is kept even when the rest cannot be, so a room moves up
/// to a hole instead of staying behind everything it could have had (the room finds the rest
/// missing again at its next gap check). An error only when nothing could be read.
pub async fn catch_up(
    sources: &impl Sources,
    room: &RoomKey,
    applied: u64,
    target: u64,
) -> Result<Vec<Step>, ClusterError> {
    let mut pos = applied;
    let mut steps = Vec::new();
    while pos < target {
        match next_step(sources, room, pos, target).await {
            Ok((step, upto)) => {
                pos = upto;
                steps.push(step);
            }
            Err(e) if steps.is_empty() => return Err(e),
            Err(e) => {
                log::warn!("{room}: caught up to {pos} of {target} only: {e}");
                break;
            }
        }
    }
    Ok(steps)
}

/// The next step after `pos`, and the number it reaches.
async fn next_step(
    sources: &impl Sources,
    room: &RoomKey,
    pos: u64,
    target: u64,
) -> Result<(Step, u64), ClusterError> {
    let batches = sources.stream(room, pos, target).await?;
    match batches.first() {
        Some(b) if b.first <= pos + 1 => {
            let upto = batches.last().map_or(pos, OrderedBatch::last);
            Ok((Step::Batches(batches), upto))
        }
        next => {
            let upto = next.map_or(target, |b| b.first - 1);
            let page = sources.peers(room, pos, upto).await?;
            if page.upto <= pos {
                // A source that answers without moving on would loop for ever.
                return Err(ClusterError::HistoryUnavailable {
                    room: room.to_string(),
                    after: pos,
                });
            }
            let upto = page.upto;
            Ok((Step::History(page), upto))
        }
    }
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
    let mut conn = cluster.conn()?;
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
