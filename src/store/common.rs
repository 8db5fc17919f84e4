//! What both backends share: decoding rows into domain types, the job-row counter and
//! cost deltas, event payloads and chunking. No SQL dialect lives here beyond column lists.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Leftover, Line, LineRows, Settled, StoreError, StoreResult};
use crate::domain::{
    Analyzer, CostSums, Counts, Event, Item, ItemError, ItemOutcome, ItemReuse, ItemStatus, Job,
    JobStatus, Mode, NewItem, PicoUsd, Rejection, ReusedFrom, Shard, Usage, MAX_STORED_REJECTIONS,
};

/// Rows per bulk statement.
pub(crate) const CHUNK_ROWS: usize = 1000;
/// Image bytes per bulk insert statement, so a chunk of large data URLs stays bounded.
pub(crate) const CHUNK_IMAGE_BYTES: usize = 32 * 1024 * 1024;

pub(crate) const JOB_COLS: &str = "id, tenant, name, model, requested_mode, mode, mode_reason, \
    detail, analyzer, metadata, webhook_url, status, total, pending, submitted, succeeded, \
    failed, rejected, cancelled, input_tokens, cached_input_tokens, output_tokens, \
    actual_pico_usd, individual_pico_usd, unpriced_items, batch_items, batch_pico_usd, \
    individual_items, individual_mode_pico_usd, flex_items, flex_pico_usd, \
    estimate_batch_pico_usd, \
    estimate_individual_pico_usd, created_at, updated_at, completed_at, lease_token, \
    webhook_state, webhook_attempts, webhook_error, rejections, version, fetch_mode, reuse, \
    reused, reused_batch_pico_usd, reused_individual_pico_usd";

/// SET clauses that make a job that turns terminal owe its webhook: `terminal` is the SQL
/// of "the new status is terminal", `now` of the current time. Only a job with a
/// webhook_url that owed nothing yet starts owing (a job finishes once).
pub(crate) fn owe_webhook_sql(terminal: &str, now: &str) -> String {
    let owes = format!("{terminal} AND webhook_url IS NOT NULL AND webhook_state IS NULL");
    format!(
        "webhook_state = CASE WHEN {owes} THEN 'pending' ELSE webhook_state END, \
         webhook_due_at = CASE WHEN {owes} THEN {now} ELSE webhook_due_at END"
    )
}

pub(crate) const ITEM_COLS: &str = "job_id, position, custom_id, post_id, image, width, height, \
    status, attempts, shard_id, output, error_code, error_message, input_tokens, \
    cached_input_tokens, output_tokens, reasoning_tokens, cost_pico_usd, individual_pico_usd, \
    run_mode, resolved_model, finished_at, note, reused_from_job, reused_from_custom_id";

/// [`ITEM_COLS`] as results and posts pages read them: everything but the image, which
/// reads back empty (the pages never show it, and a data URL can be megabytes).
pub(crate) const RESULT_COLS: &str = "job_id, position, custom_id, post_id, '' AS image, \
    width, height, status, attempts, shard_id, output, error_code, error_message, \
    input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_pico_usd, \
    individual_pico_usd, run_mode, resolved_model, finished_at, note, reused_from_job, \
    reused_from_custom_id";

pub(crate) const SHARD_COLS: &str = "id, job_id, kind, attempt, model, status, item_count, \
    input_file_id, openai_batch_id, output_file_id, error_file_id, batch_status, \
    request_total, request_completed, request_failed, error_code, error_message, \
    poll_interval_ms, next_poll_at, lease_token, created_at, updated_at";

