//! `synchub bench`: a load generator that drives synchub, or any server speaking one of its
//! dialects, over real WebSockets, and reports throughput, latency percentiles, delivery
//! accounting and the server's CPU and memory.
//!
//! Without `--url` it starts a hub of its own (this binary, `serve`, on a temporary data
//! directory). Every scenario is bounded in time; the last line on stdout is one JSON object
//! with every figure.

pub mod cluster_figures;
pub mod conn;
pub mod dialect;
pub mod scenario;
pub mod stats;
pub mod target;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite;

use self::dialect::{DecodeError, Dialect, DialectParser, Shape};
use self::scenario::Scenario;
use self::stats::{Counters, Phase, Progress, Window};
use self::target::{CpuUse, Endpoint, Probe, SelfHub};

/// Builds the TLS client configuration `wss://` targets are reached with: the system's roots
/// and those of `--ca`. Given by the binary, which knows its TLS setup.
pub type Trust = fn(Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String>;

/// Arguments of `synchub bench`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Without --url the bench starts `synchub serve` itself (auth off, limits \
                  raised, data in a temporary directory; SYNCHUB_* variables already set in \
                  the environment win). The last line on stdout is one JSON object with every \
                  figure; the exit code is 0 only for a completed run."
)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct CommonArgs {
    /// Wire dialect the clients speak.
    #[arg(long, value_parser = DialectParser, default_value = "relay", global = true)]
    pub dialect: Dialect,
    /// Server to drive, as ws://HOST:PORT[/PATH] or wss://HOST:PORT[/PATH]; repeat it to spread
    /// clients over several servers round-robin. Without it the bench starts a hub of its own.
    #[arg(long = "url", value_name = "URL", global = true)]
    pub urls: Vec<String>,
    /// PEM certificates that wss:// servers may present or chain to, beside the system's roots
    /// (which SSL_CERT_FILE / SSL_CERT_DIR replace when set).
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// Pid of a server behind --url, for its CPU and memory figures (repeat: one per server;
    /// the figures are summed).
    #[arg(long = "server-pid", value_name = "PID", global = true)]
    pub server_pids: Vec<u32>,
    /// Seconds of load before the measured window (excluded from every figure).
    #[arg(long, default_value_t = 2.0, value_name = "SECS", global = true)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", global = true)]
    pub duration: f64,
    /// Bound, in seconds, on each phase outside the measured window: connecting, loading,
    /// draining, one catch-up. The whole run also has a hard deadline derived from it.
    #[arg(long, default_value_t = 60.0, value_name = "SECS", global = true)]
    pub timeout: f64,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64, global = true)]
    pub concurrency: usize,
    /// Relay only: writes cycle over this many cells per writer (0: every write a new cell),
    /// so a long run writes volume without growing the room's state.
    #[arg(long, default_value_t = 0, global = true)]
    pub keys: u64,
    /// Relay only: bytes of padding in each change (in its site id), to write more volume.
    #[arg(long, default_value_t = 0, global = true)]
    pub pad_bytes: usize,
    /// Use the rooms of an earlier run (the `run_id` of its report) instead of new ones: to
    /// measure how a restarted server loads rooms that hold data. Site ids stay new.
    #[arg(long, value_name = "RUN_ID", global = true)]
    pub rooms_of: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error("invalid --url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("self-started hub: {0}")]
    Hub(String),
    #[error("cannot connect to {url}: {why}")]
    Connect { url: String, why: String },
    #[error("no answer in time: {0}")]
    Timeout(String),
    #[error("connection closed by the server: {0}")]
    Closed(String),
    #[error("websocket: {0}")]
    Ws(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the run's deadline of {0:.0} s passed")]
    Deadline(f64),
    #[error("interrupted")]
    Interrupted,
    #[error("a client task failed: {0}")]
    Task(String),
}

impl BenchError {
    pub fn ws(e: tungstenite::Error) -> BenchError {
        BenchError::Ws(e.to_string())
    }
}

/// What the scenarios share: the servers, the dialect, the clocks and the counters.
pub struct Ctx {
    pub dialect: Dialect,
    endpoints: Vec<Endpoint>,
    pub probe: Probe,
    pub counters: Arc<Counters>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Part of every site id, so runs against a long-lived server never share one.
    pub run_id: String,
    /// Part of every room name: the run's own id unless `--rooms-of` names an earlier run.
    rooms_id: String,
    pub shape: Shape,
}

impl Ctx {
    /// The server of the `index`-th client (round-robin).
    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index % self.endpoints.len()]
    }

    pub fn room(&self, scenario: &str, index: usize) -> String {
        format!("bench-{scenario}-{}-{index}", self.rooms_id)
    }

    /// A site id for a relay client (any string; unique per run and client).
    pub fn site(&self, client: &str) -> String {
        format!("{}{client}", self.run_id)
    }

    /// Starts the clock of a timed scenario: warm-up from now, then the measured window.
    pub fn start_window(&self) -> Window {
        self.counters.set_phase(Phase::Warmup);
        Window::starting_now(self.warmup, self.duration)
    }

    /// Sleeps through the window, sampling CPU at its start and end.
    pub async fn measure(&self, window: &Window) -> CpuUse {
        tokio::time::sleep_until(stats::instant_at(window.measure_from).into()).await;
        let a = self.probe.sample();
        self.counters.set_phase(Phase::Measuring);
        tokio::time::sleep_until(stats::instant_at(window.measure_to).into()).await;
        let b = self.probe.sample();
        self.counters.set_phase(Phase::Draining);
        self.probe.between(&a, &b)
    }
}

