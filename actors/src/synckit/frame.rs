//! SyncKit framing. Binary: type code (1 byte), timestamp in ms (big-endian i64), payload length
//! (big-endian u32), then that many bytes of UTF-8 JSON — the message minus `type` and
//! `timestamp`. JSON text: a flat object with `type`, `id` and `timestamp`, where a nested
//! `payload` object is flattened into the top level.

use serde_json::{Map, Value};

const HEADER: usize = 13;

/// The v0.1 message types and their codes.
pub const TYPES: [(&str, u8); 12] = [
    ("auth", 0x01),
    ("auth_success", 0x02),
    ("auth_error", 0x03),
    ("subscribe", 0x10),
    ("unsubscribe", 0x11),
    ("sync_request", 0x12),
    ("sync_response", 0x13),
    ("delta", 0x20),
    ("ack", 0x21),
    ("ping", 0x30),
    ("pong", 0x31),
    ("error", 0xFF),
];

pub fn code_of(kind: &str) -> Option<u8> {
    TYPES.iter().find(|(n, _)| *n == kind).map(|(_, c)| *c)
}

pub fn name_of(code: u8) -> Option<&'static str> {
    TYPES.iter().find(|(_, c)| *c == code).map(|(n, _)| *n)
}

/// How a message travelled; the hub answers in the framing of the client's latest message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Binary,
    Json,
}

/// A decoded message: `type`, `id` and `timestamp` plus its own fields, flat.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: String,
    pub fields: Map<String, Value>,
}

impl Message {
    pub fn id(&self) -> Option<&str> {
        self.fields.get("id").and_then(Value::as_str)
    }

