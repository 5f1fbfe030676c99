//! Pocket as the registry lists it: its rooms, its settings, its socket, and how an operator
//! publishes into it.

use std::sync::Arc;

use super::NAMESPACE;
use super::dialect::PocketDialect;
use super::model::PocketModel;
use super::settings::PocketSettings;
use super::wire::PocketLimits;
use crate::dialect_spec::{
    AuthRefusal, DEFAULT_ROOM, DialectSpec, Publishing, RoomParam, WebSocketRoute,
};
use crate::disconnect::close_code;
use crate::headless;
use crate::hub::{CommonSettings, DialectRooms, Hub, HubSettings};
use crate::identity::Identity;
use crate::model::Model;
use crate::room_key::RoomKey;
use crate::section::{DialectSections, SectionSpec};
use crate::session::{Session, Upgrade};

pub static DIALECT: DialectSpec = DialectSpec {
    rooms: DialectRooms {
        namespace: NAMESPACE,
        model,
        room_is_document: false,
    },
    settings: SectionSpec::of::<PocketSettings>(),
    websocket: WebSocketRoute {
        paths: &["/sync"],
        room: Some(RoomParam {
            name: "room",
            invalid: "Invalid room id: 1-256 characters of [A-Za-z0-9_.:-]",
        }),
        // Pocket's clients learn of a refused token from the close code (4001), not from an
        // HTTP status.
        refused: AuthRefusal::Close {
            code: close_code::AUTH_FAILED,
            reason: "Authentication failed",
        },
        token_in_band: false,
    },
    open,
    publish,
};

fn model(sections: &DialectSections, common: &CommonSettings) -> Arc<dyn Model> {
    let own = sections.own::<PocketSettings>();
    Arc::new(PocketModel {
        default_strategy: own.conflict_strategy,
        collection_strategies: own
            .collections
            .iter()
            .map(|(name, c)| (name.clone(), c.conflict_strategy))
            .collect(),
        tombstone_retention_ms: common.tombstone_retention_ms,
    })
}

/// The Pocket codec of `room`, under the hub's settings.
pub fn codec(settings: &HubSettings, room: RoomKey) -> PocketDialect {
    PocketDialect::new(
        room,
        PocketLimits {
            max_pull_limit: settings.sections.own::<PocketSettings>().max_pull_limit,
            max_document_bytes: settings.common.max_document_bytes,
            max_json_depth: settings.common.max_json_depth,
        },
    )
}

fn open(hub: &Hub, room: Option<RoomKey>, identity: Identity) -> Box<dyn Upgrade> {
    let room = room.unwrap_or_else(|| RoomKey {
        namespace: NAMESPACE,
        room: DEFAULT_ROOM.to_owned(),
    });
    Box::new(Session::new(
        hub.clone(),
        codec(hub.settings(), room),
        identity,
    ))
}

/// A `push` (or any Pocket message), as JSON text or binary.
fn publish<'a>(hub: &'a Hub, room: RoomKey, body: &'a [u8]) -> Publishing<'a> {
    Box::pin(async move {
        let mut codec = codec(hub.settings(), room);
        let operator = Identity::operator();
        Ok(headless::drive(
            hub,
            &mut codec,
            &operator,
            body,
            headless::text_or_binary,
            false,
        )
        .await)
    })
}
