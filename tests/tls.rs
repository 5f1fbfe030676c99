//! TLS in the binary: `server.tls_cert` / `server.tls_key` make the one port serve https:// and
//! wss://, with certificates the tests make; the certificate is reloaded on SIGHUP and when its
//! files change, a broken replacement keeps the one served; a broken configuration stops the
//! start with one line naming what is wrong.

mod common;

use std::process::Command;
use std::time::Duration;

use common::tls::{CertPaths, TestCa, connect_wss, https_client, served_certificate};
use common::{ChildHub, TIMEOUT, TestHub, Ws, within};
use serde_json::json;

fn relay_update(i: u64) -> serde_json::Value {
    json!({"type": "update", "version": 0, "siteId": "w",
           "changes": [["t", i.to_string(), "v", i, 1, 1, "w", 1, 0]]})
}

/// A hub serving a certificate `ca` signed, and the directory holding its files.
fn tls_hub(
    ca: &TestCa,
    edit: impl FnOnce(&mut synchub::config::Config),
) -> (TestHub, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("tempdir");
    let paths = CertPaths::in_dir(certs.path());
    paths.install(&ca.server_cert());
    let hub = TestHub::start_with(|c| {
        c.server.tls_cert = Some(paths.cert.clone());
        c.server.tls_key = Some(paths.key.clone());
        edit(c);
    });
    (hub, certs)
}

#[actix_rt::test]
async fn https_and_wss_share_the_port_and_plain_connections_are_not_served() {
    let ca = TestCa::new();
    let (hub, _certs) = tls_hub(&ca, |_| {});
    let port = hub.addr.port();

    let mut resp = https_client(ca.client_config())
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(health["status"], "healthy");

    // Relay over wss: a write acked, and seen by a second client (also by the IP address the
    // certificate names).
    let mut writer = connect_wss(
        &format!("wss://localhost:{port}/relay?channel=tls"),
        ca.client_config(),
    )
    .await;
    assert_eq!(writer.recv_json().await["type"], "connected");
    let mut reader = connect_wss(
        &format!("wss://127.0.0.1:{port}/relay?channel=tls"),
        ca.client_config(),
    )
    .await;
    assert_eq!(reader.recv_json().await["type"], "connected");
    let ack = writer.request_typed(&relay_update(1), "ack").await;
    assert_eq!(ack["version"], 1);
    let seen = reader.recv_json().await;
    assert_eq!(seen["type"], "update", "{seen}");

    // SyncKit over wss too (the SDK's own test is in tests/interop).
    let mut kit = connect_wss(&format!("wss://localhost:{port}/ws"), ca.client_config()).await;
    let ack = kit
        .request_typed(
            &json!({"type": "delta", "id": "m1", "timestamp": 1, "documentId": "d",
                    "delta": {"title": "over TLS"}}),
            "ack",
        )
        .await;
    assert_eq!(ack["messageId"], "m1");

    // No plain text on a TLS port, and a client that does not trust the certificate gets none.
    let plain = tokio_tungstenite::connect_async(hub.ws_url("/relay?channel=tls"));
    assert!(within("plain ws", plain).await.is_err());
    assert_ne!(plain_http_status(hub.addr).await, Some(200));
    let stranger = TestCa::new();
    let untrusted = https_client(stranger.client_config())
        .get(format!("https://localhost:{port}/health"))
        .send();
    assert!(within("untrusted https", untrusted).await.is_err());
}

