//! Persistence: one `Store` trait, a PostgreSQL and a SQLite backend, chosen by URL.
//!
//! Workers talk to each other only through these rows. Every background step claims rows
//! with a lease (`lease_owner`, `lease_until`, `lease_token`); every write that follows a
//! slow call presents the token it got and changes nothing when the token moved on
//! (fencing). Job counters and cost sums live on the job row and change in the same
//! transaction as the items they count.
//!
//! Reads are cheap by construction: a job's view is its row (counters, costs, its first
//! rejections) and its shards, never its items; item pages are keyset ranges of an index
//! that never read the image. `jobs.version` moves with every change a view shows: each
//! statement that writes the job row bumps it, and triggers bump it for shard changes
//! (every item writer also moves the job's counters, so items need none). Plain reads run
//! on read lanes (`lanes`: no pings around each query, unlike sqlx's pool); on SQLite a
//! matching version is answered from memory until the next commit (`versions`), and an
//! item page crosses from SQLite as one JSON value.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

mod budget;
mod common;
#[cfg(test)]
pub(crate) mod conformance;
mod core;
mod dialect;
mod lanes;
pub mod postgres;
pub mod sqlite;
mod versions;

pub use common::{job_cancelled_error, truncate_to_micros};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::{
    Event, Item, ItemError, ItemOutcome, ItemStatus, Job, JobStatus, Mode, NewItem, NewJob,
    PicoUsd, Shard, ShardKind, ShardStatus, WebhookState,
};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or belongs to another tenant).
    #[error("not found")]
    NotFound,
    /// The row's state forbids the change (e.g. appending to a job that is not open).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A custom_id is already used in the job.
    #[error("custom_id {0:?} is already used in this job")]
    DuplicateCustomId(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database URL names no backend this service has.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
}

/// Cursor for job listings: newest first, ties broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// An item the planner still has to put in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanItem {
    pub position: i64,
    /// Length of the stored image reference (URL or data URL) in bytes.
    pub image_bytes: i64,
    /// Stored dimensions (inline images); `None` for URLs.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// The mode an item sent back is to run in (`Batch` for a flex item falling back);
    /// `None` for one that never ran.
    pub run_mode: Option<crate::domain::Mode>,
}

/// One succeeded item's billed tokens and its stored dimensions (None for URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BilledUsage {
    pub dims: Option<(u32, u32)>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// An item's outcome with the pipeline's verdict on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: ItemOutcome,
    /// A failure worth another attempt (`batch::retry` decides): the item goes back to
    /// `pending` with no shard while its attempts are under the limit. Ignored for an
    /// outcome with usage: billed tokens are never thrown away, so cost counts once.
    pub retry: bool,
}

/// What becomes of a shard's items that are still pending or submitted when the shard
/// ends without an outcome for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// They fail for good with the error.
    Fail,
    /// Back to `pending` with no shard while attempts < `max_attempts`, else failed.
    Retry { max_attempts: i32 },
    /// Back to `pending` with no shard whatever their attempts, and the attempt that
    /// sent them is not counted: OpenAI refused the batch before running anything.
    Requeue,
    /// Cancelled (the job is being cancelled).
    Cancel,
}

/// How the items one settling call changed ended up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    pub succeeded: u64,
    pub failed: u64,
    /// Sent back to `pending` for another attempt.
    pub requeued: u64,
    pub cancelled: u64,
}

impl Settled {
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.requeued + self.cancelled
    }

    pub(crate) fn count(&mut self, status: ItemStatus) {
        match status {
            ItemStatus::Succeeded => self.succeeded += 1,
            ItemStatus::Pending => self.requeued += 1,
            ItemStatus::Cancelled => self.cancelled += 1,
            _ => self.failed += 1,
        }
    }

    /// Adds these to the `batchlens_items_settled_total` counters, and returns them.
    fn counted(self) -> Self {
        use crate::metrics::ITEMS_SETTLED;
        for (outcome, n) in [
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("requeued", self.requeued),
            ("cancelled", self.cancelled),
        ] {
            if n > 0 {
                metrics::counter!(ITEMS_SETTLED, "outcome" => outcome).increment(n);
            }
        }
        self
    }
}

