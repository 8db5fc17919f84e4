//! The store written once: every query and transaction script both backends run, over a
//! [`Dialect`]. The backends (`postgres.rs`, `sqlite.rs`) hold only what differs.
//!
//! Every writer of items locks the job row first (PostgreSQL; SQLite has one writer), so a
//! concurrent cancel and a settle never wait on each other in opposite orders, and a job's
//! event ids commit in order.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::common::{
    self, duration_micros, event_from_row, finished_status, item_from_row, job_from_row,
    progress_json, shard_from_row, status_json, JobDelta, LeftoverPlan, Prefixed, RowGet,
    EVENT_COLS, ITEM_COLS, JOB_COLS, RESULT_COLS, SHARD_COLS,
};
use super::dialect::{args, Arg, Dialect};
use super::{
    BilledUsage, CostTotals, EventStore, Gauges, IdempotencyState, IdempotencyStore, ItemStore,
    JobCursor, JobLease, JobStore, KeyStore, LeasedShard, Leftover, LinePage, ModelLoad,
    MonthSpend, NewShard, OpenAiWebhookReceipt, OpenAiWebhookStore, PlanItem, PlanStore,
    ReportStore, Reusable, ReuseStore, SettleStore, Settled, ShardLease, ShardPoll, ShardStore,
    Store, StoreError, StoreResult, StoredKey, WebhookAttempt, WebhookStore,
};
use crate::domain::{
    Event, Item, ItemError, ItemOutcome, ItemStatus, Job, JobStatus, Mode, NewItem, NewJob,
    PicoUsd, Shard, ShardKind, ShardStatus,
};

/// The read path's item pages: keyset queries on `items`' indexes that never read the
/// `image` column (a data URL can be megabytes; results never show it).
pub(crate) static RESULTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RESULT_COLS} FROM items WHERE job_id = $1 AND position > $2 \
         ORDER BY position LIMIT $3"
    )
});
pub(crate) static RESULTS_BY_STATUS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RESULT_COLS} FROM items WHERE job_id = $1 AND status = $2 AND position > $3 \
         ORDER BY position LIMIT $4"
    )
});
pub(crate) static POSTS_FIRST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RESULT_COLS} FROM items WHERE job_id = $1 AND post_id IS NOT NULL \
         ORDER BY post_id, position LIMIT $2"
    )
});
pub(crate) static POSTS_AFTER_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RESULT_COLS} FROM items WHERE job_id = $1 AND post_id IS NOT NULL \
         AND (post_id, position) > ($2, $3) ORDER BY post_id, position LIMIT $4"
    )
});
pub(crate) static NO_POST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RESULT_COLS} FROM items WHERE job_id = $1 AND post_id IS NULL \
         AND position > $2 ORDER BY position LIMIT $3"
    )
});

/// A job row and its shards in one statement (one snapshot): one row per shard (the job's
/// columns `j_*` repeated, the shard's `s_*`), or one row with NULL shard columns.
static JOB_WITH_SHARDS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM jobs j LEFT JOIN shards s ON s.job_id = j.id \
         WHERE j.id = $1 AND ($2 IS NULL OR j.tenant = $2) \
         ORDER BY s.created_at, s.attempt, s.id",
        common::qualified(JOB_COLS, "j", "j_"),
        common::qualified(SHARD_COLS, "s", "s_")
    )
});

static DELTA_SQL: LazyLock<String> = LazyLock::new(|| JobDelta::update_sql("now()"));

/// `UPDATE jobs SET status = $2 …` for a job moving to `to` ($3: `to` is terminal).
static SET_STATUS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = $2, updated_at = now(), version = version + 1, \
         completed_at = CASE WHEN $3 THEN now() ELSE completed_at END, {} WHERE id = $1",
        common::owe_webhook_sql("$3", "now()")
    )
});

