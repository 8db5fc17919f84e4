//! The SQLite dialect of the store (the embedded default, one process).
//!
//! Time comes from the process clock (`Utc::now()`, stored as INTEGER microseconds): the
//! core's `now()` becomes one more bound parameter, the same instant for every statement
//! of a transaction. SQLite has one writer at a time: every write runs in a transaction
//! opened with `BEGIN IMMEDIATE`, so concurrent writers queue on the busy timeout instead
//! of failing with SQLITE_BUSY halfway through; a claim is a plain UPDATE inside it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::common::{
    corrupt, item_from_row, parse_uuid, reuse_cols, RowGet, OUTCOME_COLS, RESULT_COLS,
};
use super::dialect::{Arg, Dialect};
use super::lanes::{self, Lanes};
use super::versions::{Commits, VersionCache};
use super::{NewShard, StoreError, StoreResult};
use crate::domain::{Item, ItemOutcome, NewItem, ShardStatus};

const POOL_SIZE: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The store on SQLite: a pool for transactions and writes and, on a file, as many read
/// lanes (see `lanes`) for the plain reads.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// None for an in-memory database: it lives in the pool's one connection.
    lanes: Option<Arc<Lanes<SqliteConnection>>>,
    /// Every commit to the file, by any store of this process, and the job versions read
    /// since the last one.
    commits: Arc<Commits>,
    versions: Arc<VersionCache>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool", &self.pool)
            .finish()
    }
}

/// A write transaction, the time its statements write as `now()`, and the file's commit
/// counter.
pub struct Tx {
    tx: Transaction<'static, Sqlite>,
    at: i64,
    commits: Arc<Commits>,
}

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
    /// WAL journal, busy timeout 10 s, foreign keys on, pool of 4 and as many read lanes
    /// (one connection and no lane for `:memory:`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let file = (!in_memory).then(|| opts.get_filename().to_path_buf());
        if let Some(file) = &file {
            prepare_file(file)?;
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
        if let Some(file) = &file {
            // SQLite gives the -wal and -shm files the database's mode; an older install's
            // may predate that.
            for suffix in ["-wal", "-shm"] {
                let mut side = file.as_os_str().to_owned();
                side.push(suffix);
                crate::files::restrict_file(std::path::Path::new(&side))
                    .map_err(|e| cannot(file, e))?;
            }
        }
        Ok(store)
    }

    /// Wraps an existing pool; runs no migration. A pool of more than one connection is
    /// taken to be a file's, and reads get as many lanes to it; a pool of one (what an
    /// in-memory database needs) reads through the pool.
    pub fn from_pool(pool: SqlitePool) -> Self {
        let size = pool.options().get_max_connections() as usize;
        let options = pool.connect_options();
        let lanes = (size > 1).then(|| Arc::new(Lanes::new((*options).clone(), size)));
        let commits = Commits::of_file(options.get_filename());
        let versions = Arc::new(VersionCache::new(commits.clone()));
        Self {
            pool,
            lanes,
            commits,
            versions,
        }
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
}

fn cannot(path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::InvalidUrl(format!("cannot prepare {}: {e}", path.display()))
}

/// Creates the database's folder (0700) and the empty file (0600) before SQLite opens it,
/// so neither is ever readable by others; an existing file is made owner-only.
fn prepare_file(file: &std::path::Path) -> StoreResult<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::create_dir_all(dir).map_err(|e| cannot(dir, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file).map_err(|e| cannot(file, e))?;
    crate::files::restrict_file(file).map_err(|e| cannot(file, e))
}

/// The core's SQL with `now()` as parameter `$n+1` (bound to `at` by [`query`]).
fn render(sql: &str, n: usize) -> Cow<'_, str> {
    if sql.contains("now()") {
        Cow::Owned(sql.replace("now()", &format!("${}", n + 1)))
    } else {
        Cow::Borrowed(sql)
    }
}

fn query<'q>(sql: &'q str, args: &[Arg<'q>], at: i64) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    let q = args.iter().fold(sqlx::query(sql), |q, a| match *a {
        Arg::Id(v) => q.bind(id(v)),
        Arg::OptId(v) => q.bind(v.map(id)),
        Arg::Text(v) => q.bind(v),
        Arg::Int(v) => q.bind(v),
        Arg::Int32(v) => q.bind(v),
        Arg::Bool(v) => q.bind(v),
        Arg::Float(v) => q.bind(v),
        Arg::Ts(v) => q.bind(v.map(micros)),
        Arg::Json(v) => q.bind(v.map(json_text)),
        Arg::Texts(v) => q.bind(json_array(v)),
        Arg::Ints(v) => q.bind(Value::from(v.to_vec()).to_string()),
        Arg::Ids(v) => q.bind(json_array(v.iter().map(|u| id(*u)))),
    });
    if sql.contains(&format!("${}", args.len() + 1)) {
        q.bind(at)
    } else {
        q
    }
}

