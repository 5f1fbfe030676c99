//! Pocket's messages: parsing and validating what clients send, encoding what the hub answers.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

pub use crate::clock::now_ms;
use crate::limits::{Limit, json_depth};
use crate::model::{IncomingChange, object};
use crate::raw_json::{RawJson, push_json_string};
use crate::room_key::is_valid_id;

/// The request limits the Pocket codec enforces.
#[derive(Debug, Clone, Copy)]
pub struct PocketLimits {
    /// A pull's `limit` is clamped to this.
    pub max_pull_limit: usize,
    pub max_document_bytes: usize,
    pub max_json_depth: usize,
}

impl Default for PocketLimits {
    fn default() -> PocketLimits {
        PocketLimits {
            max_pull_limit: 1000,
            max_document_bytes: 262_144,
            max_json_depth: 64,
        }
    }
}

/// The pull page size when a client sends none.
pub const DEFAULT_PULL_LIMIT: usize = 100;
const MAX_DOCUMENT_ID_LEN: usize = 256;

pub mod code {
    pub const PARSE_ERROR: &str = "PARSE_ERROR";
    pub const UNKNOWN_MESSAGE: &str = "UNKNOWN_MESSAGE";
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const TOO_LARGE: &str = "TOO_LARGE";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const INTERNAL: &str = "INTERNAL";
}

/// An error reply. `id` is the failed request's id whenever it could be read, so the client's
/// pending request resolves instead of timing out.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
    /// The limit the message was refused by, to be counted.
    pub limit: Option<Limit>,
}

impl WireError {
    pub fn new(id: Option<String>, code: &'static str, message: impl Into<String>) -> WireError {
        WireError {
            id,
            code,
            message: message.into(),
            limit: None,
        }
    }

    /// The same error, counted as a hit of `limit`.
    pub fn hitting(self, limit: Limit) -> WireError {
        WireError {
            limit: Some(limit),
            ..self
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self.code,
            code::PARSE_ERROR | code::RATE_LIMITED | code::INTERNAL
        )
    }

    pub fn to_json(&self, now_ms: i64) -> Value {
        json!({
            "type": "error",
            "id": self.id.clone().unwrap_or_else(|| format!("error_{now_ms}")),
            "timestamp": now_ms,
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable(),
        })
    }
}

/// A checkpoint as clients send it, in either of its forms: the documented `{global}` or the
/// code's `{id, sequences, timestamp, nodeId}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    pub sequences: HashMap<String, u64>,
    pub global: Option<u64>,
}

impl Cursor {
    /// Where to start reading a collection: `sequences[c]`, else `global`, else 0.
    pub fn position(&self, collection: &str) -> u64 {
        self.sequences
            .get(collection)
            .copied()
            .or(self.global)
            .unwrap_or(0)
    }

    fn parse(v: Option<&Value>) -> Cursor {
        let seq = |v: &Value| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64));
        let Some(obj) = v.and_then(Value::as_object) else {
            return Cursor::default();
        };
        Cursor {
            sequences: obj
                .get("sequences")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(c, n)| seq(n).map(|n| (c.clone(), n)))
                        .collect()
                })
                .unwrap_or_default(),
            global: obj.get("global").and_then(seq),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub id: String,
    pub collection: String,
    /// The changes to merge, in order; an oversized document's change is among them as a
    /// [`REFUSED`] change, so the room answers it with the stored version.
    pub changes: Vec<IncomingChange>,
    /// How many documents were over `max_document_bytes`.
    pub oversized: usize,
    pub cursor: Cursor,
}

/// The operation the codec gives a change whose document is over `max_document_bytes`: the
/// model never applies it and reports the stored version as a conflict, which Pocket's engine
/// resolves and stops resending (a refusal of the whole push would block the collection: the
/// engine resends every pending change of it in one push and settles nothing on an error).
/// Clients cannot send it: parsing accepts only insert, update and delete.
pub const REFUSED: &str = "refused";

#[derive(Debug, Clone, PartialEq)]
pub struct Pull {
    pub id: String,
    pub collections: Vec<String>,
    pub cursor: Cursor,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Push(Push),
    Pull(Pull),
    /// A fresh token sent in-band, `{type:"auth", id, token}`.
    Auth {
        id: String,
        token: String,
    },
}

