//! The relay dialect against a real hub.

mod common;

use common::{Lcg, TestHub, Ws, get};
use serde_json::{Value, json};
use synchub_actors::relay::RelaySettings;

fn ch(table: &str, pk: &str, cid: &str, val: Value, cv: i64, cl: i64, site: &str) -> Value {
    json!([table, pk, cid, val, cv, 7, site, cl, 0])
}

fn update(changes: Vec<Value>) -> Value {
    json!({"type": "update", "changes": changes, "version": 3, "siteId": "client", "channel": "x"})
}

async fn connect(url: &str) -> (Ws, Value) {
    let mut ws = Ws::connect(url).await;
    let hello = ws.recv_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    (ws, hello)
}

/// Pulls everything after `version`, following the pages; returns the changes and the versions.
async fn pull_all(ws: &mut Ws, version: u64, room_seq: u64) -> (Vec<Value>, Vec<u64>) {
    ws.send_json(&json!({"type": "pull", "version": version, "siteId": "c", "channel": "x"}))
        .await;
    let (mut changes, mut versions) = (Vec::new(), Vec::new());
    loop {
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "update", "{m}");
        changes.extend(m["changes"].as_array().expect("changes").iter().cloned());
        let v = m["version"].as_u64().expect("version");
        versions.push(v);
        if v == room_seq {
            return (changes, versions);
        }
    }
}

#[actix_rt::test]
async fn connected_comes_first_on_both_paths() {
    let hub = TestHub::start();
    let (_, a) = connect(&hub.ws_url("/relay?channel=c1")).await;
    assert_eq!(a["channel"], "c1");
    assert_eq!(a["version"], 0);
    let site = a["siteId"].as_str().expect("site id");
    assert_eq!(site.len(), 32);
    assert!(site.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_, b) = connect(&hub.ws_url("/?channel=c1")).await;
    assert_eq!(b, a);
    let (_, d) = connect(&hub.ws_url("/relay")).await;
    assert_eq!(d["channel"], "default");
    assert_eq!(
        Ws::refused_status(&hub.ws_url("/relay?channel=no%20way")).await,
        400
    );
    // Without an upgrade, `/` describes the hub.
    let (status, info) = get(&hub.http_url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(info["endpoints"]["relay"], "/relay");
}

#[actix_rt::test]
async fn ack_to_the_sender_update_to_the_others() {
    let hub = TestHub::start();
    let url = hub.ws_url("/relay?channel=todo");
    let (mut a, _) = connect(&url).await;
    let (mut b, _) = connect(&url).await;
    let (mut other, _) = connect(&hub.ws_url("/relay?channel=elsewhere")).await;
    a.send_json(&update(vec![
        ch("todos", "1", "title", json!("milk"), 1, 1, "site-a"),
        ch("todos", "1", "done", json!(0), 1, 1, "site-a"),
    ]))
    .await;
    let ack = a.recv_json().await;
    let (_, hello) = connect(&url).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "siteId": hello["siteId"], "version": 2, "channel": "todo"})
    );
    assert_eq!(hello["version"], 2);
    let up = b.recv_json().await;
    assert_eq!(
        (
            up["type"].clone(),
            up["version"].clone(),
            up["siteId"].clone()
        ),
        (json!("update"), json!(2), hello["siteId"].clone())
    );
    // db_version is the hub's sequence number; site_id stays the origin's.
    assert_eq!(
        up["changes"],
        json!([
            ["todos", "1", "title", "milk", 1, 1, "site-a", 1, 0],
            ["todos", "1", "done", 0, 1, 2, "site-a", 1, 0]
        ])
    );
    a.expect_silence(300).await;
    other.expect_silence(100).await;
    // A duplicate is a no-op: acked at the same version, nothing relayed.
    a.send_json(&update(vec![ch(
        "todos",
        "1",
        "title",
        json!("milk"),
        1,
        1,
        "site-a",
    )]))
    .await;
    assert_eq!(a.recv_json().await["version"], 2);
    // A losing change is not relayed either; a winning one is.
    a.send_json(&update(vec![
        ch("todos", "1", "title", json!("zzz"), 0, 1, "site-a"),
        ch("todos", "1", "title", json!("eggs"), 2, 1, "site-b"),
    ]))
    .await;
    assert_eq!(a.recv_json().await["version"], 3);
    let up = b.recv_json().await;
    assert_eq!(
        up["changes"],
        json!([["todos", "1", "title", "eggs", 2, 3, "site-b", 1, 0]])
    );
    b.expect_silence(200).await;
}

