//! A SyncKit client written from the protocol description: binary frames (type code,
//! big-endian timestamp and length, JSON payload) or JSON text.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synchub::auth::unix_now;
use tokio_tungstenite::tungstenite::Message;

use super::{RawWs, TIMEOUT, within};

/// A SyncKit client written from the protocol description: binary frames (type code,
/// big-endian timestamp and length, JSON payload) or JSON text.
pub struct Kit {
    pub ws: RawWs,
    pub binary: bool,
}

pub fn code(kind: &str) -> u8 {
    match kind {
        "auth" => 0x01,
        "auth_success" => 0x02,
        "auth_error" => 0x03,
        "subscribe" => 0x10,
        "unsubscribe" => 0x11,
        "sync_request" => 0x12,
        "sync_response" => 0x13,
        "delta" => 0x20,
        "ack" => 0x21,
        "ping" => 0x30,
        "pong" => 0x31,
        "error" => 0xFF,
        other => panic!("no code for {other}"),
    }
}

pub fn kind(code: u8) -> &'static str {
    match code {
        0x02 => "auth_success",
        0x03 => "auth_error",
        0x13 => "sync_response",
        0x20 => "delta",
        0x21 => "ack",
        0x31 => "pong",
        0xFF => "error",
        other => panic!("unexpected code {other:#x}"),
    }
}

pub fn frame(code: u8, ts: i64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![code];
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl Kit {
    pub async fn connect(url: &str, binary: bool) -> Kit {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("connect");
        Kit { ws, binary }
    }

    /// Sends `{type, ...fields}`; JSON text gets `id` and `timestamp` added when missing.
    pub async fn send(&mut self, kind_: &str, fields: Value) {
        self.try_send(kind_, fields).await.expect("send");
    }

    /// [`Kit::send`], reporting a connection that is gone instead of failing the test.
    pub async fn try_send(&mut self, kind_: &str, fields: Value) -> Result<(), String> {
        let mut f = fields.as_object().cloned().expect("object");
        let m = if self.binary {
            let ts = f
                .remove("timestamp")
                .and_then(|t| t.as_i64())
                .unwrap_or(1_000);
            let payload = Value::Object(f).to_string();
            Message::Binary(frame(code(kind_), ts, payload.as_bytes()).into())
        } else {
            f.insert("type".into(), json!(kind_));
            f.entry("id").or_insert(json!(format!("m-{}", unix_now())));
            f.entry("timestamp").or_insert(json!(1_000));
            Message::Text(Value::Object(f).to_string().into())
        };
        within("send", self.ws.send(m))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn raw(&mut self, m: Message) {
        within("send", self.ws.send(m)).await.expect("send");
    }

    /// The next message as `{type, ...}`, checking it came in the expected framing.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(TIMEOUT).await.expect("a message in time")
    }

    /// The next message, or `None` if nothing came within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        self.recv_or_lost(wait)
            .await
            .unwrap_or_else(|e| panic!("connection lost: {e}"))
    }

    /// The next message; `Ok(None)` if nothing came within `wait`, `Err` once the connection is
    /// gone (closed, reset, or its server killed).
    pub async fn recv_or_lost(&mut self, wait: Duration) -> Result<Option<Value>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Ok(None);
            };
            match next {
                Some(Ok(Message::Binary(b))) => {
                    assert!(self.binary, "binary reply to a JSON client");
                    assert!(b.len() >= 13);
                    let len = u32::from_be_bytes(b[9..13].try_into().expect("4")) as usize;
                    assert_eq!(b.len(), 13 + len);
                    let mut v: Value = serde_json::from_slice(&b[13..]).expect("payload");
                    v["type"] = json!(kind(b[0]));
                    v["timestamp"] = json!(i64::from_be_bytes(b[1..9].try_into().expect("8")));
                    return Ok(Some(v));
                }
                Some(Ok(Message::Text(t))) => {
                    assert!(!self.binary, "text reply to a binary client");
                    return Ok(Some(serde_json::from_str(&t).expect("json")));
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("ended".into()),
            }
        }
    }

    pub async fn expect(&mut self, kind_: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], kind_, "{m}");
        assert!(m["id"].is_string(), "{m}");
        assert!(m["timestamp"].is_number(), "{m}");
        m
    }

    pub async fn silence(&mut self, ms: u64) {
        if let Some(m) = self.try_recv(Duration::from_millis(ms)).await {
            panic!("expected silence, got {m}");
        }
    }

    pub async fn subscribe(&mut self, doc: &str) -> Value {
        self.send("subscribe", json!({"id": "sub-1", "documentId": doc}))
            .await;
        let r = self.expect("sync_response").await;
        assert_eq!(r["documentId"], doc);
        r
    }

    /// Subscribes where other writers are live: a delta of the document may reach the socket
    /// before the subscribe's answer (the session joins the room first). Answers the
    /// `sync_response` and the deltas that came before it.
    pub async fn subscribe_live(&mut self, doc: &str) -> (Value, Vec<Value>) {
        self.send("subscribe", json!({"id": "sub-1", "documentId": doc}))
            .await;
        let mut early = Vec::new();
        loop {
            let m = self.recv().await;
            if m["type"] == "delta" {
                early.push(m);
                continue;
            }
            assert_eq!(m["type"], "sync_response", "{m}");
            assert_eq!(m["documentId"], doc);
            return (m, early);
        }
    }

    pub async fn state(&mut self, doc: &str) -> Value {
        self.send("sync_request", json!({"id": "sr", "documentId": doc}))
            .await;
        let r = self.expect("sync_response").await;
        assert_eq!(r["requestId"], "sr");
        assert!(r["clock"].is_object());
        r["state"].clone()
    }

    /// The SDK's delta form; returns after the ack.
    pub async fn set(
        &mut self,
        doc: &str,
        field: &str,
        value: Value,
        ts: i64,
        client: &str,
        counter: u64,
    ) {
        let mid = format!("{client}-{field}-{ts}-{counter}");
        self.send(
            "delta",
            json!({"documentId": doc, "field": field, "value": value,
                                  "clock": {client: counter}, "clientId": client,
                                  "timestamp": ts, "messageId": mid}),
        )
        .await;
        loop {
            let m = self.recv().await;
            if m["type"] == "ack" {
                assert_eq!(m["messageId"], mid.as_str());
                return;
            }
            assert_eq!(m["type"], "delta", "{m}");
        }
    }

    /// Deltas received until `ms` of silence, as `field → value`.
    pub async fn deltas(&mut self, ms: u64) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Some(m) = self.try_recv(Duration::from_millis(ms)).await {
            assert_eq!(m["type"], "delta", "{m}");
            let clock = m["clock"].as_object().expect("clock");
            assert!(!clock.is_empty(), "the SDK needs a non-empty clock");
            out.push((
                m["field"].as_str().expect("field").to_owned(),
                m["value"].clone(),
            ));
        }
        out
    }
}
