//! The RPM/TPM governor: one pair of token buckets (requests, tokens) per model, shared by
//! every job on this replica. A request waits until both buckets hold enough; the buckets
//! refill continuously at the configured per-minute rates, slowed to the rate OpenAI's
//! `x-ratelimit-reset-*` headers imply when that is lower, are pulled down to what its
//! `x-ratelimit-remaining-*` headers report, and a 429 pauses the whole model until its
//! `retry-after` has passed, so waiting callers do not stampede.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::providers::RateLimitHeaders;

/// Limits of one model, per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub rpm: u32,
    pub tpm: u32,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    per_sec: f64,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let capacity = per_minute.max(1) as f64;
        Bucket {
            capacity,
            // Start at a fraction of a minute's budget, as a fresh account window would
            // allow a burst, but not the whole minute at once.
            level: capacity / 6.0,
            per_sec: capacity / 60.0,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.level = (self.level + elapsed.as_secs_f64() * self.per_sec).min(self.capacity);
    }

    /// Lowers the budget to the account's real limit per minute when it is below the
    /// configured one (never raises it: a lower setting leaves room for other clients).
    fn cap_at(&mut self, per_minute: u64) {
        let capacity = per_minute as f64;
        // 0 is no limit anyone could mean; ignore it rather than stop the model.
        if per_minute > 0 && capacity < self.capacity {
            self.capacity = capacity;
            self.per_sec = self.per_sec.min(self.nominal_per_sec());
            self.level = self.level.min(capacity);
        }
    }

    /// The refill rate the budget itself allows, per second.
    fn nominal_per_sec(&self) -> f64 {
        self.capacity / 60.0
    }

    /// Refines the refill rate from one `limit`/`remaining`/`reset` reading: the account's
    /// budget comes back from `remaining` to `limit` in `reset`, so it refills at
    /// `(limit - remaining) / reset`. A slower rate than the nominal one (a window that
    /// resets at its end, a limit lowered mid-minute) slows this bucket to it; a faster
    /// one brings it back up to nominal, never above. A reading with under 5% of the
    /// budget in use says too little (rounded headers; OpenAI's own example: 16 tokens
    /// used, `6m0s` to reset) and is skipped. Never below a tenth of nominal: an odd
    /// header can slow a model, not stop it.
    fn refine_rate(&mut self, limit: u64, remaining: u64, reset: Duration) {
        let used = limit.saturating_sub(remaining) as f64;
        if limit == 0 || used < limit as f64 * 0.05 || reset.is_zero() {
            return;
        }
        let implied = used / reset.as_secs_f64();
        let nominal = self.nominal_per_sec();
        self.per_sec = implied.clamp(nominal / 10.0, nominal);
    }

    /// How long until `amount` is available (zero when it is now).
    fn wait_for(&self, amount: f64) -> Duration {
        let amount = amount.min(self.capacity);
        if self.level >= amount {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((amount - self.level) / self.per_sec)
        }
    }
}

#[derive(Debug)]
struct ModelState {
    requests: Bucket,
    tokens: Bucket,
    updated: Instant,
    paused_until: Option<Instant>,
}

impl ModelState {
    fn new(limits: Limits) -> Self {
        ModelState {
            requests: Bucket::new(limits.rpm),
            tokens: Bucket::new(limits.tpm),
            updated: Instant::now(),
            paused_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.requests.refill(elapsed);
        self.tokens.refill(elapsed);
        self.updated = now;
    }
}

/// Shared by every executor task of a replica.
#[derive(Clone)]
pub struct Governor {
    enabled: bool,
    default: Limits,
    per_model: Arc<HashMap<String, Limits>>,
    models: Arc<Mutex<HashMap<String, ModelState>>>,
}

impl Governor {
    pub fn new(default: Limits, per_model: HashMap<String, Limits>) -> Self {
        Governor {
            enabled: true,
            default,
            per_model: Arc::new(per_model),
            models: Arc::default(),
        }
    }

    /// A governor that lets everything through (the benchmark's baseline).
    pub fn disabled() -> Self {
        Governor {
            enabled: false,
            ..Governor::new(Limits { rpm: 1, tpm: 1 }, HashMap::new())
        }
    }

    pub fn limits(&self, model: &str) -> Limits {
        self.per_model.get(model).copied().unwrap_or(self.default)
    }