static CREATE_JOB_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (id, tenant, name, model, requested_mode, mode, mode_reason, detail, \
         analyzer, metadata, webhook_url, status, estimate_batch_pico_usd, \
         estimate_individual_pico_usd, created_at, updated_at, rejections, fetch_mode, reuse, {}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, \
         $16, $17, $18, {}) RETURNING {JOB_COLS}",
        JobDelta::COLUMNS.join(", "),
        (19..19 + JobDelta::COLUMNS.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

/// A write transaction of the dialect `D`, with the scripts' small steps.
struct Tx<D: Dialect>(D::Tx);

impl<D: Dialect> Tx<D> {
    async fn begin(d: &D) -> StoreResult<Self> {
        Ok(Self(d.begin().await?))
    }

    async fn commit(self) -> StoreResult<()> {
        D::commit(self.0).await
    }

    async fn rollback(self) -> StoreResult<()> {
        D::rollback(self.0).await
    }

    async fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<D::Row>> {
        D::tx_rows(&mut self.0, sql, args).await
    }

    async fn opt(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Option<D::Row>> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }

    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        D::tx_exec(&mut self.0, sql, args).await
    }

    /// The job row (of this tenant, if given), locked until the transaction ends.
    async fn lock_job(&mut self, tenant: Option<&str>, job_id: Uuid) -> StoreResult<Job> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant = $2){}",
            D::LOCK
        );
        let row = self.opt(&sql, args![job_id, tenant]).await?;
        job_from_row(&row.ok_or(StoreError::NotFound)?)
    }

    /// The shard's job when the lease still holds; the shard row stays locked.
    async fn lock_shard(&mut self, lease: &ShardLease) -> StoreResult<Option<Uuid>> {
        let sql = format!(
            "SELECT job_id, lease_token FROM shards WHERE id = $1{}",
            D::LOCK
        );
        let row = self.opt(&sql, args![lease.shard_id]).await?;
        let row = row.ok_or(StoreError::NotFound)?;
        if row.int("lease_token")? != lease.token {
            return Ok(None);
        }
        Ok(Some(row.uuid("job_id")?))
    }

    /// Applies counter and cost deltas to the (locked) job row.
    async fn apply_delta(&mut self, job_id: Uuid, delta: &JobDelta) -> StoreResult<Job> {
        let values = delta.values();
        let mut list = vec![Arg::Id(job_id)];
        list.extend(values.iter().map(|v| Arg::Int(Some(*v))));
        let row = self.opt(&DELTA_SQL, &list).await?;
        job_from_row(&row.ok_or(StoreError::NotFound)?)
    }

    /// Applies the deltas and writes the `progress` event they make.
    async fn apply_progress(&mut self, job_id: Uuid, delta: &JobDelta) -> StoreResult<Job> {
        let job = self.apply_delta(job_id, delta).await?;
        let processing = self.processing(job_id).await?;
        self.event(job_id, "progress", &progress_json(&job.counts, processing))
            .await?;
        Ok(job)
    }

    /// `progress.processing` of the job, from its shards: lines its submitted batches
    /// report done (completed + failed), not ingested yet.
    async fn processing(&mut self, job_id: Uuid) -> StoreResult<i64> {
        let row = self
            .opt(
                "SELECT CAST(COALESCE(SUM(request_completed + request_failed), 0) AS BIGINT) \
                 AS n FROM shards WHERE job_id = $1 AND kind = 'batch' AND status = 'submitted'",
                args![job_id],
            )
            .await?;
        row.map_or(Ok(0), |r| r.int("n"))
    }

    async fn event(&mut self, job_id: Uuid, kind: &str, data: &Value) -> StoreResult<()> {
        self.exec(
            "INSERT INTO events (job_id, kind, data, created_at) VALUES ($1, $2, $3, now())",
            args![job_id, kind, data],
        )
        .await?;
        Ok(())
    }

    /// Marks the in-flight `Idempotency-Key` of the request doing this transaction's work
    /// with `job_id`: committed with that work, it tells a retry the work is done
    /// (`IdempotencyState::Committed`) even if the answer was never recorded.
    async fn mark_idempotency_key(
        &mut self,
        tenant: &str,
        key: Option<&str>,
        job_id: Uuid,
    ) -> StoreResult<()> {
        if let Some(key) = key {
            self.exec(
                "UPDATE idempotency_keys SET job_id = $3 \
                 WHERE tenant = $1 AND key = $2 AND status = 'in_flight'",
                args![tenant, key, job_id],
            )
            .await?;
        }
        Ok(())
    }

    /// Moves a locked job to `to`, stamping `completed_at` when terminal, with its event.
    async fn set_status(&mut self, job_id: Uuid, to: JobStatus) -> StoreResult<()> {
        self.exec(
            &SET_STATUS_SQL,
            args![job_id, to.as_str(), to.is_terminal()],
        )
        .await?;
        self.event(job_id, "status", &status_json(to)).await
    }

    /// Inserts items in bulk (one statement per chunk), positions from `first`.
    async fn insert_items(
        &mut self,
        job_id: Uuid,
        first: i64,
        items: &[NewItem],
    ) -> StoreResult<()> {
        let mut position = first;
        for chunk in common::item_chunks(items) {
            D::insert_items(&mut self.0, job_id, position, chunk)
                .await
                .map_err(|e| {
                    if common::is_unique_violation(&e) {
                        StoreError::DuplicateCustomId(String::new())
                    } else {
                        e.into()
                    }
                })?;
            position += chunk.len() as i64;
        }
        Ok(())
    }

    /// Gives the job's waiting copies whose original has an outcome now that outcome
    /// (succeeded, failed or cancelled, with its output and error; no tokens, no cost),
    /// `reused_from` naming the original, and adds their moves to `delta`: two statements,
    /// through the index of copies, whatever the job's size.
    async fn fan_out(&mut self, job_id: Uuid, delta: &mut JobDelta) -> StoreResult<()> {
        let rows = self.rows(common::COPIES_DUE_SQL, args![job_id]).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut positions = Vec::with_capacity(rows.len());
        for r in &rows {
            positions.push(r.int("position")?);
            let status: ItemStatus = r.parsed("status")?;
            delta.add_status(ItemStatus::Pending, -1);
            delta.add_status(status, 1);
            if status == ItemStatus::Succeeded {
                let (batch, individual) = common::copy_would_cost(
                    r.opt_int("cost")?,
                    r.opt_int("individual")?,
                    r.opt_parsed("run_mode")?,
                );
                delta.add_reused(batch, individual);
            }
        }
        for chunk in positions.chunks(common::CHUNK_ROWS) {
            let sql = format!(
                "{} AND c.position {}",
                common::COPY_OUTCOME_SQL,
                D::in_list("$2")
            );
            self.exec(&sql, args![job_id, chunk]).await?;
        }
        Ok(())
    }

    /// Moves `n` items from `from` to `to` on the job's counters, with a progress event.
    async fn moved(
        &mut self,
        job_id: Uuid,
        from: ItemStatus,
        to: ItemStatus,
        n: i64,
    ) -> StoreResult<Option<Job>> {
        if n == 0 {
            return Ok(None);
        }
        let mut delta = JobDelta::default();
        delta.add_status(from, -n);
        delta.add_status(to, n);
        Ok(Some(self.apply_progress(job_id, &delta).await?))
    }
}

