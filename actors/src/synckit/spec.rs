//! SyncKit as the registry lists it: its rooms (one document each), its settings, its socket,
//! and how an operator publishes into a document.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::NAMESPACE;
use super::dialect::{SynckitDialect, SynckitLimits};
use super::model::SynckitModel;
use super::settings::SynckitSettings;
use crate::clock::now_ms;
use crate::dialect_spec::{AuthRefusal, DialectSpec, Publishing, WebSocketRoute};
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
        room_is_document: true,
    },
    settings: SectionSpec::of::<SynckitSettings>(),
    websocket: WebSocketRoute {
        paths: &["/ws"],
        // A socket follows any number of documents, named in its messages.
        room: None,
        refused: AuthRefusal::Unauthorized,
        // The SDK connects first and authenticates with an `auth` message.
        token_in_band: true,
    },
    open,
    publish,
};

fn model(sections: &DialectSections, _: &CommonSettings) -> Arc<dyn Model> {
    Arc::new(SynckitModel {
        batch: Duration::from_millis(sections.own::<SynckitSettings>().batch_ms),
    })
}

/// A SyncKit codec under the hub's settings; `authenticated` when the client needs no `auth`
/// message (auth is off, or a token came with the upgrade).
pub fn codec(hub: &Hub, authenticated: bool) -> SynckitDialect {
    let common = &hub.settings().common;
    SynckitDialect::new(
        authenticated || !hub.auth_required(),
        hub.auth_required(),
        SynckitLimits {
            max_document_bytes: common.max_document_bytes,
            max_json_depth: common.max_json_depth,
            max_rooms: common.max_rooms_per_session,
            max_clock_skew_ms: common.max_clock_skew_ms,
        },
    )
}

fn open(hub: &Hub, _: Option<RoomKey>, identity: Identity) -> Box<dyn Upgrade> {
    let codec = codec(hub, identity.authenticated);
    Box::new(Session::new(hub.clone(), codec, identity))
}

/// A `delta` (or any SyncKit message) in its JSON form, for the document the room is.
fn publish<'a>(hub: &'a Hub, room: RoomKey, body: &'a [u8]) -> Publishing<'a> {
    Box::pin(async move {
        let message = message_for(body, &room)?;
        let mut codec = codec(hub, true);
        let operator = Identity::operator();
        // JSON text, so the codec answers in JSON too.
        let frame = headless::text_or_binary;
        Ok(headless::drive(hub, &mut codec, &operator, message.as_bytes(), frame, false).await)
    })
}

/// A SyncKit message for the room: its `documentId` (filled in when absent) must be the room;
/// a missing `id` or `timestamp` is filled in, as an operator typing one by hand would expect.
fn message_for(body: &[u8], room: &RoomKey) -> Result<String, String> {
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(body) else {
        return Err("A SyncKit message is a JSON object".into());
    };
    let named = top
        .get("documentId")
        .or_else(|| top.get("payload").and_then(|p| p.get("documentId")))
        .cloned();
    match named {
        None => {
            top.insert("documentId".into(), Value::from(room.room.as_str()));
        }
        Some(Value::String(doc)) if doc == room.room => {}
        Some(_) => return Err("The message's documentId is not the room published to".into()),
    }
    let now = now_ms();
    top.entry("id")
        .or_insert_with(|| Value::from(format!("admin-{now}")));
    top.entry("timestamp").or_insert_with(|| Value::from(now));
    Ok(Value::Object(top).to_string())
}
