//! The Room actor: one per `(namespace, room)`. It holds the room's state in memory, merges the
//! changes sent to it one at a time, numbers the ones that win, and releases acks and broadcasts
//! only once they are durable.
//!
//! Writes are batched: every submit merges at once, but the storage batch for all the submits
//! that reached the room together is handed to the durability actor once, after the mailbox has
//! been drained. Answers that must wait for a flush wait in a queue, not in futures.

mod effects;
mod error;
mod messages;
pub mod order;
mod reply;
mod state;
mod write_rate;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use error::RoomError;
pub use messages::{
    Broadcast, Fetched, Join, Leave, RoomEvent, RoomReply, RoomRequest, RoomStatus, RoomStopped,
    Snapshot, StreamPage, Streams, Submitted,
};
pub use reply::{Reply, Request, RoomAnswer, ask};
pub use state::{OpenBatch, RoomState};

pub use crate::origin::{Origin, SessionId};

use crate::clock::now_ms;
use crate::cluster::{Cluster, ClusterHandle};
use crate::durability::{Commit, Committed, Durability};
use crate::limits::Limit;
use crate::mailbox::{CountedAddr, CountedRecipient, Queued};
use crate::metrics::{ActorMetrics, DialectMetrics, Metrics};
use crate::model::{IncomingChange, Model};
use crate::outbound::Outbound;
use crate::placement::Running;
use crate::room_key::RoomKey;
use crate::store::{LogEntry, PageLimit, RoomLayout, StorageError, Store};
use order::{ClusterOrder, Input, LocalOrder, Order};
use write_rate::WriteRate;

/// A batch this large is committed at once instead of after the mailbox drains, which bounds
/// both the latency the first change of a batch waits and the size of one storage batch.
const MAX_OPEN_CHANGES: usize = 1024;

/// What a room needs from the node.
#[derive(Clone)]
pub struct RoomContext {
    pub store: Store,
    pub model: Arc<dyn Model>,
    pub durability: CountedAddr<Durability>,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    pub directory: CountedRecipient<RoomStopped>,
    /// Set when the node is part of a cluster: the room is ordered by the cluster's sequencer
    /// ([`ClusterOrder`]) instead of on its own ([`LocalOrder`]).
    pub cluster: Option<ClusterLink>,
    /// What one read answers with, in bytes of changes: every dialect's reply page.
    pub page_bytes: usize,
    /// The most the room's state may hold, in bytes of keys and states, where the room is one
    /// document (SyncKit): past it a write is refused whole.
    pub max_state_bytes: Option<u64>,
}

/// A node's way into the cluster.
#[derive(Clone)]
pub struct ClusterLink {
    pub handle: ClusterHandle,
    pub bridge: Addr<Cluster>,
}

struct Member {
    events: CountedRecipient<RoomEvent>,
    streams: Streams,
    outbound: Arc<Outbound>,
}

/// An answer held back until the writes before it are durable.
struct Held(Reply, RoomReply);

/// Where the room is with compacting its log.
#[derive(Debug, Default)]
enum Compaction {
    #[default]
    Idle,
    /// Asked for: starts once the room is loaded and not recovering from a failed write.
    Pending,
    /// Running off the room's thread over the log up to the durable sequence number it had
    /// then; commits and reads go on meanwhile.
    Running,
}

/// A commit handed to the durability actor, with what to release once it is durable.
struct InFlight {
    token: u64,
    entries: Vec<LogEntry>,
    heads_before: HashMap<String, u64>,
    held: Vec<Held>,
}

/// Changes gathered for one broadcast window, latest per record.
struct Gathered {
    entries: HashMap<(String, String), LogEntry>,
    heads_before: HashMap<String, u64>,
}

/// Commits the open batch; sent to itself once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
struct CommitOpen;

