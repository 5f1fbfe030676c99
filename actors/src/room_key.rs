//! Room addressing: a room lives in one dialect namespace under an id.

use std::fmt;

/// The longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 16;

/// A dialect's namespace: the first part of the key of every room it owns, and the name the
/// dialect goes by in the configuration, `/stats` and the metrics. Data never crosses
/// namespaces. Which namespaces a hub serves is up to the dialects it is given; a name is
/// 1–16 characters of `[a-z0-9]` starting with a letter (so it can name a configuration
/// section and an environment variable), held inline so that a key copies it for free.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    // Zero-padded, so that the derived order is the order of the names.
    name: [u8; MAX_NAMESPACE_LEN],
    len: u8,
}

impl Namespace {
    /// The namespace called `name`. Panics on a name outside the charset: it is meant for the
    /// constants dialects name themselves with, where the panic stops the build.
    pub const fn new(name: &str) -> Namespace {
        match Namespace::checked(name) {
            Some(ns) => ns,
            None => panic!("a namespace is 1-16 characters of [a-z0-9], starting with a letter"),
        }
    }

    /// The namespace called `s`, if `s` is a valid name (whether or not a dialect has it).
    pub fn parse(s: &str) -> Option<Namespace> {
        Namespace::checked(s)
    }

    const fn checked(s: &str) -> Option<Namespace> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_NAMESPACE_LEN || !bytes[0].is_ascii_lowercase() {
            return None;
        }
        let mut name = [0u8; MAX_NAMESPACE_LEN];
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if !(b.is_ascii_lowercase() || b.is_ascii_digit()) {
                return None;
            }
            name[i] = b;
            i += 1;
        }
        Some(Namespace {
            name,
            len: bytes.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Built only from the ASCII checked above.
        std::str::from_utf8(&self.name[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.as_str())
    }
}

/// As its name: the dialect's key in `/stats` and the session listing.
impl serde::Serialize for Namespace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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
    /// The inverse of the `namespace/room` display form. Any valid namespace name is read: the
    /// dialects a hub serves are its registry's business, not the key's.
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
        let pocket = Namespace::new("pocket");
        let key = RoomKey::new(pocket, "r1").expect("valid");
        assert_eq!(key.to_string(), "pocket/r1");
        assert_eq!(RoomKey::parse("pocket/r1"), Some(key));
        assert_eq!(RoomKey::parse("pocket"), None);
        assert_eq!(RoomKey::parse("No-pe/r1"), None);
        assert!(RoomKey::new(Namespace::new("relay"), "bad id").is_none());
        assert_eq!(Namespace::parse("synckit"), Some(Namespace::new("synckit")));
        assert_eq!(
            Namespace::parse("synckit")
                .map(|ns| ns.to_string())
                .as_deref(),
            Some("synckit")
        );
    }

    #[test]
    fn namespace_names_are_short_lowercase_words() {
        assert!(Namespace::parse("relay2").is_some());
        assert!(Namespace::parse(&"a".repeat(MAX_NAMESPACE_LEN)).is_some());
        for bad in [
            "",
            "2relay",
            "Relay",
            "re_lay",
            "re-lay",
            "ré",
            &"a".repeat(17),
        ] {
            assert_eq!(Namespace::parse(bad), None, "{bad:?}");
        }
        // Ordered as their names are.
        let mut names = ["synckit", "relay", "pocket", "relay2"].map(Namespace::new);
        names.sort();
        assert_eq!(
            names.map(|n| n.to_string()),
            ["pocket", "relay", "relay2", "synckit"]
        );
    }
}
