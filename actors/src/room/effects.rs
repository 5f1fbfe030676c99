//! The Room actor as the driver of its [`Order`](super::order::Order): it hands the order its
//! inputs (submits, and in a cluster the bridge's messages and the answers of Redis and the
//! peers) and performs the effects the order asks for (a call to the sequencer, a catch-up, a
//! timer, an answer held until the writes before it are durable).

use actix::prelude::*;

use super::order::{CatchUpWhy, Effect, Input, Merging};
use super::{Held, Room, RoomError, RoomReply};
use crate::cluster::catch_up::catch_up;
use crate::cluster::restore::RestoreCounter;
use crate::cluster::{
    BatchBody, ClusterError, Follow, Position, Replicated, Resync, Unfollow, scripts,
};
use crate::room::reply::Reply;

/// Sends the queued submits to the sequencer; sent to itself once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SequenceNow;

impl Room {
    /// Hands the order an input, performs what it asks, and commits what it merged once the
    /// mailbox is drained.
    pub(super) fn run(&mut self, input: Input<Reply>, ctx: &mut Context<Self>) {
        self.feed(input, ctx);
        self.schedule_commit(ctx);
    }

    /// [`Room::run`] without the commit.
    fn feed(&mut self, input: Input<Reply>, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_mut() else {
            if let Input::Submit { reply, .. } = input {
                reply.send(Err(RoomError::Gone));
            }
            return;
        };
        if self.recovering {
            // The state is about to be replaced by what is durable; the order that starts
            // then catches up with whatever arrives meanwhile.
            if let Input::Submit { reply, .. } = input {
                reply.send(Err(RoomError::Unavailable));
            }
            return;
        }
        let mut out = Vec::new();
        let mut m = Merging {
            state,
            model: self.cx.model.as_ref(),
            open: &mut self.open,
            accepted: 0,
        };
        self.order.input(input, &mut m, &mut out);
        self.dialect.changes.inc_by(m.accepted);
        self.perform(out, ctx);
    }

    /// Whether a read from these positions must be refused (as retryable) for now. A read is
    /// answered from what is durable here, with this node's durable number as the reader's new
    /// position, so a reader that holds more (a number another node of the cluster made
    /// durable) would be moved back. It is refused until this node has made that much durable:
    /// at once when the room has merged it, after a catch-up otherwise; the order decides
    /// whether a catch-up can bring it (a single node's cannot, see
    /// [`Order::reader_ahead`](super::order::Order::reader_ahead)).
    pub(super) fn reader_ahead(
        &mut self,
        positions: &[(String, u64)],
        ctx: &mut Context<Self>,
    ) -> bool {
        let Some(position) = positions.iter().map(|(_, at)| *at).max() else {
            return false;
        };
        if position <= self.durable_seq {
            return false;
        }
        if self.recovering {
            // The order that starts after the reload catches up; it takes no input before.
            return true;
        }
        let Some(applied) = self.state.as_ref().map(|s| s.meta().seq) else {
            return false;
        };
        let mut out = Vec::new();
        let behind = self.order.reader_ahead(position, applied, &mut out);
        self.perform(out, ctx);
        // Merged but not durable yet: the next commit makes it so.
        behind || position <= applied
    }

    /// The room's state is loaded: the order may have to catch up before the room serves.
    pub(super) fn start_order(&mut self, ctx: &mut Context<Self>) {
        let mut out = Vec::new();
        self.order.start(&mut out);
        self.perform(out, ctx);
    }

