//! The `[limits]` against real clients: the offending client gets its dialect's error or close
//! code, a bystander goes on, nothing acked is lost, and each limit shows in `/stats`.

mod common;

use std::time::Duration;

use common::raw_ws::{RawFrame, RawWs};
use common::{TIMEOUT, TestHub, Ws, get, relay_write_big, within};
use serde_json::{Value, json};

/// The admin token of the hubs here that need one (with auth off, `/stats` is open anyway).
const ADMIN: &str = "limits-admin";

async fn limits_hit(hub: &TestHub, limit: &str) -> u64 {
    let (status, stats) = common::http("GET", &hub.http_url("/stats"), Some(ADMIN), None).await;
    assert_eq!(status, 200);
    stats["limits"][limit]
        .as_u64()
        .unwrap_or_else(|| panic!("no limits.{limit} in {stats}"))
}

/// Sends `n` messages at once and returns every answer that arrives within a moment.
async fn burst(ws: &mut Ws, n: usize, message: impl Fn(usize) -> Value) -> Vec<Value> {
    for i in 0..n {
        ws.send_json(&message(i)).await;
    }
    let mut answers = Vec::new();
    while let Some(text) = ws.try_recv(Duration::from_millis(300)).await {
        answers.push(serde_json::from_str(&text).unwrap_or(Value::String(text)));
    }
    answers
}

fn rate_limited_hub() -> TestHub {
    TestHub::start_with(|c| c.limits.max_messages_per_second = 5)
}

#[actix_rt::test]
async fn pocket_over_the_rate_gets_retryable_errors_with_its_ids() {
    let hub = rate_limited_hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=r")).await;
    let mut bystander = Ws::connect(&hub.ws_url("/sync?room=r")).await;
    let pull = |i: usize| json!({"type": "pull", "id": format!("p{i}"), "collections": ["c"], "checkpoint": {}});
    let answers = burst(&mut ws, 20, pull).await;
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|a| a["code"] == "RATE_LIMITED")
        .collect();
    assert!(limited.len() >= 10, "{answers:?}");
    for a in &limited {
        assert_eq!(a["retryable"], true);
        assert!(
            a["id"].as_str().is_some_and(|id| id.starts_with('p')),
            "{a}"
        );
    }
    let served = answers
        .iter()
        .filter(|a| a["type"] == "pull-response")
        .count();
    assert_eq!(served + limited.len(), 20, "every message is answered once");
    // The bystander has a budget of its own.
    let r = bystander.request(&pull(99)).await;
    assert_eq!(r["type"], "pull-response");
    // Under the rate again after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ws.request(&pull(100)).await;
    assert_eq!(r["type"], "pull-response", "{r}");
    assert!(limits_hit(&hub, "rate").await >= 10);
}

