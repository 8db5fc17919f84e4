//! The Batch API path: planner → JSONL writer → submitter → poller → ingester. Each step
//! claims rows with a lease and talks to the others only through the store.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::config::Settings;
use crate::cost::pricing::PriceTable;
use crate::domain::Job;
use crate::openai::{OpenAiClient, OpenAiError};
use crate::store::{DynStore, StoreError};

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

impl BatchContext {
    pub fn lease(&self) -> Duration {
        self.settings.lease()
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

    /// Keeps the shard's lease for a back-off period so no replica retries it at once.
    pub async fn retry_later(&self, shard_id: Uuid, token: i64) {
        let backoff = Duration::from_millis(self.settings.batch.poll_min_ms.max(1000) * 5);
        if let Err(err) = self.store.renew_shard(shard_id, token, backoff).await {
            tracing::warn!(shard = %shard_id, error = %err, "could not hold the shard for a retry");
        }
    }

    /// Makes the job terminal once every item is; logs it.
    pub async fn finish_job(&self, job_id: Uuid) -> Result<(), StepError> {
        if let Some(status) = self.store.finish_job_if_done(job_id).await? {
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
