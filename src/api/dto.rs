//! Request and response bodies of the HTTP API, with their OpenAPI schemas.
//! Field names are fixed by ../shared/API.md.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::submit::JobInput;
use crate::app::views::JobSnapshot;
use crate::domain::{
    pico_to_usd, Analyzer, Counts, Detail, Fetch, Item, ItemError, ItemStatus, Job, JobStatus,
    Mode, ReusedFrom, Shard, Usage,
};
use crate::intake::{ItemInput, Rejection};

/// A job: an image set to analyse.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "spring-lookbook", "model": "gpt-4o-mini", "mode": "auto", "detail": "low",
    "metadata": {"campaign": "spring"},
    "items": [
        {"custom_id": "p1-0", "post_id": "p1", "image_url": "https://cdn.example.com/a.jpg"},
        {"post_id": "p2", "data_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}
    ]}))]
pub struct JobRequest {
    /// A label for people.
    #[schema(max_length = 200)]
    pub name: Option<String>,
    /// The OpenAI model; default from `openai.default_model`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", example = "gpt-4o-mini")]
    pub model: Option<String>,
    /// `auto` (default): below `individual.max_items` items flex calls when the model offers
    /// flex (`individual.flex_models`), else standard individual calls; from there batch.
    /// `flex`: one call per image with `service_tier: "flex"` at Batch API prices, only for
    /// the models in `individual.flex_models` (else a 422 naming `mode`).
    pub mode: Option<Mode>,
    /// How closely OpenAI looks at each image: `low` (default), `high`, `auto`.
    pub detail: Option<Detail>,
    /// Your own prompt and strict JSON schema; default the built-in fashion analyzer.
    pub analyzer: Option<Analyzer>,
    /// Free-form labels kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Receives one POST when the job finishes (completed, failed or cancelled): the job as
    /// `GET /v1/jobs/{id}` shows it, signed as Standard Webhooks describe; retried with
    /// back-off until it answers 2xx. https only.
    #[schema(example = "https://example.com/hooks/batchlens", max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Who downloads `image_url`s: `pass` (OpenAI, when it runs the item) or `inline`
    /// (batchlens, now: each checked, downscaled and estimated like `image_base64`, and a
    /// URL that cannot be fetched is a rejection with its reason; chunks appended to an
    /// open job are fetched the same way). Default from `intake.fetch` (`pass`).
    pub fetch: Option<Fetch>,
    /// Create the job in status `open` and add items with `POST /v1/jobs/{id}/items`.
    #[serde(default)]
    pub open: bool,
    /// `true` (default): an image this tenant already had analysed (same bytes by SHA-256,
    /// same analyzer, model and detail, within `intake.reuse_max_age_days`) succeeds at once
    /// with that analysis's `output`, `cost_usd` 0 and `reused_from`, and the same image
    /// twice in the job is sent once. `false`: every image is sent.
    pub reuse: Option<bool>,
    /// The images. May be empty only for an open job.
    #[serde(default)]
    pub items: Vec<ItemInput>,
}

impl From<JobRequest> for JobInput {
    fn from(r: JobRequest) -> Self {
        JobInput {
            name: r.name,
            model: r.model,
            mode: r.mode,
            detail: r.detail,
            analyzer: r.analyzer,
            metadata: r.metadata,
            webhook_url: r.webhook_url,
            fetch: r.fetch,
            open: r.open,
            reuse: r.reuse,
            items: r.items,
        }
    }
}

/// Items appended to an open job.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemsRequest {
    #[schema(min_items = 1)]
    pub items: Vec<ItemInput>,
}

/// How far a job has got. `processing`: lines in-flight batches report done, not yet
/// ingested. `percent` = (succeeded + failed + cancelled + processing) / (total − rejected)
/// × 100, at most 100.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub total: i64,
    pub pending: i64,
    pub submitted: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rejected: i64,
    pub cancelled: i64,
    /// Succeeded items answered from an identical analysis instead of being sent: an
    /// earlier job's (see Reuse), or another item of this job with the same image.
    pub reused: i64,
    pub processing: i64,
    #[schema(example = 0.0)]
    pub percent: f64,
}

impl From<Counts> for Progress {
    fn from(c: Counts) -> Self {
        Progress::new(c, 0)
    }
}

