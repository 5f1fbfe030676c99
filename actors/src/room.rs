//! The Room actor: one per `(namespace, room)`. It merges the changes of its room one at a time,
//! gives each accepted change the next sequence number, and releases acks and broadcasts only
//! once the change is durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::durability::{Dirty, Durability, Flushed};
use crate::metrics::Metrics;
use crate::model::{IncomingChange, Merge, Model};
use crate::room_key::RoomKey;
use crate::store::{
    CommitBatch, CompactReport, LogEntry, RoomMeta, StateRecord, Store, state_hash,
};

const KIND: &str = "room";

/// Identifies one session on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RoomError {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the room is not running")]
    Gone,
}

/// Which streams of a room a session follows.
#[derive(Debug, Clone)]
pub enum Streams {
    All,
    Some(HashSet<String>),
}

impl Streams {
    fn covers(&self, stream: &str) -> bool {
        match self {
            Streams::All => true,
            Streams::Some(set) => set.contains(stream),
        }
    }
}

/// Accepted changes, sent to the room's sessions once durable. Each session's codec decides
/// what of it its client sees (its subscriptions, whether the origin hears its own change).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct RoomEvent {
    pub room: RoomKey,
    pub origin: Option<SessionId>,
    pub entries: Arc<Vec<LogEntry>>,
    /// For each stream in `entries`, its last sequence number before them.
    pub heads_before: Arc<HashMap<String, u64>>,
}

/// A session enters the room to receive its events; answers the room's durable sequence number.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Join {
    pub session: SessionId,
    pub events: Recipient<RoomEvent>,
    pub streams: Streams,
    /// Raised when the room drops the session for not keeping up; the session then closes.
    pub evicted: Arc<AtomicBool>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
}

/// A command for a room, as every dialect's codec produces them.
#[derive(Debug, Clone)]
pub enum RoomRequest {
    /// Merge these changes, in order, as one atomic batch.
    Submit {
        changes: Vec<IncomingChange>,
    },
    /// Read the log of some streams after a position; optionally follow them from now on.
    /// With `latest_only`, only entries that are still their record's current value.
    Fetch {
        streams: Vec<(String, u64)>,
        limit: usize,
        subscribe: bool,
        latest_only: bool,
    },
    /// Every state record and the model's room-wide value, once all writes so far are durable.
    Snapshot,
    Subscribe {
        streams: Vec<String>,
    },
    Compact,
    Status,
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<RoomReply, RoomError>")]
pub struct Request {
    pub session: Option<SessionId>,
    pub body: RoomRequest,
}

#[derive(Debug, Clone)]
pub enum RoomReply {
    Submitted(Submitted),
    Fetched(Fetched),
    Compacted(CompactReport),
    Status(RoomStatus),
    Snapshot(Snapshot),
    Done,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `(stream, key, value)` of every state record.
    pub records: Vec<(String, String, Value)>,
    pub model: Value,
    pub seq: u64,
}

/// The answer to a submit, given once the accepted changes are durable.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub accepted: Arc<Vec<LogEntry>>,
    /// What the model said of the changes that lost.
    pub rejected: Vec<Value>,
    /// For each stream the submit touched, its last sequence number before the submit.
    pub heads_before: Arc<HashMap<String, u64>>,
    /// The room's sequence number after the submit.
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct StreamPage {
    pub stream: String,
    pub entries: Vec<LogEntry>,
    pub more: bool,
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub pages: Vec<StreamPage>,
    /// The room's durable sequence number when the fetch ran.
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomStatus {
    pub namespace: String,
    pub room: String,
    pub seq: u64,
    pub durable_seq: u64,
    pub digest: String,
    pub sessions: usize,
    pub records: u64,
    pub log_len: u64,
    pub pending: usize,
    pub live: bool,
}

impl RoomStatus {
    /// The status of a room that is on disk but has no actor running.
    pub fn at_rest(key: &RoomKey, meta: &RoomMeta) -> RoomStatus {
        RoomStatus {
            namespace: key.namespace.to_string(),
            room: key.room.clone(),
            seq: meta.seq,
            durable_seq: meta.seq,
            digest: meta.digest.to_hex(),
            sessions: 0,
            records: meta.records,
            log_len: meta.log_len,
            pending: 0,
            live: false,
        }
    }
}

/// Tells the directory a room actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomStopped {
    pub key: RoomKey,
}

/// What a room needs from the node.
#[derive(Clone)]
pub struct RoomContext {
    pub store: Store,
    pub model: Arc<dyn Model>,
    /// `None` in relaxed durability: acks go out before the flush.
    pub durability: Option<Addr<Durability>>,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    pub directory: Recipient<RoomStopped>,
}

struct Member {
    events: Recipient<RoomEvent>,
    streams: Streams,
    evicted: Arc<AtomicBool>,
}

/// A reply held back until the flush covering `token` completes.
struct Pending {
    token: u64,
    reply: oneshot::Sender<Result<RoomReply, RoomError>>,
    outcome: Outcome,
}

enum Outcome {
    /// Accepted changes: broadcast them, then answer.
    Submitted {
        submitted: Submitted,
        origin: Option<SessionId>,
    },
    /// An answer that only has to wait for earlier writes to be durable.
    Ready(RoomReply),
}

/// Changes gathered for one broadcast window, latest per record.
struct Gathered {
    entries: HashMap<(String, String), LogEntry>,
    heads_before: HashMap<String, u64>,
}

pub struct Room {
    key: RoomKey,
    cx: RoomContext,
    meta: RoomMeta,
    /// The highest sequence number known to be durable; readers see nothing beyond it.
    durable_seq: u64,
    members: HashMap<SessionId, Member>,
    pending: VecDeque<Pending>,
    /// The commit token of the last write registered with the durability actor.
    last_token: u64,
    last_activity: Instant,
    /// Durable changes waiting for the end of the model's broadcast window.
    gathered: Option<Gathered>,
}

/// The digest contribution of a model's room-wide value.
fn model_hash(model: &Value) -> crate::store::Digest {
    if model.is_null() {
        return crate::store::Digest::default();
    }
    state_hash("\u{0}model", "", model)
}

impl Room {
    pub fn new(key: RoomKey, meta: RoomMeta, cx: RoomContext) -> Room {
        Room {
            key,
            durable_seq: meta.seq,
            meta,
            cx,
            members: HashMap::new(),
            pending: VecDeque::new(),
            last_token: 0,
            last_activity: Instant::now(),
            gathered: None,
        }
    }

