//! The PostgreSQL backend of `Store` (production; several replicas share one database).
//!
//! Time comes from the database clock (`now()`) everywhere, so replicas with skewed clocks
//! agree on leases. Claims use `FOR UPDATE SKIP LOCKED`; every event is written while the
//! job row is locked, so a job's event ids commit in order and `events_after` never skips.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::common::{
    self, duration_micros, event_from_row, finished_status, item_from_row, job_from_row,
    progress_json, shard_from_row, status_json, truncate_to_micros, JobDelta, LeftoverPlan, RowGet,
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

const POOL_SIZE: u32 = 10;

static DELTA_SQL: LazyLock<String> = LazyLock::new(|| JobDelta::update_sql("now()"));

/// `Store` on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (pool of 10) and runs the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect(url)
            .await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool; runs no migration.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded `migrations/postgres`.
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
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
        let mut tx = self.pool.begin().await?;
        let job_id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE shards SET status = 'submitted', openai_batch_id = $3, next_poll_at = $4, \
             updated_at = now() WHERE id = $1 AND lease_token = $2 AND status = $5 \
             RETURNING job_id",
        )
        .bind(shard_id)
        .bind(token)
        .bind(openai_batch_id)
        .bind(truncate_to_micros(next_poll_at))
        .bind(from)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job_id) = job_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        let job = lock_job(&mut tx, None, job_id).await?;
        let moved = sqlx::query(
            "UPDATE items SET status = 'submitted', attempts = attempts + 1, updated_at = now() \
             WHERE shard_id = $1 AND status = 'pending'",
        )
        .bind(shard_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if moved > 0 {
            let mut delta = JobDelta::default();
            delta.add_status(ItemStatus::Pending, -moved);
            delta.add_status(ItemStatus::Submitted, moved);
            let job = apply_delta(&mut tx, job_id, &delta).await?;
            insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts)).await?;
        }
        if job.status == JobStatus::Queued {
            set_job_status(&mut tx, job_id, JobStatus::Running).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl RowGet for PgRow {
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
        Ok(self.try_get(col)?)
    }
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>> {
        Ok(self.try_get(col)?)
    }
    fn ts(&self, col: &str) -> StoreResult<DateTime<Utc>> {
        Ok(self.try_get(col)?)
    }
    fn opt_ts(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        Ok(self.try_get(col)?)
    }
}

fn status_texts<T: Copy>(list: &[T], f: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    list.iter().map(|s| f(*s)).collect()
}

/// Applies counter and cost deltas to the (already locked or now locked) job row.
async fn apply_delta(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    delta: &JobDelta,
) -> StoreResult<Job> {
    let mut q = sqlx::query(&DELTA_SQL).bind(job_id);
    for v in delta.values() {
        q = q.bind(v);
    }
    let row = q.fetch_one(&mut **tx).await?;
    job_from_row(&row)
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    kind: &str,
    data: &Value,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (job_id, kind, data, created_at) VALUES ($1, $2, $3, now())")
        .bind(job_id)
        .bind(kind)
        .bind(data)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn lock_job(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Option<&str>,
    job_id: Uuid,
) -> StoreResult<Job> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) \
         FOR UPDATE"
    );
    let row = sqlx::query(&sql)
        .bind(job_id)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    job_from_row(&row)
}

/// Moves a locked job to `to`, stamping `completed_at` when terminal, with its event.
async fn set_job_status(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    to: JobStatus,
) -> StoreResult<()> {
    sqlx::query(&format!(
        "UPDATE jobs SET status = $2, updated_at = now(), \
             completed_at = CASE WHEN $3 THEN now() ELSE completed_at END, {} WHERE id = $1",
        common::owe_webhook_sql("$3", "now()")
    ))
    .bind(job_id)
    .bind(to.as_str())
    .bind(to.is_terminal())
    .execute(&mut **tx)
    .await?;
    insert_event(tx, job_id, "status", &status_json(to)).await
}

