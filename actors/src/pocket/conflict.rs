//! Pocket's conflict detection and resolution, as `@pocket/sync` defines them.

use std::cmp::Ordering;
use std::str::FromStr;

use serde_json::{Map, Value};

/// How a collection settles a conflict; in configuration by its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    ServerWins,
    ClientWins,
    LastWriteWins,
    Merge,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "server-wins" => Ok(Strategy::ServerWins),
            "client-wins" => Ok(Strategy::ClientWins),
            "last-write-wins" => Ok(Strategy::LastWriteWins),
            "merge" => Ok(Strategy::Merge),
            other => Err(format!(
                "unknown conflict strategy {other:?} (expected server-wins, client-wins, \
                 last-write-wins or merge)"
            )),
        }
    }
}

/// How two vector clocks relate. Pocket folds `Equal` into "concurrent" (its compare gives 0
/// for both), and conflict detection follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockOrder {
    Before,
    After,
    Concurrent,
    Equal,
}

fn counter(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
        .unwrap_or(0)
}

/// Compares clock `a` with clock `b` (missing entries count as 0).
pub fn compare_clocks(a: &Map<String, Value>, b: &Map<String, Value>) -> ClockOrder {
    let (mut a_ahead, mut b_ahead) = (false, false);
    for node in a.keys().chain(b.keys()) {
        let x = a.get(node).map_or(0, counter);
        let y = b.get(node).map_or(0, counter);
        match x.cmp(&y) {
            Ordering::Greater => a_ahead = true,
            Ordering::Less => b_ahead = true,
            Ordering::Equal => {}
        }
    }
    match (a_ahead, b_ahead) {
        (true, true) => ClockOrder::Concurrent,
        (true, false) => ClockOrder::After,
        (false, true) => ClockOrder::Before,
        (false, false) => ClockOrder::Equal,
    }
}

/// Pointwise maximum of two clocks.
pub fn merge_clocks(a: &Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    let mut out = a.clone();
    for (node, v) in b {
        let theirs = counter(v);
        let ours = out.get(node).map_or(0, counter);
        out.insert(node.clone(), Value::from(ours.max(theirs)));
    }
    out
}

fn clock(doc: &Map<String, Value>) -> Option<&Map<String, Value>> {
    doc.get("_vclock").and_then(Value::as_object)
}

fn rev(doc: &Map<String, Value>) -> Option<&str> {
    doc.get("_rev").and_then(Value::as_str)
}

fn updated_at(doc: &Map<String, Value>) -> f64 {
    doc.get("_updatedAt").and_then(Value::as_f64).unwrap_or(0.0)
}

/// `"<n>-<hash>"` with a decimal `n` and an alphanumeric hash, as Pocket parses revisions.
fn parse_rev(rev: &str) -> Option<u64> {
    let (n, hash) = rev.split_once('-')?;
    let valid = !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && !hash.is_empty()
        && hash.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return None;
    }
    // A number too large for u64 still parses in Pocket (as a float); compare such
    // revisions as equal-height rather than calling them unparsable.
    Some(n.parse::<u64>().unwrap_or(u64::MAX))
}

/// Whether `incoming` conflicts with `stored`, by Pocket's rules in their order.
pub fn detect_conflict(stored: &Map<String, Value>, incoming: &Map<String, Value>) -> bool {
    let (rs, ri) = (rev(stored), rev(incoming));
    if rs.is_some() && rs == ri {
        return false;
    }
    if let (Some(cs), Some(ci)) = (clock(stored), clock(incoming)) {
        return matches!(
            compare_clocks(ci, cs),
            ClockOrder::Concurrent | ClockOrder::Equal
        );
    }
    match (rs, ri) {
        (Some(_), None) | (None, Some(_)) => true,
        (Some(a), Some(b)) => match (parse_rev(a), parse_rev(b)) {
            (Some(na), Some(nb)) => na == nb && a != b,
            _ => false,
        },
        (None, None) => false,
    }
}

/// The outcome of a conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// This document replaces the stored one (the incoming one, or a merge of both).
    Store(Map<String, Value>),
    /// The stored document stays; the incoming change loses.
    KeepStored,
}