impl std::ops::AddAssign for Settled {
    fn add_assign(&mut self, o: Settled) {
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.requeued += o.requeued;
        self.cancelled += o.cancelled;
    }
}

/// One model's batch shards as the submitter weighs them before creating another batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLoad {
    /// Batch shards of the model in `creating` or `submitted`: their batch is being
    /// created, or exists and is not done.
    pub in_flight: i64,
    /// Their `estimated_tokens`, summed.
    pub in_flight_tokens: i64,
    /// When a batch shard of the model last failed with the refusal code asked about.
    pub last_refusal_at: Option<DateTime<Utc>>,
    /// When a batch shard of the model last finished with its batch `completed`.
    pub last_completed_at: Option<DateTime<Utc>>,
}

/// A shard the planner decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct NewShard {
    pub id: Uuid,
    pub kind: ShardKind,
    pub attempt: i32,
    pub model: String,
    pub positions: Vec<i64>,
    pub next_poll_at: DateTime<Utc>,
    pub poll_interval_ms: i64,
}

/// What one poll of an OpenAI batch learned.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPoll {
    pub batch_status: String,
    pub request_total: i64,
    pub request_completed: i64,
    pub request_failed: i64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub next_poll_at: DateTime<Utc>,
    pub poll_interval_ms: i64,
}

/// What `idempotency_begin` found for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyState {
    /// The key was free and is now held by this request (status in flight).
    Started,
    /// Another request with this key is still being processed.
    InFlight { request_hash: String },
    /// A request with this key did its work (committed with the key marked) but its
    /// answer was never recorded: its process died in between. Not run again; answered
    /// from the job as it is now.
    Committed { request_hash: String, job_id: Uuid },
    /// A request with this key finished; its stored response is to be replayed.
    Completed {
        request_hash: String,
        job_id: Uuid,
        response: serde_json::Value,
    },
}

/// Spend of one tenant over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostTotals {
    pub jobs: i64,
    /// Images accepted into those jobs (rejected ones are not counted).
    pub images: i64,
    pub actual_pico_usd: PicoUsd,
    pub individual_pico_usd: PicoUsd,
}

/// The outcome of one webhook delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAttempt {
    pub state: WebhookState,
    /// When to try again (state `Pending`).
    pub retry_at: Option<DateTime<Utc>>,
    /// Why it was not delivered.
    pub error: Option<String>,
    /// The `webhook` event's data.
    pub detail: serde_json::Value,
}

/// A tenant's spend this month as a budget sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonthSpend {
    /// What finished jobs created since the month began cost.
    pub actual_pico_usd: PicoUsd,
    /// Jobs not finished yet: each at the larger of its estimate (for its mode) and what
    /// it has cost so far.
    pub in_flight_pico_usd: PicoUsd,
}

impl MonthSpend {
    pub fn total(&self) -> PicoUsd {
        self.actual_pico_usd + self.in_flight_pico_usd
    }
}

/// An API key stored in the database (its hash is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub prefix: String,
    pub tenant: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What `/metrics` reads from the database at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Jobs by status (statuses with no job are absent).
    pub jobs: Vec<(JobStatus, i64)>,
    /// Items of all jobs still `pending` and `submitted`.
    pub pending_items: i64,
    pub submitted_items: i64,
}

/// A held lease on a shard: the only way to write a leased shard. Only a claim makes one;
/// a write presenting a lease whose token moved on changes nothing (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLease {
    shard_id: Uuid,
    token: i64,
}

impl ShardLease {
    fn new(shard_id: Uuid, token: i64) -> Self {
        Self { shard_id, token }
    }

    pub fn shard_id(&self) -> Uuid {
        self.shard_id
    }

    pub fn token(&self) -> i64 {
        self.token
    }
}

/// A claimed shard with its lease; reads as the shard.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedShard {
    pub shard: Shard,
    pub lease: ShardLease,
}

impl LeasedShard {
    fn claimed(shard: Shard) -> Self {
        let lease = ShardLease::new(shard.id, shard.lease_token);
        Self { shard, lease }
    }
}

