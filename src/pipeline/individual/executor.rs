//! The individual executor: runs the items of individual-mode jobs as one Chat
//! Completions call each, under the governor, writing each result as it arrives (so a
//! restart never calls again for an item that already succeeded). Items come in small
//! shards claimed round-robin across jobs, so a 5,000-item job cannot starve a 5-item one.
//! A failed call is judged by `pipeline::retry`: a retryable one (no answer, 5xx, 429) sends
//! the item back to be planned into a new shard while attempts remain. A cancelled job
//! gets no further call: each call checks first, and what did not run is cancelled.
//!
//! Flex jobs run here too, each call with `service_tier: "flex"` (Batch API prices) and
//! `individual.flex_timeout_secs`. A flex 429 "resource unavailable" (no capacity, not a
//! rate limit: nothing for the governor) backs this call off alone; after
//! `individual.flex_fallback_after_secs` without capacity the item falls back, to a batch
//! of the job (sent back with mode `batch`, for the planner) or to a standard call at once,
//! as `individual.flex_fallback` says, and its result's `note` says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::governor::Governor;
use crate::analyzer::{chat_request_body, OutputValidator, RequestOptions};
use crate::config::{FlexFallback, IndividualSettings};
use crate::cost::text_tokens::chat_request_input_tokens;
use crate::domain::{Item, ItemError, ItemStatus, Job, JobStatus, Mode, ShardStatus};
use crate::pipeline::kernel::run_shards;
use crate::pipeline::outcomes::{api_error, apply_completion, unfinished};
use crate::pipeline::retry::{self, REQUEST_FAILED};
use crate::pipeline::{StepError, WorkerContext, INDIVIDUAL_SHARD_ITEMS};
use crate::providers::openai::RetryPolicy;
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
        let mut body = chat_request_body(&job.analyzer, &item.image, &opts);
        if job.mode == Mode::Flex {
            body["service_tier"] = serde_json::json!("flex");
        }
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
        let (mut body, tokens) = self.request(job, item);
        let run_mode = if job.mode == Mode::Flex {
            Mode::Flex
        } else {
            Mode::Individual
        };
        let mut outcome = unfinished(item.custom_id.clone(), run_mode);
        let mut flex_wait = FlexWait::new(&ctx.settings.individual);
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
            let timeout = (outcome.run_mode == Mode::Flex).then_some(flex_wait.timeout);
            match ctx.provider.chat_completion(&body, timeout).await {
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
                Err(err) if outcome.run_mode == Mode::Flex && err.capacity_unavailable() => {
                    if let Some(delay) = flex_wait.next_delay() {
                        tracing::debug!(job = %job.id, item = %item.custom_id, delay_ms = delay.as_millis() as u64,
                            "flex capacity unavailable: backing off");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let fallback = ctx.settings.individual.flex_fallback;
                    let note = flex_wait.fallback_note(fallback);
                    tracing::info!(job = %job.id, item = %item.custom_id, ?fallback, "flex capacity unavailable: falling back");
                    if let Err(e) = ctx
                        .store
                        .note_item(shard_id(item), &item.custom_id, &note)
                        .await
                    {
                        tracing::warn!(job = %job.id, item = %item.custom_id, error = %e, "the fallback note was not written");
                    }
                    match fallback {
                        FlexFallback::Batch => {
                            // Back to pending with mode batch: the planner puts it in a
                            // batch of the job.
                            outcome.run_mode = Mode::Batch;
                            outcome.error = Some(ItemError {
                                code: FLEX_UNAVAILABLE.into(),
                                message: note,
                            });
                            return Some(Verdict {
                                outcome,
                                retry: true,
                            });
                        }
                        FlexFallback::Standard => {
                            outcome.run_mode = Mode::Individual;
                            if let Some(fields) = body.as_object_mut() {
                                fields.remove("service_tier");
                            }
                        }
                    }
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

/// The error code of a flex item sent back to run in a batch (kept while it is pending).
pub const FLEX_UNAVAILABLE: &str = "flex_unavailable";

fn shard_id(item: &Item) -> Uuid {
    item.shard_id.unwrap_or_default()
}

/// One flex item's wait for capacity: the back-off after each "resource unavailable"
/// (full jitter, `individual.flex_backoff_ms` doubling up to `flex_backoff_max_ms`), until
/// `flex_fallback_after_secs` have passed since its first call.
struct FlexWait {
    started: Instant,
    answers: u32,
    give_up_after: Duration,
    backoff: RetryPolicy,
    /// Each flex call's client timeout.
    timeout: Duration,
}

impl FlexWait {
    fn new(cfg: &IndividualSettings) -> Self {
        FlexWait {
            started: Instant::now(),
            answers: 0,
            give_up_after: Duration::from_secs(cfg.flex_fallback_after_secs),
            backoff: RetryPolicy {
                max_retries: u32::MAX,
                backoff_base: Duration::from_millis(cfg.flex_backoff_ms),
                backoff_max: Duration::from_millis(cfg.flex_backoff_max_ms),
            },
            timeout: Duration::from_secs(cfg.flex_timeout_secs),
        }
    }

    /// How long to wait before trying flex again, or `None` when it is time to fall back.
    /// A wait never runs past the fallback time.
    fn next_delay(&mut self) -> Option<Duration> {
        let left = self.give_up_after.checked_sub(self.started.elapsed())?;
        if left.is_zero() {
            return None;
        }
        let delay = self.backoff.backoff(self.answers).min(left);
        self.answers += 1;
        Some(delay)
    }

    fn fallback_note(&self, to: FlexFallback) -> String {
        let waited = self.started.elapsed().as_secs();
        let tries = self.answers + 1;
        match to {
            FlexFallback::Batch => format!(
                "flex: no capacity (429 resource unavailable, {tries} tries over {waited} s, individual.flex_fallback_after_secs): fell back to the Batch API, at the same prices"
            ),
            FlexFallback::Standard => format!(
                "flex: no capacity (429 resource unavailable, {tries} tries over {waited} s, individual.flex_fallback_after_secs): fell back to a standard call, at standard prices"
            ),
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
