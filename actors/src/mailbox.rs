//! Mailbox counting, in one place: what each actor kind was sent and has not handled yet (its
//! backlog), and what it handled.
//!
//! A counted message travels in a [`Queued`] envelope whose ticket adds one to the receiving
//! kind's backlog when it is made and takes it away when it is dropped. Every message counted in
//! is therefore counted out, whether it is handled or lost with a stopped actor's mailbox, a
//! full one or a closed one. The receiving actor opens the envelope, which counts the message
//! handled, and hands the message to its own handler for it ([`counted_actor!`]).
//!
//! Senders hold a [`CountedAddr`] or a [`CountedRecipient`], which put what they send into an
//! envelope for the right kind; a plain `Addr` or `Recipient` still reaches the handler, but
//! uncounted, which is what an actor's messages to itself want.

use std::marker::PhantomData;

use actix::dev::{MessageResponse, OneshotSender, RecipientRequest, Request, ToEnvelope};
use actix::prelude::*;

use crate::metrics::{ActorKind, ActorMetrics, Metrics};

/// An actor whose mailbox is counted under one kind's series.
pub trait CountedActor: Actor {
    const KIND: ActorKind;
}

/// A message on its way to a counted actor.
pub struct Queued<M> {
    msg: M,
    ticket: Ticket,
}

/// One message's place in its kind's backlog, held from sending until handling or loss.
struct Ticket(ActorMetrics);

impl Ticket {
    fn new(to: &ActorMetrics) -> Ticket {
        to.backlog.inc();
        Ticket(*to)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.backlog.dec();
    }
}

impl<M> Queued<M> {
    /// Counts `msg` into the backlog of the kind `to` belongs to.
    pub fn new(msg: M, to: &ActorMetrics) -> Queued<M> {
        Queued {
            msg,
            ticket: Ticket::new(to),
        }
    }

    /// The message, counted as handled (and out of the backlog).
    pub fn open(self) -> M {
        let Queued { msg, ticket } = self;
        ticket.0.messages.inc();
        msg
    }

    /// The message of an envelope that was not delivered; out of the backlog, not handled.
    fn returned(self) -> M {
        self.msg
    }
}

impl<M: Message> Message for Queued<M> {
    type Result = M::Result;
}

impl<M: std::fmt::Debug> std::fmt::Debug for Queued<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Queued").field(&self.msg).finish()
    }
}

/// What a counted actor's handler for an envelope answers: its handler's answer for the message.
/// A type of its own because actix ties some answers (`MessageResult`) to the message type.
pub struct Opened<A: Handler<M>, M: Message>(A::Result, PhantomData<M>);

impl<A: Handler<M>, M: Message> Opened<A, M> {
    pub fn new(answer: A::Result) -> Opened<A, M> {
        Opened(answer, PhantomData)
    }
}

impl<A: Handler<M>, M: Message> MessageResponse<A, Queued<M>> for Opened<A, M> {
    fn handle(self, ctx: &mut A::Context, tx: Option<OneshotSender<M::Result>>) {
        self.0.handle(ctx, tx);
    }
}

/// Makes an actor type counted under a kind: it takes every message it handles in a
/// [`Queued`] envelope too, counted as it is opened.
///
/// `counted_actor!(Room, ActorKind::Room)`, or for a generic actor
/// `counted_actor!(Session<D>, ActorKind::Session, D: Dialect)`.
macro_rules! counted_actor {
    ($actor:ty, $kind:expr $(, $param:ident: $bound:path)?) => {
        impl<$($param: $bound)?> $crate::mailbox::CountedActor for $actor {
            const KIND: $crate::metrics::ActorKind = $kind;
        }

        impl<$($param: $bound,)? M> ::actix::Handler<$crate::mailbox::Queued<M>> for $actor
        where
            M: ::actix::Message,
            $actor: ::actix::Handler<M>,
        {
            type Result = $crate::mailbox::Opened<$actor, M>;

            fn handle(
                &mut self,
                msg: $crate::mailbox::Queued<M>,
                ctx: &mut <$actor as ::actix::Actor>::Context,
            ) -> Self::Result {
                $crate::mailbox::Opened::new(<$actor as ::actix::Handler<M>>::handle(
                    self,
                    msg.open(),
                    ctx,
                ))
            }
        }
    };
}
pub(crate) use counted_actor;

/// An actor's address that counts what is sent through it.
pub struct CountedAddr<A: Actor> {
    addr: Addr<A>,
    to: ActorMetrics,
}

impl<A: Actor> Clone for CountedAddr<A> {
    fn clone(&self) -> Self {
        CountedAddr {
            addr: self.addr.clone(),
            to: self.to,
        }
    }
}

impl<A: CountedActor> CountedAddr<A> {
    pub fn new(addr: Addr<A>, metrics: &Metrics) -> CountedAddr<A> {
        CountedAddr {
            addr,
            to: *metrics.actor(A::KIND),
        }
    }
}

impl<A: Actor> CountedAddr<A> {
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send,
        M::Result: Send,
        A: Handler<Queued<M>>,
        A::Context: ToEnvelope<A, Queued<M>>,
    {
        self.addr.do_send(Queued::new(msg, &self.to));
    }

