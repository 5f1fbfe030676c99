//! The `synckit` dialect: SyncKit SDK 0.1's binary or JSON frames, field-level LWW documents.

mod dialect;
pub mod frame;
mod model;
mod settings;
mod spec;

use crate::room_key::Namespace;

pub const NAMESPACE: Namespace = Namespace::new("synckit");

pub use dialect::{SynckitDialect, SynckitLimits, Tag};
pub use model::SynckitModel;
pub use settings::SynckitSettings;
pub use spec::DIALECT;
