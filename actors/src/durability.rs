//! Group commit, on a thread of its own.
//!
//! Rooms merge in memory and hand each commit's writes to this actor ([`Commit`]); nothing on a
//! room's thread waits for the disk. The actor gathers every commit that reached it, applies them
//! as one storage batch, flushes once, and tells each room its commit is durable
//! ([`Committed`]). While it flushes, new commits queue in its mailbox and make up the next
//! group, so the group grows with the load.
//!
//! With `relaxed` durability the flush is left to sled's background flusher: rooms are told as
//! soon as their writes are applied (readers see them), before they are on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::metrics::{ActorMetrics, Metrics};
use crate::store::{KvBatch, Store};

/// The least time between the starts of two flushes. A flush costs about the same whatever it
/// carries (sled wakes every thread of its pool for each one), so under a steady trickle of
/// commits from many rooms, waiting this long lets them share flushes; a flush after a quiet
/// spell starts at once.
const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(1);

/// A room's writes of one commit; `token` numbers the room's commits in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Commit {
    pub room: Recipient<Committed>,
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
#[rtype(result = "Result<(), String>")]
pub struct FlushAll;

/// Runs the group gathered so far; sent to itself once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
struct WriteGroup;

pub struct Durability {
    store: Store,
    metrics: Arc<Metrics>,
    actor: ActorMetrics,
    /// False once a write or flush failed, until one succeeds again; read by the health endpoint.
    healthy: Arc<AtomicBool>,
    relaxed: bool,
    group: KvBatch,
    waiting: Vec<(Recipient<Committed>, u64)>,
    changes: usize,
    scheduled: bool,
    last_flush: Option<Instant>,
}

impl Durability {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        healthy: Arc<AtomicBool>,
        relaxed: bool,
    ) -> Durability {
        Durability {
            store,
            actor: metrics.durability.clone(),
            metrics,
            healthy,
            relaxed,
            group: KvBatch::default(),
            waiting: Vec::new(),
            changes: 0,
            scheduled: false,
            last_flush: None,
        }
    }

    /// Applies the gathered group as one batch, flushes it (unless relaxed) and tells the rooms.
    /// Blocks this actor's thread, which has nothing else to do meanwhile.
    fn write_group(&mut self) -> Result<(), String> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        let waiting = std::mem::take(&mut self.waiting);
        let changes = std::mem::replace(&mut self.changes, 0);
        let started = Instant::now();
        self.last_flush = Some(started);
        let mut result = self.store.apply(group);
        if result.is_ok() && !self.relaxed {
            result = self.store.flush();
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        self.metrics.flush_batch.observe(waiting.len() as f64);
        self.metrics.flush_changes.observe(changes as f64);
        let ok = match &result {
            Ok(()) => {
                self.metrics.flushes.inc();
                self.healthy.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                log::error!("storage write failed: {e}");
                self.metrics.flush_errors.inc();
                self.healthy.store(false, Ordering::Relaxed);
                false
            }
        };
        for (room, token) in waiting {
            // A room that stopped meanwhile has nothing left to release.
            let _ = room.try_send(Committed { token, ok });
        }
        result.map_err(|e| e.to_string())
    }
}

impl Actor for Durability {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Rooms hand over one commit per group at most; never make them wait on this mailbox.
        ctx.set_mailbox_capacity(1 << 16);
        self.actor.count.inc();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Err(e) = self.write_group() {
            log::error!("final group not written: {e}");
        }
        self.actor.count.dec();
    }
}

impl Handler<Commit> for Durability {
    type Result = ();

    fn handle(&mut self, msg: Commit, ctx: &mut Context<Self>) {
        self.actor.dequeued();
        self.group.append(msg.writes);
        self.waiting.push((msg.room, msg.token));
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
        // Failures are reported to the rooms and the health flag.
        let _ = self.write_group();
    }
}

impl Handler<FlushAll> for Durability {
    type Result = Result<(), String>;

    fn handle(&mut self, _: FlushAll, _: &mut Context<Self>) -> Self::Result {
        self.actor.handled();
        self.write_group()?;
        self.store.flush().map_err(|e| e.to_string())
    }
}
