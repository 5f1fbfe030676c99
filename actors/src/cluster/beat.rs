//! What a node's beat asks Redis: it writes its heartbeat into the nodes hash and publishes it
//! (hearing it back tells pub/sub works), reads the other nodes' heartbeats, and reads the epoch
//! with what it takes to tell whether it still holds: behind Sentinel the primary's replication
//! id, on a Redis Cluster every bucket's epoch and the replication id of the primary serving it.
//! Behind Sentinel it first asks where the primary is; on a Redis Cluster it first makes sure
//! the node pub/sub comes from still answers.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::epochs::{Seen, read_buckets};
use super::{ClusterError, ClusterHandle, replid_of};

/// A node not heard for this long is gone.
pub(super) const PEER_ALIVE: Duration = Duration::from_secs(5);

/// How long a beat on a Redis Cluster may take (it reads every bucket's epoch, in parallel):
/// while the beats fail, and while they succeed.
const CLUSTER_BEAT_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(1));

/// What a node writes into the nodes hash every beat.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Beat {
    pub url: String,
    pub at: i64,
    /// Tells two processes that claim the same node id apart.
    pub nonce: String,
}

impl Beat {
    /// Whether the node that wrote it counts as live at `now` (ms).
    pub fn alive(&self, now: i64) -> bool {
        now - self.at <= PEER_ALIVE.as_millis() as i64
    }
}

/// What a beat found.
pub(super) struct Answer {
    pub seen: Seen,
    /// Node id → its heartbeat, as JSON.
    pub nodes: HashMap<String, String>,
}

/// One beat. `deaf`: this node's last heartbeats did not come back over pub/sub; `failing`: the
/// last beat failed. Says first whether the node moved to another primary, or pub/sub node,
/// whose subscriptions are then to be made again, whatever became of the rest of the beat.
pub(super) async fn beat(
    handle: &ClusterHandle,
    beat: &Beat,
    deaf: bool,
    failing: bool,
) -> (bool, Result<Answer, ClusterError>) {
    // Behind Sentinel every beat asks where the primary is: after a failover the old one may
    // still answer (a split brain) until the sentinels make it a replica.
    let switched = if handle.primary_moves() {
        match handle.follow_primary(deaf).await {
            Ok(switched) => switched,
            // Sentinels away do not stop a primary that answers.
            Err(e) if handle.conn().is_ok() => {
                log::debug!("cluster: looking for the primary or a pub/sub node: {e}");
                false
            }
            Err(e) => return (false, Err(e)),
        }
    } else {
        false
    };
    if !handle.bucketed() {
        return (switched, ask(handle, beat).await);
    }
    // A wedged Redis Cluster client answers nothing until its commands time out: a beat that
    // takes longer than this failed, and the client is renewed sooner. While a primary fails
    // over that is what stands between its replica's promotion and the restore.
    let (failing_timeout, timeout) = CLUSTER_BEAT_TIMEOUT;
    let timeout = if failing { failing_timeout } else { timeout };
    let asked = tokio::time::timeout(timeout, ask(handle, beat)).await;
    (switched, asked.unwrap_or(Err(ClusterError::Unavailable)))
}

async fn ask(handle: &ClusterHandle, beat: &Beat) -> Result<Answer, ClusterError> {
    let keys = handle.keys();
    let node = handle.node().as_str();
    let beat = serde_json::to_string(beat).unwrap_or_default();
    let moves = handle.primary_moves();
    let mut conn = handle.conn()?;
    if handle.bucketed() {
        // One slot per command: the nodes hash, the heartbeat (a channel, broadcast from any
        // node), and each bucket's epoch.
        let mut pipe = redis::pipe();
        pipe.hset(keys.nodes(), node, beat)
            .ignore()
            .hgetall(keys.nodes());
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys.heartbeat_channel()).arg(node);
        let (mut c1, mut c2) = (conn.clone(), conn.clone());
        let (nodes, published, seen) = futures_util::join!(
            pipe.query_async::<(HashMap<String, String>,)>(&mut c1),
            publish.query_async::<i64>(&mut c2),
            read_buckets(&conn, keys),
        );
        published?;
        return Ok(Answer {
            seen: seen?,
            nodes: nodes?.0,
        });
    }
    let mut pipe = redis::pipe();
    pipe.hset(keys.nodes(), node, beat)
        .ignore()
        .get(keys.epoch())
        .hgetall(keys.nodes())
        .publish(keys.heartbeat_channel(), node)
        .ignore();
    if moves {
        pipe.cmd("INFO").arg("replication");
    }
    let reply: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let mut reply = reply.into_iter();
    let mut next = || reply.next().unwrap_or(redis::Value::Nil);
    let epoch: Option<String> = redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
    let nodes: HashMap<String, String> =
        redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
    // Behind Sentinel an epoch holds only on the primary it was made on.
    let current = if moves {
        let info: String = redis::from_redis_value(next()).map_err(redis::RedisError::from)?;
        let replid = master_replid(&info);
        epoch
            .as_deref()
            .is_some_and(|e| replid.is_some() && replid_of(e) == replid.as_deref())
    } else {
        true
    };
    Ok(Answer {
        seen: Seen { epoch, current },
        nodes,
    })
}

/// The primary's replication id in an `INFO replication` answer: a replica promoted by a
/// failover starts a new one.
fn master_replid(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("master_replid:"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_id_is_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\
                    master_replid:8e24fe88bc7b\r\nmaster_replid2:0000\r\n";
        assert_eq!(master_replid(info).as_deref(), Some("8e24fe88bc7b"));
        assert_eq!(master_replid("role:master"), None);
    }
}
