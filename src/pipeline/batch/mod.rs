//! The Batch API path: planner → JSONL writer → submitter → poller → ingester. Each step
//! claims rows with a lease and talks to the others only through the store. A step on a
//! shard keeps its lease alive while it runs (`LeaseKeeper`), so a slow upload, download
//! or retry back-off never lets another worker take the same shard up halfway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::cost::pricing::PriceTable;
use crate::domain::{ItemError, Job, ShardStatus};
use crate::providers::openai::{OpenAiClient, OpenAiError};
use crate::store::{DynStore, LeasedShard, ShardLease, StoreError};

pub mod ingest;
pub mod janitor;
pub mod jsonl;
pub mod planner;
pub mod poller;
pub mod retry;
pub mod submitter;
pub mod tokens;

/// What every batch step needs.
#[derive(Clone)]
pub struct BatchContext {
    pub store: DynStore,
    pub openai: OpenAiClient,
    pub settings: Arc<Settings>,
    pub prices: Arc<PriceTable>,
    /// This process's name in lease columns.
    pub replica: String,
}

/// Why a step on one shard stopped. Every kind is retried later: the shard keeps its state.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("openai: {0}")]
    OpenAi(#[from] OpenAiError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    #[error("another replica took the lease over")]
    LeaseLost,
    #[error("{0}")]
    Invalid(String),
}

/// Renews a shard's lease every third of the lease while a step runs on it. A crash stops
/// the renewals, so the lease runs out and another worker takes over, as it should.
pub struct LeaseKeeper {
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease moved on (another worker holds the shard): stop before any write to
    /// OpenAI, which no fencing token can take back.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stops renewing and waits until no renewal is under way, so a release that follows
    /// is not undone by a late renewal.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl BatchContext {
    pub fn lease(&self) -> Duration {
        self.settings.lease()
    }

    /// Starts renewing the shard's lease (held with `token`) until the keeper is stopped
    /// or dropped.
    pub fn keep_lease(&self, lease: ShardLease) -> LeaseKeeper {
        let shard_id = lease.shard_id();
        let (store, held, lease) = (self.store.clone(), lease, self.lease());
        let lost = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (l, s) = (lost.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(lease / 3) => {}
                }
                match store.renew_shard(&held, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        l.store(true, Ordering::Relaxed);
                        tracing::warn!(shard = %shard_id, "lost the shard's lease to another worker");
                        return;
                    }
                    // The database may be back by the next renewal; the lease still runs.
                    Err(err) => {
                        tracing::warn!(shard = %shard_id, error = %err, "could not renew the shard's lease")
                    }
                }
            }
        });
        LeaseKeeper { lost, stop, task }
    }

    /// `batch.max_attempts`: how many times an item may be sent.
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.settings.batch.max_attempts).unwrap_or(i32::MAX)
    }

    pub async fn job(&self, id: Uuid) -> Result<Job, StepError> {
        self.store
            .get_job(None, id)
            .await?
            .ok_or_else(|| StepError::Invalid(format!("job {id} is gone")))
    }

    /// After a step on a shard: frees the lease when it went through, holds the shard
    /// for a back-off when it failed (it is retried then, keeping its status).
    pub async fn settle_step(&self, lease: ShardLease, result: Result<(), StepError>, step: &str) {
        let shard_id = lease.shard_id();
        match result {
            Ok(()) => {
                if let Err(err) = self.store.release_shard(&lease).await {
                    // The lease runs out on its own.
                    tracing::warn!(shard = %shard_id, error = %err, "could not free the shard's lease");
                }
            }
            Err(err) => {
                tracing::warn!(shard = %shard_id, error = %err, "{step} failed; will retry");
                self.retry_later(lease).await;
            }
        }
    }

    /// Keeps the shard's lease for a back-off period (five poll intervals) so no replica
    /// retries it at once. The shard keeps its status: when the lease runs out it is
    /// claimed again, so a failing step is retried, never dropped (even when this renewal
    /// itself fails, the lease simply expires sooner).
    pub async fn retry_later(&self, lease: ShardLease) {
        let shard_id = lease.shard_id();
        let backoff = Duration::from_millis(self.settings.batch.poll_min_ms.max(50) * 5);
        if let Err(err) = self.store.renew_shard(&lease, backoff).await {
            tracing::warn!(shard = %shard_id, error = %err, "could not hold the shard for a retry");
        }
    }

    /// Makes the job terminal once every item is; logs it.
    /// Marks the shard `done` (with `error`, if any) under its lease, then finishes its
    /// job when that was the last of it.
    pub async fn shard_done(
        &self,
        shard: &LeasedShard,
        error: Option<&ItemError>,
    ) -> Result<(), StepError> {
        if !self
            .store
            .set_shard_status(&shard.lease, ShardStatus::Done, error)
            .await?
        {
            return Err(StepError::LeaseLost);
        }
        self.finish_job(shard.job_id).await
    }

    pub async fn finish_job(&self, job_id: Uuid) -> Result<(), StepError> {
        if let Some(status) = self.store.finish_job_if_done(job_id).await? {
            metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => status.as_str())
                .increment(1);
            let job = self.job(job_id).await?;
            tracing::info!(job = %job_id, %status, succeeded = job.counts.succeeded,
                failed = job.counts.failed, rejected = job.counts.rejected,
                "job finished: Completed: {}/{}", poller::group(job.counts.succeeded),
                poller::group(job.counts.total));
        } else if let Some(job) = self.store.get_job(None, job_id).await? {
            tracing::info!(job = %job_id, "progress: Completed: {}/{} ({}%)",
                poller::group(job.counts.terminal()), poller::group(job.counts.total),
                job.counts.percent());
        }
        Ok(())
    }
}
