//! The Redis keys and channels of one cluster. Every name starts with the configured prefix, so
//! several clusters can share one Redis.
//!
//! On a Redis Cluster a Lua script may only touch keys of one hash slot, and the ordering script
//! touches a room's counter, its stream and the epoch that guards them. So each room is hashed
//! into one of [`BUCKETS`] buckets, and its keys carry the bucket as a hash tag
//! (`{<prefix>:b<hex>}:room:…`), as does the bucket's own epoch key: a room's keys and its epoch
//! share a slot. Buckets rather than one epoch per room keep the epochs few enough for every
//! node to check all of them at every beat, and 256 of them land on every primary of any
//! cluster of a sensible size (each tag hashes to a slot of its own, evenly spread). The bucket
//! of a room is part of its key names: it never changes.

use crate::room_key::RoomKey;

/// How many slot groups a Redis Cluster's rooms are spread over.
pub const BUCKETS: usize = 256;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Redis Cluster: room keys carry their bucket's hash tag, each bucket has its own epoch.
    bucketed: bool,
}

impl Keys {
    /// The keys of one Redis (alone or behind Sentinel): one epoch for every room.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            bucketed: false,
        }
    }

    /// The keys on a Redis Cluster: rooms and their epochs grouped by bucket.
    pub fn bucketed(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            bucketed: true,
        }
    }

    pub fn is_bucketed(&self) -> bool {
        self.bucketed
    }

    /// Names the data this Redis holds; gone when Redis lost it. (One Redis only: on a Redis
    /// Cluster each bucket has its own, [`Keys::bucket_epoch`].)
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The bucket a room's keys are in (Redis Cluster only).
    pub fn bucket_of(&self, room: &RoomKey) -> Option<usize> {
        self.bucketed.then(|| bucket(room))
    }

    /// The epoch of one bucket, in that bucket's slot.
    pub fn bucket_epoch(&self, bucket: usize) -> String {
        format!("{}:epoch", self.tag(bucket))
    }

    /// The epoch key that guards a room's numbers.
    pub fn epoch_of(&self, room: &RoomKey) -> String {
        match self.bucket_of(room) {
            Some(b) => self.bucket_epoch(b),
            None => self.epoch(),
        }
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
        format!("{}:room:{room}:seq", self.room_prefix(room))
    }

    /// A room's capped stream of ordered batches, each entry's id being its first number.
    pub fn log(&self, room: &RoomKey) -> String {
        format!("{}:room:{room}:log", self.room_prefix(room))
    }

    /// The channel a room's ordered batches are published on. A channel is no key: a Redis
    /// Cluster broadcasts what is published to every node, so it carries no tag.
    pub fn channel(&self, room: &RoomKey) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The room a channel name belongs to, if it is one of this cluster's room channels.
    pub fn room_of_channel(&self, channel: &str) -> Option<RoomKey> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(":room:")?;
        RoomKey::parse(rest)
    }

    fn room_prefix(&self, room: &RoomKey) -> String {
        match self.bucket_of(room) {
            Some(b) => self.tag(b),
            None => self.prefix.clone(),
        }
    }

    /// `{<prefix>:b<hex>}`: Redis Cluster hashes only what is inside the braces.
    fn tag(&self, bucket: usize) -> String {
        format!("{{{}:b{bucket:02x}}}", self.prefix)
    }
}

/// A stable hash of the room's name: every node, of every version, puts a room in the same
/// bucket, since the bucket is part of its key names.
fn bucket(room: &RoomKey) -> usize {
    let hash = blake3::hash(room.to_string().as_bytes());
    usize::from(hash.as_bytes()[0]) % BUCKETS
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

    #[test]
    fn one_redis_keeps_its_key_names() {
        let k = Keys::new("hub");
        let room = RoomKey::new(crate::relay::NAMESPACE, "r").expect("room");
        assert_eq!(k.counter(&room), "hub:room:relay/r:seq");
        assert_eq!(k.log(&room), "hub:room:relay/r:log");
        assert_eq!(k.epoch_of(&room), "hub:epoch");
        assert_eq!(k.bucket_of(&room), None);
    }

    /// The part of a key Redis Cluster hashes: the first `{…}` with something inside.
    fn hashed(key: &str) -> &str {
        key.split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or(key, |(tag, _)| tag)
    }

    #[test]
    fn a_room_and_its_epoch_share_a_tag_on_a_redis_cluster() {
        let k = Keys::bucketed("hub");
        let room = RoomKey::new(crate::relay::NAMESPACE, "r").expect("room");
        let b = k.bucket_of(&room).expect("a bucket");
        let tag = format!("hub:b{b:02x}");
        for key in [k.counter(&room), k.log(&room), k.epoch_of(&room)] {
            assert_eq!(hashed(&key), tag, "{key}");
        }
        assert_eq!(k.channel(&room), "hub:room:relay/r");
        assert_eq!(k.room_of_channel(&k.channel(&room)), Some(room));
    }

    #[test]
    fn rooms_fill_every_bucket() {
        let k = Keys::bucketed("hub");
        let mut seen = [0usize; BUCKETS];
        for i in 0..20 * BUCKETS {
            let room = RoomKey::new(crate::relay::NAMESPACE, &format!("room-{i}")).expect("room");
            seen[k.bucket_of(&room).expect("a bucket")] += 1;
        }
        // 20 a bucket on average: a fair hash leaves none empty and none at 3 times that.
        assert!(seen.iter().all(|&n| n > 0 && n < 60), "{seen:?}");
    }
}