pub struct Room {
    key: RoomKey,
    cx: RoomContext,
    actor: ActorMetrics,
    dialect: DialectMetrics,
    /// `None` until the room's state is loaded; the mailbox waits meanwhile.
    state: Option<RoomState>,
    /// The highest sequence number known to be durable; readers see nothing beyond it.
    durable_seq: u64,
    members: HashMap<SessionId, Member>,
    open: OpenBatch,
    /// Answers waiting for the open batch.
    open_held: Vec<Held>,
    commit_scheduled: bool,
    in_flight: VecDeque<InFlight>,
    last_token: u64,
    /// This room as the durability actor's answers reach it.
    me: Option<Recipient<Queued<Committed>>>,
    last_activity: Instant,
    write_rate: WriteRate,
    /// Durable changes waiting for the end of the model's broadcast window.
    gathered: Option<Gathered>,
    compaction: Compaction,
    /// Who asked for the compaction under way.
    compaction_replies: Vec<Reply>,
    /// Where the room's changes get their numbers: on this node, or through the cluster.
    order: Box<dyn Order<Reply>>,
    /// Which order the room runs: a new one after each reload. What an earlier one started
    /// (a sequencer call, a catch-up, a timer) is dropped when it comes back.
    order_life: u64,
    /// A commit failed: the room dropped what it had merged since its last durable commit and
    /// waits to reload what is durable. Meanwhile log reads are served (they read the store up
    /// to `durable_seq`), everything else is answered `Unavailable`.
    recovering: bool,
    /// The last commit token the failure took: a later "durable" for one of these means a
    /// commit the room gave up on reached the disk after all, and the room reloads again.
    lost_upto: u64,
    /// Last, so that it is dropped after everything above that holds storage; its jobs on the
    /// blocking pool hold a copy while they run.
    running: Running,
}

/// How often a room waiting for storage checks whether it can reload.
const RELOAD_RETRY: Duration = Duration::from_millis(250);

impl Room {
    pub fn new(key: RoomKey, cx: RoomContext, running: Running) -> Room {
        let order = new_order(&cx);
        Room {
            actor: cx.metrics.room,
            dialect: cx.metrics.dialect(key.namespace),
            key,
            cx,
            state: None,
            durable_seq: 0,
            members: HashMap::new(),
            open: OpenBatch::default(),
            open_held: Vec::new(),
            commit_scheduled: false,
            in_flight: VecDeque::new(),
            last_token: 0,
            me: None,
            last_activity: Instant::now(),
            write_rate: WriteRate::default(),
            gathered: None,
            compaction: Compaction::Idle,
            compaction_replies: Vec::new(),
            order,
            order_life: 0,
            recovering: false,
            lost_upto: 0,
            running,
        }
    }

    fn pending(&self) -> usize {
        self.open_held.len() + self.in_flight.iter().map(|f| f.held.len()).sum::<usize>()
    }

    fn status(&self, state: &RoomState) -> RoomStatus {
        RoomStatus {
            sessions: self.members.len(),
            pending: self.pending(),
            durable_seq: self.durable_seq,
            live: true,
            idle_ms: Some(self.last_activity.elapsed().as_millis() as u64),
            replica: self.order.status(),
            ..RoomStatus::at_rest(&self.key, state.meta())
        }
    }

    /// Answers now, or once every write made so far is durable.
    fn after_writes(&mut self, held: Held) {
        if !self.open.is_empty() {
            self.open_held.push(held);
        } else if let Some(last) = self.in_flight.back_mut() {
            last.held.push(held);
        } else {
            self.answer(held);
        }
    }

    fn answer(&mut self, Held(reply, answer): Held) {
        reply.send(Ok(answer));
    }

    /// The one way in for a client's changes, whatever orders the room.
    fn submit(
        &mut self,
        origin: Option<Origin>,
        changes: Vec<IncomingChange>,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) {
        if !self.cx.store.health().ok() {
            // Storage refuses writes (a full disk): nothing to merge or number that could be kept.
            return reply.send(Err(RoomError::Unavailable));
        }
        self.run(
            Input::Submit {
                origin,
                changes,
                reply,
            },
            ctx,
        );
    }