fn invalid(id: &Option<String>, message: impl Into<String>) -> WireError {
    WireError::new(id.clone(), code::INVALID_MESSAGE, message)
}

/// Parses and validates one client message. A push is checked whole before anything of it is
/// applied: one bad change refuses all of them.
pub fn parse(raw: &[u8], limits: &PocketLimits, now_ms: i64) -> Result<ClientMessage, WireError> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        WireError::new(
            None,
            code::PARSE_ERROR,
            format!("Invalid message format: {e}"),
        )
    })?;
    let Value::Object(msg) = value else {
        return Err(invalid(&None, "Message must be a JSON object"));
    };
    let id = msg.get("id").and_then(Value::as_str).map(str::to_owned);
    let kind = match msg.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(WireError::new(
                id,
                code::UNKNOWN_MESSAGE,
                format!("Unknown message type: {other}"),
            ));
        }
        None => {
            return Err(WireError::new(
                id,
                code::UNKNOWN_MESSAGE,
                "Unknown message type: undefined",
            ));
        }
    };
    if !matches!(kind, "push" | "pull" | "auth") {
        return Err(WireError::new(
            id,
            code::UNKNOWN_MESSAGE,
            format!("Unknown message type: {kind}"),
        ));
    }
    let Some(request_id) = id.clone() else {
        return Err(invalid(&id, "Field 'id' must be a string"));
    };
    match kind {
        "push" => parse_push(&msg, request_id, limits, now_ms).map(ClientMessage::Push),
        "pull" => parse_pull(&msg, request_id, limits).map(ClientMessage::Pull),
        _ => match msg.get("token").and_then(Value::as_str) {
            Some(token) => Ok(ClientMessage::Auth {
                id: request_id,
                token: token.to_owned(),
            }),
            None => Err(invalid(&id, "Field 'token' must be a string")),
        },
    }
}

fn collection_name(v: Option<&Value>, id: &Option<String>) -> Result<String, WireError> {
    match v.and_then(Value::as_str) {
        Some(c) if is_valid_id(c) => Ok(c.to_owned()),
        Some(c) => Err(invalid(
            id,
            format!("Invalid collection name {c:?}: 1-256 characters of [A-Za-z0-9_.:-]"),
        )),
        None => Err(invalid(id, "Field 'collection' must be a string")),
    }
}

fn parse_push(
    msg: &Map<String, Value>,
    request_id: String,
    limits: &PocketLimits,
    now_ms: i64,
) -> Result<Push, WireError> {
    let id = Some(request_id.clone());
    let collection = collection_name(msg.get("collection"), &id)?;
    let Some(raw_changes) = msg.get("changes").and_then(Value::as_array) else {
        return Err(invalid(&id, "Field 'changes' must be an array"));
    };
    let mut changes = Vec::with_capacity(raw_changes.len());
    let mut oversized = 0;
    for (i, raw) in raw_changes.iter().enumerate() {
        let change = parse_change(raw, i, &collection, &id, limits, now_ms)?;
        if change.body.get("operation").and_then(Value::as_str) == Some(REFUSED) {
            oversized += 1;
        }
        changes.push(change);
    }
    Ok(Push {
        id: request_id,
        collection,
        changes,
        oversized,
        cursor: Cursor::parse(msg.get("checkpoint")),
    })
}

