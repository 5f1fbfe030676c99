//! The Pocket session codec: frames in, room requests out, answers and broadcasts back.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::wire::{self, ClientMessage, PocketLimits, WireError, code, now_ms};
use crate::identity::AuthError;
use crate::room::{RoomError, RoomEvent, RoomReply, RoomRequest, Streams};
use crate::room_key::{Namespace, RoomKey};
use crate::session::{Action, Dialect, Env, Frame};

/// What a room answer belongs to.
#[derive(Debug, Clone)]
pub enum Tag {
    Push {
        id: String,
        collection: String,
        /// The position the client claimed for the collection.
        position: u64,
    },
    Pull {
        id: String,
    },
    Auth {
        id: String,
    },
    /// A request whose answer needs no reply (subscribing on push).
    Quiet,
}

/// One Pocket connection's protocol state.
pub struct PocketDialect {
    room: RoomKey,
    limits: PocketLimits,
    /// Collections this connection follows (pushing or pulling one subscribes).
    subscribed: HashSet<String>,
    /// Per collection, the position up to which this client has been sent every change.
    positions: HashMap<String, u64>,
}

fn text(v: Value) -> Action<Tag> {
    Action::Text(v.to_string())
}

fn error(e: WireError) -> Vec<Action<Tag>> {
    vec![text(e.to_json(now_ms()))]
}

fn internal(id: String, e: &RoomError) -> Vec<Action<Tag>> {
    log::warn!("pocket request {id} failed: {e}");
    error(WireError::new(Some(id), code::INTERNAL, "Internal error"))
}

impl PocketDialect {
    pub fn new(room: RoomKey, limits: PocketLimits) -> PocketDialect {
        PocketDialect {
            room,
            limits,
            subscribed: HashSet::new(),
            positions: HashMap::new(),
        }
    }

    fn advance(&mut self, collection: &str, to: u64) {
        let p = self.positions.entry(collection.to_owned()).or_default();
        *p = (*p).max(to);
    }

    fn on_message(&mut self, env: &Env, raw: &[u8]) -> Vec<Action<Tag>> {
        let msg = match wire::parse(raw, &self.limits, now_ms()) {
            Ok(m) => m,
            Err(e) => return error(e),
        };
        let room = &self.room.room;
        match msg {
            ClientMessage::Push(push) => {
                if !env.identity.permissions.can_write(room) {
                    return error(WireError::new(
                        Some(push.id),
                        code::FORBIDDEN,
                        "Permission denied",
                    ));
                }
                let position = push.cursor.position(&push.collection);
                let mut actions = Vec::with_capacity(2);
                if self.subscribed.insert(push.collection.clone()) {
                    actions.push(Action::Request {
                        room: self.room.clone(),
                        body: RoomRequest::Subscribe {
                            streams: vec![push.collection.clone()],
                        },
                        tag: Tag::Quiet,
                    });
                }
                actions.push(Action::Request {
                    room: self.room.clone(),
                    body: RoomRequest::Submit {
                        changes: push.changes,
                    },
                    tag: Tag::Push {
                        id: push.id,
                        collection: push.collection,
                        position,
                    },
                });
                actions
            }
            ClientMessage::Pull(pull) => {
                if !env.identity.permissions.can_read(room) {
                    return error(WireError::new(
                        Some(pull.id),
                        code::FORBIDDEN,
                        "Permission denied",
                    ));
                }
                self.subscribed.extend(pull.collections.iter().cloned());
                let streams = pull
                    .collections
                    .iter()
                    .map(|c| (c.clone(), pull.cursor.position(c)))
                    .collect();
                vec![Action::Request {
                    room: self.room.clone(),
                    body: RoomRequest::Fetch {
                        streams,
                        limit: pull.limit,
                        subscribe: true,
                        latest_only: false,
                    },
                    tag: Tag::Pull { id: pull.id },
                }]
            }
            ClientMessage::Auth { id, token } => vec![Action::Authenticate {
                token,
                tag: Tag::Auth { id },
            }],
        }
    }
}

impl Dialect for PocketDialect {
    type Tag = Tag;

    fn namespace(&self) -> Namespace {
        Namespace::Pocket
    }

    fn initial_rooms(&self) -> Vec<RoomKey> {
        vec![self.room.clone()]
    }