    /// Sends unless the mailbox is full or closed; then the message comes back.
    pub fn try_send<M>(&self, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Queued<M>>,
        A::Context: ToEnvelope<A, Queued<M>>,
    {
        self.addr
            .try_send(Queued::new(msg, &self.to))
            .map_err(unsent)
    }

    /// Sends and waits for the answer.
    pub fn send<M>(&self, msg: M) -> Request<A, Queued<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Queued<M>>,
        A::Context: ToEnvelope<A, Queued<M>>,
    {
        self.addr.send(Queued::new(msg, &self.to))
    }

    pub fn recipient<M>(&self) -> CountedRecipient<M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Queued<M>>,
        A::Context: ToEnvelope<A, Queued<M>>,
    {
        CountedRecipient {
            to: self.addr.clone().recipient(),
            kind: self.to,
        }
    }

    /// Whether the actor is still running.
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }
}

/// A recipient of one message type that counts what is sent through it.
pub struct CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    to: Recipient<Queued<M>>,
    kind: ActorMetrics,
}

impl<M> Clone for CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        CountedRecipient {
            to: self.to.clone(),
            kind: self.kind,
        }
    }
}

impl<M> CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    /// Counts what is sent to `to` as sent to an actor of `kind`: for a recipient made where the
    /// counted address of its actor is not at hand.
    pub fn new(to: Recipient<Queued<M>>, kind: &ActorMetrics) -> CountedRecipient<M> {
        CountedRecipient { to, kind: *kind }
    }

    pub fn do_send(&self, msg: M) {
        self.to.do_send(Queued::new(msg, &self.kind));
    }

    /// Sends unless the mailbox is full or closed; then the message comes back.
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        self.to
            .try_send(Queued::new(msg, &self.kind))
            .map_err(unsent)
    }

    /// Sends and waits for the answer.
    pub fn send(&self, msg: M) -> RecipientRequest<Queued<M>> {
        self.to.send(Queued::new(msg, &self.kind))
    }

    /// Whether the actor is still running.
    pub fn connected(&self) -> bool {
        self.to.connected()
    }
}

impl<M> std::fmt::Debug for CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedRecipient").finish_non_exhaustive()
    }
}

fn unsent<M>(e: SendError<Queued<M>>) -> SendError<M> {
    match e {
        SendError::Full(q) => SendError::Full(q.returned()),
        SendError::Closed(q) => SendError::Closed(q.returned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Counted as a room; answers how many messages it got.
    struct Probe {
        got: u64,
        /// Set: stops on its first message, leaving the rest in its mailbox.
        stop_at_first: bool,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    fn start_probe(stop_at_first: bool, metrics: &Metrics) -> CountedAddr<Probe> {
        let addr = Probe::create(|ctx| {
            ctx.set_mailbox_capacity(1024);
            Probe {
                got: 0,
                stop_at_first,
            }
        });
        CountedAddr::new(addr, metrics)
    }

    counted_actor!(Probe, ActorKind::Room);

    #[derive(Message)]
    #[rtype(result = "u64")]
    struct Ping;

    impl Handler<Ping> for Probe {
        type Result = u64;

        fn handle(&mut self, _: Ping, ctx: &mut Context<Self>) -> u64 {
            self.got += 1;
            if self.stop_at_first {
                ctx.stop();
            }
            self.got
        }
    }

    /// `MessageResult` is tied to its message type: the envelope's handler must still answer it.
    #[derive(Message)]
    #[rtype(result = "Vec<u64>")]
    struct Many;

    impl Handler<Many> for Probe {
        type Result = MessageResult<Many>;

        fn handle(&mut self, _: Many, _: &mut Context<Self>) -> Self::Result {
            self.got += 1;
            MessageResult(vec![self.got])
        }
    }

    #[actix_rt::test]
    async fn every_message_sent_is_counted_out_once_handled() {
        let metrics = Arc::new(Metrics::new());
        let probe = start_probe(false, &metrics);
        let recipient = probe.recipient::<Ping>();
        const N: u64 = 100;
        for i in 0..N {
            match i % 4 {
                0 => probe.do_send(Ping),
                1 => recipient.do_send(Ping),
                2 => probe.try_send(Ping).expect("room in the mailbox"),
                _ => recipient.try_send(Ping).expect("room in the mailbox"),
            }
        }
        assert_eq!(metrics.room.backlog.get(), N as i64);
        assert_eq!(probe.send(Many).await.expect("answered"), vec![N + 1]);
        assert_eq!(recipient.send(Ping).await.expect("answered"), N + 2);
        assert_eq!(metrics.room.backlog.get(), 0);
        assert_eq!(metrics.room.messages.get(), N + 2);
        // Other kinds are not touched.
        assert_eq!(metrics.session.messages.get(), 0);
        assert_eq!(metrics.session.backlog.get(), 0);
    }

    #[actix_rt::test]
    async fn messages_lost_with_a_stopped_actor_leave_the_backlog() {
        let metrics = Arc::new(Metrics::new());
        let probe = start_probe(true, &metrics);
        for _ in 0..10 {
            probe.do_send(Ping);
        }
        assert_eq!(metrics.room.backlog.get(), 10);
        for _ in 0..100 {
            if !probe.connected() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!probe.connected());
        // Sent to an actor that is gone: refused, and counted out at once.
        assert!(matches!(probe.try_send(Ping), Err(SendError::Closed(Ping))));
        probe.do_send(Ping);
        // The mailbox is dropped with the actor's context, after it stopped.
        for _ in 0..100 {
            if metrics.room.backlog.get() == 0 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.room.backlog.get(), 0);
        assert_eq!(metrics.room.messages.get(), 1);
    }
}
