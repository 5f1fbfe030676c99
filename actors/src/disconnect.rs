//! Why a connection ends: the close codes the hub sends, in one catalogue, and the message that
//! asks a session to close with one. A leaf: rooms, the directory, the hub and the sessions all
//! name these, and none of them needs the others for it.

use actix::prelude::*;

/// Close codes the hub uses beyond the standard ones.
pub mod close_code {
    /// The hub is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// An administrator closed the session, or the client broke a rule of its dialect.
    pub const POLICY: u16 = 1008;
    /// The hub cannot serve the session (its room could not be reached).
    pub const INTERNAL: u16 = 1011;
    /// The token was refused.
    pub const AUTH_FAILED: u16 = 4001;
    /// Past a connection limit (per node or per user).
    pub const TOO_MANY: u16 = 4002;
    /// The client did not take what was sent to it fast enough.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The token expired and no fresh one came in band.
    pub const TOKEN_EXPIRED: u16 = 4009;
}

/// Asks a session to close with a WebSocket close code.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: String,
}
