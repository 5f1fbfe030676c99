//! After Redis lost data (restarted empty, or a primary failed over to a replica that may lack
//! its last writes): every live node raises the counter of every room it holds past the last
//! number it has, and no node orders again before all of them have, so no number is given out
//! twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::beat::{Beat, PEER_ALIVE};
use super::epochs::{Epoch, settle_buckets};
use super::{ClusterError, ClusterHandle, fresh_id, scripts};
use crate::clock::now_ms;
use crate::mailbox::CountedRecipient;
use crate::room_key::RoomKey;
use crate::store::Store;

/// Asks a room to raise its counter in Redis to the last number it applied.
#[derive(actix::Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), ClusterError>")]
pub struct RestoreCounter;

/// After Redis lost its data, how long a node waits for the others to restore their counters.
const RESTORE_WAIT: Duration = Duration::from_secs(10);
/// How long after a restore starts every live node has written a heartbeat again (they were
/// lost with Redis): only then does the list of nodes to wait for mean anything, unless every
/// node this one knew is back in it sooner.
const RESTORE_SETTLE: Duration = Duration::from_millis(1_500);
/// How often the nodes' restores are looked at while waiting for them.
const RESTORE_POLL: Duration = Duration::from_millis(100);
/// Counters restored per Redis call.
const RESTORE_CHUNK: usize = 200;

/// What a restore starts from.
pub(super) struct Restore {
    pub handle: ClusterHandle,
    pub store: Store,
    /// The epoch this node last ordered under, as it remembers it.
    pub remembered: Option<String>,
    /// The epoch Redis held when the beat read it; `None` when it had none.
    pub current: Option<String>,
    /// The rooms running on this node, which know their last number best.
    pub restorers: Vec<CountedRecipient<RestoreCounter>>,
    pub followed: HashSet<RoomKey>,
    /// The other nodes this node heard of lately, before Redis may have lost their heartbeats.
    pub peers: Vec<String>,
    pub began: Instant,
}

/// Settles the epoch and, when Redis lost data since this node last ordered, restores; answers
/// the epoch to order under and whether Redis lost data this node had ordered into.
pub(super) async fn restore(r: Restore) -> Result<(Epoch, bool), ClusterError> {
    let handle = &r.handle;
    let keys = handle.keys().clone();
    let mut conn = handle.conn()?;
    let candidate = fresh_id(handle.node().as_str());
    let epoch = if handle.bucketed() {
        settle_buckets(&conn, &keys, &candidate).await?
    } else {
        let name: String = scripts::settle_epoch()
            .key(keys.epoch())
            .arg(candidate)
            .arg(if handle.primary_moves() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Epoch::single(name)
    };
    if r.current.is_some() && r.remembered.as_deref() == Some(epoch.name.as_str()) {
        // Redis kept its data since this node last ordered: nothing to restore.
        return Ok((epoch, false));
    }
    // Redis lost data when this node had ordered under another epoch before.
    let lost = r.remembered.is_some();
    log::warn!(
        "cluster: redis epoch is {} (this node last knew {}): restoring counters",
        epoch.name,
        r.remembered.as_deref().unwrap_or("none")
    );
    // A number an order on a primary this node left brings back is one to restore.
    handle.wait_retired_orders().await;
    // Rooms running here know their last number, written or not.
    for result in join_all(r.restorers.iter().map(|c| c.send(RestoreCounter))).await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => log::warn!("cluster: a room did not restore its counter: {e}"),
        }
    }
    // Rooms at rest, from storage; on a Redis Cluster one bucket (one slot) per call.
    let stored = r
        .store
        .rooms()
        .map_err(|e| ClusterError::Storage(std::sync::Arc::new(e)))?;
    let mut at_rest: BTreeMap<Option<usize>, Vec<(RoomKey, u64)>> = BTreeMap::new();
    for (room, seq) in stored {
        if seq > 0 && !r.followed.contains(&room) {
            at_rest
                .entry(keys.bucket_of(&room))
                .or_default()
                .push((room, seq));
        }
    }
    let script = scripts::restore_counters();
    for rooms in at_rest.values() {
        for chunk in rooms.chunks(RESTORE_CHUNK) {
            let mut call = script.prepare();
            for (room, seq) in chunk {
                call.key(keys.counter(room)).arg(*seq);
            }
            let _: i64 = call.invoke_async(&mut conn).await?;
        }
    }
    let restored = keys.restored(&epoch.name);
    let _: () = redis::pipe()
        .sadd(&restored, handle.node().as_str())
        .ignore()
        .query_async(&mut conn)
        .await?;
    // No node orders again before every live node has raised its counters. The nodes this one
    // heard of lately count as live for a while even without a heartbeat: theirs may have been
    // lost with Redis, or not get through while Redis recovers.
    let deadline = r.began + RESTORE_SETTLE + RESTORE_WAIT;
    loop {
        // The cluster client may have been renewed meanwhile.
        let mut conn = handle.conn()?;
        // Two keys, two slots on a Redis Cluster: two commands.
        let (mut smembers, mut hgetall) = (redis::cmd("SMEMBERS"), redis::cmd("HGETALL"));
        smembers.arg(&restored);
        hgetall.arg(keys.nodes());
        let mut other = conn.clone();
        let (members, nodes) = futures_util::join!(
            smembers.query_async::<HashSet<String>>(&mut conn),
            hgetall.query_async::<HashMap<String, String>>(&mut other),
        );
        let (members, nodes) = (members?, nodes?);
        let now = now_ms();
        let mut live: Vec<String> = nodes
            .into_iter()
            .filter(|(_, beat)| serde_json::from_str::<Beat>(beat).is_ok_and(|b| b.alive(now)))
            .map(|(node, _)| node)
            .collect();
        // Every node this one knew has beaten again, or restored: the list is complete (but for
        // a node that started within the last beat), no need to wait out the settling time.
        let settled = r.began.elapsed() >= RESTORE_SETTLE
            || r.peers
                .iter()
                .all(|p| live.contains(p) || members.contains(p));
        if r.began.elapsed() < PEER_ALIVE {
            live.extend(r.peers.iter().cloned());
        }
        let missing: BTreeSet<&String> = live.iter().filter(|n| !members.contains(*n)).collect();
        if settled && missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            log::warn!("cluster: going on without restores from {missing:?}");
            break;
        }
        tokio::time::sleep(RESTORE_POLL).await;
    }
    Ok((epoch, lost))
}