fn rows_to<R, T>(rows: &[R], f: impl Fn(&R) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Shard `from` → `submitted` (with the batch id, if any), its pending items →
/// submitted, counters moved, job queued → running: one fenced transaction.
async fn move_shard_to_submitted<D: Dialect>(
    d: &D,
    lease: &ShardLease,
    openai_batch_id: Option<&str>,
    from: &str,
    next_poll_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let mut tx = Tx::begin(d).await?;
    let row = tx
        .opt(
            "UPDATE shards SET status = 'submitted', openai_batch_id = $3, next_poll_at = $4, \
             updated_at = now() WHERE id = $1 AND lease_token = $2 AND status = $5 \
             RETURNING job_id",
            args![
                lease.shard_id,
                lease.token,
                openai_batch_id,
                next_poll_at,
                from
            ],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(false);
    };
    let job_id = row.uuid("job_id")?;
    let job = tx.lock_job(None, job_id).await?;
    let moved = tx
        .exec(
            "UPDATE items SET status = 'submitted', attempts = attempts + 1, \
             updated_at = now() WHERE shard_id = $1 AND status = 'pending'",
            args![lease.shard_id],
        )
        .await? as i64;
    tx.moved(job_id, ItemStatus::Pending, ItemStatus::Submitted, moved)
        .await?;
    if job.status == JobStatus::Queued {
        tx.set_status(job_id, JobStatus::Running).await?;
    }
    tx.commit().await?;
    Ok(true)
}

#[async_trait]
impl<D: Dialect> JobStore for D {
    async fn create_job_keyed(
        &self,
        job: &NewJob,
        items: &[NewItem],
        idempotency_key: Option<&str>,
    ) -> StoreResult<Job> {
        if let Some(dup) = common::duplicate_custom_id(items) {
            return Err(StoreError::DuplicateCustomId(dup.to_string()));
        }
        let delta = JobDelta::for_new_items(items).values();
        let analyzer = serde_json::to_value(&job.analyzer).map_err(common::corrupt)?;
        let rejections =
            serde_json::to_value(common::rejections_of(0, items, 0)).map_err(common::corrupt)?;
        let mut list: Vec<Arg> = args![
            job.id,
            &job.tenant,
            &job.name,
            &job.model,
            job.requested_mode.as_str(),
            job.mode.as_str(),
            &job.mode_reason,
            job.detail.as_str(),
            &analyzer,
            job.metadata.as_ref(),
            &job.webhook_url,
            job.status.as_str(),
            job.estimate_batch_pico_usd,
            job.estimate_individual_pico_usd,
            job.created_at,
            &rejections,
            job.fetch.as_str(),
            job.reuse,
        ]
        .to_vec();
        list.extend(delta.iter().map(|v| Arg::Int(Some(*v))));
        let mut tx = Tx::begin(self).await?;
        let row = match D::tx_rows(&mut tx.0, &CREATE_JOB_SQL, &list).await {
            Ok(rows) => rows.into_iter().next().ok_or(StoreError::NotFound)?,
            Err(StoreError::Database(e)) if common::is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "job {} already exists",
                    job.id
                )))
            }
            Err(e) => return Err(e),
        };
        let mut created = job_from_row(&row)?;
        tx.insert_items(job.id, 0, items).await?;
        // Every image answered from earlier analyses (reuse): nothing is left to run.
        let all_reused = created.counts.reused > 0;
        if let Some(to) = finished_status(created.status, &created.counts).filter(|_| all_reused) {
            tx.set_status(job.id, to).await?;
            created = tx.lock_job(None, job.id).await?;
        }
        tx.mark_idempotency_key(&job.tenant, idempotency_key, job.id)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn append_items_keyed(
        &self,
        tenant: &str,
        job_id: Uuid,
        items: &[NewItem],
        idempotency_key: Option<&str>,
    ) -> StoreResult<Job> {
        let mut tx = Tx::begin(self).await?;
        let job = tx.lock_job(Some(tenant), job_id).await?;
        if job.status != JobStatus::Open {
            return Err(StoreError::Conflict(format!(
                "job is {}, items can only be added to an open job",
                job.status
            )));
        }
        if let Some(dup) = common::duplicate_custom_id(items) {
            return Err(StoreError::DuplicateCustomId(dup.to_string()));
        }
        let ids: Vec<&str> = items.iter().map(|i| i.custom_id.as_str()).collect();
        let sql = format!(
            "SELECT custom_id FROM items WHERE job_id = $1 AND custom_id {} \
             ORDER BY position LIMIT 1",
            D::in_list("$2")
        );
        if let Some(row) = tx.opt(&sql, args![job_id, &ids[..]]).await? {
            return Err(StoreError::DuplicateCustomId(row.text("custom_id")?));
        }
        // Positions are dense from 0, so the next one is the item count.
        tx.insert_items(job_id, job.counts.total, items).await?;
        let more = common::rejections_of(job.counts.total, items, job.rejections.len());
        if !more.is_empty() {
            let mut kept = job.rejections;
            kept.extend(more);
            let kept = serde_json::to_value(kept).map_err(common::corrupt)?;
            tx.exec(
                "UPDATE jobs SET rejections = $2 WHERE id = $1",
                args![job_id, &kept],
            )
            .await?;
        }
        let job = tx
            .apply_delta(job_id, &JobDelta::for_new_items(items))
            .await?;
        tx.mark_idempotency_key(tenant, idempotency_key, job_id)
            .await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn submit_open_job(
        &self,
        tenant: &str,
        job_id: Uuid,
        mode: Mode,
        mode_reason: &str,
        estimate_batch_pico_usd: Option<PicoUsd>,
        estimate_individual_pico_usd: Option<PicoUsd>,
    ) -> StoreResult<Job> {
        let mut tx = Tx::begin(self).await?;
        let job = tx.lock_job(Some(tenant), job_id).await?;
        if job.status != JobStatus::Open {
            return Err(StoreError::Conflict(format!(
                "job is {}, only an open job can be submitted",
                job.status
            )));
        }
        let to = finished_status(JobStatus::Queued, &job.counts).unwrap_or(JobStatus::Queued);
        tx.exec(
            "UPDATE jobs SET mode = $2, mode_reason = $3, estimate_batch_pico_usd = $4, \
             estimate_individual_pico_usd = $5, version = version + 1 WHERE id = $1",
            args![
                job_id,
                mode.as_str(),
                mode_reason,
                estimate_batch_pico_usd,
                estimate_individual_pico_usd
            ],
        )
        .await?;
        tx.set_status(job_id, to).await?;
        let job = tx.lock_job(None, job_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn set_open_estimate(
        &self,
        job_id: Uuid,
        estimate_batch_pico_usd: Option<PicoUsd>,
        estimate_individual_pico_usd: Option<PicoUsd>,
    ) -> StoreResult<bool> {
        let sql = "UPDATE jobs SET estimate_batch_pico_usd = $2, \
                   estimate_individual_pico_usd = $3, updated_at = now() \
                   WHERE id = $1 AND status = 'open'";
        let list = args![
            job_id,
            estimate_batch_pico_usd,
            estimate_individual_pico_usd
        ];
        Ok(self.write(sql, list).await? == 1)
    }

    async fn get_job(&self, tenant: Option<&str>, id: Uuid) -> StoreResult<Option<Job>> {
        let sql =
            format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant = $2)");
        let rows = self.read(&sql, args![id, tenant]).await?;
        rows.first().map(job_from_row).transpose()
    }

    async fn job_with_shards(
        &self,
        tenant: Option<&str>,
        id: Uuid,
    ) -> StoreResult<Option<(Job, Vec<Shard>)>> {
        let rows = self.read(&JOB_WITH_SHARDS_SQL, args![id, tenant]).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let job = job_from_row(&Prefixed {
            row: first,
            prefix: "j_",
        })?;
        let mut shards = Vec::with_capacity(rows.len());
        for row in &rows {
            let row = Prefixed { row, prefix: "s_" };
            if row.opt_uuid("id")?.is_some() {
                shards.push(shard_from_row(&row)?);
            }
        }
        Ok(Some((job, shards)))
    }

    async fn job_version(&self, tenant: &str, id: Uuid) -> StoreResult<Option<i64>> {
        let cache = self.versions();
        if let Some(version) = cache.and_then(|c| c.get(tenant, id)) {
            return Ok(Some(version));
        }
        let read_at = cache.map(|c| c.before_read());
        let sql = "SELECT version FROM jobs WHERE id = $1 AND tenant = $2";
        let rows = self.read(sql, args![id, tenant]).await?;
        let version = rows.first().map(|r| r.int("version")).transpose()?;
        if let (Some(cache), Some(at), Some(version)) = (cache, read_at, version) {
            cache.keep(at, tenant, id, version);
        }
        Ok(version)
    }

    async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<JobStatus>,
        after: Option<JobCursor>,
        limit: i64,
    ) -> StoreResult<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE tenant = $1 AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let list = args![
            tenant,
            status.map(|s| s.as_str()),
            after.map(|c| c.created_at),
            after.map(|c| c.id),
            limit
        ];
        rows_to(&self.read(&sql, list).await?, job_from_row)
    }

    async fn transition_job(
        &self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> StoreResult<bool> {
        let sql = format!("{} AND status {}", *SET_STATUS_SQL, D::in_list("$4"));
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let mut tx = Tx::begin(self).await?;
        let n = tx
            .exec(&sql, args![id, to.as_str(), to.is_terminal(), &from[..]])
            .await?;
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.event(id, "status", &status_json(to)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_job_if_done(&self, id: Uuid) -> StoreResult<Option<JobStatus>> {
        let mut tx = Tx::begin(self).await?;
        let job = tx.lock_job(None, id).await?;
        let Some(to) = finished_status(job.status, &job.counts) else {
            tx.rollback().await?;
            return Ok(None);
        };
        tx.set_status(id, to).await?;
        tx.commit().await?;
        Ok(Some(to))
    }

    async fn cancel_job(&self, tenant: &str, job_id: Uuid) -> StoreResult<Job> {
        let mut tx = Tx::begin(self).await?;
        let job = tx.lock_job(Some(tenant), job_id).await?;
        if job.status.is_terminal() {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job is {}, only a job that has not finished can be cancelled",
                job.status
            )));
        }
        if job.status == JobStatus::Cancelling {
            tx.rollback().await?;
            return Ok(job);
        }
        tx.set_status(job_id, JobStatus::Cancelling).await?;
        let error = common::job_cancelled_error();
        let sql = format!(
            "UPDATE items SET status = 'cancelled', error_code = $2, error_message = $3, \
             finished_at = now(), updated_at = now() WHERE job_id = $1 AND status = 'pending' \
             AND {}",
            common::CANCEL_AT_ONCE
        );
        let n = tx
            .exec(&sql, args![job_id, &error.code, &error.message])
            .await? as i64;
        let mut job = tx.lock_job(None, job_id).await?;
        if let Some(moved) = tx
            .moved(job_id, ItemStatus::Pending, ItemStatus::Cancelled, n)
            .await?
        {
            job = moved;
        }
        if let Some(to) = finished_status(job.status, &job.counts) {
            tx.set_status(job_id, to).await?;
            job = tx.lock_job(None, job_id).await?;
        }
        tx.commit().await?;
        Ok(job)
    }
}

