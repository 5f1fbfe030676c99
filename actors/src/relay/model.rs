//! The relay data model: one state record per `(table, pk, cid)` cell, merged by cr-sqlite's
//! rules. A change is the tuple `[table, pk, cid, val, col_version, db_version, site_id, cl, seq]`.

use std::cmp::Ordering;

use serde_json::{Value, json};

use crate::model::{IncomingChange, Merge, Model, RowRules};

pub struct RelayModel;

/// Orders values as cr-sqlite's tie-break does: by kind (null < number < string < any other
/// JSON), then by value.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Number(_) => 1,
            Value::String(_) => 2,
            _ => 3,
        }
    }
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        // Canonical JSON text: serde_json sorts object keys.
        _ => a.to_string().cmp(&b.to_string()),
    })
}

/// An integer JSON number, whichever of serde_json's two integer kinds holds it.
fn integer(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares two JSON numbers by their exact values. Going through `f64` would make
/// 9007199254740993 equal to 9007199254740993.0 (which parses as ...992): a tie whose winner is
/// whichever arrived first, so two nodes could keep different values.
fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    match (integer(x), integer(y)) {
        (Some(i), Some(j)) => i.cmp(&j),
        (Some(i), None) => compare_integer_float(i, y.as_f64().unwrap_or(0.0)),
        (None, Some(j)) => compare_integer_float(j, x.as_f64().unwrap_or(0.0)).reverse(),
        (None, None) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
    }
}

/// Rounding an integer to the nearest float never crosses another float, so the rounded
/// value orders it against `f` unless the two are equal; then `f` is a whole number that
/// `i128` holds exactly, and the integers decide.
fn compare_integer_float(i: i128, f: f64) -> Ordering {
    match (i as f64).total_cmp(&f) {
        Ordering::Equal => i.cmp(&(f as i128)),
        other => other,
    }
}

const FIELDS: usize = 9;

/// Checks a change tuple and returns the change for a room. The record key is the cell's
/// address as JSON, `[table, pk, cid]`.
pub fn parse_change(v: &Value) -> Result<IncomingChange, String> {
    let Some(t) = v.as_array().filter(|a| a.len() == FIELDS) else {
        return Err(
            "a change is [table, pk, cid, val, col_version, db_version, site_id, cl, seq]".into(),
        );
    };
    let text = |i: usize, name: &str| -> Result<(), String> {
        match &t[i] {
            Value::String(s) if !s.is_empty() || i == 1 => Ok(()),
            _ => Err(format!("{name} must be a non-empty string")),
        }
    };
    text(0, "table")?;
    if !matches!(t[1], Value::String(_) | Value::Number(_)) {
        return Err("pk must be a string".into());
    }
    text(2, "cid")?;
    text(6, "site_id")?;
    for (i, name) in [(4, "col_version"), (5, "db_version"), (7, "cl"), (8, "seq")] {
        match t[i].as_i64() {
            Some(n) if (0..=MAX_VERSION).contains(&n) => {}
            Some(_) => return Err(format!("{name} must be between 0 and {MAX_VERSION}")),
            None => return Err(format!("{name} must be an integer")),
        }
    }
    let mut body = v.clone();
    canonical_numbers(&mut body[3]);
    Ok(IncomingChange {
        stream: String::new(),
        key: cell_key(&t[0], &t[1], &t[2]),
        body,
    })
}

/// The largest version, causal length or sequence a change may carry: JavaScript's largest
/// exact integer, which every client can hold. Anything larger would win every later merge of
/// its cell for ever.
pub const MAX_VERSION: i64 = (1 << 53) - 1;

/// The cid of a change that deletes or re-creates a whole row.
const ROW_CID: &str = "-1";

/// How the key of a row's own record ends: its cid, `"-1"`, closing the address.
const ROW_KEY_END: &str = r#","-1"]"#;

fn cell_key(table: &Value, pk: &Value, cid: &Value) -> String {
    json!([table, pk, cid]).to_string()
}

