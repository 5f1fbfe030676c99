//! JWT auth in the Pocket dialect and on the admin endpoints.

mod common;

use common::{TestHub, Ws, connect_with_bearer, http, tokens};
use serde_json::json;
use synchub::auth::{Claims, mint, unix_now};

const SECRET: &str = "test-secret";
const ADMIN: &str = "admin-token";

fn auth_hub() -> TestHub {
    auth_hub_with_per_user(2)
}

fn auth_hub_with_per_user(per_user: usize) -> TestHub {
    tokens::auth_hub(SECRET, ADMIN, |c| {
        c.auth.leeway_s = 0;
        c.limits.max_connections_per_user = per_user;
    })
}

fn token(sub: &str, read: &[&str], write: &[&str], ttl: i64) -> String {
    tokens::token(SECRET, sub, read, write, ttl)
}

fn push(id: &str) -> serde_json::Value {
    json!({"type": "push", "id": id, "collection": "todos", "checkpoint": {},
           "changes": [{"operation": "insert", "documentId": id, "document": {}}]})
}

fn pull(id: &str) -> serde_json::Value {
    json!({"type": "pull", "id": id, "collections": ["todos"], "checkpoint": {}})
}

#[actix_rt::test]
async fn missing_or_bad_tokens_close_with_4001() {
    let hub = auth_hub();
    let expired = token("alice", &["*"], &["*"], -60);
    let refresh = mint(
        SECRET,
        &Claims {
            sub: Some("alice".into()),
            exp: unix_now() + 60,
            typ: Some("refresh".into()),
            ..Claims::default()
        },
    )
    .expect("mint");
    let wrong_key = mint(
        "other-secret",
        &Claims {
            sub: Some("alice".into()),
            exp: unix_now() + 60,
            ..Claims::default()
        },
    )
    .expect("mint");
    for url in [
        hub.ws_url("/sync"),
        hub.ws_url("/sync?token=garbage"),
        hub.ws_url(&format!("/sync?token={expired}")),
        hub.ws_url(&format!("/sync?token={refresh}")),
        hub.ws_url(&format!("/sync?token={wrong_key}")),
    ] {
        let mut ws = Ws::connect(&url).await;
        let closed = ws.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4001, "Authentication failed"),
            "{url}"
        );
    }
}

#[actix_rt::test]
async fn tokens_from_query_or_header_grant_their_permissions() {
    let hub = auth_hub_with_per_user(100);
    let writer = token("alice", &[], &["team-*"], 60);
    let mut ws = Ws::connect(&hub.ws_url(&format!("/sync?room=team-1&token={writer}"))).await;
    assert_eq!(ws.request(&push("p1")).await["success"], true);
    // The same token in the Authorization header.
    let mut ws = connect_with_bearer(&hub.ws_url("/sync?room=team-1"), &writer).await;
    assert_eq!(ws.request(&pull("q1")).await["type"], "pull-response");
    // Outside its patterns: refused before the upgrade, as the relay refuses it.
    let url = hub.ws_url(&format!("/sync?room=other&token={writer}"));
    assert_eq!(Ws::refused_status(&url).await, 403);
    // Read-only: pull yes, push no.
    let reader = token("bob", &["team-*"], &[], 60);
    let mut ws = Ws::connect(&hub.ws_url(&format!("/sync?room=team-1&token={reader}"))).await;
    assert_eq!(
        ws.request(&pull("q3")).await["changes"]["todos"][0]["documentId"],
        "p1"
    );
    let r = ws.request(&push("p2")).await;
    assert_eq!(r["code"], "FORBIDDEN");
    // No permissions claim: no access.
    let bare = mint(
        SECRET,
        &Claims {
            sub: Some("carol".into()),
            exp: unix_now() + 60,
            ..Claims::default()
        },
    )
    .expect("mint");
    let url = hub.ws_url(&format!("/sync?room=team-1&token={bare}"));
    assert_eq!(Ws::refused_status(&url).await, 403);
}

