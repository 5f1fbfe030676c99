//! The cluster's order: number first, then merge in number order.
//!
//! A node's submits go to the sequencer as one batch at a time; every node that has the room
//! merges every numbered batch in number order, its own (from the sequencer's answer) and the
//! other nodes' (from pub/sub) alike. Batches reach a room in any order and pub/sub loses some:
//! a gap that stands for [`GAP_GRACE`] is filled by a catch-up (the stream, or a peer's log),
//! and a room catches up before it takes its first write.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CatchUpWhy, Effect, Input, Merging, Order, Timer};
use crate::cluster::catch_up::Step;
use crate::cluster::{BatchBody, OrderedBatch};
use crate::model::IncomingChange;
use crate::origin::Origin;
use crate::room::error::RoomError;
use crate::room::messages::{ReplicaStatus, Submitted};

/// How long a gap may stand before it is filled from the stream: batches of several nodes, and
/// this node's own answers, reach a room in any order.
pub const GAP_GRACE: Duration = Duration::from_millis(50);

/// How long a room that could not catch up waits before it tries again.
pub const CATCH_UP_RETRY: Duration = Duration::from_secs(1);

pub struct ClusterOrder<R> {
    /// The node's name, as batches carry it.
    node: String,
    /// Whether the sequencer numbers changes right now (it does not while Redis is being
    /// restored); asked at each submit.
    sequencer_up: Box<dyn Fn() -> bool + Send>,
    /// Caught up since the room started; until then it takes no writes.
    ready: bool,
    /// Submits waiting for the sequencer.
    queued: Vec<Queued<R>>,
    sequence_soon: bool,
    /// The submits of the batch at the sequencer, in order; `None` when none is.
    at_sequencer: Option<Vec<Own<R>>>,
    /// Batches numbered but not applied, by first number; this node's carry their replies.
    waiting: BTreeMap<u64, Waiting<R>>,
    gap_check: bool,
    filling: bool,
    /// The counter the last position check showed, while the room had not reached it.
    behind: Option<u64>,
}

struct Queued<R> {
    origin: Option<Origin>,
    changes: Vec<IncomingChange>,
    reply: R,
}

/// One of this node's submits in a batch: who sent it, how many changes, where its answer goes.
struct Own<R> {
    origin: Option<Origin>,
    changes: usize,
    reply: R,
}

struct Waiting<R> {
    batch: OrderedBatch,
    own: Vec<Own<R>>,
}

fn refuse_all<R>(own: Vec<Own<R>>, out: &mut Vec<Effect<R>>) {
    out.extend(
        own.into_iter()
            .map(|o| Effect::Refuse(o.reply, RoomError::Unavailable)),
    );
}

impl<R> ClusterOrder<R> {
    /// A room that is not caught up yet; [`Order::start`] says how it gets there.
    pub fn new(node: String, sequencer_up: Box<dyn Fn() -> bool + Send>) -> ClusterOrder<R> {
        ClusterOrder {
            node,
            sequencer_up,
            ready: false,
            queued: Vec::new(),
            sequence_soon: false,
            at_sequencer: None,
            waiting: BTreeMap::new(),
            gap_check: false,
            filling: false,
            behind: None,
        }
    }

    fn submit(
        &mut self,
        origin: Option<Origin>,
        changes: Vec<IncomingChange>,
        reply: R,
        out: &mut Vec<Effect<R>>,
    ) {
        if !self.ready || !(self.sequencer_up)() {
            return out.push(Effect::Refuse(reply, RoomError::Unavailable));
        }
        if changes.is_empty() {
            return out.push(Effect::Answer(reply, Submitted::default()));
        }
        self.queued.push(Queued {
            origin,
            changes,
            reply,
        });
        self.sequence_soon(out);
    }

    /// Submits that reach the room together go to the sequencer together, one batch at a time.
    fn sequence_soon(&mut self, out: &mut Vec<Effect<R>>) {
        if !self.sequence_soon && self.at_sequencer.is_none() && !self.queued.is_empty() {
            self.sequence_soon = true;
            out.push(Effect::SequenceSoon);
        }
    }

    fn sequence_now(&mut self, out: &mut Vec<Effect<R>>) {
        self.sequence_soon = false;
        if self.at_sequencer.is_some() || self.queued.is_empty() {
            return;
        }
        let mut body = BatchBody {
            node: self.node.clone(),
            changes: Vec::new(),
        };
        let mut own = Vec::with_capacity(self.queued.len());
        for q in self.queued.drain(..) {
            let session = q.origin.as_ref().map_or(0, |o| o.session.0);
            own.push(Own {
                origin: q.origin,
                changes: q.changes.len(),
                reply: q.reply,
            });
            for c in q.changes {
                body.changes.push((session, c.stream, c.key, c.body));
            }
        }
        self.at_sequencer = Some(own);
        out.push(Effect::Sequence(body));
    }

