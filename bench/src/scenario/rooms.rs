//! `rooms`: many small rooms, every client writing into its room at a fixed rate, OPEN LOOP:
//! writes leave at their scheduled times whether or not earlier ones were answered, and every
//! latency runs from the scheduled time, so a server that falls behind shows it in full.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::join_all;
use crate::conn::{Ws, close_all, join, open_many, recv_until};
use crate::dialect::{Kind, parse_key};
use crate::stats::{Counters, Latency, Phase, Window, instant_at, now_us, round1};
use crate::{BenchError, Ctx, Outcome};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct RoomsArgs {
    /// Number of rooms.
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// Clients per room; each writes and receives the others' writes.
    #[arg(long, default_value_t = 5)]
    pub clients: usize,
    /// Writes per second of each client.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
}

/// When each write of one client is due: `first + k × interval` (µs since the epoch).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: u64,
    interval_us: f64,
}

impl Schedule {
    fn at(&self, k: u64) -> u64 {
        self.first + (k as f64 * self.interval_us) as u64
    }

    /// How many of this client's writes fall in the measured window.
    fn due_in(&self, w: &Window) -> u64 {
        let mut k = 0;
        let mut n = 0;
        while self.at(k) < w.measure_to {
            n += u64::from(self.at(k) >= w.measure_from);
            k += 1;
        }
        n
    }
}

/// A small deterministic generator for start phases (no cryptographic needs here).
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct PacedReport {
    sent: u64,
    /// Writes due before the end of the window that had not left yet (the socket was full).
    unsent_at_end: u64,
    failure: Option<String>,
}

/// Sends each write at its scheduled time; a backlog (after a stall) leaves at once.
async fn paced_writer(
    ctx: Arc<Ctx>,
    mut sink: SplitSink<Ws, Message>,
    room: String,
    name: String,
    plan: Schedule,
    window: Window,
    mut stop: watch::Receiver<bool>,
) -> (SplitSink<Ws, Message>, PacedReport) {
    let d = ctx.dialect;
    let site = ctx.site(&name);
    let mut r = PacedReport::default();
    let mut k = 0u64;
    loop {
        let now = now_us().min(window.measure_to.saturating_sub(1));
        let before = k;
        // Sending can block when the server stops reading; the stop signal still ends it.
        let sending = async {
            while plan.at(k) <= now {
                sink.feed(d.write(&room, &name, &site, k, plan.at(k), &ctx.shape))
                    .await?;
                k += 1;
            }
            sink.flush().await
        };
        let sent = tokio::select! {
            r = sending => Some(r),
            _ = stop.changed() => None,
        };
        Counters::add(&ctx.counters.sent, k - before);
        match sent {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                r.failure = Some(e.to_string());
                break;
            }
            None => break,
        }
        let next = plan.at(k);
        if next >= window.measure_to {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(instant_at(next).into()) => {}
            _ = stop.changed() => break,
        }
    }
    r.sent = k;
    let mut due = k;
    while plan.at(due) < window.measure_to {
        due += 1;
    }
    r.unsent_at_end = due - k;
    (sink, r)
}

#[derive(Default)]
struct ReaderReport {
    acks_total: u64,
    acks_in_window: u64,
    ack_latency: Latency,
    deliveries_in_window: u64,
    delivery_latency: Latency,
    errors: u64,
    error_sample: Option<String>,
    failure: Option<String>,
}