#[async_trait]
impl Dialect for SqliteStore {
    type Row = SqliteRow;
    type Tx = Tx;

    const LOCK: &'static str = "";
    const CLAIM_READS_FIRST: bool = true;

    fn skip_locked(_of: Option<&str>) -> String {
        String::new()
    }

    fn in_list(param: &str) -> String {
        format!("IN (SELECT value FROM json_each({param}))")
    }

    fn now_plus(micros: &str) -> String {
        format!("now() + {micros}")
    }

    /// `now()` is bound in microseconds.
    const EPOCH_NOW: &'static str = "(now() / 1000000.0)";
    const LEAST: &'static str = "MIN";
    const GREATEST: &'static str = "MAX";

    async fn read(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<SqliteRow>> {
        let sql = render(sql, args.len());
        let at = now();
        Ok(match &self.lanes {
            Some(lanes) => lanes::fetch_all(lanes, || query(&sql, args, at)).await?,
            None => query(&sql, args, at).fetch_all(&self.pool).await?,
        })
    }

    /// The whole page as one JSON array of arrays built by SQLite: one value crosses from
    /// the connection's worker thread instead of a row (and a hand-off) per item.
    async fn read_items(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<Item>> {
        let rows = self.read(&packed_page(sql)?, args).await?;
        let text: String = match rows.first() {
            Some(row) => row.text("page")?,
            None => return Ok(Vec::new()),
        };
        let page: Vec<Vec<Value>> = serde_json::from_str(&text).map_err(corrupt)?;
        page.iter()
            .map(|values| item_from_row(&Packed(values)))
            .collect()
    }

    fn versions(&self) -> Option<&VersionCache> {
        Some(&self.versions)
    }

    async fn write(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let n = Self::tx_exec(&mut tx, sql, args).await?;
        Self::commit(tx).await?;
        Ok(n)
    }

    async fn write_returning(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<SqliteRow>> {
        let mut tx = self.begin().await?;
        let rows = Self::tx_rows(&mut tx, sql, args).await?;
        Self::commit(tx).await?;
        Ok(rows)
    }

    async fn begin(&self) -> StoreResult<Tx> {
        let at = now();
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let commits = self.commits.clone();
        Ok(Tx { tx, at, commits })
    }

    async fn commit(tx: Tx) -> StoreResult<()> {
        let _committing = tx.commits.begin();
        Ok(tx.tx.commit().await?)
    }

    async fn rollback(tx: Tx) -> StoreResult<()> {
        Ok(tx.tx.rollback().await?)
    }

    async fn tx_rows(tx: &mut Tx, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<SqliteRow>> {
        let sql = render(sql, args.len());
        Ok(query(&sql, args, tx.at).fetch_all(&mut *tx.tx).await?)
    }

    async fn tx_exec(tx: &mut Tx, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let sql = render(sql, args.len());
        let done = query(&sql, args, tx.at).execute(&mut *tx.tx).await?;
        Ok(done.rows_affected())
    }

    /// One multi-row VALUES statement per chunk.
    async fn insert_items(
        tx: &mut Tx,
        job_id: Uuid,
        first: i64,
        chunk: &[NewItem],
    ) -> Result<(), sqlx::Error> {
        let (job, at, mut position) = (id(job_id), tx.at, first);
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO items (job_id, position, custom_id, post_id, image, image_bytes, width, \
         height, status, error_code, error_message, note, finished_at, updated_at, \
         content_sha256, reuse_key, copy_of, reused_from_job, reused_from_custom_id, output, \
         resolved_model, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, \
         cost_pico_usd, individual_pico_usd) ",
        );
        qb.push_values(chunk, |mut b, it| {
            let reuse = reuse_cols(it);
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
                .push_bind(it.note.as_deref())
                .push_bind(it.status.is_terminal().then_some(at))
                .push_bind(at)
                .push_bind(it.content_sha256.as_deref())
                .push_bind(it.reuse_key.as_deref())
                .push_bind(reuse.copy_of)
                .push_bind(reuse.from_job.map(id))
                .push_bind(reuse.from_custom_id)
                .push_bind(reuse.output.map(json_text));
            b.push_bind(reuse.resolved_model);
            for _ in 0..6 {
                b.push_bind(reuse.zero);
            }
            position += 1;
        });
        qb.build().execute(&mut *tx.tx).await?;
        Ok(())
    }

    async fn insert_shards(tx: &mut Tx, job_id: Uuid, shards: &[NewShard]) -> StoreResult<()> {
        let (job, at) = (id(job_id), tx.at);
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO shards (id, job_id, kind, attempt, model, status, item_count, \
             poll_interval_ms, next_poll_at, created_at, updated_at) ",
        );
        qb.push_values(shards, |mut b, s| {
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
        qb.build().execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// One UPDATE … FROM a CTE over `json_each` of the outcomes.
    async fn settle_rows(
        tx: &mut Tx,
        job_id: Uuid,
        shard_id: Uuid,
        verdicts: &[(&ItemOutcome, bool)],
        cancelling: bool,
        max_attempts: i32,
    ) -> StoreResult<Vec<SqliteRow>> {
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
        Ok(sqlx::query(&sql)
            .bind(id(job_id))
            .bind(id(shard_id))
            .bind(Value::Array(rows).to_string())
            .bind(tx.at)
            .bind(cancelling)
            .bind(max_attempts)
            .fetch_all(&mut *tx.tx)
            .await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        if let Some(lanes) = &self.lanes {
            lanes.close().await;
        }
        self.pool.close().await;
    }
}

/// The getters SQLite builds on the plain ones (ids are TEXT, times INTEGER microseconds,
/// JSON is TEXT): the same for a row and a packed row.
macro_rules! sqlite_derived_getters {
    () => {
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
        fn json_text(&self, col: &str) -> StoreResult<String> {
            self.text(col)
        }
    };
}

/// The output names of [`RESULT_COLS`] (`'' AS image` is `image`), and their places.
static RESULT_NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    RESULT_COLS
        .split(',')
        .map(|c| {
            c.trim()
                .rsplit_once(" AS ")
                .map_or(c.trim(), |(_, name)| name)
        })
        .collect()
});
static RESULT_PLACES: LazyLock<HashMap<&'static str, usize>> = LazyLock::new(|| {
    RESULT_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i))
        .collect()
});

