//! What the fuzz targets share: the three codecs as a hub configures them, a session's view of
//! its environment, and a room engine over in-memory storage to merge what the codecs produce.

use std::sync::Arc;

use serde_json::Value;
use synchub_actors::dialects::{Action, Dialect, Env, Frame, IncomingChange, Model};
use synchub_actors::engine::{NodeId, OpenBatch, Origin, RoomState, SessionId};
use synchub_actors::pocket::PocketDialect;
use synchub_actors::pocket::wire::PocketLimits;
use synchub_actors::relay::{RelayDialect, RelayLimits};
use synchub_actors::storage::{RoomImage, RoomLayout, Store};
use synchub_actors::synckit::{SynckitDialect, SynckitLimits};
use synchub_actors::{Identity, Namespace, RoomKey, RoomRequest};

pub fn room(ns: Namespace) -> RoomKey {
    RoomKey::new(ns, "fuzz").expect("a valid room id")
}

pub fn pocket() -> PocketDialect {
    PocketDialect::new(
        room(synchub_actors::pocket::NAMESPACE),
        PocketLimits::default(),
    )
}

pub fn synckit() -> SynckitDialect {
    SynckitDialect::new(
        true,
        false,
        SynckitLimits {
            max_document_bytes: 1 << 16,
            max_json_depth: 32,
            max_rooms: 16,
            max_clock_skew_ms: 600_000,
        },
    )
}

pub fn relay() -> RelayDialect {
    RelayDialect::new(
        room(synchub_actors::relay::NAMESPACE),
        "hub".into(),
        RelayLimits {
            max_per_message: 100,
            max_json_depth: 32,
            max_value_bytes: 1 << 16,
        },
    )
}

/// Session `n` of one node, anonymous.
pub struct Caller {
    origin: Origin,
    identity: Identity,
}

impl Caller {
    pub fn new(n: u64) -> Caller {
        Caller {
            origin: Origin {
                node: NodeId::new("fuzz"),
                session: SessionId(n),
            },
            identity: Identity::anonymous(),
        }
    }

    pub fn env(&self) -> Env<'_> {
        Env {
            origin: &self.origin,
            identity: &self.identity,
        }
    }
}

/// Feeds `bytes` to a codec as a binary frame, as a text frame where they are UTF-8, and as an
/// oversized message; returns the changes it asked rooms to merge.
pub fn feed<D: Dialect>(d: &mut D, caller: &Caller, bytes: &[u8]) -> Vec<IncomingChange> {
    let env = caller.env();
    let mut actions = d.on_frame(&env, Frame::Binary(bytes));
    if let Ok(text) = std::str::from_utf8(bytes) {
        actions.extend(d.on_frame(&env, Frame::Text(text)));
        actions.extend(d.on_rate_limited(&env, Frame::Text(text)));
        actions.extend(d.on_oversized(&env, Some(Frame::Text(text)), bytes.len(), 16));
    }
    changes_in(actions)
}

/// The changes of every submit among `actions`.
pub fn changes_in<T>(actions: Vec<Action<T>>) -> Vec<IncomingChange> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Request {
            body: RoomRequest::Submit { changes },
            ..
        } = a
        {
            out.extend(changes);
        }
    }
    out
}

/// Merges what a codec submitted in a fresh room of `ns`, then checks that it reads back.
pub fn merge_and_reload(ns: Namespace, model: Arc<dyn Model>, changes: Vec<IncomingChange>) {
    if !changes.is_empty() {
        let mut room = Engine::new(ns, model);
        room.submit(changes);
        room.check_reload();
    }
}

/// A room of namespace `ns` over in-memory storage, merging one submit per commit as a room does.
pub struct Engine {
    pub store: Store,
    pub state: RoomState,
    key: RoomKey,
    model: Arc<dyn Model>,
}

impl Engine {
    pub fn new(ns: Namespace, model: Arc<dyn Model>) -> Engine {
        let key = room(ns);
        let layout = RoomLayout::new(&key);
        let state = RoomState::load(key.clone(), layout, RoomImage::default(), &*model)
            .expect("an empty room loads");
        Engine {
            store: Store::memory(),
            state,
            key,
            model,
        }
    }

    pub fn submit(&mut self, changes: Vec<IncomingChange>) {
        let mut open = OpenBatch::default();
        self.state.submit(&*self.model, None, changes, &mut open);
        let commit = self.state.commit(open).expect("a merged change encodes");
        self.store
            .apply(commit.writes)
            .expect("memory storage takes any batch");
        self.state.release(&commit.entries);
    }

    /// Every record, sorted.
    pub fn records(&self) -> Vec<(String, String, Value)> {
        let mut out: Vec<_> = self
            .state
            .records()
            .into_iter()
            .map(|(s, k, v)| (s, k, (*v).clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Reloads the room from what it wrote: the same counters and records, or a defect (nothing
    /// the hub writes may fail to read back or read back differently).
    pub fn check_reload(&self) {
        let layout = self.state.layout().clone();
        let image = self.store.load_room(&layout).expect("storage reads back");
        let again = RoomState::load(self.key.clone(), layout, image, &*self.model)
            .expect("what the room wrote replays");
        assert_eq!(again.meta(), self.state.meta(), "counters after a reload");
        let mut records: Vec<_> = again
            .records()
            .into_iter()
            .map(|(s, k, v)| (s, k, (*v).clone()))
            .collect();
        records.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(records, self.records(), "records after a reload");
    }
}
