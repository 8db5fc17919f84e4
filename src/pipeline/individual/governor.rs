//! The RPM/TPM governor: per model, shared by every job on this replica. A request waits
//! until the model's [`Budget`] holds one request and its tokens; the budget refills
//! smoothly at [`PACE`] of the per-minute limits (the configured ones, lowered to the
//! account's `x-ratelimit-limit-*` when those are lower) and holds at most a small burst
//! ([`BURST`] of a minute), so that whatever the account's limiter is — a token bucket, a
//! 60 s sliding window, a window that resets on the minute — no 60 s span ever sees more
//! than `PACE + BURST` of the limit. OpenAI's headers can only take budget away: a low
//! `x-ratelimit-remaining-*` pulls the level down to it, and a 429 pauses the whole model
//! until its `retry-after` has passed, so waiting callers do not stampede. The `reset-*`
//! headers are not read: under a sliding window they are the time until the window is
//! empty, and a rate derived from them is the governor's own sending rate.
//!
//! Tokens are estimated before the call; the usage OpenAI reports after it corrects both the
//! budget (the difference is taken or given back) and the estimate of the next calls
//! (a running ratio of counted to estimated tokens, per model).
//!
//! The levels live behind [`Budget`]: [`LocalBudget`] keeps them in this replica's memory;
//! [`super::budget::StoreBudget`] keeps them in the database, one row per account and model
//! that every replica takes from, so N replicas together pace at the account's limit and a
//! 429 one of them gets pauses them all. The pacing policy here is the same for both. On a
//! replica, one caller per model at a time asks the budget (the others queue behind it), so
//! a shared budget sees one step per refill and replica, not one per waiting call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::providers::RateLimitHeaders;

/// Share of the limit the budget refills at: the margin covers the burst and the jitter
/// between taking a request here and OpenAI counting it.
pub const PACE: f64 = 0.96;
/// Most the budget holds, as a share of a minute's limit (at least one request's worth):
/// a small burst at the start and after idling, never a sliding window's worth at once.
pub const BURST: f64 = 0.02;

/// Limits of one model, per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub rpm: u32,
    pub tpm: u32,
}

/// How one model's budget refills and how much it may hold, in requests and tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub requests_per_sec: f64,
    pub tokens_per_sec: f64,
    pub max_requests: f64,
    pub max_tokens: f64,
}

impl Rates {
    /// Paced at [`PACE`] of `limits`, holding [`BURST`] of a minute.
    pub fn paced(limits: Limits) -> Rates {
        let rpm = limits.rpm.max(1) as f64;
        let tpm = limits.tpm.max(1) as f64;
        Rates {
            requests_per_sec: rpm * PACE / 60.0,
            tokens_per_sec: tpm * PACE / 60.0,
            max_requests: (rpm * BURST).max(1.0),
            max_tokens: (tpm * BURST).max(1.0),
        }
    }

    /// How long until levels of `requests` and `tokens` hold one request and `wanted`
    /// tokens (a request larger than `max_tokens` needs a full level); zero when they do
    /// now. The one reading of a budget's levels, wherever they are kept.
    pub fn wait_to_take(&self, requests: f64, tokens: f64, wanted: f64) -> Duration {
        wait_until_level(requests, 1.0, self.requests_per_sec).max(wait_until_level(
            tokens,
            wanted.min(self.max_tokens),
            self.tokens_per_sec,
        ))
    }
}

/// Where the models' request and token levels are kept. Every method is one short step
/// (one `UPDATE … RETURNING` for a budget kept in PostgreSQL); the policy — pacing, pauses,
/// limits from headers, token estimates — stays in [`Governor`].
pub trait Budget: Send + Sync {
    /// Takes one request and `tokens` for `model` when the levels allow it now (a request
    /// larger than `max_tokens` needs a full level and leaves it in debt), refilling at
    /// `rates` first; otherwise takes nothing and says how long until they would.
    fn take<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        tokens: f64,
    ) -> BoxFuture<'a, Result<(), Duration>>;

    /// Lowers the levels to at most what OpenAI says is left (`None`: unknown, unchanged).
    fn lower_to<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        requests: Option<f64>,
        tokens: Option<f64>,
    ) -> BoxFuture<'a, ()>;

    /// Takes `tokens` more (or gives them back when negative): a call counted differently
    /// from what was taken for it.
    fn adjust_tokens<'a>(&'a self, model: &'a str, rates: Rates, tokens: f64) -> BoxFuture<'a, ()>;

    /// After a 429: empties the request level and, for a budget other replicas share, holds
    /// every take of theirs until `for_` has passed (this replica's governor holds its own
    /// callers itself).
    fn pause<'a>(&'a self, model: &'a str, rates: Rates, for_: Duration) -> BoxFuture<'a, ()>;
}