    fn status(&self) -> RoomStatus {
        RoomStatus {
            sessions: self.members.len(),
            pending: self.pending.len(),
            durable_seq: self.durable_seq,
            live: true,
            ..RoomStatus::at_rest(&self.key, &self.meta)
        }
    }

    /// Merges the changes and writes the accepted ones atomically; nothing is acked yet.
    fn apply(&mut self, changes: Vec<IncomingChange>) -> Result<Submitted, RoomError> {
        let storage = |e: crate::store::StorageError| RoomError::Storage(e.to_string());
        let mut meta = self.meta.clone();
        let mut batch = CommitBatch::default();
        let mut rejected = Vec::new();
        let mut heads_before = HashMap::new();
        let model_before = model_hash(&meta.model);
        // Later changes of one batch must see the earlier ones' effect.
        let mut overlay: HashMap<(String, String), Value> = HashMap::new();
        for change in changes {
            if !heads_before.contains_key(&change.stream) {
                let head = self
                    .cx
                    .store
                    .stream_head(&self.key, &change.stream)
                    .map_err(storage)?;
                heads_before.insert(change.stream.clone(), head);
            }
            let addr = (change.stream.clone(), change.key.clone());
            let current = match overlay.get(&addr) {
                Some(v) => Some(v.clone()),
                None => self
                    .cx
                    .store
                    .state(&self.key, &change.stream, &change.key)
                    .map_err(storage)?
                    .map(|r| r.value),
            };
            let mut room_state = meta.model.clone();
            match self
                .cx
                .model
                .merge(&mut room_state, current.as_ref(), &change)
            {
                Merge::Unchanged => {}
                Merge::Reject { report } => rejected.push(report),
                Merge::Apply { state, mut logged } => {
                    meta.model = room_state;
                    meta.seq += 1;
                    meta.log_len += 1;
                    match &current {
                        Some(old) => {
                            meta.digest
                                .toggle(&state_hash(&change.stream, &change.key, old))
                        }
                        None => meta.records += 1,
                    }
                    meta.digest
                        .toggle(&state_hash(&change.stream, &change.key, &state));
                    self.cx.model.stamp(&mut logged, meta.seq);
                    batch.states.push((
                        change.stream.clone(),
                        change.key.clone(),
                        StateRecord {
                            seq: meta.seq,
                            value: state.clone(),
                        },
                    ));
                    batch.entries.push(LogEntry {
                        seq: meta.seq,
                        stream: change.stream,
                        key: change.key,
                        body: logged,
                    });
                    overlay.insert(addr, state);
                }
            }
        }
        if !batch.entries.is_empty() {
            meta.digest.toggle(&model_before);
            meta.digest.toggle(&model_hash(&meta.model));
            self.cx
                .store
                .commit(&self.key, &meta, &batch)
                .map_err(storage)?;
            self.cx
                .metrics
                .changes
                .with_label_values(&[self.key.namespace.as_str()])
                .inc_by(batch.entries.len() as u64);
            self.meta = meta;
        }
        Ok(Submitted {
            accepted: Arc::new(batch.entries),
            rejected,
            heads_before: Arc::new(heads_before),
            seq: self.meta.seq,
        })
    }

