//! What a session has queued for its socket, counted where it waits: broadcasts in the
//! session's mailbox (added by the room that sends them) and frames the session wrote that the
//! HTTP layer has not taken yet (taken off by [`Counted`] as the connection pulls them). A
//! client that stops reading stops the connection pulling, so these are what grow; past
//! `limits.max_outbound_bytes` the room evicts the session.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

/// How long an evicted session has to take its close frame before its connection is cut: a
/// client that reads nothing at all would otherwise hold the socket, and the bytes queued for
/// it, for as long as it likes.
pub const EVICTION_GRACE: Duration = Duration::from_secs(5);

/// The connection's socket, noted by the HTTP server for each connection so that a session whose
/// client stopped reading can be cut off even though its actor is not being polled. Only its
/// number and its peer are kept: holding a duplicate would double the files every connection
/// takes, and the peer tells the socket apart from a later one that reuses the number.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket {
    pub fd: RawFd,
    pub peer: SocketAddr,
}

impl ConnSocket {
    /// Shuts the socket down if it is still the connection it was noted for.
    fn shut_down(self) {
        // SAFETY: the descriptor is only borrowed for two syscalls. It may have been closed
        // since it was noted (then both fail with EBADF) or reused by another socket (then its
        // peer differs and nothing is done); neither touches memory the process owns.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let sock = socket2::SockRef::from(&fd);
        let same = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|peer| peer == self.peer);
        if !same {
            return;
        }
        if let Err(e) = sock.shutdown(std::net::Shutdown::Both) {
            log::debug!("cutting off a slow consumer: {e}");
        }
    }
}

#[derive(Debug)]
pub struct Outbound {
    queued: AtomicI64,
    max: usize,
    evicted: AtomicBool,
    closed: AtomicBool,
    socket: Mutex<Option<ConnSocket>>,
}

impl Outbound {
    pub fn new(max: usize, socket: Option<ConnSocket>) -> Arc<Outbound> {
        Arc::new(Outbound {
            queued: AtomicI64::new(0),
            max,
            evicted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            socket: Mutex::new(socket),
        })
    }

    /// Bytes queued for the socket now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn add(&self, n: usize) {
        self.queued.fetch_add(n as i64, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        self.queued.fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Whether `n` more bytes stay within the limit.
    pub fn admits(&self, n: usize) -> bool {
        self.queued().saturating_add(n) <= self.max
    }

    /// Marks the session evicted; true the first time.
    pub fn evict(&self) -> bool {
        !self.evicted.swap(true, Ordering::Relaxed)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The session has ended: nothing is left to cut.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.take_socket();
    }

    fn take_socket(&self) -> Option<ConnSocket> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Shuts the connection down unless the session has ended: the pending write fails, the
    /// HTTP layer drops the connection, and the session stops with it.
    pub fn cut(&self) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(socket) = self.take_socket() {
            socket.shut_down();
        }
    }

    /// Cuts the connection off after [`EVICTION_GRACE`] unless the session has closed by then.
    pub fn cut_later(self: &Arc<Self>) {
        let me = self.clone();
        actix::spawn(async move {
            tokio::time::sleep(EVICTION_GRACE).await;
            me.cut();
        });
    }
}

/// The bytes a server frame with a payload of `len` takes on the wire (servers do not mask).
pub fn frame_bytes(len: usize) -> usize {
    let header = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + len
}

/// The session's outgoing byte stream, taking off the queue what the connection pulls.
pub struct Counted<S> {
    inner: S,
    out: Arc<Outbound>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, out: Arc<Outbound>) -> Counted<S> {
        Counted { inner, out }
    }
}

impl<S, E> Stream for Counted<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &next {
            this.out.sub(bytes.len());
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_follow_rfc_6455() {
        assert_eq!(frame_bytes(0), 2);
        assert_eq!(frame_bytes(125), 127);
        assert_eq!(frame_bytes(126), 130);
        assert_eq!(frame_bytes(65536), 65546);
    }

    #[test]
    fn the_limit_counts_what_is_queued() {
        let out = Outbound::new(100, None);
        assert!(out.admits(100));
        out.add(60);
        assert!(!out.admits(41));
        out.sub(60);
        // Taken off before it was counted (the race between a room and its session): never
        // reads as negative.
        out.sub(10);
        assert_eq!(out.queued(), 0);
        assert!(out.evict());
        assert!(!out.evict());
        assert!(out.is_evicted());
    }
}
