//! Per-model RPM/TPM limits, kept as token buckets (refilled continuously over a minute),
//! 60 s sliding windows or fixed minute windows, and the `x-ratelimit-*` header values each
//! would send.

use std::collections::{HashMap, VecDeque};

use crate::config::RateLimiterKind;

const MINUTE_MS: f64 = 60_000.0;
const MINUTE: u64 = 60_000;
/// Limits advertised in headers when a knob is 0 (unlimited): a generous paid tier.
pub const NOMINAL_RPM: u64 = 30_000;
pub const NOMINAL_TPM: u64 = 150_000_000;

#[derive(Clone, Debug)]
struct Bucket {
    /// The per-minute limit, as the headers report it.
    limit: u64,
    /// Refill per millisecond: the limit over a minute.
    per_ms: f64,
    /// Most it holds: `held_ms` of refill (a minute's limit by default), at least 1.
    capacity: f64,
    level: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket refilling `limit` a minute and holding `held_ms` of that.
    fn new(limit: u64, held_ms: u64, now: u64) -> Self {
        let per_ms = limit as f64 / MINUTE_MS;
        let capacity = (per_ms * held_ms as f64).max(1.0);
        Bucket {
            limit,
            per_ms,
            capacity,
            level: capacity,
            at_ms: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.at_ms) as f64;
        self.level = (self.level + elapsed * self.per_ms).min(self.capacity);
        self.at_ms = self.at_ms.max(now);
    }

    /// Milliseconds until `amount` is available (0 when it is now).
    fn wait_ms(&self, amount: f64) -> u64 {
        if self.level >= amount {
            return 0;
        }
        ((amount - self.level) / self.per_ms).ceil() as u64
    }

    /// Milliseconds until the bucket is full again.
    fn reset_ms(&self) -> u64 {
        ((self.capacity - self.level) / self.per_ms).ceil() as u64
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

/// One model's limits, kept the way `RateLimiterKind` says.
#[derive(Clone, Debug)]
enum Window {
    Bucket {
        req: Bucket,
        tok: Bucket,
    },
    /// Accepted requests of the last 60 s, oldest first: (accepted at, tokens).
    Sliding {
        entries: VecDeque<(u64, u64)>,
    },
    /// Usage since the minute boundary `start`.
    Fixed {
        start: u64,
        requests: u64,
        tokens: u64,
    },
}

#[derive(Clone, Debug)]
struct ModelLimit {
    kind: RateLimiterKind,
    cap_r: u64,
    cap_t: u64,
    window: Window,
}

impl ModelLimit {
    fn new(kind: RateLimiterKind, cap_r: u64, cap_t: u64, held_ms: u64, now: u64) -> Self {
        let window = match kind {
            RateLimiterKind::TokenBucket => Window::Bucket {
                req: Bucket::new(cap_r, held_ms, now),
                tok: Bucket::new(cap_t, held_ms, now),
            },
            RateLimiterKind::SlidingWindow => Window::Sliding {
                entries: VecDeque::new(),
            },
            RateLimiterKind::FixedWindow => Window::Fixed {
                start: minute_start(now),
                requests: 0,
                tokens: 0,
            },
        };
        ModelLimit {
            kind,
            cap_r,
            cap_t,
            window,
        }
    }
}

fn minute_start(now: u64) -> u64 {
    now - now % MINUTE
}

/// How a model's limits are kept: the simulator's `rate_limiter`, `rpm`, `tpm` and
/// `bucket_capacity_ms` knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: RateLimiterKind,
    /// Requests a minute; 0 is unlimited (reported as [`NOMINAL_RPM`]).
    pub rpm: u64,
    /// Tokens a minute; 0 is unlimited (reported as [`NOMINAL_TPM`]).
    pub tpm: u64,
    /// What a token bucket holds, in milliseconds of its refill; the other kinds ignore it.
    pub held_ms: u64,
}

impl Rule {
    /// `kind` at `rpm` and `tpm`, a token bucket holding a minute's limit.
    pub fn minute(kind: RateLimiterKind, rpm: u64, tpm: u64) -> Rule {
        Rule {
            kind,
            rpm,
            tpm,
            held_ms: MINUTE,
        }
    }
}

#[derive(Default, Debug)]
pub struct Limiter {
    models: HashMap<String, ModelLimit>,
}

impl Limiter {
    pub fn clear(&mut self) {
        self.models.clear();
    }

