//! A room's materialised state, held in memory, and the write pipeline that runs against it:
//! merge (the namespace's [`Model`]) → number (the next number, or the one the room's
//! [`Order`](super::order::Order) got from the cluster) → persist (one storage batch per commit). No storage read happens on this path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::messages::Submitted;
use crate::model::{IncomingChange, Merge, Model};
use crate::origin::Origin;
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;
use crate::store::{
    CompactReport, Digest, KvBatch, LogEntry, Retired, RoomImage, RoomLayout, RoomMeta,
    StorageError, Store, state_hash,
};

/// One state record as the room holds it.
#[derive(Debug, Clone)]
struct Record {
    /// The change that wrote the current value.
    seq: u64,
    /// The newest change of this record that readers may see (durable).
    visible: u64,
    hash: Digest,
    /// Shared, so a snapshot of the room copies pointers rather than every value.
    value: Arc<Value>,
    /// Its key and its state as JSON text: what it adds to the room's size.
    bytes: u32,
}

fn record_bytes(key: &str, text: &str) -> u32 {
    record_bytes_of(key, text.len())
}

fn record_bytes_of(key: &str, json_len: usize) -> u32 {
    (key.len() + json_len).min(u32::MAX as usize) as u32
}

/// The digest contribution of a model's room-wide value.
fn model_hash(model: &Value) -> Digest {
    if model.is_null() {
        return Digest::default();
    }
    state_hash("\u{0}model", "", &model.to_string())
}

/// Where the numbers of merged changes come from.
#[derive(Clone, Copy)]
enum Numbered {
    /// The room's own: the next after its last, for the changes that win, so a room's numbers
    /// run 1, 2, 3, … without holes.
    Next,
    /// Numbers a shared sequencer gave the changes, from this one on.
    From(u64),
}

/// Accepted changes that have not been handed to storage yet.
#[derive(Default)]
pub struct OpenBatch {
    entries: Vec<LogEntry>,
    /// For each stream in `entries`, its head before the first of them.
    heads_before: HashMap<String, u64>,
    /// The room's number moved past changes that left nothing to log (merges that lost, in a
    /// cluster): the commit must still write it, or a peer reading this node's history could
    /// not get past those numbers until a change followed.
    numbered: bool,
}

impl OpenBatch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.numbered
    }
}

/// A commit ready for storage: the writes, and the entries to release once they are durable.
pub struct Commit {
    pub writes: KvBatch,
    pub entries: Vec<LogEntry>,
    pub heads_before: HashMap<String, u64>,
}

pub struct RoomState {
    key: RoomKey,
    layout: RoomLayout,
    meta: RoomMeta,
    model_hash: Digest,
    /// stream → key → record. Nested so lookups borrow `&str`s instead of building a key.
    records: HashMap<String, HashMap<String, Record>>,
    /// stream → governing record → the records it governs
    /// ([`crate::model::RowRules::governing_key`]), for models that have governing records.
    /// Kept for every such stream: a merge reads a record's siblings even before their
    /// governing record has been written.
    governed: HashMap<String, HashMap<String, HashSet<String>>>,
    /// Bytes of the log's entries (bodies and keys), as the disk holds them, roughly.
    log_bytes: u64,
    /// Bytes of the records' keys and states ([`Record::bytes`]): the size of the room as a
    /// document.
    state_bytes: u64,
}

/// While a room is busy, a log larger than twice the room's state by this much is compacted
/// once half of it is superseded, however few entries that is: large changes must not make the
/// disk hold many times the live state (the store keeps what the log held until it merges it
/// away, so what the log holds is multiplied on disk).
const BUSY_LOG_BYTES_SLACK: u64 = 1 << 20;

/// While a room is busy, superseded entries beyond twice the records that make a compaction
/// worth its cost: it reads the log once and drops at least half of it.
const BUSY_LOG_SLACK: u64 = 1024;

fn entry_bytes(e: &LogEntry) -> u64 {
    (e.body.as_str().len() + e.key.len()) as u64
}

