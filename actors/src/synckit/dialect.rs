//! The SyncKit session codec.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::NAMESPACE;
use super::frame::{self, Framing, InvalidFrame, Message};
use super::model::{MAX_CLOCK_ENTRIES, MAX_CLOCK_KEY_BYTES, live_fields};
use crate::clock::now_ms;
use crate::dialect::{Action, Dialect, Env, Frame};
use crate::disconnect::close_code;
use crate::identity::{AuthError, Identity};
use crate::limits::{Limit, json_depth};
use crate::model::{IncomingChange, object};
use crate::out_frame::OutFrame;
use crate::raw_json::push_json_string;
use crate::room::{Broadcast, RoomError, RoomEvent, RoomReply, RoomRequest, Streams};
use crate::room_key::{Namespace, RoomKey};

/// What a room answer belongs to.
#[derive(Debug, Clone)]
pub enum Tag {
    /// `subscribe` / `sync_request`: answered with `sync_response`.
    Sync {
        request_id: String,
        document_id: String,
    },
    /// `delta`: acked with its message id.
    Delta {
        message_id: String,
    },
    Auth,
}

/// The longest field name a delta may write.
const MAX_FIELD_LEN: usize = 1024;

/// The `[limits]` a SyncKit connection checks itself.
#[derive(Debug, Clone, Copy)]
pub struct SynckitLimits {
    pub max_document_bytes: usize,
    /// How deeply a delta's value may nest.
    pub max_json_depth: usize,
    /// Documents one connection may follow at once.
    pub max_rooms: usize,
    /// How far ahead of the hub's clock a delta's timestamp may be, in milliseconds: a timestamp
    /// from the far future would win every later write of its field.
    pub max_clock_skew_ms: i64,
}

/// One SyncKit connection's protocol state.
pub struct SynckitDialect {
    framing: Framing,
    authenticated: bool,
    auth_required: bool,
    /// Documents this connection follows.
    documents: HashSet<String>,
    /// The writer id of deltas that name no `clientId`.
    label: String,
    next_id: u64,
    limits: SynckitLimits,
}

fn permissions_json(identity: &Identity) -> Value {
    json!({
        "canRead": identity.permissions.can_read,
        "canWrite": identity.permissions.can_write,
        "isAdmin": identity.permissions.is_admin,
    })
}

impl SynckitDialect {
    /// `authenticated` is true when auth is off or a token came with the upgrade.
    pub fn new(authenticated: bool, auth_required: bool, limits: SynckitLimits) -> SynckitDialect {
        SynckitDialect {
            // Before the client has spoken, the hub speaks binary, as the SDK expects.
            framing: Framing::Binary,
            authenticated,
            auth_required,
            documents: HashSet::new(),
            label: String::new(),
            next_id: 0,
            limits,
        }
    }

