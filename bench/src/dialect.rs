//! The three wire dialects as a client speaks them: URLs, the messages the bench sends, and a
//! cheap reader for what servers send back.
//!
//! Replies are read with a streaming visitor that keeps borrowed strings and calls back once
//! per change it meets, so a delivery costs no `serde_json::Value` tree and no allocation per
//! change: the bench shares the machine with the server, and its CPU per message matters.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

use super::stats::unix_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// cr-sqlite style peers: `connected` / `update` / `ack` / `pull` per channel.
    Relay,
    /// The Pocket sync engine: JSON push/pull with checkpoints.
    Pocket,
    /// The SyncKit SDK: binary frames, field-level LWW documents.
    Synckit,
}

/// The Pocket collection every bench write goes to.
pub const COLLECTION: &str = "items";
/// The relay table every bench write goes to.
const TABLE: &str = "bench";

/// SyncKit's binary type codes (SPEC §4).
mod code {
    pub const SUBSCRIBE: u8 = 0x10;
    pub const SYNC_REQUEST: u8 = 0x12;
    pub const SYNC_RESPONSE: u8 = 0x13;
    pub const DELTA: u8 = 0x20;
    pub const ACK: u8 = 0x21;
    pub const PING: u8 = 0x30;
    pub const PONG: u8 = 0x31;
    pub const ERROR: u8 = 0xFF;
}
const SYNCKIT_HEADER: usize = 13;

/// The key of a bench write: `<client>-<n>`. Client names and room names are made by the bench
/// from `[A-Za-z0-9_.:-]`, so they go into JSON without escaping.
pub fn write_key(client: &str, n: u64) -> String {
    format!("{client}-{n}")
}

/// Splits a key made by [`write_key`].
pub fn parse_key(key: &str) -> Option<(&str, u64)> {
    let (client, n) = key.rsplit_once('-')?;
    Some((client, n.parse().ok()?))
}

/// What relay writes look like beyond their number (`--keys`, `--pad-bytes`).
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Cycle over this many records per writer; 0 writes a new record every time.
    pub keys: u64,
    pub pad: String,
}

