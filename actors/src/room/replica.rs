//! A room in a cluster. Its submits are numbered by the cluster's sequencer before they are
//! merged; every node that has the room merges every batch in number order, its own batches
//! (from the sequencer's answer) and the other nodes' (from pub/sub) alike. A gap in the numbers
//! is filled from the Redis stream or a peer's log; the room catches up before it serves at all.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;

use super::{Held, Room, RoomError, RoomReply};
use crate::cluster::bridge::RestoreCounter;
use crate::cluster::catch_up::{Step, catch_up};
use crate::cluster::{
    BatchBody, Cluster, ClusterError, ClusterHandle, Follow, OrderedBatch, Position, Replicated,
    Resync, Unfollow, scripts,
};
use crate::model::IncomingChange;
use crate::origin::Origin;
use crate::room::reply::Reply;

/// How long a gap may stand before it is filled from the stream: batches of several nodes, and
/// this node's own answers, reach a room in any order.
const GAP_GRACE: Duration = Duration::from_millis(50);

/// How long a room that could not catch up waits before it tries again.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);

/// Where a room in a cluster stands with the cluster.
pub struct Replica {
    pub handle: ClusterHandle,
    pub bridge: Addr<Cluster>,
    /// Caught up since the room started; until then it takes no writes.
    ready: bool,
    /// Submits waiting for the sequencer.
    queued: Vec<Queued>,
    /// A batch is at the sequencer.
    ordering: bool,
    /// Batches numbered but not applied, by first number; this node's carry their replies.
    waiting: BTreeMap<u64, Waiting>,
    gap_check: bool,
    filling: bool,
    /// The counter the last position check showed, while the room had not reached it.
    behind: Option<u64>,
}

struct Queued {
    origin: Option<Origin>,
    changes: Vec<IncomingChange>,
    reply: Reply,
}

struct Waiting {
    batch: OrderedBatch,
    /// This node's submits in the batch, in order: origin, number of changes, reply.
    own: Vec<(Option<Origin>, usize, Reply)>,
}

/// Sends the queued submits to the sequencer; sent to itself once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SendOrder;

impl Replica {
    pub fn new(handle: ClusterHandle, bridge: Addr<Cluster>) -> Replica {
        Replica {
            handle,
            bridge,
            ready: false,
            queued: Vec::new(),
            ordering: false,
            waiting: BTreeMap::new(),
            gap_check: false,
            filling: false,
            behind: None,
        }
    }

    /// Whether the room is behind what the cluster has numbered (known so far).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn busy(&self) -> bool {
        self.ordering || self.filling || !self.queued.is_empty() || !self.waiting.is_empty()
    }
}

fn unavailable(reply: Reply) {
    reply.send(Err(RoomError::Unavailable));
}

impl Room {
    /// Starts following the room's channel and catches up to the cluster before serving.
    pub(super) fn join_cluster(&mut self, ctx: &mut Context<Self>) {
        let Some(replica) = self.replica.as_ref() else {
            return;
        };
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let handle = replica.handle.clone();
        let follow = replica.bridge.send(Follow {
            room: self.key.clone(),
            batches: ctx.address().recipient(),
            resync: ctx.address().recipient(),
            restore: ctx.address().recipient(),
            position: ctx.address().recipient(),
        });
        let room = self.key.clone();
        let run = async move {
            follow.await.map_err(|_| ClusterError::BridgeGone)??;
            let target = handle.counter(&room).await?;
            catch_up(&handle, &room, applied, target).await
        };
        replica.handle.counters().catch_ups.inc();
        ctx.wait(run.into_actor(self).map(|result, room, ctx| {
            room.caught_up(result, ctx);
        }));
    }

    fn caught_up(&mut self, result: Result<Vec<Step>, ClusterError>, ctx: &mut Context<Self>) {
        match result {
            Ok(steps) => {
                self.apply_steps(steps, ctx);
                self.write_catch_up(ctx);
                if let Some(r) = self.replica.as_mut() {
                    r.ready = true;
                }
            }
            Err(e) => {
                // Served from what this node holds; writes wait until a retry succeeds.
                log::warn!("{}: cannot catch up with the cluster: {e}", self.key);
                self.retry_catch_up(ctx);
            }
        }
    }

