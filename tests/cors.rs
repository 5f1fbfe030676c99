//! CORS on the endpoints browser apps call with `fetch`: a page of an allowed origin gets its
//! preflight answered and can read every response, errors included; a page of any other origin
//! gets 403 and no CORS header; clients that send no `Origin` are not affected.

mod common;

use awc::http::Method;
use common::{TIMEOUT, TestHub, get};
use serde_json::json;

const APP: &str = "https://app.test";

/// Every endpoint a browser client calls, with its method.
const BROWSER_ENDPOINTS: [(&str, &str); 6] = [
    ("POST", "/sync/push"),
    ("POST", "/sync/pull"),
    ("POST", "/auth/verify"),
    ("GET", "/auth/me"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/login"),
];

struct Answer {
    status: u16,
    headers: awc::http::header::HeaderMap,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The comma-separated values of a header, lower-cased.
    fn list(&self, name: &str) -> Vec<String> {
        self.header(name)
            .unwrap_or_default()
            .split(',')
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

/// The preflight a browser sends before a `fetch` with a JSON body and a bearer token.
async fn preflight(hub: &TestHub, path: &str, origin: &str, method: &str) -> Answer {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let resp = client
        .request(Method::OPTIONS, hub.http_url(path))
        .insert_header(("Origin", origin))
        .insert_header(("Access-Control-Request-Method", method))
        .insert_header((
            "Access-Control-Request-Headers",
            "authorization,content-type",
        ))
        .send()
        .await
        .expect("preflight");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
    }
}

/// The request itself, as a page of `origin` makes it (`None`: not a browser).
async fn call(
    hub: &TestHub,
    method: &str,
    path: &str,
    origin: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client
        .request(method, hub.http_url(path))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Authorization", "Bearer not-a-token"));
    if let Some(origin) = origin {
        req = req.insert_header(("Origin", origin));
    }
    for h in extra {
        req = req.insert_header(*h);
    }
    let mut resp = req.send_body(body.to_owned()).await.expect("request");
    let _ = resp.body().await;
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
    }
}

fn pull_body() -> String {
    json!({"type": "pull", "id": "p", "timestamp": 1, "collections": ["todos"],
           "checkpoint": {"global": 0}})
    .to_string()
}

#[actix_rt::test]
async fn an_allowed_origin_gets_preflights_answered_and_responses_it_can_read() {
    let hub = TestHub::start_with(|c| {
        c.server.allowed_origins = vec![APP.into(), "http://localhost:5173".into()]
    });
    for (method, path) in BROWSER_ENDPOINTS {
        let pre = preflight(&hub, path, APP, method).await;
        assert!(
            pre.status < 300,
            "{path}: preflight answered {}",
            pre.status
        );
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
        assert!(
            pre.list("access-control-allow-methods")
                .contains(&method.to_ascii_lowercase()),
            "{path}: {:?}",
            pre.headers
        );
        let allowed_headers = pre.list("access-control-allow-headers");
        for h in ["authorization", "content-type", "x-pocket-room"] {
            assert!(allowed_headers.contains(&h.to_owned()), "{path}: {h}");
        }
        assert!(pre.header("access-control-max-age").is_some(), "{path}");
        // No cookies are involved: bearer tokens only.
        assert_eq!(pre.header("access-control-allow-credentials"), None);

        let body = if path.starts_with("/sync") {
            pull_body()
        } else {
            "{}".into()
        };
        let answer = call(&hub, method, path, Some(APP), &[], &body).await;
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(APP),
            "{method} {path} answered {} without it",
            answer.status
        );
        assert!(answer.list("vary").contains(&"origin".to_owned()), "{path}");
    }
    // The second origin of the list, answered with its own name.
    let pre = preflight(&hub, "/auth/me", "http://localhost:5173", "GET").await;
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    // A pull through the real endpoint works and is readable: the answer is the Pocket reply.
    let answer = call(&hub, "POST", "/sync/pull", Some(APP), &[], &pull_body()).await;
    assert_eq!(answer.status, 200);
    // An error the HTTP layer answers by itself (a body that is not the gzip it claims) is
    // readable by the page too.
    let answer = call(
        &hub,
        "POST",
        "/sync/push",
        Some(APP),
        &[("Content-Encoding", "gzip")],
        "not gzip",
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    // Clients that are not browsers send no `Origin` and get no CORS headers.
    let answer = call(&hub, "POST", "/sync/pull", None, &[], &pull_body()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), None);
}

#[actix_rt::test]
async fn other_origins_are_refused_without_cors_headers() {
    let hub = TestHub::start_with(|c| c.server.allowed_origins = vec![APP.into()]);
    let evil = "https://evil.test";
    for (method, path) in BROWSER_ENDPOINTS {
        let pre = preflight(&hub, path, evil, method).await;
        assert_eq!(pre.status, 403, "{path}");
        assert_eq!(pre.header("access-control-allow-origin"), None, "{path}");
        assert_eq!(pre.header("access-control-allow-methods"), None, "{path}");
        // A request a page may send without a preflight (say a text/plain POST) is refused as
        // well: it must not write.
        let answer = call(&hub, method, path, Some(evil), &[], &pull_body()).await;
        assert_eq!(answer.status, 403, "{path}");
        assert_eq!(answer.header("access-control-allow-origin"), None, "{path}");
    }
    // A scheme or port of its own makes another origin.
    let pre = preflight(&hub, "/sync/pull", "http://app.test", "POST").await;
    assert_eq!(pre.status, 403);
    let (_, stats) = get(&hub.http_url("/stats")).await;
    assert_eq!(stats["limits"]["origin"], 13, "{stats}");
}

/// An empty `server.allowed_origins` admits every origin, for CORS as for WebSockets.
#[actix_rt::test]
async fn with_no_list_every_origin_is_answered() {
    let hub = TestHub::start();
    let origin = "http://127.0.0.1:3000";
    let pre = preflight(&hub, "/sync/pull", origin, "POST").await;
    assert!(pre.status < 300, "{}", pre.status);
    assert_eq!(pre.header("access-control-allow-origin"), Some(origin));
    let answer = call(&hub, "POST", "/sync/pull", Some(origin), &[], &pull_body()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some(origin));
}