impl Shape {
    fn key(&self, n: u64) -> u64 {
        if self.keys == 0 { n } else { n % self.keys }
    }
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Relay => "relay",
            Dialect::Pocket => "pocket",
            Dialect::Synckit => "synckit",
        }
    }

    pub fn default_path(self) -> &'static str {
        match self {
            Dialect::Relay => "/relay",
            Dialect::Pocket => "/sync",
            Dialect::Synckit => "/ws",
        }
    }

    /// The query of a connection of `client` to `room` (SyncKit names the document per message).
    pub fn query(self, room: &str, client: &str) -> String {
        match self {
            Dialect::Relay => format!("channel={room}"),
            Dialect::Pocket => format!("room={room}&nodeId={client}"),
            Dialect::Synckit => String::new(),
        }
    }

    /// Whether the server opens the conversation (relay's `connected`).
    pub fn server_speaks_first(self) -> bool {
        self == Dialect::Relay
    }

    /// Whether `--keys` and `--pad-bytes` apply.
    pub fn shapes_writes(self) -> bool {
        self == Dialect::Relay
    }

    /// Whether acks come back in the order of the writes, without a request id.
    pub fn acks_in_order(self) -> bool {
        self == Dialect::Relay
    }

    /// One write: a new cell/document/field `<client>-<n>` whose value is `val_us`. In relay,
    /// `shape` may cycle the writes over a fixed set of cells (each write wins its cell by its
    /// larger value) and pad each change's site id, to write volume without growing the state.
    pub fn write(
        self,
        room: &str,
        client: &str,
        site: &str,
        n: u64,
        val_us: u64,
        shape: &Shape,
    ) -> Message {
        let ms = unix_ms();
        match self {
            Dialect::Relay => text(format!(
                r#"{{"type":"update","changes":[["{TABLE}","{client}-{k}","v",{val_us},1,{v},"{site}{pad}",1,0]],"version":{v},"siteId":"{site}","channel":"{room}"}}"#,
                v = n + 1,
                k = shape.key(n),
                pad = shape.pad,
            )),
            Dialect::Pocket => text(format!(
                r#"{{"type":"push","id":"{n}","timestamp":{ms},"collection":"{COLLECTION}","changes":[{{"operation":"insert","documentId":"{client}-{n}","document":{{"_id":"{client}-{n}","t":{val_us}}},"timestamp":{ms},"sequence":{s}}}],"checkpoint":{{"global":0}}}}"#,
                s = n + 1
            )),
            Dialect::Synckit => synckit(
                code::DELTA,
                ms,
                &format!(
                    r#"{{"documentId":"{room}","field":"{client}-{n}","value":{val_us},"clock":{{"{client}":{c}}},"clientId":"{client}","timestamp":{ms},"messageId":"{n}"}}"#,
                    c = n + 1
                ),
            ),
        }
    }

    /// A batch of `count` writes `c<first>`, `c<first+1>`, … for loading a room; `batch` is
    /// the batch's number, the request id where the dialect has one.
    pub fn write_batch(
        self,
        room: &str,
        client: &str,
        site: &str,
        batch: u64,
        first: u64,
        count: u64,
    ) -> Message {
        let ms = unix_ms();
        let mut body = String::with_capacity(count as usize * 64 + 256);
        let keys = first..first + count;
        match self {
            Dialect::Relay => {
                body.push_str(r#"{"type":"update","changes":["#);
                for (i, k) in keys.enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    let _ = write!(
                        body,
                        r#"["{TABLE}","c{k}","v",{k},1,{v},"{site}",1,0]"#,
                        v = k + 1
                    );
                }
                let _ = write!(
                    body,
                    r#"],"version":{},"siteId":"{site}","channel":"{room}"}}"#,
                    first + count
                );
                text(body)
            }
            Dialect::Pocket => {
                let _ = write!(
                    body,
                    r#"{{"type":"push","id":"{batch}","timestamp":{ms},"collection":"{COLLECTION}","changes":["#
                );
                for (i, k) in keys.enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    let _ = write!(
                        body,
                        r#"{{"operation":"insert","documentId":"c{k}","document":{{"_id":"c{k}","t":{k}}},"timestamp":{ms},"sequence":{s}}}"#,
                        s = k + 1
                    );
                }
                body.push_str(r#"],"checkpoint":{"global":0}}"#);
                text(body)
            }
            Dialect::Synckit => {
                let _ = write!(body, r#"{{"documentId":"{room}","delta":{{"#);
                for (i, k) in keys.enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    let _ = write!(body, r#""c{k}":{k}"#);
                }
                let _ = write!(
                    body,
                    r#"}},"vectorClock":{{"{client}":{c}}},"clientId":"{client}","messageId":"{batch}"}}"#,
                    c = batch + 1
                );
                synckit(code::DELTA, ms, &body)
            }
        }
    }

    /// What makes a session receive a room's writes: Pocket's pull of the collection, SyncKit's
    /// `subscribe`; relay sockets receive their channel from the start.
    pub fn subscribe(self, room: &str) -> Option<Message> {
        let ms = unix_ms();
        match self {
            Dialect::Relay => None,
            Dialect::Pocket => Some(text(format!(
                r#"{{"type":"pull","id":"subscribe","timestamp":{ms},"collections":["{COLLECTION}"],"checkpoint":{{"global":0}},"limit":1}}"#
            ))),
            Dialect::Synckit => Some(synckit(
                code::SUBSCRIBE,
                ms,
                &format!(r#"{{"documentId":"{room}"}}"#),
            )),
        }
    }

    /// An application-level ping, where the dialect has one.
    pub fn ping(self) -> Option<Message> {
        match self {
            Dialect::Relay => None,
            Dialect::Pocket => Some(text("ping".to_owned())),
            Dialect::Synckit => Some(synckit(code::PING, unix_ms(), "{}")),
        }
    }

    /// A catch-up request. Relay: `pull` from version 0 (answered in pages); Pocket: one page
    /// of at most 1000 from `checkpoint` (the previous reply's, or none to start at 0); SyncKit:
    /// `sync_request` (answered with the whole state).
    pub fn catch_up(self, room: &str, page: u64, checkpoint: Option<&str>) -> Message {
        let ms = unix_ms();
        match self {
            Dialect::Relay => text(r#"{"type":"pull","version":0}"#.to_owned()),
            Dialect::Pocket => text(format!(
                r#"{{"type":"pull","id":"catchup-{page}","timestamp":{ms},"collections":["{COLLECTION}"],"checkpoint":{},"limit":1000}}"#,
                checkpoint.unwrap_or(r#"{"global":0}"#)
            )),
            Dialect::Synckit => synckit(
                code::SYNC_REQUEST,
                ms,
                &format!(r#"{{"documentId":"{room}"}}"#),
            ),
        }
    }

    /// Reads one message from the server. Every change it holds (a relay change, a Pocket
    /// ChangeEvent, a SyncKit delta or state field) is passed to `on_change` as its key and its
    /// value when that is a non-negative integer.
    pub fn decode<'m>(
        self,
        msg: &'m Message,
        on_change: &mut dyn FnMut(&str, Option<u64>),
    ) -> Result<Decoded<'m>, DecodeError> {
        let (bytes, is_text): (&[u8], bool) = match msg {
            Message::Text(t) => (t.as_bytes(), true),
            Message::Binary(b) => (b, false),
            _ => return Ok(Decoded::of(Kind::Other)),
        };
        match self {
            Dialect::Pocket if is_text && bytes == b"pong" => Ok(Decoded::of(Kind::Pong)),
            Dialect::Relay | Dialect::Pocket => {
                let f = read_json(bytes, self, on_change)?;
                let kind = match (self, f.kind.as_deref()) {
                    (_, Some("error")) => Kind::Error,
                    (Dialect::Relay, Some("connected")) => Kind::Connected,
                    (Dialect::Relay, Some("ack")) => Kind::Ack,
                    (Dialect::Relay, Some("update")) => Kind::Changes,
                    (Dialect::Pocket, Some("push-response")) => Kind::Ack,
                    (Dialect::Pocket, Some("pull-response"))
                        if f.id.as_deref().is_some_and(|i| i.starts_with("broadcast_")) =>
                    {
                        Kind::Changes
                    }
                    (Dialect::Pocket, Some("pull-response")) => Kind::PullReply,
                    _ => Kind::Other,
                };
                Ok(Decoded { kind, ..f.into() })
            }
            Dialect::Synckit => {
                if is_text || bytes.len() < SYNCKIT_HEADER {
                    return Err(DecodeError("not a SyncKit binary frame".into()));
                }
                let len = u32::from_be_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
                let payload = bytes
                    .get(SYNCKIT_HEADER..SYNCKIT_HEADER.saturating_add(len))
                    .ok_or_else(|| DecodeError("SyncKit frame shorter than its length".into()))?;
                let kind = match bytes[0] {
                    code::ACK => Kind::Ack,
                    code::DELTA => Kind::Changes,
                    code::SYNC_RESPONSE => Kind::PullReply,
                    code::PONG => return Ok(Decoded::of(Kind::Pong)),
                    code::ERROR => Kind::Error,
                    _ => Kind::Other,
                };
                let f = read_json(payload, self, on_change)?;
                Ok(Decoded { kind, ..f.into() })
            }
        }
    }
}

fn text(s: String) -> Message {
    Message::Text(s.into())
}

/// A SyncKit binary frame: type code, ms timestamp (big-endian i64), payload length
/// (big-endian u32), JSON payload.
fn synckit(code: u8, ms: i64, payload: &str) -> Message {
    let mut v = Vec::with_capacity(SYNCKIT_HEADER + payload.len());
    v.push(code);
    v.extend_from_slice(&ms.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload.as_bytes());
    Message::Binary(v.into())
}

/// What kind of message came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Relay's greeting.
    Connected,
    /// The answer to a write (relay `ack`, Pocket `push-response`, SyncKit `ack`).
    Ack,
    /// Changes pushed to this session: relay `update` (also a pull page), Pocket broadcast,
    /// SyncKit `delta`.
    Changes,
    /// The answer to a pull or subscribe: Pocket `pull-response`, SyncKit `sync_response`.
    PullReply,
    Pong,
    Error,
    Other,
}

/// The parts of a message the bench looks at.
#[derive(Debug)]
pub struct Decoded<'m> {
    pub kind: Kind,
    /// Pocket's request id, SyncKit's `messageId`.
    pub id: Option<Cow<'m, str>>,
    /// Relay's `version`.
    pub version: Option<u64>,
    /// Pocket's `success` (false when the push met conflicts).
    pub success: Option<bool>,
    pub has_more: Option<bool>,
    pub checkpoint: Option<&'m RawValue>,
    /// Changes passed to the callback.
    pub changes: u64,
    /// An error's message or code, for the report.
    pub message: Option<Cow<'m, str>>,
}