    fn sequenced(
        &mut self,
        first: Result<u64, crate::cluster::ClusterError>,
        body: BatchBody,
        m: &mut Merging<'_>,
        out: &mut Vec<Effect<R>>,
    ) {
        // None: the order was reset while the batch was at the sequencer. Its numbers are
        // taken; the batch reaches the room again through pub/sub or a catch-up.
        let Some(own) = self.at_sequencer.take() else {
            return;
        };
        match first {
            Err(e) => {
                log::warn!("{}: ordering failed: {e}", m.state.key());
                refuse_all(own, out);
            }
            Ok(first) => {
                let batch = OrderedBatch { first, body };
                if batch.last() <= m.applied() {
                    // Applied already from pub/sub or a catch-up, without its answers: the
                    // senders retry, and their resends merge as the no-ops they are.
                    refuse_all(own, out);
                } else {
                    self.waiting.insert(first, Waiting { batch, own });
                    self.apply_waiting(m, out);
                }
            }
        }
        self.sequence_soon(out);
    }

    fn replicated(&mut self, batch: OrderedBatch, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
        if batch.last() <= m.applied() {
            return;
        }
        self.waiting.entry(batch.first).or_insert(Waiting {
            batch,
            own: Vec::new(),
        });
        self.apply_waiting(m, out);
    }

    /// Applies every waiting batch that follows on from what is applied.
    fn apply_waiting(&mut self, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
        while let Some(entry) = self.waiting.first_entry() {
            let applied = m.applied();
            let (first, last) = (*entry.key(), entry.get().batch.last());
            if last <= applied {
                refuse_all(entry.remove().own, out);
                continue;
            }
            if first > applied + 1 {
                self.check_gap_later(out);
                break;
            }
            let waiting = entry.remove();
            apply_batch(waiting, applied, m, out);
        }
    }

    fn check_gap_later(&mut self, out: &mut Vec<Effect<R>>) {
        if !self.gap_check && !self.filling {
            self.gap_check = true;
            out.push(Effect::After(GAP_GRACE, Timer::Gap));
        }
    }

    fn gap_timer(&mut self, m: &Merging<'_>, out: &mut Vec<Effect<R>>) {
        self.gap_check = false;
        let applied = m.applied();
        let gap_end = self
            .waiting
            .first_key_value()
            .map(|(first, _)| *first - 1)
            .filter(|end| *end > applied);
        if let Some(end) = gap_end {
            self.fill(Some(end), CatchUpWhy::Gap, out);
        }
    }

    /// Catches up to `target`, or to the room's counter at the sequencer.
    fn fill(&mut self, target: Option<u64>, why: CatchUpWhy, out: &mut Vec<Effect<R>>) {
        if self.filling {
            return;
        }
        self.filling = true;
        out.push(Effect::CatchUp { target, why });
    }

    fn caught_up(
        &mut self,
        result: Result<Vec<Step>, crate::cluster::ClusterError>,
        m: &mut Merging<'_>,
        out: &mut Vec<Effect<R>>,
    ) {
        self.filling = false;
        match result {
            Ok(steps) => {
                self.apply_steps(steps, m, out);
                self.ready = true;
            }
            Err(e) => {
                // Served from what this node holds; writes wait until a retry succeeds.
                log::warn!("{}: cannot catch up with the cluster: {e}", m.state.key());
                if !self.ready {
                    out.push(Effect::After(CATCH_UP_RETRY, Timer::Retry));
                }
            }
        }
        self.apply_waiting(m, out);
        self.sequence_soon(out);
    }

    fn apply_steps(&mut self, steps: Vec<Step>, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
        for step in steps {
            match step {
                Step::Batches(batches) => {
                    for batch in batches {
                        self.waiting.entry(batch.first).or_insert(Waiting {
                            batch,
                            own: Vec::new(),
                        });
                    }
                }
                Step::History(page) => {
                    let applied = m.applied();
                    for (stream, key, record) in page.records {
                        if record.seq > applied {
                            m.state
                                .replay_record(&stream, &key, record.seq, record.value);
                        }
                    }
                    for entry in page.entries {
                        if entry.seq <= applied {
                            continue;
                        }
                        if let Err(e) = m.state.replay(m.model, entry, m.open) {
                            log::error!("{}: a peer sent an unreadable change: {e}", m.state.key());
                        }
                    }
                    m.state.advance_to(page.upto, m.open);
                }
            }
            self.apply_waiting(m, out);
        }
    }

