//! JWT verification and minting.
//!
//! Access tokens are HS256 (with `auth.jwt_secret`) or RS256/ES256 (with the PEM public key in
//! `auth.jwt_public_key_file`). `exp` is required. Refresh tokens carry `typ: "refresh"` and are
//! never accepted where an access token is expected.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
pub use synchub_actors::unix_now;
use synchub_actors::{AuthError, Identity, Permissions, TokenVerifier};

use crate::config::AuthConfig;

/// The claims the hub reads and writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not valid before (checked, with `auth.leeway_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    /// The audience, a string or a list (checked against `auth.audience` when that is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The Pocket room an HTTP client that cannot put `?room=` in its URLs talks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// `"refresh"` for refresh tokens; absent or `"access"` for access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds neither an RSA nor an EC public key in PEM form")]
    Pem { path: String },
    #[error("{path} holds a private key: give auth.jwt_public_key_file the public key only")]
    PrivateKey { path: String },
    #[error("the JWT backend failed its self-test: {0}")]
    SelfTest(String),
}

pub struct JwtVerifier {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl JwtVerifier {
    pub fn from_config(auth: &AuthConfig) -> Result<JwtVerifier, KeyError> {
        let hmac = auth
            .jwt_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let public = match &auth.jwt_public_key_file {
            Some(file) => Some(load_public_key(file)?),
            None => None,
        };
        Ok(JwtVerifier {
            hmac,
            public,
            leeway: auth.leeway_s,
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
        })
    }

    fn claims(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(_, expected)| *expected == alg)
                .map(|(k, _)| k),
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.validate_nbf = true;
        // A configured audience or issuer must be in the token, not merely match when present.
        let mut required = vec!["exp"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    /// Verifies a refresh token (for `/auth/refresh`).
    pub fn verify_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.claims(token)?;
        if claims.typ.as_deref() != Some("refresh") {
            return Err(AuthError::Invalid("not a refresh token".into()));
        }
        Ok(claims)
    }
}

impl JwtVerifier {
    /// Verifies an access token; returns the identity and the token's own `exp`.
    pub fn verify_access(&self, token: &str) -> Result<(Identity, Claims), AuthError> {
        let claims = self.claims(token)?;
        if claims.typ.as_deref().is_some_and(|t| t != "access") {
            return Err(AuthError::Invalid("not an access token".into()));
        }
        let user_id = claims
            .sub
            .clone()
            .or(claims.user_id.clone())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| AuthError::Invalid("no sub or userId claim".into()))?;
        let identity = Identity {
            user_id,
            permissions: claims.permissions.clone().unwrap_or_default(),
            expires_at: Some(claims.exp.saturating_add(self.leeway as i64)),
            authenticated: true,
        };
        Ok((identity, claims))
    }
}

/// A token's `room` claim without checking the token: for development mode (auth off), where
/// the token grants nothing and only names the room.
pub fn unverified_room(token: &str) -> Option<String> {
    // Only the claim that names the room: a development token need not carry `exp` or any
    // other claim the verified path requires.
    #[derive(Deserialize)]
    struct RoomClaim {
        room: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<RoomClaim>(token)
        .ok()?
        .room
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_access(token).map(|(identity, _)| identity)
    }
}

/// Lifetimes of the tokens the hub mints at `/auth/login` and `/auth/refresh`.
pub const ACCESS_TTL_S: i64 = 24 * 3600;
pub const REFRESH_TTL_S: i64 = 7 * 24 * 3600;

/// Why the hub could not mint a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("auth.jwt_secret is empty")]
    NoSecret,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The configuration makes the hub refuse what it signs (say, a public key but no secret
    /// for HS256): the token is not handed out.
    #[error("the hub would refuse the token it minted: {0}")]
    Refused(AuthError),
}

/// `claims` as the hub's own tokens carry them: with the configured audience and issuer, which
/// the hub requires of every token when they are set.
pub fn issued_by(auth: &AuthConfig, claims: Claims) -> Claims {
    Claims {
        aud: auth.audience.clone().map(serde_json::Value::String),
        iss: auth.issuer.clone(),
        ..claims
    }
}

/// An access token of `claims` signed with `auth.jwt_secret`, checked by `verifier` before it
/// is handed out.
pub fn mint_access(
    auth: &AuthConfig,
    verifier: &JwtVerifier,
    claims: Claims,
) -> Result<String, MintError> {
    let Some(secret) = &auth.jwt_secret else {
        return Err(MintError::NoSecret);
    };
    let token = mint(secret, &issued_by(auth, claims))?;
    verifier.verify_access(&token).map_err(MintError::Refused)?;
    Ok(token)
}

