//! The node's storage: every room's change log and materialised state, over a [`Kv`].
//!
//! All rooms share one keyspace, keyed by prefix (one fjall partition: see `lsm.rs` for why
//! fjall). Layout (format 3; format 2 was the same layout in sled, format 1 an older one in
//! sled, and both are upgraded by [`migrate`]):
//!
//! | key | value |
//! |---|---|
//! | `m` room | [`RoomMeta`] as JSON |
//! | `l` room NUL stream NUL seq(be) | a log segment: entries of one commit for one stream, from `seq` on (at most about [`SEGMENT_BYTES`]) |
//! | `s` room NUL stream NUL key | a state record: seq (u64 be), digest hash (16 bytes), JSON |
//! | `n` name | node-level values (node id, format) |
//!
//! A segment entry is its seq (u64 be), its record key and its JSON body, each with a u32 length.
//! Writing segments, not one key per change, is what lets a busy room commit hundreds of small
//! changes for the price of a few keys.
//!
//! The log is the truth: a room loads by replaying it, and the state of a record is what its
//! latest entry says, unless a state record with a number at least as high says otherwise (a
//! record whose last change compaction retired, or a room upgraded from format 1).
//!
//! Compaction keeps the latest entry per record and drops the rest; where it
//! drops a latest entry too (a tombstone whose retention ended), it keeps the record's state as
//! a state record. Every commit (segments and meta) is one atomic batch, so a crash never leaves
//! half of it behind. Writes become durable only once a flush covers them; see
//! [`crate::durability`].

mod backup;
mod digest;
mod free_space;
mod health;
mod idle;
mod kv;
mod lsm;
mod memory;
mod migrate;
mod sled_dir;
mod turns;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use backup::{BackupError, BackupReport, check_backup};
pub use digest::{Digest, state_hash};
pub use health::StorageHealth;
pub use kv::{Kv, KvBatch, Visit, prefix_end};
pub use lsm::FjallKv;
pub use memory::MemoryKv;
pub use migrate::{MigrateReport, format_of, is_upgradable, migrate};
pub use sled_dir::SledKv;

use self::turns::Turns;
use crate::origin::Origin;
use crate::placement::cores;
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;

/// The layout this version writes and reads.
const FORMAT: &str = "3";

/// The page cache a store opened without a size gets: `storage.cache_bytes`'s default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How large a log segment grows before the next entry starts another. Small values keep what a
/// compaction step rewrites small; the bound was chosen for sled, which stored a value over a
/// quarter of its own log segment as a file of its own that it reclaimed late, and keeps
/// fjall's blocks (4 KiB) to one or two per value.
pub const SEGMENT_BYTES: usize = 6 << 10;

/// How many bytes of log one compaction step reads and rewrites in one atomic batch: what a
/// compaction holds in memory at once, whatever the length of the log.
const COMPACT_STEP_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Lsm(#[from] fjall::Error),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// Only from reading a data directory of format 1 or 2.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage holds a corrupt record at {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "the data directory holds storage format {found}, this synchub reads format {FORMAT} \
         (formats 1 and 2 are upgraded by `synchub migrate` or when the hub starts)"
    )]
    Format { found: String },
    #[error("{path} is in use by another process ({why}): one hub per data directory")]
    InUse {
        path: std::path::PathBuf,
        why: std::io::Error,
    },
    #[error("storage is being reopened after a failure")]
    Reopening,
}

impl StorageError {
    /// What an operator is told: "disk full" when the disk has no room left, else the error.
    pub fn cause(&self) -> String {
        let is_full = |io: &std::io::Error| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        };
        let full = match self {
            StorageError::Io(io)
            | StorageError::Lsm(fjall::Error::Io(io))
            | StorageError::Sled(sled::Error::Io(io)) => is_full(io),
            _ => false,
        };
        // The stores wrap some IO errors in their own types or text: look at the words too.
        if full || self.to_string().contains("No space left on device") {
            "disk full".into()
        } else {
            self.to_string()
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Per-room counters, written together with every batch of changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    /// The room's sequence number: that of its last accepted change.
    pub seq: u64,
    /// XOR of the hashes of every state record; see [`state_hash`].
    pub digest: Digest,
    /// Number of state records (documents, fields, cells).
    pub records: u64,
    /// Number of entries in the change log (shrinks on compaction).
    pub log_len: u64,
    /// The model's room-wide value (a SyncKit document's clock); part of the digest.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub model: Value,
    /// Per stream, the sequence number of its last change.
    #[serde(default)]
    pub heads: BTreeMap<String, u64>,
}

impl RoomMeta {
    pub fn head(&self, stream: &str) -> u64 {
        self.heads.get(stream).copied().unwrap_or(0)
    }
}

/// One entry of a room's change log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub seq: u64,
    /// The sub-stream the change belongs to (a Pocket collection; empty where a dialect has none).
    pub stream: String,
    /// The state record the change wrote (a document id, a field, a cell).
    pub key: String,
    /// The change as the dialect sends it to clients.
    pub body: RawJson,
    /// Who sent it; `None` for entries read back from storage.
    pub origin: Option<Origin>,
}

