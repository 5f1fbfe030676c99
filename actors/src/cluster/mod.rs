//! The cluster: rooms across nodes through Redis.
//!
//! One Redis orders every room's changes: a node sends each batch of submits to a Lua script
//! that takes the room's next numbers from a counter, appends the batch to the room's capped
//! stream and publishes it ([`scripts::order`]). Every node that has the room applies the
//! batches in number order, merging each change as the node that ordered it does, so every node
//! gives a change the same number and reaches the same state. Pub/sub is at most once: a node
//! that sees a gap, or starts a room, reads what it lacks from the stream, or from a peer's log
//! once the stream no longer holds it ([`catch_up`]). An epoch key tells when Redis lost its
//! data; the nodes then raise the counters back past every number they hold before anyone
//! orders again ([`bridge`]). Behind Sentinel the primary may move to a replica that missed the
//! last writes: there the epoch is bound to the primary's replication id, so such a failover
//! looks like a Redis that lost its data, and is recovered from the same way ([`primary`]).

pub mod bridge;
pub mod catch_up;
pub mod keys;
pub mod peers;
mod primary;
pub mod scripts;
pub mod target;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

pub use bridge::{Cluster, Follow, Position, Replicated, Resync, Unfollow};
pub use keys::Keys;
pub use peers::Peer;
pub use target::{Target, TargetError};
pub use wire::{BatchBody, OrderedBatch};

use crate::metrics::ClusterMetrics;
use crate::origin::NodeId;
use crate::room_key::RoomKey;
use primary::Primary;

/// What a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://…` or `redis+sentinel://…` ([`Target`]); the hub asks for RESP3 itself.
    pub redis_url: String,
    /// Where the other nodes reach this node's HTTP API, to read a room's history from it.
    pub advertise_url: String,
    /// Prefix of every Redis key and channel.
    pub key_prefix: String,
    /// About how many batches each room's Redis stream keeps.
    pub stream_max_len: usize,
    /// The bearer token peers present to read history (the shared admin token), if any.
    pub peer_token: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Shared so that one failure can answer every room waiting on it, with its cause.
    #[error("redis: {0}")]
    Redis(#[source] std::sync::Arc<redis::RedisError>),
    /// This node's own storage, read for the cluster (the rooms it holds).
    #[error("storage: {0}")]
    Storage(#[source] std::sync::Arc<crate::store::StorageError>),
    /// The node's cluster actor is gone (the node is shutting down).
    #[error("the cluster bridge stopped")]
    BridgeGone,
    #[error("redis lost its data (epoch changed); the nodes are restoring it")]
    Epoch,
    #[error("the cluster is not ordering changes right now")]
    Unavailable,
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("no sentinel names a primary for {master}: {tried}")]
    NoPrimary { master: String, tried: String },
    #[error("no node holds the history of {room} after {after}")]
    HistoryUnavailable { room: String, after: u64 },
    #[error("peer {peer}: {source}")]
    Peer {
        peer: String,
        #[source]
        source: std::sync::Arc<peers::PeerError>,
    },
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> ClusterError {
        if e.code() == Some("EPOCH") {
            ClusterError::Epoch
        } else {
            ClusterError::Redis(std::sync::Arc::new(e))
        }
    }
}

struct Inner {
    primary: Primary,
    keys: Keys,
    node: NodeId,
    settings: ClusterSettings,
    /// The epoch this node orders under; `None` while it is unknown or being restored. Behind
    /// Sentinel it ends with `/<replication id>` of the primary it was made on.
    epoch: RwLock<Option<String>>,
    /// False while Redis is unreachable or stops delivering what is published.
    healthy: AtomicBool,
    peers: RwLock<Vec<Peer>>,
    order: Script,
    counters: ClusterMetrics,
}

/// What rooms use of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

