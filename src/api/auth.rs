//! Who is calling: `Authorization: Bearer <key>` → tenant. With no keys configured every
//! caller is the tenant `default` (the service then only listens on loopback).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::problem::ApiError;
use super::AppState;

/// The tenant a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

pub const OPEN_TENANT: &str = "default";

pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The credentials of `Bearer <key>`, the scheme in any case (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.keys.is_empty() {
            return Ok(Tenant(OPEN_TENANT.to_string()));
        }
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        state
            .keys
            .get(&sha256_hex(key))
            .map(|tenant| Tenant(tenant.clone()))
            .ok_or(ApiError::Unauthorized)
    }
}