impl LogEntry {
    /// An entry as a segment holds it: the hub's own JSON text, no origin.
    fn stored(seq: u64, stream: String, key: &str, body: &str) -> LogEntry {
        LogEntry {
            seq,
            stream,
            key: key.to_owned(),
            body: RawJson::trusted(body.to_owned()),
            origin: None,
        }
    }
}

/// The current value of one state record, the change that wrote it, and its digest hash.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub seq: u64,
    pub hash: Digest,
    pub value: Value,
    /// Bytes of the JSON text `hash` was taken of, as stored: what the record weighs.
    pub json_len: usize,
}

/// A record's new state as a commit writes it (under the record's state key); `json` is the
/// text `hash` was taken of.
#[derive(Debug, Clone, Copy)]
pub struct StateWrite<'a> {
    pub seq: u64,
    pub hash: Digest,
    pub json: &'a str,
}

/// The state of a record whose last log entry compaction takes out: it is kept as a state
/// record instead.
#[derive(Debug, Clone)]
pub struct Retired {
    pub hash: Digest,
    pub json: String,
}

/// A room as storage holds it.
#[derive(Debug, Default)]
pub struct RoomImage {
    pub meta: RoomMeta,
    /// `(stream, key, record)` of the records compaction took out of the log.
    pub records: Vec<(String, String, StateRecord)>,
    /// The log, in sequence order per stream: what to replay over `records`.
    pub log: Vec<LogEntry>,
}

/// A slice of a room's durable history, as a node that lacks it replays it: the log entries
/// with `after < seq <= upto` in sequence order, and the state records kept outside the log in
/// that range.
#[derive(Debug, Default, Clone)]
pub struct HistoryPage {
    pub entries: Vec<LogEntry>,
    pub records: Vec<(String, String, StateRecord)>,
    pub upto: u64,
    /// Whether the history goes on past `upto`.
    pub more: bool,
}

/// What one compaction removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub removed: u64,
    pub kept: u64,
    /// Bytes of the removed entries' bodies and keys.
    pub removed_bytes: u64,
}

pub use self::turns::Turn;

/// The keys of one room, built once per room rather than per change.
#[derive(Debug, Clone)]
pub struct RoomLayout {
    meta: Vec<u8>,
    /// `l` room NUL
    log: Vec<u8>,
    /// `s` room NUL
    state: Vec<u8>,
}

impl RoomLayout {
    pub fn new(room: &RoomKey) -> RoomLayout {
        let name = room.to_string();
        let tagged = |tag: u8, nul: bool| {
            let mut k = Vec::with_capacity(name.len() + 2);
            k.push(tag);
            k.extend_from_slice(name.as_bytes());
            if nul {
                k.push(0);
            }
            k
        };
        RoomLayout {
            meta: tagged(b'm', false),
            log: tagged(b'l', true),
            state: tagged(b's', true),
        }
    }

    fn stream_prefix(base: &[u8], stream: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(base.len() + stream.len() + 17);
        k.extend_from_slice(base);
        k.extend_from_slice(stream.as_bytes());
        k.push(0);
        k
    }

    fn log_key(&self, stream: &str, seq: u64) -> Vec<u8> {
        let mut k = RoomLayout::stream_prefix(&self.log, stream);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn state_key(&self, stream: &str, key: &str) -> Vec<u8> {
        let mut k = RoomLayout::stream_prefix(&self.state, stream);
        k.extend_from_slice(key.as_bytes());
        k
    }
}

/// The time, as the value of the probe write a recovery makes.
fn now_bytes() -> Vec<u8> {
    crate::clock::now_ms().to_be_bytes().to_vec()
}

fn corrupt(key: &[u8], why: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: why.to_string(),
    }
}

fn text(key: &[u8], bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(key, e))
}

/// Appends one entry to a segment.
fn push_entry(segment: &mut Vec<u8>, e: &LogEntry) {
    let body = e.body.as_str();
    segment.extend_from_slice(&e.seq.to_be_bytes());
    segment.extend_from_slice(&(e.key.len() as u32).to_be_bytes());
    segment.extend_from_slice(e.key.as_bytes());
    segment.extend_from_slice(&(body.len() as u32).to_be_bytes());
    segment.extend_from_slice(body.as_bytes());
}

