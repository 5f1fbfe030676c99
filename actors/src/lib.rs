//! The actor system of synchub: a Session actor per WebSocket speaking its dialect, a Room
//! actor per room ordering, storing and relaying its changes, the directory that starts rooms,
//! group commit over the disk store, and the cluster bridge over Redis.
//!
//! What it offers outside:
//! - at the root, the hub ([`Hub::start`]) and its settings, who a caller is ([`Identity`],
//!   [`TokenVerifier`]), how rooms are named ([`Namespace`], [`RoomKey`]), what a room is asked
//!   and answers ([`Hub::call`]), and the clock;
//! - [`dialects`]: what a dialect is to the hub (a codec and merge rules), the registry of
//!   the dialects it speaks and what each one describes, and a codec driven without a socket;
//! - [`pocket`], [`synckit`], [`relay`]: the dialects themselves (codec, model, settings);
//! - [`connection`]: what the HTTP layer needs to put a session on a socket;
//! - [`admin`]: what the operator's endpoints ask the hub (census, sessions, rooms, metrics,
//!   the cluster's state);
//! - [`storage`]: the rooms' logs and states as stored, and the data directory's backups,
//!   upgrades and checks;
//! - [`engine`]: a room's state and what rooms send, without the actors around them, for
//!   benchmarks and fuzz targets.
//!
//! Everything else is the crate's own; the README's Architecture section maps its files.

mod clock;
mod cluster;
mod data_check;
mod dialect;
mod dialect_spec;
mod directory;
mod disconnect;
mod durability;
mod headless;
mod hub;
mod identity;
mod limits;
mod mailbox;
mod metrics;
mod model;
mod origin;
mod out_frame;
mod outbound;
mod placement;
pub mod pocket;
mod raw_json;
mod registry;
pub mod relay;
mod room;
mod room_key;
mod section;
mod session;
mod store;
mod sweep;
pub mod synckit;
mod websocket;

#[cfg(test)]
mod proptests;

pub use clock::{now_ms, unix_now};
pub use cluster::{ClusterSettings, Target as RedisTarget};
pub use directory::ConnectionLimits;
pub use hub::{
    CommonSettings, DialectRooms, Hub, HubError, HubSettings, RoomThreads, SessionSettings,
};
pub use identity::{AuthError, Identity, Permissions, TokenVerifier};
pub use room::{RoomError, RoomReply, RoomRequest, RoomStatus};
pub use room_key::{Namespace, RoomKey};

/// What a dialect is to the hub and how the hub knows its dialects: the codec seam ([`Dialect`])
/// and the merge rules ([`Model`]), the registry of the dialects it speaks and what each one
/// describes of itself (its rooms, its configuration section, its socket, how an operator
/// publishes into it), and a codec driven by one message without a socket.
///
/// [`Dialect`]: dialects::Dialect
/// [`Model`]: dialects::Model
pub mod dialects {
    pub use crate::dialect::{Action, Dialect, Env, Frame};
    pub use crate::dialect_spec::{
        AuthRefusal, DEFAULT_ROOM, DialectSpec, Publishing, RoomParam, WebSocketRoute,
    };
    pub use crate::headless::{
        Closed, Outcome, Written, binary, drive, rate_limited, text_or_binary,
    };
    pub use crate::model::{IncomingChange, Merge, Model, RowRules};
    pub use crate::registry::{DIALECTS, default_sections, find, models, rooms};
    pub use crate::section::{AnySection, Bound, DialectSections, Section, SectionSpec};
}

/// What the HTTP layer needs to put a session on a socket: the socket itself, the queue that
/// counts what waits for it, the limits checked before the upgrade, and the close codes.
pub mod connection {
    pub use crate::disconnect::close_code;
    pub use crate::limits::{IpSlot, IpSlots, Limit, TokenBucket};
    pub use crate::outbound::{ConnSocket, Outbound};
    pub use crate::session::Upgrade;
    pub use crate::websocket::{Connection, Io, refuse};
}

/// What the operator's endpoints ask the hub: the census, the sessions (and closing one), the
/// rooms' statuses, the metrics, and the cluster's state and history.
pub mod admin {
    pub use crate::cluster::bridge::GetBridgeStatus;
    pub use crate::cluster::peers::HistoryResponse;
    pub use crate::directory::{
        Census, CloseSessionById, GetCensus, GetRoomStatus, ListSessions, LiveRoomStatuses,
        SessionSummary,
    };
    pub use crate::metrics::{ActorKind, Metrics};
    pub use crate::room::ClusterLink;
}

/// The rooms' logs and states as stored, on disk or in memory, and the data directory's
/// backups, format upgrades and checks.
pub mod storage {
    pub use crate::data_check::{RoomCheck, check_rooms, stamp_with};
    pub use crate::store::{
        BackupError, BackupReport, DEFAULT_CACHE_BYTES, FjallKv, Kv, KvBatch, LogEntry,
        MigrateReport, RoomImage, RoomLayout, SledKv, StorageError, Store, check_backup, migrate,
    };
}

/// A room's state and what rooms send, without the actors around them: what a benchmark or a
/// fuzz target drives directly, with a dialect's codec and model.
pub mod engine {
    pub use crate::origin::{NodeId, Origin, SessionId};
    pub use crate::raw_json::RawJson;
    pub use crate::room::{
        Broadcast, Fetched, OpenBatch, RoomEvent, RoomState, StreamPage, Submitted,
    };
}