#[derive(Debug)]
struct Levels {
    requests: f64,
    tokens: f64,
    at: Instant,
}

impl Levels {
    fn full(rates: Rates, now: Instant) -> Self {
        Levels {
            requests: rates.max_requests,
            tokens: rates.max_tokens,
            at: now,
        }
    }

    /// Refills to `now`; a level in debt (below zero) refills like any other.
    fn refill(&mut self, rates: Rates, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.requests = (self.requests + elapsed * rates.requests_per_sec).min(rates.max_requests);
        self.tokens = (self.tokens + elapsed * rates.tokens_per_sec).min(rates.max_tokens);
        self.at = self.at.max(now);
    }
}

/// Seconds until `level` reaches `need` at `per_sec`.
fn wait_until_level(level: f64, need: f64, per_sec: f64) -> Duration {
    if level >= need {
        Duration::ZERO
    } else {
        Duration::from_secs_f64((need - level) / per_sec.max(f64::MIN_POSITIVE))
    }
}

/// The budget in this replica's memory: a pair of token buckets per model, starting full
/// (which is [`BURST`] of a minute, not a minute).
#[derive(Debug, Default)]
pub struct LocalBudget {
    models: Mutex<HashMap<String, Levels>>,
}

impl LocalBudget {
    fn with<R>(&self, model: &str, rates: Rates, f: impl FnOnce(&mut Levels) -> R) -> R {
        let now = Instant::now();
        let mut models = self
            .models
            .lock()
            .expect("the budget lock is never poisoned");
        let levels = models
            .entry(model.to_string())
            .or_insert_with(|| Levels::full(rates, now));
        levels.refill(rates, now);
        f(levels)
    }
}

impl Budget for LocalBudget {
    fn take<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        tokens: f64,
    ) -> BoxFuture<'a, Result<(), Duration>> {
        let taken = self.with(model, rates, |levels| {
            let wait = rates.wait_to_take(levels.requests, levels.tokens, tokens);
            if wait.is_zero() {
                levels.requests -= 1.0;
                levels.tokens -= tokens;
                Ok(())
            } else {
                Err(wait)
            }
        });
        Box::pin(std::future::ready(taken))
    }

    fn lower_to<'a>(
        &'a self,
        model: &'a str,
        rates: Rates,
        requests: Option<f64>,
        tokens: Option<f64>,
    ) -> BoxFuture<'a, ()> {
        self.with(model, rates, |levels| {
            if let Some(requests) = requests {
                levels.requests = levels.requests.min(requests);
            }
            if let Some(tokens) = tokens {
                levels.tokens = levels.tokens.min(tokens);
            }
        });
        Box::pin(std::future::ready(()))
    }

    fn adjust_tokens<'a>(&'a self, model: &'a str, rates: Rates, tokens: f64) -> BoxFuture<'a, ()> {
        self.with(model, rates, |levels| {
            levels.tokens = (levels.tokens - tokens).min(rates.max_tokens);
        });
        Box::pin(std::future::ready(()))
    }

    fn pause<'a>(&'a self, model: &'a str, rates: Rates, _for: Duration) -> BoxFuture<'a, ()> {
        self.lower_to(model, rates, Some(0.0), None)
    }
}

/// What the governor has learnt about one model from OpenAI's answers.
#[derive(Debug)]
struct Learnt {
    /// The configured limits, lowered to the account's from `x-ratelimit-limit-*`.
    limits: Limits,
    paused_until: Option<Instant>,
    /// Tokens OpenAI counts per token estimated here (running average).
    token_ratio: f64,
    /// Held by the one caller asking the budget; the others wait their turn behind it.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Weight of the newest call in [`Learnt::token_ratio`].
const RATIO_WEIGHT: f64 = 0.2;

/// Shared by every executor task of a replica.
#[derive(Clone)]
pub struct Governor {
    enabled: bool,
    default: Limits,
    per_model: Arc<HashMap<String, Limits>>,
    learnt: Arc<Mutex<HashMap<String, Learnt>>>,
    budget: Arc<dyn Budget>,
}

impl Governor {
    pub fn new(default: Limits, per_model: HashMap<String, Limits>) -> Self {
        Self::with_budget(default, per_model, Arc::new(LocalBudget::default()))
    }

