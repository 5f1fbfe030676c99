//! Group commit: one flush in flight per database, shared by every change written before it.
//!
//! A room writes a change to sled (visible, not yet durable), then registers with [`Dirty`].
//! The durability actor starts a flush at once if none is running; registrations that arrive
//! while one runs wait for the next, which starts as soon as the current one ends. A flush makes
//! every earlier write of the database durable, so when it completes each registered room gets
//! [`Flushed`] and releases the acks and broadcasts of the changes it covers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::prelude::*;

use crate::metrics::Metrics;
use crate::store::Store;

const KIND: &str = "durability";

/// A room has written changes up to its commit `token` and waits for them to be durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dirty {
    pub room: Recipient<Flushed>,
    pub token: u64,
}

/// Every write a room made up to `token` is durable (`ok`), or the flush covering it failed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Flushed {
    pub token: u64,
    pub ok: bool,
}

/// Flushes everything written so far and answers when it is durable; used at shutdown.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct FlushAll;

pub struct Durability {
    store: Store,
    metrics: Arc<Metrics>,
    /// False once a flush failed, until one succeeds again; read by the health endpoint.
    healthy: Arc<AtomicBool>,
    waiting: Vec<(Recipient<Flushed>, u64)>,
    in_flight: bool,
}

impl Durability {
    pub fn new(store: Store, metrics: Arc<Metrics>, healthy: Arc<AtomicBool>) -> Durability {
        Durability {
            store,
            metrics,
            healthy,
            waiting: Vec::new(),
            in_flight: false,
        }
    }

    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.waiting.is_empty() {
            return;
        }
        self.in_flight = true;
        let batch = std::mem::take(&mut self.waiting);
        let store = self.store.clone();
        let started = Instant::now();
        let flush = async move { store.flush().await };
        ctx.spawn(flush.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            act.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            act.metrics.flush_batch.observe(batch.len() as f64);
            let ok = match result {
                Ok(_) => {
                    act.metrics.flushes.inc();
                    act.healthy.store(true, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    log::error!("storage flush failed: {e}");
                    act.metrics.flush_errors.inc();
                    act.healthy.store(false, Ordering::Relaxed);
                    false
                }
            };
            for (room, token) in batch {
                // A room that stopped meanwhile has nothing left to release.
                let _ = room.try_send(Flushed { token, ok });
            }
            act.start_flush(ctx);
        }));
    }
}

impl Actor for Durability {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Rooms register once per commit; a small mailbox would make them block on it.
        ctx.set_mailbox_capacity(1 << 16);
        self.metrics.actors.with_label_values(&[KIND]).inc();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.metrics.actors.with_label_values(&[KIND]).dec();
    }
}

impl Handler<Dirty> for Durability {
    type Result = ();

    fn handle(&mut self, msg: Dirty, ctx: &mut Context<Self>) {
        self.metrics.dequeued(KIND);
        self.waiting.push((msg.room, msg.token));
        self.start_flush(ctx);
    }
}

impl Handler<FlushAll> for Durability {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, _: FlushAll, _: &mut Context<Self>) -> Self::Result {
        self.metrics.handled(KIND);
        let store = self.store.clone();
        Box::pin(async move { store.flush().await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}
