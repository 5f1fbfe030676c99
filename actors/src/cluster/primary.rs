//! The node's connection to the cluster's Redis primary. With one Redis it is one reconnecting
//! RESP3 connection for good. Behind Sentinel the primary moves at a failover: the bridge asks
//! the sentinels where it is at every beat, and the node connects there, carrying pub/sub
//! pushes into the same channel as before. On a Redis Cluster commands go through a cluster
//! client, which sends each to the primary of its key's slot and follows the topology itself,
//! and pub/sub comes from one node the [`Listener`] keeps answering.
//!
//! In a split brain (`SENTINEL failover`, a partition) the old primary may still answer after
//! the sentinels named a new one, so a node moving on first lets the orders it sent the old one
//! come back ([`Primary::wait_retired_orders`]): the numbers they bring are part of what it
//! restores into the new primary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::{AsyncConnectionConfig, PushInfo};
use tokio::sync::mpsc::UnboundedSender;

use super::ClusterError;
use super::conn::{Conn, manager};
use super::listener::Listener;
use super::target::Target;

/// How long a Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A sentinel that does not answer this fast is skipped for the next one: the lookup runs
/// while writes wait for the new primary.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the Redis Cluster client tries a command again (after a MOVED, a lost connection,
/// a cluster that is failing over), and how long it waits in between: a command that cannot
/// be served soon fails, and its sender retries, rather than waiting out the client's defaults
/// (16 tries, seconds apart).
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (50, 400);
/// A Redis Cluster node that does not take a connection this fast is taken for down: the
/// client then tries the others.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a command on a Redis Cluster may take, retries included. Shorter than with one
/// Redis: a restore after a failover first waits for the orders still out (they may bring
/// numbers to restore), and orders stuck in a client that wedged come back only when they
/// time out.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Primary {
    target: Target,
    pushes: UnboundedSender<PushInfo>,
    current: RwLock<Option<Connected>>,
    /// The orders still out on primaries this node has left.
    retired: Mutex<Vec<Arc<AtomicUsize>>>,
    /// The sentinel that answered last, kept connected: it is asked at every beat.
    sentinel: Mutex<Option<MultiplexedConnection>>,
    /// On a Redis Cluster, the node pub/sub comes from.
    listener: Option<Listener>,
}

#[derive(Clone)]
struct Connected {
    /// `host:port` behind Sentinel; the URL with one Redis; the seeds on a Redis Cluster.
    address: String,
    conn: Conn,
    /// Orders sent on this connection and not answered yet.
    in_flight: Arc<AtomicUsize>,
}