/// Changes that fight over the same cells in every way the rules distinguish.
fn contested_changes() -> Vec<Value> {
    vec![
        ch("t", "1", "a", json!("x"), 1, 1, "s1"),
        ch("t", "1", "a", json!("y"), 1, 1, "s2"),
        ch("t", "1", "a", json!(5), 2, 1, "s3"),
        ch("t", "1", "a", json!(null), 1, 3, "s4"),
        ch("t", "1", "a", json!("x"), 1, 1, "s5"),
        ch("t", "1", "-1", json!(null), 1, 2, "s2"),
        ch("t", "1", "-1", json!(null), 1, 2, "s9"),
        ch("t", "2", "b", json!({"k": [1]}), 4, 1, "s1"),
        ch("t", "2", "b", json!("str"), 4, 1, "s2"),
        ch("t", "2", "b", json!(9.5), 4, 1, "s3"),
        ch("u", "2", "b", json!(1), 1, 1, "s1"),
        ch("u", "2", "b", json!(1), 1, 1, "s1"),
        // A delete of the row's second life, after its third began (the cl = 3 column above):
        // stale, whatever its column version.
        ch("t", "1", "-1", json!(null), 5, 2, "s7"),
        // Integers and floats past 2^53, which a float comparison calls equal.
        ch("n", "1", "v", json!(9_007_199_254_740_993_i64), 1, 1, "s1"),
        ch(
            "n",
            "1",
            "v",
            json!(9_007_199_254_740_993.0_f64),
            1,
            1,
            "s2",
        ),
        ch("n", "2", "v", json!(u64::MAX), 1, 1, "s1"),
        ch(
            "n",
            "2",
            "v",
            json!(18_446_744_073_709_551_615.0_f64),
            1,
            1,
            "s2",
        ),
        ch("n", "3", "v", json!(i64::MIN), 1, 1, "s1"),
        ch(
            "n",
            "3",
            "v",
            json!(-9_223_372_036_854_775_808.0_f64),
            1,
            1,
            "s2",
        ),
    ]
}

#[actix_rt::test]
async fn every_order_of_arrival_converges_to_one_state_and_digest() {
    let hub = TestHub::start();
    let mut rng = Lcg(42);
    let mut digests = Vec::new();
    let mut states = Vec::new();
    for round in 0..24 {
        let mut changes = contested_changes();
        rng.shuffle(&mut changes);
        let channel = format!("perm-{round}");
        let (mut ws, _) = connect(&hub.ws_url(&format!("/relay?channel={channel}"))).await;
        // Sometimes all at once, sometimes one message per change.
        if round % 2 == 0 {
            ws.send_json(&update(changes)).await;
            ws.recv_json().await;
        } else {
            for c in changes {
                ws.send_json(&update(vec![c])).await;
                assert_eq!(ws.recv_json().await["type"], "ack");
            }
        }
        let (_, room) = get(&hub.http_url(&format!("/stats/rooms/relay/{channel}"))).await;
        digests.push(room["digest"].clone());
        let seq = room["seq"].as_u64().expect("seq");
        let (current, _) = pull_all(&mut ws, 0, seq).await;
        // The winners, without the fields that depend on arrival (db_version) or on which of
        // two equal writes came first (site_id, seq).
        let mut cells: Vec<Value> = current
            .iter()
            .map(|c| json!([c[0], c[1], c[2], c[3], c[4], c[7]]))
            .collect();
        cells.sort_by_key(|c| c.to_string());
        states.push(cells);
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "digests differ: {digests:?}"
    );
    assert!(states.windows(2).all(|w| w[0] == w[1]), "states differ");
    assert_eq!(
        states[0],
        vec![
            json!(["n", "1", "v", 9_007_199_254_740_993_i64, 1, 1]),
            json!(["n", "2", "v", 18_446_744_073_709_551_616.0_f64, 1, 1]),
            json!(["n", "3", "v", i64::MIN, 1, 1]),
            // The row's delete ended when its next life's column arrived.
            json!(["t", "1", "a", null, 1, 3]),
            json!(["t", "2", "b", {"k": [1]}, 4, 1]),
            json!(["u", "2", "b", 1, 1, 1]),
        ]
    );
}