    fn streams_for(&self, _: &RoomKey) -> Streams {
        Streams::Some(HashSet::new())
    }

    fn on_frame(&mut self, env: &Env, frame: Frame<'_>) -> Vec<Action<Tag>> {
        let raw = match frame {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        };
        // The heartbeat is the bare word, not JSON.
        if raw == b"ping" {
            return vec![Action::Text("pong".into())];
        }
        self.on_message(env, raw)
    }

    fn on_oversized(&mut self, _: &Env, size: usize, max: usize) -> Vec<Action<Tag>> {
        error(WireError::new(
            None,
            code::TOO_LARGE,
            format!("Message too large ({size} bytes, max {max})"),
        ))
    }

    fn on_reply(
        &mut self,
        _: &Env,
        tag: Tag,
        reply: Result<RoomReply, RoomError>,
    ) -> Vec<Action<Tag>> {
        let now = now_ms();
        match (tag, reply) {
            (Tag::Quiet, _) | (Tag::Auth { .. }, _) => Vec::new(),
            (Tag::Push { id, .. } | Tag::Pull { id }, Err(e)) => internal(id, &e),
            (
                Tag::Push {
                    id,
                    collection,
                    position,
                },
                Ok(RoomReply::Submitted(s)),
            ) => {
                // The client may move to the room's new position only if it already had every
                // earlier change of the collection; otherwise it keeps its own and catches up.
                let at = match s.heads_before.get(&collection) {
                    Some(head) if position >= *head => s.seq,
                    _ => position,
                };
                self.advance(&collection, at);
                let sequences = BTreeMap::from([(collection, at)]);
                let checkpoint = wire::checkpoint(&sequences, at, now);
                vec![text(wire::push_response(&id, s.rejected, checkpoint, now))]
            }
            (Tag::Pull { id }, Ok(RoomReply::Fetched(f))) => {
                let mut changes = Map::new();
                let mut sequences = BTreeMap::new();
                let mut has_more = false;
                for page in f.pages {
                    let at = page.entries.last().map_or(f.seq, |e| e.seq);
                    has_more |= page.more;
                    self.advance(&page.stream, at);
                    sequences.insert(page.stream.clone(), at);
                    let bodies = page.entries.into_iter().map(|e| e.body).collect();
                    changes.insert(page.stream, Value::Array(bodies));
                }
                let checkpoint = wire::checkpoint(&sequences, f.seq, now);
                vec![text(wire::pull_response(
                    &id, changes, checkpoint, has_more, now,
                ))]
            }
            (Tag::Push { id, .. } | Tag::Pull { id }, Ok(other)) => {
                log::error!("pocket request {id} got an unexpected answer: {other:?}");
                error(WireError::new(Some(id), code::INTERNAL, "Internal error"))
            }
        }
    }

