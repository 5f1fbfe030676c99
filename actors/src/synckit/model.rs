//! The SyncKit data model: a document is a flat map `field → JSON value` with a vector clock.
//! Each field is one state record, merged by last-writer-wins.

use std::cmp::Ordering;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::model::{IncomingChange, Merge, Model, object};

/// The SyncKit merge rules; `batch` is the broadcast coalescing window (`synckit.batch_ms`).
#[derive(Debug, Clone, Default)]
pub struct SynckitModel {
    pub batch: Duration,
}

/// A write's position in the LWW order: timestamp, then the writer's clock counter, then the
/// writer id as a string.
#[derive(Debug, Clone, PartialEq)]
struct Stamp<'a> {
    ts: f64,
    counter: u64,
    writer: &'a str,
}

impl Stamp<'_> {
    fn cmp(&self, other: &Stamp<'_>) -> Ordering {
        self.ts
            .total_cmp(&other.ts)
            .then(self.counter.cmp(&other.counter))
            .then(self.writer.cmp(other.writer))
    }
}

/// The stamp of an incoming write: `{ts, counter, writer, …}`.
fn stamp_of_write(body: &Value) -> Stamp<'_> {
    Stamp {
        ts: body.get("ts").and_then(Value::as_f64).unwrap_or(0.0),
        counter: body.get("counter").and_then(Value::as_u64).unwrap_or(0),
        writer: body.get("writer").and_then(Value::as_str).unwrap_or(""),
    }
}

/// The stamp of a field's record: `[t, c, w, …]`.
fn stamp_of_record(record: &Value) -> Stamp<'_> {
    Stamp {
        ts: record.get(0).and_then(Value::as_f64).unwrap_or(0.0),
        counter: record.get(1).and_then(Value::as_u64).unwrap_or(0),
        writer: record.get(2).and_then(Value::as_str).unwrap_or(""),
    }
}

/// A field record's value; `None` once the field is deleted.
pub fn field_value(record: &Value) -> Option<&Value> {
    record.get(3)
}

/// The value a field delete is written as.
pub fn is_delete(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("__deleted") == Some(&Value::Bool(true)))
}

/// The most writers a document's clock names. Every delta carries the whole clock to every
/// subscriber, so it must stay small whatever clients send; writers past this many are not
/// added (their writes still merge by timestamp, counter and id).
pub const MAX_CLOCK_ENTRIES: usize = 256;

/// The longest writer id a clock may hold, in bytes.
pub const MAX_CLOCK_KEY_BYTES: usize = 128;

/// A writer's entry in a clock (0 when absent).
fn entry(clock: &Value, writer: &str) -> u64 {
    clock.get(writer).and_then(Value::as_u64).unwrap_or(0)
}

/// The counter a write is ordered by: the one it sent, unless that is not above the document
/// clock's entry for its writer; then that entry plus one. A writer never ties with itself, so a
/// session's later write beats its own earlier one.
fn effective_counter(clock: &Value, writer: &str, sent: u64) -> u64 {
    let known = entry(clock, writer);
    if sent > known {
        sent
    } else {
        known.saturating_add(1)
    }
}

/// Sets `writer`'s entry to `counter` (a write ticks its writer), then merges `sent` into the
/// clock by pointwise maximum; entries past [`MAX_CLOCK_ENTRIES`] are left out.
fn advance_clock(clock: &mut Value, writer: &str, counter: u64, sent: Option<&Map<String, Value>>) {
    if !clock.is_object() {
        *clock = Value::Object(Map::new());
    }
    let Some(c) = clock.as_object_mut() else {
        return;
    };
    let raise = |c: &mut Map<String, Value>, node: &str, n: u64| {
        let ours = c.get(node).and_then(Value::as_u64);
        let room = ours.is_some() || c.len() < MAX_CLOCK_ENTRIES;
        if room && node.len() <= MAX_CLOCK_KEY_BYTES && ours.is_none_or(|o| n > o) {
            c.insert(node.to_owned(), Value::from(n));
        }
    };
    raise(c, writer, counter);
    for (node, n) in sent.into_iter().flatten() {
        raise(c, node, n.as_u64().unwrap_or(0));
    }
}