impl ClusterHandle {
    /// With one Redis, connects lazily: a node starts while Redis is down, and reports itself
    /// degraded. Behind Sentinel the bridge looks the primary up at its first beat.
    pub fn connect(
        settings: ClusterSettings,
        node: NodeId,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
        counters: ClusterMetrics,
    ) -> Result<ClusterHandle, ClusterError> {
        let primary = Primary::new(Target::parse(&settings.redis_url)?, pushes)?;
        Ok(ClusterHandle {
            inner: Arc::new(Inner {
                primary,
                keys: Keys::new(&settings.key_prefix),
                node,
                settings,
                epoch: RwLock::new(None),
                healthy: AtomicBool::new(false),
                peers: RwLock::new(Vec::new()),
                order: scripts::order(),
                counters,
            }),
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    pub fn counters(&self) -> &ClusterMetrics {
        &self.inner.counters
    }

    /// The connection to the primary; `Unavailable` while Sentinel has named none yet.
    pub(crate) fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        self.inner.primary.conn()
    }

    /// Whether the primary can move (Sentinel): the epoch is then bound to its replication id.
    pub fn primary_moves(&self) -> bool {
        self.inner.primary.target().moves()
    }

    /// Behind Sentinel, the primary's `host:port` as this node last found it. (With one Redis
    /// there is nothing to find, and the URL may carry a password.)
    pub fn primary_address(&self) -> Option<String> {
        if !self.primary_moves() {
            return None;
        }
        self.inner.primary.address()
    }

    /// Looks the primary up again (Sentinel); true when this node moved to another one.
    pub(crate) async fn follow_primary(&self) -> Result<bool, ClusterError> {
        self.inner.primary.follow().await
    }

    /// Waits for the orders still out on primaries this node has left (see [`primary`]).
    pub(crate) async fn wait_retired_orders(&self) {
        self.inner.primary.wait_retired_orders().await
    }

    pub fn epoch(&self) -> Option<String> {
        self.inner
            .epoch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_epoch(&self, epoch: Option<String>) {
        *self.inner.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch;
    }

    /// Whether the bridge works: Redis answers, and what is published comes back.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::Relaxed);
        self.inner.counters.healthy.set(i64::from(healthy));
    }

    /// The other nodes heard from lately.
    pub fn peers(&self) -> Vec<Peer> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_peers(&self, peers: Vec<Peer>) {
        self.inner.counters.peers.set(peers.len() as i64);
        *self.inner.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Orders one batch of a room's changes; answers its first number.
    pub async fn order(&self, room: &RoomKey, body: &BatchBody) -> Result<u64, ClusterError> {
        let Some(epoch) = self.epoch() else {
            return Err(ClusterError::Unavailable);
        };
        let n = body.changes.len();
        let keys = &self.inner.keys;
        // Behind Sentinel the script also checks that the primary is the one the epoch was
        // made on: a replica promoted since may lack numbers the old one gave out.
        let replid = if self.primary_moves() {
            replid_of(&epoch).unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        let (mut conn, _in_flight) = self.inner.primary.conn_for_order()?;
        self.inner.counters.round_trips.inc();
        let first: u64 = self
            .inner
            .order
            .key(keys.epoch())
            .key(keys.counter(room))
            .key(keys.log(room))
            .arg(epoch)
            .arg(n)
            .arg(body.encode())
            .arg(self.inner.settings.stream_max_len)
            .arg(keys.channel(room))
            .arg(replid)
            .invoke_async(&mut conn)
            .await?;
        self.inner.counters.orders.inc();
        self.inner.counters.ordered_changes.inc_by(n as u64);
        Ok(first)
    }

    /// The counters of several rooms, in order (0 for a room Redis does not know).
    pub async fn counters_of(&self, rooms: &[RoomKey]) -> Result<Vec<u64>, ClusterError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = rooms.iter().map(|r| self.inner.keys.counter(r)).collect();
        let mut conn = self.conn()?;
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// The last number Redis gave out for a room.
    pub async fn counter(&self, room: &RoomKey) -> Result<u64, ClusterError> {
        let mut conn = self.conn()?;
        self.inner.counters.round_trips.inc();
        let n: Option<u64> = conn.get(self.inner.keys.counter(room)).await?;
        Ok(n.unwrap_or(0))
    }
}

/// The replication id an epoch made behind Sentinel is bound to.
pub(crate) fn replid_of(epoch: &str) -> Option<&str> {
    epoch.rsplit_once('/').map(|(_, replid)| replid)
}

/// A fresh random-looking id (an epoch's name, a node's generated id).
pub(crate) fn fresh_id(seed: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.finalize().to_hex()[..16].to_owned()
}
