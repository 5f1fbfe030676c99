//! Gathers the batches this node's rooms send to be ordered into few Redis calls.
//!
//! Each room has at most one batch at the sequencer, so a busy node has many rooms waiting at
//! once. Sent one script call each, every change cost a Redis round trip, and Redis ran a Lua
//! call per change: one Redis core then capped the whole cluster. Here one task per node queues
//! the batches and sends all that wait for one epoch key (the one epoch with one Redis; a
//! bucket, whose keys share a slot, on a Redis Cluster) as one call of the order script.
//!
//! A group has one call out at a time, and its calls start at least [`SPACING`] apart unless
//! [`ENOUGH_CHANGES`] wait. An idle node therefore sends a lone batch at once (no ack waits for
//! a tick); a node with many quiet rooms gathers what arrives while a call is out, or within the
//! spacing, into the next call; a busy room, whose batches are large already, is not held back.
//! The spacing bounds what a node pays in ack latency for the fewer round trips.

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{ClusterError, Inner, replid_of};
use crate::room_key::RoomKey;

/// The least time between two calls of one group: at 2 500 changes a second on a node, about
/// five changes share a call.
const SPACING: Duration = Duration::from_millis(2);
/// A group with this many changes waiting calls as soon as its last call is back, without
/// waiting the spacing: a busy room gathers its own submits into large batches, and holding
/// them back would only slow it down.
const ENOUGH_CHANGES: usize = 16;
/// At most this many batches, or about this many bytes of them, go in one call, so that one
/// call never holds Redis long; what is left goes in the next call (without waiting the
/// spacing: it holds enough changes).
const MAX_BATCHES_PER_CALL: usize = 256;
const MAX_BYTES_PER_CALL: usize = 1 << 20;

/// Which epoch key a batch's numbers are checked against: `None` with one Redis or behind
/// Sentinel, the bucket on a Redis Cluster.
pub(crate) type Group = Option<usize>;

pub(crate) struct Request {
    /// The room's bucket ([`Keys::bucket_of`](super::Keys::bucket_of)).
    pub group: Group,
    pub room: RoomKey,
    pub changes: usize,
    pub body: String,
    pub reply: oneshot::Sender<Result<u64, ClusterError>>,
}

