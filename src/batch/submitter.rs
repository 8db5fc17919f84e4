//! Submission: writes a planned shard's JSONL, uploads it, creates its OpenAI batch and
//! stores every id the moment OpenAI returns it. Exactly one batch per shard: the upload's
//! filename and the batch's metadata carry the shard id, and a shard found in `creating`
//! after a crash adopts the batch OpenAI already has before creating anything.

use std::collections::BTreeMap;

use chrono::{Duration as ChronoDuration, Utc};

use super::{jsonl, BatchContext, StepError};
use crate::domain::{Shard, ShardKind, ShardStatus};
use crate::openai::{Batch, CreateBatchRequest};

pub const META_SHARD: &str = "batchlens_shard";
pub const META_JOB: &str = "batchlens_job";
pub const META_ATTEMPT: &str = "batchlens_attempt";

/// Submits every claimable shard once. Returns how many shards it moved.
pub async fn run_once(ctx: &BatchContext) -> Result<usize, StepError> {
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
    let mut tasks = tokio::task::JoinSet::new();
    for shard in shards {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let id = shard.id;
            let token = shard.lease_token;
            if let Err(err) = submit(&ctx, shard).await {
                tracing::warn!(shard = %id, error = %err, "submission failed; will retry");
                ctx.retry_later(id, token).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(n)
}

async fn submit(ctx: &BatchContext, mut shard: Shard) -> Result<(), StepError> {
    let token = shard.lease_token;
    let job = ctx.job(shard.job_id).await?;
    let mut fresh = false;
    if shard.status == ShardStatus::Planned {
        let template = jsonl::template(ctx, &job);
        let (path, bytes) =
            jsonl::write_shard_file(&ctx.store, &ctx.settings.data_dir, &shard, &template).await?;
        let filename = format!("batchlens-{}.jsonl", shard.id);
        let file = ctx.openai.upload_file(&path, &filename, "batch").await?;
        tracing::info!(job = %job.id, shard = %shard.id, file = %file.id, bytes, "input file uploaded");
        if !ctx.store.shard_uploaded(shard.id, token, &file.id).await? {
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
            ctx.openai.create_batch(&request).await?
        }
    };
    let next_poll =
        Utc::now() + ChronoDuration::milliseconds(ctx.settings.batch.poll_min_ms as i64);
    if !ctx
        .store
        .shard_submitted(shard.id, token, &batch.id, next_poll)
        .await?
    {
        return Err(StepError::LeaseLost);
    }
    ctx.store.release_shard(shard.id, token).await?;
    tracing::info!(job = %job.id, shard = %shard.id, batch = %batch.id, items = shard.item_count, "batch submitted");
    Ok(())
}

/// The OpenAI batch whose metadata names this shard, among batches created since the
/// shard was (OpenAI lists newest first).
pub async fn find_batch(ctx: &BatchContext, shard: &Shard) -> Result<Option<Batch>, StepError> {
    let since = (shard.created_at - ChronoDuration::minutes(10)).timestamp();
    let wanted = shard.id.to_string();
    let mut after: Option<String> = None;
    loop {
        let page = ctx.openai.list_batches(after.as_deref(), Some(100)).await?;
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
