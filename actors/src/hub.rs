//! The assembled hub: storage, the durability and directory actors, where rooms run, and the
//! handles the HTTP layer needs. Build one with [`Hub::start`] inside an actix system.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::cluster::{Cluster, ClusterError, ClusterHandle, ClusterSettings};
use crate::directory::{
    Checkout, CloseAll, ConnectionLimits, Directory, DirectoryParts, ReadHistory, RoomBounds,
};
use crate::durability::{Durability, FlushAll};
use crate::identity::TokenVerifier;
use crate::mailbox::CountedAddr;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::origin::NodeId;
use crate::placement::Placement;
use crate::room::{ClusterLink, RoomError, RoomReply, RoomRequest, SessionId, ask};
use crate::room_key::{Namespace, RoomKey};
use crate::section::DialectSections;
use crate::store::{HistoryPage, StorageError, Store};

/// How long shutdown waits for the final storage flush.
const FINAL_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Socket-level settings shared by every dialect.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How often the hub sends a WebSocket ping.
    pub heartbeat_interval: Duration,
    /// A client silent for this long is disconnected.
    pub client_timeout: Duration,
    /// Larger messages get the dialect's error; the session goes on.
    pub max_frame_bytes: usize,
    /// Messages a second a client may send (a token bucket holding one second's worth).
    pub max_messages_per_second: u32,
    /// Bytes that may wait for one socket before the session is closed as a slow consumer.
    pub max_outbound_bytes: usize,
}

impl SessionSettings {
    /// The largest frame the socket codec accepts at all. Frames between `max_frame_bytes` and
    /// this get the dialect's error; larger ones are a protocol violation that ends the
    /// connection, which bounds what one client can make the hub buffer.
    pub fn codec_max_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_mul(4).max(16 << 20)
    }
}

/// What the hub itself needs of a dialect it serves: how its rooms run.
#[derive(Clone, Copy)]
pub struct DialectRooms {
    pub namespace: Namespace,
    /// Its rooms' merge rules, as its own section and the common settings make them.
    pub model: fn(&DialectSections, &CommonSettings) -> Arc<dyn Model>,
    /// Whether each room is one document (SyncKit's): its state is held to
    /// `limits.max_document_bytes`, and `/health` counts it among the documents.
    pub room_is_document: bool,
}

/// What every dialect's rules and codec may read besides its own section.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// Message limits every dialect enforces.
    pub max_json_depth: usize,
    pub max_document_bytes: usize,
    /// Rooms (SyncKit documents) one session may follow at once.
    pub max_rooms_per_session: usize,
    /// How far ahead of the hub's clock a client's timestamp may be, in milliseconds.
    pub max_clock_skew_ms: i64,
    /// How long a delete stays in the log once compaction runs; `None` keeps it.
    pub tombstone_retention_ms: Option<i64>,
}

/// Where room actors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomThreads {
    /// On the threads offered with [`Hub::offer_thread_for_rooms`] (the HTTP workers) once one
    /// is; a single room thread of their own holds those started before.
    OnWorkers,
    /// On threads of their own; 0 means one per core.
    Own(usize),
}

/// Everything the hub needs to start, already validated by the caller.
#[derive(Clone)]
pub struct HubSettings {
    pub data_dir: PathBuf,
    /// Ack before the flush (`storage.durability = "relaxed"`).
    pub relaxed: bool,
    /// The most memory the storage's page cache may use (`storage.cache_bytes`).
    pub storage_cache_bytes: u64,
    /// A fixed node id; `None`: generated once and kept in the data directory.
    pub node_id: Option<String>,
    /// The dialects served. A room of any other namespace is never started.
    pub dialects: Vec<DialectRooms>,
    /// Each dialect's own section of the configuration.
    pub sections: DialectSections,
    pub common: CommonSettings,
    pub session: SessionSettings,
    pub connections: ConnectionLimits,
    /// A room with no sessions and no traffic for this long stops (its state stays on disk).
    pub room_idle_timeout: Duration,
    /// Where room actors run.
    pub room_threads: RoomThreads,
    /// Set when the node is part of a cluster.
    pub cluster: Option<ClusterSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: StorageError,
    },
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

struct Inner {
    settings: HubSettings,
    store: Store,
    directory: CountedAddr<Directory>,
    durability: CountedAddr<Durability>,
    cluster: Option<ClusterLink>,
    metrics: Arc<Metrics>,
    verifier: Option<Arc<dyn TokenVerifier>>,
    node: NodeId,
    site_id: String,
    started: Instant,
    next_session: AtomicU64,
    /// The room threads and the durability thread; taken and joined at shutdown.
    arbiters: std::sync::Mutex<Vec<Arbiter>>,
    placement: Arc<Placement>,
}

