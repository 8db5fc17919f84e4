//! Submission: writes a planned shard's JSONL, uploads it, creates its OpenAI batch and
//! stores every id the moment OpenAI returns it. Exactly one batch per shard: the upload's
//! filename and the batch's metadata carry the shard id, and a shard found in `creating`
//! after a crash adopts the batch OpenAI already has before creating anything.
//!
//! Admission: before a planned shard is submitted, its estimated input tokens are weighed
//! against the model's batches in flight (across jobs and replicas, from the store). With
//! a known enqueued-token limit, a shard waits while the in-flight estimates plus its own
//! would pass it (unless nothing is in flight: a shard over the limit on its own still gets
//! its chance). After OpenAI refused a batch of the model for that limit, at most one batch
//! of the model is in flight until one completes. A shard of a cancelled job is closed
//! without a batch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};

use super::jsonl;
use super::tokens::{limit_for, TokenEstimator};
use crate::domain::{Job, JobStatus, ShardKind, ShardStatus};
use crate::pipeline::kernel::run_shards;
use crate::pipeline::retry::TOKEN_LIMIT_EXCEEDED;
use crate::pipeline::{LeaseWatch, StepError, WorkerContext};
use crate::providers::{Batch, CreateBatchRequest};
use crate::store::{job_cancelled_error, LeasedShard, Leftover, ModelLoad};

pub const META_SHARD: &str = "batchlens_shard";
pub const META_JOB: &str = "batchlens_job";
pub const META_ATTEMPT: &str = "batchlens_attempt";

/// What the submitter does with a claimed shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Submit,
    /// Hold it back for a while (the model's in-flight batches leave no room).
    Wait,
    /// Its job is cancelled, or it has nothing left to send: no batch.
    Close,
}

/// One model's in-flight batches as this run sees them: the store's view plus the shards
/// this run admitted.
#[derive(Debug, Clone, Copy)]
struct Room {
    load: ModelLoad,
    admitted: i64,
    admitted_tokens: i64,
}

