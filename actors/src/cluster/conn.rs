//! The connection the cluster's commands go over: one reconnecting connection to a Redis (one
//! Redis, or the primary Sentinel names), or a Redis Cluster client that sends each command to
//! the primary serving its key's slot and follows MOVED, ASK and failovers by itself.

use std::time::Duration;

use redis::PushInfo;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::ClusterError;

#[derive(Clone)]
pub enum Conn {
    One(ConnectionManager),
    /// Every command and pipeline sent here touches keys of one slot only: the client refuses
    /// a pipeline that crosses slots, and Redis a script that does.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A reconnecting connection that carries pub/sub pushes, so it always speaks RESP3. Behind
/// Sentinel and on a Redis Cluster (`fail_fast`) a lost connection is tried again once, not for
/// seconds: the primary may have moved, or the node died, and the bridge looks for another at
/// once.
pub(super) fn manager(
    url: &str,
    pushes: UnboundedSender<PushInfo>,
    fail_fast: bool,
    timeout: Duration,
) -> Result<ConnectionManager, ClusterError> {
    let client = redis::Client::open(with_resp3(url))?;
    let mut config = ConnectionManagerConfig::new()
        .set_push_sender(pushes)
        .set_automatic_resubscription()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_max_delay(Duration::from_secs(1));
    if fail_fast {
        config = config.set_number_of_retries(1);
    }
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// The URL with RESP3 asked for: pub/sub pushes share the command connection.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_is_asked_for_once() {
        assert_eq!(with_resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            with_resp3("redis://h:1/?db=2"),
            "redis://h:1/?db=2&protocol=resp3"
        );
        assert_eq!(
            with_resp3("redis://h:1?protocol=resp3"),
            "redis://h:1?protocol=resp3"
        );
    }
}