/// Reads a segment's entries in order until `visit` stops.
fn read_segment(
    k: &[u8],
    mut raw: &[u8],
    visit: &mut dyn FnMut(u64, &str, &str) -> Visit,
) -> Result<ControlFlow<()>> {
    fn take<'a>(k: &[u8], raw: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if raw.len() < n {
            return Err(corrupt(k, "log segment cut short"));
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Ok(head)
    }
    fn len(k: &[u8], raw: &mut &[u8]) -> Result<usize> {
        let mut b = [0u8; 4];
        b.copy_from_slice(take(k, raw, 4)?);
        Ok(u32::from_be_bytes(b) as usize)
    }
    fn utf8<'a>(k: &[u8], b: &'a [u8]) -> Result<&'a str> {
        std::str::from_utf8(b).map_err(|e| corrupt(k, e))
    }
    while !raw.is_empty() {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(take(k, &mut raw, 8)?);
        let n = len(k, &mut raw)?;
        let key = utf8(k, take(k, &mut raw, n)?)?;
        let n = len(k, &mut raw)?;
        let body = utf8(k, take(k, &mut raw, n)?)?;
        if visit(u64::from_be_bytes(seq), key, body)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The entries of one stream as segments of about [`SEGMENT_BYTES`] at most (an entry larger
/// than that has one of its own), each keyed by its first seq, or by `first_key` for the first
/// one (compaction keeps a rewritten segment under the key it had).
fn segments<'a>(
    layout: &RoomLayout,
    stream: &str,
    entries: impl Iterator<Item = &'a LogEntry>,
    first_key: Option<u64>,
    batch: &mut KvBatch,
) {
    let mut key_of_next = first_key;
    let mut current: Option<(u64, Vec<u8>)> = None;
    for e in entries {
        let (_, segment) =
            current.get_or_insert_with(|| (key_of_next.take().unwrap_or(e.seq), Vec::new()));
        push_entry(segment, e);
        if segment.len() >= SEGMENT_BYTES
            && let Some((first, segment)) = current.take()
        {
            batch.insert(layout.log_key(stream, first), segment);
        }
    }
    if let Some((first, segment)) = current {
        batch.insert(layout.log_key(stream, first), segment);
    }
}

fn encode_state(w: &StateWrite<'_>) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + w.json.len());
    v.extend_from_slice(&w.seq.to_be_bytes());
    v.extend_from_slice(&w.hash.0);
    v.extend_from_slice(w.json.as_bytes());
    v
}

fn decode_state(k: &[u8], raw: &[u8]) -> Result<StateRecord> {
    if raw.len() < 24 {
        return Err(corrupt(k, "short state record"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&raw[..8]);
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&raw[8..24]);
    Ok(StateRecord {
        seq: u64::from_be_bytes(seq),
        hash: Digest(hash),
        value: serde_json::from_slice(&raw[24..]).map_err(|e| corrupt(k, e))?,
        json_len: raw.len() - 24,
    })
}

fn node_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'n'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// How much one read of a stream may return: a page ends before the entry that would pass
/// either bound, so what a reply holds stays near a frame whatever its entries weigh.
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub entries: usize,
    /// Bytes of the entries' keys and bodies, as stored.
    pub bytes: usize,
    /// Take the first entry even when it alone passes `bytes`: a reader must get on.
    pub at_least_one: bool,
}

impl PageLimit {
    /// By count only.
    pub fn entries(entries: usize) -> PageLimit {
        PageLimit {
            entries,
            bytes: usize::MAX,
            at_least_one: true,
        }
    }
}

/// The node's storage. Cheap to clone; every clone shares the same database.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
    health: Arc<StorageHealth>,
    /// Compactions hold it shared; a backup holds it alone, so no compaction drops an entry
    /// the backup has yet to read.
    gate: Arc<std::sync::RwLock<()>>,
    /// Turns to compact a room's log: see [`Store::compaction_turn`].
    compactions: Turns,
    /// Turns to load a room: see [`Store::load_turn`].
    loads: Turns,
}

/// How many room logs are compacted at once: half the cores, at least one. A compaction reads
/// its room's whole log and rewrites most of it, on the blocking pool; rooms written at about
/// the same rate reach their thresholds together, and 200 such rooms once put 68 compactions on
/// two cores at the same moment, which starved the durability thread and the sockets for over a
/// second (the README's "Many rooms compacting at once").
fn compaction_turns() -> usize {
    (cores() / 2).max(1)
}

/// How many rooms load at once: twice the cores, since a load both reads (the disk, when the
/// cache is cold) and replays (a core). After a restart every room whose clients come back
/// loads within the same second; all at once, 200 rooms took the hub from 13 to 187 threads and
/// their clients waited half as long again for their rooms (the README's "A restart under
/// load").
fn load_turns() -> usize {
    cores() * 2
}

