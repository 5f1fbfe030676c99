//! The node's storage: every room's change log and materialised state, over a [`Kv`].
//!
//! All rooms share one keyspace, keyed by prefix, because sled copes badly with many trees
//! (space amplification when trees are created and dropped). Layout (format 2):
//!
//! | key | value |
//! |---|---|
//! | `m` room | [`RoomMeta`] as JSON |
//! | `l` room NUL stream NUL seq(be) | key length (u32 be), the record key, the change as JSON |
//! | `s` room NUL stream NUL key | seq (u64 be), its digest hash (16 bytes), the state as JSON |
//! | `n` name | node-level values (node id, format) |
//!
//! The log is keyed by stream first, so a pull of one stream is one range scan. Every batch of
//! changes a room accepts is written with one atomic batch (log, state and meta together), so a
//! crash never leaves half of it behind. Writes become durable only once a flush covers them;
//! see [`crate::durability`].

mod digest;
mod disk;
mod kv;
mod memory;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use digest::{Digest, state_hash};
pub use disk::SledKv;
pub use kv::{Kv, KvBatch, Visit, prefix_end};
pub use memory::MemoryKv;

use crate::origin::Origin;
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;

/// The layout this version writes and reads.
const FORMAT: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage holds a corrupt record at {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "the data directory holds storage format {found}, this synchub reads format {FORMAT}; \
         start it on an empty directory"
    )]
    Format { found: String },
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

/// The current value of one state record, the change that wrote it, and its digest hash.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub seq: u64,
    pub hash: Digest,
    pub value: Value,
}

/// A record's new state as a commit writes it; `json` is the text `hash` was taken of.
#[derive(Debug, Clone, Copy)]
pub struct StateWrite<'a> {
    pub stream: &'a str,
    pub key: &'a str,
    pub seq: u64,
    pub hash: Digest,
    pub json: &'a str,
}

/// A room as storage holds it.
#[derive(Debug, Default)]
pub struct RoomImage {
    pub meta: RoomMeta,
    /// `(stream, key, record)` of every state record.
    pub records: Vec<(String, String, StateRecord)>,
}

/// What one compaction removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub removed: u64,
    pub kept: u64,
}

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

fn corrupt(key: &[u8], why: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: why.to_string(),
    }
}

fn seq_suffix(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn text(key: &[u8], bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(key, e))
}

fn encode_log(key: &str, body: &RawJson) -> Vec<u8> {
    let body = body.as_str();
    let mut v = Vec::with_capacity(4 + key.len() + body.len());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(body.as_bytes());
    v
}

/// A log value back into its record key and body.
fn decode_log(k: &[u8], raw: &[u8]) -> Result<(String, RawJson)> {
    let len = raw
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
        .ok_or_else(|| corrupt(k, "short log record"))?;
    let key = raw
        .get(4..4 + len)
        .ok_or_else(|| corrupt(k, "log record key past its end"))?;
    let body = &raw[4 + len..];
    Ok((text(k, key)?, RawJson::trusted(text(k, body)?)))
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
    })
}

fn node_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'n'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The node's storage. Cheap to clone; every clone shares the same database.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
}

impl Store {
    /// Opens (or creates) the sled database in `path`; refuses one written in another format.
    pub fn open(path: &Path) -> Result<Store> {
        let store = Store {
            kv: Arc::new(SledKv::open(path)?),
        };
        store.check_format()?;
        Ok(store)
    }

    /// A store that keeps everything in memory (tests, benchmarks).
    pub fn memory() -> Store {
        Store::over(Arc::new(MemoryKv::default()))
    }

    pub fn over(kv: Arc<dyn Kv>) -> Store {
        Store { kv }
    }

