//! The relay session codec: `connected` on join, `update` merged and acked, `pull` answered
//! with paged `update`s.

use serde_json::{Value, json};

use super::NAMESPACE;
use super::model::parse_change;
use crate::dialect::{Action, Dialect, Env, Frame};
use crate::identity::AuthError;
use crate::limits::{Limit, json_depth};
use crate::out_frame::OutFrame;
use crate::raw_json::{RawJson, push_json_string};
use crate::room::{RoomError, RoomEvent, RoomReply, RoomRequest, Streams};
use crate::room_key::{Namespace, RoomKey};

#[derive(Debug, Clone)]
pub enum Tag {
    Update,
    Pull,
    Auth,
}

/// What a relay session may send and is sent.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Changes per `update` the hub sends in answer to a `pull`.
    pub max_per_message: usize,
    /// How deeply a column's value may nest.
    pub max_json_depth: usize,
    /// How large a column's value may be, as JSON text (`limits.max_document_bytes`).
    pub max_value_bytes: usize,
}

pub struct RelayDialect {
    room: RoomKey,
    site_id: String,
    max_per_message: usize,
    max_json_depth: usize,
    max_value_bytes: usize,
    /// `{"type":"ack","siteId":…,"version":` and `,"channel":…}`: an ack is these around a
    /// number.
    ack_head: String,
    ack_tail: String,
    /// `,"siteId":…,"channel":…}`: how every `update` the hub sends ends.
    update_tail: String,
    /// The highest version the client said it has (in a pull): changes at or below it are not
    /// sent to it again. A node behind the client refuses its pull until it has caught up, and
    /// then broadcasts what it caught up with, which the client had from another node.
    has: u64,
}