    /// Commits the open batch once the mailbox is drained, or at once when it is large.
    fn schedule_commit(&mut self, ctx: &mut Context<Self>) {
        // A room catching up before it serves writes all of it at once when it is done.
        if self.open.is_empty() || !self.order.ready() {
            return;
        }
        if self.open.len() >= MAX_OPEN_CHANGES {
            self.commit(ctx);
        } else if !self.commit_scheduled {
            self.commit_scheduled = true;
            ctx.notify(CommitOpen);
        }
    }

    /// Hands the open batch to the durability actor.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.open.is_empty() {
            let held = std::mem::take(&mut self.open_held);
            for h in held {
                self.after_writes(h);
            }
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let open = std::mem::take(&mut self.open);
        let held = std::mem::take(&mut self.open_held);
        let commit = match state.commit(open) {
            Ok(c) => c,
            Err(e) => {
                log::error!("cannot encode a commit of {}: {e}", self.key);
                for Held(reply, _) in held {
                    reply.send(Err(RoomError::WriteFailed));
                }
                return self.fail(ctx);
            }
        };
        self.last_token += 1;
        let me = self
            .me
            .get_or_insert_with(|| ctx.address().recipient())
            .clone();
        self.cx.durability.do_send(Commit {
            room: me,
            token: self.last_token,
            changes: commit.entries.len(),
            writes: commit.writes,
        });
        self.in_flight.push_back(InFlight {
            token: self.last_token,
            entries: commit.entries,
            heads_before: commit.heads_before,
            held,
        });
    }

    /// A commit failed. Every answer waiting for a write gets a retryable error; nothing it
    /// merged since its last durable commit was sent to anyone, so the room drops it and reloads
    /// what is durable once storage has been reopened, keeping its members (their sockets stay
    /// open). Until then it serves log reads, which read the store only up to what is durable,
    /// and refuses the rest with a retryable error. Its order starts over too: in a cluster the
    /// new one catches up with what the cluster numbered meanwhile before the room serves.
    fn fail(&mut self, ctx: &mut Context<Self>) {
        for f in self.in_flight.drain(..) {
            for Held(reply, _) in f.held {
                reply.send(Err(RoomError::Unavailable));
            }
        }
        for Held(reply, _) in self.open_held.drain(..) {
            reply.send(Err(RoomError::Unavailable));
        }
        let mut refused = Vec::new();
        self.order.abandon(&mut refused);
        self.perform(refused, ctx);
        self.order = new_order(&self.cx);
        self.order_life += 1;
        self.open = OpenBatch::default();
        self.lost_upto = self.last_token;
        if !self.recovering {
            log::warn!(
                "{}: a write failed; reloading once storage recovers",
                self.key
            );
            self.recovering = true;
            self.reload(ctx);
        }
    }

    /// Loads and replays the room's log off this thread (it serves other rooms), once it is
    /// the room's turn: after a restart every room its clients come back to loads at once.
    fn load(
        &self,
    ) -> impl std::future::Future<
        Output = Result<Result<RoomState, crate::store::StorageError>, tokio::task::JoinError>,
    > + 'static {
        let store = self.cx.store.clone();
        let model = self.cx.model.clone();
        let key = self.key.clone();
        let running = self.running.clone();
        let turn = self.cx.store.load_turn();
        async move {
            let _turn = turn.await;
            running
                .spawn_blocking(move || {
                    let layout = RoomLayout::new(&key);
                    let image = store.load_room(&layout)?;
                    RoomState::load(key, layout, image, model.as_ref())
                })
                .await
        }
    }

    /// Loads the room's durable state again, once storage reads only what is durable (it has
    /// been reopened), which may be before it takes writes again.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        if !self.cx.store.health().readable() {
            ctx.run_later(RELOAD_RETRY, |room, ctx| room.reload(ctx));
            return;
        }
        ctx.spawn(actix::fut::wrap_future(self.load()).map(
            |loaded, room: &mut Room, ctx: &mut Context<Room>| match loaded {
                Ok(Ok(state)) => {
                    log::info!("{}: reloaded at seq {}", room.key, state.meta().seq);
                    room.durable_seq = state.meta().seq;
                    room.state = Some(state);
                    room.recovering = false;
                    // In a cluster the new order catches up before the room serves again.
                    room.start_order(ctx);
                }
                Ok(Err(e)) => {
                    log::warn!("{}: cannot reload yet: {e}", room.key);
                    ctx.run_later(RELOAD_RETRY, |room, ctx| room.reload(ctx));
                }
                Err(e) => {
                    log::warn!("{}: reload failed: {e}", room.key);
                    ctx.run_later(RELOAD_RETRY, |room, ctx| room.reload(ctx));
                }
            },
        ));
    }

    /// Broadcasts durable entries, at once or at the end of the model's window.
    fn publish(
        &mut self,
        entries: Vec<LogEntry>,
        heads_before: HashMap<String, u64>,
        ctx: &mut Context<Self>,
    ) {
        let window = self.cx.model.broadcast_window();
        if window.is_zero() {
            let event = Broadcast::new(self.key.clone(), entries, heads_before);
            return self.broadcast(RoomEvent(Arc::new(event)));
        }
        let g = self.gathered.get_or_insert_with(|| {
            ctx.run_later(window, |room, _| room.flush_gathered());
            Gathered {
                entries: HashMap::new(),
                heads_before: HashMap::new(),
            }
        });
        for (stream, head) in heads_before {
            g.heads_before.entry(stream).or_insert(head);
        }
        for e in entries {
            g.entries.insert((e.stream.clone(), e.key.clone()), e);
        }
    }

    fn flush_gathered(&mut self) {
        let Some(g) = self.gathered.take() else {
            return;
        };
        let mut entries: Vec<LogEntry> = g.entries.into_values().collect();
        entries.sort_by_key(|e| e.seq);
        let event = Broadcast::new(self.key.clone(), entries, g.heads_before);
        self.broadcast(RoomEvent(Arc::new(event)));
    }

    fn broadcast(&mut self, event: RoomEvent) {
        let mut dropped = Vec::new();
        let bytes = event.bytes();
        for (id, member) in &self.members {
            if !event
                .entries
                .iter()
                .any(|e| member.streams.covers(&e.stream))
            {
                continue;
            }
            // The session is not keeping up (its socket holds its limit's worth, or its mailbox
            // is full): drop it rather than let what waits for it grow without bound.
            let evict = if member.outbound.admits(bytes) {
                member.outbound.add(bytes);
                match member.events.try_send(event.clone()) {
                    Ok(()) => false,
                    Err(SendError::Full(_)) => {
                        member.outbound.sub(bytes);
                        true
                    }
                    Err(SendError::Closed(_)) => {
                        member.outbound.sub(bytes);
                        dropped.push(*id);
                        false
                    }
                }
            } else {
                true
            };
            if evict {
                if member.outbound.evict() {
                    self.cx.metrics.limit_hit(Limit::SlowConsumer);
                    member.outbound.cut_later();
                }
                dropped.push(*id);
            }
        }
        for id in dropped {
            self.members.remove(&id);
        }
    }

    fn fetch(
        &mut self,
        origin: Option<&Origin>,
        streams: Vec<(String, u64)>,
        limit: usize,
        subscribe: bool,
        latest_only: bool,
    ) -> Result<RoomReply, RoomError> {
        if subscribe
            && let Some(member) = origin.and_then(|o| self.members.get_mut(&o.session))
            && let Streams::Some(set) = &mut member.streams
        {
            set.extend(streams.iter().map(|(s, _)| s.clone()));
        }
        let Some(state) = self.state.as_ref() else {
            return Err(RoomError::Gone);
        };
        let mut pages = Vec::with_capacity(streams.len());
        // One budget for the whole reply, whatever its streams; only its first entry may pass
        // it, so a reader always gets on.
        let mut budget = self.cx.page_bytes;
        let mut taken_any = false;
        for (stream, after) in streams {
            let mut keep =
                |key: &str, seq: u64| !latest_only || state.is_latest_visible(&stream, key, seq);
            let page_limit = PageLimit {
                entries: limit,
                bytes: budget,
                at_least_one: !taken_any,
            };
            let (entries, more) = self
                .cx
                .store
                .stream_entries(
                    state.layout(),
                    &stream,
                    after,
                    self.durable_seq,
                    page_limit,
                    &mut keep,
                )
                .map_err(|e| self.read_failed(e))?;
            let used: usize = entries
                .iter()
                .map(|e| e.key.len() + e.body.as_str().len())
                .sum();
            budget = budget.saturating_sub(used);
            taken_any |= !entries.is_empty();
            pages.push(StreamPage {
                stream,
                entries,
                more,
            });
        }
        Ok(RoomReply::Fetched(Fetched {
            pages,
            seq: self.durable_seq,
        }))
    }

    /// Asks for the log to be compacted; `reply` gets the report.
    fn request_compaction(&mut self, reply: Option<Reply>, ctx: &mut Context<Self>) {
        self.compaction_replies.extend(reply);
        if matches!(self.compaction, Compaction::Idle) {
            self.compaction = Compaction::Pending;
        }
        self.start_compaction(ctx);
    }

    /// Starts a pending compaction of the durable log. It rewrites the log in bounded steps on
    /// a blocking thread while the room goes on merging, committing and serving reads: it
    /// leaves alone what is committed after it starts, and each step leaves a whole log.
    fn start_compaction(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.compaction, Compaction::Pending) || self.recovering {
            return;
        }
        let Some(state) = self.state.as_ref() else {
            return;
        };
        self.compaction = Compaction::Running;
        let job = state.compaction(
            self.cx.store.clone(),
            self.cx.model.clone(),
            now_ms(),
            self.durable_seq,
        );
        let running = self.running.clone();
        // Commits and reads go on while it waits for its turn.
        let turn = self.cx.store.compaction_turn();
        let run = async move {
            let _turn = turn.await;
            running.spawn_blocking(job).await
        };
        ctx.spawn(actix::fut::wrap_future(run).map(
            |result, room: &mut Room, _: &mut Context<Room>| {
                let result = match result {
                    Ok(r) => r.map_err(RoomError::from),
                    Err(e) => Err(RoomError::StorageTask(Arc::new(e))),
                };
                room.compaction_done(result);
            },
        ));
    }

    fn compaction_done(&mut self, result: Result<crate::store::CompactReport, RoomError>) {
        if !matches!(std::mem::take(&mut self.compaction), Compaction::Running) {
            return;
        }
        match &result {
            Ok(report) => {
                if let Some(state) = self.state.as_mut() {
                    state.compacted(report);
                }
                if report.removed > 0 {
                    log::info!(
                        "compacted {}: removed {} log entries, kept {}",
                        self.key,
                        report.removed,
                        report.kept
                    );
                }
            }
            // Each step is one atomic batch: a failed one left a whole log behind.
            Err(e) => log::warn!("compaction of {} failed: {e}", self.key),
        }
        for reply in self.compaction_replies.drain(..) {
            reply.send(result.clone().map(RoomReply::Compacted));
        }
    }

    /// A read the store could not serve. While storage is failing (a full disk) the store may
    /// not read back what it failed to write, and the answer is a retryable refusal; otherwise it
    /// is the storage error itself. Logged here with its cause either way: the client only
    /// hears the code.
    fn read_failed(&self, e: StorageError) -> RoomError {
        if self.cx.store.health().ok() {
            log::error!("{}: a read failed: {e}", self.key);
            RoomError::from(e)
        } else {
            log::warn!("{}: a read failed while storage is failing: {e}", self.key);
            RoomError::Unavailable
        }
    }

    fn idle(&self) -> bool {
        self.members.is_empty()
            && self.open.is_empty()
            && self.open_held.is_empty()
            && self.in_flight.is_empty()
            && self.gathered.is_none()
            && matches!(self.compaction, Compaction::Idle)
            && !self.order.busy()
            && self.last_activity.elapsed() >= self.cx.idle_timeout
    }
}

