//! The Session actor: one per WebSocket connection. It owns the socket, the heartbeat, the
//! connection's identity and its room memberships; everything that depends on the wire format
//! is its [`Dialect`], a sans-IO codec that turns frames into room requests and room answers
//! into frames.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{self, Message, ProtocolError};

use crate::clock::unix_now;
pub use crate::dialect::{Action, Dialect, Env, Frame};
use crate::directory::{Checkout, Memberships, Register, SetUser, Unregister};
use crate::disconnect::CloseSession;
pub use crate::disconnect::close_code;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::limits::{IpSlot, Limit, TokenBucket};
use crate::mailbox::{CountedAddr, CountedRecipient, counted_actor};
use crate::metrics::{ActorKind, ActorMetrics, DialectMetrics};
use crate::origin::{Origin, SessionId};
use crate::out_frame::OutFrame;
use crate::outbound::{Outbound, frame_bytes};
use crate::room::{
    Join, Leave, Reply, Request, Room, RoomAnswer, RoomError, RoomEvent, RoomReply, RoomRequest,
};
use crate::room_key::RoomKey;
use crate::websocket::{self, Connection, Writer};

/// How often a session tries to enter a room that keeps stopping under it (idle shutdown racing
/// the join) before it gives up.
const JOIN_ATTEMPTS: u8 = 3;

/// A message split over continuation frames, being put back together.
struct Fragments {
    text: bool,
    buf: Vec<u8>,
    oversized: usize,
    /// The start of a message refused for its size, kept to answer it under its request id.
    head: Vec<u8>,
}

/// How much of an oversized fragmented message is kept to find its request id in.
const OVERSIZED_HEAD: usize = 4096;

/// A session not yet on its socket, whatever its dialect: what the HTTP layer hands a
/// connection to once it has answered the handshake.
pub trait Upgrade {
    /// Starts this session on `conn`, on the calling thread's arbiter. The session keeps the
    /// connection and `slot`, the client address's connection slot; its outgoing bytes are
    /// counted off its queue as the socket takes them.
    fn start(self: Box<Self>, conn: Connection, slot: Option<IpSlot>);
}

impl<D: Dialect> Upgrade for Session<D> {
    fn start(self: Box<Self>, conn: Connection, slot: Option<IpSlot>) {
        let settings = self.hub.session_settings();
        let mut session = *self;
        session.outbound.attach(conn.socket);
        session._ip_slot = slot;
        let (reader, writer) =
            websocket::split(conn, settings.codec_max_bytes(), session.outbound());
        session.writer = Some(writer);
        Session::create(move |ctx| {
            ctx.add_stream(reader);
            session
        });
    }
}

/// How many written bytes the socket may leave waiting before the session stops handling
/// anything else until it took them all. A client that reads slowly so slows down what it gets
/// (the pages of a pull are asked for as it takes the previous ones), and broadcasts wait in the
/// session's mailbox, counted against its outbound bound, instead of piling up here.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Writes what the session has queued for its socket. Spawned when the queue stops being empty,
/// so the frames of everything the session handled in one wake-up leave in one write; waited on
/// (holding the session's other work) past [`WRITE_HIGH_WATER`].
struct Flush;

impl<D: Dialect> ActorFuture<Session<D>> for Flush {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Session<D>,
        ctx: &mut Context<Session<D>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let Some(writer) = act.writer.as_mut() else {
            return Poll::Ready(());
        };
        match writer.poll_flush(task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                act.draining = false;
                Poll::Ready(())
            }
            Poll::Ready(Err(e)) => {
                log::debug!("session {:?}: the connection failed: {e}", act.id);
                ctx.stop();
                Poll::Ready(())
            }
        }
    }
}

