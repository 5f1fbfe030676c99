//! When a store was last used, for handing back what a flood grew once it has been idle a while.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Every use sets a flag (a plain store: no clock is read per operation); the idle check takes
/// it and keeps when it last found it set, `None` once the store was given back and not used
/// since, so an idle store is given back once per stretch of use.
#[derive(Default)]
pub(super) struct IdleClock {
    touched: AtomicBool,
    last_seen_used: Mutex<Option<Instant>>,
}

impl IdleClock {
    pub(super) fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Whether the store has been used since it was last given back, but not for `idle`.
    pub(super) fn idle_for(&self, idle: Duration) -> bool {
        let mut seen = self
            .last_seen_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.touched.swap(false, Ordering::Relaxed) {
            *seen = Some(Instant::now());
        }
        seen.is_some_and(|at| at.elapsed() >= idle)
    }

    /// The store was given back: the next release waits for another use.
    pub(super) fn rest(&self) {
        *self
            .last_seen_used
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}
