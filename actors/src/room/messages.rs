//! The messages rooms exchange with sessions, the directory and the HTTP layer.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::mailbox::{CountedRecipient, counted_actor};
use crate::metrics::ActorKind;
use crate::model::IncomingChange;
use crate::origin::SessionId;
use crate::out_frame::OutFrame;
use crate::outbound::Outbound;
use crate::room_key::RoomKey;
use crate::store::{CompactReport, HistoryPage, LogEntry, RoomMeta};

/// Which streams of a room a session follows.
#[derive(Debug, Clone)]
pub enum Streams {
    All,
    Some(HashSet<String>),
}

impl Streams {
    pub fn covers(&self, stream: &str) -> bool {
        match self {
            Streams::All => true,
            Streams::Some(set) => set.contains(stream),
        }
    }
}

/// A command for a room, as every dialect's codec produces them.
#[derive(Debug, Clone)]
pub enum RoomRequest {
    /// Merge these changes, in order; the answer comes once the accepted ones are durable.
    Submit {
        changes: Vec<IncomingChange>,
    },
    /// Read the log of some streams after a position; optionally follow them from now on.
    /// With `latest_only`, only entries that are still their record's current value.
    Fetch {
        streams: Vec<(String, u64)>,
        limit: usize,
        subscribe: bool,
        latest_only: bool,
    },
    /// Every state record and the model's room-wide value, once all writes so far are durable.
    Snapshot,
    Subscribe {
        streams: Vec<String>,
    },
    Compact,
    Status,
    /// The durable history after `after`, up to `upto`, for a peer catching up.
    History {
        after: u64,
        upto: u64,
        limit: usize,
    },
}

#[derive(Debug, Clone)]
pub enum RoomReply {
    Submitted(Submitted),
    Fetched(Fetched),
    Compacted(CompactReport),
    Status(RoomStatus),
    Snapshot(Snapshot),
    History(HistoryPage),
    Done,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `(stream, key, value)` of every state record.
    pub records: Vec<(String, String, Arc<Value>)>,
    pub model: Value,
    pub seq: u64,
}

/// The answer to a submit, given once the accepted changes are durable.
#[derive(Debug, Clone, Default)]
pub struct Submitted {
    /// How many of the changes were accepted (logged).
    pub accepted: usize,
    /// What the model said of the changes that lost.
    pub rejected: Vec<Value>,
    /// For each stream the submit touched, its last sequence number before the submit.
    pub heads_before: HashMap<String, u64>,
    /// The room's sequence number after the submit.
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct StreamPage {
    pub stream: String,
    pub entries: Vec<LogEntry>,
    pub more: bool,
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub pages: Vec<StreamPage>,
    /// The room's durable sequence number when the fetch ran.
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomStatus {
    pub namespace: String,
    pub room: String,
    pub seq: u64,
    pub durable_seq: u64,
    pub digest: String,
    pub sessions: usize,
    pub records: u64,
    pub log_len: u64,
    /// Answers waiting for a flush.
    pub pending: usize,
    pub live: bool,
    /// Milliseconds since the room last served a client (a write, a read, a join or a leave);
    /// `None` for a room at rest.
    pub idle_ms: Option<u64>,
    /// Changes a second since the room's status was last read (over at least a second); `None`
    /// for a room at rest.
    pub writes_per_s: Option<f64>,
    /// In a cluster: how the room stands with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Caught up with the cluster since the room started (it takes writes).
    pub ready: bool,
    /// Batches numbered and received but not applied yet (waiting for a gap to close).
    pub waiting_batches: usize,
}

impl RoomStatus {
    /// The status of a room that is on disk but has no actor running.
    pub fn at_rest(key: &RoomKey, meta: &RoomMeta) -> RoomStatus {
        RoomStatus {
            namespace: key.namespace.to_string(),
            room: key.room.clone(),
            seq: meta.seq,
            durable_seq: meta.seq,
            digest: meta.digest.to_hex(),
            sessions: 0,
            records: meta.records,
            log_len: meta.log_len,
            pending: 0,
            live: false,
            idle_ms: None,
            writes_per_s: None,
            replica: None,
        }
    }
}

/// Durable changes, sent to the room's members. One value is shared by every member; each
/// session's codec decides what of it its client sees (its subscriptions, whether the origin
/// hears its own change).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RoomEvent(pub Arc<Broadcast>);

impl Deref for RoomEvent {
    type Target = Broadcast;

    fn deref(&self) -> &Broadcast {
        &self.0
    }
}

#[derive(Debug)]
pub struct Broadcast {
    pub room: RoomKey,
    /// In sequence order; possibly from several senders.
    pub entries: Vec<LogEntry>,
    /// For each stream in `entries`, its last sequence number before them.
    pub heads_before: HashMap<String, u64>,
    frames: Mutex<Vec<(u64, Arc<[OutFrame]>)>>,
    bytes: usize,
}

impl Broadcast {
    pub fn new(room: RoomKey, entries: Vec<LogEntry>, heads_before: HashMap<String, u64>) -> Self {
        let bytes = entries
            .iter()
            .map(|e| e.body.as_str().len() + e.key.len() + ENTRY_OVERHEAD)
            .sum::<usize>()
            + room.room.len();
        Broadcast {
            room,
            entries,
            heads_before,
            frames: Mutex::new(Vec::new()),
            bytes,
        }
    }

    /// About what this broadcast takes on one session's socket, counted against that session's
    /// `limits.max_outbound_bytes` while it waits: computed once, the same for every member.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The frames of one wire encoding of this broadcast (`variant`, chosen by the codec),
    /// encoded by the first session that needs them and shared by every other: a broadcast costs
    /// one serialisation per encoding, not one per recipient.
    pub fn shared_frames(
        &self,
        variant: u64,
        encode: impl FnOnce() -> Vec<OutFrame>,
    ) -> Arc<[OutFrame]> {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = frames.iter().find(|(v, _)| *v == variant) {
            return f.clone();
        }
        let encoded: Arc<[OutFrame]> = encode().into();
        frames.push((variant, encoded.clone()));
        encoded
    }
}

/// What a broadcast entry adds on the wire beyond its body and key (field names, numbers,
/// framing), as the dialects encode it.
const ENTRY_OVERHEAD: usize = 48;

/// A session enters the room to receive its events; answers the room's durable sequence number.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Join {
    pub session: SessionId,
    pub events: CountedRecipient<RoomEvent>,
    pub streams: Streams,
    /// What the session has queued for its socket; the room evicts the session (and the
    /// session then closes) when a broadcast would take it over its limit.
    pub outbound: Arc<Outbound>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
}

// What the room kind is sent from outside comes in counted envelopes (`crate::mailbox`).
counted_actor!(super::Room, ActorKind::Room);

/// Tells the directory a room actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomStopped {
    pub key: RoomKey,
}