/// A cheap handle to the running hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl HubSettings {
    /// Every served namespace's model.
    pub fn models(&self) -> HashMap<Namespace, Arc<dyn Model>> {
        self.dialects
            .iter()
            .map(|d| (d.namespace, (d.model)(&self.sections, &self.common)))
            .collect()
    }

    /// A reply page stays within a frame, and within a quarter of what may wait for a socket
    /// (so a page and the broadcasts behind it fit); a SyncKit document within
    /// `max_document_bytes`, all its fields together.
    pub fn room_bounds(&self) -> RoomBounds {
        let page_bytes = self
            .session
            .max_frame_bytes
            .min(self.session.max_outbound_bytes / 4)
            .max(1);
        let max_document = self.common.max_document_bytes as u64;
        RoomBounds {
            page_bytes,
            max_state_bytes: self
                .dialects
                .iter()
                .filter(|d| d.room_is_document)
                .map(|d| (d.namespace, max_document))
                .collect(),
        }
    }
}

impl Hub {
    /// Opens storage and starts the hub's actors. Must run inside an actix system.
    pub fn start(
        settings: HubSettings,
        verifier: Option<Arc<dyn TokenVerifier>>,
    ) -> Result<Hub, HubError> {
        let storage_error = |source| HubError::Storage {
            path: settings.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| storage_error(StorageError::Io(e)))?;
        let models = settings.models();
        let open = || Store::open_with_cache(&settings.data_dir, settings.storage_cache_bytes);
        let store = match open() {
            // Opened once more only when there was something to upgrade.
            // An older data directory is upgraded before anything reads it, never refused.
            Err(StorageError::Format { found }) if crate::store::is_upgradable(&found) => {
                let stamp = crate::data_check::stamp_with(&models);
                let migrated =
                    crate::store::migrate(&settings.data_dir, &stamp).map_err(storage_error)?;
                if let Some(kept) = &migrated.kept_as {
                    log::warn!(
                        "upgraded the data directory from storage format {}: {} rooms, {} log \
                         entries; the directory as it was is kept in {}",
                        migrated.from,
                        migrated.rooms,
                        migrated.entries,
                        kept.display()
                    );
                }
                open()
            }
            other => other,
        }
        .map_err(storage_error)?;
        let node_id = match &settings.node_id {
            Some(id) => id.clone(),
            None => match store.node_value("node_id").map_err(storage_error)? {
                Some(id) => id,
                None => {
                    let id = crate::cluster::fresh_id("node");
                    store
                        .set_node_value("node_id", &id)
                        .map_err(storage_error)?;
                    id
                }
            },
        };
        let metrics = Arc::new(Metrics::new());
        for dialect in &settings.dialects {
            metrics.show_dialect(dialect.namespace);
        }
        // Group commit blocks on the disk: it gets a thread of its own.
        let durability_thread = Arbiter::new();
        let durability = {
            let (store, shared) = (store.clone(), metrics.clone());
            let relaxed = settings.relaxed;
            let addr = Durability::start_in_arbiter(&durability_thread.handle(), move |_| {
                Durability::new(store, shared, relaxed)
            });
            CountedAddr::new(addr, &metrics)
        };
        let threads = match settings.room_threads {
            RoomThreads::OnWorkers => 1,
            RoomThreads::Own(0) => crate::placement::cores(),
            RoomThreads::Own(n) => n,
        };
        let mut arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let placement = Arc::new(Placement::new(
            arbiters.iter().map(|a| a.handle()).collect(),
        ));
        // Stopped last, after the room threads have handed over their final commits.
        arbiters.push(durability_thread);
        let cluster = match &settings.cluster {
            None => None,
            Some(cs) => {
                let (pushes, pushed) = tokio::sync::mpsc::unbounded_channel();
                let handle = ClusterHandle::connect(
                    cs.clone(),
                    NodeId::new(&node_id),
                    pushes,
                    metrics.cluster.clone(),
                )?;
                let bridge =
                    Cluster::new(handle.clone(), store.clone(), pushed, metrics.room).start();
                Some(ClusterLink { handle, bridge })
            }
        };
        let directory = Directory::new(DirectoryParts {
            placement: placement.clone(),
            store: store.clone(),
            models,
            durability: durability.clone(),
            cluster: cluster.clone(),
            metrics: metrics.clone(),
            idle_timeout: settings.room_idle_timeout,
            limits: settings.connections,
            bounds: settings.room_bounds(),
        })
        .start();
        let directory = CountedAddr::new(directory, &metrics);
        if let Some(link) = &cluster {
            actix::spawn(crate::sweep::catch_up_stored_rooms(
                link.handle.clone(),
                store.clone(),
                directory.clone(),
            ));
        }
        // cr-sqlite site ids are 16 bytes; derive a stable one from the node id. The nodes of a
        // cluster share one: a relay client that reconnects to another node talks to the same
        // hub, whose versions are valid on every node.
        let site_seed = match &settings.cluster {
            Some(cs) => format!("cluster:{}", cs.key_prefix),
            None => node_id.clone(),
        };
        let site_id = blake3::hash(site_seed.as_bytes()).to_hex()[..32].to_owned();
        Ok(Hub {
            inner: Arc::new(Inner {
                site_id,
                settings,
                store,
                directory,
                durability,
                cluster,
                metrics,
                verifier,
                node: NodeId::new(&node_id),
                started: Instant::now(),
                next_session: AtomicU64::new(1),
                arbiters: std::sync::Mutex::new(arbiters),
                placement,
            }),
        })
    }

