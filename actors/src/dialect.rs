//! What a wire dialect is to the hub: a sans-IO codec that turns a client's frames into room
//! requests and room answers and events into frames, and the actions it asks of whatever drives
//! it (the Session actor for a WebSocket, the headless driver for an HTTP request). Below the
//! Session actor: the codecs depend on this, never on the actor.

use crate::identity::{AuthError, Identity};
use crate::limits::Limit;
use crate::origin::{Origin, SessionId};
use crate::out_frame::OutFrame;
use crate::room::{RoomError, RoomEvent, RoomReply, RoomRequest, Streams};
use crate::room_key::{Namespace, RoomKey};

/// A whole message from the client.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What a dialect asks its session to do.
#[derive(Debug)]
pub enum Action<T> {
    Text(String),
    Binary(Vec<u8>),
    /// A frame shared with other sessions (a broadcast encoded once).
    Frame(OutFrame),
    /// Send a request to a room (joining it first if needed) and hand the answer back with `tag`.
    Request {
        room: RoomKey,
        body: RoomRequest,
        tag: T,
    },
    /// Verify a token sent in-band; on success it becomes the session's identity.
    Authenticate {
        token: String,
        tag: T,
    },
    /// Stop following a room.
    Leave {
        room: RoomKey,
    },
    Close {
        code: u16,
        reason: String,
    },
    /// A limit turned the client's message away (the dialect has answered it): counted.
    LimitHit(Limit),
}

/// What a dialect can see of its session.
pub struct Env<'a> {
    /// This session, on this node: what the changes it sends carry as their origin.
    pub origin: &'a Origin,
    pub identity: &'a Identity,
}

impl Env<'_> {
    pub fn session(&self) -> SessionId {
        self.origin.session
    }
}

/// A wire dialect: turns frames into room requests and room answers and events into frames.
pub trait Dialect: Unpin + Sized + 'static {
    type Tag: Unpin + 'static;

    fn namespace(&self) -> Namespace;

    /// Rooms the session joins as it starts, and which of their streams it follows.
    fn initial_rooms(&self) -> Vec<RoomKey>;

    /// How a session of this dialect follows a room it joins later.
    fn streams_for(&self, _room: &RoomKey) -> Streams {
        Streams::All
    }

    /// The session entered a room whose durable sequence number is `seq`.
    fn on_joined(&mut self, _env: &Env, _room: &RoomKey, _seq: u64) -> Vec<Action<Self::Tag>> {
        Vec::new()
    }

    fn on_frame(&mut self, env: &Env, frame: Frame<'_>) -> Vec<Action<Self::Tag>>;

    /// A message larger than `limits.max_frame_bytes`; `frame` holds it when it was received
    /// whole, or its first few KiB when it came in pieces (which are not kept past the limit).
    fn on_oversized(
        &mut self,
        env: &Env,
        frame: Option<Frame<'_>>,
        size: usize,
        max: usize,
    ) -> Vec<Action<Self::Tag>>;

    /// A message over the session's rate: answered with the dialect's retryable error, not acted
    /// on.
    fn on_rate_limited(&mut self, env: &Env, frame: Frame<'_>) -> Vec<Action<Self::Tag>>;

    fn on_reply(
        &mut self,
        env: &Env,
        tag: Self::Tag,
        reply: Result<RoomReply, RoomError>,
    ) -> Vec<Action<Self::Tag>>;

    fn on_event(&mut self, env: &Env, event: &RoomEvent) -> Vec<Action<Self::Tag>>;

    fn on_authenticated(
        &mut self,
        env: &Env,
        tag: Self::Tag,
        result: Result<(), AuthError>,
    ) -> Vec<Action<Self::Tag>>;
}