fn parse_change(
    raw: &Value,
    index: usize,
    collection: &str,
    id: &Option<String>,
    limits: &PocketLimits,
    now_ms: i64,
) -> Result<IncomingChange, WireError> {
    let at = |what: &str| invalid(id, format!("changes[{index}]: {what}"));
    let Some(change) = raw.as_object() else {
        return Err(at("must be an object"));
    };
    let operation = match change.get("operation").and_then(Value::as_str) {
        Some(op @ ("insert" | "update" | "delete")) => op,
        _ => return Err(at("'operation' must be insert, update or delete")),
    };
    let document_id = match change.get("documentId").and_then(Value::as_str) {
        Some(d)
            if !d.is_empty()
                && d.chars().count() <= MAX_DOCUMENT_ID_LEN
                && !d.chars().any(char::is_control) =>
        {
            d
        }
        _ => {
            return Err(at(
                "'documentId' must be a string of 1-256 characters without control characters",
            ));
        }
    };
    let timestamp = match change.get("timestamp") {
        None | Some(Value::Null) => Value::from(now_ms),
        Some(t @ Value::Number(_)) => t.clone(),
        Some(_) => return Err(at("'timestamp' must be a number")),
    };
    let document = match change.get("document") {
        None | Some(Value::Null) if operation == "delete" => Value::Null,
        Some(Value::Object(doc)) => {
            // `max_json_depth` bounds the client's data, as in every dialect: how deeply each
            // of the document's fields nests, not the message around it.
            let depth = doc.values().map(json_depth).max().unwrap_or(0);
            if depth > limits.max_json_depth {
                return Err(at(&format!(
                    "a field of 'document' is nested {depth} levels deep, max {}",
                    limits.max_json_depth
                ))
                .hitting(Limit::JsonDepth));
            }
            let doc = validate_document(doc, document_id, &at)?;
            if doc.to_string().len() > limits.max_document_bytes {
                return Ok(IncomingChange {
                    stream: collection.to_owned(),
                    key: document_id.to_owned(),
                    body: object([
                        ("operation", Value::from(REFUSED)),
                        ("documentId", Value::from(document_id)),
                    ]),
                });
            }
            doc
        }
        _ => return Err(at("'document' must be an object")),
    };
    Ok(IncomingChange {
        stream: collection.to_owned(),
        key: document_id.to_owned(),
        body: object([
            ("operation", Value::from(operation)),
            ("documentId", Value::from(document_id)),
            ("document", document),
            ("timestamp", timestamp),
        ]),
    })
}

fn validate_document(
    doc: &Map<String, Value>,
    document_id: &str,
    at: &dyn Fn(&str) -> WireError,
) -> Result<Value, WireError> {
    match doc.get("_id") {
        None => {}
        Some(Value::String(s)) if s == document_id => {}
        Some(_) => return Err(at("'document._id' must equal 'documentId'")),
    }
    if doc.get("_rev").is_some_and(|r| !r.is_string()) {
        return Err(at("'document._rev' must be a string"));
    }
    if doc.get("_updatedAt").is_some_and(|t| !t.is_number()) {
        return Err(at("'document._updatedAt' must be a number"));
    }
    if doc.get("_deleted").is_some_and(|d| !d.is_boolean()) {
        return Err(at("'document._deleted' must be a boolean"));
    }
    if let Some(clock) = doc.get("_vclock") {
        let valid = clock
            .as_object()
            .is_some_and(|c| c.values().all(|n| n.as_u64().is_some()));
        if !valid {
            return Err(at(
                "'document._vclock' must map node ids to non-negative integers",
            ));
        }
    }
    let mut doc = doc.clone();
    doc.insert("_id".into(), Value::from(document_id));
    Ok(Value::Object(doc))
}

fn parse_pull(
    msg: &Map<String, Value>,
    request_id: String,
    limits: &PocketLimits,
) -> Result<Pull, WireError> {
    let id = Some(request_id.clone());
    let Some(raw) = msg.get("collections").and_then(Value::as_array) else {
        return Err(invalid(&id, "Field 'collections' must be an array"));
    };
    let mut collections: Vec<String> = Vec::with_capacity(raw.len());
    for c in raw {
        let name = collection_name(Some(c), &id)?;
        if !collections.contains(&name) {
            collections.push(name);
        }
    }
    let limit = match msg.get("limit") {
        None | Some(Value::Null) => DEFAULT_PULL_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n as usize,
            _ => return Err(invalid(&id, "Field 'limit' must be a positive integer")),
        },
    };
    // A missing checkpoint is a pull from the start; one of the wrong shape is a client bug
    // that must not silently turn into a full re-download.
    if !matches!(
        msg.get("checkpoint"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        return Err(invalid(&id, "Field 'checkpoint' must be an object"));
    }
    Ok(Pull {
        id: request_id,
        collections,
        cursor: Cursor::parse(msg.get("checkpoint")),
        limit: limit.min(limits.max_pull_limit),
    })
}