/// Runs until every sender of `requests` is gone and what they sent is answered.
pub(crate) async fn run(inner: Weak<Inner>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut waiting: BTreeMap<Group, Vec<Request>> = BTreeMap::new();
    let mut pace: HashMap<Group, Pace> = HashMap::new();
    let mut out = FuturesUnordered::new();
    let mut open = true;
    loop {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let ready: Vec<Group> = waiting.keys().copied().collect();
        for group in ready {
            let Some(queue) = waiting.get_mut(&group) else {
                continue;
            };
            match pace.get(&group) {
                Some(Pace::Out) => continue,
                Some(Pace::From(at)) if *at > now && !worth_a_call(queue) => {
                    wake = Some(wake.map_or(*at, |w| w.min(*at)));
                    continue;
                }
                _ => {}
            }
            let batches = take_call(queue);
            if queue.is_empty() {
                waiting.remove(&group);
            }
            let Some(inner) = inner.upgrade() else {
                answer(batches, Err(ClusterError::BridgeGone));
                continue;
            };
            pace.insert(group, Pace::Out);
            out.push(async move {
                let started = Instant::now();
                call(&inner, group, batches).await;
                (group, started)
            });
        }
        if !open && out.is_empty() && waiting.is_empty() {
            return;
        }
        tokio::select! {
            request = requests.recv(), if open => match request {
                Some(request) => {
                    waiting.entry(request.group).or_default().push(request);
                    while let Ok(request) = requests.try_recv() {
                        waiting.entry(request.group).or_default().push(request);
                    }
                }
                None => open = false,
            },
            Some((group, started)) = out.next(), if !out.is_empty() => {
                pace.insert(group, Pace::From(started + SPACING));
            }
            _ = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

/// When a group may call next.
enum Pace {
    /// A call of the group is out.
    Out,
    /// Not before then.
    From(Instant),
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Whether what a group has waiting makes a call worth it before the spacing is up.
fn worth_a_call(queue: &[Request]) -> bool {
    queue.iter().map(|r| r.changes).sum::<usize>() >= ENOUGH_CHANGES
}

/// The batches of the next call, from the front of a group's queue.
fn take_call(queue: &mut Vec<Request>) -> Vec<Request> {
    let mut bytes = 0;
    let mut n = 0;
    for r in queue.iter() {
        if n == MAX_BATCHES_PER_CALL || (n > 0 && bytes + r.body.len() > MAX_BYTES_PER_CALL) {
            break;
        }
        bytes += r.body.len();
        n += 1;
    }
    queue.drain(..n).collect()
}

fn answer(batches: Vec<Request>, result: Result<Vec<u64>, ClusterError>) {
    match result {
        Ok(firsts) if firsts.len() == batches.len() => {
            for (r, first) in batches.into_iter().zip(firsts) {
                // A room that stopped waiting has nothing to be told.
                let _ = r.reply.send(Ok(first));
            }
        }
        Ok(firsts) => {
            let e = redis::RedisError::from((
                redis::ErrorKind::Parse,
                "the order script answered a wrong count",
                format!("{} numbers for {} batches", firsts.len(), batches.len()),
            ));
            answer(batches, Err(e.into()));
        }
        Err(e) => {
            for r in batches {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One call of the order script for batches that share an epoch key.
async fn call(inner: &Inner, group: Group, batches: Vec<Request>) {
    let result = order(inner, group, &batches).await;
    if result.is_ok() {
        inner.counters.orders.inc_by(batches.len() as u64);
        let changes: usize = batches.iter().map(|r| r.changes).sum();
        inner.counters.ordered_changes.inc_by(changes as u64);
    }
    answer(batches, result);
}

async fn order(inner: &Inner, group: Group, batches: &[Request]) -> Result<Vec<u64>, ClusterError> {
    let ordering = inner.ordering_epoch().ok_or(ClusterError::Unavailable)?;
    let epoch = ordering.guarding(group).ok_or(ClusterError::Unavailable)?;
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    // Behind Sentinel and on a Redis Cluster the script also checks that the primary is the one
    // the epoch was made on: a replica promoted since may lack numbers the old one gave out.
    let replid = if inner.primary_moves() {
        replid_of(epoch).unwrap_or_default()
    } else {
        ""
    };
    let (mut conn, _in_flight) = inner.primary.conn_for_order()?;
    let keys = &inner.keys;
    let mut script = inner.order.key(keys.epoch_of(&first.room));
    script
        .arg(epoch)
        .arg(replid)
        .arg(inner.settings.stream_max_len);
    for r in batches {
        script
            .key(keys.counter(&r.room))
            .key(keys.log(&r.room))
            .arg(r.changes)
            .arg(&r.body)
            .arg(keys.channel(&r.room));
    }
    inner.counters.round_trips.inc();
    Ok(script.invoke_async(&mut conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_key::Namespace;

    fn request(bytes: usize) -> Request {
        Request {
            group: None,
            room: RoomKey::new(Namespace::new("relay"), "r").expect("a valid room"),
            changes: 1,
            body: "x".repeat(bytes),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_call_takes_batches_in_order_up_to_its_count_and_size() {
        let mut queue: Vec<Request> = (0..MAX_BATCHES_PER_CALL + 3).map(|_| request(1)).collect();
        assert_eq!(take_call(&mut queue).len(), MAX_BATCHES_PER_CALL);
        assert_eq!(take_call(&mut queue).len(), 3);
        assert!(queue.is_empty());

        let half = MAX_BYTES_PER_CALL / 2;
        let mut queue = vec![request(half), request(half), request(1)];
        assert_eq!(take_call(&mut queue).len(), 2);
        assert_eq!(take_call(&mut queue).len(), 1);
        // A batch larger than a call goes alone, not never.
        let mut queue = vec![request(2 * MAX_BYTES_PER_CALL), request(1)];
        assert_eq!(take_call(&mut queue).len(), 1);
        assert_eq!(take_call(&mut queue).len(), 1);
    }
}
