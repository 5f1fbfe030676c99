//! Admin actions over HTTP against a real hub: the session listing, closing a session,
//! publishing into a room in each dialect, the ten-minute history and the dashboard's files.

mod common;

use std::time::Duration;

use common::pocket::{change, pull, push, push_docs};
use common::raw_ws::RawWs;
use common::synckit::Kit;
use common::{TestHub, Ws, http, relay_write_big, within};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";

fn hub() -> TestHub {
    TestHub::start_with(|c| c.auth.admin_token = Some(ADMIN.into()))
}

async fn admin(method: &str, hub: &TestHub, path: &str, body: Option<&Value>) -> (u16, Value) {
    http(method, &hub.http_url(path), Some(ADMIN), body).await
}

/// Publishes `message` into `room` (`<namespace>/<room>`) as the operator.
async fn publish(hub: &TestHub, room: &str, message: &Value) -> (u16, Value) {
    let path = format!("/admin/rooms/{room}/publish");
    admin("POST", hub, &path, Some(message)).await
}

/// The hub's sessions, once `ready` holds for them (sessions register as they start).
async fn sessions_when(hub: &TestHub, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    within("the session listing", async {
        loop {
            let (status, body) = admin("GET", hub, "/admin/sessions", None).await;
            assert_eq!(status, 200, "{body}");
            let list = body["sessions"].as_array().expect("sessions").clone();
            if ready(&list) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn of_dialect<'a>(list: &'a [Value], dialect: &str) -> &'a Value {
    list.iter()
        .find(|s| s["dialect"] == dialect)
        .unwrap_or_else(|| panic!("no {dialect} session in {list:?}"))
}

async fn relay_member(hub: &TestHub, channel: &str) -> Ws {
    let mut ws = Ws::connect(&hub.ws_url(&format!("/relay?channel={channel}"))).await;
    assert_eq!(ws.recv_json().await["type"], "connected");
    ws
}

#[actix_rt::test]
async fn sessions_are_listed_with_their_rooms_and_traffic_and_closed_on_request() {
    let hub = hub();
    let mut pocket = Ws::connect(&hub.ws_url("/sync?room=pr")).await;
    let ack = pocket.request(&push_docs("p1", &[("d1", 1)])).await;
    assert_eq!(ack["success"], true, "{ack}");
    let mut kit = Kit::connect(&hub.ws_url("/ws"), false).await;
    kit.subscribe("sd").await;
    let mut relay = relay_member(&hub, "rc").await;

    for token in [None, Some("wrong")] {
        let (status, _) = http("GET", &hub.http_url("/admin/sessions"), token, None).await;
        assert_eq!(status, 401);
        let (status, _) = http("DELETE", &hub.http_url("/admin/sessions/1"), token, None).await;
        assert_eq!(status, 401);
    }

    let list = sessions_when(&hub, |l| {
        l.len() == 3
            && l.iter()
                .all(|s| s["rooms"].as_array().is_some_and(|r| !r.is_empty()))
    })
    .await;
    for (dialect, room) in [("pocket", "pr"), ("synckit", "sd"), ("relay", "rc")] {
        let s = of_dialect(&list, dialect);
        assert_eq!(s["rooms"], json!([room]), "{s}");
        assert!(s["id"].is_u64(), "{s}");
        assert_eq!(s["user"], Value::Null, "auth is off: {s}");
        // Every session has been answered: by a push-response, a sync_response or `connected`.
        assert!(s["bytes_out"].as_u64().expect("bytes_out") > 0, "{s}");
        assert!(s["bytes_queued"].is_u64() && s["lag_ms"].is_u64(), "{s}");
        assert!(s["connected_at_ms"].as_u64().expect("connected_at") > 0);
    }
    let sent = push_docs("p1", &[("d1", 1)]).to_string().len() as u64;
    assert!(of_dialect(&list, "pocket")["bytes_in"].as_u64() >= Some(sent));

    // Closing the relay session: its client gets a policy close with the reason.
    let id = of_dialect(&list, "relay")["id"].as_u64().expect("id");
    let (status, body) = admin("DELETE", &hub, &format!("/admin/sessions/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 1008);
    let closed = relay.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "Closed by an administrator")
    );
    let list = sessions_when(&hub, |l| l.len() == 2).await;
    assert!(list.iter().all(|s| s["dialect"] != "relay"));
    let (status, _) = admin("DELETE", &hub, &format!("/admin/sessions/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = admin("DELETE", &hub, "/admin/sessions/abc", None).await;
    assert_eq!(status, 400);

    // The other sessions go on.
    let ack = pocket.request(&push_docs("p2", &[("d2", 1)])).await;
    assert_eq!(ack["success"], true, "{ack}");

    let (_, stats) = admin("GET", &hub, "/stats", None).await;
    assert_eq!(stats["admin_actions"]["close_session"], 1, "{stats}");
    assert!(stats["admin_actions"]["list_sessions"].as_u64() >= Some(2));
    assert_eq!(stats["connections"]["relay"]["connects"], 1);
    assert_eq!(stats["connections"]["relay"]["disconnects"], 1);
    let (_, metrics) = admin("GET", &hub, "/metrics", None).await;
    let text = metrics.as_str().expect("text");
    for line in [
        "synchub_admin_actions_total{action=\"close_session\"} 1",
        "synchub_connects_total{dialect=\"synckit\"} 1",
        "synchub_disconnects_total{dialect=\"relay\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

/// A client that stops reading shows bytes queued and a growing lag; one that reads has none.
#[actix_rt::test]
async fn a_client_that_stops_reading_shows_its_lag() {
    let hub = TestHub::start_with(|c| {
        c.auth.admin_token = Some(ADMIN.into());
        c.limits.max_outbound_bytes = 256 << 20;
        c.limits.max_messages_per_second = 100_000;
    });
    let _slow = RawWs::connect_with_buffer(hub.addr, "/relay?channel=lag", Some(4096)).await;
    let slow_id = sessions_when(&hub, |l| l.len() == 1).await[0]["id"].clone();
    let mut writer = relay_member(&hub, "lag").await;
    for i in 1..=200u64 {
        relay_write_big(&mut writer, i).await;
    }
    let list = sessions_when(&hub, |l| {
        l.iter()
            .any(|s| s["id"] == slow_id && s["lag_ms"].as_u64() >= Some(2_000))
    })
    .await;
    for s in &list {
        if s["id"] == slow_id {
            assert!(s["bytes_queued"].as_u64() > Some(1 << 20), "{s}");
        } else {
            assert_eq!(s["lag_ms"], 0, "the writer reads everything: {s}");
        }
    }
}

#[actix_rt::test]
async fn a_published_change_is_merged_and_broadcast_in_each_dialect() {
    let hub = hub();

    // Pocket: a member that pulled `todos` gets the published push as a broadcast.
    let mut pocket = Ws::connect(&hub.ws_url("/sync?room=pub")).await;
    let r = pocket
        .request(&pull("l1", &["todos"], json!({"global": 0}), None))
        .await;
    assert_eq!(r["type"], "pull-response");
    let message = push(
        "admin-1",
        "todos",
        vec![change("insert", "d1", json!({"title": "from ops"}))],
        json!({}),
    );
    let (status, body) = publish(&hub, "pocket/pub", &message).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["replies"][0]["type"], "push-response", "{body}");
    let bc = pocket.recv_json().await;
    assert!(
        bc["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("broadcast_")),
        "{bc}"
    );
    assert_eq!(bc["changes"]["todos"][0]["document"]["title"], "from ops");

    // SyncKit: a subscriber gets the field; `documentId`, `id` and `timestamp` are filled in.
    let mut kit = Kit::connect(&hub.ws_url("/ws"), false).await;
    kit.subscribe("doc").await;
    let delta = json!({"type": "delta", "delta": {"title": "from ops"}});
    let (status, body) = publish(&hub, "synckit/doc", &delta).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replies"][0]["type"], "ack", "{body}");
    let got = kit.expect("delta").await;
    assert_eq!(got["documentId"], "doc", "{got}");
    assert_eq!(
        (&got["field"], &got["value"]),
        (&json!("title"), &json!("from ops")),
        "{got}"
    );
    assert_eq!(kit.state("doc").await["title"], "from ops");
    let elsewhere = json!({"type": "delta", "documentId": "other", "delta": {"x": 1}});
    let (status, _) = publish(&hub, "synckit/doc", &elsewhere).await;
    assert_eq!(status, 400);

    // Relay: every member of the channel gets the update.
    let mut relay = relay_member(&hub, "chan").await;
    let update = json!({"type": "update", "changes": [["todo", "1", "title", "from ops", 1, 1, "ops", 1, 0]]});
    let (status, body) = publish(&hub, "relay/chan", &update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replies"][0]["type"], "ack", "{body}");
    let up = relay.recv_json().await;
    assert_eq!(up["type"], "update", "{up}");
    assert_eq!(up["changes"][0][3], "from ops", "{up}");

    // The dialect's own refusal comes back as a 400 with its error; no token, no publish.
    let bad = json!({"type": "update", "changes": {}});
    let (status, body) = publish(&hub, "relay/chan", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["replies"][0]["code"], "INVALID_MESSAGE", "{body}");
    let url = hub.http_url("/admin/rooms/relay/chan/publish");
    assert_eq!(http("POST", &url, None, Some(&update)).await.0, 401);
    assert_eq!(
        http("POST", &url, Some("wrong"), Some(&update)).await.0,
        401
    );
    let (status, _) = publish(&hub, "nope/chan", &update).await;
    assert_eq!(status, 404);
    relay.expect_silence(200).await;

    // The room's detail: the change, the member with its dialect, the digest.
    let (status, room) = admin(
        "GET",
        &hub,
        "/stats/rooms/relay/chan?detail=true&nodes=true",
        None,
    )
    .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["seq"], 1);
    assert!(room["digest"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(room["recent"][0]["seq"], 1, "{room}");
    assert_eq!(room["recent"][0]["change"][3], "from ops", "{room}");
    assert_eq!(room["members"][0]["dialect"], "relay", "{room}");
    assert_eq!(room["nodes"], json!([]), "a single node has no peers");

    let (_, stats) = admin("GET", &hub, "/stats", None).await;
    assert_eq!(
        stats["admin_actions"]["publish"], 3,
        "refusals are not counted: {stats}"
    );
}

#[actix_rt::test]
async fn history_and_room_rates_follow_live_writes() {
    let hub = hub();
    let (status, _) = http("GET", &hub.http_url("/stats/history"), None, None).await;
    assert_eq!(status, 401);
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=busy")).await;
    // Writes for a little over two seconds, reading the room's row once a second.
    let mut rates = Vec::new();
    for i in 0..25 {
        let ack = ws.request(&push_docs(&format!("p{i}"), &[("d", i)])).await;
        assert_eq!(ack["success"], true);
        if i % 10 == 9 {
            let (_, stats) = admin("GET", &hub, "/stats", None).await;
            let row = stats["rooms"]["list"]
                .as_array()
                .and_then(|l| l.iter().find(|r| r["room"] == "busy").cloned())
                .unwrap_or_else(|| panic!("no row for the room: {stats}"));
            assert_eq!(row["namespace"], "pocket");
            assert_eq!(row["sessions"], 1);
            assert!(
                row["idle_ms"].as_u64().is_some_and(|ms| ms < 5_000),
                "{row}"
            );
            rates.push(row["writes_per_s"].as_f64().expect("rate"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rates.iter().any(|r| *r > 0.0), "{rates:?}");

    let (status, h) = admin("GET", &hub, "/stats/history", None).await;
    assert_eq!(status, 200);
    assert_eq!(h["every_s"], 1);
    assert_eq!(h["keep"], 600);
    let samples = h["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{h}");
    assert!(
        samples
            .iter()
            .any(|s| s["changes_per_s"]["pocket"].as_f64() > Some(0.0)),
        "{h}"
    );
    assert!(
        samples
            .windows(2)
            .all(|w| w[0]["t"].as_i64() < w[1]["t"].as_i64())
    );
    let (_, stats) = admin("GET", &hub, "/stats", None).await;
    assert_eq!(stats["rates"]["sessions"]["pocket"], 1, "{stats}");
}

#[actix_rt::test]
async fn the_dashboard_is_served_from_the_binary_without_figures() {
    let hub = hub();
    let client = awc::Client::default();
    let mut page = client
        .get(hub.http_url("/dashboard"))
        .send()
        .await
        .expect("dashboard");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.body().await.expect("body");
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("/dashboard/app.js"), "{html}");
    // The page holds no figures of its own: without the token there is nothing in it to see.
    assert!(!html.contains(ADMIN));
    for asset in ["app.js", "app.css"] {
        let res = client
            .get(hub.http_url(&format!("/dashboard/{asset}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(res.status().as_u16(), 200, "{asset}");
    }
    let res = client
        .get(hub.http_url("/dashboard/secrets.txt"))
        .send()
        .await
        .expect("asset");
    assert_eq!(res.status().as_u16(), 404);
}