pub struct Session<D: Dialect> {
    id: SessionId,
    origin: Origin,
    hub: Hub,
    dialect: D,
    identity: Identity,
    rooms: HashMap<RoomKey, CountedAddr<Room>>,
    /// The same rooms by name, shared with the directory for the session listing.
    memberships: Arc<Memberships>,
    last_seen: Instant,
    outbound: Arc<Outbound>,
    /// The connection's writing side; none until the session is started on one.
    writer: Option<Writer>,
    /// Waiting for the socket to take what was written (see [`WRITE_HIGH_WATER`]).
    draining: bool,
    bucket: TokenBucket,
    /// The client address's connection slot, given back when the session is dropped.
    _ip_slot: Option<IpSlot>,
    fragments: Option<Fragments>,
    actor: ActorMetrics,
    traffic: DialectMetrics,
    /// Where rooms send their answers; made once, not per request.
    answers: Option<CountedRecipient<RoomAnswer>>,
    /// Requests are numbered as they are sent; rooms answer by number, and the answers are
    /// handed to the dialect in that order (requests to different rooms finish in any order).
    sent: u64,
    delivered: u64,
    /// Each request's tag, and the bytes of the client's message it holds (see `waiting_bytes`).
    tags: HashMap<u64, (D::Tag, usize)>,
    ready: BTreeMap<u64, (D::Tag, Result<RoomReply, RoomError>)>,
    /// Bytes of the client's messages whose requests rooms have not answered yet (each
    /// request's share is kept with its tag): a client that sends faster than its rooms answer
    /// is slowed down at a bound instead of piling its messages up in the hub's memory.
    waiting_bytes: usize,
    /// The size of the frame being handled, charged to the first request it makes.
    charge: usize,
}

impl<D: Dialect> Session<D> {
    pub fn new(hub: Hub, dialect: D, identity: Identity) -> Session<D> {
        let id = hub.next_session_id();
        let metrics = hub.metrics().clone();
        let settings = hub.session_settings();
        Session {
            id,
            origin: Origin {
                node: hub.node().clone(),
                session: id,
            },
            traffic: metrics.dialect(dialect.namespace()),
            actor: metrics.session,
            hub,
            dialect,
            identity,
            rooms: HashMap::new(),
            memberships: Arc::default(),
            last_seen: Instant::now(),
            outbound: Outbound::new(settings.max_outbound_bytes, None),
            writer: None,
            draining: false,
            bucket: TokenBucket::new(settings.max_messages_per_second),
            _ip_slot: None,
            fragments: None,
            answers: None,
            sent: 0,
            delivered: 0,
            tags: HashMap::new(),
            ready: BTreeMap::new(),
            waiting_bytes: 0,
            charge: 0,
        }
    }

    /// What the session has queued for its socket; the connection takes off what it sends.
    fn outbound(&self) -> Arc<Outbound> {
        self.outbound.clone()
    }