impl RoomState {
    /// The room as storage holds it: the state records compaction kept, then the log replayed
    /// over them through the model.
    pub fn load(
        key: RoomKey,
        layout: RoomLayout,
        image: RoomImage,
        model: &dyn Model,
    ) -> Result<RoomState, StorageError> {
        let mut st = RoomState {
            key,
            layout,
            model_hash: model_hash(&image.meta.model),
            meta: image.meta,
            records: HashMap::new(),
            governed: HashMap::new(),
            log_bytes: 0,
            state_bytes: 0,
        };
        for (stream, key, r) in image.records {
            let record = Record {
                seq: r.seq,
                visible: r.seq,
                hash: r.hash,
                bytes: record_bytes_of(&key, r.json_len),
                value: Arc::new(r.value),
            };
            st.records.entry(stream).or_default().insert(key, record);
        }
        let log_len = image.log.len() as u64;
        let log_bytes = image.log.iter().map(entry_bytes).sum();
        for e in image.log {
            let logged = e.body.to_value().map_err(|err| StorageError::Corrupt {
                key: format!("{}/{}/{}", st.key, e.stream, e.seq),
                why: err.to_string(),
            })?;
            let value = model.state_of(&logged);
            let text = value.to_string();
            let record = Record {
                seq: e.seq,
                visible: e.seq,
                hash: state_hash(&e.stream, &e.key, &text),
                bytes: record_bytes(&e.key, &text),
                value: Arc::new(value),
            };
            let stream = st.records.entry(e.stream).or_default();
            // A state record compaction kept is older than any log entry of its record.
            if stream.get(&e.key).is_none_or(|r| r.seq < record.seq) {
                stream.insert(e.key, record);
            }
        }
        let streams: Vec<String> = st.records.keys().cloned().collect();
        for stream in &streams {
            st.index_stream(model, stream);
        }
        // Every record a later life of its group ended, whichever came first in the log: the
        // same records the merges dropped one by one.
        let governors: Vec<(String, String)> = st
            .governed
            .iter()
            .flat_map(|(s, g)| g.keys().map(|k| (s.clone(), k.clone())))
            .collect();
        for (stream, governor) in governors {
            st.settle(model, &stream, &governor);
        }
        // The counters follow the records as loaded, so a room stored before a rule changed
        // still reports a digest that matches its state.
        let mut digest = st.model_hash;
        let mut count = 0;
        for r in st.records.values().flat_map(HashMap::values) {
            digest.toggle(&r.hash);
            count += 1;
            st.state_bytes += u64::from(r.bytes);
        }
        st.meta.digest = digest;
        st.meta.records = count;
        // A compaction that ran while the room had changes in memory left the stored length.
        st.meta.log_len = log_len;
        st.log_bytes = log_bytes;
        Ok(st)
    }

    /// Adds `key` to the records `governor` governs, once its stream is indexed.
    fn index_governed(&mut self, stream: &str, governor: String, key: &str) {
        self.governed
            .entry(stream.to_owned())
            .or_default()
            .entry(governor)
            .or_default()
            .insert(key.to_owned());
    }

    /// Indexes which records each governing record of `stream` governs (at load).
    fn index_stream(&mut self, model: &dyn Model, stream: &str) {
        let Some(rows) = model.rows() else {
            return;
        };
        let mut index: HashMap<String, HashSet<String>> = HashMap::new();
        for key in self.records.get(stream).into_iter().flat_map(HashMap::keys) {
            if let Some(g) = rows.governing_key_of(key) {
                index.entry(g).or_default().insert(key.clone());
            }
        }
        if !index.is_empty() {
            self.governed.insert(stream.to_owned(), index);
        }
    }

