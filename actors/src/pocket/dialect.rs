//! The Pocket session codec: frames in, room requests out, answers and broadcasts back.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::NAMESPACE;
use super::wire::{self, ClientMessage, PocketLimits, WireError, code, now_ms};
use crate::dialect::{Action, Dialect, Env, Frame};
use crate::identity::AuthError;
use crate::limits::Limit;
use crate::out_frame::OutFrame;
use crate::raw_json::RawJson;
use crate::room::{RoomError, RoomEvent, RoomReply, RoomRequest, Streams};
use crate::room_key::{Namespace, RoomKey};
use crate::store::LogEntry;

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
    /// Per collection, the position this client *has*: the checkpoint its latest request
    /// claimed, or the position of the latest reply it was answered with. Broadcasts never
    /// move it: a client may drop them (Pocket's SyncEngine ignores every one), and a position
    /// that covered a change the client only was sent would lose that change for good.
    held: HashMap<String, u64>,
}

fn frame_bytes<'a>(frame: &Frame<'a>) -> &'a [u8] {
    match *frame {
        Frame::Text(t) => t.as_bytes(),
        Frame::Binary(b) => b,
    }
}

fn text(v: Value) -> Action<Tag> {
    Action::Text(v.to_string())
}

fn error(e: WireError) -> Vec<Action<Tag>> {
    vec![text(e.to_json(now_ms()))]
}

fn internal(id: String, e: &RoomError) -> Vec<Action<Tag>> {
    if matches!(e, RoomError::Unavailable) {
        // Retryable: the push was not taken (or will merge as a no-op when resent).
        return error(WireError::new(
            Some(id),
            code::INTERNAL,
            "Service unavailable, retry",
        ));
    }
    log::warn!("pocket request {id} failed: {e}");
    error(WireError::new(Some(id), code::INTERNAL, "Internal error"))
}

impl PocketDialect {
    pub fn new(room: RoomKey, limits: PocketLimits) -> PocketDialect {
        PocketDialect {
            room,
            limits,
            subscribed: HashSet::new(),
            held: HashMap::new(),
        }
    }

    /// What the client has of `collection` now: set, not raised, since a client that claims
    /// less than before (its storage was reset, or it adopted an older reply) has less.
    fn hold(&mut self, collection: &str, at: u64) {
        self.held.insert(collection.to_owned(), at);
    }

    fn held(&self, collection: &str) -> u64 {
        self.held.get(collection).copied().unwrap_or(0)
    }

