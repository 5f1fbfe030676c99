//! Changes the room tests submit.

use serde_json::json;

use crate::model::IncomingChange;
use crate::relay::parse_change;

/// A Pocket insert of document `id` in `todos`.
pub fn doc(id: &str, v: i64) -> IncomingChange {
    IncomingChange {
        stream: "todos".into(),
        key: id.into(),
        body: json!({"operation": "insert", "documentId": id,
                     "document": {"_id": id, "v": v}, "timestamp": 1}),
    }
}

/// A relay write of cell `(t, pk, c)` whose value and column version are `v`.
pub fn cell(pk: &str, v: i64) -> IncomingChange {
    parse_change(&json!(["t", pk, "c", v, v, 1, "s1", 1, 0])).expect("valid")
}
