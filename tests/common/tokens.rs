//! Tokens and auth-enabled hubs shared by the tests.

use synchub::auth::{Claims, mint, unix_now};
use synchub_actors::Permissions;

use super::TestHub;

/// Claims for `sub` with read and write patterns, valid for `ttl` seconds (negative: expired).
pub fn claims(sub: &str, read: &[&str], write: &[&str], ttl: i64) -> Claims {
    Claims {
        sub: Some(sub.into()),
        exp: unix_now() + ttl,
        permissions: Some(Permissions {
            can_read: read.iter().map(|s| s.to_string()).collect(),
            can_write: write.iter().map(|s| s.to_string()).collect(),
            is_admin: false,
        }),
        ..Claims::default()
    }
}

/// An HS256 access token signed with `secret`.
pub fn token(secret: &str, sub: &str, read: &[&str], write: &[&str], ttl: i64) -> String {
    sign(secret, &claims(sub, read, write, ttl))
}

pub fn sign(secret: &str, claims: &Claims) -> String {
    mint(secret, claims).expect("mint")
}

/// A hub that requires tokens signed with `secret`, with `admin` as its admin token.
pub fn auth_hub(
    secret: &str,
    admin: &str,
    edit: impl FnOnce(&mut synchub::config::Config),
) -> TestHub {
    let (secret, admin) = (secret.to_owned(), admin.to_owned());
    TestHub::start_with(move |c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(secret);
        c.auth.admin_token = Some(admin).filter(|a| !a.is_empty());
        edit(c);
    })
}