    fn make_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}{}", now_ms(), self.label, self.next_id)
    }

    fn send(&mut self, kind: &str, fields: Map<String, Value>) -> Action<Tag> {
        let mut text = String::new();
        for (k, v) in &fields {
            frame::push_field(&mut text, k, &v.to_string());
        }
        self.send_text(kind, text)
    }

    /// Sends a message whose fields are already JSON text (the inside of an object); adds its
    /// `id` and `timestamp`.
    fn send_text(&mut self, kind: &str, mut fields: String) -> Action<Tag> {
        let mut id = String::new();
        push_json_string(&mut id, &self.make_id());
        frame::push_field(&mut fields, "id", &id);
        match frame::encode_fields(self.framing, kind, now_ms(), &fields) {
            Ok(bytes) if self.framing == Framing::Binary => Action::Binary(bytes),
            Ok(bytes) => Action::Text(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => {
                log::error!("cannot encode a synckit {kind}: {e}");
                Action::Close {
                    code: close_code::INTERNAL,
                    reason: "Server error".into(),
                }
            }
        }
    }

    fn error(&mut self, message: &str) -> Vec<Action<Tag>> {
        let mut f = Map::new();
        f.insert("error".into(), Value::from(message));
        vec![self.send("error", f)]
    }

    fn document(&self, msg: &Message) -> Option<RoomKey> {
        RoomKey::new(NAMESPACE, msg.str("documentId")?)
    }

    fn on_message(&mut self, env: &Env, msg: Message) -> Vec<Action<Tag>> {
        match msg.kind.as_str() {
            "ping" => return vec![self.send("pong", Map::new())],
            "pong" | "ack" => return Vec::new(),
            "auth" => return self.on_auth(env, &msg),
            "subscribe" | "sync_request" | "unsubscribe" | "delta" => {}
            other => return self.error(&format!("Invalid message type: {other}")),
        }
        if !self.authenticated {
            return self.error("Not authenticated");
        }
        let Some(room) = self.document(&msg) else {
            return self.error("Invalid document ID");
        };
        let perms = &env.identity.permissions;
        if msg.kind != "unsubscribe"
            && !self.documents.contains(&room.room)
            && self.documents.len() >= self.limits.max_rooms
        {
            let mut actions = self.error(&format!(
                "Too many documents on one connection (max {})",
                self.limits.max_rooms
            ));
            actions.push(Action::LimitHit(Limit::RoomsPerSession));
            return actions;
        }
        match msg.kind.as_str() {
            "unsubscribe" => {
                if self.documents.remove(&room.room) {
                    vec![Action::Leave { room }]
                } else {
                    Vec::new()
                }
            }
            "delta" => {
                if !perms.can_write(&room.room) {
                    return self.error("Permission denied");
                }
                self.on_delta(env, room, &msg)
            }
            _ => {
                if !perms.can_read(&room.room) {
                    return self.error("Permission denied");
                }
                self.documents.insert(room.room.clone());
                vec![Action::Request {
                    body: RoomRequest::Snapshot,
                    tag: Tag::Sync {
                        request_id: msg.id().unwrap_or_default().to_owned(),
                        document_id: room.room.clone(),
                    },
                    room,
                }]
            }
        }
    }

    fn on_auth(&mut self, env: &Env, msg: &Message) -> Vec<Action<Tag>> {
        let token = msg.str("token").filter(|t| !t.is_empty());
        match (self.auth_required, token) {
            // Auth off: every session is in; `auth` just confirms it.
            (false, _) => {
                let f = self.auth_success(env.identity);
                vec![self.send("auth_success", f)]
            }
            (true, Some(token)) => vec![Action::Authenticate {
                token: token.to_owned(),
                tag: Tag::Auth,
            }],
            (true, None) => {
                let mut actions = self.error("Authentication required");
                actions.push(Action::Close {
                    code: close_code::POLICY,
                    reason: "Authentication required".into(),
                });
                actions
            }
        }
    }

    fn auth_success(&self, identity: &Identity) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("userId".into(), Value::from(identity.user_id.clone()));
        f.insert("permissions".into(), permissions_json(identity));
        f
    }

    /// Both delta forms: `{documentId, delta:{field: value}, vectorClock}` and the SDK's
    /// `{documentId, field, value, clock, clientId, timestamp, messageId}`.
    fn on_delta(&mut self, env: &Env, room: RoomKey, msg: &Message) -> Vec<Action<Tag>> {
        let missing = "Invalid delta message: missing or empty delta";
        let fields: Vec<(String, Value)> = match (msg.fields.get("delta"), msg.str("field")) {
            (Some(Value::Object(d)), _) if !d.is_empty() => {
                d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            (None, Some(field)) => vec![(
                field.to_owned(),
                msg.fields.get("value").cloned().unwrap_or(Value::Null),
            )],
            _ => return self.error(missing),
        };
        if fields
            .iter()
            .any(|(f, _)| f.is_empty() || f.chars().count() > MAX_FIELD_LEN)
        {
            return self.error(missing);
        }
        // Checked before anything is stored: the log record holds the value one level deeper,
        // and every record must read back.
        let max_depth = self.limits.max_json_depth;
        if fields.iter().any(|(_, v)| json_depth(v) > max_depth) {
            let mut actions = self.error(&format!(
                "Invalid delta: value nested deeper than {max_depth} levels"
            ));
            actions.push(Action::LimitHit(Limit::JsonDepth));
            return actions;
        }
        let clock = match (msg.fields.get("vectorClock"), msg.fields.get("clock")) {
            (Some(Value::Object(c)), _) | (None, Some(Value::Object(c))) => c.clone(),
            _ => Map::new(),
        };
        // The clock is stored with every field it writes and sent with every delta: it counts
        // against the document like the values do.
        let clock_bytes: usize = clock
            .iter()
            .map(|(w, n)| w.len() + n.to_string().len())
            .sum();
        let size: usize = fields
            .iter()
            .map(|(f, v)| f.len() + v.to_string().len() + clock_bytes)
            .sum();
        if size > self.limits.max_document_bytes {
            let mut actions = self.error(&format!(
                "Message too large ({size} bytes, max {})",
                self.limits.max_document_bytes
            ));
            actions.push(Action::LimitHit(Limit::DocumentBytes));
            return actions;
        }
        if let Err(why) = check_clock(&clock) {
            return self.error(&format!("Invalid delta: {why}"));
        }
        let now = now_ms();
        let ts = match msg.fields.get("timestamp") {
            None => now,
            Some(t) => match t.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => {
                    if t > (now + self.limits.max_clock_skew_ms) as f64 {
                        return self
                            .error("Invalid delta: timestamp is ahead of the server's clock");
                    }
                    t as i64
                }
                _ => return self.error("Invalid delta: timestamp must be a time in ms"),
            },
        };
        let writer = match msg.str("clientId").filter(|c| !c.is_empty()) {
            Some(c) => c.to_owned(),
            // Session numbers are per node: the node's id keeps writers of two nodes apart.
            None => format!("conn-{}-{}", env.origin.node, env.session().0),
        };
        let counter = clock.get(&writer).and_then(Value::as_u64).unwrap_or(0);
        let ts = Value::from(ts);
        let clock = Value::Object(clock);
        let changes = fields
            .into_iter()
            .map(|(field, value)| IncomingChange {
                stream: String::new(),
                key: field,
                body: object([
                    ("value", value),
                    ("ts", ts.clone()),
                    ("counter", Value::from(counter)),
                    ("writer", Value::from(writer.as_str())),
                    ("clock", clock.clone()),
                ]),
            })
            .collect();
        let message_id = msg
            .str("messageId")
            .or_else(|| msg.id())
            .unwrap_or_default()
            .to_owned();
        // Writing subscribes the writer.
        self.documents.insert(room.room.clone());
        vec![Action::Request {
            room,
            body: RoomRequest::Submit { changes },
            tag: Tag::Delta { message_id },
        }]
    }
}

