//! Sentinel test support: three `redis-server --sentinel` processes watching a primary, a link
//! that makes a replica fall behind its primary on demand, and `redis-cli` for asking either.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cluster::wait_listening;
use super::{TIMEOUT, free_port};

/// The master name the sentinels of these tests watch.
pub const MASTER: &str = "hub";

/// A TCP relay in front of the primary that everyone reaches it through (the sentinels, the
/// nodes, the replica), and that can stop forwarding the replica's replication stream while
/// keeping its connection open: after [`Stallable::stall`] the replica misses every write
/// without either side seeing the link drop, while everyone else still reaches the primary.
///
/// The replica has to name the primary by the address the sentinels watch: a replica of
/// another address is one Sentinel re-points at the primary (`+fix-slave-config`, once
/// `failover-timeout` has passed since it was found), which ends the stall behind the test's
/// back and, during a failover, leaves no replica good enough to promote.
pub struct Stallable {
    pub port: u16,
    stalled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Stallable {
    pub fn to(target: u16) -> Stallable {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link");
        let port = listener.local_addr().expect("the link's address").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let stalled = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (s, c, k) = (stalled.clone(), closed.clone(), sockets.clone());
        let accept = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !c.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pair = [&down, &up].map(|x| x.try_clone().expect("clone a socket"));
                k.lock().unwrap_or_else(|p| p.into_inner()).extend(pair);
                let (down2, up2) = (
                    down.try_clone().expect("clone"),
                    up.try_clone().expect("clone"),
                );
                let replication = Arc::new(AtomicBool::new(false));
                let link = Link {
                    stalled: s.clone(),
                    replication,
                    closed: c.clone(),
                };
                pumps.push(pump(down, up, link.clone(), true));
                pumps.push(pump(up2, down2, link, false));
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        Stallable {
            port,
            stalled,
            closed,
            sockets,
            threads: vec![accept],
        }
    }

    /// From now on nothing passes on replication connections; bytes already read are held.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

/// One relayed connection's state, shared by its two directions.
#[derive(Clone)]
struct Link {
    stalled: Arc<AtomicBool>,
    /// Set once the client sent `REPLCONF`: only a replica does.
    replication: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn held(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
            && self.replication.load(Ordering::SeqCst)
            && !self.closed.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either closes; on a replication connection, holds what it read
/// while stalled. Either side closing closes the other, as a real link going down would.
/// `upstream`: `from` is the client, whose commands tell a replica apart.
fn pump(mut from: TcpStream, mut to: TcpStream, link: Link, upstream: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 * 1024];
        while !link.closed.load(Ordering::SeqCst) {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => break,
            };
            if upstream && buf[..n].windows(8).any(|w| w == b"REPLCONF") {
                link.replication.store(true, Ordering::SeqCst);
            }
            while link.held() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    })
}

impl Drop for Stallable {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Three sentinels watching the primary on one port as [`MASTER`]; killed when dropped.
pub struct Sentinels {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Quorum 2; a primary silent for a second is down, so a failover takes a few seconds.
    pub fn watch(primary: u16) -> Sentinels {
        let dir = tempfile::tempdir().expect("sentinel dir");
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            // Sentinel rewrites its file with what it learns: each gets its own.
            let text = format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 10000\n"
            );
            std::fs::write(&conf, text).expect("write the sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            children.push(child);
            wait_listening(port, "a sentinel");
            ports.push(port);
        }
        Sentinels {
            children,
            ports,
            _dir: dir,
        }
    }

    /// The hub's `cluster.redis_url` for these sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The primary's port as every sentinel names it, once they agree.
    pub fn primary(&self) -> Option<u16> {
        Sentinels::primary_of(&self.ports)
    }

    /// [`Sentinels::primary`] for the sentinels on `ports` (blocking: `redis-cli`).
    pub fn primary_of(ports: &[u16]) -> Option<u16> {
        let named: Vec<Option<u16>> = ports
            .iter()
            .map(|&p| {
                let out = redis_cli(p, &["SENTINEL", "get-master-addr-by-name", MASTER]);
                out.lines().nth(1).and_then(|l| l.trim().parse().ok())
            })
            .collect();
        let first = *named.first()?;
        named.iter().all(|n| *n == first).then_some(first).flatten()
    }

    /// Waits until every sentinel names the replica on `port` as the primary: a failover that
    /// Sentinel aborts (`-failover-abort-*` in its log) fails here, not in what follows.
    pub fn wait_promoted(ports: &[u16], port: u16) {
        let deadline = Instant::now() + 3 * TIMEOUT;
        while Sentinels::primary_of(ports) != Some(port) {
            assert!(
                Instant::now() < deadline,
                "the sentinels never promoted the replica on {port}: they name {:?}",
                ports
                    .iter()
                    .map(|&p| {
                        let named = redis_cli(p, &["SENTINEL", "get-master-addr-by-name", MASTER]);
                        named.split_whitespace().collect::<Vec<_>>().join(":")
                    })
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every sentinel knows `replicas` replicas and the two other sentinels: only
    /// then can they agree on a failover and pick the replica.
    pub fn wait_ready(&self, replicas: usize) {
        let deadline = Instant::now() + 3 * TIMEOUT;
        loop {
            let ready = self.ports.iter().all(|&p| {
                let fields = redis_cli(p, &["SENTINEL", "master", MASTER]);
                let fields: Vec<&str> = fields.lines().map(str::trim).collect();
                let value = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .and_then(|kv| kv.get(1))
                        .and_then(|v| v.parse::<usize>().ok())
                };
                value("num-slaves") == Some(replicas) && value("num-other-sentinels") == Some(2)
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels never got ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the replica on `replica` lacks part of what the primary on `primary` holds (the
/// nodes beat every second, so a stalled replica soon does): the failover that follows then
/// promotes a replica that missed writes.
pub fn wait_lagging(primary: u16, replica: u16) {
    let offset = |port: u16, field: &str| {
        redis_cli(port, &["INFO", "replication"])
            .lines()
            .find_map(|l| l.trim().strip_prefix(field)?.parse::<u64>().ok())
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (ahead, behind) = (
            offset(primary, "master_repl_offset:"),
            offset(replica, "slave_repl_offset:"),
        );
        if let (Some(ahead), Some(behind)) = (ahead, behind)
            && ahead > behind
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica does not lag: primary at {ahead:?}, replica at {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `redis-cli` prints for one command to the Redis or sentinel on `port`; empty when it
/// cannot reach it.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
