//! A dialect driven without a socket: one client message in, the room requests it makes carried
//! out, the replies it writes collected. Pocket's HTTP transport and an operator's publish use
//! it, so a change that arrives over HTTP takes exactly the path of one from a WebSocket.

use std::collections::VecDeque;

use crate::dialect::{Action, Dialect, Env, Frame};
use crate::hub::Hub;
use crate::identity::Identity;
use crate::limits::Limit;
use crate::origin::{Origin, SessionId};

/// What the dialect wrote back.
#[derive(Debug)]
pub enum Written {
    Text(String),
    Binary(Vec<u8>),
}

/// How the dialect asked to be stopped, if it did.
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub written: Vec<Written>,
    pub closed: Option<Closed>,
    /// The dialect wanted an in-band token checked, which has no meaning here.
    pub authenticate: bool,
}

/// Where changes of a client without a connection come from: session 0 of this node.
fn headless_origin(hub: &Hub) -> Origin {
    Origin {
        node: hub.node().clone(),
        session: SessionId(0),
    }
}

/// Hands `body` to `dialect` as one message from a client without a connection (session 0 of
/// this node: rooms broadcast its changes to every member) and runs what it asks for, until it
/// has nothing left to do or, with `first_reply`, until it has written one reply.
pub async fn drive<D: Dialect>(
    hub: &Hub,
    dialect: &mut D,
    identity: &Identity,
    body: &[u8],
    frame: fn(&[u8]) -> Frame<'_>,
    first_reply: bool,
) -> Outcome {
    let origin = headless_origin(hub);
    let env = Env {
        origin: &origin,
        identity,
    };
    let max = hub.session_settings().max_frame_bytes;
    let mut actions: VecDeque<_> = if body.len() > max {
        hub.metrics().limit_hit(Limit::FrameBytes);
        dialect
            .on_oversized(&env, Some(frame(body)), body.len(), max)
            .into()
    } else {
        dialect.on_frame(&env, frame(body)).into()
    };
    let mut outcome = Outcome::default();
    while let Some(action) = actions.pop_front() {
        match action {
            Action::Text(text) => outcome.written.push(Written::Text(text)),
            Action::Binary(bytes) => outcome.written.push(Written::Binary(bytes)),
            Action::Request { room, body, tag } => {
                let reply = hub.call(&room, body).await;
                actions.extend(dialect.on_reply(&env, tag, reply));
            }
            Action::Authenticate { .. } => outcome.authenticate = true,
            Action::LimitHit(limit) => hub.metrics().limit_hit(limit),
            Action::Close { code, reason } => {
                outcome.closed = Some(Closed { code, reason });
                break;
            }
            // Broadcasts and room membership concern connected sessions only.
            Action::Frame(_) | Action::Leave { .. } => {}
        }
        if first_reply && !outcome.written.is_empty() {
            break;
        }
    }
    outcome
}

/// What `dialect` answers a client over the message rate: its own retryable error, the same a
/// WebSocket message over the rate gets.
pub fn rate_limited<D: Dialect>(
    hub: &Hub,
    dialect: &mut D,
    identity: &Identity,
    body: &[u8],
    frame: fn(&[u8]) -> Frame<'_>,
) -> String {
    let origin = headless_origin(hub);
    let env = Env {
        origin: &origin,
        identity,
    };
    dialect
        .on_rate_limited(&env, frame(body))
        .into_iter()
        .find_map(|action| match action {
            Action::Text(text) => Some(text),
            _ => None,
        })
        .unwrap_or_default()
}

/// A message read as text when it is UTF-8, as binary otherwise.
pub fn text_or_binary(body: &[u8]) -> Frame<'_> {
    match std::str::from_utf8(body) {
        Ok(text) => Frame::Text(text),
        Err(_) => Frame::Binary(body),
    }
}

pub fn binary(body: &[u8]) -> Frame<'_> {
    Frame::Binary(body)
}
