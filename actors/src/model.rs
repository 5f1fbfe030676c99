//! The seam between the Room engine and a dialect's data model.
//!
//! A Room orders, stores, acknowledges and broadcasts changes without knowing what they mean;
//! its namespace's [`Model`] decides how one incoming change meets the current state of the
//! record it addresses.

use serde_json::{Map, Value};

/// A JSON object of `fields`, moving the values in. On hot paths this replaces `json!`, which
/// copies every value it interpolates by serialising it.
pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

/// One change as a codec hands it to a room: what it addresses and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingChange {
    /// Sub-stream inside the room (a Pocket collection); empty where a dialect has none.
    pub stream: String,
    /// The state record addressed (a document id, a field, a cell).
    pub key: String,
    /// The change, already validated by the codec.
    pub body: Value,
}

/// What a change does to the room.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// The change alters the state: `logged` is the change as it is logged and sent to peers
    /// (before the room stamps its sequence number into it); the record's new value is
    /// [`Model::state_of`] it.
    Apply { logged: Value },
    /// The change loses against the stored state; `report` tells the sender why.
    Reject { report: Value },
    /// The change leaves the state as it is (a resend, an equal write).
    Unchanged,
}

/// A dialect's merge rules. One instance serves every room of a namespace.
pub trait Model: Send + Sync + 'static {
    /// Decides what `incoming` does to `current` (the record's stored value, if any).
    /// `room_state` is the model's room-wide value (e.g. a document's vector clock; `Null` in a
    /// new room); the model may change it only when it returns [`Merge::Apply`].
    fn merge(
        &self,
        room_state: &mut Value,
        current: Option<&Value>,
        incoming: &IncomingChange,
    ) -> Merge;

    /// The value a logged change leaves its record with. A room derives every state from its
    /// log this way, when it merges and when it replays its log after a restart, so the two can
    /// never disagree.
    fn state_of(&self, logged: &Value) -> Value;

    /// Brings the room-wide value up to a change another node logged, when a room catches up
    /// from a peer's log instead of merging the change itself.
    fn replay(&self, _room_state: &mut Value, _logged: &Value) {}

    /// Writes the room's sequence number into a logged change.
    fn stamp(&self, logged: &mut Value, seq: u64);

    /// Whether a stored record is a tombstone whose retention ended at `now_ms`: compaction then
    /// drops its log entry (the record itself stays, to keep answering conflicts).
    fn tombstone_expired(&self, _state: &Value, _now_ms: i64) -> bool {
        false
    }

    /// How long a room gathers accepted changes before broadcasting them, keeping the latest
    /// change per record; zero broadcasts each commit as it becomes durable.
    fn broadcast_window(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// The rules of records that govern others (relay's rows govern their cells), for a model
    /// that has such groups; `None` merges every record on its own.
    fn rows(&self) -> Option<&dyn RowRules> {
        None
    }
}

/// Groups of records where one record, the governing one, also decides the merges of the others
/// (a relay row's `-1` record and the row's cells). A room asks a model for them through
/// [`Model::rows`], and uses them in place of [`Model::merge`] for the records they concern.
pub trait RowRules: Send + Sync {
    /// The record whose state also decides the merge of a change to record `key` whose body is
    /// `change` (a relay cell's row), if any.
    fn governing_key(&self, key: &str, change: &Value) -> Option<String>;

    /// [`RowRules::governing_key`] of a record known by its key alone (a stored record, whose
    /// change is not at hand).
    fn governing_key_of(&self, key: &str) -> Option<String>;

    /// Whether record `key` may govern others (a relay row's `-1` record). Cheap: it is asked
    /// for every record written.
    fn is_governing(&self, key: &str) -> bool;

    /// Whether record state `earlier` belongs to an earlier life of its group (a governing
    /// record and those it governs) than `later`: a change leaving a record in `earlier` would
    /// now lose (a relay cell or row delete from before the row was deleted or re-created). It
    /// orders the states of a group; the room drops the records the latest one ends, so the
    /// state does not depend on the order of arrival.
    fn ended_by(&self, later: &Value, earlier: &Value) -> bool;

    /// [`Model::merge`] for a change whose [`RowRules::governing_key`] names a record:
    /// `governing` is that record's state, `siblings` the states of the other records it
    /// governs.
    fn merge_governed(
        &self,
        room_state: &mut Value,
        current: Option<&Value>,
        governing: Option<&Value>,
        siblings: &[&Value],
        incoming: &IncomingChange,
    ) -> Merge;

    /// [`Model::merge`] for a change to a governing record ([`RowRules::is_governing`]):
    /// `governed` are the states of the records it governs, which may be newer than the
    /// governing record itself (a relay row re-created by a column change alone).
    fn merge_governing(
        &self,
        room_state: &mut Value,
        current: Option<&Value>,
        governed: &[&Value],
        incoming: &IncomingChange,
    ) -> Merge;
}
