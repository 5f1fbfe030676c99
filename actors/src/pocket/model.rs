//! The Pocket data model: whole JSON documents per `(collection, documentId)`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::conflict::{Resolution, Strategy, detect_conflict, resolve};
use crate::model::{IncomingChange, Merge, Model, object};

/// Pocket's merge rules with the hub's conflict strategies.
#[derive(Debug, Clone)]
pub struct PocketModel {
    pub default_strategy: Strategy,
    pub collection_strategies: HashMap<String, Strategy>,
    /// How long a delete stays in the log for catch-up once compaction runs; `None` keeps it.
    pub tombstone_retention_ms: Option<i64>,
}

impl Default for PocketModel {
    fn default() -> PocketModel {
        PocketModel {
            default_strategy: Strategy::LastWriteWins,
            collection_strategies: HashMap::new(),
            tombstone_retention_ms: None,
        }
    }
}

/// The stored form of a deleted document.
pub fn tombstone(id: &str, updated_at: &Value) -> Value {
    json!({"_id": id, "_deleted": true, "_updatedAt": updated_at})
}

impl PocketModel {
    pub fn strategy(&self, collection: &str) -> Strategy {
        self.collection_strategies
            .get(collection)
            .copied()
            .unwrap_or(self.default_strategy)
    }
}

impl Model for PocketModel {
    /// `incoming.body` is a change event the codec validated and normalised: `operation`,
    /// `documentId`, `document` (an object with `_id`, or null for a bare delete) and a numeric
    /// `timestamp`.
    fn merge(&self, _: &mut Value, current: Option<&Value>, incoming: &IncomingChange) -> Merge {
        let body = &incoming.body;
        let op = body.get("operation").and_then(Value::as_str).unwrap_or("");
        let sent_doc = body.get("document").and_then(Value::as_object);
        let stored = current.and_then(Value::as_object);
        if op == super::wire::REFUSED {
            // The stored version, or a bare `{_id}` for a document the hub never had: the
            // engine resolves every conflict against an object.
            let server = stored
                .map(|d| Value::Object(d.clone()))
                .unwrap_or_else(|| json!({"_id": incoming.key}));
            return Merge::Reject {
                report: json!({"documentId": incoming.key, "serverDocument": server}),
            };
        }
        let tomb = || {
            let at = sent_doc
                .and_then(|d| d.get("_updatedAt"))
                .or_else(|| body.get("timestamp"))
                .cloned()
                .unwrap_or(Value::from(0));
            tombstone(&incoming.key, &at)
        };
        let mut next = if op == "delete" {
            tomb()
        } else {
            Value::Object(sent_doc.cloned().unwrap_or_else(Map::new))
        };
        if let (Some(stored), Some(sent)) = (stored, sent_doc)
            && detect_conflict(stored, sent)
        {
            match resolve(self.strategy(&incoming.stream), stored, sent) {
                Resolution::KeepStored => {
                    return Merge::Reject {
                        report: json!({
                            "documentId": incoming.key,
                            "serverDocument": Value::Object(stored.clone()),
                        }),
                    };
                }
                Resolution::Store(doc) if op != "delete" => next = Value::Object(doc),
                Resolution::Store(_) => {}
            }
        }
        if current == Some(&next) {
            return Merge::Unchanged;
        }
        let logged = object([
            ("operation", Value::from(op)),
            ("documentId", Value::from(incoming.key.as_str())),
            ("document", next),
            (
                "timestamp",
                body.get("timestamp").cloned().unwrap_or(Value::from(0)),
            ),
            ("sequence", Value::from(0)),
        ]);
        Merge::Apply { logged }
    }

    /// The stored document: what the change wrote, merged or tombstone.
    fn state_of(&self, logged: &Value) -> Value {
        logged.get("document").cloned().unwrap_or(Value::Null)
    }

    fn stamp(&self, logged: &mut Value, seq: u64) {
        if let Some(obj) = logged.as_object_mut() {
            obj.insert("sequence".into(), Value::from(seq));
        }
    }

    fn tombstone_expired(&self, state: &Value, now_ms: i64) -> bool {
        let Some(retention) = self.tombstone_retention_ms else {
            return false;
        };
        let deleted = state.get("_deleted").and_then(Value::as_bool) == Some(true);
        let at = state
            .get("_updatedAt")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        deleted && at + (retention as f64) < now_ms as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: &str, id: &str, doc: Value, ts: i64) -> IncomingChange {
        IncomingChange {
            stream: "todos".into(),
            key: id.into(),
            body: json!({"operation": op, "documentId": id, "document": doc, "timestamp": ts}),
        }
    }

    fn with(strategy: Strategy) -> PocketModel {
        PocketModel {
            default_strategy: strategy,
            ..PocketModel::default()
        }
    }

