//! Relay cell writes and row deletes, merged in the order given and in another: cr-sqlite's
//! merge is a join, so both rooms end with the same records and digest, and both read back.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use synchub_actors::relay::{RelayModel, parse_change};
use synchub_fuzz::Engine;

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Int(i8),
    Half(i8),
    Text(u8),
    List(i8, bool),
}

#[derive(Arbitrary, Debug)]
struct Change {
    pk: u8,
    cid: u8,
    val: Val,
    col_version: u8,
    cl: u8,
    site: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    changes: Vec<Change>,
    /// Sort keys giving the second room its order of arrival.
    order: Vec<u16>,
    /// Submit sizes for the second room (a submit of several changes merges them in one batch).
    batches: Vec<u8>,
}

fn value(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Int(i) => json!(i),
        // Whole halves are written as floats: 2.0 and 2 must be one value.
        Val::Half(i) => json!(f64::from(*i) / 2.0),
        Val::Text(t) => Value::from(["", "a", "b", "ab"][usize::from(*t % 4)]),
        Val::List(i, f) => json!({"k": [i, f]}),
    }
}

fuzz_target!(|input: Input| {
    let changes: Vec<_> = input
        .changes
        .iter()
        .take(64)
        .map(|c| {
            let cid = ["-1", "a", "b"][usize::from(c.cid % 3)];
            let val = if cid == "-1" {
                Value::Null
            } else {
                value(&c.val)
            };
            let site = if c.site { "s1" } else { "s2" };
            let tuple = json!([
                "t",
                (c.pk % 3).to_string(),
                cid,
                val,
                c.col_version % 4,
                1,
                site,
                c.cl % 5,
                0
            ]);
            parse_change(&tuple).expect("a valid change")
        })
        .collect();
    let mut first = Engine::new(synchub_actors::relay::NAMESPACE, Arc::new(RelayModel));
    for c in &changes {
        first.submit(vec![c.clone()]);
    }
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by_key(|i| input.order.get(*i).copied().unwrap_or(0));
    let mut second = Engine::new(synchub_actors::relay::NAMESPACE, Arc::new(RelayModel));
    let mut rest = order.as_slice();
    let mut sizes = input.batches.iter().map(|b| usize::from(b % 4) + 1);
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).min(rest.len());
        second.submit(rest[..n].iter().map(|i| changes[*i].clone()).collect());
        rest = &rest[n..];
    }
    assert_eq!(first.records(), second.records());
    assert_eq!(first.state.meta().digest, second.state.meta().digest);
    first.check_reload();
    second.check_reload();
});