    /// Takes one request and `tokens` for `model` under `rule`, or says why not. Always
    /// returns the headers. A refused request takes nothing.
    pub fn check(
        &mut self,
        model: &str,
        rule: Rule,
        tokens: u64,
        now: u64,
    ) -> (Result<(), Refusal>, Snapshot) {
        let Rule {
            kind,
            rpm,
            tpm,
            held_ms,
        } = rule;
        let cap_r = if rpm == 0 { NOMINAL_RPM } else { rpm };
        let cap_t = if tpm == 0 { NOMINAL_TPM } else { tpm };
        let limit = self
            .models
            .entry(model.to_string())
            .or_insert_with(|| ModelLimit::new(kind, cap_r, cap_t, held_ms, now));
        if limit.kind != kind {
            *limit = ModelLimit::new(kind, cap_r, cap_t, held_ms, now);
        }
        let result = match &mut limit.window {
            Window::Bucket { req, tok } => {
                // A changed knob starts a fresh window.
                let fresh = |b: &Bucket, cap: u64| {
                    b.limit != cap || b.capacity != Bucket::new(cap, held_ms, now).capacity
                };
                if fresh(req, cap_r) {
                    *req = Bucket::new(cap_r, held_ms, now);
                }
                if fresh(tok, cap_t) {
                    *tok = Bucket::new(cap_t, held_ms, now);
                }
                bucket_check(req, tok, rpm, tpm, tokens, now)
            }
            Window::Sliding { entries } => {
                if limit.cap_r != cap_r || limit.cap_t != cap_t {
                    entries.clear();
                }
                sliding_check(entries, cap_r, cap_t, rpm, tpm, tokens, now)
            }
            Window::Fixed {
                start,
                requests,
                tokens: used,
            } => {
                if limit.cap_r != cap_r || limit.cap_t != cap_t || *start != minute_start(now) {
                    *start = minute_start(now);
                    *requests = 0;
                    *used = 0;
                }
                fixed_check(*start, requests, used, cap_r, cap_t, rpm, tpm, tokens, now)
            }
        };
        limit.cap_r = cap_r;
        limit.cap_t = cap_t;
        result
    }
}

fn bucket_check(
    req: &mut Bucket,
    tok: &mut Bucket,
    rpm: u64,
    tpm: u64,
    tokens: u64,
    now: u64,
) -> (Result<(), Refusal>, Snapshot) {
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
        limit_requests: req.limit,
        remaining_requests: req.level.floor() as u64,
        reset_requests_ms: req.reset_ms(),
        limit_tokens: tok.limit,
        remaining_tokens: tok.level.floor() as u64,
        reset_tokens_ms: tok.reset_ms(),
    };
    (outcome, snap)
}

