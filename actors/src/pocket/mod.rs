//! The `pocket` dialect: `@pocket/sync`'s JSON push/pull protocol with checkpoints.

#[cfg(test)]
mod checkpoint_props;
pub mod conflict;
mod dialect;
mod model;
pub mod wire;

pub use conflict::Strategy;
pub use dialect::{PocketDialect, Tag};
pub use model::{PocketModel, tombstone};
pub use wire::PocketLimits;
