//! Per-model RPM/TPM token buckets (refilled continuously over a minute) and the
//! `x-ratelimit-*` header values OpenAI sends with them.

use std::collections::HashMap;

const MINUTE_MS: f64 = 60_000.0;
/// Limits advertised in headers when a knob is 0 (unlimited): a generous paid tier.
pub const NOMINAL_RPM: u64 = 30_000;
pub const NOMINAL_TPM: u64 = 150_000_000;

#[derive(Clone, Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    at_ms: u64,
}

impl Bucket {
    fn new(capacity: u64, now: u64) -> Self {
        Bucket {
            capacity: capacity as f64,
            level: capacity as f64,
            at_ms: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.at_ms) as f64;
        self.level = (self.level + elapsed * self.capacity / MINUTE_MS).min(self.capacity);
        self.at_ms = self.at_ms.max(now);
    }

    /// Milliseconds until `amount` is available (0 when it is now).
    fn wait_ms(&self, amount: f64) -> u64 {
        if self.level >= amount {
            return 0;
        }
        ((amount - self.level) * MINUTE_MS / self.capacity).ceil() as u64
    }

    /// Milliseconds until the bucket is full again.
    fn reset_ms(&self) -> u64 {
        ((self.capacity - self.level) * MINUTE_MS / self.capacity).ceil() as u64
    }
}

/// The numbers behind the six `x-ratelimit-*` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub reset_requests_ms: u64,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    pub reset_tokens_ms: u64,
}

impl Snapshot {
    pub fn headers(&self) -> [(&'static str, String); 6] {
        [
            (
                "x-ratelimit-limit-requests",
                self.limit_requests.to_string(),
            ),
            (
                "x-ratelimit-remaining-requests",
                self.remaining_requests.to_string(),
            ),
            (
                "x-ratelimit-reset-requests",
                format_duration(self.reset_requests_ms),
            ),
            ("x-ratelimit-limit-tokens", self.limit_tokens.to_string()),
            (
                "x-ratelimit-remaining-tokens",
                self.remaining_tokens.to_string(),
            ),
            (
                "x-ratelimit-reset-tokens",
                format_duration(self.reset_tokens_ms),
            ),
        ]
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit now; `retry_after_ms` until it fits. `what` is `requests` or `tokens`.
    Wait {
        what: &'static str,
        limit: u64,
        used: u64,
        requested: u64,
        retry_after_ms: u64,
    },
    /// The request alone is bigger than the tokens-per-minute limit.
    TooLarge { limit: u64, requested: u64 },
}

#[derive(Default, Debug)]
pub struct Limiter {
    models: HashMap<String, (Bucket, Bucket)>,
}

impl Limiter {
    pub fn clear(&mut self) {
        self.models.clear();
    }

    /// Takes one request and `tokens` for `model`, or says why not. Always returns the headers.
    pub fn check(
        &mut self,
        model: &str,
        rpm: u64,
        tpm: u64,
        tokens: u64,
        now: u64,
    ) -> (Result<(), Refusal>, Snapshot) {
        let cap_r = if rpm == 0 { NOMINAL_RPM } else { rpm };
        let cap_t = if tpm == 0 { NOMINAL_TPM } else { tpm };
        let (req, tok) = self
            .models
            .entry(model.to_string())
            .or_insert_with(|| (Bucket::new(cap_r, now), Bucket::new(cap_t, now)));
        // A changed knob starts a fresh window.
        if req.capacity != cap_r as f64 {
            *req = Bucket::new(cap_r, now);
        }
        if tok.capacity != cap_t as f64 {
            *tok = Bucket::new(cap_t, now);
        }
        req.refill(now);
        tok.refill(now);

        let outcome = if rpm != 0 && req.level < 1.0 {
            Err(Refusal::Wait {
                what: "requests",
                limit: rpm,
                used: (req.capacity - req.level).ceil() as u64,
                requested: 1,
                retry_after_ms: req.wait_ms(1.0),
            })
        } else if tpm != 0 && tokens > tpm {
            Err(Refusal::TooLarge {
                limit: tpm,
                requested: tokens,
            })
        } else if tpm != 0 && tok.level < tokens as f64 {
            Err(Refusal::Wait {
                what: "tokens",
                limit: tpm,
                used: (tok.capacity - tok.level).ceil() as u64,
                requested: tokens,
                retry_after_ms: tok.wait_ms(tokens as f64),
            })
        } else {
            req.level = (req.level - 1.0).max(0.0);
            tok.level = (tok.level - tokens as f64).max(0.0);
            Ok(())
        };
        let snap = Snapshot {
            limit_requests: cap_r,
            remaining_requests: req.level.floor() as u64,
            reset_requests_ms: req.reset_ms(),
            limit_tokens: cap_t,
            remaining_tokens: tok.level.floor() as u64,
            reset_tokens_ms: tok.reset_ms(),
        };
        (outcome, snap)
    }
}

/// Go-style durations as OpenAI writes them: `120ms`, `1s`, `8.64s`, `6m0s`, `1h2m3s`.
pub fn format_duration(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let secs_ms = ms % 60_000;
    let secs = if secs_ms.is_multiple_of(1_000) {
        format!("{}", secs_ms / 1_000)
    } else {
        let s = format!("{}.{:03}", secs_ms / 1_000, secs_ms % 1_000);
        s.trim_end_matches('0').to_string()
    };
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(120), "120ms");
        assert_eq!(format_duration(0), "0ms");
        assert_eq!(format_duration(1_000), "1s");
        assert_eq!(format_duration(8_640), "8.64s");
        assert_eq!(format_duration(360_000), "6m0s");
        assert_eq!(format_duration(3_723_500), "1h2m3.5s");
    }

    #[test]
    fn rpm_bucket_refuses_then_refills() {
        let mut l = Limiter::default();
        for _ in 0..2 {
            assert!(l.check("m", 2, 0, 10, 0).0.is_ok());
        }
        let (r, snap) = l.check("m", 2, 0, 10, 0);
        match r {
            Err(Refusal::Wait {
                what,
                retry_after_ms,
                ..
            }) => {
                assert_eq!(what, "requests");
                assert_eq!(retry_after_ms, 30_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(snap.remaining_requests, 0);
        assert_eq!(snap.reset_requests_ms, 60_000);
        assert!(l.check("m", 2, 0, 10, 30_000).0.is_ok());
        assert!(
            l.check("other", 2, 0, 10, 0).0.is_ok(),
            "limits are per model"
        );
    }

    #[test]
    fn tpm_counts_tokens() {
        let mut l = Limiter::default();
        assert!(l.check("m", 0, 100, 60, 0).0.is_ok());
        assert!(matches!(
            l.check("m", 0, 100, 60, 0).0,
            Err(Refusal::Wait { what: "tokens", .. })
        ));
        assert!(matches!(
            l.check("m", 0, 100, 101, 0).0,
            Err(Refusal::TooLarge { .. })
        ));
    }
}