impl Dialect for SynckitDialect {
    type Tag = Tag;

    fn namespace(&self) -> Namespace {
        NAMESPACE
    }

    fn initial_rooms(&self) -> Vec<RoomKey> {
        Vec::new()
    }

    fn streams_for(&self, _: &RoomKey) -> Streams {
        Streams::All
    }

    fn on_frame(&mut self, env: &Env, frame: Frame<'_>) -> Vec<Action<Tag>> {
        if self.label.is_empty() {
            self.label = format!("{}-", env.session().0);
        }
        let decoded = match frame {
            Frame::Text(t) => {
                self.framing = Framing::Json;
                frame::decode_json(t.as_bytes())
            }
            // JSON sent in a binary frame (as Node's `ws` delivers it) is JSON all the same.
            Frame::Binary(b) if b.first() == Some(&b'{') => {
                self.framing = Framing::Json;
                frame::decode_json(b)
            }
            Frame::Binary(b) => {
                self.framing = Framing::Binary;
                let id = self.make_id();
                frame::decode_binary(b, || id)
            }
        };
        match decoded {
            Ok(msg) => self.on_message(env, msg),
            Err(InvalidFrame) => self.error("Invalid message format"),
        }
    }

    fn on_oversized(
        &mut self,
        _: &Env,
        _: Option<Frame<'_>>,
        size: usize,
        max: usize,
    ) -> Vec<Action<Tag>> {
        self.error(&format!("Message too large ({size} bytes, max {max})"))
    }