    /// Queues `msg` for the socket, counted as `bytes` on the wire.
    fn write(&mut self, ctx: &mut Context<Self>, msg: Message, bytes: usize) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        self.outbound.add(bytes);
        if writer.send(msg) {
            ctx.spawn(Flush);
        }
        if writer.pending() > WRITE_HIGH_WATER && !self.draining {
            self.draining = true;
            ctx.wait(Flush);
        }
    }

    fn text(&mut self, ctx: &mut Context<Self>, text: impl Into<bytestring::ByteString>) {
        let text = text.into();
        self.traffic.frames_out.inc();
        let bytes = frame_bytes(text.len());
        self.write(ctx, Message::Text(text), bytes);
    }

    fn binary(&mut self, ctx: &mut Context<Self>, bytes: impl Into<bytes::Bytes>) {
        let payload = bytes.into();
        self.traffic.frames_out.inc();
        let bytes = frame_bytes(payload.len());
        self.write(ctx, Message::Binary(payload), bytes);
    }

    /// Sends a close frame and stops; what is queued still leaves (see [`Writer::close`]).
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        self.send_close(
            ctx,
            Some(ws::CloseReason {
                code: ws::CloseCode::from(code),
                description: Some(reason.to_owned()),
            }),
        );
        ctx.stop();
    }

    fn send_close(&mut self, ctx: &mut Context<Self>, reason: Option<ws::CloseReason>) {
        let bytes = frame_bytes(
            reason
                .as_ref()
                .map_or(0, |r| 2 + r.description.as_ref().map_or(0, String::len)),
        );
        self.write(ctx, Message::Close(reason), bytes);
    }

    fn run(&mut self, actions: Vec<Action<D::Tag>>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                Action::Text(text) => self.text(ctx, text),
                Action::Binary(bytes) => self.binary(ctx, bytes),
                Action::Frame(OutFrame::Text(text)) => self.text(ctx, text),
                Action::Frame(OutFrame::Binary(bytes)) => self.binary(ctx, bytes),
                Action::LimitHit(limit) => self.hub.metrics().limit_hit(limit),
                Action::Close { code, reason } => {
                    self.close(ctx, code, &reason);
                    return;
                }
                Action::Authenticate { token, tag } => {
                    let result = match self.hub.verifier() {
                        Some(v) => v.verify(&token),
                        // Auth is off: any token is as good as none.
                        None => Ok(Identity::anonymous()),
                    };
                    let outcome = result.map(|identity| {
                        self.identity = identity;
                        self.schedule_expiry(ctx);
                        if self.identity.authenticated {
                            self.count_as_user(ctx);
                        }
                    });
                    let env = Env {
                        origin: &self.origin,
                        identity: &self.identity,
                    };
                    let more = self.dialect.on_authenticated(&env, tag, outcome);
                    self.run(more, ctx);
                }
                Action::Request { room, body, tag } => self.request(room, body, tag, ctx),
                Action::Leave { room } => {
                    self.memberships.left(&room);
                    if let Some(addr) = self.rooms.remove(&room) {
                        addr.do_send(Leave { session: self.id });
                    }
                }
            }
        }
    }

    fn request(&mut self, room: RoomKey, body: RoomRequest, tag: D::Tag, ctx: &mut Context<Self>) {
        let charge = std::mem::take(&mut self.charge);
        self.send_request(room, body, tag, charge, ctx);
    }

    /// `charge`: the bytes of the client's message this request answers, counted as waiting
    /// until the answer comes.
    fn send_request(
        &mut self,
        room: RoomKey,
        body: RoomRequest,
        tag: D::Tag,
        charge: usize,
        ctx: &mut Context<Self>,
    ) {
        let Some(addr) = self.rooms.get(&room).cloned() else {
            // Join first; `wait` holds the session's other input until the room is there, so
            // requests keep their order.
            let checkout = self.hub.directory().send(Checkout { key: room.clone() });
            ctx.wait(
                checkout
                    .into_actor(self)
                    .map(move |res, act, ctx| match res {
                        Ok(Ok(addr)) => {
                            // An earlier request of the same batch may have joined already.
                            if !act.rooms.contains_key(&room) {
                                act.join(room.clone(), addr, JOIN_ATTEMPTS, ctx);
                            }
                            act.send_request(room, body, tag, charge, ctx);
                        }
                        _ => {
                            let n = act.sent;
                            act.sent += 1;
                            act.answer(n, tag, Err(RoomError::Gone), ctx);
                        }
                    }),
            );
            return;
        };
        let n = self.sent;
        self.sent += 1;
        self.waiting_bytes += charge;
        self.tags.insert(n, (tag, charge));
        let metrics = self.hub.metrics();
        let to = self
            .answers
            .get_or_insert_with(|| CountedAddr::new(ctx.address(), metrics).recipient())
            .clone();
        addr.do_send(Request {
            origin: Some(self.origin.clone()),
            body,
            reply: Reply::to_session(to, n),
        });
    }

    /// Hands the answer to request `n` to the dialect once every earlier answer has been.
    fn answer(
        &mut self,
        n: u64,
        tag: D::Tag,
        reply: Result<RoomReply, RoomError>,
        ctx: &mut Context<Self>,
    ) {
        self.ready.insert(n, (tag, reply));
        while let Some((tag, reply)) = self.ready.remove(&self.delivered) {
            self.delivered += 1;
            let env = Env {
                origin: &self.origin,
                identity: &self.identity,
            };
            let more = self.dialect.on_reply(&env, tag, reply);
            self.run(more, ctx);
        }
    }

    /// Finds a room's actor (starting it if needed) and enters it.
    fn checkout_and_join(&mut self, key: RoomKey, attempts: u8, ctx: &mut Context<Self>) {
        let checkout = self.hub.directory().send(Checkout { key: key.clone() });
        ctx.wait(
            checkout
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Ok(addr)) => act.join(key, addr, attempts, ctx),
                    _ => act.close(ctx, close_code::INTERNAL, "Room unavailable"),
                }),
        );
    }

    /// Enters a room. `wait` keeps the session's other input (and the requests it makes) behind
    /// the join, so the room knows the session before it serves it. A room that stopped for
    /// idleness between checkout and join is started again (up to `attempts` times).
    fn join(
        &mut self,
        key: RoomKey,
        addr: CountedAddr<Room>,
        attempts: u8,
        ctx: &mut Context<Self>,
    ) {
        let streams = self.dialect.streams_for(&key);
        let me = self.counted(ctx);
        let join = addr.send(Join {
            session: self.id,
            events: me.recipient(),
            streams,
            outbound: self.outbound.clone(),
        });
        self.rooms.insert(key.clone(), addr);
        self.memberships.joined(&key);
        ctx.wait(join.into_actor(self).map(move |res, act, ctx| match res {
            Ok(seq) => {
                let env = Env {
                    origin: &act.origin,
                    identity: &act.identity,
                };
                let actions = act.dialect.on_joined(&env, &key, seq);
                act.run(actions, ctx);
            }
            Err(_) if attempts > 1 => {
                act.rooms.remove(&key);
                act.memberships.left(&key);
                act.checkout_and_join(key, attempts - 1, ctx);
            }
            Err(_) => act.close(ctx, close_code::INTERNAL, "Room unavailable"),
        }));
    }

    fn deliver(&mut self, frame: Frame<'_>, ctx: &mut Context<Self>) {
        self.traffic.frames_in.inc();
        let len = match frame {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        };
        let env = Env {
            origin: &self.origin,
            identity: &self.identity,
        };
        let settings = self.hub.session_settings();
        let max = settings.max_frame_bytes;
        let actions = if !self.bucket.take() {
            self.hub.metrics().limit_hit(Limit::Rate);
            self.dialect.on_rate_limited(&env, frame)
        } else if len > max {
            self.hub.metrics().limit_hit(Limit::FrameBytes);
            self.dialect.on_oversized(&env, Some(frame), len, max)
        } else if self.waiting_bytes.saturating_add(len) > settings.max_outbound_bytes
            || self.outbound.queued() > settings.max_outbound_bytes
        {
            // Its rooms are behind, or its socket is (what it asked for waits there): the same
            // retryable answer as over the rate.
            self.hub.metrics().limit_hit(Limit::Backlog);
            self.dialect.on_rate_limited(&env, frame)
        } else {
            self.charge = len;
            self.dialect.on_frame(&env, frame)
        };
        self.run(actions, ctx);
        self.charge = 0;
    }

    /// This session's address, counting what is sent through it.
    fn counted(&self, ctx: &Context<Self>) -> CountedAddr<Self> {
        CountedAddr::new(ctx.address(), self.hub.metrics())
    }

    /// A session that authenticated in-band counts against its user's connections from then on;
    /// past the per-user limit it is closed like a connection refused at the upgrade.
    fn count_as_user(&mut self, ctx: &mut Context<Self>) {
        let set = self.hub.directory().send(SetUser {
            id: self.id,
            user: self.identity.user_id.clone(),
        });
        ctx.wait(set.into_actor(self).map(|res, act, ctx| {
            if let Ok(Err(refusal)) = res {
                act.hub.metrics().limit_hit(refusal.limit());
                act.close(ctx, close_code::TOO_MANY, &refusal.to_string());
            }
        }));
    }

    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        let Some(expires_at) = self.identity.expires_at else {
            return;
        };
        let wait = Duration::from_secs(expires_at.saturating_sub(unix_now()).max(0) as u64);
        ctx.run_later(wait, |act, ctx| {
            // A fresh token sent in-band meanwhile moved the deadline.
            if act.identity.expires_at.is_some_and(|at| at <= unix_now()) {
                act.close(ctx, close_code::TOKEN_EXPIRED, "Token expired");
            }
        });
    }
}

