//! The Cluster actor: one per node. It owns the node's Redis connection (commands and pub/sub
//! pushes share one reconnecting RESP3 connection), hands each followed room the batches
//! published on its channel, beats a heartbeat that tells the other nodes about this one and
//! this one whether pub/sub still delivers, and watches the epoch: when Redis comes back
//! without its data, the nodes raise every counter past the numbers they hold, wait for each
//! other, and only then order again. Behind Sentinel, every beat asks the sentinels where the
//! primary is now (a failed one is tried again sooner), and a primary other than the one the
//! epoch was made on counts as a Redis that lost its data (it may be a replica that missed the
//! last writes).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use redis::{PushInfo, PushKind};
use serde::{Deserialize, Serialize};

use super::wire::{OrderedBatch, parse_message};
use super::{ClusterError, ClusterHandle, Peer, fresh_id, scripts};
use crate::clock::now_ms;
use crate::mailbox::{CountedRecipient, Queued};
use crate::metrics::ActorMetrics;
use crate::room_key::RoomKey;
use crate::store::Store;

/// How often a node beats.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Behind Sentinel, how soon a failed beat is tried again, looking the primary up first: a
/// failover's new primary is found this fast once the sentinels name it.
const FAILOVER_RETRY: Duration = Duration::from_millis(250);
/// A node not heard for this long is gone.
const PEER_ALIVE_MS: i64 = 5_000;
/// Pub/sub counts as stuck when a node has not heard its own heartbeat for this long.
const ECHO_STALE: Duration = Duration::from_secs(3);
/// After Redis lost its data, how long a node waits for the others to restore their counters.
const RESTORE_WAIT: Duration = Duration::from_secs(10);
/// How long after a restore starts every live node has written a heartbeat again (they were
/// lost with Redis): only then does the list of nodes to wait for mean anything.
const RESTORE_SETTLE: Duration = Duration::from_millis(1_500);
/// Counters restored per Redis call.
const RESTORE_CHUNK: usize = 200;
/// Room counters read per call of the position check.
const POSITION_CHUNK: usize = 1_000;
/// The node value that remembers the epoch this node last ordered under.
const EPOCH_VALUE: &str = "cluster_epoch";

/// A batch published for a followed room.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Replicated(pub OrderedBatch);

/// Tells a room that pub/sub may have skipped batches (the connection dropped, or Redis lost its
/// data): it catches up to the counter.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resync;

/// The room's counter in Redis as a periodic check read it. Pub/sub gives no sign of a lost
/// message until a later one arrives; a room still short of a number it was shown a beat ago
/// has lost the room's last batches and catches up.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Position(pub u64);

/// Asks a room to raise its counter in Redis to the last number it applied.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<(), ClusterError>")]
pub struct RestoreCounter;

/// A room starts following its channel; answers once Redis confirmed the subscription.
#[derive(Message)]
#[rtype(result = "Result<(), ClusterError>")]
pub struct Follow {
    pub room: RoomKey,
    /// Counted under the room kind once the bridge holds them.
    pub batches: Recipient<Queued<Replicated>>,
    pub resync: Recipient<Queued<Resync>>,
    pub restore: Recipient<Queued<RestoreCounter>>,
    /// A beat for every followed room, not traffic: left out of the room kind's counts.
    pub position: Recipient<Position>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unfollow {
    pub room: RoomKey,
}

/// The bridge as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeStatus {
    pub redis: &'static str,
    pub epoch: Option<String>,
    pub healthy: bool,
    pub rooms_followed: usize,
    pub last_echo_ms_ago: Option<u64>,
}

#[derive(Message)]
#[rtype(result = "BridgeStatus")]
pub struct GetBridgeStatus;

/// What a node writes into the nodes hash every beat.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    url: String,
    at: i64,
    /// Tells two processes that claim the same node id apart.
    nonce: String,
}

