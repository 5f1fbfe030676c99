//! Bad input costs only the bad message: each error is answered with Pocket's error shape,
//! nothing is half-applied, and the session (and every other) goes on working.

mod common;

use common::{TestHub, Ws};
use serde_json::{Value, json};

fn limited_hub() -> TestHub {
    TestHub::start_with(|c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_document_bytes = 512;
        c.limits.max_json_depth = 8;
    })
}

async fn still_works(ws: &mut Ws, id: &str) {
    let r = ws
        .request(&json!({"type": "pull", "id": id, "collections": ["todos"], "checkpoint": {}}))
        .await;
    assert_eq!(r["type"], "pull-response", "{r}");
}

async fn error_for(ws: &mut Ws, text: &str) -> Value {
    ws.send_text(text).await;
    let r = ws.recv_json().await;
    assert_eq!(r["type"], "error", "{r}");
    assert!(r["timestamp"].is_number());
    assert!(r["message"].is_string());
    r
}

#[actix_rt::test]
async fn malformed_json_is_a_retryable_parse_error() {
    let hub = limited_hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync")).await;
    let r = error_for(&mut ws, "{not json").await;
    assert_eq!(r["code"], "PARSE_ERROR");
    assert_eq!(r["retryable"], true);
    assert!(r["id"].as_str().expect("id").starts_with("error_"));
    assert!(
        r["message"]
            .as_str()
            .expect("msg")
            .starts_with("Invalid message format")
    );
    still_works(&mut ws, "after-parse").await;
}

#[actix_rt::test]
async fn unknown_types_and_wrong_fields_carry_the_request_id() {
    let hub = limited_hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync")).await;
    let r = error_for(&mut ws, r#"{"type":"subscribe","id":"u1","timestamp":1}"#).await;
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("UNKNOWN_MESSAGE"), json!("u1"))
    );
    assert_eq!(r["message"], "Unknown message type: subscribe");
    assert_eq!(r["retryable"], false);
    let cases = [
        r#"{"type":"pull","id":"w1","collections":"todos"}"#,
        r#"{"type":"pull","id":"w2","collections":[1]}"#,
        r#"{"type":"pull","id":"w3","collections":["no/slash"]}"#,
        r#"{"type":"pull","id":"w4","collections":["todos"],"limit":-3}"#,
        r#"{"type":"push","id":"w5","collection":"todos","changes":{}}"#,
        r#"{"type":"push","id":"w6","collection":"","changes":[]}"#,
        r#"{"type":"push","id":"w7","collection":"todos","changes":[{"operation":"insert","documentId":"d","document":"x"}]}"#,
    ];
    for (i, case) in cases.iter().enumerate() {
        let r = error_for(&mut ws, case).await;
        assert_eq!(r["code"], "INVALID_MESSAGE", "{case}");
        assert_eq!(r["id"], json!(format!("w{}", i + 1)), "{case}");
    }
    still_works(&mut ws, "after-fields").await;
}

#[actix_rt::test]
async fn a_push_with_one_bad_change_applies_nothing() {
    let hub = limited_hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync")).await;
    let bad = json!({"type": "push", "id": "b", "collection": "todos", "changes": [
        {"operation": "insert", "documentId": "good", "document": {"v": 1}},
        {"operation": "insert", "documentId": "bad", "document": {"_id": "other"}},
    ]});
    let r = ws.request(&bad).await;
    assert_eq!(r["code"], "INVALID_MESSAGE");
    let r = ws
        .request(&json!({"type": "pull", "id": "q", "collections": ["todos"], "checkpoint": {}}))
        .await;
    assert_eq!(r["changes"]["todos"], json!([]));
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 0);
}

