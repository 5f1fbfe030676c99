//! A cheap reader for what servers send: a streaming visitor that keeps borrowed strings and
//! calls back once per change it meets, so a delivery costs no `serde_json::Value` tree and no
//! allocation per change: the bench shares the machine with the server, and its CPU per message
//! matters.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// What an array under `changes` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Changes {
    /// Relay's change tuples, `[table, pk, cid, val, ...]`.
    Tuples,
    /// Pocket's ChangeEvents (also what a `{collection: [...]}` object holds).
    Events,
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
    pub(super) fn of(kind: Kind) -> Self {
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
pub struct DecodeError(pub(super) String);

/// What [`read_json`] found of a message.
#[derive(Default)]
pub(super) struct Fields<'m> {
    pub(super) kind: Option<Cow<'m, str>>,
    pub(super) id: Option<Cow<'m, str>>,
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

/// Reads a JSON message: its fields, and every change in it passed to `on_change`. `changes`
/// tells what an array under `changes` holds.
pub(super) fn read_json<'m>(
    bytes: &'m [u8],
    changes: Changes,
    on_change: &mut dyn FnMut(&str, Option<u64>),
) -> Result<Fields<'m>, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = Top { changes, on_change }
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
    changes: Changes,
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
                        shape: self.changes,
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
    shape: Changes,
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
            let found = match self.shape {
                Changes::Events => seq.next_element_seed(PocketEventSeed {
                    on_change: &mut *self.on_change,
                })?,
                Changes::Tuples => seq.next_element_seed(RelayChangeSeed {
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
                shape: Changes::Events,
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