/// Inserts items in bulk (one UNNEST statement per chunk), positions from `first`.
async fn insert_items(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    first: i64,
    items: &[NewItem],
) -> StoreResult<()> {
    let mut position = first;
    for chunk in common::item_chunks(items) {
        let positions: Vec<i64> = (position..position + chunk.len() as i64).collect();
        position += chunk.len() as i64;
        let custom_ids: Vec<&str> = chunk.iter().map(|i| i.custom_id.as_str()).collect();
        let post_ids: Vec<Option<&str>> = chunk.iter().map(|i| i.post_id.as_deref()).collect();
        let images: Vec<&str> = chunk.iter().map(|i| i.image.as_str()).collect();
        let bytes: Vec<i64> = chunk.iter().map(|i| i.image.len() as i64).collect();
        let widths: Vec<Option<i32>> = chunk.iter().map(|i| i.width).collect();
        let heights: Vec<Option<i32>> = chunk.iter().map(|i| i.height).collect();
        let statuses: Vec<&str> = chunk.iter().map(|i| i.status.as_str()).collect();
        let terminal: Vec<bool> = chunk.iter().map(|i| i.status.is_terminal()).collect();
        let codes: Vec<Option<&str>> = chunk
            .iter()
            .map(|i| i.error.as_ref().map(|e| e.code.as_str()))
            .collect();
        let messages: Vec<Option<&str>> = chunk
            .iter()
            .map(|i| i.error.as_ref().map(|e| e.message.as_str()))
            .collect();
        sqlx::query(
            "INSERT INTO items (job_id, position, custom_id, post_id, image, image_bytes, width, \
             height, status, error_code, error_message, finished_at, updated_at) \
             SELECT $1, u.position, u.custom_id, u.post_id, u.image, u.image_bytes, u.width, \
             u.height, u.status, u.error_code, u.error_message, \
             CASE WHEN u.terminal THEN now() END, now() \
             FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
             $7::int[], $8::int[], $9::text[], $10::bool[], $11::text[], $12::text[]) \
             AS u(position, custom_id, post_id, image, image_bytes, width, height, status, \
             terminal, error_code, error_message)",
        )
        .bind(job_id)
        .bind(&positions)
        .bind(&custom_ids)
        .bind(&post_ids)
        .bind(&images)
        .bind(&bytes)
        .bind(&widths)
        .bind(&heights)
        .bind(&statuses)
        .bind(&terminal)
        .bind(&codes)
        .bind(&messages)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if common::is_unique_violation(&e) {
                StoreError::DuplicateCustomId(String::new())
            } else {
                e.into()
            }
        })?;
    }
    Ok(())
}

