//! Pocket as the bench speaks it: `push` and `pull` in, `push-response`, `pull-response` and
//! broadcasts out, over text frames.

use std::fmt::Write as _;

use tokio_tungstenite::tungstenite::Message;

use super::read::{Changes, DecodeError, Decoded, Kind, read_json};
use super::{Client, Page, Shape, text};
use crate::stats::unix_ms;

/// The Pocket collection every bench write goes to.
const COLLECTION: &str = "items";

pub(super) struct Pocket;

impl Client for Pocket {
    fn name(&self) -> &'static str {
        "pocket"
    }

    fn about(&self) -> &'static str {
        "The Pocket sync engine: JSON push/pull with checkpoints"
    }

    fn query_extra(&self, client: &str) -> Option<String> {
        Some(format!("nodeId={client}"))
    }

    /// Pocket refuses a push whose documents exceed its limits as a whole; a few hundred small
    /// documents stay far below them.
    fn batch_size(&self) -> u64 {
        500
    }

    fn write(
        &self,
        _room: &str,
        client: &str,
        _site: &str,
        n: u64,
        val_us: u64,
        _shape: &Shape,
    ) -> Message {
        let ms = unix_ms();
        text(format!(
            r#"{{"type":"push","id":"{n}","timestamp":{ms},"collection":"{COLLECTION}","changes":[{{"operation":"insert","documentId":"{client}-{n}","document":{{"_id":"{client}-{n}","t":{val_us}}},"timestamp":{ms},"sequence":{s}}}],"checkpoint":{{"global":0}}}}"#,
            s = n + 1
        ))
    }

    fn write_batch(
        &self,
        _room: &str,
        _client: &str,
        _site: &str,
        batch: u64,
        first: u64,
        count: u64,
    ) -> Message {
        let ms = unix_ms();
        let mut body = String::with_capacity(count as usize * 64 + 256);
        let _ = write!(
            body,
            r#"{{"type":"push","id":"{batch}","timestamp":{ms},"collection":"{COLLECTION}","changes":["#
        );
        for (i, k) in (first..first + count).enumerate() {
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

    /// A pull of the collection subscribes the session to it.
    fn subscribe(&self, _room: &str) -> Option<Message> {
        let ms = unix_ms();
        Some(text(format!(
            r#"{{"type":"pull","id":"subscribe","timestamp":{ms},"collections":["{COLLECTION}"],"checkpoint":{{"global":0}},"limit":1}}"#
        )))
    }

    fn ping(&self) -> Option<Message> {
        Some(text("ping".to_owned()))
    }

    /// One page of at most 1000 from `checkpoint` (the previous reply's, or none to start at
    /// 0).
    fn catch_up(&self, _room: &str, page: u64, checkpoint: Option<&str>) -> Message {
        let ms = unix_ms();
        text(format!(
            r#"{{"type":"pull","id":"catchup-{page}","timestamp":{ms},"collections":["{COLLECTION}"],"checkpoint":{},"limit":1000}}"#,
            checkpoint.unwrap_or(r#"{"global":0}"#)
        ))
    }

    fn catch_up_page<'m>(&self, reply: &Decoded<'m>, _target: u64) -> Page<'m> {
        match reply.kind {
            Kind::PullReply if reply.has_more == Some(true) => {
                Page::AskNext(reply.checkpoint.map(|c| c.get()))
            }
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
        if is_text && bytes == b"pong" {
            return Ok(Decoded::of(Kind::Pong));
        }
        let f = read_json(bytes, Changes::Events, on_change)?;
        let kind = match f.kind.as_deref() {
            Some("error") => Kind::Error,
            Some("push-response") => Kind::Ack,
            Some("pull-response")
                if f.id.as_deref().is_some_and(|i| i.starts_with("broadcast_")) =>
            {
                Kind::Changes
            }
            Some("pull-response") => Kind::PullReply,
            _ => Kind::Other,
        };
        Ok(Decoded { kind, ..f.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Dialect;
    use super::*;

    type Seen = Vec<(String, Option<u64>)>;

    fn collect(msg: &Message) -> (Kind, Seen) {
        let mut seen = Vec::new();
        let r = Dialect::named("pocket")
            .expect("pocket")
            .decode(msg, &mut |k, v| seen.push((k.to_owned(), v)))
            .expect("decodes");
        (r.kind, seen)
    }

    #[test]
    fn broadcasts_and_replies_are_told_apart() {
        let d = Dialect::named("pocket").expect("pocket");
        let b = text(
            r#"{"type":"pull-response","id":"broadcast_1","changes":{"items":[{"operation":"insert","documentId":"w0-3","document":{"_id":"w0-3","t":42},"sequence":3}]},"checkpoint":{"global":3},"hasMore":false}"#.into(),
        );
        let (kind, seen) = collect(&b);
        assert_eq!(kind, Kind::Changes);
        assert_eq!(seen, vec![("w0-3".into(), Some(42))]);
        let r = text(
            r#"{"type":"pull-response","id":"catchup-0","changes":{"items":[]},"checkpoint":{"sequences":{"items":0},"global":0},"hasMore":true}"#.into(),
        );
        let reply = d.decode(&r, &mut |_, _| {}).expect("reply");
        assert_eq!(reply.kind, Kind::PullReply);
        assert_eq!(reply.has_more, Some(true));
        assert!(
            reply
                .checkpoint
                .is_some_and(|c| c.get().contains("sequences"))
        );
        assert!(
            matches!(d.catch_up_page(&reply, 0), Page::AskNext(Some(c)) if c.contains("sequences"))
        );
        let ack = text(r#"{"type":"push-response","id":"12","success":true}"#.into());
        let a = d.decode(&ack, &mut |_, _| {}).expect("ack");
        assert_eq!((a.kind, a.request()), (Kind::Ack, Some(12)));
        let pong = text("pong".into());
        assert_eq!(collect(&pong).0, Kind::Pong);
    }

    #[test]
    fn batches_are_valid_json() {
        let Message::Text(t) = Pocket.write_batch("room", "l", "site", 3, 10, 5) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
        assert_eq!(v["changes"].as_array().map(Vec::len), Some(5));
    }
}
