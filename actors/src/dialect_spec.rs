//! What the hub knows of a dialect besides its codec. Each dialect describes itself once (its
//! folder's `DIALECT`), and the registry lists the descriptions: the hub starts its rooms from
//! them, the configuration reads their sections, the HTTP layer serves their routes and
//! publishes into their rooms, `/stats` counts by their names, and the load generator finds
//! their sockets.

use futures_util::future::LocalBoxFuture;

use crate::headless::Outcome;
use crate::hub::{DialectRooms, Hub};
use crate::identity::Identity;
use crate::room_key::{Namespace, RoomKey};
use crate::section::SectionSpec;
use crate::session::Upgrade;

/// One dialect, as everything outside its codec sees it. Its namespace's name is the dialect's
/// name everywhere: room keys, its configuration section, its key in `/stats` and the
/// dashboard, its label in the metrics.
pub struct DialectSpec {
    /// How its rooms run: what the hub itself needs.
    pub rooms: DialectRooms,
    /// Its section of the configuration, `[<name>]`.
    pub settings: SectionSpec,
    /// Where its clients open their WebSocket, and how they are let in.
    pub websocket: WebSocketRoute,
    /// A session of this dialect for a client let in: `room` is the one the connection named
    /// when the route takes one.
    pub open: fn(&Hub, Option<RoomKey>, Identity) -> Box<dyn Upgrade>,
    /// Takes one client message an operator publishes into `room` through the dialect's codec
    /// and the room, as a connected client's would go: merged, made durable, broadcast to every
    /// member. `Err` says why the message cannot be handed to the codec at all.
    pub publish: for<'a> fn(&'a Hub, RoomKey, &'a [u8]) -> Publishing<'a>,
}

/// An operator's message on its way through a dialect: what the codec wrote back.
pub type Publishing<'a> = LocalBoxFuture<'a, Result<Outcome, String>>;

impl DialectSpec {
    pub fn namespace(&self) -> Namespace {
        self.rooms.namespace
    }

    pub fn name(&self) -> &str {
        self.rooms.namespace.as_str()
    }
}

/// The room a connection names when its query does not.
pub const DEFAULT_ROOM: &str = "default";

/// How a dialect's clients reach it: a WebSocket upgrade on one or more paths.
pub struct WebSocketRoute {
    /// The paths it is served on; the first is the one the dialect goes by. `/` is shared with
    /// the hub's description, which answers the requests that are not upgrades.
    pub paths: &'static [&'static str],
    /// The query parameter naming the room, for a socket that serves one room
    /// ([`DEFAULT_ROOM`] when absent); `None` where the client names rooms in its messages.
    pub room: Option<RoomParam>,
    /// How a client whose token is refused is answered.
    pub refused: AuthRefusal,
    /// Whether a client may connect without a token, to send one in its first message
    /// (SyncKit's `auth`). Otherwise a missing token is refused like a bad one.
    pub token_in_band: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct RoomParam {
    pub name: &'static str,
    /// What an invalid room name is answered with (HTTP 400, before the upgrade).
    pub invalid: &'static str,
}

/// How a dialect's clients expect to hear that their token was refused.
#[derive(Debug, Clone, Copy)]
pub enum AuthRefusal {
    /// HTTP 401 before the upgrade.
    Unauthorized,
    /// The upgrade goes through and the socket is closed at once with this code (Pocket's
    /// clients read a close code, not an HTTP status).
    Close { code: u16, reason: &'static str },
}
