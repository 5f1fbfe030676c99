//! Pocket message builders shared by the tests.

use serde_json::{Value, json};

pub fn change(op: &str, id: &str, doc: Value) -> Value {
    json!({"operation": op, "documentId": id, "document": doc, "timestamp": 1000, "sequence": 0})
}

pub fn push(id: &str, collection: &str, changes: Vec<Value>, checkpoint: Value) -> Value {
    json!({"type": "push", "id": id, "timestamp": 1, "collection": collection,
           "changes": changes, "checkpoint": checkpoint})
}

/// A push of one insert per `(documentId, v)` into `todos`.
pub fn push_docs(id: &str, docs: &[(&str, i64)]) -> Value {
    let changes = docs
        .iter()
        .map(|(d, v)| change("insert", d, json!({"v": v})))
        .collect();
    push(id, "todos", changes, json!({}))
}

pub fn pull(id: &str, collections: &[&str], checkpoint: Value, limit: Option<u64>) -> Value {
    let mut v = json!({"type": "pull", "id": id, "timestamp": 1, "collections": collections,
                       "checkpoint": checkpoint});
    if let Some(l) = limit {
        v["limit"] = json!(l);
    }
    v
}