/// A scenario's figures and its lines of human summary.
#[derive(Default)]
pub struct Outcome {
    pub results: Map<String, Value>,
    pub summary: Vec<String>,
    /// Set when the run could not complete; the figures are what was measured until then.
    pub error: Option<String>,
}

impl Outcome {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.results.insert(key.to_owned(), value.into());
    }

    /// The CPU figures of a window; `per` names the event the server's CPU is divided by.
    pub fn set_cpu(&mut self, cpu: &CpuUse, per: &str, events: u64) {
        self.set("server_cpu_s", cpu.server_cpu_s.map(stats::round3));
        self.set("server_cpu_cores", cpu.server_cores());
        self.set(
            &format!("server_cpu_us_per_{per}"),
            cpu.server_us_per(events),
        );
        self.set("bench_cpu_s", stats::round3(cpu.bench_cpu_s));
        self.set("bench_cpu_cores", cpu.bench_cores());
    }

    /// The human line for [`Outcome::set_cpu`].
    pub fn cpu_line(cpu: &CpuUse, per: &str, events: u64) -> String {
        let server = match (cpu.server_cores(), cpu.server_us_per(events)) {
            (Some(cores), Some(us)) => format!("server CPU {cores:.2} cores, {us:.1} µs per {per}"),
            (Some(cores), None) => format!("server CPU {cores:.2} cores"),
            _ => "server CPU unknown (no --server-pid)".to_owned(),
        };
        format!(
            "  {server}; bench CPU {:.2} cores (of {} on this machine)",
            cpu.bench_cores(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
}

/// Runs `synchub bench`; prints the summary and the JSON line.
pub fn run(args: BenchArgs, trust: Trust) -> ExitCode {
    stats::epoch();
    let nofile = target::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synchub bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let (summary, report, completed) = runtime.block_on(run_async(args, nofile, trust));
    // Client tasks cut off by the deadline must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    for line in summary {
        println!("{line}");
    }
    println!("{}", Value::Object(report));
    if completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check_params(c: &CommonArgs) -> Result<(), BenchError> {
    let finite = |name: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(BenchError::Params(format!(
                "--{name} must be a non-negative number"
            )))
        }
    };
    finite("warmup", c.warmup)?;
    finite("duration", c.duration)?;
    finite("timeout", c.timeout)?;
    if c.timeout <= 0.0 {
        return Err(BenchError::Params("--timeout must be above 0".into()));
    }
    if !c.server_pids.is_empty() && c.urls.is_empty() {
        return Err(BenchError::Params(
            "--server-pid goes with --url (a self-started hub is probed by itself)".into(),
        ));
    }
    if (c.keys > 0 || c.pad_bytes > 0) && !c.dialect.shapes_writes() {
        return Err(BenchError::Params(
            "--keys and --pad-bytes apply to the relay dialect only".into(),
        ));
    }
    Ok(())
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:x}",
        (nanos ^ u64::from(std::process::id()) << 40) & 0xffff_ffff_ffff
    )
}