impl<D: Dialect> Actor for Session<D> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.actor.count.inc();
        let register = self.hub.directory().send(Register {
            id: self.id,
            namespace: self.dialect.namespace(),
            user: self
                .identity
                .authenticated
                .then(|| self.identity.user_id.clone()),
            closer: self.counted(ctx).recipient(),
            outbound: self.outbound.clone(),
            rooms: self.memberships.clone(),
        });
        ctx.wait(register.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => {
                act.hub.metrics().limit_hit(refusal.limit());
                act.close(ctx, close_code::TOO_MANY, &refusal.to_string());
            }
            Err(_) => act.close(ctx, close_code::INTERNAL, "Server error"),
        }));
        for key in self.dialect.initial_rooms() {
            self.checkout_and_join(key, JOIN_ATTEMPTS, ctx);
        }
        let settings = self.hub.session_settings();
        ctx.run_interval(settings.heartbeat_interval, move |act, ctx| {
            if act.outbound.is_evicted() {
                act.close(ctx, close_code::SLOW_CONSUMER, "Slow consumer");
            } else if act.last_seen.elapsed() > settings.client_timeout {
                log::debug!("session {:?} timed out", act.id);
                ctx.stop();
            } else {
                act.write(ctx, Message::Ping(bytes::Bytes::new()), frame_bytes(0));
            }
        });
        self.schedule_expiry(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.actor.count.dec();
        if let Some(writer) = self.writer.take() {
            writer.close();
        }
        self.outbound.mark_closed();
        // Always, even when the answer to `Register` never came back (a connection reset during
        // the upgrade): the directory ignores sessions it does not know, and a registration it
        // does know is never left behind.
        self.hub.directory().do_send(Unregister { id: self.id });
        for addr in self.rooms.values() {
            addr.do_send(Leave { session: self.id });
        }
    }
}