    /// Acks and broadcasts a submit whose changes are durable.
    fn release(
        &mut self,
        submitted: Submitted,
        origin: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) -> RoomReply {
        if let Some(last) = submitted.accepted.last() {
            self.durable_seq = self.durable_seq.max(last.seq);
            let window = self.cx.model.broadcast_window();
            if window.is_zero() {
                self.broadcast(RoomEvent {
                    room: self.key.clone(),
                    origin,
                    entries: submitted.accepted.clone(),
                    heads_before: submitted.heads_before.clone(),
                });
            } else {
                self.gather(&submitted, window, ctx);
            }
        }
        RoomReply::Submitted(submitted)
    }

    /// Keeps the latest change per record until the window closes, then broadcasts them all.
    fn gather(&mut self, submitted: &Submitted, window: Duration, ctx: &mut Context<Self>) {
        if self.gathered.is_none() {
            self.gathered = Some(Gathered {
                entries: HashMap::new(),
                heads_before: HashMap::new(),
            });
            ctx.run_later(window, |room, _| room.flush_gathered());
        }
        let Some(g) = self.gathered.as_mut() else {
            return;
        };
        for (stream, head) in submitted.heads_before.iter() {
            g.heads_before.entry(stream.clone()).or_insert(*head);
        }
        for e in submitted.accepted.iter() {
            g.entries
                .insert((e.stream.clone(), e.key.clone()), e.clone());
        }
    }

    fn flush_gathered(&mut self) {
        let Some(g) = self.gathered.take() else {
            return;
        };
        let mut entries: Vec<LogEntry> = g.entries.into_values().collect();
        entries.sort_by_key(|e| e.seq);
        self.broadcast(RoomEvent {
            room: self.key.clone(),
            origin: None,
            entries: Arc::new(entries),
            heads_before: Arc::new(g.heads_before),
        });
    }

    /// Answers now, or once the writes before it are durable.
    fn answer_after_writes(
        &mut self,
        reply: RoomReply,
    ) -> ResponseFuture<Result<RoomReply, RoomError>> {
        if self.pending.is_empty() {
            return Box::pin(async move { Ok(reply) });
        }
        self.hold(self.last_token, Outcome::Ready(reply))
    }

    /// Holds an answer until the flush covering `token` completes.
    fn hold(
        &mut self,
        token: u64,
        outcome: Outcome,
    ) -> ResponseFuture<Result<RoomReply, RoomError>> {
        let (tx, rx) = oneshot::channel();
        self.pending.push_back(Pending {
            token,
            reply: tx,
            outcome,
        });
        Box::pin(async move { rx.await.unwrap_or(Err(RoomError::Gone)) })
    }

