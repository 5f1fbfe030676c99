//! Upgrades: data directories earlier versions wrote (storage format 1 of synchub 0.1, kept in
//! `tests/fixtures/format1/`, and format 2 in sled, in `tests/fixtures/format2/`) are upgraded
//! when a hub starts on them, or by `synchub migrate`, and every room comes back with the
//! sequence number, records and digest the version that wrote it reported.

mod common;

use std::path::{Path, PathBuf};

use common::{ChildHub, Ws, get};
use serde_json::{Value, json};

fn fixture(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format{format}"))
}

/// What the version that wrote the fixture reported for each room before it stopped:
/// `{room: {seq, digest, records}}`.
fn expected(format: u32) -> serde_json::Map<String, Value> {
    let raw = std::fs::read(fixture(format).join("expected.json")).expect("expected.json");
    let v: Value = serde_json::from_slice(&raw).expect("json");
    v.as_object().expect("rooms").clone()
}

/// A copy of the fixture's data directory, as `<tmp>/db`.
fn copy_fixture(format: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    common::copy_dir(&fixture(format).join("data"), &dir.path().join("db"));
    dir
}

async fn assert_rooms_as_they_were(hub: &ChildHub, format: u32) {
    for (room, want) in expected(format) {
        let (status, got) = get(&hub.http_url(&format!("/stats/rooms/{room}"))).await;
        assert_eq!(status, 200, "{room}: {got}");
        for field in ["seq", "digest", "records"] {
            assert_eq!(got[field], want[field], "{room} {field}: {got}");
        }
    }
}

async fn pocket_docs(hub: &ChildHub) -> Vec<(String, u64, Value)> {
    let mut ws = Ws::connect(&hub.ws_url("/sync?room=fx")).await;
    let r = ws
        .request(&json!({"type": "pull", "id": "q", "timestamp": 1,
                         "collections": ["todos", "notes"], "checkpoint": {}, "limit": 1000}))
        .await;
    let mut docs = Vec::new();
    for c in ["todos", "notes"] {
        for change in r["changes"][c].as_array().expect("changes") {
            docs.push((
                change["documentId"].as_str().expect("id").to_owned(),
                change["sequence"].as_u64().expect("sequence"),
                change["document"].clone(),
            ));
        }
    }
    docs
}

/// The upgraded hub takes a write after the 20 relay changes both fixtures hold, and a second
/// start reads the new format as it is.
async fn goes_on_after_a_restart(hub: ChildHub, dir: &Path) {
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=fx")).await;
    let change = json!(["todo", "r9", "title", "new", 1, 1, "site-b", 1, 0]);
    let ack = relay
        .request_typed(
            &json!({"type": "update", "changes": [change], "version": 0, "siteId": "site-b"}),
            "ack",
        )
        .await;
    assert_eq!(ack["version"], 21);
    drop(hub);
    let hub = ChildHub::spawn(dir, &[]).await;
    let (_, relay_room) = get(&hub.http_url("/stats/rooms/relay/fx")).await;
    assert_eq!(relay_room["seq"], 21);
}

#[actix_rt::test]
async fn a_format_1_directory_is_upgraded_at_start_and_loses_nothing() {
    let dir = copy_fixture(1);
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    assert_rooms_as_they_were(&hub, 1).await;
    let docs = pocket_docs(&hub).await;
    let ids: Vec<&str> = docs.iter().map(|(id, _, _)| id.as_str()).collect();
    // d2's delete had left the log in 0.1 (its tombstone lives on in the state, counted in
    // `records`); what the log held is served, in order, with the numbers it was logged at.
    assert_eq!(ids, ["d3", "d4", "d5", "d1", "n1", "n2"]);
    assert_eq!(docs[3].2["title"], "todo 1 again");
    let seqs: Vec<u64> = docs.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(seqs, [3, 4, 5, 6, 8, 9]);
    // The old layout is kept beside it, and the hub goes on from where it was.
    assert!(dir.path().join("db.format1").exists());
    goes_on_after_a_restart(hub, dir.path()).await;
}

#[actix_rt::test]
async fn a_format_2_directory_is_upgraded_at_start_and_loses_nothing() {
    let dir = copy_fixture(2);
    let hub = ChildHub::spawn(dir.path(), &[]).await;
    assert_rooms_as_they_were(&hub, 2).await;
    let docs = pocket_docs(&hub).await;
    let ids: Vec<&str> = docs.iter().map(|(id, _, _)| id.as_str()).collect();
    // What the format-2 hub served from this directory, with the same numbers.
    assert_eq!(ids, ["d3", "d4", "d5", "d1", "n1", "n2"]);
    let seqs: Vec<u64> = docs.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(seqs, [3, 4, 5, 6, 8, 9]);
    assert!(dir.path().join("db.format2").exists());
    goes_on_after_a_restart(hub, dir.path()).await;
}

#[test]
fn synchub_migrate_upgrades_a_stopped_directory_and_check_data_passes_it() {
    for format in [1, 2] {
        migrate_and_check(format);
    }
}

fn migrate_and_check(format: u32) {
    let dir = copy_fixture(format);
    let db = dir.path().join("db");
    let run = |args: &[&std::ffi::OsStr]| common::run_synchub(args);
    let (ok, text) = run(&["migrate".as_ref(), db.as_os_str()]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("upgraded from storage format {format}")),
        "{text}"
    );
    let (ok, text) = run(&["migrate".as_ref(), db.as_os_str()]);
    assert!(ok && text.contains("already"), "{text}");
    let (ok, text) = run(&["check-data".as_ref(), db.as_os_str()]);
    assert!(ok, "{text}");
    for (room, want) in expected(format) {
        let line = format!(
            "ok       {room}: seq {}, {} records, digest {}",
            want["seq"],
            want["records"],
            want["digest"].as_str().expect("digest")
        );
        assert!(text.contains(&line), "{line} in {text}");
    }
}
