//! The hub's counters, kept in a prometheus registry: `/metrics` renders the registry and
//! `/stats` reads the same values back, so the two never disagree.

use std::collections::BTreeMap;
use std::ops::Deref;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::limits::Limit;
use crate::room_key::Namespace;

/// The actor kinds whose counts and traffic are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Session,
    Room,
    Directory,
    Durability,
}

impl ActorKind {
    pub const ALL: [ActorKind; 4] = [
        ActorKind::Session,
        ActorKind::Room,
        ActorKind::Directory,
        ActorKind::Durability,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Session => "session",
            ActorKind::Room => "room",
            ActorKind::Directory => "directory",
            ActorKind::Durability => "durability",
        }
    }
}

/// The series of one actor kind, resolved once: a label lookup per message would cost more
/// than the counting.
///
/// Every message queued for the kind holds it ([`crate::mailbox`]), from its sender's thread to
/// its receiver's, so it is a plain reference rather than an `Arc`: a reference count touched
/// from both worker threads on every delivery cost fanout about 6 % of its throughput. The
/// series are leaked once per [`Metrics`] for that, a few hundred bytes for a hub's lifetime.
#[derive(Clone, Copy)]
pub struct ActorMetrics(&'static ActorSeries);

pub struct ActorSeries {
    /// Live actors.
    pub count: IntGauge,
    /// Messages handled.
    pub messages: IntCounter,
    /// Messages sent and not yet handled.
    pub backlog: IntGauge,
}

impl Deref for ActorMetrics {
    type Target = ActorSeries;

    fn deref(&self) -> &ActorSeries {
        self.0
    }
}

/// The series of one dialect namespace, resolved once.
#[derive(Clone)]
pub struct DialectMetrics {
    pub changes: IntCounter,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
}

/// The cluster bridge's series.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Calls to the sequencer, and the changes they ordered.
    pub orders: IntCounter,
    pub ordered_changes: IntCounter,
    /// Redis round trips made for rooms (orders, counters, stream reads).
    pub round_trips: IntCounter,
    /// Gaps a room closed after pub/sub skipped batches.
    pub gaps_repaired: IntCounter,
    /// Catch-ups of a room that started or resynced.
    pub catch_ups: IntCounter,
    /// History pages read from peers.
    pub peer_reads: IntCounter,
    /// Times Redis was found to have lost its data.
    pub epoch_changes: IntCounter,
    /// 1 while the bridge works.
    pub healthy: IntGauge,
    /// Other nodes heard from lately.
    pub peers: IntGauge,
    /// 1 while Redis answers the heartbeat.
    pub redis_up: IntGauge,
    /// 1 for the epoch this node orders under (the label), set at scrape time.
    pub epoch: IntGaugeVec,
    /// Live rooms behind their Redis counter, and the largest lag in changes, at scrape time.
    pub rooms_behind: IntGauge,
    pub lag_max: IntGauge,
}