#[actix_rt::test]
async fn connections_past_the_per_user_limit_close_with_4002() {
    let hub = auth_hub();
    let alice = token("alice", &["*"], &[], 60);
    let url = hub.ws_url(&format!("/sync?token={alice}"));
    let mut first = Ws::connect(&url).await;
    let mut second = Ws::connect(&url).await;
    assert_eq!(first.request(&pull("a")).await["type"], "pull-response");
    assert_eq!(second.request(&pull("b")).await["type"], "pull-response");
    let mut third = Ws::connect(&url).await;
    let closed = third.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4002, "Too many connections")
    );
    // Another user is not affected, and a slot frees up when a session leaves.
    let bob = token("bob", &["*"], &[], 60);
    let mut other = Ws::connect(&hub.ws_url(&format!("/sync?token={bob}"))).await;
    assert_eq!(other.request(&pull("c")).await["type"], "pull-response");
    drop(first);
    // The hub notices the dropped socket asynchronously; until then a new one is still refused.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let mut again = Ws::connect(&url).await;
        again.send_json(&pull("d")).await;
        match again.next_or_close(common::TIMEOUT).await {
            Some(Ok(reply)) => {
                assert!(reply.contains("pull-response"), "{reply}");
                break;
            }
            Some(Err(closed)) => assert_eq!(closed.code, 4002),
            None => panic!("no answer"),
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn an_expiring_token_closes_with_4009_unless_refreshed_in_band() {
    let hub = auth_hub();
    let short = token("alice", &["*"], &["*"], 2);
    let mut lapsing = Ws::connect(&hub.ws_url(&format!("/sync?token={short}"))).await;
    let mut refreshed = Ws::connect(&hub.ws_url(&format!("/sync?token={short}"))).await;
    let fresh = token("alice", &["*"], &["*"], 600);
    let r = refreshed
        .request(&json!({"type": "auth", "id": "a1", "token": fresh}))
        .await;
    assert_eq!(
        (r["type"].clone(), r["id"].clone()),
        (json!("ack"), json!("a1"))
    );
    let bad = refreshed
        .request(&json!({"type": "auth", "id": "a2", "token": "nope"}))
        .await;
    assert_eq!(bad["code"], "FORBIDDEN");
    let closed = lapsing.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4009, "Token expired")
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        refreshed.request(&pull("still")).await["type"],
        "pull-response"
    );
}

#[actix_rt::test]
async fn http_transport_and_admin_endpoints_need_their_tokens() {
    let hub = auth_hub();
    let (status, r) = http("POST", &hub.http_url("/sync/pull"), None, Some(&pull("h"))).await;
    assert_eq!(status, 401);
    assert_eq!(r["type"], "error");
    let alice = token("alice", &["*"], &["*"], 60);
    let (status, r) = http(
        "POST",
        &hub.http_url("/sync/push"),
        Some(&alice),
        Some(&push("h1")),
    )
    .await;
    assert_eq!((status, r["success"].clone()), (200, json!(true)));
    for path in ["/stats", "/metrics", "/stats/rooms/pocket/default"] {
        let (status, _) = http("GET", &hub.http_url(path), None, None).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = http("GET", &hub.http_url(path), Some(&alice), None).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = http("GET", &hub.http_url(path), Some(ADMIN), None).await;
        assert_eq!(status, 200, "{path}");
    }
    // Health stays open: clients probe it to connect.
    assert_eq!(
        http("GET", &hub.http_url("/health"), None, None).await.0,
        200
    );
}

