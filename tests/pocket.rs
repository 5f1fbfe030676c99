//! The Pocket dialect against a real hub: push, pull, conflicts, broadcasts, HTTP transport.

mod common;

use common::pocket::{change, pull, push};
use common::{TestHub, Ws, http};
use serde_json::{Value, json};
use synchub_actors::pocket::{CollectionSettings, PocketSettings};

fn seqs(changes: &Value) -> Vec<u64> {
    changes
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["sequence"].as_u64().expect("sequence"))
        .collect()
}

#[actix_rt::test]
async fn push_is_acked_with_server_sequences_and_broadcast_to_the_other_client() {
    let hub = TestHub::start();
    let url = hub.ws_url("/sync?room=r1&nodeId=a");
    let (mut a, mut b) = (Ws::connect(&url).await, Ws::connect(&url).await);
    // Pulling subscribes b to the collection.
    let r = b
        .request(&pull("b1", &["todos"], json!({"global": 0}), None))
        .await;
    assert_eq!(r["type"], "pull-response");
    assert_eq!(r["changes"]["todos"], json!([]));
    assert_eq!(r["hasMore"], false);

    let changes = vec![
        change("insert", "d1", json!({"_id": "d1", "title": "one"})),
        change("insert", "d2", json!({"title": "two"})),
    ];
    let r = a
        .request(&push("p1", "todos", changes, json!({"global": 0})))
        .await;
    assert_eq!(r["type"], "push-response");
    assert_eq!(r["success"], true);
    assert!(r.get("conflicts").is_none());
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 2);
    assert_eq!(r["checkpoint"]["global"], 2);
    assert!(r["checkpoint"]["timestamp"].is_number());

    let bc = b.recv_json().await;
    assert_eq!(bc["type"], "pull-response");
    assert!(bc["id"].as_str().expect("id").starts_with("broadcast_"));
    assert_eq!(bc["hasMore"], false);
    // Sequence numbers are the server's, not the client's zeros.
    assert_eq!(seqs(&bc["changes"]["todos"]), [1, 2]);
    assert_eq!(
        bc["changes"]["todos"][1]["document"],
        json!({"_id": "d2", "title": "two"})
    );
    assert_eq!(bc["checkpoint"]["sequences"]["todos"], 2);
    // The sender hears nothing but its reply.
    a.expect_silence(300).await;
}