/// Every accepted request counts (with its tokens) for 60 s. `remaining` = limit − used in the
/// last 60 s; `reset` = until the window is empty again (the newest counted request leaves),
/// i.e. until the limit is back to its initial state; `retry-after` = until enough of the
/// oldest requests have left for this one to fit.
fn sliding_check(
    entries: &mut VecDeque<(u64, u64)>,
    cap_r: u64,
    cap_t: u64,
    rpm: u64,
    tpm: u64,
    tokens: u64,
    now: u64,
) -> (Result<(), Refusal>, Snapshot) {
    while entries.front().is_some_and(|(at, _)| at + MINUTE <= now) {
        entries.pop_front();
    }
    let leaves = |at: u64| at + MINUTE - now;
    let used_r = entries.len() as u64;
    let used_t: u64 = entries.iter().map(|(_, t)| t).sum();
    let outcome = if rpm != 0 && used_r >= rpm {
        // The (used − limit + 1) oldest requests must leave first.
        let (at, _) = entries[(used_r - rpm) as usize];
        Err(Refusal::Wait {
            what: "requests",
            limit: rpm,
            used: used_r,
            requested: 1,
            retry_after_ms: leaves(at),
        })
    } else if tpm != 0 && tokens > tpm {
        Err(Refusal::TooLarge {
            limit: tpm,
            requested: tokens,
        })
    } else if tpm != 0 && used_t + tokens > tpm {
        let mut left = used_t;
        let mut wait = 0;
        for (at, t) in entries.iter() {
            left -= t;
            wait = leaves(*at);
            if left + tokens <= tpm {
                break;
            }
        }
        Err(Refusal::Wait {
            what: "tokens",
            limit: tpm,
            used: used_t,
            requested: tokens,
            retry_after_ms: wait,
        })
    } else {
        entries.push_back((now, tokens));
        Ok(())
    };
    let used_r = entries.len() as u64;
    let used_t: u64 = entries.iter().map(|(_, t)| t).sum();
    let snap = Snapshot {
        limit_requests: cap_r,
        remaining_requests: cap_r.saturating_sub(used_r),
        reset_requests_ms: entries.back().map_or(0, |(at, _)| leaves(*at)),
        limit_tokens: cap_t,
        remaining_tokens: cap_t.saturating_sub(used_t),
        reset_tokens_ms: entries
            .iter()
            .rev()
            .find(|(_, t)| *t > 0)
            .map_or(0, |(at, _)| leaves(*at)),
    };
    (outcome, snap)
}

