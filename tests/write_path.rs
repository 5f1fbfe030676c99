//! Batched writes through real sockets: many sessions of one room pipeline their writes without
//! waiting; every write is acked in its session's order, the room numbers them 1, 2, 3, … with
//! no hole, and every other session receives every change exactly once, in order.

mod common;

use std::collections::BTreeSet;

use common::{TestHub, Ws};
use serde_json::{Value, json};

const SESSIONS: usize = 4;
const WRITES: usize = 60;

/// Sends every session's writes interleaved, without waiting for any answer.
async fn pipeline(clients: &mut [Ws], write: impl Fn(usize, usize) -> Value) {
    for i in 0..WRITES {
        for (s, c) in clients.iter_mut().enumerate() {
            c.send_json(&write(s, i)).await;
        }
    }
}

#[actix_rt::test]
async fn relay_writes_pipelined_by_many_sessions_are_acked_in_order_and_numbered_without_holes() {
    let hub = TestHub::start();
    let url = hub.ws_url("/relay?channel=pipe");
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let mut ws = Ws::connect(&url).await;
        assert_eq!(ws.recv_json().await["type"], "connected");
        clients.push(ws);
    }
    pipeline(&mut clients, |s, i| {
        json!({"type": "update", "version": 0, "siteId": format!("site-{s}"),
               "changes": [["t", format!("{s}-{i}"), "v", i, 1, i, format!("site-{s}"), 1, 0]]})
    })
    .await;
    let total = SESSIONS * WRITES;
    let mut every_seq = BTreeSet::new();
    for (s, c) in clients.iter_mut().enumerate() {
        let (mut acks, mut seen) = (Vec::new(), Vec::new());
        let mut last_version = 0;
        while acks.len() < WRITES || seen.len() < total - WRITES {
            let m = c.recv_json().await;
            let version = m["version"].as_u64().expect("version");
            match m["type"].as_str() {
                Some("ack") => acks.push(version),
                Some("update") => {
                    assert!(version >= last_version, "updates go back: {m}");
                    last_version = version;
                    for ch in m["changes"].as_array().expect("changes") {
                        let pk = ch[1].as_str().expect("pk");
                        assert!(!pk.starts_with(&format!("{s}-")), "own change echoed: {pk}");
                        let seq = ch[5].as_u64().expect("db_version");
                        assert!(seq <= version, "{m}");
                        seen.push((seq, pk.to_owned()));
                    }
                }
                _ => panic!("unexpected {m}"),
            }
        }
        assert!(
            acks.windows(2).all(|w| w[0] < w[1]),
            "acks out of order: {acks:?}"
        );
        // The others' changes arrive once each, in sequence order.
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        let pks: BTreeSet<&str> = seen.iter().map(|(_, pk)| pk.as_str()).collect();
        assert_eq!(pks.len(), total - WRITES);
        every_seq.extend(acks);
        every_seq.extend(seen.iter().map(|(seq, _)| *seq));
        c.expect_silence(100).await;
    }
    assert_eq!(every_seq, (1..=total as u64).collect());
}

#[actix_rt::test]
async fn pocket_pushes_pipelined_by_many_sessions_are_acked_in_order_and_broadcast_once() {
    let hub = TestHub::start();
    let url = hub.ws_url("/sync?room=pipe");
    let mut clients = Vec::new();
    for s in 0..SESSIONS {
        let mut ws = Ws::connect(&url).await;
        // Pulling the collection subscribes the session before anyone writes.
        let r = ws
            .request(
                &json!({"type": "pull", "id": format!("sub{s}"), "collections": ["todos"],
                             "checkpoint": {}}),
            )
            .await;
        assert_eq!(r["type"], "pull-response");
        clients.push(ws);
    }
    pipeline(&mut clients, |s, i| {
        json!({"type": "push", "id": format!("p{s}-{i}"), "collection": "todos",
               "checkpoint": {}, "changes": [{"operation": "insert",
               "documentId": format!("{s}-{i}"), "document": {"n": i}}]})
    })
    .await;
    let total = SESSIONS * WRITES;
    let mut every_seq = BTreeSet::new();
    for (s, c) in clients.iter_mut().enumerate() {
        let (mut acks, mut seen) = (Vec::new(), Vec::new());
        while acks.len() < WRITES || seen.len() < total - WRITES {
            let m = c.recv_json().await;
            match m["type"].as_str() {
                Some("push-response") => {
                    assert_eq!(m["success"], true, "{m}");
                    acks.push(m["id"].as_str().expect("id").to_owned());
                }
                Some("pull-response") => {
                    assert!(m["id"].as_str().expect("id").starts_with("broadcast_"));
                    for ch in m["changes"]["todos"].as_array().expect("changes") {
                        let doc = ch["documentId"].as_str().expect("id");
                        assert!(
                            !doc.starts_with(&format!("{s}-")),
                            "own change echoed: {doc}"
                        );
                        seen.push((ch["sequence"].as_u64().expect("seq"), doc.to_owned()));
                    }
                }
                _ => panic!("unexpected {m}"),
            }
        }
        let expected: Vec<String> = (0..WRITES).map(|i| format!("p{s}-{i}")).collect();
        assert_eq!(acks, expected, "push-responses come in push order");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        let docs: BTreeSet<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(docs.len(), total - WRITES);
        every_seq.extend(seen.iter().map(|(seq, _)| *seq));
        c.expect_silence(100).await;
    }
    // Every change was seen by the other sessions under its number: 1..=total, no hole.
    assert_eq!(every_seq, (1..=total as u64).collect());
}
