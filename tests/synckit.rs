//! The SyncKit dialect against a real hub, in both framings.

mod common;

use common::synckit::{Kit, frame};
use common::{TestHub, Ws, http};
use futures_util::StreamExt;
use serde_json::{Value, json};
use synchub::auth::{Claims, unix_now};
use synchub_actors::synckit::SynckitSettings;
use tokio_tungstenite::tungstenite::Message;

fn hub_with_batch(ms: u64) -> TestHub {
    TestHub::start_with(|c| {
        let synckit: &mut SynckitSettings = c.dialects.get_mut().expect("synckit is a dialect");
        synckit.batch_ms = ms;
    })
}

#[actix_rt::test]
async fn binary_clients_get_acks_and_every_subscriber_gets_the_delta() {
    let hub = TestHub::start();
    let url = hub.ws_url("/ws");
    let (mut a, mut b) = (
        Kit::connect(&url, true).await,
        Kit::connect(&url, true).await,
    );
    let r = a.subscribe("doc-1").await;
    assert_eq!(
        (
            r["requestId"].clone(),
            r["state"].clone(),
            r["deltas"].clone()
        ),
        (json!("sub-1"), json!({}), json!([]))
    );
    b.subscribe("doc-1").await;
    a.send("delta", json!({"type": "set", "documentId": "doc-1", "field": "title", "value": "hi",
                          "clock": {"ca": 1}, "clientId": "ca", "timestamp": 5_000, "messageId": "m1"}))
        .await;
    let ack = a.expect("ack").await;
    assert_eq!(ack["messageId"], "m1");
    // The writer hears its own winning value too.
    for c in [&mut a, &mut b] {
        let d = c.expect("delta").await;
        assert_eq!(
            (
                d["documentId"].clone(),
                d["field"].clone(),
                d["value"].clone()
            ),
            (json!("doc-1"), json!("title"), json!("hi"))
        );
        assert_eq!(d["clock"]["ca"], 1);
        assert!(d["clientId"].is_string());
    }
    assert_eq!(b.state("doc-1").await, json!({"title": "hi"}));
}

#[actix_rt::test]
async fn json_clients_and_the_server_delta_form() {
    let hub = TestHub::start();
    let url = hub.ws_url("/ws");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Kit::connect(&url, false).await;
        c.subscribe("doc-j").await;
        clients.push(c);
    }
    clients[0]
        .send(
            "delta",
            json!({"id": "d1", "documentId": "doc-j", "delta": {"a": 1, "b": {"nested": [1, 2]}},
                              "vectorClock": {"x": 3}, "timestamp": 10}),
        )
        .await;
    let ack = clients[0].expect("ack").await;
    assert_eq!(ack["messageId"], "d1");
    for c in clients.iter_mut() {
        let mut got = c.deltas(300).await;
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            vec![
                ("a".into(), json!(1)),
                ("b".into(), json!({"nested": [1, 2]}))
            ]
        );
    }
    // A JSON message with a nested payload object is flattened.
    clients[1]
        .send(
            "sync_request",
            json!({"id": "flat", "payload": {"documentId": "doc-j"}}),
        )
        .await;
    let r = clients[1].expect("sync_response").await;
    assert_eq!(r["state"]["a"], 1);
}

