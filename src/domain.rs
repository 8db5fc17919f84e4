//! The vocabulary every layer shares: job, item and shard states, modes, usage.
//! Plain data only: no axum, no sqlx, no I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownVariant { kind: stringify!($name), value: other.to_string() }),
                }
            }
        }
    };
}

/// A string that names no variant of the enum it was parsed as.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

string_enum!(
    /// Where a job is in its life.
    JobStatus {
        Open => "open",
        Queued => "queued",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelling => "cancelling",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// The delivery a finished job with a `webhook_url` owes.
    WebhookState {
        Pending => "pending",
        Delivered => "delivered",
        Failed => "failed",
    }
);

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

string_enum!(
    /// Where one image is in its life.
    ItemStatus {
        Pending => "pending",
        Submitted => "submitted",
        Succeeded => "succeeded",
        Failed => "failed",
        Rejected => "rejected",
        Cancelled => "cancelled",
    }
);

impl ItemStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Rejected | Self::Cancelled
        )
    }
}

string_enum!(
    /// How a job's items are run.
    Mode {
        Auto => "auto",
        Batch => "batch",
        Individual => "individual",
        /// One Chat Completions call per item with `service_tier: "flex"`: Batch API
        /// prices, answers in seconds to minutes, for the models that offer it.
        Flex => "flex",
    }
);

impl Mode {
    /// Billed at Batch API prices (batch and flex) rather than standard ones.
    pub fn batch_prices(self) -> bool {
        matches!(self, Self::Batch | Self::Flex)
    }
}

string_enum!(
    /// The `detail` OpenAI is asked to look at each image with.
    Detail {
        Low => "low",
        High => "high",
        Auto => "auto",
    }
);

string_enum!(
    /// Who downloads a job's `image_url`s.
    Fetch {
        /// OpenAI fetches each URL itself when it runs the item.
        Pass => "pass",
        /// batchlens fetches each URL at intake and treats the bytes as an inline image.
        Inline => "inline",
    }
);

string_enum!(
    /// Our side of one OpenAI batch (a shard of a job).
    ShardStatus {
        /// Items assigned; no file uploaded yet.
        Planned => "planned",
        /// Input file uploaded; the batch is about to be created (or was, and a crash
        /// hid the answer: reconcile before creating again).
        Creating => "creating",
        /// The OpenAI batch exists and is being polled.
        Submitted => "submitted",
        /// OpenAI finished it; its files are being read into items.
        Ingesting => "ingesting",
        /// Every item of the shard is accounted for.
        Done => "done",
        /// The shard could not run (OpenAI refused it); its items were failed.
        Failed => "failed",
    }
);

string_enum!(
    /// How a shard's items are run.
    ShardKind {
        /// One OpenAI batch.
        Batch => "batch",
        /// One Chat Completions call per item.
        Individual => "individual",
    }
);

/// The lines in-flight batches already report done (`request_counts.completed + failed`)
/// whose results are not ingested yet: `progress.processing`.
pub fn processing(shards: &[Shard]) -> i64 {
    shards
        .iter()
        .filter(|s| s.kind == ShardKind::Batch && s.status == ShardStatus::Submitted)
        .map(|s| s.request_completed + s.request_failed)
        .sum()
}

impl ShardStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Token usage of one request, as OpenAI reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input_tokens: i64,
    /// The part of `input_tokens` served from the prompt cache.
    pub cached_input_tokens: i64,
    /// All output tokens, reasoning tokens included.
    pub output_tokens: i64,
    /// The part of `output_tokens` spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: i64,
}

/// The counters a dashboard reads, kept on the job row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: i64,
    pub pending: i64,
    pub submitted: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub rejected: i64,
    pub cancelled: i64,
    /// Succeeded items answered from another identical analysis (an earlier job's, or a
    /// duplicate's in this job) instead of being sent: `progress.reused`.
    pub reused: i64,
}

impl Counts {
    pub fn terminal(&self) -> i64 {
        self.succeeded + self.failed + self.rejected + self.cancelled
    }

    /// The items that are work: all but the rejected ones.
    pub fn work(&self) -> i64 {
        self.total - self.rejected
    }

    /// The work done, `processing` in-flight batch lines included (at most [`Self::work`]):
    /// what `progress.percent` counts.
    pub fn done_with(&self, processing: i64) -> i64 {
        (self.succeeded + self.failed + self.cancelled + processing.max(0)).min(self.work())
    }

    /// API.md's `progress.percent` with no batch lines in flight.
    pub fn percent(&self) -> f64 {
        self.percent_with(0)
    }

    /// (items with an outcome + `processing`) / (total − rejected) × 100, one decimal,
    /// at most 100: rejected images are not work.
    pub fn percent_with(&self, processing: i64) -> f64 {
        let work = self.work();
        if work <= 0 {
            return 0.0;
        }
        let p = (self.done_with(processing) as f64 * 100.0 / work as f64).min(100.0);
        (p * 10.0).round() / 10.0
    }