struct Followed {
    batches: CountedRecipient<Replicated>,
    resync: CountedRecipient<Resync>,
    restore: CountedRecipient<RestoreCounter>,
    position: Recipient<Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No beat has succeeded yet, or the last one failed.
    Down,
    Up,
    /// Redis lost its data; counters are being restored.
    Restoring,
}

pub struct Cluster {
    handle: ClusterHandle,
    store: Store,
    pushes: Option<tokio::sync::mpsc::UnboundedReceiver<PushInfo>>,
    rooms: HashMap<RoomKey, Followed>,
    /// The room kind's series, which what the bridge sends to rooms counts under.
    rooms_kind: ActorMetrics,
    link: Link,
    beating: bool,
    checking: bool,
    last_echo: Option<Instant>,
    nonce: String,
    started: Instant,
}

impl Cluster {
    pub fn new(
        handle: ClusterHandle,
        store: Store,
        pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
        rooms_kind: ActorMetrics,
    ) -> Cluster {
        Cluster {
            nonce: fresh_id(handle.node().as_str()),
            handle,
            store,
            pushes: Some(pushes),
            rooms: HashMap::new(),
            rooms_kind,
            link: Link::Down,
            beating: false,
            checking: false,
            last_echo: None,
            started: Instant::now(),
        }
    }

    fn update_health(&self) {
        // Give the first echo a moment before calling pub/sub stuck.
        let echo_fresh = match self.last_echo {
            Some(at) => at.elapsed() < ECHO_STALE,
            None => self.started.elapsed() < ECHO_STALE,
        };
        self.handle
            .set_healthy(self.link == Link::Up && echo_fresh && self.handle.epoch().is_some());
    }

    fn resubscribe_all(&self, ctx: &mut Context<Self>) {
        let Ok(mut conn) = self.handle.conn() else {
            // No primary yet: the beat that finds one subscribes.
            return;
        };
        let mut channels: Vec<String> = self
            .rooms
            .keys()
            .map(|r| self.handle.keys().channel(r))
            .collect();
        channels.push(self.handle.keys().heartbeat_channel());
        ctx.spawn(
            async move {
                for channel in channels {
                    if let Err(e) = conn.subscribe(&channel).await {
                        log::warn!("cluster: cannot subscribe {channel}: {e}");
                    }
                }
            }
            .into_actor(self),
        );
    }

    fn resync_all(&self) {
        for room in self.rooms.values() {
            room.resync.do_send(Resync);
        }
    }

