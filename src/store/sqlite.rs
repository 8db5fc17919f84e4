//! The SQLite backend of `Store` (the embedded default, one process).
//!
//! Time comes from the process clock (`Utc::now()`, stored as INTEGER microseconds) in
//! every statement. SQLite has one writer at a time: every write runs in a transaction
//! opened with `BEGIN IMMEDIATE`, so concurrent writers queue on the busy timeout instead
//! of failing with SQLITE_BUSY halfway through; a claim is a plain UPDATE inside it.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::common::{
    self, corrupt, duration_micros, event_from_row, finished_status, item_from_row, job_from_row,
    parse_uuid, progress_json, shard_from_row, status_json, JobDelta, LeftoverPlan, RowGet,
    EVENT_COLS, ITEM_COLS, JOB_COLS, OUTCOME_COLS, SHARD_COLS,
};
use super::{
    CostTotals, Gauges, IdempotencyState, JobCursor, Leftover, ModelLoad, NewShard, PlanItem,
    Settled, ShardPoll, Store, StoreError, StoreResult, WebhookAttempt,
};
use crate::domain::{
    Event, Item, ItemError, ItemOutcome, ItemStatus, Job, JobStatus, Mode, NewItem, NewJob,
    PicoUsd, Shard, ShardKind, ShardStatus,
};

const POOL_SIZE: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static DELTA_SQL: LazyLock<String> = LazyLock::new(|| JobDelta::update_sql("$19"));

/// `Store` on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

type Tx = Transaction<'static, Sqlite>;

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn id(u: Uuid) -> String {
    u.hyphenated().to_string()
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn ts_from(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(format!("timestamp {v} out of range")))
}

fn json_array<T: AsRef<str>>(list: impl IntoIterator<Item = T>) -> String {
    Value::Array(
        list.into_iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
    .to_string()
}

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) and runs the migrations.
    /// WAL journal, busy timeout 10 s, foreign keys on, pool of 4 (1 for `:memory:`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            if let Some(dir) = opts.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::InvalidUrl(format!(
                            "cannot create folder {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
        }
        // An in-memory database lives as long as its one connection.
        let pool_opts = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(POOL_SIZE)
        };
        let pool = pool_opts.connect_with(opts).await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool; runs no migration.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the embedded `migrations/sqlite`.
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn write(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Runs one write statement in its own immediate transaction; returns rows changed.
    async fn write_one<'q>(
        &self,
        q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Shard `from` → `submitted` (with the batch id, if any), its pending items →
    /// submitted, counters moved, job queued → running: one fenced transaction.
    async fn move_shard_to_submitted(
        &self,
        shard_id: Uuid,
        token: i64,
        openai_batch_id: Option<&str>,
        from: &str,
        next_poll_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let at = now();
        let mut tx = self.write().await?;
        let job_id: Option<String> = sqlx::query_scalar(
            "UPDATE shards SET status = 'submitted', openai_batch_id = $3, next_poll_at = $4, \
             updated_at = $5 WHERE id = $1 AND lease_token = $2 AND status = $6 \
             RETURNING job_id",
        )
        .bind(id(shard_id))
        .bind(token)
        .bind(openai_batch_id)
        .bind(micros(next_poll_at))
        .bind(at)
        .bind(from)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job_id) = job_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        let job_id = parse_uuid(&job_id)?;
        let job = find_job(&mut tx, None, job_id).await?;
        let moved = sqlx::query(
            "UPDATE items SET status = 'submitted', attempts = attempts + 1, updated_at = $2 \
             WHERE shard_id = $1 AND status = 'pending'",
        )
        .bind(id(shard_id))
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if moved > 0 {
            let mut delta = JobDelta::default();
            delta.add_status(ItemStatus::Pending, -moved);
            delta.add_status(ItemStatus::Submitted, moved);
            let job = apply_delta(&mut tx, job_id, &delta, at).await?;
            insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts), at).await?;
        }
        if job.status == JobStatus::Queued {
            set_job_status(&mut tx, job_id, JobStatus::Running, at).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl RowGet for SqliteRow {
    fn text(&self, col: &str) -> StoreResult<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> StoreResult<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn int32(&self, col: &str) -> StoreResult<i32> {
        Ok(self.try_get(col)?)
    }
    fn opt_int32(&self, col: &str) -> StoreResult<Option<i32>> {
        Ok(self.try_get(col)?)
    }
    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        parse_uuid(&self.text(col)?)
    }
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>> {
        self.opt_text(col)?.as_deref().map(parse_uuid).transpose()
    }
    fn ts(&self, col: &str) -> StoreResult<DateTime<Utc>> {
        ts_from(self.int(col)?)
    }
    fn opt_ts(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.opt_int(col)?.map(ts_from).transpose()
    }
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        self.opt_text(col)?
            .map(|s| serde_json::from_str(&s).map_err(corrupt))
            .transpose()
    }
}

