//! `conns`: many idle connections, opened from several loopback source addresses (one address
//! offers only so many ephemeral ports), each proven live by the dialect's own exchange.
//! Measures the connect rate and the server's memory per connection.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::conn::{Ws, connect, recv, recv_by};
use crate::dialect::Kind;
use crate::stats::{Counters, Phase, round1, round3};
use crate::{BenchError, Ctx, Outcome};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct ConnsArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10000)]
    pub connections: usize,
    /// Connections per source address (127.0.0.1, 127.0.0.2, …); 0 lets the system choose.
    /// Only used against a loopback IPv4 server.
    #[arg(long, default_value_t = 1000)]
    pub per_address: usize,
    /// Seconds to hold the connections after measuring, before closing them.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
}

/// Connections per room (relay channel / Pocket room), so no single room holds them all.
const PER_ROOM: usize = 100;
/// How long the server's memory gets to settle before it is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Opens connection `i` and proves it live: relay's `connected`, Pocket's `ping`/`pong`,
/// SyncKit's ping/pong frames.
async fn open_live(
    ctx: &Ctx,
    i: usize,
    source: Option<IpAddr>,
    gate: &Semaphore,
) -> Result<Ws, BenchError> {
    let _permit = gate
        .acquire()
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?;
    let d = ctx.dialect;
    let ep = ctx.endpoint(i);
    let url = ep.url(
        d.default_path(),
        &d.query(&ctx.room("conns", i / PER_ROOM), &format!("c{i}")),
    );
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let mut ws = match tokio::time::timeout_at(deadline, connect(ep, &url, source)).await {
        Ok(r) => r?,
        Err(_) => return Err(BenchError::Timeout(format!("connecting to {url}"))),
    };
    let want = match d.ping() {
        Some(ping) => {
            ws.send(ping).await.map_err(BenchError::ws)?;
            Kind::Pong
        }
        None => Kind::Connected,
    };
    loop {
        let m = recv_by(&mut ws, deadline, "proof that the connection is live").await?;
        if d.decode(&m, &mut |_, _| {})?.kind == want {
            return Ok(ws);
        }
    }
}

/// Holds a live connection, reading (so the server's pings are answered), until `stop`.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Option<String> {
    let dropped = tokio::select! {
        r = async { loop { if let Err(e) = recv(&mut ws).await { return e; } } } => Some(r.to_string()),
        _ = stop.changed() => None,
    };
    if dropped.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    dropped
}

/// The source address of connection `i`: 127.0.0.1 for the first `per_address`, then .2, …
fn source_of(i: usize, per_address: usize) -> Option<IpAddr> {
    if per_address == 0 {
        return None;
    }
    let host = u32::try_from(1 + i / per_address).ok()?;
    (host < 1 << 24).then(|| IpAddr::V4(Ipv4Addr::from(0x7F00_0000 | host)))
}

pub async fn run(ctx: &Arc<Ctx>, a: &ConnsArgs) -> Result<Outcome, BenchError> {
    let spread = a.per_address > 0
        && ctx.endpoint(0).addr.ip().is_loopback()
        && ctx.endpoint(0).addr.is_ipv4();
    let per_address = if spread { a.per_address } else { 0 };
    let addresses = if spread {
        a.connections.div_ceil(a.per_address)
    } else {
        0
    };
    let rss_before = ctx.probe.rss_kib();

    let gate = Arc::new(Semaphore::new(ctx.concurrency));
    let (stop, stopped) = watch::channel(false);
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let (ctx, gate, opened, stopped) = (
            ctx.clone(),
            gate.clone(),
            opened_tx.clone(),
            stopped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            match open_live(&ctx, i, source_of(i, per_address), &gate).await {
                Ok(ws) => {
                    Counters::add(&ctx.counters.connections, 1);
                    let _ = opened.send(Ok(()));
                    hold(ws, stopped).await
                }
                Err(e) => {
                    Counters::add(&ctx.counters.errors, 1);
                    let _ = opened.send(Err(e.to_string()));
                    None
                }
            }
        }));
    }
    drop(opened_tx);

    // Every connection reports once; each is bounded by the timeout, the phase by twice it.
    let phase_end = tokio::time::Instant::now() + 2 * ctx.timeout;
    let (mut connected, mut failed, mut first_error) = (0u64, 0u64, None);
    let mut open_s = 0.0;
    while connected + failed < a.connections as u64 {
        match tokio::time::timeout_at(phase_end, opened_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {
                first_error.get_or_insert("the open phase ran out of time".into());
                break;
            }
        }
        open_s = started.elapsed().as_secs_f64();
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = ctx.probe.rss_kib();
    ctx.counters.set_phase(Phase::Measuring);
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;

    ctx.counters.set_phase(Phase::Closing);
    let _ = stop.send(true);
    let mut dropped = 0u64;
    let closing = async {
        for t in tasks {
            if let Ok(Some(e)) = t.await {
                dropped += 1;
                first_error.get_or_insert(e);
            }
        }
    };
    let closed_in_time = tokio::time::timeout(ctx.timeout, closing).await.is_ok();

    let rate = if open_s > 0.0 {
        connected as f64 / open_s
    } else {
        0.0
    };
    let kib_per = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(round3((a as f64 - b as f64) / connected as f64))
        }
        _ => None,
    };
    let mut o = Outcome::default();
    o.set("connections", a.connections);
    o.set("connected", connected);
    o.set("failed", failed);
    o.set("dropped_while_held", dropped);
    o.set("errors", failed + dropped);
    o.set("open_s", round3(open_s));
    o.set("connects_per_s", round1(rate));
    o.set("source_addresses", addresses);
    o.set("server_rss_before_kib", rss_before);
    o.set("server_rss_after_kib", rss_after);
    o.set("kib_per_connection", kib_per);
    o.set("error_sample", first_error.clone());
    o.summary.push(format!(
        "  {connected} of {} connections live in {open_s:.2} s ({rate:.0}/s, {} at a time, {})",
        a.connections,
        ctx.concurrency,
        if addresses > 0 {
            format!("from {addresses} source addresses")
        } else {
            "from the system's choice of source address".to_owned()
        }
    ));
    o.summary.push(match (rss_before, rss_after, kib_per) {
        (Some(b), Some(a), Some(k)) => {
            format!("  server RSS {b} KiB before, {a} KiB after: {k:.1} KiB per connection")
        }
        _ => "  server memory unknown (no --server-pid)".to_owned(),
    });
    if failed > 0 || dropped > 0 {
        o.summary.push(format!(
            "  failed: {failed}, dropped while held: {dropped} (first: {})",
            first_error.as_deref().unwrap_or("-")
        ));
        o.error = Some(format!(
            "{} of {} connections failed or dropped: {}",
            failed + dropped,
            a.connections,
            first_error.as_deref().unwrap_or("-")
        ));
    } else if !closed_in_time {
        o.error = Some("connections did not close in time".into());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_step_through_loopback_addresses() {
        assert_eq!(source_of(0, 1000), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(source_of(999, 1000), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(source_of(1000, 1000), Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(
            source_of(300 * 1000, 1000),
            Some(IpAddr::from([127, 0, 1, 45]))
        );
        assert_eq!(source_of(5, 0), None);
    }
}