    /// Waits until one request costing `tokens` may be sent to `model`, and takes it.
    pub async fn acquire(&self, model: &str, tokens: u32) {
        if !self.enabled {
            return;
        }
        let started = Instant::now();
        loop {
            let wait = {
                let mut models = self.models.lock().await;
                let state = models
                    .entry(model.to_string())
                    .or_insert_with(|| ModelState::new(self.limits(model)));
                let now = Instant::now();
                state.refill(now);
                let paused = state
                    .paused_until
                    .filter(|&until| until > now)
                    .map(|until| until - now)
                    .unwrap_or(Duration::ZERO);
                let wait = paused
                    .max(state.requests.wait_for(1.0))
                    .max(state.tokens.wait_for(tokens as f64));
                if wait.is_zero() {
                    state.requests.level -= 1.0;
                    state.tokens.level -= (tokens as f64).min(state.tokens.capacity);
                    metrics::histogram!(crate::metrics::GOVERNOR_WAIT, "model" => model.to_string())
                        .record((now - started).as_secs_f64());
                    return;
                }
                wait
            };
            // Small jitter spreads waiters that woke for the same refill.
            let jitter = Duration::from_millis(rand::random::<u64>() % 20);
            tokio::time::sleep(wait + jitter).await;
        }
    }

    /// Refines the buckets from OpenAI's `x-ratelimit-*` headers (of a success or a 429):
    /// the account's limits (`limit-*`) when lower than configured, the refill rate that
    /// `remaining-*` and `reset-*` (the time until the whole budget is back) imply when
    /// slower than the nominal one ([`Bucket::refine_rate`]), and the level to what is
    /// left (`remaining-*`; never raised: our own accounting already counts requests
    /// OpenAI has not seen yet). A 429's `retry-after` pauses the model ([`Self::pause`]).
    pub async fn observe(&self, model: &str, headers: &RateLimitHeaders) {
        if !self.enabled {
            return;
        }
        let mut models = self.models.lock().await;
        let state = models
            .entry(model.to_string())
            .or_insert_with(|| ModelState::new(self.limits(model)));
        state.refill(Instant::now());
        if let Some(limit) = headers.limit_requests {
            state.requests.cap_at(limit);
        }
        if let Some(limit) = headers.limit_tokens {
            state.tokens.cap_at(limit);
        }
        if let (Some(remaining), Some(reset)) = (headers.remaining_requests, headers.reset_requests)
        {
            let limit = headers
                .limit_requests
                .unwrap_or(state.requests.capacity as u64);
            state.requests.refine_rate(limit, remaining, reset);
        }
        if let (Some(remaining), Some(reset)) = (headers.remaining_tokens, headers.reset_tokens) {
            let limit = headers.limit_tokens.unwrap_or(state.tokens.capacity as u64);
            state.tokens.refine_rate(limit, remaining, reset);
        }
        if let Some(remaining) = headers.remaining_requests {
            state.requests.level = state.requests.level.min(remaining as f64);
        }
        if let Some(remaining) = headers.remaining_tokens {
            state.tokens.level = state.tokens.level.min(remaining as f64);
        }
    }

