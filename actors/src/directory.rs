//! The directory: starts Room actors on demand where [`Placement`] puts them, and keeps
//! the census of sessions that connection limits and shutdown need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::Serialize;

use crate::disconnect::CloseSession;
use crate::durability::Durability;
use crate::limits::Limit;
use crate::mailbox::{CountedAddr, CountedRecipient, counted_actor};
use crate::metrics::{ActorKind, ActorMetrics, Metrics};
use crate::model::Model;
use crate::outbound::{Backlog, Outbound};
use crate::placement::Placement;
use crate::room::{
    ClusterLink, Room, RoomContext, RoomError, RoomReply, RoomRequest, RoomStatus, RoomStopped,
    SessionId, ask,
};
use crate::room_key::{Namespace, RoomKey};
use crate::store::{HistoryPage, RoomLayout, Store};

/// The address of a room's actor, started if it is not running.
#[derive(Message)]
#[rtype(result = "Result<CountedAddr<Room>, RoomError>")]
pub struct Checkout {
    pub key: RoomKey,
}

/// Why a connection is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Too many connections")]
    TooManyForUser,
    #[error("Too many connections")]
    TooMany,
}

impl Refusal {
    /// The limit that refused.
    pub fn limit(self) -> Limit {
        match self {
            Refusal::TooManyForUser => Limit::ConnectionsPerUser,
            Refusal::TooMany => Limit::Connections,
        }
    }
}

/// The rooms a session is in: kept by the session, read when an operator lists sessions.
#[derive(Debug, Default)]
pub struct Memberships(Mutex<Vec<RoomKey>>);

impl Memberships {
    pub fn joined(&self, key: &RoomKey) {
        let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !rooms.contains(key) {
            rooms.push(key.clone());
        }
    }

    pub fn left(&self, key: &RoomKey) {
        let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rooms.retain(|k| k != key);
    }

    pub fn rooms(&self) -> Vec<RoomKey> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A session announces itself; refused past the connection limits.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Register {
    pub id: SessionId,
    pub namespace: Namespace,
    /// The user the per-user limit counts; `None` when auth is off.
    pub user: Option<String>,
    pub closer: CountedRecipient<CloseSession>,
    /// The session's queue and traffic, and its rooms, for the session listing.
    pub outbound: Arc<Outbound>,
    pub rooms: Arc<Memberships>,
}

/// What an operator sees of one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: u64,
    pub dialect: Namespace,
    /// The authenticated user; `None` with auth off or before a SyncKit client authenticated.
    pub user: Option<String>,
    /// Room names (without the namespace, which is the dialect's).
    pub rooms: Vec<String>,
    pub connected_at_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_queued: usize,
    /// How long the session's queue has held bytes without emptying (0: it keeps up), to the
    /// second.
    pub lag_ms: u64,
}

/// Every session on this node, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<SessionSummary>")]
pub struct ListSessions;

/// Closes one session; answers whether it was found.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CloseSessionById {
    pub id: u64,
    pub code: u16,
    pub reason: String,
}

/// A session authenticated in-band (SyncKit's `auth`, a fresh token): from now on it counts
/// against `user`'s connections; refused past the per-user limit.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct SetUser {
    pub id: SessionId,
    pub user: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub id: SessionId,
}

/// Closes every session (graceful shutdown); answers how many were asked to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    pub rooms_active: usize,
    /// Running rooms by namespace (every served one, at 0 without any).
    pub rooms: HashMap<Namespace, usize>,
    pub sessions_total: usize,
    pub sessions: HashMap<Namespace, usize>,
    /// Distinct authenticated users with a session.
    pub users: usize,
}

#[derive(Message)]
#[rtype(result = "Census")]
pub struct GetCensus;

/// A room's status: from its actor when running, from disk otherwise; `None` if never stored.
#[derive(Message)]
#[rtype(result = "Result<Option<RoomStatus>, RoomError>")]
pub struct GetRoomStatus {
    pub key: RoomKey,
}

