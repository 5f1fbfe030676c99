//! The `pocket` dialect: `@pocket/sync`'s JSON push/pull protocol with checkpoints.

#[cfg(test)]
mod checkpoint_props;
pub mod conflict;
mod dialect;
mod model;
mod settings;
mod spec;
pub mod wire;

use crate::room_key::Namespace;

pub const NAMESPACE: Namespace = Namespace::new("pocket");

pub use conflict::Strategy;
pub use dialect::{PocketDialect, Tag};
pub use model::{PocketModel, tombstone};
pub use settings::{CollectionSettings, PocketSettings};
pub use spec::{DIALECT, codec};
pub use wire::PocketLimits;