    fn on_event(&mut self, env: &Env, event: &RoomEvent) -> Vec<Action<Tag>> {
        // The sender learns the outcome from its push-response.
        if event.origin == Some(env.session) {
            return Vec::new();
        }
        let mut changes: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for e in event.entries.iter() {
            if self.subscribed.contains(&e.stream) {
                changes.entry(&e.stream).or_default().push(e.body.clone());
            }
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let mut sequences = BTreeMap::new();
        for (collection, bodies) in &changes {
            let last = bodies
                .last()
                .and_then(|b| b.get("sequence"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let head = event.heads_before.get(*collection).copied().unwrap_or(0);
            let known = self.positions.get(*collection).copied().unwrap_or(0);
            if known >= head {
                self.advance(collection, last);
            }
            sequences.insert(
                collection.to_string(),
                self.positions.get(*collection).copied().unwrap_or(0),
            );
        }
        let now = now_ms();
        let checkpoint = wire::checkpoint(&sequences, 0, now);
        let changes = changes
            .into_iter()
            .map(|(c, b)| (c.to_owned(), Value::Array(b)))
            .collect();
        let id = format!("broadcast_{now}");
        vec![text(wire::pull_response(
            &id, changes, checkpoint, false, now,
        ))]
    }

    fn on_authenticated(
        &mut self,
        _: &Env,
        tag: Tag,
        result: Result<(), AuthError>,
    ) -> Vec<Action<Tag>> {
        let Tag::Auth { id } = tag else {
            return Vec::new();
        };
        match result {
            Ok(()) => vec![text(wire::ack(&id, now_ms()))],
            Err(_) => error(WireError::new(
                Some(id),
                code::FORBIDDEN,
                "Authentication failed",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::room::{SessionId, Submitted};
    use crate::store::LogEntry;
    use serde_json::json;
    use std::sync::Arc;

    fn dialect() -> PocketDialect {
        PocketDialect::new(
            RoomKey::new(Namespace::Pocket, "r").expect("key"),
            PocketLimits::default(),
        )
    }

    fn reply_json(actions: Vec<Action<Tag>>) -> Value {
        match actions.as_slice() {
            [Action::Text(t)] => serde_json::from_str(t).expect("json"),
            other => panic!("one text reply expected, got {other:?}"),
        }
    }

    fn entry(seq: u64, stream: &str) -> LogEntry {
        LogEntry {
            seq,
            stream: stream.into(),
            key: format!("d{seq}"),
            body: json!({"sequence": seq}),
        }
    }

    fn submitted(head: u64, seq: u64) -> RoomReply {
        RoomReply::Submitted(Submitted {
            accepted: Arc::new(vec![entry(seq, "todos")]),
            rejected: vec![],
            heads_before: Arc::new(HashMap::from([("todos".to_string(), head)])),
            seq,
        })
    }

    #[test]
    fn push_checkpoints_advance_only_over_seen_changes() {
        let identity = Identity::anonymous();
        let env = Env {
            session: SessionId(1),
            identity: &identity,
        };
        let mut d = dialect();
        let tag = |position| Tag::Push {
            id: "p".into(),
            collection: "todos".into(),
            position,
        };
        // Caught up (position 4 covers head 4): the new position is the room's.
        let r = reply_json(d.on_reply(&env, tag(4), Ok(submitted(4, 5))));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 5);
        assert_eq!(r["checkpoint"]["global"], 5);
        // Behind (position 2, head 6): keep the client's position.
        let r = reply_json(d.on_reply(&env, tag(2), Ok(submitted(6, 7))));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 2);
        // Room failures are retryable INTERNAL errors with the request id.
        let r = reply_json(d.on_reply(&env, tag(0), Err(RoomError::Gone)));
        assert_eq!(
            (r["code"].clone(), r["id"].clone(), r["retryable"].clone()),
            (json!("INTERNAL"), json!("p"), json!(true))
        );
    }

    #[test]
    fn broadcast_checkpoints_follow_what_the_session_has_seen() {
        let identity = Identity::anonymous();
        let env = Env {
            session: SessionId(1),
            identity: &identity,
        };
        let mut d = dialect();
        d.subscribed.insert("todos".into());
        d.positions.insert("todos".into(), 3);
        let event = |head, seq, origin| RoomEvent {
            room: RoomKey::new(Namespace::Pocket, "r").expect("key"),
            origin,
            entries: Arc::new(vec![entry(seq, "todos"), entry(seq + 1, "notes")]),
            heads_before: Arc::new(HashMap::from([
                ("todos".to_string(), head),
                ("notes".to_string(), 0),
            ])),
        };
        // Contiguous: position moves to the broadcast change; other collections are filtered.
        let r = reply_json(d.on_event(&env, &event(3, 4, Some(SessionId(9)))));
        assert_eq!(r["checkpoint"]["sequences"], json!({"todos": 4}));
        assert_eq!(r["changes"]["todos"][0]["sequence"], 4);
        assert!(r["changes"].get("notes").is_none());
        // A gap (head 6 > position 4): the position stays.
        let r = reply_json(d.on_event(&env, &event(6, 7, Some(SessionId(9)))));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 4);
        // Its own changes are not echoed.
        assert!(
            d.on_event(&env, &event(7, 8, Some(SessionId(1))))
                .is_empty()
        );
    }

    #[test]
    fn heartbeat_and_oversize() {
        let identity = Identity::anonymous();
        let env = Env {
            session: SessionId(1),
            identity: &identity,
        };
        let mut d = dialect();
        assert!(
            matches!(d.on_frame(&env, Frame::Text("ping")).as_slice(), [Action::Text(t)] if t == "pong")
        );
        let r = reply_json(d.on_oversized(&env, 10, 5));
        assert_eq!(r["code"], "TOO_LARGE");
        assert_eq!(r["message"], "Message too large (10 bytes, max 5)");
    }
}