    fn retry_catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.replica.as_ref().is_some_and(|r| !r.ready) {
            ctx.run_later(CATCH_UP_RETRY, |room, ctx| room.fill(None, ctx));
        }
    }

    /// Writes what the first catch-up merged before the room serves anyone: readers only see
    /// durable changes, so a first request answered earlier would see none of them. It is
    /// written here rather than by the durability actor because that actor answers by message
    /// and the mailbox stays closed until the room is ready.
    fn write_catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.open.is_empty() {
            return;
        }
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let commit = match state.commit(std::mem::take(&mut self.open)) {
            Ok(c) => c,
            Err(e) => {
                log::error!("cannot encode the catch-up of {}: {e}", self.key);
                return self.fail(ctx);
            }
        };
        let store = self.cx.store.clone();
        let writes = commit.writes;
        let write = tokio::task::spawn_blocking(move || {
            store.apply(writes)?;
            store.flush()
        });
        let (entries, heads_before) = (commit.entries, commit.heads_before);
        ctx.wait(
            actix::fut::wrap_future(write).map(
                move |written, room: &mut Room, ctx| match written {
                    Ok(Ok(())) => room.made_durable(entries, heads_before, ctx),
                    Ok(Err(e)) => {
                        log::error!("cannot write the catch-up of {}: {e}", room.key);
                        room.fail(ctx);
                    }
                    Err(e) => {
                        log::error!("writing the catch-up of {} failed: {e}", room.key);
                        room.fail(ctx);
                    }
                },
            ),
        );
    }

    /// A submit in a cluster: queued for the sequencer.
    pub(super) fn submit_to_cluster(
        &mut self,
        origin: Option<Origin>,
        changes: Vec<IncomingChange>,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) {
        let Some(replica) = self.replica.as_mut() else {
            return reply.send(Err(RoomError::Gone));
        };
        if !replica.ready || replica.handle.epoch().is_none() {
            return unavailable(reply);
        }
        if changes.is_empty() {
            return self.after_writes(Held(reply, RoomReply::Submitted(Default::default())));
        }
        replica.queued.push(Queued {
            origin,
            changes,
            reply,
        });
        if !replica.ordering {
            ctx.notify(SendOrder);
        }
    }

    fn send_order(&mut self, ctx: &mut Context<Self>) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if replica.ordering || replica.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut replica.queued);
        let mut body = BatchBody {
            node: replica.handle.node().to_string(),
            changes: Vec::new(),
        };
        let mut own = Vec::with_capacity(queued.len());
        for q in queued {
            let session = q.origin.as_ref().map_or(0, |o| o.session.0);
            own.push((q.origin, q.changes.len(), q.reply));
            for c in q.changes {
                body.changes.push((session, c.stream, c.key, c.body));
            }
        }
        replica.ordering = true;
        let handle = replica.handle.clone();
        let room = self.key.clone();
        let run = async move {
            let first = handle.order(&room, &body).await;
            (first, body)
        };
        ctx.spawn(run.into_actor(self).map(move |(first, body), room, ctx| {
            if let Some(r) = room.replica.as_mut() {
                r.ordering = false;
            }
            room.order_answered(first, body, own, ctx);
            ctx.notify(SendOrder);
        }));
    }

    fn order_answered(
        &mut self,
        first: Result<u64, ClusterError>,
        body: BatchBody,
        own: Vec<(Option<Origin>, usize, Reply)>,
        ctx: &mut Context<Self>,
    ) {
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                log::warn!("{}: ordering failed: {e}", self.key);
                own.into_iter().for_each(|(_, _, reply)| unavailable(reply));
                return;
            }
        };
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let batch = OrderedBatch { first, body };
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if batch.last() <= applied {
            // Applied already from the stream, without its replies: the senders retry, and
            // their resends merge as the no-ops they are.
            own.into_iter().for_each(|(_, _, reply)| unavailable(reply));
            return;
        }
        replica.waiting.insert(first, Waiting { batch, own });
        self.apply_waiting(ctx);
    }

    /// Applies every waiting batch that follows on from what is applied.
    fn apply_waiting(&mut self, ctx: &mut Context<Self>) {
        loop {
            let Some(applied) = self.state.as_ref().map(|s| s.meta().seq) else {
                return;
            };
            let Some(replica) = self.replica.as_mut() else {
                return;
            };
            let Some((&first, next)) = replica.waiting.first_key_value() else {
                break;
            };
            if next.batch.last() <= applied {
                if let Some(stale) = replica.waiting.remove(&first) {
                    stale
                        .own
                        .into_iter()
                        .for_each(|(_, _, reply)| unavailable(reply));
                }
                continue;
            }
            if first > applied + 1 {
                self.schedule_gap_check(ctx);
                break;
            }
            let Some(w) = replica.waiting.remove(&first) else {
                break;
            };
            self.apply_batch(w, applied);
        }
        self.schedule_commit(ctx);
    }

    /// Merges one batch, in order; the changes at or below `applied` are already in.
    fn apply_batch(&mut self, w: Waiting, applied: u64) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let model = self.cx.model.clone();
        let first = w.batch.first;
        if w.own.is_empty() {
            for (seq, origin, changes) in w.batch.submits() {
                let skip = (applied + 1).saturating_sub(seq) as usize;
                if skip >= changes.len() {
                    continue;
                }
                let changes = changes.into_iter().skip(skip).collect();
                let done = state.apply_ordered(
                    model.as_ref(),
                    seq + skip as u64,
                    Some(&origin),
                    changes,
                    &mut self.open,
                );
                self.dialect.changes.inc_by(done.accepted as u64);
            }
            return;
        }
        let mut changes = w
            .batch
            .body
            .changes
            .into_iter()
            .map(|(_, stream, key, body)| IncomingChange { stream, key, body });
        let mut seq = first;
        let mut answers = Vec::with_capacity(w.own.len());
        for (origin, n, reply) in w.own {
            let submit: Vec<IncomingChange> = changes.by_ref().take(n).collect();
            let done =
                state.apply_ordered(model.as_ref(), seq, origin.as_ref(), submit, &mut self.open);
            seq += n as u64;
            self.dialect.changes.inc_by(done.accepted as u64);
            answers.push(Held(reply, RoomReply::Submitted(done)));
        }
        for held in answers {
            self.after_writes(held);
        }
    }

    fn schedule_gap_check(&mut self, ctx: &mut Context<Self>) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if replica.gap_check || replica.filling {
            return;
        }
        replica.gap_check = true;
        ctx.run_later(GAP_GRACE, |room, ctx| {
            let Some(replica) = room.replica.as_mut() else {
                return;
            };
            replica.gap_check = false;
            let applied = room.state.as_ref().map_or(0, |s| s.meta().seq);
            let gap_end = replica
                .waiting
                .first_key_value()
                .map(|(first, _)| *first - 1)
                .filter(|end| *end > applied);
            if let Some(end) = gap_end {
                replica.handle.counters().gaps_repaired.inc();
                room.fill(Some(end), ctx);
            }
        });
    }

    /// Catches up to `target`, or to the room's counter in Redis.
    fn fill(&mut self, target: Option<u64>, ctx: &mut Context<Self>) {
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if replica.filling {
            return;
        }
        replica.filling = true;
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let handle = replica.handle.clone();
        let room = self.key.clone();
        let run = async move {
            let target = match target {
                Some(t) => t,
                None => handle.counter(&room).await?,
            };
            catch_up(&handle, &room, applied, target).await
        };
        ctx.spawn(run.into_actor(self).map(|result, room, ctx| {
            if let Some(r) = room.replica.as_mut() {
                r.filling = false;
            }
            match result {
                Ok(steps) => {
                    room.apply_steps(steps, ctx);
                    if let Some(r) = room.replica.as_mut() {
                        r.ready = true;
                    }
                }
                Err(e) => {
                    log::warn!("{}: cannot catch up: {e}", room.key);
                    room.retry_catch_up(ctx);
                }
            }
            room.apply_waiting(ctx);
        }));
    }

    fn apply_steps(&mut self, steps: Vec<Step>, ctx: &mut Context<Self>) {
        for step in steps {
            match step {
                Step::Batches(batches) => {
                    if let Some(replica) = self.replica.as_mut() {
                        for batch in batches {
                            replica.waiting.entry(batch.first).or_insert(Waiting {
                                batch,
                                own: Vec::new(),
                            });
                        }
                    }
                    self.apply_waiting(ctx);
                }
                Step::History(page) => {
                    let Some(state) = self.state.as_mut() else {
                        return;
                    };
                    let applied = state.meta().seq;
                    for (stream, key, record) in page.records {
                        if record.seq > applied {
                            state.replay_record(&stream, &key, record.seq, record.value);
                        }
                    }
                    for entry in page.entries {
                        if entry.seq <= applied {
                            continue;
                        }
                        if let Err(e) = state.replay(self.cx.model.as_ref(), entry, &mut self.open)
                        {
                            log::error!("{}: a peer sent an unreadable change: {e}", self.key);
                        }
                    }
                    state.advance_to(page.upto);
                    self.apply_waiting(ctx);
                }
            }
        }
        self.schedule_commit(ctx);
    }
}