/// A room's durable history for a peer; see [`crate::Hub::history`].
#[derive(Message)]
#[rtype(result = "Result<HistoryPage, RoomError>")]
pub struct ReadHistory {
    pub key: RoomKey,
    pub after: u64,
    pub upto: u64,
    pub limit: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
}

struct SessionEntry {
    namespace: Namespace,
    user: Option<String>,
    closer: CountedRecipient<CloseSession>,
    outbound: Arc<Outbound>,
    rooms: Arc<Memberships>,
    connected_at: SystemTime,
    backlog: Backlog,
}

/// How often the directory looks at every session's queue to tell how far behind it is.
const BACKLOG_LOOK_EVERY: Duration = Duration::from_secs(1);

impl SessionEntry {
    fn summary(&self, id: SessionId, now: Instant) -> SessionSummary {
        let connected_at_ms = self
            .connected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        SessionSummary {
            id: id.0,
            dialect: self.namespace,
            user: self.user.clone(),
            rooms: self.rooms.rooms().into_iter().map(|k| k.room).collect(),
            connected_at_ms,
            bytes_in: self.outbound.bytes_in(),
            bytes_out: self.outbound.bytes_out(),
            bytes_queued: self.outbound.queued(),
            lag_ms: self.backlog.lag(now).as_millis() as u64,
        }
    }
}

pub struct Directory {
    rooms: HashMap<RoomKey, CountedAddr<Room>>,
    placement: Arc<Placement>,
    store: Store,
    models: HashMap<Namespace, Arc<dyn Model>>,
    durability: CountedAddr<Durability>,
    cluster: Option<ClusterLink>,
    metrics: Arc<Metrics>,
    actor: ActorMetrics,
    idle_timeout: Duration,
    limits: ConnectionLimits,
    bounds: RoomBounds,
    sessions: HashMap<SessionId, SessionEntry>,
    per_user: HashMap<String, usize>,
}

pub struct DirectoryParts {
    pub placement: Arc<Placement>,
    pub store: Store,
    pub models: HashMap<Namespace, Arc<dyn Model>>,
    pub durability: CountedAddr<Durability>,
    pub cluster: Option<ClusterLink>,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    pub limits: ConnectionLimits,
    pub bounds: RoomBounds,
}

/// What bounds the rooms' replies and states.
#[derive(Debug, Clone, Default)]
pub struct RoomBounds {
    /// Bytes of changes one read answers with ([`crate::room::RoomContext::page_bytes`]).
    pub page_bytes: usize,
    /// Per namespace whose rooms are one document each: the most such a room's state holds.
    pub max_state_bytes: HashMap<Namespace, u64>,
}

impl Directory {
    pub fn new(parts: DirectoryParts) -> Directory {
        Directory {
            rooms: HashMap::new(),
            placement: parts.placement,
            store: parts.store,
            models: parts.models,
            durability: parts.durability,
            cluster: parts.cluster,
            actor: parts.metrics.directory,
            metrics: parts.metrics,
            idle_timeout: parts.idle_timeout,
            limits: parts.limits,
            bounds: parts.bounds,
            sessions: HashMap::new(),
            per_user: HashMap::new(),
        }
    }

    fn live_room(&self, key: &RoomKey) -> Option<CountedAddr<Room>> {
        self.rooms.get(key).filter(|a| a.connected()).cloned()
    }

    fn start_room(
        &mut self,
        key: RoomKey,
        ctx: &Context<Self>,
    ) -> Result<CountedAddr<Room>, RoomError> {
        let model = self
            .models
            .get(&key.namespace)
            .cloned()
            .ok_or(RoomError::Gone)?;
        let cx = RoomContext {
            store: self.store.clone(),
            model,
            durability: self.durability.clone(),
            metrics: self.metrics.clone(),
            idle_timeout: self.idle_timeout,
            directory: CountedAddr::new(ctx.address(), &self.metrics).recipient(),
            cluster: self.cluster.clone(),
            page_bytes: self.bounds.page_bytes,
            max_state_bytes: self.bounds.max_state_bytes.get(&key.namespace).copied(),
        };
        let (thread, running) = self.placement.place(&key);
        let room_key = key.clone();
        let addr = Room::start_in_arbiter(&thread, move |_| Room::new(room_key, cx, running));
        let addr = CountedAddr::new(addr, &self.metrics);
        self.rooms.insert(key, addr.clone());
        Ok(addr)
    }
}