    fn on_rate_limited(&mut self, _: &Env, _: Frame<'_>) -> Vec<Action<Tag>> {
        let mut f = Map::new();
        f.insert(
            "error".into(),
            "Too many messages. Please slow down.".into(),
        );
        f.insert("code".into(), "RATE_LIMIT_EXCEEDED".into());
        vec![self.send("error", f)]
    }

    fn on_reply(
        &mut self,
        _: &Env,
        tag: Tag,
        reply: Result<RoomReply, RoomError>,
    ) -> Vec<Action<Tag>> {
        match (tag, reply) {
            (Tag::Auth, _) => Vec::new(),
            (Tag::Delta { message_id }, Ok(RoomReply::Submitted(_))) => {
                let mut f = String::from(r#""messageId":"#);
                push_json_string(&mut f, &message_id);
                vec![self.send_text("ack", f)]
            }
            (
                Tag::Sync {
                    request_id,
                    document_id,
                },
                Ok(RoomReply::Snapshot(snap)),
            ) => {
                // Written straight into one buffer: a document can hold many fields, and this
                // is its whole catch-up.
                let mut f = String::with_capacity(48 * snap.records.len() + 128);
                let quoted = |name: &str, s: &str, f: &mut String| {
                    let mut q = String::with_capacity(s.len() + 2);
                    push_json_string(&mut q, s);
                    frame::push_field(f, name, &q);
                };
                quoted("requestId", &request_id, &mut f);
                quoted("documentId", &document_id, &mut f);
                f.push_str(r#","state":{"#);
                let mut first = true;
                for (field, value) in
                    live_fields(snap.records.iter().map(|(_, k, v)| (k.as_str(), &**v)))
                {
                    if !first {
                        f.push(',');
                    }
                    first = false;
                    push_json_string(&mut f, field);
                    f.push(':');
                    push_value(&mut f, value);
                }
                f.push('}');
                let clock = snap
                    .model
                    .as_object()
                    .map_or("{}".into(), |_| snap.model.to_string());
                frame::push_field(&mut f, "clock", &clock);
                frame::push_field(&mut f, "deltas", "[]");
                vec![self.send_text("sync_response", f)]
            }
            (Tag::Delta { .. } | Tag::Sync { .. }, Err(RoomError::Unavailable)) => {
                self.error("Service unavailable, retry")
            }
            // Every field together, as `sync_response` would send them.
            (Tag::Delta { .. }, Err(RoomError::TooLarge { size, max })) => {
                let mut actions =
                    self.error(&format!("Document too large ({size} bytes, max {max})"));
                actions.push(Action::LimitHit(Limit::DocumentBytes));
                actions
            }
            (Tag::Delta { .. } | Tag::Sync { .. }, Err(e)) => {
                log::warn!("synckit request failed: {e}");
                self.error("Internal server error")
            }
            (_, Ok(other)) => {
                log::error!("synckit request got an unexpected answer: {other:?}");
                self.error("Internal server error")
            }
        }
    }

    /// Winning values go to every subscriber, the writer included, one `delta` per field,
    /// encoded once per framing for all of them.
    fn on_event(&mut self, _: &Env, event: &RoomEvent) -> Vec<Action<Tag>> {
        let (variant, framing) = match self.framing {
            Framing::Binary => (1, Framing::Binary),
            Framing::Json => (2, Framing::Json),
        };
        let frames = event.shared_frames(variant, || deltas(framing, event));
        frames.iter().cloned().map(Action::Frame).collect()
    }

    fn on_authenticated(
        &mut self,
        env: &Env,
        _: Tag,
        result: Result<(), AuthError>,
    ) -> Vec<Action<Tag>> {
        match result {
            Ok(()) => {
                self.authenticated = true;
                let f = self.auth_success(env.identity);
                vec![self.send("auth_success", f)]
            }
            Err(_) => {
                let mut f = Map::new();
                f.insert("error".into(), Value::from("Authentication failed"));
                vec![
                    self.send("auth_error", f),
                    Action::Close {
                        code: close_code::POLICY,
                        reason: "Authentication failed".into(),
                    },
                ]
            }
        }
    }
}

/// What a broadcast needs of a logged field write.
#[derive(Deserialize)]
struct Logged<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(borrow, default)]
    clock: Option<&'a RawValue>,
}

