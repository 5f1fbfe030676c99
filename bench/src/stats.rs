//! The bench's clock, live counters (behind the progress line), latency histograms and the
//! measured window.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide origin of every timestamp a write carries. Senders and receivers live in
/// this one process, so a receiver subtracts a write's timestamp from its own reading.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant `us` microseconds after [`epoch`].
pub fn instant_at(us: u64) -> Instant {
    epoch() + Duration::from_micros(us)
}

/// Wall-clock milliseconds, for the timestamps the dialects put on messages.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A timed run: load starts at `start`, figures count from `measure_from` to `measure_to`
/// (all in µs since [`epoch`]); what happens before is warm-up.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: u64,
    pub measure_from: u64,
    pub measure_to: u64,
}

impl Window {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Window {
        let start = now_us();
        let measure_from = start + warmup.as_micros() as u64;
        Window {
            start,
            measure_from,
            measure_to: measure_from + duration.as_micros() as u64,
        }
    }

    pub fn contains(&self, t_us: u64) -> bool {
        (self.measure_from..self.measure_to).contains(&t_us)
    }

    pub fn secs(&self) -> f64 {
        (self.measure_to - self.measure_from) as f64 / 1e6
    }

    /// Events per second of measured time.
    pub fn rate(&self, count: u64) -> f64 {
        let s = self.secs();
        if s > 0.0 { count as f64 / s } else { 0.0 }
    }
}

/// A latency distribution in microseconds (values above an hour are clamped to an hour).
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Latency {
        // Constant, valid bounds: 1 µs to 1 h at 3 significant digits.
        Latency(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
        )
    }
}

impl Latency {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Both sides share the bounds above, so adding cannot fail; a failure would only lose
        // samples, never corrupt them.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    fn ms_at(&self, q: f64) -> f64 {
        round3(self.0.value_at_quantile(q) as f64 / 1000.0)
    }

    pub fn p50_ms(&self) -> f64 {
        self.ms_at(0.5)
    }

    pub fn p99_ms(&self) -> f64 {
        self.ms_at(0.99)
    }

    pub fn p999_ms(&self) -> f64 {
        self.ms_at(0.999)
    }

    /// `{count, p50, p99, p999, max, mean}` in milliseconds; percentiles are `null` when
    /// nothing was measured, so an empty run cannot pass for a fast one.
    pub fn to_json(&self) -> Value {
        if self.0.is_empty() {
            return json!({"count": 0, "p50": null, "p99": null, "p999": null, "max": null,
                          "mean": null});
        }
        json!({
            "count": self.0.len(),
            "p50": self.p50_ms(),
            "p99": self.p99_ms(),
            "p999": self.p999_ms(),
            "max": round3(self.0.max() as f64 / 1000.0),
            "mean": round3(self.0.mean() / 1000.0),
        })
    }

    /// "p50 1.23 ms, p99 4.56 ms, p999 7.89 ms", or "none measured".
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none measured".into();
        }
        format!(
            "p50 {} ms, p99 {} ms, p999 {} ms",
            fmt_ms(self.p50_ms()),
            fmt_ms(self.p99_ms()),
            fmt_ms(self.p999_ms())
        )
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Where a run is, for the progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Setup = 0,
    Warmup,
    Measuring,
    Draining,
    Loading,
    CatchUp,
    Closing,
    Done,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Setup,
            1 => Phase::Warmup,
            2 => Phase::Measuring,
            3 => Phase::Draining,
            4 => Phase::Loading,
            5 => Phase::CatchUp,
            6 => Phase::Closing,
            _ => Phase::Done,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Warmup => "warm-up",
            Phase::Measuring => "measuring",
            Phase::Draining => "draining",
            Phase::Loading => "loading",
            Phase::CatchUp => "catch-up",
            Phase::Closing => "closing",
            Phase::Done => "done",
        }
    }
}

/// Running totals every task adds to; read by the progress line and, should the run hit its
/// deadline, by the report of what had happened by then.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acks: AtomicU64,
    pub deliveries: AtomicU64,
    pub errors: AtomicU64,
    pub connections: AtomicU64,
    pub changes: AtomicU64,
    /// The slowest ack since the progress line last looked, in µs.
    ack_max_us: AtomicU64,
    phase: AtomicU8,
}

impl Counters {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// An ack took `us`: the progress line shows the slowest of each second, so a stall shows
    /// when it happens rather than only in the run's percentiles.
    pub fn ack_took(&self, us: u64) {
        self.ack_max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 6] {
        [
            self.sent.load(Ordering::Relaxed),
            self.acks.load(Ordering::Relaxed),
            self.deliveries.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.changes.load(Ordering::Relaxed),
        ]
    }

    /// The totals, for a report cut short.
    pub fn to_json(&self) -> Value {
        let [sent, acks, deliveries, errors, connections, changes] = self.snapshot();
        json!({"sent_total": sent, "acks_total": acks, "deliveries_total": deliveries,
               "errors_total": errors, "connections_total": connections,
               "changes_total": changes})
    }
}

/// Rewrites one stderr line about once a second until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: String, counters: Arc<Counters>) -> Progress {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = counters.snapshot();
            let mut last_at = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = counters.snapshot();
                let dt = last_at.elapsed().as_secs_f64().max(1e-3);
                let rate = |i: usize| (now[i] - last[i]) as f64 / dt;
                let mut line = format!(
                    "\r{label} {:>6.1}s {:<9}",
                    started.elapsed().as_secs_f64(),
                    counters.phase().label()
                );
                if now[1] > 0 {
                    let slowest = counters.ack_max_us.swap(0, Ordering::Relaxed);
                    let _ = write!(
                        line,
                        " acks {:>8.0}/s (slowest {:>7.1} ms)",
                        rate(1),
                        slowest as f64 / 1000.0
                    );
                }
                if now[2] > 0 {
                    let _ = write!(line, " deliveries {:>9.0}/s", rate(2));
                }
                if now[4] > 0 {
                    let _ = write!(line, " connections {:>6}", now[4]);
                }
                if now[5] > 0 {
                    let _ = write!(line, " changes {:>8}", now[5]);
                }
                let _ = write!(line, " errors {}   ", now[3]);
                eprint!("{line}");
                last = now;
                last_at = Instant::now();
            }
        });
        Progress { task }
    }

    /// Stops the line and moves stderr to a fresh line.
    pub fn finish(self) {
        self.task.abort();
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut l = Latency::default();
        for us in 1..=1000 {
            l.record(us * 1000);
        }
        assert!((l.p50_ms() - 500.0).abs() < 1.0);
        assert!((l.p99_ms() - 990.0).abs() < 2.0);
        let mut other = Latency::default();
        other.record(2_000_000);
        l.merge(&other);
        assert_eq!(l.count(), 1001);
        assert_eq!(Latency::default().to_json()["p50"], Value::Null);
    }

    #[test]
    fn the_window_counts_from_the_end_of_warm_up() {
        let w = Window {
            start: 0,
            measure_from: 2_000_000,
            measure_to: 12_000_000,
        };
        assert!(!w.contains(1_999_999));
        assert!(w.contains(2_000_000));
        assert!(!w.contains(12_000_000));
        assert_eq!(w.rate(5000), 500.0);
    }
}