impl Handler<SendOrder> for Room {
    type Result = ();

    fn handle(&mut self, _: SendOrder, ctx: &mut Context<Self>) {
        self.send_order(ctx);
    }
}

impl Handler<Replicated> for Room {
    type Result = ();

    fn handle(&mut self, Replicated(batch): Replicated, ctx: &mut Context<Self>) {
        self.actor.handled();
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if batch.last() <= applied {
            return;
        }
        replica.waiting.entry(batch.first).or_insert(Waiting {
            batch,
            own: Vec::new(),
        });
        self.apply_waiting(ctx);
    }
}

impl Handler<Resync> for Room {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.actor.handled();
        if let Some(replica) = self.replica.as_ref() {
            replica.handle.counters().catch_ups.inc();
        }
        self.fill(None, ctx);
    }
}

impl Handler<Position> for Room {
    type Result = ();

    fn handle(&mut self, Position(counter): Position, ctx: &mut Context<Self>) {
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        if counter <= applied {
            replica.behind = None;
            return;
        }
        // Batches in flight, an order of this node's own, or a fill under way explain a short
        // lag; one that outlasts a whole beat does not.
        let stuck = replica.behind.is_some_and(|seen| applied < seen);
        replica.behind = Some(counter);
        if stuck && !replica.ordering && !replica.filling {
            replica.behind = None;
            replica.handle.counters().gaps_repaired.inc();
            self.fill(None, ctx);
        }
    }
}

impl Handler<RestoreCounter> for Room {
    type Result = ResponseFuture<Result<(), ClusterError>>;

    fn handle(&mut self, _: RestoreCounter, _: &mut Context<Self>) -> Self::Result {
        self.actor.handled();
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let Some(replica) = self.replica.as_ref() else {
            return Box::pin(async { Ok(()) });
        };
        let handle = replica.handle.clone();
        let counter = handle.keys().counter(&self.key);
        Box::pin(async move {
            let mut conn = handle.conn();
            let _: i64 = scripts::restore_counters()
                .key(counter)
                .arg(applied)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }
}

impl Room {
    /// Stops following the room's channel (the room is stopping).
    pub(super) fn leave_cluster(&mut self) {
        if let Some(replica) = self.replica.as_ref() {
            replica.bridge.do_send(Unfollow {
                room: self.key.clone(),
            });
        }
    }
}
