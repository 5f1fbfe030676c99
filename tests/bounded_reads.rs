//! What a read costs the hub stays bounded however large the room: replies come in pages of
//! about a frame in every dialect, they wait for the socket where broadcasts do, and no record
//! (a relay value, a whole SyncKit document) grows past `limits.max_document_bytes`.

mod common;

use std::time::Duration;

use common::raw_ws::{RawFrame, RawWs};
use common::{TestHub, Ws, get, http};
use serde_json::{Value, json};

/// `page_bytes`: a quarter of what may wait for a socket, below a frame.
const OUTBOUND: usize = 256 * 1024;
const PAGE: usize = OUTBOUND / 4;

fn hub() -> TestHub {
    TestHub::start_with(|c| {
        c.limits.max_outbound_bytes = OUTBOUND;
        c.limits.max_messages_per_second = 100_000;
    })
}

async fn limits_hit(hub: &TestHub, limit: &str) -> u64 {
    let (_, stats) = get(&hub.http_url("/stats")).await;
    stats["limits"][limit].as_u64().unwrap_or(0)
}

async fn pocket_push(ws: &mut Ws, id: &str, doc: &str, bytes: usize) {
    let push = json!({"type": "push", "id": id, "collection": "docs",
                      "changes": [{"operation": "insert", "documentId": doc,
                                   "document": {"_id": doc, "body": "p".repeat(bytes)}}],
                      "checkpoint": {"sequences": {}, "global": 0}});
    let r = ws.request_typed(&push, "push-response").await;
    assert_eq!(r["success"], true, "{r}");
}

#[actix_rt::test]
async fn pocket_pulls_come_in_pages_near_a_frame() {
    let hub = hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=big")).await;
    for i in 0..40 {
        pocket_push(&mut ws, &format!("p{i}"), &format!("doc-{i:02}"), 20_000).await;
    }
    let mut reader = Ws::connect(&hub.ws_url("/sync?room=big")).await;
    let mut checkpoint = json!({"global": 0});
    let (mut docs, mut pages) = (Vec::new(), 0);
    loop {
        let pull = json!({"type": "pull", "id": format!("r{pages}"), "collections": ["docs"],
                          "checkpoint": checkpoint, "limit": 1000});
        reader.send_json(&pull).await;
        let text = reader.recv_text().await;
        // A page ends before the change that would pass its bytes: one change at most over.
        assert!(text.len() < PAGE + 25_000, "a page of {} bytes", text.len());
        let r: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(r["type"], "pull-response", "{r}");
        for c in r["changes"]["docs"].as_array().expect("changes") {
            docs.push(c["documentId"].as_str().expect("id").to_owned());
        }
        pages += 1;
        checkpoint = r["checkpoint"].clone();
        if r["hasMore"] != true {
            break;
        }
    }
    let expected: Vec<String> = (0..40).map(|i| format!("doc-{i:02}")).collect();
    assert_eq!(docs, expected, "every document once, in order");
    assert!(pages >= 10, "{pages} pages");
}

#[actix_rt::test]
async fn a_relay_pull_of_a_large_room_waits_for_a_slow_reader() {
    let hub = hub();
    let mut writer = Ws::connect(&hub.ws_url("/relay?channel=big")).await;
    assert_eq!(writer.recv_json().await["type"], "connected");
    // More than the kernel's buffers hold for a reader that reads nothing: 12 MB.
    let writes = 240u64;
    for i in 1..=writes {
        common::relay_write_big(&mut writer, i).await;
    }
    let mut reader = RawWs::connect_with_buffer(hub.addr, "/relay?channel=big", Some(4096)).await;
    reader
        .send_text(&json!({"type": "pull", "version": 0}).to_string())
        .await;
    // While it reads nothing, the hub writes no further than the socket takes: pages are
    // asked for as the connection takes the previous ones, so what the connection took is
    // what the kernel's buffers hold (a few MB), not the room (one 12 MB reply before).
    let mut taken = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, sessions) = http("GET", &hub.http_url("/admin/sessions"), None, None).await;
        assert_eq!(status, 200, "{sessions}");
        for s in sessions["sessions"].as_array().expect("sessions") {
            if s["bytes_in"].as_u64() < Some(1_000) {
                taken = s["bytes_out"].as_u64().unwrap_or(0) as usize;
                assert!(s["bytes_queued"].as_u64() <= Some(OUTBOUND as u64), "{s}");
            }
        }
    }
    assert!(
        taken > 0 && taken < 8 << 20,
        "the connection took {taken} bytes"
    );
    // Reading again, it gets every change once, in order, in pages of about a page's bytes.
    let mut seen = 0;
    while seen < writes {
        let Some(RawFrame::Text(t)) = reader.next_frame(Duration::from_secs(10)).await else {
            panic!("the pull ended at {seen}");
        };
        assert!(t.len() < PAGE + 51_000, "an update of {} bytes", t.len());
        let u: Value = serde_json::from_str(&t).expect("json");
        if u["type"] == "connected" {
            continue;
        }
        assert_eq!(u["type"], "update", "{u}");
        for c in u["changes"].as_array().expect("changes") {
            let v = c[5].as_u64().expect("db_version");
            assert_eq!(v, seen + 1, "in order, no gaps or repeats");
            seen = v;
        }
    }
}

