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

/// A TCP relay to a port that can stop forwarding while keeping both connections open: put
/// between a replica and its primary, it makes the replica miss every write made after
/// [`Stallable::stall`] without either side seeing the link drop.
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
                pumps.push(pump(down, up, s.clone(), c.clone()));
                pumps.push(pump(up2, down2, s.clone(), c.clone()));
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

    /// From now on nothing passes; bytes already read are held.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; holds what it read while stalled. Either side
/// closing closes the other, as a real link going down would.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stalled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 * 1024];
        while !closed.load(Ordering::SeqCst) {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => break,
            };
            while stalled.load(Ordering::SeqCst) && !closed.load(Ordering::SeqCst) {
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