    fn check_format(&self) -> Result<()> {
        match self.node_value("format")? {
            Some(f) if f == FORMAT => Ok(()),
            Some(found) => Err(StorageError::Format { found }),
            None => {
                let mut empty = true;
                self.kv.scan(&[], &[u8::MAX], &mut |_, _| {
                    empty = false;
                    Ok(ControlFlow::Break(()))
                })?;
                if !empty {
                    return Err(StorageError::Format { found: "1".into() });
                }
                self.set_node_value("format", FORMAT)
            }
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

    /// Everything a room needs in memory to serve: its counters and every state record.
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
        Ok(RoomImage { meta, records })
    }

    /// The writes of one batch of accepted changes and the room's new counters; applied
    /// atomically by [`Store::apply`]. Pure encoding: a room builds it on its own thread.
    pub fn commit_batch<'a>(
        layout: &RoomLayout,
        meta: &RoomMeta,
        entries: &[LogEntry],
        states: impl IntoIterator<Item = StateWrite<'a>>,
    ) -> Result<KvBatch> {
        let mut b = KvBatch::default();
        for e in entries {
            b.insert(
                layout.log_key(&e.stream, e.seq),
                encode_log(&e.key, &e.body),
            );
        }
        for w in states {
            b.insert(layout.state_key(w.stream, w.key), encode_state(&w));
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

    /// Log entries of one stream with `after < seq <= upto`, in order, at most `limit`, skipping
    /// those `keep(key, seq)` refuses; the flag tells whether more such entries exist.
    pub fn stream_entries(
        &self,
        layout: &RoomLayout,
        stream: &str,
        after: u64,
        upto: u64,
        limit: usize,
        keep: &mut dyn FnMut(&str, u64) -> bool,
    ) -> Result<(Vec<LogEntry>, bool)> {
        let mut out = Vec::new();
        let mut more = false;
        if after >= upto {
            return Ok((out, more));
        }
        let start = layout.log_key(stream, after.saturating_add(1));
        let end = layout.log_key(stream, upto.saturating_add(1));
        let end = if upto == u64::MAX {
            prefix_end(&RoomLayout::stream_prefix(&layout.log, stream))
        } else {
            end
        };
        self.kv.scan(&start, &end, &mut |k, raw| {
            let seq = seq_suffix(k).ok_or_else(|| corrupt(k, "short log key"))?;
            let (key, body) = decode_log(k, raw)?;
            if !keep(&key, seq) {
                return Ok(ControlFlow::Continue(()));
            }
            if out.len() == limit {
                more = true;
                return Ok(ControlFlow::Break(()));
            }
            out.push(LogEntry {
                seq,
                stream: stream.to_owned(),
                key,
                body,
                origin: None,
            });
            Ok(ControlFlow::Continue(()))
        })?;
        Ok((out, more))
    }

    /// Drops every log entry `keep(stream, key, seq)` refuses (superseded changes, expired
    /// tombstones) and writes the room's new counters. State records stay, so the room's state
    /// and digest do not change.
    pub fn compact(
        &self,
        layout: &RoomLayout,
        meta: &mut RoomMeta,
        keep: &mut dyn FnMut(&str, &str, u64) -> bool,
    ) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let mut batch = KvBatch::default();
        let prefix = &layout.log;
        self.kv.scan(prefix, &prefix_end(prefix), &mut |k, raw| {
            let seq = seq_suffix(k).ok_or_else(|| corrupt(k, "short log key"))?;
            let rest = &k[prefix.len()..k.len() - 8];
            let stream = rest
                .strip_suffix(&[0])
                .ok_or_else(|| corrupt(k, "log key without stream"))?;
            let stream = text(k, stream)?;
            let (key, _) = decode_log(k, raw)?;
            if keep(&stream, &key, seq) {
                report.kept += 1;
            } else {
                batch.remove(k.to_vec());
                report.removed += 1;
            }
            Ok(ControlFlow::Continue(()))
        })?;
        meta.log_len = report.kept;
        let raw_meta = serde_json::to_vec(meta).map_err(|e| corrupt(&layout.meta, e))?;
        batch.insert(layout.meta.clone(), raw_meta);
        self.kv.apply(batch)?;
        Ok(report)
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
        self.kv.get(b"nprobe")?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_key::Namespace;
    use serde_json::json;

    fn layout(name: &str) -> RoomLayout {
        RoomLayout::new(&RoomKey::new(Namespace::Pocket, name).expect("valid"))
    }

    fn commit(
        store: &Store,
        l: &RoomLayout,
        meta: &mut RoomMeta,
        stream: &str,
        key: &str,
        v: Value,
    ) {
        meta.seq += 1;
        meta.log_len += 1;
        meta.heads.insert(stream.into(), meta.seq);
        let json = v.to_string();
        let entry = LogEntry {
            seq: meta.seq,
            stream: stream.into(),
            key: key.into(),
            body: RawJson::from_value(&v),
            origin: None,
        };
        let write = StateWrite {
            stream,
            key,
            seq: meta.seq,
            hash: state_hash(stream, key, &json),
            json: &json,
        };
        let batch = Store::commit_batch(l, meta, &[entry], [write]).expect("encode");
        store.apply(batch).expect("apply");
    }

    fn everything(_: &str, _: u64) -> bool {
        true
    }

    #[test]
    fn streams_page_in_order_and_rooms_do_not_mix() {
        let store = Store::memory();
        let (a, b) = (layout("a"), layout("b"));
        let (mut ma, mut mb) = (RoomMeta::default(), RoomMeta::default());
        for i in 0..5 {
            commit(&store, &a, &mut ma, "todos", &format!("d{i}"), json!(i));
            commit(&store, &a, &mut ma, "notes", "n", json!(i));
        }
        commit(&store, &b, &mut mb, "todos", "x", json!("b"));
        commit(&store, &b, &mut mb, "todos", "y", json!("b"));
        commit(&store, &b, &mut mb, "todos", "x", json!("c"));
        // Only the latest entry per key: 2 (y) and 3 (x).
        let image = store.load_room(&b).expect("load");
        let latest: std::collections::HashMap<String, u64> = image
            .records
            .iter()
            .map(|(_, k, r)| (k.clone(), r.seq))
            .collect();
        let (kept, _) = store
            .stream_entries(&b, "todos", 0, mb.seq, 10, &mut |k, seq| latest[k] == seq)
            .expect("scan");
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let (page, more) = store
            .stream_entries(&a, "todos", 0, ma.seq, 3, &mut everything)
            .expect("scan");
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(page[0].body, RawJson::from_value(&json!(0)));
        assert_eq!(page[0].key, "d0");
        assert!(more);
        let (rest, more) = store
            .stream_entries(&a, "todos", 5, ma.seq, 3, &mut everything)
            .expect("scan");
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 9]);
        assert!(!more);
        // `upto` hides entries that are not yet durable.
        let (capped, more) = store
            .stream_entries(&a, "todos", 0, 4, 10, &mut everything)
            .expect("scan");
        assert_eq!(capped.len(), 2);
        assert!(!more);
        assert_eq!(store.room_meta(&a).expect("meta"), Some(ma.clone()));
        assert_eq!(ma.head("notes"), 10);
        assert_eq!(store.room_meta(&layout("never")).expect("meta"), None);
        let image = store.load_room(&a).expect("load");
        assert_eq!(image.meta, ma);
        assert_eq!(image.records.len(), 6);
    }

    #[test]
    fn compaction_drops_what_keep_refuses_and_keeps_state() {
        let store = Store::memory();
        let l = layout("c");
        let mut meta = RoomMeta::default();
        for i in 0..4 {
            commit(&store, &l, &mut meta, "todos", "same", json!(i));
        }
        commit(&store, &l, &mut meta, "todos", "gone", json!("tombstone"));
        commit(&store, &l, &mut meta, "notes", "other", json!("x"));
        let report = store
            .compact(&l, &mut meta, &mut |_, key, seq| {
                (key == "same" && seq == 4) || key == "other"
            })
            .expect("compact");
        assert_eq!(
            report,
            CompactReport {
                removed: 4,
                kept: 2
            }
        );
        let (todos, _) = store
            .stream_entries(&l, "todos", 0, meta.seq, 100, &mut everything)
            .expect("scan");
        assert_eq!(todos.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(
            store.room_meta(&l).expect("meta").map(|m| m.log_len),
            Some(2)
        );
        assert_eq!(store.load_room(&l).expect("load").records.len(), 3);
    }

    #[test]
    fn a_directory_of_another_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let kv = SledKv::open(dir.path()).expect("open");
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
