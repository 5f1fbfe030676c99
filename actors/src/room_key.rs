//! Room addressing: a room lives in one dialect namespace under an id.

use std::fmt;

/// The dialect namespaces. Data never crosses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Pocket,
    Synckit,
    Relay,
}

impl Namespace {
    pub const ALL: [Namespace; 3] = [Namespace::Pocket, Namespace::Synckit, Namespace::Relay];

    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Pocket => "pocket",
            Namespace::Synckit => "synckit",
            Namespace::Relay => "relay",
        }
    }

    pub fn parse(s: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|ns| ns.as_str() == s)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest room id (and collection name) the hub accepts.
pub const MAX_ID_LEN: usize = 256;

/// Room ids, and the other names the hub keys storage by (Pocket collections), are 1–256
/// characters of `[A-Za-z0-9_.:-]`. The charset keeps `/` and NUL free for storage keys.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// `(namespace, room id)`: the identity of one Room actor and its slice of storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub namespace: Namespace,
    pub room: String,
}

impl RoomKey {
    /// Builds a key, refusing ids outside the room id charset.
    pub fn new(namespace: Namespace, room: &str) -> Option<RoomKey> {
        is_valid_id(room).then(|| RoomKey {
            namespace,
            room: room.to_owned(),
        })
    }
}

impl RoomKey {
    /// The inverse of the `namespace/room` display form.
    pub fn parse(s: &str) -> Option<RoomKey> {
        let (ns, room) = s.split_once('/')?;
        RoomKey::new(Namespace::parse(ns)?, room)
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_charset() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("Team-1_x.y:z"));
        assert!(is_valid_id(&"a".repeat(256)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(257)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("a\0"));
    }

    #[test]
    fn keys_display_as_namespace_slash_room() {
        let key = RoomKey::new(Namespace::Pocket, "r1").expect("valid");
        assert_eq!(key.to_string(), "pocket/r1");
        assert_eq!(RoomKey::parse("pocket/r1"), Some(key));
        assert_eq!(RoomKey::parse("pocket"), None);
        assert_eq!(RoomKey::parse("nope/r1"), None);
        assert!(RoomKey::new(Namespace::Relay, "bad id").is_none());
        assert_eq!(Namespace::parse("synckit"), Some(Namespace::Synckit));
        assert_eq!(Namespace::parse("other"), None);
    }
}
