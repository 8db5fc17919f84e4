//! The worker kernel, written once for every step: the context workers run with, the
//! loop runner (`spawn_loop`), the lease keeper, and "claimed shard → keep its lease alive
//! → run the step → settle" (`run_shards`) with a tracing span per step. It owns the typed
//! `StepError` (retryable or fatal by type) and the job bookkeeping every step ends with
//! (`shard_done`, `finish_job`). It knows no step and no vendor: steps reach the vendor
//! through `providers::Provider`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Settings;
use crate::cost::pricing::PriceTable;
use crate::domain::{Counts, ItemError, Job, ShardStatus};
use crate::providers::{DynProvider, ProviderError};
use crate::store::{DynStore, LeasedShard, ShardLease, StoreError};

/// What every worker step needs; built by `startup`, never from the API's state.
#[derive(Clone)]
pub struct WorkerContext {
    pub store: DynStore,
    pub provider: DynProvider,
    pub settings: Arc<Settings>,
    pub prices: Arc<PriceTable>,
    /// This process's name in lease columns.
    pub replica: String,
}

/// Why a step stopped. The shard (or job, or delivery) keeps its state and is taken up
/// again later; the type says whether that can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a task of the step stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error("another replica took the lease over")]
    LeaseLost,
    /// The stored state contradicts itself (a job gone, a shard without its batch id, a
    /// schema that does not compile): another attempt meets the same state.
    #[error("{0}")]
    Invalid(String),
}

impl StepError {
    /// Whether another attempt may go through: the database, the vendor or the disk may be
    /// back. A lost lease is neither: the work belongs to another worker now.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StepError::LeaseLost | StepError::Invalid(_))
    }
}

/// Renews a shard's lease every third of the lease while a step runs on it. A crash stops
/// the renewals, so the lease runs out and another worker takes over, as it should.
pub struct LeaseKeeper {
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A step's view of its lease: whether another worker took it over.
#[derive(Clone)]
pub struct LeaseWatch(Arc<AtomicBool>);

impl LeaseWatch {
    /// The lease moved on (another worker holds the shard): stop before any write to the
    /// vendor, which no fencing token can take back.
    pub fn lost(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl LeaseKeeper {
    pub fn watch(&self) -> LeaseWatch {
        LeaseWatch(self.lost.clone())
    }

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

impl WorkerContext {
    pub fn lease(&self) -> Duration {
        self.settings.lease()
    }

    /// Starts renewing the shard's lease until the keeper is stopped or dropped.
    pub fn keep_lease(&self, held: ShardLease) -> LeaseKeeper {
        let shard_id = held.shard_id();
        let (store, lease) = (self.store.clone(), self.lease());
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
                match &err {
                    StepError::LeaseLost => {
                        tracing::warn!(shard = %shard_id, "{step} stopped: {err}")
                    }
                    e if e.is_retryable() => {
                        tracing::warn!(shard = %shard_id, error = %err, "{step} failed; will retry")
                    }
                    _ => {
                        tracing::error!(shard = %shard_id, error = %err, "{step} failed on inconsistent state; held for a back-off")
                    }
                }
                // Fenced: a no-op when the lease is another worker's.
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

    /// Makes the job terminal once every item is; logs it, or logs its progress.
    pub async fn finish_job(&self, job_id: Uuid) -> Result<(), StepError> {
        if let Some(status) = self.store.finish_job_if_done(job_id).await? {
            metrics::counter!(crate::metrics::JOBS_FINISHED, "status" => status.as_str())
                .increment(1);
            let job = self.job(job_id).await?;
            tracing::info!(job = %job_id, %status, succeeded = job.counts.succeeded,
                failed = job.counts.failed, rejected = job.counts.rejected,
                "job finished: Completed: {}/{}", group(job.counts.succeeded),
                group(job.counts.total));
        } else if let Some(job) = self.store.get_job(None, job_id).await? {
            let processing = crate::domain::processing(&self.store.list_shards(job_id).await?);
            tracing::info!(job = %job_id, "progress: {}", completed_line(&job.counts, processing));
        }
        Ok(())
    }
}

/// Runs `step` on every claimed shard, each in its own task under a span naming the step,
/// the job and the shard: keeps the shard's lease alive while the step runs, then settles
/// it (frees the lease, or holds the shard for a retry). `T` is what the claimer decided
/// for the shard. Returns when every task has.
pub async fn run_shards<T, F, Fut>(
    ctx: &WorkerContext,
    name: &'static str,
    claimed: Vec<(LeasedShard, T)>,
    step: F,
) where
    T: Send + 'static,
    F: Fn(LeasedShard, T, LeaseWatch) -> Fut,
    Fut: Future<Output = Result<(), StepError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (shard, decided) in claimed {
        let ctx = ctx.clone();
        let lease = shard.lease;
        let span = tracing::info_span!("step", step = name, job = %shard.job_id, shard = %shard.id);
        let keeper = ctx.keep_lease(lease);
        let work = step(shard, decided, keeper.watch());
        tasks.spawn(
            async move {
                let result = work.await;
                keeper.stop().await;
                ctx.settle_step(lease, result, name).await;
            }
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs `step` until `stop`: again at once after a step that found work, after `tick`
/// otherwise, after a longer pause when it failed (the database may be down). Each round
/// runs in a span naming the worker.
pub fn spawn_loop<F, Fut>(
    name: &'static str,
    tick: Duration,
    stop: &CancellationToken,
    tracker: &TaskTracker,
    step: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, StepError>> + Send + 'static,
{
    let stop = stop.clone();
    tracker.spawn(async move {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let round = step().instrument(tracing::debug_span!("worker", worker = name));
            let pause = match round.await {
                Ok(0) => {
                    failures = 0;
                    tick
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(worker = name, error = %err, retryable = err.is_retryable(), "worker step failed");
                    tick * 2u32.saturating_pow(failures.min(6))
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::debug!(worker = name, "worker stopped");
    });
}

/// 7988 → "7,988", as the seed pipeline logged progress.
/// The old pipeline's progress line with `progress`'s figures: `Completed: 1,250/7,988
/// (15.6%)`, done work (in-flight batch lines included) over the work (rejected images
/// are not work).
pub fn completed_line(counts: &Counts, processing: i64) -> String {
    format!(
        "Completed: {}/{} ({}%)",
        group(counts.done_with(processing)),
        group(counts.work()),
        counts.percent_with(processing)
    )
}

pub fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1250), "1,250");
        assert_eq!(group(7988), "7,988");
        assert_eq!(group(1_000_000), "1,000,000");
    }

    #[test]
    fn the_completed_line_has_the_progress_figures() {
        // 8,000 images, 12 rejected: 1,000 settled and 250 lines done in flight.
        let counts = Counts {
            total: 8000,
            rejected: 12,
            succeeded: 990,
            failed: 10,
            submitted: 6988,
            ..Counts::default()
        };
        assert_eq!(
            completed_line(&counts, 250),
            "Completed: 1,250/7,988 (15.6%)"
        );
        assert_eq!(counts.percent_with(250), 15.6);
    }

    #[test]
    fn lost_leases_and_broken_state_are_not_retryable() {
        assert!(!StepError::LeaseLost.is_retryable());
        assert!(!StepError::Invalid("x".into()).is_retryable());
        assert!(StepError::Io(std::io::Error::other("disk")).is_retryable());
    }
}
