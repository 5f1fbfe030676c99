//! A full disk, for real: the hub's data directory on a small tmpfs the test mounts (mounting
//! needs root, which the test command has in CI). Writes are refused with the dialect's
//! retryable error and never acked, sockets stay open, reads go on, `/health` says why, and once
//! space is freed the hub takes writes again by itself; every acked change survives a SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{RedisServer, converged, node_env, start_node};
use common::{ChildHub, Ws, get};
use serde_json::{Value, json};

/// A tmpfs of `mb` MiB mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mb: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test needs root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn update(key: &str) -> Value {
    let change = json!(["t", key, "v", "x".repeat(4000), 1, 1, "w", 1, 0]);
    json!({"type": "update", "changes": [change], "version": 0, "siteId": "w"})
}

/// Sends one change; `Ok(version)` when acked, `Err(code)` when refused.
async fn write(ws: &mut Ws, key: &str) -> Result<u64, String> {
    ws.send_json(&update(key)).await;
    loop {
        let m = ws.recv_json().await;
        match m["type"].as_str() {
            Some("ack") => return Ok(m["version"].as_u64().expect("version")),
            Some("error") => return Err(m["code"].as_str().unwrap_or_default().to_owned()),
            _ => {}
        }
    }
}

/// The keys of every cell the channel holds, read with a `pull` from 0 on a new connection
/// (its last page carries the version `connected` announced).
async fn read_fresh(hub: &ChildHub) -> Result<BTreeSet<String>, String> {
    let mut ws = Ws::connect(&hub.ws_url("/relay?channel=full")).await;
    let hello = ws.recv_json().await;
    let version = hello["version"].as_u64().expect("connected version");
    ws.send_json(&json!({"type": "pull", "version": 0})).await;
    let mut keys = BTreeSet::new();
    loop {
        let m = ws.recv_json().await;
        match m["type"].as_str() {
            Some("update") => {
                for c in m["changes"].as_array().expect("changes") {
                    keys.insert(c[1].as_str().expect("pk").to_owned());
                }
                if m["version"].as_u64() >= Some(version) {
                    return Ok(keys);
                }
            }
            Some("error") => return Err(m["code"].as_str().unwrap_or_default().to_owned()),
            _ => {}
        }
    }
}

