//! Room tests on the in-memory store: ordering, batching, acks, broadcasts and failures.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::directory::{Checkout, ConnectionLimits, Directory, DirectoryParts, RoomBounds};
use crate::mailbox::counted_actor;
use crate::metrics::ActorKind;
use crate::origin::NodeId;
use crate::placement::Placement;
use crate::pocket::PocketModel;
use crate::relay::RelayModel;
use crate::room::test_changes::{cell, doc};
use crate::room_key::Namespace;
use crate::store::{Kv, KvBatch, MemoryKv, StorageError, Visit};

/// What one member of a room received: events, answers and close requests, in order.
#[derive(Default)]
struct Seen {
    events: Vec<RoomEvent>,
    answers: Vec<(u64, Result<RoomReply, RoomError>)>,
}

struct Member(Arc<Mutex<Seen>>);

impl Actor for Member {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // As sessions do; the actix default of 16 would be evicted as a slow consumer.
        ctx.set_mailbox_capacity(1024);
    }
}

counted_actor!(Member, ActorKind::Session);

impl Member {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().expect("lock")
    }
}

impl Handler<RoomEvent> for Member {
    type Result = ();
    fn handle(&mut self, e: RoomEvent, _: &mut Context<Self>) {
        self.seen().events.push(e);
    }
}

impl Handler<RoomAnswer> for Member {
    type Result = ();
    fn handle(&mut self, a: RoomAnswer, _: &mut Context<Self>) {
        self.seen().answers.push((a.n, a.answer));
    }
}

/// A store that fails writes on cue, as a full disk does: the n-th apply or flush fails, and
/// every write after it, until `clear`. It keeps writes applied since the last
/// successful flush only until a recovery, which goes back to what that flush covered.
#[derive(Default)]
struct Faulty {
    live: MemoryKv,
    /// What the last successful flush covered.
    flushed: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    applies: std::sync::atomic::AtomicU64,
    flushes: std::sync::atomic::AtomicU64,
    fail_apply: std::sync::atomic::AtomicU64,
    fail_flush: std::sync::atomic::AtomicU64,
    failing: AtomicBool,
}

