//! What a session has queued for its socket, counted where it waits: broadcasts in the
//! session's mailbox (added by the room that sends them) and frames the session wrote that the
//! socket has not taken yet (taken off by the session's [`Writer`] as it writes them). A client
//! that stops reading stops the socket taking them, so these are what grow; past
//! `limits.max_outbound_bytes` the room evicts the session.
//!
//! It also counts the connection's traffic both ways and notes when its queue drains, for the
//! admin session listing. Nothing here reads a clock: a read costs about 35 ns here, a
//! noticeable share of the ~1 µs a fan-out delivery costs, so how long a queue has waited is
//! measured by [`Backlog`], which looks once a second.
//!
//! [`Writer`]: crate::websocket::Writer

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        self.shutdown(std::net::Shutdown::Both);
    }

    fn shutdown(self, how: std::net::Shutdown) {
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
        if let Err(e) = sock.shutdown(how) {
            log::debug!("shutting a connection down ({how:?}): {e}");
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
    /// Bytes of the client's messages received.
    bytes_in: AtomicU64,
    /// Bytes the connection has taken off the queue to send.
    bytes_out: AtomicU64,
    /// Set each time the queue empties; taken by [`Backlog::look`].
    drained: AtomicBool,
}

impl Outbound {
    pub fn new(max: usize, socket: Option<ConnSocket>) -> Arc<Outbound> {
        Arc::new(Outbound {
            queued: AtomicI64::new(0),
            max,
            evicted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            socket: Mutex::new(socket),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            drained: AtomicBool::new(false),
        })
    }

    /// Notes the connection's socket once the session has one (it is made before the handshake
    /// is answered).
    pub fn attach(&self, socket: Option<ConnSocket>) {
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = socket;
    }

    /// Bytes queued for the socket now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed).max(0) as usize
    }

    #[inline]
    pub fn add(&self, n: usize) {
        self.queued.fetch_add(n as i64, Ordering::Relaxed);
    }

    /// The connection wrote `n` bytes of what was queued. Only the connection counts these: no
    /// locked instruction for the total.
    #[inline]
    pub fn sent(&self, n: usize) {
        self.sub(n);
        let before = self.bytes_out.load(Ordering::Relaxed);
        self.bytes_out.store(before + n as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn sub(&self, n: usize) {
        if self.queued.fetch_sub(n as i64, Ordering::Relaxed) <= n as i64 {
            self.drained.store(true, Ordering::Relaxed);
        }
    }

    /// The client sent a message of `n` bytes. Only the session counts these, so a plain
    /// load and store do (no locked instruction on the receive path).
    pub fn received(&self, n: usize) {
        let before = self.bytes_in.load(Ordering::Relaxed);
        self.bytes_in.store(before + n as u64, Ordering::Relaxed);
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
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

    /// Cuts the connection off after `EVICTION_GRACE` unless the session has closed by then.
    pub fn cut_later(self: &Arc<Self>) {
        let me = self.clone();
        actix::spawn(async move {
            tokio::time::sleep(EVICTION_GRACE).await;
            me.cut();
        });
    }
}

/// How long a session's queue has held bytes without emptying, from looks at it once in a while
/// (the directory looks every second): a client that keeps up empties its queue between two
/// looks and has no lag; one that falls behind shows the time since the first look that found
/// its queue holding bytes it has not emptied since. The lag is short by less than the time
/// between two looks.
#[derive(Debug, Default)]
pub struct Backlog {
    since: Option<Instant>,
}

impl Backlog {
    pub fn look(&mut self, out: &Outbound, now: Instant) {
        let drained = out.drained.swap(false, Ordering::Relaxed);
        if out.queued() == 0 {
            self.since = None;
        } else if drained || self.since.is_none() {
            self.since = Some(now);
        }
    }

    pub fn lag(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
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
    fn lag_is_the_time_a_queue_holds_bytes_without_emptying() {
        let out = Outbound::new(100, None);
        let mut backlog = Backlog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        backlog.look(&out, at(0));
        assert_eq!(backlog.lag(at(0)), Duration::ZERO);
        // A client that keeps up: its queue empties between looks.
        out.add(10);
        backlog.look(&out, at(1));
        out.sub(10);
        out.add(10);
        backlog.look(&out, at(2));
        assert_eq!(backlog.lag(at(2)), Duration::ZERO);
        // One that stops reading: the queue never empties again.
        out.add(20);
        backlog.look(&out, at(3));
        backlog.look(&out, at(4));
        assert_eq!(backlog.lag(at(5)), Duration::from_secs(3));
        out.sub(30);
        backlog.look(&out, at(6));
        assert_eq!(backlog.lag(at(6)), Duration::ZERO);
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
