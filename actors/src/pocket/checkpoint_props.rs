//! The checkpoint rule as a property: clients that behave as Pocket's SyncEngine does (they
//! drop every broadcast, or apply some, and adopt each reply's checkpoint) end up with every
//! change, whatever the order of pushes, pulls, broadcasts and reconnects.
//!
//! The codec is driven sans-IO; the room is a log that numbers changes as the real one does
//! (one sequence across collections, each submit's changes consecutive).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::PocketDialect;
use super::wire::PocketLimits;
use crate::dialect::{Action, Dialect, Env, Frame};
use crate::identity::Identity;
use crate::origin::{NodeId, Origin, SessionId};
use crate::out_frame::OutFrame;
use crate::raw_json::RawJson;
use crate::room::{Broadcast, Fetched, RoomEvent, RoomReply, RoomRequest, StreamPage, Submitted};
use crate::room_key::RoomKey;
use crate::store::LogEntry;

const COLLECTIONS: [&str; 2] = ["todos", "notes"];

#[derive(Debug, Clone)]
enum Step {
    Push {
        client: usize,
        collection: usize,
        changes: usize,
    },
    Pull {
        client: usize,
        limit: u64,
    },
    /// The client's next queued broadcast reaches its codec; `apply` says whether the client
    /// applies it (and adopts its checkpoint) or drops it, as SyncEngine drops every one.
    Deliver {
        client: usize,
        apply: bool,
    },
    Reconnect {
        client: usize,
    },
}

fn step(clients: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..clients, 0..COLLECTIONS.len(), 1..4usize)
            .prop_map(|(client, collection, changes)| Step::Push { client, collection, changes }),
        2 => (0..clients, 1..5u64).prop_map(|(client, limit)| Step::Pull { client, limit }),
        4 => (0..clients, any::<bool>()).prop_map(|(client, apply)| Step::Deliver { client, apply }),
        1 => (0..clients).prop_map(|client| Step::Reconnect { client }),
    ]
}

/// The hub's side: one log, numbered across collections.
#[derive(Default)]
struct Log {
    entries: Vec<LogEntry>,
}

impl Log {
    fn head(&self, stream: &str) -> u64 {
        self.entries
            .iter()
            .rev()
            .find(|e| e.stream == stream)
            .map_or(0, |e| e.seq)
    }

    fn seq(&self) -> u64 {
        self.entries.len() as u64
    }
}

/// A client as SyncEngine is: a checkpoint raised per collection by what it applies and by
/// every reply's checkpoint, and the documents it has.
struct Client {
    origin: Origin,
    codec: PocketDialect,
    checkpoint: HashMap<String, u64>,
    has: HashSet<String>,
    inbox: VecDeque<RoomEvent>,
    sent: u64,
}

fn room() -> RoomKey {
    RoomKey::new(super::NAMESPACE, "r").expect("key")
}

impl Client {
    fn new(n: usize) -> Client {
        Client {
            origin: Origin {
                node: NodeId::new("n1"),
                session: SessionId(n as u64 + 1),
            },
            codec: PocketDialect::new(room(), PocketLimits::default()),
            checkpoint: HashMap::new(),
            has: HashSet::new(),
            inbox: VecDeque::new(),
            sent: 0,
        }
    }

    fn checkpoint_json(&self) -> Value {
        json!({"id": "c", "sequences": self.checkpoint, "timestamp": 1, "nodeId": "c"})
    }

    /// What the client does with a reply (as SyncEngine does: a pull's changes raise the
    /// collection to their last sequence, then the checkpoint is adopted) or with a broadcast
    /// it keeps (its changes are applied and its checkpoint adopted: a broadcast may follow a
    /// gap, so its last sequence says nothing of what the client has).
    fn adopt(&mut self, reply: &Value, broadcast: bool) {
        if let Some(changes) = reply["changes"].as_object() {
            for (collection, list) in changes {
                let list = list.as_array().expect("changes");
                for c in list {
                    self.has
                        .insert(c["documentId"].as_str().expect("id").to_owned());
                }
                if let Some(last) = list.last().filter(|_| !broadcast) {
                    let seq = last["sequence"].as_u64().expect("sequence");
                    let at = self.checkpoint.entry(collection.clone()).or_default();
                    *at = (*at).max(seq);
                }
            }
        }
        let sequences = reply["checkpoint"]["sequences"]
            .as_object()
            .expect("checkpoint");
        for (collection, n) in sequences {
            let at = self.checkpoint.entry(collection.clone()).or_default();
            *at = (*at).max(n.as_u64().expect("position"));
        }
    }
}

fn text_of(actions: Vec<Action<super::Tag>>) -> Value {
    let texts: Vec<Value> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Text(t) => Some(serde_json::from_str(&t).expect("json")),
            Action::Frame(OutFrame::Text(t)) => Some(serde_json::from_str(&t).expect("json")),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 1, "one reply expected: {texts:?}");
    texts.into_iter().next().expect("reply")
}

struct World {
    log: Log,
    clients: Vec<Client>,
    identity: Identity,
}

