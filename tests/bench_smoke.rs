//! `synchub bench` end to end: every scenario in every dialect, with tiny parameters, against
//! the hub the bench starts itself. Checks that each run completes and does its work; no
//! timing is asserted.

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

const DIALECTS: [&str; 3] = ["relay", "pocket", "synckit"];

/// Runs `synchub bench <args> --dialect <d>` and returns the JSON of its last stdout line.
fn bench(dialect: &str, args: &[&str]) -> Value {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_synchub"))
        .arg("bench")
        .args(args)
        .args(["--dialect", dialect, "--timeout", "30"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run synchub bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(
        out.status.success(),
        "{args:?} {dialect} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(report["completed"], true, "{report}");
    assert_eq!(report["dialect"], dialect, "{report}");
    assert_eq!(report["self_started"], true, "{report}");
    assert_eq!(report["hub_stop"], "stopped", "{report}");
    eprintln!(
        "{} {dialect}: {:.1} s",
        args[0],
        started.elapsed().as_secs_f64()
    );
    report
}

/// The scenario in the three dialects at once, each in its own thread.
fn in_every_dialect(args: &[&str], check: fn(&str, &Value)) {
    std::thread::scope(|s| {
        let runs: Vec<_> = DIALECTS
            .iter()
            .map(|d| s.spawn(move || (d, bench(d, args))))
            .collect();
        for run in runs {
            let (d, report) = run.join().expect("bench thread");
            check(d, &report);
        }
    });
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

const TIMED: [&str; 4] = ["--warmup", "0", "--duration", "1"];

#[test]
fn writes_are_acked_and_delivered() {
    let args = [&["writes"][..], &TIMED, &["--in-flight", "16"]].concat();
    in_every_dialect(&args, |d, r| {
        assert!(count(r, "acks") > 0, "{d}: {r}");
        assert!(count(r, "deliveries") > 0, "{d}: {r}");
        assert_eq!(count(r, "errors"), 0, "{d}: {r}");
        assert!(r["ack_latency_ms"]["p50"].is_number(), "{d}: {r}");
        assert!(r["server_cpu_s"].is_number(), "{d}: {r}");
    });
}

#[test]
fn rooms_write_open_loop_and_deliver_to_the_others() {
    let args = [&["rooms"][..], &TIMED, &["--rooms", "4", "--clients", "3"]].concat();
    in_every_dialect(&args, |d, r| {
        assert!(count(r, "offered_writes") > 0, "{d}: {r}");
        assert!(count(r, "acks") > 0, "{d}: {r}");
        assert!(count(r, "deliveries") > 0, "{d}: {r}");
        assert_eq!(count(r, "errors"), 0, "{d}: {r}");
    });
}

#[test]
fn fanout_reaches_every_subscriber_exactly_once() {
    let args = [&["fanout"][..], &TIMED, &["--subscribers", "20"]].concat();
    in_every_dialect(&args, |d, r| {
        assert!(count(r, "deliveries") > 0, "{d}: {r}");
        assert!(count(r, "changes_checked") > 0, "{d}: {r}");
        assert_eq!(count(r, "missing"), 0, "{d}: {r}");
        assert_eq!(count(r, "duplicated"), 0, "{d}: {r}");
        assert_eq!(count(r, "errors"), 0, "{d}: {r}");
        assert_eq!(r["drained"], true, "{d}: {r}");
    });
}

#[test]
fn conns_are_all_proven_live() {
    let args = [
        "conns",
        "--connections",
        "200",
        "--per-address",
        "100",
        "--hold",
        "0.5",
    ];
    in_every_dialect(&args, |d, r| {
        assert_eq!(count(r, "connected"), 200, "{d}: {r}");
        assert_eq!(count(r, "errors"), 0, "{d}: {r}");
        assert_eq!(count(r, "source_addresses"), 2, "{d}: {r}");
        assert!(r["server_rss_after_kib"].is_number(), "{d}: {r}");
    });
}

#[test]
fn catchup_returns_every_change() {
    let args = ["catchup", "--changes", "2000", "--repeat", "1"];
    in_every_dialect(&args, |d, r| {
        assert_eq!(r["complete"], true, "{d}: {r}");
        assert_eq!(r["runs"][0]["received"], 2000, "{d}: {r}");
        assert!(count(r, "pages") >= 1, "{d}: {r}");
    });
}

/// A SyncKit room is one document, and the bench's loads pass the hub's default document limit
/// (256 KiB); the hub the bench starts must take them, or `writes` acks nothing and `catchup`
/// cannot even load its room.
#[test]
fn synckit_runs_past_the_default_document_limit() {
    let report = bench(
        "synckit",
        &["catchup", "--changes", "20000", "--repeat", "1"],
    );
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["runs"][0]["received"], 20000, "{report}");
}
