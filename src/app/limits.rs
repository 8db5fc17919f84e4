//! Tenant limits (`[tenants.<name>]`, defaults under `[tenants.default]`): API requests per
//! second (a token bucket per tenant, in this replica's memory: N replicas admit up to N
//! times the rate), images open at once (counted from the store), and a monthly budget
//! (this month's spend plus the estimates of unfinished jobs, from the store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::{App, AppError, AppResult};
use crate::domain::{pico_to_usd, Job, Mode, PicoUsd};

/// How long a caller over `max_open_items` is told to wait: images finish on their own.
pub const OPEN_ITEMS_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A replica's own state of the tenant limits: one token bucket per tenant (`rate` tokens
/// a second, holding at most `max(rate, 1)`), and one admission lock per tenant, held from
/// the open-items and budget checks to the insert so a tenant's concurrent requests to
/// this replica cannot both take the last of a limit.
#[derive(Debug, Default)]
pub struct TenantGate {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    admissions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TenantGate {
    /// Takes one request's token, or says how long until there is one.
    pub fn take(&self, tenant: &str, rate: f64) -> Result<(), Duration> {
        let capacity = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(tenant.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// Waits for the tenant's admission lock.
    pub async fn admit(&self, tenant: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .admissions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// The first instant of the month `now` is in (UTC): where a monthly budget starts.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

/// What a tenant's budget looks like now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetView {
    pub monthly_budget_usd: Option<f64>,
    pub month_start: DateTime<Utc>,
    /// What the month's finished jobs cost.
    pub spent_usd: f64,
    /// What its unfinished jobs are expected to cost.
    pub in_flight_usd: f64,
    /// Budget less both, never below 0; None without a budget.
    pub remaining_usd: Option<f64>,
}

/// What a job in flight holds of a budget: its estimate for its mode (individual, the
/// dearer, while undecided), or its cost so far when that is more. Matches the store's
/// `month_spend`.
fn reserve(job: &Job) -> PicoUsd {
    estimate_for(
        job.mode,
        job.estimate_batch_pico_usd,
        job.estimate_individual_pico_usd,
    )
    .unwrap_or(0)
    .max(job.cost.actual_pico_usd)
}

/// The estimate a budget holds for a job in `mode`: batch for batch and flex (billed at
/// Batch API prices), else individual.
pub fn estimate_for(
    mode: Mode,
    batch: Option<PicoUsd>,
    individual: Option<PicoUsd>,
) -> Option<PicoUsd> {
    match mode {
        Mode::Batch | Mode::Flex => batch,
        _ => individual.or(batch),
    }
}

fn usd(p: PicoUsd) -> String {
    format!("{:.6}", pico_to_usd(p))
}

impl App {
    /// Counts one API request against the tenant's `requests_per_second`.
    pub fn admit_request(&self, tenant: &str) -> AppResult<()> {
        let Some(rate) = self.settings.tenant_limits(tenant).requests_per_second else {
            return Ok(());
        };
        self.gate.take(tenant, rate).map_err(|wait| {
            metrics::counter!(crate::metrics::TENANT_LIMITED, "limit" => "requests_per_second")
                .increment(1);
            AppError::TooManyRequests {
                detail: format!(
                    "requests_per_second: tenant {tenant:?} is over its limit of {rate} \
                     requests per second"
                ),
                retry_after: wait,
            }
        })
    }

    /// The tenant's admission lock when it has a limit checked against the store
    /// (`max_open_items`, `monthly_budget_usd`): hold it from the checks to the insert.
    pub async fn admission(&self, tenant: &str) -> Option<OwnedMutexGuard<()>> {
        let limits = self.settings.tenant_limits(tenant);
        if limits.max_open_items.is_none() && limits.monthly_budget_usd.is_none() {
            return None;
        }
        Some(self.gate.admit(tenant).await)
    }

    /// Refuses `adding` more open images when the tenant would pass `max_open_items`.
    pub async fn check_open_items(&self, tenant: &str, adding: usize) -> AppResult<()> {
        let Some(max) = self.settings.tenant_limits(tenant).max_open_items else {
            return Ok(());
        };
        let open = self.store.open_items(tenant).await?.max(0) as u64;
        if open + adding as u64 <= max {
            return Ok(());
        }
        metrics::counter!(crate::metrics::TENANT_LIMITED, "limit" => "max_open_items").increment(1);
        Err(AppError::TooManyRequests {
            detail: format!(
                "max_open_items: tenant {tenant:?} has {open} images accepted and not finished; \
                 {adding} more would pass its limit of {max}"
            ),
            retry_after: OPEN_ITEMS_RETRY_AFTER,
        })
    }

    /// The tenant's budget this month.
    pub async fn budget(&self, tenant: &str) -> AppResult<BudgetView> {
        let budget = self.settings.tenant_limits(tenant).monthly_budget_usd;
        let start = month_start(Utc::now());
        let spend = self.store.month_spend(tenant, start).await?;
        Ok(BudgetView {
            monthly_budget_usd: budget,
            month_start: start,
            spent_usd: pico_to_usd(spend.actual_pico_usd),
            in_flight_usd: pico_to_usd(spend.in_flight_pico_usd),
            remaining_usd: budget.map(|b| (b - pico_to_usd(spend.total())).max(0.0)),
        })
    }

    /// Refuses a job (or a chunk of an open one) whose estimate `adding` would take the
    /// month's spend and in-flight estimates over the tenant's `monthly_budget_usd`.
    /// `replacing`: an open job whose held share `adding` replaces. `None`: the model has
    /// no price, so no budget can hold it.
    pub async fn check_budget(
        &self,
        tenant: &str,
        adding: Option<PicoUsd>,
        replacing: Option<&Job>,
    ) -> AppResult<()> {
        let Some(budget_usd) = self.settings.tenant_limits(tenant).monthly_budget_usd else {
            return Ok(());
        };
        let Some(adding) = adding else {
            return Err(AppError::OverBudget(format!(
                "monthly_budget_usd: the job's model has no price, so its cost cannot be \
                 held against tenant {tenant:?}'s monthly budget of {budget_usd} USD"
            )));
        };
        let budget = (budget_usd * 1e12).round() as PicoUsd;
        let start = month_start(Utc::now());
        let spend = self.store.month_spend(tenant, start).await?;
        let held = replacing
            .filter(|job| job.created_at >= start)
            .map_or(0, reserve);
        let committed = spend.total() - held;
        if committed + adding <= budget {
            return Ok(());
        }
        metrics::counter!(crate::metrics::TENANT_LIMITED, "limit" => "monthly_budget_usd")
            .increment(1);
        let left = (budget - committed).max(0);
        Err(AppError::OverBudget(format!(
            "monthly_budget_usd: this job's estimate of {} USD is over the {} USD left of \
             tenant {tenant:?}'s monthly budget of {budget_usd} USD ({} USD spent and {} USD \
             in flight this month)",
            usd(adding),
            usd(left),
            usd(spend.actual_pico_usd),
            usd(spend.in_flight_pico_usd - held),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_at_its_rate() {
        let limiter = TenantGate::default();
        for _ in 0..2 {
            limiter.take("acme", 2.0).unwrap();
        }
        let wait = limiter.take("acme", 2.0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        limiter.take("globex", 2.0).unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        limiter.take("acme", 2.0).unwrap();
        assert!(limiter.take("acme", 2.0).is_err());
        // Under one request a second, the bucket still holds one.
        limiter.take("slow", 0.1).unwrap();
        let wait = limiter.take("slow", 0.1).unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
    }

    #[tokio::test]
    async fn one_admission_per_tenant_at_a_time() {
        let gate = TenantGate::default();
        let held = gate.admit("acme").await;
        let other = tokio::time::timeout(Duration::from_secs(5), gate.admit("globex")).await;
        assert!(other.is_ok(), "another tenant is not held up");
        assert!(gate.admissions.lock().unwrap()["acme"].try_lock().is_err());
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), gate.admit("acme")).await;
        assert!(again.is_ok());
    }

    #[test]
    fn months_start_at_midnight_utc_on_the_first() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 6, 30, 0).unwrap();
        assert_eq!(
            month_start(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
    }
}
