//! Idempotent creation: the begin → run → complete (or abort) sequence behind an
//! `Idempotency-Key`. The same key and body replay the first answer, another body is a
//! validation error, a retry while the first is still running is a conflict.
//!
//! The first request holds the key on a lease of `server.idempotency_lease_secs`, renewed
//! every third of it while the request runs: a request whose process died mid-way (crash,
//! SIGKILL) leaves a hold that lapses, so a retry after the lease runs the request instead
//! of meeting 409 until the 24-hour expiry. The work marks the key with its job in the
//! transaction that stores it (job creation in `create_job_keyed`, a chunk in
//! `append_items_keyed`), so a request that died after storing and before recording its
//! answer is not run again: a retry is answered with the job as it is now
//! (`IdempotencyState::Committed`), never with a second job or a chunk stored twice.

use std::time::Duration;

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
    /// answers the job it created and the answer to store for replays. `now` answers for a
    /// job whose work was done by a request that died before its answer was recorded.
    pub async fn once<T, Fut, Now, NowFut>(
        &self,
        tenant: &str,
        key: Option<&str>,
        body: &[u8],
        work: Fut,
        now: Now,
    ) -> AppResult<Once<T>>
    where
        T: Serialize,
        Fut: std::future::Future<Output = AppResult<(Uuid, T)>>,
        Now: FnOnce(Uuid) -> NowFut,
        NowFut: std::future::Future<Output = AppResult<T>>,
    {
        let Some(key) = key else {
            return Ok(Once::Fresh(work.await?.1));
        };
        let hash = hex::encode(Sha256::digest(body));
        let lease = Duration::from_secs(self.settings.server.idempotency_lease_secs);
        match self
            .store
            .idempotency_begin(tenant, key, &hash, lease_until(lease))
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
                same_body(&request_hash, &hash)?;
                return Ok(Once::Replay(response));
            }
            IdempotencyState::Committed {
                request_hash,
                job_id,
            } => {
                same_body(&request_hash, &hash)?;
                let answer =
                    serde_json::to_value(now(job_id).await?).map_err(AppError::internal)?;
                let keep = Utc::now() + chrono::Duration::hours(24);
                self.store
                    .idempotency_complete(tenant, key, job_id, &answer, keep)
                    .await?;
                return Ok(Once::Replay(answer));
            }
        }
        match self.renewing(tenant, key, lease, work).await {
            Ok((job_id, answer)) => {
                let stored = serde_json::to_value(&answer).map_err(AppError::internal)?;
                let keep = Utc::now() + chrono::Duration::hours(24);
                self.store
                    .idempotency_complete(tenant, key, job_id, &stored, keep)
                    .await?;
                Ok(Once::Fresh(answer))
            }
            Err(err) => {
                self.store.idempotency_abort(tenant, key).await?;
                Err(err)
            }
        }
    }

    /// Runs `work`, renewing the key's lease every third of it until `work` is done. A
    /// renewal that fails is logged: the hold then lapses at its lease, as a dead one does.
    async fn renewing<T>(
        &self,
        tenant: &str,
        key: &str,
        lease: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let every = (lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(every) => {
                    if let Err(err) = self.store.idempotency_renew(tenant, key, lease_until(lease)).await {
                        tracing::warn!(%err, key, "could not renew an Idempotency-Key's lease");
                    }
                }
            }
        }
    }
}

fn same_body(stored: &str, hash: &str) -> AppResult<()> {
    if stored != hash {
        return Err(AppError::field(
            "Idempotency-Key",
            "was already used with a different request body",
        ));
    }
    Ok(())
}

fn lease_until(lease: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(24))
}
