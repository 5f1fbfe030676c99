//! The scenarios, and the client loops several of them share: a writer keeping a fixed number
//! of writes in flight, and a subscriber that counts what reaches it.

pub mod catchup;
pub mod conns;
pub mod fanout;
pub mod rooms;
pub mod writes;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conn::{Client, Ws, recv, recv_until};
use super::dialect::{Kind, parse_key};
use super::stats::{Counters, Latency, Window, instant_at, now_us};
use super::{BenchError, CommonArgs, Ctx, Outcome};

#[derive(clap::Subcommand, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One room, a fixed number of writes in flight: durable acks/s and ack latency.
    Writes(writes::WritesArgs),
    /// Many small rooms, every client writing at a fixed rate (open loop): acks/s against
    /// the offered rate, ack and delivery latency.
    Rooms(rooms::RoomsArgs),
    /// One writer, many subscribers in one room: deliveries/s, publish-to-delivery latency,
    /// and proof that every acked change reached every subscriber exactly once.
    Fanout(fanout::FanoutArgs),
    /// Many idle connections from several source addresses: connect rate and memory per
    /// connection.
    Conns(conns::ConnsArgs),
    /// One client pulling a large room from the start: changes/s of catch-up.
    Catchup(catchup::CatchupArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Writes(_) => "writes",
            Scenario::Rooms(_) => "rooms",
            Scenario::Fanout(_) => "fanout",
            Scenario::Conns(_) => "conns",
            Scenario::Catchup(_) => "catchup",
        }
    }

    pub fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Params(m.to_owned()));
        match self {
            Scenario::Writes(a) if a.writers == 0 => bad("--writers must be at least 1"),
            Scenario::Writes(a) if a.in_flight < a.writers => {
                bad("--in-flight must be at least --writers")
            }
            Scenario::Rooms(a) if a.rooms == 0 || a.clients == 0 => {
                bad("--rooms and --clients must be at least 1")
            }
            Scenario::Rooms(a) if !(a.rate.is_finite() && a.rate > 0.0) => {
                bad("--rate must be above 0")
            }
            Scenario::Fanout(a) if a.in_flight == 0 => bad("--in-flight must be at least 1"),
            Scenario::Conns(a) if a.connections == 0 => bad("--connections must be at least 1"),
            Scenario::Catchup(a) if a.changes == 0 || a.repeat == 0 => {
                bad("--changes and --repeat must be at least 1")
            }
            _ => Ok(()),
        }
    }

    /// The hard limit on the whole run, even if the server stops answering. Every phase has
    /// its own bound below it; this one only catches what slips through.
    pub fn hard_deadline(&self, c: &CommonArgs) -> Duration {
        let phases = match self {
            Scenario::Catchup(a) => (a.repeat as f64 + 2.0) * c.timeout,
            Scenario::Conns(a) => 3.0 * c.timeout + a.hold,
            _ => 3.0 * c.timeout + c.warmup + c.duration,
        };
        Duration::from_secs_f64(phases + 30.0)
    }
}

pub async fn run(ctx: &Arc<Ctx>, scenario: &Scenario) -> Result<Outcome, BenchError> {
    match scenario {
        Scenario::Writes(a) => writes::run(ctx, a).await,
        Scenario::Rooms(a) => rooms::run(ctx, a).await,
        Scenario::Fanout(a) => fanout::run(ctx, a).await,
        Scenario::Conns(a) => conns::run(ctx, a).await,
        Scenario::Catchup(a) => catchup::run(ctx, a).await,
    }
}

/// How long a socket gets to send its close frame at the end.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_WITHIN, ws.close(None)).await;
}

/// Awaits client tasks; a task that panicked is reported, not propagated.
async fn join_all<T>(tasks: Vec<JoinHandle<T>>) -> Result<Vec<T>, BenchError> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| BenchError::Task(e.to_string()))?);
    }
    Ok(out)
}

/// The writes in flight on one connection, by write number, with their send times.
struct Outstanding {
    /// Write number of `times[0]`.
    base: u64,
    times: VecDeque<Option<u64>>,
    pending: usize,
}

impl Outstanding {
    fn new(capacity: usize) -> Outstanding {
        Outstanding {
            base: 0,
            times: VecDeque::with_capacity(capacity),
            pending: 0,
        }
    }

    fn len(&self) -> usize {
        self.pending
    }