/// A checkpoint as the hub sends it: `global` is the smallest of `sequences`, or `fallback`
/// when there are none.
pub fn checkpoint(sequences: &BTreeMap<String, u64>, fallback: u64, now_ms: i64) -> Value {
    let global = sequences.values().copied().min().unwrap_or(fallback);
    json!({"sequences": sequences, "global": global, "timestamp": now_ms})
}

pub fn push_response(id: &str, conflicts: Vec<Value>, checkpoint: Value, now_ms: i64) -> Value {
    let mut out = json!({
        "type": "push-response",
        "id": id,
        "timestamp": now_ms,
        "success": conflicts.is_empty(),
        "checkpoint": checkpoint,
    });
    if !conflicts.is_empty() {
        out["conflicts"] = Value::Array(conflicts);
    }
    out
}

/// A `pull-response` (the answer to a pull, or a broadcast), with each collection's logged
/// changes spliced in as they were stored.
pub fn pull_response<'a>(
    id: &str,
    changes: impl IntoIterator<Item = (&'a str, Vec<&'a RawJson>)>,
    checkpoint: &Value,
    has_more: bool,
    now_ms: i64,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(r#"{"type":"pull-response","id":"#);
    push_json_string(&mut out, id);
    out.push_str(r#","timestamp":"#);
    out.push_str(&now_ms.to_string());
    out.push_str(r#","changes":{"#);
    for (i, (collection, bodies)) in changes.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, collection);
        out.push_str(":[");
        for (j, body) in bodies.into_iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(body.as_str());
        }
        out.push(']');
    }
    out.push_str(r#"},"checkpoint":"#);
    out.push_str(&checkpoint.to_string());
    out.push_str(if has_more {
        r#","hasMore":true}"#
    } else {
        r#","hasMore":false}"#
    });
    out
}

