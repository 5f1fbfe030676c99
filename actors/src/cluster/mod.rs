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
//! On a Redis Cluster the rooms are spread over the primaries in buckets, each with an epoch of
//! its own bound to the replication id of the primary serving it ([`keys`], [`epochs`]): a
//! primary that fails over is recovered from like a Sentinel failover, by every node.

mod beat;
pub mod bridge;
pub mod catch_up;
mod conn;
mod epochs;
pub mod keys;
mod listener;
mod orderer;
pub mod peers;
mod primary;
pub mod restore;
pub mod scripts;
pub mod target;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::future::join_all;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

pub use bridge::{Cluster, Follow, Position, Replicated, Resync, Unfollow};
pub use conn::Conn;
pub use epochs::Epoch;
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
    /// `redis://…`, `redis+sentinel://…` or `redis+cluster://…` ([`Target`]); the hub asks for
    /// RESP3 itself.
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
    /// A node joins a cluster from within the async runtime its tasks run on.
    #[error("the cluster was joined outside an async runtime")]
    NoRuntime,
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("no sentinel names a primary for {master}: {tried}")]
    NoPrimary { master: String, tried: String },
    #[error("no node of the Redis Cluster answers: {tried}")]
    NoClusterNode { tried: String },
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
    /// The epoch this node orders under; `None` while it is unknown or being restored.
    epoch: RwLock<Option<Arc<Epoch>>>,
    /// False while Redis is unreachable or stops delivering what is published.
    healthy: AtomicBool,
    peers: RwLock<Vec<Peer>>,
    order: scripts::Lua,
    /// Where rooms' batches queue to be ordered ([`orderer`]).
    orderer: tokio::sync::mpsc::UnboundedSender<orderer::Request>,
    counters: ClusterMetrics,
}

impl Inner {
    /// The epoch this node orders under; `None` while it is unknown or being restored.
    fn ordering_epoch(&self) -> Option<Arc<Epoch>> {
        self.epoch.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the primary can move (Sentinel, Redis Cluster).
    fn primary_moves(&self) -> bool {
        self.primary.target().moves()
    }
}

/// What rooms use of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

impl ClusterHandle {
    /// With one Redis, and on a Redis Cluster, connects lazily: a node starts while Redis is
    /// down, and reports itself degraded. Behind Sentinel the bridge looks the primary up at its
    /// first beat, and on a Redis Cluster the node to hear pub/sub from.
    pub fn connect(
        settings: ClusterSettings,
        node: NodeId,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
        counters: ClusterMetrics,
    ) -> Result<ClusterHandle, ClusterError> {
        let target = Target::parse(&settings.redis_url)?;
        let keys = if target.bucketed() {
            Keys::bucketed(&settings.key_prefix)
        } else {
            Keys::new(&settings.key_prefix)
        };
        let primary = Primary::new(target, pushes)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
        let (orderer, requests) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            primary,
            keys,
            node,
            settings,
            epoch: RwLock::new(None),
            healthy: AtomicBool::new(false),
            peers: RwLock::new(Vec::new()),
            order: scripts::order(),
            orderer,
            counters,
        });
        // The task holds the node's cluster weakly: it ends once the last handle is gone.
        runtime.spawn(orderer::run(Arc::downgrade(&inner), requests));
        Ok(ClusterHandle { inner })
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

    /// The connection commands go to; `Unavailable` while Sentinel has named no primary yet.
    pub(crate) fn conn(&self) -> Result<Conn, ClusterError> {
        self.inner.primary.conn()
    }

    /// The connection pub/sub commands go to, whose pushes reach the bridge.
    pub(crate) fn subscriber(&self) -> Result<ConnectionManager, ClusterError> {
        self.inner.primary.subscriber()
    }

    /// Whether the primary can move (Sentinel, Redis Cluster): an epoch is then bound to the
    /// replication id of the primary it was made on.
    pub fn primary_moves(&self) -> bool {
        self.inner.primary_moves()
    }

    /// Whether this is a Redis Cluster, whose rooms have an epoch per bucket.
    pub fn bucketed(&self) -> bool {
        self.inner.keys.is_bucketed()
    }