impl Faulty {
    /// The `n`-th apply from now fails (1 = the next one).
    fn fail_apply_in(&self, n: u64) {
        self.fail_apply
            .store(self.applies.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// The `n`-th flush from now fails.
    fn fail_flush_in(&self, n: u64) {
        self.fail_flush
            .store(self.flushes.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// The disk has room again.
    fn clear(&self) {
        self.fail_apply.store(0, Ordering::SeqCst);
        self.fail_flush.store(0, Ordering::SeqCst);
        self.failing.store(false, Ordering::SeqCst);
    }

    fn full() -> StorageError {
        StorageError::Io(std::io::Error::from_raw_os_error(28))
    }

    fn everything(kv: &MemoryKv) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        let _ = kv.scan(&[], &[u8::MAX], &mut |k, v| {
            all.push((k.to_vec(), v.to_vec()));
            Ok(std::ops::ControlFlow::Continue(()))
        });
        all
    }

    /// Counts a write of kind `counter`; fails it if it is the one asked for, or after it.
    fn write(
        &self,
        counter: &std::sync::atomic::AtomicU64,
        at: &std::sync::atomic::AtomicU64,
    ) -> Result<(), StorageError> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == at.load(Ordering::SeqCst) {
            self.failing.store(true, Ordering::SeqCst);
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(Faulty::full());
        }
        Ok(())
    }
}

impl Kv for Faulty {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.live.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), StorageError> {
        self.live.scan(start, end, visit)
    }
    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.live.last_key(start, end)
    }
    fn apply(&self, batch: KvBatch) -> Result<(), StorageError> {
        self.write(&self.applies, &self.fail_apply)?;
        self.live.apply(batch)
    }
    fn flush(&self) -> Result<(), StorageError> {
        self.write(&self.flushes, &self.fail_flush)?;
        *self.flushed.lock().expect("lock") = Faulty::everything(&self.live);
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
    fn recover(&self) -> Result<(), StorageError> {
        // Back to what the last flush covered, the worst a reopened store can be; reopening reads
        // only, so it works on a full disk too.
        let mut back = KvBatch::default();
        for (k, _) in Faulty::everything(&self.live) {
            back.remove(k);
        }
        for (k, v) in self.flushed.lock().expect("lock").iter() {
            back.insert(k.clone(), v.clone());
        }
        self.live.apply(back)
    }
}

fn node() -> NodeId {
    NodeId::new("test-node")
}

fn origin(session: u64) -> Origin {
    Origin {
        node: node(),
        session: SessionId(session),
    }
}

/// A real room, started through a directory over `store`.
async fn start_room(store: Store, ns: Namespace, relaxed: bool) -> CountedAddr<Room> {
    start_room_counted(store, ns, relaxed, Arc::new(Metrics::new())).await
}

/// A real room whose actors count under `metrics`.
async fn start_room_counted(
    store: Store,
    ns: Namespace,
    relaxed: bool,
    metrics: Arc<Metrics>,
) -> CountedAddr<Room> {
    let durability = Durability::new(store.clone(), metrics.clone(), relaxed).start();
    let durability = CountedAddr::new(durability, &metrics);
    let mut models: HashMap<Namespace, Arc<dyn Model>> = HashMap::new();
    models.insert(crate::pocket::NAMESPACE, Arc::new(PocketModel::default()));
    models.insert(crate::relay::NAMESPACE, Arc::new(RelayModel));
    let directory = Directory::new(DirectoryParts {
        placement: Arc::new(Placement::new(vec![actix::Arbiter::current()])),
        store,
        models,
        durability,
        cluster: None,
        metrics,
        idle_timeout: Duration::from_secs(60),
        limits: ConnectionLimits {
            max_connections: 10,
            max_connections_per_user: 10,
        },
        bounds: RoomBounds {
            page_bytes: usize::MAX,
            max_state_bytes: HashMap::new(),
        },
    })
    .start();
    let key = RoomKey::new(ns, "r").expect("key");
    directory
        .send(Checkout { key })
        .await
        .expect("mailbox")
        .expect("room")
}

async fn join(room: &CountedAddr<Room>, session: u64) -> (CountedAddr<Member>, Arc<Mutex<Seen>>) {
    join_counted(room, session, &Metrics::new()).await
}

/// Joins a member counted as a session under `metrics`.
async fn join_counted(
    room: &CountedAddr<Room>,
    session: u64,
    metrics: &Metrics,
) -> (CountedAddr<Member>, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let member = CountedAddr::new(Member(seen.clone()).start(), metrics);
    room.send(Join {
        session: SessionId(session),
        events: member.recipient(),
        streams: Streams::All,
        outbound: crate::outbound::Outbound::new(usize::MAX, None),
    })
    .await
    .expect("join");
    (member, seen)
}

async fn ask(room: &CountedAddr<Room>, origin: Option<Origin>, body: RoomRequest) -> RoomReply {
    let (reply, answer) = Reply::channel();
    room.do_send(Request {
        origin,
        body,
        reply,
    });
    answer.await.expect("answered").expect("succeeded")
}

async fn settle() {
    actix_rt::time::sleep(Duration::from_millis(50)).await;
}

#[actix_rt::test]
async fn pipelined_submits_from_many_sessions_are_numbered_acked_and_broadcast_in_order() {
    for relaxed in [false, true] {
        let room = start_room(Store::memory(), crate::relay::NAMESPACE, relaxed).await;
        let (_watcher, watched) = join(&room, 100).await;
        let mut senders = Vec::new();
        for s in 0..5u64 {
            senders.push(join(&room, s).await);
        }
        // Sent together, interleaved across sessions: the room merges them one at a time, in
        // mailbox order, and commits them in batches.
        for i in 0..40u64 {
            let s = i % 5;
            room.do_send(Request {
                origin: Some(origin(s)),
                body: RoomRequest::Submit {
                    changes: vec![cell(&format!("k{i}"), i as i64)],
                },
                reply: Reply::to_session(senders[s as usize].0.recipient(), i),
            });
        }
        settle().await;
        let mut all_seqs = Vec::new();
        for (s, (_, seen)) in senders.iter().enumerate() {
            let seen = seen.lock().expect("lock");
            // Each session's answers arrive in the order it sent its requests.
            let ns: Vec<u64> = seen.answers.iter().map(|(n, _)| *n).collect();
            let expected: Vec<u64> = (0..40).filter(|i| i % 5 == s as u64).collect();
            assert_eq!(ns, expected);
            for (n, answer) in &seen.answers {
                let Ok(RoomReply::Submitted(sub)) = answer else {
                    panic!("submit {n} failed: {answer:?}");
                };
                assert_eq!((sub.accepted, sub.seq), (1, n + 1));
                all_seqs.push(sub.seq);
            }
        }
        all_seqs.sort_unstable();
        assert_eq!(all_seqs, (1..=40).collect::<Vec<u64>>());
        // Every member sees every change once, in order, with its origin.
        let seen = watched.lock().expect("lock");
        let broadcast: Vec<(u64, Option<Origin>)> = seen
            .events
            .iter()
            .flat_map(|e| e.entries.iter().map(|x| (x.seq, x.origin.clone())))
            .collect();
        let expected: Vec<(u64, Option<Origin>)> =
            (0..40).map(|i| (i + 1, Some(origin(i % 5)))).collect();
        assert_eq!(broadcast, expected);
        assert!(
            seen.events.len() < 40,
            "batched: {} events for 40 changes",
            seen.events.len()
        );
    }
}

#[actix_rt::test]
async fn a_resend_gets_no_number_and_a_submit_sees_its_own_changes() {
    let room = start_room(Store::memory(), crate::pocket::NAMESPACE, false).await;
    // The second change of one submit merges against the first.
    let RoomReply::Submitted(s) = ask(
        &room,
        None,
        RoomRequest::Submit {
            changes: vec![doc("a", 1), doc("a", 1), doc("a", 2)],
        },
    )
    .await
    else {
        panic!("submit failed");
    };
    assert_eq!((s.accepted, s.seq), (2, 2));
    assert_eq!(s.heads_before.get("todos"), Some(&0));
    let RoomReply::Submitted(s) = ask(
        &room,
        None,
        RoomRequest::Submit {
            changes: vec![doc("a", 2)],
        },
    )
    .await
    else {
        panic!("submit failed");
    };
    assert_eq!((s.accepted, s.seq), (0, 2));
    assert_eq!(s.heads_before.get("todos"), Some(&2));
    let RoomReply::Status(st) = ask(&room, None, RoomRequest::Status).await else {
        panic!("status failed");
    };
    assert_eq!(
        (st.seq, st.durable_seq, st.records, st.log_len, st.pending),
        (2, 2, 1, 2, 0)
    );
}

#[actix_rt::test]
async fn reads_see_only_durable_changes_and_latest_only_skips_superseded_ones() {
    let store = Store::memory();
    let room = start_room(store.clone(), crate::relay::NAMESPACE, false).await;
    for v in [1, 2, 3] {
        ask(
            &room,
            None,
            RoomRequest::Submit {
                changes: vec![cell("x", v), cell(&format!("y{v}"), v)],
            },
        )
        .await;
    }
    let fetch = |latest_only| RoomRequest::Fetch {
        streams: vec![(String::new(), 0)],
        limit: 100,
        subscribe: false,
        latest_only,
    };
    let RoomReply::Fetched(all) = ask(&room, None, fetch(false)).await else {
        panic!("fetch failed");
    };
    assert_eq!(all.seq, 6);
    assert_eq!(all.pages[0].entries.len(), 6);
    let RoomReply::Fetched(latest) = ask(&room, None, fetch(true)).await else {
        panic!("fetch failed");
    };
    let seqs: Vec<u64> = latest.pages[0].entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 4, 5, 6]);
    // A snapshot comes from memory and equals what storage holds.
    let RoomReply::Snapshot(snap) = ask(&room, None, RoomRequest::Snapshot).await else {
        panic!("snapshot failed");
    };
    assert_eq!(snap.records.len(), 4);
    let key = RoomKey::new(crate::relay::NAMESPACE, "r").expect("key");
    let layout = RoomLayout::new(&key);
    let image = store.load_room(&layout).expect("load");
    assert_eq!(image.meta.seq, 6);
    let stored = RoomState::load(key, layout, image, &RelayModel).expect("replays");
    let mut records = stored.records();
    records.sort_by(|a, b| a.1.cmp(&b.1));
    let mut in_memory = snap.records;
    in_memory.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(records, in_memory);
}

