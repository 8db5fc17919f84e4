//! The individual executor: runs the items of individual-mode jobs as one Chat
//! Completions call each, under the governor, writing each result as it arrives (so a
//! restart never calls again for an item that already succeeded). Items come in small
//! shards claimed round-robin across jobs, so a 5,000-item job cannot starve a 5-item one.
//! A failed call is judged by `pipeline::retry`: a retryable one (no answer, 5xx, 429) sends
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
use crate::domain::{Item, ItemError, ItemStatus, Job, JobStatus, Mode, ShardStatus};
use crate::pipeline::kernel::run_shards;
use crate::pipeline::outcomes::{api_error, apply_completion, unfinished};
use crate::pipeline::retry::{self, REQUEST_FAILED};
use crate::pipeline::{StepError, WorkerContext, INDIVIDUAL_SHARD_ITEMS};
use crate::providers::ProviderError;
use crate::store::{job_cancelled_error, LeasedShard, Leftover, Verdict};

/// What the executor shares between its tasks.
#[derive(Clone)]
pub struct Executor {
    pub ctx: WorkerContext,
    pub governor: Governor,
    /// Calls in flight on this replica, across all jobs.
    pub slots: Arc<Semaphore>,
}

impl Executor {
    pub fn new(ctx: WorkerContext, governor: Governor) -> Self {
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
        let wanted = (free / INDIVIDUAL_SHARD_ITEMS as i64).max(1);
        let shards = self
            .ctx
            .store
            .claim_individual_shards(&self.ctx.replica, self.ctx.lease(), wanted)
            .await?;
        let n = shards.len();
        let claimed = shards.into_iter().map(|s| (s, ())).collect();
        run_shards(&self.ctx, "individual shard", claimed, |shard, (), _| {
            let this = self.clone();
            async move { this.run_shard(shard).await }
        })
        .await;
        Ok(n)
    }

    async fn run_shard(&self, shard: LeasedShard) -> Result<(), StepError> {
        let ctx = &self.ctx;
        if shard.status == ShardStatus::Planned
            && !ctx.store.start_individual_shard(&shard.lease).await?
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
                        &shard.lease,
                        std::slice::from_ref(&verdict),
                        max_attempts,
                    )
                    .await
                    .map(|_| ())
            });
        }
        while let Some(joined) = calls.join_next().await {
            joined??;
        }
        if stop.load(Ordering::Relaxed) {
            return self.close(&shard).await;
        }
        ctx.shard_done(&shard, None).await
    }

    /// Ends the shard of a job that stopped: what did not run is cancelled (for a
    /// cancelling job; a finished job has nothing left to run).
    async fn close(&self, shard: &LeasedShard) -> Result<(), StepError> {
        let ctx = &self.ctx;
        let settled = ctx
            .store
            .settle_shard_items(&shard.lease, &job_cancelled_error(), Leftover::Cancel)
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

    /// The request body of one item's call, and the tokens the governor counts for it.
    fn request(&self, job: &Job, item: &Item) -> (serde_json::Value, u32) {
        let settings = &self.ctx.settings;
        let opts = RequestOptions {
            model: &job.model,
            detail: job.detail,
            max_completion_tokens: settings.openai.max_completion_tokens,
        };
        let body = chat_request_body(&job.analyzer, &item.image, &opts);
        let dims = (item.width, item.height);
        let default = (
            settings.intake.default_image_width,
            settings.intake.default_image_height,
        );
        let tokens = chat_request_input_tokens(&body, &|_| match dims {
            (Some(w), Some(h)) => Some((w as u32, h as u32)),
            _ => Some(default),
        }) + settings.openai.max_completion_tokens;
        (body, tokens)
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
        let (body, tokens) = self.request(job, item);
        let mut outcome = unfinished(item.custom_id.clone(), Mode::Individual);
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
            match ctx.provider.chat_completion(&body).await {
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
                Err(ProviderError::Api {
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

fn error_of(err: &ProviderError) -> ItemError {
    match err {
        ProviderError::Api { status, body, .. } => {
            let envelope = serde_json::json!({"error": {"code": body.code, "message": body.message, "type": body.r#type}});
            api_error(*status, &envelope)
        }
        ProviderError::Transport(_) => ItemError {
            code: REQUEST_FAILED.into(),
            message: err.to_string(),
        },
        ProviderError::Decode(_) => ItemError {
            code: "invalid_response".into(),
            message: err.to_string(),
        },
        ProviderError::Io(_) | ProviderError::Config(_) => ItemError {
            code: "client_error".into(),
            message: err.to_string(),
        },
    }
}
