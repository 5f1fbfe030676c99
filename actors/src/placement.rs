//! Which thread a room runs on, and whether any room still runs.
//!
//! A change crosses from its session to its room and back to the room's members. When rooms
//! have threads of their own, each crossing wakes another thread, and on a small machine those
//! wake-ups cost more than the room's work. So the HTTP workers may offer their own threads
//! ([`Placement::offer_current`]): rooms then run beside the sessions, and a message between
//! a session and a room on the same worker never leaves the thread. The room threads of their
//! own hold only the rooms started before any worker offered its thread.
//!
//! Each room holds a [`Running`] token until it is dropped, after every storage handle it had,
//! and so does each job it runs on the blocking pool ([`Running::spawn_blocking`]): shutdown
//! waits for [`Placement::rooms_running`] to reach zero before the data directory may be opened
//! again.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use actix::ArbiterHandle;

use crate::room_key::RoomKey;

/// The machine's cores, at least one: what the room threads and the turns at blocking work
/// are counted in.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Held by a running room, and by its work on the blocking pool; dropped after the storage
/// handles beside it.
#[derive(Clone)]
pub struct Running(#[allow(dead_code)] Arc<()>);

impl Running {
    /// Runs a room's `job` on the blocking pool, holding this token until it is done, so
    /// shutdown waits for it too. The call consumes `job`, so the storage handles it holds are
    /// dropped before the token is.
    pub fn spawn_blocking<T: Send + 'static>(
        self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        tokio::task::spawn_blocking(move || {
            let _running = self;
            job()
        })
    }
}

pub struct Placement {
    /// Threads of the rooms' own (at least one).
    own: Vec<ArbiterHandle>,
    /// Threads offered to run rooms beside other work; preferred once there is one.
    offered: Mutex<Vec<ArbiterHandle>>,
    running: Arc<()>,
}

impl Placement {
    pub fn new(own: Vec<ArbiterHandle>) -> Placement {
        assert!(!own.is_empty(), "rooms need at least one thread");
        Placement {
            own,
            offered: Mutex::new(Vec::new()),
            running: Arc::new(()),
        }
    }

    /// Offers the calling thread (which must run an actix arbiter) for rooms started from now.
    pub fn offer_current(&self) {
        self.offered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(actix::Arbiter::current());
    }

    /// The thread a room starts on, and its token. Rooms are spread by their key, so merges
    /// use every thread.
    pub fn place(&self, key: &RoomKey) -> (ArbiterHandle, Running) {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish() as usize;
        let mut offered = self
            .offered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let thread = loop {
            if offered.is_empty() {
                break self.own[hash % self.own.len()].clone();
            }
            let i = hash % offered.len();
            // A worker that stopped (the server restarts one that panicked) takes no more
            // rooms; only the one picked is asked, so a room start wakes no other thread.
            if offered[i].spawn(async {}) {
                break offered[i].clone();
            }
            offered.swap_remove(i);
        };
        (thread, Running(self.running.clone()))
    }

    /// Rooms whose actor has not been dropped yet, wherever they run, and their jobs on the
    /// blocking pool still under way.
    pub fn rooms_running(&self) -> usize {
        Arc::strong_count(&self.running) - 1
    }
}

#[cfg(test)]
mod tests {
    use std::thread::ThreadId;

    use super::*;

    fn key(room: &str) -> RoomKey {
        RoomKey::new(crate::relay::NAMESPACE, room).expect("a valid room name")
    }

    async fn thread_of(thread: &ArbiterHandle) -> ThreadId {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(thread.spawn(async move {
            let _ = tx.send(std::thread::current().id());
        }));
        rx.await.expect("the thread ran it")
    }

    #[actix::test]
    async fn rooms_go_to_offered_threads_once_there_is_one_and_never_to_a_stopped_one() {
        let own = actix::Arbiter::new();
        let own_thread = thread_of(&own.handle()).await;
        let placement = Arc::new(Placement::new(vec![own.handle()]));
        assert_eq!(thread_of(&placement.place(&key("a")).0).await, own_thread);

        let worker = actix::Arbiter::new();
        let offer = placement.clone();
        assert!(worker.spawn(async move { offer.offer_current() }));
        let worker_thread = thread_of(&worker.handle()).await;
        for room in ["a", "b", "c", "d"] {
            let (thread, _running) = placement.place(&key(room));
            assert_eq!(thread_of(&thread).await, worker_thread, "{room}");
        }

        worker.stop();
        worker.join().expect("the worker stopped");
        assert_eq!(thread_of(&placement.place(&key("e")).0).await, own_thread);
        own.stop();
        own.join().expect("the room thread stopped");
    }

    #[test]
    fn a_room_counts_as_running_until_its_token_is_dropped() {
        let system = actix::System::new();
        system.block_on(async {
            let placement = Placement::new(vec![actix::Arbiter::current()]);
            assert_eq!(placement.rooms_running(), 0);
            let (_, first) = placement.place(&key("a"));
            let (_, second) = placement.place(&key("b"));
            assert_eq!(placement.rooms_running(), 2);
            drop(first);
            assert_eq!(placement.rooms_running(), 1);
            drop(second);
            assert_eq!(placement.rooms_running(), 0);
        });
    }
}