impl Store {
    /// Opens (or creates) the store in `path`; refuses a directory of another format.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of at most `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Store> {
        if SledKv::is_at(path) {
            // Opened only to tell format 1 from 2, never written to.
            let found = migrate::format_of_sled(&SledKv::open(path, cache_bytes)?)?;
            return Err(StorageError::Format { found });
        }
        let store = Store::over(Arc::new(FjallKv::open(path, cache_bytes)?));
        store.check_format()?;
        Ok(store)
    }

    /// A store that keeps everything in memory (tests, benchmarks).
    pub fn memory() -> Store {
        Store::over(Arc::new(MemoryKv::default()))
    }

    pub fn over(kv: Arc<dyn Kv>) -> Store {
        Store {
            kv,
            health: Arc::default(),
            gate: Arc::default(),
            compactions: Turns::new(compaction_turns()),
            loads: Turns::new(load_turns()),
        }
    }

    /// Resolves once a room may compact its log, with the turn to hold until it is done.
    /// Other work on the blocking pool (loads, backups) does not wait for it.
    pub fn compaction_turn(&self) -> impl std::future::Future<Output = Turn> + Send + 'static {
        self.compactions.take()
    }

    /// Resolves once a room may load (or reload) its log, with the turn to hold until it is
    /// done. Compactions and backups do not wait for it, nor it for them.
    pub fn load_turn(&self) -> impl std::future::Future<Output = Turn> + Send + 'static {
        self.loads.take()
    }

    /// Gives back what the store grew during a flood once nothing has used it for `idle`:
    /// waits for no one (a backup or a compaction under way means it is not idle). Answers
    /// whether it did. Blocks: call it off the actors' threads.
    pub fn release_if_idle(&self, idle: std::time::Duration) -> Result<bool> {
        let Ok(_alone) = self.gate.try_write() else {
            return Ok(false);
        };
        if !self.health.ok() {
            return Ok(false);
        }
        self.kv.release_if_idle(idle)
    }

    /// Whether the store takes writes, and why not.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// After a failed write or flush: reopens the database as the last flush left it and
    /// checks that a write and a flush go through again; only then does [`Store::health`] say
    /// so. Blocks: call it off the actors' threads.
    pub fn recover(&self) -> Result<()> {
        self.kv.recover()?;
        self.health.reopened();
        let mut probe = KvBatch::default();
        probe.insert(node_key("probe"), now_bytes());
        self.kv.apply(probe)?;
        self.kv.flush()?;
        self.health.recovered();
        Ok(())
    }

    fn check_format(&self) -> Result<()> {
        match format_of(self.kv.as_ref())? {
            Some(f) if f == FORMAT => Ok(()),
            Some(found) => Err(StorageError::Format { found }),
            None => self.set_node_value("format", FORMAT),
        }
    }

    /// The room's counters; `None` for a room this node has never stored.
    pub fn room_meta(&self, layout: &RoomLayout) -> Result<Option<RoomMeta>> {
        match self.kv.get(&layout.meta)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| corrupt(&layout.meta, e)),
        }
    }

    /// Everything a room needs to serve: its counters, its state records and its log.
    pub fn load_room(&self, layout: &RoomLayout) -> Result<RoomImage> {
        let meta = self.room_meta(layout)?.unwrap_or_default();
        let mut records = Vec::with_capacity(meta.records as usize);
        let prefix = &layout.state;
        self.kv.scan(prefix, &prefix_end(prefix), &mut |k, raw| {
            let rest = &k[prefix.len()..];
            let sep = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt(k, "state key without stream"))?;
            let stream = text(k, &rest[..sep])?;
            let key = text(k, &rest[sep + 1..])?;
            records.push((stream, key, decode_state(k, raw)?));
            Ok(ControlFlow::Continue(()))
        })?;
        let mut log = Vec::with_capacity(meta.log_len as usize);
        for stream in meta.heads.keys() {
            let (entries, _) = self.stream_entries(
                layout,
                stream,
                0,
                u64::MAX,
                PageLimit::entries(usize::MAX),
                &mut |_, _| true,
            )?;
            log.extend(entries);
        }
        Ok(RoomImage { meta, records, log })
    }

    /// The writes of one commit: its entries as one log segment per stream, and the room's
    /// counters. Applied atomically by [`Store::apply`]. Pure encoding: a room builds it on its
    /// own thread.
    pub fn commit_batch(
        layout: &RoomLayout,
        meta: &RoomMeta,
        entries: &[LogEntry],
    ) -> Result<KvBatch> {
        let mut b = KvBatch::default();
        let mut streams: Vec<&str> = entries.iter().map(|e| e.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        for stream in streams {
            let of_stream = entries.iter().filter(|e| e.stream == stream);
            segments(layout, stream, of_stream, None, &mut b);
        }
        let raw_meta = serde_json::to_vec(meta).map_err(|e| corrupt(&layout.meta, e))?;
        b.insert(layout.meta.clone(), raw_meta);
        Ok(b)
    }

    pub fn apply(&self, batch: KvBatch) -> Result<()> {
        self.kv.apply(batch)
    }

    /// Makes every write applied so far durable. Blocks: call it off the actors' threads.
    pub fn flush(&self) -> Result<()> {
        self.kv.flush()
    }

    /// Log entries of one stream with `after < seq <= upto`, in order, within `limit`, skipping
    /// those `keep(key, seq)` refuses; the flag tells whether more such entries exist.
    pub fn stream_entries(
        &self,
        layout: &RoomLayout,
        stream: &str,
        after: u64,
        upto: u64,
        limit: PageLimit,
        keep: &mut dyn FnMut(&str, u64) -> bool,
    ) -> Result<(Vec<LogEntry>, bool)> {
        let mut out = Vec::new();
        let mut more = false;
        let mut bytes = 0usize;
        if after >= upto {
            return Ok((out, more));
        }
        let prefix = RoomLayout::stream_prefix(&layout.log, stream);
        let end = prefix_end(&prefix);
        // The segment holding `after + 1` starts at or before it: the last one keyed up to it.
        let first_wanted = after + 1;
        let bound = match first_wanted.checked_add(1) {
            Some(next) => layout.log_key(stream, next),
            None => end.clone(),
        };
        let start = match self.kv.last_key(&prefix, &bound)? {
            Some(k) => k,
            None => layout.log_key(stream, first_wanted),
        };
        self.kv.scan(&start, &end, &mut |k, raw| {
            read_segment(k, raw, &mut |seq, key, body| {
                if seq <= after {
                    return Ok(ControlFlow::Continue(()));
                }
                if seq > upto {
                    return Ok(ControlFlow::Break(()));
                }
                if !keep(key, seq) {
                    return Ok(ControlFlow::Continue(()));
                }
                let size = key.len() + body.len();
                let over_bytes = bytes.saturating_add(size) > limit.bytes
                    && !(out.is_empty() && limit.at_least_one);
                if out.len() == limit.entries || over_bytes {
                    more = true;
                    return Ok(ControlFlow::Break(()));
                }
                bytes += size;
                out.push(LogEntry::stored(seq, stream.to_owned(), key, body));
                Ok(ControlFlow::Continue(()))
            })
        })?;
        Ok((out, more))
    }

    /// Drops from a room's log every entry up to `upto` that is not its record's latest. Where
    /// `retire` says a latest entry's time is up (it returns the record's state, as JSON with
    /// its hash), that entry goes too and the state is kept as a state record. The room's state
    /// and digest do not change.
    ///
    /// It works in steps of about `COMPACT_STEP_BYTES` (1 MiB): each rewrites some segments in place
    /// (under the keys they had, so every segment still holds entries from its key's sequence
    /// number up to the next segment's) in one atomic batch, so it never holds more than a step
    /// and the records' latest sequence numbers in memory. Any prefix of the steps is a valid
    /// log, so a crash in the middle loses nothing. Commits may go on meanwhile: they only add
    /// segments after `upto`, which compaction leaves alone, and an entry superseded after the
    /// first pass is merely kept.
    pub fn compact(
        &self,
        layout: &RoomLayout,
        upto: u64,
        retire: &mut dyn FnMut(&str, &str, &str) -> Option<Retired>,
    ) -> Result<CompactReport> {
        let _no_backup = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let prefix = &layout.log;
        let end = prefix_end(prefix);
        let split = |k: &[u8]| -> Result<(String, u64)> {
            let rest = k
                .get(prefix.len()..k.len().saturating_sub(9))
                .ok_or_else(|| corrupt(k, "short log key"))?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[k.len() - 8..]);
            Ok((text(k, rest)?, u64::from_be_bytes(seq)))
        };
        // The latest entry of every record, as of `upto`.
        let mut latest: HashMap<String, HashMap<String, u64>> = HashMap::new();
        self.kv.scan(prefix, &end, &mut |k, raw| {
            let (stream, first) = split(k)?;
            if first > upto {
                return Ok(ControlFlow::Continue(()));
            }
            let of_stream = latest.entry(stream).or_default();
            read_segment(k, raw, &mut |seq, key, _| {
                if seq <= upto {
                    match of_stream.get_mut(key) {
                        Some(at) => *at = (*at).max(seq),
                        None => {
                            of_stream.insert(key.to_owned(), seq);
                        }
                    }
                }
                Ok(ControlFlow::Continue(()))
            })
        })?;
        let mut report = CompactReport::default();
        let mut from = prefix.clone();
        loop {
            let mut batch = KvBatch::default();
            let mut step_bytes = 0;
            let mut next = None;
            self.kv.scan(&from, &end, &mut |k, raw| {
                if step_bytes >= COMPACT_STEP_BYTES {
                    next = Some(k.to_vec());
                    return Ok(ControlFlow::Break(()));
                }
                step_bytes += raw.len();
                let (stream, first) = split(k)?;
                if first > upto {
                    return Ok(ControlFlow::Continue(()));
                }
                let of_stream = latest.get(&stream);
                let mut kept = Vec::new();
                let mut dropped = 0;
                // The visit never stops early: every entry is looked at.
                let _ = read_segment(k, raw, &mut |seq, key, body| {
                    let is_latest = of_stream.and_then(|l| l.get(key)) == Some(&seq);
                    if seq > upto {
                        kept.push(LogEntry::stored(seq, stream.clone(), key, body));
                    } else if !is_latest {
                        dropped += 1;
                        report.removed_bytes += (key.len() + body.len()) as u64;
                    } else if let Some(Retired { hash, json }) = retire(&stream, key, body) {
                        let w = StateWrite {
                            seq,
                            hash,
                            json: &json,
                        };
                        batch.insert(layout.state_key(&stream, key), encode_state(&w));
                        dropped += 1;
                        report.removed_bytes += (key.len() + body.len()) as u64;
                    } else {
                        kept.push(LogEntry::stored(seq, stream.clone(), key, body));
                    }
                    Ok(ControlFlow::Continue(()))
                })?;
                report.removed += dropped;
                report.kept += kept.len() as u64;
                if dropped > 0 && kept.is_empty() {
                    batch.remove(k.to_vec());
                } else if dropped > 0 {
                    segments(layout, &stream, kept.iter(), Some(first), &mut batch);
                }
                Ok(ControlFlow::Continue(()))
            })?;
            if !batch.is_empty() {
                self.kv.apply(batch)?;
            }
            match next {
                Some(k) => from = k,
                None => return Ok(report),
            }
        }
    }

    /// Every room this node stores, with the sequence number it stored last.
    pub fn rooms(&self) -> Result<Vec<(RoomKey, u64)>> {
        let mut out = Vec::new();
        self.kv.scan(b"m", b"n", &mut |k, raw| {
            let name = std::str::from_utf8(&k[1..]).map_err(|e| corrupt(k, e))?;
            let meta: RoomMeta = serde_json::from_slice(raw).map_err(|e| corrupt(k, e))?;
            match RoomKey::parse(name) {
                Some(room) => out.push((room, meta.seq)),
                None => log::warn!("storage holds a room with an invalid name: {name:?}"),
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// A room's durable history after `after`, up to `upto`, at most about `limit` entries.
    pub fn history(
        &self,
        layout: &RoomLayout,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<HistoryPage> {
        let Some(meta) = self.room_meta(layout)? else {
            return Ok(HistoryPage::default());
        };
        let upto = upto.min(meta.seq);
        let mut entries = Vec::new();
        for stream in meta.heads.keys() {
            let (page, _) = self.stream_entries(
                layout,
                stream,
                after,
                upto,
                PageLimit::entries(limit),
                &mut |_, _| true,
            )?;
            entries.extend(page);
        }
        entries.sort_by_key(|e| e.seq);
        let (upto, more) = if entries.len() > limit {
            entries.truncate(limit);
            (entries.last().map_or(upto, |e| e.seq), true)
        } else {
            (upto, false)
        };
        let mut records = Vec::new();
        let prefix = &layout.state;
        self.kv.scan(prefix, &prefix_end(prefix), &mut |k, raw| {
            let record = decode_state(k, raw)?;
            if record.seq > after && record.seq <= upto {
                let rest = &k[prefix.len()..];
                let sep = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| corrupt(k, "state key without stream"))?;
                records.push((text(k, &rest[..sep])?, text(k, &rest[sep + 1..])?, record));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(HistoryPage {
            entries,
            records,
            upto,
            more,
        })
    }

    /// A node-level value, e.g. the generated node id.
    pub fn node_value(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(&node_key(name))?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Stores a node-level value and flushes it: these are written once, at start.
    pub fn set_node_value(&self, name: &str, value: &str) -> Result<()> {
        let mut b = KvBatch::default();
        b.insert(node_key(name), value.as_bytes().to_vec());
        self.kv.apply(b)?;
        self.kv.flush()
    }

    /// Checks that the database answers, for the health endpoint.
    pub fn probe(&self) -> Result<()> {
        self.kv.probe()
    }

    pub fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use serde_json::json;

    /// Takes every turn `take` hands out without waiting, and checks the next one waits.
    fn hold_all<F: std::future::Future<Output = Turn>>(take: impl Fn() -> F) -> Vec<Turn> {
        let mut held = Vec::new();
        while let Some(turn) = take().now_or_never() {
            held.push(turn);
            assert!(held.len() <= 1024, "turns without end");
        }
        held
    }

    #[test]
    fn compactions_and_loads_take_turns_apart_and_clones_share_them() {
        let store = Store::memory();
        let compacting = hold_all(|| store.compaction_turn());
        assert_eq!(compacting.len(), compaction_turns());
        assert!(!compacting.is_empty(), "at least one compaction runs");
        // A load never waits behind compactions, nor a compaction behind loads.
        let loading = hold_all(|| store.load_turn());
        assert_eq!(loading.len(), load_turns());
        assert_eq!(loading.len(), 2 * cores());
        // Every clone of the store is the same node's cores and disk.
        let other = store.clone();
        assert!(other.compaction_turn().now_or_never().is_none());
        assert!(other.load_turn().now_or_never().is_none());
        drop(loading);
        assert!(other.load_turn().now_or_never().is_some());
        assert!(other.compaction_turn().now_or_never().is_none());
    }

    fn layout(name: &str) -> RoomLayout {
        RoomLayout::new(&RoomKey::new(crate::pocket::NAMESPACE, name).expect("valid"))
    }

    fn entry(meta: &mut RoomMeta, stream: &str, key: &str, v: Value) -> LogEntry {
        meta.seq += 1;
        meta.log_len += 1;
        meta.heads.insert(stream.into(), meta.seq);
        LogEntry {
            seq: meta.seq,
            stream: stream.into(),
            key: key.into(),
            body: RawJson::from_value(&v),
            origin: None,
        }
    }

    /// One commit of `(stream, key, value)` writes.
    fn commit(store: &Store, l: &RoomLayout, meta: &mut RoomMeta, writes: &[(&str, &str, Value)]) {
        let entries: Vec<LogEntry> = writes
            .iter()
            .map(|(s, k, v)| entry(meta, s, k, v.clone()))
            .collect();
        let batch = Store::commit_batch(l, meta, &entries).expect("encode");
        store.apply(batch).expect("apply");
    }

    fn everything(_: &str, _: u64) -> bool {
        true
    }

    fn seqs(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn streams_page_in_order_across_segments_and_rooms_do_not_mix() {
        let store = Store::memory();
        let (a, b) = (layout("a"), layout("b"));
        let (mut ma, mut mb) = (RoomMeta::default(), RoomMeta::default());
        // Commits of various sizes: the segments hold 1 to 4 entries per stream.
        for round in 0..4 {
            let writes: Vec<(&str, String, Value)> = (0..=round)
                .flat_map(|i| {
                    [
                        ("todos", format!("d{round}-{i}"), json!(i)),
                        ("notes", "n".to_string(), json!(i)),
                    ]
                })
                .collect();
            let borrowed: Vec<(&str, &str, Value)> = writes
                .iter()
                .map(|(s, k, v)| (*s, k.as_str(), v.clone()))
                .collect();
            commit(&store, &a, &mut ma, &borrowed);
        }
        commit(&store, &b, &mut mb, &[("todos", "x", json!("b"))]);
        let todos: Vec<u64> = (1..=ma.seq).filter(|s| s % 2 == 1).collect();
        let (all, more) = store
            .stream_entries(
                &a,
                "todos",
                0,
                ma.seq,
                PageLimit::entries(100),
                &mut everything,
            )
            .expect("scan");
        assert_eq!((seqs(&all), more), (todos.clone(), false));
        assert_eq!(all[0].key, "d0-0");
        assert_eq!(all[0].body, RawJson::from_value(&json!(0)));
        // Every starting point and page size gives the same sequence, in pages.
        for after in 0..=ma.seq {
            for limit in [1, 3, 100] {
                let (page, more) = store
                    .stream_entries(
                        &a,
                        "todos",
                        after,
                        ma.seq,
                        PageLimit::entries(limit),
                        &mut everything,
                    )
                    .expect("scan");
                let expected: Vec<u64> = todos.iter().copied().filter(|s| *s > after).collect();
                assert_eq!(
                    seqs(&page),
                    expected[..expected.len().min(limit)],
                    "{after} {limit}"
                );
                assert_eq!(more, expected.len() > limit);
            }
        }
        // `upto` hides entries that are not yet durable; `keep` filters.
        let (capped, more) = store
            .stream_entries(&a, "todos", 0, 4, PageLimit::entries(10), &mut everything)
            .expect("scan");
        assert_eq!((seqs(&capped), more), (vec![1, 3], false));
        let (odd, _) = store
            .stream_entries(
                &a,
                "notes",
                0,
                ma.seq,
                PageLimit::entries(100),
                &mut |_, seq| seq % 4 == 0,
            )
            .expect("scan");
        assert!(odd.iter().all(|e| e.seq % 4 == 0) && !odd.is_empty());
        let (bs, _) = store
            .stream_entries(
                &b,
                "todos",
                0,
                mb.seq,
                PageLimit::entries(10),
                &mut everything,
            )
            .expect("scan");
        assert_eq!(seqs(&bs), [1]);
        assert_eq!(store.room_meta(&a).expect("meta"), Some(ma.clone()));
        assert_eq!(store.room_meta(&layout("never")).expect("meta"), None);
        // Loading hands back the whole log to replay.
        let image = store.load_room(&a).expect("load");
        assert_eq!(image.meta, ma);
        assert!(image.records.is_empty());
        assert_eq!(image.log.len() as u64, ma.seq);
    }

    #[test]
    fn compaction_keeps_the_latest_entry_per_record_and_retires_what_it_is_told() {
        let store = Store::memory();
        let l = layout("c");
        let mut meta = RoomMeta::default();
        for i in 0..4 {
            commit(&store, &l, &mut meta, &[("todos", "same", json!(i))]);
        }
        commit(
            &store,
            &l,
            &mut meta,
            &[
                ("todos", "gone", json!("tombstone")),
                ("notes", "other", json!("x")),
            ],
        );
        let report = store
            .compact(&l, meta.seq, &mut |stream, key, body| {
                (body == r#""tombstone""#).then(|| Retired {
                    hash: state_hash(stream, key, body),
                    json: body.to_owned(),
                })
            })
            .expect("compact");
        assert_eq!(
            report,
            CompactReport {
                removed: 4,
                kept: 2,
                removed_bytes: 3 * ("same".len() + 1) as u64
                    + ("gone".len() + r#""tombstone""#.len()) as u64,
            }
        );
        let (todos, _) = store
            .stream_entries(
                &l,
                "todos",
                0,
                meta.seq,
                PageLimit::entries(100),
                &mut everything,
            )
            .expect("scan");
        assert_eq!(seqs(&todos), [4]);
        let (notes, _) = store
            .stream_entries(
                &l,
                "notes",
                0,
                meta.seq,
                PageLimit::entries(100),
                &mut everything,
            )
            .expect("scan");
        assert_eq!(seqs(&notes), [6]);
        // The retired tombstone comes back as a state record; the rest from the log.
        let image = store.load_room(&l).expect("load");
        assert_eq!(image.records.len(), 1);
        assert_eq!(image.records[0].1, "gone");
        assert_eq!(image.records[0].2.value, json!("tombstone"));
        assert_eq!(seqs(&image.log), [6, 4]);
        // Compacting a compact log changes nothing.
        let again = store
            .compact(&l, meta.seq, &mut |_, _, _| None)
            .expect("compact");
        assert_eq!(
            again,
            CompactReport {
                removed: 0,
                kept: 2,
                removed_bytes: 0,
            }
        );
    }

    #[test]
    fn compaction_leaves_what_came_after_it_and_works_in_steps() {
        let store = Store::memory();
        let l = layout("steps");
        let mut meta = RoomMeta::default();
        // Enough bytes for several steps: 40 commits of 40 changes of ~1 KB over 10 records.
        let pad = "p".repeat(1000);
        for round in 0..40 {
            let writes: Vec<(&str, String, Value)> = (0..40)
                .map(|i| ("todos", format!("k{}", i % 10), json!([round, i, pad])))
                .collect();
            let writes: Vec<(&str, &str, Value)> = writes
                .iter()
                .map(|(s, k, v)| (*s, k.as_str(), v.clone()))
                .collect();
            commit(&store, &l, &mut meta, &writes);
        }
        let upto = meta.seq;
        // A commit after the compaction's `upto` supersedes k0 again: it stays, and so does the
        // entry of k0 that was latest at `upto`.
        commit(&store, &l, &mut meta, &[("todos", "k0", json!("later"))]);
        let report = store
            .compact(&l, upto, &mut |_, _, _| None)
            .expect("compact");
        assert_eq!((report.removed, report.kept), (1590, 10));
        let image = store.load_room(&l).expect("load");
        let mut keys: Vec<(String, u64)> =
            image.log.iter().map(|e| (e.key.clone(), e.seq)).collect();
        keys.sort();
        assert_eq!(keys.len(), 11);
        assert_eq!(keys[0], ("k0".to_owned(), 1591));
        assert_eq!(keys[1], ("k0".to_owned(), 1601));
        // Reads from any position still find their entries.
        let (after, _) = store
            .stream_entries(
                &l,
                "todos",
                1595,
                meta.seq,
                PageLimit::entries(100),
                &mut everything,
            )
            .expect("scan");
        assert_eq!(seqs(&after), [1596, 1597, 1598, 1599, 1600, 1601]);
    }

    #[test]
    fn no_segment_grows_past_its_bound() {
        let store = Store::memory();
        let l = layout("bounded");
        let mut meta = RoomMeta::default();
        let pad = "q".repeat(4000);
        let writes: Vec<(String, Value)> =
            (0..100).map(|i| (format!("k{i}"), json!(pad))).collect();
        let writes: Vec<(&str, &str, Value)> = writes
            .iter()
            .map(|(k, v)| ("todos", k.as_str(), v.clone()))
            .collect();
        commit(&store, &l, &mut meta, &writes);
        let mut sizes = Vec::new();
        store
            .kv
            .scan(&l.log, &prefix_end(&l.log), &mut |_, raw| {
                sizes.push(raw.len());
                Ok(ControlFlow::Continue(()))
            })
            .expect("scan");
        assert!(sizes.len() > 10, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s < SEGMENT_BYTES + 4100), "{sizes:?}");
        let image = store.load_room(&l).expect("load");
        assert_eq!(seqs(&image.log), (1..=100).collect::<Vec<u64>>());
    }

    #[test]
    fn an_idle_store_reopens_once_and_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let l = layout("idle");
        let mut meta = RoomMeta::default();
        commit(&store, &l, &mut meta, &[("todos", "a", json!(1))]);
        store.flush().expect("flush");
        let idle = std::time::Duration::ZERO;
        assert!(store.release_if_idle(idle).expect("release"));
        // Not used since: nothing to give back.
        assert!(!store.release_if_idle(idle).expect("release"));
        let image = store.load_room(&l).expect("load");
        assert_eq!(seqs(&image.log), [1]);
        // Used again, and still writable.
        commit(&store, &l, &mut meta, &[("todos", "b", json!(2))]);
        assert!(store.release_if_idle(idle).expect("release"));
        assert_eq!(seqs(&store.load_room(&l).expect("load").log), [1, 2]);
        // Never while it was used within the idle time.
        assert!(
            !store
                .release_if_idle(std::time::Duration::from_secs(3600))
                .expect("release")
        );
    }

    #[test]
    fn a_directory_of_another_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = SledKv::open(dir.path(), DEFAULT_CACHE_BYTES).expect("open");
            let mut b = KvBatch::default();
            b.insert(b"nnode_id".to_vec(), b"old".to_vec());
            kv.apply(b).expect("apply");
            kv.flush().expect("flush");
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StorageError::Format { found }) if found == "1"
        ));
        let fresh = tempfile::tempdir().expect("tempdir");
        drop(Store::open(fresh.path()).expect("new directory"));
        let store = Store::open(fresh.path()).expect("reopens its own format");
        assert_eq!(
            store.node_value("format").expect("read").as_deref(),
            Some(FORMAT)
        );
    }
}
