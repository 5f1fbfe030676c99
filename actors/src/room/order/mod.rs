//! Where a room's changes get their numbers and in which order they merge: the one seam
//! between a room and whatever orders it, chosen when the room starts.
//!
//! - [`LocalOrder`], one node: a submit merges at once against the room's state and the
//!   changes that win take the next numbers, 1, 2, 3, … without holes.
//! - [`ClusterOrder`], several nodes: a submit is numbered by the cluster's sequencer first,
//!   and every node merges every numbered batch in number order, its own and the others'
//!   alike, so all of them reach the same state.
//!
//! Both are sans-IO: an [`Input`] goes in, [`Effect`]s come out, and nothing here waits, reads a
//! clock or talks to Redis. The Room actor performs the effects against the real cluster; the
//! cluster simulation performs them against an in-process sequencer and a seeded network, which
//! is what makes the protocol testable by the thousand runs.

mod cluster;
#[cfg(test)]
mod simulation;

use std::time::Duration;

pub use cluster::ClusterOrder;

use super::error::RoomError;
use super::messages::{ReplicaStatus, Submitted};
use super::state::{OpenBatch, RoomState};
use crate::cluster::catch_up::Step;
use crate::cluster::{BatchBody, ClusterError, OrderedBatch};
use crate::model::{IncomingChange, Model};
use crate::origin::Origin;

/// What a room hands its order.
pub enum Input<R> {
    /// A client's changes, with where the answer goes.
    Submit {
        origin: Option<Origin>,
        changes: Vec<IncomingChange>,
        reply: R,
    },
    /// The room's mailbox is drained: what was submitted meanwhile goes to the sequencer as
    /// one batch (the answer to [`Effect::SequenceSoon`]).
    SequenceNow,
    /// The sequencer's answer to [`Effect::Sequence`], with the batch sent.
    Sequenced {
        first: Result<u64, ClusterError>,
        body: BatchBody,
    },
    /// A numbered batch, from pub/sub: another node's, or this node's own.
    Replicated(OrderedBatch),
    /// What the last [`Effect::CatchUp`] read.
    CaughtUp(Result<Vec<Step>, ClusterError>),
    /// A timer of [`Effect::After`] went off.
    Timer(Timer),
    /// The room's counter at the sequencer, as a periodic check saw it.
    Position(u64),
    /// The node may have missed published batches: catch up with the sequencer.
    Resync,
}

/// What the order asks the room to do.
#[derive(Debug)]
pub enum Effect<R> {
    /// Answer with this once every write made so far is durable.
    Answer(R, Submitted),
    /// Answer with this error now.
    Refuse(R, RoomError),
    /// Send [`Input::SequenceNow`] once the mailbox is drained.
    SequenceSoon,
    /// Number this batch at the sequencer, then send [`Input::Sequenced`].
    Sequence(BatchBody),
    /// Read what the room lacks up to `target` (the sequencer's counter when `None`), then send
    /// [`Input::CaughtUp`].
    CatchUp {
        target: Option<u64>,
        why: CatchUpWhy,
    },
    /// Send [`Input::Timer`] after this long.
    After(Duration, Timer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A gap in the numbers has stood for a grace period.
    Gap,
    /// A catch-up failed; try again.
    Retry,
}

/// Why a catch-up runs: the room counts them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpWhy {
    /// The room starts: it takes no writes before it is caught up.
    Start,
    /// The node may have missed published batches.
    Resync,
    /// A gap in the numbers outlived its grace period, or the room stayed behind the counter.
    Gap,
    /// An earlier catch-up failed.
    Retry,
    /// A client read from a position past what the room has applied: a number the cluster
    /// gave out that this node has not merged yet.
    Reader,
}

/// The room's state as an order merges into it.
pub struct Merging<'a> {
    pub state: &'a mut RoomState,
    pub model: &'a dyn Model,
    pub open: &'a mut OpenBatch,
    /// Changes accepted by this input, for the room's metrics.
    pub accepted: u64,
}

impl Merging<'_> {
    pub fn applied(&self) -> u64 {
        self.state.meta().seq
    }
}

/// How a room orders its changes. `R` is where an answer goes (a session's reply slot in the
/// actor, a request id in the simulation).
pub trait Order<R>: Send {
    fn input(&mut self, input: Input<R>, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>);

    /// The room may commit what it merged and take writes: caught up with the cluster.
    fn ready(&self) -> bool;

    /// Work is under way that an idle room must not drop.
    fn busy(&self) -> bool;

    /// Where the room stands with the cluster, when it is in one.
    fn status(&self) -> Option<ReplicaStatus>;

    /// The room's state is loaded: what the order must do before the room serves.
    fn start(&mut self, out: &mut Vec<Effect<R>>);

    /// The room drops what it merged and reloads what is durable (a write failed): every
    /// answer the order holds is refused with a retryable error. The room then starts a new
    /// order over the reloaded state.
    fn abandon(&mut self, out: &mut Vec<Effect<R>>);

    /// The highest number the room holds a change under, merged or waiting to be: what a
    /// sequencer that lost its data must raise the room's counter past. Counting only what is
    /// merged would let a batch waiting behind a gap be given its numbers again.
    fn numbered_upto(&self, applied: u64) -> u64 {
        applied
    }

    /// A client reads from `position`, past `applied`: whether its read must be refused (as
    /// retryable) while the room catches up. A client has what it asked for, never merely what
    /// this node happened to hold: answering from here would hand it a checkpoint below its
    /// own. A single node gave every number it holds, so a position past them is not one of its
    /// own and is answered from what there is.
    fn reader_ahead(&mut self, _position: u64, _applied: u64, _out: &mut Vec<Effect<R>>) -> bool {
        false
    }
}

/// A single node's order: merge, then number.
#[derive(Debug, Default)]
pub struct LocalOrder;

impl<R> Order<R> for LocalOrder {
    fn input(&mut self, input: Input<R>, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
        match input {
            Input::Submit {
                origin,
                changes,
                reply,
            } => {
                let done = m.state.submit(m.model, origin.as_ref(), changes, m.open);
                m.accepted += done.accepted as u64;
                out.push(Effect::Answer(reply, done));
            }
            // Only a cluster sends these, and it never runs a room ordered here.
            _ => log::debug!("a single node's room got a cluster input; ignored"),
        }
    }

    fn ready(&self) -> bool {
        true
    }

    fn busy(&self) -> bool {
        false
    }

    fn status(&self) -> Option<ReplicaStatus> {
        None
    }

    fn start(&mut self, _: &mut Vec<Effect<R>>) {}

    fn abandon(&mut self, _: &mut Vec<Effect<R>>) {}
}
