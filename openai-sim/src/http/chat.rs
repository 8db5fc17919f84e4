//! `POST /v1/chat/completions`: validation, RPM/TPM limits, the answer and its headers.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use rand::Rng;

use super::gate::{add_rate_headers, rate_limited_response};
use super::{error_response, json_response, parse_json, with_note, Note};
use crate::chat;
use crate::error::ApiError;
use crate::ratelimit::{format_duration, Refusal, Rule};
use crate::state::{ChatCall, Sim};

pub(super) async fn create(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let client_request_id = headers
        .get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let model = body
        .get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let note = Note {
        model: model.clone(),
        ..Note::default()
    };
    let (resp, latency) = {
        let mut guard = sim.lock();
        let st = &mut *guard;
        let now = st.now_ms();
        let cfg = st.config.clone();
        match chat::prepare(&body, &cfg) {
            Err(e) => {
                st.stats.chat_rejected += 1;
                (error_response(&e), 0)
            }
            Ok(p) => {
                let cost = p.rate_limit_cost();
                let call = |outcome: &str, status: u16| ChatCall {
                    at_ms: now,
                    model: p.model.clone(),
                    outcome: outcome.into(),
                    status,
                    tokens: cost,
                    flex: p.flex,
                    client_request_id: client_request_id.clone(),
                };
                // Capacity is checked before the limits: an unavailable flex call takes nothing.
                if p.flex
                    && cfg.flex_unavailable_rate > 0.0
                    && st.rng.gen_bool(cfg.flex_unavailable_rate.min(1.0))
                {
                    st.stats.flex_unavailable += 1;
                    st.record_chat(call("flex_unavailable", 429));
                    let note = Note {
                        fault: Some("flex_unavailable".into()),
                        ..note.clone()
                    };
                    return with_note(error_response(&flex_unavailable(&p.model)), note);
                }
                let rule = Rule {
                    kind: cfg.rate_limiter,
                    rpm: cfg.rpm,
                    tpm: cfg.tpm,
                    held_ms: cfg.bucket_capacity_ms,
                };
                let (outcome, snap) = st.limiter.check(&p.model, rule, cost, now);
                match outcome {
                    Err(refusal) => {
                        st.stats.rate_limited += 1;
                        let kind = match refusal {
                            Refusal::TooLarge { .. } => "too_large",
                            Refusal::Wait { .. } => "rate_limited",
                        };
                        st.record_chat(call(kind, 429));
                        let (e, retry) = refusal_error(&refusal, &p.model, &cfg.organization);
                        let resp = rate_limited_response(&e, &snap, retry);
                        let note = Note {
                            fault: Some("rate_limit".into()),
                            ..note.clone()
                        };
                        return with_note(resp, note);
                    }
                    Ok(()) => {
                        let (answer, usage) = chat::complete(&p, &cfg, &mut st.rng, now / 1000);
                        st.stats.chat_calls += 1;
                        st.stats.prompt_tokens += usage.prompt_tokens;
                        st.stats.completion_tokens += usage.completion_tokens;
                        st.record_chat(call("accepted", 200));
                        let mut resp = json_response(200, &answer);
                        add_rate_headers(&mut resp, &snap);
                        let flex_latency = if p.flex { cfg.flex_latency_ms } else { 0 };
                        (resp, cfg.chat_latency_ms + flex_latency)
                    }
                }
            }
        }
    };
    while sim.lock().config.chat_hold {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    with_note(resp, note)
}

/// The flex guide's "429 Resource Unavailable": not a rate limit, so no `x-ratelimit-*` and
/// no `retry-after` (OpenAI documents only the status and the name; the code is ours).
fn flex_unavailable(model: &str) -> ApiError {
    ApiError::new(
        429,
        "resource_unavailable",
        format!(
            "Resource unavailable: there is not enough flex processing capacity for {model} right now. Please retry later or use the default service tier. You are not charged for this request."
        ),
    )
    .code("resource_unavailable")
}

/// OpenAI's 429 body for a limit, and how long to wait when waiting helps.
fn refusal_error(r: &Refusal, model: &str, org: &str) -> (ApiError, Option<u64>) {
    match r {
        Refusal::Wait {
            what,
            limit,
            used,
            requested,
            retry_after_ms,
        } => {
            let unit = if *what == "requests" {
                "requests per min (RPM)"
            } else {
                "tokens per min (TPM)"
            };
            let e = ApiError::new(
                429,
                what,
                format!(
                    "Rate limit reached for {model} in organization {org} on {unit}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
                    format_duration(*retry_after_ms)
                ),
            )
            .code("rate_limit_exceeded");
            (e, Some(*retry_after_ms))
        }
        Refusal::TooLarge { limit, requested } => {
            let e = ApiError::new(
                429,
                "tokens",
                format!(
                    "Request too large for {model} in organization {org} on tokens per min (TPM): Limit {limit}, Requested {requested}. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more."
                ),
            )
            .code("rate_limit_exceeded");
            (e, None)
        }
    }
}