/// `cols` (a column list) qualified by `table`, each aliased `{alias}{name}`: for joins
/// whose tables share column names.
pub(crate) fn qualified(cols: &str, table: &str, alias: &str) -> String {
    cols.split(',')
        .map(|c| {
            let c = c.trim();
            format!("{table}.{c} AS {alias}{c}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row read through column names with a prefix (the aliases of [`qualified`]).
pub(crate) struct Prefixed<'a, R> {
    pub row: &'a R,
    pub prefix: &'static str,
}

impl<R: RowGet> Prefixed<'_, R> {
    /// Calls `read` with the prefixed column name, built on the stack: a job GET reads
    /// some sixty columns this way, and a `format!` each was a heap allocation apiece.
    fn with_col<T>(&self, col: &str, read: impl FnOnce(&str) -> T) -> T {
        let (split, len) = (self.prefix.len(), self.prefix.len() + col.len());
        let mut buf = [0u8; 64];
        if len > buf.len() {
            return read(&format!("{}{col}", self.prefix));
        }
        buf[..split].copy_from_slice(self.prefix.as_bytes());
        buf[split..len].copy_from_slice(col.as_bytes());
        // Two &strs joined: valid UTF-8.
        read(std::str::from_utf8(&buf[..len]).expect("two strs joined"))
    }
}

impl<R: RowGet> RowGet for Prefixed<'_, R> {
    fn text(&self, col: &str) -> StoreResult<String> {
        self.with_col(col, |c| self.row.text(c))
    }
    fn text_ref(&self, col: &str) -> StoreResult<&str> {
        self.with_col(col, |c| self.row.text_ref(c))
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        self.with_col(col, |c| self.row.opt_text(c))
    }
    fn int(&self, col: &str) -> StoreResult<i64> {
        self.with_col(col, |c| self.row.int(c))
    }
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        self.with_col(col, |c| self.row.opt_int(c))
    }
    fn int32(&self, col: &str) -> StoreResult<i32> {
        self.with_col(col, |c| self.row.int32(c))
    }
    fn opt_int32(&self, col: &str) -> StoreResult<Option<i32>> {
        self.with_col(col, |c| self.row.opt_int32(c))
    }
    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        self.with_col(col, |c| self.row.uuid(c))
    }
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>> {
        self.with_col(col, |c| self.row.opt_uuid(c))
    }
    fn ts(&self, col: &str) -> StoreResult<DateTime<Utc>> {
        self.with_col(col, |c| self.row.ts(c))
    }
    fn opt_ts(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.with_col(col, |c| self.row.opt_ts(c))
    }
    fn json_text(&self, col: &str) -> StoreResult<String> {
        self.with_col(col, |c| self.row.json_text(c))
    }
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        self.with_col(col, |c| self.row.opt_json(c))
    }
    fn float(&self, col: &str) -> StoreResult<f64> {
        self.with_col(col, |c| self.row.float(c))
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        self.with_col(col, |c| self.row.flag(c))
    }
}

pub(crate) const EVENT_COLS: &str = "id, job_id, kind, data, created_at";

/// Columns of an item written by an outcome, returned to compute the job's deltas.
pub(crate) const OUTCOME_COLS: &str = "status, input_tokens, cached_input_tokens, \
    output_tokens, cost_pico_usd, individual_pico_usd, run_mode";

/// Drops sub-microsecond precision: both databases keep microseconds, so a value is
/// truncated before it is written and reads back equal.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn corrupt(what: impl Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Typed column access over either backend's row, so the mapping to domain types is
/// written once. Each backend decides how a uuid, a timestamp and JSON are stored.
/// One row per job status: `status`, `jobs`, `pending`, `submitted` (read by
/// [`gauges_from_rows`]); the same SQL on both databases.
pub(crate) const GAUGES_SQL: &str = "SELECT status, count(*) AS jobs, \
     CAST(COALESCE(sum(pending), 0) AS BIGINT) AS pending, \
     CAST(COALESCE(sum(submitted), 0) AS BIGINT) AS submitted FROM jobs GROUP BY status";

/// Which pending items a cancel settles itself (the condition on `items` of job `$1`):
/// those in no shard yet, and those of individual shards (their executor stops calling).
/// Items of a batch shard are left to the submitter: the shard may be mid-submission, and
/// a batch created for it is cancelled at OpenAI and ingested, so lines it already ran
/// are recorded (and paid for once) instead of lost behind a `cancelled` item.
pub(crate) const CANCEL_AT_ONCE: &str = "(shard_id IS NULL OR shard_id IN \
     (SELECT id FROM shards WHERE job_id = $1 AND kind = 'individual'))";

/// Records a webhook attempt, fenced by the claim: $1 job id, $2 the claim's due time,
/// $3 the new state, $4 the next due time, $5 why it was not delivered.
pub(crate) const WEBHOOK_ATTEMPTED_SQL: &str = "UPDATE jobs SET webhook_state = $3, \
     version = version + 1, webhook_attempts = webhook_attempts + 1, webhook_due_at = $4, webhook_error = $5 \
     WHERE id = $1 AND webhook_due_at = $2 AND webhook_state = 'pending'";

/// Claimed webhook deliveries from `RETURNING {JOB_COLS}, webhook_due_at` rows.
pub(crate) fn claimed_webhooks<R: RowGet>(rows: &[R]) -> StoreResult<Vec<(Job, DateTime<Utc>)>> {
    rows.iter()
        .map(|r| Ok((job_from_row(r)?, r.ts("webhook_due_at")?)))
        .collect()
}

/// One model's batch load (`$1` the model, `$2` the refusal code), read by
/// [`model_load_from_row`]; the same SQL on both databases.
pub(crate) const MODEL_LOAD_SQL: &str = "SELECT \
     CAST((SELECT count(*) FROM shards WHERE kind = 'batch' AND model = $1 \
       AND status IN ('creating', 'submitted')) AS BIGINT) AS in_flight, \
     CAST((SELECT COALESCE(sum(estimated_tokens), 0) FROM shards WHERE kind = 'batch' \
       AND model = $1 AND status IN ('creating', 'submitted')) AS BIGINT) AS in_flight_tokens, \
     (SELECT max(updated_at) FROM shards WHERE kind = 'batch' AND model = $1 \
       AND status = 'failed' AND error_code = $2) AS last_refusal_at, \
     (SELECT max(updated_at) FROM shards WHERE kind = 'batch' AND model = $1 \
       AND status = 'done' AND batch_status = 'completed') AS last_completed_at";

