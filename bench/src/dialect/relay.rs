//! Relay as the bench speaks it: `update` in, `ack` and `update` out, over text frames.

use std::fmt::Write as _;

use tokio_tungstenite::tungstenite::Message;

use super::read::{Changes, DecodeError, Decoded, Kind, read_json};
use super::{Client, Page, Shape, text};

/// The relay table every bench write goes to.
const TABLE: &str = "bench";

pub(super) struct Relay;

impl Client for Relay {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn about(&self) -> &'static str {
        "cr-sqlite style peers: `connected` / `update` / `ack` / `pull` per channel"
    }

    fn server_speaks_first(&self) -> bool {
        true
    }

    fn shapes_writes(&self) -> bool {
        true
    }

    fn acks_in_order(&self) -> bool {
        true
    }

    /// `shape` may cycle the writes over a fixed set of cells (each write wins its cell by its
    /// larger value) and pad each change's site id, to write volume without growing the state.
    fn write(
        &self,
        room: &str,
        client: &str,
        site: &str,
        n: u64,
        val_us: u64,
        shape: &Shape,
    ) -> Message {
        text(format!(
            r#"{{"type":"update","changes":[["{TABLE}","{client}-{k}","v",{val_us},1,{v},"{site}{pad}",1,0]],"version":{v},"siteId":"{site}","channel":"{room}"}}"#,
            v = n + 1,
            k = shape.key(n),
            pad = shape.pad,
        ))
    }

    fn write_batch(
        &self,
        room: &str,
        _client: &str,
        site: &str,
        _batch: u64,
        first: u64,
        count: u64,
    ) -> Message {
        let mut body = String::with_capacity(count as usize * 64 + 256);
        body.push_str(r#"{"type":"update","changes":["#);
        for (i, k) in (first..first + count).enumerate() {
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

    /// A relay socket receives its channel from the start.
    fn subscribe(&self, _room: &str) -> Option<Message> {
        None
    }

    fn ping(&self) -> Option<Message> {
        None
    }

    /// `pull` from version 0, answered in pages.
    fn catch_up(&self, _room: &str, _page: u64, _checkpoint: Option<&str>) -> Message {
        text(r#"{"type":"pull","version":0}"#.to_owned())
    }

    /// The pull is over once a page reaches the version the room had.
    fn catch_up_page<'m>(&self, reply: &Decoded<'m>, target: u64) -> Page<'m> {
        match reply.kind {
            Kind::Changes if reply.version.unwrap_or(0) >= target => Page::Last,
            Kind::Changes => Page::More,
            _ => Page::Other,
        }
    }

    fn decode<'m>(
        &self,
        bytes: &'m [u8],
        _is_text: bool,
        on_change: &mut dyn FnMut(&str, Option<u64>),
    ) -> Result<Decoded<'m>, DecodeError> {
        let f = read_json(bytes, Changes::Tuples, on_change)?;
        let kind = match f.kind.as_deref() {
            Some("error") => Kind::Error,
            Some("connected") => Kind::Connected,
            Some("ack") => Kind::Ack,
            Some("update") => Kind::Changes,
            _ => Kind::Other,
        };
        Ok(Decoded { kind, ..f.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Dialect;
    use super::*;

    #[test]
    fn updates_yield_every_change_whatever_the_key_order() {
        let d = Dialect::named("relay").expect("relay");
        let m = text(
            r#"{"changes":[["bench","w0-1","v",17,1,5,"s",1,0],["bench","w0-2","v","x",1,6,"s",1,0]],"channel":"c","siteId":"h","type":"update","version":6}"#.into(),
        );
        let mut seen = Vec::new();
        let r = d
            .decode(&m, &mut |k, v| seen.push((k.to_owned(), v)))
            .expect("decodes");
        assert_eq!(r.kind, Kind::Changes);
        assert_eq!(seen, vec![("w0-1".into(), Some(17)), ("w0-2".into(), None)]);
        let ack = text(r#"{"type":"ack","siteId":"h","version":9,"channel":"c"}"#.into());
        let a = d.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((a.kind, a.version), (Kind::Ack, Some(9)));
        assert_eq!(d.catch_up_page(&a, 9), Page::Other);
        assert_eq!(d.catch_up_page(&r, 6), Page::Last);
        assert_eq!(d.catch_up_page(&r, 7), Page::More);
    }

    #[test]
    fn batches_are_valid_json() {
        let Message::Text(t) = Relay.write_batch("room", "l", "site", 3, 10, 5) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
        assert_eq!(v["changes"].as_array().map(Vec::len), Some(5));
        assert_eq!(v["version"], 15);
    }
}
