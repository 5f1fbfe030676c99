//! `[pocket]` in the configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conflict::Strategy;
use crate::section::{Bound, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PocketSettings {
    pub conflict_strategy: Strategy,
    /// A pull's `limit` is clamped to this.
    pub max_pull_limit: usize,
    /// Per-collection overrides: `[pocket.collections.<name>]`.
    pub collections: BTreeMap<String, CollectionSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSettings {
    pub conflict_strategy: Strategy,
}

impl Default for PocketSettings {
    fn default() -> PocketSettings {
        PocketSettings {
            conflict_strategy: Strategy::LastWriteWins,
            max_pull_limit: 1000,
            collections: BTreeMap::new(),
        }
    }
}

impl Section for PocketSettings {
    fn bounds(&self) -> Vec<Bound> {
        vec![Bound {
            key: "max_pull_limit",
            value: self.max_pull_limit as u64,
            min: 1,
            max: 1_000_000,
        }]
    }
}