    /// Reads every followed room's counter (one MGET per chunk) and shows each room its own.
    fn check_positions(&mut self, ctx: &mut Context<Self>) {
        if self.checking || self.rooms.is_empty() {
            return;
        }
        self.checking = true;
        let rooms: Vec<RoomKey> = self.rooms.keys().cloned().collect();
        let handle = self.handle.clone();
        let run = async move {
            let mut seen = Vec::with_capacity(rooms.len());
            for chunk in rooms.chunks(POSITION_CHUNK) {
                handle.counters().round_trips.inc();
                let counters = handle.counters_of(chunk).await?;
                seen.extend(chunk.iter().cloned().zip(counters));
            }
            Ok::<_, ClusterError>(seen)
        };
        ctx.spawn(run.into_actor(self).map(|result, act, _| {
            act.checking = false;
            match result {
                Ok(seen) => {
                    for (room, counter) in seen {
                        if let Some(followed) = act.rooms.get(&room) {
                            followed.position.do_send(Position(counter));
                        }
                    }
                }
                Err(e) => log::debug!("cluster: position check failed: {e}"),
            }
        }));
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.beating {
            return;
        }
        self.beating = true;
        let handle = self.handle.clone();
        let keys = handle.keys().clone();
        let node = handle.node().to_string();
        let beat = Beat {
            url: handle.settings().advertise_url.clone(),
            at: now_ms(),
            nonce: self.nonce.clone(),
        };
        let beat = serde_json::to_string(&beat).unwrap_or_default();
        let moves = handle.primary_moves();
        let run = async move {
            // Behind Sentinel every beat asks where the primary is: after a failover the old
            // one may still answer (a split brain) until the sentinels make it a replica.
            let switched = if moves {
                match handle.follow_primary().await {
                    Ok(switched) => switched,
                    // Sentinels away do not stop a primary that answers.
                    Err(e) if handle.conn().is_ok() => {
                        log::debug!("cluster: asking the sentinels: {e}");
                        false
                    }
                    Err(e) => return Err(e),
                }
            } else {
                false
            };
            let mut conn = handle.conn()?;
            let mut pipe = redis::pipe();
            pipe.hset(keys.nodes(), &node, beat)
                .ignore()
                .get(keys.epoch())
                .hgetall(keys.nodes())
                .publish(keys.heartbeat_channel(), &node)
                .ignore();
            if moves {
                pipe.cmd("INFO").arg("replication");
            }
            let reply: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            let mut reply = reply.into_iter();
            let mut next = || reply.next().unwrap_or(redis::Value::Nil);
            let epoch: Option<String> =
                redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
            let nodes: HashMap<String, String> =
                redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
            let replid = if moves {
                let info: String =
                    redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
                master_replid(&info)
            } else {
                None
            };
            Ok::<_, ClusterError>((switched, epoch, nodes, replid))
        };
        ctx.spawn(run.into_actor(self).map(move |result, act, ctx| {
            act.beating = false;
            match result {
                Ok((switched, epoch, nodes, replid)) => {
                    if switched {
                        // The new primary has none of this node's subscriptions.
                        act.resubscribe_all(ctx);
                    }
                    act.beat_answered(epoch, nodes, replid, ctx)
                }
                Err(e) => {
                    if act.link != Link::Down {
                        log::warn!("cluster: redis unreachable: {e}");
                    }
                    act.link = Link::Down;
                    if moves {
                        ctx.run_later(FAILOVER_RETRY, |act, ctx| act.beat(ctx));
                    }
                }
            }
            act.update_health();
        }));
    }

    fn beat_answered(
        &mut self,
        epoch: Option<String>,
        nodes: HashMap<String, String>,
        replid: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let me = self.handle.node().to_string();
        let now = now_ms();
        let mut peers = Vec::new();
        for (node, beat) in nodes {
            let Ok(beat) = serde_json::from_str::<Beat>(&beat) else {
                continue;
            };
            if node == me {
                if beat.nonce != self.nonce {
                    log::error!(
                        "cluster: another process uses node id {me}; give every node its own \
                         server.node_id"
                    );
                }
                continue;
            }
            if now - beat.at <= PEER_ALIVE_MS {
                peers.push(Peer {
                    node,
                    url: beat.url,
                    last_heard_ms: beat.at,
                });
            }
        }
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        self.handle.set_peers(peers);
        if self.link == Link::Restoring {
            return;
        }
        let was_down = self.link == Link::Down;
        self.link = Link::Up;
        // Behind Sentinel an epoch holds only on the primary it was made on.
        let same_primary = |epoch: &str| {
            !self.handle.primary_moves()
                || replid
                    .as_deref()
                    .is_some_and(|r| super::replid_of(epoch) == Some(r))
        };
        match (self.handle.epoch(), epoch) {
            (Some(known), Some(current)) if known == current && same_primary(&current) => {
                if was_down {
                    // Pub/sub dropped what was published while the link was down.
                    log::info!("cluster: redis reachable again");
                    self.resubscribe_all(ctx);
                    self.resync_all();
                } else {
                    self.check_positions(ctx);
                }
            }
            (_, current) => self.restore(current, ctx),
        }
    }

