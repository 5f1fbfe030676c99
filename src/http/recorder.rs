//! The last ten minutes of the hub's figures, one sample a second, kept in memory for the
//! dashboard's charts and for the rates `/stats` reports. Bounded: the oldest sample goes when a
//! new one comes past [`KEEP`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use synchub_actors::admin::{ActorKind, Metrics};
use synchub_actors::connection::Limit;
use synchub_actors::dialects::DIALECTS;
use synchub_actors::now_ms;

/// How often a sample is taken.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Samples kept: ten minutes' worth.
pub(crate) const KEEP: usize = 600;

/// The hub over one interval: gauges as they stood at its end, counters as rates over it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Unix milliseconds at the end of the interval.
    pub(crate) t: i64,
    pub(crate) sessions: BTreeMap<&'static str, i64>,
    pub(crate) connects_per_s: f64,
    pub(crate) disconnects_per_s: f64,
    pub(crate) changes_per_s: BTreeMap<&'static str, f64>,
    pub(crate) frames_in_per_s: f64,
    pub(crate) frames_out_per_s: f64,
    pub(crate) messages_per_s: BTreeMap<&'static str, f64>,
    pub(crate) backlog: BTreeMap<&'static str, i64>,
    pub(crate) flushes_per_s: f64,
    /// Commits one flush covered, on average over the interval (0 without flushes).
    pub(crate) flush_batch_mean: f64,
    pub(crate) flush_latency_ms_mean: f64,
    pub(crate) limits_per_s: BTreeMap<&'static str, f64>,
}

/// The counters as read at one instant.
struct Totals {
    at: Instant,
    connects: u64,
    disconnects: u64,
    changes: BTreeMap<&'static str, u64>,
    frames_in: u64,
    frames_out: u64,
    messages: BTreeMap<&'static str, u64>,
    flushes: u64,
    batch_sum: f64,
    batch_count: u64,
    latency_sum: f64,
    latency_count: u64,
    limits: BTreeMap<&'static str, u64>,
}

impl Totals {
    fn read(m: &Metrics) -> Totals {
        let per_dialect = |v: &prometheus::IntCounterVec| -> u64 {
            DIALECTS
                .iter()
                .map(|d| v.with_label_values(&[d.name()]).get())
                .sum()
        };
        Totals {
            at: Instant::now(),
            connects: per_dialect(&m.connects),
            disconnects: per_dialect(&m.disconnects),
            changes: DIALECTS
                .iter()
                .map(|d| (d.name(), m.changes.with_label_values(&[d.name()]).get()))
                .collect(),
            frames_in: per_dialect(&m.frames_in),
            frames_out: per_dialect(&m.frames_out),
            messages: ActorKind::ALL
                .iter()
                .map(|k| (k.as_str(), m.actor(*k).messages.get()))
                .collect(),
            flushes: m.flushes.get(),
            batch_sum: m.flush_batch.get_sample_sum(),
            batch_count: m.flush_batch.get_sample_count(),
            latency_sum: m.flush_seconds.get_sample_sum(),
            latency_count: m.flush_seconds.get_sample_count(),
            limits: m.limits(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Recorder {
    last: Option<Totals>,
    samples: VecDeque<Sample>,
}

impl Recorder {
    /// Takes a sample; the first call only sets the baseline.
    pub(crate) fn record(&mut self, m: &Metrics) {
        let now = Totals::read(m);
        if let Some(before) = self.last.take() {
            let sample = sample(m, &before, &now);
            if self.samples.len() == KEEP {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        self.last = Some(now);
    }

    pub(crate) fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    pub(crate) fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

fn sample(m: &Metrics, before: &Totals, now: &Totals) -> Sample {
    let secs = now
        .at
        .saturating_duration_since(before.at)
        .as_secs_f64()
        .max(1e-3);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let rates = |a: &BTreeMap<&'static str, u64>, b: &BTreeMap<&'static str, u64>| {
        b.iter()
            .map(|(k, n)| (*k, rate(a.get(k).copied().unwrap_or(0), *n)))
            .collect()
    };
    let mean = |sum: f64, n: u64| if n == 0 { 0.0 } else { sum / n as f64 };
    let batches = now.batch_count.saturating_sub(before.batch_count);
    let timed = now.latency_count.saturating_sub(before.latency_count);
    Sample {
        t: now_ms(),
        sessions: DIALECTS
            .iter()
            .map(|d| (d.name(), m.sessions.with_label_values(&[d.name()]).get()))
            .collect(),
        connects_per_s: rate(before.connects, now.connects),
        disconnects_per_s: rate(before.disconnects, now.disconnects),
        changes_per_s: rates(&before.changes, &now.changes),
        frames_in_per_s: rate(before.frames_in, now.frames_in),
        frames_out_per_s: rate(before.frames_out, now.frames_out),
        messages_per_s: rates(&before.messages, &now.messages),
        backlog: ActorKind::ALL
            .iter()
            .map(|k| (k.as_str(), m.actor(*k).backlog.get().max(0)))
            .collect(),
        flushes_per_s: rate(before.flushes, now.flushes),
        flush_batch_mean: mean(now.batch_sum - before.batch_sum, batches),
        flush_latency_ms_mean: mean((now.latency_sum - before.latency_sum) * 1000.0, timed),
        limits_per_s: Limit::ALL
            .iter()
            .map(|l| {
                let k = l.as_str();
                let a = before.limits.get(k).copied().unwrap_or(0);
                (k, rate(a, now.limits.get(k).copied().unwrap_or(0)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ten_minutes_and_reports_rates() {
        let m = Metrics::new();
        let mut r = Recorder::default();
        r.record(&m);
        assert!(r.latest().is_none(), "the first reading is only a baseline");
        m.connects.with_label_values(&["relay"]).inc_by(50);
        m.changes.with_label_values(&["pocket"]).inc_by(7);
        m.flush_batch.observe(4.0);
        m.flush_batch.observe(2.0);
        r.record(&m);
        let s = r.latest().expect("a sample");
        assert!(s.connects_per_s > 0.0);
        assert!(s.changes_per_s["pocket"] > 0.0);
        assert_eq!(s.changes_per_s["relay"], 0.0);
        assert_eq!(s.flush_batch_mean, 3.0);
        for _ in 0..KEEP + 10 {
            r.record(&m);
        }
        assert_eq!(r.samples().count(), KEEP);
        assert_eq!(r.latest().map(|s| s.connects_per_s), Some(0.0));
    }
}
