//! `[relay]` in the configuration.

use serde::{Deserialize, Serialize};

use crate::section::{Bound, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// Changes per `update` the hub sends in answer to a `pull`.
    pub max_changes_per_message: usize,
}

impl Default for RelaySettings {
    fn default() -> RelaySettings {
        RelaySettings {
            max_changes_per_message: 1000,
        }
    }
}

impl Section for RelaySettings {
    fn bounds(&self) -> Vec<Bound> {
        vec![Bound {
            key: "max_changes_per_message",
            value: self.max_changes_per_message as u64,
            min: 1,
            max: 1_000_000,
        }]
    }
}
