//! Whether the store takes writes, and if not, why. The durability actor sets it when a write
//! or flush fails and clears it once the store has recovered; the health endpoint reports it,
//! and a room that lost writes waits for it before it reloads what is durable.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct StorageHealth {
    failing: AtomicBool,
    /// Set by a failure, cleared once the store has been reopened: until then what it reads
    /// may include writes that were never made durable.
    stale: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl StorageHealth {
    /// Writes go through (as far as the last one showed).
    pub fn ok(&self) -> bool {
        !self.failing.load(Ordering::Acquire)
    }

    /// What the store reads is what is durable: true unless a failure happened and the store
    /// has not been reopened since. Reads are served again from then on, even while the disk
    /// is still full.
    pub fn readable(&self) -> bool {
        !self.stale.load(Ordering::Acquire)
    }

    /// Why writes fail ("disk full", or the error), while they do.
    pub fn cause(&self) -> Option<String> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn failed(&self, cause: String) {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
        self.stale.store(true, Ordering::Release);
        self.failing.store(true, Ordering::Release);
    }

    pub fn reopened(&self) {
        self.stale.store(false, Ordering::Release);
    }

    pub fn recovered(&self) {
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.stale.store(false, Ordering::Release);
        self.failing.store(false, Ordering::Release);
    }
}