    /// A governor whose levels are kept in `budget` (shared by replicas, say).
    pub fn with_budget(
        default: Limits,
        per_model: HashMap<String, Limits>,
        budget: Arc<dyn Budget>,
    ) -> Self {
        Governor {
            enabled: true,
            default,
            per_model: Arc::new(per_model),
            learnt: Arc::default(),
            budget,
        }
    }

    /// A governor that lets everything through (the benchmark's baseline).
    pub fn disabled() -> Self {
        Governor {
            enabled: false,
            ..Governor::new(Limits { rpm: 1, tpm: 1 }, HashMap::new())
        }
    }

    /// The configured limits of `model`.
    pub fn limits(&self, model: &str) -> Limits {
        self.per_model.get(model).copied().unwrap_or(self.default)
    }

    fn learnt<R>(&self, model: &str, f: impl FnOnce(&mut Learnt) -> R) -> R {
        let mut learnt = self
            .learnt
            .lock()
            .expect("the governor lock is never poisoned");
        let state = learnt.entry(model.to_string()).or_insert_with(|| Learnt {
            limits: self.limits(model),
            paused_until: None,
            token_ratio: 1.0,
            turn: Arc::default(),
        });
        f(state)
    }

    /// Waits until one request estimated at `tokens` may be sent to `model`, and takes it;
    /// returns the tokens taken (the estimate corrected by what OpenAI counted so far), for
    /// [`Self::settle`].
    pub async fn acquire(&self, model: &str, tokens: u32) -> u32 {
        if !self.enabled {
            return tokens;
        }
        let started = Instant::now();
        let turn = self.learnt(model, |s| s.turn.clone());
        let _turn = turn.lock().await;
        loop {
            let now = Instant::now();
            let (paused, rates, charge) = self.learnt(model, |s| {
                let paused = s
                    .paused_until
                    .filter(|&until| until > now)
                    .map(|until| until - now)
                    .unwrap_or(Duration::ZERO);
                (
                    paused,
                    Rates::paced(s.limits),
                    (tokens as f64 * s.token_ratio).ceil(),
                )
            });
            let (wait, reason) = if paused.is_zero() {
                match self.budget.take(model, rates, charge).await {
                    Ok(()) => {
                        metrics::histogram!(crate::metrics::GOVERNOR_WAIT, "model" => model.to_string())
                            .record((Instant::now() - started).as_secs_f64());
                        return charge as u32;
                    }
                    Err(wait) => (wait, "budget"),
                }
            } else {
                (paused, "pause")
            };
            // Small jitter spreads waiters that woke for the same refill.
            let wait = wait + Duration::from_millis(rand::random::<u64>() % 5);
            // One caller per model and replica waits here at a time: the sum is the time the
            // model was held at its limit, however late the wake-ups then came.
            metrics::histogram!(crate::metrics::GOVERNOR_HELD, "model" => model.to_string(), "reason" => reason)
                .record(wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
    }

    /// After an answer: OpenAI counted `counted` tokens for a call [`Self::acquire`] took
    /// `taken` for. The difference is taken (or given back), and the estimate of later calls
    /// moves toward `counted / estimated`.
    pub async fn settle(&self, model: &str, estimated: u32, taken: u32, counted: u32) {
        if !self.enabled || estimated == 0 {
            return;
        }
        let rates = self.learnt(model, |s| {
            let ratio = (counted as f64 / estimated as f64).clamp(0.25, 4.0);
            s.token_ratio += RATIO_WEIGHT * (ratio - s.token_ratio);
            metrics::gauge!(crate::metrics::GOVERNOR_TOKEN_RATIO, "model" => model.to_string())
                .set(s.token_ratio);
            Rates::paced(s.limits)
        });
        if counted != taken {
            self.budget
                .adjust_tokens(model, rates, counted as f64 - taken as f64)
                .await;
        }
    }

    /// Takes from OpenAI's `x-ratelimit-*` headers (of a success or a 429) what can only
    /// lower the budget: the account's limits (`limit-*`) when lower than configured, and
    /// the levels down to what is left (`remaining-*`; never raised: our own accounting
    /// already counts requests OpenAI has not seen yet). `reset-*` is not read (see the
    /// module). A 429's `retry-after` pauses the model ([`Self::pause`]).
    pub async fn observe(&self, model: &str, headers: &RateLimitHeaders) {
        if !self.enabled {
            return;
        }
        let rates = self.learnt(model, |s| {
            // 0 is no limit anyone could mean; ignore it rather than stop the model.
            if let Some(limit) = headers.limit_requests.filter(|&l| l > 0) {
                s.limits.rpm = s.limits.rpm.min(limit.min(u32::MAX as u64) as u32);
            }
            if let Some(limit) = headers.limit_tokens.filter(|&l| l > 0) {
                s.limits.tpm = s.limits.tpm.min(limit.min(u32::MAX as u64) as u32);
            }
            Rates::paced(s.limits)
        });
        if headers.remaining_requests.is_some() || headers.remaining_tokens.is_some() {
            self.budget
                .lower_to(
                    model,
                    rates,
                    headers.remaining_requests.map(|r| r as f64),
                    headers.remaining_tokens.map(|r| r as f64),
                )
                .await;
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
            let until = self.learnt(model, |s| s.paused_until);
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until).await;
                    waited = true;
                }
                _ => return waited,
            }
        }
    }