#[actix_rt::test]
async fn oversized_frames_documents_and_nesting_are_refused() {
    let hub = limited_hub();
    let mut ws = Ws::connect(&hub.ws_url("/sync")).await;
    let huge = format!(
        r#"{{"type":"pull","id":"big","pad":"{}"}}"#,
        "x".repeat(8000)
    );
    let r = error_for(&mut ws, &huge).await;
    assert_eq!(r["code"], "TOO_LARGE");
    // Under the request's id, so the client's pending request resolves at once.
    assert_eq!(r["id"], "big");
    still_works(&mut ws, "after-frame").await;

    // An oversized document is not an error of the push: it comes back as a conflict with
    // what the hub stores (nothing yet: a bare `{_id}`), and nothing of it is written.
    let doc = json!({"type": "push", "id": "bigdoc", "collection": "todos", "changes": [
        {"operation": "insert", "documentId": "d", "document": {"t": "y".repeat(600)}}]});
    let r = ws.request(&doc).await;
    assert_eq!(r["type"], "push-response", "{r}");
    assert_eq!(r["success"], false);
    assert_eq!(
        r["conflicts"],
        json!([{"documentId": "d", "serverDocument": {"_id": "d"}}])
    );

    let mut deep = json!(1);
    for _ in 0..10 {
        deep = json!({"n": deep});
    }
    let msg = json!({"type": "push", "id": "deep", "collection": "todos", "changes": [
        {"operation": "insert", "documentId": "d", "document": deep}]});
    let r = error_for(&mut ws, &msg.to_string()).await;
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("INVALID_MESSAGE"), json!("deep"))
    );
    still_works(&mut ws, "after-doc").await;
}

/// Sends one text message split into continuation frames of `chunk` bytes.
async fn send_fragmented(ws: &mut common::RawWs, text: &str, chunk: usize) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
    for (i, piece) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.to_vec(), opcode, i == chunks.len() - 1);
        common::within("send", ws.send(Message::Frame(frame)))
            .await
            .expect("send");
    }
}

async fn next_json(ws: &mut common::RawWs) -> Value {
    use futures_util::StreamExt;
    loop {
        match common::within("a reply", ws.next())
            .await
            .expect("reply")
            .expect("frame")
        {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                return serde_json::from_str(&t).expect("json");
            }
            _ => continue,
        }
    }
}

#[actix_rt::test]
async fn frames_split_over_continuations_are_reassembled_and_bounded() {
    let hub = limited_hub();
    let (mut raw, _) = common::within(
        "connect",
        tokio_tungstenite::connect_async(hub.ws_url("/sync")),
    )
    .await
    .expect("connect");
    let msg = json!({"type": "pull", "id": "frag", "collections": ["todos"], "checkpoint": {},
                     "pad": "z".repeat(500)});
    send_fragmented(&mut raw, &msg.to_string(), 100).await;
    let r = next_json(&mut raw).await;
    assert_eq!(
        (r["type"].clone(), r["id"].clone()),
        (json!("pull-response"), json!("frag"))
    );
    // Past max_frame_bytes in total: refused whole, and the socket goes on.
    let big = json!({"type": "pull", "id": "fragbig", "pad": "z".repeat(6000)});
    send_fragmented(&mut raw, &big.to_string(), 1000).await;
    let r = next_json(&mut raw).await;
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("TOO_LARGE"), json!("fragbig"))
    );
    send_fragmented(&mut raw, &msg.to_string(), 100).await;
    assert_eq!(next_json(&mut raw).await["id"], "frag");
}

#[actix_rt::test]
async fn an_invalid_room_is_refused_before_the_upgrade() {
    let hub = limited_hub();
    assert_eq!(
        Ws::refused_status(&hub.ws_url("/sync?room=bad%20room")).await,
        400
    );
    assert_eq!(
        Ws::refused_status(&hub.ws_url(&format!("/sync?room={}", "r".repeat(257)))).await,
        400
    );
    assert_eq!(Ws::refused_status(&hub.ws_url("/sync?room=")).await, 400);
}

