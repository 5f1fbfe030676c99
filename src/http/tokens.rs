//! The token endpoints under `/auth`, as SyncKit's server has them: verify, who am I, refresh,
//! and the development login.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use synchub_actors::Permissions;

use super::{AppState, bearer};
use crate::auth::{Claims, MintError, mint_pair};

#[derive(Deserialize)]
pub(super) struct VerifyBody {
    #[serde(default)]
    token: Option<String>,
}

/// `POST /auth/verify {token}` → `{valid:false}` or `{valid:true, userId, expiresAt}`.
pub(super) async fn verify(
    body: Option<web::Json<VerifyBody>>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(token) = body
        .and_then(|b| b.into_inner().token)
        .filter(|t| !t.is_empty())
    else {
        return HttpResponse::BadRequest().json(json!({"error": "Token required"}));
    };
    match state.verifier.verify_access(&token) {
        Ok((identity, claims)) => HttpResponse::Ok().json(json!({
            "valid": true,
            "userId": identity.user_id,
            "expiresAt": claims.exp,
        })),
        Err(_) => HttpResponse::Ok().json(json!({"valid": false})),
    }
}

/// `GET /auth/me` with `Authorization: Bearer` → `{userId, email?, permissions}` or 401.
pub(super) async fn me(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        return HttpResponse::Unauthorized().json(json!({"error": "Missing Authorization header"}));
    }
    let Some(token) = bearer(&req) else {
        return HttpResponse::Unauthorized()
            .json(json!({"error": "Invalid Authorization header format"}));
    };
    match state.verifier.verify_access(token) {
        Ok((identity, claims)) => HttpResponse::Ok().json(json!({
            "userId": identity.user_id,
            "email": claims.email,
            "permissions": identity.permissions,
        })),
        Err(_) => HttpResponse::Unauthorized().json(json!({"error": "Invalid or expired token"})),
    }
}

#[derive(Deserialize)]
pub(super) struct RefreshBody {
    #[serde(default, rename = "refreshToken")]
    refresh_token: Option<String>,
}

/// `POST /auth/refresh {refreshToken}` → a new token pair with the same user and permissions.
/// Only refresh tokens (`typ: "refresh"`) are accepted here, and never as access tokens.
pub(super) async fn refresh(
    body: Option<web::Json<RefreshBody>>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(token) = body
        .and_then(|b| b.into_inner().refresh_token)
        .filter(|t| !t.is_empty())
    else {
        return HttpResponse::BadRequest().json(json!({"error": "Refresh token required"}));
    };
    let invalid =
        || HttpResponse::Unauthorized().json(json!({"error": "Invalid or expired refresh token"}));
    let Ok(claims) = state.verifier.verify_refresh(&token) else {
        return invalid();
    };
    let Some(user) = claims.sub.clone().or(claims.user_id.clone()) else {
        return invalid();
    };
    let user = Claims {
        sub: Some(user),
        email: claims.email,
        permissions: Some(claims.permissions.unwrap_or_default()),
        room: claims.room,
        ..Claims::default()
    };
    match mint_pair(&state.config.auth, &state.verifier, user) {
        Ok((access, refresh)) => {
            HttpResponse::Ok().json(json!({"accessToken": access, "refreshToken": refresh}))
        }
        // A refresh token the hub did not sign with a secret (RS256 / ES256): it cannot mint.
        Err(MintError::NoSecret) => invalid(),
        Err(e) => minting_failed(&e),
    }
}

/// The hub cannot mint a token it would accept: a configuration fault, logged for the operator.
fn minting_failed(e: &MintError) -> HttpResponse {
    log::error!("cannot mint tokens: {e}");
    HttpResponse::InternalServerError().json(json!({"error": "The hub cannot mint tokens"}))
}

#[derive(Deserialize)]
pub(super) struct LoginBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

/// `POST /auth/login`, only with `auth.dev_login = true`: mints tokens for any credentials.
pub(super) async fn login(
    body: Option<web::Json<LoginBody>>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if !state.config.auth.dev_login {
        return HttpResponse::NotFound().json(json!({"error": "Not found"}));
    }
    let body = body.map(web::Json::into_inner);
    let (Some(email), Some(_)) = (
        body.as_ref()
            .and_then(|b| b.email.clone())
            .filter(|e| !e.is_empty()),
        body.as_ref()
            .and_then(|b| b.password.clone())
            .filter(|p| !p.is_empty()),
    ) else {
        return HttpResponse::BadRequest().json(json!({"error": "Email and password required"}));
    };
    let permissions = body.and_then(|b| b.permissions).unwrap_or(Permissions {
        can_read: vec!["*".into()],
        can_write: vec!["*".into()],
        is_admin: false,
    });
    log::warn!(
        "DEV LOGIN: minting tokens for {email:?} without checking any password (auth.dev_login = true)"
    );
    let user = Claims {
        sub: Some(email.clone()),
        email: Some(email.clone()),
        permissions: Some(permissions.clone()),
        ..Claims::default()
    };
    match mint_pair(&state.config.auth, &state.verifier, user) {
        Ok((access, refresh)) => HttpResponse::Ok().json(json!({
            "userId": email,
            "email": email,
            "accessToken": access,
            "refreshToken": refresh,
            "permissions": permissions,
        })),
        Err(e) => minting_failed(&e),
    }
}
