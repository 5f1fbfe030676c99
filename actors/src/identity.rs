//! Who a session speaks for and what it may touch.

/// Matches a room id against a permission pattern where `*` stands for any run of characters.
pub fn pattern_matches(pattern: &str, id: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = id.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the pattern must be the whole id.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The permissions claim, in SyncKit's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    #[serde(default)]
    pub can_read: Vec<String>,
    #[serde(default)]
    pub can_write: Vec<String>,
    #[serde(default)]
    pub is_admin: bool,
}

impl Permissions {
    pub fn admin() -> Permissions {
        Permissions {
            is_admin: true,
            ..Permissions::default()
        }
    }

    pub fn can_write(&self, room: &str) -> bool {
        self.is_admin || self.can_write.iter().any(|p| pattern_matches(p, room))
    }

    /// Write implies read.
    pub fn can_read(&self, room: &str) -> bool {
        self.can_write(room) || self.can_read.iter().any(|p| pattern_matches(p, room))
    }

    /// Whether any room at all can be read (and so whether a session is worth opening).
    pub fn grants_anything(&self) -> bool {
        self.is_admin || !self.can_read.is_empty() || !self.can_write.is_empty()
    }
}

/// An authenticated (or, with auth off, anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub permissions: Permissions,
    /// Unix seconds after which the token is no longer valid (leeway included).
    pub expires_at: Option<i64>,
    /// False when auth is off: the caller counts toward no per-user limit.
    pub authenticated: bool,
}

impl Identity {
    /// A SyncKit connection that has not authenticated yet: no rights until it sends `auth`.
    pub fn unauthenticated() -> Identity {
        Identity {
            user_id: String::new(),
            permissions: Permissions::default(),
            expires_at: None,
            authenticated: false,
        }
    }

    /// An operator acting through the admin endpoints: user `admin`, with every permission,
    /// counted toward no user's connections.
    pub fn operator() -> Identity {
        Identity {
            user_id: "admin".into(),
            permissions: Permissions::admin(),
            expires_at: None,
            authenticated: false,
        }
    }

    /// The caller when `auth.required = false`: may do anything.
    pub fn anonymous() -> Identity {
        Identity {
            user_id: "anonymous".into(),
            permissions: Permissions::admin(),
            expires_at: None,
            authenticated: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Turns a bearer token into an identity; implemented by the binary's JWT layer.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<Identity, AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("room", "room"));
        assert!(!pattern_matches("room", "room2"));
        assert!(pattern_matches("team-*", "team-1"));
        assert!(!pattern_matches("team-*", "xteam-1"));
        assert!(pattern_matches("*-docs", "a-docs"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "aXXcYYb"));
        assert!(pattern_matches("a*a", "aa"));
        assert!(!pattern_matches("a*a", "a"));
    }

    #[test]
    fn write_implies_read_and_admin_implies_all() {
        let p = Permissions {
            can_read: vec!["pub-*".into()],
            can_write: vec!["mine".into()],
            is_admin: false,
        };
        assert!(p.can_read("pub-1") && !p.can_write("pub-1"));
        assert!(p.can_read("mine") && p.can_write("mine"));
        assert!(!p.can_read("other"));
        assert!(Permissions::admin().can_write("x"));
        assert!(!Permissions::default().can_read("x"));
    }
}