/// An item page's query (selecting [`RESULT_COLS`], ending in `ORDER BY … LIMIT …`) as
/// one row, `page`: a JSON array of each row's values in its order.
fn packed_page(sql: &str) -> StoreResult<String> {
    let order = sql
        .rsplit_once(" ORDER BY ")
        .and_then(|(_, rest)| rest.split_once(" LIMIT "))
        .map(|(order, _)| order)
        .ok_or_else(|| corrupt("an item page's query has no ORDER BY … LIMIT"))?;
    Ok(format!(
        "SELECT json_group_array(json_array({}) ORDER BY {order}) AS page FROM ({sql})",
        RESULT_NAMES.join(", ")
    ))
}

/// One row of a packed page: SQLite's values as JSON (TEXT a string, INTEGER a number,
/// NULL null), read the way [`SqliteRow`]'s are.
struct Packed<'a>(&'a [Value]);

impl Packed<'_> {
    fn get(&self, col: &str) -> StoreResult<&Value> {
        RESULT_PLACES
            .get(col)
            .and_then(|i| self.0.get(*i))
            .ok_or_else(|| corrupt(format!("a packed item has no {col}")))
    }
    fn opt<T>(&self, col: &str, f: impl Fn(&Value) -> Option<T>) -> StoreResult<Option<T>> {
        match self.get(col)? {
            Value::Null => Ok(None),
            v => f(v)
                .map(Some)
                .ok_or_else(|| corrupt(format!("{col} has an unexpected value {v}"))),
        }
    }
    fn req<T>(&self, col: &str, f: impl Fn(&Value) -> Option<T>) -> StoreResult<T> {
        self.opt(col, f)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }
}

fn as_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn as_i32(v: &Value) -> Option<i32> {
    v.as_i64().and_then(|n| i32::try_from(n).ok())
}

impl RowGet for Packed<'_> {
    fn text(&self, col: &str) -> StoreResult<String> {
        self.req(col, as_string)
    }
    fn text_ref(&self, col: &str) -> StoreResult<&str> {
        match self.get(col)? {
            Value::String(text) => Ok(text),
            Value::Null => Err(corrupt(format!("{col} is NULL"))),
            v => Err(corrupt(format!("{col} has an unexpected value {v}"))),
        }
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        self.opt(col, as_string)
    }
    fn int(&self, col: &str) -> StoreResult<i64> {
        self.req(col, Value::as_i64)
    }
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        self.opt(col, Value::as_i64)
    }
    fn int32(&self, col: &str) -> StoreResult<i32> {
        self.req(col, as_i32)
    }
    fn opt_int32(&self, col: &str) -> StoreResult<Option<i32>> {
        self.opt(col, as_i32)
    }
    sqlite_derived_getters!();
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        match self.get(col)? {
            Value::Null => Ok(None),
            Value::String(text) => serde_json::from_str(text).map(Some).map_err(corrupt),
            v => Err(corrupt(format!("{col} has an unexpected value {v}"))),
        }
    }
    fn float(&self, col: &str) -> StoreResult<f64> {
        self.req(col, Value::as_f64)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        self.req(col, |v| v.as_i64().map(|n| n != 0))
    }
}

impl RowGet for SqliteRow {
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
    sqlite_derived_getters!();
    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        self.opt_text(col)?
            .map(|s| serde_json::from_str(&s).map_err(corrupt))
            .transpose()
    }
    fn float(&self, col: &str) -> StoreResult<f64> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        Ok(self.try_get(col)?)
    }
}