pub(crate) fn model_load_from_row<R: RowGet>(row: &R) -> StoreResult<super::ModelLoad> {
    Ok(super::ModelLoad {
        in_flight: row.int("in_flight")?,
        in_flight_tokens: row.int("in_flight_tokens")?,
        last_refusal_at: row.opt_ts("last_refusal_at")?,
        last_completed_at: row.opt_ts("last_completed_at")?,
    })
}

pub(crate) fn gauges_from_rows<R: RowGet>(rows: &[R]) -> StoreResult<super::Gauges> {
    let mut gauges = super::Gauges::default();
    for row in rows {
        gauges.jobs.push((row.parsed("status")?, row.int("jobs")?));
        gauges.pending_items += row.int("pending")?;
        gauges.submitted_items += row.int("submitted")?;
    }
    gauges.jobs.sort_by_key(|(status, _)| status.as_str());
    Ok(gauges)
}

pub(crate) trait RowGet {
    fn text(&self, col: &str) -> StoreResult<String>;
    /// A TEXT column borrowed from the row, not copied out of it.
    fn text_ref(&self, col: &str) -> StoreResult<&str>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn int32(&self, col: &str) -> StoreResult<i32>;
    fn opt_int32(&self, col: &str) -> StoreResult<Option<i32>>;
    fn uuid(&self, col: &str) -> StoreResult<Uuid>;
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>>;
    fn ts(&self, col: &str) -> StoreResult<DateTime<Utc>>;
    fn opt_ts(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>>;
    fn float(&self, col: &str) -> StoreResult<f64>;
    fn flag(&self, col: &str) -> StoreResult<bool>;
    /// A JSON column's text as stored, not parsed.
    fn json_text(&self, col: &str) -> StoreResult<String>;

    fn json(&self, col: &str) -> StoreResult<Value> {
        self.opt_json(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }

    fn parsed<T>(&self, col: &str) -> StoreResult<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.text(col)?.parse().map_err(corrupt)
    }

    fn opt_parsed<T>(&self, col: &str) -> StoreResult<Option<T>>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.opt_text(col)?
            .map(|s| s.parse().map_err(corrupt))
            .transpose()
    }
}

/// The rows of a [`LinePage`], as the database returned them.
impl<R: RowGet + Send + Sync + 'static> LineRows for Vec<R> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn line(&self, i: usize) -> StoreResult<Line<'_>> {
        let r = &self[i];
        Ok(Line {
            position: r.int("position")?,
            custom_id: r.text_ref("custom_id")?,
            image: r.text_ref("image")?,
        })
    }
}

pub(crate) fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(corrupt)
}

pub(crate) fn counts_from_row<R: RowGet>(r: &R) -> StoreResult<Counts> {
    Ok(Counts {
        total: r.int("total")?,
        pending: r.int("pending")?,
        submitted: r.int("submitted")?,
        succeeded: r.int("succeeded")?,
        failed: r.int("failed")?,
        rejected: r.int("rejected")?,
        cancelled: r.int("cancelled")?,
        reused: r.int("reused")?,
    })
}

/// The analyzer stored as `text`, parsed once per distinct text: every job view reads the
/// job row, and parsing its analyzer (a prompt and a JSON schema of a few KB) was most of
/// what such a read allocated. Jobs share few analyzers; the memo is emptied past 256.
fn analyzer_from_text(text: String) -> StoreResult<Arc<Analyzer>> {
    static PARSED: LazyLock<Mutex<HashMap<String, Arc<Analyzer>>>> =
        LazyLock::new(Default::default);
    let memo = || PARSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(analyzer) = memo().get(&text) {
        return Ok(analyzer.clone());
    }
    let analyzer: Arc<Analyzer> = Arc::new(serde_json::from_str(&text).map_err(corrupt)?);
    let mut parsed = memo();
    if parsed.len() >= 256 {
        parsed.clear();
    }
    parsed.insert(text, analyzer.clone());
    Ok(analyzer)
}