    #[test]
    fn a_new_document_is_applied_and_logged() {
        let m = PocketModel::default();
        let doc = json!({"_id": "a", "title": "x", "_rev": "1-a"});
        let Merge::Apply { mut logged } = m.merge(
            &mut Value::Null,
            None,
            &change("insert", "a", doc.clone(), 5),
        ) else {
            panic!("expected apply");
        };
        assert_eq!(m.state_of(&logged), doc);
        m.stamp(&mut logged, 42);
        assert_eq!(logged["sequence"], json!(42));
        assert_eq!(logged["document"], doc);
        assert_eq!(logged["operation"], json!("insert"));
    }

    #[test]
    fn resends_are_unchanged() {
        let m = PocketModel::default();
        let doc = json!({"_id": "a", "title": "x", "_rev": "1-a"});
        let c = change("update", "a", doc.clone(), 5);
        assert_eq!(m.merge(&mut Value::Null, Some(&doc), &c), Merge::Unchanged);
        let tomb = tombstone("a", &json!(9));
        assert_eq!(
            m.merge(
                &mut Value::Null,
                Some(&tomb),
                &change("delete", "a", Value::Null, 9)
            ),
            Merge::Unchanged
        );
    }

    #[test]
    fn deletes_store_tombstones() {
        let m = PocketModel::default();
        let doc = json!({"_id": "a", "title": "x"});
        let Merge::Apply { logged } = m.merge(
            &mut Value::Null,
            Some(&doc),
            &change("delete", "a", Value::Null, 7),
        ) else {
            panic!("expected apply");
        };
        let state = m.state_of(&logged);
        assert_eq!(
            state,
            json!({"_id": "a", "_deleted": true, "_updatedAt": 7})
        );
        assert_eq!(logged["document"], state);
        let sent = json!({"_id": "a", "_updatedAt": 11});
        let Merge::Apply { logged } = m.merge(
            &mut Value::Null,
            Some(&doc),
            &change("delete", "a", sent, 7),
        ) else {
            panic!("expected apply");
        };
        assert_eq!(m.state_of(&logged)["_updatedAt"], json!(11));
    }

    #[test]
    fn losing_changes_report_the_server_document() {
        let stored = json!({"_id": "a", "v": 1, "_rev": "2-s", "_updatedAt": 10});
        let sent = json!({"_id": "a", "v": 2, "_rev": "2-c", "_updatedAt": 20});
        let older = json!({"_id": "a", "v": 3, "_rev": "2-o", "_updatedAt": 1});
        let reject = Merge::Reject {
            report: json!({"documentId": "a", "serverDocument": stored.clone()}),
        };
        let server_wins = with(Strategy::ServerWins);
        assert_eq!(
            server_wins.merge(
                &mut Value::Null,
                Some(&stored),
                &change("update", "a", sent.clone(), 1)
            ),
            reject
        );
        let lww = PocketModel::default();
        assert_eq!(
            lww.merge(
                &mut Value::Null,
                Some(&stored),
                &change("update", "a", older.clone(), 1)
            ),
            reject
        );
        assert!(matches!(
            lww.merge(&mut Value::Null, Some(&stored), &change("update", "a", sent.clone(), 1)),
            Merge::Apply { logged } if lww.state_of(&logged) == sent
        ));
        let client_wins = with(Strategy::ClientWins);
        assert!(matches!(
            client_wins.merge(&mut Value::Null, Some(&stored), &change("update", "a", older.clone(), 1)),
            Merge::Apply { logged } if client_wins.state_of(&logged) == older
        ));
        // A per-collection override beats the default.
        let mut per = with(Strategy::ClientWins);
        per.collection_strategies
            .insert("todos".into(), Strategy::ServerWins);
        assert_eq!(
            per.merge(
                &mut Value::Null,
                Some(&stored),
                &change("update", "a", older, 1)
            ),
            reject
        );
    }

    #[test]
    fn refused_changes_report_the_stored_version_whatever_the_strategy() {
        let stored = json!({"_id": "a", "v": 1, "_updatedAt": 10});
        let refused = IncomingChange {
            stream: "todos".into(),
            key: "a".into(),
            body: json!({"operation": super::super::wire::REFUSED, "documentId": "a"}),
        };
        for model in [with(Strategy::ClientWins), PocketModel::default()] {
            assert_eq!(
                model.merge(&mut Value::Null, Some(&stored), &refused),
                Merge::Reject {
                    report: json!({"documentId": "a", "serverDocument": stored.clone()})
                }
            );
            assert_eq!(
                model.merge(&mut Value::Null, None, &refused),
                Merge::Reject {
                    report: json!({"documentId": "a", "serverDocument": {"_id": "a"}})
                }
            );
        }
    }

    #[test]
    fn tombstones_expire_only_with_a_retention() {
        let tomb = tombstone("a", &json!(1_000));
        assert!(!PocketModel::default().tombstone_expired(&tomb, i64::MAX));
        let m = PocketModel {
            tombstone_retention_ms: Some(500),
            ..PocketModel::default()
        };
        assert!(!m.tombstone_expired(&tomb, 1_400));
        assert!(m.tombstone_expired(&tomb, 1_600));
        assert!(!m.tombstone_expired(&json!({"_id": "a"}), 1_600));
    }
}
