//! Cluster test support: a real `redis-server` on a free port, and hub nodes (the built binary)
//! that share it.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ChildHub, TIMEOUT, free_port, get};

/// A `redis-server` started by a test, without persistence, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// Its working directory: a replica writes the primary's snapshot there, which a Redis
    /// started later in the same directory would load.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts (or starts again, empty) on `port`.
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    /// A replica of the Redis listening on `primary` (or of what a [`Stallable`] link there
    /// forwards to).
    ///
    /// [`Stallable`]: super::sentinel::Stallable
    pub fn replica_of(primary: u16) -> RedisServer {
        let primary = primary.to_string();
        RedisServer::start_with(free_port(), &["--replicaof", "127.0.0.1", &primary])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("a directory for redis-server");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it: apt-get install redis-server)");
        wait_listening(port, "redis-server");
        RedisServer {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis and everything it held are gone.
    pub fn kill(mut self) -> u16 {
        self.sigkill();
        self.port
    }

    /// [`RedisServer::kill`] for a server that is kept (in a struct, to be dropped later).
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on `port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    // A probe connected to itself (the port is in the ephemeral range) is not the server.
    let listening = || {
        TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
    };
    while !listening() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment that makes a node of the cluster behind `redis`.
pub fn node_env(redis: &str) -> Vec<(String, String)> {
    vec![
        ("SYNCHUB_CLUSTER_REDIS_URL".into(), redis.to_owned()),
        ("SYNCHUB_SERVER_ROOM_IDLE_TIMEOUT_S".into(), "600".into()),
        // `CLUSTER_TEST_LOG=warn cargo test --test cluster` shows what the nodes say.
        (
            "RUST_LOG".into(),
            std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "error".into()),
        ),
    ]
}

/// Starts a node on `data` and waits until it orders changes.
pub async fn start_node(data: &std::path::Path, env: &[(String, String)]) -> ChildHub {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = ChildHub::spawn(data, &pairs).await;
    wait_healthy(&hub).await;
    hub
}

/// Waits until a node's cluster bridge is healthy (it knows the epoch and hears pub/sub).
pub async fn wait_healthy(hub: &ChildHub) {
    let deadline = Instant::now() + 2 * TIMEOUT;
    loop {
        let (status, body) = get(&hub.http_url("/health")).await;
        if status == 200 && body["cluster"]["bridge"] == "ok" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node never became healthy: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A room's status on a node (`/stats/rooms/<ns>/<room>`).
pub async fn room_status(hub: &ChildHub, room: &str) -> Value {
    get(&hub.http_url(&format!("/stats/rooms/{room}"))).await.1
}

/// Waits until every node reports the room at the same sequence number and digest, at least
/// `seq`, with all of it durable (a change still being written is broadcast when it lands, so
/// a node is not done with it before); returns that (seq, digest).
pub async fn converged(nodes: &[&ChildHub], room: &str, seq: u64) -> (u64, String) {
    let deadline = Instant::now() + 3 * TIMEOUT;
    loop {
        let mut seen = Vec::new();
        let mut durable = true;
        for node in nodes {
            let s = room_status(node, room).await;
            durable &= s["durable_seq"] == s["seq"];
            seen.push((s["seq"].as_u64().unwrap_or(0), s["digest"].to_string()));
        }
        if durable && seen.iter().all(|s| s == &seen[0]) && seen[0].0 >= seq {
            return seen[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{room} did not converge at {seq}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