#[actix_rt::test]
async fn no_record_grows_past_the_document_limit() {
    let hub = TestHub::start_with(|c| c.limits.max_document_bytes = 16 * 1024);
    // A relay value is a record of its own.
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=sized")).await;
    assert_eq!(relay.recv_json().await["type"], "connected");
    let change =
        |i: u64, bytes: usize| json!(["t", i.to_string(), "v", "x".repeat(bytes), 1, 1, "w", 1, 0]);
    relay
        .send_json(&json!({"type": "update", "changes": [change(1, 1_000), change(2, 20_000)]}))
        .await;
    let r = relay.recv_json().await;
    assert_eq!(r["code"], "TOO_LARGE", "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("changes[1]: val is 20002 bytes")),
        "{r}"
    );
    assert_eq!(limits_hit(&hub, "document_bytes").await, 1);
    let (_, room) = get(&hub.http_url("/stats/rooms/relay/sized")).await;
    assert_eq!(room["seq"], 0, "nothing of the update was stored");
    relay
        .send_json(&json!({"type": "update", "changes": [change(1, 1_000)]}))
        .await;
    assert_eq!(relay.recv_json().await["type"], "ack");

    // A SyncKit document is one record of many fields: together they stay under the limit.
    let mut kit = Ws::connect(&hub.ws_url("/ws")).await;
    let mut refused = 0;
    for i in 0..100 {
        let delta = json!({"type": "delta", "id": format!("d{i}"), "documentId": "grows",
                           "field": format!("f{i}"), "value": "v".repeat(1_500),
                           "clock": {"c": i + 1}, "clientId": "c", "messageId": format!("m{i}"),
                           "timestamp": 1_000 + i});
        kit.send_json(&delta).await;
        // The writer is subscribed: broadcasts of its own fields come too.
        let r = loop {
            let m = kit.recv_json().await;
            if m["type"] != "delta" {
                break m;
            }
        };
        match r["type"].as_str() {
            Some("ack") => assert_eq!(r["messageId"], format!("m{i}")),
            Some("error") => {
                assert!(
                    r["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("Document too large")),
                    "{r}"
                );
                refused += 1;
            }
            _ => panic!("{r}"),
        }
    }
    assert!(refused >= 85, "{refused} refused");
    assert_eq!(limits_hit(&hub, "document_bytes").await, 1 + refused);
    let state = common::synckit::Kit::connect(&hub.ws_url("/ws"), false)
        .await
        .state("grows")
        .await;
    assert!(
        state.to_string().len() <= 16 * 1024,
        "the document holds {} bytes",
        state.to_string().len()
    );
    // Overwriting a field it holds is not growth.
    let again = json!({"type": "delta", "id": "again", "documentId": "grows", "field": "f0",
                       "value": "w".repeat(1_500), "clock": {"c": 1000}, "clientId": "c",
                       "messageId": "again", "timestamp": 5_000});
    kit.send_json(&again).await;
    let r = loop {
        let m = kit.recv_json().await;
        if m["type"] != "delta" {
            break m;
        }
    };
    assert_eq!(r["type"], "ack", "{r}");
}