/// The shard's job when `token` is still its lease token; the shard row stays locked.
async fn lock_shard(
    tx: &mut Transaction<'_, Postgres>,
    shard_id: Uuid,
    token: i64,
) -> StoreResult<Option<Uuid>> {
    let row = sqlx::query("SELECT job_id, lease_token FROM shards WHERE id = $1 FOR UPDATE")
        .bind(shard_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    let current: i64 = row.try_get("lease_token")?;
    if current != token {
        return Ok(None);
    }
    Ok(Some(row.try_get("job_id")?))
}

#[async_trait]
impl Store for PgStore {
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
        let analyzer = serde_json::to_value(&job.analyzer).map_err(common::corrupt)?;
        let created_at = truncate_to_micros(job.created_at);
        let mut tx = self.pool.begin().await?;
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
            .bind(job.id)
            .bind(&job.tenant)
            .bind(&job.name)
            .bind(&job.model)
            .bind(job.requested_mode.as_str())
            .bind(job.mode.as_str())
            .bind(&job.mode_reason)
            .bind(job.detail.as_str())
            .bind(&analyzer)
            .bind(&job.metadata)
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
        insert_items(&mut tx, job.id, 0, items).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn append_items(
        &self,
        tenant: &str,
        job_id: Uuid,
        items: &[NewItem],
    ) -> StoreResult<Job> {
        let mut tx = self.pool.begin().await?;
        let job = lock_job(&mut tx, Some(tenant), job_id).await?;
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
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT custom_id FROM items WHERE job_id = $1 AND custom_id = ANY($2::text[]) \
             ORDER BY position LIMIT 1",
        )
        .bind(job_id)
        .bind(&ids)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(dup) = taken {
            return Err(StoreError::DuplicateCustomId(dup));
        }
        // Positions are dense from 0, so the next one is the item count.
        insert_items(&mut tx, job_id, job.counts.total, items).await?;
        let job = apply_delta(&mut tx, job_id, &JobDelta::for_new_items(items)).await?;
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
        let mut tx = self.pool.begin().await?;
        let job = lock_job(&mut tx, Some(tenant), job_id).await?;
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
        .bind(job_id)
        .bind(mode.as_str())
        .bind(mode_reason)
        .bind(estimate_batch_pico_usd)
        .bind(estimate_individual_pico_usd)
        .execute(&mut *tx)
        .await?;
        set_job_status(&mut tx, job_id, to).await?;
        let job = lock_job(&mut tx, None, job_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn get_job(&self, tenant: Option<&str>, id: Uuid) -> StoreResult<Option<Job>> {
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
        );
        sqlx::query(&sql)
            .bind(id)
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
            "SELECT {JOB_COLS} FROM jobs WHERE tenant = $1 AND ($2::text IS NULL OR status = $2) \
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(status.map(|s| s.as_str()))
            .bind(after.map(|c| truncate_to_micros(c.created_at)))
            .bind(after.map(|c| c.id))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn transition_job(
        &self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(&format!(
            "UPDATE jobs SET status = $2, updated_at = now(), \
             completed_at = CASE WHEN $3 THEN now() ELSE completed_at END, {} \
             WHERE id = $1 AND status = ANY($4::text[])",
            common::owe_webhook_sql("$3", "now()")
        ))
        .bind(id)
        .bind(to.as_str())
        .bind(to.is_terminal())
        .bind(status_texts(from, JobStatus::as_str))
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, id, "status", &status_json(to)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_job_if_done(&self, id: Uuid) -> StoreResult<Option<JobStatus>> {
        let mut tx = self.pool.begin().await?;
        let job = lock_job(&mut tx, None, id).await?;
        let Some(to) = finished_status(job.status, &job.counts) else {
            tx.rollback().await?;
            return Ok(None);
        };
        set_job_status(&mut tx, id, to).await?;
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
            "SELECT {ITEM_COLS} FROM items WHERE job_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND position > $3 \
             ORDER BY position LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(job_id)
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
            None => "TRUE",
            Some((Some(_), _)) => {
                "(post_id > $2 OR (post_id = $2 AND position > $3) OR post_id IS NULL)"
            }
            Some((None, _)) => "(post_id IS NULL AND position > $3 AND $2::text IS NULL)",
        };
        let sql = format!(
            "SELECT {ITEM_COLS} FROM items WHERE job_id = $1 AND {cond} \
             ORDER BY post_id NULLS LAST, position LIMIT $4"
        );
        let (post, pos) = after.unwrap_or((None, -1));
        let rows = sqlx::query(&sql)
            .bind(job_id)
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
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, \
             lease_until = now() + $2::bigint * interval '1 microsecond', \
             lease_token = lease_token + 1 \
             WHERE id IN (SELECT j.id FROM jobs j \
               WHERE j.status IN ('queued', 'running') AND j.mode IN ('batch', 'individual') \
               AND (j.lease_until IS NULL OR j.lease_until <= now()) \
               AND EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id \
                 AND i.status = 'pending' AND i.shard_id IS NULL) \
               ORDER BY j.created_at, j.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {JOB_COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(duration_micros(lease_for))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
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
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PlanItem {
                    position: r.try_get("position")?,
                    image_bytes: r.try_get("image_bytes")?,
                    width: r.try_get("width")?,
                    height: r.try_get("height")?,
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
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT lease_token FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job_id)
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
            let ids: Vec<Uuid> = chunk.iter().map(|s| s.id).collect();
            let kinds: Vec<&str> = chunk.iter().map(|s| s.kind.as_str()).collect();
            let attempts: Vec<i32> = chunk.iter().map(|s| s.attempt).collect();
            let models: Vec<&str> = chunk.iter().map(|s| s.model.as_str()).collect();
            let counts: Vec<i64> = chunk.iter().map(|s| s.positions.len() as i64).collect();
            let next: Vec<DateTime<Utc>> = chunk
                .iter()
                .map(|s| truncate_to_micros(s.next_poll_at))
                .collect();
            let intervals: Vec<i64> = chunk.iter().map(|s| s.poll_interval_ms).collect();
            sqlx::query(
                "INSERT INTO shards (id, job_id, kind, attempt, model, status, item_count, \
                 poll_interval_ms, next_poll_at, created_at, updated_at) \
                 SELECT u.id, $1, u.kind, u.attempt, u.model, 'planned', u.item_count, \
                 u.poll_interval_ms, u.next_poll_at, now(), now() \
                 FROM UNNEST($2::uuid[], $3::int[], $4::text[], $5::bigint[], $6::timestamptz[], \
                 $7::bigint[], $8::text[]) \
                 AS u(id, attempt, model, item_count, next_poll_at, poll_interval_ms, kind)",
            )
            .bind(job_id)
            .bind(&ids)
            .bind(&attempts)
            .bind(&models)
            .bind(&counts)
            .bind(&next)
            .bind(&intervals)
            .bind(&kinds)
            .execute(&mut *tx)
            .await?;
        }
        for shard in shards {
            // One statement per shard: a shard holds up to 50,000 positions in one array.
            let assigned = sqlx::query(
                "UPDATE items SET shard_id = $2, updated_at = now() WHERE job_id = $1 \
                 AND position = ANY($3::bigint[]) AND status = 'pending' AND shard_id IS NULL",
            )
            .bind(job_id)
            .bind(shard.id)
            .bind(&shard.positions)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            if assigned != shard.positions.len() as i64 {
                sqlx::query("UPDATE shards SET item_count = $2 WHERE id = $1")
                    .bind(shard.id)
                    .bind(assigned)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn release_job(&self, job_id: Uuid, lease_token: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(job_id)
        .bind(lease_token)
        .execute(&self.pool)
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
        let sql = format!(
            "UPDATE shards SET lease_owner = $1, \
             lease_until = now() + $2::bigint * interval '1 microsecond', \
             lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM shards WHERE kind = $6 AND status = ANY($3::text[]) \
               AND next_poll_at <= $4 AND (lease_until IS NULL OR lease_until <= now()) \
               ORDER BY next_poll_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING {SHARD_COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(duration_micros(lease_for))
            .bind(status_texts(statuses, ShardStatus::as_str))
            .bind(truncate_to_micros(due))
            .bind(limit)
            .bind(kind.as_str())
            .fetch_all(&self.pool)
            .await?;
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
               ORDER BY r.rank, r.next_poll_at, s.id LIMIT $3 FOR UPDATE OF s SKIP LOCKED) \
             UPDATE shards SET lease_owner = $1, \
               lease_until = now() + $2::bigint * interval '1 microsecond', \
               lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM picked) \
             RETURNING {SHARD_COLS}"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(duration_micros(lease_for))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
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
        .bind(job_id)
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
        let res = sqlx::query(
            "UPDATE shards SET lease_until = now() + $3::bigint * interval '1 microsecond' \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(shard_id)
        .bind(token)
        .bind(duration_micros(lease_for))
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn release_shard(&self, shard_id: Uuid, token: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE shards SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(shard_id)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_shard(&self, shard_id: Uuid) -> StoreResult<Option<Shard>> {
        let sql = format!("SELECT {SHARD_COLS} FROM shards WHERE id = $1");
        sqlx::query(&sql)
            .bind(shard_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| shard_from_row(&r))
            .transpose()
    }

    async fn list_shards(&self, job_id: Uuid) -> StoreResult<Vec<Shard>> {
        let sql = format!(
            "SELECT {SHARD_COLS} FROM shards WHERE job_id = $1 ORDER BY created_at, attempt, id"
        );
        let rows = sqlx::query(&sql).bind(job_id).fetch_all(&self.pool).await?;
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
            .bind(shard_id)
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
        let res = sqlx::query(
            "UPDATE shards SET input_file_id = $3, status = 'creating', updated_at = now() \
             WHERE id = $1 AND lease_token = $2 AND status = 'planned'",
        )
        .bind(shard_id)
        .bind(token)
        .bind(input_file_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
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
        let res = sqlx::query(
            "UPDATE shards SET batch_status = $3, request_total = $4, request_completed = $5, \
             request_failed = $6, output_file_id = COALESCE($7, output_file_id), \
             error_file_id = COALESCE($8, error_file_id), next_poll_at = $9, \
             poll_interval_ms = $10, updated_at = now() WHERE id = $1 AND lease_token = $2",
        )
        .bind(shard_id)
        .bind(token)
        .bind(&poll.batch_status)
        .bind(poll.request_total)
        .bind(poll.request_completed)
        .bind(poll.request_failed)
        .bind(&poll.output_file_id)
        .bind(&poll.error_file_id)
        .bind(truncate_to_micros(poll.next_poll_at))
        .bind(poll.poll_interval_ms)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn set_shard_status(
        &self,
        shard_id: Uuid,
        token: i64,
        status: ShardStatus,
        error: Option<&ItemError>,
    ) -> StoreResult<bool> {
        let res = sqlx::query(
            "UPDATE shards SET status = $3, error_code = COALESCE($4, error_code), \
             error_message = COALESCE($5, error_message), updated_at = now() \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(shard_id)
        .bind(token)
        .bind(status.as_str())
        .bind(error.map(|e| e.code.as_str()))
        .bind(error.map(|e| e.message.as_str()))
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Writes outcomes (with their retry marks) of the shard's submitted items in one
    /// fenced statement; the job row is locked first, as every writer of items does, so
    /// a concurrent cancel and this never wait on each other in opposite orders.
    async fn settle_outcomes(
        &self,
        shard_id: Uuid,
        token: i64,
        verdicts: &[(&ItemOutcome, bool)],
        max_attempts: i32,
    ) -> StoreResult<Settled> {
        let mut tx = self.pool.begin().await?;
        let Some(job_id) = lock_shard(&mut tx, shard_id, token).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        if verdicts.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        // The planner cannot know how many rows `job_id = $1` or the UNNEST hold, and a
        // nested loop it picks on a guess rescans one side per row of the other:
        // 30 s per 1,000 outcomes on a 50,000-item shard in the ingest benchmark. A hash
        // join over the shard's submitted rows is linear whatever the estimates.
        sqlx::query("SET LOCAL enable_nestloop = off")
            .execute(&mut *tx)
            .await?;
        let job = lock_job(&mut tx, None, job_id).await?;
        let cancelling = job.status == JobStatus::Cancelling;
        let outcomes: Vec<&ItemOutcome> = verdicts.iter().map(|(o, _)| *o).collect();
        let retry: Vec<bool> = verdicts.iter().map(|(_, r)| *r).collect();
        let custom_ids: Vec<&str> = outcomes.iter().map(|o| o.custom_id.as_str()).collect();
        let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
        let outputs: Vec<Option<&Value>> = outcomes.iter().map(|o| o.output.as_ref()).collect();
        let codes: Vec<Option<&str>> = outcomes
            .iter()
            .map(|o| o.error.as_ref().map(|e| e.code.as_str()))
            .collect();
        let messages: Vec<Option<&str>> = outcomes
            .iter()
            .map(|o| o.error.as_ref().map(|e| e.message.as_str()))
            .collect();
        let usage = |f: fn(&crate::domain::Usage) -> i64| -> Vec<Option<i64>> {
            outcomes.iter().map(|o| o.usage.as_ref().map(f)).collect()
        };
        let costs: Vec<Option<i64>> = outcomes.iter().map(|o| o.cost_pico_usd).collect();
        let individual: Vec<Option<i64>> = outcomes.iter().map(|o| o.individual_pico_usd).collect();
        let modes: Vec<&str> = outcomes.iter().map(|o| o.run_mode.as_str()).collect();
        let models: Vec<Option<&str>> = outcomes
            .iter()
            .map(|o| o.resolved_model.as_deref())
            .collect();
        // $16: the job is cancelling; $17: max attempts. `back` = this item goes back.
        let back = "(u.retry AND NOT $16 AND i.attempts < $17)";
        let sql = format!(
            "UPDATE items AS i SET \
             status = CASE WHEN u.retry AND $16 THEN 'cancelled' WHEN {back} THEN 'pending' \
               ELSE u.status END, \
             shard_id = CASE WHEN {back} THEN NULL ELSE i.shard_id END, \
             output = u.output, \
             error_code = u.error_code, error_message = u.error_message, \
             input_tokens = u.input_tokens, cached_input_tokens = u.cached_input_tokens, \
             output_tokens = u.output_tokens, reasoning_tokens = u.reasoning_tokens, \
             cost_pico_usd = u.cost, individual_pico_usd = u.individual, \
             run_mode = u.run_mode, resolved_model = u.resolved_model, \
             finished_at = CASE WHEN {back} THEN NULL ELSE now() END, updated_at = now() \
             FROM UNNEST($3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[], \
             $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], \
             $13::bigint[], $14::text[], $15::text[], $18::bool[]) \
             AS u(custom_id, status, output, error_code, error_message, input_tokens, \
             cached_input_tokens, output_tokens, reasoning_tokens, cost, individual, run_mode, \
             resolved_model, retry) \
             WHERE i.job_id = $1 AND i.shard_id = $2 AND i.custom_id = u.custom_id \
             AND i.status = 'submitted' RETURNING {}",
            OUTCOME_COLS
                .split(", ")
                .map(|c| format!("i.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(job_id)
            .bind(shard_id)
            .bind(&custom_ids)
            .bind(&statuses)
            .bind(&outputs)
            .bind(&codes)
            .bind(&messages)
            .bind(usage(|u| u.input_tokens))
            .bind(usage(|u| u.cached_input_tokens))
            .bind(usage(|u| u.output_tokens))
            .bind(usage(|u| u.reasoning_tokens))
            .bind(&costs)
            .bind(&individual)
            .bind(&modes)
            .bind(&models)
            .bind(cancelling)
            .bind(max_attempts)
            .bind(&retry)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Settled::default());
        }
        let (recorded, settled) = common::recorded_from_rows(&rows)?;
        let job = apply_delta(&mut tx, job_id, &JobDelta::for_outcomes(&recorded)).await?;
        insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts)).await?;
        tx.commit().await?;
        Ok(settled)
    }

    /// Settles the shard's pending and submitted items as `leftover` says: one fenced
    /// statement per starting status, the job row locked first.
    async fn settle_leftovers(
        &self,
        shard_id: Uuid,
        token: i64,
        error: &ItemError,
        leftover: Leftover,
        fail_shard: bool,
    ) -> StoreResult<Settled> {
        let mut tx = self.pool.begin().await?;
        let Some(job_id) = lock_shard(&mut tx, shard_id, token).await? else {
            tx.rollback().await?;
            return Ok(Settled::default());
        };
        let job = lock_job(&mut tx, None, job_id).await?;
        let plan = LeftoverPlan::new(leftover, job.status);
        let back = "($4 OR ($5 AND attempts < $6))";
        let sql = format!(
            "UPDATE items SET \
             status = CASE WHEN {back} THEN 'pending' ELSE $3 END, \
             shard_id = CASE WHEN {back} THEN NULL ELSE shard_id END, \
             attempts = CASE WHEN $7 THEN GREATEST(attempts - 1, 0) ELSE attempts END, \
             error_code = $8, error_message = $9, \
             finished_at = CASE WHEN {back} THEN NULL ELSE now() END, updated_at = now() \
             WHERE shard_id = $1 AND status = $2 RETURNING status"
        );
        let mut delta = JobDelta::default();
        let mut settled = Settled::default();
        for from in [ItemStatus::Pending, ItemStatus::Submitted] {
            let statuses: Vec<String> = sqlx::query_scalar(&sql)
                .bind(shard_id)
                .bind(from.as_str())
                .bind(plan.final_status.as_str())
                .bind(plan.all_back)
                .bind(plan.retry)
                .bind(plan.max_attempts)
                .bind(plan.uncount && from == ItemStatus::Submitted)
                .bind(&error.code)
                .bind(&error.message)
                .fetch_all(&mut *tx)
                .await?;
            delta.add_settled(&mut settled, from, statuses)?;
        }
        if fail_shard {
            sqlx::query(
                "UPDATE shards SET status = 'failed', error_code = $2, error_message = $3, \
                 updated_at = now() WHERE id = $1",
            )
            .bind(shard_id)
            .bind(&error.code)
            .bind(&error.message)
            .execute(&mut *tx)
            .await?;
        }
        if settled.total() == 0 {
            tx.commit().await?;
            return Ok(settled);
        }
        let job = apply_delta(&mut tx, job_id, &delta).await?;
        insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts)).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn shard_item_dims(&self, shard_id: Uuid) -> StoreResult<Vec<Option<(u32, u32)>>> {
        let rows: Vec<(Option<i32>, Option<i32>)> = sqlx::query_as(
            "SELECT width, height FROM items WHERE shard_id = $1 \
             AND status IN ('pending', 'submitted') ORDER BY position",
        )
        .bind(shard_id)
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
        let res = sqlx::query(
            "UPDATE shards SET estimated_tokens = $3 WHERE id = $1 AND lease_token = $2",
        )
        .bind(shard_id)
        .bind(token)
        .bind(tokens)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
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
        let mut tx = self.pool.begin().await?;
        let job = lock_job(&mut tx, Some(tenant), job_id).await?;
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
        set_job_status(&mut tx, job_id, JobStatus::Cancelling).await?;
        let error = common::job_cancelled_error();
        let n = sqlx::query(&format!(
            "UPDATE items SET status = 'cancelled', error_code = $2, error_message = $3, \
                 finished_at = now(), updated_at = now() WHERE job_id = $1 AND status = 'pending' \
                 AND {}",
            common::CANCEL_AT_ONCE
        ))
        .bind(job_id)
        .bind(&error.code)
        .bind(&error.message)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        let mut job = lock_job(&mut tx, None, job_id).await?;
        if n > 0 {
            let mut delta = JobDelta::default();
            delta.add_status(ItemStatus::Pending, -n);
            delta.add_status(ItemStatus::Cancelled, n);
            job = apply_delta(&mut tx, job_id, &delta).await?;
            insert_event(&mut tx, job_id, "progress", &progress_json(&job.counts)).await?;
        }
        if let Some(to) = finished_status(job.status, &job.counts) {
            set_job_status(&mut tx, job_id, to).await?;
            job = lock_job(&mut tx, None, job_id).await?;
        }
        tx.commit().await?;
        Ok(job)
    }

    async fn append_event(&self, job_id: Uuid, kind: &str, data: &Value) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        lock_job(&mut tx, None, job_id).await?;
        insert_event(&mut tx, job_id, kind, data).await?;
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
            .bind(job_id)
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
        // The upsert takes a free or expired key atomically; when it takes nothing, the
        // holder is read. A holder that aborts in between frees the key: try again.
        for _ in 0..5 {
            let started: Option<bool> = sqlx::query_scalar(
                "INSERT INTO idempotency_keys (tenant, key, request_hash, status, created_at, \
                 expires_at) VALUES ($1, $2, $3, 'in_flight', now(), $4) \
                 ON CONFLICT (tenant, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
                 job_id = NULL, response = NULL, status = 'in_flight', \
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at \
                 WHERE idempotency_keys.expires_at <= now() RETURNING true",
            )
            .bind(tenant)
            .bind(key)
            .bind(request_hash)
            .bind(truncate_to_micros(expires_at))
            .fetch_optional(&self.pool)
            .await?;
            if started.is_some() {
                return Ok(IdempotencyState::Started);
            }
            let row = sqlx::query(
                "SELECT request_hash, job_id, response, status FROM idempotency_keys \
                 WHERE tenant = $1 AND key = $2",
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                return idempotency_state(&row);
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
    ) -> StoreResult<()> {
        let res = sqlx::query(
            "UPDATE idempotency_keys SET status = 'completed', job_id = $3, response = $4 \
             WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(key)
        .bind(job_id)
        .bind(response)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn idempotency_abort(&self, tenant: &str, key: &str) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 \
             AND status = 'in_flight'",
        )
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
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
            "SELECT count(*)::bigint AS jobs, \
             COALESCE(sum(total - rejected), 0)::bigint AS images, \
             COALESCE(sum(actual_pico_usd), 0)::bigint AS actual, \
             COALESCE(sum(individual_pico_usd), 0)::bigint AS individual \
             FROM jobs WHERE tenant = $1 AND created_at >= $2 AND created_at < $3",
        )
        .bind(tenant)
        .bind(truncate_to_micros(from))
        .bind(truncate_to_micros(to))
        .fetch_one(&self.pool)
        .await?;
        Ok(CostTotals {
            jobs: row.try_get("jobs")?,
            images: row.try_get("images")?,
            actual_pico_usd: row.try_get("actual")?,
            individual_pico_usd: row.try_get("individual")?,
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
        let sql = format!(
            "UPDATE jobs SET webhook_due_at = now() + $1::bigint * interval '1 microsecond' \
             WHERE id IN (SELECT id FROM jobs WHERE webhook_state = 'pending' \
               AND webhook_due_at <= now() ORDER BY webhook_due_at LIMIT $2 \
               FOR UPDATE SKIP LOCKED) \
             RETURNING {JOB_COLS}, webhook_due_at"
        );
        let rows = sqlx::query(&sql)
            .bind(duration_micros(lease))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        common::claimed_webhooks(&rows)
    }

    async fn webhook_attempted(
        &self,
        job_id: Uuid,
        claim: DateTime<Utc>,
        attempt: &WebhookAttempt,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(common::WEBHOOK_ATTEMPTED_SQL)
            .bind(job_id)
            .bind(claim)
            .bind(attempt.state.as_str())
            .bind(attempt.retry_at.map(truncate_to_micros))
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(&mut tx, job_id, "webhook", &attempt.detail).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn idempotency_state(row: &PgRow) -> StoreResult<IdempotencyState> {
    let request_hash: String = row.try_get("request_hash")?;
    let status: String = row.try_get("status")?;
    if status != "completed" {
        return Ok(IdempotencyState::InFlight { request_hash });
    }
    Ok(IdempotencyState::Completed {
        request_hash,
        job_id: row
            .try_get::<Option<Uuid>, _>("job_id")?
            .ok_or_else(|| common::corrupt("completed idempotency key without job"))?,
        response: row
            .try_get::<Option<Value>, _>("response")?
            .ok_or_else(|| common::corrupt("completed idempotency key without response"))?,
    })
}
