//! The per-client limits of requests that come without a connection (Pocket over HTTP). A
//! WebSocket session carries its own message budget and follows a bounded number of rooms; an
//! HTTP request has no session, so its client (the user of its token, or its address when the
//! request is anonymous) holds the same budget here: `limits.max_messages_per_second` requests a
//! second, and at most `limits.max_rooms_per_session` distinct rooms within the window a room
//! touched over HTTP stays loaded (`server.room_idle_timeout_s`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use synchub_actors::connection::{Limit, TokenBucket};

/// Who an HTTP request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    User(String),
    Address(IpAddr),
    /// A request whose peer address the server could not tell (not over TCP).
    Unknown,
}

/// Why a request was turned away, and when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Refusal {
    Rate { retry_after: Duration },
    Rooms { retry_after: Duration, max: usize },
}

impl Refusal {
    pub(crate) fn limit(self) -> Limit {
        match self {
            Refusal::Rate { .. } => Limit::Rate,
            Refusal::Rooms { .. } => Limit::RoomsPerUser,
        }
    }

    /// Whole seconds for `Retry-After`, at least one.
    pub(crate) fn retry_after_s(self) -> u64 {
        let wait = match self {
            Refusal::Rate { retry_after } | Refusal::Rooms { retry_after, .. } => retry_after,
        };
        wait.as_secs_f64().ceil().max(1.0) as u64
    }
}

struct Budget {
    bucket: TokenBucket,
    /// Rooms reached within the window, with when each was last reached.
    rooms: HashMap<String, Instant>,
}

pub(crate) struct ClientLimits {
    per_second: u32,
    max_rooms: usize,
    window: Duration,
    clients: Mutex<Clients>,
}

struct Clients {
    budgets: HashMap<Client, Budget>,
    /// When idle budgets were last dropped.
    swept: Instant,
}

/// How often budgets that hold nothing are dropped: a full bucket and no room in the window are
/// the same as no budget at all, so the map holds only clients active within the window.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl ClientLimits {
    pub(crate) fn new(per_second: u32, max_rooms: usize, window: Duration) -> ClientLimits {
        ClientLimits {
            per_second,
            max_rooms: max_rooms.max(1),
            window,
            clients: Mutex::new(Clients {
                budgets: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Counts one request of `client` to `room`, or says why it is refused. A refused request
    /// still spends its share of the rate, as a refused WebSocket message does.
    pub(crate) fn admit(&self, client: Client, room: &str) -> Result<(), Refusal> {
        self.admit_at(client, room, Instant::now())
    }

    fn admit_at(&self, client: Client, room: &str, now: Instant) -> Result<(), Refusal> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(clients.swept) >= SWEEP_EVERY {
            let window = self.window;
            clients.budgets.retain(|_, b| {
                b.rooms
                    .retain(|_, at| now.saturating_duration_since(*at) < window);
                !(b.rooms.is_empty() && b.bucket.is_full_at(now))
            });
            clients.swept = now;
        }
        let budget = clients.budgets.entry(client).or_insert_with(|| Budget {
            bucket: TokenBucket::new(self.per_second),
            rooms: HashMap::new(),
        });
        if !budget.bucket.take_at(now) {
            return Err(Refusal::Rate {
                retry_after: budget.bucket.wait(),
            });
        }
        if let Some(at) = budget.rooms.get_mut(room) {
            *at = now;
            return Ok(());
        }
        let window = self.window;
        budget
            .rooms
            .retain(|_, at| now.saturating_duration_since(*at) < window);
        if budget.rooms.len() >= self.max_rooms {
            let oldest = budget.rooms.values().min().copied().unwrap_or(now);
            return Err(Refusal::Rooms {
                retry_after: (oldest + window).saturating_duration_since(now),
                max: self.max_rooms,
            });
        }
        budget.rooms.insert(room.to_owned(), now);
        Ok(())
    }

    /// Clients with a budget now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.budgets.len()
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Client {
        Client::User(name.into())
    }

    #[test]
    fn the_rate_is_per_client() {
        let limits = ClientLimits::new(5, 100, Duration::from_secs(60));
        let t = Instant::now();
        let admitted = (0..20)
            .filter(|_| limits.admit_at(user("a"), "r", t).is_ok())
            .count();
        assert_eq!(admitted, 5);
        let refused = limits.admit_at(user("a"), "r", t);
        assert!(matches!(refused, Err(Refusal::Rate { .. })), "{refused:?}");
        assert_eq!(refused.map_err(Refusal::retry_after_s), Err(1));
        // Another client has a budget of its own.
        assert!(limits.admit_at(user("b"), "r", t).is_ok());
        // A second later the first one may go on.
        assert!(
            limits
                .admit_at(user("a"), "r", t + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn rooms_are_counted_over_the_window() {
        let window = Duration::from_secs(60);
        let limits = ClientLimits::new(1000, 3, window);
        let t = Instant::now();
        for room in ["a", "b", "c"] {
            assert!(limits.admit_at(user("u"), room, t).is_ok());
        }
        // Rooms already reached stay open; a fourth is refused until the oldest leaves the
        // window.
        assert!(limits.admit_at(user("u"), "a", t).is_ok());
        let later = t + Duration::from_secs(10);
        assert_eq!(
            limits.admit_at(user("u"), "d", later),
            Err(Refusal::Rooms {
                retry_after: Duration::from_secs(50),
                max: 3
            })
        );
        assert!(limits.admit_at(user("v"), "d", later).is_ok());
        // "b" and "c" leave the window at t + 60 s ("a" was reached again at t).
        assert!(limits.admit_at(user("u"), "d", t + window).is_ok());
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let limits = ClientLimits::new(10, 10, Duration::from_secs(5));
        let t = Instant::now();
        for i in 0..100 {
            limits
                .admit_at(Client::Address([127, 0, 0, i].into()), "r", t)
                .expect("admitted");
        }
        assert_eq!(limits.tracked(), 100);
        limits
            .admit_at(user("late"), "r", t + Duration::from_secs(5))
            .expect("admitted");
        assert_eq!(limits.tracked(), 1);
    }
}
