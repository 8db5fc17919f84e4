//! The individual executor: runs the items of individual-mode jobs as one Chat
//! Completions call each, under the governor, writing each result as it arrives (so a
//! restart never calls again for an item that already succeeded). Items come in small
//! shards claimed round-robin across jobs, so a 5,000-item job cannot starve a 5-item one.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Semaphore;

use super::governor::Governor;
use crate::analyzer::{chat_request_body, OutputValidator, RequestOptions};
use crate::batch::ingest::{api_error, apply_completion};
use crate::batch::{BatchContext, StepError};
use crate::cost::text_tokens::chat_request_input_tokens;
use crate::domain::{Item, ItemError, ItemOutcome, ItemStatus, Job, Mode, Shard, ShardStatus};
use crate::openai::OpenAiError;

/// What the executor shares between its tasks.
#[derive(Clone)]
pub struct Executor {
    pub ctx: BatchContext,
    pub governor: Governor,
    /// Calls in flight on this replica, across all jobs.
    pub slots: Arc<Semaphore>,
}

impl Executor {
    pub fn new(ctx: BatchContext, governor: Governor) -> Self {
        let slots = Arc::new(Semaphore::new(ctx.settings.individual.concurrency));
        Executor {
            ctx,
            governor,
            slots,
        }
    }

    /// Claims shards while there are free call slots and runs them. Returns how many
    /// shards it finished.
    pub async fn run_once(&self) -> Result<usize, StepError> {
        let free = self.slots.available_permits() as i64;
        let wanted = (free / super::SHARD_ITEMS as i64).max(1);
        let shards = self
            .ctx
            .store
            .claim_individual_shards(&self.ctx.replica, self.ctx.lease(), wanted)
            .await?;
        let n = shards.len();
        let mut tasks = tokio::task::JoinSet::new();
        for shard in shards {
            let this = self.clone();
            tasks.spawn(async move {
                let (id, token) = (shard.id, shard.lease_token);
                if let Err(err) = this.run_shard(shard).await {
                    tracing::warn!(shard = %id, error = %err, "individual shard stopped; will resume");
                    this.ctx.retry_later(id, token).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    async fn run_shard(&self, shard: Shard) -> Result<(), StepError> {
        let token = shard.lease_token;
        let ctx = &self.ctx;
        if shard.status == ShardStatus::Planned
            && !ctx.store.start_individual_shard(shard.id, token).await?
        {
            return Err(StepError::LeaseLost);
        }
        let job = ctx.job(shard.job_id).await?;
        if job.status.is_terminal() || job.status == crate::domain::JobStatus::Cancelling {
            return Ok(());
        }
        let validator =
            Arc::new(OutputValidator::new(&job.analyzer.schema).map_err(StepError::Invalid)?);
        let items: Vec<Item> = ctx
            .store
            .shard_items(shard.id, None, i64::MAX)
            .await?
            .into_iter()
            .filter(|i| i.status == ItemStatus::Submitted)
            .collect();
        let job = Arc::new(job);
        let mut calls = tokio::task::JoinSet::new();
        for item in items {
            let this = self.clone();
            let job = job.clone();
            let validator = validator.clone();
            calls.spawn(async move {
                let outcome = this.call(&job, &item, &validator).await;
                this.ctx
                    .store
                    .record_shard_outcomes(shard.id, token, std::slice::from_ref(&outcome))
                    .await
            });
        }
        while let Some(joined) = calls.join_next().await {
            joined.map_err(|e| StepError::Invalid(e.to_string()))??;
        }
        if !ctx
            .store
            .set_shard_status(shard.id, token, ShardStatus::Done, None)
            .await?
        {
            return Err(StepError::LeaseLost);
        }
        ctx.store.release_shard(shard.id, token).await?;
        ctx.finish_job(shard.job_id).await?;
        Ok(())
    }

    /// One item, one call: waits for a slot and the governor, retries 429s the client
    /// gave up on after the pause they asked for.
    async fn call(&self, job: &Job, item: &Item, validator: &OutputValidator) -> ItemOutcome {
        let ctx = &self.ctx;
        let opts = RequestOptions {
            model: &job.model,
            detail: job.detail,
            max_completion_tokens: ctx.settings.openai.max_completion_tokens,
        };
        let body = chat_request_body(&job.analyzer, &item.image, &opts);
        let dims = (item.width, item.height);
        let default = (
            ctx.settings.intake.default_image_width,
            ctx.settings.intake.default_image_height,
        );
        let tokens = chat_request_input_tokens(&body, &|_| match dims {
            (Some(w), Some(h)) => Some((w as u32, h as u32)),
            _ => Some(default),
        }) + ctx.settings.openai.max_completion_tokens;
        let mut outcome = ItemOutcome {
            custom_id: item.custom_id.clone(),
            status: ItemStatus::Failed,
            output: None,
            error: None,
            usage: None,
            cost_pico_usd: None,
            individual_pico_usd: None,
            run_mode: Mode::Individual,
            resolved_model: None,
        };
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut rate_limited = 0;
        loop {
            self.governor.acquire(&job.model, tokens).await;
            match ctx.openai.chat_completion(&body).await {
                Ok(response) => {
                    self.governor
                        .observe(&job.model, &response.rate_limits)
                        .await;
                    apply_completion(
                        &ctx.prices,
                        &mut outcome,
                        &response.completion,
                        &job.model,
                        validator,
                    );
                    return outcome;
                }
                Err(OpenAiError::Api {
                    status: 429,
                    retry_after,
                    body,
                    ..
                }) if body.code.as_deref() != Some("insufficient_quota") && rate_limited < 5 => {
                    rate_limited += 1;
                    let wait = retry_after.unwrap_or(std::time::Duration::from_secs(1));
                    self.governor.pause(&job.model, wait).await;
                }
                Err(err) => {
                    outcome.error = Some(error_of(&err));
                    tracing::debug!(job = %job.id, item = %item.custom_id, error = %err, at = %Utc::now(), "individual call failed");
                    return outcome;
                }
            }
        }
    }
}

fn error_of(err: &OpenAiError) -> ItemError {
    match err {
        OpenAiError::Api { status, body, .. } => {
            let envelope = serde_json::json!({"error": {"code": body.code, "message": body.message, "type": body.r#type}});
            api_error(*status, &envelope)
        }
        other => ItemError {
            code: "request_failed".into(),
            message: other.to_string(),
        },
    }
}