impl Decoded<'_> {
    fn of(kind: Kind) -> Self {
        Decoded {
            kind,
            id: None,
            version: None,
            success: None,
            has_more: None,
            checkpoint: None,
            changes: 0,
            message: None,
        }
    }

    /// The request number an answer refers to (the bench's ids are numbers).
    pub fn request(&self) -> Option<u64> {
        self.id.as_deref()?.parse().ok()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("unreadable message: {0}")]
pub struct DecodeError(String);

#[derive(Default)]
struct Fields<'m> {
    kind: Option<Cow<'m, str>>,
    id: Option<Cow<'m, str>>,
    /// SyncKit's acks name the delta in `messageId`; their `id` is the ack's own.
    message_id: Option<Cow<'m, str>>,
    version: Option<u64>,
    success: Option<bool>,
    has_more: Option<bool>,
    checkpoint: Option<&'m RawValue>,
    changes: u64,
    message: Option<Cow<'m, str>>,
}

impl<'m> From<Fields<'m>> for Decoded<'m> {
    fn from(f: Fields<'m>) -> Decoded<'m> {
        Decoded {
            kind: Kind::Other,
            id: f.message_id.or(f.id),
            version: f.version,
            success: f.success,
            has_more: f.has_more,
            checkpoint: f.checkpoint,
            changes: f.changes,
            message: f.message,
        }
    }
}