impl Actor for Directory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 14);
        self.actor.count.inc();
        ctx.run_interval(BACKLOG_LOOK_EVERY, |act, _| {
            let now = Instant::now();
            for entry in act.sessions.values_mut() {
                entry.backlog.look(&entry.outbound, now);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.actor.count.dec();
    }
}

counted_actor!(Directory, ActorKind::Directory);

impl Handler<Checkout> for Directory {
    type Result = Result<CountedAddr<Room>, RoomError>;

    fn handle(&mut self, msg: Checkout, ctx: &mut Context<Self>) -> Self::Result {
        match self.live_room(&msg.key) {
            Some(addr) => Ok(addr),
            None => self.start_room(msg.key, ctx),
        }
    }
}

impl Handler<RoomStopped> for Directory {
    type Result = ();

    fn handle(&mut self, msg: RoomStopped, _: &mut Context<Self>) {
        // A replacement may already be running under the same key; keep that one.
        if self.rooms.get(&msg.key).is_some_and(|a| !a.connected()) {
            self.rooms.remove(&msg.key);
        }
    }
}

impl Handler<Register> for Directory {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Self::Result {
        if self.sessions.len() >= self.limits.max_connections {
            return Err(Refusal::TooMany);
        }
        if let Some(user) = &msg.user {
            let count = self.per_user.entry(user.clone()).or_default();
            if *count >= self.limits.max_connections_per_user {
                return Err(Refusal::TooManyForUser);
            }
            *count += 1;
        }
        let dialect = [msg.namespace.as_str()];
        self.metrics.sessions.with_label_values(&dialect).inc();
        self.metrics.connects.with_label_values(&dialect).inc();
        self.sessions.insert(
            msg.id,
            SessionEntry {
                namespace: msg.namespace,
                user: msg.user,
                closer: msg.closer,
                outbound: msg.outbound,
                rooms: msg.rooms,
                connected_at: SystemTime::now(),
                backlog: Backlog::default(),
            },
        );
        Ok(())
    }
}

impl Handler<SetUser> for Directory {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: SetUser, _: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.sessions.get_mut(&msg.id) else {
            return Ok(());
        };
        if entry.user.as_deref() == Some(msg.user.as_str()) {
            return Ok(());
        }
        let count = self.per_user.get(&msg.user).copied().unwrap_or(0);
        if count >= self.limits.max_connections_per_user {
            return Err(Refusal::TooManyForUser);
        }
        *self.per_user.entry(msg.user.clone()).or_default() += 1;
        if let Some(old) = entry.user.replace(msg.user)
            && let Some(n) = self.per_user.get_mut(&old)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&old);
            }
        }
        Ok(())
    }
}

impl Handler<Unregister> for Directory {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let Some(entry) = self.sessions.remove(&msg.id) else {
            return;
        };
        let dialect = [entry.namespace.as_str()];
        self.metrics.sessions.with_label_values(&dialect).dec();
        self.metrics.disconnects.with_label_values(&dialect).inc();
        if let Some(user) = entry.user
            && let Some(count) = self.per_user.get_mut(&user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_user.remove(&user);
            }
        }
    }
}

impl Handler<CloseAll> for Directory {
    type Result = usize;

    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) -> usize {
        for entry in self.sessions.values() {
            entry.closer.do_send(CloseSession {
                code: msg.code,
                reason: msg.reason.clone(),
            });
        }
        self.sessions.len()
    }
}

