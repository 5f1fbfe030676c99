//! `writes`: one room, a fixed number of writes in flight, subscribers that only receive.
//! Measures durable acks/s and the ack latency a closed loop sees.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{closed_loop_writer, join_all, share, subscriber};
use crate::conn::{join, open_many};
use crate::stats::{Latency, round1};
use crate::{BenchError, Ctx, Outcome};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct WritesArgs {
    /// Writes kept in flight in total, split over the writers.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Connections that write.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Connections in the same room that only receive.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
}

/// After the window, how long writers wait for the answers still due (none are counted; it
/// only leaves the server idle for whatever runs next).
const DRAIN: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Arc<Ctx>, a: &WritesArgs) -> Result<Outcome, BenchError> {
    let room = ctx.room("writes", 0);
    // Subscribers first, so they are in the room before the first write.
    let subs = open_many(a.subscribers, ctx.concurrency, |i| {
        join(ctx, i, &room, format!("s{i}"), true)
    })
    .await?;
    let writers = open_many(a.writers, ctx.concurrency, |i| {
        join(ctx, a.subscribers + i, &room, format!("w{i}"), false)
    })
    .await?;

    let window = ctx.start_window();
    let (stop, stopped) = watch::channel(false);
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|c| tokio::spawn(subscriber(ctx.clone(), c, window, stopped.clone(), None)))
        .collect();
    let writer_tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let in_flight = share(a.in_flight, a.writers, i);
            tokio::spawn(closed_loop_writer(
                ctx.clone(),
                c,
                room.clone(),
                in_flight,
                window,
                DRAIN,
                false,
            ))
        })
        .collect();
    let cpu = ctx.measure(&window).await;
    let rss = ctx.probe.rss_kib();
    let _ = stop.send(true);
    let writers = join_all(writer_tasks).await?;
    let subs = join_all(sub_tasks).await?;

    let mut ack_latency = Latency::default();
    let mut delivery_latency = Latency::default();
    let (mut acks, mut sent, mut unacked, mut errors, mut dropped) = (0, 0, 0, 0, 0);
    let mut deliveries = 0;
    let mut sample = None;
    for w in &writers {
        acks += w.acks_in_window;
        sent += w.sent;
        unacked += w.unacked;
        errors += w.errors;
        dropped += u64::from(w.failure.is_some());
        ack_latency.merge(&w.latency);
        sample = sample.or(w.failure.clone()).or(w.error_sample.clone());
    }
    for s in &subs {
        deliveries += s.deliveries_in_window;
        errors += s.errors;
        dropped += u64::from(s.failure.is_some());
        delivery_latency.merge(&s.latency);
        sample = sample.or(s.failure.clone()).or(s.error_sample.clone());
    }

    let mut o = Outcome::default();
    o.set("acks", acks);
    o.set("acks_per_s", round1(window.rate(acks)));
    o.set("ack_latency_ms", ack_latency.to_json());
    o.set("deliveries", deliveries);
    o.set("deliveries_per_s", round1(window.rate(deliveries)));
    o.set("delivery_latency_ms", delivery_latency.to_json());
    o.set("sent_total", sent);
    o.set("unacked_at_end", unacked);
    o.set("errors", errors);
    o.set("dropped_connections", dropped);
    o.set("error_sample", sample.clone());
    o.set_cpu(&cpu, "ack", acks);
    o.set("server_rss_kib", rss);
    o.summary.push(format!(
        "  1 room, {} writer(s) with {} writes in flight, {} subscriber(s); {} s measured after {} s warm-up",
        a.writers,
        a.in_flight,
        a.subscribers,
        window.secs(),
        ctx.warmup.as_secs_f64()
    ));
    o.summary.push(format!(
        "  acks: {:.0}/s; ack latency {}",
        window.rate(acks),
        ack_latency.describe()
    ));
    o.summary.push(format!(
        "  deliveries to subscribers: {:.0}/s; latency {}{}",
        window.rate(deliveries),
        delivery_latency.describe(),
        ctx.dialect.latency_note()
    ));
    o.summary.push(Outcome::cpu_line(&cpu, "ack", acks));
    if errors > 0 || dropped > 0 {
        o.summary.push(format!(
            "  errors: {errors}, dropped connections: {dropped} (first: {})",
            sample.as_deref().unwrap_or("-")
        ));
    }
    Ok(o)
}