async fn apply_delta(tx: &mut Tx, job_id: Uuid, delta: &JobDelta, at: i64) -> StoreResult<Job> {
    let mut q = sqlx::query(&DELTA_SQL).bind(id(job_id));
    for v in delta.values() {
        q = q.bind(v);
    }
    let row = q.bind(at).fetch_one(&mut **tx).await?;
    job_from_row(&row)
}

async fn insert_event(
    tx: &mut Tx,
    job_id: Uuid,
    kind: &str,
    data: &Value,
    at: i64,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (job_id, kind, data, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id(job_id))
        .bind(kind)
        .bind(json_text(data))
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn find_job(tx: &mut Tx, tenant: Option<&str>, job_id: Uuid) -> StoreResult<Job> {
    let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant = $2)");
    let row = sqlx::query(&sql)
        .bind(id(job_id))
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    job_from_row(&row)
}

async fn set_job_status(tx: &mut Tx, job_id: Uuid, to: JobStatus, at: i64) -> StoreResult<()> {
    sqlx::query(&format!(
        "UPDATE jobs SET status = $2, updated_at = $3, \
             completed_at = CASE WHEN $4 THEN $3 ELSE completed_at END, {} WHERE id = $1",
        common::owe_webhook_sql("$4", "$3")
    ))
    .bind(id(job_id))
    .bind(to.as_str())
    .bind(at)
    .bind(to.is_terminal())
    .execute(&mut **tx)
    .await?;
    insert_event(tx, job_id, "status", &status_json(to), at).await
}

/// Inserts items in bulk (one multi-row VALUES statement per chunk), positions from `first`.
async fn insert_items(
    tx: &mut Tx,
    job_id: Uuid,
    first: i64,
    items: &[NewItem],
    at: i64,
) -> StoreResult<()> {
    let job = id(job_id);
    let mut position = first;
    for chunk in common::item_chunks(items) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO items (job_id, position, custom_id, post_id, image, image_bytes, width, \
             height, status, error_code, error_message, finished_at, updated_at) ",
        );
        qb.push_values(chunk, |mut b, it| {
            b.push_bind(job.as_str())
                .push_bind(position)
                .push_bind(it.custom_id.as_str())
                .push_bind(it.post_id.as_deref())
                .push_bind(it.image.as_str())
                .push_bind(it.image.len() as i64)
                .push_bind(it.width)
                .push_bind(it.height)
                .push_bind(it.status.as_str())
                .push_bind(it.error.as_ref().map(|e| e.code.as_str()))
                .push_bind(it.error.as_ref().map(|e| e.message.as_str()))
                .push_bind(it.status.is_terminal().then_some(at))
                .push_bind(at);
            position += 1;
        });
        qb.build().execute(&mut **tx).await.map_err(|e| {
            if common::is_unique_violation(&e) {
                StoreError::DuplicateCustomId(String::new())
            } else {
                e.into()
            }
        })?;
    }
    Ok(())
}