    /// Whether this is the last handle to the hub and no room runs any more: every session, HTTP
    /// worker and room has let go of the storage, which is free once this handle is dropped.
    pub fn is_last_handle(&self) -> bool {
        Arc::strong_count(&self.inner) == 1 && self.inner.placement.rooms_running() == 0
    }

    /// Lets rooms run on the calling thread (an actix arbiter: an HTTP worker), beside its
    /// sessions, when the settings ask for it ([`RoomThreads::OnWorkers`]).
    pub fn offer_thread_for_rooms(&self) {
        if self.inner.settings.room_threads == RoomThreads::OnWorkers {
            self.inner.placement.offer_current();
        }
    }

    pub fn node_id(&self) -> &str {
        self.inner.node.as_str()
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The relay dialect's site id of this node: stable across restarts.
    pub fn site_id(&self) -> &str {
        &self.inner.site_id
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn session_settings(&self) -> SessionSettings {
        self.inner.settings.session.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The node's way into the cluster, when it is part of one.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.inner.cluster.as_ref()
    }

    /// Whether the cluster bridge works (true on a single node).
    pub fn cluster_healthy(&self) -> bool {
        self.inner
            .cluster
            .as_ref()
            .is_none_or(|c| c.handle.healthy())
    }

    /// A room's durable history after `after`, for a peer catching up: from the room when it
    /// runs here (it serialises the read with its compactions), from storage otherwise.
    pub async fn history(
        &self,
        key: &RoomKey,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<HistoryPage, RoomError> {
        self.inner
            .directory
            .send(ReadHistory {
                key: key.clone(),
                after,
                upto,
                limit,
            })
            .await
            .map_err(|_| RoomError::Gone)?
    }

    pub fn directory(&self) -> &CountedAddr<Directory> {
        &self.inner.directory
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn verifier(&self) -> Option<&Arc<dyn TokenVerifier>> {
        self.inner.verifier.as_ref()
    }

    /// Whether clients must authenticate: the hub is given a verifier only then.
    pub fn auth_required(&self) -> bool {
        self.inner.verifier.is_some()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn next_session_id(&self) -> SessionId {
        SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether storage works: writes go through and the database answers.
    pub fn storage_healthy(&self) -> bool {
        self.storage_problem().is_none()
    }

    /// Why storage does not work ("disk full", or the error), if it does not.
    pub fn storage_problem(&self) -> Option<String> {
        let store = &self.inner.store;
        if let Some(cause) = store.health().cause() {
            return Some(cause);
        }
        store.probe().err().map(|e| e.cause())
    }

    /// Sends one request to a room outside any session (HTTP transport, admin endpoints).
    /// A room that stops between checkout and delivery is started again.
    pub async fn call(&self, key: &RoomKey, body: RoomRequest) -> Result<RoomReply, RoomError> {
        for _ in 0..3 {
            let addr = self
                .inner
                .directory
                .send(Checkout { key: key.clone() })
                .await
                .map_err(|_| RoomError::Gone)??;
            // A room that stopped meanwhile drops the request, and with it the reply: `Gone`.
            match ask(&addr, body.clone()).await {
                Err(RoomError::Gone) => continue,
                result => return result,
            }
        }
        Err(RoomError::Gone)
    }

    /// Graceful shutdown, after the listener stopped accepting: closes every session with
    /// 1001 and makes every write durable.
    pub async fn shutdown(&self) {
        let closing = self
            .inner
            .directory
            .send(CloseAll {
                code: crate::disconnect::close_code::GOING_AWAY,
                reason: "Server shutting down".into(),
            })
            .await
            .unwrap_or(0);
        log::info!("closing {closing} session(s)");
        // Everything acked is durable already; a final flush that hangs (storage gone from
        // under the process) must not keep it from exiting.
        match tokio::time::timeout(FINAL_FLUSH_LIMIT, self.inner.durability.send(FlushAll)).await {
            Ok(Ok(Ok(()))) => log::info!("storage flushed"),
            Ok(Ok(Err(e))) => log::error!("final flush failed: {e}"),
            Ok(Err(e)) => log::error!("final flush not run: {e}"),
            Err(_) => {
                // Its thread is stuck: joining the threads would hang too.
                log::error!("final flush did not finish in {FINAL_FLUSH_LIMIT:?}; exiting");
                return;
            }
        }
        let arbiters = std::mem::take(
            &mut *self
                .inner
                .arbiters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        // Wait for the room threads: they hold storage handles, and the data directory stays
        // locked until the last one is gone.
        for arbiter in arbiters {
            arbiter.stop();
            if arbiter.join().is_err() {
                log::error!("a room thread panicked");
            }
        }
    }
}
