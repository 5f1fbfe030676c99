//! JSON text the hub wrote itself, carried as text from merge to storage to the wire.
//!
//! A logged change is serialised once, when the room accepts it; broadcasts and pulls splice that
//! text into the messages they build instead of parsing and re-serialising it per recipient.

use std::fmt;

use serde_json::Value;

/// The text of one JSON value, produced by `serde_json` in this process or read back from the
/// hub's own storage (which checksums what it stores).
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    pub fn from_value(value: &Value) -> RawJson {
        RawJson(value.to_string().into_boxed_str())
    }

    /// Wraps text that is known to hold one JSON value (the hub's own stored records).
    pub(crate) fn trusted(text: String) -> RawJson {
        RawJson(text.into_boxed_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text back into a tree, for the places that must look inside.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends `s` to `out` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_escape_like_serde_json() {
        for s in [
            "plain",
            "quote\" back\\slash",
            "line\nfeed\ttab\r",
            "\u{1}\u{1f}",
            "é✓",
            "",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).expect("valid JSON"), s);
            assert_eq!(out, serde_json::to_string(s).expect("encodes"));
        }
    }

    #[test]
    fn raw_text_round_trips() {
        let v = json!({"b": [1, "x"], "a": null});
        let raw = RawJson::from_value(&v);
        assert_eq!(raw.to_value().expect("parses"), v);
        assert_eq!(raw.as_str(), v.to_string());
    }
}