    /// Waits out a pause that began after this caller's `acquire` (a 429 that arrived while
    /// it was on its way to the wire); true when it waited. Takes no budget.
    pub async fn hold(&self, model: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let mut waited = false;
        loop {
            let until = {
                let models = self.models.lock().await;
                models.get(model).and_then(|state| state.paused_until)
            };
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until).await;
                    waited = true;
                }
                _ => return waited,
            }
        }
    }

    /// After a 429: nobody sends to this model until `retry_after` has passed. Disabled,
    /// only the caller waits, as a plain client honouring `retry-after` would.
    pub async fn pause(&self, model: &str, retry_after: Duration) {
        if !self.enabled {
            tokio::time::sleep(retry_after).await;
            return;
        }
        let mut models = self.models.lock().await;
        let state = models
            .entry(model.to_string())
            .or_insert_with(|| ModelState::new(self.limits(model)));
        let until = Instant::now() + retry_after;
        if state.paused_until.is_none_or(|p| p < until) {
            state.paused_until = Some(until);
        }
        state.requests.level = state.requests.level.min(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governor(rpm: u32, tpm: u32) -> Governor {
        Governor::new(Limits { rpm, tpm }, HashMap::new())
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spread_to_the_rpm() {
        let g = governor(60, 1_000_000);
        let start = Instant::now();
        for _ in 0..20 {
            g.acquire("m", 10).await;
        }
        // 10 are available at once (a sixth of a minute), the next 10 at one a second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(9), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(12), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_budget_binds_when_requests_are_large() {
        let g = governor(10_000, 6_000);
        let start = Instant::now();
        for _ in 0..4 {
            g.acquire("m", 1_000).await;
        }
        // 1,000 tokens at once, then 100 tokens a second: 3 more requests need 30 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(29), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(32), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller() {
        let g = governor(6_000, 1_000_000);
        g.pause("m", Duration::from_secs(5)).await;
        let start = Instant::now();
        g.acquire("m", 1).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        // Another model is not paused.
        let start = Instant::now();
        g.acquire("other", 1).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_limit_in_the_headers_wins_when_lower() {
        let g = governor(6_000, 1_000_000);
        g.acquire("m", 1).await;
        let headers = RateLimitHeaders {
            limit_requests: Some(60),
            limit_tokens: Some(10_000_000),
            ..RateLimitHeaders::default()
        };
        g.observe("m", &headers).await;
        let start = Instant::now();
        for _ in 0..70 {
            g.acquire("m", 1).await;
        }
        // 60 at once at most (the real minute's budget), then one a second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(9), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(12), "{elapsed:?}");
    }

    fn reading(limit: u64, remaining: u64, reset: Duration) -> RateLimitHeaders {
        RateLimitHeaders {
            limit_requests: Some(limit),
            remaining_requests: Some(remaining),
            reset_requests: Some(reset),
            ..RateLimitHeaders::default()
        }
    }

    /// Seconds `count` more requests take once the bucket's level is spent.
    async fn seconds_for(g: &Governor, count: usize) -> f64 {
        // 600 rpm starts at 100; one taken before each reading leaves 99 at once.
        for _ in 0..99 {
            g.acquire("m", 1).await;
        }
        let start = Instant::now();
        for _ in 0..count {
            g.acquire("m", 1).await;
        }
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slower_refill_in_the_reset_headers_paces_the_model() {
        let g = governor(600, 1_000_000);
        g.acquire("m", 1).await;
        // 300 of 600 used, full again in a minute: 5 a second, not the nominal 10.
        g.observe("m", &reading(600, 300, Duration::from_secs(60)))
            .await;
        let took = seconds_for(&g, 50).await;
        assert!((9.5..=11.0).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_faster_reading_restores_the_nominal_rate_and_no_more() {
        let g = governor(600, 1_000_000);
        g.acquire("m", 1).await;
        g.observe("m", &reading(600, 300, Duration::from_secs(60)))
            .await;
        // 30 a second implied: back to the configured 10, not above.
        g.observe("m", &reading(600, 300, Duration::from_secs(10)))
            .await;
        let took = seconds_for(&g, 50).await;
        assert!((4.5..=5.5).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_odd_reset_slows_a_model_but_never_stops_it() {
        let g = governor(600, 1_000_000);
        g.acquire("m", 1).await;
        // Nothing left and an hour to reset would be 1 request every 6 s: floored at a
        // tenth of nominal, one a second.
        g.observe("m", &reading(600, 0, Duration::from_secs(3_600)))
            .await;
        let start = Instant::now();
        for _ in 0..5 {
            g.acquire("m", 1).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((4.5..=6.0).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_with_little_used_says_nothing_about_the_rate() {
        // OpenAI's documented example: 16 of 150,000 tokens used, `6m0s` to reset.
        let g = governor(10_000, 150_000);
        g.acquire("m", 25_000).await;
        let headers = RateLimitHeaders {
            limit_tokens: Some(150_000),
            remaining_tokens: Some(149_984),
            reset_tokens: Some(Duration::from_secs(360)),
            ..RateLimitHeaders::default()
        };
        g.observe("m", &headers).await;
        // The bucket is empty; 2,500 tokens a second is the nominal refill.
        let start = Instant::now();
        g.acquire("m", 5_000).await;
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..=2.2).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn headers_lower_the_budget() {
        let g = governor(600, 1_000_000);
        g.acquire("m", 1).await;
        let headers = RateLimitHeaders {
            remaining_requests: Some(0),
            ..RateLimitHeaders::default()
        };
        g.observe("m", &headers).await;
        let start = Instant::now();
        g.acquire("m", 1).await;
        // 600 rpm refills one request every 100 ms.
        assert!(start.elapsed() >= Duration::from_millis(90));
    }
}
