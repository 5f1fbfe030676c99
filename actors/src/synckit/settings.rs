//! `[synckit]` in the configuration.

use serde::{Deserialize, Serialize};

use crate::section::{Bound, Section};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynckitSettings {
    /// How long a document gathers accepted writes before broadcasting them, in milliseconds.
    pub batch_ms: u64,
}

impl Default for SynckitSettings {
    fn default() -> SynckitSettings {
        SynckitSettings { batch_ms: 50 }
    }
}

impl Section for SynckitSettings {
    fn bounds(&self) -> Vec<Bound> {
        vec![Bound {
            key: "batch_ms",
            value: self.batch_ms,
            min: 0,
            max: 60_000,
        }]
    }
}