    fn position(&mut self, counter: u64, m: &Merging<'_>, out: &mut Vec<Effect<R>>) {
        let applied = m.applied();
        if counter <= applied {
            self.behind = None;
            return;
        }
        // Batches in flight, an order of this node's own, or a fill under way explain a short
        // lag; one that outlasts a whole beat does not.
        let stuck = self.behind.is_some_and(|seen| applied < seen);
        self.behind = Some(counter);
        if stuck && self.at_sequencer.is_none() && !self.filling {
            self.behind = None;
            self.fill(None, CatchUpWhy::Gap, out);
        }
    }
}

/// Merges one batch, in order; the changes at or below `applied` are already in.
fn apply_batch<R>(w: Waiting<R>, applied: u64, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
    let first = w.batch.first;
    if w.own.is_empty() {
        for (seq, origin, changes) in w.batch.submits() {
            let skip = (applied + 1).saturating_sub(seq) as usize;
            if skip >= changes.len() {
                continue;
            }
            let changes = changes.into_iter().skip(skip).collect();
            let done =
                m.state
                    .apply_ordered(m.model, seq + skip as u64, Some(&origin), changes, m.open);
            m.accepted += done.accepted as u64;
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
    for own in w.own {
        let submit: Vec<IncomingChange> = changes.by_ref().take(own.changes).collect();
        let n = submit.len() as u64;
        if seq > applied {
            let done = m
                .state
                .apply_ordered(m.model, seq, own.origin.as_ref(), submit, m.open);
            m.accepted += done.accepted as u64;
            out.push(Effect::Answer(own.reply, done));
        } else {
            // Some of it came in from a peer's log before the sequencer's answer did: merged
            // without its answer. The sender retries, and the resend merges as the no-op it is.
            let skip = (applied + 1 - seq) as usize;
            if skip < submit.len() {
                let rest = submit.into_iter().skip(skip).collect();
                let done =
                    m.state
                        .apply_ordered(m.model, applied + 1, own.origin.as_ref(), rest, m.open);
                m.accepted += done.accepted as u64;
            }
            out.push(Effect::Refuse(own.reply, RoomError::Unavailable));
        }
        seq += n;
    }
}

impl<R: Send> Order<R> for ClusterOrder<R> {
    fn input(&mut self, input: Input<R>, m: &mut Merging<'_>, out: &mut Vec<Effect<R>>) {
        match input {
            Input::Submit {
                origin,
                changes,
                reply,
            } => self.submit(origin, changes, reply, out),
            Input::SequenceNow => self.sequence_now(out),
            Input::Sequenced { first, body } => self.sequenced(first, body, m, out),
            Input::Replicated(batch) => self.replicated(batch, m, out),
            Input::CaughtUp(result) => self.caught_up(result, m, out),
            Input::Timer(Timer::Gap) => self.gap_timer(m, out),
            Input::Timer(Timer::Retry) => {
                if !self.ready {
                    self.fill(None, CatchUpWhy::Retry, out);
                }
            }
            Input::Position(counter) => self.position(counter, m, out),
            Input::Resync => self.fill(None, CatchUpWhy::Resync, out),
        }
    }

    fn ready(&self) -> bool {
        self.ready
    }

    fn busy(&self) -> bool {
        self.at_sequencer.is_some()
            || self.filling
            || !self.queued.is_empty()
            || !self.waiting.is_empty()
    }

    fn status(&self) -> Option<ReplicaStatus> {
        Some(ReplicaStatus {
            ready: self.ready,
            waiting_batches: self.waiting.len(),
        })
    }

    /// Refused while the room catches up to the counter: a catch-up under way may have read
    /// the counter before the reader's position was given, so each retry of the read starts
    /// another once it has ended. A position past anything the cluster numbered (a client of
    /// another cluster) is refused for as long as it is past.
    fn reader_ahead(&mut self, position: u64, applied: u64, out: &mut Vec<Effect<R>>) -> bool {
        if position <= applied {
            return false;
        }
        self.fill(None, CatchUpWhy::Reader, out);
        true
    }

    fn start(&mut self, out: &mut Vec<Effect<R>>) {
        self.fill(None, CatchUpWhy::Start, out);
    }

    fn abandon(&mut self, out: &mut Vec<Effect<R>>) {
        for q in self.queued.drain(..) {
            out.push(Effect::Refuse(q.reply, RoomError::Unavailable));
        }
        if let Some(own) = self.at_sequencer.take() {
            refuse_all(own, out);
        }
        for (_, w) in std::mem::take(&mut self.waiting) {
            refuse_all(w.own, out);
        }
    }

    fn numbered_upto(&self, applied: u64) -> u64 {
        self.waiting
            .values()
            .map(|w| w.batch.last())
            .fold(applied, u64::max)
    }
}