#[actix_rt::test]
async fn relay_and_synckit_over_the_rate_get_their_errors() {
    let hub = rate_limited_hub();
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=c")).await;
    assert_eq!(relay.recv_json().await["type"], "connected");
    let answers = burst(&mut relay, 20, |_| json!({"type": "pull", "version": 0})).await;
    let limited = answers
        .iter()
        .filter(|a| a["type"] == "error" && a["code"] == "RATE_LIMITED")
        .count();
    assert!(limited >= 10, "{answers:?}");

    let mut synckit = Ws::connect(&hub.ws_url("/ws")).await;
    let answers = burst(
        &mut synckit,
        20,
        |i| json!({"type": "ping", "id": format!("k{i}"), "timestamp": 1}),
    )
    .await;
    let limited = answers
        .iter()
        .filter(|a| a["type"] == "error" && a["error"] == "Too many messages. Please slow down.")
        .count();
    assert!(limited >= 10, "{answers:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    synckit
        .send_json(&json!({"type": "ping", "id": "again", "timestamp": 1}))
        .await;
    assert_eq!(synckit.recv_json().await["type"], "pong");
    assert!(limits_hit(&hub, "rate").await >= 20);
}

/// Writes relay cell `i` with a 50 KB value and waits for its ack: one at a time, since the
/// writer's own waiting requests are bounded by the same limit as what is queued for readers.
/// A relay client that stops reading while a writer floods its channel: it is evicted at the
/// outbound limit and its connection ends, the writer and a reading subscriber lose nothing, and
/// the slow client catches up from its version when it comes back.
#[actix_rt::test]
async fn a_client_that_stops_reading_is_cut_off_and_resumes() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_outbound_bytes = 64 * 1024;
        c.limits.max_messages_per_second = 100_000;
    });
    let mut slow = RawWs::connect_with_buffer(hub.addr, "/relay?channel=flood", Some(4096)).await;
    let mut reader = Ws::connect(&hub.ws_url("/relay?channel=flood")).await;
    assert_eq!(reader.recv_json().await["type"], "connected");
    let mut writer = Ws::connect(&hub.ws_url("/relay?channel=flood")).await;
    assert_eq!(writer.recv_json().await["type"], "connected");
    // The slow client reads nothing until it has been evicted. The kernel holds the first few
    // MB (the hub's send buffer grows to several), so the flood must be larger than that.
    let writes = 200u64;
    for i in 1..=writes {
        relay_write_big(&mut writer, i).await;
        // Keep the reader drained so only the slow client falls behind.
        while let Some(text) = reader.try_recv(Duration::from_millis(0)).await {
            let _ = text;
        }
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while limits_hit(&hub, "slow_consumer").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never evicted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading again, the client gets what was queued and then 4008; one that read nothing at
    // all would be cut off after the grace period.
    let mut last_version = 0;
    let code = loop {
        match slow.next_frame(Duration::from_secs(15)).await {
            Some(RawFrame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if let Some(n) = v["version"].as_u64() {
                    last_version = n;
                }
            }
            Some(RawFrame::Close(code)) => break Some(code),
            Some(_) => continue,
            None => break None,
        }
    };
    assert!(matches!(code, Some(4008) | None), "{code:?}");
    assert!(last_version < writes, "it fell behind");
    // It comes back with the version it had and gets the rest: nothing acked is lost.
    let mut back = Ws::connect(&hub.ws_url("/relay?channel=flood")).await;
    assert_eq!(back.recv_json().await["type"], "connected");
    back.send_json(&json!({"type": "pull", "version": last_version}))
        .await;
    let mut seen = last_version;
    while seen < writes {
        let u = back.recv_json().await;
        assert_eq!(u["type"], "update", "{u}");
        for c in u["changes"].as_array().expect("changes") {
            let v = c[5].as_u64().expect("db_version");
            assert!(v > seen, "in order, no repeats");
            seen = v;
        }
    }
    assert_eq!(seen, writes);
}

/// The same client, never reading again: its connection is cut, so neither the socket nor what
/// was queued for it outlives the grace period.
#[actix_rt::test]
async fn a_client_that_never_reads_again_is_disconnected() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_outbound_bytes = 64 * 1024;
        c.limits.max_messages_per_second = 100_000;
    });
    let _slow = RawWs::connect_with_buffer(hub.addr, "/relay?channel=gone", Some(4096)).await;
    let mut writer = Ws::connect(&hub.ws_url("/relay?channel=gone")).await;
    assert_eq!(writer.recv_json().await["type"], "connected");
    for i in 1..=200u64 {
        relay_write_big(&mut writer, i).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, stats) = get(&hub.http_url("/stats")).await;
        if stats["sessions"]["relay"] == 1 && stats["limits"]["slow_consumer"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow session is still open: {}",
            stats["sessions"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn synckit_documents_per_connection_are_limited() {
    let hub = TestHub::start_with(|c| c.limits.max_rooms_per_session = 2);
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    for doc in ["d1", "d2"] {
        let r = ws
            .request_typed(
                &json!({"type": "subscribe", "id": doc, "documentId": doc, "timestamp": 1}),
                "sync_response",
            )
            .await;
        assert_eq!(r["type"], "sync_response", "{r}");
    }
    ws.send_json(&json!({"type": "subscribe", "id": "s3", "documentId": "d3", "timestamp": 1}))
        .await;
    let r = ws.recv_json().await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["error"], "Too many documents on one connection (max 2)");
    // A delta to a third document is refused too; the first two keep working.
    ws.send_json(
        &json!({"type": "delta", "id": "x", "documentId": "d3", "field": "f",
                          "value": 1, "messageId": "m0", "timestamp": 1}),
    )
    .await;
    assert_eq!(ws.recv_json().await["type"], "error");
    let mut other = Ws::connect(&hub.ws_url("/ws")).await;
    other
        .send_json(
            &json!({"type": "delta", "id": "y", "documentId": "d1", "field": "f",
                            "value": 42, "messageId": "m1", "timestamp": 1}),
        )
        .await;
    let delta = loop {
        let m = ws.recv_json().await;
        if m["type"] == "delta" {
            break m;
        }
    };
    assert_eq!(delta["value"], 42);
    // Leaving one makes room for another.
    ws.send_json(&json!({"type": "unsubscribe", "id": "u", "documentId": "d2", "timestamp": 1}))
        .await;
    let r = ws
        .request_typed(
            &json!({"type": "subscribe", "id": "s4", "documentId": "d3", "timestamp": 1}),
            "sync_response",
        )
        .await;
    assert_eq!(r["type"], "sync_response", "{r}");
    assert_eq!(limits_hit(&hub, "rooms_per_session").await, 2);
}

#[actix_rt::test]
async fn connections_per_address_are_refused_before_the_upgrade_and_come_back() {
    let hub = TestHub::start_with(|c| c.limits.max_connections_per_ip = 2);
    let a = Ws::connect(&hub.ws_url("/relay?channel=ip")).await;
    let _b = Ws::connect(&hub.ws_url("/sync?room=ip")).await;
    assert_eq!(Ws::refused_status(&hub.ws_url("/ws")).await, 429);
    assert_eq!(limits_hit(&hub, "connections_per_ip").await, 1);
    // HTTP requests are not connections the limit counts.
    assert_eq!(get(&hub.http_url("/health")).await.0, 200);
    drop(a);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match within(
            "upgrade",
            tokio_tungstenite::connect_async(hub.ws_url("/relay?channel=ip")),
        )
        .await
        {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot never came back: {e}"),
        }
    }
}