    /// The states of the records `governor` governs, but `except`. Takes the two maps rather
    /// than `self` so that a merge can borrow the room-wide value meanwhile.
    fn governed_states<'a>(
        records: &'a HashMap<String, HashMap<String, Record>>,
        governed: &HashMap<String, HashMap<String, HashSet<String>>>,
        stream: &str,
        governor: &str,
        except: &str,
    ) -> Vec<&'a Value> {
        let Some(records) = records.get(stream) else {
            return Vec::new();
        };
        governed
            .get(stream)
            .and_then(|g| g.get(governor))
            .into_iter()
            .flatten()
            .filter(|k| k.as_str() != except)
            .filter_map(|k| records.get(k))
            .map(|r| &*r.value)
            .collect()
    }

    /// Drops every record of `governor`'s group (the governing record and those it governs)
    /// that the group's latest life has ended ([`crate::model::RowRules::ended_by`]): what a
    /// merge would now refuse leaves the state, so the state does not depend on the order of
    /// arrival.
    fn settle(&mut self, model: &dyn Model, stream: &str, governor: &str) {
        let (Some(rows), Some(records)) = (model.rows(), self.records.get_mut(stream)) else {
            return;
        };
        let members = self
            .governed
            .get_mut(stream)
            .and_then(|g| g.get_mut(governor));
        // The latest life: `ended_by` orders the group's states, so one pass finds it.
        let mut latest: Option<Arc<Value>> = records.get(governor).map(|r| r.value.clone());
        for key in members.iter().flat_map(|m| m.iter()) {
            if let Some(r) = records.get(key)
                && latest.as_ref().is_none_or(|l| rows.ended_by(&r.value, l))
            {
                latest = Some(r.value.clone());
            }
        }
        let Some(latest) = latest else {
            return;
        };
        let mut drop = |key: &str| match records.get(key) {
            Some(r) if rows.ended_by(&latest, &r.value) => {
                self.meta.digest.toggle(&r.hash);
                self.meta.records = self.meta.records.saturating_sub(1);
                self.state_bytes = self.state_bytes.saturating_sub(u64::from(r.bytes));
                records.remove(key);
                true
            }
            Some(_) => false,
            None => true,
        };
        drop(governor);
        if let Some(members) = members {
            members.retain(|key| !drop(key));
        }
    }

    /// What the room would weigh as a document after `changes`, were they all to win: their
    /// bodies stand in for the states they would leave (a state holds what its change carried,
    /// no more).
    pub fn bytes_after(&self, changes: &[IncomingChange]) -> u64 {
        let mut replaced: HashSet<(&str, &str)> = HashSet::new();
        let mut bytes = self.state_bytes;
        for c in changes.iter().rev() {
            if !replaced.insert((&c.stream, &c.key)) {
                continue;
            }
            let old = self
                .records
                .get(&c.stream)
                .and_then(|r| r.get(&c.key))
                .map_or(0, |r| u64::from(r.bytes));
            let new = (c.key.len() + c.body.to_string().len()) as u64;
            bytes = bytes.saturating_sub(old) + new;
        }
        bytes
    }

    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    pub fn meta(&self) -> &RoomMeta {
        &self.meta
    }

    pub fn layout(&self) -> &RoomLayout {
        &self.layout
    }

    /// Merges the changes of one submit, in order, against the current state, numbers the ones
    /// that win and adds them to `open`. The state changes at once: the next submit merges
    /// against it, durable or not.
    pub fn submit(
        &mut self,
        model: &dyn Model,
        origin: Option<&Origin>,
        changes: Vec<IncomingChange>,
        open: &mut OpenBatch,
    ) -> Submitted {
        self.merge_all(model, Numbered::Next, origin, changes, open)
    }

    /// Merges the changes of one submit that a shared sequencer already numbered, from `first`
    /// on: every node merges them in this order and reaches the same state. A change that loses
    /// leaves its number unused; the room's sequence number moves past it all the same.
    pub fn apply_ordered(
        &mut self,
        model: &dyn Model,
        first: u64,
        origin: Option<&Origin>,
        changes: Vec<IncomingChange>,
        open: &mut OpenBatch,
    ) -> Submitted {
        let last = first + changes.len() as u64 - 1;
        let mut out = self.merge_all(model, Numbered::From(first), origin, changes, open);
        open.numbered |= last > self.meta.seq;
        self.meta.seq = self.meta.seq.max(last);
        out.seq = self.meta.seq;
        out
    }

    fn merge_all(
        &mut self,
        model: &dyn Model,
        numbered: Numbered,
        origin: Option<&Origin>,
        changes: Vec<IncomingChange>,
        open: &mut OpenBatch,
    ) -> Submitted {
        let mut out = Submitted::default();
        for (i, change) in changes.into_iter().enumerate() {
            if !out.heads_before.contains_key(&change.stream) {
                out.heads_before
                    .insert(change.stream.clone(), self.meta.head(&change.stream));
            }
            let stream = self.records.get(&change.stream);
            let current = stream.and_then(|r| r.get(&change.key)).map(|r| &*r.value);
            let rows = model.rows();
            let governing_key = rows.and_then(|r| r.governing_key(&change.key, &change.body));
            let merged = match (rows, &governing_key) {
                (Some(rows), None) if rows.is_governing(&change.key) => {
                    let governed = Self::governed_states(
                        &self.records,
                        &self.governed,
                        &change.stream,
                        &change.key,
                        "",
                    );
                    rows.merge_governing(&mut self.meta.model, current, &governed, &change)
                }
                (Some(rows), Some(key)) => {
                    let governing = stream.and_then(|r| r.get(key)).map(|r| &*r.value);
                    let siblings = Self::governed_states(
                        &self.records,
                        &self.governed,
                        &change.stream,
                        key,
                        &change.key,
                    );
                    rows.merge_governed(
                        &mut self.meta.model,
                        current,
                        governing,
                        &siblings,
                        &change,
                    )
                }
                _ => model.merge(&mut self.meta.model, current, &change),
            };
            let mut logged = match merged {
                Merge::Unchanged => continue,
                Merge::Reject { report } => {
                    out.rejected.push(report);
                    continue;
                }
                Merge::Apply { logged } => logged,
            };
            let seq = match numbered {
                Numbered::Next => self.meta.seq + 1,
                Numbered::From(first) => first + i as u64,
            };
            model.stamp(&mut logged, seq);
            let body = RawJson::from_value(&logged);
            let entry = LogEntry {
                seq,
                stream: change.stream,
                key: change.key,
                body,
                origin: origin.cloned(),
            };
            self.record(model, entry, &logged, governing_key, open);
            out.accepted += 1;
        }
        if out.accepted > 0 {
            self.refresh_model_hash();
        }
        out.seq = self.meta.seq;
        out
    }

    /// Applies a change another node logged (catching up from a peer): its effect, without a
    /// merge, since the peer merged it in the same order.
    pub fn replay(
        &mut self,
        model: &dyn Model,
        entry: LogEntry,
        open: &mut OpenBatch,
    ) -> Result<(), StorageError> {
        let logged = entry.body.to_value().map_err(|e| StorageError::Corrupt {
            key: format!("{}/{}/{}", self.key, entry.stream, entry.seq),
            why: e.to_string(),
        })?;
        model.replay(&mut self.meta.model, &logged);
        let governing = model
            .rows()
            .and_then(|r| r.governing_key(&entry.key, &logged));
        self.record(model, entry, &logged, governing, open);
        self.refresh_model_hash();
        Ok(())
    }

    /// Sets a record another node keeps outside its log (a tombstone whose retention ended).
    pub fn replay_record(&mut self, stream: &str, key: &str, seq: u64, value: Value) {
        let text = value.to_string();
        let hash = state_hash(stream, key, &text);
        let bytes = record_bytes(key, &text);
        let records = self.records.entry(stream.to_owned()).or_default();
        let record = Record {
            seq,
            visible: seq,
            hash,
            bytes,
            value: Arc::new(value),
        };
        self.state_bytes += u64::from(bytes);
        match records.insert(key.to_owned(), record) {
            Some(old) => {
                self.meta.digest.toggle(&old.hash);
                self.state_bytes = self.state_bytes.saturating_sub(u64::from(old.bytes));
            }
            None => self.meta.records += 1,
        }
        self.meta.digest.toggle(&hash);
        self.meta.seq = self.meta.seq.max(seq);
    }

    /// Moves the room's sequence number to `seq`: every change up to it has been applied.
    pub fn advance_to(&mut self, seq: u64, open: &mut OpenBatch) {
        open.numbered |= seq > self.meta.seq;
        self.meta.seq = self.meta.seq.max(seq);
    }

    /// Writes an accepted change into the state and the open batch.
    fn record(
        &mut self,
        model: &dyn Model,
        entry: LogEntry,
        logged: &Value,
        governing: Option<String>,
        open: &mut OpenBatch,
    ) {
        let seq = entry.seq;
        let state = model.state_of(logged);
        let text = state.to_string();
        let hash = state_hash(&entry.stream, &entry.key, &text);
        let bytes = record_bytes(&entry.key, &text);
        self.state_bytes += u64::from(bytes);
        if !self.records.contains_key(&entry.stream) {
            self.records.insert(entry.stream.clone(), HashMap::new());
        }
        if let Some(records) = self.records.get_mut(&entry.stream) {
            match records.get_mut(&entry.key) {
                Some(old) => {
                    self.meta.digest.toggle(&old.hash);
                    self.state_bytes = self.state_bytes.saturating_sub(u64::from(old.bytes));
                    // What readers may see stays as it was until this change is durable.
                    *old = Record {
                        seq,
                        visible: old.visible,
                        hash,
                        bytes,
                        value: Arc::new(state),
                    };
                }
                None => {
                    let record = Record {
                        seq,
                        visible: 0,
                        hash,
                        bytes,
                        value: Arc::new(state),
                    };
                    records.insert(entry.key.clone(), record);
                    self.meta.records += 1;
                    if let Some(g) = &governing {
                        self.index_governed(&entry.stream, g.clone(), &entry.key);
                    }
                }
            }
        }
        self.meta.digest.toggle(&hash);
        if model.rows().is_some_and(|r| r.is_governing(&entry.key)) {
            self.settle(model, &entry.stream, &entry.key);
        } else if let Some(g) = &governing {
            self.settle(model, &entry.stream, g);
        }
        self.meta.seq = self.meta.seq.max(seq);
        self.meta.log_len += 1;
        self.log_bytes += entry_bytes(&entry);
        let before = match self.meta.heads.get_mut(&entry.stream) {
            Some(head) => std::mem::replace(head, seq),
            None => {
                self.meta.heads.insert(entry.stream.clone(), seq);
                0
            }
        };
        if !open.heads_before.contains_key(&entry.stream) {
            open.heads_before.insert(entry.stream.clone(), before);
        }
        open.entries.push(entry);
    }

    fn refresh_model_hash(&mut self) {
        let after = model_hash(&self.meta.model);
        if after != self.model_hash {
            self.meta.digest.toggle(&self.model_hash);
            self.meta.digest.toggle(&after);
            self.model_hash = after;
        }
    }

    /// Turns the open batch into one storage batch carrying the room's counters as they are now.
    pub fn commit(&self, open: OpenBatch) -> Result<Commit, StorageError> {
        let writes = Store::commit_batch(&self.layout, &self.meta, &open.entries)?;
        Ok(Commit {
            writes,
            entries: open.entries,
            heads_before: open.heads_before,
        })
    }

    /// Marks released entries as visible to readers.
    pub fn release(&mut self, entries: &[LogEntry]) {
        for e in entries {
            if let Some(r) = self
                .records
                .get_mut(&e.stream)
                .and_then(|s| s.get_mut(&e.key))
            {
                r.visible = r.visible.max(e.seq);
            }
        }
    }

    /// Whether `seq` is the newest visible change of a record: what a latest-only read keeps.
    pub fn is_latest_visible(&self, stream: &str, key: &str, seq: u64) -> bool {
        self.records
            .get(stream)
            .and_then(|s| s.get(key))
            .is_some_and(|r| r.visible == seq)
    }

    /// Whether the log holds so much superseded history that compacting it is worth it.
    pub fn worth_compacting(&self, at_rest: bool) -> bool {
        let m = &self.meta;
        if at_rest {
            m.log_len > 64 && m.log_len > 2 * m.records
        } else {
            // While the room is busy: only once superseded entries clearly outnumber the
            // records, so the cost of a compaction is spread over as many changes as it reads.
            m.log_len > 2 * m.records + BUSY_LOG_SLACK
                || (m.log_len > 2 * m.records
                    && self.log_bytes > 2 * self.state_bytes + BUSY_LOG_BYTES_SLACK)
        }
    }

    /// A compaction of the log up to `upto` (durable), to run off the room's thread while the
    /// room goes on; see [`Store::compact`].
    pub fn compaction(
        &self,
        store: Store,
        model: Arc<dyn Model>,
        now_ms: i64,
        upto: u64,
    ) -> impl FnOnce() -> Result<CompactReport, StorageError> + Send + 'static {
        let layout = self.layout.clone();
        move || {
            store.compact(&layout, upto, &mut |stream, key, body| {
                let logged = serde_json::from_str(body).ok()?;
                let state = model.state_of(&logged);
                if !model.tombstone_expired(&state, now_ms) {
                    return None;
                }
                let json = state.to_string();
                Some(Retired {
                    hash: state_hash(stream, key, &json),
                    json,
                })
            })
        }
    }

    /// Records a finished compaction: the entries it took out of the log.
    pub fn compacted(&mut self, report: &CompactReport) {
        self.meta.log_len = self.meta.log_len.saturating_sub(report.removed);
        self.log_bytes = self.log_bytes.saturating_sub(report.removed_bytes);
    }

    /// `(stream, key, value)` of every record.
    pub fn records(&self) -> Vec<(String, String, Arc<Value>)> {
        let mut out = Vec::with_capacity(self.meta.records as usize);
        for (stream, records) in &self.records {
            for (key, r) in records {
                out.push((stream.clone(), key.clone(), r.value.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pocket::PocketModel;
    use crate::relay::{RelayModel, parse_change};
    use crate::room::test_changes::{cell, doc};
    use crate::room_key::Namespace;
    use serde_json::json;

    fn empty(ns: Namespace, model: &dyn Model) -> RoomState {
        let key = RoomKey::new(ns, "r").expect("key");
        let layout = RoomLayout::new(&key);
        RoomState::load(key, layout, RoomImage::default(), model).expect("empty room")
    }

    fn reload(store: &Store, st: &RoomState, model: &dyn Model) -> RoomState {
        let layout = st.layout().clone();
        let image = store.load_room(&layout).expect("load");
        RoomState::load(st.key.clone(), layout, image, model).expect("replays")
    }

    fn sorted(mut records: Vec<(String, String, Arc<Value>)>) -> Vec<(String, String, Arc<Value>)> {
        records.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        records
    }

    #[test]
    fn winners_are_numbered_in_order_and_later_changes_see_earlier_ones() {
        let model = PocketModel::default();
        let mut st = empty(crate::pocket::NAMESPACE, &model);
        let mut open = OpenBatch::default();
        let s = st.submit(
            &model,
            None,
            vec![doc("a", 1), doc("a", 1), doc("a", 2), doc("b", 1)],
            &mut open,
        );
        assert_eq!((s.accepted, s.seq), (3, 3));
        assert_eq!(s.heads_before.get("todos"), Some(&0));
        let again = st.submit(&model, None, vec![doc("b", 1)], &mut open);
        assert_eq!((again.accepted, again.seq), (0, 3));
        assert_eq!(again.heads_before.get("todos"), Some(&3));
        assert_eq!(
            open.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            open.entries[1].body.to_value().expect("json")["sequence"],
            2
        );
        assert_eq!(open.heads_before.get("todos"), Some(&0));
        assert_eq!((st.meta().records, st.meta().log_len), (2, 3));
        // Nothing is visible to readers before it is released.
        assert!(!st.is_latest_visible("todos", "a", 2));
        let commit = st.commit(open).expect("encode");
        st.release(&commit.entries);
        assert!(st.is_latest_visible("todos", "a", 2));
        assert!(!st.is_latest_visible("todos", "a", 1));
    }

    #[test]
    fn the_digest_depends_on_the_state_not_the_order() {
        let changes: Vec<IncomingChange> = [
            json!(["t", "1", "a", "x", 1, 1, "s1", 1, 0]),
            json!(["t", "1", "a", "y", 2, 1, "s2", 1, 0]),
            json!(["t", "2", "a", 5, 1, 1, "s1", 1, 0]),
        ]
        .iter()
        .map(|c| parse_change(c).expect("valid"))
        .collect();
        let digest_of = |order: &[usize]| {
            let mut st = empty(crate::relay::NAMESPACE, &RelayModel);
            let mut open = OpenBatch::default();
            for i in order {
                st.submit(&RelayModel, None, vec![changes[*i].clone()], &mut open);
            }
            (st.meta().digest, st.meta().records)
        };
        assert_eq!(digest_of(&[0, 1, 2]), digest_of(&[2, 1, 0]));
        assert_eq!(digest_of(&[1, 0, 2]), digest_of(&[0, 1, 2]));
        assert_ne!(digest_of(&[0, 2]).0, digest_of(&[0, 1, 2]).0);
    }

    /// Submits `changes` one by one in `order`, committing each to `store`.
    fn relay_run(store: &Store, changes: &[IncomingChange], order: &[usize]) -> RoomState {
        let mut st = empty(crate::relay::NAMESPACE, &RelayModel);
        for i in order {
            let mut open = OpenBatch::default();
            let change = changes[*i].clone();
            st.submit(&RelayModel, None, vec![change], &mut open);
            let commit = st.commit(open).expect("encode");
            store.apply(commit.writes).expect("apply");
            st.release(&commit.entries);
        }
        st
    }

    #[test]
    fn a_row_delete_ends_its_older_cells_whichever_arrives_first() {
        let changes: Vec<IncomingChange> = [
            json!(["t", "1", "a", "old", 5, 1, "s1", 1, 0]),
            json!(["t", "1", "-1", null, 1, 1, "s2", 2, 0]),
            json!(["t", "1", "b", "new", 1, 1, "s2", 3, 0]),
        ]
        .iter()
        .map(|c| parse_change(c).expect("valid"))
        .collect();
        let store = Store::memory();
        let first = relay_run(&store, &changes, &[0, 1, 2]);
        let second = relay_run(&Store::memory(), &changes, &[1, 2, 0]);
        assert_eq!(sorted(first.records()), sorted(second.records()));
        assert_eq!(first.meta().digest, second.meta().digest);
        assert_eq!(
            first.meta().records,
            1,
            "the re-created cell; the delete ended with its row's next life"
        );
        // The cell's change stays in the log; a reload ends it again.
        assert_eq!(first.meta().log_len, 3);
        let again = reload(&store, &first, &RelayModel);
        assert_eq!(again.meta(), first.meta());
        assert_eq!(sorted(again.records()), sorted(first.records()));
    }

    mod any_order {
        use super::*;
        use proptest::prelude::*;

        /// Cell writes and row deletes or re-creations of two rows: `(pk, cid, cl, cv, val)`.
        fn changes() -> impl Strategy<Value = Vec<IncomingChange>> {
            let change = (
                0..2u8,
                prop::sample::select(vec!["-1", "a", "b"]),
                1i64..5,
                0i64..3,
            )
                .prop_flat_map(|t| (Just(t), 0i64..3))
                .prop_map(|((pk, cid, cl, cv), val)| {
                    let val = if cid == "-1" { Value::Null } else { json!(val) };
                    parse_change(&json!(["t", pk.to_string(), cid, val, cv, 1, "s", cl, 0]))
                        .expect("valid")
                });
            prop::collection::vec(change, 1..10)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any order of arrival: one state, one digest, and a reload gives them back.
            #[test]
            fn rows_and_cells_converge(
                (changes, order) in changes().prop_flat_map(|v| {
                    let n = v.len();
                    (Just(v), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
                })
            ) {
                let in_order: Vec<usize> = (0..changes.len()).collect();
                let store = Store::memory();
                let a = relay_run(&store, &changes, &in_order);
                let b = relay_run(&Store::memory(), &changes, &order);
                prop_assert_eq!(sorted(a.records()), sorted(b.records()));
                prop_assert_eq!(a.meta().digest, b.meta().digest);
                prop_assert_eq!(a.meta().records, b.meta().records);
                let again = reload(&store, &a, &RelayModel);
                prop_assert_eq!(again.meta(), a.meta());
            }
        }
    }

    #[test]
    fn state_survives_a_reload_by_replaying_the_log() {
        let store = Store::memory();
        let model = RelayModel;
        let mut st = empty(crate::relay::NAMESPACE, &model);
        for round in 0..30u64 {
            let mut open = OpenBatch::default();
            let changes: Vec<IncomingChange> = (0..10)
                .map(|i| {
                    cell(
                        &format!("k{}", (round * 7 + i) % 40),
                        (round * 10 + i) as i64,
                    )
                })
                .collect();
            st.submit(&model, None, changes, &mut open);
            let commit = st.commit(open).expect("encode");
            store.apply(commit.writes).expect("apply");
            st.release(&commit.entries);
        }
        let again = reload(&store, &st, &model);
        assert_eq!(again.meta(), st.meta());
        assert_eq!(sorted(again.records()), sorted(st.records()));
        let k5 = cell("k5", 0).key;
        let latest = st
            .records
            .get("")
            .and_then(|r| r.get(&k5))
            .map_or(0, |r| r.seq);
        assert!(latest > 0 && again.is_latest_visible("", &k5, latest));
    }

    /// A number written with more digits than an f64 holds: the state hashed as it merged
    /// must be the state read back from storage, or a reload (or a peer replaying the log)
    /// reports another digest. Found by the `pocket_frames` fuzz target.
    #[test]
    fn a_long_decimal_reads_back_as_it_was_hashed() {
        let store = Store::memory();
        let model = PocketModel::default();
        let mut st = empty(crate::pocket::NAMESPACE, &model);
        let long = "1444444444444444444444444444444444444444444444444444444444444.\
                    44444444444444444444444444444444444444444444";
        let text = format!(
            r#"{{"operation":"insert","documentId":"a","document":{{"_id":"a","v":{long}}},"timestamp":6}}"#
        );
        let change = IncomingChange {
            stream: "todos".into(),
            key: "a".into(),
            body: serde_json::from_str(&text).expect("json"),
        };
        let mut open = OpenBatch::default();
        st.submit(&model, None, vec![change], &mut open);
        let commit = st.commit(open).expect("encode");
        store.apply(commit.writes).expect("apply");
        st.release(&commit.entries);
        let again = reload(&store, &st, &model);
        assert_eq!(again.meta(), st.meta());
    }

    #[test]
    fn compaction_keeps_the_latest_entry_per_record_and_the_state() {
        let store = Store::memory();
        let model = PocketModel {
            tombstone_retention_ms: Some(1000),
            ..PocketModel::default()
        };
        let mut st = empty(crate::pocket::NAMESPACE, &model);
        let delete = IncomingChange {
            stream: "todos".into(),
            key: "gone".into(),
            body: json!({"operation": "delete", "documentId": "gone", "document": null,
                         "timestamp": 5}),
        };
        for v in 0..70 {
            let mut open = OpenBatch::default();
            let mut changes = vec![doc("a", v), doc("b", 0)];
            if v == 69 {
                changes.push(delete.clone());
            }
            st.submit(&model, None, changes, &mut open);
            let commit = st.commit(open).expect("encode");
            store.apply(commit.writes).expect("apply");
            st.release(&commit.entries);
        }
        assert!(st.worth_compacting(true) && !st.worth_compacting(false));
        let job = st.compaction(
            store.clone(),
            Arc::new(model.clone()),
            10_000,
            st.meta().seq,
        );
        let report = job().expect("compact");
        // The old versions of "a" go, and the tombstone, whose retention ended at 1005.
        assert_eq!((report.removed, report.kept), (70, 2));
        st.compacted(&report);
        assert_eq!(st.meta().log_len, 2);
        let again = reload(&store, &st, &model);
        assert_eq!(again.meta(), st.meta());
        assert_eq!(sorted(again.records()), sorted(st.records()));
    }
}
