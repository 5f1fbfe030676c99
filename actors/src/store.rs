//! The node's storage: every room's change log and materialised state in one sled database.
//!
//! All rooms share one tree, keyed by prefix, because sled copes badly with many trees
//! (space amplification when trees are created and dropped). Layout:
//!
//! | key | value |
//! |---|---|
//! | `m` room | [`RoomMeta`] as JSON |
//! | `l` room NUL seq(be) | [`LogRecord`] as JSON |
//! | `i` room NUL stream NUL seq(be) | empty: the per-stream index of the log |
//! | `s` room NUL stream NUL key | seq(be) followed by the state value as JSON |
//! | `n` name | node-level values (node id) |
//!
//! Every change a room accepts is written with one atomic `apply_batch` (log, index, state and
//! meta together), so a crash never leaves half of a change behind. Writes become durable only
//! once a flush covers them; see [`crate::durability`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::room_key::RoomKey;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage holds a corrupt record at {key}: {why}")]
    Corrupt { key: String, why: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Per-room counters, written together with every change.
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
}

/// A 128-bit order-independent digest of a room's materialised state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest(pub [u8; 16]);

impl Digest {
    pub fn toggle(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a ^= b;
        }
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad digest"))
    }
}

/// The hash a state record contributes to its room's digest. It covers the record's address and
/// its canonical JSON (serde_json maps are sorted), so equal states hash equal on every node.
pub fn state_hash(stream: &str, key: &str, value: &Value) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(stream.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(value.to_string().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Digest(out)
}

/// One entry of a room's change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    /// The sub-stream the change belongs to (a Pocket collection; empty where a dialect has none).
    pub stream: String,
    /// The state record the change wrote (a document id, a field, a cell).
    pub key: String,
    /// The change as the dialect sends it to clients.
    pub body: Value,
}

#[derive(Serialize, Deserialize)]
struct LogRecord {
    s: String,
    k: String,
    b: Value,
}

/// The current value of one state record and the change that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    pub seq: u64,
    pub value: Value,
}

/// The writes of one accepted batch of changes, applied atomically by [`Store::commit`].
#[derive(Debug, Default)]
pub struct CommitBatch {
    pub entries: Vec<LogEntry>,
    /// `(stream, key, new state)` for each entry, in the same order.
    pub states: Vec<(String, String, StateRecord)>,
}

/// What one compaction removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub removed: u64,
    pub kept: u64,
}

/// The node's sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

fn room_prefix(tag: u8, room: &RoomKey) -> Vec<u8> {
    let name = room.to_string();
    let mut k = Vec::with_capacity(name.len() + 2);
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn meta_key(room: &RoomKey) -> Vec<u8> {
    let mut k = room_prefix(b'm', room);
    k.pop();
    k
}

fn log_key(room: &RoomKey, seq: u64) -> Vec<u8> {
    let mut k = room_prefix(b'l', room);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn index_prefix(room: &RoomKey, stream: &str) -> Vec<u8> {
    let mut k = room_prefix(b'i', room);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k
}

fn state_key(room: &RoomKey, stream: &str, key: &str) -> Vec<u8> {
    let mut k = room_prefix(b's', room);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn seq_suffix(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn corrupt(key: &[u8], why: impl ToString) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: why.to_string(),
    }
}

fn decode_state(key: &[u8], raw: &[u8]) -> Result<StateRecord> {
    let seq = raw
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "short state record"))?;
    let value = serde_json::from_slice(&raw[8..]).map_err(|e| corrupt(key, e))?;
    Ok(StateRecord { seq, value })
}

fn encode_state(record: &StateRecord) -> Vec<u8> {
    let mut out = record.seq.to_be_bytes().to_vec();
    out.extend_from_slice(record.value.to_string().as_bytes());
    out
}