/// Settles a detected conflict between the stored document and an incoming one.
pub fn resolve(
    strategy: Strategy,
    stored: &Map<String, Value>,
    incoming: &Map<String, Value>,
) -> Resolution {
    match strategy {
        Strategy::ServerWins => Resolution::KeepStored,
        Strategy::ClientWins => Resolution::Store(incoming.clone()),
        Strategy::LastWriteWins => {
            let (ts, ti) = (updated_at(stored), updated_at(incoming));
            let incoming_wins = if ti != ts {
                ti > ts
            } else {
                matches!(
                    (clock(incoming), clock(stored)),
                    (Some(ci), Some(cs)) if compare_clocks(ci, cs) == ClockOrder::After
                )
            };
            if incoming_wins {
                Resolution::Store(incoming.clone())
            } else {
                Resolution::KeepStored
            }
        }
        Strategy::Merge => Resolution::Store(merge_fields(stored, incoming)),
    }
}

/// Field-by-field merge: a field one side lacks is kept from the other; a field both have takes
/// the value of the side with the larger `_updatedAt`, the incoming side on a tie. System fields
/// (`_…`) follow their own rules: the clocks' pointwise max, the larger `_updatedAt`.
fn merge_fields(stored: &Map<String, Value>, incoming: &Map<String, Value>) -> Map<String, Value> {
    let incoming_newer = updated_at(incoming) >= updated_at(stored);
    let mut out = Map::new();
    for (field, value) in stored.iter().filter(|(f, _)| !f.starts_with('_')) {
        out.insert(field.clone(), value.clone());
    }
    for (field, value) in incoming.iter().filter(|(f, _)| !f.starts_with('_')) {
        if incoming_newer || !out.contains_key(field) {
            out.insert(field.clone(), value.clone());
        }
    }
    if let Some(id) = incoming.get("_id").or_else(|| stored.get("_id")) {
        out.insert("_id".into(), id.clone());
    }
    if let Some(r) = incoming.get("_rev").or_else(|| stored.get("_rev")) {
        out.insert("_rev".into(), r.clone());
    }
    let newest = if incoming_newer { incoming } else { stored };
    if let Some(t) = newest.get("_updatedAt") {
        out.insert("_updatedAt".into(), t.clone());
    }
    if let Some(t) = incoming
        .get("_createdAt")
        .or_else(|| stored.get("_createdAt"))
    {
        out.insert("_createdAt".into(), t.clone());
    }
    match (clock(stored), clock(incoming)) {
        (Some(a), Some(b)) => {
            out.insert("_vclock".into(), Value::Object(merge_clocks(a, b)));
        }
        (Some(c), None) | (None, Some(c)) => {
            out.insert("_vclock".into(), Value::Object(c.clone()));
        }
        (None, None) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn clocks_order() {
        let a = doc(json!({"n1": 2, "n2": 1}));
        let b = doc(json!({"n1": 1, "n2": 1}));
        let c = doc(json!({"n1": 1, "n2": 2}));
        assert_eq!(compare_clocks(&a, &b), ClockOrder::After);
        assert_eq!(compare_clocks(&b, &a), ClockOrder::Before);
        assert_eq!(compare_clocks(&a, &c), ClockOrder::Concurrent);
        assert_eq!(compare_clocks(&a, &a), ClockOrder::Equal);
        assert_eq!(
            compare_clocks(&doc(json!({})), &doc(json!({"x": 0}))),
            ClockOrder::Equal
        );
        assert_eq!(merge_clocks(&a, &c), doc(json!({"n1": 2, "n2": 2})));
    }

    #[test]
    fn detection_follows_pocket_rules_in_order() {
        // Same revision: never a conflict, whatever the clocks say.
        let s = doc(json!({"_rev": "1-a", "_vclock": {"x": 1}}));
        let i = doc(json!({"_rev": "1-a", "_vclock": {"y": 1}}));
        assert!(!detect_conflict(&s, &i));
        // Both clocks: conflict iff concurrent (or equal, as Pocket's compare folds them).
        let s = doc(json!({"_rev": "1-a", "_vclock": {"x": 1}}));
        assert!(detect_conflict(
            &s,
            &doc(json!({"_rev": "2-b", "_vclock": {"y": 1}}))
        ));
        assert!(!detect_conflict(
            &s,
            &doc(json!({"_rev": "2-b", "_vclock": {"x": 2}}))
        ));
        assert!(detect_conflict(
            &s,
            &doc(json!({"_rev": "1-c", "_vclock": {"x": 1}}))
        ));
        // Exactly one revision: conflict.
        assert!(detect_conflict(
            &doc(json!({"_rev": "1-a"})),
            &doc(json!({}))
        ));
        assert!(detect_conflict(
            &doc(json!({})),
            &doc(json!({"_rev": "1-a"}))
        ));
        // Parsable revisions: conflict iff same height, different revision.
        assert!(detect_conflict(
            &doc(json!({"_rev": "2-a"})),
            &doc(json!({"_rev": "2-b"}))
        ));
        assert!(!detect_conflict(
            &doc(json!({"_rev": "2-a"})),
            &doc(json!({"_rev": "3-b"}))
        ));
        // Unparsable revisions, or none: no conflict.
        assert!(!detect_conflict(
            &doc(json!({"_rev": "x"})),
            &doc(json!({"_rev": "2-b"}))
        ));
        assert!(!detect_conflict(
            &doc(json!({"_rev": "2-"})),
            &doc(json!({"_rev": "2-b"}))
        ));
        assert!(!detect_conflict(
            &doc(json!({"_rev": "-1-a"})),
            &doc(json!({"_rev": "-1-b"}))
        ));
        assert!(!detect_conflict(&doc(json!({})), &doc(json!({}))));
    }

    #[test]
    fn strategies_settle_conflicts() {
        let stored =
            doc(json!({"_id": "d", "a": 1, "b": 1, "_updatedAt": 10, "_vclock": {"s": 2}}));
        let newer = doc(json!({"_id": "d", "b": 2, "c": 2, "_updatedAt": 20, "_vclock": {"c": 1}}));
        let older = doc(json!({"_id": "d", "b": 3, "_updatedAt": 5}));
        assert_eq!(
            resolve(Strategy::ServerWins, &stored, &newer),
            Resolution::KeepStored
        );
        assert_eq!(
            resolve(Strategy::ClientWins, &stored, &older),
            Resolution::Store(older.clone())
        );
        assert_eq!(
            resolve(Strategy::LastWriteWins, &stored, &newer),
            Resolution::Store(newer.clone())
        );
        assert_eq!(
            resolve(Strategy::LastWriteWins, &stored, &older),
            Resolution::KeepStored
        );
        let merged = resolve(Strategy::Merge, &stored, &newer);
        assert_eq!(
            merged,
            Resolution::Store(doc(json!({
                "_id": "d", "a": 1, "b": 2, "c": 2, "_updatedAt": 20,
                "_vclock": {"s": 2, "c": 1}
            })))
        );
        // Merging an older incoming document keeps the stored values of shared fields.
        let Resolution::Store(m) = resolve(Strategy::Merge, &newer, &older) else {
            panic!("merge always stores");
        };
        assert_eq!(m.get("b"), Some(&json!(2)));
        assert_eq!(m.get("_updatedAt"), Some(&json!(20)));
    }

    #[test]
    fn last_write_wins_ties_go_to_a_causally_later_incoming() {
        let stored = doc(json!({"_updatedAt": 10, "_vclock": {"a": 1}}));
        let after = doc(json!({"_updatedAt": 10, "_vclock": {"a": 2}}));
        let concurrent = doc(json!({"_updatedAt": 10, "_vclock": {"b": 1}}));
        let no_clock = doc(json!({"_updatedAt": 10}));
        assert_eq!(
            resolve(Strategy::LastWriteWins, &stored, &after),
            Resolution::Store(after.clone())
        );
        assert_eq!(
            resolve(Strategy::LastWriteWins, &stored, &concurrent),
            Resolution::KeepStored
        );
        assert_eq!(
            resolve(Strategy::LastWriteWins, &stored, &no_clock),
            Resolution::KeepStored
        );
    }

    #[test]
    fn strategies_parse() {
        assert_eq!("merge".parse::<Strategy>(), Ok(Strategy::Merge));
        assert!("custom".parse::<Strategy>().is_err());
    }
}