#[actix_rt::test]
async fn synckit_values_nested_too_deep_are_refused_before_anything_is_stored() {
    let hub = TestHub::start_with(|c| c.limits.max_json_depth = 8);
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    let mut deep = json!(1);
    for _ in 0..9 {
        deep = json!([deep]);
    }
    ws.send_json(
        &json!({"type": "delta", "id": "d", "documentId": "deep", "field": "f",
                          "value": deep, "messageId": "m1", "timestamp": 1}),
    )
    .await;
    let r = ws.recv_json().await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(
        r["error"],
        "Invalid delta: value nested deeper than 8 levels"
    );
    let r = ws
        .request_typed(
            &json!({"type": "sync_request", "id": "s", "documentId": "deep", "timestamp": 1}),
            "sync_response",
        )
        .await;
    assert_eq!(r["state"], json!({}), "nothing was stored");
    assert_eq!(limits_hit(&hub, "json_depth").await, 1);
}

#[actix_rt::test]
async fn upgrades_reset_at_once_leave_no_session_behind() {
    let hub = TestHub::start();
    for i in 0..100u64 {
        let mut tcp = within("connect", tokio::net::TcpStream::connect(hub.addr))
            .await
            .expect("connect");
        let request = "GET /relay?channel=reset HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n";
        use tokio::io::AsyncWriteExt;
        tcp.write_all(request.as_bytes()).await.expect("send");
        // Reset at different moments of the upgrade.
        tokio::time::sleep(Duration::from_micros(i * 37 % 1500)).await;
        // SO_LINGER 0: closing sends a reset instead of a FIN (and so never blocks, which is
        // what the deprecation warns of).
        #[allow(deprecated)]
        tcp.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(tcp);
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, stats) = get(&hub.http_url("/stats")).await;
        if stats["sessions"]["total"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions left behind: {}",
            stats["sessions"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the census still admits and counts a real one.
    let _ws = Ws::connect(&hub.ws_url("/relay?channel=reset")).await;
    let (_, stats) = get(&hub.http_url("/stats")).await;
    assert_eq!(stats["sessions"]["total"], 1);
}

#[actix_rt::test]
async fn broken_frames_get_the_rfc_6455_close_codes() {
    let hub = TestHub::start();
    let mut ws = RawWs::connect(hub.addr, "/relay?channel=frames").await;
    ws.send_frame(0x1, &[0x7b, 0xff, 0xfe, 0x7d]).await;
    assert_eq!(ws.close_code(TIMEOUT).await, Some(1007));

    let mut ws = RawWs::connect(hub.addr, "/relay?channel=frames").await;
    ws.send_frame(0x9, &[0u8; 126]).await;
    assert_eq!(ws.close_code(TIMEOUT).await, Some(1002));
}

#[actix_rt::test]
async fn synckit_sessions_that_authenticate_in_band_count_against_their_user() {
    const SECRET: &str = "limits-secret";
    let hub = common::tokens::auth_hub(SECRET, ADMIN, |c| c.limits.max_connections_per_user = 1);
    let token = common::tokens::token(SECRET, "ursula", &["*"], &["*"], 600);
    let auth = json!({"type": "auth", "id": "a", "token": token, "timestamp": 1});
    let mut first = Ws::connect(&hub.ws_url("/ws")).await;
    assert_eq!(
        first.request_typed(&auth, "auth_success").await["userId"],
        "ursula"
    );
    let mut second = Ws::connect(&hub.ws_url("/ws")).await;
    second.send_json(&auth).await;
    let closed = loop {
        match second.next_or_close(TIMEOUT).await {
            Some(Ok(_)) => continue,
            Some(Err(closed)) => break closed,
            None => panic!("the second session of the user stayed open"),
        }
    };
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4002, "Too many connections")
    );
    assert_eq!(limits_hit(&hub, "connections_per_user").await, 1);
    // The first goes on.
    let r = first
        .request_typed(
            &json!({"type": "subscribe", "id": "s", "documentId": "mine", "timestamp": 1}),
            "sync_response",
        )
        .await;
    assert_eq!(r["documentId"], "mine");
}

