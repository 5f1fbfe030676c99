//! The relay dialect as the registry lists it: its rooms, its settings, its socket, and how an
//! operator publishes into it.

use std::sync::Arc;

use super::NAMESPACE;
use super::dialect::{RelayDialect, RelayLimits};
use super::model::RelayModel;
use super::settings::RelaySettings;
use crate::dialect_spec::{
    AuthRefusal, DEFAULT_ROOM, DialectSpec, Publishing, RoomParam, WebSocketRoute,
};
use crate::headless;
use crate::hub::{CommonSettings, DialectRooms, Hub};
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
    settings: SectionSpec::of::<RelaySettings>(),
    websocket: WebSocketRoute {
        // cr-sqlite's relay servers take their peers at the root.
        paths: &["/relay", "/"],
        room: Some(RoomParam {
            name: "channel",
            invalid: "Invalid channel: 1-256 characters of [A-Za-z0-9_.:-]",
        }),
        refused: AuthRefusal::Unauthorized,
        token_in_band: false,
    },
    open,
    publish,
};

fn model(_: &DialectSections, _: &CommonSettings) -> Arc<dyn Model> {
    Arc::new(RelayModel)
}

/// The relay codec of one channel, under the hub's settings and with its site id.
pub fn codec(hub: &Hub, room: RoomKey) -> RelayDialect {
    let settings = hub.settings();
    RelayDialect::new(
        room,
        hub.site_id().to_owned(),
        RelayLimits {
            max_per_message: settings
                .sections
                .own::<RelaySettings>()
                .max_changes_per_message,
            max_json_depth: settings.common.max_json_depth,
            max_value_bytes: settings.common.max_document_bytes,
        },
    )
}

fn open(hub: &Hub, room: Option<RoomKey>, identity: Identity) -> Box<dyn Upgrade> {
    let room = room.unwrap_or_else(|| RoomKey {
        namespace: NAMESPACE,
        room: DEFAULT_ROOM.to_owned(),
    });
    Box::new(Session::new(hub.clone(), codec(hub, room), identity))
}

/// An `update` (or any relay message), as JSON text or binary.
fn publish<'a>(hub: &'a Hub, room: RoomKey, body: &'a [u8]) -> Publishing<'a> {
    Box::pin(async move {
        let mut codec = codec(hub, room);
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