    pub fn get(&self, status: ItemStatus) -> i64 {
        match status {
            ItemStatus::Pending => self.pending,
            ItemStatus::Submitted => self.submitted,
            ItemStatus::Succeeded => self.succeeded,
            ItemStatus::Failed => self.failed,
            ItemStatus::Rejected => self.rejected,
            ItemStatus::Cancelled => self.cancelled,
        }
    }
}

/// Money as integer pico-dollars (1e-12 USD), so sums never drift: a token priced at
/// P USD per 1M tokens costs exactly P×1e6 pico-dollars, an integer for every price
/// with up to six decimals. An i64 holds up to about 9.2 million USD.
pub type PicoUsd = i64;

pub fn pico_to_usd(pico: PicoUsd) -> f64 {
    pico as f64 / 1e12
}

/// The analyzer a job runs: a prompt and the strict JSON schema its answer must fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Analyzer {
    /// What to ask about each image: 1 to 20,000 characters, not only white space.
    #[schema(min_length = 1, max_length = 20000, pattern = "\\S")]
    pub prompt: String,
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// Cost sums kept on the job row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostSums {
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    /// What was spent, in the mode that ran each item.
    pub actual_pico_usd: PicoUsd,
    /// The same usage at standard (non-batch) prices.
    pub individual_pico_usd: PicoUsd,
    /// Items whose model has no price: their cost is unknown, not zero.
    pub unpriced_items: i64,
    pub batch_items: i64,
    pub batch_pico_usd: PicoUsd,
    pub individual_items: i64,
    pub individual_mode_pico_usd: PicoUsd,
    pub flex_items: i64,
    pub flex_pico_usd: PicoUsd,
    /// What the reused items would have cost at Batch API prices, and at standard prices
    /// (the latter is part of `individual_pico_usd` too, so savings count them).
    pub reused_batch_pico_usd: PicoUsd,
    pub reused_individual_pico_usd: PicoUsd,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    pub tenant: String,
    pub name: Option<String>,
    pub model: String,
    pub requested_mode: Mode,
    /// The mode it runs in (`auto` resolved at submit).
    pub mode: Mode,
    pub mode_reason: String,
    pub detail: Detail,
    /// Shared: jobs with the same analyzer hold one parsed copy (see the store).
    pub analyzer: std::sync::Arc<Analyzer>,
    pub metadata: Option<serde_json::Value>,
    pub webhook_url: Option<String>,
    /// Who downloads the job's `image_url`s (chunks appended later too).
    pub fetch: Fetch,
    /// Whether images already analysed are answered from that analysis (`reuse`).
    pub reuse: bool,
    /// None until the job finishes (or without `webhook_url`).
    pub webhook_state: Option<WebhookState>,
    /// Delivery attempts made so far.
    pub webhook_attempts: i32,
    /// Why the last attempt was not delivered.
    pub webhook_error: Option<String>,
    pub status: JobStatus,
    pub counts: Counts,
    pub cost: CostSums,
    pub estimate_batch_pico_usd: Option<PicoUsd>,
    pub estimate_individual_pico_usd: Option<PicoUsd>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The first [`MAX_STORED_REJECTIONS`] items refused at intake, in position order
    /// (all of them are items with status `rejected`).
    pub rejections: Vec<Rejection>,
    /// Moves whenever anything the job's views (the job, its results, posts and cost)
    /// show changes: what the ETag `"v<version>"` is made of.
    pub version: i64,
}

/// Rejections a job row keeps for its view; the rest are read as rejected items.
pub const MAX_STORED_REJECTIONS: usize = 100;

/// An item that will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejection {
    /// The item's position in the job (0-based).
    #[schema(example = 2)]
    pub index: i64,
    /// The item's custom_id: the one given, or a generated one when that was unusable.
    #[schema(example = "item-2")]
    pub custom_id: String,
    /// What is wrong, for a person to fix.
    #[schema(
        example = "image_base64: not a PNG, JPEG, WEBP or GIF image (first bytes 25 50 44 46: looks like a PDF)"
    )]
    pub reason: String,
}

/// Everything needed to create a job row.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: Uuid,
    pub tenant: String,
    pub name: Option<String>,
    pub model: String,
    pub requested_mode: Mode,
    pub mode: Mode,
    pub mode_reason: String,
    pub detail: Detail,
    pub analyzer: Analyzer,
    pub metadata: Option<serde_json::Value>,
    pub webhook_url: Option<String>,
    pub fetch: Fetch,
    pub reuse: bool,
    /// `Open` (filled in chunks) or `Queued` (work starts now).
    pub status: JobStatus,
    pub estimate_batch_pico_usd: Option<PicoUsd>,
    pub estimate_individual_pico_usd: Option<PicoUsd>,
    pub created_at: DateTime<Utc>,
}

/// One image of a job, as accepted at intake (or rejected there).
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub custom_id: String,
    pub post_id: Option<String>,
    /// `https://…` or `data:image/…;base64,…`; empty for a rejected item.
    pub image: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// `Pending` or `Rejected`.
    pub status: ItemStatus,
    pub error: Option<ItemError>,
    /// A remark from intake on an accepted item (e.g. a `mime_type` the bytes contradict).
    pub note: Option<String>,
    /// SHA-256 (hex) of the image bytes as received; `None` for an `image_url` OpenAI
    /// fetches itself (its content can change) and for a rejected item.
    pub content_sha256: Option<String>,
    /// What a reuse lookup matches: the image's hash with the tenant, analyzer, model and
    /// detail (see `app::reuse`).
    pub reuse_key: Option<String>,
    pub reuse: ItemReuse,
}

