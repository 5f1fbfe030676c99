//! On a Redis Cluster, the one node a synchub node hears pub/sub from. `PUBLISH` (the ordering
//! script's included) is broadcast over the cluster bus to every node, primaries and replicas
//! alike, so any one node that answers hears every room. When it stops answering (it died, or
//! the node stopped hearing anything), the listener moves to the next node that answers: the
//! seeds first, then the nodes the cluster itself lists, and the bridge subscribes there again.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redis::PushInfo;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc::UnboundedSender;

use super::ClusterError;
use super::conn::{Conn, manager};

/// How long a cluster node may take to answer the listener (a dead one is left this fast), and
/// the cluster to list its nodes.
const LISTENER_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct Listener {
    seeds: Vec<String>,
    pushes: UnboundedSender<PushInfo>,
    current: RwLock<Option<Listening>>,
    /// Nodes the cluster listed when last asked, tried after the seeds.
    known: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Listening {
    address: String,
    conn: ConnectionManager,
}

impl Listener {
    pub fn new(seeds: Vec<String>, pushes: UnboundedSender<PushInfo>) -> Listener {
        Listener {
            seeds,
            pushes,
            current: RwLock::new(None),
            known: Mutex::new(Vec::new()),
        }
    }

    /// The connection pub/sub commands go to; `Unavailable` until a node answered.
    pub fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.conn.clone())
            .ok_or(ClusterError::Unavailable)
    }

    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The nodes to try: the seeds, then those the cluster listed when last asked.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes = self.seeds.clone();
        for node in self.known.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        nodes
    }

    /// The `host:port` of the node listened to.
    pub fn address(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.address.clone())
    }

    /// Keeps listening where a node answers; `deaf` says the node listened to delivers nothing
    /// (this node's own heartbeat stopped coming back), which is a reason to move too. True
    /// when the listener moved: its subscriptions are then to be made again.
    pub async fn follow(&self, commands: &mut Conn, deaf: bool) -> Result<bool, ClusterError> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(mut listening) = current.clone()
            && !deaf
            && ping(&mut listening.conn).await.is_ok()
        {
            return Ok(false);
        }
        // The nodes may all have changed since the seeds were written down. The cluster client
        // may be unable to say while the cluster fails over: the nodes known are tried then.
        match tokio::time::timeout(LISTENER_TIMEOUT, cluster_nodes(commands)).await {
            Ok(Ok(nodes)) if !nodes.is_empty() => {
                *self.known.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::debug!("cluster: listing the cluster's nodes: {e}"),
            Err(_) => log::debug!("cluster: listing the cluster's nodes timed out"),
        }
        let left = current.map(|l| l.address);
        let mut candidates = self.nodes();
        // The node left last goes last: it may be the only one that answers.
        if let Some(left) = left {
            candidates.retain(|node| *node != left);
            candidates.push(left);
        }
        let mut failures = Vec::new();
        for address in candidates {
            let url = format!("redis://{address}");
            let mut conn = manager(&url, self.pushes.clone(), true, LISTENER_TIMEOUT)?;
            match ping(&mut conn).await {
                Ok(()) => {
                    log::warn!("cluster: hearing pub/sub from the cluster node {address}");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Listening { address, conn });
                    return Ok(true);
                }
                Err(e) => failures.push(format!("{address}: {e}")),
            }
        }
        Err(ClusterError::NoClusterNode {
            tried: failures.join("; "),
        })
    }
}

async fn ping(conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
    let _: redis::Value = redis::cmd("PING").query_async(conn).await?;
    Ok(())
}

/// The `host:port` of every node the cluster lists as reachable.
async fn cluster_nodes(conn: &mut Conn) -> Result<Vec<String>, redis::RedisError> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(parse_cluster_nodes(&text))
}

/// `CLUSTER NODES` lines read `<id> <ip:port@bus[,hostname]> <flags> …`; a node flagged as
/// failing, without an address or still being met is no place to listen.
fn parse_cluster_nodes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let unusable = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let usable = !unusable && !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0);
            // An IPv6 address is listed bare; a URL wants it in brackets.
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            usable.then(|| format!("{host}:{port}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_the_nodes_that_can_be_reached() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,h2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 1426238318243 1426238316232 3 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
a1b2 :0@0 master,noaddr - 0 0 0 disconnected
c3d4 ::1:30005@31005 slave 67ed 0 1426238316232 2 connected
";
        assert_eq!(
            parse_cluster_nodes(text),
            [
                "127.0.0.1:30004",
                "127.0.0.1:30002",
                "127.0.0.1:30001",
                "[::1]:30005"
            ]
        );
    }
}