async fn metric(hub: &ChildHub, name: &str) -> f64 {
    let (_, body) = get(&hub.http_url("/metrics")).await;
    let text = body.as_str().expect("metrics text").to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Asserts the socket is still open and answered: a pull past the end is answered with an
/// empty `update` (or a refusal); broadcasts before it are skipped.
async fn still_open(ws: &mut Ws) {
    ws.send_json(&json!({"type": "pull", "version": u64::MAX / 2}))
        .await;
    loop {
        let m = ws.recv_json().await;
        match m["type"].as_str() {
            Some("update") if m["changes"] == json!([]) => return,
            Some("error") => return,
            _ => {}
        }
    }
}

/// Writes a change every 100 ms, at most `tries` times, until one is acked; answers its key.
async fn write_once_back(writer: &mut Ws, tries: usize) -> Option<String> {
    for i in 0..tries {
        let key = format!("after-{i}");
        if write(writer, &key).await.is_ok() {
            return Some(key);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Writes until the disk refuses 20 changes, each with the retryable error; what was acked
/// meanwhile joins `acked`. Answers the refused keys.
async fn write_until_full(writer: &mut Ws, acked: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut refused = BTreeSet::new();
    for i in 0..5000 {
        let key = format!("during-{i}");
        match write(writer, &key).await {
            Ok(_) => {
                acked.insert(key);
            }
            Err(code) => {
                assert_eq!(code, "UNAVAILABLE", "a full disk is a retryable refusal");
                refused.insert(key);
                if refused.len() == 20 {
                    return refused;
                }
            }
        }
    }
    panic!("the disk never filled");
}

#[actix_rt::test]
async fn a_full_disk_refuses_writes_keeps_sessions_and_recovers_by_itself() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (the test command runs as root in CI)");
        return;
    }
    let disk = Tmpfs::mount(24);
    let data: PathBuf = disk.path().to_owned();
    let mut hub = ChildHub::spawn(&data, &[("SYNCHUB_STORAGE_CACHE_BYTES", "8388608")]).await;
    let url = hub.ws_url("/relay?channel=full");
    let mut writer = Ws::connect(&url).await;
    let mut reader = Ws::connect(&url).await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let key = format!("before-{i}");
        write(&mut writer, &key).await.expect("room on the disk");
        acked.insert(key);
    }
    // Leave the hub a little room, then write until it is gone.
    let filler = data.join("filler");
    let keep = 3 << 20;
    let fill = disk.free().saturating_sub(keep);
    std::fs::write(&filler, vec![7u8; fill as usize]).expect("fill the disk");
    write_until_full(&mut writer, &mut acked).await;
    // Sessions stay open; health says why; the failure is counted.
    still_open(&mut writer).await;
    still_open(&mut reader).await;
    let (status, health) = get(&hub.http_url("/health")).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(
        (health["status"].as_str(), health["storage"].as_str()),
        (Some("degraded"), Some("disk full")),
        "{health}"
    );
    assert_eq!(metric(&hub, "synchub_storage_failing").await, 1.0);
    assert!(metric(&hub, "synchub_flush_errors_total").await >= 1.0);
    // Reads go on while the disk is full, on a new connection too: exactly what was acked,
    // never a refused change.
    assert_eq!(read_fresh(&hub).await.expect("reads on a full disk"), acked);

    // Space again: the hub takes writes by itself, within seconds.
    std::fs::remove_file(&filler).expect("free the disk");
    let back = write_once_back(&mut writer, 100).await;
    assert!(
        back.is_some(),
        "the hub did not take writes again within 10 s"
    );
    acked.extend(back);
    assert_eq!(read_fresh(&hub).await.expect("reads"), acked);
    still_open(&mut reader).await;
    let (status, health) = get(&hub.http_url("/health")).await;
    assert_eq!((status, health["storage"].as_str()), (200, Some("ok")));
    assert_eq!(metric(&hub, "synchub_storage_failing").await, 0.0);
    assert!(metric(&hub, "synchub_storage_recoveries_total").await >= 1.0);
    let (_, stats) = get(&hub.http_url("/stats")).await;
    assert!(
        stats["storage"]["recoveries"].as_u64() >= Some(1),
        "{stats}"
    );

    // Every acked change is durable: after a SIGKILL they are all there.
    hub.sigkill();
    let hub = ChildHub::spawn(&data, &[]).await;
    assert_eq!(read_fresh(&hub).await.expect("reads"), acked);
}

/// A cluster node whose disk fills: its writes are refused retryably while the other node goes
/// on, its sessions stay open, and once space returns it reloads what is durable, catches up
/// with the cluster and takes writes again, by itself; both nodes end with every acked change.
#[actix_rt::test]
async fn a_cluster_node_on_a_full_disk_keeps_its_sessions_and_catches_up_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (the test command runs as root in CI)");
        return;
    }
    let redis = RedisServer::start();
    let env = node_env(&redis.url());
    let disk = Tmpfs::mount(24);
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut small_cache = env.clone();
    small_cache.push(("SYNCHUB_STORAGE_CACHE_BYTES".into(), "8388608".into()));
    let a = start_node(disk.path(), &small_cache).await;
    let b = start_node(elsewhere.path(), &env).await;
    let mut writer = Ws::connect(&a.ws_url("/relay?channel=full")).await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let key = format!("before-{i}");
        write(&mut writer, &key).await.expect("room on the disk");
        acked.insert(key);
    }
    let filler = disk.path().join("filler");
    let fill = disk.free().saturating_sub(3 << 20);
    std::fs::write(&filler, vec![7u8; fill as usize]).expect("fill the disk");
    let refused = write_until_full(&mut writer, &mut acked).await;
    still_open(&mut writer).await;
    // The other node takes writes all along.
    let mut other = Ws::connect(&b.ws_url("/relay?channel=full")).await;
    for i in 0..5 {
        let key = format!("elsewhere-{i}");
        write(&mut other, &key)
            .await
            .expect("the other node writes");
        acked.insert(key);
    }

    std::fs::remove_file(&filler).expect("free the disk");
    let back = write_once_back(&mut writer, 200).await;
    assert!(
        back.is_some(),
        "the node did not take writes again within 20 s"
    );
    acked.extend(back);
    still_open(&mut writer).await;
    converged(&[&a, &b], "relay/full", 0).await;
    // Both nodes hold every acked change. A refused write may be there too: the cluster had
    // numbered it before the disk refused it, and a node applies every numbered batch (its
    // client retries, and the resend merges as a no-op). Nothing else is.
    let on_a = read_fresh(&a).await.expect("reads");
    assert_eq!(on_a, read_fresh(&b).await.expect("reads"));
    assert!(on_a.is_superset(&acked), "an acked change is missing");
    let extra: BTreeSet<String> = on_a.difference(&acked).cloned().collect();
    assert!(extra.is_subset(&refused), "{extra:?} was never written");
}

/// Runs `synchub serve` on `data`, which must fail at start: the lines it printed.
fn serve_fails_at_start(cwd: &Path, data: &Path) -> Vec<String> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
        .arg("serve")
        .current_dir(cwd)
        .env(
            "SYNCHUB_SERVER_BIND",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("SYNCHUB_STORAGE_PATH", data)
        .env("SYNCHUB_AUTH_REQUIRED", "false")
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run synchub");
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("synchub started on {}", data.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("its output");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[actix_rt::test]
async fn a_hub_that_cannot_open_its_store_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where the data directory should be.
    let blocked = dir.path().join("db");
    std::fs::write(&blocked, b"not a directory").expect("write");
    let lines = serve_fails_at_start(dir.path(), &blocked);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("synchub: cannot open storage in"),
        "{lines:?}"
    );
}

#[actix_rt::test]
async fn a_second_hub_on_a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    let lines = serve_fails_at_start(dir.path(), &dir.path().join("db"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("synchub: cannot open storage in") && lines[0].contains("in use"),
        "{lines:?}"
    );
    // The first hub goes on undisturbed.
    let mut writer = Ws::connect(&hub.ws_url("/relay?channel=one")).await;
    write(&mut writer, "still-mine")
        .await
        .expect("the first hub writes");
}
