//! SyncKit deltas from distinct writers, through the codec, merged in the order given and in
//! another: the fields and the document clock converge, and both rooms read back.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use synchub_actors::dialects::{Dialect, Frame, IncomingChange};
use synchub_actors::synckit::SynckitModel;
use synchub_fuzz::{Caller, Engine, changes_in, synckit};

#[derive(Arbitrary, Debug)]
struct Delta {
    field: u8,
    value: Option<i16>,
    timestamp: u8,
    /// Clock entries: writer number, count.
    clock: Vec<(u8, u64)>,
    /// The SDK names its writer; otherwise the session does.
    client_id: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    deltas: Vec<Delta>,
    order: Vec<u16>,
    /// Whether deltas carry their clocks; without clocks, arrival order cannot matter.
    clocks: bool,
}

/// A field record's place in the LWW order: `[t, c, w, …]`.
fn stamp(record: &Value) -> (f64, u64, String) {
    (
        record[0].as_f64().unwrap_or(0.0),
        record[1].as_u64().unwrap_or(0),
        record[2].as_str().unwrap_or("").to_owned(),
    )
}

/// Merges `submits` in `order`, checking after each that no field's stamp and no clock entry
/// went backwards (a write may only replace what it beats; clocks only grow).
fn run(submits: &[Vec<IncomingChange>], order: impl Iterator<Item = usize>) -> Engine {
    let mut room = Engine::new(
        synchub_actors::synckit::NAMESPACE,
        Arc::new(SynckitModel::default()),
    );
    for i in order {
        let before_clock = room.state.meta().model.clone();
        let before = room.records();
        room.submit(submits[i].clone());
        let after = room.records();
        for (_, field, record) in &before {
            let now = after
                .iter()
                .find(|(_, f, _)| f == field)
                .map(|(_, _, r)| r)
                .expect("a field never disappears");
            let (old, new) = (stamp(record), stamp(now));
            assert!(
                (new.0, new.1, &new.2) >= (old.0, old.1, &old.2),
                "{field}: {record} replaced by {now}"
            );
        }
        let clock = &room.state.meta().model;
        for (writer, n) in before_clock.as_object().into_iter().flatten() {
            let now = clock.get(writer).and_then(Value::as_u64).unwrap_or(0);
            assert!(
                now >= n.as_u64().unwrap_or(0),
                "clock went back: {before_clock} → {clock}"
            );
        }
    }
    room
}

fuzz_target!(|input: Input| {
    // One writer per delta: each writer's own deltas keep their order on its connection, so
    // only deltas of distinct writers may arrive in any order.
    let mut submits = Vec::new();
    for (i, d) in input.deltas.iter().take(32).enumerate() {
        let clock: serde_json::Map<String, Value> = d
            .clock
            .iter()
            .take(if input.clocks { 4 } else { 0 })
            .map(|(w, n)| (format!("w{}", w % 8), json!(n)))
            .collect();
        let field = ["a", "b", "c"][usize::from(d.field % 3)];
        let mut msg = json!({
            "type": "delta",
            "id": format!("d{i}"),
            "documentId": "doc",
            "field": field,
            "value": d.value,
            "timestamp": d.timestamp % 4,
            "clock": clock,
        });
        if let Some(c) = d.client_id {
            msg["clientId"] = json!(format!("client-{c}-{i}"));
        }
        let caller = Caller::new(i as u64 + 1);
        let text = msg.to_string();
        let changes = changes_in(synckit().on_frame(&caller.env(), Frame::Text(&text)));
        if !changes.is_empty() {
            submits.push(changes);
        }
    }
    let first = run(&submits, 0..submits.len());
    let mut order: Vec<usize> = (0..submits.len()).collect();
    order.sort_by_key(|i| input.order.get(*i).copied().unwrap_or(0));
    let second = run(&submits, order.into_iter());
    // The document clock gathers the winners' clocks, and a write's counter depends on what its
    // writer's entry was when it arrived, so with clocks the hub's one order decides (as in
    // SyncKit's server). Without them, every order ends with the same fields.
    if !input.clocks {
        assert_eq!(first.records(), second.records());
    }
    first.check_reload();
    second.check_reload();
});
