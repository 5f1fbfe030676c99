//! `fanout`: one writer, many subscribers in one room. Measures deliveries/s and
//! publish-to-delivery latency, and checks that every change acked in the window reached every
//! subscriber exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Tracking, closed_loop_writer, join_all, subscriber};
use crate::conn::{join, open_many};
use crate::stats::{Latency, Phase, round1};
use crate::{BenchError, Ctx, Outcome};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct FanoutArgs {
    /// Connections in the room that only receive.
    #[arg(long, default_value_t = 500)]
    pub subscribers: usize,
    /// Writes the one writer keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
}

/// The subscribers are done when nothing has arrived for this long (or everything has).
const QUIET: Duration = Duration::from_secs(2);
const WRITER: &str = "w0";

pub async fn run(ctx: &Arc<Ctx>, a: &FanoutArgs) -> Result<Outcome, BenchError> {
    let room = ctx.room("fanout", 0);
    let subs = open_many(a.subscribers, ctx.concurrency, |i| {
        join(ctx, i, &room, format!("s{i}"), true)
    })
    .await?;
    let writer = join(ctx, a.subscribers, &room, WRITER.to_owned(), false).await?;

    let window = ctx.start_window();
    let (stop, stopped) = watch::channel(false);
    let distinct: Vec<Arc<AtomicU64>> = (0..subs.len()).map(|_| Arc::default()).collect();
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .zip(&distinct)
        .map(|(c, d)| {
            let track = Tracking {
                writer: WRITER.to_owned(),
                distinct: d.clone(),
            };
            tokio::spawn(subscriber(
                ctx.clone(),
                c,
                window,
                stopped.clone(),
                Some(track),
            ))
        })
        .collect();
    let writer_task = tokio::spawn(closed_loop_writer(
        ctx.clone(),
        writer,
        room.clone(),
        a.in_flight,
        window,
        ctx.timeout,
        true,
    ));
    let cpu = ctx.measure(&window).await;
    let rss = ctx.probe.rss_kib();
    let w = writer_task
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?;

    // Drain: wait until every subscriber holds every acked change, or nothing more comes.
    ctx.counters.set_phase(Phase::Draining);
    let drain_started = Instant::now();
    let mut last_total = u64::MAX;
    let mut last_change = Instant::now();
    let drained = loop {
        let have: Vec<u64> = distinct.iter().map(|d| d.load(Ordering::Relaxed)).collect();
        if have.iter().all(|h| *h >= w.acks_total) {
            break true;
        }
        let total: u64 = have.iter().sum();
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET || drain_started.elapsed() >= ctx.timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain_s = drain_started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let subs = join_all(sub_tasks).await?;

    let mut latency = Latency::default();
    let (mut deliveries, mut errors, mut dropped) = (0, w.errors, 0);
    let (mut missing, mut duplicated, mut subs_missing, mut subs_duplicated) = (0u64, 0u64, 0, 0);
    let mut sample = w.failure.clone().or(w.error_sample.clone());
    dropped += u64::from(w.failure.is_some());
    for s in &subs {
        deliveries += s.deliveries_in_window;
        errors += s.errors;
        dropped += u64::from(s.failure.is_some());
        latency.merge(&s.latency);
        sample = sample.or(s.failure.clone()).or(s.error_sample.clone());
        let m = w
            .acked_in_window
            .iter()
            .filter(|k| {
                usize::try_from(**k)
                    .ok()
                    .and_then(|k| s.counts.get(k))
                    .is_none_or(|c| *c == 0)
            })
            .count() as u64;
        let dup: u64 = s
            .counts
            .iter()
            .map(|c| u64::from(c.saturating_sub(1)))
            .sum();
        missing += m;
        duplicated += dup;
        subs_missing += u64::from(m > 0);
        subs_duplicated += u64::from(dup > 0);
    }

    let mut o = Outcome::default();
    o.set("deliveries", deliveries);
    o.set("deliveries_per_s", round1(window.rate(deliveries)));
    o.set("delivery_latency_ms", latency.to_json());
    o.set("acks", w.acks_in_window);
    o.set("acks_per_s", round1(window.rate(w.acks_in_window)));
    o.set("ack_latency_ms", w.latency.to_json());
    o.set("changes_checked", w.acked_in_window.len());
    o.set("missing", missing);
    o.set("duplicated", duplicated);
    o.set("subscribers_with_missing", subs_missing);
    o.set("subscribers_with_duplicates", subs_duplicated);
    o.set("drained", drained);
    o.set("drain_s", round1(drain_s));
    o.set("sent_total", w.sent);
    o.set("acks_total", w.acks_total);
    o.set("unacked_at_end", w.unacked);
    o.set("errors", errors);
    o.set("dropped_connections", dropped);
    o.set("error_sample", sample.clone());
    o.set_cpu(&cpu, "delivery", deliveries);
    o.set("server_rss_kib", rss);
    o.summary.push(format!(
        "  1 room, 1 writer with {} writes in flight, {} subscribers; {} s measured after {} s warm-up",
        a.in_flight,
        a.subscribers,
        window.secs(),
        ctx.warmup.as_secs_f64()
    ));
    o.summary.push(format!(
        "  deliveries: {:.0}/s; publish-to-delivery latency {}{}",
        window.rate(deliveries),
        latency.describe(),
        ctx.dialect.latency_note()
    ));
    o.summary.push(format!(
        "  writer: {:.0} acks/s; ack latency {}",
        window.rate(w.acks_in_window),
        w.latency.describe()
    ));
    o.summary.push(format!(
        "  accounting over {} changes acked in the window × {} subscribers: {missing} missing \
         ({subs_missing} subscribers), {duplicated} duplicated ({subs_duplicated} subscribers); \
         {} after {drain_s:.1} s",
        w.acked_in_window.len(),
        a.subscribers,
        if drained {
            "all drained"
        } else {
            "stopped waiting"
        }
    ));
    o.summary
        .push(Outcome::cpu_line(&cpu, "delivery", deliveries));
    if errors > 0 || dropped > 0 {
        o.summary.push(format!(
            "  errors: {errors}, dropped connections: {dropped} (first: {})",
            sample.as_deref().unwrap_or("-")
        ));
    }
    Ok(o)
}