#[actix_rt::test]
async fn broadcasts_go_only_to_subscribers_of_the_collection_and_room() {
    let hub = TestHub::start();
    let mut a = Ws::connect(&hub.ws_url("/sync?room=r1")).await;
    let mut notes = Ws::connect(&hub.ws_url("/sync?room=r1")).await;
    let mut other_room = Ws::connect(&hub.ws_url("/sync?room=r2")).await;
    notes.request(&pull("n", &["notes"], json!({}), None)).await;
    other_room
        .request(&pull("o", &["todos"], json!({}), None))
        .await;
    let r = a
        .request(&push(
            "p",
            "todos",
            vec![change("insert", "x", json!({}))],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    notes.expect_silence(300).await;
    other_room.expect_silence(100).await;
    // Data never crosses rooms.
    let r = other_room
        .request(&pull("o2", &["todos"], json!({}), None))
        .await;
    assert_eq!(r["changes"]["todos"], json!([]));
}

#[actix_rt::test]
async fn pull_from_zero_from_a_checkpoint_and_in_pages() {
    let hub = TestHub::start();
    let mut c = Ws::connect(&hub.ws_url("/sync")).await;
    for i in 0..5 {
        let r = c
            .request(&push(
                &format!("p{i}"),
                "todos",
                vec![change("insert", &format!("d{i}"), json!({"n": i}))],
                json!({}),
            ))
            .await;
        assert_eq!(r["success"], true);
    }
    c.request(&push(
        "n",
        "notes",
        vec![change("insert", "n", json!({}))],
        json!({}),
    ))
    .await;
    let r = c
        .request(&pull("q0", &["todos", "notes"], json!({"global": 0}), None))
        .await;
    assert_eq!(seqs(&r["changes"]["todos"]), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&r["changes"]["notes"]), [6]);
    assert_eq!(
        r["checkpoint"]["sequences"],
        json!({"todos": 5, "notes": 6})
    );
    assert_eq!(r["checkpoint"]["global"], 5);
    // The code form of a checkpoint, per collection.
    let cp = json!({"id": "n_1", "sequences": {"todos": 3}, "timestamp": 1, "nodeId": "n"});
    let r = c.request(&pull("q1", &["todos"], cp, None)).await;
    assert_eq!(seqs(&r["changes"]["todos"]), [4, 5]);
    // Paging with hasMore, following the returned checkpoints.
    let mut cp = json!({"global": 0});
    let mut seen = Vec::new();
    for page in 0.. {
        let r = c
            .request(&pull(&format!("pg{page}"), &["todos"], cp.clone(), Some(2)))
            .await;
        seen.extend(seqs(&r["changes"]["todos"]));
        cp = r["checkpoint"].clone();
        if r["hasMore"] == false {
            break;
        }
        assert!(page < 5, "paging does not end");
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    // Caught up: nothing more, checkpoint at the room's sequence.
    let r = c.request(&pull("q2", &["todos"], cp, None)).await;
    assert_eq!(r["changes"]["todos"], json!([]));
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 6);
}

#[actix_rt::test]
async fn a_push_checkpoint_never_skips_changes_the_client_has_not_seen() {
    let hub = TestHub::start();
    let mut a = Ws::connect(&hub.ws_url("/sync")).await;
    let mut b = Ws::connect(&hub.ws_url("/sync")).await;
    a.request(&push(
        "a1",
        "todos",
        vec![change("insert", "x", json!({}))],
        json!({}),
    ))
    .await;
    // b has seen nothing: its push lands at 2, but its checkpoint must stay before 1.
    let r = b
        .request(&push(
            "b1",
            "todos",
            vec![change("insert", "y", json!({}))],
            json!({"global": 0}),
        ))
        .await;
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 0);
    let r = b
        .request(&pull("b2", &["todos"], r["checkpoint"].clone(), None))
        .await;
    assert_eq!(seqs(&r["changes"]["todos"]), [1, 2]);
    // a was caught up: it may move past its own change.
    let r = a
        .request(&push(
            "a2",
            "todos",
            vec![change("insert", "z", json!({}))],
            json!({"global": 2}),
        ))
        .await;
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 3);
}

#[actix_rt::test]
async fn resends_and_equal_writes_get_no_new_sequence_and_no_broadcast() {
    let hub = TestHub::start();
    let mut a = Ws::connect(&hub.ws_url("/sync")).await;
    let mut b = Ws::connect(&hub.ws_url("/sync")).await;
    b.request(&pull("s", &["todos"], json!({}), None)).await;
    let c = change("insert", "d", json!({"_rev": "1-a", "v": 1}));
    let r1 = a
        .request(&push("p1", "todos", vec![c.clone()], json!({})))
        .await;
    assert_eq!(r1["checkpoint"]["sequences"]["todos"], 1);
    b.recv_json().await;
    let r2 = a
        .request(&push("p2", "todos", vec![c], json!({"global": 1})))
        .await;
    assert_eq!(r2["success"], true);
    assert_eq!(r2["checkpoint"]["sequences"]["todos"], 1);
    b.expect_silence(300).await;
    let r = a.request(&pull("q", &["todos"], json!({}), None)).await;
    assert_eq!(seqs(&r["changes"]["todos"]), [1]);
}

