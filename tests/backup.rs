//! Online backup and restore with the real binary: `synchub backup` against a hub that goes on
//! taking writes, `synchub restore` into a new directory, and a hub started on it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ChildHub, Ws, get};
use serde_json::{Value, json};

fn synchub(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synchub"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run synchub");
    eprintln!(
        "synchub {}: {}{}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn relay_update(key: &str, v: u64) -> Value {
    let change = json!(["t", key, "v", v, 1, 1, "w", 1, 0]);
    json!({"type": "update", "changes": [change], "version": 0, "siteId": "w"})
}

/// Writes one relay cell; its version once acked.
async fn relay_write(ws: &mut Ws, key: &str, v: u64) -> u64 {
    let ack = ws.request_typed(&relay_update(key, v), "ack").await;
    ack["version"].as_u64().expect("version")
}

/// Every cell of a relay channel: key → the version it was logged at. The pull's last page
/// carries the channel's version as of the pull, which `connected` announced.
async fn relay_cells(hub: &ChildHub, channel: &str) -> BTreeMap<String, u64> {
    let mut ws = Ws::connect(&hub.ws_url(&format!("/relay?channel={channel}"))).await;
    let hello = ws.recv_json().await;
    assert_eq!(hello["type"], "connected");
    let version = hello["version"].as_u64().expect("version");
    ws.send_json(&json!({"type": "pull", "version": 0})).await;
    let mut cells = BTreeMap::new();
    loop {
        let m = ws.recv_json().await;
        if m["type"] != "update" {
            continue;
        }
        for c in m["changes"].as_array().expect("changes") {
            cells.insert(
                c[1].as_str().expect("pk").to_owned(),
                c[5].as_u64().expect("db_version"),
            );
        }
        if m["version"].as_u64() >= Some(version) {
            return cells;
        }
    }
}

async fn room(hub: &ChildHub, path: &str) -> (Value, Value) {
    let (status, r) = get(&hub.http_url(&format!("/stats/rooms/{path}"))).await;
    assert_eq!(status, 200, "{r}");
    (r["seq"].clone(), r["digest"].clone())
}

/// `synchub backup` from the hub at `http`, then `synchub restore` of it into `work`; answers
/// the restored data directory's parent (as `ChildHub::spawn` takes it).
fn backup_and_restore(http: &str, work: &Path) -> std::path::PathBuf {
    let file = work.join("hub.backup");
    let out = synchub(&[
        "backup",
        "--url",
        http,
        "--out",
        file.to_str().expect("path"),
    ]);
    assert!(out.status.success());
    let restored = work.join("restored");
    let out = synchub(&[
        "restore",
        file.to_str().expect("path"),
        "--data",
        restored.join("db").to_str().expect("path"),
    ]);
    assert!(out.status.success());
    restored
}

#[actix_rt::test]
async fn a_quiet_hub_restores_to_the_same_rooms_sequences_and_digests() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(data.path(), &[]).await;
    // A relay channel with rewrites (and a compaction), a Pocket room with a delete.
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=quiet")).await;
    for i in 0..300 {
        relay_write(&mut relay, &format!("k{}", i % 40), i).await;
    }
    let (status, _) = common::http(
        "POST",
        &hub.http_url("/admin/rooms/relay/quiet/compact"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut pocket = Ws::connect(&hub.ws_url("/sync?room=quiet")).await;
    for (id, doc) in [("a", json!({"v": 1})), ("b", json!({"v": 2}))] {
        let push = json!({"type": "push", "id": id, "collection": "todos", "checkpoint": {},
            "changes": [{"operation": "insert", "documentId": id, "document": doc}]});
        assert_eq!(pocket.request(&push).await["success"], true);
    }
    let del = json!({"type": "push", "id": "d", "collection": "todos", "checkpoint": {},
        "changes": [{"operation": "delete", "documentId": "a", "document": null}]});
    assert_eq!(pocket.request(&del).await["success"], true);
    let before = [
        room(&hub, "relay/quiet").await,
        room(&hub, "pocket/quiet").await,
    ];
    let cells = relay_cells(&hub, "quiet").await;

    let work = tempfile::tempdir().expect("tempdir");
    let restored = backup_and_restore(&hub.http_url(""), work.path());
    drop(hub);
    let hub = ChildHub::spawn(&restored, &[]).await;
    let after = [
        room(&hub, "relay/quiet").await,
        room(&hub, "pocket/quiet").await,
    ];
    assert_eq!(after, before);
    assert_eq!(relay_cells(&hub, "quiet").await, cells);
    // It goes on numbering from where the backup was.
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=quiet")).await;
    let next = relay_write(&mut relay, "new", 1).await;
    assert_eq!(Some(next), before[0].0.as_u64().map(|s| s + 1));
}

#[actix_rt::test]
async fn a_backup_during_writes_holds_every_change_acked_before_it_began() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(data.path(), &[]).await;
    let url = hub.ws_url("/relay?channel=busy");
    let mut ws = Ws::connect(&url).await;
    let mut acked: Vec<(String, u64, Instant)> = Vec::new();
    for i in 0..500 {
        let key = format!("pre-{i}");
        let v = relay_write(&mut ws, &key, i).await;
        acked.push((key, v, Instant::now()));
    }
    // A writer that keeps going while the backup runs.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = actix_rt::spawn(async move {
        let mut acked = acked;
        let mut i = 0u64;
        loop {
            if stop_rx.try_recv().is_ok() {
                return acked;
            }
            let key = format!("live-{i}");
            let v = relay_write(&mut ws, &key, i).await;
            acked.push((key, v, Instant::now()));
            i += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let work = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let http = hub.http_url("");
    let work_path = work.path().to_owned();
    let restored = tokio::task::spawn_blocking(move || backup_and_restore(&http, &work_path))
        .await
        .expect("backup and restore");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(());
    let acked = writer.await.expect("writer");
    let before: Vec<&(String, u64, Instant)> =
        acked.iter().filter(|(_, _, at)| *at < started).collect();
    let after_start = acked.len() - before.len();
    assert!(
        before.len() > 500 && after_start > 0,
        "writes went on during the backup"
    );
    let restored_hub = ChildHub::spawn(&restored, &[]).await;
    let cells = relay_cells(&restored_hub, "busy").await;
    for (key, v, _) in before {
        assert_eq!(
            cells.get(key),
            Some(v),
            "{key} acked before the backup began"
        );
    }
    // What it holds is a prefix of the room's history: no number is missing below its last.
    let mut versions: Vec<u64> = cells.values().copied().collect();
    versions.sort();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<u64>>());
}

#[test]
fn restore_refuses_a_directory_in_use_and_a_damaged_file() {
    let work = tempfile::tempdir().expect("tempdir");
    let busy = work.path().join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    std::fs::write(busy.join("something"), b"x").expect("write");
    let file = work.path().join("some.backup");
    std::fs::write(&file, b"{\"synchub_backup\":1}\nK\0\0").expect("write");
    let out = synchub(&[
        "restore",
        file.to_str().expect("path"),
        "--data",
        busy.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    let fresh = work.path().join("fresh");
    let out = synchub(&[
        "restore",
        file.to_str().expect("path"),
        "--data",
        fresh.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    assert!(!fresh.exists(), "a failed restore leaves nothing behind");
}