impl Model for SynckitModel {
    /// `incoming.key` is the field; `incoming.body` is `{value, ts, counter, writer, clock}`.
    /// A field's record is `[t, c, w, value]`, or `[t, c, w]` once deleted: the tombstone keeps
    /// its stamp so an older write cannot bring the field back. (An array, not an object:
    /// reading it takes no key lookups.)
    fn merge(
        &self,
        clock: &mut Value,
        current: Option<&Value>,
        incoming: &IncomingChange,
    ) -> Merge {
        let body = &incoming.body;
        let mut new = stamp_of_write(body);
        new.counter = effective_counter(clock, new.writer, new.counter);
        let value = body.get("value").cloned().unwrap_or(Value::Null);
        if let Some(cur) = current {
            let old = stamp_of_record(cur);
            // A resend: the same writer's write of the same value at the same time. It must not
            // count as the writer's next write.
            let resend = old.writer == new.writer
                && old.ts == new.ts
                && (field_value(cur) == Some(&value)
                    || (is_delete(&value) && cur.get(3).is_none()));
            if resend || new.cmp(&old) != Ordering::Greater {
                return Merge::Unchanged;
            }
        }
        let deleted = is_delete(&value);
        advance_clock(
            clock,
            new.writer,
            new.counter,
            body.get("clock").and_then(Value::as_object),
        );
        let logged = object([
            ("field", Value::from(incoming.key.as_str())),
            (
                "value",
                if deleted {
                    object([("__deleted", Value::Bool(true))])
                } else {
                    value
                },
            ),
            ("clock", clock.clone()),
            ("clientId", Value::from(new.writer)),
            ("counter", Value::from(new.counter)),
            ("timestamp", body["ts"].clone()),
            ("seq", Value::from(0)),
        ]);
        Merge::Apply { logged }
    }

    /// `[t, c, w, value]`, or `[t, c, w]` for a delete.
    fn state_of(&self, logged: &Value) -> Value {
        let mut record = vec![
            logged["timestamp"].clone(),
            Value::from(logged.get("counter").and_then(Value::as_u64).unwrap_or(0)),
            logged["clientId"].clone(),
        ];
        match logged.get("value") {
            Some(v) if is_delete(v) => {}
            v => record.push(v.cloned().unwrap_or(Value::Null)),
        }
        Value::Array(record)
    }

    /// A logged write carries the document's clock after it.
    fn replay(&self, clock: &mut Value, logged: &Value) {
        if let Some(after) = logged.get("clock").filter(|c| c.is_object()) {
            *clock = after.clone();
        }
    }

    fn stamp(&self, logged: &mut Value, seq: u64) {
        if let Some(o) = logged.as_object_mut() {
            o.insert("seq".into(), Value::from(seq));
        }
    }

    fn broadcast_window(&self) -> Duration {
        self.batch
    }
}

