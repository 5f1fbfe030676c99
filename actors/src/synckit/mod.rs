//! The `synckit` dialect: SyncKit SDK 0.1's binary or JSON frames, field-level LWW documents.

mod dialect;
pub mod frame;
mod model;

pub use dialect::{SynckitDialect, SynckitLimits, Tag};
pub use model::SynckitModel;
