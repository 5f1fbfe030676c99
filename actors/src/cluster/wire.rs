//! An ordered batch as it travels through Redis: the changes one room sent to the sequencer in
//! one call, numbered from `first` on. The same text is the stream entry and, after the first
//! number and a space, the pub/sub message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::IncomingChange;
use crate::origin::{NodeId, Origin, SessionId};

/// The changes of one batch, in order, with the session each came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchBody {
    /// The node that ordered the batch.
    pub node: String,
    /// `[session, stream, key, body]` per change.
    pub changes: Vec<(u64, String, String, Value)>,
}

/// A batch with its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedBatch {
    pub first: u64,
    pub body: BatchBody,
}

impl OrderedBatch {
    pub fn last(&self) -> u64 {
        self.first + self.body.changes.len().saturating_sub(1) as u64
    }

    /// The batch's changes grouped by consecutive origin, each group with its first number:
    /// the submits as the ordering node sent them.
    pub fn submits(self) -> Vec<(u64, Origin, Vec<IncomingChange>)> {
        let node = NodeId::new(&self.body.node);
        let mut out: Vec<(u64, Origin, Vec<IncomingChange>)> = Vec::new();
        for (i, (session, stream, key, body)) in self.body.changes.into_iter().enumerate() {
            let seq = self.first + i as u64;
            let change = IncomingChange { stream, key, body };
            match out.last_mut() {
                Some((_, origin, changes)) if origin.session.0 == session => changes.push(change),
                _ => out.push((
                    seq,
                    Origin {
                        node: node.clone(),
                        session: SessionId(session),
                    },
                    vec![change],
                )),
            }
        }
        out
    }
}

impl BatchBody {
    pub fn encode(&self) -> String {
        // A body of strings and JSON values always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Option<BatchBody> {
        serde_json::from_str(text).ok()
    }
}

/// How every batch body a node orders begins: its fields are written in the order
/// [`BatchBody`] declares them, the node first.
pub fn body_prefix(node: &str) -> String {
    // A string always serialises.
    format!(
        "{{\"node\":{},",
        serde_json::to_string(node).unwrap_or_default()
    )
}

/// Whether a pub/sub message carries a batch that `prefix` ([`body_prefix`]) says its node
/// ordered, read without decoding it: a node gets its own batches back from Redis, and learns
/// them from the sequencer's answer instead.
pub fn ordered_by(message: &str, prefix: &str) -> bool {
    message
        .split_once(' ')
        .is_some_and(|(_, body)| body.starts_with(prefix))
}

/// Parses a pub/sub message: `<first> <body>`.
pub fn parse_message(text: &str) -> Option<OrderedBatch> {
    let (first, body) = text.split_once(' ')?;
    Some(OrderedBatch {
        first: first.parse().ok()?,
        body: BatchBody::decode(body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batches_round_trip_and_split_into_submits() {
        let body = BatchBody {
            node: "n1".into(),
            changes: vec![
                (3, "".into(), "a".into(), json!([1])),
                (3, "".into(), "b".into(), json!([2])),
                (4, "s".into(), "c".into(), json!({"x": "y z"})),
            ],
        };
        let batch = parse_message(&format!("10 {}", body.encode())).expect("parses");
        assert_eq!(batch.first, 10);
        assert_eq!(batch.last(), 12);
        let submits = batch.submits();
        assert_eq!(submits.len(), 2);
        assert_eq!(
            (submits[0].0, submits[0].1.session.0, submits[0].2.len()),
            (10, 3, 2)
        );
        assert_eq!((submits[1].0, submits[1].1.session.0), (12, 4));
        assert_eq!(submits[1].1.node.as_str(), "n1");
        let message = format!("10 {}", body.encode());
        assert!(ordered_by(&message, &body_prefix("n1")));
        assert!(!ordered_by(&message, &body_prefix("n")));
        let quoted = BatchBody {
            node: "n\" 1".into(),
            changes: vec![],
        };
        let message = format!("1 {}", quoted.encode());
        assert!(ordered_by(&message, &body_prefix("n\" 1")));
        assert!(!ordered_by(&message, &body_prefix("n1")));
        assert!(parse_message("x {}").is_none());
        assert!(parse_message("5").is_none());
    }
}
