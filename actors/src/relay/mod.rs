//! The `relay` dialect: cr-sqlite style peers exchanging column changes per channel.

mod dialect;
mod model;
mod settings;
mod spec;

use crate::room_key::Namespace;

pub const NAMESPACE: Namespace = Namespace::new("relay");

pub use dialect::{RelayDialect, RelayLimits, Tag};
pub use model::{RelayModel, compare_values, parse_change};
pub use settings::RelaySettings;
pub use spec::DIALECT;
