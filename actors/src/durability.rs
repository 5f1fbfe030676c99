//! Group commit, on a thread of its own.
//!
//! Rooms merge in memory and hand each commit's writes to this actor ([`Commit`]); nothing on a
//! room's thread waits for the disk. The actor gathers every commit that reached it, applies them
//! as one storage batch, flushes once, and tells each room its commit is durable
//! ([`Committed`]). While it flushes, new commits queue in its mailbox and make up the next
//! group, so the group grows with the load.
//!
//! With `relaxed` durability rooms are told as soon as their writes are applied (readers see
//! them), before they are on disk, and the actor flushes every [`RELAXED_FLUSH_INTERVAL`]: a
//! crash, or a recovery from a failed write, loses at most what was applied since.
//!
//! A failed write or flush (a full disk, an IO error) fails its whole group: no room is told a
//! commit is durable unless it is. The store is then marked failing (with the cause, for the
//! health endpoint), later groups fail at once without touching it, and every
//! [`RECOVERY_INTERVAL`] the actor tries [`Store::recover`]: reopen the database as the last
//! flush left it, then write and flush a probe. Once that works the store takes writes again,
//! and the rooms, which dropped what they had merged since their last durable commit, reload
//! what is durable. No restart is needed when the disk has room again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::mailbox::{CountedRecipient, Queued, counted_actor};
use crate::metrics::{ActorKind, ActorMetrics, Metrics};
use crate::store::{KvBatch, StorageError, Store};

/// The least time between the starts of two flushes. A flush costs about the same whatever it
/// carries (an fsync), so under a steady trickle of commits from many rooms, waiting this long
/// lets them share flushes; a flush after a quiet spell starts at once. Measured under `rooms`
/// (200 × 5 clients at 5/s): 300 µs costs the same CPU per ack as 1 ms with a lower ack
/// latency, no wait at all costs 14 % more CPU (more flushes, each carrying less).
const MIN_FLUSH_INTERVAL: Duration = Duration::from_micros(300);

/// How often relaxed durability flushes what was applied.
const RELAXED_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// How often a failed store is tried again.
pub const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// How long the store must go unused before it gives back what a flood grew, and how often
/// that is looked at.
const IDLE_RELEASE: Duration = Duration::from_secs(30);
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Tries to get a failed store back; sent to itself.
#[derive(Message)]
#[rtype(result = "()")]
struct Recover;

/// A room's writes of one commit; `token` numbers the room's commits in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Commit {
    /// Where `Committed` goes; counted under the room kind once the commit is taken.
    pub room: Recipient<Queued<Committed>>,
    pub token: u64,
    pub writes: KvBatch,
    /// How many changes the writes carry (for the group-commit figures).
    pub changes: usize,
}

/// Every commit a room made up to `token` is durable (`ok`), or the group covering it failed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Committed {
    pub token: u64,
    pub ok: bool,
}

/// Writes and flushes everything received so far; used at shutdown.
#[derive(Message)]
#[rtype(result = "Result<(), FlushError>")]
pub struct FlushAll;

/// Why a group was not written.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The store failed earlier and has not recovered; its cause is in the store's health.
    #[error("storage is failing and has not recovered yet")]
    Failing,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Runs the group gathered so far; sent to itself once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
struct WriteGroup;

pub struct Durability {
    store: Store,
    metrics: Arc<Metrics>,
    actor: ActorMetrics,
    relaxed: bool,
    /// A write or flush failed and the store has not recovered yet.
    failing: bool,
    group: KvBatch,
    waiting: Vec<(CountedRecipient<Committed>, u64)>,
    changes: usize,
    scheduled: bool,
    last_flush: Option<Instant>,
    /// Relaxed durability applied writes that no flush has covered yet.
    unflushed: bool,
}

impl Durability {
    pub fn new(store: Store, metrics: Arc<Metrics>, relaxed: bool) -> Durability {
        Durability {
            store,
            actor: metrics.durability,
            metrics,
            relaxed,
            failing: false,
            group: KvBatch::default(),
            waiting: Vec::new(),
            changes: 0,
            scheduled: false,
            last_flush: None,
            unflushed: false,
        }
    }