/// Sends `body` and waits for the answer, whatever it is.
async fn try_ask(room: &CountedAddr<Room>, body: RoomRequest) -> Result<RoomReply, RoomError> {
    let (reply, answer) = Reply::channel();
    room.do_send(Request {
        origin: Some(origin(7)),
        body,
        reply,
    });
    answer.await.expect("answered")
}

fn submit(key: &str, v: i64) -> RoomRequest {
    RoomRequest::Submit {
        changes: vec![cell(key, v)],
    }
}

/// Waits until the room takes writes again, writing `key` until one is acked.
async fn write_once_recovered(room: &CountedAddr<Room>, key: &str) -> u64 {
    for _ in 0..200 {
        match try_ask(room, submit(key, 9)).await {
            Ok(RoomReply::Submitted(s)) => return s.seq,
            Err(RoomError::Unavailable) => settle().await,
            other => panic!("a write while recovering: {other:?}"),
        }
    }
    panic!("the room did not recover");
}

fn snapshot_keys(reply: RoomReply) -> Vec<String> {
    let RoomReply::Snapshot(s) = reply else {
        panic!("a snapshot expected");
    };
    let mut keys: Vec<String> = s
        .records
        .into_iter()
        .map(|(_, k, _)| cell_name(&k))
        .collect();
    keys.sort();
    keys
}

