//! The Redis keys and channels of one cluster. Every name starts with the configured prefix, so
//! several clusters can share one Redis.

use crate::room_key::RoomKey;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Names the data this Redis holds; gone when Redis lost it.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Hash of the nodes' heartbeats: node id → `{url, at, nonce}`.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The channel nodes publish their heartbeats on; each node hears its own back.
    pub fn heartbeat_channel(&self) -> String {
        format!("{}:heartbeat", self.prefix)
    }

    /// The nodes that have restored their rooms' counters into an epoch.
    pub fn restored(&self, epoch: &str) -> String {
        format!("{}:restored:{epoch}", self.prefix)
    }

    /// A room's counter: the last sequence number given out.
    pub fn counter(&self, room: &RoomKey) -> String {
        format!("{}:room:{room}:seq", self.prefix)
    }

    /// A room's capped stream of ordered batches, each entry's id being its first number.
    pub fn log(&self, room: &RoomKey) -> String {
        format!("{}:room:{room}:log", self.prefix)
    }

    /// The channel a room's ordered batches are published on.
    pub fn channel(&self, room: &RoomKey) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The room a channel name belongs to, if it is one of this cluster's room channels.
    pub fn room_of_channel(&self, channel: &str) -> Option<RoomKey> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(":room:")?;
        RoomKey::parse(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_channels_name_their_room() {
        let k = Keys::new("hub");
        let room = RoomKey::new(crate::relay::NAMESPACE, "a:b-1").expect("room");
        assert_eq!(k.channel(&room), "hub:room:relay/a:b-1");
        assert_eq!(k.room_of_channel(&k.channel(&room)), Some(room));
        assert_eq!(k.room_of_channel(&k.heartbeat_channel()), None);
        assert_eq!(k.room_of_channel("other:room:relay/x"), None);
    }
}