    fn on_message(&mut self, env: &Env, raw: &[u8]) -> Vec<Action<Tag>> {
        let msg = match wire::parse(raw, &self.limits, now_ms()) {
            Ok(m) => m,
            Err(e) => {
                let hit = e.limit.map(Action::LimitHit);
                return hit.into_iter().chain(error(e)).collect();
            }
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
                self.hold(&push.collection, position);
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
                actions.extend((0..push.oversized).map(|_| Action::LimitHit(Limit::DocumentBytes)));
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
                let streams: Vec<(String, u64)> = pull
                    .collections
                    .iter()
                    .map(|c| (c.clone(), pull.cursor.position(c)))
                    .collect();
                for (c, at) in &streams {
                    self.hold(c, *at);
                }
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
        NAMESPACE
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

    fn on_oversized(
        &mut self,
        _: &Env,
        frame: Option<Frame<'_>>,
        size: usize,
        max: usize,
    ) -> Vec<Action<Tag>> {
        // Answered under the request's id, so the client's pending push resolves (and it can
        // split the push) instead of waiting out its timeout and resending the same message.
        let id = frame.and_then(|f| wire::request_id(frame_bytes(&f)));
        error(WireError::new(
            id,
            code::TOO_LARGE,
            format!("Message too large ({size} bytes, max {max})"),
        ))
    }

    fn on_rate_limited(&mut self, _: &Env, frame: Frame<'_>) -> Vec<Action<Tag>> {
        let raw = frame_bytes(&frame);
        if raw == b"ping" {
            return vec![Action::Text("pong".into())];
        }
        error(WireError::new(
            wire::request_id(raw),
            code::RATE_LIMITED,
            "Too many requests. Please slow down.",
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
                // The client may move to the room's new position only if its own checkpoint
                // already covered every earlier change of the collection: then it has those and
                // the changes of this push. What this connection was merely sent does not
                // count. Otherwise it keeps the position it claimed and catches up by pulling.
                let at = match s.heads_before.get(&collection) {
                    Some(head) if position >= *head => s.seq,
                    _ => position,
                };
                self.hold(&collection, at);
                let sequences = BTreeMap::from([(collection, at)]);
                let checkpoint = wire::checkpoint(&sequences, at, now);
                vec![text(wire::push_response(&id, s.rejected, checkpoint, now))]
            }
            (Tag::Pull { id }, Ok(RoomReply::Fetched(f))) => {
                let mut sequences = BTreeMap::new();
                let mut has_more = false;
                for page in &f.pages {
                    let at = page.entries.last().map_or(f.seq, |e| e.seq);
                    has_more |= page.more;
                    self.hold(&page.stream, at);
                    sequences.insert(page.stream.clone(), at);
                }
                let checkpoint = wire::checkpoint(&sequences, f.seq, now);
                let changes = f.pages.iter().map(|p| {
                    let bodies: Vec<&RawJson> = p.entries.iter().map(|e| &e.body).collect();
                    (p.stream.as_str(), bodies)
                });
                vec![Action::Text(wire::pull_response(
                    &id,
                    changes,
                    &checkpoint,
                    has_more,
                    now,
                ))]
            }
            (Tag::Push { id, .. } | Tag::Pull { id }, Ok(other)) => {
                log::error!("pocket request {id} got an unexpected answer: {other:?}");
                error(WireError::new(Some(id), code::INTERNAL, "Internal error"))
            }
        }
    }

    /// Other sessions' changes of the collections this one follows, as a `pull-response`. Its
    /// checkpoint covers a collection's changes only where the client's own position reached
    /// the change before them; elsewhere it repeats that position, so a client that adopts it
    /// (after dropping any number of broadcasts) still pulls everything it lacks.
    fn on_event(&mut self, env: &Env, event: &RoomEvent) -> Vec<Action<Tag>> {
        // The sender learns the outcome from its push-response.
        let mut changes: BTreeMap<&str, Vec<&LogEntry>> = BTreeMap::new();
        let mut filtered = false;
        for e in event.entries.iter() {
            if e.origin.as_ref() == Some(env.origin) || !self.subscribed.contains(&e.stream) {
                filtered = true;
                continue;
            }
            changes.entry(&e.stream).or_default().push(e);
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let mut sequences = BTreeMap::new();
        let mut behind = None;
        for (collection, entries) in &changes {
            let held = self.held(collection);
            let head = event.heads_before.get(*collection).copied().unwrap_or(0);
            let at = if held >= head {
                entries.last().map_or(held, |e| e.seq)
            } else {
                behind = Some(held);
                held
            };
            sequences.insert(collection.to_string(), at);
        }
        let encode = || {
            let now = now_ms();
            let checkpoint = wire::checkpoint(&sequences, 0, now);
            let bodies = changes
                .iter()
                .map(|(c, es)| (*c, es.iter().map(|e| &e.body).collect()));
            wire::pull_response(&format!("broadcast_{now}"), bodies, &checkpoint, false, now)
        };
        // Members that get the same changes with the same checkpoint share one encoding: those
        // whose position reached the broadcast, and, per position, those behind it.
        let variant = match behind {
            _ if filtered => None,
            None => Some(0),
            Some(held) if changes.len() == 1 => held.checked_add(1),
            Some(_) => None,
        };
        match variant {
            Some(v) => {
                let frames = event.shared_frames(v, || vec![OutFrame::text(encode())]);
                frames.iter().cloned().map(Action::Frame).collect()
            }
            None => vec![Action::Text(encode())],
        }
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
    use crate::origin::{NodeId, Origin, SessionId};
    use crate::room::{Broadcast, Submitted};
    use serde_json::json;
    use std::sync::Arc;

    fn dialect() -> PocketDialect {
        PocketDialect::new(
            RoomKey::new(NAMESPACE, "r").expect("key"),
            PocketLimits::default(),
        )
    }

    fn origin(session: u64) -> Origin {
        Origin {
            node: NodeId::new("n1"),
            session: SessionId(session),
        }
    }

    fn json_of(action: &Action<Tag>) -> Value {
        let text = match action {
            Action::Text(t) => t.as_str(),
            Action::Frame(OutFrame::Text(t)) => &**t,
            other => panic!("a text frame expected, got {other:?}"),
        };
        serde_json::from_str(text).expect("json")
    }

    fn reply_json(actions: Vec<Action<Tag>>) -> Value {
        match actions.as_slice() {
            [one] => json_of(one),
            other => panic!("one reply expected, got {other:?}"),
        }
    }

    fn entry(seq: u64, stream: &str, from: u64) -> LogEntry {
        LogEntry {
            seq,
            stream: stream.into(),
            key: format!("d{seq}"),
            body: RawJson::from_value(&json!({"sequence": seq})),
            origin: Some(origin(from)),
        }
    }

    fn submitted(head: u64, seq: u64) -> RoomReply {
        RoomReply::Submitted(Submitted {
            accepted: 1,
            rejected: vec![],
            heads_before: HashMap::from([("todos".to_string(), head)]),
            seq,
        })
    }

    fn event(entries: Vec<LogEntry>, heads: &[(&str, u64)]) -> RoomEvent {
        let heads = heads.iter().map(|(s, h)| (s.to_string(), *h)).collect();
        let room = RoomKey::new(NAMESPACE, "r").expect("key");
        RoomEvent(Arc::new(Broadcast::new(room, entries, heads)))
    }

    fn env_of<'a>(me: &'a Origin, identity: &'a Identity) -> Env<'a> {
        Env {
            origin: me,
            identity,
        }
    }

    #[test]
    fn push_checkpoints_cover_only_what_the_client_claimed() {
        let identity = Identity::anonymous();
        let me = origin(1);
        let env = env_of(&me, &identity);
        let mut d = dialect();
        d.subscribed.insert("todos".into());
        let tag = |position| Tag::Push {
            id: "p".into(),
            collection: "todos".into(),
            position,
        };
        // Caught up (position 4 covers head 4): the new position is the room's.
        let r = reply_json(d.on_reply(&env, tag(4), Ok(submitted(4, 5))));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 5);
        assert_eq!(r["checkpoint"]["global"], 5);
        // Sent a broadcast of 6 (contiguous with 5), the client claims 0 in its next push: it
        // may have dropped that broadcast, so it stays at 0 and pulls 1..=7 again.
        let bc = reply_json(d.on_event(&env, &event(vec![entry(6, "todos", 9)], &[("todos", 5)])));
        assert_eq!(bc["checkpoint"]["sequences"]["todos"], 6);
        let r = reply_json(d.on_reply(&env, tag(0), Ok(submitted(6, 7))));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 0);
        // Behind by its own claim (2 < head 6): it keeps its claim.
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
    fn broadcast_checkpoints_never_pass_what_the_client_holds() {
        let identity = Identity::anonymous();
        let me = origin(1);
        let env = env_of(&me, &identity);
        let mut d = dialect();
        d.subscribed.insert("todos".into());
        d.held.insert("todos".into(), 3);
        let both = |head, seq| {
            event(
                vec![entry(seq, "todos", 9), entry(seq + 1, "notes", 9)],
                &[("todos", head), ("notes", 0)],
            )
        };
        // Contiguous with what it holds: the checkpoint covers the broadcast change; other
        // collections are filtered.
        let r = reply_json(d.on_event(&env, &both(3, 4)));
        assert_eq!(r["checkpoint"]["sequences"], json!({"todos": 4}));
        assert_eq!(r["changes"]["todos"][0]["sequence"], 4);
        assert!(r["changes"].get("notes").is_none());
        // The next one (head 4): being sent 4 is not having it, so the checkpoint stays at 3.
        let r = reply_json(d.on_event(&env, &both(4, 5)));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 3);
        assert_eq!(d.held("todos"), 3);
        // Its own changes are not echoed; the others' in the same event are.
        let mixed = event(
            vec![entry(5, "todos", 1), entry(6, "todos", 9)],
            &[("todos", 4)],
        );
        let mut d = dialect();
        d.subscribed.insert("todos".into());
        d.held.insert("todos".into(), 4);
        let r = reply_json(d.on_event(&env, &mixed));
        assert_eq!(r["changes"]["todos"], json!([{"sequence": 6}]));
        assert_eq!(r["checkpoint"]["sequences"]["todos"], 6);
        let own = event(vec![entry(7, "todos", 1)], &[("todos", 6)]);
        assert!(d.on_event(&env, &own).is_empty());
    }

    #[test]
    fn members_at_the_same_position_share_one_encoded_broadcast() {
        let identity = Identity::anonymous();
        let shared = event(
            vec![entry(4, "todos", 9), entry(5, "todos", 8)],
            &[("todos", 3)],
        );
        let frames: Vec<Value> = [3, 3, 3, 1, 1, 2]
            .into_iter()
            .enumerate()
            .map(|(n, held)| {
                let me = origin(n as u64 + 1);
                let mut d = dialect();
                d.subscribed.insert("todos".into());
                d.held.insert("todos".into(), held);
                let actions = d.on_event(&env_of(&me, &identity), &shared);
                assert!(
                    matches!(actions.as_slice(), [Action::Frame(_)]),
                    "{actions:?}"
                );
                json_of(&actions[0])
            })
            .collect();
        assert_eq!(frames[0], frames[1]);
        assert_eq!(frames[0], frames[2]);
        assert_eq!(frames[0]["checkpoint"]["sequences"], json!({"todos": 5}));
        assert_eq!(frames[3], frames[4]);
        assert_eq!(frames[3]["checkpoint"]["sequences"], json!({"todos": 1}));
        assert_eq!(frames[5]["checkpoint"]["sequences"], json!({"todos": 2}));
    }

    #[test]
    fn heartbeat_and_oversize() {
        let identity = Identity::anonymous();
        let me = origin(1);
        let env = Env {
            origin: &me,
            identity: &identity,
        };
        let mut d = dialect();
        assert!(
            matches!(d.on_frame(&env, Frame::Text("ping")).as_slice(), [Action::Text(t)] if t == "pong")
        );
        let r = reply_json(d.on_oversized(&env, None, 10, 5));
        assert_eq!(r["code"], "TOO_LARGE");
        assert_eq!(r["message"], "Message too large (10 bytes, max 5)");
        // The request's id when the message is there to read it from.
        let big = r#"{"type":"push","id":"push-9","changes":[]}"#;
        let r = reply_json(d.on_oversized(&env, Some(Frame::Text(big)), big.len(), 5));
        assert_eq!(r["id"], "push-9");
        let r = reply_json(d.on_rate_limited(&env, Frame::Text(big)));
        assert_eq!(r["id"], "push-9");
        assert_eq!(r["code"], "RATE_LIMITED");
        assert_eq!(r["retryable"], true);
    }
}