#[actix_rt::test]
async fn pull_pages_only_grow_and_skip_superseded_changes() {
    let hub = TestHub::start_with(|c| {
        let relay: &mut RelaySettings = c.dialects.get_mut().expect("relay is a dialect");
        relay.max_changes_per_message = 3;
    });
    let (mut ws, _) = connect(&hub.ws_url("/relay?channel=pages")).await;
    for i in 0..10 {
        ws.send_json(&update(vec![ch(
            "t",
            &i.to_string(),
            "v",
            json!(i),
            1,
            1,
            "s",
        )]))
        .await;
        ws.recv_json().await;
    }
    // Overwrite row 0: its first change (seq 1) is no longer the current winner.
    ws.send_json(&update(vec![ch("t", "0", "v", json!(100), 2, 1, "s")]))
        .await;
    assert_eq!(ws.recv_json().await["version"], 11);
    let (changes, versions) = pull_all(&mut ws, 0, 11).await;
    assert_eq!(changes.len(), 10);
    assert!(changes.iter().all(|c| c[5] != 1), "superseded change sent");
    assert_eq!(versions, vec![4, 7, 10, 11]);
    let (changes, versions) = pull_all(&mut ws, 5, 11).await;
    let seqs: Vec<u64> = changes.iter().map(|c| c[5].as_u64().expect("n")).collect();
    assert_eq!(seqs, [6, 7, 8, 9, 10, 11]);
    assert_eq!(versions, vec![8, 11]);
    // Caught up: one empty update at the room's version.
    let (changes, versions) = pull_all(&mut ws, 11, 11).await;
    assert!(changes.is_empty());
    assert_eq!(versions, vec![11]);
}

