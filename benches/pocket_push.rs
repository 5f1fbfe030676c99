//! Pocket push throughput and ack latency against a real hub started in-process on port 0,
//! durable by default (every ack waits for the group-commit flush that covers it).
//!
//! Run with `cargo bench --bench pocket_push` (a release build). Each configuration runs
//! `RUNS` times; the table shows the medians over the runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{TestHub, Ws, get};
use serde_json::json;

const RUNS: usize = 5;
const PUSHES_PER_CLIENT: usize = 2000;
/// Pushes a client keeps in flight before it waits for an ack.
const WINDOW: usize = 16;

struct Run {
    acks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    batch: f64,
    flush_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One client pushing into its own room with a window of pushes in flight; returns latencies.
async fn client(url: String, id: usize) -> Vec<f64> {
    let mut ws = Ws::connect(&url).await;
    let mut sent_at = HashMap::with_capacity(PUSHES_PER_CLIENT);
    let mut latencies = Vec::with_capacity(PUSHES_PER_CLIENT);
    let mut next = 0;
    while latencies.len() < PUSHES_PER_CLIENT {
        while next < PUSHES_PER_CLIENT && next - latencies.len() < WINDOW {
            let rid = format!("c{id}-{next}");
            let msg = json!({"type": "push", "id": rid, "timestamp": 1, "collection": "todos",
                "changes": [{"operation": "insert", "documentId": format!("d{next}"),
                             "document": {"title": "benchmark", "n": next}, "timestamp": next}],
                "checkpoint": {}});
            sent_at.insert(rid, Instant::now());
            ws.send_json(&msg).await;
            next += 1;
        }
        let r = ws.recv_json().await;
        assert_eq!(r["type"], "push-response", "{r}");
        let at = sent_at
            .remove(r["id"].as_str().expect("id"))
            .expect("a reply to a request we sent");
        latencies.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    latencies
}

async fn run(clients: usize) -> Run {
    let hub = TestHub::start_with(|c| c.server.heartbeat_interval_s = 30);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| actix_rt::spawn(client(hub.ws_url(&format!("/sync?room=bench-{i}")), i)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, stats) = get(&hub.http_url("/stats")).await;
    latencies.sort_by(f64::total_cmp);
    Run {
        acks_per_s: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        batch: stats["storage"]["batch_size_mean"].as_f64().unwrap_or(0.0),
        flush_ms: stats["storage"]["flush_latency_ms_mean"]
            .as_f64()
            .unwrap_or(0.0),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let system = actix_rt::System::new();
    system.block_on(async {
        println!(
            "pocket push, {PUSHES_PER_CLIENT} pushes per client, window {WINDOW}, \
             durable acks, median of {RUNS} runs"
        );
        println!(
            "| clients | acks/s | ack p50 (ms) | ack p99 (ms) | commits per flush | flush (ms) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        let counts: Vec<usize> = std::env::var("BENCH_CLIENTS")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 8, 32]);
        for clients in counts {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push(run(clients).await);
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            println!(
                "| {clients} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} |",
                median(runs.iter().map(|r| r.acks_per_s).collect()),
                median(runs.iter().map(|r| r.p50_ms).collect()),
                median(runs.iter().map(|r| r.p99_ms).collect()),
                median(runs.iter().map(|r| r.batch).collect()),
                median(runs.iter().map(|r| r.flush_ms).collect()),
            );
        }
    });
}
