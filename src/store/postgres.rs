//! The PostgreSQL dialect of the store (production; several replicas share one database).
//!
//! Time comes from the database clock (`now()`) everywhere, so replicas with skewed clocks
//! agree on leases. Claims use `FOR UPDATE SKIP LOCKED`; every event is written while the
//! job row is locked, so a job's event ids commit in order and `events_after` never skips.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgRow, PgValueFormat};
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::common::{corrupt, reuse_cols, truncate_to_micros, RowGet, OUTCOME_COLS};
use super::dialect::{Arg, Dialect};
use super::lanes::{self, Lanes};
use super::{NewShard, StoreResult};
use crate::domain::{ItemOutcome, NewItem};

const POOL_SIZE: u32 = 10;

/// The store on PostgreSQL: a pool for transactions and writes, and as many read lanes
/// (see `lanes`) for the plain reads.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    lanes: Arc<Lanes<PgConnection>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool).finish()
    }
}

impl PgStore {
    /// Connects (pool of 10, and up to 10 read lanes) and runs the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect(url)
            .await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (reads get as many lanes, to the same database, as the
    /// pool has connections); runs no migration.
    pub fn from_pool(pool: PgPool) -> Self {
        let size = pool.options().get_max_connections() as usize;
        let lanes = Arc::new(Lanes::new((*pool.connect_options()).clone(), size));
        Self { pool, lanes }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The plans PostgreSQL picks for the read path's item pages of this job, each named:
    /// the results pages (first, deep, by status) and the posts pages (first, after a
    /// post, the items without one). For tests and benchmarks that check an index
    /// serves each page.
    pub async fn read_path_plans(&self, job_id: Uuid) -> StoreResult<Vec<(&'static str, String)>> {
        use super::core::{
            NO_POST_SQL, POSTS_AFTER_SQL, POSTS_FIRST_SQL, RESULTS_BY_STATUS_SQL, RESULTS_SQL,
        };
        use super::dialect::args;
        let deep = args![job_id, 50_000i64, 101i64];
        let pages: [(&'static str, &str, &[Arg<'_>]); 6] = [
            (
                "results, first page of 100",
                &RESULTS_SQL,
                args![job_id, -1i64, 101i64],
            ),
            ("results, a page deep in the job", &RESULTS_SQL, deep),
            (
                "results?status=succeeded",
                &RESULTS_BY_STATUS_SQL,
                args![job_id, "succeeded", -1i64, 101i64],
            ),
            (
                "posts, first page",
                &POSTS_FIRST_SQL,
                args![job_id, 1000i64],
            ),
            (
                "posts, after a post",
                &POSTS_AFTER_SQL,
                args![job_id, "post-12345", 49_383i64, 1000i64],
            ),
            (
                "posts, the items without a post",
                &NO_POST_SQL,
                args![job_id, -1i64, 1000i64],
            ),
        ];
        let mut plans = Vec::with_capacity(pages.len());
        for (name, sql, list) in pages {
            let explain = format!("EXPLAIN {sql}");
            let rows = self.read(&explain, list).await?;
            let lines = rows
                .iter()
                .map(|r| r.text("QUERY PLAN"))
                .collect::<StoreResult<Vec<_>>>()?;
            plans.push((name, lines.join("\n")));
        }
        Ok(plans)
    }

    /// Applies the embedded `migrations/postgres`.
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

type Tx = Transaction<'static, Postgres>;

fn query<'q>(sql: &'q str, args: &[Arg<'q>]) -> Query<'q, Postgres, PgArguments> {
    args.iter().fold(sqlx::query(sql), |q, a| match *a {
        Arg::Id(v) => q.bind(v),
        Arg::OptId(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::Int(v) => q.bind(v),
        Arg::Int32(v) => q.bind(v),
        Arg::Bool(v) => q.bind(v),
        Arg::Float(v) => q.bind(v),
        Arg::Ts(v) => q.bind(v.map(truncate_to_micros)),
        Arg::Json(v) => q.bind(v),
        Arg::Texts(v) => q.bind(v),
        Arg::Ints(v) => q.bind(v),
        Arg::Ids(v) => q.bind(v),
    })
}

#[async_trait]
impl Dialect for PgStore {
    type Row = PgRow;
    type Tx = Tx;

    const LOCK: &'static str = " FOR UPDATE";
    const CLAIM_READS_FIRST: bool = false;

    fn skip_locked(of: Option<&str>) -> String {
        match of {
            Some(alias) => format!(" FOR UPDATE OF {alias} SKIP LOCKED"),
            None => " FOR UPDATE SKIP LOCKED".into(),
        }
    }

    fn in_list(param: &str) -> String {
        format!("= ANY({param})")
    }

    fn now_plus(micros: &str) -> String {
        format!("now() + {micros} * interval '1 microsecond'")
    }

    /// The clock when the statement reads it, the same on every replica.
    const EPOCH_NOW: &'static str = "EXTRACT(EPOCH FROM clock_timestamp())::float8";
    const LEAST: &'static str = "LEAST";
    const GREATEST: &'static str = "GREATEST";

    async fn read(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<PgRow>> {
        Ok(lanes::fetch_all(&self.lanes, || query(sql, args)).await?)
    }

    async fn write(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        Ok(query(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn write_returning(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<PgRow>> {
        Ok(query(sql, args).fetch_all(&self.pool).await?)
    }

    async fn begin(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin().await?)
    }

    async fn commit(tx: Tx) -> StoreResult<()> {
        Ok(tx.commit().await?)
    }

    async fn rollback(tx: Tx) -> StoreResult<()> {
        Ok(tx.rollback().await?)
    }

    async fn tx_rows(tx: &mut Tx, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<PgRow>> {
        Ok(query(sql, args).fetch_all(&mut **tx).await?)
    }

    async fn tx_exec(tx: &mut Tx, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        Ok(query(sql, args).execute(&mut **tx).await?.rows_affected())
    }

    /// One UNNEST statement per chunk.
    async fn insert_items(
        tx: &mut Tx,
        job_id: Uuid,
        first: i64,
        chunk: &[NewItem],
    ) -> Result<(), sqlx::Error> {
        let positions: Vec<i64> = (first..first + chunk.len() as i64).collect();
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
        let notes: Vec<Option<&str>> = chunk.iter().map(|i| i.note.as_deref()).collect();
        let shas: Vec<Option<&str>> = chunk.iter().map(|i| i.content_sha256.as_deref()).collect();
        let keys: Vec<Option<&str>> = chunk.iter().map(|i| i.reuse_key.as_deref()).collect();
        let reuse: Vec<_> = chunk.iter().map(reuse_cols).collect();
        let copy_of: Vec<Option<i64>> = reuse.iter().map(|r| r.copy_of).collect();
        let from_job: Vec<Option<Uuid>> = reuse.iter().map(|r| r.from_job).collect();
        let from_cid: Vec<Option<&str>> = reuse.iter().map(|r| r.from_custom_id).collect();
        let outputs: Vec<Option<&Value>> = reuse.iter().map(|r| r.output).collect();
        let models: Vec<Option<&str>> = reuse.iter().map(|r| r.resolved_model).collect();
        let zero: Vec<Option<i64>> = reuse.iter().map(|r| r.zero).collect();
        sqlx::query(
            "INSERT INTO items (job_id, position, custom_id, post_id, image, image_bytes, width, \
         height, status, error_code, error_message, note, finished_at, updated_at, \
         content_sha256, reuse_key, copy_of, reused_from_job, reused_from_custom_id, output, \
         resolved_model, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, \
         cost_pico_usd, individual_pico_usd) \
         SELECT $1, u.position, u.custom_id, u.post_id, u.image, u.image_bytes, u.width, \
         u.height, u.status, u.error_code, u.error_message, u.note, \
         CASE WHEN u.terminal THEN now() END, now(), u.sha, u.reuse_key, u.copy_of, \
         u.from_job, u.from_cid, u.output, u.resolved_model, u.zero, u.zero, u.zero, u.zero, \
         u.zero, u.zero \
         FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
         $7::int[], $8::int[], $9::text[], $10::bool[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::text[], $16::bigint[], $17::uuid[], $18::text[], \
         $19::jsonb[], $20::text[], $21::bigint[]) \
         AS u(position, custom_id, post_id, image, image_bytes, width, height, status, \
         terminal, error_code, error_message, note, sha, reuse_key, copy_of, from_job, \
         from_cid, output, resolved_model, zero)",
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
        .bind(&notes)
        .bind(&shas)
        .bind(&keys)
        .bind(&copy_of)
        .bind(&from_job)
        .bind(&from_cid)
        .bind(&outputs)
        .bind(&models)
        .bind(&zero)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn insert_shards(tx: &mut Tx, job_id: Uuid, shards: &[NewShard]) -> StoreResult<()> {
        let ids: Vec<Uuid> = shards.iter().map(|s| s.id).collect();
        let kinds: Vec<&str> = shards.iter().map(|s| s.kind.as_str()).collect();
        let attempts: Vec<i32> = shards.iter().map(|s| s.attempt).collect();
        let models: Vec<&str> = shards.iter().map(|s| s.model.as_str()).collect();
        let counts: Vec<i64> = shards.iter().map(|s| s.positions.len() as i64).collect();
        let next: Vec<DateTime<Utc>> = shards
            .iter()
            .map(|s| truncate_to_micros(s.next_poll_at))
            .collect();
        let intervals: Vec<i64> = shards.iter().map(|s| s.poll_interval_ms).collect();
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
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One UPDATE … FROM UNNEST over the outcomes, hash-joined to the shard's items.
    /// Long on purpose: one statement whose 18 parallel arrays sit beside the column list
    /// they bind to; split up, the two would drift apart.
    async fn settle_rows(
        tx: &mut Tx,
        job_id: Uuid,
        shard_id: Uuid,
        verdicts: &[(&ItemOutcome, bool)],
        cancelling: bool,
        max_attempts: i32,
    ) -> StoreResult<Vec<PgRow>> {
        // The planner cannot know how many rows `job_id = $1` or the UNNEST hold, and a
        // nested loop it picks on a guess rescans one side per row of the other:
        // 30 s per 1,000 outcomes on a 50,000-item shard in the ingest benchmark. A hash
        // join over the shard's submitted rows is linear whatever the estimates.
        sqlx::query("SET LOCAL enable_nestloop = off")
            .execute(&mut **tx)
            .await?;
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
        Ok(sqlx::query(&sql)
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
            .fetch_all(&mut **tx)
            .await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.lanes.close().await;
        self.pool.close().await;
    }
}

impl RowGet for PgRow {
    fn text(&self, col: &str) -> StoreResult<String> {
        Ok(self.try_get(col)?)
    }
    fn text_ref(&self, col: &str) -> StoreResult<&str> {
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
    fn float(&self, col: &str) -> StoreResult<f64> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        Ok(self.try_get(col)?)
    }
    fn json_text(&self, col: &str) -> StoreResult<String> {
        let value = self.try_get_raw(col)?;
        let bytes = value
            .as_bytes()
            .map_err(|e| corrupt(format!("{col}: {e}")))?;
        // A binary jsonb value starts with its format version (1); json's is the text.
        let text = match (value.format(), bytes.split_first()) {
            (PgValueFormat::Binary, Some((1, rest))) => rest,
            _ => bytes,
        };
        String::from_utf8(text.to_vec()).map_err(corrupt)
    }
}
