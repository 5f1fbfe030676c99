//! The write path without actors: merge → number → persist for batches of relay changes, into
//! memory (the hub's own work), into the disk store without a flush (the store's own work) and
//! into it with a flush per batch (what making it durable adds).
//!
//! `cargo bench -p synchub-actors --bench write_path`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use synchub_actors::RoomKey;
use synchub_actors::dialects::IncomingChange;
use synchub_actors::engine::{OpenBatch, RoomState};
use synchub_actors::relay::{RelayModel, parse_change};
use synchub_actors::storage::{RoomImage, RoomLayout, Store};

const BATCH: u64 = 64;

fn changes(round: u64) -> Vec<Vec<IncomingChange>> {
    (0..BATCH)
        .map(|i| {
            let n = round * BATCH + i;
            let c = json!([
                "todos",
                format!("row-{n}"),
                "title",
                "buy milk",
                1,
                n,
                "site-a",
                1,
                0
            ]);
            vec![parse_change(&c).expect("valid")]
        })
        .collect()
}

/// One batch: every submit merged and numbered, then one commit applied (and flushed).
fn run_batch(state: &mut RoomState, store: &Store, submits: Vec<Vec<IncomingChange>>, flush: bool) {
    let mut open = OpenBatch::default();
    for changes in submits {
        black_box(state.submit(&RelayModel, None, changes, &mut open));
    }
    let commit = state.commit(open).expect("encode");
    store.apply(commit.writes).expect("apply");
    if flush {
        store.flush().expect("flush");
    }
    state.release(&commit.entries);
}

fn write_path(c: &mut Criterion) {
    let key = RoomKey::new(synchub_actors::relay::NAMESPACE, "bench").expect("room");
    let layout = RoomLayout::new(&key);
    let mut group = c.benchmark_group("write path (relay, 64 changes per commit)");
    group.throughput(Throughput::Elements(BATCH));

    let memory = Store::memory();
    let empty = || {
        RoomState::load(
            key.clone(),
            layout.clone(),
            RoomImage::default(),
            &RelayModel,
        )
        .expect("an empty room")
    };
    let mut state = empty();
    let mut round = 0;
    group.bench_function("merge + encode into memory", |b| {
        b.iter_batched(
            || {
                round += 1;
                changes(round)
            },
            |submits| run_batch(&mut state, &memory, submits, false),
            BatchSize::SmallInput,
        )
    });

    for flush in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Store::open(dir.path()).expect("open");
        let mut state = empty();
        let mut round = 0;
        let name = if flush {
            "merge + encode into the disk store, one flush"
        } else {
            "merge + encode into the disk store, no flush"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    round += 1;
                    changes(round)
                },
                |submits| run_batch(&mut state, &disk, submits, flush),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, write_path);
criterion_main!(benches);
