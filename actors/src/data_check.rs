//! `synchub check-data`: every room of a data directory replayed from its log as a starting
//! hub would, its state's counters compared with those stored, and whatever cannot be read or
//! does not add up reported.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::Model;
use crate::room::RoomState;
use crate::room_key::Namespace;
use crate::store::{RoomLayout, StorageError, Store};

/// What the check found in one room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomCheck {
    pub room: String,
    pub seq: u64,
    pub records: u64,
    pub digest: String,
    /// Empty when the room is whole.
    pub problems: Vec<String>,
}

/// Gives a migrated change its number as its namespace's model writes it.
pub fn stamp_with(
    models: &HashMap<Namespace, Arc<dyn Model>>,
) -> impl Fn(&crate::room_key::RoomKey, &mut serde_json::Value, u64) + '_ {
    |room, body, seq| {
        if let Some(m) = models.get(&room.namespace) {
            m.stamp(body, seq);
        }
    }
}

/// Replays every room of `store` through its namespace's model and compares the counters the
/// replay arrives at with the stored ones. Fails only when the store cannot list its rooms.
pub fn check_rooms(
    store: &Store,
    models: &HashMap<Namespace, Arc<dyn Model>>,
) -> Result<Vec<RoomCheck>, StorageError> {
    let mut out = Vec::new();
    for (key, _) in store.rooms()? {
        let layout = RoomLayout::new(&key);
        let mut check = RoomCheck {
            room: key.to_string(),
            seq: 0,
            records: 0,
            digest: String::new(),
            problems: Vec::new(),
        };
        let Some(model) = models.get(&key.namespace) else {
            check.problems.push("no model for its namespace".into());
            out.push(check);
            continue;
        };
        let stored = match store.room_meta(&layout) {
            Ok(Some(m)) => m,
            Ok(None) => {
                check.problems.push("its counters are gone".into());
                out.push(check);
                continue;
            }
            Err(e) => {
                check.problems.push(format!("unreadable counters: {e}"));
                out.push(check);
                continue;
            }
        };
        let image = match store.load_room(&layout) {
            Ok(image) => image,
            Err(e) => {
                check.problems.push(format!("unreadable: {e}"));
                out.push(check);
                continue;
            }
        };
        let last_logged = image
            .log
            .iter()
            .map(|e| e.seq)
            .chain(image.records.iter().map(|(_, _, r)| r.seq))
            .max()
            .unwrap_or(0);
        let mut log_order_ok = true;
        let mut last: HashMap<&str, u64> = HashMap::new();
        for e in &image.log {
            let at = last.entry(e.stream.as_str()).or_default();
            log_order_ok &= e.seq > *at;
            *at = e.seq;
        }
        let state = match RoomState::load(key.clone(), layout, image, model.as_ref()) {
            Ok(state) => state,
            Err(e) => {
                check.problems.push(format!("cannot be replayed: {e}"));
                out.push(check);
                continue;
            }
        };
        let m = state.meta();
        check.seq = stored.seq;
        check.records = m.records;
        check.digest = m.digest.to_hex();
        if !log_order_ok {
            check.problems.push("its log is out of order".into());
        }
        if last_logged > stored.seq {
            check.problems.push(format!(
                "its log goes to {last_logged}, past its sequence number {}",
                stored.seq
            ));
        }
        if m.digest != stored.digest {
            check.problems.push(format!(
                "its state's digest is {}, its counters say {}",
                m.digest.to_hex(),
                stored.digest.to_hex()
            ));
        }
        if m.records != stored.records {
            check.problems.push(format!(
                "it holds {} records, its counters say {}",
                m.records, stored.records
            ));
        }
        out.push(check);
    }
    Ok(out)
}