#[actix_rt::test]
async fn synckit_refuses_timestamps_from_the_future_and_oversized_clocks() {
    let hub = TestHub::start();
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    let delta = |ts: Value, clock: Value| {
        json!({"type": "delta", "id": "d", "documentId": "time", "field": "f", "value": 1,
               "clientId": "c", "clock": clock, "messageId": "m", "timestamp": ts})
    };
    ws.send_json(&delta(json!(1e308), json!({}))).await;
    let r = ws.recv_json().await;
    assert_eq!(
        r["error"], "Invalid delta: timestamp is ahead of the server's clock",
        "{r}"
    );
    let huge: serde_json::Map<String, Value> =
        (0..300).map(|i| (format!("w{i}"), json!(1))).collect();
    ws.send_json(&delta(json!(1000), Value::Object(huge))).await;
    let r = ws.recv_json().await;
    assert_eq!(
        r["error"], "Invalid delta: clock names more than 256 writers",
        "{r}"
    );
    // Nothing was stored; a write with a sane timestamp later wins.
    let ack = ws
        .request_typed(&delta(json!(1000), json!({"c": 1})), "ack")
        .await;
    assert_eq!(ack["messageId"], "m");
}

#[actix_rt::test]
async fn browser_origins_outside_the_allowed_list_are_refused_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let hub = TestHub::start_with(|c| c.server.allowed_origins = vec!["https://app.test".into()]);
    let with_origin = |path: &str, origin: &str| {
        let mut req = hub.ws_url(path).into_client_request().expect("request");
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header value"));
        req
    };
    for path in ["/sync?room=o", "/ws", "/relay?channel=o"] {
        let refused = tokio_tungstenite::connect_async(with_origin(path, "https://evil.test"));
        match within("upgrade", refused).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "{path}")
            }
            other => panic!("{path}: not refused: {:?}", other.map(|_| ())),
        }
        let allowed = tokio_tungstenite::connect_async(with_origin(path, "https://app.test"));
        let allowed = within("upgrade", allowed).await;
        assert!(allowed.is_ok(), "{path}: the allowed origin is refused");
        // Clients that are not browsers send no Origin and are not affected.
        let _ = Ws::connect(&hub.ws_url(path)).await;
    }
    assert_eq!(limits_hit(&hub, "origin").await, 3);
}

/// A client that sends faster than its rooms answer is slowed down with the rate error once its
/// waiting requests reach the bound, instead of piling them up in the hub; what was taken is
/// acked, and the refused writes go through when sent again.
#[actix_rt::test]
async fn requests_waiting_at_rooms_are_bounded_per_session() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_outbound_bytes = 64 * 1024;
        c.limits.max_messages_per_second = 100_000;
    });
    let mut ws = Ws::connect(&hub.ws_url("/relay?channel=backlog")).await;
    assert_eq!(ws.recv_json().await["type"], "connected");
    let value = "z".repeat(30_000);
    let update = |i: u64| {
        json!({"type": "update", "version": 0, "siteId": "w",
               "changes": [["t", i.to_string(), "v", value, 1, 1, "w", 1, 0]]})
    };
    // One burst, written before the hub can answer any of it.
    for i in 1..=40 {
        ws.send_json(&update(i)).await;
    }
    let (mut acked, mut refused) = (0, 0);
    while acked + refused < 40 {
        let m = ws.recv_json().await;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("RATE_LIMITED")) => refused += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(refused > 0 && acked > 0, "acked {acked}, refused {refused}");
    assert_eq!(limits_hit(&hub, "backlog").await, refused);
    // Sent again one at a time, every write is taken.
    for i in 1..=40 {
        let a = ws.request_typed(&update(i), "ack").await;
        assert!(a["version"].as_u64().is_some());
    }
    let (_, room) = get(&hub.http_url("/stats/rooms/relay/backlog")).await;
    assert_eq!(room["records"], 40);
}