    /// Applies the gathered group as one batch, flushes it (unless relaxed) and tells the rooms.
    /// Blocks this actor's thread, which has nothing else to do meanwhile.
    fn write_group(&mut self, ctx: &mut Context<Self>) -> Result<(), FlushError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        let waiting = std::mem::take(&mut self.waiting);
        let changes = std::mem::replace(&mut self.changes, 0);
        if self.failing {
            // The store keeps its error until it is reopened: fail fast, as a flush would.
            for (room, token) in waiting {
                let _ = room.try_send(Committed { token, ok: false });
            }
            return Err(FlushError::Failing);
        }
        let started = Instant::now();
        self.last_flush = Some(started);
        let mut result = self.store.apply(group);
        if result.is_ok() {
            if self.relaxed {
                self.unflushed = true;
            } else {
                result = self.store.flush();
                self.metrics
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        self.metrics.flush_batch.observe(waiting.len() as f64);
        self.metrics.flush_changes.observe(changes as f64);
        let ok = match &result {
            Ok(()) => {
                self.metrics.flushes.inc();
                true
            }
            Err(e) => {
                self.failed(e, ctx);
                false
            }
        };
        for (room, token) in waiting {
            // A room that stopped meanwhile has nothing left to release.
            let _ = room.try_send(Committed { token, ok });
        }
        Ok(result?)
    }

    /// Marks the store failing until [`Recover`] gets it back.
    fn failed(&mut self, e: &StorageError, ctx: &mut Context<Self>) {
        let cause = e.cause();
        log::error!("storage write failed ({cause}): {e}; writes are refused until it recovers");
        self.metrics.flush_errors.inc();
        self.metrics.storage_failing.set(1);
        // Before any room hears of it: a room reloads only once the store is healthy.
        self.store.health().failed(cause);
        self.failing = true;
        ctx.notify_later(Recover, RECOVERY_INTERVAL);
    }

    /// Relaxed durability's periodic flush.
    fn flush_relaxed(&mut self, ctx: &mut Context<Self>) {
        if self.failing || !self.unflushed {
            return;
        }
        self.unflushed = false;
        if let Err(e) = self.store.flush() {
            self.failed(&e, ctx);
        }
    }
}

impl Actor for Durability {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Rooms hand over one commit per group at most; never make them wait on this mailbox.
        ctx.set_mailbox_capacity(1 << 16);
        self.actor.count.inc();
        if self.relaxed {
            ctx.run_interval(RELAXED_FLUSH_INTERVAL, |act, ctx| act.flush_relaxed(ctx));
        }
        // On this actor's thread: nothing is written while the store is reopened.
        ctx.run_interval(IDLE_CHECK, |act, _| {
            if act.failing || !act.waiting.is_empty() {
                return;
            }
            match act.store.release_if_idle(IDLE_RELEASE) {
                Ok(true) => log::debug!("storage idle: reopened to give back its memory"),
                Ok(false) => {}
                Err(e) => log::warn!("storage idle, reopening it failed: {e}"),
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.write_group(ctx) {
            log::error!("final group not written: {e}");
        }
        self.actor.count.dec();
    }
}

counted_actor!(Durability, ActorKind::Durability);

impl Handler<Commit> for Durability {
    type Result = ();

    fn handle(&mut self, msg: Commit, ctx: &mut Context<Self>) {
        self.group.append(msg.writes);
        let room = CountedRecipient::new(msg.room, &self.metrics.room);
        self.waiting.push((room, msg.token));
        self.changes += msg.changes;
        // Runs after every commit already in the mailbox has joined the group.
        if !self.scheduled {
            self.scheduled = true;
            ctx.notify(WriteGroup);
        }
    }
}

impl Handler<WriteGroup> for Durability {
    type Result = ();

    fn handle(&mut self, _: WriteGroup, ctx: &mut Context<Self>) {
        let since = self
            .last_flush
            .map_or(MIN_FLUSH_INTERVAL, |at| at.elapsed());
        if !self.relaxed && since < MIN_FLUSH_INTERVAL {
            // Commits arriving meanwhile join this group.
            ctx.notify_later(WriteGroup, MIN_FLUSH_INTERVAL - since);
            return;
        }
        self.scheduled = false;
        // Failures are reported to the rooms and the store's health.
        let _ = self.write_group(ctx);
    }
}

impl Handler<Recover> for Durability {
    type Result = ();

    fn handle(&mut self, _: Recover, ctx: &mut Context<Self>) {
        match self.store.recover() {
            Ok(()) => {
                log::info!("storage recovered: writes are taken again");
                self.failing = false;
                self.metrics.storage_failing.set(0);
                self.metrics.storage_recoveries.inc();
            }
            Err(e) => {
                log::debug!("storage not back yet: {e}");
                ctx.notify_later(Recover, RECOVERY_INTERVAL);
            }
        }
    }
}

impl Handler<FlushAll> for Durability {
    type Result = Result<(), FlushError>;

    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) -> Self::Result {
        self.write_group(ctx)?;
        Ok(self.store.flush()?)
    }
}