/// The dialects' ways of refusing a token: Pocket closes with 4001, relay answers 401 before
/// the upgrade, SyncKit answers 401 at the upgrade and `auth_error` + 1008 in-band.
async fn refused_everywhere(hub: &TestHub, token: &str, why: &str) {
    let mut ws = Ws::connect(&hub.ws_url(&format!("/sync?token={token}"))).await;
    assert_eq!(ws.closed().await.code, 4001, "pocket: {why}");
    assert_eq!(
        Ws::refused_status(&hub.ws_url(&format!("/relay?channel=c&token={token}"))).await,
        401,
        "relay: {why}"
    );
    assert_eq!(
        Ws::refused_status(&hub.ws_url(&format!("/ws?token={token}"))).await,
        401,
        "synckit at the upgrade: {why}"
    );
    let mut kit = Ws::connect(&hub.ws_url("/ws")).await;
    kit.send_json(&json!({"type": "auth", "id": "a", "token": token, "timestamp": 1}))
        .await;
    let reply = kit.recv_json().await;
    assert_eq!(
        reply["type"], "auth_error",
        "synckit in-band: {why}: {reply}"
    );
    assert_eq!(kit.closed().await.code, 1008, "synckit in-band: {why}");
}

async fn admitted_everywhere(hub: &TestHub, token: &str) {
    let mut ws = Ws::connect(&hub.ws_url(&format!("/sync?token={token}"))).await;
    assert_eq!(ws.request(&pull("ok")).await["type"], "pull-response");
    let mut relay = Ws::connect(&hub.ws_url(&format!("/relay?channel=c&token={token}"))).await;
    assert_eq!(relay.recv_json().await["type"], "connected");
    let mut kit = Ws::connect(&hub.ws_url("/ws")).await;
    let ok = kit
        .request_typed(
            &json!({"type": "auth", "id": "a", "token": token, "timestamp": 1}),
            "auth_success",
        )
        .await;
    assert_eq!(ok["userId"], "alice");
}

fn claims(exp_in: i64) -> Claims {
    Claims {
        aud: Some(json!("synchub-test")),
        iss: Some("https://issuer.test".into()),
        ..tokens::claims("alice", &["*"], &["*"], exp_in)
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[actix_rt::test]
async fn bad_tokens_are_refused_in_every_dialect() {
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.admin_token = Some(ADMIN.into());
        c.auth.leeway_s = 0;
        c.auth.audience = Some("synchub-test".into());
        c.auth.issuer = Some("https://issuer.test".into());
    });
    admitted_everywhere(&hub, &mint(SECRET, &claims(60)).expect("mint")).await;
    // A list of audiences that names the hub is fine too.
    let mut listed = claims(60);
    listed.aud = Some(json!(["other", "synchub-test"]));
    admitted_everywhere(&hub, &mint(SECRET, &listed).expect("mint")).await;

    let expired = mint(SECRET, &claims(-60)).expect("mint");
    let mut early = claims(600);
    early.nbf = Some(unix_now() + 300);
    let not_yet = mint(SECRET, &early).expect("mint");
    let wrong_signature = mint("another-secret", &claims(60)).expect("mint");
    let mut wrong_aud = claims(60);
    wrong_aud.aud = Some(json!("someone-else"));
    let mut no_aud = claims(60);
    no_aud.aud = None;
    let mut wrong_iss = claims(60);
    wrong_iss.iss = Some("https://evil.test".into());
    let payload = serde_json::to_vec(&claims(60)).expect("json");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    for (token, why) in [
        (expired, "expired"),
        (not_yet, "not yet valid"),
        (wrong_signature, "wrong signature"),
        (mint(SECRET, &wrong_aud).expect("mint"), "wrong audience"),
        (mint(SECRET, &no_aud).expect("mint"), "no audience"),
        (mint(SECRET, &wrong_iss).expect("mint"), "wrong issuer"),
        (unsigned, "alg none"),
    ] {
        refused_everywhere(&hub, &token, why).await;
    }
}