pub struct Metrics {
    pub registry: Registry,
    pub cluster: ClusterMetrics,
    pub session: ActorMetrics,
    pub room: ActorMetrics,
    pub directory: ActorMetrics,
    pub durability: ActorMetrics,
    /// Open sessions by dialect.
    pub sessions: IntGaugeVec,
    /// Sessions opened and closed, by dialect.
    pub connects: IntCounterVec,
    pub disconnects: IntCounterVec,
    /// Admin HTTP actions carried out, by action.
    pub admin_actions: IntCounterVec,
    /// Live actors by kind.
    pub actors: IntGaugeVec,
    /// Messages handled by actor kind.
    pub messages: IntCounterVec,
    /// Messages sent to actors of a kind and not yet handled.
    pub backlog: IntGaugeVec,
    /// Changes accepted (logged) by namespace.
    pub changes: IntCounterVec,
    /// Frames received and sent by dialect.
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    pub flushes: IntCounter,
    pub flush_errors: IntCounter,
    /// 1 while storage refuses writes (a failed write or flush, until it recovers).
    pub storage_failing: IntGauge,
    /// Times storage came back by itself after a failure.
    pub storage_recoveries: IntCounter,
    /// Commit requests covered by one flush.
    pub flush_batch: Histogram,
    /// Changes covered by one flush.
    pub flush_changes: Histogram,
    pub flush_seconds: Histogram,
    pub rooms_started: IntCounter,
    pub rooms_stopped: IntCounter,
    pub connections_refused: IntCounterVec,
    /// Messages and connections a `[limits]` key turned away, by limit.
    pub limits_hit: IntCounterVec,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric name");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric name");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("synchub".into()), None).expect("static prefix");
        let actors = gauge_vec(&r, "actors", "Live actors by kind", "kind");
        let messages = counter_vec(&r, "actor_messages_total", "Messages handled", "kind");
        let backlog = gauge_vec(&r, "actor_backlog", "Messages queued, not handled", "kind");
        let kind = |k: ActorKind| {
            let label = [k.as_str()];
            ActorMetrics(Box::leak(Box::new(ActorSeries {
                count: actors.with_label_values(&label),
                messages: messages.with_label_values(&label),
                backlog: backlog.with_label_values(&label),
            })))
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            r.register(Box::new(g.clone())).expect("unique metric name");
            g
        };
        let cluster = ClusterMetrics {
            orders: counter(
                &r,
                "cluster_orders_total",
                "Batches the cluster's sequencer ordered",
            ),
            ordered_changes: counter(
                &r,
                "cluster_ordered_changes_total",
                "Changes the cluster's sequencer ordered",
            ),
            round_trips: counter(
                &r,
                "cluster_redis_round_trips_total",
                "Redis round trips for rooms",
            ),
            gaps_repaired: counter(
                &r,
                "cluster_gaps_repaired_total",
                "Gaps filled after pub/sub skipped batches",
            ),
            catch_ups: counter(
                &r,
                "cluster_catch_ups_total",
                "Room catch-ups with the cluster",
            ),
            peer_reads: counter(
                &r,
                "cluster_peer_reads_total",
                "History pages read from peers",
            ),
            epoch_changes: counter(
                &r,
                "cluster_epoch_changes_total",
                "Times Redis lost its data",
            ),
            healthy: gauge("cluster_healthy", "1 while the cluster bridge works"),
            peers: gauge("cluster_peers", "Other nodes heard from lately"),
            redis_up: gauge("cluster_redis_up", "1 while Redis answers the heartbeat"),
            epoch: gauge_vec(
                &r,
                "cluster_epoch",
                "1 for the Redis epoch this node orders under",
                "epoch",
            ),
            rooms_behind: gauge(
                "cluster_rooms_behind",
                "Live rooms behind their counter in Redis",
            ),
            lag_max: gauge(
                "cluster_lag_max",
                "The largest replication lag of a live room, in changes",
            ),
        };
        let m = Metrics {
            cluster,
            session: kind(ActorKind::Session),
            room: kind(ActorKind::Room),
            directory: kind(ActorKind::Directory),
            durability: kind(ActorKind::Durability),
            sessions: gauge_vec(&r, "sessions", "Open sessions by dialect", "dialect"),
            connects: counter_vec(&r, "connects_total", "Sessions opened", "dialect"),
            disconnects: counter_vec(&r, "disconnects_total", "Sessions closed", "dialect"),
            admin_actions: counter_vec(
                &r,
                "admin_actions_total",
                "Admin HTTP actions carried out",
                "action",
            ),
            actors,
            messages,
            backlog,
            changes: counter_vec(&r, "changes_total", "Changes accepted", "namespace"),
            frames_in: counter_vec(&r, "frames_in_total", "Frames received", "dialect"),
            frames_out: counter_vec(&r, "frames_out_total", "Frames sent", "dialect"),
            flushes: counter(&r, "flushes_total", "Storage flushes completed"),
            flush_errors: counter(&r, "flush_errors_total", "Storage flushes that failed"),
            storage_failing: gauge(
                "storage_failing",
                "1 while storage refuses writes after a failed write or flush",
            ),
            storage_recoveries: counter(
                &r,
                "storage_recoveries_total",
                "Times storage recovered by itself after a failure",
            ),
            flush_batch: histogram(
                &r,
                "flush_batch_size",
                "Commits covered by one flush",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
            ),
            flush_changes: histogram(
                &r,
                "flush_changes",
                "Changes covered by one flush",
                prometheus::exponential_buckets(1.0, 2.0, 14).expect("static buckets"),
            ),
            flush_seconds: histogram(
                &r,
                "flush_seconds",
                "Flush latency",
                prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("static buckets"),
            ),
            rooms_started: counter(&r, "rooms_started_total", "Room actors started"),
            rooms_stopped: counter(&r, "rooms_stopped_total", "Room actors stopped when idle"),
            connections_refused: counter_vec(
                &r,
                "connections_refused_total",
                "Connections refused by reason",
                "reason",
            ),
            limits_hit: counter_vec(
                &r,
                "limits_hit_total",
                "Messages and connections turned away by a limit",
                "limit",
            ),
            registry: r,
        };
        // Make every series visible from the start, not only once it moved (the dialects'
        // series too, as the hub names its dialects: [`Metrics::show_dialect`]).
        for limit in Limit::ALL {
            m.limits_hit.with_label_values(&[limit.as_str()]);
        }
        m.connections_refused.with_label_values(&["auth"]);
        m
    }

    /// Makes the series of a dialect visible before it has any traffic.
    pub fn show_dialect(&self, ns: Namespace) {
        let label = [ns.as_str()];
        self.sessions.with_label_values(&label);
        self.connects.with_label_values(&label);
        self.disconnects.with_label_values(&label);
        self.changes.with_label_values(&label);
        self.frames_in.with_label_values(&label);
        self.frames_out.with_label_values(&label);
    }

    pub fn limit_hit(&self, limit: Limit) {
        self.limits_hit.with_label_values(&[limit.as_str()]).inc();
    }

    /// How often each limit was hit, for `/stats`.
    pub fn limits(&self) -> BTreeMap<&'static str, u64> {
        Limit::ALL
            .iter()
            .map(|l| {
                (
                    l.as_str(),
                    self.limits_hit.with_label_values(&[l.as_str()]).get(),
                )
            })
            .collect()
    }

    /// The series of one actor kind.
    pub fn actor(&self, kind: ActorKind) -> &ActorMetrics {
        match kind {
            ActorKind::Session => &self.session,
            ActorKind::Room => &self.room,
            ActorKind::Directory => &self.directory,
            ActorKind::Durability => &self.durability,
        }
    }

    /// The series of one dialect namespace.
    pub fn dialect(&self, ns: Namespace) -> DialectMetrics {
        let label = [ns.as_str()];
        DialectMetrics {
            changes: self.changes.with_label_values(&label),
            frames_in: self.frames_in.with_label_values(&label),
            frames_out: self.frames_out.with_label_values(&label),
        }
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