    fn snapshot(&self) -> Result<RoomReply, RoomError> {
        let records = self
            .cx
            .store
            .states(&self.key)
            .map_err(|e| RoomError::Storage(e.to_string()))?
            .into_iter()
            .map(|(stream, key, r)| (stream, key, r.value))
            .collect();
        Ok(RoomReply::Snapshot(Snapshot {
            records,
            model: self.meta.model.clone(),
            seq: self.meta.seq,
        }))
    }

    fn broadcast(&mut self, event: RoomEvent) {
        let mut dropped = Vec::new();
        for (id, member) in &self.members {
            if !event
                .entries
                .iter()
                .any(|e| member.streams.covers(&e.stream))
            {
                continue;
            }
            match member.events.try_send(event.clone()) {
                Ok(()) => self.cx.metrics.queued("session"),
                Err(SendError::Full(_)) => {
                    // The session is not keeping up: drop it rather than grow without bound.
                    member.evicted.store(true, Ordering::Relaxed);
                    dropped.push(*id);
                }
                Err(SendError::Closed(_)) => dropped.push(*id),
            }
        }
        for id in dropped {
            self.members.remove(&id);
        }
    }

    fn submit(
        &mut self,
        ctx: &mut Context<Self>,
        origin: Option<SessionId>,
        changes: Vec<IncomingChange>,
    ) -> ResponseFuture<Result<RoomReply, RoomError>> {
        let submitted = match self.apply(changes) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if submitted.accepted.is_empty() {
            // Nothing new to flush, but an earlier write it may depend on (a resend of a change
            // whose first copy is still in flight) must be durable before the answer.
            return self.answer_after_writes(RoomReply::Submitted(submitted));
        }
        let Some(durability) = &self.cx.durability else {
            let reply = self.release(submitted, origin, ctx);
            return Box::pin(async move { Ok(reply) });
        };
        self.last_token += 1;
        self.cx.metrics.queued("durability");
        durability.do_send(Dirty {
            room: ctx.address().recipient(),
            token: self.last_token,
        });
        self.hold(self.last_token, Outcome::Submitted { submitted, origin })
    }

    fn fetch(
        &mut self,
        session: Option<SessionId>,
        streams: Vec<(String, u64)>,
        limit: usize,
        subscribe: bool,
        latest_only: bool,
    ) -> Result<RoomReply, RoomError> {
        if subscribe
            && let Some(member) = session.and_then(|s| self.members.get_mut(&s))
            && let Streams::Some(set) = &mut member.streams
        {
            set.extend(streams.iter().map(|(s, _)| s.clone()));
        }
        let mut pages = Vec::with_capacity(streams.len());
        for (stream, after) in streams {
            let (entries, more) = self
                .cx
                .store
                .stream_entries(
                    &self.key,
                    &stream,
                    after,
                    self.durable_seq,
                    limit,
                    latest_only,
                )
                .map_err(|e| RoomError::Storage(e.to_string()))?;
            pages.push(StreamPage {
                stream,
                entries,
                more,
            });
        }
        Ok(RoomReply::Fetched(Fetched {
            pages,
            seq: self.durable_seq,
        }))
    }

    fn compact(&mut self) -> Result<CompactReport, RoomError> {
        let now = now_ms();
        let model = self.cx.model.clone();
        let report = self
            .cx
            .store
            .compact(&self.key, &mut self.meta, |state| {
                model.tombstone_expired(state, now)
            })
            .map_err(|e| RoomError::Storage(e.to_string()))?;
        if report.removed > 0 {
            log::info!(
                "compacted {}: removed {} log entries, kept {}",
                self.key,
                report.removed,
                report.kept
            );
        }
        Ok(report)
    }

    /// Compaction is worth it when most of the log is superseded history.
    fn worth_compacting(&self) -> bool {
        self.meta.log_len > 64 && self.meta.log_len > 2 * self.meta.records
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.cx.metrics.actors.with_label_values(&[KIND]).inc();
        self.cx.metrics.rooms_started.inc();
        let tick = (self.cx.idle_timeout / 2).max(Duration::from_millis(50));
        ctx.run_interval(tick, |room, ctx| {
            let idle = room.members.is_empty()
                && room.pending.is_empty()
                && room.gathered.is_none()
                && room.last_activity.elapsed() >= room.cx.idle_timeout;
            if idle {
                if room.worth_compacting()
                    && let Err(e) = room.compact()
                {
                    log::warn!("compaction of {} failed: {e}", room.key);
                }
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.flush_gathered();
        self.cx.metrics.actors.with_label_values(&[KIND]).dec();
        self.cx.metrics.rooms_stopped.inc();
        let _ = self.cx.directory.try_send(RoomStopped {
            key: self.key.clone(),
        });
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(RoomError::Gone));
        }
    }
}

impl Handler<Request> for Room {
    type Result = ResponseFuture<Result<RoomReply, RoomError>>;

