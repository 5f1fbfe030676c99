//! A room's materialised state, held in memory, and the write pipeline that runs against it:
//! merge (the namespace's [`Model`]) → number ([`Numbering`]) → persist (one storage batch per
//! commit). No storage read happens on this path.

use std::collections::HashMap;

use serde_json::Value;

use super::messages::Submitted;
use super::numbering::Numbering;
use crate::model::{IncomingChange, Merge, Model};
use crate::origin::Origin;
use crate::raw_json::RawJson;
use crate::room_key::RoomKey;
use crate::store::{
    CompactReport, Digest, KvBatch, LogEntry, RoomImage, RoomLayout, RoomMeta, StateWrite,
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
    value: Value,
}

/// The digest contribution of a model's room-wide value.
fn model_hash(model: &Value) -> Digest {
    if model.is_null() {
        return Digest::default();
    }
    state_hash("\u{0}model", "", &model.to_string())
}

/// A new state waiting to be written.
struct PendingState {
    stream: String,
    key: String,
    seq: u64,
    hash: Digest,
    json: String,
}

/// Accepted changes that have not been handed to storage yet.
#[derive(Default)]
pub struct OpenBatch {
    entries: Vec<LogEntry>,
    states: Vec<PendingState>,
    /// For each stream in `entries`, its head before the first of them.
    heads_before: HashMap<String, u64>,
}

impl OpenBatch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
}

impl RoomState {
    pub fn new(key: RoomKey, layout: RoomLayout, image: RoomImage) -> RoomState {
        let mut records: HashMap<String, HashMap<String, Record>> = HashMap::new();
        for (stream, key, r) in image.records {
            records.entry(stream).or_default().insert(
                key,
                Record {
                    seq: r.seq,
                    visible: r.seq,
                    hash: r.hash,
                    value: r.value,
                },
            );
        }
        RoomState {
            key,
            layout,
            model_hash: model_hash(&image.meta.model),
            meta: image.meta,
            records,
        }
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
        numbering: &dyn Numbering,
        origin: Option<&Origin>,
        changes: Vec<IncomingChange>,
        open: &mut OpenBatch,
    ) -> Submitted {
        let mut out = Submitted::default();
        for change in changes {
            if !out.heads_before.contains_key(&change.stream) {
                out.heads_before
                    .insert(change.stream.clone(), self.meta.head(&change.stream));
            }
            if !self.records.contains_key(&change.stream) {
                self.records.insert(change.stream.clone(), HashMap::new());
            }
            let Some(records) = self.records.get_mut(&change.stream) else {
                continue;
            };
            let current = records.get(&change.key).map(|r| &r.value);
            let (state, mut logged) = match model.merge(&mut self.meta.model, current, &change) {
                Merge::Unchanged => continue,
                Merge::Reject { report } => {
                    out.rejected.push(report);
                    continue;
                }
                Merge::Apply { state, logged } => (state, logged),
            };
            let seq = numbering.next(&self.key, self.meta.seq);
            model.stamp(&mut logged, seq);
            let json = state.to_string();
            let hash = state_hash(&change.stream, &change.key, &json);
            match records.get_mut(&change.key) {
                Some(old) => {
                    self.meta.digest.toggle(&old.hash);
                    // What readers may see stays as it was until this change is durable.
                    *old = Record {
                        seq,
                        visible: old.visible,
                        hash,
                        value: state,
                    };
                }
                None => {
                    let record = Record {
                        seq,
                        visible: 0,
                        hash,
                        value: state,
                    };
                    records.insert(change.key.clone(), record);
                    self.meta.records += 1;
                }
            }
            self.meta.digest.toggle(&hash);
            self.meta.seq = seq;
            self.meta.log_len += 1;
            let before = match self.meta.heads.get_mut(&change.stream) {
                Some(head) => std::mem::replace(head, seq),
                None => {
                    self.meta.heads.insert(change.stream.clone(), seq);
                    0
                }
            };
            if !open.heads_before.contains_key(&change.stream) {
                open.heads_before.insert(change.stream.clone(), before);
            }
            open.states.push(PendingState {
                stream: change.stream.clone(),
                key: change.key.clone(),
                seq,
                hash,
                json,
            });
            open.entries.push(LogEntry {
                seq,
                stream: change.stream,
                key: change.key,
                body: RawJson::from_value(&logged),
                origin: origin.cloned(),
            });
            out.accepted += 1;
        }
        if out.accepted > 0 {
            let after = model_hash(&self.meta.model);
            if after != self.model_hash {
                self.meta.digest.toggle(&self.model_hash);
                self.meta.digest.toggle(&after);
                self.model_hash = after;
            }
        }
        out.seq = self.meta.seq;
        out
    }

