//! The individual-mode rate budget shared by replicas (`rate_budgets`): one row per
//! (account, model), each step one `UPDATE … RETURNING` whose refill is computed in SQL.
//! Written once for both backends over the [`Dialect`]: PostgreSQL reads its own clock
//! (`clock_timestamp()`, once per statement), so every replica refills by the same time;
//! SQLite (one replica) binds the process clock.

use async_trait::async_trait;

use super::common::RowGet;
use super::dialect::{args, Dialect};
use super::{BudgetLevels, BudgetOp, BudgetRefill, BudgetStore, StoreError, StoreResult};

/// The statement of one step. Parameters: $1 account, $2 model, $3 requests/s, $4 tokens/s,
/// $5 max requests, $6 max tokens, $7 and $8 the step's own values (NULL when unused).
fn step_sql<D: Dialect>(op: &BudgetOp) -> String {
    let (least, greatest) = (D::LEAST, D::GREATEST);
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
         FROM (SELECT {} AS now) AS c WHERE b.account = $1 AND b.model = $2 \
         RETURNING requests, tokens, \
         {greatest}(paused_until - refilled_at, 0.0) AS paused_for, granted",
        D::EPOCH_NOW
    )
}

/// A missing row starts full (the burst, not a minute).
fn insert_full_sql<D: Dialect>() -> String {
    format!(
        "INSERT INTO rate_budgets (account, model, requests, tokens, refilled_at) \
         VALUES ($1, $2, $3, $4, {}) ON CONFLICT (account, model) DO NOTHING",
        D::EPOCH_NOW
    )
}

fn op_args(op: &BudgetOp) -> (Option<f64>, Option<f64>) {
    match *op {
        BudgetOp::Take { tokens } => (Some(tokens), None),
        BudgetOp::LowerTo { requests, tokens } => (requests, tokens),
        BudgetOp::AdjustTokens(tokens) => (Some(tokens), None),
        BudgetOp::Pause(for_) => (Some(for_.as_secs_f64()), None),
    }
}

fn levels_from_row(row: &impl RowGet) -> StoreResult<BudgetLevels> {
    Ok(BudgetLevels {
        requests: row.float("requests")?,
        tokens: row.float("tokens")?,
        paused_for: std::time::Duration::from_secs_f64(row.float("paused_for")?.clamp(0.0, 1e9)),
        granted: row.flag("granted")?,
    })
}

#[async_trait]
impl<D: Dialect> BudgetStore for D {
    async fn budget_step(
        &self,
        account: &str,
        model: &str,
        refill: &BudgetRefill,
        op: BudgetOp,
    ) -> StoreResult<BudgetLevels> {
        let sql = step_sql::<D>(&op);
        let (a, b) = op_args(&op);
        let step = args![
            account,
            model,
            refill.requests_per_sec,
            refill.tokens_per_sec,
            refill.max_requests,
            refill.max_tokens,
            a,
            b
        ];
        for attempt in 0..2 {
            if let Some(row) = self.write_returning(&sql, step).await?.first() {
                return levels_from_row(row);
            }
            if attempt == 0 {
                let full = args![account, model, refill.max_requests, refill.max_tokens];
                self.write(&insert_full_sql::<D>(), full).await?;
            }
        }
        Err(StoreError::Corrupt(format!(
            "rate budget row of {model} vanished after it was inserted"
        )))
    }
}