    fn handle(&mut self, msg: Request, ctx: &mut Context<Self>) -> Self::Result {
        self.cx.metrics.dequeued(KIND);
        // Looking at a room (stats) does not keep it loaded.
        if !matches!(msg.body, RoomRequest::Status) {
            self.last_activity = Instant::now();
        }
        let reply = match msg.body {
            RoomRequest::Submit { changes } => return self.submit(ctx, msg.session, changes),
            RoomRequest::Fetch {
                streams,
                limit,
                subscribe,
                latest_only,
            } => self.fetch(msg.session, streams, limit, subscribe, latest_only),
            RoomRequest::Snapshot => match self.snapshot() {
                Ok(reply) => return self.answer_after_writes(reply),
                Err(e) => Err(e),
            },
            RoomRequest::Subscribe { streams } => {
                if let Some(member) = msg.session.and_then(|s| self.members.get_mut(&s))
                    && let Streams::Some(set) = &mut member.streams
                {
                    set.extend(streams);
                }
                Ok(RoomReply::Done)
            }
            RoomRequest::Compact => self.compact().map(RoomReply::Compacted),
            RoomRequest::Status => Ok(RoomReply::Status(self.status())),
        };
        Box::pin(async move { reply })
    }
}

impl Handler<Flushed> for Room {
    type Result = ();

    fn handle(&mut self, msg: Flushed, ctx: &mut Context<Self>) {
        self.cx.metrics.handled(KIND);
        while self.pending.front().is_some_and(|p| p.token <= msg.token) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let reply = match (msg.ok, p.outcome) {
                (false, _) => Err(RoomError::Storage("flush failed".into())),
                (true, Outcome::Submitted { submitted, origin }) => {
                    Ok(self.release(submitted, origin, ctx))
                }
                (true, Outcome::Ready(reply)) => Ok(reply),
            };
            let _ = p.reply.send(reply);
        }
    }
}

impl Handler<Join> for Room {
    type Result = u64;

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> u64 {
        self.cx.metrics.dequeued(KIND);
        self.last_activity = Instant::now();
        self.members.insert(
            msg.session,
            Member {
                events: msg.events,
                streams: msg.streams,
                evicted: msg.evicted,
            },
        );
        self.durable_seq
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        self.cx.metrics.dequeued(KIND);
        self.last_activity = Instant::now();
        self.members.remove(&msg.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Checkout, ConnectionLimits, Directory, DirectoryParts};
    use crate::pocket::PocketModel;
    use crate::room_key::Namespace;
    use serde_json::json;
    use std::sync::Mutex;

    /// Collects the events a room sends to one member.
    struct Collector(Arc<Mutex<Vec<RoomEvent>>>);

    impl Actor for Collector {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            // As sessions do; the actix default of 16 would be evicted as a slow consumer.
            ctx.set_mailbox_capacity(1024);
        }
    }

    impl Handler<RoomEvent> for Collector {
        type Result = ();
        fn handle(&mut self, e: RoomEvent, _: &mut Context<Self>) {
            self.0.lock().expect("lock").push(e);
        }
    }

    fn start(dir: &std::path::Path, relaxed: bool) -> (Addr<Directory>, Arc<Metrics>) {
        let store = Store::open(dir).expect("store");
        let metrics = Arc::new(Metrics::new());
        let healthy = Arc::new(AtomicBool::new(true));
        let durability = Durability::new(store.clone(), metrics.clone(), healthy).start();
        let mut models: HashMap<Namespace, Arc<dyn Model>> = HashMap::new();
        models.insert(Namespace::Pocket, Arc::new(PocketModel::default()));
        let directory = Directory::new(DirectoryParts {
            arbiters: vec![actix::Arbiter::current()],
            store,
            models,
            durability: (!relaxed).then_some(durability),
            metrics: metrics.clone(),
            idle_timeout: Duration::from_secs(60),
            limits: ConnectionLimits {
                max_connections: 10,
                max_connections_per_user: 10,
            },
        })
        .start();
        (directory, metrics)
    }

