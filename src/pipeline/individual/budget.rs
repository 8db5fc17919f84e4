//! The rate budget every replica shares, kept in the database (`rate_budgets`): one row per
//! account and model, each governor step one `UPDATE … RETURNING` on it
//! (`BudgetStore::budget_step`), refilled by the database's clock. Replicas pace together at
//! the account's limit, whichever of them have work, and a 429 pauses them all.
//!
//! The account is the hex SHA-256 of the OpenAI base URL and API key, so two deployments
//! with different keys (or a proxy and OpenAI itself) never share a row, and the key itself
//! is never written anywhere.
//!
//! A database that does not answer takes nothing: callers wait and ask again (logged), so
//! an outage never lets calls past the limit.

use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::governor::{Budget, Rates};
use crate::store::{BudgetOp, BudgetRefill, DynStore};

/// How long a caller waits before asking again when the database did not answer.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

/// Hex SHA-256 of `base_url`, a NUL and `api_key`: the account a budget row belongs to.
pub fn account_key(base_url: &str, api_key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(base_url.as_bytes());
    hash.update([0]);
    hash.update(api_key.as_bytes());
    hex::encode(hash.finalize())
}

/// A [`Budget`] kept in the store, shared by every replica on the same database.
#[derive(Clone)]
pub struct StoreBudget {
    store: DynStore,
    account: String,
}

impl StoreBudget {
    /// The budget of the account `base_url` and `api_key` name (see [`account_key`]).
    pub fn new(store: DynStore, base_url: &str, api_key: &str) -> Self {
        StoreBudget {
            store,
            account: account_key(base_url, api_key),
        }
    }

    /// The account's hash, as its rows are keyed.
    pub fn account(&self) -> &str {
        &self.account
    }

    async fn step(
        &self,
        model: &str,
        rates: Rates,
        op: BudgetOp,
    ) -> Option<crate::store::BudgetLevels> {
        let refill = BudgetRefill {
            requests_per_sec: rates.requests_per_sec,
            tokens_per_sec: rates.tokens_per_sec,
            max_requests: rates.max_requests,
            max_tokens: rates.max_tokens,
        };
        match self
            .store
            .budget_step(&self.account, model, &refill, op)
            .await
        {
            Ok(levels) => Some(levels),
            Err(err) => {
                tracing::warn!(model, error = %err, ?op, "shared rate budget: the database did not answer");
                None
            }
        }
    }
}

impl Budget for StoreBudget {
    fn take<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        tokens: f64,
    ) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(async move {
            let Some(levels) = self.step(model, rates, BudgetOp::Take { tokens }).await else {
                return Err(RETRY_AFTER_ERROR);
            };
            if levels.granted {
                return Ok(());
            }
            // Another replica may take the refill first: the wait is a guess, asked again.
            let wait =
                levels
                    .paused_for
                    .max(rates.wait_to_take(levels.requests, levels.tokens, tokens));
            Err(wait.max(Duration::from_millis(1)))
        })
    }

    fn lower_to<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        requests: Option<f64>,
        tokens: Option<f64>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.step(model, rates, BudgetOp::LowerTo { requests, tokens })
                .await;
        })
    }

    fn adjust_tokens<'a>(&'a self, model: &'a str, rates: Rates, tokens: f64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.step(model, rates, BudgetOp::AdjustTokens(tokens))
                .await;
        })
    }

    fn pause<'a>(&'a self, model: &'a str, rates: Rates, for_: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.step(model, rates, BudgetOp::Pause(for_)).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::individual::governor::{Governor, Limits};

    #[test]
    fn the_account_is_a_hash_of_url_and_key_never_the_key() {
        let a = account_key("https://api.openai.com/v1", "sk-secret");
        assert_eq!(a.len(), 64);
        assert!(!a.contains("sk-secret"));
        assert_ne!(a, account_key("https://api.openai.com/v1", "sk-other"));
        assert_ne!(a, account_key("http://proxy:8080/v1", "sk-secret"));
        // The separator keeps the two parts apart.
        assert_ne!(account_key("ab", "c"), account_key("a", "bc"));
    }

    fn limits(rpm: u32) -> Limits {
        Limits {
            rpm,
            tpm: 10_000_000,
        }
    }

    /// Two governors (two replicas) at `rpm` whose budget is kept in one store, and the
    /// store.
    async fn two_replicas(rpm: u32) -> (DynStore, Governor, Governor) {
        let store = crate::store::connect("sqlite::memory:").await.unwrap();
        let replica = || {
            Governor::with_budget(
                limits(rpm),
                HashMap::new(),
                Arc::new(StoreBudget::new(store.clone(), "http://sim", "sk")),
            )
        };
        let (a, b) = (replica(), replica());
        (store, a, b)
    }

    /// Two governors (two replicas) on one store pace together: 20 requests at 60 RPM take
    /// as long as they would through one governor, not half of it.
    #[tokio::test]
    async fn two_governors_on_one_store_share_the_rate() {
        let (_store, a, b) = two_replicas(600).await;
        let start = std::time::Instant::now();
        let run = |g: Governor| async move {
            for _ in 0..15 {
                g.acquire("m", 1).await;
            }
        };
        tokio::join!(run(a), run(b));
        // 30 requests: a burst of 12 (2% of 600), 18 more at 9.6 a second: 1.9 s (0.9 s if
        // each replica had its own budget).
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 1.6, "{took}");
    }

    #[tokio::test]
    async fn a_budget_names_its_account_by_the_hash() {
        let (store, _, _) = two_replicas(60).await;
        let budget = StoreBudget::new(store, "http://sim", "sk");
        assert_eq!(budget.account(), account_key("http://sim", "sk"));
    }

    /// A 429 one replica gets pauses the other.
    #[tokio::test]
    async fn a_pause_on_one_replica_holds_the_other() {
        let (store, a, b) = two_replicas(6_000).await;
        a.pause("m", Duration::from_millis(800)).await;
        let start = std::time::Instant::now();
        b.acquire("m", 1).await;
        let took = start.elapsed().as_secs_f64();
        assert!(took >= 0.7, "{took}");
        // Another account is not paused.
        let other = StoreBudget::new(store.clone(), "http://sim", "sk-other");
        let rates = Rates::paced(limits(6_000));
        assert_eq!(other.take("m", rates, 1.0).await, Ok(()));
    }
}