/// The shard's job when `token` is still its lease token.
async fn check_shard(tx: &mut Tx, shard_id: Uuid, token: i64) -> StoreResult<Option<Uuid>> {
    let row = sqlx::query("SELECT job_id, lease_token FROM shards WHERE id = $1")
        .bind(id(shard_id))
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    if row.int("lease_token")? != token {
        return Ok(None);
    }
    Ok(Some(row.uuid("job_id")?))
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_job(&self, job: &NewJob, items: &[NewItem]) -> StoreResult<Job> {
        if let Some(dup) = common::duplicate_custom_id(items) {
            return Err(StoreError::DuplicateCustomId(dup.to_string()));
        }
        let delta = JobDelta::for_new_items(items);
        let analyzer = serde_json::to_string(&job.analyzer).map_err(corrupt)?;
        let created_at = micros(job.created_at);
        let at = now();
        let mut tx = self.write().await?;
        let sql = format!(
            "INSERT INTO jobs (id, tenant, name, model, requested_mode, mode, mode_reason, detail, \
             analyzer, metadata, webhook_url, status, estimate_batch_pico_usd, \
             estimate_individual_pico_usd, created_at, updated_at, {}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, \
             {}) RETURNING {JOB_COLS}",
            JobDelta::COLUMNS.join(", "),
            (16..16 + JobDelta::COLUMNS.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(id(job.id))
            .bind(&job.tenant)
            .bind(&job.name)
            .bind(&job.model)
            .bind(job.requested_mode.as_str())
            .bind(job.mode.as_str())
            .bind(&job.mode_reason)
            .bind(job.detail.as_str())
            .bind(analyzer)
            .bind(job.metadata.as_ref().map(json_text))
            .bind(&job.webhook_url)
            .bind(job.status.as_str())
            .bind(job.estimate_batch_pico_usd)
            .bind(job.estimate_individual_pico_usd)
            .bind(created_at);
        for v in delta.values() {
            q = q.bind(v);
        }
        let row = q.fetch_one(&mut *tx).await.map_err(|e| {
            if common::is_unique_violation(&e) {
                StoreError::Conflict(format!("job {} already exists", job.id))
            } else {
                e.into()
            }
        })?;
        let created = job_from_row(&row)?;
        insert_items(&mut tx, job.id, 0, items, at).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn append_items(
        &self,
        tenant: &str,
        job_id: Uuid,
        items: &[NewItem],
    ) -> StoreResult<Job> {
        let at = now();
        let mut tx = self.write().await?;
        let job = find_job(&mut tx, Some(tenant), job_id).await?;
        if job.status != JobStatus::Open {
            return Err(StoreError::Conflict(format!(
                "job is {}, items can only be added to an open job",
                job.status
            )));
        }
        if let Some(dup) = common::duplicate_custom_id(items) {
            return Err(StoreError::DuplicateCustomId(dup.to_string()));
        }
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT custom_id FROM items WHERE job_id = $1 \
             AND custom_id IN (SELECT value FROM json_each($2)) ORDER BY position LIMIT 1",
        )
        .bind(id(job_id))
        .bind(json_array(items.iter().map(|i| i.custom_id.as_str())))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(dup) = taken {
            return Err(StoreError::DuplicateCustomId(dup));
        }
        // Positions are dense from 0, so the next one is the item count.
        insert_items(&mut tx, job_id, job.counts.total, items, at).await?;
        let job = apply_delta(&mut tx, job_id, &JobDelta::for_new_items(items), at).await?;
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
        let at = now();
        let mut tx = self.write().await?;
        let job = find_job(&mut tx, Some(tenant), job_id).await?;
        if job.status != JobStatus::Open {
            return Err(StoreError::Conflict(format!(
                "job is {}, only an open job can be submitted",
                job.status
            )));
        }
        let to = finished_status(JobStatus::Queued, &job.counts).unwrap_or(JobStatus::Queued);
        sqlx::query(
            "UPDATE jobs SET mode = $2, mode_reason = $3, estimate_batch_pico_usd = $4, \
             estimate_individual_pico_usd = $5 WHERE id = $1",
        )
        .bind(id(job_id))
        .bind(mode.as_str())
        .bind(mode_reason)
        .bind(estimate_batch_pico_usd)
        .bind(estimate_individual_pico_usd)
        .execute(&mut *tx)
        .await?;
        set_job_status(&mut tx, job_id, to, at).await?;
        let job = find_job(&mut tx, None, job_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn get_job(&self, tenant: Option<&str>, job_id: Uuid) -> StoreResult<Option<Job>> {
        let sql =
            format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant = $2)");
        sqlx::query(&sql)
            .bind(id(job_id))
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| job_from_row(&r))
            .transpose()
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
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(status.map(|s| s.as_str()))
            .bind(after.map(|c| micros(c.created_at)))
            .bind(after.map(|c| id(c.id)))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn transition_job(
        &self,
        job_id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> StoreResult<bool> {
        let at = now();
        let mut tx = self.write().await?;
        let res = sqlx::query(&format!(
            "UPDATE jobs SET status = $2, updated_at = $3, \
             completed_at = CASE WHEN $4 THEN $3 ELSE completed_at END, {} \
             WHERE id = $1 AND status IN (SELECT value FROM json_each($5))",
            common::owe_webhook_sql("$4", "$3")
        ))
        .bind(id(job_id))
        .bind(to.as_str())
        .bind(at)
        .bind(to.is_terminal())
        .bind(json_array(from.iter().map(|s| s.as_str())))
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, job_id, "status", &status_json(to), at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_job_if_done(&self, job_id: Uuid) -> StoreResult<Option<JobStatus>> {
        let at = now();
        let mut tx = self.write().await?;
        let job = find_job(&mut tx, None, job_id).await?;
        let Some(to) = finished_status(job.status, &job.counts) else {
            tx.rollback().await?;
            return Ok(None);
        };
        set_job_status(&mut tx, job_id, to, at).await?;
        tx.commit().await?;
        Ok(Some(to))
    }

    async fn list_items(
        &self,
        job_id: Uuid,
        status: Option<ItemStatus>,
        after_position: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<Item>> {
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items WHERE job_id = $1 AND ($2 IS NULL OR status = $2) \
             AND position > $3 ORDER BY position LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(id(job_id))
            .bind(status.map(|s| s.as_str()))
            .bind(after_position.unwrap_or(-1))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    async fn list_items_by_post(
        &self,
        job_id: Uuid,
        after: Option<(Option<String>, i64)>,
        limit: i64,
    ) -> StoreResult<Vec<Item>> {
        let cond = match &after {
            None => "($2 IS NULL AND $3 = -1)",
            Some((Some(_), _)) => {
                "(post_id > $2 OR (post_id = $2 AND position > $3) OR post_id IS NULL)"
            }
            Some((None, _)) => "(post_id IS NULL AND position > $3 AND $2 IS NULL)",
        };
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items WHERE job_id = $1 AND {cond} \
             ORDER BY post_id NULLS LAST, position LIMIT $4"
        );
        let (post, pos) = after.unwrap_or((None, -1));
        let rows = sqlx::query(&sql)
            .bind(id(job_id))
            .bind(post)
            .bind(pos)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    async fn claim_jobs_to_plan(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, i64)>> {
        let at = now();
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = $2 + $3, \
             lease_token = lease_token + 1 \
             WHERE id IN (SELECT j.id FROM jobs j \
               WHERE j.status IN ('queued', 'running') AND j.mode IN ('batch', 'individual') \
               AND (j.lease_until IS NULL OR j.lease_until <= $2) \
               AND EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id \
                 AND i.status = 'pending' AND i.shard_id IS NULL) \
               ORDER BY j.created_at, j.id LIMIT $4) \
             RETURNING {JOB_COLS}"
        );
        let mut tx = self.write().await?;
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(at)
            .bind(duration_micros(lease_for))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| Ok((job_from_row(r)?, r.int("lease_token")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|(j, _)| (j.created_at, j.id));
        Ok(out)
    }

    async fn unassigned_items(&self, job_id: Uuid) -> StoreResult<Vec<PlanItem>> {
        let rows = sqlx::query(
            "SELECT position, image_bytes, width, height FROM items WHERE job_id = $1 \
             AND status = 'pending' AND shard_id IS NULL ORDER BY position",
        )
        .bind(id(job_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PlanItem {
                    position: r.int("position")?,
                    image_bytes: r.int("image_bytes")?,
                    width: r.opt_int32("width")?,
                    height: r.opt_int32("height")?,
                })
            })
            .collect()
    }

    async fn create_shards(
        &self,
        job_id: Uuid,
        lease_token: i64,
        shards: &[NewShard],
    ) -> StoreResult<bool> {
        let at = now();
        let job = id(job_id);
        let mut tx = self.write().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT lease_token FROM jobs WHERE id = $1")
            .bind(&job)
            .fetch_optional(&mut *tx)
            .await?;
        match current {
            None => return Err(StoreError::NotFound),
            Some(t) if t != lease_token => {
                tx.rollback().await?;
                return Ok(false);
            }
            Some(_) => {}
        }
        for chunk in shards.chunks(common::CHUNK_ROWS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO shards (id, job_id, kind, attempt, model, status, item_count, \
                 poll_interval_ms, next_poll_at, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(id(s.id))
                    .push_bind(job.as_str())
                    .push_bind(s.kind.as_str())
                    .push_bind(s.attempt)
                    .push_bind(s.model.as_str())
                    .push_bind(ShardStatus::Planned.as_str())
                    .push_bind(s.positions.len() as i64)
                    .push_bind(s.poll_interval_ms)
                    .push_bind(micros(s.next_poll_at))
                    .push_bind(at)
                    .push_bind(at);
            });
            qb.build().execute(&mut *tx).await?;
        }
        for shard in shards {
            let positions = Value::from(shard.positions.clone()).to_string();
            let assigned = sqlx::query(
                "UPDATE items SET shard_id = $2, updated_at = $3 WHERE job_id = $1 \
                 AND position IN (SELECT value FROM json_each($4)) \
                 AND status = 'pending' AND shard_id IS NULL",
            )
            .bind(&job)
            .bind(id(shard.id))
            .bind(at)
            .bind(positions)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            if assigned != shard.positions.len() as i64 {
                sqlx::query("UPDATE shards SET item_count = $2 WHERE id = $1")
                    .bind(id(shard.id))
                    .bind(assigned)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn release_job(&self, job_id: Uuid, lease_token: i64) -> StoreResult<()> {
        self.write_one(
            sqlx::query(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id(job_id))
            .bind(lease_token),
        )
        .await?;
        Ok(())
    }

    async fn claim_shards(
        &self,
        kind: ShardKind,
        statuses: &[ShardStatus],
        due: DateTime<Utc>,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<Shard>> {
        let at = now();
        let sql = format!(
            "UPDATE shards SET lease_owner = $1, lease_until = $2 + $3, \
             lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM shards \
               WHERE kind = $7 AND status IN (SELECT value FROM json_each($4)) \
               AND next_poll_at <= $5 AND (lease_until IS NULL OR lease_until <= $2) \
               ORDER BY next_poll_at, id LIMIT $6) \
             RETURNING {SHARD_COLS}"
        );
        let mut tx = self.write().await?;
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(at)
            .bind(duration_micros(lease_for))
            .bind(json_array(statuses.iter().map(|s| s.as_str())))
            .bind(micros(due))
            .bind(limit)
            .bind(kind.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(shard_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|s| (s.next_poll_at, s.id));
        Ok(out)
    }

    async fn claim_individual_shards(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<Shard>> {
        let at = now();
        // A shard's rank is the number of its job's shards already started plus its place
        // among the job's claimable ones: jobs served least so far go first, so a new
        // small job overtakes a long-running big one (fair share by shard).
        let sql = format!(
            "UPDATE shards SET lease_owner = $1, lease_until = $2 + $3, \
             lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM ( \
               SELECT s.id, s.next_poll_at, row_number() OVER (PARTITION BY s.job_id \
                 ORDER BY s.next_poll_at, s.id) + (SELECT count(*) FROM shards d \
                   WHERE d.job_id = s.job_id AND d.kind = 'individual' \
                   AND d.status <> 'planned') AS rank \
               FROM shards s JOIN jobs j ON j.id = s.job_id \
               WHERE s.kind = 'individual' AND s.status IN ('planned', 'submitted') \
                 AND j.status IN ('queued', 'running', 'cancelling') \
                 AND (s.lease_until IS NULL OR s.lease_until <= $2)) \
               ORDER BY rank, next_poll_at, id LIMIT $4) \
             RETURNING {SHARD_COLS}"
        );
        let mut tx = self.write().await?;
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(at)
            .bind(duration_micros(lease_for))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(shard_from_row).collect()
    }

    async fn start_individual_shard(&self, shard_id: Uuid, token: i64) -> StoreResult<bool> {
        self.move_shard_to_submitted(shard_id, token, None, "planned", Utc::now())
            .await
    }

    async fn pending_item_dims(&self, job_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>> {
        let rows: Vec<(Option<i32>, Option<i32>)> = sqlx::query_as(
            "SELECT width, height FROM items WHERE job_id = $1 AND status = 'pending' \
             ORDER BY position",
        )
        .bind(id(job_id))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(common::dims).collect())
    }

    async fn renew_shard(
        &self,
        shard_id: Uuid,
        token: i64,
        lease_for: Duration,
    ) -> StoreResult<bool> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE shards SET lease_until = $3 WHERE id = $1 AND lease_token = $2",
                )
                .bind(id(shard_id))
                .bind(token)
                .bind(now().saturating_add(duration_micros(lease_for))),
            )
            .await?;
        Ok(n == 1)
    }

    async fn release_shard(&self, shard_id: Uuid, token: i64) -> StoreResult<()> {
        self.write_one(
            sqlx::query(
                "UPDATE shards SET lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id(shard_id))
            .bind(token),
        )
        .await?;
        Ok(())
    }

    async fn get_shard(&self, shard_id: Uuid) -> StoreResult<Option<Shard>> {
        let sql = format!("SELECT {SHARD_COLS} FROM shards WHERE id = $1");
        sqlx::query(&sql)
            .bind(id(shard_id))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| shard_from_row(&r))
            .transpose()
    }

    async fn list_shards(&self, job_id: Uuid) -> StoreResult<Vec<Shard>> {
        let sql = format!(
            "SELECT {SHARD_COLS} FROM shards WHERE job_id = $1 ORDER BY created_at, attempt, id"
        );
        let rows = sqlx::query(&sql)
            .bind(id(job_id))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(shard_from_row).collect()
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
        let rows = sqlx::query(&sql)
            .bind(id(shard_id))
            .bind(after_position.unwrap_or(-1))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(item_from_row).collect()
    }

    async fn shard_uploaded(
        &self,
        shard_id: Uuid,
        token: i64,
        input_file_id: &str,
    ) -> StoreResult<bool> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE shards SET input_file_id = $3, status = 'creating', updated_at = $4 \
                     WHERE id = $1 AND lease_token = $2 AND status = 'planned'",
                )
                .bind(id(shard_id))
                .bind(token)
                .bind(input_file_id)
                .bind(now()),
            )
            .await?;
        Ok(n == 1)
    }

    async fn shard_submitted(
        &self,
        shard_id: Uuid,
        token: i64,
        openai_batch_id: &str,
        next_poll_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.move_shard_to_submitted(
            shard_id,
            token,
            Some(openai_batch_id),
            "creating",
            next_poll_at,
        )
        .await
    }

    async fn shard_polled(
        &self,
        shard_id: Uuid,
        token: i64,
        poll: &ShardPoll,
    ) -> StoreResult<bool> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE shards SET batch_status = $3, request_total = $4, \
                     request_completed = $5, request_failed = $6, \
                     output_file_id = COALESCE($7, output_file_id), \
                     error_file_id = COALESCE($8, error_file_id), next_poll_at = $9, \
                     poll_interval_ms = $10, updated_at = $11 \
                     WHERE id = $1 AND lease_token = $2",
                )
                .bind(id(shard_id))
                .bind(token)
                .bind(&poll.batch_status)
                .bind(poll.request_total)
                .bind(poll.request_completed)
                .bind(poll.request_failed)
                .bind(&poll.output_file_id)
                .bind(&poll.error_file_id)
                .bind(micros(poll.next_poll_at))
                .bind(poll.poll_interval_ms)
                .bind(now()),
            )
            .await?;
        Ok(n == 1)
    }

    async fn set_shard_status(
        &self,
        shard_id: Uuid,
        token: i64,
        status: ShardStatus,
        error: Option<&ItemError>,
    ) -> StoreResult<bool> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE shards SET status = $3, error_code = COALESCE($4, error_code), \
                     error_message = COALESCE($5, error_message), updated_at = $6 \
                     WHERE id = $1 AND lease_token = $2",
                )
                .bind(id(shard_id))
                .bind(token)
                .bind(status.as_str())
                .bind(error.map(|e| e.code.as_str()))
                .bind(error.map(|e| e.message.as_str()))
                .bind(now()),
            )
            .await?;
        Ok(n == 1)
    }

    /// Writes outcomes (with their retry marks) of the shard's submitted items in one
    /// fenced statement.
    async fn settle_outcomes(
        &self,
        shard_id: Uuid,
        token: i64,
        verdicts: &[(&ItemOutcome, bool)],
        max_attempts: i32,
    ) -> StoreResult<Settled> {
        let rows: Vec<Value> = verdicts
            .iter()
            .map(|(o, retry)| {
                json!({
                    "custom_id": o.custom_id,
                    "status": o.status.as_str(),
                    "output": o.output.as_ref().map(json_text),
                    "error_code": o.error.as_ref().map(|e| &e.code),
                    "error_message": o.error.as_ref().map(|e| &e.message),
                    "input_tokens": o.usage.map(|u| u.input_tokens),
                    "cached_input_tokens": o.usage.map(|u| u.cached_input_tokens),
                    "output_tokens": o.usage.map(|u| u.output_tokens),
                    "reasoning_tokens": o.usage.map(|u| u.reasoning_tokens),
                    "cost": o.cost_pico_usd,
                    "individual": o.individual_pico_usd,
                    "run_mode": o.run_mode.as_str(),
                    "resolved_model": o.resolved_model,
                    "retry": retry,
                })
            })
            .collect();
        let at = now();
        let mut tx = self.write().await?;
        let Some(job_id) = check_shard(&mut tx, shard_id, token).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        let job = find_job(&mut tx, None, job_id).await?;
        let cancelling = job.status == JobStatus::Cancelling;
        // $5: the job is cancelling; $6: max attempts. `back` = this item goes back.
        let back = "(u.retry AND NOT $5 AND items.attempts < $6)";
        // json_each drives the join through the (job_id, custom_id) index: CROSS JOIN
        // fixes the loop order and MATERIALIZED keeps SQLite from flattening it back into
        // a scan of the job's items per outcome.
        let sql = format!(
            "WITH u AS MATERIALIZED (SELECT i.rowid AS rid, \
               o.value ->> 'status' AS status, o.value ->> 'output' AS output, \
               o.value ->> 'error_code' AS error_code, \
               o.value ->> 'error_message' AS error_message, \
               o.value ->> 'input_tokens' AS input_tokens, \
               o.value ->> 'cached_input_tokens' AS cached_input_tokens, \
               o.value ->> 'output_tokens' AS output_tokens, \
               o.value ->> 'reasoning_tokens' AS reasoning_tokens, \
               o.value ->> 'cost' AS cost, o.value ->> 'individual' AS individual, \
               o.value ->> 'run_mode' AS run_mode, \
               o.value ->> 'resolved_model' AS resolved_model, \
               o.value ->> 'retry' AS retry \
               FROM json_each($3) AS o CROSS JOIN items AS i \
               WHERE i.job_id = $1 AND i.custom_id = o.value ->> 'custom_id' \
               AND i.shard_id = $2 AND i.status = 'submitted') \
             UPDATE items SET \
             status = CASE WHEN u.retry AND $5 THEN 'cancelled' WHEN {back} THEN 'pending' \
               ELSE u.status END, \
             shard_id = CASE WHEN {back} THEN NULL ELSE items.shard_id END, \
             output = u.output, \
             error_code = u.error_code, error_message = u.error_message, \
             input_tokens = u.input_tokens, cached_input_tokens = u.cached_input_tokens, \
             output_tokens = u.output_tokens, reasoning_tokens = u.reasoning_tokens, \
             cost_pico_usd = u.cost, individual_pico_usd = u.individual, \
             run_mode = u.run_mode, resolved_model = u.resolved_model, \
             finished_at = CASE WHEN {back} THEN NULL ELSE $4 END, updated_at = $4 \
             FROM u WHERE items.rowid = u.rid RETURNING {OUTCOME_COLS}"
        );
        let returned = sqlx::query(&sql)
            .bind(id(job_id))
            .bind(id(shard_id))
            .bind(Value::Array(rows).to_string())
            .bind(at)
            .bind(cancelling)
            .bind(max_attempts)
            .fetch_all(&mut *tx)
            .await?;
        if returned.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        let (recorded, settled) = common::recorded_from_rows(&returned)?;
        let job = apply_delta(&mut tx, job_id, &JobDelta::for_outcomes(&recorded), at).await?;
        insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts), at).await?;
        tx.commit().await?;
        Ok(settled)
    }

    /// Settles the shard's pending and submitted items as `leftover` says: one fenced
    /// statement per starting status.
    async fn settle_leftovers(
        &self,
        shard_id: Uuid,
        token: i64,
        error: &ItemError,
        leftover: Leftover,
        fail_shard: bool,
    ) -> StoreResult<Settled> {
        let at = now();
        let mut tx = self.write().await?;
        let Some(job_id) = check_shard(&mut tx, shard_id, token).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        let job = find_job(&mut tx, None, job_id).await?;
        let plan = LeftoverPlan::new(leftover, job.status);
        let back = "($4 OR ($5 AND attempts < $6))";
        let sql = format!(
            "UPDATE items SET \
             status = CASE WHEN {back} THEN 'pending' ELSE $3 END, \
             shard_id = CASE WHEN {back} THEN NULL ELSE shard_id END, \
             attempts = CASE WHEN $7 THEN MAX(attempts - 1, 0) ELSE attempts END, \
             error_code = $8, error_message = $9, \
             finished_at = CASE WHEN {back} THEN NULL ELSE $10 END, updated_at = $10 \
             WHERE shard_id = $1 AND status = $2 RETURNING status"
        );
        let mut delta = JobDelta::default();
        let mut settled = Settled::default();
        for from in [ItemStatus::Pending, ItemStatus::Submitted] {
            let statuses: Vec<String> = sqlx::query_scalar(&sql)
                .bind(id(shard_id))
                .bind(from.as_str())
                .bind(plan.final_status.as_str())
                .bind(plan.all_back)
                .bind(plan.retry)
                .bind(plan.max_attempts)
                .bind(plan.uncount && from == ItemStatus::Submitted)
                .bind(&error.code)
                .bind(&error.message)
                .bind(at)
                .fetch_all(&mut *tx)
                .await?;
            delta.add_settled(&mut settled, from, statuses)?;
        }
        if fail_shard {
            sqlx::query(
                "UPDATE shards SET status = 'failed', error_code = $2, error_message = $3, \
                 updated_at = $4 WHERE id = $1",
            )
            .bind(id(shard_id))
            .bind(&error.code)
            .bind(&error.message)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        if settled.total() == 0 {
            tx.commit().await?;
            return Ok(settled);
        }
        let job = apply_delta(&mut tx, job_id, &delta, at).await?;
        insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts), at).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn shard_item_dims(&self, shard_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>> {
        let rows: Vec<(Option<i32>, Option<i32>)> = sqlx::query_as(
            "SELECT width, height FROM items WHERE shard_id = $1 \
             AND status IN ('pending', 'submitted') ORDER BY position",
        )
        .bind(id(shard_id))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(common::dims).collect())
    }

    async fn set_shard_estimate(
        &self,
        shard_id: Uuid,
        token: i64,
        tokens: i64,
    ) -> StoreResult<bool> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE shards SET estimated_tokens = $3 WHERE id = $1 AND lease_token = $2",
                )
                .bind(id(shard_id))
                .bind(token)
                .bind(tokens),
            )
            .await?;
        Ok(n == 1)
    }

    async fn batch_model_load(&self, model: &str, refusal_code: &str) -> StoreResult<ModelLoad> {
        let row = sqlx::query(common::MODEL_LOAD_SQL)
            .bind(model)
            .bind(refusal_code)
            .fetch_one(&self.pool)
            .await?;
        common::model_load_from_row(&row)
    }

    async fn cancel_job(&self, tenant: &str, job_id: Uuid) -> StoreResult<Job> {
        let at = now();
        let mut tx = self.write().await?;
        let job = find_job(&mut tx, Some(tenant), job_id).await?;
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
        set_job_status(&mut tx, job_id, JobStatus::Cancelling, at).await?;
        let error = common::job_cancelled_error();
        let n = sqlx::query(&format!(
            "UPDATE items SET status = 'cancelled', error_code = $2, error_message = $3, \
                 finished_at = $4, updated_at = $4 WHERE job_id = $1 AND status = 'pending' \
                 AND {}",
            common::CANCEL_AT_ONCE
        ))
        .bind(id(job_id))
        .bind(&error.code)
        .bind(&error.message)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        let mut job = find_job(&mut tx, None, job_id).await?;
        if n > 0 {
            let mut delta = JobDelta::default();
            delta.add_status(ItemStatus::Pending, -n);
            delta.add_status(ItemStatus::Cancelled, n);
            job = apply_delta(&mut tx, job_id, &delta, at).await?;
            insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts), at).await?;
        }
        if let Some(to) = finished_status(job.status, &job.counts) {
            set_job_status(&mut tx, job_id, to, at).await?;
            job = find_job(&mut tx, None, job_id).await?;
        }
        tx.commit().await?;
        Ok(job)
    }

    async fn append_event(&self, job_id: Uuid, kind: &str, data: &Value) -> StoreResult<()> {
        let at = now();
        let mut tx = self.write().await?;
        find_job(&mut tx, None, job_id).await?;
        insert_event(&mut tx, job_id, kind, data, at).await?;
        tx.commit().await?;
        Ok(())
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
        let rows = sqlx::query(&sql)
            .bind(id(job_id))
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyState> {
        let at = now();
        let mut tx = self.write().await?;
        let started: Option<i64> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, created_at, \
             expires_at) VALUES ($1, $2, $3, 'in_flight', $4, $5) \
             ON CONFLICT (tenant, key) DO UPDATE SET request_hash = excluded.request_hash, \
             job_id = NULL, response = NULL, status = 'in_flight', \
             created_at = excluded.created_at, expires_at = excluded.expires_at \
             WHERE idempotency_keys.expires_at <= $4 RETURNING 1",
        )
        .bind(tenant)
        .bind(key)
        .bind(request_hash)
        .bind(at)
        .bind(micros(expires_at))
        .fetch_optional(&mut *tx)
        .await?;
        if started.is_some() {
            tx.commit().await?;
            return Ok(IdempotencyState::Started);
        }
        let row = sqlx::query(
            "SELECT request_hash, job_id, response, status FROM idempotency_keys \
             WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let request_hash = row.text("request_hash")?;
        if row.text("status")? != "completed" {
            return Ok(IdempotencyState::InFlight { request_hash });
        }
        Ok(IdempotencyState::Completed {
            request_hash,
            job_id: row
                .opt_uuid("job_id")?
                .ok_or_else(|| corrupt("completed idempotency key without job"))?,
            response: row
                .opt_json("response")?
                .ok_or_else(|| corrupt("completed idempotency key without response"))?,
        })
    }

    async fn idempotency_complete(
        &self,
        tenant: &str,
        key: &str,
        job_id: Uuid,
        response: &Value,
    ) -> StoreResult<()> {
        let n = self
            .write_one(
                sqlx::query(
                    "UPDATE idempotency_keys SET status = 'completed', job_id = $3, \
                     response = $4 WHERE tenant = $1 AND key = $2",
                )
                .bind(tenant)
                .bind(key)
                .bind(id(job_id))
                .bind(json_text(response)),
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn idempotency_abort(&self, tenant: &str, key: &str) -> StoreResult<()> {
        self.write_one(
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 \
                 AND status = 'in_flight'",
            )
            .bind(tenant)
            .bind(key),
        )
        .await?;
        Ok(())
    }

    async fn cost_totals(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<CostTotals> {
        let row = sqlx::query(
            "SELECT count(*) AS jobs, COALESCE(sum(total - rejected), 0) AS images, \
             COALESCE(sum(actual_pico_usd), 0) AS actual, \
             COALESCE(sum(individual_pico_usd), 0) AS individual \
             FROM jobs WHERE tenant = $1 AND created_at >= $2 AND created_at < $3",
        )
        .bind(tenant)
        .bind(micros(from))
        .bind(micros(to))
        .fetch_one(&self.pool)
        .await?;
        Ok(CostTotals {
            jobs: row.int("jobs")?,
            images: row.int("images")?,
            actual_pico_usd: row.int("actual")?,
            individual_pico_usd: row.int("individual")?,
        })
    }

    async fn gauges(&self) -> StoreResult<Gauges> {
        let rows = sqlx::query(common::GAUGES_SQL)
            .fetch_all(&self.pool)
            .await?;
        common::gauges_from_rows(&rows)
    }

    async fn claim_webhooks(
        &self,
        lease: Duration,
        limit: i64,
    ) -> StoreResult<Vec<(Job, DateTime<Utc>)>> {
        let at = now();
        // A read first: most rounds find nothing, and need not take the write lock.
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE webhook_state = 'pending' \
             AND webhook_due_at <= $1)",
        )
        .bind(at)
        .fetch_one(&self.pool)
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE jobs SET webhook_due_at = $1 + $2 \
             WHERE id IN (SELECT id FROM jobs WHERE webhook_state = 'pending' \
               AND webhook_due_at <= $1 ORDER BY webhook_due_at LIMIT $3) \
             RETURNING {JOB_COLS}, webhook_due_at"
        );
        let mut tx = self.write().await?;
        let rows = sqlx::query(&sql)
            .bind(at)
            .bind(duration_micros(lease))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        common::claimed_webhooks(&rows)
    }

    async fn webhook_attempted(
        &self,
        job_id: Uuid,
        claim: DateTime<Utc>,
        attempt: &WebhookAttempt,
    ) -> StoreResult<bool> {
        let at = now();
        let mut tx = self.write().await?;
        let res = sqlx::query(common::WEBHOOK_ATTEMPTED_SQL)
            .bind(id(job_id))
            .bind(micros(claim))
            .bind(attempt.state.as_str())
            .bind(attempt.retry_at.map(micros))
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, job_id, "webhook", &attempt.detail, at).await?;
        tx.commit().await?;
        Ok(true)
    }
}