/// The order a room starts with, and starts again with after a reload.
fn new_order(cx: &RoomContext) -> Box<dyn Order<Reply>> {
    match cx.cluster.as_ref() {
        None => Box::new(LocalOrder),
        Some(link) => {
            let handle = link.handle.clone();
            Box::new(ClusterOrder::new(
                link.handle.node().to_string(),
                Box::new(move || handle.epoch().is_some()),
            ))
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.actor.count.inc();
        self.cx.metrics.rooms_started.inc();
        // The mailbox waits while the room loads.
        ctx.wait(actix::fut::wrap_future(self.load()).map(
            |loaded, room: &mut Room, ctx: &mut Context<Room>| match loaded {
                Ok(Ok(state)) => {
                    room.durable_seq = state.meta().seq;
                    room.state = Some(state);
                    room.start_order(ctx);
                }
                Ok(Err(e)) => {
                    log::error!("cannot load {}: {e}", room.key);
                    ctx.stop();
                }
                Err(e) => {
                    log::error!("loading {} failed: {e}", room.key);
                    ctx.stop();
                }
            },
        ));
        let tick = (self.cx.idle_timeout / 2).max(Duration::from_millis(50));
        ctx.run_interval(tick, |room, ctx| {
            if !room.idle() {
                return;
            }
            // Leave a compact log behind: the next start replays less.
            if room
                .state
                .as_ref()
                .is_some_and(|s| s.worth_compacting(true))
            {
                room.request_compaction(None, ctx);
            } else {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.leave_cluster();
        self.flush_gathered();
        self.actor.count.dec();
        self.cx.metrics.rooms_stopped.inc();
        let _ = self.cx.directory.try_send(RoomStopped {
            key: self.key.clone(),
        });
        // Whatever is still held answers `Gone` as it is dropped.
    }
}

impl Handler<Request> for Room {
    type Result = ();

    fn handle(&mut self, msg: Request, ctx: &mut Context<Self>) {
        // Looking at a room (stats) does not keep it loaded.
        if !matches!(msg.body, RoomRequest::Status) {
            self.last_activity = Instant::now();
        }
        self.serve(msg, ctx);
    }
}

impl Room {
    fn serve(&mut self, msg: Request, ctx: &mut Context<Self>) {
        let Request {
            origin,
            body,
            reply,
        } = msg;
        let reads_log = matches!(
            body,
            RoomRequest::Fetch { .. } | RoomRequest::History { .. } | RoomRequest::Subscribe { .. }
        );
        if self.recovering && !reads_log {
            // What the state in memory says may include what never became durable.
            return reply.send(Err(RoomError::Unavailable));
        }
        let answer = match body {
            RoomRequest::Submit { changes } => {
                if let (Some(max), Some(state)) = (self.cx.max_state_bytes, self.state.as_ref()) {
                    let size = state.bytes_after(&changes);
                    if size > max {
                        return reply.send(Err(RoomError::TooLarge { size, max }));
                    }
                }
                return self.submit(origin, changes, reply, ctx);
            }
            RoomRequest::Fetch {
                streams,
                limit,
                subscribe,
                latest_only,
            } => {
                if self.reader_ahead(&streams, ctx) {
                    return reply.send(Err(RoomError::Unavailable));
                }
                self.fetch(origin.as_ref(), streams, limit, subscribe, latest_only)
            }
            RoomRequest::Snapshot => {
                let Some(state) = self.state.as_ref() else {
                    return reply.send(Err(RoomError::Gone));
                };
                let snapshot = RoomReply::Snapshot(Snapshot {
                    records: state.records(),
                    model: state.meta().model.clone(),
                    seq: state.meta().seq,
                });
                return self.after_writes(Held(reply, snapshot));
            }
            RoomRequest::Subscribe { streams } => {
                if let Some(member) = origin.and_then(|o| self.members.get_mut(&o.session))
                    && let Streams::Some(set) = &mut member.streams
                {
                    set.extend(streams);
                }
                Ok(RoomReply::Done)
            }
            RoomRequest::Compact => return self.request_compaction(Some(reply), ctx),
            RoomRequest::Status => match self.state.as_ref() {
                Some(state) => {
                    let mut status = self.status(state);
                    let rate = self.write_rate.read(status.seq, Instant::now());
                    status.writes_per_s = Some(rate);
                    Ok(RoomReply::Status(status))
                }
                None => Err(RoomError::Gone),
            },
            RoomRequest::History { after, upto, limit } => match self.state.as_ref() {
                Some(state) => self
                    .cx
                    .store
                    .history(state.layout(), after, upto.min(self.durable_seq), limit)
                    .map(RoomReply::History)
                    .map_err(|e| self.read_failed(e)),
                None => Err(RoomError::Gone),
            },
        };
        reply.send(answer);
    }
}

impl Handler<CommitOpen> for Room {
    type Result = ();

    fn handle(&mut self, _: CommitOpen, ctx: &mut Context<Self>) {
        self.commit_scheduled = false;
        self.commit(ctx);
    }
}

impl Handler<Committed> for Room {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        if !msg.ok && msg.token <= self.lost_upto {
            // A commit the last failure already took.
            return;
        }
        if !msg.ok {
            return self.fail(ctx);
        }
        if self.recovering {
            // A commit given up on (its answers said "retry"); the reload reads what it left.
            return;
        }
        if msg.token <= self.lost_upto && self.in_flight.front().is_none_or(|f| f.token > msg.token)
        {
            // It reached the disk after the room had dropped it: what is durable is no longer
            // what the room holds.
            log::warn!(
                "{}: a commit it gave up on became durable; reloading",
                self.key
            );
            self.recovering = true;
            return self.reload(ctx);
        }
        let mut entries = Vec::new();
        let mut heads_before = HashMap::new();
        let mut held = Vec::new();
        while self.in_flight.front().is_some_and(|f| f.token <= msg.token) {
            let Some(f) = self.in_flight.pop_front() else {
                break;
            };
            for (stream, head) in f.heads_before {
                heads_before.entry(stream).or_insert(head);
            }
            entries.extend(f.entries);
            held.extend(f.held);
        }
        self.made_durable(entries, heads_before, ctx);
        for h in held {
            self.answer(h);
        }
        if self
            .state
            .as_ref()
            .is_some_and(|s| s.worth_compacting(false))
            && matches!(self.compaction, Compaction::Idle)
        {
            self.compaction = Compaction::Pending;
        }
        self.start_compaction(ctx);
    }
}

impl Room {
    /// Entries are on disk: readers may see them and members are sent them.
    fn made_durable(
        &mut self,
        entries: Vec<LogEntry>,
        heads_before: HashMap<String, u64>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(last) = entries.last() {
            self.durable_seq = self.durable_seq.max(last.seq);
            if let Some(state) = self.state.as_mut() {
                state.release(&entries);
            }
            self.publish(entries, heads_before, ctx);
        }
    }
}

impl Handler<Join> for Room {
    type Result = u64;

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> u64 {
        self.last_activity = Instant::now();
        self.members.insert(
            msg.session,
            Member {
                events: msg.events,
                streams: msg.streams,
                outbound: msg.outbound,
            },
        );
        self.durable_seq
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.last_activity = Instant::now();
        self.members.remove(&msg.session);
    }
}

#[cfg(test)]
mod test_changes;
#[cfg(test)]
mod tests;