/// What a plain HTTP request to the port gets: no HTTP answer at all from a TLS listener.
async fn plain_http_status(addr: std::net::SocketAddr) -> Option<u16> {
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let sent = client.get(format!("http://{addr}/health")).send();
    within("plain http", sent)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls new connections until the hub serves `wanted`.
async fn until_served(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    wanted: &rustls::pki_types::CertificateDer<'static>,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while served_certificate(addr, ca.client_config()).await != *wanted {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(hub: &ChildHub) {
    let status = Command::new("kill")
        .args(["-HUP", &hub.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

#[actix_rt::test]
async fn the_certificate_is_reloaded_on_sighup_and_on_file_change_and_a_broken_one_is_not_taken() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = CertPaths::in_dir(dir.path());
    let first = ca.server_cert();
    paths.install(&first);
    let log_path = dir.path().join("hub.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let env = paths.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("RUST_LOG", "info"));
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn_logging_to(data.path(), &env, log).await;
    let addr = hub.addr;
    assert_eq!(
        served_certificate(addr, ca.client_config()).await,
        first.der
    );

    // A session opened before the reload keeps its connection.
    let url = format!("wss://localhost:{}/relay?channel=reload", addr.port());
    let mut before: Ws = connect_wss(&url, ca.client_config()).await;
    assert_eq!(before.recv_json().await["type"], "connected");

    let second = ca.server_cert();
    paths.install(&second);
    sighup(&hub);
    until_served(addr, &ca, &second.der, "the SIGHUP reload").await;
    let ack = before.request_typed(&relay_update(1), "ack").await;
    assert_eq!(ack["version"], 1);

    // A broken replacement: the hub says so and keeps serving the certificate it has.
    std::fs::write(&paths.cert, "not a certificate").expect("write");
    sighup(&hub);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let log = std::fs::read_to_string(&log_path).expect("log");
        if log.contains("TLS certificate not reloaded (SIGHUP)") {
            assert!(log.contains("holds no PEM certificate"), "{log}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning in {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_certificate(addr, ca.client_config()).await,
        second.der
    );

    // Without a signal: new files are taken once they have stopped changing.
    let third = ca.server_cert();
    paths.install(&third);
    until_served(addr, &ca, &third.der, "the reload on file change").await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("TLS certificate reloaded from") && log.contains("(the files changed)"),
        "{log}"
    );
    let status = hub.terminate();
    assert!(status.success(), "{status}");
}

/// `synchub serve` with `env`: its exit status and what it wrote to stderr.
fn serve_fails(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synchub"));
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("SYNCHUB_") {
            cmd.env_remove(var);
        }
    }
    cmd.arg("serve")
        .current_dir(data.path())
        .env("SYNCHUB_SERVER_BIND", "127.0.0.1:0")
        .env("SYNCHUB_STORAGE_PATH", data.path().join("db"))
        .env("SYNCHUB_AUTH_REQUIRED", "false")
        .env("RUST_LOG", "off")
        .envs(env.iter().copied());
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            return (status.code(), err);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hub started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tls_configuration_that_cannot_serve_stops_the_start_with_one_line() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = CertPaths::in_dir(dir.path());
    good.install(&ca.server_cert());
    let (cert, key) = (
        good.cert.display().to_string(),
        good.key.display().to_string(),
    );
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server_cert().key_pem).expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").expect("write");
    let missing = dir.path().join("missing.pem");
    let (other_key, garbage, missing) = (
        other_key.display().to_string(),
        garbage.display().to_string(),
        missing.display().to_string(),
    );

    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("SYNCHUB_SERVER_TLS_CERT", &cert)],
            "server.tls_cert and server.tls_key go together",
        ),
        (
            &[
                ("SYNCHUB_SERVER_TLS_CERT", &missing),
                ("SYNCHUB_SERVER_TLS_KEY", &key),
            ],
            "cannot read it",
        ),
        (
            &[
                ("SYNCHUB_SERVER_TLS_CERT", &garbage),
                ("SYNCHUB_SERVER_TLS_KEY", &key),
            ],
            "holds no PEM certificate",
        ),
        (
            &[
                ("SYNCHUB_SERVER_TLS_CERT", &cert),
                ("SYNCHUB_SERVER_TLS_KEY", &garbage),
            ],
            "holds no PEM private key",
        ),
        (
            &[
                ("SYNCHUB_SERVER_TLS_CERT", &cert),
                ("SYNCHUB_SERVER_TLS_KEY", &other_key),
            ],
            "is not the key of the certificate",
        ),
    ];
    for (env, expected) in cases {
        let (code, err) = serve_fails(env);
        assert_eq!(code, Some(1), "{env:?}: {err}");
        assert!(err.contains(expected), "{env:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        // The pairing error is a configuration error (its own heading line and the item).
        assert!(lines.len() <= 2, "{env:?}: {err}");
        if expected != "server.tls_cert and server.tls_key go together" {
            assert_eq!(lines.len(), 1, "{err}");
            let named = env.iter().any(|(_, path)| err.contains(path));
            assert!(named, "the file is not named: {err}");
        }
    }
}

