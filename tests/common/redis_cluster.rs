//! Redis Cluster test support: six `redis-server --cluster-enabled yes` processes on free ports
//! (three primaries and a replica of each), joined by `redis-cli --cluster create`, killed when
//! dropped; and what the tests ask the cluster about its topology (blocking: `redis-cli`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::wait_listening;
use super::sentinel::redis_cli;
use super::{TIMEOUT, free_port};

/// A node of the cluster, by the port the test started it on.
struct Node {
    child: Child,
    port: u16,
    id: String,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// A node as `CLUSTER NODES` lists it.
struct Listed {
    id: String,
    flags: Vec<String>,
    master: String,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Three primaries and three replicas; returns once every node says the cluster is ok and
    /// every replica is in sync with its primary. A node silent for a second (the node timeout)
    /// is failing, and its replica takes over soon after.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let home = dir.path().join(format!("node-{i}"));
            std::fs::create_dir(&home).expect("a node's directory");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                // The bus port would be port + 10000 otherwise, which may be taken or past 65535.
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-config-file")
                .arg(home.join("nodes.conf"))
                .arg("--dir")
                .arg(&home)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (install it: apt-get install redis-server)");
            wait_listening(port, "a cluster node");
            let id = redis_cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
            assert!(!id.is_empty(), "the node on {port} has no cluster id");
            nodes.push(Node { child, port, id });
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster.wait_replicas_in_sync();
        cluster
    }

    /// The hub's `cluster.redis_url`, the seed on `first` listed first (a node connects its
    /// pub/sub to the first seed that answers).
    pub fn url_from(&self, first: u16) -> String {
        let mut ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        ports.sort_by_key(|p| *p != first);
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The ports of the nodes serving slots now, in slot order.
    pub fn primaries(&self) -> Vec<u16> {
        let mut owners: Vec<(u16, u16)> = self
            .listed()
            .iter()
            .filter(|l| !l.slots.is_empty() && !l.failed())
            .filter_map(|l| Some((l.slots[0].0, self.port_of(&l.id)?)))
            .collect();
        owners.sort();
        owners.into_iter().map(|(_, port)| port).collect()
    }

    /// The replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let id = self.id_of(primary);
        self.listed()
            .iter()
            .find(|l| l.master == id)
            .and_then(|l| self.port_of(&l.id))
            .expect("a replica of the primary")
    }