impl Handler<ListSessions> for Directory {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, _: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let mut list: Vec<SessionSummary> = self
            .sessions
            .iter()
            .map(|(id, entry)| entry.summary(*id, now))
            .collect();
        list.sort_by_key(|s| s.id);
        MessageResult(list)
    }
}

impl Handler<CloseSessionById> for Directory {
    type Result = bool;

    fn handle(&mut self, msg: CloseSessionById, _: &mut Context<Self>) -> bool {
        let Some(entry) = self.sessions.get(&SessionId(msg.id)) else {
            return false;
        };
        entry.closer.do_send(CloseSession {
            code: msg.code,
            reason: msg.reason,
        });
        true
    }
}

impl Handler<GetCensus> for Directory {
    type Result = MessageResult<GetCensus>;

    fn handle(&mut self, _: GetCensus, _: &mut Context<Self>) -> Self::Result {
        let served = || self.models.keys().map(|ns| (*ns, 0));
        let mut sessions: HashMap<Namespace, usize> = served().collect();
        for entry in self.sessions.values() {
            *sessions.entry(entry.namespace).or_default() += 1;
        }
        let mut rooms: HashMap<Namespace, usize> = served().collect();
        for key in self
            .rooms
            .iter()
            .filter(|(_, a)| a.connected())
            .map(|(k, _)| k)
        {
            *rooms.entry(key.namespace).or_default() += 1;
        }
        MessageResult(Census {
            rooms_active: rooms.values().sum(),
            rooms,
            sessions_total: self.sessions.len(),
            sessions,
            users: self.per_user.len(),
        })
    }
}

impl Handler<GetRoomStatus> for Directory {
    type Result = ResponseFuture<Result<Option<RoomStatus>, RoomError>>;

    fn handle(&mut self, msg: GetRoomStatus, _: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.live_room(&msg.key) {
            let answer = ask(&addr, RoomRequest::Status);
            return Box::pin(async move {
                match answer.await? {
                    RoomReply::Status(s) => Ok(Some(s)),
                    _ => Err(RoomError::Gone),
                }
            });
        }
        let at_rest = self
            .store
            .room_meta(&RoomLayout::new(&msg.key))
            .map(|m| m.map(|meta| RoomStatus::at_rest(&msg.key, &meta)))
            .map_err(RoomError::from);
        Box::pin(async move { at_rest })
    }
}

impl Handler<ReadHistory> for Directory {
    type Result = ResponseFuture<Result<HistoryPage, RoomError>>;

    fn handle(&mut self, msg: ReadHistory, _: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.live_room(&msg.key) {
            let answer = ask(
                &addr,
                RoomRequest::History {
                    after: msg.after,
                    upto: msg.upto,
                    limit: msg.limit,
                },
            );
            return Box::pin(async move {
                match answer.await? {
                    RoomReply::History(page) => Ok(page),
                    _ => Err(RoomError::Gone),
                }
            });
        }
        // A room at rest: nothing writes to it, storage holds all of it.
        let page = self
            .store
            .history(&RoomLayout::new(&msg.key), msg.after, msg.upto, msg.limit)
            .map_err(RoomError::from);
        Box::pin(async move { page })
    }
}

/// The status of every room running here.
#[derive(Message)]
#[rtype(result = "Vec<RoomStatus>")]
pub struct LiveRoomStatuses;

impl Handler<LiveRoomStatuses> for Directory {
    type Result = ResponseFuture<Vec<RoomStatus>>;

    fn handle(&mut self, _: LiveRoomStatuses, _: &mut Context<Self>) -> Self::Result {
        let answers: Vec<_> = self
            .rooms
            .values()
            .filter(|a| a.connected())
            .map(|addr| ask(addr, RoomRequest::Status))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(answers.len());
            for answer in answers {
                if let Ok(RoomReply::Status(s)) = answer.await {
                    out.push(s);
                }
            }
            out
        })
    }
}