fn read_json<'m>(
    bytes: &'m [u8],
    dialect: Dialect,
    on_change: &mut dyn FnMut(&str, Option<u64>),
) -> Result<Fields<'m>, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = Top { dialect, on_change }
        .deserialize(&mut de)
        .map_err(|e| DecodeError(e.to_string()))?;
    de.end().map_err(|e| DecodeError(e.to_string()))?;
    Ok(fields)
}

/// A JSON scalar as the bench needs it; arrays and objects are skipped.
enum Scalar<'m> {
    Str(Cow<'m, str>),
    Int(u64),
    Bool(bool),
    Other,
}

impl<'m> Scalar<'m> {
    fn into_str(self) -> Option<Cow<'m, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Scalar::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
                    Scalar::Int(v as u64)
                } else {
                    Scalar::Other
                })
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The top-level object of any message. Keys may come in any order (servers sort them or not).
struct Top<'f> {
    dialect: Dialect,
    on_change: &'f mut dyn FnMut(&str, Option<u64>),
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Fields<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Fields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut f = Fields::default();
        // A SyncKit delta names its field and value in two keys of the top level.
        let mut field: Option<Cow<'de, str>> = None;
        let mut value: Option<u64> = None;
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let Some(key) = key.into_str() else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            match key.as_ref() {
                "type" => f.kind = map.next_value::<Scalar>()?.into_str(),
                "id" => f.id = map.next_value::<Scalar>()?.into_str(),
                "messageId" => f.message_id = map.next_value::<Scalar>()?.into_str(),
                "version" => f.version = map.next_value::<Scalar>()?.as_u64(),
                "success" | "hasMore" => {
                    let b = match map.next_value::<Scalar>()? {
                        Scalar::Bool(b) => Some(b),
                        _ => None,
                    };
                    if key == "success" {
                        f.success = b;
                    } else {
                        f.has_more = b;
                    }
                }
                "checkpoint" => f.checkpoint = Some(map.next_value::<&RawValue>()?),
                "changes" => {
                    f.changes += map.next_value_seed(ChangesSeed {
                        dialect: self.dialect,
                        on_change: &mut *self.on_change,
                    })?;
                }
                "state" => {
                    f.changes += map.next_value_seed(StateSeed {
                        on_change: &mut *self.on_change,
                    })?;
                }
                "field" => field = map.next_value::<Scalar>()?.into_str(),
                "value" => value = map.next_value::<Scalar>()?.as_u64(),
                "message" | "error" | "code" => {
                    if let Some(m) = map.next_value::<Scalar>()?.into_str() {
                        f.message = Some(m);
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let Some(field) = field {
            (self.on_change)(&field, value);
            f.changes += 1;
        }
        Ok(f)
    }
}

/// `changes`: relay's array of change tuples, or Pocket's `{collection: [ChangeEvent]}`.
struct ChangesSeed<'f> {
    dialect: Dialect,
    on_change: &'f mut dyn FnMut(&str, Option<u64>),
}

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("changes")
    }

    /// Relay: `[[table, pk, cid, val, ...], ...]`; and a Pocket collection's events.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        loop {
            let found = match self.dialect {
                Dialect::Pocket => seq.next_element_seed(PocketEventSeed {
                    on_change: &mut *self.on_change,
                })?,
                _ => seq.next_element_seed(RelayChangeSeed {
                    on_change: &mut *self.on_change,
                })?,
            };
            if found.is_none() {
                return Ok(n);
            }
            n += 1;
        }
    }

    /// Pocket: `{collection: [ChangeEvent, ...], ...}`.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            n += map.next_value_seed(ChangesSeed {
                dialect: Dialect::Pocket,
                on_change: &mut *self.on_change,
            })?;
        }
        Ok(n)
    }

    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }
}