impl std::ops::Deref for LeasedShard {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.shard
    }
}

/// A step may update its copy of the shard; the lease stays the one the claim made.
impl std::ops::DerefMut for LeasedShard {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }
}

/// A held planning lease on a job, from [`PlanStore::claim_jobs_to_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLease {
    job_id: Uuid,
    token: i64,
}

impl JobLease {
    fn new(job_id: Uuid, token: i64) -> Self {
        Self { job_id, token }
    }

    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    pub fn token(&self) -> i64 {
        self.token
    }
}

/// A page of [`ItemStore::shard_lines`]: the rows the database returned, read in place.
pub struct LinePage(Box<dyn LineRows>);

/// One item of a [`LinePage`], borrowed from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub position: i64,
    pub custom_id: &'a str,
    pub image: &'a str,
}

/// A backend's rows behind a [`LinePage`].
pub(crate) trait LineRows: Send + Sync {
    fn len(&self) -> usize;
    fn line(&self, i: usize) -> StoreResult<Line<'_>>;
}

impl LinePage {
    pub(crate) fn new(rows: impl LineRows + 'static) -> Self {
        Self(Box::new(rows))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th line (below `len`); an error is a row that does not decode.
    pub fn line(&self, i: usize) -> StoreResult<Line<'_>> {
        self.0.line(i)
    }

    /// The page's lines in order.
    pub fn lines(&self) -> impl Iterator<Item = StoreResult<Line<'_>>> {
        (0..self.len()).map(|i| self.0.line(i))
    }
}

/// The store's methods, for `use crate::store::prelude::*`.
pub mod prelude {
    pub use super::{
        EventStore, IdempotencyStore, ItemStore, JobStore, KeyStore, PlanStore, ReportStore,
        ReuseStore, SettleStore, ShardStore, Store, WebhookStore,
    };
}

/// Jobs: creation, the open-job flow, reads, status changes and cancelling.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates the job and its items (positions 0..n in the given order) in one
    /// transaction, with counters set from the items' statuses.
    async fn create_job(&self, job: &NewJob, items: &[NewItem]) -> StoreResult<Job> {
        self.create_job_keyed(job, items, None).await
    }

    /// `create_job` for a request holding `idempotency_key` (in flight, the job's
    /// tenant's): the key is marked with the new job in the same transaction, as
    /// `append_items_keyed` marks a chunk's.
    async fn create_job_keyed(
        &self,
        job: &NewJob,
        items: &[NewItem],
        idempotency_key: Option<&str>,
    ) -> StoreResult<Job>;

    /// Appends items to an `open` job of this tenant (positions continue after the last).
    /// `Conflict` when the job is not open, `DuplicateCustomId` when a custom_id is taken,
    /// `NotFound` for an unknown job.
    async fn append_items(
        &self,
        tenant: &str,
        job_id: Uuid,
        items: &[NewItem],
    ) -> StoreResult<Job> {
        self.append_items_keyed(tenant, job_id, items, None).await
    }

    /// `append_items` for a request holding `idempotency_key` (in flight, this tenant's):
    /// the key is marked with the job in the same transaction, so a crash before the
    /// answer is recorded leaves a key that says the work is done
    /// (`IdempotencyState::Committed`), never one a retry would run again.
    async fn append_items_keyed(
        &self,
        tenant: &str,
        job_id: Uuid,
        items: &[NewItem],
        idempotency_key: Option<&str>,
    ) -> StoreResult<Job>;

    /// Closes an `open` job: status `queued`, mode and estimates set. `Conflict` when not
    /// open. A job with no pending item goes straight to its terminal status.
    async fn submit_open_job(
        &self,
        tenant: &str,
        job_id: Uuid,
        mode: Mode,
        mode_reason: &str,
        estimate_batch_pico_usd: Option<PicoUsd>,
        estimate_individual_pico_usd: Option<PicoUsd>,
    ) -> StoreResult<Job>;

    /// Sets an open job's estimates (of all its items so far, which a tenant's budget
    /// holds); false when the job is not open.
    async fn set_open_estimate(
        &self,
        job_id: Uuid,
        estimate_batch_pico_usd: Option<PicoUsd>,
        estimate_individual_pico_usd: Option<PicoUsd>,
    ) -> StoreResult<bool>;
    /// A job (with a tenant, only that tenant's) and all its shards, oldest first, in one
    /// statement: what the job's view is read from, never its items.
    async fn job_with_shards(
        &self,
        tenant: Option<&str>,
        id: Uuid,
    ) -> StoreResult<Option<(Job, Vec<Shard>)>>;

    /// The version of the tenant's job (see [`Job::version`]), reading nothing else.
    async fn job_version(&self, tenant: &str, id: Uuid) -> StoreResult<Option<i64>>;

    /// A job by id; with a tenant, only that tenant's.
    async fn get_job(&self, tenant: Option<&str>, id: Uuid) -> StoreResult<Option<Job>>;

    /// The tenant's jobs, newest first, strictly after the cursor.
    async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<JobStatus>,
        after: Option<JobCursor>,
        limit: i64,
    ) -> StoreResult<Vec<Job>>;

    /// Moves a job from one of `from` to `to`; false when it was in none of them.
    /// Sets `completed_at` when `to` is terminal and writes a `status` event.
    async fn transition_job(
        &self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> StoreResult<bool>;

    /// When no item of the job is pending or submitted and the job is queued, running or
    /// cancelling, makes it terminal: `cancelled` if it was cancelling, else `completed`
    /// when at least one item succeeded, else `failed`. Returns the new status if it
    /// changed.
    async fn finish_job_if_done(&self, id: Uuid) -> StoreResult<Option<JobStatus>>;

    /// Starts cancelling a job of this tenant, in one transaction: status `cancelling`,
    /// its pending items in no shard or in an individual shard `cancelled` at once
    /// (counters moved; a batch shard's are left to the submitter, which may be sending
    /// it), and the job `cancelled` right away when nothing of it is left. A job already
    /// cancelling is returned as it is. `Conflict` for a terminal job, `NotFound` for an
    /// unknown one.
    async fn cancel_job(&self, tenant: &str, job_id: Uuid) -> StoreResult<Job>;
}

