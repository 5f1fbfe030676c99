//! What the bench drives: the servers behind `--url`, or a hub it starts itself; and the
//! process probes (CPU time, RSS, file limits) behind the resource figures.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BenchError;

/// One server: the `ws://host:port` or `wss://host:port` it was named by, an optional path that
/// replaces the dialect's default, and the address connections go to (resolved once).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub authority: String,
    pub path: Option<String>,
    pub addr: SocketAddr,
    /// For `wss://`: the servers the connections trust.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// Parses `ws[s]://host[:port][/path]` and resolves it; `trust` is what a `wss://` server
    /// is checked against.
    pub async fn resolve(
        url: &str,
        trust: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Endpoint, BenchError> {
        let bad = |why: &str| BenchError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("ws://") {
            (rest, None, 80)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            let trust = trust.ok_or_else(|| bad("no TLS trust configured"))?;
            (rest, Some(trust.clone()), 443)
        } else {
            return Err(bad("expected ws://host:port or wss://host:port"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if path.contains('?') {
            return Err(bad("leave out the query; the dialect adds its own"));
        }
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => authority.contains(':'),
        };
        let with_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| bad(&format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| bad("resolves to no address"))?;
        let path = path.trim_end_matches('/');
        Ok(Endpoint {
            authority: authority.to_owned(),
            path: (!path.is_empty()).then(|| path.to_owned()),
            addr,
            tls,
        })
    }

    /// `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

    /// The URL of a connection: this server, the given path unless one was named, the query.
    pub fn url(&self, default_path: &str, query: &str) -> String {
        let path = self.path.as_deref().unwrap_or(default_path);
        let scheme = self.scheme();
        if query.is_empty() {
            format!("{scheme}://{}{path}", self.authority)
        } else {
            format!("{scheme}://{}{path}?{query}", self.authority)
        }
    }
}

/// Settings the bench gives a hub it starts, unless the user's environment already sets them:
/// `bench/hub.env`, which the scripts that start hubs for benchmarks read too.
const HUB_ENV: &str = include_str!("../hub.env");

/// The `KEY=VALUE` lines of `bench/hub.env`, comments and blank lines skipped.
pub fn hub_env() -> impl Iterator<Item = (&'static str, &'static str)> {
    HUB_ENV
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
}

/// How long a started hub gets to accept connections, and to exit after SIGTERM.
const HUB_START: Duration = Duration::from_secs(15);
const HUB_STOP: Duration = Duration::from_secs(5);

/// `synchub serve` started by the bench: this same binary, on a temporary data directory that
/// is also its working directory (so no stray `config.toml` is read).
pub struct SelfHub {
    child: Child,
    dir: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    /// Whether it serves TLS (`SYNCHUB_SERVER_TLS_CERT` and `_KEY` set in the environment).
    pub tls: bool,
}

impl SelfHub {
    pub async fn start() -> Result<SelfHub, BenchError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| BenchError::Hub(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("synchub-bench-")
            .tempdir()
            .map_err(|e| fail("cannot create a temporary directory", &e))?;
        let exe = std::env::current_exe().map_err(|e| fail("cannot find this binary", &e))?;
        let addr = match std::env::var("SYNCHUB_SERVER_BIND") {
            Ok(bind) => bind
                .parse()
                .map_err(|e| fail(&format!("SYNCHUB_SERVER_BIND {bind:?}"), &e))?,
            Err(_) => free_local_addr().map_err(|e| fail("no free port", &e))?,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut set_default = |key: &str, value: &std::ffi::OsStr| {
            if std::env::var_os(key).is_none() {
                cmd.env(key, value);
            }
        };
        set_default("SYNCHUB_SERVER_BIND", addr.to_string().as_ref());
        set_default("SYNCHUB_STORAGE_PATH", dir.path().join("db").as_os_str());
        set_default("RUST_LOG", "warn".as_ref());
        for (key, value) in hub_env() {
            set_default(key, value.as_ref());
        }
        // The hub runs in its own directory: files named relative to ours are made absolute.
        for key in ["SYNCHUB_SERVER_TLS_CERT", "SYNCHUB_SERVER_TLS_KEY"] {
            if let Some(path) = std::env::var_os(key).map(std::path::PathBuf::from)
                && path.is_relative()
                && !path.as_os_str().is_empty()
                && let Ok(here) = std::env::current_dir()
            {
                cmd.env(key, here.join(path));
            }
        }
        let child = cmd.spawn().map_err(|e| fail("cannot start `serve`", &e))?;
        let set = |key: &str| std::env::var_os(key).is_some_and(|v| !v.is_empty());
        let mut hub = SelfHub {
            child,
            dir: Some(dir),
            addr,
            tls: set("SYNCHUB_SERVER_TLS_CERT") && set("SYNCHUB_SERVER_TLS_KEY"),
        };
        let deadline = Instant::now() + HUB_START;
        loop {
            if let Ok(Some(status)) = hub.child.try_wait() {
                return Err(BenchError::Hub(format!(
                    "`serve` exited at start ({status})"
                )));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(hub);
            }
            if Instant::now() > deadline {
                hub.stop().await;
                return Err(BenchError::Hub(format!(
                    "not accepting connections on {addr} after {}s",
                    HUB_START.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its URL: the certificate of a TLS hub must name 127.0.0.1.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// SIGTERM, SIGKILL if it is still there after a few seconds, then removes the data.
    /// Returns how it went, for the report.
    pub async fn stop(&mut self) -> String {
        let outcome = match self.child.try_wait() {
            Ok(Some(status)) => format!("had already exited ({status})"),
            _ => {
                send_sigterm(self.child.id());
                let deadline = Instant::now() + HUB_STOP;
                loop {
                    match self.child.try_wait() {
                        Ok(Some(status)) if status.success() => break "stopped".to_owned(),
                        Ok(Some(status)) => break format!("exited with {status}"),
                        Ok(None) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {
                            let _ = self.child.kill();
                            let _ = self.child.wait();
                            break format!(
                                "killed: still running {}s after SIGTERM",
                                HUB_STOP.as_secs()
                            );
                        }
                    }
                }
            }
        };
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            return format!("{outcome}; temporary directory not removed: {e}");
        }
        outcome
    }
}

impl Drop for SelfHub {
    /// Only on an early exit: [`SelfHub::stop`] has reaped the child in every normal path.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send_sigterm(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid of our own child and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

fn free_local_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// CPU time and RSS of the server processes (summed) and of the bench itself.
#[derive(Debug, Clone)]
pub struct Probe {
    pub pids: Vec<u32>,
    ticks_per_s: u64,
}

/// The CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at_us: u64,
    /// Server user + system time in clock ticks; `None` without a pid or when one is gone.
    server_ticks: Option<u64>,
    bench_us: u64,
}

/// CPU use between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub secs: f64,
    pub server_cpu_s: Option<f64>,
    pub bench_cpu_s: f64,
}

impl CpuUse {
    /// Server CPU microseconds per event, when the server is known and events happened.
    pub fn server_us_per(&self, events: u64) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (events > 0).then(|| super::stats::round3(cpu * 1e6 / events as f64))
    }

    pub fn server_cores(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.secs > 0.0).then(|| super::stats::round3(cpu / self.secs))
    }

    pub fn bench_cores(&self) -> f64 {
        if self.secs > 0.0 {
            super::stats::round3(self.bench_cpu_s / self.secs)
        } else {
            0.0
        }
    }
}

impl Probe {
    pub fn new(pids: Vec<u32>) -> Probe {
        // SAFETY: sysconf only reads a system constant.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Probe {
            pids,
            ticks_per_s: u64::try_from(tck).ok().filter(|t| *t > 0).unwrap_or(100),
        }
    }

    pub fn sample(&self) -> CpuSample {
        let server_ticks = if self.pids.is_empty() {
            None
        } else {
            self.pids.iter().map(|p| cpu_ticks(*p)).sum::<Option<u64>>()
        };
        CpuSample {
            at_us: super::stats::now_us(),
            server_ticks,
            bench_us: self_cpu_us(),
        }
    }

    pub fn between(&self, a: &CpuSample, b: &CpuSample) -> CpuUse {
        let server_cpu_s = match (a.server_ticks, b.server_ticks) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / self.ticks_per_s as f64),
            _ => None,
        };
        CpuUse {
            secs: b.at_us.saturating_sub(a.at_us) as f64 / 1e6,
            server_cpu_s,
            bench_cpu_s: b.bench_us.saturating_sub(a.bench_us) as f64 / 1e6,
        }
    }

    /// Resident memory of the servers in KiB (summed).
    pub fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| rss_kib(*p)).sum()
    }
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The bench process's own user + system CPU time, in µs.
fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let us = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Raises the open-file soft limit to the hard limit (thousands of sockets); returns the limit
/// now in force. A hub the bench starts inherits it.
pub fn raise_nofile_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur as u64);
            }
        }
        Some(lim.rlim_cur as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_env_file_lifts_every_per_client_limit() {
        let env: Vec<_> = hub_env().collect();
        for (key, value) in &env {
            assert!(key.starts_with("SYNCHUB_"), "{key}");
            assert!(!key.contains(char::is_whitespace), "{key:?}");
            assert!(
                !value.is_empty() && value.trim() == *value,
                "{key}={value:?}"
            );
        }
        let keys: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
        for needed in [
            "SYNCHUB_AUTH_REQUIRED",
            "SYNCHUB_LIMITS_MAX_CONNECTIONS",
            "SYNCHUB_LIMITS_MAX_CONNECTIONS_PER_USER",
            "SYNCHUB_LIMITS_MAX_CONNECTIONS_PER_IP",
            "SYNCHUB_LIMITS_MAX_MESSAGES_PER_SECOND",
            "SYNCHUB_LIMITS_MAX_DOCUMENT_BYTES",
        ] {
            assert!(
                keys.contains(&needed),
                "{needed} missing from bench/hub.env"
            );
        }
    }

    #[tokio::test]
    async fn urls_keep_a_named_path_and_default_the_port() {
        let e = Endpoint::resolve("ws://127.0.0.1:9002", None)
            .await
            .expect("valid");
        assert_eq!(e.addr.port(), 9002);
        assert_eq!(
            e.url("/relay", "channel=a"),
            "ws://127.0.0.1:9002/relay?channel=a"
        );
        let e = Endpoint::resolve("ws://127.0.0.1/custom/", None)
            .await
            .expect("valid");
        assert_eq!(e.addr.port(), 80);
        assert_eq!(e.url("/relay", ""), "ws://127.0.0.1/custom");
        assert!(Endpoint::resolve("http://127.0.0.1", None).await.is_err());
        assert!(
            Endpoint::resolve("ws://127.0.0.1:1/x?y=1", None)
                .await
                .is_err()
        );
        let trust = std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        );
        let e = Endpoint::resolve("wss://127.0.0.1", Some(&trust))
            .await
            .expect("valid");
        assert_eq!(e.addr.port(), 443);
        assert_eq!(e.url("/ws", "a=1"), "wss://127.0.0.1/ws?a=1");
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = Probe::new(vec![std::process::id()]);
        let a = probe.sample();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = probe.sample();
        let used = probe.between(&a, &b);
        assert!(used.server_cpu_s.is_some());
        assert!(probe.rss_kib().is_some_and(|k| k > 0));
    }
}