impl<D: Dialect> StreamHandler<Result<Message, ProtocolError>> for Session<D> {
    fn handle(&mut self, msg: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                log::debug!("session {:?}: protocol error: {e}", self.id);
                let (code, reason) = protocol_close(&e);
                self.close(ctx, code, reason);
                return;
            }
        };
        self.last_seen = Instant::now();
        let size = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Continuation(
                actix_http::ws::Item::FirstText(b)
                | actix_http::ws::Item::FirstBinary(b)
                | actix_http::ws::Item::Continue(b)
                | actix_http::ws::Item::Last(b),
            ) => b.len(),
            _ => 0,
        };
        self.outbound.received(size);
        match msg {
            Message::Ping(b) => {
                let bytes = frame_bytes(b.len());
                self.write(ctx, Message::Pong(b), bytes);
            }
            Message::Pong(_) | Message::Nop => {}
            Message::Text(t) => self.deliver(Frame::Text(&t), ctx),
            Message::Binary(b) => self.deliver(Frame::Binary(&b), ctx),
            Message::Continuation(item) => self.continuation(item, ctx),
            Message::Close(reason) => {
                self.send_close(ctx, reason);
                ctx.stop();
            }
        }
    }
}

impl<D: Dialect> Session<D> {
    fn continuation(&mut self, item: actix_http::ws::Item, ctx: &mut Context<Self>) {
        let max = self.hub.session_settings().max_frame_bytes;
        let (first, last, chunk, text) = match item {
            actix_http::ws::Item::FirstText(b) => (true, false, b, true),
            actix_http::ws::Item::FirstBinary(b) => (true, false, b, false),
            actix_http::ws::Item::Continue(b) => (false, false, b, false),
            actix_http::ws::Item::Last(b) => (false, true, b, false),
        };
        if first {
            self.fragments = Some(Fragments {
                text,
                buf: Vec::new(),
                oversized: 0,
                head: Vec::new(),
            });
        }
        let Some(f) = self.fragments.as_mut() else {
            return;
        };
        if f.oversized > 0 || f.buf.len() + chunk.len() > max {
            // Keep counting, stop buffering: the message will be refused whole.
            if f.oversized == 0 {
                let buffered = f.buf.len();
                f.head = std::mem::take(&mut f.buf);
                f.head
                    .extend_from_slice(&chunk[..chunk.len().min(OVERSIZED_HEAD)]);
                f.head.truncate(OVERSIZED_HEAD);
                f.oversized = buffered + chunk.len();
            } else {
                f.oversized += chunk.len();
            }
        } else {
            f.buf.extend_from_slice(&chunk);
        }
        if !last {
            return;
        }
        let Some(f) = self.fragments.take() else {
            return;
        };
        if f.oversized > 0 {
            let env = Env {
                origin: &self.origin,
                identity: &self.identity,
            };
            self.hub.metrics().limit_hit(Limit::FrameBytes);
            let head = Frame::Binary(&f.head);
            let actions = self
                .dialect
                .on_oversized(&env, Some(head), f.oversized, max);
            self.run(actions, ctx);
        } else if f.text {
            match std::str::from_utf8(&f.buf) {
                Ok(t) => self.deliver(Frame::Text(t), ctx),
                Err(_) => self.close(ctx, 1007, "Invalid UTF-8"),
            }
        } else {
            self.deliver(Frame::Binary(&f.buf), ctx);
        }
    }
}