/// The live fields of a document's records: `(field, record)` → `(field, value)`, deleted
/// fields left out.
pub fn live_fields<'a>(
    records: impl Iterator<Item = (&'a str, &'a Value)>,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    records.filter_map(|(f, r)| Some((f, field_value(r)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document_state<'a>(
        records: impl Iterator<Item = (&'a str, &'a Value)>,
    ) -> Map<String, Value> {
        live_fields(records)
            .map(|(f, v)| (f.to_owned(), v.clone()))
            .collect()
    }

    fn write(field: &str, value: Value, ts: i64, counter: u64, writer: &str) -> IncomingChange {
        IncomingChange {
            stream: String::new(),
            key: field.into(),
            body: json!({"value": value, "ts": ts, "counter": counter, "writer": writer,
                         "clock": {writer: counter}}),
        }
    }

    fn apply(
        m: &SynckitModel,
        clock: &mut Value,
        cur: Option<&Value>,
        w: &IncomingChange,
    ) -> Option<Value> {
        match m.merge(clock, cur, w) {
            Merge::Apply { logged } => Some(m.state_of(&logged)),
            Merge::Unchanged => None,
            Merge::Reject { .. } => panic!("synckit never rejects"),
        }
    }

    #[test]
    fn lww_orders_by_timestamp_then_counter_then_writer() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let first =
            apply(&m, &mut clock, None, &write("f", json!(1), 10, 3, "a")).expect("applies");
        // (timestamp, counter, writer) against the stored (10, 3, "a").
        let cases = [
            (
                9,
                9,
                "z",
                false,
                "an older timestamp loses whatever its counter",
            ),
            (
                10,
                4,
                "a",
                true,
                "equal timestamps: the larger counter wins",
            ),
            (
                10,
                2,
                "z",
                false,
                "equal timestamps: the smaller counter loses",
            ),
            (
                10,
                3,
                "b",
                true,
                "equal counters: the larger writer id wins",
            ),
            (
                10,
                3,
                "A",
                false,
                "equal counters: the smaller writer id loses",
            ),
            (
                10,
                3,
                "a",
                true,
                "the writer's next write (its counter is not above its entry) beats its last",
            ),
            (11, 0, "0", true, "a newer timestamp wins"),
        ];
        for (ts, counter, writer, wins, why) in cases {
            let w = write("f", json!(2), ts, counter, writer);
            assert_eq!(
                apply(&m, &mut clock, Some(&first), &w).is_some(),
                wins,
                "{why}"
            );
        }
    }

    #[test]
    fn a_resend_changes_nothing() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let w = write("f", json!(1), 10, 3, "a");
        let first = apply(&m, &mut clock, None, &w).expect("applies");
        assert!(apply(&m, &mut clock, Some(&first), &w).is_none());
    }

    #[test]
    fn a_writer_never_ties_with_itself() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let w = |v: i64| IncomingChange {
            stream: String::new(),
            key: "f".into(),
            body: json!({"value": v, "ts": 10, "counter": 0, "writer": "s", "clock": {}}),
        };
        let first = apply(&m, &mut clock, None, &w(1)).expect("applies");
        let second = apply(&m, &mut clock, Some(&first), &w(2)).expect("the later write wins");
        assert_eq!(field_value(&second), Some(&json!(2)));
        assert_eq!(clock, json!({"s": 2}));
    }

    #[test]
    fn clock_arithmetic_saturates() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let first = apply(
            &m,
            &mut clock,
            None,
            &write("f", json!(1), 10, u64::MAX, "c"),
        )
        .expect("applies");
        assert_eq!(clock, json!({"c": u64::MAX}));
        // The writer's next write cannot count past the largest counter, and the clock never
        // goes backwards.
        let next = apply(
            &m,
            &mut clock,
            Some(&first),
            &write("f", json!(2), 11, 1, "c"),
        );
        assert!(next.is_some());
        assert_eq!(clock, json!({"c": u64::MAX}));
    }

    #[test]
    fn the_clock_holds_a_bounded_number_of_writers() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let mut cur = None;
        for round in 0..4 {
            let sent: Map<String, Value> = (0..200)
                .map(|i| (format!("w{round}-{i}"), Value::from(1)))
                .collect();
            let mut w = write("f", json!(round), 10 + round, 1, "a");
            w.body["clock"] = Value::Object(sent);
            cur = apply(&m, &mut clock, cur.as_ref(), &w);
            assert!(cur.is_some());
        }
        let entries = clock.as_object().map_or(0, Map::len);
        assert_eq!(entries, MAX_CLOCK_ENTRIES);
        assert_eq!(clock["a"], json!(4), "the writers already in it still tick");
    }

    #[test]
    fn deletes_are_tombstones_through_the_same_rule() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let v = apply(&m, &mut clock, None, &write("f", json!("x"), 10, 1, "a")).expect("applies");
        let del = write("f", json!({"__deleted": true}), 20, 1, "a");
        let tomb = apply(&m, &mut clock, Some(&v), &del).expect("delete wins");
        assert_eq!(field_value(&tomb), None);
        assert_eq!(document_state([("f", &tomb)].into_iter()), Map::new());
        // An older write cannot resurrect it; a newer one re-creates the field.
        assert!(
            apply(
                &m,
                &mut clock,
                Some(&tomb),
                &write("f", json!("old"), 15, 5, "b")
            )
            .is_none()
        );
        let back = apply(
            &m,
            &mut clock,
            Some(&tomb),
            &write("f", json!(null), 30, 1, "b"),
        )
        .expect("applies");
        assert_eq!(
            document_state([("f", &back)].into_iter()),
            obj(json!({"f": null}))
        );
    }

    #[test]
    fn the_clock_ticks_the_writer_and_merges_the_sent_clock() {
        let m = SynckitModel::default();
        let mut clock = Value::Null;
        let mut w = write("f", json!(1), 10, 5, "a");
        w.body["clock"] = json!({"a": 5, "b": 7});
        let Merge::Apply { logged, .. } = m.merge(&mut clock, None, &w) else {
            panic!("applies");
        };
        assert_eq!(clock, json!({"a": 5, "b": 7}));
        assert_eq!(logged["clock"], clock);
        assert_eq!(logged["clientId"], "a");
        m.merge(&mut clock, None, &write("g", json!(1), 10, 0, "c"));
        assert_eq!(clock, json!({"a": 5, "b": 7, "c": 1}));
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }
}