    /// Behind Sentinel, the primary's `host:port` as this node last found it. (With one Redis
    /// there is nothing to find, and the URL may carry a password; a Redis Cluster has one
    /// primary per shard, which its client finds by itself.)
    pub fn primary_address(&self) -> Option<String> {
        if !matches!(self.inner.primary.target(), Target::Sentinel { .. }) {
            return None;
        }
        self.inner.primary.address()
    }

    /// On a Redis Cluster, the `host:port` of the node this node hears pub/sub from.
    pub fn listening_to(&self) -> Option<String> {
        self.inner.primary.listening_to()
    }

    /// Looks the primary up again (Sentinel), or keeps pub/sub on a node that answers (Redis
    /// Cluster; `deaf`: the node listened to delivers nothing); true when this node moved to
    /// another one.
    pub(crate) async fn follow_primary(&self, deaf: bool) -> Result<bool, ClusterError> {
        self.inner.primary.follow(deaf).await
    }

    /// On a Redis Cluster, replaces the cluster client with a new one (see [`primary`]).
    pub(crate) fn renew_client(&self) -> Result<(), ClusterError> {
        self.inner.primary.renew()
    }

    /// Waits for the orders still out on primaries this node has left (see [`primary`]).
    pub(crate) async fn wait_retired_orders(&self) {
        self.inner.primary.wait_retired_orders().await
    }

    /// The epoch's name, as `/stats` shows it and the node remembers it.
    pub fn epoch(&self) -> Option<String> {
        self.inner.ordering_epoch().map(|e| e.name.clone())
    }

    pub(crate) fn set_epoch(&self, epoch: Option<Epoch>) {
        *self.inner.epoch.write().unwrap_or_else(|p| p.into_inner()) = epoch.map(Arc::new);
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

    /// Orders one batch of a room's changes; answers its first number. The batch goes to Redis
    /// with the others waiting on this node ([`orderer`]).
    pub async fn order(&self, room: &RoomKey, body: &BatchBody) -> Result<u64, ClusterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = orderer::Request {
            group: self.inner.keys.bucket_of(room),
            room: room.clone(),
            changes: body.changes.len(),
            body: body.encode(),
            reply,
        };
        self.inner
            .orderer
            .send(request)
            .map_err(|_| ClusterError::BridgeGone)?;
        answer.await.map_err(|_| ClusterError::BridgeGone)?
    }

    /// The counters of several rooms, in order (0 for a room Redis does not know). One `MGET`,
    /// or on a Redis Cluster one per bucket (the keys of one `MGET` share a slot), sent at once.
    pub async fn counters_of(&self, rooms: &[RoomKey]) -> Result<Vec<u64>, ClusterError> {
        let keys = &self.inner.keys;
        let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (i, room) in rooms.iter().enumerate() {
            groups.entry(keys.bucket_of(room)).or_default().push(i);
        }
        let conn = self.conn()?;
        let reads = groups.into_values().map(|members| {
            let names: Vec<String> = members.iter().map(|&i| keys.counter(&rooms[i])).collect();
            let mut conn = conn.clone();
            async move {
                let values: Vec<Option<u64>> =
                    redis::cmd("MGET").arg(names).query_async(&mut conn).await?;
                Ok::<_, ClusterError>((members, values))
            }
        });
        let mut counters = vec![0; rooms.len()];
        for read in join_all(reads).await {
            let (members, values) = read?;
            for (i, value) in members.into_iter().zip(values) {
                counters[i] = value.unwrap_or(0);
            }
        }
        Ok(counters)
    }

    /// The last number Redis gave out for a room.
    pub async fn counter(&self, room: &RoomKey) -> Result<u64, ClusterError> {
        let mut conn = self.conn()?;
        self.inner.counters.round_trips.inc();
        let n: Option<u64> = conn.get(self.inner.keys.counter(room)).await?;
        Ok(n.unwrap_or(0))
    }
}

/// The replication id an epoch made behind Sentinel, or a bucket's epoch on a Redis Cluster, is
/// bound to.
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