/// Reading items.
#[async_trait]
pub trait ItemStore: Send + Sync {
    /// Items of a job in position order, strictly after `after_position`, without their
    /// image (`image` reads back empty): a page of results.
    async fn list_items(
        &self,
        job_id: Uuid,
        status: Option<ItemStatus>,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<Item>>;

    /// Items of a job ordered by (post_id NULLS LAST, position) strictly after the cursor
    /// `(post_id, position)`, for grouping by post; without their image, as `list_items`.
    async fn list_items_by_post(
        &self,
        job_id: Uuid,
        after: Option<(Option<String>, i64)>,
        limit: i64,
    ) -> StoreResult<Vec<Item>>;

    /// The job's item with this `custom_id`, if any.
    async fn get_item(&self, job_id: Uuid, custom_id: &str) -> StoreResult<Option<Item>>;

    /// Width and height of every pending item of the job (None for URLs), in position order.
    async fn pending_item_dims(&self, job_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>>;

    /// What the batch input file needs of the items assigned to the shard (position,
    /// custom_id, image), in position order, strictly after `after_position`: the rows
    /// as read, each line borrowed from its row rather than copied into an [`Item`].
    async fn shard_lines(
        &self,
        shard_id: Uuid,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<LinePage>;

    /// Items assigned to the shard, in position order, strictly after `after_position`.
    async fn shard_items(
        &self,
        shard_id: Uuid,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<Item>>;

    /// Width and height of the shard's pending and submitted items (None for URLs), in
    /// position order.
    async fn shard_item_dims(&self, shard_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>>;

    /// What OpenAI billed for up to `limit` of the job's succeeded items (the last ones
    /// first), with their dimensions: what estimates learn from.
    async fn billed_usage(&self, job_id: Uuid, limit: i64) -> StoreResult<Vec<BilledUsage>>;
}

/// Planning: leasing jobs with unassigned items and cutting them into shards.
#[async_trait]
pub trait PlanStore: Send + Sync {
    /// Leases up to `limit` jobs in status queued or running (mode batch or individual)
    /// that have pending items with no shard, whose lease is free or expired. Returns each
    /// job with its new lease.
    async fn claim_jobs_to_plan(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, JobLease)>>;

    /// Pending items of the job with no shard, in position order.
    async fn unassigned_items(&self, job_id: Uuid) -> StoreResult<Vec<PlanItem>>;

    /// Inserts the shards and assigns their items in one transaction, fenced by the job's
    /// lease. False (nothing written) when the token moved on.
    async fn create_shards(&self, lease: &JobLease, shards: &[NewShard]) -> StoreResult<bool>;

    /// Frees the job's lease if the token still matches.
    async fn release_job(&self, lease: &JobLease) -> StoreResult<()>;
}

/// Shards: claims with a lease, and every fenced step of a shard's life.
#[async_trait]
pub trait ShardStore: Send + Sync {
    /// Leases up to `limit` shards of this kind in one of `statuses` with
    /// `next_poll_at <= due` and a free or expired lease (oldest `next_poll_at` first).
    /// PostgreSQL: `FOR UPDATE SKIP LOCKED`.
    async fn claim_shards(
        &self,
        kind: ShardKind,
        statuses: &[ShardStatus],
        due: DateTime<Utc>,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<LeasedShard>>;

    /// Leases up to `limit` individual shards (planned, or submitted by a replica whose
    /// lease expired) of queued, running or cancelling jobs (the executor settles a
    /// cancelling job's leftovers), fairly: jobs with the fewest shards started so far go
    /// first (each job's oldest shard first), so a large job cannot starve a small one
    /// that arrives later.
    async fn claim_individual_shards(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<LeasedShard>>;

    /// Starts an individual shard: `planned` → `submitted`, its pending items →
    /// `submitted` (attempts + 1), counters moved, job `queued` → `running`. Fenced.
    async fn start_individual_shard(&self, lease: &ShardLease) -> StoreResult<bool>;

    /// Extends a held lease; false when the token moved on.
    async fn renew_shard(&self, lease: &ShardLease, lease_for: Duration) -> StoreResult<bool>;

    /// Frees a held lease (the shard stays in its status).
    async fn release_shard(&self, lease: &ShardLease) -> StoreResult<()>;

    async fn get_shard(&self, shard_id: Uuid) -> StoreResult<Option<Shard>>;

    /// All shards of these jobs in one statement, by job, each job's oldest first.
    async fn list_shards_of_jobs(&self, job_ids: &[Uuid]) -> StoreResult<Vec<Shard>>;

    /// All shards of a job, oldest first.
    async fn list_shards(&self, job_id: Uuid) -> StoreResult<Vec<Shard>>;

    /// Records the uploaded input file and moves the shard `planned` → `creating`.
    async fn shard_uploaded(&self, lease: &ShardLease, input_file_id: &str) -> StoreResult<bool>;

    /// Records the created OpenAI batch: shard `creating` → `submitted`, its pending
    /// items → `submitted` (attempts + 1), job counters moved, job `queued` → `running`.
    async fn shard_submitted(
        &self,
        lease: &ShardLease,
        openai_batch_id: &str,
        next_poll_at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Stores what a poll learned (status, counts, file ids, next poll).
    async fn shard_polled(&self, lease: &ShardLease, poll: &ShardPoll) -> StoreResult<bool>;

    /// Sets the shard's status (and error); no item changes.
    async fn set_shard_status(
        &self,
        lease: &ShardLease,
        status: ShardStatus,
        error: Option<&ItemError>,
    ) -> StoreResult<bool>;

    /// Stores the shard's estimated input tokens; fenced.
    async fn set_shard_estimate(&self, lease: &ShardLease, tokens: i64) -> StoreResult<bool>;

    /// The model's batch shards in flight and its last refusal (a shard failed with
    /// `refusal_code`) and completion, across all jobs.
    async fn batch_model_load(&self, model: &str, refusal_code: &str) -> StoreResult<ModelLoad>;
}

/// Settling a leased shard's items: outcomes, and what is left when a shard ends.
#[async_trait]
pub trait SettleStore: Send + Sync {
    /// Writes outcomes of the shard's items, each with its retry mark, already
    /// deduplicated by custom_id: the one writer behind
    /// [`SettleStore::record_shard_outcomes`] and [`SettleStore::settle_shard_outcomes`],
    /// which callers use instead.
    async fn settle_outcomes(
        &self,
        lease: &ShardLease,
        verdicts: &[(&ItemOutcome, bool)],
        max_attempts: i32,
    ) -> StoreResult<Settled>;

    /// Settles the shard's pending and submitted items with `error` as `leftover` says,
    /// and fails the shard when `fail_shard`: the one writer behind the `*_shard_items`
    /// methods and [`SettleStore::fail_shard`], which callers use instead.
    async fn settle_leftovers(
        &self,
        lease: &ShardLease,
        error: &ItemError,
        leftover: Leftover,
        fail_shard: bool,
    ) -> StoreResult<Settled>;

    /// Adds `note` to the result note of the shard's item `custom_id` while it is still
    /// `submitted` in that shard (after intake's note, if any): how a run went that its
    /// outcome does not say, e.g. a flex call falling back. Written before the outcome
    /// is settled, so the settle's version step shows it. Returns whether it was added.
    async fn note_item(&self, shard_id: Uuid, custom_id: &str, note: &str) -> StoreResult<bool>;

    /// Writes outcomes of the shard's items in one statement per call, fenced by the
    /// shard's lease. Only items of this shard still `submitted` change, so writing the
    /// same outcomes twice changes nothing. Job counters and cost sums move in the same
    /// transaction. Returns how many items changed.
    async fn record_shard_outcomes(
        &self,
        lease: &ShardLease,
        outcomes: &[ItemOutcome],
    ) -> StoreResult<u64> {
        let verdicts = common::dedup_verdicts(outcomes.iter().map(|o| (o, false)))?;
        let settled = self.settle_outcomes(lease, &verdicts, 0).await?;
        Ok(settled.counted().total())
    }

    /// Fails every item of the shard that is still pending or submitted with `error`,
    /// fenced, counters moved. Returns how many changed.
    async fn fail_shard_items(&self, lease: &ShardLease, error: &ItemError) -> StoreResult<u64> {
        let settled = self
            .settle_leftovers(lease, error, Leftover::Fail, false)
            .await?;
        Ok(settled.counted().total())
    }

    /// `record_shard_outcomes` with a verdict per outcome, in one transaction: a failure
    /// marked `retry` goes back to `pending` with no shard (its error kept, `finished_at`
    /// cleared) while the item's attempts are under `max_attempts`, becomes `cancelled`
    /// when the job is `cancelling`, and stays `failed` otherwise. Only items of the shard
    /// still `submitted` change, so settling the same verdicts twice changes nothing.
    async fn settle_shard_outcomes(
        &self,
        lease: &ShardLease,
        verdicts: &[Verdict],
        max_attempts: i32,
    ) -> StoreResult<Settled> {
        let verdicts = common::dedup_verdicts(verdicts.iter().map(|v| (&v.outcome, v.retry)))?;
        let settled = self.settle_outcomes(lease, &verdicts, max_attempts).await?;
        Ok(settled.counted())
    }

    /// Settles every item of the shard still pending or submitted with `error` as
    /// `leftover` says, fenced, counters moved, in one transaction. When the job is
    /// `cancelling`, items that `Retry` or `Requeue` would send back are cancelled instead.
    async fn settle_shard_items(
        &self,
        lease: &ShardLease,
        error: &ItemError,
        leftover: Leftover,
    ) -> StoreResult<Settled> {
        let settled = self.settle_leftovers(lease, error, leftover, false).await?;
        Ok(settled.counted())
    }

    /// `settle_shard_items`, and the shard `failed` with `error`, in one transaction: the
    /// planner never sees the items back before the failure (a refusal it plans by) that
    /// sent them, and a crash cannot leave a failed shard with unsettled items.
    async fn fail_shard(
        &self,
        lease: &ShardLease,
        error: &ItemError,
        leftover: Leftover,
    ) -> StoreResult<Settled> {
        let settled = self.settle_leftovers(lease, error, leftover, true).await?;
        Ok(settled.counted())
    }
}

/// A job's event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    async fn append_event(
        &self,
        job_id: Uuid,
        kind: &str,
        data: &serde_json::Value,
    ) -> StoreResult<()>;

    /// The id of the job's latest event (0 when it has none): where a watcher starts.
    async fn last_event_id(&self, job_id: Uuid) -> StoreResult<i64>;

    /// Events of a job with id greater than `after_id`, oldest first.
    async fn events_after(
        &self,
        job_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>>;
}

/// Idempotency keys of job creation and chunks. An in-flight key expires as a completed
/// one does: its holder sets a short expiry and renews it while it works, so a key whose
/// request died is free again soon.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the key for this request or reports who has it. Expired keys are free.
    async fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyState>;

    /// Stores the finished request's job and response under the key, kept until
    /// `expires_at`.
    async fn idempotency_complete(
        &self,
        tenant: &str,
        key: &str,
        job_id: Uuid,
        response: &serde_json::Value,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Extends the hold of a request still in flight on its key to `until`; false when
    /// the key is not in flight any more.
    async fn idempotency_renew(
        &self,
        tenant: &str,
        key: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Frees a key whose request failed before creating anything.
    async fn idempotency_abort(&self, tenant: &str, key: &str) -> StoreResult<()>;
}

/// Costs per tenant and the `/metrics` gauges.
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Sums jobs created in `[from, to)` for the tenant.
    async fn cost_totals(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<CostTotals>;

    /// Jobs by status and items waiting, over every tenant, for `/metrics`.
    async fn gauges(&self) -> StoreResult<Gauges>;

    /// The tenant's items accepted and not finished yet (pending or submitted), over all
    /// its jobs.
    async fn open_items(&self, tenant: &str) -> StoreResult<i64>;

    /// The tenant's spend on jobs created since `since`: finished jobs at their cost,
    /// unfinished ones at the larger of their estimate and their cost so far.
    async fn month_spend(&self, tenant: &str, since: DateTime<Utc>) -> StoreResult<MonthSpend>;
}

/// API keys created at run time (`batchlens keys`), stored as SHA-256.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a key's hash under its display prefix; `Conflict` when the prefix (or the
    /// hash) is taken.
    async fn insert_api_key(&self, sha256: &str, prefix: &str, tenant: &str) -> StoreResult<()>;

    /// Every stored key, oldest first.
    async fn list_api_keys(&self) -> StoreResult<Vec<StoredKey>>;

    /// Revokes the key with this prefix; false when there is none not yet revoked.
    async fn revoke_api_key(&self, prefix: &str) -> StoreResult<bool>;

    /// `(sha256, tenant)` of every key not revoked.
    async fn active_api_keys(&self) -> StoreResult<Vec<(String, String)>>;
}

/// Webhook deliveries owed by finished jobs.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Finished jobs whose webhook delivery is due, oldest due first, each claimed by
    /// moving its due time to now + `lease` (so no other replica delivers it meanwhile,
    /// and a crash mid-delivery lets one try again after). Returns each job with that
    /// new due time, the token that fences [`WebhookStore::webhook_attempted`].
    async fn claim_webhooks(
        &self,
        lease: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, DateTime<Utc>)>>;

    /// Records one delivery attempt, fenced by the claim's token: `state` (pending to try
    /// again at `retry_at`, delivered or failed), attempts + 1, `error` (None when
    /// delivered), and a `webhook` event with `detail`. False when the claim was lost.
    async fn webhook_attempted(
        &self,
        job_id: Uuid,
        claim: DateTime<Utc>,
        attempt: &WebhookAttempt,
    ) -> StoreResult<bool>;
}

/// What a verified OpenAI webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiWebhookReceipt {
    /// Its `webhook-id` was seen before (on any replica): nothing changed.
    pub replay: bool,
    /// In-flight shards of the batch made due for polling now.
    pub shards_due: u64,
}

/// OpenAI's own webhooks (batch events), received at `POST /v1/openai/webhooks`.
#[async_trait]
pub trait OpenAiWebhookStore: Send + Sync {
    /// Records a verified delivery's `webhook-id` and, the first time only, makes the
    /// submitted shards of `batch_id` due for polling now (marking them hinted, so a poll
    /// already in flight polls again instead of waiting out its interval): one transaction.
    async fn openai_webhook_received(
        &self,
        webhook_id: &str,
        batch_id: Option<&str>,
    ) -> StoreResult<OpenAiWebhookReceipt>;

    /// Forgets the ids received before `before`; returns how many.
    async fn forget_openai_webhooks(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}

/// How a rate budget row refills and how much it holds (requests and tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetRefill {
    pub requests_per_sec: f64,
    pub tokens_per_sec: f64,
    pub max_requests: f64,
    pub max_tokens: f64,
}

/// One step on a rate budget row, after refilling it to the database's now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetOp {
    /// One request and `tokens`, when the row is not paused, holds a request and
    /// `min(tokens, max_tokens)` tokens (a larger call leaves the level in debt).
    Take { tokens: f64 },
    /// Levels down to at most these (`None`: unchanged).
    LowerTo {
        requests: Option<f64>,
        tokens: Option<f64>,
    },
    /// Tokens taken (negative: given back); the level never exceeds `max_tokens`.
    AdjustTokens(f64),
    /// Nobody takes before this much time has passed (kept when a later pause is
    /// already set); the request level is emptied.
    Pause(Duration),
}

/// A rate budget row after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLevels {
    pub requests: f64,
    pub tokens: f64,
    /// How long the row is still paused.
    pub paused_for: Duration,
    /// The step was a take and it took.
    pub granted: bool,
}

/// The individual-mode rate budget every replica shares: one row per (account, model).
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// One step on the row of (`account`, `model`), in one `UPDATE … RETURNING` (a missing
    /// row is first inserted full). The refill uses the database's clock.
    async fn budget_step(
        &self,
        account: &str,
        model: &str,
        refill: &BudgetRefill,
        op: BudgetOp,
    ) -> StoreResult<BudgetLevels>;
}

/// A succeeded analysis another image can be answered from.
#[derive(Debug, Clone, PartialEq)]
pub struct Reusable {
    pub reuse_key: String,
    pub job_id: Uuid,
    pub custom_id: String,
    pub output: serde_json::Value,
    pub resolved_model: Option<String>,
    /// What OpenAI billed for it.
    pub usage: crate::domain::Usage,
    pub finished_at: DateTime<Utc>,
}

/// Finding analyses to reuse (see `app::reuse`).
#[async_trait]
pub trait ReuseStore: Send + Sync {
    /// Succeeded items with one of `keys`, finished at or after `since`, that were analysed
    /// themselves (not reused or copied), newest first: one indexed statement per 1,000
    /// keys.
    async fn find_reusable(
        &self,
        keys: &[&str],
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Reusable>>;

    /// The job's items with one of `keys` that are sent themselves (not copies or reused):
    /// `(reuse_key, position)`, first position first. What a chunk appended to an open job
    /// copies instead of sending the same image again.
    async fn job_originals(&self, job_id: Uuid, keys: &[&str]) -> StoreResult<Vec<(String, i64)>>;
}

/// Everything the service keeps, by concern; `DynStore` names it.
#[async_trait]
pub trait Store:
    JobStore
    + ItemStore
    + PlanStore
    + ShardStore
    + SettleStore
    + EventStore
    + IdempotencyStore
    + ReportStore
    + WebhookStore
    + OpenAiWebhookStore
    + BudgetStore
    + KeyStore
    + ReuseStore
    + Send
    + Sync
    + 'static
{
    /// Answers when the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Closes the pool (graceful shutdown).
    async fn close(&self);
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a URL names and brings its schema up to date: `postgres://…` or
/// `postgresql://…` for PostgreSQL, `sqlite:…` for SQLite (the file and its folder are
/// created when missing).
pub async fn connect(url: &str) -> StoreResult<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(StoreError::InvalidUrl(format!(
            "unsupported scheme {scheme:?}: expected postgres://, postgresql:// or sqlite:"
        )))
    }
}