/// One relay change: the key is `pk` (index 1), the value `val` (index 3).
struct RelayChangeSeed<'f> {
    on_change: &'f mut dyn FnMut(&str, Option<u64>),
}

impl<'de> DeserializeSeed<'de> for RelayChangeSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RelayChangeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a relay change tuple")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut pk: Option<Cow<'de, str>> = None;
        let mut val = None;
        let mut i = 0;
        loop {
            match i {
                1 => match seq.next_element::<Scalar>()? {
                    Some(s) => pk = s.into_str(),
                    None => break,
                },
                3 => match seq.next_element::<Scalar>()? {
                    Some(s) => val = s.as_u64(),
                    None => break,
                },
                _ => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            i += 1;
        }
        (self.on_change)(pk.as_deref().unwrap_or(""), val);
        Ok(())
    }
}

/// One Pocket ChangeEvent: the key is `documentId`, the value `document.t`.
struct PocketEventSeed<'f> {
    on_change: &'f mut dyn FnMut(&str, Option<u64>),
}

impl<'de> DeserializeSeed<'de> for PocketEventSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PocketEventSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Pocket ChangeEvent")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut id: Option<Cow<'de, str>> = None;
        let mut t = None;
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            match key.into_str().as_deref() {
                Some("documentId") => id = map.next_value::<Scalar>()?.into_str(),
                Some("document") => t = map.next_value::<DocumentT>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        (self.on_change)(id.as_deref().unwrap_or(""), t);
        Ok(())
    }
}

/// The `t` field of a Pocket document.
struct DocumentT(Option<u64>);

impl<'de> serde::Deserialize<'de> for DocumentT {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DocumentT;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DocumentT, A::Error> {
                let mut t = None;
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    if key.into_str().as_deref() == Some("t") {
                        t = map.next_value::<Scalar>()?.as_u64();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(DocumentT(t))
            }
            fn visit_unit<E>(self) -> Result<DocumentT, E> {
                Ok(DocumentT(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// SyncKit's `state`: `{field: value, ...}`; every field is a change.
struct StateSeed<'f> {
    on_change: &'f mut dyn FnMut(&str, Option<u64>),
}

impl<'de> DeserializeSeed<'de> for StateSeed<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StateSeed<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SyncKit state object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let value = map.next_value::<Scalar>()?;
            if let Some(key) = key.into_str() {
                (self.on_change)(&key, value.as_u64());
                n += 1;
            }
        }
        Ok(n)
    }

    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Vec<(String, Option<u64>)>;

    fn collect(d: Dialect, msg: &Message) -> (Kind, Seen) {
        let mut seen = Vec::new();
        let r = d
            .decode(msg, &mut |k, v| seen.push((k.to_owned(), v)))
            .expect("decodes");
        (r.kind, seen)
    }

