//! Pocket pushes through the codec, in every conflict strategy, merged one push per commit:
//! the merge never panics and every state it reaches reads back unchanged. (Pocket's server
//! decides conflicts by arrival, so orders are not compared.)
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use synchub_actors::dialects::{Dialect, Frame};
use synchub_actors::pocket::{PocketModel, Strategy};
use synchub_fuzz::{Caller, Engine, changes_in, pocket};

#[derive(Arbitrary, Debug)]
struct Change {
    operation: u8,
    doc: u8,
    fields: Vec<(u8, Option<i16>)>,
    timestamp: u8,
    base_version: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    strategy: u8,
    pushes: Vec<Vec<Change>>,
}

fuzz_target!(|input: Input| {
    let strategy = match input.strategy % 4 {
        0 => Strategy::LastWriteWins,
        1 => Strategy::ServerWins,
        2 => Strategy::ClientWins,
        _ => Strategy::Merge,
    };
    let model = PocketModel {
        default_strategy: strategy,
        ..PocketModel::default()
    };
    let mut room = Engine::new(synchub_actors::pocket::NAMESPACE, Arc::new(model));
    let caller = Caller::new(1);
    let mut codec = pocket();
    for (n, push) in input.pushes.iter().take(16).enumerate() {
        let changes: Vec<Value> = push
            .iter()
            .take(8)
            .map(|c| {
                let id = format!("d{}", c.doc % 4);
                let op = ["insert", "update", "delete"][usize::from(c.operation % 3)];
                let mut doc: serde_json::Map<String, Value> = c
                    .fields
                    .iter()
                    .take(3)
                    .map(|(f, v)| (format!("f{}", f % 3), json!(v)))
                    .collect();
                doc.insert("_id".into(), json!(id));
                if let Some(v) = c.base_version {
                    doc.insert("_version".into(), json!(v % 4));
                }
                let document = if op == "delete" {
                    Value::Null
                } else {
                    Value::Object(doc)
                };
                json!({
                    "operation": op,
                    "documentId": id,
                    "document": document,
                    "timestamp": c.timestamp % 4,
                })
            })
            .collect();
        let msg = json!({"type": "push", "id": format!("p{n}"), "timestamp": 0,
                         "collection": "todos", "changes": changes});
        let text = msg.to_string();
        let submitted = changes_in(codec.on_frame(&caller.env(), Frame::Text(&text)));
        if !submitted.is_empty() {
            room.submit(submitted);
        }
    }
    room.check_reload();
});