    /// The port of the primary serving `key` now.
    pub fn primary_of_key(&self, key: &str) -> u16 {
        let slot: u16 = redis_cli(self.live_port(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot");
        self.listed()
            .iter()
            .filter(|l| !l.failed())
            .find(|l| l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .and_then(|l| self.port_of(&l.id))
            .expect("a primary serving the slot")
    }

    /// The keys the node on `port` holds that match `pattern`.
    pub fn keys_on(&self, port: u16, pattern: &str) -> Vec<String> {
        redis_cli(port, &["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// SIGKILL: the node and everything it held are gone.
    pub fn sigkill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        self.nodes.retain(|n| n.port != port);
    }

    /// Has everyone (clients, and the primary's replica) reach the primary on `primary` at
    /// `port` instead (a [`super::sentinel::Stallable`] link to it): the cluster hands out the
    /// address a node announces. Returns once its replica is in sync through it.
    pub fn announce(&self, primary: u16, port: u16) {
        let said = redis_cli(
            primary,
            &["CONFIG", "SET", "cluster-announce-port", &port.to_string()],
        );
        assert_eq!(said.trim(), "OK", "announce {port}: {said}");
        let (replica, id) = (self.replica_of(primary), self.id_of(primary));
        let deadline = Instant::now() + 3 * TIMEOUT;
        // Every node hands the new address out.
        let listed = format!("127.0.0.1:{port}@");
        for node in &self.nodes {
            while !redis_cli(node.port, &["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.starts_with(&id) && l.contains(&listed))
            {
                assert!(
                    Instant::now() < deadline,
                    "{} never heard of {port}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        loop {
            let info = redis_cli(replica, &["INFO", "replication"]);
            let through = info
                .lines()
                .any(|l| l.trim() == format!("master_port:{port}"));
            if through && info.lines().any(|l| l.trim() == "master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never followed the announced port: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_replicas_in_sync();
    }

    /// Moves the slot of `key` from the primary serving it to the primary on `to`, as
    /// `redis-cli --cluster reshard` moves slots: the slot importing on `to` and migrating on
    /// its owner, its keys `MIGRATE`d over in small groups, then every primary told its new
    /// owner. Commands meanwhile meet `ASK` and `TRYAGAIN`, then `MOVED`. Returns the slot.
    pub fn move_slot_of(&self, key: &str, to: u16) -> u16 {
        let slot = redis_cli(self.live_port(), &["CLUSTER", "KEYSLOT", key]);
        let slot = slot.trim();
        let from = self.primary_of_key(key);
        assert_ne!(from, to, "{key} is on {to} already");
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        let ok = |port: u16, args: &[&str]| {
            let said = redis_cli(port, args);
            assert_eq!(said.trim(), "OK", "{args:?} on {port}: {said}");
        };
        ok(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
        loop {
            let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", slot, "3"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        for node in self.listed().iter().filter(|l| !l.slots.is_empty()) {
            if let Some(port) = self.port_of(&node.id) {
                ok(port, &["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
            }
        }
        self.wait_ok();
        slot.parse().expect("a slot")
    }

    /// Waits until every node says `cluster_state:ok`.
    fn wait_ok(&self) {
        self.wait_each(&["CLUSTER", "INFO"], "the cluster is not ok", |info| {
            info.lines().any(|l| l.trim() == "cluster_state:ok")
        });
    }

    /// Waits until each replica's link to its primary is up and has caught up with it.
    fn wait_replicas_in_sync(&self) {
        self.wait_each(
            &["INFO", "replication"],
            "the replica never synced",
            |info| {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.trim().strip_prefix(name).map(str::to_owned))
                };
                match field("role:").as_deref() {
                    Some("master") => true,
                    Some("slave") => {
                        field("master_link_status:").as_deref() == Some("up")
                            && field("master_sync_in_progress:").as_deref() == Some("0")
                    }
                    _ => false,
                }
            },
        );
    }

    /// Asks every node `command` until `ready` holds for its answer, one node after the other.
    fn wait_each(&self, command: &[&str], what: &str, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + 3 * TIMEOUT;
        for node in &self.nodes {
            loop {
                let answer = redis_cli(node.port, command);
                if ready(&answer) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} on {}: {answer}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn live_port(&self) -> u16 {
        self.nodes.first().expect("a live node").port
    }

    fn id_of(&self, port: u16) -> String {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.id.clone())
            .expect("a node of the cluster")
    }

    fn port_of(&self, id: &str) -> Option<u16> {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.port)
    }

    /// `CLUSTER NODES` as a live node sees it.
    fn listed(&self) -> Vec<Listed> {
        let text = redis_cli(self.live_port(), &["CLUSTER", "NODES"]);
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 {
                    return None;
                }
                let slots = fields[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|n| (n, n)),
                    })
                    .collect();
                Some(Listed {
                    id: fields[0].to_owned(),
                    flags: fields[2].split(',').map(str::to_owned).collect(),
                    master: fields[3].to_owned(),
                    slots,
                })
            })
            .collect()
    }
}

/// Whether the node on `port` is a primary that says the cluster is ok: a replica promoted by a
/// failover, once it serves.
pub fn serving(port: u16) -> bool {
    let role = redis_cli(port, &["INFO", "replication"]);
    let state = redis_cli(port, &["CLUSTER", "INFO"]);
    role.lines().any(|l| l.trim() == "role:master")
        && state.lines().any(|l| l.trim() == "cluster_state:ok")
}

impl Listed {
    fn failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}