impl RelayDialect {
    pub fn new(room: RoomKey, site_id: String, limits: RelayLimits) -> RelayDialect {
        let mut ack_head = String::from(r#"{"type":"ack","siteId":"#);
        push_json_string(&mut ack_head, &site_id);
        ack_head.push_str(r#","version":"#);
        let mut ack_tail = String::from(r#","channel":"#);
        push_json_string(&mut ack_tail, &room.room);
        ack_tail.push('}');
        let mut update_tail = String::from(r#","siteId":"#);
        push_json_string(&mut update_tail, &site_id);
        update_tail.push_str(&ack_tail);
        RelayDialect {
            room,
            site_id,
            max_per_message: limits.max_per_message.max(1),
            max_json_depth: limits.max_json_depth,
            max_value_bytes: limits.max_value_bytes,
            ack_head,
            ack_tail,
            update_tail,
            has: 0,
        }
    }

    fn ack(&self, version: u64) -> String {
        let mut out = String::with_capacity(self.ack_head.len() + 20 + self.ack_tail.len());
        out.push_str(&self.ack_head);
        out.push_str(&version.to_string());
        out.push_str(&self.ack_tail);
        out
    }

    fn channel(&self) -> &str {
        &self.room.room
    }

    fn text(v: Value) -> Action<Tag> {
        Action::Text(v.to_string())
    }

    fn error(&self, code: &str, message: impl Into<String>) -> Vec<Action<Tag>> {
        vec![Self::text(
            json!({"type": "error", "code": code, "message": message.into(),
                               "channel": self.channel()}),
        )]
    }

    /// A message refused at a limit: counted, and answered with the dialect's error.
    fn refused(&self, limit: Limit, code: &str, message: String) -> Vec<Action<Tag>> {
        let mut actions = vec![Action::LimitHit(limit)];
        actions.extend(self.error(code, message));
        actions
    }

    /// `{"type":"update","changes":[…],"version":…,"siteId":…,"channel":…}` with the logged
    /// changes spliced in as they are.
    fn update<'a>(&self, changes: impl Iterator<Item = &'a RawJson>, version: u64) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"{"type":"update","changes":["#);
        for (i, c) in changes.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(c.as_str());
        }
        out.push_str(r#"],"version":"#);
        out.push_str(&version.to_string());
        out.push_str(&self.update_tail);
        out
    }

    fn fetch(&self, after: u64) -> Action<Tag> {
        Action::Request {
            room: self.room.clone(),
            body: RoomRequest::Fetch {
                streams: vec![(String::new(), after)],
                limit: self.max_per_message,
                subscribe: false,
                latest_only: true,
            },
            tag: Tag::Pull,
        }
    }
}

impl Dialect for RelayDialect {
    type Tag = Tag;

    fn namespace(&self) -> Namespace {
        NAMESPACE
    }

    fn initial_rooms(&self) -> Vec<RoomKey> {
        vec![self.room.clone()]
    }

    fn streams_for(&self, _: &RoomKey) -> Streams {
        Streams::All
    }

    fn on_joined(&mut self, _: &Env, _: &RoomKey, seq: u64) -> Vec<Action<Tag>> {
        vec![Self::text(
            json!({"type": "connected", "siteId": self.site_id, "version": seq,
                               "channel": self.channel()}),
        )]
    }

    fn on_frame(&mut self, env: &Env, frame: Frame<'_>) -> Vec<Action<Tag>> {
        let raw = match frame {
            Frame::Text(t) => t.as_bytes(),
            Frame::Binary(b) => b,
        };
        let msg: Value = match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => return self.error("PARSE_ERROR", format!("Invalid JSON: {e}")),
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let room = self.channel().to_owned();
        match kind {
            "update" => {
                if !env.identity.permissions.can_write(&room) {
                    return self.error("FORBIDDEN", "Permission denied");
                }
                let Some(raw_changes) = msg.get("changes").and_then(Value::as_array) else {
                    return self.error("INVALID_MESSAGE", "'changes' must be an array");
                };
                let mut changes = Vec::with_capacity(raw_changes.len());
                for (i, c) in raw_changes.iter().enumerate() {
                    // `max_json_depth` bounds the client's data, as in every dialect: how deeply
                    // a column's value nests, not the message around it.
                    let depth = c.get(3).map_or(0, json_depth);
                    if depth > self.max_json_depth {
                        return self.refused(
                            Limit::JsonDepth,
                            "INVALID_MESSAGE",
                            format!(
                                "changes[{i}]: val is nested {depth} levels deep, max {}",
                                self.max_json_depth
                            ),
                        );
                    }
                    let size = c.get(3).map_or(0, |v| v.to_string().len());
                    if size > self.max_value_bytes {
                        return self.refused(
                            Limit::DocumentBytes,
                            "TOO_LARGE",
                            format!(
                                "changes[{i}]: val is {size} bytes, max {}",
                                self.max_value_bytes
                            ),
                        );
                    }
                    match parse_change(c) {
                        Ok(c) => changes.push(c),
                        Err(why) => {
                            return self.error("INVALID_MESSAGE", format!("changes[{i}]: {why}"));
                        }
                    }
                }
                vec![Action::Request {
                    room: self.room.clone(),
                    body: RoomRequest::Submit { changes },
                    tag: Tag::Update,
                }]
            }
            "pull" => {
                if !env.identity.permissions.can_read(&room) {
                    return self.error("FORBIDDEN", "Permission denied");
                }
                let after = match msg.get("version") {
                    None | Some(Value::Null) => 0,
                    Some(v) => match v.as_u64().or_else(|| v.as_i64().map(|_| 0)) {
                        Some(n) => n,
                        None => {
                            return self.error("INVALID_MESSAGE", "'version' must be an integer");
                        }
                    },
                };
                self.has = self.has.max(after);
                vec![self.fetch(after)]
            }
            // A fresh token, so the session outlives the one it connected with.
            "auth" => match msg.get("token").and_then(Value::as_str) {
                Some(token) => vec![Action::Authenticate {
                    token: token.to_owned(),
                    tag: Tag::Auth,
                }],
                None => self.error("INVALID_MESSAGE", "'token' must be a string"),
            },
            "" => self.error("INVALID_MESSAGE", "'type' must be a string"),
            other => self.error("UNKNOWN_MESSAGE", format!("Unknown message type: {other}")),
        }
    }

    fn on_oversized(
        &mut self,
        _: &Env,
        _: Option<Frame<'_>>,
        size: usize,
        max: usize,
    ) -> Vec<Action<Tag>> {
        self.error(
            "TOO_LARGE",
            format!("Message too large ({size} bytes, max {max})"),
        )
    }

    fn on_rate_limited(&mut self, _: &Env, _: Frame<'_>) -> Vec<Action<Tag>> {
        self.error("RATE_LIMITED", "Too many requests. Please slow down.")
    }

    fn on_reply(
        &mut self,
        _: &Env,
        tag: Tag,
        reply: Result<RoomReply, RoomError>,
    ) -> Vec<Action<Tag>> {
        match (tag, reply) {
            (Tag::Update, Ok(RoomReply::Submitted(s))) => vec![Action::Text(self.ack(s.seq))],
            (Tag::Pull, Ok(RoomReply::Fetched(f))) => {
                let Some(page) = f.pages.into_iter().next() else {
                    return vec![Action::Text(self.update(std::iter::empty(), f.seq))];
                };
                let bodies = page.entries.iter().map(|e| &e.body);
                match (page.more, page.entries.last()) {
                    // More to come: this page ends at its last change; ask for the next one.
                    (true, Some(last)) => vec![
                        Action::Text(self.update(bodies, last.seq)),
                        self.fetch(last.seq),
                    ],
                    _ => vec![Action::Text(self.update(bodies, f.seq))],
                }
            }
            (_, Err(RoomError::Unavailable)) => {
                self.error("UNAVAILABLE", "Service unavailable, retry")
            }
            (_, Err(e)) => {
                log::warn!("relay request failed: {e}");
                self.error("INTERNAL", "Internal error")
            }
            (_, Ok(other)) => {
                log::error!("relay request got an unexpected answer: {other:?}");
                self.error("INTERNAL", "Internal error")
            }
        }
    }

    /// Every other socket of the channel gets the changes; a socket never gets its own back.
    fn on_event(&mut self, env: &Env, event: &RoomEvent) -> Vec<Action<Tag>> {
        let version = event.entries.last().map_or(0, |e| e.seq);
        let has = self.has;
        let wanted =
            |e: &&crate::store::LogEntry| e.origin.as_ref() != Some(env.origin) && e.seq > has;
        if event.entries.iter().all(|e| wanted(&e)) {
            // The common case: the same message for every member that sent none of it.
            let frames = event.shared_frames(0, || {
                vec![OutFrame::text(
                    self.update(event.entries.iter().map(|e| &e.body), version),
                )]
            });
            return frames.iter().cloned().map(Action::Frame).collect();
        }
        let mut rest = event.entries.iter().filter(wanted).peekable();
        if rest.peek().is_none() {
            return Vec::new();
        }
        vec![Action::Text(self.update(rest.map(|e| &e.body), version))]
    }

    /// Success is silent (the protocol has no message for it); failure keeps the old token.
    fn on_authenticated(
        &mut self,
        _: &Env,
        _: Tag,
        result: Result<(), AuthError>,
    ) -> Vec<Action<Tag>> {
        match result {
            Ok(()) => Vec::new(),
            Err(_) => self.error("FORBIDDEN", "Authentication failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::identity::Identity;
    use crate::origin::{NodeId, Origin, SessionId};
    use crate::room::Broadcast;
    use crate::store::LogEntry;

    fn origin(session: u64) -> Origin {
        Origin {
            node: NodeId::new("n1"),
            session: SessionId(session),
        }
    }

    fn entry(seq: u64, from: u64) -> LogEntry {
        LogEntry {
            seq,
            stream: String::new(),
            key: format!("k{seq}"),
            body: RawJson::from_value(&json!([
                "t",
                format!("k{seq}"),
                "v",
                seq,
                1,
                seq,
                "s",
                1,
                0
            ])),
            origin: Some(origin(from)),
        }
    }

    fn versions(actions: &[Action<Tag>]) -> Vec<u64> {
        let mut out = Vec::new();
        for a in actions {
            let text = match a {
                Action::Text(t) => t.as_str(),
                Action::Frame(OutFrame::Text(t)) => &**t,
                other => panic!("a text frame expected, got {other:?}"),
            };
            let v: Value = serde_json::from_str(text).expect("json");
            for c in v["changes"].as_array().expect("changes") {
                out.push(c[5].as_u64().expect("db_version"));
            }
        }
        out
    }

    /// A client that pulled from a version is not sent again what it said it has: a node
    /// that was behind it broadcasts what it caught up with.
    #[test]
    fn broadcasts_skip_what_the_client_said_it_has() {
        let room = RoomKey::new(NAMESPACE, "r").expect("key");
        let limits = RelayLimits {
            max_per_message: 100,
            max_json_depth: 32,
            max_value_bytes: 1 << 20,
        };
        let mut d = RelayDialect::new(room.clone(), "site".into(), limits);
        let (me, identity) = (origin(1), Identity::anonymous());
        let env = Env {
            origin: &me,
            identity: &identity,
        };
        let event = |entries| {
            RoomEvent(Arc::new(Broadcast::new(
                room.clone(),
                entries,
                HashMap::new(),
            )))
        };
        let caught_up = event((10..=12).map(|s| entry(s, 2)).collect());
        // Before any pull it has nothing the hub knows of.
        assert_eq!(versions(&d.on_event(&env, &caught_up)), vec![10, 11, 12]);
        let pull = d.on_frame(&env, Frame::Text(r#"{"type":"pull","version":11}"#));
        assert!(matches!(pull.as_slice(), [Action::Request { .. }]));
        assert_eq!(versions(&d.on_event(&env, &caught_up)), vec![12]);
        assert!(d.on_event(&env, &event(vec![entry(9, 2)])).is_empty());
        // Its own changes are acked, not sent back.
        let mixed = event(vec![entry(13, 1), entry(14, 2)]);
        assert_eq!(versions(&d.on_event(&env, &mixed)), vec![14]);
    }
}