/// Counts one order as out on its connection until dropped.
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Primary {
    /// With one Redis, and on a Redis Cluster, connects lazily: a node starts while Redis is
    /// down, and reports itself degraded. Behind Sentinel nothing is connected until the first
    /// lookup.
    pub fn new(target: Target, pushes: UnboundedSender<PushInfo>) -> Result<Primary, ClusterError> {
        let (current, listener) = match &target {
            Target::Single(url) => {
                let conn = manager(url, pushes.clone(), false, RESPONSE_TIMEOUT)?;
                let connected = Connected {
                    address: url.clone(),
                    conn: Conn::One(conn),
                    in_flight: Arc::default(),
                };
                (Some(connected), None)
            }
            Target::Sentinel { .. } => (None, None),
            Target::Cluster { seeds } => {
                let connected = Connected {
                    address: seeds.join(","),
                    conn: Conn::Cluster(cluster_client(seeds)?),
                    in_flight: Arc::default(),
                };
                let listener = Listener::new(seeds.clone(), pushes.clone());
                (Some(connected), Some(listener))
            }
        };
        Ok(Primary {
            target,
            pushes,
            current: RwLock::new(current),
            retired: Mutex::new(Vec::new()),
            sentinel: Mutex::new(None),
            listener,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The connection commands go to; `Unavailable` while no sentinel has named a primary.
    pub fn conn(&self) -> Result<Conn, ClusterError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.conn.clone())
            .ok_or(ClusterError::Unavailable)
    }

    /// The connection pub/sub commands go to: the command connection, which carries the
    /// pushes, except on a Redis Cluster.
    pub fn subscriber(&self) -> Result<ConnectionManager, ClusterError> {
        if let Some(listener) = &self.listener {
            return listener.conn();
        }
        match self.conn()? {
            Conn::One(conn) => Ok(conn),
            Conn::Cluster(_) => Err(ClusterError::Unavailable),
        }
    }

    /// On a Redis Cluster, the `host:port` of the node pub/sub comes from.
    pub fn listening_to(&self) -> Option<String> {
        self.listener.as_ref().and_then(Listener::address)
    }

    /// The connection for one order, counted as out on it until the guard drops.
    pub fn conn_for_order(&self) -> Result<(Conn, InFlight), ClusterError> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref().ok_or(ClusterError::Unavailable)?;
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok((c.conn.clone(), InFlight(c.in_flight.clone())))
    }

    /// Waits until every order sent to a primary this node has left is answered or failed
    /// (each is bounded by the response timeout), so the room holds the number it brings. On a
    /// Redis Cluster the client moves between primaries by itself, out of sight: there every
    /// order still out is waited for (no new one starts while the node restores).
    pub async fn wait_retired_orders(&self) {
        let timeout = match self.target {
            Target::Cluster { .. } => CLUSTER_RESPONSE_TIMEOUT,
            _ => RESPONSE_TIMEOUT,
        };
        let deadline = Instant::now() + timeout + Duration::from_millis(500);
        let current = self.listener.as_ref().and_then(|_| {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            current.as_ref().map(|c| c.in_flight.clone())
        });
        loop {
            let out: usize = {
                let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
                retired.retain(|n| n.load(Ordering::SeqCst) > 0);
                let current = current.as_ref().map_or(0, |n| n.load(Ordering::SeqCst));
                current
                    + retired
                        .iter()
                        .map(|n| n.load(Ordering::SeqCst))
                        .sum::<usize>()
            };
            if out == 0 || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where this node sends its commands (`host:port` behind Sentinel).
    pub fn address(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.address.clone())
    }

    /// Behind Sentinel: asks the sentinels for the primary and connects to it when it is not the
    /// one this node talks to. On a Redis Cluster: keeps pub/sub on a node that answers (`deaf`:
    /// the one listened to delivers nothing). True when the node switched to another primary
    /// or node (its pub/sub subscriptions are then to be made again). With one Redis there is
    /// nothing to look up.
    pub async fn follow(&self, deaf: bool) -> Result<bool, ClusterError> {
        if let Some(listener) = &self.listener {
            let mut commands = self.conn()?;
            return listener.follow(&mut commands, deaf).await;
        }
        let Target::Sentinel { sentinels, master } = &self.target else {
            return Ok(false);
        };
        let address = self.ask_sentinels(sentinels, master).await?;
        if self.address().as_deref() == Some(address.as_str()) {
            return Ok(false);
        }
        let url = format!("redis://{address}");
        let conn = manager(&url, self.pushes.clone(), true, RESPONSE_TIMEOUT)?;
        log::warn!("cluster: sentinel names {address} as the primary of {master}");
        let connected = Connected {
            address,
            conn: Conn::One(conn),
            in_flight: Arc::default(),
        };
        self.install(connected);
        Ok(true)
    }

    /// Makes `connected` the connection orders go over; the orders still out on the one it
    /// replaces are waited for before a restore (see `wait_retired_orders`).
    fn install(&self, connected: Connected) {
        let left = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(connected);
        if let Some(left) = left {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(left.in_flight);
        }
    }

    /// On a Redis Cluster, replaces the cluster client with a new one, made from the seeds and
    /// the nodes the cluster listed last. The client can wedge for good while it recovers from
    /// a failover (its slot refresh waits on a lock that a request it stops polling meanwhile
    /// holds; every command then times out, which the failover tests saw): the bridge renews it
    /// when a beat fails. Orders still out on the old one are waited for like those on a
    /// primary left behind.
    pub fn renew(&self) -> Result<(), ClusterError> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let connected = Connected {
            address: listener.seeds().join(","),
            conn: Conn::Cluster(cluster_client(&listener.nodes())?),
            in_flight: Arc::default(),
        };
        self.install(connected);
        Ok(())
    }

    /// The primary's `host:port`: from the sentinel that answered last, else from the first
    /// that knows it.
    async fn ask_sentinels(
        &self,
        sentinels: &[String],
        master: &str,
    ) -> Result<String, ClusterError> {
        let kept = self
            .sentinel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(mut conn) = kept {
            if let Ok(Some(address)) = ask(&mut conn, master).await {
                return Ok(address);
            }
            *self.sentinel.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let mut failures = Vec::new();
        for sentinel in sentinels {
            let asked = async {
                let mut conn = connect_sentinel(sentinel).await?;
                let address = ask(&mut conn, master).await?;
                Ok::<_, redis::RedisError>((conn, address))
            };
            match asked.await {
                Ok((conn, Some(address))) => {
                    *self.sentinel.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    return Ok(address);
                }
                Ok((_, None)) => failures.push(format!("{sentinel}: does not know {master}")),
                Err(e) => failures.push(format!("{sentinel}: {e}")),
            }
        }
        Err(ClusterError::NoPrimary {
            master: master.to_owned(),
            tried: failures.join("; "),
        })
    }
}

/// The Redis Cluster client of the seeds, connecting lazily. It speaks RESP2: pub/sub does not
/// go through it.
fn cluster_client(
    seeds: &[String],
) -> Result<redis::cluster_async::ClusterConnection, ClusterError> {
    let nodes: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
    let (min_wait, max_wait) = CLUSTER_RETRY_WAIT_MS;
    // The builder's response timeout also bounds a command with all its retries (without one
    // a command waits for as long as the cluster takes to recover); the config's is the one each
    // attempt gets, and must be given again.
    let client = ClusterClientBuilder::new(nodes)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(min_wait)
        .max_retry_wait(max_wait)
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .build()?;
    let config = ClusterConfig::new()
        .set_connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .set_response_timeout(CLUSTER_RESPONSE_TIMEOUT);
    Ok(client.get_pending_async_connection_with_config(config))
}

async fn connect_sentinel(sentinel: &str) -> Result<MultiplexedConnection, redis::RedisError> {
    let client = redis::Client::open(format!("redis://{sentinel}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The primary's `host:port` as one sentinel knows it.
async fn ask(
    conn: &mut MultiplexedConnection,
    master: &str,
) -> Result<Option<String>, redis::RedisError> {
    let named: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(conn)
        .await?;
    Ok(named.map(|(host, port)| format!("{host}:{port}")))
}