#[actix_rt::test]
async fn errors_keep_the_socket_open() {
    let hub = TestHub::start();
    let (mut ws, _) = connect(&hub.ws_url("/relay?channel=err")).await;
    for (frame, code) in [
        ("{oops", "PARSE_ERROR"),
        (r#"{"type":"dance"}"#, "UNKNOWN_MESSAGE"),
        (r#"{"changes":[]}"#, "INVALID_MESSAGE"),
        (
            r#"{"type":"update","changes":[["t","1"]]}"#,
            "INVALID_MESSAGE",
        ),
        (r#"{"type":"update","changes":{}}"#, "INVALID_MESSAGE"),
        (r#"{"type":"pull","version":"x"}"#, "INVALID_MESSAGE"),
    ] {
        ws.send_text(frame).await;
        let e = ws.recv_json().await;
        assert_eq!(
            (e["type"].clone(), e["code"].clone(), e["channel"].clone()),
            (json!("error"), json!(code), json!("err")),
            "{frame}"
        );
        assert!(e["message"].is_string());
    }
    // JSON in a binary frame is accepted.
    ws.send_binary(
        update(vec![ch("t", "1", "c", json!(1), 1, 1, "s")])
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(ws.recv_json().await["type"], "ack");
}

#[actix_rt::test]
async fn site_id_and_data_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::test_config(dir.path());
    let hub = TestHub::start_in(dir, config.clone());
    let (mut ws, hello) = connect(&hub.ws_url("/relay?channel=keep")).await;
    ws.send_json(&update(vec![ch("t", "1", "c", json!("v"), 1, 1, "s")]))
        .await;
    ws.recv_json().await;
    let (_, before) = get(&hub.http_url("/stats/rooms/relay/keep")).await;
    drop(ws);
    let dir = hub.stop();
    let hub = TestHub::start_in(dir, config);
    let (mut ws, again) = connect(&hub.ws_url("/relay?channel=keep")).await;
    assert_eq!(again["siteId"], hello["siteId"]);
    assert_eq!(again["version"], 1);
    let (_, after) = get(&hub.http_url("/stats/rooms/relay/keep")).await;
    assert_eq!(after["digest"], before["digest"]);
    let (changes, _) = pull_all(&mut ws, 0, 1).await;
    assert_eq!(changes, vec![json!(["t", "1", "c", "v", 1, 1, "s", 1, 0])]);
}

#[actix_rt::test]
async fn auth_is_checked_before_the_upgrade() {
    use synchub::auth::{Claims, mint, unix_now};
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some("relay-secret".into());
    });
    let url = hub.ws_url("/relay?channel=team");
    assert_eq!(Ws::refused_status(&url).await, 401);
    assert_eq!(Ws::refused_status(&format!("{url}&token=bad")).await, 401);
    let tok = |read: &[&str], write: &[&str]| {
        let claims = Claims {
            sub: Some("u".into()),
            exp: unix_now() + 60,
            permissions: Some(synchub_actors::Permissions {
                can_read: read.iter().map(|s| s.to_string()).collect(),
                can_write: write.iter().map(|s| s.to_string()).collect(),
                is_admin: false,
            }),
            ..Claims::default()
        };
        mint("relay-secret", &claims).expect("mint")
    };
    assert_eq!(
        Ws::refused_status(&format!("{url}&token={}", tok(&["other"], &[]))).await,
        403
    );
    let (mut reader, _) = connect(&format!("{url}&token={}", tok(&["team"], &[]))).await;
    reader
        .send_json(&update(vec![ch("t", "1", "c", json!(1), 1, 1, "s")]))
        .await;
    assert_eq!(reader.recv_json().await["code"], "FORBIDDEN");
    let (mut writer, _) = connect(&format!("{url}&token={}", tok(&[], &["team"]))).await;
    writer
        .send_json(&update(vec![ch("t", "1", "c", json!(1), 1, 1, "s")]))
        .await;
    assert_eq!(writer.recv_json().await["type"], "ack");
    assert_eq!(reader.recv_json().await["type"], "update");
}

#[actix_rt::test]
async fn an_expiring_token_closes_with_4009_unless_refreshed_in_band() {
    use synchub::auth::{Claims, mint, unix_now};
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some("relay-secret".into());
        c.auth.leeway_s = 0;
    });
    let tok = |ttl: i64| {
        let claims = Claims {
            sub: Some("u".into()),
            exp: unix_now() + ttl,
            permissions: Some(synchub_actors::Permissions::admin()),
            ..Claims::default()
        };
        mint("relay-secret", &claims).expect("mint")
    };
    let url = hub.ws_url(&format!("/relay?channel=exp&token={}", tok(2)));
    let (mut lapsing, _) = connect(&url).await;
    let (mut refreshed, _) = connect(&url).await;
    refreshed
        .send_json(&json!({"type": "auth", "token": "junk"}))
        .await;
    assert_eq!(refreshed.recv_json().await["code"], "FORBIDDEN");
    refreshed
        .send_json(&json!({"type": "auth", "token": tok(600)}))
        .await;
    let closed = lapsing.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4009, "Token expired")
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    refreshed
        .send_json(&update(vec![ch("t", "1", "c", json!(1), 1, 1, "s")]))
        .await;
    assert_eq!(refreshed.recv_json().await["type"], "ack");
}

/// A client that sends its first frame in the same write as its handshake, before the answer:
/// the frame arrives with the handshake and is handled once the session has the connection.
#[actix_rt::test]
async fn a_frame_sent_with_the_handshake_is_answered() {
    use common::raw_ws::{RawFrame, RawWs, masked_frame};
    let hub = TestHub::start();
    let pull = json!({"type": "pull", "version": 0}).to_string();
    let mut ws = RawWs::connect_sending(
        hub.addr,
        "/relay?channel=early",
        &masked_frame(0x1, pull.as_bytes()),
    )
    .await;
    let mut types = Vec::new();
    while types.len() < 2 {
        let Some(RawFrame::Text(t)) = ws.next_frame(common::TIMEOUT).await else {
            panic!("the connection ended after {types:?}");
        };
        let v: Value = serde_json::from_str(&t).expect("json");
        types.push(v["type"].as_str().expect("type").to_owned());
    }
    assert_eq!(types, ["connected", "update"]);
}

/// An upgrade asked of a route that has no socket gets that route's own answer, and the
/// connection closes after it.
#[actix_rt::test]
async fn an_upgrade_of_a_route_without_a_socket_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start();
    let mut tcp = tokio::net::TcpStream::connect(hub.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        hub.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    common::within("the answer and the end", tcp.read_to_end(&mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("head") + 4..];
    let health: Value = serde_json::from_str(body).expect("json");
    assert_eq!(health["status"], "healthy", "{health}");
}