counted_actor!(Session<D>, ActorKind::Session, D: Dialect);

impl<D: Dialect> Handler<RoomEvent> for Session<D> {
    type Result = ();

    fn handle(&mut self, event: RoomEvent, ctx: &mut Self::Context) {
        self.outbound.sub(event.bytes());
        // The room dropped this session for falling behind: the events it holds have gaps.
        if self.outbound.is_evicted() {
            self.close(ctx, close_code::SLOW_CONSUMER, "Slow consumer");
            return;
        }
        let env = Env {
            origin: &self.origin,
            identity: &self.identity,
        };
        let actions = self.dialect.on_event(&env, &event);
        self.run(actions, ctx);
    }
}

impl<D: Dialect> Handler<RoomAnswer> for Session<D> {
    type Result = ();

    fn handle(&mut self, msg: RoomAnswer, ctx: &mut Self::Context) {
        let Some((tag, charge)) = self.tags.remove(&msg.n) else {
            log::error!(
                "session {:?}: an answer to unknown request {}",
                self.id,
                msg.n
            );
            return;
        };
        self.waiting_bytes = self.waiting_bytes.saturating_sub(charge);
        self.answer(msg.n, tag, msg.answer, ctx);
    }
}

impl<D: Dialect> Handler<CloseSession> for Session<D> {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close(ctx, msg.code, &msg.reason);
    }
}

/// The close code RFC 6455 gives a broken frame: 1007 for a text message that is not UTF-8,
/// 1009 for one over the size the hub accepts at all, 1002 for the rest.
fn protocol_close(e: &ProtocolError) -> (u16, &'static str) {
    match e {
        // How the connection's reader reports a text frame that is not UTF-8.
        ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            (1007, "Invalid UTF-8")
        }
        ProtocolError::Overflow => (1009, "Message too big"),
        _ => (1002, "Protocol error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_frames_get_the_rfc_close_codes() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8");
        assert_eq!(protocol_close(&ProtocolError::Io(io)).0, 1007);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(protocol_close(&ProtocolError::Io(reset)).0, 1002);
        assert_eq!(protocol_close(&ProtocolError::InvalidLength(126)).0, 1002);
        assert_eq!(protocol_close(&ProtocolError::Overflow).0, 1009);
        assert_eq!(protocol_close(&ProtocolError::UnmaskedFrame).0, 1002);
    }
}
