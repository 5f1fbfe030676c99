//! Ack means durable: the hub is killed with SIGKILL right after acking, and every acked change
//! is there, with its sequence number, when it starts again on the same data directory.

mod common;

use common::{ChildHub, Ws, get};
use serde_json::{Value, json};

fn push(i: usize) -> Value {
    json!({"type": "push", "id": format!("p{i}"), "timestamp": 1, "collection": "todos",
           "changes": [{"operation": "insert", "documentId": format!("d{i}"),
                        "document": {"n": i}, "timestamp": i, "sequence": 0}],
           "checkpoint": {}})
}

/// Sends every push without waiting, then collects the acks; returns the sequence numbers.
async fn push_all(ws: &mut Ws, range: std::ops::Range<usize>) -> Vec<u64> {
    for i in range.clone() {
        ws.send_json(&push(i)).await;
    }
    let mut acked = Vec::new();
    while acked.len() < range.len() {
        let r = ws.recv_json().await;
        assert_eq!(r["type"], "push-response", "{r}");
        assert_eq!(r["success"], true);
        acked.push(r["checkpoint"]["sequences"]["todos"].as_u64().expect("seq"));
    }
    acked
}

async fn pull_all(url: &str) -> Vec<Value> {
    let mut ws = Ws::connect(url).await;
    let r = ws
        .request(
            &json!({"type": "pull", "id": "all", "timestamp": 1, "collections": ["todos"],
                         "checkpoint": {"global": 0}, "limit": 1000}),
        )
        .await;
    assert_eq!(r["hasMore"], false);
    r["changes"]["todos"].as_array().expect("changes").clone()
}

fn assert_complete(changes: &[Value], n: usize) {
    assert_eq!(changes.len(), n, "every acked change survives");
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c["sequence"], json!(i + 1));
        assert_eq!(c["documentId"], json!(format!("d{i}")));
        assert_eq!(c["document"]["n"], json!(i));
    }
}

#[actix_rt::test]
async fn acked_changes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=crash")).await;
    let acked = push_all(&mut ws, 0..300).await;
    hub.kill();
    // The push checkpoints may lag (pipelined pushes see each other in flight), but never
    // pass the room's sequence.
    assert!(acked.iter().all(|s| *s <= 300));

    let hub = ChildHub::spawn(dir.path(), &[]).await;
    assert_complete(&pull_all(&hub.ws_url("/sync?room=crash")).await, 300);
    // Numbering goes on where it stopped: no sequence number is reused.
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=crash")).await;
    let r = ws.request(&push(300)).await;
    assert_eq!(r["success"], true);
    let all = pull_all(&hub.ws_url("/sync?room=crash")).await;
    assert_eq!(all.last().map(|c| c["sequence"].clone()), Some(json!(301)));
}

/// Relaxed durability acks before the flush, and promises that a crash loses at most the last
/// half second: the hub must flush on its own.
#[actix_rt::test]
async fn relaxed_durability_keeps_what_was_acked_a_second_before_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relaxed = [("SYNCHUB_STORAGE_DURABILITY", "relaxed")];
    let hub = ChildHub::spawn(dir.path(), &relaxed).await;
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=relaxed")).await;
    push_all(&mut ws, 0..300).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    hub.kill();

    let hub = ChildHub::spawn(dir.path(), &relaxed).await;
    assert_complete(&pull_all(&hub.ws_url("/sync?room=relaxed")).await, 300);
}

#[actix_rt::test]
async fn a_room_stopped_when_idle_keeps_its_data_and_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("SYNCHUB_SERVER_ROOM_IDLE_TIMEOUT_S", "1")];
    let hub = ChildHub::spawn(dir.path(), &env).await;
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=idle")).await;
    push_all(&mut ws, 0..20).await;
    drop(ws);
    // Wait for the room's actor to stop.
    let status_url = hub.http_url("/stats/rooms/pocket/idle");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let (status, body) = get(&status_url).await;
        assert_eq!(status, 200);
        if body["live"] == false {
            assert_eq!(body["seq"], 20);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "room never went idle");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, stats) = get(&hub.http_url("/stats")).await;
    assert_eq!(stats["rooms"]["active"], 0);
    // The room starts again on demand and goes on from 20.
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=idle")).await;
    push_all(&mut ws, 20..40).await;
    let (_, before) = get(&status_url).await;
    assert_eq!(before["seq"], 40);
    hub.kill();

    let hub = ChildHub::spawn(dir.path(), &env).await;
    let (status, after) = get(&hub.http_url("/stats/rooms/pocket/idle")).await;
    assert_eq!(status, 200);
    assert_eq!(after["seq"], 40);
    assert_eq!(after["digest"], before["digest"]);
    assert_complete(&pull_all(&hub.ws_url("/sync?room=idle")).await, 40);
}

#[actix_rt::test]
async fn sigterm_closes_sessions_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=bye")).await;
    let r = ws.request(&push(0)).await;
    assert_eq!(r["success"], true);
    let status = hub.terminate();
    assert!(status.success(), "exit status {status}");
    let closed = ws.closed().await;
    assert_eq!(closed.code, 1001);
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    assert_complete(&pull_all(&hub.ws_url("/sync?room=bye")).await, 1);
}

#[actix_rt::test]
async fn relay_changes_acked_before_sigkill_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let url = hub.ws_url("/relay?channel=crash");
    let mut ws = Ws::connect(&url).await;
    let hello = ws.recv_json().await;
    for i in 0..200 {
        ws.send_json(
            &json!({"type": "update", "siteId": "c", "version": i, "channel": "crash",
                              "changes": [["t", format!("{i}"), "v", i, 1, i, "site", 1, 0]]}),
        )
        .await;
    }
    let mut last = 0;
    for _ in 0..200 {
        let ack = ws.recv_json().await;
        assert_eq!(ack["type"], "ack");
        last = ack["version"].as_u64().expect("version");
    }
    assert_eq!(last, 200);
    hub.kill();

    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let mut ws = Ws::connect(&hub.ws_url("/relay?channel=crash")).await;
    let again = ws.recv_json().await;
    assert_eq!(again["version"], 200);
    assert_eq!(again["siteId"], hello["siteId"]);
    ws.send_json(&json!({"type": "pull", "version": 0})).await;
    let up = ws.recv_json().await;
    let changes = up["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 200);
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c[1], json!(format!("{i}")));
        assert_eq!(c[5], json!(i + 1));
    }
}

#[actix_rt::test]
async fn synckit_deltas_acked_before_sigkill_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    for i in 0..200 {
        ws.send_json(
            &json!({"type": "delta", "id": format!("m{i}"), "timestamp": 1000 + i,
                              "documentId": "crash", "delta": {format!("f{i}"): i},
                              "vectorClock": {"w": i}}),
        )
        .await;
    }
    let mut acked = 0;
    while acked < 200 {
        let m = ws.recv_json().await;
        if m["type"] == "ack" {
            acked += 1;
        }
    }
    hub.kill();

    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    ws.send_json(
        &json!({"type": "sync_request", "id": "s", "timestamp": 1, "documentId": "crash"}),
    )
    .await;
    let r = ws.recv_json().await;
    assert_eq!(r["type"], "sync_response");
    let state = r["state"].as_object().expect("state");
    assert_eq!(state.len(), 200);
    for i in 0..200 {
        assert_eq!(state[&format!("f{i}")], json!(i));
    }
    assert_eq!(r["clock"]["w"], 199);
}
