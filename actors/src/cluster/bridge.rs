//! The Cluster actor: one per node. It owns the node's Redis connection (commands and pub/sub
//! pushes share one reconnecting RESP3 connection; on a Redis Cluster pub/sub comes from one
//! node of it), hands each followed room the batches published on its channel, beats a
//! heartbeat that tells the other nodes about this one and this one whether pub/sub still
//! delivers, and watches the epoch: when Redis comes back without its data, the nodes raise
//! every counter past the numbers they hold, wait for each other, and only then order again
//! ([`super::restore`]). Behind Sentinel, every beat asks the sentinels where the primary is
//! now (a failed one is tried again sooner), and a primary other than the one the epoch was
//! made on counts as a Redis that lost its data (it may be a replica that missed the last
//! writes). On a Redis Cluster the same holds for each bucket of rooms and the primary serving
//! it, and every beat makes sure the node pub/sub comes from still answers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::{PushInfo, PushKind};
use serde::Serialize;

use super::beat::{self, Answer, Beat};
use super::restore::{Restore, RestoreCounter, restore};
use super::wire::{OrderedBatch, body_prefix, ordered_by, parse_message};
use super::{ClusterError, ClusterHandle, Peer, fresh_id};
use crate::clock::now_ms;
use crate::mailbox::{CountedRecipient, Queued};
use crate::metrics::ActorMetrics;
use crate::room_key::RoomKey;
use crate::store::Store;

