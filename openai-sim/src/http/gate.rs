//! What every `/v1` request passes first: the API key, injected latency, injected faults.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;

use super::{error_response, with_note, Note};
use crate::config::FaultRule;
use crate::error::ApiError;
use crate::ratelimit::{self, format_duration, Snapshot};
use crate::state::{Sim, State as SimState};

/// A fault chosen for one request.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    ServerError(u16),
    RateLimited { retry_after_ms: u64 },
    InsufficientQuota,
}

pub(super) async fn gate(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let path = format!("/v1{}", req.uri().path());
    let method = req.method().to_string();

    let (latency, fault, org) = {
        let mut st = sim.lock();
        if let Some(refusal) = check_key(key.as_deref(), st.config.api_key.as_deref()) {
            st.stats.unauthorized += 1;
            return error_response(&refusal);
        }
        let (latency, fault) = choose_fault(&mut st, &path, &method);
        match &fault {
            Some(Fault::ServerError(_)) => st.stats.injected_5xx += 1,
            Some(Fault::RateLimited { .. }) => st.stats.injected_429 += 1,
            Some(Fault::InsufficientQuota) => st.stats.insufficient_quota += 1,
            None => {}
        }
        (latency, fault, st.config.organization.clone())
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match fault {
        None => next.run(req).await,
        Some(f) => fault_response(&f, &org),
    }
}

fn check_key(given: Option<&str>, required: Option<&str>) -> Option<ApiError> {
    match (given, required) {
        (None, _) => Some(ApiError::new(
            401,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
        )),
        (Some(k), Some(want)) if k != want => Some(
            ApiError::new(
                401,
                "invalid_request_error",
                format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    mask(k)
                ),
            )
            .code("invalid_api_key"),
        ),
        _ => None,
    }
}

/// Keeps the ends of a key only, as OpenAI's message does.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// Total latency and the first fault that fires: global knobs first, then matching rules.
fn choose_fault(st: &mut SimState, path: &str, method: &str) -> (u64, Option<Fault>) {
    let cfg = &st.config;
    let mut latency = cfg.latency_ms;
    let global = FaultRule {
        path_prefix: "/v1/".into(),
        fault_5xx_rate: cfg.fault_5xx_rate,
        fault_429_rate: cfg.fault_429_rate,
        insufficient_quota: cfg.insufficient_quota,
        ..FaultRule::default()
    };
    let mut fault = fire(&global, &mut st.rng);
    for i in 0..st.config.faults.len() {
        let rule = &st.config.faults[i];
        let applies = path.starts_with(&rule.path_prefix)
            && rule
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && rule.remaining != Some(0);
        if !applies {
            continue;
        }
        latency += rule.latency_ms;
        if rule.skip > 0 {
            st.config.faults[i].skip -= 1;
            continue;
        }
        if fault.is_none() {
            let rule = rule.clone();
            fault = fire(&rule, &mut st.rng);
            if fault.is_some() {
                if let Some(left) = st.config.faults[i].remaining.as_mut() {
                    *left -= 1;
                }
            }
        }
    }
    (latency, fault)
}

fn fire<R: Rng>(rule: &FaultRule, rng: &mut R) -> Option<Fault> {
    if rule.insufficient_quota {
        return Some(Fault::InsufficientQuota);
    }
    if rule.fault_429_rate > 0.0 && rng.gen_bool(rule.fault_429_rate.min(1.0)) {
        return Some(Fault::RateLimited {
            retry_after_ms: rule.retry_after_ms,
        });
    }
    if rule.fault_5xx_rate > 0.0 && rng.gen_bool(rule.fault_5xx_rate.min(1.0)) {
        return Some(Fault::ServerError(rule.status_5xx));
    }
    None
}

fn fault_response(f: &Fault, org: &str) -> Response {
    match f {
        Fault::ServerError(status) => {
            let mut e = ApiError::server_error();
            e.status = if (500..600).contains(status) {
                *status
            } else {
                500
            };
            if e.status == 503 {
                e.message = "The server is overloaded or not ready yet.".into();
            }
            with_note(error_response(&e), note("5xx"))
        }
        Fault::InsufficientQuota => {
            let e = ApiError::new(
                429,
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            )
            .code("insufficient_quota");
            with_note(error_response(&e), note("insufficient_quota"))
        }
        Fault::RateLimited { retry_after_ms } => {
            let e = ApiError::new(
                429,
                "requests",
                format!(
                    "Rate limit reached in organization {org} on requests per min (RPM) (injected by openai-sim). Please try again in {}.",
                    format_duration(*retry_after_ms)
                ),
            )
            .code("rate_limit_exceeded");
            let snap = Snapshot {
                limit_requests: ratelimit::NOMINAL_RPM,
                remaining_requests: 0,
                reset_requests_ms: *retry_after_ms,
                limit_tokens: ratelimit::NOMINAL_TPM,
                remaining_tokens: ratelimit::NOMINAL_TPM,
                reset_tokens_ms: 0,
            };
            let resp = rate_limited_response(&e, &snap, Some(*retry_after_ms));
            with_note(resp, note("429"))
        }
    }
}

fn note(fault: &str) -> Note {
    Note {
        fault: Some(fault.into()),
        ..Note::default()
    }
}

/// A 429 with `x-ratelimit-*` headers and, when retrying can help, `retry-after(-ms)`.
pub(super) fn rate_limited_response(
    e: &ApiError,
    snap: &Snapshot,
    retry_after_ms: Option<u64>,
) -> Response {
    let mut resp = error_response(e);
    add_rate_headers(&mut resp, snap);
    if let Some(ms) = retry_after_ms {
        let secs = ms.div_ceil(1000).max(1);
        let h = resp.headers_mut();
        h.insert("retry-after", HeaderValue::from(secs));
        h.insert("retry-after-ms", HeaderValue::from(ms));
    }
    resp
}

pub(super) fn add_rate_headers(resp: &mut Response, snap: &Snapshot) {
    for (name, value) in snap.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys() {
        assert_eq!(mask("sk-abcdefghijkl"), "sk-********ijkl");
        assert_eq!(mask("short"), "*****");
    }

    #[test]
    fn keys() {
        assert!(check_key(None, None).is_some());
        assert!(check_key(Some("x"), None).is_none());
        assert_eq!(
            check_key(Some("x"), Some("y")).unwrap().code.as_deref(),
            Some("invalid_api_key")
        );
        assert!(check_key(Some("y"), Some("y")).is_none());
    }
}
