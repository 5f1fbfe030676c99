//! Checks of the `[limits]` a message or a connection must pass before anything acts on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How deeply a JSON value nests: a scalar is 0, `[]` and `{}` are 1.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Which limit turned something away: the label of `synchub_limits_hit_total` and the key of
/// `/stats` `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Rate,
    /// A session's requests waiting at its rooms reached `limits.max_outbound_bytes`.
    Backlog,
    SlowConsumer,
    RoomsPerSession,
    /// Distinct rooms one client reached over HTTP within the window (see the HTTP layer).
    RoomsPerUser,
    Connections,
    ConnectionsPerUser,
    ConnectionsPerIp,
    FrameBytes,
    JsonDepth,
    DocumentBytes,
    Origin,
}

impl Limit {
    pub const ALL: [Limit; 12] = [
        Limit::Rate,
        Limit::Backlog,
        Limit::SlowConsumer,
        Limit::RoomsPerSession,
        Limit::RoomsPerUser,
        Limit::Connections,
        Limit::ConnectionsPerUser,
        Limit::ConnectionsPerIp,
        Limit::FrameBytes,
        Limit::JsonDepth,
        Limit::DocumentBytes,
        Limit::Origin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::Backlog => "backlog",
            Limit::SlowConsumer => "slow_consumer",
            Limit::RoomsPerSession => "rooms_per_session",
            Limit::RoomsPerUser => "rooms_per_user",
            Limit::Connections => "connections",
            Limit::ConnectionsPerUser => "connections_per_user",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::FrameBytes => "frame_bytes",
            Limit::JsonDepth => "json_depth",
            Limit::DocumentBytes => "document_bytes",
            Limit::Origin => "origin",
        }
    }
}

/// A session's message budget: `rate` tokens a second, at most `rate` saved up, so a client
/// may burst one second's worth and then keeps to the rate.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32) -> TokenBucket {
        let rate = f64::from(per_second.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Takes one token if there is one at `now`.
    pub fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long after its last use the bucket holds a token again.
    pub fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    /// Whether the bucket is full at `now`: then it is as good as a new one.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.rate
    }
}

/// Open connections per client address, for `limits.max_connections_per_ip`. A slot is held by
/// the session it admitted and given back when that session is dropped, however it ends.
#[derive(Debug, Clone)]
pub struct IpSlots {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl IpSlots {
    pub fn new(max: usize) -> IpSlots {
        IpSlots {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` past the limit.
    pub fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            open: self.open.clone(),
        })
    }

    /// Connections open from `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// One admitted connection from an address; dropping it frees the slot.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket {
            rate: 10.0,
            tokens: 10.0,
            at: start,
        };
        assert_eq!((0..20).filter(|_| b.take_at(start)).count(), 10);
        // A tenth of a second buys one more message, and no more.
        let later = start + Duration::from_millis(100);
        assert!(b.take_at(later));
        assert!(!b.take_at(later));
        // Idle time saves up at most one second's worth.
        let wait = b.wait().as_secs_f64();
        assert!((0.099..=0.101).contains(&wait), "{wait}");
        assert!(!b.is_full_at(later + Duration::from_millis(900)));
        let much_later = later + Duration::from_secs(60);
        assert!(b.is_full_at(much_later));
        assert_eq!((0..20).filter(|_| b.take_at(much_later)).count(), 10);
    }

    #[test]
    fn ip_slots_come_back_when_dropped() {
        let slots = IpSlots::new(2);
        let ip: IpAddr = "127.0.0.9".parse().expect("an address");
        let a = slots.acquire(ip).expect("first");
        let b = slots.acquire(ip).expect("second");
        assert!(slots.acquire(ip).is_none());
        assert!(
            slots
                .acquire("127.0.0.10".parse().expect("an address"))
                .is_some()
        );
        drop(a);
        assert_eq!(slots.count(ip), 1);
        let _c = slots.acquire(ip).expect("a freed slot");
        drop(b);
        assert_eq!(slots.count(ip), 1);
    }
}