#[actix_rt::test]
async fn deletes_keep_a_tombstone_that_reaches_everyone() {
    let hub = TestHub::start();
    let mut a = Ws::connect(&hub.ws_url("/sync")).await;
    let mut b = Ws::connect(&hub.ws_url("/sync")).await;
    b.request(&pull("s", &["todos"], json!({}), None)).await;
    a.request(&push(
        "p1",
        "todos",
        vec![change("insert", "d", json!({"t": 1}))],
        json!({}),
    ))
    .await;
    b.recv_json().await;
    let del =
        json!({"operation": "delete", "documentId": "d", "document": null, "timestamp": 5000});
    let r = a.request(&push("p2", "todos", vec![del], json!({}))).await;
    assert_eq!(r["success"], true);
    let bc = b.recv_json().await;
    let tomb = json!({"_id": "d", "_deleted": true, "_updatedAt": 5000});
    assert_eq!(bc["changes"]["todos"][0]["operation"], "delete");
    assert_eq!(bc["changes"]["todos"][0]["document"], tomb);
    let r = a.request(&pull("q", &["todos"], json!({}), None)).await;
    assert_eq!(r["changes"]["todos"][1]["document"], tomb);
    // Re-creating after the delete works.
    let r = a
        .request(&push(
            "p3",
            "todos",
            vec![change("insert", "d", json!({"t": 2, "_updatedAt": 6000}))],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    assert_eq!(
        b.recv_json().await["changes"]["todos"][0]["document"]["t"],
        2
    );
}

/// One hub, one collection per strategy through the per-collection override.
fn strategy_hub() -> TestHub {
    TestHub::start_with(|c| {
        let pocket: &mut PocketSettings = c.dialects.get_mut().expect("pocket is a dialect");
        pocket.conflict_strategy = "server-wins".parse().expect("a strategy");
        for (name, s) in [
            ("cw", "client-wins"),
            ("lww", "last-write-wins"),
            ("mg", "merge"),
        ] {
            pocket.collections.insert(
                name.into(),
                CollectionSettings {
                    conflict_strategy: s.parse().expect("a strategy"),
                },
            );
        }
    })
}

async fn seed(a: &mut Ws, b: &mut Ws, collection: &str) -> Value {
    b.request(&pull(
        &format!("s-{collection}"),
        &[collection],
        json!({}),
        None,
    ))
    .await;
    let stored = json!({"_id": "d", "_rev": "1-a", "_updatedAt": 10, "a": 1, "b": 1});
    let r = a
        .request(&push(
            &format!("seed-{collection}"),
            collection,
            vec![change("insert", "d", stored.clone())],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    b.recv_json().await;
    stored
}

#[actix_rt::test]
async fn server_wins_reports_the_conflict_and_broadcasts_nothing() {
    let hub = strategy_hub();
    let (mut a, mut b) = (
        Ws::connect(&hub.ws_url("/sync")).await,
        Ws::connect(&hub.ws_url("/sync")).await,
    );
    let stored = seed(&mut a, &mut b, "sw").await;
    let conflicting = json!({"_id": "d", "_rev": "1-b", "_updatedAt": 20, "a": 2});
    let r = a
        .request(&push(
            "p",
            "sw",
            vec![change("update", "d", conflicting)],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], false);
    assert_eq!(
        r["conflicts"],
        json!([{"documentId": "d", "serverDocument": stored}])
    );
    b.expect_silence(300).await;
    let r = a.request(&pull("q", &["sw"], json!({}), None)).await;
    assert_eq!(seqs(&r["changes"]["sw"]), [1]);
}

#[actix_rt::test]
async fn client_wins_replaces_the_stored_document() {
    let hub = strategy_hub();
    let (mut a, mut b) = (
        Ws::connect(&hub.ws_url("/sync")).await,
        Ws::connect(&hub.ws_url("/sync")).await,
    );
    seed(&mut a, &mut b, "cw").await;
    let older = json!({"_id": "d", "_rev": "1-b", "_updatedAt": 5, "a": 9});
    let r = a
        .request(&push(
            "p",
            "cw",
            vec![change("update", "d", older.clone())],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    assert_eq!(b.recv_json().await["changes"]["cw"][0]["document"], older);
}

#[actix_rt::test]
async fn last_write_wins_keeps_the_newer_document() {
    let hub = strategy_hub();
    let (mut a, mut b) = (
        Ws::connect(&hub.ws_url("/sync")).await,
        Ws::connect(&hub.ws_url("/sync")).await,
    );
    let stored = seed(&mut a, &mut b, "lww").await;
    let older = json!({"_id": "d", "_rev": "1-b", "_updatedAt": 5, "a": 9});
    let r = a
        .request(&push(
            "p1",
            "lww",
            vec![change("update", "d", older)],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], false);
    assert_eq!(r["conflicts"][0]["serverDocument"], stored);
    b.expect_silence(300).await;
    let newer = json!({"_id": "d", "_rev": "1-c", "_updatedAt": 50, "a": 7});
    let r = a
        .request(&push(
            "p2",
            "lww",
            vec![change("update", "d", newer.clone())],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    let bc = b.recv_json().await;
    assert_eq!(bc["changes"]["lww"][0]["document"], newer);
    assert_eq!(bc["changes"]["lww"][0]["sequence"], 2);
}

#[actix_rt::test]
async fn merge_combines_fields_and_counts_as_accepted() {
    let hub = strategy_hub();
    let (mut a, mut b) = (
        Ws::connect(&hub.ws_url("/sync")).await,
        Ws::connect(&hub.ws_url("/sync")).await,
    );
    seed(&mut a, &mut b, "mg").await;
    let incoming = json!({"_id": "d", "_rev": "1-b", "_updatedAt": 20, "b": 2, "c": 3});
    let r = a
        .request(&push(
            "p",
            "mg",
            vec![change("update", "d", incoming)],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    let doc = b.recv_json().await["changes"]["mg"][0]["document"].clone();
    assert_eq!(doc["a"], 1);
    assert_eq!(doc["b"], 2);
    assert_eq!(doc["c"], 3);
    assert_eq!(doc["_updatedAt"], 20);
}

#[actix_rt::test]
async fn ping_is_answered_with_pong_text() {
    let hub = TestHub::start();
    let mut c = Ws::connect(&hub.ws_url("/sync")).await;
    c.send_text("ping").await;
    assert_eq!(c.recv_text().await, "pong");
}

#[actix_rt::test]
async fn binary_frames_holding_json_are_accepted() {
    let hub = TestHub::start();
    let mut c = Ws::connect(&hub.ws_url("/sync")).await;
    let msg = pull("bin", &["todos"], json!({}), None);
    c.send_binary(msg.to_string().into_bytes()).await;
    let r = c.recv_json().await;
    assert_eq!(
        (r["type"].clone(), r["id"].clone()),
        (json!("pull-response"), json!("bin"))
    );
}

#[actix_rt::test]
async fn the_http_transport_answers_push_and_pull() {
    let hub = TestHub::start();
    let (status, health) = http("GET", &hub.http_url("/health"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=h")).await;
    ws.request(&pull("s", &["todos"], json!({}), None)).await;
    let body = push(
        "hp",
        "todos",
        vec![change("insert", "d", json!({"v": 1}))],
        json!({}),
    );
    let (status, r) = http(
        "POST",
        &hub.http_url("/sync/push?room=h"),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["type"], "push-response");
    assert_eq!(r["id"], "hp");
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 1);
    // WebSocket clients of the room hear HTTP pushes.
    assert_eq!(
        ws.recv_json().await["changes"]["todos"][0]["documentId"],
        "d"
    );
    let body = pull("hq", &["todos"], json!({"global": 0}), None);
    let (status, r) = http(
        "POST",
        &hub.http_url("/sync/pull?room=h"),
        None,
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&r["changes"]["todos"]), [1]);
    let (status, r) = http(
        "POST",
        &hub.http_url("/sync/pull?room=h"),
        None,
        Some(&json!({"type": "pull", "id": "x", "collections": 3})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("INVALID_MESSAGE"), json!("x"))
    );
}

#[actix_rt::test]
async fn pipelined_requests_are_answered_in_order() {
    let hub = TestHub::start();
    let mut c = Ws::connect(&hub.ws_url("/sync?room=order")).await;
    for i in 0..100 {
        c.send_json(&push(
            &format!("p{i}"),
            "todos",
            vec![change("insert", &format!("d{i}"), json!({"n": i}))],
            json!({"global": i}),
        ))
        .await;
        if i % 10 == 9 {
            c.send_json(&pull(&format!("q{i}"), &["todos"], json!({}), Some(1)))
                .await;
        }
    }
    let mut expected = Vec::new();
    for i in 0..100 {
        expected.push(format!("p{i}"));
        if i % 10 == 9 {
            expected.push(format!("q{i}"));
        }
    }
    let mut got = Vec::new();
    let mut last_cp = 0;
    while got.len() < expected.len() {
        let r = c.recv_json().await;
        if r["type"] == "push-response" {
            let cp = r["checkpoint"]["sequences"]["todos"].as_u64().expect("cp");
            assert!(cp >= last_cp, "checkpoints go backwards");
            last_cp = cp;
        }
        got.push(r["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(got, expected);
    assert_eq!(last_cp, 100);
}

/// Pocket's HTTP client builds `new URL('/sync/push', serverUrl)`, which drops `?room=`: the room
/// then comes from an `X-Pocket-Room` header or the token's `room` claim.
#[actix_rt::test]
async fn http_clients_name_their_room_without_the_query() {
    use common::tokens::{claims, sign};
    const SECRET: &str = "pocket-http-secret";
    let token_for = |room: &str| {
        let mut c = claims("pat", &["*"], &["*"], 600);
        c.room = Some(room.into());
        sign(SECRET, &c)
    };
    let pushed = |id: &str| {
        push(
            id,
            "todos",
            vec![change("insert", id, json!({"v": 1}))],
            json!({}),
        )
    };
    let in_room = |room: &str| format!("/sync?room={room}");
    let docs = |r: &Value| -> Vec<String> {
        r["changes"]["todos"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["documentId"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    // Development mode: the claim names the room; nothing is verified, nothing is granted.
    let hub = TestHub::start();
    let (status, _) = http(
        "POST",
        &hub.http_url("/sync/push"),
        Some(&token_for("from-token")),
        Some(&pushed("t1")),
    )
    .await;
    assert_eq!(status, 200);
    let client = awc::Client::default();
    let mut res = client
        .post(hub.http_url("/sync/push"))
        .insert_header(("X-Pocket-Room", "from-header"))
        .send_json(&pushed("h1"))
        .await
        .expect("response");
    assert_eq!(res.status().as_u16(), 200);
    let _: Value = res.json().await.expect("json");
    for (room, doc) in [("from-token", "t1"), ("from-header", "h1")] {
        let mut ws = Ws::connect(&hub.ws_url(&in_room(room))).await;
        let r = ws.request(&pull("p", &["todos"], json!({}), None)).await;
        assert_eq!(docs(&r), [doc], "{room}");
    }
    // Nothing went to the default room.
    let mut ws = Ws::connect(&hub.ws_url("/sync")).await;
    let r = ws.request(&pull("p", &["todos"], json!({}), None)).await;
    assert!(docs(&r).is_empty(), "{r}");

    // With auth required, the claim of a verified token.
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(SECRET.into());
    });
    let token = token_for("signed-room");
    let (status, _) = http(
        "POST",
        &hub.http_url("/sync/push"),
        Some(&token),
        Some(&pushed("s1")),
    )
    .await;
    assert_eq!(status, 200);
    let mut ws = Ws::connect(&hub.ws_url(&format!("/sync?room=signed-room&token={token}"))).await;
    let r = ws.request(&pull("p", &["todos"], json!({}), None)).await;
    assert_eq!(docs(&r), ["s1"]);
}

/// The repro of a lost change: A is sent B's change as a broadcast, drops it as Pocket's engine
/// does, and pushes with its own checkpoint. The push reply must keep A at its own position, so
/// its next pull brings B's change.
#[actix_rt::test]
async fn a_push_reply_covers_only_what_the_client_had() {
    let hub = TestHub::start();
    let url = hub.ws_url("/sync?room=lost");
    let (mut a, mut b) = (Ws::connect(&url).await, Ws::connect(&url).await);
    let r = a
        .request(&pull("a1", &["todos"], json!({"global": 0}), None))
        .await;
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 0);
    let r = b
        .request(&push(
            "b1",
            "todos",
            vec![change("insert", "fromB", json!({"v": 1}))],
            json!({"global": 0}),
        ))
        .await;
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 1);
    let bc = a.recv_json().await;
    assert_eq!(bc["changes"]["todos"][0]["documentId"], "fromB");
    // A ignores the broadcast and pushes with the checkpoint of its last reply.
    let r = a
        .request(&push(
            "a2",
            "todos",
            vec![change("insert", "fromA", json!({"v": 2}))],
            json!({"sequences": {"todos": 0}, "global": 0, "id": "x", "nodeId": "a", "timestamp": 1}),
        ))
        .await;
    assert_eq!(r["success"], true);
    assert_eq!(
        (
            r["checkpoint"]["sequences"]["todos"].clone(),
            r["checkpoint"]["global"].clone()
        ),
        (json!(0), json!(0)),
        "the reply moved A past a change it only was sent: {r}"
    );
    let r = a
        .request(&pull("a3", &["todos"], r["checkpoint"].clone(), None))
        .await;
    let ids: Vec<&str> = r["changes"]["todos"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["documentId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["fromB", "fromA"]);
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 2);
    // Caught up by its own checkpoint, its next push moves it to the room's position.
    let r = a
        .request(&push(
            "a4",
            "todos",
            vec![change("insert", "again", json!({"v": 3}))],
            r["checkpoint"].clone(),
        ))
        .await;
    assert_eq!(r["checkpoint"]["sequences"]["todos"], 3);
}

/// Three writers that sync as Pocket's engine does, over two collections, through pushes,
/// short pulls, reconnects and a restart of the hub: each ends with every change.
#[actix_rt::test]
async fn engine_clients_end_with_every_change() {
    use common::Lcg;
    use common::pocket::EngineClient;
    const COLLECTIONS: [&str; 2] = ["todos", "notes"];
    let config = common::test_config(std::path::Path::new("."));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config;
    config.storage.path = dir.path().display().to_string();
    let mut hub = TestHub::start_in(dir, config.clone());
    let url = |hub: &TestHub| hub.ws_url("/sync?room=engines");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(EngineClient::connect(&url(&hub)).await);
    }
    let mut rng = Lcg(0x5eed_0015);
    let mut written = std::collections::BTreeSet::new();
    for step in 0..240 {
        let n = rng.below(3) as usize;
        match rng.below(10) {
            0..=4 => {
                let collection = COLLECTIONS[rng.below(2) as usize];
                let ids: Vec<String> = (0..=rng.below(3))
                    .map(|k| format!("w{n}-{step}-{k}"))
                    .collect();
                written.extend(ids.iter().cloned());
                clients[n].push(collection, &ids).await;
            }
            5..=7 => {
                let limit = 1 + rng.below(4);
                clients[n].pull_once(&COLLECTIONS, limit).await;
            }
            8 => clients[n].reconnect(&url(&hub)).await,
            _ if step % 80 == 9 => {
                let dir = hub.stop();
                hub = TestHub::start_in(dir, config.clone());
                for c in clients.iter_mut() {
                    c.reconnect(&url(&hub)).await;
                }
            }
            _ => {}
        }
    }
    for (n, c) in clients.iter_mut().enumerate() {
        c.pull_all(&COLLECTIONS, 5).await;
        let missing: Vec<&String> = written.difference(&c.has).collect();
        assert!(missing.is_empty(), "client {n} lacks {missing:?}");
    }
}

/// A document over `limits.max_document_bytes` is answered as a conflict with the stored
/// version; the other changes of the push are applied, and the engine's resend of the rest
/// goes through.
#[actix_rt::test]
async fn an_oversized_document_does_not_block_its_collection() {
    let hub = TestHub::start_with(|c| {
        c.limits.max_document_bytes = 256;
        c.auth.admin_token = Some("admin-secret".into());
    });
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=big")).await;
    let r = ws
        .request(&push(
            "p1",
            "todos",
            vec![change("insert", "big", json!({"v": 1}))],
            json!({}),
        ))
        .await;
    assert_eq!(r["success"], true);
    let changes = vec![
        change("insert", "small1", json!({"v": 1})),
        change("update", "big", json!({"v": 2, "pad": "x".repeat(400)})),
        change("insert", "fresh-big", json!({"pad": "y".repeat(400)})),
        change("insert", "small2", json!({"v": 2})),
    ];
    let r = ws.request(&push("p2", "todos", changes, json!({}))).await;
    assert_eq!(r["type"], "push-response", "{r}");
    assert_eq!(r["success"], false);
    assert_eq!(
        r["conflicts"],
        json!([
            {"documentId": "big", "serverDocument": {"_id": "big", "v": 1}},
            {"documentId": "fresh-big", "serverDocument": {"_id": "fresh-big"}},
        ])
    );
    let r = ws.request(&pull("q", &["todos"], json!({}), None)).await;
    let stored: Vec<(String, Value)> = r["changes"]["todos"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["documentId"].as_str().expect("id").to_owned(),
                c["document"]["v"].clone(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            ("big".to_owned(), json!(1)),
            ("small1".to_owned(), json!(1)),
            ("small2".to_owned(), json!(2)),
        ]
    );
    let (status, stats) = http("GET", &hub.http_url("/stats"), Some("admin-secret"), None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["limits"]["document_bytes"], 2, "{stats}");
}

/// Development mode: a JWT-shaped token without `exp` still names the HTTP request's room.
#[actix_rt::test]
async fn a_development_token_without_exp_names_the_room() {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.sig",
        b64(json!({"alg": "HS256", "typ": "JWT"})),
        b64(json!({"sub": "dev", "room": "no-exp", "permissions": {"canRead": ["*"]}}))
    );
    let hub = TestHub::start();
    let body = push(
        "p",
        "todos",
        vec![change("insert", "e1", json!({"v": 1}))],
        json!({}),
    );
    let (status, r) = http(
        "POST",
        &hub.http_url("/sync/push"),
        Some(&token),
        Some(&body),
    )
    .await;
    assert_eq!((status, r["success"].clone()), (200, json!(true)), "{r}");
    let count = |r: &Value| r["changes"]["todos"].as_array().map_or(0, Vec::len);
    let mut named = Ws::connect(&hub.ws_url("/sync?room=no-exp")).await;
    let r = named.request(&pull("q", &["todos"], json!({}), None)).await;
    assert_eq!(count(&r), 1, "{r}");
    let mut default = Ws::connect(&hub.ws_url("/sync")).await;
    let r = default
        .request(&pull("q", &["todos"], json!({}), None))
        .await;
    assert_eq!(count(&r), 0, "{r}");
}

/// With auth on, a valid token that grants nothing in the room is refused at the upgrade with
/// 403, in every dialect, instead of a socket that answers every request FORBIDDEN.
#[actix_rt::test]
async fn a_token_without_rights_is_refused_at_the_upgrade() {
    use common::tokens::{auth_hub, token};
    const SECRET: &str = "rights-secret";
    let hub = auth_hub(SECRET, "admin-token", |_| {});
    let other_room = token(SECRET, "u", &["elsewhere"], &["elsewhere"], 600);
    let nothing = token(SECRET, "u", &[], &[], 600);
    let reader = token(SECRET, "u", &["mine"], &[], 600);
    let pocket = |t: &str| hub.ws_url(&format!("/sync?room=mine&token={t}"));
    assert_eq!(Ws::refused_status(&pocket(&other_room)).await, 403);
    assert_eq!(Ws::refused_status(&pocket(&nothing)).await, 403);
    let relay = |t: &str| hub.ws_url(&format!("/relay?channel=mine&token={t}"));
    assert_eq!(Ws::refused_status(&relay(&other_room)).await, 403);
    let synckit = |t: &str| hub.ws_url(&format!("/ws?token={t}"));
    assert_eq!(Ws::refused_status(&synckit(&nothing)).await, 403);
    // Read rights are enough to open the socket; a push is then refused on its own.
    let mut ws = Ws::connect(&pocket(&reader)).await;
    let r = ws
        .request(&push(
            "p",
            "todos",
            vec![change("insert", "d", json!({}))],
            json!({}),
        ))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");
    let r = ws.request(&pull("q", &["todos"], json!({}), None)).await;
    assert_eq!(r["type"], "pull-response");
    let _ = Ws::connect(&synckit(&other_room)).await;
}