#[actix_rt::test]
async fn lww_ties_deletes_nulls_and_unicode() {
    let hub = TestHub::start();
    let mut c = Kit::connect(&hub.ws_url("/ws"), false).await;
    c.subscribe("d").await;
    c.set("d", "f", json!("first"), 100, "bob", 1).await;
    // Equal timestamp, larger counter: wins.
    c.set("d", "f", json!("counter"), 100, "amy", 2).await;
    // Equal timestamp and counter, smaller writer id: loses; larger: wins.
    c.set("d", "f", json!("loser"), 100, "aaa", 2).await;
    c.set("d", "f", json!("writer"), 100, "bob", 2).await;
    // Older timestamp loses whatever its counter.
    c.set("d", "f", json!("old"), 99, "zed", 99).await;
    assert_eq!(c.state("d").await["f"], "writer");
    // Delete, then an older write cannot bring it back, a newer one re-creates it.
    c.set("d", "f", json!({"__deleted": true}), 200, "bob", 3)
        .await;
    assert_eq!(c.state("d").await, json!({}));
    c.set("d", "f", json!("zombie"), 150, "zed", 9).await;
    assert_eq!(c.state("d").await, json!({}));
    c.set("d", "f", json!(null), 300, "bob", 4).await;
    c.set(
        "d",
        "ключ ✓",
        json!({"deep": {"er": [true]}}),
        300,
        "bob",
        5,
    )
    .await;
    assert_eq!(
        c.state("d").await,
        json!({"f": null, "ключ ✓": {"deep": {"er": [true]}}})
    );
    // Deleting a field that never existed is fine.
    c.set("d", "ghost", json!({"__deleted": true}), 300, "bob", 6)
        .await;
    let deltas = c.deltas(200).await;
    assert!(
        deltas.contains(&("ghost".into(), json!({"__deleted": true}))),
        "the delete is broadcast like any other: {deltas:?}"
    );
    assert_eq!(c.state("d").await.get("ghost"), None);
}

#[actix_rt::test]
async fn a_losing_or_repeated_write_is_acked_but_not_broadcast() {
    let hub = hub_with_batch(0);
    let url = hub.ws_url("/ws");
    let (mut a, mut b) = (
        Kit::connect(&url, false).await,
        Kit::connect(&url, false).await,
    );
    a.subscribe("d").await;
    b.subscribe("d").await;
    a.set("d", "f", json!(1), 10, "a", 1).await;
    assert_eq!(b.deltas(200).await.len(), 1);
    a.set("d", "f", json!(1), 10, "a", 1).await;
    a.set("d", "f", json!(0), 5, "a", 1).await;
    b.silence(300).await;
    let (_, room) = common::get(&hub.http_url("/stats/rooms/synckit/d")).await;
    assert_eq!(room["seq"], 1);
}

#[actix_rt::test]
async fn writes_in_one_window_are_coalesced_to_the_latest() {
    // Wide enough that six acked writes fit in one window even on a loaded machine.
    let hub = hub_with_batch(1500);
    let url = hub.ws_url("/ws");
    let (mut a, mut b) = (
        Kit::connect(&url, true).await,
        Kit::connect(&url, true).await,
    );
    a.subscribe("w").await;
    b.subscribe("w").await;
    for i in 1..=5 {
        a.set("w", "n", json!(i), 100 + i, "a", i as u64).await;
    }
    a.set("w", "other", json!("x"), 200, "a", 6).await;
    let mut got = b.deltas(2000).await;
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        vec![("n".into(), json!(5)), ("other".into(), json!("x"))]
    );
}

#[actix_rt::test]
async fn unsubscribe_stops_deltas_and_ping_answers_pong() {
    let hub = TestHub::start();
    let url = hub.ws_url("/ws");
    let (mut a, mut b) = (
        Kit::connect(&url, true).await,
        Kit::connect(&url, true).await,
    );
    a.subscribe("u").await;
    b.subscribe("u").await;
    b.send("unsubscribe", json!({"documentId": "u"})).await;
    b.send("ping", json!({})).await;
    let pong = b.expect("pong").await;
    assert!(pong["id"].is_string());
    a.set("u", "f", json!(1), 1, "a", 1).await;
    b.silence(300).await;
    // A client's ack of a broadcast is accepted silently.
    b.send("ack", json!({"messageId": "whatever"})).await;
    b.silence(100).await;
}

