//! Who is calling: `Authorization: Bearer <key>` → tenant, from the configured keys and the
//! database's (`batchlens keys`), then the tenant's request rate. With no key anywhere (and
//! `auth.require_key` off) every caller is the tenant `default` (the service then only
//! listens on loopback).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::problem::ApiError;
use super::AppState;
use crate::store::{DynStore, StoreResult};

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

/// A key's SHA-256 and its tenant.
type KeyHash = ([u8; 32], String);

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// The tenant whose hash is `hash`: every entry compared in constant time, none skipped.
fn find(keys: &[KeyHash], hash: &[u8; 32]) -> Option<String> {
    let mut found = None;
    for (candidate, tenant) in keys {
        if bool::from(candidate.ct_eq(hash)) {
            found = Some(tenant);
        }
    }
    found.cloned()
}

/// The keys a replica accepts: the configured ones, and the database's as read at most
/// `ttl` ago (so a key created or revoked with `batchlens keys` takes effect on every
/// replica within `ttl`, without a restart).
pub struct KeyRing {
    configured: Vec<KeyHash>,
    require_key: bool,
    store: Option<DynStore>,
    ttl: Duration,
    /// The database's keys and when they were read. Every request reads it: a plain
    /// lock held for an `Arc` clone, never across an await, so callers do not queue on
    /// one another the way they did on an async mutex.
    cached: std::sync::RwLock<Option<(Instant, Arc<Vec<KeyHash>>)>>,
    /// Held while one caller reads the keys again, so an expired copy costs one query,
    /// not one per waiting request.
    refresh: tokio::sync::Mutex<()>,
}

impl KeyRing {
    /// `configured`: `(tenant, sha256 hex)` pairs; `store`: where run-time keys live.
    pub fn new(
        configured: &[(String, String)],
        require_key: bool,
        store: Option<DynStore>,
        ttl: Duration,
    ) -> Self {
        let configured = configured
            .iter()
            .filter_map(|(tenant, hash)| Some((parse_hash(hash)?, tenant.clone())))
            .collect();
        Self {
            configured,
            require_key,
            store,
            ttl,
            cached: std::sync::RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Only the configured keys (tests and tools that have no database).
    pub fn configured(configured: &[(String, String)]) -> Self {
        Self::new(configured, false, None, Duration::from_secs(10))
    }

    /// The database's keys not revoked, read again when the copy is older than the TTL.
    async fn stored(&self) -> StoreResult<Arc<Vec<KeyHash>>> {
        let Some(store) = &self.store else {
            return Ok(Arc::new(Vec::new()));
        };
        if let Some(keys) = self.fresh() {
            return Ok(keys);
        }
        let _refreshing = self.refresh.lock().await;
        // Another caller may have read them while this one waited.
        if let Some(keys) = self.fresh() {
            return Ok(keys);
        }
        let keys: Arc<Vec<KeyHash>> = Arc::new(
            store
                .active_api_keys()
                .await?
                .into_iter()
                .filter_map(|(hash, tenant)| Some((parse_hash(&hash)?, tenant)))
                .collect(),
        );
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// The cached keys while younger than the TTL.
    fn fresh(&self) -> Option<Arc<Vec<KeyHash>>> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        let (at, keys) = cached.as_ref()?;
        (at.elapsed() < self.ttl).then(|| keys.clone())
    }

    /// The tenant a presented key (`None`: none given) names; the open tenant `default`
    /// while no key is configured, none is required and the database holds none.
    pub async fn authenticate(&self, key: Option<&str>) -> Result<Tenant, ApiError> {
        let hash: Option<[u8; 32]> = key.map(|k| Sha256::digest(k.as_bytes()).into());
        if let Some(tenant) = hash.as_ref().and_then(|h| find(&self.configured, h)) {
            return Ok(Tenant(tenant));
        }
        let stored = self.stored().await.map_err(ApiError::internal)?;
        if self.configured.is_empty() && !self.require_key && stored.is_empty() {
            return Ok(Tenant(OPEN_TENANT.to_string()));
        }
        hash.and_then(|h| find(&stored, &h))
            .map(Tenant)
            .ok_or(ApiError::Unauthorized)
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .filter(|k| !k.is_empty());
        let tenant = state.keys.authenticate(key).await?;
        state.app.admit_request(&tenant.0)?;
        Ok(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hash_is_compared_and_the_match_found() {
        let keys: Vec<KeyHash> = ["a", "b", "c"]
            .iter()
            .map(|t| (Sha256::digest(format!("key-{t}")).into(), t.to_string()))
            .collect();
        let b: [u8; 32] = Sha256::digest("key-b").into();
        assert_eq!(find(&keys, &b).as_deref(), Some("b"));
        let none: [u8; 32] = Sha256::digest("key-z").into();
        assert_eq!(find(&keys, &none), None);
    }

    #[tokio::test]
    async fn configured_keys_and_the_open_tenant() {
        let open = KeyRing::configured(&[]);
        assert_eq!(open.authenticate(None).await.unwrap().0, OPEN_TENANT);
        let ring = KeyRing::configured(&[("acme".into(), sha256_hex("k1"))]);
        assert_eq!(ring.authenticate(Some("k1")).await.unwrap().0, "acme");
        assert!(matches!(
            ring.authenticate(Some("k2")).await,
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            ring.authenticate(None).await,
            Err(ApiError::Unauthorized)
        ));
        let required = KeyRing::new(&[], true, None, Duration::from_secs(1));
        assert!(matches!(
            required.authenticate(None).await,
            Err(ApiError::Unauthorized)
        ));
    }
}