/// With an RSA public key configured, a token signed with HS256 using that public key as the
/// HMAC secret (the classic algorithm confusion) is refused; a real RS256 token is admitted.
#[actix_rt::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (apt-get install openssl)")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().expect("path"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().expect("path"),
        "-pubout",
        "-out",
        public.to_str().expect("path"),
    ]);
    let public_pem = std::fs::read(&public).expect("public key");
    let private_pem = std::fs::read(&private).expect("private key");
    let key_file = public.display().to_string();
    let hub = TestHub::start_with(move |c| {
        c.auth.required = true;
        c.auth.jwt_public_key_file = Some(key_file.into());
        c.auth.admin_token = Some(ADMIN.into());
        c.auth.audience = Some("synchub-test".into());
        c.auth.issuer = Some("https://issuer.test".into());
    });
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims(60),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private_pem).expect("RSA key"),
    )
    .expect("sign");
    admitted_everywhere(&hub, &rs256).await;
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(60),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .expect("sign");
    refused_everywhere(&hub, &confused, "HS256 with the public key").await;

    // And a private key where the public one belongs is refused at start, by name.
    let mut config = common::test_config(dir.path());
    config.auth.required = true;
    config.auth.jwt_public_key_file = Some(private.clone());
    let err = synchub::auth::JwtVerifier::from_config(&config.auth)
        .err()
        .expect("a private key is refused");
    assert!(err.to_string().contains("private key"), "{err}");
}

#[actix_rt::test]
async fn admin_endpoints_are_closed_without_an_admin_token_when_auth_is_required() {
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(SECRET.into());
    });
    for path in ["/stats", "/metrics", "/stats/rooms/pocket/x"] {
        let (status, _) = http("GET", &hub.http_url(path), None, None).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = http(
        "POST",
        &hub.http_url("/admin/rooms/pocket/x/compact"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http("GET", &hub.http_url("/health"), None, None).await;
    assert_eq!(status, 200);
}

/// With an audience and an issuer configured, every token the hub mints carries them, so the
/// hub accepts its own tokens: a `synchub token`, a dev login's pair, and each refresh's pair
/// work for the next request and for the next refresh.
#[actix_rt::test]
async fn tokens_the_hub_mints_carry_its_audience_and_issuer() {
    const AUDIENCE: &str = "synchub-minted";
    const ISSUER: &str = "https://hub.minted.test";
    let hub = TestHub::start_with(|c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.admin_token = Some(ADMIN.into());
        c.auth.dev_login = true;
        c.auth.audience = Some(AUDIENCE.into());
        c.auth.issuer = Some(ISSUER.into());
    });
    let me = |token: String| {
        let url = hub.http_url("/auth/me");
        async move { http("GET", &url, Some(&token), None).await }
    };

    let config = hub.dir.path().join("minting.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\naudience = \"{AUDIENCE}\"\nissuer = \"{ISSUER}\"\n"
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("path");
    let (ok, out) = common::run_synchub(&[
        "token", "--config", config, "--sub", "alice", "--read", "*", "--write", "*",
    ]);
    assert!(ok, "{out}");
    let cli_token = out.trim().to_owned();
    let (status, who) = me(cli_token.clone()).await;
    assert_eq!((status, &who["userId"]), (200, &json!("alice")), "{who}");
    admitted_everywhere(&hub, &cli_token).await;

    let (status, login) = http(
        "POST",
        &hub.http_url("/auth/login"),
        None,
        Some(&json!({"email": "bo@example.com", "password": "x"})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let (status, who) = me(login["accessToken"].as_str().expect("access").into()).await;
    assert_eq!(
        (status, &who["userId"]),
        (200, &json!("bo@example.com")),
        "{who}"
    );

    // Refresh twice: each pair is accepted for requests and for the refresh after it.
    let mut refresh = login["refreshToken"].as_str().expect("refresh").to_owned();
    for round in 0..2 {
        let (status, pair) = http(
            "POST",
            &hub.http_url("/auth/refresh"),
            None,
            Some(&json!({"refreshToken": refresh})),
        )
        .await;
        assert_eq!(status, 200, "refresh {round}: {pair}");
        let (status, who) = me(pair["accessToken"].as_str().expect("access").into()).await;
        assert_eq!(
            (status, &who["userId"]),
            (200, &json!("bo@example.com")),
            "refresh {round}: {who}"
        );
        refresh = pair["refreshToken"].as_str().expect("refresh").to_owned();
    }
}
