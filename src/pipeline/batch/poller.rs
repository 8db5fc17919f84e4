//! Polling: claims in-flight shards whose next poll is due, asks OpenAI how each batch is
//! doing with an interval that doubles from `poll_min_ms` to `poll_max_ms`, stores status
//! and request counts, and hands finished batches to the ingester. One failing batch never
//! stalls the others: each shard runs in its own task.

use chrono::{Duration as ChronoDuration, Utc};

use super::ingest;
use crate::domain::{ItemError, JobStatus, ShardKind, ShardStatus};
use crate::pipeline::kernel::run_shards;
use crate::pipeline::kernel::{completed_line, group};
use crate::pipeline::retry::{self, TOKEN_LIMIT_EXCEEDED};
use crate::pipeline::{StepError, WorkerContext};
use crate::providers::{Batch, BatchStatus, ProviderError};
use crate::store::{LeasedShard, Leftover, ShardPoll};

/// Shards polled at once by one replica.
const CLAIM: i64 = 16;

pub async fn run_once(ctx: &WorkerContext) -> Result<usize, StepError> {
    let shards = ctx
        .store
        .claim_shards(
            ShardKind::Batch,
            &[ShardStatus::Submitted, ShardStatus::Ingesting],
            Utc::now(),
            &ctx.replica,
            ctx.lease(),
            CLAIM,
        )
        .await?;
    let n = shards.len();
    let claimed = shards.into_iter().map(|s| (s, ())).collect();
    run_shards(ctx, "poll", claimed, |shard, (), _| {
        let ctx = ctx.clone();
        async move { poll(&ctx, shard).await }
    })
    .await;
    Ok(n)
}

fn next_interval(ctx: &WorkerContext, shard: &LeasedShard) -> i64 {
    let min = ctx.settings.batch.poll_min_ms as i64;
    let max = ctx.settings.batch.poll_max_ms as i64;
    (shard.poll_interval_ms.max(min) * 2).min(max)
}

async fn poll(ctx: &WorkerContext, shard: LeasedShard) -> Result<(), StepError> {
    let batch_id = shard
        .openai_batch_id
        .clone()
        .ok_or_else(|| StepError::Invalid(format!("shard {} has no batch id", shard.id)))?;
    let mut batch = ctx.provider.retrieve_batch(&batch_id).await?;
    let job = ctx.job(shard.job_id).await?;
    if job.status == JobStatus::Cancelling
        && !batch.status.is_terminal()
        && batch.status != BatchStatus::Cancelling
    {
        match ctx.provider.cancel_batch(&batch_id).await {
            Ok(cancelled) => {
                tracing::info!(job = %shard.job_id, shard = %shard.id, batch = %batch_id,
                    status = cancelled.status.as_str(), "batch cancel requested");
                batch = cancelled;
            }
            // It finished meanwhile: the next poll reads how.
            Err(ProviderError::Api { status: 409, .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let counts = batch.request_counts.unwrap_or_default();
    let interval = next_interval(ctx, &shard);
    let poll = ShardPoll {
        batch_status: batch.status.as_str().to_string(),
        request_total: counts.total,
        request_completed: counts.completed,
        request_failed: counts.failed,
        output_file_id: batch.output_file_id.clone(),
        error_file_id: batch.error_file_id.clone(),
        next_poll_at: Utc::now() + ChronoDuration::milliseconds(interval),
        poll_interval_ms: interval,
    };
    if !ctx.store.shard_polled(&shard.lease, &poll).await? {
        return Err(StepError::LeaseLost);
    }
    if shard.batch_status.as_deref() != Some(batch.status.as_str()) {
        tracing::info!(job = %shard.job_id, shard = %shard.id, batch = %batch_id,
            status = batch.status.as_str(), "batch status changed");
        if batch.status.is_terminal() {
            metrics::counter!(crate::metrics::BATCHES_ENDED, "status" => batch.status.as_str())
                .increment(1);
        }
    }
    tracing::info!(job = %shard.job_id, shard = %shard.id,
        "{}: Completed: {}/{} (failed {})", batch.status.as_str(),
        group(counts.completed), group(counts.total), group(counts.failed));
    if counts.completed != shard.request_completed || counts.failed != shard.request_failed {
        // The job's line, with the figures of its `progress` (every batch in flight).
        let processing = crate::domain::processing(&ctx.store.list_shards(job.id).await?);
        tracing::info!(job = %shard.job_id, "progress: {}",
            completed_line(&job.counts, processing));
    }
    match batch.status {
        BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled => {
            finish(ctx, &shard, &batch).await?;
        }
        BatchStatus::Failed => {
            let error = batch_error(&batch);
            let leftover = failed_batch_leftover(&error, &shard, ctx.max_attempts());
            tracing::warn!(job = %shard.job_id, shard = %shard.id, batch = %batch_id,
                code = %error.code, message = %error.message, ?leftover, "batch failed");
            let settled = ctx.store.fail_shard(&shard.lease, &error, leftover).await?;
            if settled.requeued > 0 {
                tracing::info!(job = %shard.job_id, shard = %shard.id,
                    requeued = settled.requeued, "items sent back to be planned again");
            }
            ctx.finish_job(shard.job_id).await?;
        }
        _ => {}
    }
    Ok(())
}

async fn finish(ctx: &WorkerContext, shard: &LeasedShard, batch: &Batch) -> Result<(), StepError> {
    if shard.status != ShardStatus::Ingesting
        && !ctx
            .store
            .set_shard_status(&shard.lease, ShardStatus::Ingesting, None)
            .await?
    {
        return Err(StepError::LeaseLost);
    }
    let report = ingest::ingest(ctx, shard, batch).await?;
    tracing::info!(job = %shard.job_id, shard = %shard.id, succeeded = report.succeeded,
        failed = report.failed, not_executed = report.not_executed, "batch ingested");
    ctx.shard_done(shard, None).await
}

/// What becomes of a failed batch's items. A refusal for the enqueued-token limit ran
/// nothing and is ours to fix (smaller shards, fewer in flight), so it is not counted
/// against `max_attempts` — except for a shard of one item, which cannot get smaller:
/// counting it there keeps an image over the limit from being refused forever.
pub fn failed_batch_leftover(
    error: &ItemError,
    shard: &LeasedShard,
    max_attempts: i32,
) -> Leftover {
    if error.code == TOKEN_LIMIT_EXCEEDED && shard.item_count > 1 {
        Leftover::Requeue
    } else if retry::retryable(&error.code, None) {
        Leftover::Retry { max_attempts }
    } else {
        Leftover::Fail
    }
}

/// The error a failed batch reports for all its items.
fn batch_error(batch: &Batch) -> ItemError {
    batch
        .errors
        .as_ref()
        .and_then(|e| e.data.first())
        .map(|e| ItemError {
            code: e.code.clone().unwrap_or_else(|| "batch_failed".into()),
            message: e
                .message
                .clone()
                .unwrap_or_else(|| "OpenAI failed the batch".into()),
        })
        .unwrap_or_else(|| ItemError {
            code: "batch_failed".into(),
            message: "OpenAI failed the batch without saying why".into(),
        })
}