/// The budget resets on each minute boundary; `reset` and `retry-after` are the time to the
/// next boundary (`reset` is 0 while nothing of the budget is used).
#[allow(clippy::too_many_arguments)]
fn fixed_check(
    start: u64,
    requests: &mut u64,
    used: &mut u64,
    cap_r: u64,
    cap_t: u64,
    rpm: u64,
    tpm: u64,
    tokens: u64,
    now: u64,
) -> (Result<(), Refusal>, Snapshot) {
    let to_boundary = start + MINUTE - now;
    let outcome = if rpm != 0 && *requests >= rpm {
        Err(Refusal::Wait {
            what: "requests",
            limit: rpm,
            used: *requests,
            requested: 1,
            retry_after_ms: to_boundary,
        })
    } else if tpm != 0 && tokens > tpm {
        Err(Refusal::TooLarge {
            limit: tpm,
            requested: tokens,
        })
    } else if tpm != 0 && *used + tokens > tpm {
        Err(Refusal::Wait {
            what: "tokens",
            limit: tpm,
            used: *used,
            requested: tokens,
            retry_after_ms: to_boundary,
        })
    } else {
        *requests += 1;
        *used += tokens;
        Ok(())
    };
    let snap = Snapshot {
        limit_requests: cap_r,
        remaining_requests: cap_r.saturating_sub(*requests),
        reset_requests_ms: if *requests > 0 { to_boundary } else { 0 },
        limit_tokens: cap_t,
        remaining_tokens: cap_t.saturating_sub(*used),
        reset_tokens_ms: if *used > 0 { to_boundary } else { 0 },
    };
    (outcome, snap)
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
            assert!(l
                .check("m", Rule::minute(RateLimiterKind::TokenBucket, 2, 0), 10, 0)
                .0
                .is_ok());
        }
        let (r, snap) = l.check("m", Rule::minute(RateLimiterKind::TokenBucket, 2, 0), 10, 0);
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
        assert!(l
            .check(
                "m",
                Rule::minute(RateLimiterKind::TokenBucket, 2, 0),
                10,
                30_000
            )
            .0
            .is_ok());
        assert!(
            l.check(
                "other",
                Rule::minute(RateLimiterKind::TokenBucket, 2, 0),
                10,
                0
            )
            .0
            .is_ok(),
            "limits are per model"
        );
    }

    #[test]
    fn a_bucket_can_hold_less_than_a_minute() {
        // 300 a minute held for 2 s: 10 at once, then 5 a second; headers still say 300.
        let mut l = Limiter::default();
        let check = |l: &mut Limiter, now| {
            let rule = Rule {
                held_ms: 2_000,
                ..Rule::minute(RateLimiterKind::TokenBucket, 300, 0)
            };
            l.check("m", rule, 1, now)
        };
        for _ in 0..10 {
            assert!(check(&mut l, 0).0.is_ok());
        }
        let (r, snap) = check(&mut l, 0);
        assert!(
            matches!(
                r,
                Err(Refusal::Wait {
                    retry_after_ms: 200,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!((snap.limit_requests, snap.remaining_requests), (300, 0));
        assert_eq!(snap.reset_requests_ms, 2_000);
        assert!(check(&mut l, 200).0.is_ok());
        // An hour idle refills to 10, not 300.
        let (_, snap) = check(&mut l, 3_600_000);
        assert_eq!(snap.remaining_requests, 9);
    }

    #[test]
    fn tpm_counts_tokens() {
        let mut l = Limiter::default();
        assert!(l
            .check(
                "m",
                Rule::minute(RateLimiterKind::TokenBucket, 0, 100),
                60,
                0
            )
            .0
            .is_ok());
        assert!(matches!(
            l.check(
                "m",
                Rule::minute(RateLimiterKind::TokenBucket, 0, 100),
                60,
                0
            )
            .0,
            Err(Refusal::Wait { what: "tokens", .. })
        ));
        assert!(matches!(
            l.check(
                "m",
                Rule::minute(RateLimiterKind::TokenBucket, 0, 100),
                101,
                0
            )
            .0,
            Err(Refusal::TooLarge { .. })
        ));
    }

    /// The README's worked example: `rpm: 3`, requests at t = 0, 10, 20 s, then a 4th at 20 s.
    #[test]
    fn worked_example_for_each_kind() {
        let run = |kind| {
            let t0 = 600_000; // a minute boundary
            let mut l2 = Limiter::default();
            let mut snap = None;
            for t in [0, 10_000, 20_000] {
                snap = Some(l2.check("m", Rule::minute(kind, 3, 0), 0, t0 + t).1);
            }
            let fourth = l2.check("m", Rule::minute(kind, 3, 0), 0, t0 + 20_000);
            (snap.unwrap(), fourth)
        };
        let (s, (r, s4)) = run(RateLimiterKind::TokenBucket);
        assert_eq!((s.remaining_requests, s.reset_requests_ms), (1, 40_000));
        assert!(r.is_ok());
        assert_eq!((s4.remaining_requests, s4.reset_requests_ms), (0, 60_000));

        let (s, (r, s4)) = run(RateLimiterKind::SlidingWindow);
        assert_eq!((s.remaining_requests, s.reset_requests_ms), (0, 60_000));
        assert!(matches!(
            r,
            Err(Refusal::Wait {
                retry_after_ms: 40_000,
                used: 3,
                ..
            })
        ));
        assert_eq!(s4.reset_requests_ms, 60_000);

        let (s, (r, s4)) = run(RateLimiterKind::FixedWindow);
        assert_eq!((s.remaining_requests, s.reset_requests_ms), (0, 40_000));
        assert!(matches!(
            r,
            Err(Refusal::Wait {
                retry_after_ms: 40_000,
                ..
            })
        ));
        assert_eq!(s4.reset_requests_ms, 40_000);
    }
}