    pub(super) fn perform(&mut self, effects: Vec<Effect<Reply>>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Answer(reply, done) => {
                    self.after_writes(Held(reply, RoomReply::Submitted(done)))
                }
                Effect::Refuse(reply, e) => reply.send(Err(e)),
                Effect::SequenceSoon => ctx.notify(SequenceNow),
                Effect::Sequence(body) => self.sequence(body, ctx),
                Effect::CatchUp { target, why } => self.catch_up(target, why, ctx),
                Effect::After(delay, timer) => {
                    let life = self.order_life;
                    ctx.run_later(delay, move |room, ctx| {
                        room.run_if_current(life, Input::Timer(timer), ctx);
                    });
                }
            }
        }
    }

    /// [`Room::run`], for what an order started: dropped when the room has started another
    /// order since.
    fn run_if_current(&mut self, life: u64, input: Input<Reply>, ctx: &mut Context<Self>) {
        if life == self.order_life {
            self.run(input, ctx);
        }
    }

    fn sequence(&mut self, body: BatchBody, ctx: &mut Context<Self>) {
        let Some(link) = self.cx.cluster.as_ref() else {
            return self.run(
                Input::Sequenced {
                    first: Err(ClusterError::Unavailable),
                    body,
                },
                ctx,
            );
        };
        let handle = link.handle.clone();
        let room = self.key.clone();
        let life = self.order_life;
        let run = async move {
            let first = handle.order(&room, &body).await;
            (first, body)
        };
        ctx.spawn(run.into_actor(self).map(move |(first, body), room, ctx| {
            room.run_if_current(life, Input::Sequenced { first, body }, ctx);
        }));
    }

    fn catch_up(&mut self, target: Option<u64>, why: CatchUpWhy, ctx: &mut Context<Self>) {
        let Some(link) = self.cx.cluster.as_ref() else {
            return self.run(Input::CaughtUp(Err(ClusterError::Unavailable)), ctx);
        };
        let counters = link.handle.counters();
        match why {
            CatchUpWhy::Start | CatchUpWhy::Resync | CatchUpWhy::Reader => counters.catch_ups.inc(),
            CatchUpWhy::Gap => counters.gaps_repaired.inc(),
            CatchUpWhy::Retry => {}
        }
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let handle = link.handle.clone();
        let room = self.key.clone();
        let life = self.order_life;
        if why != CatchUpWhy::Start {
            let run = async move {
                let target = match target {
                    Some(t) => t,
                    None => handle.counter(&room).await?,
                };
                catch_up(&handle, &room, applied, target).await
            };
            ctx.spawn(run.into_actor(self).map(move |result, room, ctx| {
                room.run_if_current(life, Input::CaughtUp(result), ctx);
            }));
            return;
        }
        // A starting room follows the room's channel first, so that nothing published after
        // the catch-up read the counter is missed, and keeps its mailbox closed until it is
        // caught up.
        let follow = link.bridge.send(Follow {
            room: self.key.clone(),
            batches: ctx.address().recipient(),
            resync: ctx.address().recipient(),
            restore: ctx.address().recipient(),
            position: ctx.address().recipient(),
        });
        let run = async move {
            follow.await.map_err(|_| ClusterError::BridgeGone)??;
            let target = handle.counter(&room).await?;
            catch_up(&handle, &room, applied, target).await
        };
        ctx.wait(run.into_actor(self).map(move |result, room, ctx| {
            if life == room.order_life {
                room.feed(Input::CaughtUp(result), ctx);
                room.write_catch_up(ctx);
            }
        }));
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
        let write = self.running.clone().spawn_blocking(move || {
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

    /// Stops following the room's channel (the room is stopping).
    pub(super) fn leave_cluster(&mut self) {
        if let Some(link) = self.cx.cluster.as_ref() {
            link.bridge.do_send(Unfollow {
                room: self.key.clone(),
            });
        }
    }
}

impl Handler<SequenceNow> for Room {
    type Result = ();

    fn handle(&mut self, _: SequenceNow, ctx: &mut Context<Self>) {
        self.run(Input::SequenceNow, ctx);
    }
}

impl Handler<Replicated> for Room {
    type Result = ();

    fn handle(&mut self, Replicated(batch): Replicated, ctx: &mut Context<Self>) {
        self.run(Input::Replicated(batch), ctx);
    }
}

impl Handler<Resync> for Room {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.run(Input::Resync, ctx);
    }
}

impl Handler<Position> for Room {
    type Result = ();

    fn handle(&mut self, Position(counter): Position, ctx: &mut Context<Self>) {
        self.run(Input::Position(counter), ctx);
    }
}

impl Handler<RestoreCounter> for Room {
    type Result = ResponseFuture<Result<(), ClusterError>>;

    fn handle(&mut self, _: RestoreCounter, _: &mut Context<Self>) -> Self::Result {
        let applied = self.state.as_ref().map_or(0, |s| s.meta().seq);
        let upto = self.order.numbered_upto(applied);
        let Some(link) = self.cx.cluster.as_ref() else {
            return Box::pin(async { Ok(()) });
        };
        let handle = link.handle.clone();
        let counter = handle.keys().counter(&self.key);
        Box::pin(async move {
            let mut conn = handle.conn()?;
            let _: i64 = scripts::restore_counters()
                .key(counter)
                .arg(upto)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }
}