impl Room {
    /// After a refusal, one batch at a time until one completes.
    fn throttled(&self) -> bool {
        match (self.load.last_refusal_at, self.load.last_completed_at) {
            (Some(refused), Some(completed)) => completed < refused,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn admits(&self, estimate: i64, limit: Option<u64>) -> bool {
        let in_flight = self.load.in_flight + self.admitted;
        let tokens = self.load.in_flight_tokens + self.admitted_tokens;
        if in_flight > 0 && self.throttled() {
            return false;
        }
        match limit {
            Some(limit) if in_flight > 0 => (tokens + estimate) as u64 <= limit,
            _ => true,
        }
    }
}

/// Submits every claimable shard once. Returns how many shards it claimed.
pub async fn run_once(ctx: &WorkerContext) -> Result<usize, StepError> {
    let shards = ctx
        .store
        .claim_shards(
            ShardKind::Batch,
            &[ShardStatus::Planned, ShardStatus::Creating],
            Utc::now(),
            &ctx.replica,
            ctx.lease(),
            4,
        )
        .await?;
    let n = shards.len();
    let mut rooms: HashMap<String, Room> = HashMap::new();
    let mut admitted = Vec::with_capacity(n);
    // Decisions are taken one shard at a time, so shards claimed together share the
    // model's room; the slow OpenAI calls then run side by side.
    for shard in shards {
        let (id, lease) = (shard.id, shard.lease);
        let decision = match decide(ctx, &shard, &mut rooms).await {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(shard = %id, error = %err, "submission check failed; will retry");
                ctx.retry_later(lease).await;
                continue;
            }
        };
        if decision == Decision::Wait {
            let wait = Duration::from_millis(ctx.settings.batch.poll_min_ms.max(1));
            if let Err(err) = ctx.store.renew_shard(&lease, wait).await {
                tracing::warn!(shard = %id, error = %err, "could not hold the shard back");
            }
            continue;
        }
        admitted.push((shard, decision));
    }
    run_shards(ctx, "submission", admitted, |shard, decision, lease| {
        let ctx = ctx.clone();
        async move {
            match decision {
                Decision::Close => close(&ctx, shard).await,
                _ => submit(&ctx, shard, &lease).await,
            }
        }
    })
    .await;
    Ok(n)
}

async fn decide(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    rooms: &mut HashMap<String, Room>,
) -> Result<Decision, StepError> {
    let job = ctx.job(shard.job_id).await?;
    if stopped(&job) {
        return Ok(Decision::Close);
    }
    let dims = ctx.store.shard_item_dims(shard.id).await?;
    if dims.is_empty() {
        return Ok(Decision::Close);
    }
    let estimate = TokenEstimator::new(ctx, &job).total(&dims) as i64;
    let room = match rooms.get(&shard.model) {
        Some(room) => *room,
        None => Room {
            load: ctx
                .store
                .batch_model_load(&shard.model, TOKEN_LIMIT_EXCEEDED)
                .await?,
            admitted: 0,
            admitted_tokens: 0,
        },
    };
    // A shard found in `creating` may already have its batch (a crash hid the answer):
    // it goes on to adopt or create without waiting.
    let admit = shard.status == ShardStatus::Creating
        || room.admits(estimate, limit_for(ctx, &shard.model));
    let mut room = room;
    if admit {
        // A `creating` shard is already in the store's in-flight count.
        if shard.status == ShardStatus::Planned {
            room.admitted += 1;
            room.admitted_tokens += estimate;
        }
        if !ctx.store.set_shard_estimate(&shard.lease, estimate).await? {
            return Err(StepError::LeaseLost);
        }
    } else {
        tracing::debug!(job = %job.id, shard = %shard.id, model = %shard.model, estimate,
            in_flight = room.load.in_flight + room.admitted, throttled = room.throttled(),
            "shard held back: the model's in-flight batches leave no room");
    }
    rooms.insert(shard.model.clone(), room);
    Ok(if admit {
        Decision::Submit
    } else {
        Decision::Wait
    })
}

/// The job no longer wants batches: cancelling, or finished.
fn stopped(job: &Job) -> bool {
    job.status == JobStatus::Cancelling || job.status.is_terminal()
}

/// Ends a shard that gets no batch. One found in `creating` may already have a batch (a
/// crash hid it): that one is adopted, and the poller cancels it for a cancelled job.
async fn close(ctx: &WorkerContext, shard: LeasedShard) -> Result<(), StepError> {
    if shard.status == ShardStatus::Creating {
        if let Some(batch) = find_batch(ctx, &shard).await? {
            return record_submitted(ctx, &shard, &batch).await;
        }
    }
    let job = ctx.job(shard.job_id).await?;
    let error = stopped(&job).then(job_cancelled_error);
    if let Some(error) = &error {
        ctx.store
            .settle_shard_items(&shard.lease, error, Leftover::Cancel)
            .await?;
    }
    ctx.shard_done(&shard, error.as_ref()).await?;
    tracing::info!(job = %shard.job_id, shard = %shard.id, "shard closed without a batch");
    Ok(())
}

async fn submit(
    ctx: &WorkerContext,
    mut shard: LeasedShard,
    lease: &LeaseWatch,
) -> Result<(), StepError> {
    let job = ctx.job(shard.job_id).await?;
    let mut fresh = false;
    if shard.status == ShardStatus::Planned {
        let template = jsonl::template(ctx, &job);
        let (path, bytes) =
            jsonl::write_shard_file(&ctx.store, &ctx.settings.data_dir, &shard, &template).await?;
        let filename = format!("batchlens-{}.jsonl", shard.id);
        let file = ctx.provider.upload_file(&path, &filename, "batch").await?;
        tracing::info!(job = %job.id, shard = %shard.id, file = %file.id, bytes, "input file uploaded");
        if !ctx.store.shard_uploaded(&shard.lease, &file.id).await? {
            return Err(StepError::LeaseLost);
        }
        shard.input_file_id = Some(file.id);
        shard.status = ShardStatus::Creating;
        fresh = true;
    }
    let input_file_id = shard.input_file_id.clone().ok_or_else(|| {
        StepError::Invalid(format!("shard {} is creating without a file", shard.id))
    })?;
    // A shard that was already `creating` when claimed may have a batch whose id a crash
    // hid from us: adopt it instead of creating a second one.
    let existing = if fresh {
        None
    } else {
        find_batch(ctx, &shard).await?
    };
    let batch = match existing {
        Some(batch) => {
            tracing::info!(job = %job.id, shard = %shard.id, batch = %batch.id, "adopted the batch a crash left behind");
            batch
        }
        None => {
            // Nothing can take a created batch back: never create one without the lease.
            if lease.lost() {
                return Err(StepError::LeaseLost);
            }
            let metadata = BTreeMap::from([
                (META_SHARD.to_string(), shard.id.to_string()),
                (META_JOB.to_string(), job.id.to_string()),
                (META_ATTEMPT.to_string(), shard.attempt.to_string()),
            ]);
            let request = CreateBatchRequest {
                input_file_id,
                endpoint: jsonl::ENDPOINT.to_string(),
                completion_window: "24h".to_string(),
                metadata: Some(metadata),
            };
            let batch = match ctx.provider.create_batch(&request).await {
                Ok(batch) => batch,
                Err(err) if err.quota_exhausted() => return out_of_quota(ctx, &shard, &err).await,
                Err(err) => return Err(err.into()),
            };
            // The window adoption exists for: created at OpenAI, not yet stored here.
            crate::failpoint::crash_if_armed("after_create_batch");
            batch
        }
    };
    record_submitted(ctx, &shard, &batch).await
}

/// OpenAI refused to create the batch because the account is out of quota: the shard's
/// items fail with `insufficient_quota`, as individual calls do, instead of the step being
/// retried until someone adds credit. Resubmitting the job then sends them again.
async fn out_of_quota(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    err: &crate::providers::ProviderError,
) -> Result<(), StepError> {
    let error = crate::domain::ItemError {
        code: "insufficient_quota".into(),
        message: err.to_string(),
    };
    ctx.store
        .settle_shard_items(&shard.lease, &error, Leftover::Fail)
        .await?;
    tracing::error!(job = %shard.job_id, shard = %shard.id, error = %err, "OpenAI refused the batch: the account is out of quota; its items failed");
    ctx.shard_done(shard, Some(&error)).await
}

/// Stores the batch id the moment it is known: shard `creating` → `submitted`.
async fn record_submitted(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    batch: &Batch,
) -> Result<(), StepError> {
    let next_poll =
        Utc::now() + ChronoDuration::milliseconds(ctx.settings.batch.poll_min_ms as i64);
    if !ctx
        .store
        .shard_submitted(&shard.lease, &batch.id, next_poll)
        .await?
    {
        return Err(StepError::LeaseLost);
    }
    tracing::info!(job = %shard.job_id, shard = %shard.id, batch = %batch.id, items = shard.item_count, attempt = shard.attempt, "batch submitted");
    metrics::counter!(crate::metrics::BATCHES_SUBMITTED).increment(1);
    Ok(())
}

/// The OpenAI batch whose metadata names this shard, among batches created since the
/// shard was (OpenAI lists newest first).
pub async fn find_batch(
    ctx: &WorkerContext,
    shard: &LeasedShard,
) -> Result<Option<Batch>, StepError> {
    let since = (shard.created_at - ChronoDuration::minutes(10)).timestamp();
    let wanted = shard.id.to_string();
    let mut after: Option<String> = None;
    loop {
        let page = ctx
            .provider
            .list_batches(after.as_deref(), Some(100))
            .await?;
        for batch in &page.data {
            let ours = batch
                .metadata
                .as_ref()
                .and_then(|m| m.get(META_SHARD))
                .is_some_and(|v| *v == wanted);
            if ours {
                return Ok(Some(batch.clone()));
            }
        }
        let older = page.data.last().is_some_and(|b| b.created_at < since);
        match page.data.last() {
            Some(last) if page.has_more && !older => after = Some(last.id.clone()),
            _ => return Ok(None),
        }
    }
}