    /// After a 429: nobody sends to this model until `retry_after` has passed (on every
    /// replica, when the budget is shared), and the request level is emptied (it refills
    /// during the pause, to the burst at most). Disabled, only the caller waits, as a plain
    /// client honouring `retry-after` would.
    pub async fn pause(&self, model: &str, retry_after: Duration) {
        if !self.enabled {
            tokio::time::sleep(retry_after).await;
            return;
        }
        let until = Instant::now() + retry_after;
        let rates = self.learnt(model, |s| {
            if s.paused_until.is_none_or(|p| p < until) {
                s.paused_until = Some(until);
            }
            Rates::paced(s.limits)
        });
        self.budget.pause(model, rates, retry_after).await;
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
        // 1.2 at once (2% of a minute), the next 18.8 at 0.96 a second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(19), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(21), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_budget_binds_when_requests_are_large() {
        let g = governor(10_000, 6_000);
        let start = Instant::now();
        for _ in 0..4 {
            g.acquire("m", 1_000).await;
        }
        // The first at once (leaving a debt), then 96 tokens a second: 3,000 tokens, 31 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(29), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(32), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn settle_takes_what_openai_counted_beyond_the_take_and_gives_back_the_rest() {
        // 6,000 tokens a minute: 100 a second, 120 at once.
        let g = governor(10_000, 6_000);
        let taken = g.acquire("m", 100).await;
        g.settle("m", 100, taken, taken + 3_000).await;
        let start = Instant::now();
        g.acquire("m", 1).await;
        // 3,000 tokens more than were taken: a debt of 30 s at 100 a second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(28), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(33), "{elapsed:?}");

        let g = governor(10_000, 6_000);
        let taken = g.acquire("m", 120).await;
        g.settle("m", 120, taken, 20).await;
        // 100 of the 120 come back: the next 80 (68 at the ratio learnt) go at once, not
        // after the 0.7 s an empty bucket would take.
        let start = Instant::now();
        g.acquire("m", 80).await;
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_millis(200), "{elapsed:?}");
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
    async fn a_pause_lasts_its_retry_after_and_a_shorter_one_never_cuts_it() {
        let g = governor(6_000, 1_000_000);
        let within = |took: Duration, secs: u64| {
            let secs = Duration::from_secs(secs);
            assert!(
                took >= secs && took < secs + Duration::from_millis(100),
                "{took:?}"
            );
        };
        g.pause("m", Duration::from_secs(5)).await;
        // A 429 that says 1 s, arriving after one that said 5 s.
        g.pause("m", Duration::from_secs(1)).await;
        let start = Instant::now();
        g.acquire("m", 1).await;
        within(start.elapsed(), 5);
        // One that says longer extends it.
        g.pause("m", Duration::from_secs(2)).await;
        g.pause("m", Duration::from_secs(4)).await;
        let start = Instant::now();
        g.acquire("m", 1).await;
        within(start.elapsed(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_waits_out_a_pause_that_began_after_acquire() {
        let g = governor(6_000, 1_000_000);
        g.acquire("m", 1).await;
        let start = Instant::now();
        assert!(!g.hold("m").await, "no pause: nothing to wait for");
        assert_eq!(start.elapsed(), Duration::ZERO);
        g.pause("m", Duration::from_secs(3)).await;
        assert!(g.hold("m").await);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_millis(3_100),
            "{took:?}"
        );
        // Over: no second wait, and another model never was paused.
        assert!(!g.hold("m").await);
        assert!(!g.hold("other").await);
        assert_eq!(start.elapsed(), took);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_governor_lets_everything_through() {
        let g = Governor::disabled();
        let start = Instant::now();
        for _ in 0..100 {
            assert_eq!(g.acquire("m", 1_000).await, 1_000);
        }
        // Nothing is learnt: the estimate stays what the caller said.
        g.settle("m", 1_000, 1_000, 4_000).await;
        g.observe("m", &reading(1, 0, Duration::from_secs(60)))
            .await;
        assert_eq!(g.acquire("m", 1_000).await, 1_000);
        assert!(!g.hold("m").await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A 429 holds only the caller that got it, as a plain client would.
        g.pause("m", Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(!g.hold("m").await);
        g.acquire("m", 1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    /// The account's limits as OpenAI's `x-ratelimit-limit-*` headers give them.
    fn account_limits(requests: u64, tokens: u64) -> RateLimitHeaders {
        RateLimitHeaders {
            limit_requests: Some(requests),
            limit_tokens: Some(tokens),
            ..RateLimitHeaders::default()
        }
    }

    /// Seconds `n` calls of `tokens` take to acquire, one after the other.
    async fn time_to_acquire(g: &Governor, n: usize, tokens: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            g.acquire("m", tokens).await;
        }
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_is_ignored_and_a_lower_token_limit_binds() {
        let g = governor(6_000, 60_000);
        g.observe("m", &account_limits(0, 0)).await;
        // Still 6,000 RPM and 60,000 TPM: 12 requests go at once (of a burst of 120).
        let took = time_to_acquire(&g, 12, 1).await;
        assert!(took < 0.05, "{took}");
        // The account allows 6,000 TPM: a burst of 120 tokens, 96 more a second, so three
        // calls of 96 take 0 s, 0.75 s and 1 s.
        g.observe("m", &account_limits(6_000, 6_000)).await;
        let took = time_to_acquire(&g, 3, 96).await;
        assert!((1.7..=1.85).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn settling_a_call_estimated_at_zero_teaches_nothing() {
        let g = governor(100_000, 6_000_000);
        g.settle("m", 0, 0, 500).await;
        assert_eq!(g.acquire("m", 100).await, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_limit_in_the_headers_wins_when_lower() {
        let g = governor(6_000, 1_000_000);
        g.acquire("m", 1).await;
        g.observe("m", &account_limits(60, 10_000_000)).await;
        // A burst of 1.2 at most (2% of the real minute), then 0.96 a second.
        let took = time_to_acquire(&g, 30, 1).await;
        assert!((29.0..=32.0).contains(&took), "{took}");
    }

    fn reading(limit: u64, remaining: u64, reset: Duration) -> RateLimitHeaders {
        RateLimitHeaders {
            limit_requests: Some(limit),
            remaining_requests: Some(remaining),
            reset_requests: Some(reset),
            ..RateLimitHeaders::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reset_headers_never_slow_the_model() {
        let g = governor(600, 1_000_000);
        g.acquire("m", 1).await;
        // A sliding window's reading: 300 of 600 used, empty again in a minute. The old
        // reading took 5 a second from it (its own rate); the limit says 10.
        g.observe("m", &reading(600, 300, Duration::from_secs(60)))
            .await;
        let start = Instant::now();
        for _ in 0..96 {
            g.acquire("m", 1).await;
            g.observe("m", &reading(600, 300, Duration::from_secs(60)))
                .await;
        }
        // 11 left of the burst, 85 more at 9.6 a second: 8.9 s (the old reading: 17 s).
        let took = start.elapsed().as_secs_f64();
        assert!((8.5..=9.5).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_remaining_never_raises_the_level() {
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
        // 25,000 taken from a level of 3,000: the next needs the 3,000 back, 25,000 tokens
        // at 2,400 a second.
        let start = Instant::now();
        g.acquire("m", 5_000).await;
        let took = start.elapsed().as_secs_f64();
        assert!((10.0..=10.8).contains(&took), "{took}");
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
        // 600 rpm paced at 9.6 a second refills one request every 104 ms.
        assert!(start.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test(start_paused = true)]
    async fn counted_tokens_correct_the_estimate_and_the_budget() {
        let g = governor(100_000, 60_000);
        // OpenAI counts twice what is estimated here: 40 calls count 8,000 tokens, which at
        // 960 a second after a burst of 1,200 take 7 s (half of that if the estimate stood).
        let start = Instant::now();
        for _ in 0..40 {
            let taken = g.acquire("m", 100).await;
            g.settle("m", 100, taken, 200).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((6.0..=7.5).contains(&took), "{took}");
        let taken = g.acquire("m", 100).await;
        assert!((195..=205).contains(&taken), "{taken}");
    }

    /// The account's limiter, as openai-sim keeps it (requests only), counting a request
    /// when it arrives.
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        TokenBucket,
        SlidingWindow,
        FixedWindow,
    }

    struct Account {
        kind: Kind,
        rpm: f64,
        level: f64,
        at: f64,
        accepted: Vec<f64>,
        refused: usize,
    }

    impl Account {
        fn new(kind: Kind, rpm: u32) -> Self {
            Account {
                kind,
                rpm: rpm as f64,
                level: rpm as f64,
                at: 0.0,
                accepted: Vec::new(),
                refused: 0,
            }
        }

        /// `Ok(remaining)` or `Err(retry_after)`, at `t` seconds.
        fn call(&mut self, t: f64) -> Result<u64, Duration> {
            let answer = match self.kind {
                Kind::TokenBucket => {
                    self.level = (self.level + (t - self.at) * self.rpm / 60.0).min(self.rpm);
                    self.at = t;
                    if self.level >= 1.0 {
                        self.level -= 1.0;
                        Ok(self.level.floor() as u64)
                    } else {
                        Err((1.0 - self.level) * 60.0 / self.rpm)
                    }
                }
                Kind::SlidingWindow => {
                    let window: Vec<f64> = self
                        .accepted
                        .iter()
                        .copied()
                        .filter(|&a| a > t - 60.0)
                        .collect();
                    if (window.len() as f64) < self.rpm {
                        Ok((self.rpm as usize - window.len() - 1) as u64)
                    } else {
                        Err(window[0] + 60.0 - t)
                    }
                }
                Kind::FixedWindow => {
                    let minute = (t / 60.0).floor();
                    let used = self
                        .accepted
                        .iter()
                        .filter(|&&a| (a / 60.0).floor() == minute)
                        .count();
                    if (used as f64) < self.rpm {
                        Ok((self.rpm as usize - used - 1) as u64)
                    } else {
                        Err(60.0 * (minute + 1.0) - t)
                    }
                }
            };
            match answer {
                Ok(_) => self.accepted.push(t),
                Err(_) => self.refused += 1,
            }
            answer.map_err(|s| Duration::from_secs_f64(s.max(0.001)))
        }
    }

    /// 16 callers for 200 s of paused time against `kind` at 300 RPM, 150 ms a call: the
    /// share of the limit used after the first 5 s, and the 429s.
    async fn run_against(kind: Kind) -> (f64, usize, usize) {
        let rpm = 300;
        let g = governor(rpm, 100_000_000);
        let account = Arc::new(Mutex::new(Account::new(kind, rpm)));
        let start = Instant::now();
        let end = start + Duration::from_secs(200);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (g, account) = (g.clone(), account.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    g.acquire("m", 10).await;
                    let t = (Instant::now() - start).as_secs_f64();
                    let answer = account.lock().unwrap().call(t);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    match answer {
                        Ok(remaining) => {
                            g.observe("m", &reading(rpm as u64, remaining, Duration::ZERO))
                                .await
                        }
                        Err(retry_after) => g.pause("m", retry_after).await,
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let account = account.lock().unwrap();
        let steady = account
            .accepted
            .iter()
            .filter(|&&a| (5.0..200.0).contains(&a))
            .count() as f64;
        let share = steady / (195.0 * rpm as f64 / 60.0);
        (share, account.refused, account.accepted.len())
    }

    async fn holds_the_limit(kind: Kind) {
        let (share, refused, accepted) = run_against(kind).await;
        eprintln!(
            "{kind:?}: {:.1}% of the limit, {refused} refused of {}",
            100.0 * share,
            refused + accepted
        );
        assert!(share >= 0.9, "{kind:?}: {share}");
        assert!(share <= 1.0, "{kind:?}: {share}");
        assert!(
            (refused as f64) < 0.01 * (refused + accepted) as f64,
            "{kind:?}: {refused} refused of {}",
            refused + accepted
        );
    }

    #[tokio::test(start_paused = true)]
    async fn holds_a_token_bucket() {
        holds_the_limit(Kind::TokenBucket).await;
    }

    #[tokio::test(start_paused = true)]
    async fn holds_a_sliding_window() {
        holds_the_limit(Kind::SlidingWindow).await;
    }

    #[tokio::test(start_paused = true)]
    async fn holds_a_fixed_window() {
        holds_the_limit(Kind::FixedWindow).await;
    }
}