impl World {
    /// Sends `msg` from client `n` and runs the requests it makes against the log; answers the
    /// reply and queues broadcasts for the others.
    fn request(&mut self, n: usize, msg: Value) -> Value {
        let client = &mut self.clients[n];
        let env = Env {
            origin: &client.origin,
            identity: &self.identity,
        };
        let text = msg.to_string();
        let actions = client.codec.on_frame(&env, Frame::Text(&text));
        let origin = client.origin.clone();
        let mut reply = None;
        for action in actions {
            let Action::Request { body, tag, .. } = action else {
                panic!("a room request expected");
            };
            let answer = match body {
                RoomRequest::Subscribe { .. } => continue,
                RoomRequest::Submit { changes } => {
                    let mut heads_before = HashMap::new();
                    let mut entries = Vec::new();
                    for c in changes {
                        heads_before
                            .entry(c.stream.clone())
                            .or_insert_with(|| self.log.head(&c.stream));
                        let seq = self.log.seq() + 1;
                        let entry = LogEntry {
                            seq,
                            stream: c.stream,
                            key: c.key.clone(),
                            body: RawJson::from_value(
                                &json!({"operation": "insert", "documentId": c.key,
                                        "document": {"_id": c.key}, "sequence": seq}),
                            ),
                            origin: Some(origin.clone()),
                        };
                        self.log.entries.push(entry.clone());
                        entries.push(entry);
                    }
                    let submitted = Submitted {
                        accepted: entries.len(),
                        rejected: vec![],
                        heads_before: heads_before.clone(),
                        seq: self.log.seq(),
                    };
                    let event = RoomEvent(Arc::new(Broadcast::new(room(), entries, heads_before)));
                    for (i, other) in self.clients.iter_mut().enumerate() {
                        if i != n {
                            other.inbox.push_back(event.clone());
                        }
                    }
                    RoomReply::Submitted(submitted)
                }
                RoomRequest::Fetch { streams, limit, .. } => {
                    let pages = streams
                        .into_iter()
                        .map(|(stream, after)| {
                            let all: Vec<LogEntry> = self
                                .log
                                .entries
                                .iter()
                                .filter(|e| e.stream == stream && e.seq > after)
                                .cloned()
                                .collect();
                            let more = all.len() > limit;
                            StreamPage {
                                stream,
                                entries: all.into_iter().take(limit).collect(),
                                more,
                            }
                        })
                        .collect();
                    RoomReply::Fetched(Fetched {
                        pages,
                        seq: self.log.seq(),
                    })
                }
                other => panic!("unexpected request {other:?}"),
            };
            let client = &mut self.clients[n];
            let env = Env {
                origin: &client.origin,
                identity: &self.identity,
            };
            reply = Some(text_of(client.codec.on_reply(&env, tag, Ok(answer))));
        }
        let reply = reply.expect("a reply");
        self.clients[n].adopt(&reply, false);
        reply
    }

    fn push(&mut self, n: usize, collection: usize, count: usize) {
        let client = &mut self.clients[n];
        let changes: Vec<Value> = (0..count)
            .map(|_| {
                client.sent += 1;
                let id = format!("c{n}-{}", client.sent);
                json!({"operation": "insert", "documentId": id, "document": {"_id": id},
                       "timestamp": 1, "sequence": 0})
            })
            .collect();
        // A client has what it pushed.
        for c in &changes {
            client
                .has
                .insert(c["documentId"].as_str().expect("id").to_owned());
        }
        let msg = json!({"type": "push", "id": "p", "timestamp": 1,
                         "collection": COLLECTIONS[collection], "changes": changes,
                         "checkpoint": client.checkpoint_json()});
        let reply = self.request(n, msg);
        assert_eq!(reply["type"], "push-response", "{reply}");
    }

    fn pull(&mut self, n: usize, limit: u64) -> bool {
        let msg = json!({"type": "pull", "id": "q", "timestamp": 1, "collections": COLLECTIONS,
                         "checkpoint": self.clients[n].checkpoint_json(), "limit": limit});
        let reply = self.request(n, msg);
        assert_eq!(reply["type"], "pull-response", "{reply}");
        reply["hasMore"] == true
    }

    fn deliver(&mut self, n: usize, apply: bool) {
        let client = &mut self.clients[n];
        let Some(event) = client.inbox.pop_front() else {
            return;
        };
        let env = Env {
            origin: &client.origin,
            identity: &self.identity,
        };
        let actions = client.codec.on_event(&env, &event);
        if apply && !actions.is_empty() {
            let broadcast = text_of(actions);
            client.adopt(&broadcast, true);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_client_ends_with_every_change(
        clients in 2..4usize,
        steps in proptest::collection::vec(step(3), 1..60),
    ) {
        let mut world = World {
            log: Log::default(),
            clients: (0..clients).map(Client::new).collect(),
            identity: Identity::anonymous(),
        };
        for s in steps {
            match s {
                Step::Push { client, collection, changes } if client < clients => {
                    world.push(client, collection, changes)
                }
                Step::Pull { client, limit } if client < clients => {
                    world.pull(client, limit);
                }
                Step::Deliver { client, apply } if client < clients => world.deliver(client, apply),
                Step::Reconnect { client } if client < clients => {
                    // A new connection: a new codec and no broadcasts in flight; the client
                    // keeps its checkpoint and documents.
                    world.clients[client].codec = PocketDialect::new(room(), PocketLimits::default());
                    world.clients[client].inbox.clear();
                }
                _ => {}
            }
        }
        // What the SyncEngine does at its next sync: pull until nothing more.
        let everything: BTreeMap<String, u64> = world
            .log
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.seq))
            .collect();
        for n in 0..clients {
            let mut rounds = 0;
            while world.pull(n, 3) {
                rounds += 1;
                prop_assert!(rounds < 1000, "pulls never end");
            }
            let missing: Vec<&String> = everything
                .keys()
                .filter(|k| !world.clients[n].has.contains(*k))
                .collect();
            prop_assert!(missing.is_empty(), "client {n} lacks {missing:?}");
        }
    }
}
