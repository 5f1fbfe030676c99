//! Pocket over HTTP under the per-client limits a WebSocket session has: the message rate per
//! user (per address without a token) and the rooms one client reaches within a window. A
//! refusal is 429 with Pocket's retryable error and `Retry-After`, counted like a WebSocket's.

mod common;

use std::time::Instant;

use common::pocket::{pull, push_docs};
use common::tokens::{auth_hub, token};
use common::{TIMEOUT, TestHub, get};
use serde_json::{Value, json};

const SECRET: &str = "http-limits-secret";
const ADMIN: &str = "http-limits-admin";

/// Status, `Retry-After` and JSON body of one POST.
async fn post(url: &str, bearer: Option<&str>, body: &Value) -> (u16, Option<u64>, Value) {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut req = client.post(url);
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut res = req.send_json(body).await.expect("response");
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = res
        .json::<Value>()
        .limit(16 << 20)
        .await
        .expect("JSON body");
    (res.status().as_u16(), retry_after, body)
}

async fn admin_get(hub: &TestHub, path: &str) -> Value {
    let (status, v) = common::http("GET", &hub.http_url(path), Some(ADMIN), None).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn limits_hit(stats: &Value, limit: &str) -> u64 {
    stats["limits"][limit]
        .as_u64()
        .unwrap_or_else(|| panic!("no limits.{limit} in {stats}"))
}

/// The `synchub_limits_hit_total{limit=…}` sample of a metrics page.
fn metric(page: &str, limit: &str) -> u64 {
    let series = format!("synchub_limits_hit_total{{limit=\"{limit}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}

/// 300 pushes from one user at 20 a second: the few within the budget are applied, the rest get
/// `RATE_LIMITED` under their own id with `Retry-After`, nothing of them is written, another
/// user is not affected, and every refusal is counted in `/stats` and `/metrics`.
#[actix_rt::test]
async fn one_user_over_http_is_held_to_the_message_rate() {
    let hub = auth_hub(SECRET, ADMIN, |c| c.limits.max_messages_per_second = 20);
    let alice = token(SECRET, "alice", &["*"], &["*"], 600);
    let url = hub.http_url("/sync/push?room=rate");
    let started = Instant::now();
    let mut admitted = Vec::new();
    let mut refused = 0u64;
    for i in 0..300 {
        let id = format!("p{i}");
        let (status, retry_after, r) = post(
            &url,
            Some(&alice),
            &push_docs(&id, &[(&format!("d{i}"), i)]),
        )
        .await;
        match status {
            200 => {
                assert_eq!(r["success"], true, "{r}");
                admitted.push(format!("d{i}"));
            }
            429 => {
                assert_eq!(
                    (&r["type"], &r["code"], &r["retryable"], &r["id"]),
                    (
                        &json!("error"),
                        &json!("RATE_LIMITED"),
                        &json!(true),
                        &json!(id)
                    ),
                    "{r}"
                );
                assert!(
                    retry_after.is_some_and(|s| s >= 1),
                    "Retry-After: {retry_after:?}"
                );
                refused += 1;
            }
            other => panic!("status {other}: {r}"),
        }
    }
    // One second's worth at once, then the rate: never more than that in the time it took.
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        admitted.len() <= allowed,
        "{} admitted, at most {allowed}",
        admitted.len()
    );
    assert!(refused > 0);

    // Another user has a budget of its own.
    let bob = token(SECRET, "bob", &["*"], &["*"], 600);
    let (status, _, r) = post(
        &hub.http_url("/sync/pull?room=rate"),
        Some(&bob),
        &pull("bob", &["todos"], json!({}), Some(1000)),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let mut written: Vec<String> = r["changes"]["todos"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["documentId"].as_str().expect("id").to_owned())
        .collect();
    written.sort();
    admitted.sort();
    assert_eq!(
        written, admitted,
        "exactly the admitted pushes were written"
    );

    let stats = admin_get(&hub, "/stats").await;
    assert_eq!(limits_hit(&stats, "rate"), refused);
    let (status, page) = common::http("GET", &hub.http_url("/metrics"), Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(metric(page.as_str().expect("text"), "rate"), refused);
}

/// Without auth the same budget is held per address.
#[actix_rt::test]
async fn anonymous_requests_are_held_to_the_rate_per_address() {
    let hub = TestHub::start_with(|c| c.limits.max_messages_per_second = 5);
    let url = hub.http_url("/sync/pull?room=anon");
    let mut statuses = Vec::new();
    let started = Instant::now();
    for i in 0..40 {
        let (status, retry_after, r) =
            post(&url, None, &pull(&format!("q{i}"), &["c"], json!({}), None)).await;
        if status == 429 {
            assert_eq!(r["code"], "RATE_LIMITED", "{r}");
            assert!(retry_after.is_some(), "{r}");
        }
        statuses.push(status);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let allowed = 5 + (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(admitted <= allowed, "{statuses:?}");
    assert_eq!(
        admitted + statuses.iter().filter(|s| **s == 429).count(),
        40
    );
}

/// One user reaching room after room over HTTP is stopped at `limits.max_rooms_per_session`
/// rooms within the window: the refused rooms are never started, the rooms already reached go
/// on working, and another user is not affected.
#[actix_rt::test]
async fn rooms_one_user_reaches_over_http_are_limited() {
    let hub = auth_hub(SECRET, ADMIN, |c| c.limits.max_rooms_per_session = 5);
    let alice = token(SECRET, "alice", &["*"], &["*"], 600);
    let mut statuses = Vec::new();
    for i in 0..20 {
        let url = hub.http_url(&format!("/sync/pull?room=many-{i}"));
        let (status, retry_after, r) = post(
            &url,
            Some(&alice),
            &pull(&format!("r{i}"), &["c"], json!({}), None),
        )
        .await;
        if status == 429 {
            assert_eq!(
                (&r["code"], &r["retryable"], &r["id"]),
                (
                    &json!("RATE_LIMITED"),
                    &json!(true),
                    &json!(format!("r{i}"))
                ),
                "{r}"
            );
            assert!(
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Too many rooms")),
                "{r}"
            );
            // The first room leaves the window after server.room_idle_timeout_s.
            assert!(
                retry_after.is_some_and(|s| (1..=60).contains(&s)),
                "{retry_after:?}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 15], "{statuses:?}");
    // Never started: the hub has no such room.
    let (status, _) = common::http(
        "GET",
        &hub.http_url("/stats/rooms/pocket/many-10"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // A room already reached is still open to the same user, and other users have their own.
    let (status, _, r) = post(
        &hub.http_url("/sync/push?room=many-0"),
        Some(&alice),
        &push_docs("again", &[("d", 1)]),
    )
    .await;
    assert_eq!((status, &r["success"]), (200, &json!(true)), "{r}");
    let bob = token(SECRET, "bob", &["*"], &["*"], 600);
    let (status, _, r) = post(
        &hub.http_url("/sync/pull?room=many-10"),
        Some(&bob),
        &pull("b", &["c"], json!({}), None),
    )
    .await;
    assert_eq!(status, 200, "{r}");

    let stats = admin_get(&hub, "/stats").await;
    assert_eq!(limits_hit(&stats, "rooms_per_user"), 15);
    let (_, page) = common::http("GET", &hub.http_url("/metrics"), Some(ADMIN), None).await;
    assert_eq!(metric(page.as_str().expect("text"), "rooms_per_user"), 15);
    assert_eq!(get(&hub.http_url("/health")).await.0, 200);
}
