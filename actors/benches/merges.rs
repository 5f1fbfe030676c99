//! The three merges: one incoming change against the record it addresses, winning, and the
//! state it leaves (what a room does per change before numbering it).
//!
//! `cargo bench -p synchub-actors --bench merges`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use synchub_actors::dialects::{IncomingChange, Merge, Model};
use synchub_actors::pocket::{PocketModel, Strategy};
use synchub_actors::relay::{RelayModel, parse_change};
use synchub_actors::synckit::SynckitModel;

fn relay(c: &mut Criterion) {
    let model = RelayModel;
    let stored =
        parse_change(&json!(["todos", "1", "title", "old", 1, 1, "site-a", 1, 0])).expect("valid");
    let Some(current) = applied(&model, &mut Value::Null, None, &stored) else {
        panic!("the first write applies");
    };
    let incoming =
        parse_change(&json!(["todos", "1", "title", "new", 2, 2, "site-b", 1, 0])).expect("valid");
    c.bench_function("relay/merge (column version wins)", |b| {
        b.iter(|| {
            black_box(applied(
                &model,
                &mut Value::Null,
                Some(&current),
                black_box(&incoming),
            ))
        })
    });
}

fn pocket(c: &mut Criterion) {
    let doc = |v: &str, at: u64| {
        json!({"_id": "d1", "title": v, "done": false, "_updatedAt": at,
                                        "_rev": format!("{at}-x"), "_vclock": {"a": at}})
    };
    let change = |v: &str, at: u64| IncomingChange {
        stream: "todos".into(),
        key: "d1".into(),
        body: json!({"operation": "update", "documentId": "d1", "document": doc(v, at),
                     "timestamp": at}),
    };
    let current = doc("old", 1);
    let incoming = change("new", 2);
    for strategy in [Strategy::LastWriteWins, Strategy::Merge] {
        let model = PocketModel {
            default_strategy: strategy,
            ..PocketModel::default()
        };
        c.bench_function(&format!("pocket/merge ({strategy:?})"), |b| {
            b.iter(|| {
                black_box(applied(
                    &model,
                    &mut Value::Null,
                    Some(&current),
                    black_box(&incoming),
                ))
            })
        });
    }
}

fn synckit(c: &mut Criterion) {
    let model = SynckitModel::default();
    let write = |ts: u64, counter: u64| IncomingChange {
        stream: String::new(),
        key: "title".into(),
        body: json!({"value": "buy milk", "ts": ts, "counter": counter, "writer": "client-a",
                     "clock": {"client-a": counter}}),
    };
    let mut clock = Value::Null;
    let Some(current) = applied(&model, &mut clock, None, &write(1, 1)) else {
        panic!("the first write applies");
    };
    let incoming = write(2, 2);
    c.bench_function("synckit/merge (newer timestamp wins)", |b| {
        b.iter(|| {
            let mut clock = clock.clone();
            black_box(applied(
                &model,
                &mut clock,
                Some(&current),
                black_box(&incoming),
            ))
        })
    });
}

fn applied(
    model: &dyn Model,
    room: &mut Value,
    current: Option<&Value>,
    change: &IncomingChange,
) -> Option<Value> {
    match model.merge(room, current, change) {
        Merge::Apply { logged } => Some(model.state_of(&logged)),
        _ => None,
    }
}

criterion_group!(benches, relay, pocket, synckit);
criterion_main!(benches);