async fn run_async(
    args: BenchArgs,
    nofile: Option<u64>,
    trust_for: Trust,
) -> (Vec<String>, Map<String, Value>, bool) {
    let c = &args.common;
    let mut report = Map::new();
    report.insert("scenario".into(), args.scenario.name().into());
    report.insert("dialect".into(), c.dialect.name().into());
    let mut params = match serde_json::to_value(&args.scenario) {
        Ok(Value::Object(mut m)) => m
            .remove(args.scenario.name())
            .and_then(|v| match v {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .unwrap_or_default(),
        _ => Map::new(),
    };
    params.insert("warmup_s".into(), c.warmup.into());
    params.insert("duration_s".into(), c.duration.into());
    params.insert("timeout_s".into(), c.timeout.into());
    params.insert("concurrency".into(), c.concurrency.into());
    params.insert("keys".into(), c.keys.into());
    params.insert("pad_bytes".into(), c.pad_bytes.into());
    report.insert("params".into(), Value::Object(params));
    let mut summary = Vec::new();
    let fail = |mut report: Map<String, Value>, summary: Vec<String>, e: &BenchError| {
        report.insert("completed".into(), false.into());
        report.insert("error".into(), e.to_string().into());
        let mut summary = summary;
        summary.push(format!("synchub bench: {e}"));
        (summary, report, false)
    };
    if let Err(e) = check_params(c).and_then(|()| args.scenario.check()) {
        return fail(report, summary, &e);
    }

    let mut hub = None;
    let (urls, pids) = if c.urls.is_empty() {
        match SelfHub::start().await {
            Ok(h) => {
                let urls = vec![h.url()];
                let pids = vec![h.pid()];
                hub = Some(h);
                (urls, pids)
            }
            Err(e) => return fail(report, summary, &e),
        }
    } else {
        (c.urls.clone(), c.server_pids.clone())
    };
    report.insert("urls".into(), json!(urls));
    report.insert("self_started".into(), hub.is_some().into());
    report.insert("server_pids".into(), json!(pids));
    report.insert("nofile_limit".into(), json!(nofile));
    let run_id = run_id();
    // Rooms are named bench-<scenario>-<run_id>-<n>, for looking them up on the server.
    report.insert("run_id".into(), run_id.clone().into());

    let trust = if urls.iter().any(|u| u.starts_with("wss://")) {
        match trust_for(c.ca.as_deref()) {
            Ok(t) => Some(t),
            Err(e) => {
                if let Some(mut h) = hub {
                    h.stop().await;
                }
                return fail(report, summary, &BenchError::Params(e));
            }
        }
    } else {
        None
    };
    let mut endpoints = Vec::with_capacity(urls.len());
    for u in &urls {
        match Endpoint::resolve(u, trust.as_ref()).await {
            Ok(e) => endpoints.push(e),
            Err(e) => {
                if let Some(mut h) = hub {
                    h.stop().await;
                }
                return fail(report, summary, &e);
            }
        }
    }
    let counters = Arc::new(Counters::default());
    let ctx = Arc::new(Ctx {
        dialect: c.dialect,
        endpoints,
        probe: Probe::new(pids.clone()),
        counters: counters.clone(),
        warmup: Duration::from_secs_f64(c.warmup),
        duration: Duration::from_secs_f64(c.duration),
        timeout: Duration::from_secs_f64(c.timeout),
        concurrency: c.concurrency.max(1),
        rooms_id: c.rooms_of.clone().unwrap_or_else(|| run_id.clone()),
        run_id,
        shape: Shape {
            keys: c.keys,
            pad: "x".repeat(c.pad_bytes),
        },
    });
    let target = match &hub {
        Some(h) => format!("a hub started by the bench (pid {}, {})", h.pid(), h.url()),
        None => urls.join(", "),
    };
    summary.push(format!(
        "synchub bench {} — {} dialect against {target}",
        args.scenario.name(),
        c.dialect.name()
    ));

    let cluster_before = cluster_figures::read(&ctx.endpoints).await;
    let hard = args.scenario.hard_deadline(c);
    let progress = Progress::start(format!("bench {}", args.scenario.name()), counters.clone());
    let outcome = tokio::select! {
        r = tokio::time::timeout(hard, scenario::run(&ctx, &args.scenario)) => match r {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => cut_short(&counters, &e),
            Err(_) => cut_short(&counters, &BenchError::Deadline(hard.as_secs_f64())),
        },
        _ = tokio::signal::ctrl_c() => cut_short(&counters, &BenchError::Interrupted),
    };
    counters.set_phase(Phase::Done);
    progress.finish();
    let mut cluster_line = None;
    if let Some(before) = cluster_before
        && let Some(after) = cluster_figures::read(&ctx.endpoints).await
    {
        let figures = after.since(&before, ctx.endpoints.len());
        cluster_line = Some(format!(
            "cluster of {} nodes: {} changes ordered, {:.3} Redis round trips per change",
            ctx.endpoints.len(),
            figures["ordered_changes"],
            figures["redis_round_trips_per_change"]
                .as_f64()
                .unwrap_or(0.0)
        ));
        report.insert("cluster".into(), figures);
    }
    if let Some(mut h) = hub {
        report.insert("hub_stop".into(), h.stop().await.into());
    }
    summary.extend(outcome.summary);
    summary.extend(cluster_line);
    let completed = outcome.error.is_none();
    report.insert("completed".into(), completed.into());
    if let Some(e) = &outcome.error {
        report.insert("error".into(), e.clone().into());
        summary.push(format!("run did not complete: {e}"));
    }
    report.extend(outcome.results);
    (summary, report, completed)
}

/// The outcome of a run that stopped early: the counters as they stood.
fn cut_short(counters: &Counters, e: &BenchError) -> Outcome {
    let mut o = Outcome {
        error: Some(e.to_string()),
        ..Outcome::default()
    };
    if let Value::Object(totals) = counters.to_json() {
        o.results = totals;
    }
    o
}