#[actix_rt::test]
async fn one_clients_garbage_does_not_disturb_another() {
    let hub = limited_hub();
    let mut bad = Ws::connect(&hub.ws_url("/sync")).await;
    let mut good = Ws::connect(&hub.ws_url("/sync")).await;
    good.request(&json!({"type": "pull", "id": "s", "collections": ["todos"], "checkpoint": {}}))
        .await;
    for junk in ["", "[]", "null", "{}", "\u{0}", "{\"type\":1}"] {
        bad.send_text(junk).await;
        assert_eq!(bad.recv_json().await["type"], "error", "{junk:?}");
    }
    bad.send_binary(vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(bad.recv_json().await["code"], "PARSE_ERROR");
    let r = bad
        .request(
            &json!({"type": "push", "id": "ok", "collection": "todos", "changes": [
            {"operation": "insert", "documentId": "d", "document": {}}]}),
        )
        .await;
    assert_eq!(r["success"], true);
    assert_eq!(
        good.recv_json().await["changes"]["todos"][0]["documentId"],
        "d"
    );
}

/// What the HTTP layer refuses before any handler runs is JSON too.
#[actix_rt::test]
async fn http_errors_are_json_even_before_a_handler_runs() {
    let hub = limited_hub();
    let client = awc::Client::default();
    let url = hub.http_url("/sync/push?room=enc");
    let mut res = client
        .post(&url)
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Content-Encoding", "gzip"))
        .send_body("this is not gzip")
        .await
        .expect("response");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("a JSON body");
    // A sentence, not the decoder's description of its state.
    assert_eq!(
        body["error"], "Request body cut short, or not valid in its Content-Encoding",
        "{body}"
    );

    // An encoding the hub does not decode is refused, not read as if it were plain: `zstd` is
    // one the HTTP layer knows by name but was not built to decode.
    for encoding in ["bogus", "zstd", "gzip, br"] {
        let mut res = client
            .post(&url)
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Content-Encoding", encoding))
            .send_body(r#"{"type":"pull","id":"p","collections":["c"]}"#)
            .await
            .expect("response");
        assert_eq!(res.status().as_u16(), 400, "{encoding}");
        let body: Value = res.json().await.expect("a JSON body");
        assert_eq!(
            body["error"], "Unsupported Content-Encoding: send gzip, deflate, br or none",
            "{encoding}: {body}"
        );
    }

    // Over the body limit (a multiple of max_frame_bytes).
    let big = "x".repeat(20 << 20);
    let mut res = client
        .post(&url)
        .insert_header(("Content-Type", "application/json"))
        .send_body(big)
        .await
        .expect("response");
    assert_eq!(res.status().as_u16(), 413);
    let body: Value = res.json().await.expect("a JSON body");
    assert!(body["error"].is_string(), "{body}");

    let mut res = client
        .get(hub.http_url("/no/such/route"))
        .send()
        .await
        .expect("response");
    assert_eq!(res.status().as_u16(), 404);
    let body: Value = res.json().await.expect("a JSON body");
    assert!(body["error"].is_string(), "{body}");
}

/// `/sync/push` takes only pushes and `/sync/pull` only pulls: a proxy rule that exposes one
/// path exposes only that operation. The other message gets 400 `INVALID_MESSAGE` under its id
/// and is not acted on.
#[actix_rt::test]
async fn each_pocket_http_endpoint_answers_only_its_own_message() {
    let hub = limited_hub();
    let push = json!({"type": "push", "id": "w", "collection": "todos", "checkpoint": {},
                      "changes": [{"operation": "insert", "documentId": "d", "document": {}}]});
    let pull = json!({"type": "pull", "id": "r", "collections": ["todos"], "checkpoint": {}});
    let post = |path: &str, body: &Value| {
        let url = hub.http_url(path);
        let body = body.clone();
        async move { common::http("POST", &url, None, Some(&body)).await }
    };
    let (status, r) = post("/sync/pull?room=typed", &push).await;
    assert_eq!(
        (status, &r["code"], &r["id"]),
        (400, &json!("INVALID_MESSAGE"), &json!("w")),
        "{r}"
    );
    let (status, r) = post("/sync/push?room=typed", &pull).await;
    assert_eq!(
        (status, &r["code"], &r["id"]),
        (400, &json!("INVALID_MESSAGE"), &json!("r")),
        "{r}"
    );
    let auth = json!({"type": "auth", "id": "a", "token": "t"});
    assert_eq!(post("/sync/push?room=typed", &auth).await.0, 400);
    // Nothing was written by the push sent to the pull endpoint.
    let (status, r) = post("/sync/pull?room=typed", &pull).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["changes"]["todos"], json!([]), "{r}");
    let (status, r) = post("/sync/push?room=typed", &push).await;
    assert_eq!((status, &r["success"]), (200, &json!(true)), "{r}");
}

/// The head of the answer to a raw upgrade request with `Sec-WebSocket-Version: version`.
async fn upgrade_head(addr: std::net::SocketAddr, path: &str, version: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = common::within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    );
    common::within("send", tcp.write_all(request.as_bytes()))
        .await
        .expect("send");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = common::within("read", tcp.read(&mut chunk))
            .await
            .expect("read");
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// RFC 6455 4.2.2: an upgrade of another WebSocket version gets 426 naming version 13, on every
/// WebSocket path; version 13 is upgraded.
#[actix_rt::test]
async fn websocket_versions_other_than_13_get_426_on_every_path() {
    let hub = limited_hub();
    for path in ["/sync", "/ws", "/relay?channel=c", "/?channel=c"] {
        for version in ["8", "7", "12"] {
            let head = upgrade_head(hub.addr, path, version).await;
            assert!(
                head.starts_with("http/1.1 426"),
                "{path} v{version}: {head}"
            );
            assert!(
                head.contains("\r\nsec-websocket-version: 13\r\n"),
                "{path} v{version}: {head}"
            );
        }
        let head = upgrade_head(hub.addr, path, "13").await;
        assert!(head.starts_with("http/1.1 101"), "{path}: {head}");
    }
}

/// The server closes the TCP connection as soon as the close handshake is done, as RFC 6455
/// 7.1.1 asks of it, whoever started the handshake; its client need not wait, nor close first.
/// (Before, the HTTP layer waited up to a second for the client to close first.)
#[actix_rt::test]
async fn the_tcp_connection_ends_right_after_the_close_handshake() {
    use common::raw_ws::{RawFrame, RawWs};
    use std::time::Duration;
    // Far more than a loopback round trip, and well under the second the server used to wait.
    const PROMPTLY: Duration = Duration::from_millis(300);
    let hub = limited_hub();
    for path in ["/sync", "/ws", "/relay?channel=c"] {
        let mut ws = RawWs::connect(hub.addr, path).await;
        ws.send_frame(0x8, &1000u16.to_be_bytes()).await;
        let close = loop {
            match ws.next_frame(common::TIMEOUT).await {
                Some(RawFrame::Close(code)) => break code,
                Some(_) => continue,
                None => panic!("{path}: ended without a close frame"),
            }
        };
        assert_eq!(close, 1000, "{path}");
        assert_eq!(ws.next_frame(PROMPTLY).await, None, "{path}: still open");
    }
    // Closed by the server: a token it refuses (Pocket's 4001).
    let hub = common::tokens::auth_hub("close-secret", "close-admin", |_| {});
    let mut ws = RawWs::connect(hub.addr, "/sync?token=bad").await;
    assert_eq!(
        ws.next_frame(common::TIMEOUT).await,
        Some(RawFrame::Close(4001))
    );
    ws.send_frame(0x8, &4001u16.to_be_bytes()).await;
    assert_eq!(ws.next_frame(PROMPTLY).await, None, "refused: still open");
}
