//! Where a room's answer to a request goes.
//!
//! A room answers by message, not by holding a future per request: actix polls every future an
//! actor holds each time the actor wakes, so a room holding hundreds of pending answers would do
//! more work per message the busier it gets.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::messages::{RoomReply, RoomRequest};
use super::{Room, RoomError};
use crate::mailbox::{CountedAddr, CountedRecipient};
use crate::origin::Origin;

/// One request: what to do, on whose behalf, and where the answer goes.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Request {
    pub origin: Option<Origin>,
    pub body: RoomRequest,
    pub reply: Reply,
}

/// A room's answer to a session's request number `n`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RoomAnswer {
    pub n: u64,
    pub answer: Result<RoomReply, RoomError>,
}

enum Target {
    /// A session, which matches the answer to its request by number.
    Session {
        to: CountedRecipient<RoomAnswer>,
        n: u64,
    },
    /// A caller outside any session (HTTP transport, admin), awaiting the answer.
    Channel(oneshot::Sender<Result<RoomReply, RoomError>>),
}

impl Target {
    fn deliver(self, answer: Result<RoomReply, RoomError>) {
        match self {
            Target::Session { to, n } => to.do_send(RoomAnswer { n, answer }),
            // A caller that gave up waiting no longer needs the answer.
            Target::Channel(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// The answer slot of one request. It is answered exactly once: by [`Reply::send`], or, if it is
/// dropped unanswered (its room stopped with the request still queued), with
/// [`RoomError::Gone`], so no caller waits forever.
pub struct Reply(Option<Target>);

impl Reply {
    pub fn to_session(to: CountedRecipient<RoomAnswer>, n: u64) -> Reply {
        Reply(Some(Target::Session { to, n }))
    }

    /// A reply slot and the receiver its answer arrives on.
    pub fn channel() -> (Reply, oneshot::Receiver<Result<RoomReply, RoomError>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(Some(Target::Channel(tx))), rx)
    }

    pub fn send(mut self, answer: Result<RoomReply, RoomError>) {
        if let Some(target) = self.0.take() {
            target.deliver(answer);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(target) = self.0.take() {
            target.deliver(Err(RoomError::Gone));
        }
    }
}

/// Asks a room something on the node's own behalf (no session) and answers with its reply; a
/// room that stops before answering answers `Gone`.
pub fn ask(
    room: &CountedAddr<Room>,
    body: RoomRequest,
) -> impl Future<Output = Result<RoomReply, RoomError>> + use<> {
    let (reply, answer) = Reply::channel();
    room.do_send(Request {
        origin: None,
        body,
        reply,
    });
    async move { answer.await.unwrap_or(Err(RoomError::Gone)) }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(Target::Session { n, .. }) => write!(f, "Reply(session request {n})"),
            Some(Target::Channel(_)) => f.write_str("Reply(channel)"),
            None => f.write_str("Reply(answered)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reply_answers_gone() {
        let (reply, mut rx) = Reply::channel();
        drop(reply);
        assert!(matches!(rx.try_recv(), Ok(Err(RoomError::Gone))));
        let (reply, mut rx) = Reply::channel();
        reply.send(Ok(RoomReply::Done));
        assert!(matches!(rx.try_recv(), Ok(Ok(RoomReply::Done))));
    }
}