/// How often a node beats.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Behind Sentinel and on a Redis Cluster, how soon a failed beat is tried again, looking the
/// primary (or a node to hear pub/sub from) up first: a failover's new primary is found this
/// fast once the sentinels name it, or the cluster promoted it.
const FAILOVER_RETRY: Duration = Duration::from_millis(250);
/// Pub/sub counts as stuck when a node has not heard its own heartbeat for this long.
const ECHO_STALE: Duration = Duration::from_secs(3);
/// On a Redis Cluster, how long a cluster client renewed after a failed beat is given at least.
const RENEW_CLIENT: Duration = Duration::from_millis(250);
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
    /// How the bodies of the batches this node orders begin ([`body_prefix`]).
    own_batches: String,
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
    /// When the cluster client was last renewed after a failed beat.
    renewed: Option<Instant>,
    /// When this node last moved to another primary or pub/sub node.
    switched: Option<Instant>,
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
            own_batches: body_prefix(handle.node().as_str()),
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
            renewed: None,
            switched: None,
        }
    }

    /// Whether this node's own heartbeat came back over pub/sub lately; the first one is given
    /// a moment.
    fn echo_fresh(&self) -> bool {
        match self.last_echo {
            Some(at) => at.elapsed() < ECHO_STALE,
            None => self.started.elapsed() < ECHO_STALE,
        }
    }

    fn update_health(&self) {
        self.handle.set_healthy(
            self.link == Link::Up && self.echo_fresh() && self.handle.epoch().is_some(),
        );
    }

    fn resubscribe_all(&self, ctx: &mut Context<Self>) {
        let Ok(mut conn) = self.handle.subscriber() else {
            // No primary (or pub/sub node) yet: the beat that finds one subscribes.
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

    /// Reads every followed room's counter (one MGET per chunk, per bucket on a Redis Cluster)
    /// and shows each room its own.
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
        let beat = Beat {
            url: handle.settings().advertise_url.clone(),
            at: now_ms(),
            nonce: self.nonce.clone(),
        };
        // Heartbeats that were published yet did not come back: the pub/sub node hears nothing.
        // A node moved to lately gets as long as the first one to deliver.
        let settled = self.switched.is_none_or(|at| at.elapsed() >= ECHO_STALE);
        let deaf = self.link == Link::Up && !self.echo_fresh() && settled;
        let failing = self.link == Link::Down;
        let moves = handle.primary_moves();
        let run = async move { beat::beat(&handle, &beat, deaf, failing).await };
        ctx.spawn(
            run.into_actor(self)
                .map(move |(switched, result), act, ctx| {
                    act.beating = false;
                    if switched {
                        // The new primary, or pub/sub node, has none of this node's subscriptions.
                        act.switched = Some(Instant::now());
                        act.resubscribe_all(ctx);
                    }
                    match result {
                        Ok(answer) => act.beat_answered(answer, ctx),
                        Err(e) => {
                            if act.link != Link::Down {
                                log::warn!("cluster: redis unreachable: {e}");
                            }
                            act.link = Link::Down;
                            act.renew_client_if_due();
                            if moves {
                                ctx.run_later(FAILOVER_RETRY, |act, ctx| act.beat(ctx));
                            }
                        }
                    }
                    act.update_health();
                }),
        );
    }

    /// On a Redis Cluster, a failed beat renews the cluster client (at most once a
    /// [`RENEW_CLIENT`]): it may be wedged (see `Primary::renew`), and a new one costs a few
    /// connections and learns the topology afresh.
    fn renew_client_if_due(&mut self) {
        if !self.handle.bucketed() || self.renewed.is_some_and(|at| at.elapsed() < RENEW_CLIENT) {
            return;
        }
        self.renewed = Some(Instant::now());
        match self.handle.renew_client() {
            Ok(()) => log::debug!("cluster: the Redis Cluster client was renewed"),
            Err(e) => log::warn!("cluster: renewing the Redis Cluster client: {e}"),
        }
    }

    fn beat_answered(&mut self, answer: Answer, ctx: &mut Context<Self>) {
        // Heard of before this beat: a Redis that lost data may have lost their heartbeats.
        let mut known: Vec<String> = self.handle.peers().into_iter().map(|p| p.node).collect();
        let me = self.handle.node().to_string();
        let now = now_ms();
        let mut peers = Vec::new();
        for (node, beat) in answer.nodes {
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
            if beat.alive(now) {
                peers.push(Peer {
                    node,
                    url: beat.url,
                    last_heard_ms: beat.at,
                });
            }
        }
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        for peer in &peers {
            if !known.contains(&peer.node) {
                known.push(peer.node.clone());
            }
        }
        self.handle.set_peers(peers);
        if self.link == Link::Restoring {
            return;
        }
        let was_down = self.link == Link::Down;
        self.link = Link::Up;
        let seen = answer.seen;
        match (self.handle.epoch(), seen.epoch) {
            // Behind Sentinel and on a Redis Cluster an epoch holds only on the primary it was
            // made on.
            (Some(known), Some(current)) if known == current && seen.current => {
                if was_down {
                    // Pub/sub dropped what was published while the link was down.
                    log::info!("cluster: redis reachable again");
                    self.resubscribe_all(ctx);
                    self.resync_all();
                } else {
                    self.check_positions(ctx);
                }
            }
            (_, current) => self.restore(current, known, ctx),
        }
    }

    /// Settles the epoch: adopts Redis's when it is the one this node last ordered under;
    /// otherwise Redis lost data (or this node never knew it), and every counter this node
    /// could have numbers beyond is raised before ordering resumes.
    fn restore(&mut self, current: Option<String>, peers: Vec<String>, ctx: &mut Context<Self>) {
        self.link = Link::Restoring;
        self.handle.set_epoch(None);
        let handle = self.handle.clone();
        let store = self.store.clone();
        let remembered = store.node_value(EPOCH_VALUE).ok().flatten();
        let restorers: Vec<CountedRecipient<RestoreCounter>> =
            self.rooms.values().map(|r| r.restore.clone()).collect();
        let followed: HashSet<RoomKey> = self.rooms.keys().cloned().collect();
        let run = restore(Restore {
            handle,
            store,
            remembered,
            current,
            restorers,
            followed,
            peers,
            began: Instant::now(),
        });
        ctx.spawn(run.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok((epoch, lost)) => {
                    if lost {
                        act.handle.counters().epoch_changes.inc();
                    }
                    if let Err(e) = act.store.set_node_value(EPOCH_VALUE, &epoch.name) {
                        log::error!("cluster: cannot remember the epoch: {e}");
                    }
                    log::info!("cluster: ordering under epoch {}", epoch.name);
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
                // A room learns its own batches from the sequencer's answer.
                if ordered_by(&payload, &self.own_batches) {
                    return;
                }
                match parse_message(&payload) {
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
        let conn = self.handle.subscriber();
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
        let Ok(mut conn) = self.handle.subscriber() else {
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
