//! Health, stats, room digests and metrics.

mod common;

use common::pocket::push_docs as push;
use common::{TestHub, Ws, get};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[actix_rt::test]
async fn health_and_stats_report_the_node() {
    let hub = TestHub::start();
    let (status, h) = get(&hub.http_url("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "healthy");
    assert!(h["node_id"].is_string());
    assert!(h["version"].is_string());
    assert!(h["timestamp"].is_string());
    // Seconds with a fraction, as SyncKit's server reports it: not 0 right after the start.
    let uptime = h["uptime"].as_f64().expect("uptime is a number");
    assert!(uptime > 0.0 && uptime < 60.0, "{uptime}");
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["connections"]["totalConnections"], 0);
    assert_eq!(h["documents"]["totalDocuments"], 0);

    let mut ws = Ws::connect(&hub.ws_url("/sync?room=s1")).await;
    assert_eq!(
        ws.request(&push("p", &[("a", 1), ("b", 2)])).await["success"],
        true
    );
    let (status, s) = get(&hub.http_url("/stats")).await;
    assert_eq!(status, 200);
    for key in [
        "node_id", "version", "uptime_s", "sessions", "rooms", "actors", "storage", "cluster",
    ] {
        assert!(s.get(key).is_some(), "missing {key}: {s}");
    }
    assert_eq!(s["node_id"], h["node_id"]);
    assert_eq!(
        s["sessions"],
        json!({"total": 1, "pocket": 1, "synckit": 0, "relay": 0, "users": 0})
    );
    assert_eq!(s["rooms"]["active"], 1);
    assert_eq!(s["rooms"]["by_namespace"]["pocket"], 1);
    assert_eq!(s["cluster"], Value::Null);
    assert_eq!(s["changes"]["pocket"], 2);
    assert_eq!(s["frames"]["pocket"], json!({"in": 1, "out": 1}));
    assert_eq!(s["frames"]["relay"], json!({"in": 0, "out": 0}));
    for kind in ["session", "room", "directory", "durability"] {
        let a = &s["actors"][kind];
        for field in ["count", "messages", "message_rate", "mailbox_backlog"] {
            assert!(a[field].is_number(), "actors.{kind}.{field}: {s}");
        }
    }
    assert_eq!(s["actors"]["session"]["count"], 1);
    assert_eq!(s["actors"]["room"]["count"], 1);
    assert!(s["actors"]["room"]["messages"].as_u64().expect("n") >= 2);
    assert!(s["storage"]["flushes"].as_u64().expect("n") >= 1);
    assert!(s["storage"]["batch_size_mean"].as_f64().expect("n") >= 1.0);
    assert!(s["storage"]["flush_latency_ms_mean"].is_number());

    let (status, metrics) = get(&hub.http_url("/metrics")).await;
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text");
    assert!(text.contains("synchub_flushes_total"), "{text}");
    assert!(
        text.contains("synchub_sessions{dialect=\"pocket\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("synchub_changes_total{namespace=\"pocket\"} 2"),
        "{text}"
    );
}

#[actix_rt::test]
async fn room_stats_and_digests() {
    let hub = TestHub::start();
    assert_eq!(get(&hub.http_url("/stats/rooms/pocket/never")).await.0, 404);
    assert_eq!(get(&hub.http_url("/stats/rooms/nope/x")).await.0, 404);
    assert_eq!(
        get(&hub.http_url("/stats/rooms/pocket/bad%20id")).await.0,
        400
    );

    // The same state reached in different orders has the same digest.
    let mut a = Ws::connect(&hub.ws_url("/sync?room=one")).await;
    let mut b = Ws::connect(&hub.ws_url("/sync?room=two")).await;
    a.request(&push("a1", &[("x", 1)])).await;
    a.request(&push("a2", &[("y", 2)])).await;
    b.request(&push("b1", &[("y", 2), ("x", 1)])).await;
    let (status, one) = get(&hub.http_url("/stats/rooms/pocket/one")).await;
    assert_eq!(status, 200);
    let (_, two) = get(&hub.http_url("/stats/rooms/pocket/two")).await;
    assert_eq!(
        (one["namespace"].clone(), one["room"].clone()),
        (json!("pocket"), json!("one"))
    );
    assert_eq!(one["seq"], 2);
    assert_eq!(one["sessions"], 1);
    assert_eq!(one["digest"].as_str().map(str::len), Some(32));
    assert_eq!(one["digest"], two["digest"]);
    // A different state has a different digest.
    a.request(&push("a3", &[("x", 3)])).await;
    let (_, changed) = get(&hub.http_url("/stats/rooms/pocket/one")).await;
    assert_ne!(changed["digest"], two["digest"]);
}

#[actix_rt::test]
async fn the_digest_is_the_same_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::test_config(dir.path());
    let hub = TestHub::start_in(dir, config.clone());
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=keep")).await;
    ws.request(&push("p", &[("a", 1), ("b", 2), ("c", 3)]))
        .await;
    let (_, before) = get(&hub.http_url("/stats/rooms/pocket/keep")).await;
    let (_, first_run) = get(&hub.http_url("/health")).await;
    drop(ws);
    let dir = hub.stop();
    let hub = TestHub::start_in(dir, config);
    let (status, after) = get(&hub.http_url("/stats/rooms/pocket/keep")).await;
    assert_eq!(status, 200);
    assert_eq!(after["digest"], before["digest"]);
    assert_eq!(after["seq"], 3);
    assert_eq!(after["live"], false);
    // The generated node id is kept in the data directory: the same after the restart.
    let (_, h) = get(&hub.http_url("/health")).await;
    let (_, s) = get(&hub.http_url("/stats")).await;
    assert!(
        first_run["node_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(h["node_id"], first_run["node_id"]);
    assert_eq!(s["node_id"], first_run["node_id"]);
}

#[actix_rt::test]
async fn compaction_keeps_the_latest_change_per_document() {
    let hub = TestHub::start();
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=cmp")).await;
    for i in 0..5 {
        ws.request(&push(&format!("p{i}"), &[("same", i)])).await;
    }
    ws.request(&push("other", &[("other", 0)])).await;
    let del = json!({"type": "push", "id": "del", "collection": "todos", "checkpoint": {},
                     "changes": [{"operation": "delete", "documentId": "other", "document": null}]});
    ws.request(&del).await;
    let (status, report) = common::http(
        "POST",
        &hub.http_url("/admin/rooms/pocket/cmp/compact"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&report["removed"], &report["kept"]),
        (&json!(5), &json!(2))
    );
    assert!(report["removed_bytes"].as_u64() > Some(0), "{report}");
    let r = ws
        .request(&json!({"type": "pull", "id": "q", "collections": ["todos"], "checkpoint": {"global": 0}}))
        .await;
    let changes = r["changes"]["todos"].as_array().expect("changes");
    let seqs: Vec<u64> = changes
        .iter()
        .map(|c| c["sequence"].as_u64().expect("n"))
        .collect();
    assert_eq!(seqs, [5, 7]);
    assert_eq!(changes[0]["document"]["v"], 4);
    assert_eq!(changes[1]["document"]["_deleted"], true);
    // The state, and so the digest and sequence, did not change.
    let (_, st) = get(&hub.http_url("/stats/rooms/pocket/cmp")).await;
    assert_eq!(
        (
            st["seq"].clone(),
            st["log_len"].clone(),
            st["records"].clone()
        ),
        (json!(7), json!(2), json!(2))
    );
    assert_eq!(
        common::http(
            "POST",
            &hub.http_url("/admin/rooms/pocket/none/compact"),
            None,
            None
        )
        .await
        .0,
        404
    );
}

/// Reads server-sent events from `/stats/stream` until `n` have arrived; returns their data.
async fn stream_events(url: &str, bearer: Option<&str>, n: usize) -> (u16, Vec<Value>) {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .finish();
    let mut req = client.get(url);
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut resp = common::within("the stream's head", req.send())
        .await
        .expect("response");
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = common::within("an event", resp.next())
            .await
            .expect("the stream goes on")
            .expect("a chunk");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            assert!(event.starts_with("event: stats\n"), "{event}");
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("a data line");
            events.push(serde_json::from_str(data).expect("JSON data"));
        }
    }
    (status, events)
}

#[actix_rt::test]
async fn the_stats_stream_sends_the_figures_every_second() {
    let hub = TestHub::start();
    let mut ws = Ws::connect(&hub.ws_url("/relay?channel=sse")).await;
    ws.recv_json().await;
    let (status, events) = stream_events(&hub.http_url("/stats/stream"), None, 3).await;
    assert_eq!(status, 200);
    assert_eq!(events[0]["node_id"], events[2]["node_id"]);
    assert_eq!(events[0]["sessions"]["relay"], 1, "{}", events[0]);
    let uptime = |e: &Value| e["uptime_s"].as_f64().expect("uptime");
    // One a second: the third comes about two seconds after the first.
    let apart = uptime(&events[2]) - uptime(&events[0]);
    assert!(apart >= 1.0, "{apart}");
}

#[actix_rt::test]
async fn the_stats_stream_needs_the_admin_token_when_auth_is_required() {
    let hub = common::tokens::auth_hub("a-secret-of-32-bytes-or-more-....", "admin-token", |_| {});
    let url = hub.http_url("/stats/stream");
    assert_eq!(stream_events(&url, None, 1).await.0, 401);
    assert_eq!(stream_events(&url, Some("wrong"), 1).await.0, 401);
    let (status, events) = stream_events(&url, Some("admin-token"), 1).await;
    assert_eq!(status, 200);
    assert!(events[0]["sessions"].is_object());
}

/// The metric names the Grafana dashboard in `contrib/grafana/` queries.
fn grafana_metrics() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/synchub.json");
    let text = std::fs::read_to_string(path).expect("the Grafana dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for target in panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
    {
        let expr = target["expr"].as_str().expect("a query");
        for (at, _) in expr.match_indices("synchub_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            names.insert(base.to_owned());
        }
    }
    names
}

#[actix_rt::test]
async fn the_grafana_dashboard_queries_only_metrics_the_hub_exports() {
    let hub = TestHub::start();
    let (status, metrics) = get(&hub.http_url("/metrics")).await;
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text");
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let queried = grafana_metrics();
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
