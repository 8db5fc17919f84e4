//! When and how long to wait before trying an OpenAI call again: full-jitter exponential
//! back-off, overridden by the server's `retry-after-ms` / `Retry-After`.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;

use super::error::OpenAiError;

/// A server-requested delay up to this long (or up to `backoff_max`, if larger) is waited out
/// inside the call. A longer one ends the call with the error, whose `retry_after()` tells the
/// caller when to come back: a worker should not sit on a lease for an hour.
pub const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The delay a response asks for: `retry-after-ms` (milliseconds, OpenAI's precise header)
/// first, then `Retry-After` (seconds, or an HTTP date). A date in the past means "now".
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Ok(delay) = Duration::try_from_secs_f64(ms / 1000.0) {
            return Some(delay);
        }
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Retry settings of one client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The ceiling of the `retry`-th back-off (0-based): `base * 2^retry`, capped.
    fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }

    /// Full jitter: uniform in `[0, ceiling]`, so clients that failed together spread out.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// How long to wait before retry number `retry` (0-based) after `err`, or `None` to give
    /// up: not retryable, retries used up, or the server wants more patience than we keep.
    pub fn delay_after(&self, err: &OpenAiError, retry: u32) -> Option<Duration> {
        if retry >= self.max_retries || !err.is_retryable() {
            return None;
        }
        match err.retry_after() {
            Some(asked) if asked > self.backoff_max.max(MAX_HONOURED_RETRY_AFTER) => None,
            Some(asked) => Some(asked),
            None => Some(self.backoff(retry)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::types::ApiError;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "3600")]);
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after-ms", "12.5")]);
        assert_eq!(parse_retry_after(&h), Some(Duration::from_micros(12_500)));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        // An unreadable retry-after-ms falls back to Retry-After.
        assert_eq!(
            parse_retry_after(&headers(&[
                ("retry-after-ms", "soon"),
                ("retry-after", "2")
            ])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&headers(&[(
                "retry-after",
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )])),
            Some(Duration::ZERO)
        );
        let future = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc2822();
        let wait = parse_retry_after(&headers(&[("retry-after", &future)])).unwrap();
        assert!(wait > Duration::from_secs(3600) && wait <= Duration::from_secs(7200));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "later")])),
            None
        );
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "-3")])), None);
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_then_caps_and_stays_within_ceiling() {
        let p = policy();
        assert_eq!(p.ceiling(0), Duration::from_millis(500));
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(5), Duration::from_secs(16));
        assert_eq!(p.ceiling(6), Duration::from_secs(30));
        assert_eq!(p.ceiling(200), Duration::from_secs(30));
        for retry in 0..10 {
            for _ in 0..50 {
                assert!(p.backoff(retry) <= p.ceiling(retry));
            }
        }
    }

    fn throttled(retry_after: Option<Duration>) -> OpenAiError {
        OpenAiError::Api {
            status: 429,
            body: ApiError::default(),
            retry_after,
            rate_limits: Default::default(),
        }
    }

    #[test]
    fn delay_decisions() {
        let p = policy();
        let asked = Duration::from_millis(1234);
        assert_eq!(p.delay_after(&throttled(Some(asked)), 0), Some(asked));
        assert!(p.delay_after(&throttled(None), 0).unwrap() <= p.ceiling(0));
        assert_eq!(
            p.delay_after(&throttled(Some(asked)), 5),
            None,
            "retries used up"
        );
        assert_eq!(
            p.delay_after(&throttled(Some(Duration::from_secs(3600))), 0),
            None,
            "too long a wait is handed back to the caller"
        );
        let bad_request = OpenAiError::Api {
            status: 400,
            body: ApiError::default(),
            retry_after: Some(asked),
            rate_limits: Default::default(),
        };
        assert_eq!(p.delay_after(&bad_request, 0), None);
    }
}