/// The name a test gave a cell, out of its record key `[table, pk, cid]`.
fn cell_name(record_key: &str) -> String {
    let parts: Vec<String> = serde_json::from_str(record_key).expect("a cell key");
    parts[1].clone()
}

#[actix_rt::test]
async fn a_failed_flush_refuses_its_writes_keeps_the_members_and_recovers_by_itself() {
    let faults = Arc::new(Faulty::default());
    let store = Store::over(faults.clone());
    let room = start_room(store.clone(), crate::relay::NAMESPACE, false).await;
    let (_m, seen) = join(&room, 7).await;
    ask(&room, None, submit("a", 1)).await;
    faults.fail_flush_in(1);
    // The write whose flush fails is answered "retry", never acked.
    assert!(matches!(
        try_ask(&room, submit("b", 1)).await,
        Err(RoomError::Unavailable)
    ));
    assert_eq!(store.health().cause().as_deref(), Some("disk full"));
    // While the disk is full: the member stays; once the store is reopened (as the last flush
    // left it), reads are served again and writes refused with "retry".
    assert!(room.connected());
    let mut reads = None;
    for _ in 0..100 {
        match try_ask(&room, RoomRequest::Snapshot).await {
            Ok(r) => {
                reads = Some(snapshot_keys(r));
                break;
            }
            Err(RoomError::Unavailable) => settle().await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(reads.expect("reads served while the disk is full"), ["a"]);
    assert!(matches!(
        try_ask(&room, submit("c", 1)).await,
        Err(RoomError::Unavailable)
    ));
    assert!(!store.health().ok());
    // Room again: the room reloads what is durable and takes writes, numbering on from it.
    faults.clear();
    let seq = write_once_recovered(&room, "d").await;
    assert_eq!(seq, 2, "the refused writes left no number behind");
    assert!(store.health().ok());
    let keys = snapshot_keys(ask(&room, None, RoomRequest::Snapshot).await);
    assert_eq!(keys, ["a", "d"]);
    settle().await;
    // The member stayed: it is sent the write made after the recovery.
    let seen = seen.lock().expect("lock");
    let broadcast: Vec<u64> = seen
        .events
        .iter()
        .flat_map(|e| e.entries.iter().map(|x| x.seq))
        .collect();
    assert_eq!(broadcast, [1, 2], "only durable changes are ever sent");
}

#[actix_rt::test]
async fn whichever_write_fails_nothing_acked_is_lost_and_nothing_refused_is_kept() {
    for (n, flush) in [(1, false), (2, false), (3, true), (5, true), (8, false)] {
        let faults = Arc::new(Faulty::default());
        let store = Store::over(faults.clone());
        let room = start_room(store.clone(), crate::relay::NAMESPACE, false).await;
        if flush {
            faults.fail_flush_in(n);
        } else {
            faults.fail_apply_in(n);
        }
        let mut acked = Vec::new();
        let mut refused = Vec::new();
        for i in 0..12 {
            let key = format!("k{i}");
            match try_ask(&room, submit(&key, i)).await {
                Ok(RoomReply::Submitted(_)) => acked.push(key),
                Err(RoomError::Unavailable) => refused.push(key),
                other => panic!("{other:?}"),
            }
            if i == 8 {
                faults.clear();
            }
        }
        assert!(!refused.is_empty(), "fault {n} (flush: {flush}) never hit");
        write_once_recovered(&room, "after").await;
        acked.push("after".into());
        acked.sort();
        let keys = snapshot_keys(ask(&room, None, RoomRequest::Snapshot).await);
        assert_eq!(keys, acked, "fault {n} (flush: {flush})");
        // And what a fresh load of the store holds is the same.
        let layout = crate::store::RoomLayout::new(
            &RoomKey::new(crate::relay::NAMESPACE, "r").expect("key"),
        );
        let image = store.load_room(&layout).expect("load");
        let mut stored: Vec<String> = image.log.iter().map(|e| cell_name(&e.key)).collect();
        stored.sort();
        assert_eq!(stored, acked, "fault {n} (flush: {flush})");
    }
}

#[actix_rt::test]
async fn every_message_to_a_room_and_its_members_is_counted_in_and_out() {
    let metrics = Arc::new(Metrics::new());
    let room = start_room_counted(
        Store::memory(),
        crate::relay::NAMESPACE,
        false,
        metrics.clone(),
    )
    .await;
    let mut members = Vec::new();
    for s in 0..3u64 {
        members.push(join_counted(&room, s, &metrics).await);
    }
    const N: u64 = 60;
    for i in 0..N {
        let s = i % 3;
        room.do_send(Request {
            origin: Some(origin(s)),
            body: submit(&format!("k{i}"), i as i64),
            reply: Reply::to_session(members[s as usize].0.recipient(), i),
        });
    }
    settle().await;
    let (mut answers, mut events) = (0, 0);
    for (_, seen) in &members {
        let seen = seen.lock().expect("lock");
        answers += seen.answers.len() as u64;
        events += seen.events.len() as u64;
    }
    assert_eq!(answers, N);
    for kind in [&metrics.room, &metrics.session, &metrics.durability] {
        assert_eq!(kind.backlog.get(), 0);
    }
    // The room handled the joins, the requests and one answer per commit it handed over.
    let commits = metrics.durability.messages.get();
    assert!(commits > 0);
    assert_eq!(metrics.room.messages.get(), 3 + N + commits);
    assert_eq!(metrics.session.messages.get(), answers + events);
}
