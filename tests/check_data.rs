//! `synchub check-data` on a data directory a real hub wrote, then on copies with a byte of a
//! stored change altered.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::{ChildHub, Ws};
use serde_json::json;
use synchub_actors::storage::{DEFAULT_CACHE_BYTES, FjallKv, Kv, KvBatch};

fn check_data(dir: &Path) -> (bool, String) {
    common::run_synchub(&["check-data".as_ref(), dir.as_os_str()])
}

/// Replaces the first `from` inside a stored log segment of the relay channel with `to`.
fn alter_log(dir: &Path, from: &[u8], to: &[u8]) {
    let kv = FjallKv::open(dir, DEFAULT_CACHE_BYTES).expect("open the copy");
    let prefix = b"lrelay/chk\0".to_vec();
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut hit = None;
    kv.scan(&prefix, &end, &mut |k, v| {
        if let Some(at) = v.windows(from.len()).position(|w| w == from) {
            let mut changed = v.to_vec();
            changed.splice(at..at + from.len(), to.iter().copied());
            hit = Some((k.to_vec(), changed));
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })
    .expect("scan");
    let (k, v) = hit.expect("the change is in the log");
    let mut b = KvBatch::default();
    b.insert(k, v);
    kv.apply(b).expect("write");
    kv.flush().expect("flush");
}

#[actix_rt::test]
async fn check_data_passes_a_whole_directory_and_names_what_is_corrupt() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::spawn(data.path(), &[]).await;
    let mut relay = Ws::connect(&hub.ws_url("/relay?channel=chk")).await;
    for i in 0..50u64 {
        let change = json!([
            "t",
            format!("k{}", i % 7),
            "v",
            7_770_000 + i,
            1,
            1,
            "w",
            1,
            0
        ]);
        let update = json!({"type": "update", "changes": [change], "version": 0, "siteId": "w"});
        relay.request_typed(&update, "ack").await;
    }
    let mut pocket = Ws::connect(&hub.ws_url("/sync?room=chk")).await;
    let push = json!({"type": "push", "id": "p", "collection": "todos", "checkpoint": {},
        "changes": [{"operation": "insert", "documentId": "d", "document": {"t": "x"}}]});
    assert_eq!(pocket.request(&push).await["success"], true);
    assert!(hub.terminate().success());
    let db = data.path().join("db");

    let (ok, text) = check_data(&db);
    assert!(ok, "{text}");
    assert!(text.contains("ok       relay/chk: seq 50"), "{text}");
    assert!(text.contains("ok       pocket/chk: seq 1"), "{text}");
    assert!(text.contains("2 rooms, 0 corrupt"), "{text}");

    // One digit of the latest value of a cell: still JSON, but not what the counters say.
    let work = tempfile::tempdir().expect("tempdir");
    let digit = work.path().join("digit");
    common::copy_dir(&db, &digit);
    alter_log(&digit, b"7770049", b"7770048");
    let (ok, text) = check_data(&digit);
    assert!(!ok, "{text}");
    assert!(
        text.contains("CORRUPT  relay/chk: its state's digest is"),
        "{text}"
    );
    assert!(text.contains("ok       pocket/chk"), "{text}");
    assert!(text.contains("2 rooms, 1 corrupt"), "{text}");

    // A byte that breaks the change's JSON.
    let broken = work.path().join("broken");
    common::copy_dir(&db, &broken);
    alter_log(&broken, b"7770049", b"77700x9");
    let (ok, text) = check_data(&broken);
    assert!(!ok, "{text}");
    assert!(
        text.contains("CORRUPT  relay/chk: cannot be replayed"),
        "{text}"
    );

    // Not a data directory at all.
    let (ok, text) = check_data(&work.path().join("nothing"));
    assert!(!ok);
    assert!(text.contains("is not a data directory"), "{text}");
}