pub fn ack(id: &str, now_ms: i64) -> Value {
    json!({"type": "ack", "id": id, "timestamp": now_ms, "originalId": id})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ClientMessage, WireError> {
        parse(s.as_bytes(), &PocketLimits::default(), 1_000)
    }

    fn err(s: &str) -> WireError {
        parse_str(s).expect_err("should fail")
    }

    #[test]
    fn push_is_normalised() {
        let msg = parse_str(
            r#"{"type":"push","id":"p1","timestamp":1,"collection":"todos",
                "changes":[{"operation":"insert","documentId":"a","document":{"title":"x"},
                "timestamp":5,"sequence":0},
                {"operation":"delete","documentId":"b","document":null}],
                "checkpoint":{"global":3}}"#,
        )
        .expect("valid");
        let ClientMessage::Push(p) = msg else {
            panic!("push expected");
        };
        assert_eq!(p.collection, "todos");
        assert_eq!(p.cursor.position("todos"), 3);
        assert_eq!(p.changes[0].key, "a");
        assert_eq!(
            p.changes[0].body,
            json!({"operation":"insert","documentId":"a","document":{"_id":"a","title":"x"},"timestamp":5})
        );
        // A missing timestamp is the hub's clock.
        assert_eq!(p.changes[1].body["timestamp"], json!(1_000));
        assert_eq!(p.changes[1].body["document"], Value::Null);
    }

    #[test]
    fn checkpoints_in_both_forms() {
        let c = Cursor::parse(Some(&json!({"sequences": {"a": 4}, "global": 2})));
        assert_eq!((c.position("a"), c.position("b")), (4, 2));
        let c = Cursor::parse(Some(
            &json!({"id": "n_1", "sequences": {"a": 7}, "timestamp": 1, "nodeId": "n"}),
        ));
        assert_eq!((c.position("a"), c.position("b")), (7, 0));
        assert_eq!(Cursor::parse(Some(&Value::Null)).position("a"), 0);
        assert_eq!(Cursor::parse(None).position("a"), 0);
    }

    #[test]
    fn errors_carry_the_request_id_when_readable() {
        let e = err("not json");
        assert_eq!((e.code, e.id.as_deref()), (code::PARSE_ERROR, None));
        assert!(e.message.starts_with("Invalid message format: "));
        assert!(e.retryable());
        let e = err(r#"{"type":"nope","id":"x1"}"#);
        assert_eq!(
            (e.code, e.id.as_deref()),
            (code::UNKNOWN_MESSAGE, Some("x1"))
        );
        assert_eq!(e.message, "Unknown message type: nope");
        assert!(!e.retryable());
        assert_eq!(err(r#"[1,2]"#).code, code::INVALID_MESSAGE);
        let e = err(r#"{"type":"pull","id":"q","collections":"todos"}"#);
        assert_eq!(
            (e.code, e.id.as_deref()),
            (code::INVALID_MESSAGE, Some("q"))
        );
        assert_eq!(
            err(r#"{"type":"pull","id":7,"collections":[]}"#).code,
            code::INVALID_MESSAGE
        );
    }

    #[test]
    fn one_bad_change_refuses_the_push() {
        let cases = [
            r#"{"operation":"upsert","documentId":"a","document":{}}"#,
            r#"{"operation":"insert","documentId":"","document":{}}"#,
            r#"{"operation":"insert","documentId":5,"document":{}}"#,
            r#"{"operation":"insert","documentId":"a","document":null}"#,
            r#"{"operation":"insert","documentId":"a","document":[1]}"#,
            r#"{"operation":"insert","documentId":"a","document":{"_id":"b"}}"#,
            r#"{"operation":"insert","documentId":"a","document":{"_rev":1}}"#,
            r#"{"operation":"insert","documentId":"a","document":{"_vclock":{"n":-1}}}"#,
            r#"{"operation":"insert","documentId":"a","document":{"_updatedAt":"x"}}"#,
            r#"{"operation":"insert","documentId":"a","document":{},"timestamp":"x"}"#,
        ];
        for bad in cases {
            let msg = format!(
                r#"{{"type":"push","id":"p","collection":"c","changes":[
                    {{"operation":"insert","documentId":"ok","document":{{}}}},{bad}]}}"#
            );
            let e = err(&msg);
            assert_eq!(
                (e.code, e.id.as_deref()),
                (code::INVALID_MESSAGE, Some("p")),
                "{bad}"
            );
        }
        let e = err(r#"{"type":"push","id":"p","collection":"a/b","changes":[]}"#);
        assert_eq!(e.code, code::INVALID_MESSAGE);
    }

    #[test]
    fn limits_are_enforced() {
        let limits = PocketLimits {
            max_pull_limit: 10,
            max_document_bytes: 50,
            max_json_depth: 4,
        };
        // An oversized document is refused on its own; the rest of the push goes on.
        let big = format!(
            r#"{{"type":"push","id":"p","collection":"c","changes":[{{"operation":"insert","documentId":"a","document":{{"t":"{}"}}}},{{"operation":"insert","documentId":"b","document":{{}}}}]}}"#,
            "x".repeat(60)
        );
        let Ok(ClientMessage::Push(p)) = parse(big.as_bytes(), &limits, 0) else {
            panic!("a push with one oversized document is still a push");
        };
        assert_eq!(p.oversized, 1);
        assert_eq!(
            p.changes[0].body,
            json!({"operation": REFUSED, "documentId": "a"})
        );
        assert_eq!(p.changes[1].body["operation"], "insert");
        // The depth limit is the document's fields': a field of depth 4 passes, 5 does not,
        // however deep the message around it is.
        let doc = |field: &str| {
            format!(
                r#"{{"type":"push","id":"d","collection":"c","changes":[{{"operation":"insert","documentId":"a","document":{{"f":{field}}}}}]}}"#
            )
        };
        assert!(parse(doc("[[[[1]]]]").as_bytes(), &limits, 0).is_ok());
        let e = parse(doc("[[[[[1]]]]]").as_bytes(), &limits, 0).expect_err("too deep");
        assert_eq!(
            (e.code, e.id.as_deref(), e.limit),
            (code::INVALID_MESSAGE, Some("d"), Some(Limit::JsonDepth))
        );
        let pull = r#"{"type":"pull","id":"q","collections":["a","a","b"],"limit":500}"#;
        let Ok(ClientMessage::Pull(p)) = parse(pull.as_bytes(), &limits, 0) else {
            panic!("valid pull");
        };
        assert_eq!((p.limit, p.collections.len()), (10, 2));
        let zero = r#"{"type":"pull","id":"q","collections":[],"limit":0}"#;
        assert_eq!(
            parse(zero.as_bytes(), &limits, 0).expect_err("zero").code,
            code::INVALID_MESSAGE
        );
    }

    #[test]
    fn pull_responses_splice_the_stored_changes() {
        let a = RawJson::from_value(&json!({"documentId": "x", "sequence": 4}));
        let b = RawJson::from_value(&json!({"documentId": "y\"", "sequence": 5}));
        let cp = json!({"sequences": {"t": 5}, "global": 5, "timestamp": 9});
        let text = pull_response("q\n1", [("t", vec![&a, &b]), ("u", vec![])], &cp, true, 9);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({"type": "pull-response", "id": "q\n1", "timestamp": 9,
                   "changes": {"t": [{"documentId": "x", "sequence": 4},
                                     {"documentId": "y\"", "sequence": 5}], "u": []},
                   "checkpoint": cp, "hasMore": true})
        );
    }

    #[test]
    fn a_checkpoint_that_is_not_an_object_is_invalid() {
        let limits = PocketLimits {
            max_pull_limit: 1000,
            max_document_bytes: 1 << 20,
            max_json_depth: 32,
        };
        for cp in ["5", "\"abc\"", "[1]", "true"] {
            let raw =
                format!(r#"{{"type":"pull","id":"p","collections":["c"],"checkpoint":{cp}}}"#);
            let e = parse(raw.as_bytes(), &limits, 1).expect_err(cp);
            assert_eq!(
                (e.code, e.id.as_deref()),
                (code::INVALID_MESSAGE, Some("p")),
                "{cp}"
            );
        }
        for cp in ["null", "{}", r#"{"global":3}"#] {
            let raw =
                format!(r#"{{"type":"pull","id":"p","collections":["c"],"checkpoint":{cp}}}"#);
            assert!(parse(raw.as_bytes(), &limits, 1).is_ok(), "{cp}");
        }
    }

    #[test]
    fn checkpoint_global_is_the_smallest() {
        let mut s = BTreeMap::new();
        assert_eq!(checkpoint(&s, 9, 1)["global"], json!(9));
        s.insert("a".to_string(), 5);
        s.insert("b".to_string(), 3);
        let c = checkpoint(&s, 9, 1);
        assert_eq!(c["global"], json!(3));
        assert_eq!(c["sequences"], json!({"a": 5, "b": 3}));
    }
}

/// The `id` of a request that cannot be served whole (over the frame limit, over the rate), read
/// from as much of it as is there: the top-level object's keys are read in order and reading
/// stops at `id`, so a huge or cut-off message costs no more than the bytes before its id.
pub fn request_id(raw: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    struct Seed<'a>(&'a mut Option<String>);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    if let Value::String(id) = map.next_value::<Value>()? {
                        *self.0 = Some(id);
                    }
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut id = None;
    let mut de = serde_json::Deserializer::from_slice(raw);
    // Stopping early leaves the object unfinished, which the parser reports as an error; the
    // id, when it was there, is read by then.
    let _ = Seed(&mut id).deserialize(&mut de);
    id.filter(|id| !id.is_empty() && id.len() <= 256)
}

#[cfg(test)]
mod request_id_tests {
    use super::request_id;

    #[test]
    fn reads_the_id_of_whole_cut_and_broken_requests() {
        assert_eq!(
            request_id(br#"{"type":"push","id":"p-1","changes":[1,2]}"#).as_deref(),
            Some("p-1")
        );
        // Cut off after the id, as a refused oversized message may be.
        assert_eq!(
            request_id(br#"{"type":"push","id":"p-2","changes":[{"a":"#).as_deref(),
            Some("p-2")
        );
        assert_eq!(
            request_id(br#"{"changes":[{"x":[1,{"y":2}]}],"id":"p-3"}"#).as_deref(),
            Some("p-3")
        );
        assert_eq!(request_id(br#"{"type":"push","id":7}"#), None);
        assert_eq!(request_id(b"not json"), None);
        assert_eq!(request_id(br#"{"changes":[1,2"#), None);
    }
}