impl Progress {
    /// The counters with `processing` batch lines done but not ingested.
    pub fn new(c: Counts, processing: i64) -> Self {
        Progress {
            total: c.total,
            pending: c.pending,
            submitted: c.submitted,
            succeeded: c.succeeded,
            failed: c.failed,
            rejected: c.rejected,
            cancelled: c.cancelled,
            reused: c.reused,
            processing,
            percent: c.percent_with(processing),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EstimateSummary {
    pub batch_usd: Option<f64>,
    pub individual_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostSummary {
    pub actual_usd: f64,
    pub individual_usd: f64,
    pub savings_usd: f64,
    /// Items whose model has no price: their cost is unknown and not in the sums.
    pub unpriced_items: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub results: String,
    pub posts: String,
    pub cost: String,
    pub events: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestCountsView {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

/// One OpenAI batch of the job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchView {
    pub id: Uuid,
    pub openai_batch_id: Option<String>,
    /// OpenAI's status once the batch exists, else ours (`planned`, `creating`).
    pub status: String,
    pub attempt: i32,
    pub items: i64,
    pub request_counts: RequestCountsView,
    pub error: Option<ItemError>,
    pub created_at: DateTime<Utc>,
}

impl From<&Shard> for BatchView {
    fn from(s: &Shard) -> Self {
        BatchView {
            id: s.id,
            openai_batch_id: s.openai_batch_id.clone(),
            status: s
                .batch_status
                .clone()
                .unwrap_or_else(|| s.status.as_str().to_string()),
            attempt: s.attempt,
            items: s.item_count,
            request_counts: RequestCountsView {
                total: s.request_total,
                completed: s.request_completed,
                failed: s.request_failed,
            },
            error: s.error.clone(),
            created_at: s.created_at,
        }
    }
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub name: Option<String>,
    pub status: JobStatus,
    pub mode: Mode,
    /// Why the job runs in its mode.
    pub mode_reason: String,
    pub model: String,
    pub detail: Detail,
    /// Whether images already analysed are answered from that analysis (see Reuse).
    pub reuse: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub progress: Progress,
    /// Items refused at intake, with the reason (this request's on POST; the job's first
    /// 100 on GET).
    pub rejected: Vec<Rejection>,
    pub estimate: EstimateSummary,
    pub cost: CostSummary,
    pub batches: Vec<BatchView>,
    /// The delivery to `webhook_url`, when the job has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    pub links: JobLinks,
}

/// Where a job's webhook delivery stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    #[schema(example = "https://example.com/hooks/batchlens")]
    pub url: String,
    /// `waiting` until the job finishes, then `pending` (being sent or retried),
    /// `delivered`, or `failed` (`webhooks.max_attempts` refused).
    #[schema(example = "delivered")]
    pub state: String,
    pub attempts: i32,
    /// Why the last attempt was not delivered (absent after a delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "the receiver answered HTTP 500")]
    pub last_error: Option<String>,
}

impl JobView {
    pub fn new(job: &Job, rejected: Vec<Rejection>, shards: &[Shard]) -> Self {
        let base = format!("/v1/jobs/{}", job.id);
        let actual = pico_to_usd(job.cost.actual_pico_usd);
        let individual = pico_to_usd(job.cost.individual_pico_usd);
        JobView {
            id: job.id,
            name: job.name.clone(),
            status: job.status,
            mode: job.mode,
            mode_reason: job.mode_reason.clone(),
            model: job.model.clone(),
            detail: job.detail,
            reuse: job.reuse,
            created_at: job.created_at,
            updated_at: job.updated_at,
            completed_at: job.completed_at,
            metadata: job.metadata.clone(),
            progress: Progress::new(job.counts, crate::domain::processing(shards)),
            rejected,
            estimate: EstimateSummary {
                batch_usd: job.estimate_batch_pico_usd.map(pico_to_usd),
                individual_usd: job.estimate_individual_pico_usd.map(pico_to_usd),
            },
            cost: CostSummary {
                actual_usd: actual,
                individual_usd: individual,
                savings_usd: pico_to_usd(job.cost.individual_pico_usd - job.cost.actual_pico_usd),
                unpriced_items: job.cost.unpriced_items,
            },
            batches: shards.iter().map(BatchView::from).collect(),
            webhook: job.webhook_url.as_ref().map(|url| WebhookView {
                url: url.clone(),
                state: job
                    .webhook_state
                    .map_or("waiting", |s| s.as_str())
                    .to_string(),
                attempts: job.webhook_attempts,
                last_error: job.webhook_error.clone(),
            }),
            links: JobLinks {
                results: format!("{base}/results"),
                posts: format!("{base}/posts"),
                cost: format!("{base}/cost"),
                events: format!("{base}/events"),
                self_: base,
            },
        }
    }
}

impl From<JobSnapshot> for JobView {
    fn from(s: JobSnapshot) -> Self {
        JobView::new(&s.job, s.rejected, &s.shards)
    }
}

/// The job as a webhook delivery carries it: exactly what `GET /v1/jobs/{id}` answers.
pub fn render_job(snapshot: JobSnapshot) -> serde_json::Value {
    serde_json::to_value(JobView::from(snapshot)).unwrap_or_default()
}

/// One Server-Sent Event of `GET /v1/jobs/{id}/events`, by its fields on the wire
/// (`event: progress` / `data: {…}`, then a blank line).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"event": "status", "data": "{\"status\":\"running\"}"}))]
pub struct JobEvent {
    pub event: JobEventKind,
    /// One line of JSON: the `Progress` object for `progress`, `{"status": <JobStatus>}`
    /// for `status`, `{"items": n, "reason": "retry"}` for `reopened` (a retry sent items
    /// back, so the next `progress` may be lower).
    pub data: String,
}

/// The kinds of job event.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobEventKind {
    Progress,
    Status,
    Reopened,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobPage {
    pub data: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    pub status: Option<JobStatus>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    pub status: Option<ItemStatus>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageView {
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        UsageView {
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

/// One image's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"custom_id": "p1-0", "post_id": "p1", "index": 0, "status": "succeeded",
    "output": {"category": "dress"}, "error": null, "note": null,
    "usage": {"input_tokens": 2900, "cached_input_tokens": 0, "output_tokens": 61, "reasoning_tokens": 0},
    "cost_usd": 0.000236, "attempts": 1, "mode": "batch", "model": "gpt-4o-mini-2024-07-18",
    "finished_at": "2026-11-29T12:30:00Z"}))]
pub struct ResultView {
    pub custom_id: String,
    pub post_id: Option<String>,
    pub index: i64,
    pub status: ItemStatus,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    pub error: Option<ItemError>,
    /// Intake's remark on an accepted image, else null: e.g. `mime_type "image/jpeg"
    /// disagrees with the bytes, which are a PNG (image/png); the bytes decide`. A flex
    /// item that fell back says so here too (`flex: no capacity (…): fell back to the
    /// Batch API, at the same prices`), and its `mode` is where it ran.
    pub note: Option<String>,
    pub usage: Option<UsageView>,
    /// What this image cost; null when not run yet or the model has no price.
    pub cost_usd: Option<f64>,
    /// The same usage at standard (individual-call) prices.
    pub individual_usd: Option<f64>,
    pub attempts: i32,
    /// The mode that ran it: `batch`, `individual` or `flex`.
    pub mode: Option<Mode>,
    /// The model snapshot OpenAI reported.
    pub model: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The analysis this result was taken from when the image was not sent itself (an
    /// earlier job's, or this job's item with the same image); its cost and tokens are 0.
    pub reused_from: Option<ReusedFrom>,
}

impl From<&Item> for ResultView {
    fn from(i: &Item) -> Self {
        ResultView {
            custom_id: i.custom_id.clone(),
            post_id: i.post_id.clone(),
            index: i.position,
            status: i.status,
            output: i.output.clone(),
            error: i.error.clone(),
            note: i.note.clone(),
            usage: i.usage.map(UsageView::from),
            cost_usd: i.cost_pico_usd.map(pico_to_usd),
            individual_usd: i.individual_pico_usd.map(pico_to_usd),
            attempts: i.attempts,
            mode: i.run_mode,
            model: i.resolved_model.clone(),
            finished_at: i.finished_at,
            reused_from: i.reused_from.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultPage {
    pub data: Vec<ResultView>,
    pub next_cursor: Option<String>,
}

/// The results of one post.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostView {
    /// null groups the items that had no post_id.
    pub post_id: Option<String>,
    pub items: Vec<ResultView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostPage {
    pub data: Vec<PostView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PostsQuery {
    /// Posts per page, 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}
