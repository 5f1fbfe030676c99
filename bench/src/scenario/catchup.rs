//! `catchup`: a room holding many changes, then one new client pulling it from the start.
//! Measures changes/s of catch-up; repeated with a fresh client each time.

use std::sync::Arc;
use std::time::Instant;

use futures_util::SinkExt;

use super::{Outstanding, close};
use crate::conn::{join, recv_by};
use crate::dialect::{Kind, Page};
use crate::stats::{Counters, Phase, round1, round3};
use crate::{BenchError, Ctx, Outcome};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct CatchupArgs {
    /// Changes loaded into the room before the catch-up.
    #[arg(long, default_value_t = 100_000)]
    pub changes: u64,
    /// Catch-ups, each by a fresh client; the figures are their median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Batches kept in flight while loading.
const LOAD_IN_FLIGHT: usize = 4;

/// Loads `total` changes in batches and waits for every ack. Returns the room's version in
/// the last relay ack (0 for the other dialects) and the seconds it took.
async fn load(ctx: &Ctx, room: &str, total: u64) -> Result<(u64, f64), BenchError> {
    let d = ctx.dialect;
    let client = join(ctx, 0, room, "l0".to_owned(), false).await?;
    let mut ws = client.ws;
    let site = ctx.site("l0");
    let size = d.batch_size();
    let batches = total.div_ceil(size);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let mut out = Outstanding::new(LOAD_IN_FLIGHT);
    let (mut next, mut done, mut version) = (0u64, 0u64, 0u64);
    while done < batches {
        while next < batches && out.len() < LOAD_IN_FLIGHT {
            let first = next * size;
            let count = size.min(total - first);
            ws.send(d.write_batch(room, "l0", &site, next, first, count))
                .await
                .map_err(BenchError::ws)?;
            // The slot of a batch holds its first key rather than a send time: loading is
            // not timed per batch, and the key tells how many changes an ack covers.
            out.push(next, first);
            next += 1;
        }
        let m = recv_by(&mut ws, deadline, "acks while loading the room").await?;
        let reply = d.decode(&m, &mut |_, _| {})?;
        match reply.kind {
            Kind::Ack if reply.success != Some(false) => {
                let taken = match reply.request() {
                    Some(k) if !d.acks_in_order() => out.take(k).map(|t| (k, t)),
                    _ => out.take_oldest(),
                };
                if let Some((_, first)) = taken {
                    done += 1;
                    version = version.max(reply.version.unwrap_or(0));
                    let count = size.min(total - first);
                    Counters::add(&ctx.counters.acks, 1);
                    Counters::add(&ctx.counters.changes, count);
                }
            }
            Kind::Ack | Kind::Error => {
                return Err(BenchError::Protocol(format!(
                    "loading the room was refused: {}",
                    reply.message.as_deref().unwrap_or("push not accepted")
                )));
            }
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    close(ws).await;
    Ok((version, secs))
}

/// One catch-up by a fresh client.
struct Run {
    received: u64,
    pages: u64,
    secs: f64,
}

async fn catch_up(
    ctx: &Ctx,
    room: &str,
    index: usize,
    loaded_version: u64,
) -> Result<Run, BenchError> {
    let d = ctx.dialect;
    let name = format!("r{index}");
    let client = join(ctx, index + 1, room, name, false).await?;
    // Relay: the pull is over once a page reaches the version the room had when we joined.
    let target = client.version.max(loaded_version);
    let mut ws = client.ws;
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let started = Instant::now();
    ws.send(d.catch_up(room, 0, None))
        .await
        .map_err(BenchError::ws)?;
    let (mut received, mut pages) = (0u64, 0u64);
    let secs = loop {
        let m = recv_by(&mut ws, deadline, "catch-up pages").await?;
        let mut counted = 0u64;
        let reply = d.decode(&m, &mut |_, _| counted += 1)?;
        if reply.kind == Kind::Error {
            return Err(BenchError::Protocol(format!(
                "catch-up refused: {}",
                reply.message.as_deref().unwrap_or("error")
            )));
        }
        let last_page = match d.catch_up_page(&reply, target) {
            Page::Other => continue,
            Page::More => false,
            Page::AskNext(checkpoint) => {
                ws.send(d.catch_up(room, pages + 1, checkpoint))
                    .await
                    .map_err(BenchError::ws)?;
                false
            }
            Page::Last => true,
        };
        received += counted;
        pages += 1;
        Counters::add(&ctx.counters.changes, counted);
        if last_page {
            break started.elapsed().as_secs_f64();
        }
    };
    close(ws).await;
    Ok(Run {
        received,
        pages,
        secs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn run(ctx: &Arc<Ctx>, a: &CatchupArgs) -> Result<Outcome, BenchError> {
    let room = ctx.room("catchup", 0);
    ctx.counters.set_phase(Phase::Loading);
    let (version, load_s) = load(ctx, &room, a.changes).await?;
    let rss = ctx.probe.rss_kib();

    ctx.counters.set_phase(Phase::CatchUp);
    let mut runs = Vec::with_capacity(a.repeat);
    let mut error = None;
    for i in 0..a.repeat {
        let cpu_before = ctx.probe.sample();
        match catch_up(ctx, &room, i, version).await {
            Ok(r) => {
                let cpu = ctx.probe.between(&cpu_before, &ctx.probe.sample());
                runs.push((r, cpu));
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }

    let rate = |r: &Run| {
        if r.secs > 0.0 {
            r.received as f64 / r.secs
        } else {
            0.0
        }
    };
    let complete = !runs.is_empty() && runs.iter().all(|(r, _)| r.received >= a.changes);
    let median_rate = median(runs.iter().map(|(r, _)| rate(r)).collect());
    let median_secs = median(runs.iter().map(|(r, _)| r.secs).collect());
    let mut o = Outcome {
        error,
        ..Outcome::default()
    };
    o.set("changes", a.changes);
    o.set("load_s", round3(load_s));
    o.set(
        "load_changes_per_s",
        round1(if load_s > 0.0 {
            a.changes as f64 / load_s
        } else {
            0.0
        }),
    );
    o.set("complete", complete);
    o.set("changes_per_s", round1(median_rate));
    o.set("seconds", round3(median_secs));
    o.set(
        "runs",
        runs.iter()
            .map(|(r, cpu)| {
                serde_json::json!({
                    "received": r.received,
                    "pages": r.pages,
                    "seconds": round3(r.secs),
                    "changes_per_s": round1(rate(r)),
                    "complete": r.received >= a.changes,
                    "server_cpu_s": cpu.server_cpu_s.map(round3),
                    "bench_cpu_s": round3(cpu.bench_cpu_s),
                })
            })
            .collect::<Vec<_>>(),
    );
    o.set("pages", runs.first().map(|(r, _)| r.pages));
    o.set("errors", u64::from(o.error.is_some()));
    o.set("server_rss_kib", rss);
    o.summary.push(format!(
        "  {} changes loaded in {load_s:.2} s; {} catch-up(s) by a fresh client each",
        a.changes, a.repeat
    ));
    for (i, (r, _)) in runs.iter().enumerate() {
        o.summary.push(format!(
            "  run {}: {} changes in {} page(s), {:.3} s: {:.0} changes/s{}",
            i + 1,
            r.received,
            r.pages,
            r.secs,
            rate(r),
            if r.received < a.changes {
                format!(
                    " — INCOMPLETE: {} of {} changes came back",
                    r.received, a.changes
                )
            } else {
                String::new()
            }
        ));
    }
    o.summary.push(format!(
        "  median: {median_rate:.0} changes/s, {median_secs:.3} s{}",
        if complete {
            ""
        } else {
            " (incomplete: the server did not return every change)"
        }
    ));
    Ok(o)
}