    /// Writes are numbered in the order they are sent.
    fn push(&mut self, n: u64, sent_us: u64) {
        debug_assert_eq!(n, self.base + self.times.len() as u64);
        self.times.push_back(Some(sent_us));
        self.pending += 1;
    }

    /// Completes write `n`; `None` if it is not in flight (a stray or repeated answer).
    fn take(&mut self, n: u64) -> Option<u64> {
        let i = usize::try_from(n.checked_sub(self.base)?).ok()?;
        let t = self.times.get_mut(i)?.take()?;
        self.pending -= 1;
        self.trim();
        Some(t)
    }

    /// Completes the oldest write in flight (answers that carry no request id come in order).
    fn take_oldest(&mut self) -> Option<(u64, u64)> {
        self.trim();
        let t = self.times.pop_front()??;
        let n = self.base;
        self.base += 1;
        self.pending -= 1;
        self.trim();
        Some((n, t))
    }

    fn trim(&mut self) {
        while let Some(None) = self.times.front() {
            self.times.pop_front();
            self.base += 1;
        }
    }
}

/// What a closed-loop writer saw.
#[derive(Default)]
pub struct WriterReport {
    pub sent: u64,
    pub acks_total: u64,
    pub acks_in_window: u64,
    pub latency: Latency,
    /// Write numbers acked inside the window (kept only when asked for).
    pub acked_in_window: Vec<u64>,
    /// Error replies, and pushes answered with `success: false`.
    pub errors: u64,
    pub error_sample: Option<String>,
    /// How the connection failed, if it did.
    pub failure: Option<String>,
    /// Writes still unanswered when the writer gave up waiting.
    pub unacked: u64,
}

/// Keeps `in_flight` writes outstanding on one connection until the window ends, then waits
/// up to `drain` for the answers still due. Latency runs from send to ack.
pub async fn closed_loop_writer(
    ctx: Arc<Ctx>,
    client: Client,
    room: String,
    in_flight: usize,
    window: Window,
    drain: Duration,
    keep_acked: bool,
) -> WriterReport {
    let d = ctx.dialect;
    let Client { mut ws, name, .. } = client;
    let site = ctx.site(&name);
    let mut r = WriterReport::default();
    let mut out = Outstanding::new(in_flight);
    let mut n = 0u64;
    let stop_at = instant_at(window.measure_to);
    let give_up = stop_at + drain;
    loop {
        let now = std::time::Instant::now();
        if now < stop_at {
            let before = n;
            // Bounded: a server that stops reading must not hold the writer past its time.
            let filled = tokio::time::timeout_at(give_up.into(), async {
                while out.len() < in_flight {
                    let t = now_us();
                    ws.feed(d.write(&room, &name, &site, n, t, &ctx.shape))
                        .await?;
                    out.push(n, t);
                    n += 1;
                }
                ws.flush().await
            })
            .await;
            Counters::add(&ctx.counters.sent, n - before);
            match filled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    r.failure = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    r.failure = Some("the server stopped reading".into());
                    break;
                }
            }
        } else if out.len() == 0 {
            break;
        }
        let until = if now < stop_at { stop_at } else { give_up };
        let msg = match tokio::time::timeout_at(until.into(), recv(&mut ws)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                r.failure = Some(e.to_string());
                break;
            }
            Err(_) if std::time::Instant::now() >= give_up => break,
            Err(_) => continue,
        };
        // SyncKit echoes the writer's own deltas; nothing in them is counted.
        let reply = match d.decode(&msg, &mut |_, _| {}) {
            Ok(reply) => reply,
            Err(e) => {
                r.errors += 1;
                Counters::add(&ctx.counters.errors, 1);
                r.error_sample.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        if !matches!(reply.kind, Kind::Ack | Kind::Error) {
            continue;
        }
        // Relay answers carry no request id and come in order; SyncKit errors carry none
        // either, and stand for the oldest write.
        let done = match reply.request() {
            Some(k) if !d.acks_in_order() => out.take(k).map(|t| (k, t)),
            _ => out.take_oldest(),
        };
        let t_ack = now_us();
        let accepted = reply.kind == Kind::Ack && reply.success != Some(false);
        if !accepted {
            r.errors += 1;
            Counters::add(&ctx.counters.errors, 1);
            r.error_sample.get_or_insert_with(|| {
                reply
                    .message
                    .as_deref()
                    .unwrap_or("rejected write")
                    .to_owned()
            });
            continue;
        }
        let Some((k, t_sent)) = done else {
            continue;
        };
        r.acks_total += 1;
        Counters::add(&ctx.counters.acks, 1);
        ctx.counters.ack_took(t_ack.saturating_sub(t_sent));
        if window.contains(t_ack) {
            r.acks_in_window += 1;
            r.latency.record(t_ack.saturating_sub(t_sent));
            if keep_acked {
                r.acked_in_window.push(k);
            }
        }
    }
    r.sent = n;
    r.unacked = out.len() as u64;
    close(ws).await;
    r
}

