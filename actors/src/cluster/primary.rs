//! The node's connection to the cluster's Redis primary. With one Redis it is one reconnecting
//! RESP3 connection for good. Behind Sentinel the primary moves at a failover: the bridge asks
//! the sentinels where it is at every beat, and the node connects there, carrying pub/sub
//! pushes into the same channel as before.
//!
//! In a split brain (`SENTINEL failover`, a partition) the old primary may still answer after
//! the sentinels named a new one, so a node moving on first lets the orders it sent the old one
//! come back ([`Primary::wait_retired_orders`]): the numbers they bring are part of what it
//! restores into the new primary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, PushInfo};
use tokio::sync::mpsc::UnboundedSender;

use super::ClusterError;
use super::target::Target;

/// How long a Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A sentinel that does not answer this fast is skipped for the next one: the lookup runs
/// while writes wait for the new primary.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct Primary {
    target: Target,
    pushes: UnboundedSender<PushInfo>,
    current: RwLock<Option<Connected>>,
    /// The orders still out on primaries this node has left.
    retired: Mutex<Vec<Arc<AtomicUsize>>>,
    /// The sentinel that answered last, kept connected: it is asked at every beat.
    sentinel: Mutex<Option<MultiplexedConnection>>,
}

#[derive(Clone)]
struct Connected {
    /// `host:port` behind Sentinel; the URL with one Redis.
    address: String,
    conn: ConnectionManager,
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
    /// With one Redis, connects lazily: a node starts while Redis is down, and reports itself
    /// degraded. Behind Sentinel nothing is connected until the first lookup.
    pub fn new(target: Target, pushes: UnboundedSender<PushInfo>) -> Result<Primary, ClusterError> {
        let current = match &target {
            Target::Single(url) => Some(Connected {
                address: url.clone(),
                conn: manager(&with_resp3(url), pushes.clone(), false)?,
                in_flight: Arc::default(),
            }),
            Target::Sentinel { .. } => None,
        };
        Ok(Primary {
            target,
            pushes,
            current: RwLock::new(current),
            retired: Mutex::new(Vec::new()),
            sentinel: Mutex::new(None),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The connection to the primary; `Unavailable` while no sentinel has named one.
    pub fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.conn.clone())
            .ok_or(ClusterError::Unavailable)
    }

    /// The connection for one order, counted as out on it until the guard drops.
    pub fn conn_for_order(&self) -> Result<(ConnectionManager, InFlight), ClusterError> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref().ok_or(ClusterError::Unavailable)?;
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok((c.conn.clone(), InFlight(c.in_flight.clone())))
    }

    /// Waits until every order sent to a primary this node has left is answered or failed
    /// (each is bounded by the response timeout), so the room holds the number it brings.
    pub async fn wait_retired_orders(&self) {
        let deadline = Instant::now() + RESPONSE_TIMEOUT + Duration::from_millis(500);
        loop {
            let out: usize = {
                let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
                retired.retain(|n| n.load(Ordering::SeqCst) > 0);
                retired.iter().map(|n| n.load(Ordering::SeqCst)).sum()
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
    /// one this node talks to. True when the node switched to another primary (its pub/sub
    /// subscriptions are then to be made again). With one Redis there is nothing to look up.
    pub async fn follow(&self) -> Result<bool, ClusterError> {
        let Target::Sentinel { sentinels, master } = &self.target else {
            return Ok(false);
        };
        let address = self.ask_sentinels(sentinels, master).await?;
        if self.address().as_deref() == Some(address.as_str()) {
            return Ok(false);
        }
        let url = with_resp3(&format!("redis://{address}"));
        let conn = manager(&url, self.pushes.clone(), true)?;
        log::warn!("cluster: sentinel names {address} as the primary of {master}");
        let connected = Connected {
            address,
            conn,
            in_flight: Arc::default(),
        };
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
        Ok(true)
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

/// Behind Sentinel (`fail_fast`) a lost connection is tried again once, not for seconds: the
/// primary may have moved, and the bridge looks it up again at once.
fn manager(
    url: &str,
    pushes: UnboundedSender<PushInfo>,
    fail_fast: bool,
) -> Result<ConnectionManager, ClusterError> {
    let client = redis::Client::open(url)?;
    let mut config = ConnectionManagerConfig::new()
        .set_push_sender(pushes)
        .set_automatic_resubscription()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_max_delay(Duration::from_secs(1));
    if fail_fast {
        config = config.set_number_of_retries(1);
    }
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
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
