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

/// A client that syncs as Pocket's `SyncEngine` does: it drops every broadcast, pushes with the
/// checkpoint it holds, and takes its position only from replies (a pull raises a collection to
/// its last change, then every reply's checkpoint is merged in, never lowering a position).
pub struct EngineClient {
    pub ws: super::Ws,
    pub checkpoint: std::collections::BTreeMap<String, u64>,
    /// Every document id the client has, its own and those it pulled.
    pub has: std::collections::BTreeSet<String>,
    next_id: u64,
}

impl EngineClient {
    pub async fn connect(url: &str) -> EngineClient {
        EngineClient {
            ws: super::Ws::connect(url).await,
            checkpoint: Default::default(),
            has: Default::default(),
            next_id: 0,
        }
    }

    /// A new connection; the client keeps what it has and its checkpoint.
    pub async fn reconnect(&mut self, url: &str) {
        self.ws = super::Ws::connect(url).await;
    }

    pub fn checkpoint_json(&self) -> Value {
        json!({"id": "engine", "sequences": self.checkpoint, "timestamp": 1, "nodeId": "engine"})
    }

    fn request_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}-{}", self.next_id)
    }

    /// Sends `msg` and returns its reply; broadcasts that arrive meanwhile are dropped.
    async fn send(&mut self, mut msg: Value, kind: &str) -> Value {
        let id = self.request_id(kind);
        msg["id"] = json!(id);
        self.ws.send_json(&msg).await;
        loop {
            let reply = self.ws.recv_json().await;
            if reply["id"] == id.as_str() {
                return reply;
            }
        }
    }

    fn adopt(&mut self, checkpoint: &Value) {
        for (c, n) in checkpoint["sequences"].as_object().expect("sequences") {
            let at = self.checkpoint.entry(c.clone()).or_default();
            *at = (*at).max(n.as_u64().expect("position"));
        }
    }

    /// Pushes these documents into `collection`; answers the push-response.
    pub async fn push(&mut self, collection: &str, ids: &[String]) -> Value {
        let changes = ids
            .iter()
            .map(|id| change("insert", id, json!({"_id": id, "_updatedAt": 1})))
            .collect();
        let msg = push("", collection, changes, self.checkpoint_json());
        let reply = self.send(msg, "push").await;
        assert_eq!(reply["type"], "push-response", "{reply}");
        self.has.extend(ids.iter().cloned());
        self.adopt(&reply["checkpoint"]);
        reply
    }

    /// One pull of `collections`; answers whether the hub has more.
    pub async fn pull_once(&mut self, collections: &[&str], limit: u64) -> bool {
        let msg = pull("", collections, self.checkpoint_json(), Some(limit));
        let reply = self.send(msg, "pull").await;
        assert_eq!(reply["type"], "pull-response", "{reply}");
        for (c, list) in reply["changes"].as_object().expect("changes") {
            let list = list.as_array().expect("list");
            for change in list {
                self.has
                    .insert(change["documentId"].as_str().expect("id").to_owned());
            }
            if let Some(last) = list.last() {
                let at = self.checkpoint.entry(c.clone()).or_default();
                *at = (*at).max(last["sequence"].as_u64().expect("sequence"));
            }
        }
        self.adopt(&reply["checkpoint"]);
        reply["hasMore"] == true
    }

    /// Pulls until the hub has nothing more, as the engine does on `hasMore`.
    pub async fn pull_all(&mut self, collections: &[&str], limit: u64) {
        for _ in 0..10_000 {
            if !self.pull_once(collections, limit).await {
                return;
            }
        }
        panic!("pulls never ended");
    }
}
