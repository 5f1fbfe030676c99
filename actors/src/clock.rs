//! Wall-clock readings in the units the wire protocols use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (Pocket and SyncKit timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (JWT `exp`).
pub fn unix_now() -> i64 {
    now_ms() / 1000
}