    /// A real room `pocket/r`, started through the directory.
    async fn start_room(dir: &std::path::Path, relaxed: bool) -> (Addr<Room>, Arc<Metrics>) {
        let (directory, metrics) = start(dir, relaxed);
        let key = RoomKey::new(Namespace::Pocket, "r").expect("key");
        let room = directory
            .send(Checkout { key })
            .await
            .expect("mailbox")
            .expect("room");
        (room, metrics)
    }

    fn insert(id: &str, v: i64) -> IncomingChange {
        IncomingChange {
            stream: "todos".into(),
            key: id.into(),
            body: json!({"operation": "insert", "documentId": id,
                         "document": {"_id": id, "v": v}, "timestamp": 1}),
        }
    }

    fn submit(changes: Vec<IncomingChange>) -> Request {
        Request {
            session: Some(SessionId(1)),
            body: RoomRequest::Submit { changes },
        }
    }

    #[actix_rt::test]
    async fn concurrent_submits_are_numbered_acked_and_broadcast_in_order() {
        for relaxed in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (room, metrics) = start_room(dir.path(), relaxed).await;
            let seen = Arc::new(Mutex::new(Vec::new()));
            let member = Collector(seen.clone()).start();
            room.send(Join {
                session: SessionId(2),
                events: member.recipient(),
                streams: Streams::All,
                evicted: Arc::new(AtomicBool::new(false)),
            })
            .await
            .expect("join");
            // Sent together: the room merges them one at a time, in mailbox order.
            let pending: Vec<_> = (0..20)
                .map(|i| room.send(submit(vec![insert(&format!("d{i}"), i)])))
                .collect();
            let mut seqs = Vec::new();
            for p in pending {
                let Ok(Ok(RoomReply::Submitted(s))) = p.await else {
                    panic!("submit failed");
                };
                seqs.push(s.seq);
            }
            assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
            let Ok(Ok(RoomReply::Fetched(f))) = room
                .send(Request {
                    session: None,
                    body: RoomRequest::Fetch {
                        streams: vec![("todos".into(), 0)],
                        limit: 100,
                        subscribe: false,
                        latest_only: false,
                    },
                })
                .await
            else {
                panic!("fetch failed");
            };
            assert_eq!(f.seq, 20);
            assert_eq!(f.pages[0].entries.len(), 20);
            // Give the collector a turn to drain its mailbox.
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            let events = seen.lock().expect("lock");
            let broadcast: Vec<u64> = events
                .iter()
                .flat_map(|e| e.entries.iter().map(|x| x.seq))
                .collect();
            assert_eq!(broadcast, (1..=20).collect::<Vec<u64>>());
            if !relaxed {
                assert!(metrics.flushes.get() >= 1);
            }
        }
    }

    #[actix_rt::test]
    async fn a_resend_gets_no_number_and_a_batch_sees_its_own_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (room, _) = start_room(dir.path(), false).await;
        // The second change of one batch merges against the first.
        let Ok(Ok(RoomReply::Submitted(s))) = room
            .send(submit(vec![insert("a", 1), insert("a", 1), insert("a", 2)]))
            .await
        else {
            panic!("submit failed");
        };
        assert_eq!(s.accepted.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s.heads_before.get("todos"), Some(&0));
        let Ok(Ok(RoomReply::Submitted(s))) = room.send(submit(vec![insert("a", 2)])).await else {
            panic!("submit failed");
        };
        assert!(s.accepted.is_empty());
        assert_eq!(s.seq, 2);
        assert_eq!(s.heads_before.get("todos"), Some(&2));
        let Ok(Ok(RoomReply::Status(st))) = room
            .send(Request {
                session: None,
                body: RoomRequest::Status,
            })
            .await
        else {
            panic!("status failed");
        };
        assert_eq!(
            (st.seq, st.durable_seq, st.records, st.log_len),
            (2, 2, 1, 2)
        );
    }
}
