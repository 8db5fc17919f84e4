//! Reading OpenAI's `x-ratelimit-*` response headers, and the Go-style durations
//! (`"6m0s"`, `"20ms"`, `"1.5s"`) they use. Pure parsing; pacing is the caller's business.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// The `x-ratelimit-*` headers of one response. A header that is absent or unreadable is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Time until the request budget is full again.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Time until the token budget is full again.
    pub reset_tokens: Option<Duration>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &HeaderMap) -> RateLimitHeaders {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let count = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let reset = |name: &str| text(name).and_then(parse_duration);
        RateLimitHeaders {
            limit_requests: count("x-ratelimit-limit-requests"),
            remaining_requests: count("x-ratelimit-remaining-requests"),
            reset_requests: reset("x-ratelimit-reset-requests"),
            limit_tokens: count("x-ratelimit-limit-tokens"),
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            reset_tokens: reset("x-ratelimit-reset-tokens"),
        }
    }

    /// True when no rate-limit header was present at all.
    pub fn is_empty(&self) -> bool {
        *self == RateLimitHeaders::default()
    }
}

/// Parses a Go `time.Duration` string as OpenAI sends it: one or more `<number><unit>` pairs
/// with units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns` (`"6m0s"`, `"1.5s"`, `"2h3m4s"`). A bare
/// number is read as seconds. Anything else, or a negative value, is `None`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn go_durations_parse() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("1s"), Some(ms(1000)));
        assert_eq!(parse_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_duration("20ms"), Some(ms(20)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(
            parse_duration("2h3m4s"),
            Some(ms((2 * 3600 + 3 * 60 + 4) * 1000))
        );
        assert_eq!(parse_duration("1m30.5s"), Some(ms(90_500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("7"), Some(ms(7000)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn headers_parse() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "199000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let r = RateLimitHeaders::from_headers(&h);
        assert_eq!(
            r,
            RateLimitHeaders {
                limit_requests: Some(500),
                remaining_requests: Some(499),
                reset_requests: Some(Duration::from_millis(120)),
                limit_tokens: Some(200_000),
                remaining_tokens: Some(199_000),
                reset_tokens: Some(Duration::from_secs(360)),
            }
        );
        assert!(!r.is_empty());

        let mut partial = HeaderMap::new();
        partial.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("lots"),
        );
        partial.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1.5s"));
        let r = RateLimitHeaders::from_headers(&partial);
        assert_eq!(r.remaining_tokens, None);
        assert_eq!(r.reset_tokens, Some(Duration::from_millis(1500)));
        assert!(RateLimitHeaders::from_headers(&HeaderMap::new()).is_empty());
    }
}