pub(crate) fn job_from_row<R: RowGet>(r: &R) -> StoreResult<Job> {
    let analyzer = analyzer_from_text(r.json_text("analyzer")?)?;
    Ok(Job {
        id: r.uuid("id")?,
        tenant: r.text("tenant")?,
        name: r.opt_text("name")?,
        model: r.text("model")?,
        requested_mode: r.parsed("requested_mode")?,
        mode: r.parsed("mode")?,
        mode_reason: r.text("mode_reason")?,
        detail: r.parsed("detail")?,
        analyzer,
        metadata: r.opt_json("metadata")?,
        webhook_url: r.opt_text("webhook_url")?,
        fetch: r.parsed("fetch_mode")?,
        reuse: r.flag("reuse")?,
        webhook_state: r.opt_parsed("webhook_state")?,
        webhook_attempts: r.int32("webhook_attempts")?,
        webhook_error: r.opt_text("webhook_error")?,
        status: r.parsed("status")?,
        counts: counts_from_row(r)?,
        cost: CostSums {
            input_tokens: r.int("input_tokens")?,
            cached_input_tokens: r.int("cached_input_tokens")?,
            output_tokens: r.int("output_tokens")?,
            actual_pico_usd: r.int("actual_pico_usd")?,
            individual_pico_usd: r.int("individual_pico_usd")?,
            unpriced_items: r.int("unpriced_items")?,
            batch_items: r.int("batch_items")?,
            batch_pico_usd: r.int("batch_pico_usd")?,
            individual_items: r.int("individual_items")?,
            individual_mode_pico_usd: r.int("individual_mode_pico_usd")?,
            flex_items: r.int("flex_items")?,
            flex_pico_usd: r.int("flex_pico_usd")?,
            reused_batch_pico_usd: r.int("reused_batch_pico_usd")?,
            reused_individual_pico_usd: r.int("reused_individual_pico_usd")?,
        },
        estimate_batch_pico_usd: r.opt_int("estimate_batch_pico_usd")?,
        estimate_individual_pico_usd: r.opt_int("estimate_individual_pico_usd")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        completed_at: r.opt_ts("completed_at")?,
        rejections: serde_json::from_value(r.json("rejections")?).map_err(corrupt)?,
        version: r.int("version")?,
    })
}

fn error_from_row<R: RowGet>(r: &R) -> StoreResult<Option<ItemError>> {
    match r.opt_text("error_code")? {
        Some(code) => Ok(Some(ItemError {
            code,
            message: r.opt_text("error_message")?.unwrap_or_default(),
        })),
        None => Ok(None),
    }
}

