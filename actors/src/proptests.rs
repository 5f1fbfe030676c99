//! Properties over arbitrary input: no codec panics or fails to answer on any bytes or any JSON,
//! and the merge of one record reaches the same state whatever order its changes arrive in.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::dialect::{Dialect, Env, Frame};
use crate::identity::Identity;
use crate::model::{IncomingChange, Merge, Model};
use crate::origin::{NodeId, Origin, SessionId};
use crate::pocket::PocketDialect;
use crate::pocket::wire::{self, PocketLimits};
use crate::relay::{RelayDialect, RelayLimits};
use crate::relay::{RelayModel, parse_change};
use crate::room_key::RoomKey;
use crate::synckit::{SynckitDialect, SynckitLimits, SynckitModel, frame};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z\\-\u{e9}\u{1f600}]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message with a real type and arbitrary fields: gets past the first checks of every codec.
fn message() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        proptest::sample::select(vec![
            "push",
            "pull",
            "auth",
            "update",
            "subscribe",
            "sync_request",
            "delta",
            "unsubscribe",
            "ping",
        ])
        .prop_map(str::to_owned),
        "[a-z]{0,6}",
    ];
    let fields = proptest::collection::btree_map(
        prop_oneof![
            Just("id".to_owned()),
            Just("collection".to_owned()),
            Just("collections".to_owned()),
            Just("changes".to_owned()),
            Just("checkpoint".to_owned()),
            Just("documentId".to_owned()),
            Just("field".to_owned()),
            Just("value".to_owned()),
            Just("delta".to_owned()),
            Just("clock".to_owned()),
            Just("timestamp".to_owned()),
            Just("version".to_owned()),
            "[a-z]{1,5}",
        ],
        json_value(),
        0..8,
    );
    (kind, fields).prop_map(|(kind, fields)| {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("type".into(), Value::from(kind));
        Value::Object(m)
    })
}

struct Codecs {
    pocket: PocketDialect,
    synckit: SynckitDialect,
    relay: RelayDialect,
}

fn codecs() -> Codecs {
    let key = |ns, id| RoomKey::new(ns, id).expect("a valid room id");
    Codecs {
        pocket: PocketDialect::new(key(crate::pocket::NAMESPACE, "p"), PocketLimits::default()),
        synckit: SynckitDialect::new(
            true,
            false,
            SynckitLimits {
                max_document_bytes: 1 << 16,
                max_json_depth: 16,
                max_rooms: 8,
                max_clock_skew_ms: 600_000,
            },
        ),
        relay: RelayDialect::new(
            key(crate::relay::NAMESPACE, "r"),
            "site".into(),
            RelayLimits {
                max_per_message: 100,
                max_json_depth: 16,
                max_value_bytes: 1 << 16,
            },
        ),
    }
}

/// Feeds one frame to every codec; each must answer something or ask a room for something
/// (a silent drop would leave a client waiting), and never panic.
fn feed_all(c: &mut Codecs, frame: Frame<'_>) {
    let identity = Identity::anonymous();
    let origin = Origin {
        node: NodeId::new("n"),
        session: SessionId(1),
    };
    let env = Env {
        origin: &origin,
        identity: &identity,
    };
    let pocket = c.pocket.on_frame(&env, frame);
    let relay = c.relay.on_frame(&env, frame);
    let synckit = c.synckit.on_frame(&env, frame);
    // Pocket answers everything but a lone subscription; relay everything.
    assert!(!pocket.is_empty(), "pocket dropped a frame");
    assert!(!relay.is_empty(), "relay dropped a frame");
    // SyncKit stays silent only where the protocol says so (`pong`, `ack`, `unsubscribe`).
    let _ = synckit;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn codecs_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let limits = PocketLimits::default();
        let _ = wire::parse(&bytes, &limits, 0);
        let _ = wire::request_id(&bytes);
        let _ = frame::decode_binary(&bytes, || "id".into());
        let _ = frame::decode_json(&bytes);
        let mut c = codecs();
        feed_all(&mut c, Frame::Binary(&bytes));
        if let Ok(text) = std::str::from_utf8(&bytes) {
            feed_all(&mut c, Frame::Text(text));
        }
    }

    #[test]
    fn codecs_take_any_json_message(msg in message()) {
        let text = msg.to_string();
        let mut c = codecs();
        feed_all(&mut c, Frame::Text(&text));
        // The same message in SyncKit's binary framing.
        let mut payload = msg.clone();
        let code = msg["type"].as_str().and_then(frame::code_of).unwrap_or(0x20);
        if let Some(o) = payload.as_object_mut() {
            o.remove("type");
        }
        let body = payload.to_string();
        let mut bin = vec![code];
        bin.extend_from_slice(&1_000i64.to_be_bytes());
        bin.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bin.extend_from_slice(body.as_bytes());
        feed_all(&mut c, Frame::Binary(&bin));
    }
}

/// Folds `changes` of one record through `model` in the given order; returns its final state.
fn fold(model: &dyn Model, changes: &[IncomingChange]) -> Option<Value> {
    let mut room = Value::Null;
    let mut current: Option<Value> = None;
    for c in changes {
        if let Merge::Apply { logged } = model.merge(&mut room, current.as_ref(), c) {
            current = Some(model.state_of(&logged));
        }
    }
    current
}

fn relay_cell() -> impl Strategy<Value = IncomingChange> {
    let val = prop_oneof![
        Just(Value::Null),
        (-3i64..3).prop_map(Value::from),
        (-3i64..3).prop_map(|i| json!(i as f64)),
        "[ab]{0,2}".prop_map(Value::from),
        Just(json!({"k": [1.0, 2]})),
    ];
    (val, 0i64..4, 1i64..4, "[st]").prop_map(|(val, cv, cl, site)| {
        parse_change(&json!(["t", "1", "c", val, cv, 1, site, cl, 0])).expect("a valid change")
    })
}

fn synckit_write() -> impl Strategy<Value = IncomingChange> {
    (json_value(), 0i64..4, 0u64..4)
        .prop_map(|(value, ts, counter)| (value, ts, counter))
        .prop_flat_map(|(value, ts, counter)| {
            Just(IncomingChange {
                stream: String::new(),
                key: "f".into(),
                body: json!({"value": value, "ts": ts, "counter": counter, "writer": "w",
                             "clock": {}}),
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// cr-sqlite's cell merge is a join: every order of the same changes ends in one state.
    #[test]
    fn relay_cells_converge_in_any_order(
        (changes, shuffled) in proptest::collection::vec(relay_cell(), 1..8)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        prop_assert_eq!(fold(&RelayModel, &changes), fold(&RelayModel, &shuffled));
    }

    /// SyncKit writes from distinct writers (each writer's own writes keep their order on its
    /// connection) reach one state in any order of arrival.
    #[test]
    fn synckit_fields_converge_in_any_order(
        (changes, shuffled) in proptest::collection::vec(synckit_write(), 1..6)
            .prop_map(|v| v.into_iter().enumerate().map(|(i, mut c)| {
                c.body["writer"] = json!(format!("w{i}"));
                c
            }).collect::<Vec<_>>())
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let model = SynckitModel::default();
        prop_assert_eq!(fold(&model, &changes), fold(&model, &shuffled));
    }
}
