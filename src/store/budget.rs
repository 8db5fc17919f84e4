//! The individual-mode rate budget shared by replicas (`rate_budgets`): one row per
//! (account, model), each step one `UPDATE … RETURNING` whose refill is computed in SQL.
//! PostgreSQL reads its own clock (`clock_timestamp()`, once per statement), so every
//! replica refills by the same time; SQLite (one replica) binds the process clock.

use async_trait::async_trait;
use sqlx::Row;

use super::{BudgetLevels, BudgetOp, BudgetRefill, BudgetStore, PgStore, SqliteStore, StoreResult};

/// How the two backends spell what the statement needs.
struct Flavor {
    least: &'static str,
    greatest: &'static str,
    /// The FROM clause giving `c.now` (seconds since the epoch, read once).
    now_from: &'static str,
}

const PG: Flavor = Flavor {
    least: "LEAST",
    greatest: "GREATEST",
    now_from: "(SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now) AS c",
};

const SQLITE: Flavor = Flavor {
    least: "MIN",
    greatest: "MAX",
    now_from: "(SELECT CAST($9 AS REAL) AS now) AS c",
};

/// The statement of one step. Parameters: $1 account, $2 model, $3 requests/s, $4 tokens/s,
/// $5 max requests, $6 max tokens, $7 and $8 the step's own values (NULL when unused),
/// and on SQLite $9 the time.
fn step_sql(f: &Flavor, op: &BudgetOp) -> String {
    let Flavor {
        least,
        greatest,
        now_from,
    } = f;
    let elapsed = format!("{greatest}(c.now - b.refilled_at, 0.0)");
    let requests = format!("{least}($5, b.requests + {elapsed} * $3)");
    let tokens = format!("{least}($6, b.tokens + {elapsed} * $4)");
    let set = match op {
        BudgetOp::Take { .. } => {
            let ok = format!(
                "(b.paused_until <= c.now AND {requests} >= 1.0 AND {tokens} >= {least}($7, $6))"
            );
            format!(
                "requests = {requests} - CASE WHEN {ok} THEN 1.0 ELSE 0.0 END, \
                 tokens = {tokens} - CASE WHEN {ok} THEN $7 ELSE 0.0 END, \
                 granted = {ok}"
            )
        }
        BudgetOp::LowerTo { .. } => format!(
            "requests = {least}({requests}, COALESCE($7, {requests})), \
             tokens = {least}({tokens}, COALESCE($8, {tokens})), \
             granted = FALSE"
        ),
        BudgetOp::AdjustTokens(_) => {
            format!("requests = {requests}, tokens = {least}({tokens} - $7, $6), granted = FALSE")
        }
        BudgetOp::Pause(_) => format!(
            "requests = {least}({requests}, 0.0), tokens = {tokens}, \
             paused_until = {greatest}(b.paused_until, c.now + $7), granted = FALSE"
        ),
    };
    format!(
        "UPDATE rate_budgets AS b SET {set}, refilled_at = {greatest}(b.refilled_at, c.now) \
         FROM {now_from} WHERE b.account = $1 AND b.model = $2 \
         RETURNING requests, tokens, {greatest}(paused_until - refilled_at, 0.0) AS paused_for, granted"
    )
}

/// A missing row starts full (the burst, not a minute).
const INSERT_FULL_PG: &str =
    "INSERT INTO rate_budgets (account, model, requests, tokens, refilled_at) \
     VALUES ($1, $2, $3, $4, EXTRACT(EPOCH FROM clock_timestamp())::float8) \
     ON CONFLICT (account, model) DO NOTHING";
const INSERT_FULL_SQLITE: &str =
    "INSERT INTO rate_budgets (account, model, requests, tokens, refilled_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account, model) DO NOTHING";

fn op_args(op: &BudgetOp) -> (Option<f64>, Option<f64>) {
    match *op {
        BudgetOp::Take { tokens } => (Some(tokens), None),
        BudgetOp::LowerTo { requests, tokens } => (requests, tokens),
        BudgetOp::AdjustTokens(tokens) => (Some(tokens), None),
        BudgetOp::Pause(for_) => (Some(for_.as_secs_f64()), None),
    }
}

fn levels(requests: f64, tokens: f64, paused_for: f64, granted: bool) -> BudgetLevels {
    BudgetLevels {
        requests,
        tokens,
        paused_for: std::time::Duration::from_secs_f64(paused_for.clamp(0.0, 1e9)),
        granted,
    }
}

fn epoch_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn budget_step(
        &self,
        account: &str,
        model: &str,
        refill: &BudgetRefill,
        op: BudgetOp,
    ) -> StoreResult<BudgetLevels> {
        let sql = step_sql(&PG, &op);
        let (a, b) = op_args(&op);
        for attempt in 0..2 {
            let row = sqlx::query(&sql)
                .bind(account)
                .bind(model)
                .bind(refill.requests_per_sec)
                .bind(refill.tokens_per_sec)
                .bind(refill.max_requests)
                .bind(refill.max_tokens)
                .bind(a)
                .bind(b)
                .fetch_optional(self.pool())
                .await?;
            if let Some(row) = row {
                return Ok(levels(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ));
            }
            if attempt == 0 {
                sqlx::query(INSERT_FULL_PG)
                    .bind(account)
                    .bind(model)
                    .bind(refill.max_requests)
                    .bind(refill.max_tokens)
                    .execute(self.pool())
                    .await?;
            }
        }
        Err(super::StoreError::Corrupt(format!(
            "rate budget row of {model} vanished after it was inserted"
        )))
    }
}

#[async_trait]
impl BudgetStore for SqliteStore {
    async fn budget_step(
        &self,
        account: &str,
        model: &str,
        refill: &BudgetRefill,
        op: BudgetOp,
    ) -> StoreResult<BudgetLevels> {
        let sql = step_sql(&SQLITE, &op);
        let (a, b) = op_args(&op);
        for attempt in 0..2 {
            let row = sqlx::query(&sql)
                .bind(account)
                .bind(model)
                .bind(refill.requests_per_sec)
                .bind(refill.tokens_per_sec)
                .bind(refill.max_requests)
                .bind(refill.max_tokens)
                .bind(a)
                .bind(b)
                .bind(epoch_now())
                .fetch_optional(self.pool())
                .await?;
            if let Some(row) = row {
                let granted: i64 = row.try_get(3)?;
                return Ok(levels(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    granted != 0,
                ));
            }
            if attempt == 0 {
                sqlx::query(INSERT_FULL_SQLITE)
                    .bind(account)
                    .bind(model)
                    .bind(refill.max_requests)
                    .bind(refill.max_tokens)
                    .bind(epoch_now())
                    .execute(self.pool())
                    .await?;
            }
        }
        Err(super::StoreError::Corrupt(format!(
            "rate budget row of {model} vanished after it was inserted"
        )))
    }
}
