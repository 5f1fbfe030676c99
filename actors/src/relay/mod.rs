//! The `relay` dialect: cr-sqlite style peers exchanging column changes per channel.

mod dialect;
mod model;

pub use dialect::{RelayDialect, RelayLimits, Tag};
pub use model::{RelayModel, compare_values, parse_change};
