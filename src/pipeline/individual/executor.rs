//! The individual executor: runs the items of individual-mode jobs as one Chat
//! Completions call each, under the governor, writing each result as it arrives (so a
//! restart never calls again for an item that already succeeded). Items come in small
//! shards claimed round-robin across jobs, so a 5,000-item job cannot starve a 5-item one.
//! A failed call is judged by `batch::retry`: a retryable one (no answer, 5xx, 429) sends
//! the item back to be planned into a new shard while attempts remain. A cancelled job
//! gets no further call: each call checks first, and what did not run is cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::governor::Governor;
use crate::analyzer::{chat_request_body, OutputValidator, RequestOptions};
use crate::cost::text_tokens::chat_request_input_tokens;
use crate::domain::{
    Item, ItemError, ItemOutcome, ItemStatus, Job, JobStatus, Mode, Shard, ShardStatus,
};
use crate::pipeline::batch::ingest::{api_error, apply_completion};
use crate::pipeline::batch::retry::{self, REQUEST_FAILED};
use crate::pipeline::batch::{BatchContext, StepError};
use crate::providers::openai::OpenAiError;
use crate::store::{job_cancelled_error, Leftover, Verdict};

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
                let keeper = this.ctx.keep_lease(id, token);
                let result = this.run_shard(shard).await;
                keeper.stop().await;
                this.ctx
                    .settle_step(id, token, result, "individual shard")
                    .await;
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
        if job.status.is_terminal() || job.status == JobStatus::Cancelling {
            return self.close(&shard).await;
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
        let stop = Arc::new(AtomicBool::new(false));
        let max_attempts = ctx.max_attempts();
        let mut calls = tokio::task::JoinSet::new();
        for item in items {
            let this = self.clone();
            let job = job.clone();
            let validator = validator.clone();
            let stop = stop.clone();
            calls.spawn(async move {
                let Some(verdict) = this.call(&job, &item, &validator, &stop).await else {
                    return Ok(());
                };
                this.ctx
                    .store
                    .settle_shard_outcomes(
                        shard.id,
                        token,
                        std::slice::from_ref(&verdict),
                        max_attempts,
                    )
                    .await
                    .map(|_| ())
            });
        }
        while let Some(joined) = calls.join_next().await {
            joined.map_err(|e| StepError::Invalid(e.to_string()))??;
        }
        if stop.load(Ordering::Relaxed) {
            return self.close(&shard).await;
        }
        ctx.shard_done(&shard, None).await
    }

    /// Ends the shard of a job that stopped: what did not run is cancelled (for a
    /// cancelling job; a finished job has nothing left to run).
    async fn close(&self, shard: &Shard) -> Result<(), StepError> {
        let (ctx, token) = (&self.ctx, shard.lease_token);
        let settled = ctx
            .store
            .settle_shard_items(shard.id, token, &job_cancelled_error(), Leftover::Cancel)
            .await?;
        ctx.shard_done(shard, None).await?;
        tracing::info!(job = %shard.job_id, shard = %shard.id, cancelled = settled.cancelled,
            "individual shard stopped: the job is cancelled");
        Ok(())
    }

    /// Whether the job stopped (cancelling or finished); once seen, remembered in `stop`
    /// so the shard's other calls skip the database.
    async fn stopped(&self, job_id: Uuid, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let stopped = match self.ctx.store.get_job(None, job_id).await {
            Ok(Some(job)) => job.status == JobStatus::Cancelling || job.status.is_terminal(),
            Ok(None) => true,
            // Not knowing is no reason to stop; the call's result is written fenced.
            Err(_) => false,
        };
        if stopped {
            stop.store(true, Ordering::Relaxed);
        }
        stopped
    }

    /// One item, one call: waits for a slot and the governor. A 429 (which the client hands
    /// back at once) feeds its headers to the governor and pauses every sender to the
    /// model for its `retry-after` (1 s when absent), then this call tries again, up to 5
    /// times; after that it fails retryable, for the retry pass to take up.
    /// `None` when the job was cancelled before the call went out.
    async fn call(
        &self,
        job: &Job,
        item: &Item,
        validator: &OutputValidator,
        stop: &AtomicBool,
    ) -> Option<Verdict> {
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
            let taken = self.governor.acquire(&job.model, tokens).await;
            // Checked after every wait: a cancel stops the call at once. A 429 that came
            // back to another call during that check holds this one too.
            if self.stopped(job.id, stop).await
                || (self.governor.hold(&job.model).await && self.stopped(job.id, stop).await)
            {
                return None;
            }
            match ctx.openai.chat_completion(&body).await {
                Ok(response) => {
                    self.governor
                        .observe(&job.model, &response.rate_limits)
                        .await;
                    if let Some(usage) = &response.completion.usage {
                        // What the limiter counts: the prompt and the completion asked for.
                        let counted = usage.prompt_tokens.max(0) as u32
                            + ctx.settings.openai.max_completion_tokens;
                        self.governor
                            .settle(&job.model, tokens, taken, counted)
                            .await;
                    }
                    apply_completion(
                        &ctx.prices,
                        &mut outcome,
                        &response.completion,
                        &job.model,
                        validator,
                    );
                    return Some(Verdict {
                        outcome,
                        retry: false,
                    });
                }
                Err(OpenAiError::Api {
                    status: 429,
                    retry_after,
                    rate_limits,
                    body,
                }) if body.code.as_deref() != Some("insufficient_quota") && rate_limited < 5 => {
                    rate_limited += 1;
                    self.governor.observe(&job.model, &rate_limits).await;
                    let wait = retry_after.unwrap_or(std::time::Duration::from_secs(1));
                    self.governor.pause(&job.model, wait).await;
                }
                Err(err) => {
                    let error = error_of(&err);
                    let retry = retry::retryable(&error.code, err.status());
                    outcome.error = Some(error);
                    tracing::debug!(job = %job.id, item = %item.custom_id, error = %err, retry, at = %Utc::now(), "individual call failed");
                    return Some(Verdict { outcome, retry });
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
        OpenAiError::Transport(_) => ItemError {
            code: REQUEST_FAILED.into(),
            message: err.to_string(),
        },
        OpenAiError::Decode(_) => ItemError {
            code: "invalid_response".into(),
            message: err.to_string(),
        },
        OpenAiError::Io(_) | OpenAiError::Config(_) => ItemError {
            code: "client_error".into(),
            message: err.to_string(),
        },
    }
}