/// `synchub bench writes` for a second, with `args` and `env`, run in `dir`: the JSON of its
/// last line.
fn bench_writes(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_synchub"))
        .current_dir(dir)
        .args(["bench", "writes", "--warmup", "0", "--duration", "1"])
        .args(["--in-flight", "16", "--timeout", "30"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .expect("run synchub bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(out.status.success(), "{report}\n{stderr}");
    assert_eq!(report["completed"], true, "{report}");
    assert!(report["acks"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    report
}

#[actix_rt::test]
async fn synchub_bench_drives_a_tls_hub_over_wss() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = CertPaths::in_dir(dir.path());
    paths.install(&ca.server_cert());
    let ca_file = ca.write_ca(dir.path());
    let ca_file = ca_file.to_str().expect("path");

    // A hub given by --url, its certificate trusted through --ca.
    let env = paths.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // What the bench gives a hub it starts itself.
    for setting in synchub_bench::target::hub_env() {
        env.push(setting);
    }
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(data.path(), &env).await;
    let url = format!("wss://localhost:{}", hub.addr.port());
    let report = bench_writes(&["--url", &url, "--ca", ca_file], &[], dir.path());
    assert_eq!(report["urls"][0], url.as_str());
    // Without --ca the hub's certificate is not trusted: the run fails.
    let out = Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args([
            "bench",
            "writes",
            "--warmup",
            "0",
            "--duration",
            "1",
            "--timeout",
            "5",
        ])
        .args(["--url", &url])
        .env("RUST_LOG", "error")
        .output()
        .expect("run synchub bench");
    assert!(!out.status.success());
    drop(hub);

    // A hub the bench starts itself serves TLS when the environment configures it (with the
    // files named relative to where the bench runs, as a person would).
    let report = bench_writes(
        &["--ca", "ca.pem"],
        &[
            ("SYNCHUB_SERVER_TLS_CERT", "server.crt"),
            ("SYNCHUB_SERVER_TLS_KEY", "server.key"),
        ],
        dir.path(),
    );
    assert_eq!(report["self_started"], true);
    assert!(
        report["urls"][0]
            .as_str()
            .is_some_and(|u| u.starts_with("wss://127.0.0.1:")),
        "{report}"
    );
    assert_eq!(report["hub_stop"], "stopped", "{report}");
}

#[actix_rt::test]
async fn synchub_backup_reads_a_tls_hub_over_https() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = CertPaths::in_dir(dir.path());
    paths.install(&ca.server_cert());
    let ca_file = ca.write_ca(dir.path());
    let env = paths.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(data.path(), &env).await;
    let url = format!("wss://localhost:{}/relay?channel=kept", hub.addr.port());
    let mut ws = connect_wss(&url, ca.client_config()).await;
    assert_eq!(ws.recv_json().await["type"], "connected");
    assert_eq!(
        ws.request_typed(&relay_update(1), "ack").await["version"],
        1
    );

    let https = format!("https://localhost:{}", hub.addr.port());
    let out = dir.path().join("hub.backup");
    let backup = |trust: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_synchub"))
            .args(["backup", "--url", &https, "--out"])
            .arg(&out)
            .args(trust)
            .env("RUST_LOG", "off")
            .output()
            .expect("run synchub backup")
    };
    let untrusted = backup(&[]);
    assert!(!untrusted.status.success());
    let done = backup(&["--ca", ca_file.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(text.contains("1 rooms"), "{text}");
}

/// A client that stops reading is cut off over TLS as over plain TCP: the hub reaches the TCP
/// socket under the TLS stream, so neither the connection nor what was queued for it outlives
/// the grace period.
#[actix_rt::test]
async fn a_tls_client_that_never_reads_again_is_disconnected() {
    let ca = TestCa::new();
    let (hub, _certs) = tls_hub(&ca, |c| {
        c.limits.max_outbound_bytes = 64 * 1024;
        c.limits.max_messages_per_second = 100_000;
    });
    let url = format!("wss://localhost:{}/relay?channel=gone", hub.addr.port());
    // A small receive buffer, so that what the hub sends backs up in the hub soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = within("connect", socket.connect(hub.addr))
        .await
        .expect("connect");
    let (_slow, _) = within(
        "wss upgrade",
        tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(ca.client_config())),
        ),
    )
    .await
    .expect("wss upgrade");
    let mut writer = connect_wss(&url, ca.client_config()).await;
    assert_eq!(writer.recv_json().await["type"], "connected");
    for i in 1..=200u64 {
        common::relay_write_big(&mut writer, i).await;
    }
    let admin = https_client(ca.client_config());
    let stats_url = format!("https://localhost:{}/stats", hub.addr.port());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats: serde_json::Value = admin
            .get(&stats_url)
            .send()
            .await
            .expect("stats")
            .json()
            .limit(64 << 20)
            .await
            .expect("json");
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