    /// Turns the open batch into one storage batch carrying the room's counters as they are now.
    pub fn commit(&self, open: OpenBatch) -> Result<Commit, StorageError> {
        let states = open.states.iter().map(|s| StateWrite {
            stream: &s.stream,
            key: &s.key,
            seq: s.seq,
            hash: s.hash,
            json: &s.json,
        });
        let writes = Store::commit_batch(&self.layout, &self.meta, &open.entries, states)?;
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

    /// Drops the log entries that no longer matter (superseded changes, expired tombstones).
    pub fn compact(
        &mut self,
        store: &Store,
        model: &dyn Model,
        now_ms: i64,
    ) -> Result<CompactReport, StorageError> {
        let records = &self.records;
        store.compact(&self.layout, &mut self.meta, &mut |stream, key, seq| {
            records
                .get(stream)
                .and_then(|s| s.get(key))
                .is_some_and(|r| r.seq == seq && !model.tombstone_expired(&r.value, now_ms))
        })
    }

    /// `(stream, key, value)` of every record.
    pub fn records(&self) -> Vec<(String, String, Value)> {
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
    use crate::room::numbering::LocalCounter;
    use crate::room_key::Namespace;
    use serde_json::json;

    fn room(ns: Namespace) -> (RoomKey, RoomLayout) {
        let key = RoomKey::new(ns, "r").expect("key");
        let layout = RoomLayout::new(&key);
        (key, layout)
    }

    fn doc(id: &str, v: i64) -> IncomingChange {
        IncomingChange {
            stream: "todos".into(),
            key: id.into(),
            body: json!({"operation": "insert", "documentId": id,
                         "document": {"_id": id, "v": v}, "timestamp": 1}),
        }
    }

    #[test]
    fn winners_are_numbered_in_order_and_later_changes_see_earlier_ones() {
        let (key, layout) = room(Namespace::Pocket);
        let mut st = RoomState::new(key, layout, RoomImage::default());
        let model = PocketModel::default();
        let mut open = OpenBatch::default();
        let s = st.submit(
            &model,
            &LocalCounter,
            None,
            vec![doc("a", 1), doc("a", 1), doc("a", 2), doc("b", 1)],
            &mut open,
        );
        assert_eq!((s.accepted, s.seq), (3, 3));
        assert_eq!(s.heads_before.get("todos"), Some(&0));
        let again = st.submit(&model, &LocalCounter, None, vec![doc("b", 1)], &mut open);
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
            let (key, layout) = room(Namespace::Relay);
            let mut st = RoomState::new(key, layout, RoomImage::default());
            let mut open = OpenBatch::default();
            for i in order {
                st.submit(
                    &RelayModel,
                    &LocalCounter,
                    None,
                    vec![changes[*i].clone()],
                    &mut open,
                );
            }
            (st.meta().digest, st.meta().records)
        };
        assert_eq!(digest_of(&[0, 1, 2]), digest_of(&[2, 1, 0]));
        assert_eq!(digest_of(&[1, 0, 2]), digest_of(&[0, 1, 2]));
        assert_ne!(digest_of(&[0, 2]).0, digest_of(&[0, 1, 2]).0);
    }

    #[test]
    fn state_survives_a_reload_from_storage() {
        let store = Store::memory();
        let (key, layout) = room(Namespace::Pocket);
        let mut st = RoomState::new(key.clone(), layout.clone(), RoomImage::default());
        let mut open = OpenBatch::default();
        st.submit(
            &PocketModel::default(),
            &LocalCounter,
            None,
            vec![doc("a", 1), doc("b", 2), doc("a", 3)],
            &mut open,
        );
        let commit = st.commit(open).expect("encode");
        store.apply(commit.writes).expect("apply");
        let again = RoomState::new(key, layout.clone(), store.load_room(&layout).expect("load"));
        assert_eq!(again.meta(), st.meta());
        let mut a = again.records();
        let mut b = st.records();
        a.sort_by(|x, y| x.1.cmp(&y.1));
        b.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(a, b);
        assert!(again.is_latest_visible("todos", "a", 3));
    }
}