    #[test]
    fn relay_updates_yield_every_change_whatever_the_key_order() {
        let m = text(
            r#"{"changes":[["bench","w0-1","v",17,1,5,"s",1,0],["bench","w0-2","v","x",1,6,"s",1,0]],"channel":"c","siteId":"h","type":"update","version":6}"#.into(),
        );
        let (kind, seen) = collect(Dialect::Relay, &m);
        assert_eq!(kind, Kind::Changes);
        assert_eq!(seen, vec![("w0-1".into(), Some(17)), ("w0-2".into(), None)]);
        let ack = text(r#"{"type":"ack","siteId":"h","version":9,"channel":"c"}"#.into());
        let d = Dialect::Relay.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((d.kind, d.version), (Kind::Ack, Some(9)));
    }

    #[test]
    fn pocket_broadcasts_and_replies_are_told_apart() {
        let b = text(
            r#"{"type":"pull-response","id":"broadcast_1","changes":{"items":[{"operation":"insert","documentId":"w0-3","document":{"_id":"w0-3","t":42},"sequence":3}]},"checkpoint":{"global":3},"hasMore":false}"#.into(),
        );
        let (kind, seen) = collect(Dialect::Pocket, &b);
        assert_eq!(kind, Kind::Changes);
        assert_eq!(seen, vec![("w0-3".into(), Some(42))]);
        let r = text(
            r#"{"type":"pull-response","id":"catchup-0","changes":{"items":[]},"checkpoint":{"sequences":{"items":0},"global":0},"hasMore":true}"#.into(),
        );
        let d = Dialect::Pocket.decode(&r, &mut |_, _| {}).expect("reply");
        assert_eq!(d.kind, Kind::PullReply);
        assert_eq!(d.has_more, Some(true));
        assert!(d.checkpoint.is_some_and(|c| c.get().contains("sequences")));
        let ack = text(r#"{"type":"push-response","id":"12","success":true}"#.into());
        let d = Dialect::Pocket.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((d.kind, d.request()), (Kind::Ack, Some(12)));
        let pong = text("pong".into());
        assert_eq!(collect(Dialect::Pocket, &pong).0, Kind::Pong);
    }

    #[test]
    fn synckit_frames_round_trip_through_the_header() {
        let w = Dialect::Synckit.write("doc", "w1", "", 7, 99, &Shape::default());
        let Message::Binary(b) = &w else {
            panic!("binary")
        };
        assert_eq!(b[0], code::DELTA);
        // What the hub would send back for it.
        let delta = synckit(
            code::DELTA,
            1,
            r#"{"documentId":"doc","field":"w1-7","value":99,"clock":{"w1":8},"clientId":"server","id":"x","timestamp":1}"#,
        );
        let (kind, seen) = collect(Dialect::Synckit, &delta);
        assert_eq!(kind, Kind::Changes);
        assert_eq!(seen, vec![("w1-7".into(), Some(99))]);
        let ack = synckit(code::ACK, 1, r#"{"messageId":"7","id":"a","timestamp":1}"#);
        let d = Dialect::Synckit.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((d.kind, d.request()), (Kind::Ack, Some(7)));
        let state = synckit(
            code::SYNC_RESPONSE,
            1,
            r#"{"requestId":"r","documentId":"doc","state":{"c0":0,"c1":1},"clock":{},"deltas":[]}"#,
        );
        let d = Dialect::Synckit
            .decode(&state, &mut |_, _| {})
            .expect("state");
        assert_eq!((d.kind, d.changes), (Kind::PullReply, 2));
        let short = Message::Binary(vec![code::ACK, 0, 0].into());
        assert!(Dialect::Synckit.decode(&short, &mut |_, _| {}).is_err());
    }

    #[test]
    fn batches_are_valid_json_in_every_dialect() {
        for d in [Dialect::Relay, Dialect::Pocket] {
            let Message::Text(t) = d.write_batch("room", "l", "site", 3, 10, 5) else {
                panic!("text")
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
            assert!(v.is_object());
        }
        let Message::Binary(b) = Dialect::Synckit.write_batch("room", "l", "", 0, 0, 3) else {
            panic!("binary")
        };
        let v: serde_json::Value = serde_json::from_slice(&b[SYNCKIT_HEADER..]).expect("json");
        assert_eq!(v["delta"].as_object().map(|o| o.len()), Some(3));
        assert_eq!(parse_key("w-3-12"), Some(("w-3", 12)));
    }
}