/// A delta's clock is stored with each field it writes and sent with every delta: it counts
/// against `limits.max_document_bytes` like the values.
#[actix_rt::test]
async fn synckit_clocks_count_against_the_document_size() {
    let hub = TestHub::start_with(|c| c.limits.max_document_bytes = 1024);
    let mut ws = Ws::connect(&hub.ws_url("/ws")).await;
    let clock: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("writer-{i:0>90}"), json!(1)))
        .collect();
    ws.send_json(
        &json!({"type": "delta", "id": "d", "documentId": "clocked", "field": "f",
                          "value": 1, "clock": clock, "messageId": "m1", "timestamp": 1}),
    )
    .await;
    let r = ws.recv_json().await;
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Message too large")),
        "{r}"
    );
    assert_eq!(limits_hit(&hub, "document_bytes").await, 1);
    // A small clock is fine.
    let ack = ws
        .request_typed(
            &json!({"type": "delta", "id": "d2", "documentId": "clocked", "field": "f",
                    "value": 1, "clock": {"c": 1}, "messageId": "m2", "timestamp": 1}),
            "ack",
        )
        .await;
    assert_eq!(ack["messageId"], "m2");
}

/// `[[…[1]…]]`, `depth` levels deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

/// `limits.max_json_depth` means the same in every dialect: how deeply the client's data nests
/// (a Pocket document's field, a relay column's value, a SyncKit field's value), however deep
/// the message around it. Data at the limit is stored, one level more is refused with the
/// dialect's error, and every refusal is counted.
#[actix_rt::test]
async fn max_json_depth_bounds_the_clients_data_in_every_dialect() {
    let hub = TestHub::start_with(|c| c.limits.max_json_depth = 4);
    let doc = |id: &str, depth: usize| {
        json!({"type": "push", "id": id, "collection": "todos", "checkpoint": {}, "changes": [
            {"operation": "insert", "documentId": id, "document": {"f": nested(depth)}}]})
    };

    let mut pocket = Ws::connect(&hub.ws_url("/sync?room=deep")).await;
    let r = pocket.request(&doc("at-limit", 4)).await;
    assert_eq!(r["success"], true, "{r}");
    let r = pocket.request(&doc("over", 5)).await;
    assert_eq!(
        (&r["type"], &r["code"]),
        (&json!("error"), &json!("INVALID_MESSAGE")),
        "{r}"
    );
    let (status, r) = common::http(
        "POST",
        &hub.http_url("/sync/push?room=deep"),
        None,
        Some(&doc("over-http", 5)),
    )
    .await;
    assert_eq!(
        (status, &r["code"]),
        (400, &json!("INVALID_MESSAGE")),
        "{r}"
    );

    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=deep")).await;
    assert_eq!(relay.recv_json().await["type"], "connected");
    let update = |pk: &str, depth: usize| json!({"type": "update", "changes": [["t", pk, "c", nested(depth), 1, 1, "s", 1, 0]]});
    let ack = relay.request_typed(&update("a", 4), "ack").await;
    assert_eq!(ack["version"], 1, "{ack}");
    let r = relay.request_typed(&update("b", 5), "error").await;
    assert_eq!(r["code"], "INVALID_MESSAGE", "{r}");

    let mut kit = Ws::connect(&hub.ws_url("/ws")).await;
    let delta = |m: &str, depth: usize| {
        json!({"type": "delta", "id": m, "documentId": "deep", "field": "f",
               "value": nested(depth), "messageId": m, "timestamp": 1})
    };
    let ack = kit.request_typed(&delta("m1", 4), "ack").await;
    assert_eq!(ack["messageId"], "m1");
    let r = kit.request_typed(&delta("m2", 5), "error").await;
    assert_eq!(
        r["error"], "Invalid delta: value nested deeper than 4 levels",
        "{r}"
    );

    assert_eq!(limits_hit(&hub, "json_depth").await, 4);
}
