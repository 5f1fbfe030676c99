//! Turns at work a room runs on the blocking pool, so that rooms which all need the same kind
//! of work at the same moment (a wave of compactions, every room loading after a restart) take
//! turns instead of sharing the cores all at once: a flood of blocking threads starves the
//! durability thread and the sockets, and every job of the wave ends as late as the last.
//! Every clone of the store shares its turns: they are one node's cores and disk.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A number of turns; never closed, so waiting for one always ends with a turn.
#[derive(Clone)]
pub(super) struct Turns(Arc<Semaphore>);

/// A turn being held; dropping it gives the turn to the next in line.
pub struct Turn(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Turns {
    pub(super) fn new(turns: usize) -> Turns {
        Turns(Arc::new(Semaphore::new(turns.max(1))))
    }

    /// Resolves, in the order asked, once a turn is free.
    pub(super) fn take(&self) -> impl Future<Output = Turn> + Send + 'static {
        let turns = self.0.clone();
        // The semaphore is never closed, so the error case is only a type's.
        async move { Turn(turns.acquire_owned().await.ok()) }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn the_next_in_line_waits_until_a_turn_is_given_back() {
        let turns = Turns::new(2);
        let first = turns.take().now_or_never().expect("a free turn");
        let _second = turns.take().now_or_never().expect("another free turn");
        let mut next = Box::pin(turns.take());
        assert!(
            (&mut next).now_or_never().is_none(),
            "both turns are held, so the next waits"
        );
        drop(first);
        assert!(
            next.now_or_never().is_some(),
            "a dropped turn goes to the one waiting"
        );
    }

    #[test]
    fn there_is_always_a_turn() {
        let turns = Turns::new(0);
        assert!(turns.take().now_or_never().is_some());
    }
}