impl Store {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Store { db })
    }

    /// The room's counters; `None` for a room this node has never stored.
    pub fn room_meta(&self, room: &RoomKey) -> Result<Option<RoomMeta>> {
        let key = meta_key(room);
        match self.db.get(&key)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
        }
    }

    pub fn state(&self, room: &RoomKey, stream: &str, key: &str) -> Result<Option<StateRecord>> {
        let k = state_key(room, stream, key);
        match self.db.get(&k)? {
            None => Ok(None),
            Some(raw) => decode_state(&k, &raw).map(Some),
        }
    }

    /// Writes a batch of accepted changes and the room's new counters in one atomic step.
    pub fn commit(&self, room: &RoomKey, meta: &RoomMeta, batch: &CommitBatch) -> Result<()> {
        let mut b = sled::Batch::default();
        for e in &batch.entries {
            let record = LogRecord {
                s: e.stream.clone(),
                k: e.key.clone(),
                b: e.body.clone(),
            };
            let raw = serde_json::to_vec(&record).map_err(|err| corrupt(b"log", err))?;
            b.insert(log_key(room, e.seq), raw);
            let mut ik = index_prefix(room, &e.stream);
            ik.extend_from_slice(&e.seq.to_be_bytes());
            b.insert(ik, &[] as &[u8]);
        }
        for (stream, key, record) in &batch.states {
            b.insert(state_key(room, stream, key), encode_state(record));
        }
        let raw_meta = serde_json::to_vec(meta).map_err(|err| corrupt(b"meta", err))?;
        b.insert(meta_key(room), raw_meta);
        self.db.apply_batch(b)?;
        Ok(())
    }

    fn log_entry(&self, room: &RoomKey, seq: u64) -> Result<Option<LogEntry>> {
        let k = log_key(room, seq);
        let Some(raw) = self.db.get(&k)? else {
            return Ok(None);
        };
        let r: LogRecord = serde_json::from_slice(&raw).map_err(|e| corrupt(&k, e))?;
        Ok(Some(LogEntry {
            seq,
            stream: r.s,
            key: r.k,
            body: r.b,
        }))
    }

    /// Log entries of one stream with `after < seq <= upto`, in order, at most `limit`;
    /// the flag tells whether more such entries exist. With `latest_only`, entries that a later
    /// change of the same record superseded are skipped.
    pub fn stream_entries(
        &self,
        room: &RoomKey,
        stream: &str,
        after: u64,
        upto: u64,
        limit: usize,
        latest_only: bool,
    ) -> Result<(Vec<LogEntry>, bool)> {
        let prefix = index_prefix(room, stream);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        let mut end = prefix;
        end.extend_from_slice(&upto.to_be_bytes());
        let mut out = Vec::new();
        if after >= upto {
            return Ok((out, false));
        }
        for item in self.db.range(start..=end) {
            let (k, _) = item?;
            let seq = seq_suffix(&k).ok_or_else(|| corrupt(&k, "short index key"))?;
            let Some(e) = self.log_entry(room, seq)? else {
                return Err(corrupt(&k, "index without log entry"));
            };
            if latest_only
                && self
                    .state(room, &e.stream, &e.key)?
                    .is_some_and(|s| s.seq != e.seq)
            {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(e);
        }
        Ok((out, false))
    }

    /// The sequence number of the last logged change of a stream (0 if none).
    pub fn stream_head(&self, room: &RoomKey, stream: &str) -> Result<u64> {
        match self.db.scan_prefix(index_prefix(room, stream)).next_back() {
            None => Ok(0),
            Some(item) => {
                let (k, _) = item?;
                seq_suffix(&k).ok_or_else(|| corrupt(&k, "short index key"))
            }
        }
    }

    /// Every state record of a room, for recomputing its digest.
    pub fn states(&self, room: &RoomKey) -> Result<Vec<(String, String, StateRecord)>> {
        let prefix = room_prefix(b's', room);
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (k, raw) = item?;
            let rest = &k[prefix.len()..];
            let sep = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt(&k, "state key without stream"))?;
            let stream = String::from_utf8_lossy(&rest[..sep]).into_owned();
            let key = String::from_utf8_lossy(&rest[sep + 1..]).into_owned();
            out.push((stream, key, decode_state(&k, &raw)?));
        }
        Ok(out)
    }

    /// Drops every log entry that a later change of the same record superseded, and the entries
    /// for which `expired` says their record's retention has ended. State records stay, so the
    /// room's state and digest do not change.
    pub fn compact(
        &self,
        room: &RoomKey,
        meta: &mut RoomMeta,
        expired: impl Fn(&Value) -> bool,
    ) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix(room_prefix(b'l', room)) {
            let (k, raw) = item?;
            let seq = seq_suffix(&k).ok_or_else(|| corrupt(&k, "short log key"))?;
            let r: LogRecord = serde_json::from_slice(&raw).map_err(|e| corrupt(&k, e))?;
            let current = self.state(room, &r.s, &r.k)?;
            let superseded = match &current {
                Some(state) => state.seq != seq || expired(&state.value),
                None => true,
            };
            if superseded {
                batch.remove(k);
                let mut ik = index_prefix(room, &r.s);
                ik.extend_from_slice(&seq.to_be_bytes());
                batch.remove(ik);
                report.removed += 1;
            } else {
                report.kept += 1;
            }
        }
        meta.log_len = report.kept;
        let raw_meta = serde_json::to_vec(meta).map_err(|err| corrupt(b"meta", err))?;
        batch.insert(meta_key(room), raw_meta);
        self.db.apply_batch(batch)?;
        Ok(report)
    }

    /// Makes every write so far durable. Runs on sled's own threads, never on an actor's.
    pub async fn flush(&self) -> Result<usize> {
        Ok(self.db.flush_async().await?)
    }

    /// A node-level value, e.g. the generated node id.
    pub fn node_value(&self, name: &str) -> Result<Option<String>> {
        let mut k = vec![b'n'];
        k.extend_from_slice(name.as_bytes());
        Ok(self
            .db
            .get(k)?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Stores a node-level value and flushes it: these are written once, at start.
    pub fn set_node_value(&self, name: &str, value: &str) -> Result<()> {
        let mut k = vec![b'n'];
        k.extend_from_slice(name.as_bytes());
        self.db.insert(k, value.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Checks that the database answers, for the health endpoint.
    pub fn probe(&self) -> Result<()> {
        self.db.get(b"nprobe")?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_key::Namespace;
    use serde_json::json;

    fn room(name: &str) -> RoomKey {
        RoomKey::new(Namespace::Pocket, name).expect("valid")
    }

    fn commit(store: &Store, r: &RoomKey, meta: &mut RoomMeta, stream: &str, key: &str, v: Value) {
        meta.seq += 1;
        meta.log_len += 1;
        let entry = LogEntry {
            seq: meta.seq,
            stream: stream.into(),
            key: key.into(),
            body: v.clone(),
        };
        let state = StateRecord {
            seq: meta.seq,
            value: v,
        };
        let batch = CommitBatch {
            entries: vec![entry],
            states: vec![(stream.into(), key.into(), state)],
        };
        store.commit(r, meta, &batch).expect("commit");
    }

    #[test]
    fn streams_page_in_order_and_rooms_do_not_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (room("a"), room("b"));
        let (mut ma, mut mb) = (RoomMeta::default(), RoomMeta::default());
        for i in 0..5 {
            commit(&store, &a, &mut ma, "todos", &format!("d{i}"), json!(i));
            commit(&store, &a, &mut ma, "notes", "n", json!(i));
        }
        commit(&store, &b, &mut mb, "todos", "x", json!("b"));
        commit(&store, &b, &mut mb, "todos", "y", json!("b"));
        commit(&store, &b, &mut mb, "todos", "x", json!("c"));
        let (latest, _) = store
            .stream_entries(&b, "todos", 0, mb.seq, 10, true)
            .expect("scan");
        assert_eq!(latest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let (page, more) = store
            .stream_entries(&a, "todos", 0, ma.seq, 3, false)
            .expect("scan");
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 5]);
        assert!(more);
        let (rest, more) = store
            .stream_entries(&a, "todos", 5, ma.seq, 3, false)
            .expect("scan");
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 9]);
        assert!(!more);
        // `upto` hides entries that are not yet durable.
        let (capped, more) = store
            .stream_entries(&a, "todos", 0, 4, 10, false)
            .expect("scan");
        assert_eq!(capped.len(), 2);
        assert!(!more);
        assert_eq!(store.stream_head(&a, "notes").expect("head"), 10);
        assert_eq!(store.stream_head(&b, "todos").expect("head"), 3);
        assert_eq!(store.stream_head(&b, "notes").expect("head"), 0);
        assert_eq!(store.room_meta(&a).expect("meta"), Some(ma));
        assert_eq!(store.room_meta(&room("never")).expect("meta"), None);
    }

    #[test]
    fn compaction_keeps_the_latest_entry_per_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let r = room("c");
        let mut meta = RoomMeta::default();
        for i in 0..4 {
            commit(&store, &r, &mut meta, "todos", "same", json!(i));
        }
        commit(&store, &r, &mut meta, "todos", "gone", json!("tombstone"));
        commit(&store, &r, &mut meta, "todos", "other", json!("x"));
        let report = store
            .compact(&r, &mut meta, |v| v == &json!("tombstone"))
            .expect("compact");
        assert_eq!(
            report,
            CompactReport {
                removed: 4,
                kept: 2
            }
        );
        let (all, _) = store
            .stream_entries(&r, "todos", 0, meta.seq, 100, false)
            .expect("scan");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 6]);
        assert_eq!(
            store.room_meta(&r).expect("meta").map(|m| m.log_len),
            Some(2)
        );
        // State is untouched, tombstone included.
        assert_eq!(store.states(&r).expect("states").len(), 3);
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = state_hash("s", "k", &json!({"b": 1, "a": [1, 2]}));
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        let mut x = d;
        x.toggle(&d);
        assert_eq!(x, Digest::default());
    }
}
