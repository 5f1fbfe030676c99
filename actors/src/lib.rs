//! The actor system of synchub.
//!
//! - [`session`]: one actor per WebSocket connection, speaking its dialect through a codec;
//! - [`dialect`]: what a codec is to whatever drives it (the trait, frames, actions);
//! - [`disconnect`]: why a connection ends (close codes, the message asking for one);
//! - [`room`]: one actor per `(namespace, room)`, ordering, storing and relaying its changes;
//! - [`directory`]: starts rooms on demand and keeps the census of sessions;
//! - [`durability`]: group commit, one flush shared by every change written before it;
//! - [`store`]: the change logs and materialised state, over sled or memory;
//! - [`model`]: the seam where a dialect's merge rules meet the room engine;
//! - [`pocket`], [`synckit`], [`relay`]: the three wire dialects (codec and model each).

pub mod clock;
pub mod cluster;
pub mod data_check;
pub mod dialect;
pub mod dialect_spec;
pub mod directory;
pub mod disconnect;
pub mod durability;
pub mod headless;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod origin;
pub mod out_frame;
pub mod outbound;
pub mod pocket;
pub mod raw_json;
pub mod registry;
pub mod relay;
pub mod room;
pub mod room_key;
pub mod section;
pub mod session;
pub mod store;
pub mod sweep;
pub mod synckit;

#[cfg(test)]
mod proptests;

pub use hub::{Hub, HubError, HubSettings};
pub use identity::{AuthError, Identity, Permissions, TokenVerifier};
pub use room_key::{Namespace, RoomKey};