#[actix_rt::test]
async fn malformed_frames_get_synckit_errors_and_the_socket_goes_on() {
    let hub = TestHub::start_with(|c| c.limits.max_frame_bytes = 2048);
    let mut c = Kit::connect(&hub.ws_url("/ws"), true).await;
    let ok = frame(0x30, 1, b"{}");
    let mut bad_len = ok.clone();
    bad_len[12] = 50;
    for bad in [
        ok[..10].to_vec(),
        frame(0x77, 1, b"{}"),
        bad_len,
        frame(0x10, 1, b"{nope"),
        vec![],
    ] {
        c.raw(Message::Binary(bad.into())).await;
        let e = c.expect("error").await;
        assert_eq!(e["error"], "Invalid message format");
    }
    c.raw(Message::Binary(ok.into())).await;
    c.expect("pong").await;
    let cases = [
        (
            "sync_response",
            json!({"documentId": "d"}),
            "Invalid message type: sync_response",
        ),
        (
            "subscribe",
            json!({"documentId": "bad id"}),
            "Invalid document ID",
        ),
        ("subscribe", json!({}), "Invalid document ID"),
        (
            "delta",
            json!({"documentId": "d", "delta": {}}),
            "Invalid delta message: missing or empty delta",
        ),
        (
            "delta",
            json!({"documentId": "d"}),
            "Invalid delta message: missing or empty delta",
        ),
    ];
    for (k, fields, message) in cases {
        c.send(k, fields).await;
        assert_eq!(c.expect("error").await["error"], message, "{k}");
    }
    c.send("ping", json!({"pad": "x".repeat(3000)})).await;
    let e = c.expect("error").await;
    assert!(
        e["error"]
            .as_str()
            .expect("msg")
            .starts_with("Message too large ("),
        "{e}"
    );
    // JSON text switches the reply framing; binary switches it back.
    let mut j = Kit::connect(&hub.ws_url("/ws"), false).await;
    j.raw(Message::Text(r#"{"type":"ping","timestamp":1}"#.into()))
        .await;
    assert_eq!(j.expect("error").await["error"], "Invalid message format");
    j.raw(Message::Text(
        r#"{"type":"nope","id":"1","timestamp":1}"#.into(),
    ))
    .await;
    assert_eq!(
        j.expect("error").await["error"],
        "Invalid message type: nope"
    );
    j.send("ping", json!({})).await;
    j.expect("pong").await;
    j.binary = true;
    j.send("ping", json!({})).await;
    j.expect("pong").await;
}

const SECRET: &str = "kit-secret";

fn auth_hub(dev_login: bool) -> TestHub {
    common::tokens::auth_hub(SECRET, "", |c| c.auth.dev_login = dev_login)
}

fn token(sub: &str, read: &[&str], write: &[&str], typ: Option<&str>) -> String {
    let claims = Claims {
        typ: typ.map(str::to_owned),
        ..common::tokens::claims(sub, read, write, 600)
    };
    common::tokens::sign(SECRET, &claims)
}

async fn closed_with(c: &mut Kit) -> (u16, String) {
    loop {
        match tokio::time::timeout(common::TIMEOUT, c.ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn auth_off_admits_everyone_and_auth_confirms() {
    let hub = TestHub::start();
    let mut c = Kit::connect(&hub.ws_url("/ws"), true).await;
    c.send("auth", json!({})).await;
    let ok = c.expect("auth_success").await;
    assert!(ok["userId"].is_string());
    assert_eq!(ok["permissions"]["isAdmin"], true);
    c.send("auth", json!({"token": "anything"})).await;
    c.expect("auth_success").await;
    c.subscribe("open").await;
}

#[actix_rt::test]
async fn auth_required_flow_and_permissions() {
    let hub = auth_hub(false);
    let url = hub.ws_url("/ws");
    // Before auth: document messages are refused.
    let mut c = Kit::connect(&url, true).await;
    c.send("subscribe", json!({"documentId": "d"})).await;
    assert_eq!(c.expect("error").await["error"], "Not authenticated");
    // A token-less auth is refused and closes 1008.
    c.send("auth", json!({})).await;
    assert_eq!(c.expect("error").await["error"], "Authentication required");
    assert_eq!(
        closed_with(&mut c).await,
        (1008, "Authentication required".into())
    );
    // A bad token: auth_error, then 1008.
    let mut c = Kit::connect(&url, true).await;
    c.send(
        "auth",
        json!({"token": token("eve", &["*"], &["*"], Some("refresh"))}),
    )
    .await;
    assert_eq!(
        c.expect("auth_error").await["error"],
        "Authentication failed"
    );
    assert_eq!(
        closed_with(&mut c).await,
        (1008, "Authentication failed".into())
    );
    // A good token: auth_success with the user and permissions.
    let mut c = Kit::connect(&url, false).await;
    c.send(
        "auth",
        json!({"token": token("amy", &["pub-*"], &["mine"], None)}),
    )
    .await;
    let ok = c.expect("auth_success").await;
    assert_eq!(ok["userId"], "amy");
    assert_eq!(
        ok["permissions"],
        json!({"canRead": ["pub-*"], "canWrite": ["mine"], "isAdmin": false})
    );
    c.subscribe("pub-1").await;
    c.subscribe("mine").await;
    c.send("subscribe", json!({"documentId": "secret"})).await;
    assert_eq!(c.expect("error").await["error"], "Permission denied");
    c.send(
        "delta",
        json!({"documentId": "pub-1", "field": "f", "value": 1, "messageId": "x"}),
    )
    .await;
    assert_eq!(c.expect("error").await["error"], "Permission denied");
    c.set("mine", "f", json!(1), 1, "amy", 1).await;
    // A token at the upgrade authenticates at once; a bad one is refused before it.
    let t = token("amy", &["*"], &[], None);
    let mut c = Kit::connect(&format!("{url}?token={t}"), true).await;
    c.subscribe("anything").await;
    assert_eq!(
        Ws::refused_status(&format!("{url}?token=garbage")).await,
        401
    );
}

#[actix_rt::test]
async fn auth_http_endpoints() {
    let hub = auth_hub(true);
    let access = token("amy", &["*"], &[], None);
    let refresh = token("amy", &["*"], &["w"], Some("refresh"));
    let post = |path: &str, body: Value| {
        let url = hub.http_url(path);
        async move { http("POST", &url, None, Some(&body)).await }
    };
    assert_eq!(post("/auth/verify", json!({})).await.0, 400);
    let (s, v) = post("/auth/verify", json!({"token": access})).await;
    assert_eq!(
        (s, v["valid"].clone(), v["userId"].clone()),
        (200, json!(true), json!("amy"))
    );
    assert!(v["expiresAt"].as_i64().expect("exp") > unix_now());
    // A refresh token is not an access token.
    assert_eq!(
        post("/auth/verify", json!({"token": refresh})).await.1,
        json!({"valid": false})
    );
    assert_eq!(
        post("/auth/verify", json!({"token": "junk"})).await.1,
        json!({"valid": false})
    );

    let (s, me) = http("GET", &hub.http_url("/auth/me"), Some(&access), None).await;
    assert_eq!((s, me["userId"].clone()), (200, json!("amy")));
    assert_eq!(me["permissions"]["canRead"], json!(["*"]));
    assert_eq!(
        http("GET", &hub.http_url("/auth/me"), None, None).await.0,
        401
    );
    assert_eq!(
        http("GET", &hub.http_url("/auth/me"), Some(&refresh), None)
            .await
            .0,
        401
    );

    assert_eq!(post("/auth/refresh", json!({})).await.0, 400);
    assert_eq!(
        post("/auth/refresh", json!({"refreshToken": access}))
            .await
            .0,
        401
    );
    let (s, pair) = post("/auth/refresh", json!({"refreshToken": refresh})).await;
    assert_eq!(s, 200);
    let (_, v) = post("/auth/verify", json!({"token": pair["accessToken"]})).await;
    assert_eq!(v["valid"], true);
    let (_, me) = http(
        "GET",
        &hub.http_url("/auth/me"),
        pair["accessToken"].as_str(),
        None,
    )
    .await;
    assert_eq!(
        me["permissions"]["canWrite"],
        json!(["w"]),
        "refresh keeps the permissions"
    );

    assert_eq!(post("/auth/login", json!({"email": "a@b"})).await.0, 400);
    let (s, login) = post("/auth/login", json!({"email": "a@b", "password": "x"})).await;
    assert_eq!(s, 200);
    let mut c = Kit::connect(&hub.ws_url("/ws"), true).await;
    c.send("auth", json!({"token": login["accessToken"]})).await;
    assert_eq!(c.expect("auth_success").await["userId"], "a@b");
    // Without dev_login there is no login endpoint.
    let plain = auth_hub(false);
    let (s, _) = http(
        "POST",
        &plain.http_url("/auth/login"),
        None,
        Some(&json!({"email": "a", "password": "b"})),
    )
    .await;
    assert_eq!(s, 404);
}