/// Which writer's changes a subscriber accounts for one by one.
pub struct Tracking {
    pub writer: String,
    /// Distinct changes of that writer received so far, for the drain to watch.
    pub distinct: Arc<AtomicU64>,
}

/// What a subscriber saw.
#[derive(Default)]
pub struct SubscriberReport {
    pub deliveries_total: u64,
    pub deliveries_in_window: u64,
    pub latency: Latency,
    /// Receipts per write number of the tracked writer.
    pub counts: Vec<u8>,
    pub errors: u64,
    pub error_sample: Option<String>,
    pub failure: Option<String>,
}

/// Receives until `stop`: every change written by another client is a delivery, timed from
/// the write's send time (its value) to now.
pub async fn subscriber(
    ctx: Arc<Ctx>,
    client: Client,
    window: Window,
    mut stop: watch::Receiver<bool>,
    track: Option<Tracking>,
) -> SubscriberReport {
    let d = ctx.dialect;
    let Client { mut ws, name, .. } = client;
    let mut r = SubscriberReport::default();
    loop {
        let msg = match recv_until(&mut ws, &mut stop).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                r.failure = Some(e.to_string());
                break;
            }
        };
        let now = now_us();
        let in_window = window.contains(now);
        let mut delivered = 0u64;
        let mut first_receipts = 0u64;
        let decoded = d.decode(&msg, &mut |key, val| {
            let Some((writer, k)) = parse_key(key) else {
                return;
            };
            if writer == name {
                return;
            }
            delivered += 1;
            if in_window {
                r.deliveries_in_window += 1;
                if let Some(sent) = val {
                    r.latency.record(now.saturating_sub(sent));
                }
            }
            if let Some(t) = &track
                && t.writer == writer
                && let Ok(k) = usize::try_from(k)
            {
                if r.counts.len() <= k {
                    r.counts.resize((k + 1).next_power_of_two(), 0);
                }
                r.counts[k] = r.counts[k].saturating_add(1);
                if r.counts[k] == 1 {
                    first_receipts += 1;
                }
            }
        });
        r.deliveries_total += delivered;
        Counters::add(&ctx.counters.deliveries, delivered);
        if let Some(t) = &track
            && first_receipts > 0
        {
            t.distinct.fetch_add(first_receipts, Ordering::Relaxed);
        }
        match decoded {
            Ok(reply) if reply.kind == Kind::Error => {
                r.errors += 1;
                Counters::add(&ctx.counters.errors, 1);
                r.error_sample
                    .get_or_insert_with(|| reply.message.as_deref().unwrap_or("error").to_owned());
            }
            Ok(_) => {}
            Err(e) => {
                r.errors += 1;
                Counters::add(&ctx.counters.errors, 1);
                r.error_sample.get_or_insert_with(|| e.to_string());
            }
        }
    }
    close(ws).await;
    r
}

/// Splits `total` into `parts` shares that differ by at most one.
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_writes_complete_by_number_or_in_order() {
        let mut o = Outstanding::new(4);
        for n in 0..4 {
            o.push(n, 100 + n);
        }
        assert_eq!(o.take(2), Some(102));
        assert_eq!(o.take(2), None);
        assert_eq!(o.take_oldest(), Some((0, 100)));
        assert_eq!(o.take_oldest(), Some((1, 101)));
        assert_eq!(o.take_oldest(), Some((3, 103)));
        assert_eq!(o.len(), 0);
        o.push(4, 104);
        assert_eq!(o.take(4), Some(104));
        assert_eq!(o.take(9), None);
        assert_eq!((0..3).map(|i| share(256, 3, i)).sum::<usize>(), 256);
    }
}
