//! SyncKit as the bench speaks it: binary frames (type code, timestamp, length, JSON), `delta`
//! in, `ack` and `delta` out.

use std::fmt::Write as _;

use tokio_tungstenite::tungstenite::Message;

use super::read::{Changes, DecodeError, Decoded, Kind, read_json};
use super::{Client, Page, Shape};
use crate::stats::unix_ms;

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
const HEADER: usize = 13;

pub(super) struct Synckit;

impl Client for Synckit {
    fn name(&self) -> &'static str {
        "synckit"
    }

    fn about(&self) -> &'static str {
        "The SyncKit SDK: binary frames, field-level LWW documents"
    }

    fn write(
        &self,
        room: &str,
        client: &str,
        _site: &str,
        n: u64,
        val_us: u64,
        _shape: &Shape,
    ) -> Message {
        let ms = unix_ms();
        frame(
            code::DELTA,
            ms,
            &format!(
                r#"{{"documentId":"{room}","field":"{client}-{n}","value":{val_us},"clock":{{"{client}":{c}}},"clientId":"{client}","timestamp":{ms},"messageId":"{n}"}}"#,
                c = n + 1
            ),
        )
    }

    fn write_batch(
        &self,
        room: &str,
        client: &str,
        _site: &str,
        batch: u64,
        first: u64,
        count: u64,
    ) -> Message {
        let mut body = String::with_capacity(count as usize * 64 + 256);
        let _ = write!(body, r#"{{"documentId":"{room}","delta":{{"#);
        for (i, k) in (first..first + count).enumerate() {
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
        frame(code::DELTA, unix_ms(), &body)
    }

    fn subscribe(&self, room: &str) -> Option<Message> {
        Some(frame(
            code::SUBSCRIBE,
            unix_ms(),
            &format!(r#"{{"documentId":"{room}"}}"#),
        ))
    }

    fn ping(&self) -> Option<Message> {
        Some(frame(code::PING, unix_ms(), "{}"))
    }

    /// `sync_request`, answered with the whole state.
    fn catch_up(&self, room: &str, _page: u64, _checkpoint: Option<&str>) -> Message {
        frame(
            code::SYNC_REQUEST,
            unix_ms(),
            &format!(r#"{{"documentId":"{room}"}}"#),
        )
    }

    fn catch_up_page<'m>(&self, reply: &Decoded<'m>, _target: u64) -> Page<'m> {
        match reply.kind {
            Kind::PullReply => Page::Last,
            _ => Page::Other,
        }
    }

    fn decode<'m>(
        &self,
        bytes: &'m [u8],
        is_text: bool,
        on_change: &mut dyn FnMut(&str, Option<u64>),
    ) -> Result<Decoded<'m>, DecodeError> {
        if is_text || bytes.len() < HEADER {
            return Err(DecodeError("not a SyncKit binary frame".into()));
        }
        let len = u32::from_be_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
        let payload = bytes
            .get(HEADER..HEADER.saturating_add(len))
            .ok_or_else(|| DecodeError("SyncKit frame shorter than its length".into()))?;
        let kind = match bytes[0] {
            code::ACK => Kind::Ack,
            code::DELTA => Kind::Changes,
            code::SYNC_RESPONSE => Kind::PullReply,
            code::PONG => return Ok(Decoded::of(Kind::Pong)),
            code::ERROR => Kind::Error,
            _ => Kind::Other,
        };
        let f = read_json(payload, Changes::Tuples, on_change)?;
        Ok(Decoded { kind, ..f.into() })
    }

    fn latency_note(&self) -> &'static str {
        " (includes SyncKit's coalescing window, synckit.batch_ms, 50 ms by default)"
    }
}

/// A SyncKit binary frame: type code, ms timestamp (big-endian i64), payload length
/// (big-endian u32), JSON payload.
fn frame(code: u8, ms: i64, payload: &str) -> Message {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(code);
    v.extend_from_slice(&ms.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload.as_bytes());
    Message::Binary(v.into())
}

#[cfg(test)]
mod tests {
    use super::super::Dialect;
    use super::*;

    #[test]
    fn frames_round_trip_through_the_header() {
        let d = Dialect::named("synckit").expect("synckit");
        let w = d.write("doc", "w1", "", 7, 99, &Shape::default());
        let Message::Binary(b) = &w else {
            panic!("binary")
        };
        assert_eq!(b[0], code::DELTA);
        // What the hub would send back for it.
        let delta = frame(
            code::DELTA,
            1,
            r#"{"documentId":"doc","field":"w1-7","value":99,"clock":{"w1":8},"clientId":"server","id":"x","timestamp":1}"#,
        );
        let mut seen = Vec::new();
        let r = d
            .decode(&delta, &mut |k, v| seen.push((k.to_owned(), v)))
            .expect("decodes");
        assert_eq!(r.kind, Kind::Changes);
        assert_eq!(seen, vec![("w1-7".to_owned(), Some(99))]);
        let ack = frame(code::ACK, 1, r#"{"messageId":"7","id":"a","timestamp":1}"#);
        let a = d.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((a.kind, a.request()), (Kind::Ack, Some(7)));
        let state = frame(
            code::SYNC_RESPONSE,
            1,
            r#"{"requestId":"r","documentId":"doc","state":{"c0":0,"c1":1},"clock":{},"deltas":[]}"#,
        );
        let s = d.decode(&state, &mut |_, _| {}).expect("state");
        assert_eq!((s.kind, s.changes), (Kind::PullReply, 2));
        assert_eq!(d.catch_up_page(&s, 0), Page::Last);
        let short = Message::Binary(vec![code::ACK, 0, 0].into());
        assert!(d.decode(&short, &mut |_, _| {}).is_err());
    }

    #[test]
    fn batches_carry_every_field() {
        let Message::Binary(b) = Synckit.write_batch("room", "l", "", 0, 0, 3) else {
            panic!("binary")
        };
        let v: serde_json::Value = serde_json::from_slice(&b[HEADER..]).expect("json");
        assert_eq!(v["delta"].as_object().map(|o| o.len()), Some(3));
    }
}