/// One `delta {documentId, field, value, clock, clientId}` per entry, `clientId` "server" as
/// SyncKit's own server sends it. The `clock` is the document's clock after the newest of them
/// with [`authoritative_clock`]'s extra entry: never empty (the SDK crashes on an empty one), and
/// it makes every SDK client take the hub's value, whatever its own id.
fn deltas(framing: Framing, event: &Broadcast) -> Vec<OutFrame> {
    let logged: Vec<Option<Logged>> = event
        .entries
        .iter()
        .map(|e| serde_json::from_str(e.body.as_str()).ok())
        .collect();
    let clock = authoritative_clock(logged.last().and_then(|l| l.as_ref()?.clock));
    let clock = clock.as_str();
    let now = now_ms();
    let mut frames = Vec::with_capacity(event.entries.len());
    for (e, l) in event.entries.iter().zip(&logged) {
        let mut fields = String::with_capacity(128);
        fields.push_str(r#""documentId":"#);
        push_json_string(&mut fields, &event.room.room);
        fields.push_str(r#","field":"#);
        push_json_string(&mut fields, &e.key);
        fields.push_str(r#","value":"#);
        fields.push_str(l.as_ref().map_or("null", |l| l.value.get()));
        fields.push_str(r#","clock":"#);
        fields.push_str(clock);
        fields.push_str(r#","clientId":"server","id":""#);
        fields.push_str(&format!("{now}-{}", e.seq));
        fields.push('"');
        match frame::encode_fields(framing, "delta", now, &fields) {
            Ok(bytes) if framing == Framing::Binary => frames.push(OutFrame::binary(bytes)),
            Ok(bytes) => frames.push(OutFrame::text(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) => log::error!("cannot encode a synckit delta: {e}"),
        }
    }
    frames
}

/// The SDK applies a delta to its own copy with the largest counter of the delta's clock and the
/// sender id "server", by (counter, client id): a field the client wrote itself at the same
/// counter would keep the client's value whenever its id sorts after "server" (`zz-alice`), and
/// clients would never converge. A `server` entry one above every other counter makes the hub's
/// value win in every client; the SDK merges it into its clock and sends it back, so the entry
/// grows by one per round trip, no faster.
fn authoritative_clock(clock: Option<&RawValue>) -> String {
    let mut map: Map<String, Value> = clock
        .and_then(|c| serde_json::from_str(c.get()).ok())
        .unwrap_or_default();
    let top = map.values().filter_map(Value::as_u64).max().unwrap_or(0);
    map.insert("server".into(), Value::from(top.saturating_add(1)));
    Value::Object(map).to_string()
}

/// A clock a delta may carry: at most as many writers as a document's clock holds, each a short
/// id with a counter that is a whole number.
fn check_clock(clock: &Map<String, Value>) -> Result<(), String> {
    if clock.len() > MAX_CLOCK_ENTRIES {
        return Err(format!("clock names more than {MAX_CLOCK_ENTRIES} writers"));
    }
    for (writer, n) in clock {
        if writer.is_empty() || writer.len() > MAX_CLOCK_KEY_BYTES {
            return Err(format!(
                "clock writer ids are 1 to {MAX_CLOCK_KEY_BYTES} bytes"
            ));
        }
        if n.as_u64().is_none() {
            return Err("clock counters are whole numbers".into());
        }
    }
    Ok(())
}

/// Appends a value's JSON text to `out` without an intermediate string.
fn push_value(out: &mut String, value: &Value) {
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = write!(out, "{value}");
}