/// Writes every number that is a whole float (`1.0`, `-0.0`, `9007199254740992.0`) as the
/// integer it equals, so one value has one text: the merge treats `1` and `1.0` as equal, and
/// the digest, which hashes the text, must too. Floats past the 64-bit integers stay floats: no
/// integer equals them.
fn canonical_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            // 2^63 and 2^64: the first floats past each integer kind.
            const I64_END: f64 = 9_223_372_036_854_775_808.0;
            const U64_END: f64 = 18_446_744_073_709_551_616.0;
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                if (-I64_END..I64_END).contains(&f) {
                    *v = Value::from(f as i64);
                } else if (0.0..U64_END).contains(&f) {
                    *v = Value::from(f as u64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(canonical_numbers),
        Value::Object(o) => o.values_mut().for_each(canonical_numbers),
        _ => {}
    }
}

fn version(v: &Value, i: usize) -> i64 {
    v.get(i).and_then(Value::as_i64).unwrap_or(0)
}

impl Model for RelayModel {
    /// The record keeps `[cl, col_version, val]`: what decides later merges. A change wins by a
    /// larger causal length, then a larger column version, then a larger value; a full tie is
    /// no change, whichever site sent it, so every order of arrival ends in the same state.
    fn merge(&self, _: &mut Value, current: Option<&Value>, incoming: &IncomingChange) -> Merge {
        let c = &incoming.body;
        let (cl, cv, val) = (version(c, 7), version(c, 4), &c[3]);
        if let Some(cur) = current {
            let order = cl
                .cmp(&version(cur, 0))
                .then(cv.cmp(&version(cur, 1)))
                .then_with(|| compare_values(val, &cur[2]));
            if order != Ordering::Greater {
                return Merge::Unchanged;
            }
        }
        Merge::Apply { logged: c.clone() }
    }

    fn state_of(&self, logged: &Value) -> Value {
        Value::Array(vec![
            Value::from(version(logged, 7)),
            Value::from(version(logged, 4)),
            logged[3].clone(),
        ])
    }

    /// In what the hub sends, `db_version` is the hub's sequence number; `site_id` stays the
    /// origin's.
    fn stamp(&self, logged: &mut Value, seq: u64) {
        if let Some(t) = logged.as_array_mut()
            && t.len() == FIELDS
        {
            t[5] = Value::from(seq);
        }
    }

    fn rows(&self) -> Option<&dyn RowRules> {
        Some(self)
    }
}

/// A row's `-1` record governs the row's cells: they share the row's causal length.
impl RowRules for RelayModel {
    /// A column change is governed by its row's causal length (cr-sqlite keeps `cl` per row):
    /// after a delete with `cl = 2`, a write with `cl = 1` loses whatever its column version.
    fn governing_key(&self, _key: &str, c: &Value) -> Option<String> {
        (c[2].as_str() != Some(ROW_CID)).then(|| cell_key(&c[0], &c[1], &Value::from(ROW_CID)))
    }

    fn governing_key_of(&self, key: &str) -> Option<String> {
        let addr: [Value; 3] = serde_json::from_str(key).ok()?;
        (addr[2].as_str() != Some(ROW_CID))
            .then(|| cell_key(&addr[0], &addr[1], &Value::from(ROW_CID)))
    }

    fn is_governing(&self, key: &str) -> bool {
        key.ends_with(ROW_KEY_END)
    }

    /// Both are states, `[cl, col_version, val]`, of a row or a cell: the row's life is its
    /// causal length.
    fn ended_by(&self, later: &Value, earlier: &Value) -> bool {
        version(earlier, 0) < version(later, 0)
    }

    /// The row's causal length is the largest its record or any of its columns holds: a
    /// column re-created without its row's record still moves the row to its new life.
    fn merge_governed(
        &self,
        room_state: &mut Value,
        current: Option<&Value>,
        row: Option<&Value>,
        siblings: &[&Value],
        incoming: &IncomingChange,
    ) -> Merge {
        let cl = version(&incoming.body, 7);
        if row
            .into_iter()
            .chain(siblings.iter().copied())
            .any(|s| version(s, 0) > cl)
        {
            return Merge::Unchanged;
        }
        self.merge(room_state, current, incoming)
    }