/// An access and a refresh token for `user` (its `sub`, `email`, `permissions` and `room` are
/// kept; lifetimes, audience and issuer are the hub's), each checked the way the hub will check
/// it when it comes back, so a client never gets a pair the hub refuses.
pub fn mint_pair(
    auth: &AuthConfig,
    verifier: &JwtVerifier,
    user: Claims,
) -> Result<(String, String), MintError> {
    let Some(secret) = &auth.jwt_secret else {
        return Err(MintError::NoSecret);
    };
    let now = unix_now();
    let access = issued_by(
        auth,
        Claims {
            sub: user.sub,
            email: user.email,
            permissions: user.permissions,
            room: user.room,
            exp: now + ACCESS_TTL_S,
            iat: Some(now),
            ..Claims::default()
        },
    );
    let refresh = Claims {
        exp: now + REFRESH_TTL_S,
        typ: Some("refresh".into()),
        ..access.clone()
    };
    let access = mint(secret, &access)?;
    let refresh = mint(secret, &refresh)?;
    verifier
        .verify_access(&access)
        .map_err(MintError::Refused)?;
    verifier
        .verify_refresh(&refresh)
        .map_err(MintError::Refused)?;
    Ok((access, refresh))
}

fn load_public_key(path: &Path) -> Result<(DecodingKey, Algorithm), KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // A private key where the public one belongs would work for nothing and leak a secret into
    // every copy of the config.
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(KeyError::PrivateKey {
            path: path.display().to_string(),
        });
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok((k, Algorithm::ES256));
    }
    Err(KeyError::Pem {
        path: path.display().to_string(),
    })
}

/// Signs claims with an HS256 secret.
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Signs and verifies one token, so a build without a working crypto backend fails at start
/// rather than on the first client.
pub fn self_test() -> Result<(), KeyError> {
    let secret = format!("self-test-{}", unix_now());
    let claims = Claims {
        sub: Some("self-test".into()),
        exp: unix_now() + 60,
        ..Claims::default()
    };
    let token = std::panic::catch_unwind(|| mint(&secret, &claims))
        .map_err(|_| KeyError::SelfTest("signing panicked".into()))?
        .map_err(|e| KeyError::SelfTest(e.to_string()))?;
    let verifier = JwtVerifier {
        hmac: Some(DecodingKey::from_secret(secret.as_bytes())),
        public: None,
        leeway: 0,
        audience: None,
        issuer: None,
    };
    verifier
        .verify(&token)
        .map(|_| ())
        .map_err(|e| KeyError::SelfTest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> JwtVerifier {
        JwtVerifier::from_config(&AuthConfig {
            jwt_secret: Some(secret.into()),
            ..AuthConfig::default()
        })
        .expect("config")
    }

    fn token(secret: &str, claims: Claims) -> String {
        mint(secret, &claims).expect("mint")
    }

    #[test]
    fn self_test_passes() {
        self_test().expect("backend works");
    }

    #[test]
    fn access_tokens_verify() {
        let v = verifier("s3cret");
        let perms = Permissions {
            can_read: vec!["*".into()],
            can_write: vec!["team-*".into()],
            is_admin: false,
        };
        let t = token(
            "s3cret",
            Claims {
                sub: Some("alice".into()),
                exp: unix_now() + 100,
                permissions: Some(perms.clone()),
                ..Claims::default()
            },
        );
        let id = v.verify(&t).expect("valid");
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.permissions, perms);
        assert!(id.authenticated);
        // `userId` stands in for `sub`.
        let t = token(
            "s3cret",
            Claims {
                user_id: Some("bob".into()),
                exp: unix_now() + 100,
                ..Claims::default()
            },
        );
        assert_eq!(v.verify(&t).expect("valid").user_id, "bob");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = verifier("s3cret");
        let base = Claims {
            sub: Some("alice".into()),
            exp: unix_now() + 100,
            ..Claims::default()
        };
        assert!(v.verify("garbage").is_err());
        assert!(v.verify(&token("other", base.clone())).is_err());
        let expired = Claims {
            exp: unix_now() - 3600,
            ..base.clone()
        };
        assert_eq!(v.verify(&token("s3cret", expired)), Err(AuthError::Expired));
        // Within the leeway an expired token still passes.
        let recent = Claims {
            exp: unix_now() - 5,
            ..base.clone()
        };
        assert!(v.verify(&token("s3cret", recent)).is_ok());
        let refresh = Claims {
            typ: Some("refresh".into()),
            ..base.clone()
        };
        let refresh = token("s3cret", refresh);
        assert!(v.verify(&refresh).is_err());
        assert!(v.verify_refresh(&refresh).is_ok());
        assert!(v.verify_refresh(&token("s3cret", base)).is_err());
        let anonymous = Claims {
            exp: unix_now() + 100,
            ..Claims::default()
        };
        assert!(v.verify(&token("s3cret", anonymous)).is_err());
        // No key configured: nothing verifies.
        assert!(
            verifier("")
                .verify(&token(
                    "x",
                    Claims {
                        sub: Some("a".into()),
                        exp: unix_now() + 9,
                        ..Claims::default()
                    }
                ))
                .is_err()
        );
    }
}
