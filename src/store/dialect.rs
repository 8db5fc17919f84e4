//! The seam between the shared store core (`core.rs`) and a database: how a value binds in
//! that backend's column representation, how "now", list parameters, leases and locks are
//! written, how a transaction opens, and the bulk statements whose SQL cannot be shared.
//!
//! Core SQL is written for PostgreSQL without casts; `now()` in it means the dialect's
//! current time (PostgreSQL: the database clock; SQLite: the process clock, bound as the
//! last parameter).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::common::{item_from_row, RowGet};
use super::{NewShard, StoreResult};
use crate::domain::{Item, ItemOutcome, NewItem};

/// One bound parameter, as the core means it; each dialect binds it in its own
/// representation (SQLite: ids as TEXT, timestamps as INTEGER microseconds, JSON as TEXT).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Id(Uuid),
    OptId(Option<Uuid>),
    Text(Option<&'a str>),
    Int(Option<i64>),
    Int32(Option<i32>),
    Bool(bool),
    Float(Option<f64>),
    Ts(Option<DateTime<Utc>>),
    Json(Option<&'a Value>),
    /// A list, used through [`Dialect::in_list`].
    Texts(&'a [&'a str]),
    Ints(&'a [i64]),
    Ids(&'a [Uuid]),
}

macro_rules! arg_from {
    ($($t:ty => $v:ident $(($conv:expr))?),+ $(,)?) => {$(
        impl<'a> From<$t> for Arg<'a> {
            fn from(x: $t) -> Self {
                Arg::$v($( ($conv) )?(x))
            }
        }
    )+};
}

arg_from! {
    Uuid => Id,
    Option<Uuid> => OptId,
    &'a str => Text(Some),
    Option<&'a str> => Text,
    &'a String => Text(|s: &'a String| Some(s.as_str())),
    &'a Option<String> => Text(|s: &'a Option<String>| s.as_deref()),
    i64 => Int(Some),
    Option<i64> => Int,
    i32 => Int32(Some),
    Option<i32> => Int32,
    bool => Bool,
    f64 => Float(Some),
    Option<f64> => Float,
    DateTime<Utc> => Ts(Some),
    Option<DateTime<Utc>> => Ts,
    &'a Value => Json(Some),
    Option<&'a Value> => Json,
    &'a [&'a str] => Texts,
    &'a [i64] => Ints,
    &'a [Uuid] => Ids,
}

/// `args![a, b, …]`: a parameter list for the core's statements.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$($crate::store::dialect::Arg::from($a)),*][..] };
}
pub(crate) use args;

/// What the core needs of a database. Every statement the core runs goes through `read`,
/// `write_*` (one statement in its own write transaction) or a [`Dialect::Tx`].
#[async_trait]
pub(crate) trait Dialect: Send + Sync + 'static {
    type Row: RowGet + Send + Sync + 'static;
    /// An open write transaction (SQLite: `BEGIN IMMEDIATE`, and the time its statements use).
    type Tx: Send;

    /// Appended to a SELECT that locks the rows it reads until the transaction ends.
    const LOCK: &'static str;
    /// Appended to a claim's inner SELECT: `FOR UPDATE SKIP LOCKED` (with `OF alias` when
    /// given); SQLite has one writer and needs nothing.
    fn skip_locked(of: Option<&str>) -> String;
    /// A claim of webhooks reads whether any is due before it takes the write lock.
    const CLAIM_READS_FIRST: bool;

    /// The condition "is in the list bound at `param`" (an `Arg::Texts`, `Arg::Ints` or `Arg::Ids`).
    fn in_list(param: &str) -> String;
    /// The time `micros` (a bound INTEGER of microseconds) from now: lease expiry.
    fn now_plus(micros: &str) -> String;
    /// The current time as seconds since the Unix epoch (a float; the rate budget's unit).
    const EPOCH_NOW: &'static str;
    /// The smallest and the largest of their (scalar) arguments.
    const LEAST: &'static str;
    const GREATEST: &'static str;

    async fn read(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<Self::Row>>;
    /// The items of an item page: `sql` selects `RESULT_COLS` and ends in `ORDER BY …
    /// LIMIT …`. One row each; SQLite overrides it to fetch the page as one value.
    async fn read_items(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<Item>> {
        self.read(sql, args)
            .await?
            .iter()
            .map(item_from_row)
            .collect()
    }
    /// The job versions this process may answer from memory (SQLite), or None.
    fn versions(&self) -> Option<&super::versions::VersionCache> {
        None
    }
    /// One write statement in its own transaction; returns rows changed.
    async fn write(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64>;
    /// One write statement in its own transaction; returns its RETURNING rows.
    async fn write_returning(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<Vec<Self::Row>>;

    async fn begin(&self) -> StoreResult<Self::Tx>;
    async fn commit(tx: Self::Tx) -> StoreResult<()>;
    async fn rollback(tx: Self::Tx) -> StoreResult<()>;
    async fn tx_rows(tx: &mut Self::Tx, sql: &str, args: &[Arg<'_>])
        -> StoreResult<Vec<Self::Row>>;
    async fn tx_exec(tx: &mut Self::Tx, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64>;

    /// Inserts one chunk of a job's items (positions from `first`) in one statement.
    async fn insert_items(
        tx: &mut Self::Tx,
        job_id: Uuid,
        first: i64,
        items: &[NewItem],
    ) -> Result<(), sqlx::Error>;

    /// Inserts one chunk of planned shards in one statement.
    async fn insert_shards(tx: &mut Self::Tx, job_id: Uuid, shards: &[NewShard])
        -> StoreResult<()>;

    /// Writes the outcomes of a shard's `submitted` items in one statement and returns
    /// the written items' `OUTCOME_COLS`. `back` rules: see `SettleStore::settle_outcomes`.
    async fn settle_rows(
        tx: &mut Self::Tx,
        job_id: Uuid,
        shard_id: Uuid,
        verdicts: &[(&ItemOutcome, bool)],
        cancelling: bool,
        max_attempts: i32,
    ) -> StoreResult<Vec<Self::Row>>;

    async fn ping(&self) -> StoreResult<()>;
    async fn close(&self);
}