    /// A row change older than the row's life its columns are in loses: after a column change
    /// with `cl = 3`, a delete with `cl = 2` is stale, whatever its column version.
    fn merge_governing(
        &self,
        room_state: &mut Value,
        current: Option<&Value>,
        governed: &[&Value],
        incoming: &IncomingChange,
    ) -> Merge {
        let cl = version(&incoming.body, 7);
        if governed.iter().any(|cell| version(cell, 0) > cl) {
            return Merge::Unchanged;
        }
        self.merge(room_state, current, incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(pk: &str, cid: &str, val: Value, cv: i64, cl: i64, site: &str) -> Value {
        json!(["todos", pk, cid, val, cv, 1, site, cl, 0])
    }

    #[test]
    fn value_order() {
        use Ordering::*;
        let vals = [
            json!(null),
            json!(-1),
            json!(2.5),
            json!(3),
            json!(""),
            json!("b"),
            json!([1]),
            json!(false),
        ];
        for (i, a) in vals.iter().enumerate() {
            for (j, b) in vals.iter().enumerate() {
                assert_eq!(compare_values(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(
            compare_values(&json!({"b": 1, "a": 2}), &json!({"a": 2, "b": 1})),
            Equal
        );
    }

    #[test]
    fn tuples_are_validated() {
        assert!(parse_change(&change("1", "title", json!("x"), 1, 1, "s")).is_ok());
        assert!(parse_change(&json!(["t", "1", "c", 1, 1, 1, "s", 1])).is_err());
        assert!(parse_change(&json!(["", "1", "c", 1, 1, 1, "s", 1, 0])).is_err());
        assert!(parse_change(&json!(["t", "1", "c", 1, "1", 1, "s", 1, 0])).is_err());
        assert!(parse_change(&json!(["t", "1", "c", 1, 1, 1, 7, 1, 0])).is_err());
        assert!(parse_change(&json!({"table": "t"})).is_err());
    }

    #[test]
    fn causal_length_then_column_version_then_value() {
        let m = RelayModel;
        let st = |c: &Value| match m.merge(&mut Value::Null, None, &parse_change(c).expect("valid"))
        {
            Merge::Apply { logged } => m.state_of(&logged),
            _ => panic!("applies to an empty cell"),
        };
        let wins = |cur: &Value, c: &Value| {
            matches!(
                m.merge(
                    &mut Value::Null,
                    Some(cur),
                    &parse_change(c).expect("valid")
                ),
                Merge::Apply { .. }
            )
        };
        let base = st(&change("1", "a", json!("m"), 2, 1, "s1"));
        assert!(
            wins(&base, &change("1", "a", json!("a"), 1, 3, "s2")),
            "larger cl"
        );
        assert!(
            !wins(&base, &change("1", "a", json!("z"), 9, 0, "s2")),
            "smaller cl"
        );
        assert!(
            wins(&base, &change("1", "a", json!("a"), 3, 1, "s2")),
            "larger col_version"
        );
        assert!(
            !wins(&base, &change("1", "a", json!("z"), 1, 1, "s2")),
            "smaller col_version"
        );
        assert!(
            wins(&base, &change("1", "a", json!("n"), 2, 1, "s2")),
            "larger value"
        );
        assert!(
            !wins(&base, &change("1", "a", json!("l"), 2, 1, "s2")),
            "smaller value"
        );
        assert!(
            !wins(&base, &change("1", "a", json!("m"), 2, 1, "s9")),
            "full tie"
        );
    }

    #[test]
    fn out_of_range_versions_are_refused() {
        for i in [4, 5, 7, 8] {
            let mut c = change("1", "a", json!(1), 1, 1, "s");
            c[i] = json!(-1);
            assert!(parse_change(&c).is_err(), "-1 at {i}");
            c[i] = json!(i64::MAX);
            assert!(parse_change(&c).is_err(), "i64::MAX at {i}");
            c[i] = json!(MAX_VERSION);
            assert!(parse_change(&c).is_ok(), "MAX_VERSION at {i}");
        }
    }

    #[test]
    fn numbers_past_two_to_the_53_compare_exactly() {
        use Ordering::*;
        let n = |t: &str| -> Value { serde_json::from_str(t).expect("json") };
        let canon = |t: &str| {
            let mut v = n(t);
            canonical_numbers(&mut v);
            v
        };
        // 9007199254740993.0 parses as ...992.0: the integer is larger, in either order.
        assert_eq!(
            compare_values(&n("9007199254740993"), &n("9007199254740993.0")),
            Greater
        );
        assert_eq!(
            compare_values(&n("9007199254740993.0"), &n("9007199254740993")),
            Less
        );
        assert_eq!(
            compare_values(&n("18446744073709551615"), &n("18446744073709551615.0")),
            Less
        );
        assert_eq!(
            compare_values(&n("-9223372036854775807"), &n("-9223372036854775808.0")),
            Greater
        );
        assert_eq!(
            compare_values(&n("1e300"), &n("18446744073709551615")),
            Greater
        );
        // Equal numbers have one text once canonical, so one digest.
        for (int, float) in [
            ("9007199254740992", "9007199254740992.0"),
            ("-9223372036854775808", "-9223372036854775808.0"),
            ("9223372036854775808", "9223372036854775808.0"),
        ] {
            assert_eq!(compare_values(&canon(int), &canon(float)), Equal);
            assert_eq!(canon(int).to_string(), canon(float).to_string(), "{int}");
        }
    }

    #[test]
    fn whole_floats_are_stored_as_integers() {
        let c = parse_change(&json!(["t", "1", "a", {"x": [1.0, 2.5, -0.0]}, 1, 1, "s", 1, 0]))
            .expect("valid");
        assert_eq!(c.body[3], json!({"x": [1, 2.5, 0]}));
        let one = parse_change(&json!(["t", "1", "a", 1.0, 1, 1, "s", 1, 0])).expect("valid");
        assert_eq!(one.body[3].to_string(), "1");
    }

    #[test]
    fn a_deleted_row_governs_its_columns() {
        let m = RelayModel;
        let state = |c: &Value| match m.merge(&mut Value::Null, None, &parse_change(c).expect("ok"))
        {
            Merge::Apply { logged } => m.state_of(&logged),
            _ => panic!("applies to an empty cell"),
        };
        let deleted_row = state(&change("1", "-1", json!(null), 1, 2, "s1"));
        let cell = state(&change("1", "a", json!("old"), 1, 1, "s1"));
        let write = |cv: i64, cl: i64| {
            let c = parse_change(&change("1", "a", json!("new"), cv, cl, "s2")).expect("ok");
            assert_eq!(
                m.governing_key(&c.key, &c.body),
                Some(r#"["todos","1","-1"]"#.into())
            );
            matches!(
                m.merge_governed(&mut Value::Null, Some(&cell), Some(&deleted_row), &[], &c),
                Merge::Apply { .. }
            )
        };
        assert!(!write(99, 1), "a write from before the delete loses");
        assert!(write(1, 3), "a resurrection wins");
        let row = parse_change(&change("1", "-1", json!(null), 1, 4, "s1")).expect("ok");
        assert_eq!(m.governing_key(&row.key, &row.body), None);
        let c = parse_change(&change("1", "a", json!("new"), 1, 1, "s2")).expect("ok");
        assert!(m.is_governing(&row.key) && !m.is_governing(&c.key));
        assert_eq!(m.governing_key_of(&c.key), m.governing_key(&c.key, &c.body));
        assert_eq!(m.governing_key_of(&row.key), None);
        assert!(
            m.ended_by(&deleted_row, &cell),
            "the old cell ended with the delete"
        );
        assert!(!m.ended_by(
            &deleted_row,
            &state(&change("1", "a", json!(1), 1, 3, "s2"))
        ));
    }

    #[test]
    fn stamping_rewrites_db_version_only() {
        let mut c = change("1", "a", json!(1), 1, 1, "origin");
        RelayModel.stamp(&mut c, 42);
        assert_eq!(c, json!(["todos", "1", "a", 1, 1, 42, "origin", 1, 0]));
    }
}