    pub fn timestamp(&self) -> Option<f64> {
        self.fields.get("timestamp").and_then(Value::as_f64)
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

/// Any frame that breaks the framing rules; answered with "Invalid message format".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFrame;

/// Decodes a binary frame. A JSON `timestamp` in the payload overrides the header's, and an `id`
/// is made up when the payload has none (the SDK sends none).
pub fn decode_binary(
    bytes: &[u8],
    make_id: impl FnOnce() -> String,
) -> Result<Message, InvalidFrame> {
    if bytes.len() < HEADER {
        return Err(InvalidFrame);
    }
    let kind = name_of(bytes[0]).ok_or(InvalidFrame)?;
    let ts = i64::from_be_bytes(bytes[1..9].try_into().map_err(|_| InvalidFrame)?);
    let len = u32::from_be_bytes(bytes[9..13].try_into().map_err(|_| InvalidFrame)?) as usize;
    let payload = bytes
        .get(HEADER..HEADER.checked_add(len).ok_or(InvalidFrame)?)
        .ok_or(InvalidFrame)?;
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(payload) else {
        return Err(InvalidFrame);
    };
    let mut fields = Map::new();
    fields.insert("timestamp".into(), Value::from(ts));
    for (k, v) in payload {
        // The header's code names the message; a payload `type` (the SDK's "set") does not.
        if k != "type" {
            fields.insert(k, v);
        }
    }
    if !fields.get("id").is_some_and(Value::is_string) {
        fields.insert("id".into(), Value::from(make_id()));
    }
    Ok(Message {
        kind: kind.to_owned(),
        fields,
    })
}

/// Decodes a JSON text message; `type`, `id` and `timestamp` are required.
pub fn decode_json(raw: &[u8]) -> Result<Message, InvalidFrame> {
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(raw) else {
        return Err(InvalidFrame);
    };
    if let Some(Value::Object(payload)) = top.remove("payload") {
        for (k, v) in payload {
            if k != "type" {
                top.insert(k, v);
            }
        }
    }
    let kind = match top.remove("type") {
        Some(Value::String(k)) => k,
        _ => return Err(InvalidFrame),
    };
    let id_ok = matches!(top.get("id"), Some(Value::String(_)));
    let ts_ok = top.get("timestamp").is_some_and(Value::is_number);
    if !id_ok || !ts_ok {
        return Err(InvalidFrame);
    }
    Ok(Message { kind, fields: top })
}

/// Encodes a message the hub sends; `fields` holds `id` and `timestamp` among the rest.
pub fn encode(
    framing: Framing,
    kind: &str,
    fields: &Map<String, Value>,
) -> Result<Vec<u8>, String> {
    let ts = fields.get("timestamp").and_then(Value::as_i64).unwrap_or(0);
    let mut text = String::new();
    for (k, v) in fields.iter().filter(|(k, _)| *k != "timestamp") {
        push_field(&mut text, k, &v.to_string());
    }
    encode_fields(framing, kind, ts, &text)
}

/// Appends `"name":json` to the inside of an object being written.
pub fn push_field(fields: &mut String, name: &str, json: &str) {
    if !fields.is_empty() {
        fields.push(',');
    }
    crate::raw_json::push_json_string(fields, name);
    fields.push(':');
    fields.push_str(json);
}

/// Encodes a message whose fields other than `type` and `timestamp` are already JSON text:
/// `fields` is the inside of an object (`"a":1,"b":[2]`). Used where the parts are spliced
/// from stored text rather than built as a tree.
pub fn encode_fields(
    framing: Framing,
    kind: &str,
    timestamp: i64,
    fields: &str,
) -> Result<Vec<u8>, String> {
    match framing {
        Framing::Json => {
            let mut out = String::with_capacity(32 + kind.len() + fields.len());
            out.push_str(r#"{"type":"#);
            crate::raw_json::push_json_string(&mut out, kind);
            out.push_str(r#","timestamp":"#);
            out.push_str(&timestamp.to_string());
            if !fields.is_empty() {
                out.push(',');
                out.push_str(fields);
            }
            out.push('}');
            Ok(out.into_bytes())
        }
        Framing::Binary => {
            let code = code_of(kind).ok_or_else(|| format!("no code for {kind}"))?;
            let len =
                u32::try_from(fields.len() + 2).map_err(|_| "payload too large".to_string())?;
            let mut out = Vec::with_capacity(HEADER + fields.len() + 2);
            out.push(code);
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.push(b'{');
            out.extend_from_slice(fields.as_bytes());
            out.push(b'}');
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binary(code: u8, ts: i64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![code];
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn binary_round_trip_for_every_type() {
        for (kind, code) in TYPES {
            let fields = obj(
                json!({"id": "m1", "timestamp": 1_700_000_000_123i64, "documentId": "d", "n": [1, {"x": null}]}),
            );
            let bytes = encode(Framing::Binary, kind, &fields).expect("encode");
            assert_eq!(bytes[0], code);
            assert_eq!(
                i64::from_be_bytes(bytes[1..9].try_into().expect("8")),
                1_700_000_000_123
            );
            let back = decode_binary(&bytes, || "gen".into()).expect("decode");
            assert_eq!(back.kind, kind);
            assert_eq!(back.fields, fields);
        }
    }

    #[test]
    fn spliced_fields_encode_like_a_tree() {
        let fields =
            obj(json!({"id": "x", "timestamp": 7, "field": "f", "value": [1, {"a": null}]}));
        let spliced = r#""field":"f","value":[1,{"a":null}],"id":"x""#;
        for framing in [Framing::Binary, Framing::Json] {
            let tree = encode(framing, "delta", &fields).expect("encode");
            let text = encode_fields(framing, "delta", 7, spliced).expect("encode");
            let decode = |b: &[u8]| match framing {
                Framing::Binary => decode_binary(b, String::new).expect("decode"),
                Framing::Json => decode_json(b).expect("decode"),
            };
            assert_eq!(decode(&tree), decode(&text));
        }
    }

    #[test]
    fn binary_payload_rules() {
        // No id: one is made up; a payload timestamp wins over the header; payload type is dropped.
        let m = decode_binary(
            &binary(0x20, 5, br#"{"type":"set","timestamp":9,"field":"f"}"#),
            || "gen".into(),
        )
        .expect("decode");
        assert_eq!(m.kind, "delta");
        assert_eq!(m.id(), Some("gen"));
        assert_eq!(m.timestamp(), Some(9.0));
        assert_eq!(m.str("field"), Some("f"));
        let m = decode_binary(&binary(0x30, 5, b"{}"), || "g".into()).expect("decode");
        assert_eq!(m.timestamp(), Some(5.0));
    }

    #[test]
    fn malformed_binary_frames() {
        let good = binary(0x30, 1, b"{}");
        assert!(decode_binary(&good[..12], String::new).is_err(), "short");
        assert!(
            decode_binary(&binary(0x99, 1, b"{}"), String::new).is_err(),
            "unknown code"
        );
        let mut long = good.clone();
        long[12] = 9;
        assert!(
            decode_binary(&long, String::new).is_err(),
            "length past the end"
        );
        assert!(
            decode_binary(&binary(0x30, 1, b"{nope"), String::new).is_err(),
            "bad json"
        );
        assert!(
            decode_binary(&binary(0x30, 1, b"[1]"), String::new).is_err(),
            "not an object"
        );
        let mut huge = good.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_binary(&huge, String::new).is_err(), "huge length");
        assert!(decode_binary(&[], String::new).is_err());
    }

    #[test]
    fn json_frames_flatten_payload_and_need_type_id_timestamp() {
        let m = decode_json(br#"{"type":"subscribe","id":"1","timestamp":2,"payload":{"documentId":"d","type":"x"}}"#)
            .expect("decode");
        assert_eq!(
            (m.kind.as_str(), m.str("documentId")),
            ("subscribe", Some("d"))
        );
        assert!(decode_json(br#"{"id":"1","timestamp":2}"#).is_err());
        assert!(decode_json(br#"{"type":"ping","timestamp":2}"#).is_err());
        assert!(decode_json(br#"{"type":"ping","id":"1"}"#).is_err());
        assert!(decode_json(b"not json").is_err());
        let out = encode(
            Framing::Json,
            "pong",
            &obj(json!({"id": "p", "timestamp": 3})),
        )
        .expect("encode");
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("json"),
            json!({"type": "pong", "id": "p", "timestamp": 3})
        );
    }
}