/// The analysis a result was taken from: `reused_from` on the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReusedFrom {
    pub job_id: Uuid,
    pub custom_id: String,
}

/// An earlier analysis an accepted image is answered from, with what sending it again
/// would have cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Reused {
    pub from: ReusedFrom,
    pub output: serde_json::Value,
    /// The model snapshot that produced it.
    pub resolved_model: Option<String>,
    /// The earlier usage at this job's model's Batch API and standard prices (0 unpriced).
    pub batch_pico_usd: PicoUsd,
    pub individual_pico_usd: PicoUsd,
}

/// What reuse made of an accepted image.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ItemReuse {
    /// It is sent to the model.
    #[default]
    Sent,
    /// It succeeds at intake with an earlier analysis.
    From(Box<Reused>),
    /// The same image as the job's item at this position: it waits, in no shard, for
    /// that item's outcome.
    CopyOf(i64),
}

impl NewItem {
    /// A pending item with no dimensions and nothing from reuse (tests build on it).
    #[cfg(test)]
    pub fn pending(custom_id: &str, image: String) -> Self {
        NewItem {
            custom_id: custom_id.into(),
            post_id: None,
            image,
            width: None,
            height: None,
            status: ItemStatus::Pending,
            error: None,
            note: None,
            content_sha256: None,
            reuse_key: None,
            reuse: ItemReuse::Sent,
        }
    }

    /// Accepted and to be sent to the model (not reused, not a copy).
    pub fn is_sent(&self) -> bool {
        self.status == ItemStatus::Pending && !matches!(self.reuse, ItemReuse::CopyOf(_))
    }
}

/// Why an item failed or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemError {
    pub code: String,
    pub message: String,
}

/// One image as stored, with its result once it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub job_id: Uuid,
    /// Position in the job (0-based, in submission order): the `index` clients see.
    pub position: i64,
    pub custom_id: String,
    pub post_id: Option<String>,
    /// The stored image reference; empty for a rejected item, and when read as a page of
    /// results (those reads skip the column).
    pub image: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub status: ItemStatus,
    pub attempts: i32,
    pub shard_id: Option<Uuid>,
    pub output: Option<serde_json::Value>,
    pub error: Option<ItemError>,
    pub usage: Option<Usage>,
    /// `None` when not run yet or when the model has no price.
    pub cost_pico_usd: Option<PicoUsd>,
    pub individual_pico_usd: Option<PicoUsd>,
    /// The mode that ran it (`Batch`, `Individual` or `Flex`); for an item sent back to be
    /// run again, the mode it will run in (`Batch` after a flex fallback).
    pub run_mode: Option<Mode>,
    /// The model snapshot OpenAI reported.
    pub resolved_model: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Intake's remark on the item, if it made one.
    pub note: Option<String>,
    /// The analysis its result was taken from, when it was not sent itself.
    pub reused_from: Option<ReusedFrom>,
}

/// The outcome of running one item, written back in bulk.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    pub custom_id: String,
    /// `Succeeded` or `Failed`.
    pub status: ItemStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<ItemError>,
    pub usage: Option<Usage>,
    pub cost_pico_usd: Option<PicoUsd>,
    pub individual_pico_usd: Option<PicoUsd>,
    pub run_mode: Mode,
    pub resolved_model: Option<String>,
}

/// One OpenAI batch of a job, as we track it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub id: Uuid,
    pub job_id: Uuid,
    pub kind: ShardKind,
    pub attempt: i32,
    pub model: String,
    pub status: ShardStatus,
    pub item_count: i64,
    pub input_file_id: Option<String>,
    pub openai_batch_id: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// OpenAI's status string for the batch, as last polled.
    pub batch_status: Option<String>,
    pub request_total: i64,
    pub request_completed: i64,
    pub request_failed: i64,
    pub error: Option<ItemError>,
    pub poll_interval_ms: i64,
    pub next_poll_at: DateTime<Utc>,
    pub lease_token: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A lease on a row: who holds it and the token every later write must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub token: i64,
    pub until: DateTime<Utc>,
}

/// An entry in a job's event log (state changes and progress), for SSE and audits.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub job_id: Uuid,
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod progress_tests {
    use super::Counts;

    #[test]
    fn percent_counts_work_not_intake() {
        let c = Counts {
            total: 34,
            pending: 31,
            rejected: 3,
            ..Counts::default()
        };
        assert_eq!(c.percent(), 0.0, "rejections are not work");
        assert_eq!(c.percent_with(10), 32.3);
        assert_eq!(c.percent_with(40), 100.0, "never above 100");
        let none = Counts {
            total: 2,
            rejected: 2,
            ..Counts::default()
        };
        assert_eq!(none.percent_with(0), 0.0);
    }
}
