//! The three dialect codecs: decoding a client's write into room requests, and encoding what
//! the hub sends back (a broadcast to many members, an ack, a page of a pull).
//!
//! `cargo bench -p synchub-actors --bench codecs`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use synchub_actors::dialects::{Dialect, Env, Frame};
use synchub_actors::engine::{
    Broadcast, Fetched, NodeId, Origin, RawJson, RoomEvent, SessionId, StreamPage, Submitted,
};
use synchub_actors::pocket::{PocketDialect, PocketLimits, Tag as PocketTag};
use synchub_actors::relay::{RelayDialect, RelayLimits, Tag as RelayTag};
use synchub_actors::storage::LogEntry;
use synchub_actors::synckit::{SynckitDialect, SynckitLimits};
use synchub_actors::{Identity, RoomKey, RoomReply};

fn origin(session: u64) -> Origin {
    Origin {
        node: NodeId::new("bench-node"),
        session: SessionId(session),
    }
}

fn entries(n: u64, stream: &str, body: impl Fn(u64) -> serde_json::Value) -> Vec<LogEntry> {
    (1..=n)
        .map(|seq| LogEntry {
            seq,
            stream: stream.into(),
            key: format!("k{seq}"),
            body: RawJson::from_value(&body(seq)),
            origin: Some(origin(99)),
        })
        .collect()
}

fn event(room: &RoomKey, entries: Vec<LogEntry>, stream: &str) -> RoomEvent {
    let heads = HashMap::from([(stream.to_owned(), 0)]);
    RoomEvent(Arc::new(Broadcast::new(room.clone(), entries, heads)))
}

fn relay_change(seq: u64) -> serde_json::Value {
    json!([
        "todos",
        format!("row-{seq}"),
        "title",
        "buy milk",
        3,
        seq,
        "site-a",
        1,
        0
    ])
}

fn relay(c: &mut Criterion) {
    let room = RoomKey::new(synchub_actors::relay::NAMESPACE, "bench").expect("room");
    let identity = Identity::anonymous();
    let me = origin(1);
    let env = Env {
        origin: &me,
        identity: &identity,
    };
    let mut d = RelayDialect::new(
        room.clone(),
        "a".repeat(32),
        RelayLimits {
            max_per_message: 1000,
            max_json_depth: 64,
            max_value_bytes: 1 << 20,
        },
    );
    let update = json!({"type": "update", "changes": [relay_change(1)], "version": 1,
                        "siteId": "site-a", "channel": "bench"})
    .to_string();
    c.bench_function("relay/decode update (1 change)", |b| {
        b.iter(|| black_box(d.on_frame(&env, Frame::Text(black_box(&update)))))
    });
    c.bench_function("relay/encode ack", |b| {
        b.iter(|| {
            let s = Submitted {
                accepted: 1,
                seq: 42,
                ..Submitted::default()
            };
            black_box(d.on_reply(&env, RelayTag::Update, Ok(RoomReply::Submitted(s))))
        })
    });
    c.bench_function("relay/encode broadcast (8 changes, first member)", |b| {
        b.iter_batched(
            || event(&room, entries(8, "", relay_change), ""),
            |e| black_box(d.on_event(&env, &e)),
            BatchSize::SmallInput,
        )
    });
    let shared = event(&room, entries(8, "", relay_change), "");
    d.on_event(&env, &shared);
    c.bench_function(
        "relay/encode broadcast (8 changes, every other member)",
        |b| b.iter(|| black_box(d.on_event(&env, &shared))),
    );
    c.bench_function("relay/encode pull page (1000 changes)", |b| {
        b.iter_batched(
            || {
                RoomReply::Fetched(Fetched {
                    pages: vec![StreamPage {
                        stream: String::new(),
                        entries: entries(1000, "", relay_change),
                        more: false,
                    }],
                    seq: 1000,
                })
            },
            |r| black_box(d.on_reply(&env, RelayTag::Pull, Ok(r))),
            BatchSize::SmallInput,
        )
    });
}

fn pocket_change(seq: u64) -> serde_json::Value {
    json!({"operation": "insert", "documentId": format!("d{seq}"),
           "document": {"_id": format!("d{seq}"), "title": "buy milk", "done": false},
           "timestamp": 1_700_000_000_000u64, "sequence": seq})
}

fn pocket(c: &mut Criterion) {
    let room = RoomKey::new(synchub_actors::pocket::NAMESPACE, "bench").expect("room");
    let identity = Identity::anonymous();
    let me = origin(1);
    let env = Env {
        origin: &me,
        identity: &identity,
    };
    let mut d = PocketDialect::new(room.clone(), PocketLimits::default());
    let push = json!({"type": "push", "id": "p1", "timestamp": 1, "collection": "todos",
                      "changes": [{"operation": "insert", "documentId": "d1",
                                   "document": {"title": "buy milk", "done": false},
                                   "timestamp": 1}],
                      "checkpoint": {"global": 0}})
    .to_string();
    c.bench_function("pocket/decode push (1 change)", |b| {
        b.iter(|| black_box(d.on_frame(&env, Frame::Text(black_box(&push)))))
    });
    c.bench_function("pocket/encode push-response", |b| {
        b.iter(|| {
            let s = Submitted {
                accepted: 1,
                seq: 42,
                heads_before: HashMap::from([("todos".to_owned(), 41)]),
                ..Submitted::default()
            };
            let tag = PocketTag::Push {
                id: "p1".into(),
                collection: "todos".into(),
                position: 41,
            };
            black_box(d.on_reply(&env, tag, Ok(RoomReply::Submitted(s))))
        })
    });
    c.bench_function("pocket/encode broadcast (8 changes, first member)", |b| {
        b.iter_batched(
            || event(&room, entries(8, "todos", pocket_change), "todos"),
            |e| black_box(d.on_event(&env, &e)),
            BatchSize::SmallInput,
        )
    });
}

fn synckit(c: &mut Criterion) {
    let room = RoomKey::new(synchub_actors::synckit::NAMESPACE, "bench").expect("room");
    let identity = Identity::anonymous();
    let me = origin(1);
    let env = Env {
        origin: &me,
        identity: &identity,
    };
    let mut d = SynckitDialect::new(
        true,
        false,
        SynckitLimits {
            max_document_bytes: 262_144,
            max_json_depth: 64,
            max_rooms: 128,
            max_clock_skew_ms: 600_000,
        },
    );
    let payload = json!({"documentId": "bench", "field": "title", "value": "buy milk",
                         "clock": {"client-a": 7}, "clientId": "client-a",
                         "timestamp": 1_700_000_000_000u64, "messageId": "m7"})
    .to_string();
    let mut delta = vec![0x20];
    delta.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    delta.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    delta.extend_from_slice(payload.as_bytes());
    c.bench_function("synckit/decode binary delta (1 field)", |b| {
        b.iter(|| black_box(d.on_frame(&env, Frame::Binary(black_box(&delta)))))
    });
    let logged = |seq: u64| {
        json!({"field": format!("f{seq}"), "value": "buy milk", "clock": {"client-a": seq},
               "clientId": "client-a", "timestamp": 1_700_000_000_000u64, "seq": seq})
    };
    c.bench_function("synckit/encode broadcast (8 fields, first member)", |b| {
        b.iter_batched(
            || event(&room, entries(8, "", logged), ""),
            |e| black_box(d.on_event(&env, &e)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, relay, pocket, synckit);
criterion_main!(benches);