#[async_trait]
impl<D: Dialect> ItemStore for D {
    async fn list_items(
        &self,
        job_id: Uuid,
        status: Option<ItemStatus>,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<Item>> {
        let after = after_position.unwrap_or(-1);
        match status {
            Some(status) => {
                let list = args![job_id, status.as_str(), after, limit];
                self.read_items(&RESULTS_BY_STATUS_SQL, list).await
            }
            None => {
                self.read_items(&RESULTS_SQL, args![job_id, after, limit])
                    .await
            }
        }
    }

    async fn list_items_by_post(
        &self,
        job_id: Uuid,
        after: Option<(Option<String>, i64)>,
        limit: i64,
    ) -> StoreResult<Vec<Item>> {
        // Posts in order, then the items without one: each part a range of the index
        // (job_id, post_id, position), so a page reads only its own rows.
        let mut items = match &after {
            Some((None, _)) => Vec::new(),
            Some((Some(post), position)) => {
                let list = args![job_id, post.as_str(), *position, limit];
                self.read_items(&POSTS_AFTER_SQL, list).await?
            }
            None => {
                self.read_items(&POSTS_FIRST_SQL, args![job_id, limit])
                    .await?
            }
        };
        let room = limit - items.len() as i64;
        if room > 0 {
            let after = match &after {
                Some((None, position)) => *position,
                _ => -1,
            };
            let list = args![job_id, after, room];
            items.extend(self.read_items(&NO_POST_SQL, list).await?);
        }
        Ok(items)
    }

    async fn get_item(&self, job_id: Uuid, custom_id: &str) -> StoreResult<Option<Item>> {
        // One row through the unique (job_id, custom_id) index.
        let sql = format!("SELECT {ITEM_COLS} FROM items WHERE job_id = $1 AND custom_id = $2");
        let rows = self.read(&sql, args![job_id, custom_id]).await?;
        Ok(rows_to(&rows, item_from_row)?.into_iter().next())
    }

    async fn pending_item_dims(&self, job_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>> {
        let sql = "SELECT width, height FROM items WHERE job_id = $1 AND status = 'pending' \
                   AND copy_of IS NULL ORDER BY position";
        rows_to(&self.read(sql, args![job_id]).await?, dims)
    }

    async fn shard_items(
        &self,
        shard_id: Uuid,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<Item>> {
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items WHERE shard_id = $1 AND position > $2 \
             ORDER BY position LIMIT $3"
        );
        let list = args![shard_id, after_position.unwrap_or(-1), limit];
        rows_to(&self.read(&sql, list).await?, item_from_row)
    }

    async fn shard_lines(
        &self,
        shard_id: Uuid,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<LinePage> {
        // items_shard_position_idx (shard_id, position) serves the range and the order.
        let sql = "SELECT position, custom_id, image FROM items WHERE shard_id = $1 \
                   AND position > $2 ORDER BY position LIMIT $3";
        let list = args![shard_id, after_position.unwrap_or(-1), limit];
        Ok(LinePage::new(self.read(sql, list).await?))
    }

    async fn shard_item_dims(&self, shard_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>> {
        let sql = "SELECT width, height FROM items WHERE shard_id = $1 \
                   AND status IN ('pending', 'submitted') ORDER BY position";
        rows_to(&self.read(sql, args![shard_id]).await?, dims)
    }

    async fn billed_usage(&self, job_id: Uuid, limit: i64) -> StoreResult<Vec<BilledUsage>> {
        // The primary key (job_id, position) serves the order: the latest items first.
        let sql = "SELECT width, height, input_tokens, output_tokens FROM items \
                   WHERE job_id = $1 AND status = 'succeeded' AND input_tokens IS NOT NULL \
                   AND output_tokens IS NOT NULL ORDER BY position DESC LIMIT $2";
        rows_to(&self.read(sql, args![job_id, limit]).await?, |r| {
            Ok(BilledUsage {
                dims: dims(r)?,
                input_tokens: r.int("input_tokens")?,
                output_tokens: r.int("output_tokens")?,
            })
        })
    }
}

fn dims<R: RowGet>(r: &R) -> StoreResult<Option<(u32, u32)>> {
    Ok(common::dims((
        r.opt_int32("width")?,
        r.opt_int32("height")?,
    )))
}

#[async_trait]
impl<D: Dialect> PlanStore for D {
    async fn claim_jobs_to_plan(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, JobLease)>> {
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = {}, lease_token = lease_token + 1 \
             WHERE id IN (SELECT j.id FROM jobs j \
               WHERE j.status IN ('queued', 'running') AND j.mode IN ('batch', 'individual', 'flex') \
               AND (j.lease_until IS NULL OR j.lease_until <= now()) \
               AND EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id \
                 AND i.status = 'pending' AND i.shard_id IS NULL AND i.copy_of IS NULL) \
               ORDER BY j.created_at, j.id LIMIT $3{}) \
             RETURNING {JOB_COLS}",
            D::now_plus("$2"),
            D::skip_locked(None)
        );
        let list = args![owner, duration_micros(lease_for), limit];
        let rows = self.write_returning(&sql, list).await?;
        let mut out = rows_to(&rows, |r| {
            let job = job_from_row(r)?;
            let lease = JobLease::new(job.id, r.int("lease_token")?);
            Ok((job, lease))
        })?;
        out.sort_by_key(|(j, _)| (j.created_at, j.id));
        Ok(out)
    }

    async fn unassigned_items(&self, job_id: Uuid) -> StoreResult<Vec<PlanItem>> {
        // Copies wait for the item they copy; they are never sent.
        let sql = "SELECT position, image_bytes, width, height, run_mode FROM items \
                   WHERE job_id = $1 \
                   AND status = 'pending' AND shard_id IS NULL AND copy_of IS NULL \
                   ORDER BY position";
        rows_to(&self.read(sql, args![job_id]).await?, |r| {
            Ok(PlanItem {
                position: r.int("position")?,
                image_bytes: r.int("image_bytes")?,
                width: r.opt_int32("width")?,
                height: r.opt_int32("height")?,
                run_mode: r.opt_parsed("run_mode")?,
            })
        })
    }

    async fn create_shards(&self, lease: &JobLease, shards: &[NewShard]) -> StoreResult<bool> {
        let job_id = lease.job_id;
        let mut tx = Tx::begin(self).await?;
        let sql = format!("SELECT lease_token FROM jobs WHERE id = $1{}", D::LOCK);
        match tx.opt(&sql, args![job_id]).await? {
            None => return Err(StoreError::NotFound),
            Some(r) if r.int("lease_token")? != lease.token => {
                tx.rollback().await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        for chunk in shards.chunks(common::CHUNK_ROWS) {
            D::insert_shards(&mut tx.0, job_id, chunk).await?;
        }
        let assign = format!(
            "UPDATE items SET shard_id = $2, updated_at = now() WHERE job_id = $1 \
             AND position {} AND status = 'pending' AND shard_id IS NULL",
            D::in_list("$3")
        );
        for shard in shards {
            // One statement per shard: a shard holds up to 50,000 positions in one list.
            let list = args![job_id, shard.id, &shard.positions[..]];
            let assigned = tx.exec(&assign, list).await? as i64;
            if assigned != shard.positions.len() as i64 {
                tx.exec(
                    "UPDATE shards SET item_count = $2 WHERE id = $1",
                    args![shard.id, assigned],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn release_job(&self, lease: &JobLease) -> StoreResult<()> {
        let sql = "UPDATE jobs SET lease_owner = NULL, lease_until = NULL \
                   WHERE id = $1 AND lease_token = $2";
        self.write(sql, args![lease.job_id, lease.token]).await?;
        Ok(())
    }
}

fn leased<R: RowGet>(rows: &[R]) -> StoreResult<Vec<LeasedShard>> {
    rows_to(rows, |r| Ok(LeasedShard::claimed(shard_from_row(r)?)))
}

/// A fenced single-statement write of the leased shard: `$1` id, `$2` token.
async fn fenced<D: Dialect>(
    d: &D,
    set: &str,
    lease: &ShardLease,
    more: &[Arg<'_>],
) -> StoreResult<bool> {
    let sql = format!("UPDATE shards SET {set} WHERE id = $1 AND lease_token = $2");
    let mut list = vec![Arg::Id(lease.shard_id), Arg::Int(Some(lease.token))];
    list.extend_from_slice(more);
    Ok(d.write(&sql, &list).await? == 1)
}

#[async_trait]
impl<D: Dialect> ShardStore for D {
    async fn claim_shards(
        &self,
        kind: ShardKind,
        statuses: &[ShardStatus],
        due: DateTime<Utc>,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<LeasedShard>> {
        let sql = format!(
            "UPDATE shards SET lease_owner = $1, lease_until = {}, lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM shards WHERE kind = $6 AND status {} \
               AND next_poll_at <= $4 AND (lease_until IS NULL OR lease_until <= now()) \
               ORDER BY next_poll_at, id LIMIT $5{}) \
             RETURNING {SHARD_COLS}",
            D::now_plus("$2"),
            D::in_list("$3"),
            D::skip_locked(None)
        );
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let list = args![
            owner,
            duration_micros(lease_for),
            &statuses[..],
            due,
            limit,
            kind.as_str()
        ];
        let mut out = leased(&self.write_returning(&sql, list).await?)?;
        out.sort_by_key(|s| (s.next_poll_at, s.id));
        Ok(out)
    }

    async fn claim_individual_shards(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<LeasedShard>> {
        // A shard's rank is the number of its job's shards already started plus its place
        // among the job's claimable ones: jobs served least so far go first, so a new
        // small job overtakes a long-running big one (fair share by shard).
        let sql = format!(
            "WITH ranked AS ( \
               SELECT s.id, s.next_poll_at, row_number() OVER (PARTITION BY s.job_id \
                 ORDER BY s.next_poll_at, s.id) + (SELECT count(*) FROM shards d \
                   WHERE d.job_id = s.job_id AND d.kind = 'individual' \
                   AND d.status <> 'planned') AS rank \
               FROM shards s JOIN jobs j ON j.id = s.job_id \
               WHERE s.kind = 'individual' AND s.status IN ('planned', 'submitted') \
                 AND j.status IN ('queued', 'running', 'cancelling') \
                 AND (s.lease_until IS NULL OR s.lease_until <= now())), \
             picked AS ( \
               SELECT s.id FROM shards s JOIN ranked r ON r.id = s.id \
               ORDER BY r.rank, r.next_poll_at, s.id LIMIT $3{}) \
             UPDATE shards SET lease_owner = $1, lease_until = {}, \
               lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM picked) \
             RETURNING {SHARD_COLS}",
            D::skip_locked(Some("s")),
            D::now_plus("$2"),
        );
        let list = args![owner, duration_micros(lease_for), limit];
        leased(&self.write_returning(&sql, list).await?)
    }

    async fn start_individual_shard(&self, lease: &ShardLease) -> StoreResult<bool> {
        move_shard_to_submitted(self, lease, None, "planned", Utc::now()).await
    }

    async fn renew_shard(&self, lease: &ShardLease, lease_for: Duration) -> StoreResult<bool> {
        let set = format!("lease_until = {}", D::now_plus("$3"));
        fenced(self, &set, lease, args![duration_micros(lease_for)]).await
    }

    async fn release_shard(&self, lease: &ShardLease) -> StoreResult<()> {
        fenced(self, "lease_owner = NULL, lease_until = NULL", lease, &[]).await?;
        Ok(())
    }

    async fn get_shard(&self, shard_id: Uuid) -> StoreResult<Option<Shard>> {
        let sql = format!("SELECT {SHARD_COLS} FROM shards WHERE id = $1");
        let rows = self.read(&sql, args![shard_id]).await?;
        rows.first().map(shard_from_row).transpose()
    }

    async fn list_shards_of_jobs(&self, job_ids: &[Uuid]) -> StoreResult<Vec<Shard>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {SHARD_COLS} FROM shards WHERE job_id {} \
             ORDER BY job_id, created_at, attempt, id",
            D::in_list("$1")
        );
        rows_to(&self.read(&sql, args![job_ids]).await?, shard_from_row)
    }

    async fn list_shards(&self, job_id: Uuid) -> StoreResult<Vec<Shard>> {
        let sql = format!(
            "SELECT {SHARD_COLS} FROM shards WHERE job_id = $1 ORDER BY created_at, attempt, id"
        );
        rows_to(&self.read(&sql, args![job_id]).await?, shard_from_row)
    }

    async fn shard_uploaded(&self, lease: &ShardLease, input_file_id: &str) -> StoreResult<bool> {
        let sql = "UPDATE shards SET input_file_id = $3, status = 'creating', updated_at = now() \
                   WHERE id = $1 AND lease_token = $2 AND status = 'planned'";
        let n = self
            .write(sql, args![lease.shard_id, lease.token, input_file_id])
            .await?;
        Ok(n == 1)
    }

    async fn shard_submitted(
        &self,
        lease: &ShardLease,
        openai_batch_id: &str,
        next_poll_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        move_shard_to_submitted(self, lease, Some(openai_batch_id), "creating", next_poll_at).await
    }

    /// Records the poll; when it moved the shard's `request_counts`, the job's `progress`
    /// event (with `processing`) goes in the same transaction.
    async fn shard_polled(&self, lease: &ShardLease, poll: &ShardPoll) -> StoreResult<bool> {
        let mut tx = Tx::begin(self).await?;
        let sql = format!(
            "SELECT job_id, request_completed, request_failed FROM shards \
             WHERE id = $1 AND lease_token = $2{}",
            D::LOCK
        );
        let Some(old) = tx.opt(&sql, args![lease.shard_id, lease.token]).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let job_id = old.uuid("job_id")?;
        let moved = old.int("request_completed")? != poll.request_completed
            || old.int("request_failed")? != poll.request_failed;
        let sql = "UPDATE shards SET batch_status = $3, request_total = $4, \
                   request_completed = $5, request_failed = $6, \
                   output_file_id = COALESCE($7, output_file_id), \
                   error_file_id = COALESCE($8, error_file_id), \
                   next_poll_at = CASE WHEN poll_hinted_at IS NOT NULL \
                     AND $3 NOT IN ('completed', 'failed', 'expired', 'cancelled') \
                     THEN now() ELSE $9 END, poll_hinted_at = NULL, \
                   poll_interval_ms = $10, updated_at = now() \
                   WHERE id = $1 AND lease_token = $2";
        tx.exec(
            sql,
            args![
                lease.shard_id,
                lease.token,
                &poll.batch_status,
                poll.request_total,
                poll.request_completed,
                poll.request_failed,
                &poll.output_file_id,
                &poll.error_file_id,
                poll.next_poll_at,
                poll.poll_interval_ms
            ],
        )
        .await?;
        if moved {
            let job = tx.lock_job(None, job_id).await?;
            let processing = tx.processing(job_id).await?;
            tx.event(job_id, "progress", &progress_json(&job.counts, processing))
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn set_shard_status(
        &self,
        lease: &ShardLease,
        status: ShardStatus,
        error: Option<&ItemError>,
    ) -> StoreResult<bool> {
        let set = "status = $3, error_code = COALESCE($4, error_code), \
                   error_message = COALESCE($5, error_message), updated_at = now()";
        let more = args![
            status.as_str(),
            error.map(|e| e.code.as_str()),
            error.map(|e| e.message.as_str())
        ];
        fenced(self, set, lease, more).await
    }

    async fn set_shard_estimate(&self, lease: &ShardLease, tokens: i64) -> StoreResult<bool> {
        fenced(self, "estimated_tokens = $3", lease, args![tokens]).await
    }

    async fn batch_model_load(&self, model: &str, refusal_code: &str) -> StoreResult<ModelLoad> {
        let rows = self
            .read(common::MODEL_LOAD_SQL, args![model, refusal_code])
            .await?;
        common::model_load_from_row(rows.first().ok_or(StoreError::NotFound)?)
    }
}

/// Settles a shard's items that are still in `from`, as `plan` says: `$1` shard, `$2`
/// from, `$3` final status, `$4` all back, `$5` retry, `$6` max attempts, `$7` uncount,
/// `$8`/`$9` the error.
const LEFTOVER_SQL: &str = "UPDATE items SET \
     status = CASE WHEN ($4 OR ($5 AND attempts < $6)) THEN 'pending' ELSE $3 END, \
     shard_id = CASE WHEN ($4 OR ($5 AND attempts < $6)) THEN NULL ELSE shard_id END, \
     attempts = CASE WHEN $7 AND attempts > 0 THEN attempts - 1 ELSE attempts END, \
     error_code = $8, error_message = $9, \
     finished_at = CASE WHEN ($4 OR ($5 AND attempts < $6)) THEN NULL ELSE now() END, \
     updated_at = now() \
     WHERE shard_id = $1 AND status = $2 RETURNING status";

#[async_trait]
impl<D: Dialect> SettleStore for D {
    async fn note_item(&self, shard_id: Uuid, custom_id: &str, note: &str) -> StoreResult<bool> {
        let sql = "UPDATE items SET note = CASE WHEN note IS NULL THEN $3 \
                   ELSE note || '; ' || $3 END, updated_at = now() \
                   WHERE shard_id = $1 AND custom_id = $2 AND status = 'submitted'";
        Ok(self.write(sql, args![shard_id, custom_id, note]).await? > 0)
    }

    async fn settle_outcomes(
        &self,
        lease: &ShardLease,
        verdicts: &[(&ItemOutcome, bool)],
        max_attempts: i32,
    ) -> StoreResult<Settled> {
        let mut tx = Tx::begin(self).await?;
        let Some(job_id) = tx.lock_shard(lease).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        if verdicts.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        let job = tx.lock_job(None, job_id).await?;
        let cancelling = job.status == JobStatus::Cancelling;
        let rows = D::settle_rows(
            &mut tx.0,
            job_id,
            lease.shard_id,
            verdicts,
            cancelling,
            max_attempts,
        )
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        let (recorded, settled) = common::recorded_from_rows(&rows)?;
        let mut delta = JobDelta::for_outcomes(&recorded);
        tx.fan_out(job_id, &mut delta).await?;
        tx.apply_progress(job_id, &delta).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn settle_leftovers(
        &self,
        lease: &ShardLease,
        error: &ItemError,
        leftover: Leftover,
        fail_shard: bool,
    ) -> StoreResult<Settled> {
        let mut tx = Tx::begin(self).await?;
        let Some(job_id) = tx.lock_shard(lease).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        let job = tx.lock_job(None, job_id).await?;
        let plan = LeftoverPlan::new(leftover, job.status);
        let mut delta = JobDelta::default();
        let mut settled = Settled::default();
        for from in [ItemStatus::Pending, ItemStatus::Submitted] {
            let list = args![
                lease.shard_id,
                from.as_str(),
                plan.final_status.as_str(),
                plan.all_back,
                plan.retry,
                plan.max_attempts,
                plan.uncount && from == ItemStatus::Submitted,
                &error.code,
                &error.message
            ];
            let rows = tx.rows(LEFTOVER_SQL, list).await?;
            let statuses = rows_to(&rows, |r| r.text("status"))?;
            delta.add_settled(&mut settled, from, statuses)?;
        }
        if fail_shard {
            tx.exec(
                "UPDATE shards SET status = 'failed', error_code = $2, error_message = $3, \
                 updated_at = now() WHERE id = $1",
                args![lease.shard_id, &error.code, &error.message],
            )
            .await?;
        }
        if settled.total() > 0 {
            tx.fan_out(job_id, &mut delta).await?;
            tx.apply_progress(job_id, &delta).await?;
        }
        tx.commit().await?;
        Ok(settled)
    }
}

#[async_trait]
impl<D: Dialect> EventStore for D {
    async fn append_event(&self, job_id: Uuid, kind: &str, data: &Value) -> StoreResult<()> {
        let mut tx = Tx::begin(self).await?;
        tx.lock_job(None, job_id).await?;
        tx.event(job_id, kind, data).await?;
        tx.commit().await
    }

    async fn last_event_id(&self, job_id: Uuid) -> StoreResult<i64> {
        // The last entry of the (job_id, id) index.
        let sql = "SELECT id FROM events WHERE job_id = $1 ORDER BY id DESC LIMIT 1";
        let rows = self.read(sql, args![job_id]).await?;
        rows.first().map_or(Ok(0), |r| r.int("id"))
    }

    async fn events_after(
        &self,
        job_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = self.read(&sql, args![job_id, after_id, limit]).await?;
        rows_to(&rows, event_from_row)
    }
}

#[async_trait]
impl<D: Dialect> IdempotencyStore for D {
    async fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyState> {
        // The upsert takes a free or expired key atomically; when it takes nothing, the
        // holder is read. A holder that aborts in between frees the key: try again.
        for _ in 0..5 {
            let started = self
                .write_returning(
                    "INSERT INTO idempotency_keys (tenant, key, request_hash, status, \
                     created_at, expires_at) VALUES ($1, $2, $3, 'in_flight', now(), $4) \
                     ON CONFLICT (tenant, key) DO UPDATE SET \
                     request_hash = EXCLUDED.request_hash, job_id = NULL, response = NULL, \
                     status = 'in_flight', created_at = EXCLUDED.created_at, \
                     expires_at = EXCLUDED.expires_at \
                     WHERE idempotency_keys.expires_at <= now() AND \
                     (idempotency_keys.status <> 'in_flight' OR idempotency_keys.job_id IS NULL) \
                     RETURNING tenant",
                    args![tenant, key, request_hash, expires_at],
                )
                .await?;
            if !started.is_empty() {
                return Ok(IdempotencyState::Started);
            }
            let rows = self
                .read(
                    "SELECT request_hash, job_id, response, status FROM idempotency_keys \
                     WHERE tenant = $1 AND key = $2",
                    args![tenant, key],
                )
                .await?;
            if let Some(row) = rows.first() {
                return idempotency_state(row);
            }
        }
        Err(StoreError::Conflict(format!(
            "idempotency key {key:?} keeps changing hands"
        )))
    }

    async fn idempotency_complete(
        &self,
        tenant: &str,
        key: &str,
        job_id: Uuid,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let sql = "UPDATE idempotency_keys SET status = 'completed', job_id = $3, \
                   response = $4, expires_at = $5 WHERE tenant = $1 AND key = $2";
        if self
            .write(sql, args![tenant, key, job_id, response, expires_at])
            .await?
            == 0
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn idempotency_renew(
        &self,
        tenant: &str,
        key: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let sql = "UPDATE idempotency_keys SET expires_at = $3 \
                   WHERE tenant = $1 AND key = $2 AND status = 'in_flight'";
        Ok(self.write(sql, args![tenant, key, until]).await? > 0)
    }

    async fn idempotency_abort(&self, tenant: &str, key: &str) -> StoreResult<()> {
        // A key marked with its work's job keeps saying the work is done.
        let sql = "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 \
                   AND status = 'in_flight' AND job_id IS NULL";
        self.write(sql, args![tenant, key]).await?;
        Ok(())
    }
}

fn idempotency_state<R: RowGet>(row: &R) -> StoreResult<IdempotencyState> {
    let request_hash = row.text("request_hash")?;
    if row.text("status")? != "completed" {
        return Ok(match row.opt_uuid("job_id")? {
            Some(job_id) => IdempotencyState::Committed {
                request_hash,
                job_id,
            },
            None => IdempotencyState::InFlight { request_hash },
        });
    }
    Ok(IdempotencyState::Completed {
        request_hash,
        job_id: row
            .opt_uuid("job_id")?
            .ok_or_else(|| common::corrupt("completed idempotency key without job"))?,
        response: row
            .opt_json("response")?
            .ok_or_else(|| common::corrupt("completed idempotency key without response"))?,
    })
}

#[async_trait]
impl<D: Dialect> ReportStore for D {
    async fn cost_totals(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<CostTotals> {
        let sql = "SELECT CAST(count(*) AS BIGINT) AS jobs, \
                   CAST(COALESCE(sum(total - rejected), 0) AS BIGINT) AS images, \
                   CAST(COALESCE(sum(actual_pico_usd), 0) AS BIGINT) AS actual, \
                   CAST(COALESCE(sum(individual_pico_usd), 0) AS BIGINT) AS individual \
                   FROM jobs WHERE tenant = $1 AND created_at >= $2 AND created_at < $3";
        let rows = self.read(sql, args![tenant, from, to]).await?;
        let row = rows.first().ok_or(StoreError::NotFound)?;
        Ok(CostTotals {
            jobs: row.int("jobs")?,
            images: row.int("images")?,
            actual_pico_usd: row.int("actual")?,
            individual_pico_usd: row.int("individual")?,
        })
    }

    async fn gauges(&self) -> StoreResult<Gauges> {
        common::gauges_from_rows(&self.read(common::GAUGES_SQL, &[]).await?)
    }

    async fn open_items(&self, tenant: &str) -> StoreResult<i64> {
        let sql = "SELECT CAST(COALESCE(sum(pending + submitted), 0) AS BIGINT) AS open \
                   FROM jobs WHERE tenant = $1 \
                   AND status NOT IN ('completed', 'failed', 'cancelled')";
        let rows = self.read(sql, args![tenant]).await?;
        rows.first().ok_or(StoreError::NotFound)?.int("open")
    }

    async fn month_spend(&self, tenant: &str, since: DateTime<Utc>) -> StoreResult<MonthSpend> {
        // An unfinished job counts at its estimate for its mode (individual while the mode
        // is not decided: the dearer one), or at its cost so far when that is more.
        let sql = "SELECT CAST(COALESCE(sum(CASE WHEN status IN ('completed', 'failed', \
                   'cancelled') THEN actual_pico_usd ELSE 0 END), 0) AS BIGINT) AS actual, \
                   CAST(COALESCE(sum(CASE WHEN status IN ('completed', 'failed', 'cancelled') \
                   THEN 0 WHEN actual_pico_usd > reserve THEN actual_pico_usd ELSE reserve END), \
                   0) AS BIGINT) AS in_flight \
                   FROM (SELECT status, actual_pico_usd, CASE WHEN mode IN ('batch', 'flex') \
                   THEN COALESCE(estimate_batch_pico_usd, 0) \
                   ELSE COALESCE(estimate_individual_pico_usd, estimate_batch_pico_usd, 0) END \
                   AS reserve FROM jobs WHERE tenant = $1 AND created_at >= $2) AS month";
        let rows = self.read(sql, args![tenant, since]).await?;
        let row = rows.first().ok_or(StoreError::NotFound)?;
        Ok(MonthSpend {
            actual_pico_usd: row.int("actual")?,
            in_flight_pico_usd: row.int("in_flight")?,
        })
    }
}

#[async_trait]
impl<D: Dialect> KeyStore for D {
    async fn insert_api_key(&self, sha256: &str, prefix: &str, tenant: &str) -> StoreResult<()> {
        let sql = "INSERT INTO api_keys (sha256, prefix, tenant, created_at) \
                   VALUES ($1, $2, $3, now())";
        match self.write(sql, args![sha256, prefix, tenant]).await {
            Err(StoreError::Database(e)) if common::is_unique_violation(&e) => Err(
                StoreError::Conflict(format!("a key with prefix {prefix} exists")),
            ),
            other => other.map(|_| ()),
        }
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let sql = "SELECT prefix, tenant, created_at, revoked_at FROM api_keys \
                   WHERE prefix IS NOT NULL ORDER BY created_at, prefix";
        self.read(sql, &[])
            .await?
            .iter()
            .map(|row| {
                Ok(StoredKey {
                    prefix: row.text("prefix")?,
                    tenant: row.text("tenant")?,
                    created_at: row.ts("created_at")?,
                    revoked_at: row.opt_ts("revoked_at")?,
                })
            })
            .collect()
    }

    async fn revoke_api_key(&self, prefix: &str) -> StoreResult<bool> {
        let sql = "UPDATE api_keys SET revoked_at = now() \
                   WHERE prefix = $1 AND revoked_at IS NULL";
        Ok(self.write(sql, args![prefix]).await? > 0)
    }

    async fn active_api_keys(&self) -> StoreResult<Vec<(String, String)>> {
        let sql = "SELECT sha256, tenant FROM api_keys WHERE revoked_at IS NULL";
        self.read(sql, &[])
            .await?
            .iter()
            .map(|row| Ok((row.text("sha256")?, row.text("tenant")?)))
            .collect()
    }
}

#[async_trait]
impl<D: Dialect> WebhookStore for D {
    async fn claim_webhooks(
        &self,
        lease: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, DateTime<Utc>)>> {
        if D::CLAIM_READS_FIRST {
            // Most rounds find nothing, and need not take the write lock.
            let sql = "SELECT 1 AS due FROM jobs WHERE webhook_state = 'pending' \
                       AND webhook_due_at <= now() LIMIT 1";
            if self.read(sql, &[]).await?.is_empty() {
                return Ok(Vec::new());
            }
        }
        let sql = format!(
            "UPDATE jobs SET webhook_due_at = {} \
             WHERE id IN (SELECT id FROM jobs WHERE webhook_state = 'pending' \
               AND webhook_due_at <= now() ORDER BY webhook_due_at LIMIT $2{}) \
             RETURNING {JOB_COLS}, webhook_due_at",
            D::now_plus("$1"),
            D::skip_locked(None)
        );
        let rows = self
            .write_returning(&sql, args![duration_micros(lease), limit])
            .await?;
        common::claimed_webhooks(&rows)
    }

    async fn webhook_attempted(
        &self,
        job_id: Uuid,
        claim: DateTime<Utc>,
        attempt: &WebhookAttempt,
    ) -> StoreResult<bool> {
        let mut tx = Tx::begin(self).await?;
        let list = args![
            job_id,
            claim,
            attempt.state.as_str(),
            attempt.retry_at,
            &attempt.error
        ];
        if tx.exec(common::WEBHOOK_ATTEMPTED_SQL, list).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.event(job_id, "webhook", &attempt.detail).await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl<D: Dialect> OpenAiWebhookStore for D {
    async fn openai_webhook_received(
        &self,
        webhook_id: &str,
        batch_id: Option<&str>,
    ) -> StoreResult<OpenAiWebhookReceipt> {
        let mut tx = Tx::begin(self).await?;
        let inserted = tx
            .exec(
                "INSERT INTO openai_webhooks (id, received_at) VALUES ($1, now()) \
                 ON CONFLICT (id) DO NOTHING",
                args![webhook_id],
            )
            .await?;
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(OpenAiWebhookReceipt {
                replay: true,
                shards_due: 0,
            });
        }
        let shards_due = match batch_id {
            None => 0,
            Some(batch_id) => {
                tx.exec(
                    "UPDATE shards SET poll_hinted_at = now(), \
                     next_poll_at = CASE WHEN next_poll_at < now() THEN next_poll_at \
                       ELSE now() END \
                     WHERE openai_batch_id = $1 AND kind = 'batch' AND status = 'submitted'",
                    args![batch_id],
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok(OpenAiWebhookReceipt {
            replay: false,
            shards_due,
        })
    }

    async fn forget_openai_webhooks(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.write(
            "DELETE FROM openai_webhooks WHERE received_at < $1",
            args![before],
        )
        .await
    }
}

#[async_trait]
impl<D: Dialect> ReuseStore for D {
    async fn find_reusable(
        &self,
        keys: &[&str],
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Reusable>> {
        let sql = format!(
            "SELECT reuse_key, job_id, custom_id, output, resolved_model, input_tokens, \
             cached_input_tokens, output_tokens, reasoning_tokens, finished_at FROM items \
             WHERE reuse_key IS NOT NULL AND reuse_key {} AND status = 'succeeded' \
             AND finished_at >= $2 \
             AND reused_from_job IS NULL AND copy_of IS NULL AND output IS NOT NULL \
             ORDER BY finished_at DESC",
            D::in_list("$1")
        );
        let mut found = Vec::new();
        for chunk in keys.chunks(common::CHUNK_ROWS) {
            let rows = self.read(&sql, args![chunk, since]).await?;
            for r in &rows {
                found.push(Reusable {
                    reuse_key: r.text("reuse_key")?,
                    job_id: r.uuid("job_id")?,
                    custom_id: r.text("custom_id")?,
                    output: r.json("output")?,
                    resolved_model: r.opt_text("resolved_model")?,
                    usage: crate::domain::Usage {
                        input_tokens: r.opt_int("input_tokens")?.unwrap_or(0),
                        cached_input_tokens: r.opt_int("cached_input_tokens")?.unwrap_or(0),
                        output_tokens: r.opt_int("output_tokens")?.unwrap_or(0),
                        reasoning_tokens: r.opt_int("reasoning_tokens")?.unwrap_or(0),
                    },
                    finished_at: r.ts("finished_at")?,
                });
            }
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.finished_at));
        Ok(found)
    }

    async fn job_originals(&self, job_id: Uuid, keys: &[&str]) -> StoreResult<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT reuse_key, position FROM items WHERE reuse_key IS NOT NULL \
             AND reuse_key {} AND job_id = $2 \
             AND copy_of IS NULL AND reused_from_job IS NULL AND status <> 'rejected' \
             ORDER BY position",
            D::in_list("$1")
        );
        let mut found = Vec::new();
        for chunk in keys.chunks(common::CHUNK_ROWS) {
            for r in &self.read(&sql, args![chunk, job_id]).await? {
                found.push((r.text("reuse_key")?, r.int("position")?));
            }
        }
        found.sort_by_key(|(_, position)| *position);
        Ok(found)
    }
}

#[async_trait]
impl<D: Dialect> Store for D {
    async fn ping(&self) -> StoreResult<()> {
        Dialect::ping(self).await
    }

    async fn close(&self) {
        Dialect::close(self).await
    }
}