pub(crate) fn item_from_row<R: RowGet>(r: &R) -> StoreResult<Item> {
    let usage = match r.opt_int("input_tokens")? {
        Some(input_tokens) => Some(Usage {
            input_tokens,
            cached_input_tokens: r.opt_int("cached_input_tokens")?.unwrap_or(0),
            output_tokens: r.opt_int("output_tokens")?.unwrap_or(0),
            reasoning_tokens: r.opt_int("reasoning_tokens")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Item {
        job_id: r.uuid("job_id")?,
        position: r.int("position")?,
        custom_id: r.text("custom_id")?,
        post_id: r.opt_text("post_id")?,
        image: r.text("image")?,
        width: r.opt_int32("width")?,
        height: r.opt_int32("height")?,
        status: r.parsed("status")?,
        attempts: r.int32("attempts")?,
        shard_id: r.opt_uuid("shard_id")?,
        output: r.opt_json("output")?,
        error: error_from_row(r)?,
        usage,
        cost_pico_usd: r.opt_int("cost_pico_usd")?,
        individual_pico_usd: r.opt_int("individual_pico_usd")?,
        run_mode: r.opt_parsed("run_mode")?,
        resolved_model: r.opt_text("resolved_model")?,
        finished_at: r.opt_ts("finished_at")?,
        note: r.opt_text("note")?,
        reused_from: match r.opt_uuid("reused_from_job")? {
            Some(job_id) => Some(ReusedFrom {
                job_id,
                custom_id: r.opt_text("reused_from_custom_id")?.unwrap_or_default(),
            }),
            None => None,
        },
    })
}

pub(crate) fn shard_from_row<R: RowGet>(r: &R) -> StoreResult<Shard> {
    Ok(Shard {
        id: r.uuid("id")?,
        job_id: r.uuid("job_id")?,
        kind: r.parsed("kind")?,
        attempt: r.int32("attempt")?,
        model: r.text("model")?,
        status: r.parsed("status")?,
        item_count: r.int("item_count")?,
        input_file_id: r.opt_text("input_file_id")?,
        openai_batch_id: r.opt_text("openai_batch_id")?,
        output_file_id: r.opt_text("output_file_id")?,
        error_file_id: r.opt_text("error_file_id")?,
        batch_status: r.opt_text("batch_status")?,
        request_total: r.int("request_total")?,
        request_completed: r.int("request_completed")?,
        request_failed: r.int("request_failed")?,
        error: error_from_row(r)?,
        poll_interval_ms: r.int("poll_interval_ms")?,
        next_poll_at: r.ts("next_poll_at")?,
        lease_token: r.int("lease_token")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

pub(crate) fn event_from_row<R: RowGet>(r: &R) -> StoreResult<Event> {
    Ok(Event {
        id: r.int("id")?,
        job_id: r.uuid("job_id")?,
        kind: r.text("kind")?,
        data: r.json("data")?,
        created_at: r.ts("created_at")?,
    })
}

/// An item as an outcome left it (the `OUTCOME_COLS` of the RETURNING rows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded {
    pub status: ItemStatus,
    pub input_tokens: Option<i64>,
    pub cached_input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_pico_usd: Option<i64>,
    pub individual_pico_usd: Option<i64>,
    pub run_mode: Option<Mode>,
}

/// The RETURNING rows of an outcome write, and how they settled.
pub(crate) fn recorded_from_rows<R: RowGet>(rows: &[R]) -> StoreResult<(Vec<Recorded>, Settled)> {
    let recorded = rows
        .iter()
        .map(recorded_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let mut settled = Settled::default();
    for r in &recorded {
        settled.count(r.status);
    }
    Ok((recorded, settled))
}

fn recorded_from_row<R: RowGet>(r: &R) -> StoreResult<Recorded> {
    Ok(Recorded {
        status: r.parsed("status")?,
        input_tokens: r.opt_int("input_tokens")?,
        cached_input_tokens: r.opt_int("cached_input_tokens")?,
        output_tokens: r.opt_int("output_tokens")?,
        cost_pico_usd: r.opt_int("cost_pico_usd")?,
        individual_pico_usd: r.opt_int("individual_pico_usd")?,
        run_mode: r.opt_parsed("run_mode")?,
    })
}

/// What to add to a job row's counters and cost sums; applied with one UPDATE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JobDelta {
    pub counts: Counts,
    pub cost: CostSums,
}

impl JobDelta {
    pub const COLUMNS: [&'static str; 22] = [
        "total",
        "pending",
        "submitted",
        "succeeded",
        "failed",
        "rejected",
        "cancelled",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "actual_pico_usd",
        "individual_pico_usd",
        "unpriced_items",
        "batch_items",
        "batch_pico_usd",
        "individual_items",
        "individual_mode_pico_usd",
        "flex_items",
        "flex_pico_usd",
        "reused",
        "reused_batch_pico_usd",
        "reused_individual_pico_usd",
    ];

    pub fn values(&self) -> [i64; 22] {
        let (c, s) = (&self.counts, &self.cost);
        [
            c.total,
            c.pending,
            c.submitted,
            c.succeeded,
            c.failed,
            c.rejected,
            c.cancelled,
            s.input_tokens,
            s.cached_input_tokens,
            s.output_tokens,
            s.actual_pico_usd,
            s.individual_pico_usd,
            s.unpriced_items,
            s.batch_items,
            s.batch_pico_usd,
            s.individual_items,
            s.individual_mode_pico_usd,
            s.flex_items,
            s.flex_pico_usd,
            c.reused,
            s.reused_batch_pico_usd,
            s.reused_individual_pico_usd,
        ]
    }

    /// One more succeeded item answered from another analysis, which would have cost these
    /// at Batch API and standard prices.
    pub fn add_reused(&mut self, batch: PicoUsd, individual: PicoUsd) {
        self.counts.reused += 1;
        self.cost.reused_batch_pico_usd += batch;
        self.cost.reused_individual_pico_usd += individual;
        self.cost.individual_pico_usd += individual;
    }

    /// `UPDATE jobs SET <col> = <col> + $2, …, updated_at = <now>, version + 1 WHERE
    /// id = $1 RETURNING <job>`; the 22 deltas bind as `$2..=$23`.
    pub fn update_sql(now: &str) -> String {
        let sets: Vec<String> = Self::COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = {c} + ${}", i + 2))
            .collect();
        format!(
            "UPDATE jobs SET {}, updated_at = {now}, version = version + 1 WHERE id = $1 \
             RETURNING {JOB_COLS}",
            sets.join(", ")
        )
    }

    pub fn add_status(&mut self, status: ItemStatus, n: i64) {
        let c = &mut self.counts;
        match status {
            ItemStatus::Pending => c.pending += n,
            ItemStatus::Submitted => c.submitted += n,
            ItemStatus::Succeeded => c.succeeded += n,
            ItemStatus::Failed => c.failed += n,
            ItemStatus::Rejected => c.rejected += n,
            ItemStatus::Cancelled => c.cancelled += n,
        }
    }

    /// Counts the items one settle statement moved from `from` to the statuses it
    /// returned, here and in `settled`.
    pub fn add_settled(
        &mut self,
        settled: &mut Settled,
        from: ItemStatus,
        returned: Vec<String>,
    ) -> StoreResult<()> {
        for status in returned {
            let to: ItemStatus = status.parse().map_err(corrupt)?;
            self.add_status(from, -1);
            self.add_status(to, 1);
            settled.count(to);
        }
        Ok(())
    }

    /// Counters for newly inserted items.
    pub fn for_new_items(items: &[NewItem]) -> Self {
        let mut d = Self::default();
        d.counts.total = items.len() as i64;
        for it in items {
            d.add_status(it.status, 1);
            if let ItemReuse::From(r) = &it.reuse {
                d.add_reused(r.batch_pico_usd, r.individual_pico_usd);
            }
        }
        d
    }

    /// Deltas for items that moved from `submitted` to the status an outcome gave them
    /// (`pending` for one sent back for another attempt).
    /// An item with usage but no cost has an unknown price: it counts in `unpriced_items`
    /// and adds nothing to the money sums. An item with neither ran nothing billable.
    pub fn for_outcomes(rows: &[Recorded]) -> Self {
        let mut d = Self::default();
        for r in rows {
            d.add_status(ItemStatus::Submitted, -1);
            d.add_status(r.status, 1);
            let s = &mut d.cost;
            s.input_tokens += r.input_tokens.unwrap_or(0);
            s.cached_input_tokens += r.cached_input_tokens.unwrap_or(0);
            s.output_tokens += r.output_tokens.unwrap_or(0);
            s.individual_pico_usd += r.individual_pico_usd.unwrap_or(0);
            match r.cost_pico_usd {
                Some(cost) => s.actual_pico_usd += cost,
                None if r.input_tokens.is_some() => s.unpriced_items += 1,
                None => {}
            }
            let cost = r.cost_pico_usd.unwrap_or(0);
            // An item sent back to run again has not run in its mode yet (a flex item
            // falling back to batch carries `batch` until a batch runs it).
            let ran = if r.status == ItemStatus::Pending {
                None
            } else {
                r.run_mode
            };
            match ran {
                Some(Mode::Batch) => {
                    s.batch_items += 1;
                    s.batch_pico_usd += cost;
                }
                Some(Mode::Individual) => {
                    s.individual_items += 1;
                    s.individual_mode_pico_usd += cost;
                }
                Some(Mode::Flex) => {
                    s.flex_items += 1;
                    s.flex_pico_usd += cost;
                }
                Some(Mode::Auto) | None => {}
            }
        }
        d
    }
}

/// The job's (`$1`) copies still waiting whose original has an outcome: each copy's
/// position, with the original's status, cost, individual cost and mode.
pub(crate) const COPIES_DUE_SQL: &str = "SELECT c.position AS position, p.status AS status, \
     p.cost_pico_usd AS cost, p.individual_pico_usd AS individual, p.run_mode AS run_mode \
     FROM items c JOIN items p ON p.job_id = c.job_id AND p.position = c.copy_of \
     WHERE c.job_id = $1 AND c.copy_of IS NOT NULL AND c.status = 'pending' \
     AND p.status IN ('succeeded', 'failed', 'cancelled')";

/// Gives copies of job `$1` their original's outcome; the caller appends the condition on
/// `c.position` (the copies [`COPIES_DUE_SQL`] found). A succeeded copy bills nothing:
/// tokens and cost 0 (cost NULL when the original's model has no price).
pub(crate) const COPY_OUTCOME_SQL: &str = "UPDATE items AS c SET status = p.status, \
     output = p.output, error_code = p.error_code, error_message = p.error_message, \
     resolved_model = p.resolved_model, reused_from_job = p.job_id, \
     reused_from_custom_id = p.custom_id, \
     input_tokens = CASE WHEN p.status = 'succeeded' THEN 0 END, \
     cached_input_tokens = CASE WHEN p.status = 'succeeded' THEN 0 END, \
     output_tokens = CASE WHEN p.status = 'succeeded' THEN 0 END, \
     reasoning_tokens = CASE WHEN p.status = 'succeeded' THEN 0 END, \
     cost_pico_usd = CASE WHEN p.cost_pico_usd IS NOT NULL THEN 0 END, \
     individual_pico_usd = CASE WHEN p.individual_pico_usd IS NOT NULL THEN 0 END, \
     finished_at = now(), updated_at = now() \
     FROM items AS p WHERE c.job_id = $1 AND p.job_id = c.job_id AND p.position = c.copy_of \
     AND c.status = 'pending'";

/// What a copy of an item that cost `cost` in `mode` (and `individual` at standard prices)
/// would have cost at Batch API and at standard prices: an original run individually is
/// priced at the Batch API's half of the standard price.
pub(crate) fn copy_would_cost(
    cost: Option<PicoUsd>,
    individual: Option<PicoUsd>,
    mode: Option<Mode>,
) -> (PicoUsd, PicoUsd) {
    let individual = individual.unwrap_or(0);
    let batch = match mode {
        Some(Mode::Individual) => individual / 2,
        _ => cost.unwrap_or(0),
    };
    (batch, individual)
}

/// The `progress` event payload (and the API's `progress` object).
pub(crate) fn progress_json(c: &Counts, processing: i64) -> Value {
    json!({
        "total": c.total,
        "pending": c.pending,
        "submitted": c.submitted,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "rejected": c.rejected,
        "cancelled": c.cancelled,
        "reused": c.reused,
        "processing": processing,
        "percent": c.percent_with(processing),
    })
}

/// The `status` event payload.
pub(crate) fn status_json(s: JobStatus) -> Value {
    json!({ "status": s.as_str() })
}

/// The terminal status a job in `status` with these counters moves to, if it is done.
pub(crate) fn finished_status(status: JobStatus, c: &Counts) -> Option<JobStatus> {
    let live = matches!(
        status,
        JobStatus::Queued | JobStatus::Running | JobStatus::Cancelling
    );
    if !live || c.pending > 0 || c.submitted > 0 {
        return None;
    }
    Some(if status == JobStatus::Cancelling {
        JobStatus::Cancelled
    } else if c.succeeded > 0 {
        JobStatus::Completed
    } else {
        JobStatus::Failed
    })
}

/// The rejections among `items` (positions from `first`) that a job row keeping `kept`
/// already has room for (see [`MAX_STORED_REJECTIONS`]).
pub(crate) fn rejections_of(first: i64, items: &[NewItem], kept: usize) -> Vec<Rejection> {
    (first..)
        .zip(items)
        .filter(|(_, it)| it.status == ItemStatus::Rejected)
        .take(MAX_STORED_REJECTIONS.saturating_sub(kept))
        .map(|(index, it)| Rejection {
            index,
            custom_id: it.custom_id.clone(),
            reason: it
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// The first custom_id used twice in `items`.
pub(crate) fn duplicate_custom_id(items: &[NewItem]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .iter()
        .map(|i| i.custom_id.as_str())
        .find(|id| !seen.insert(*id))
}

/// The reuse columns of an item being inserted.
pub(crate) struct ReuseCols<'a> {
    pub copy_of: Option<i64>,
    pub from_job: Option<Uuid>,
    pub from_custom_id: Option<&'a str>,
    pub output: Option<&'a Value>,
    pub resolved_model: Option<&'a str>,
    /// 0 for a reused item's tokens and cost (it billed nothing), else NULL.
    pub zero: Option<i64>,
}

pub(crate) fn reuse_cols(it: &NewItem) -> ReuseCols<'_> {
    let none = ReuseCols {
        copy_of: None,
        from_job: None,
        from_custom_id: None,
        output: None,
        resolved_model: None,
        zero: None,
    };
    match &it.reuse {
        ItemReuse::Sent => none,
        ItemReuse::CopyOf(position) => ReuseCols {
            copy_of: Some(*position),
            ..none
        },
        ItemReuse::From(r) => ReuseCols {
            from_job: Some(r.from.job_id),
            from_custom_id: Some(r.from.custom_id.as_str()),
            output: Some(&r.output),
            resolved_model: r.resolved_model.as_deref(),
            zero: Some(0),
            ..none
        },
    }
}

/// Splits items into bulk-insert chunks bounded by rows and by image bytes.
pub(crate) fn item_chunks(items: &[NewItem]) -> Vec<&[NewItem]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, it) in items.iter().enumerate() {
        let full =
            i - start == CHUNK_ROWS || (i > start && bytes + it.image.len() > CHUNK_IMAGE_BYTES);
        if full {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += it.image.len();
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Keeps the first outcome per custom_id, so one bulk UPDATE never sees two source rows
/// for one item; checks statuses, and drops the retry mark of an outcome with usage
/// (billed tokens are recorded, never thrown away with a retry).
pub(crate) fn dedup_verdicts<'a>(
    verdicts: impl IntoIterator<Item = (&'a ItemOutcome, bool)>,
) -> StoreResult<Vec<(&'a ItemOutcome, bool)>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (o, retry) in verdicts {
        if !matches!(o.status, ItemStatus::Succeeded | ItemStatus::Failed) {
            return Err(StoreError::Conflict(format!(
                "outcome of {:?} has status {}, expected succeeded or failed",
                o.custom_id, o.status
            )));
        }
        if seen.insert(o.custom_id.as_str()) {
            let retry = retry && o.status == ItemStatus::Failed && o.usage.is_none();
            out.push((o, retry));
        }
    }
    Ok(out)
}

/// The error written on items cancelled before they ran.
pub fn job_cancelled_error() -> ItemError {
    ItemError {
        code: "job_cancelled".into(),
        message: "the job was cancelled before this image ran".into(),
    }
}

/// How one settling UPDATE treats the leftover items it touches (see `Leftover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeftoverPlan {
    /// Status of an item that does not go back to pending.
    pub final_status: ItemStatus,
    /// Every item goes back to pending.
    pub all_back: bool,
    /// Items under `max_attempts` go back to pending.
    pub retry: bool,
    pub max_attempts: i32,
    /// The attempt that sent a submitted item is taken back.
    pub uncount: bool,
}

impl LeftoverPlan {
    pub fn new(leftover: Leftover, job_status: JobStatus) -> Self {
        let plan = |final_status| LeftoverPlan {
            final_status,
            all_back: false,
            retry: false,
            max_attempts: 0,
            uncount: false,
        };
        let cancelling = job_status == JobStatus::Cancelling;
        match leftover {
            Leftover::Fail => plan(ItemStatus::Failed),
            Leftover::Cancel => plan(ItemStatus::Cancelled),
            Leftover::Retry { .. } | Leftover::Requeue if cancelling => plan(ItemStatus::Cancelled),
            Leftover::Retry { max_attempts } => LeftoverPlan {
                retry: true,
                max_attempts,
                ..plan(ItemStatus::Failed)
            },
            Leftover::Requeue => LeftoverPlan {
                all_back: true,
                uncount: true,
                ..plan(ItemStatus::Failed)
            },
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Stored width and height as dimensions, when both are known and positive.
pub(crate) fn dims((w, h): (Option<i32>, Option<i32>)) -> Option<(u32, u32)> {
    match (w, h) {
        (Some(w), Some(h)) if w > 0 && h > 0 => Some((w as u32, h as u32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, bytes: usize) -> NewItem {
        NewItem::pending(id, "x".repeat(bytes))
    }

    #[test]
    fn result_columns_are_item_columns_without_the_image() {
        let words = |cols: &str| {
            cols.split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        };
        let expected: Vec<String> = words(ITEM_COLS)
            .into_iter()
            .map(|c| {
                if c == "image" {
                    "'' AS image".into()
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(words(RESULT_COLS), expected);
    }

    #[test]
    fn stored_rejections_are_the_first_hundred() {
        let mut items: Vec<_> = (0..150).map(|i| item(&format!("i{i}"), 1)).collect();
        for it in items.iter_mut().skip(10) {
            it.status = ItemStatus::Rejected;
            it.error = Some(ItemError {
                code: "bad".into(),
                message: format!("{} is bad", it.custom_id),
            });
        }
        let all = rejections_of(5, &items, 0);
        assert_eq!(all.len(), MAX_STORED_REJECTIONS);
        assert_eq!(
            (
                all[0].index,
                all[0].custom_id.as_str(),
                all[0].reason.as_str()
            ),
            (15, "i10", "i10 is bad")
        );
        let rest = rejections_of(5, &items, 98);
        assert_eq!(rest.len(), 2);
        assert!(rejections_of(5, &items, 100).is_empty());
    }

    #[test]
    fn chunks_split_by_rows_and_bytes() {
        let items: Vec<_> = (0..2500).map(|i| item(&i.to_string(), 1)).collect();
        let sizes: Vec<_> = item_chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);

        let big: Vec<_> = (0..5)
            .map(|i| item(&i.to_string(), CHUNK_IMAGE_BYTES / 2))
            .collect();
        let sizes: Vec<_> = item_chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(item_chunks(&[]).is_empty());
    }

    #[test]
    fn outcome_deltas_split_by_mode_and_price() {
        let row = |status, cost, mode| Recorded {
            status,
            input_tokens: Some(10),
            cached_input_tokens: Some(2),
            output_tokens: Some(3),
            cost_pico_usd: cost,
            individual_pico_usd: cost.map(|c| c * 2),
            run_mode: Some(mode),
        };
        let d = JobDelta::for_outcomes(&[
            row(ItemStatus::Succeeded, Some(100), Mode::Batch),
            row(ItemStatus::Failed, None, Mode::Batch),
            row(ItemStatus::Succeeded, Some(7), Mode::Individual),
        ]);
        assert_eq!(d.counts.submitted, -3);
        assert_eq!((d.counts.succeeded, d.counts.failed), (2, 1));
        assert_eq!(d.cost.input_tokens, 30);
        assert_eq!(d.cost.actual_pico_usd, 107);
        assert_eq!(d.cost.individual_pico_usd, 214);
        assert_eq!(d.cost.unpriced_items, 1);
        assert_eq!((d.cost.batch_items, d.cost.batch_pico_usd), (2, 100));
        assert_eq!(
            (d.cost.individual_items, d.cost.individual_mode_pico_usd),
            (1, 7)
        );
    }

    #[test]
    fn flex_counts_apart_and_an_item_sent_back_counts_in_no_mode() {
        let row = |status, cost: Option<i64>, mode| Recorded {
            status,
            input_tokens: cost.map(|_| 10),
            cached_input_tokens: cost.map(|_| 0),
            output_tokens: cost.map(|_| 3),
            cost_pico_usd: cost,
            individual_pico_usd: cost.map(|c| c * 2),
            run_mode: Some(mode),
        };
        let d = JobDelta::for_outcomes(&[
            row(ItemStatus::Succeeded, Some(50), Mode::Flex),
            // A flex item falling back: back to pending, to run in a batch.
            row(ItemStatus::Pending, None, Mode::Batch),
        ]);
        assert_eq!((d.cost.flex_items, d.cost.flex_pico_usd), (1, 50));
        assert_eq!(d.cost.batch_items, 0);
        assert_eq!((d.counts.submitted, d.counts.pending), (-2, 1));
    }

    #[test]
    fn finished_status_rules() {
        let done = Counts {
            total: 2,
            succeeded: 1,
            failed: 1,
            ..Counts::default()
        };
        assert_eq!(
            finished_status(JobStatus::Running, &done),
            Some(JobStatus::Completed)
        );
        assert_eq!(
            finished_status(JobStatus::Cancelling, &done),
            Some(JobStatus::Cancelled)
        );
        let none_ok = Counts {
            succeeded: 0,
            ..done
        };
        assert_eq!(
            finished_status(JobStatus::Queued, &none_ok),
            Some(JobStatus::Failed)
        );
        assert_eq!(finished_status(JobStatus::Open, &done), None);
        let busy = Counts { pending: 1, ..done };
        assert_eq!(finished_status(JobStatus::Running, &busy), None);
    }
}