    /// Settles the epoch: adopts Redis's when it is the one this node last ordered under;
    /// otherwise Redis lost data (or this node never knew it), and every counter this node
    /// could have numbers beyond is raised before ordering resumes.
    fn restore(&mut self, current: Option<String>, ctx: &mut Context<Self>) {
        self.link = Link::Restoring;
        self.handle.set_epoch(None);
        let handle = self.handle.clone();
        let store = self.store.clone();
        let remembered = store.node_value(EPOCH_VALUE).ok().flatten();
        let restorers: Vec<CountedRecipient<RestoreCounter>> =
            self.rooms.values().map(|r| r.restore.clone()).collect();
        let followed: HashSet<RoomKey> = self.rooms.keys().cloned().collect();
        let began = Instant::now();
        let run = async move {
            let keys = handle.keys().clone();
            let mut conn = handle.conn()?;
            let candidate = fresh_id(handle.node().as_str());
            let epoch: String = scripts::settle_epoch()
                .key(keys.epoch())
                .arg(candidate)
                .arg(if handle.primary_moves() { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?;
            if current.is_some() && remembered.as_deref() == Some(epoch.as_str()) {
                // Redis kept its data since this node last ordered: nothing to restore.
                return Ok((epoch, false));
            }
            // Redis lost data when this node had ordered under another epoch before.
            let lost = remembered.is_some();
            log::warn!(
                "cluster: redis epoch is {epoch} (this node last knew {}): restoring counters",
                remembered.as_deref().unwrap_or("none")
            );
            // A number an order on a primary this node left brings back is one to restore.
            handle.wait_retired_orders().await;
            // Rooms running here know their last number, written or not.
            for result in join_all(restorers.iter().map(|r| r.send(RestoreCounter))).await {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => log::warn!("cluster: a room did not restore its counter: {e}"),
                }
            }
            // Rooms at rest, from storage.
            let stored = store
                .rooms()
                .map_err(|e| ClusterError::Storage(std::sync::Arc::new(e)))?;
            let at_rest: Vec<(RoomKey, u64)> = stored
                .into_iter()
                .filter(|(room, seq)| *seq > 0 && !followed.contains(room))
                .collect();
            let script = scripts::restore_counters();
            for chunk in at_rest.chunks(RESTORE_CHUNK) {
                let mut call = script.prepare_invoke();
                for (room, seq) in chunk {
                    call.key(keys.counter(room)).arg(*seq);
                }
                let _: i64 = call.invoke_async(&mut conn).await?;
            }
            let restored = keys.restored(&epoch);
            let _: () = redis::pipe()
                .sadd(&restored, handle.node().as_str())
                .ignore()
                .query_async(&mut conn)
                .await?;
            // No node orders again before every live node has raised its counters.
            tokio::time::sleep((began + RESTORE_SETTLE).saturating_duration_since(Instant::now()))
                .await;
            let deadline = Instant::now() + RESTORE_WAIT;
            loop {
                let (members, nodes): (HashSet<String>, HashMap<String, String>) = redis::pipe()
                    .smembers(&restored)
                    .hgetall(keys.nodes())
                    .query_async(&mut conn)
                    .await?;
                let now = now_ms();
                let missing: Vec<String> = nodes
                    .into_iter()
                    .filter(|(_, beat)| {
                        serde_json::from_str::<Beat>(beat)
                            .is_ok_and(|b| now - b.at <= PEER_ALIVE_MS)
                    })
                    .map(|(node, _)| node)
                    .filter(|node| !members.contains(node))
                    .collect();
                if missing.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    log::warn!("cluster: going on without restores from {missing:?}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok((epoch, lost))
        };
        ctx.spawn(run.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok((epoch, lost)) => {
                    if lost {
                        act.handle.counters().epoch_changes.inc();
                    }
                    if let Err(e) = act.store.set_node_value(EPOCH_VALUE, &epoch) {
                        log::error!("cluster: cannot remember the epoch: {e}");
                    }
                    log::info!("cluster: ordering under epoch {epoch}");
                    act.handle.set_epoch(Some(epoch));
                    act.link = Link::Up;
                    act.resubscribe_all(ctx);
                    act.resync_all();
                }
                Err(e) => {
                    log::warn!("cluster: restoring after an epoch change failed: {e}");
                    // The next beat tries again.
                    act.link = Link::Down;
                }
            }
            act.update_health();
        }));
    }

    fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    return;
                };
                let (Ok(channel), Ok(payload)) = (
                    redis::from_redis_value::<String>(channel),
                    redis::from_redis_value::<String>(payload),
                ) else {
                    return;
                };
                if channel == self.handle.keys().heartbeat_channel() {
                    if payload == self.handle.node().as_str() {
                        self.last_echo = Some(Instant::now());
                    }
                    return;
                }
                let Some(room) = self.handle.keys().room_of_channel(&channel) else {
                    return;
                };
                let Some(followed) = self.rooms.get(&room) else {
                    return;
                };
                match parse_message(&payload) {
                    // A room learns its own batches from the sequencer's answer.
                    Some(batch) if batch.body.node == self.handle.node().as_str() => {}
                    Some(batch) => followed.batches.do_send(Replicated(batch)),
                    None => log::warn!("cluster: an unreadable batch on {channel}"),
                }
            }
            PushKind::Disconnection => {
                if self.link == Link::Up {
                    log::warn!("cluster: redis connection lost");
                    self.link = Link::Down;
                }
                self.update_health();
            }
            _ => {}
        }
    }
}

impl Actor for Cluster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 16);
        if let Some(mut pushes) = self.pushes.take() {
            let stream = futures_util::stream::poll_fn(move |cx| pushes.poll_recv(cx));
            ctx.add_stream(stream);
        }
        self.resubscribe_all(ctx);
        self.beat(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| {
            act.beat(ctx);
            act.update_health();
        });
    }
}

impl StreamHandler<PushInfo> for Cluster {
    fn handle(&mut self, push: PushInfo, _: &mut Context<Self>) {
        self.on_push(push);
    }

    /// The push channel only ends with the connection manager; keep the actor.
    fn finished(&mut self, _: &mut Context<Self>) {
        log::warn!("cluster: the redis push channel closed");
    }
}

impl Handler<Follow> for Cluster {
    type Result = ResponseFuture<Result<(), ClusterError>>;

    fn handle(&mut self, msg: Follow, _: &mut Context<Self>) -> Self::Result {
        let channel = self.handle.keys().channel(&msg.room);
        self.rooms.insert(
            msg.room,
            Followed {
                batches: CountedRecipient::new(msg.batches, &self.rooms_kind),
                resync: CountedRecipient::new(msg.resync, &self.rooms_kind),
                restore: CountedRecipient::new(msg.restore, &self.rooms_kind),
                position: msg.position,
            },
        );
        let conn = self.handle.conn();
        Box::pin(async move {
            conn?.subscribe(&channel).await?;
            Ok(())
        })
    }
}

impl Handler<Unfollow> for Cluster {
    type Result = ();

    fn handle(&mut self, msg: Unfollow, ctx: &mut Context<Self>) {
        if self.rooms.remove(&msg.room).is_none() {
            return;
        }
        let channel = self.handle.keys().channel(&msg.room);
        let Ok(mut conn) = self.handle.conn() else {
            return;
        };
        ctx.spawn(
            async move {
                if let Err(e) = conn.unsubscribe(&channel).await {
                    log::debug!("cluster: unsubscribing {channel}: {e}");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<GetBridgeStatus> for Cluster {
    type Result = MessageResult<GetBridgeStatus>;

    fn handle(&mut self, _: GetBridgeStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BridgeStatus {
            redis: match self.link {
                Link::Down => "down",
                Link::Up => "up",
                Link::Restoring => "restoring",
            },
            epoch: self.handle.epoch(),
            healthy: self.handle.healthy(),
            rooms_followed: self.rooms.len(),
            last_echo_ms_ago: self.last_echo.map(|at| at.elapsed().as_millis() as u64),
        })
    }
}

/// The primary's replication id in an `INFO replication` answer: a replica promoted by a
/// failover starts a new one.
fn master_replid(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("master_replid:"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_id_is_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\
                    master_replid:8e24fe88bc7b\r\nmaster_replid2:0000\r\n";
        assert_eq!(master_replid(info).as_deref(), Some("8e24fe88bc7b"));
        assert_eq!(master_replid("role:master"), None);
    }
}
