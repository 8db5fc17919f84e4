//! Idempotent creation: the begin → run → complete (or abort) sequence behind an
//! `Idempotency-Key`. The same key and body replay the first answer, another body is a
//! validation error, a retry while the first is still running is a conflict.

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{App, AppError, AppResult};
use crate::store::IdempotencyState;

/// The answer of an idempotent request.
#[derive(Debug)]
pub enum Once<T> {
    /// The work ran now.
    Fresh(T),
    /// An earlier request with the same key and body: its stored answer.
    Replay(serde_json::Value),
}

impl App {
    /// Runs `work` once per `(tenant, key)` and `body`; without a key it just runs. `work`
    /// answers the job it created and the answer to store for replays.
    pub async fn once<T, Fut>(
        &self,
        tenant: &str,
        key: Option<&str>,
        body: &[u8],
        work: Fut,
    ) -> AppResult<Once<T>>
    where
        T: Serialize,
        Fut: std::future::Future<Output = AppResult<(Uuid, T)>>,
    {
        let Some(key) = key else {
            return Ok(Once::Fresh(work.await?.1));
        };
        let hash = hex::encode(Sha256::digest(body));
        let expires = Utc::now() + chrono::Duration::hours(24);
        match self
            .store
            .idempotency_begin(tenant, key, &hash, expires)
            .await?
        {
            IdempotencyState::Started => {}
            IdempotencyState::InFlight { .. } => {
                return Err(AppError::Conflict(format!(
                    "a request with Idempotency-Key {key:?} is still being processed"
                )))
            }
            IdempotencyState::Completed {
                request_hash,
                response,
                ..
            } => {
                if request_hash != hash {
                    return Err(AppError::field(
                        "Idempotency-Key",
                        "was already used with a different request body",
                    ));
                }
                return Ok(Once::Replay(response));
            }
        }
        match work.await {
            Ok((job_id, answer)) => {
                let stored = serde_json::to_value(&answer).map_err(AppError::internal)?;
                self.store
                    .idempotency_complete(tenant, key, job_id, &stored)
                    .await?;
                Ok(Once::Fresh(answer))
            }
            Err(err) => {
                self.store.idempotency_abort(tenant, key).await?;
                Err(err)
            }
        }
    }
}