/// Reads acks and the room's other writes until `stop`.
async fn room_reader(
    ctx: Arc<Ctx>,
    mut stream: SplitStream<Ws>,
    name: String,
    plan: Schedule,
    window: Window,
    mut stop: watch::Receiver<bool>,
) -> (SplitStream<Ws>, ReaderReport) {
    let d = ctx.dialect;
    let mut r = ReaderReport::default();
    // Relay acks carry no id: the k-th answer is for the k-th write.
    let mut answered = 0u64;
    loop {
        let msg = match recv_until(&mut stream, &mut stop).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                r.failure = Some(e.to_string());
                break;
            }
        };
        let now = now_us();
        let in_window = window.contains(now);
        let mut delivered = 0;
        let decoded = d.decode(&msg, &mut |key, val| {
            // SyncKit echoes a writer's own deltas; only the others' writes are deliveries.
            if parse_key(key).is_none_or(|(writer, _)| writer == name) {
                return;
            }
            delivered += 1;
            if in_window {
                r.deliveries_in_window += 1;
                if let Some(sent) = val {
                    r.delivery_latency.record(now.saturating_sub(sent));
                }
            }
        });
        Counters::add(&ctx.counters.deliveries, delivered);
        let reply = match decoded {
            Ok(reply) => reply,
            Err(e) => {
                r.errors += 1;
                Counters::add(&ctx.counters.errors, 1);
                r.error_sample.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        let k = match reply.kind {
            Kind::Ack | Kind::Error => match reply.request() {
                Some(k) if !d.acks_in_order() => k,
                _ => {
                    answered += 1;
                    answered - 1
                }
            },
            _ => continue,
        };
        if reply.kind == Kind::Error || reply.success == Some(false) {
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
        r.acks_total += 1;
        Counters::add(&ctx.counters.acks, 1);
        ctx.counters.ack_took(now.saturating_sub(plan.at(k)));
        if in_window {
            r.acks_in_window += 1;
            r.ack_latency.record(now.saturating_sub(plan.at(k)));
        }
    }
    (stream, r)
}

pub async fn run(ctx: &Arc<Ctx>, a: &RoomsArgs) -> Result<Outcome, BenchError> {
    let total = a.rooms * a.clients;
    let setup_started = now_us();
    // A join waits for the room to be loaded: after a restart (`--rooms-of`) these times are
    // how long clients wait for their rooms to come back.
    let joined = open_many(total, ctx.concurrency, |i| {
        let room = ctx.room("rooms", i / a.clients);
        async move {
            let asked = now_us();
            let c = join(ctx, i, &room, format!("c{}", i % a.clients), true).await?;
            Ok((c, now_us().saturating_sub(asked)))
        }
    })
    .await?;
    let setup_secs = now_us().saturating_sub(setup_started) as f64 / 1e6;
    let mut join_latency = Latency::default();
    let mut clients = Vec::with_capacity(total);
    for (c, took) in joined {
        join_latency.record(took);
        clients.push(c);
    }

    let window = ctx.start_window();
    let interval_us = 1e6 / a.rate;
    let mut rng = SplitMix(window.start ^ u64::from(std::process::id()).rotate_left(32));
    let (stop, stopped) = watch::channel(false);
    let mut offered = 0;
    let mut tasks = Vec::with_capacity(total);
    for (i, c) in clients.into_iter().enumerate() {
        let room = ctx.room("rooms", i / a.clients);
        // A random phase within one interval spreads the clients' writes evenly over time.
        let plan = Schedule {
            first: window.start + (rng.next_unit() * interval_us) as u64,
            interval_us,
        };
        offered += plan.due_in(&window);
        let (sink, stream) = c.ws.split();
        let w = tokio::spawn(paced_writer(
            ctx.clone(),
            sink,
            room,
            c.name.clone(),
            plan,
            window,
            stopped.clone(),
        ));
        let r = tokio::spawn(room_reader(
            ctx.clone(),
            stream,
            c.name,
            plan,
            window,
            stopped.clone(),
        ));
        tasks.push((w, r));
    }
    let cpu = ctx.measure(&window).await;
    let rss = ctx.probe.rss_kib();
    // Open loop: nothing is drained; what was not answered in the window is the backlog.
    let _ = stop.send(true);
    ctx.counters.set_phase(Phase::Closing);
    let (writers, readers): (Vec<_>, Vec<_>) = tasks.into_iter().unzip();
    let writers = join_all(writers).await?;
    let readers = join_all(readers).await?;

    let mut ack_latency = Latency::default();
    let mut delivery_latency = Latency::default();
    let (mut sent, mut unsent, mut acks, mut acks_total, mut deliveries) = (0, 0, 0, 0, 0);
    let (mut errors, mut dropped) = (0, 0);
    let mut sample = None;
    let mut sockets = Vec::with_capacity(total);
    for ((sink, w), (stream, r)) in writers.into_iter().zip(readers) {
        sent += w.sent;
        unsent += w.unsent_at_end;
        acks += r.acks_in_window;
        acks_total += r.acks_total;
        deliveries += r.deliveries_in_window;
        errors += r.errors;
        dropped += u64::from(w.failure.is_some() || r.failure.is_some());
        ack_latency.merge(&r.ack_latency);
        delivery_latency.merge(&r.delivery_latency);
        sample = sample.or(r.failure).or(w.failure).or(r.error_sample);
        if let Ok(ws) = sink.reunite(stream) {
            sockets.push(ws);
        }
    }
    close_all(sockets, Duration::from_secs(5)).await;

    let mut o = Outcome::default();
    o.set("offered_writes", offered);
    o.set("offered_per_s", round1(window.rate(offered)));
    o.set("acks", acks);
    o.set("acks_per_s", round1(window.rate(acks)));
    o.set("ack_latency_ms", ack_latency.to_json());
    o.set("deliveries", deliveries);
    o.set("deliveries_per_s", round1(window.rate(deliveries)));
    o.set("delivery_latency_ms", delivery_latency.to_json());
    o.set("sent_total", sent);
    o.set("acks_total", acks_total);
    o.set("unacked_at_end", sent.saturating_sub(acks_total + errors));
    o.set("unsent_at_end", unsent);
    o.set("errors", errors + dropped);
    o.set("error_replies", errors);
    o.set("dropped_connections", dropped);
    o.set("error_sample", sample.clone());
    o.set_cpu(&cpu, "ack", acks);
    o.set("server_rss_kib", rss);
    o.set("setup_secs", round1(setup_secs));
    o.set("join_latency_ms", join_latency.to_json());
    o.summary.push(format!(
        "  {} clients joined in {:.1} s, {} at once; join latency {}",
        total,
        setup_secs,
        ctx.concurrency,
        join_latency.describe()
    ));
    o.summary.push(format!(
        "  {} rooms × {} clients, each writing {}/s open loop; {} s measured after {} s warm-up",
        a.rooms,
        a.clients,
        a.rate,
        window.secs(),
        ctx.warmup.as_secs_f64()
    ));
    o.summary.push(format!(
        "  offered {:.0} writes/s; acked {:.0}/s; ack latency (from the scheduled time) {}",
        window.rate(offered),
        window.rate(acks),
        ack_latency.describe()
    ));
    o.summary.push(format!(
        "  deliveries: {:.0}/s; latency {}{}",
        window.rate(deliveries),
        delivery_latency.describe(),
        ctx.dialect.latency_note()
    ));
    let behind = (acks as f64) < 0.95 * offered as f64;
    o.set("fell_behind", behind);
    o.summary.push(format!(
        "  at the end of the window: {} writes awaiting an answer, {unsent} due but not yet sent{}",
        sent.saturating_sub(acks_total + errors),
        if behind {
            " — the server fell behind the offered load"
        } else {
            ""
        }
    ));
    o.summary.push(Outcome::cpu_line(&cpu, "ack", acks));
    if errors > 0 || dropped > 0 {
        o.summary.push(format!(
            "  error replies: {errors}, dropped connections: {dropped} (first: {})",
            sample.as_deref().unwrap_or("-")
        ));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_counts_the_writes_due_in_the_window() {
        let plan = Schedule {
            first: 100_000,
            interval_us: 200_000.0,
        };
        let w = Window {
            start: 0,
            measure_from: 1_000_000,
            measure_to: 2_000_000,
        };
        // 1.1 s, 1.3, 1.5, 1.7, 1.9
        assert_eq!(plan.due_in(&w), 5);
        let mut rng = SplitMix(7);
        assert!(
            (0..1000)
                .map(|_| rng.next_unit())
                .all(|x| (0.0..1.0).contains(&x))
        );
    }
}
