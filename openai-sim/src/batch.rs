//! The Batch record and its pure parts: the status clock, input validation, running the
//! lines, rendering output/error files and the Batch JSON. No locking or HTTP here.

use std::collections::HashSet;

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::chat::{self, Prepared, Usage};
use crate::config::{OutputOrder, SimConfig};
use crate::error::ApiError;
use crate::ids;

pub const ENDPOINTS: &[&str] = &[
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];
/// The only endpoint whose lines the simulator executes; others fail line by line.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";
/// Validation stops collecting errors after this many.
const MAX_ERRORS: usize = 100;

pub const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";
pub const CANCELLED_MESSAGE: &str =
    "This request was not executed because the batch was cancelled.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Expired | Status::Cancelled
        )
    }
}

/// Phase durations, fixed when the batch is created so a knob change never runs time backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub validating_ms: u64,
    pub in_progress_ms: u64,
    pub finalizing_ms: u64,
    pub cancel_ms: u64,
}

impl Timing {
    pub fn from_config(c: &SimConfig) -> Self {
        Timing {
            validating_ms: c.validating_ms,
            in_progress_ms: c.in_progress_ms,
            finalizing_ms: c.finalizing_ms,
            cancel_ms: c.cancel_ms,
        }
    }
}

/// When each status was entered (unix ms).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    pub in_progress: Option<u64>,
    pub finalizing: Option<u64>,
    pub completed: Option<u64>,
    pub failed: Option<u64>,
    pub expired: Option<u64>,
    pub cancelling: Option<u64>,
    pub cancelled: Option<u64>,
}

/// One item of `errors.data`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

impl BatchError {
    fn at(line: u64, code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        BatchError {
            code: code.into(),
            message: message.into(),
            param: param.map(str::to_string),
            line: Some(line),
        }
    }

    pub fn file(code: &str, message: impl Into<String>) -> Self {
        BatchError {
            code: code.into(),
            message: message.into(),
            param: None,
            line: None,
        }
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "param": self.param, "line": self.line})
    }
}

/// What executing one line produced.
#[derive(Clone, Debug, PartialEq)]
pub enum LineResult {
    Success { body: Value, usage: Usage },
    Failure { status: u16, body: Value },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub custom_id: String,
    pub result: LineResult,
}

/// A line that passed file validation, with its body checked as a chat request.
#[derive(Clone, Debug)]
pub struct ParsedLine {
    pub custom_id: String,
    pub prepared: Result<Prepared, ApiError>,
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub id: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub metadata: Option<Map<String, Value>>,
    pub output_expires_after_s: Option<u64>,
    /// The input file's bytes when the batch was created (later deletes do not matter).
    pub input: Bytes,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub timing: Timing,
    pub status: Status,
    pub stamps: Stamps,
    /// `expire_batch` moves the deadline here.
    pub forced_expiry_ms: Option<u64>,
    pub errors: Vec<BatchError>,
    /// The model the lines name, as written (e.g. `gpt-4o-mini`).
    pub request_model: Option<String>,
    /// Lines in execution order, which is also output order (`batch_output_order`).
    pub lines: Vec<Line>,
    /// Lines finished when a cancel or an expiry stopped the run.
    pub done_frozen: Option<usize>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Prompt tokens of the valid lines, counted against the enqueued-token limit.
    pub enqueued_tokens: u64,
    /// Seeds this batch's shuffle, failures and content.
    pub rng_seed: u64,
}

impl Batch {
    pub fn deadline(&self) -> u64 {
        self.forced_expiry_ms
            .map_or(self.expires_ms, |f| f.min(self.expires_ms))
    }

    /// Lines finished by `t` (valid only up to the next event).
    pub fn done_at(&self, t: u64) -> usize {
        let n = self.lines.len();
        match self.status {
            Status::Validating | Status::Failed => 0,
            Status::InProgress => {
                let start = self.stamps.in_progress.unwrap_or(t);
                let d = self.timing.in_progress_ms;
                if d == 0 {
                    n
                } else {
                    let elapsed = t.saturating_sub(start).min(d) as u128;
                    (n as u128 * elapsed / d as u128) as usize
                }
            }
            Status::Finalizing | Status::Completed => n,
            Status::Expired | Status::Cancelling | Status::Cancelled => {
                self.done_frozen.unwrap_or(0)
            }
        }
    }

    /// When the status next changes on its own; `None` for terminal batches.
    pub fn next_event(&self) -> Option<u64> {
        let deadline = self.deadline();
        match self.status {
            Status::Validating => Some((self.created_ms + self.timing.validating_ms).min(deadline)),
            Status::InProgress => {
                Some((self.stamps.in_progress? + self.timing.in_progress_ms).min(deadline))
            }
            Status::Finalizing => {
                Some((self.stamps.finalizing? + self.timing.finalizing_ms).min(deadline))
            }
            Status::Cancelling => Some(self.stamps.cancelling? + self.timing.cancel_ms),
            _ => None,
        }
    }

    /// `(completed, failed)` among the first `done` lines.
    pub fn counts(&self, done: usize) -> (u64, u64) {
        let failed = self.lines[..done]
            .iter()
            .filter(|l| matches!(l.result, LineResult::Failure { .. }))
            .count() as u64;
        (done as u64 - failed, failed)
    }

    pub fn usage(&self, done: usize) -> Usage {
        let mut total = Usage::default();
        for l in &self.lines[..done] {
            if let LineResult::Success { usage, .. } = &l.result {
                total.prompt_tokens += usage.prompt_tokens;
                total.cached_tokens += usage.cached_tokens;
                total.image_tokens += usage.image_tokens;
                total.completion_tokens += usage.completion_tokens;
                total.reasoning_tokens += usage.reasoning_tokens;
            }
        }
        total
    }

    /// The snapshot the lines ran on, once validation passed.
    pub fn model_snapshot(&self) -> Option<String> {
        self.stamps.in_progress?;
        self.request_model.as_deref().map(crate::models::snapshot)
    }

    pub fn to_json(&self, now: u64) -> Value {
        let secs = |t: Option<u64>| t.map(|ms| ms / 1000);
        let done = self.done_at(now);
        let (completed, failed) = self.counts(done);
        let usage = self.usage(done);
        let errors = if self.errors.is_empty() {
            Value::Null
        } else {
            json!({"object": "list", "data": self.errors.iter().map(BatchError::to_json).collect::<Vec<_>>()})
        };
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model_snapshot(),
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_ms / 1000,
            "in_progress_at": secs(self.stamps.in_progress),
            "expires_at": self.expires_ms / 1000,
            "finalizing_at": secs(self.stamps.finalizing),
            "completed_at": secs(self.stamps.completed),
            "failed_at": secs(self.stamps.failed),
            "expired_at": secs(self.stamps.expired),
            "cancelling_at": secs(self.stamps.cancelling),
            "cancelled_at": secs(self.stamps.cancelled),
            "request_counts": {
                "total": self.lines.len(),
                "completed": completed,
                "failed": failed,
            },
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
                "total_tokens": usage.total(),
            },
            "metadata": self.metadata,
        })
    }

    /// Output and error file contents once the batch stops: the first `done` lines as they
    /// ran, the rest as never executed with `unexecuted` = (code, message).
    pub fn render_files(&self, done: usize, unexecuted: (&str, &str)) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for (i, line) in self.lines.iter().enumerate() {
            let (target, value) = if i >= done {
                (
                    &mut err,
                    json!({
                        "id": ids::batch_request_id(),
                        "custom_id": line.custom_id,
                        "response": null,
                        "error": {"code": unexecuted.0, "message": unexecuted.1},
                    }),
                )
            } else {
                let (target, status, body) = match &line.result {
                    LineResult::Success { body, .. } => (&mut out, 200, body),
                    LineResult::Failure { status, body } => (&mut err, *status, body),
                };
                (
                    target,
                    json!({
                        "id": ids::batch_request_id(),
                        "custom_id": line.custom_id,
                        "response": {"status_code": status, "request_id": ids::request_id(), "body": body},
                        "error": null,
                    }),
                )
            };
            serde_json::to_writer(&mut *target, &value).expect("a Value always serializes");
            target.push(b'\n');
        }
        (out, err)
    }
}

/// File-level checks of a batch input: JSONL shape, unique `custom_id`s, `method`, `url`,
/// size, line count and one model. Lines' bodies are then checked as chat requests.
pub fn validate_input(
    input: &[u8],
    endpoint: &str,
    cfg: &SimConfig,
) -> Result<(Vec<ParsedLine>, Option<String>), Vec<BatchError>> {
    if input.len() as u64 > cfg.max_file_bytes {
        return Err(vec![BatchError::file(
            "file_too_large",
            format!(
                "The input file is {} bytes, above the maximum of {} bytes for a batch.",
                input.len(),
                cfg.max_file_bytes
            ),
        )]);
    }
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let mut model: Option<(String, u64)> = None;
    let mut count = 0usize;
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let n = i as u64 + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        count += 1;
        if errors.len() >= MAX_ERRORS {
            continue;
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                errors.push(BatchError::at(
                    n,
                    "invalid_json_line",
                    "This line is not parseable as valid JSON.",
                    None,
                ));
                continue;
            }
        };
        let custom_id = match v.get("custom_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                errors.push(BatchError::at(
                    n,
                    "missing_required_parameter",
                    "Missing required parameter: 'custom_id'.",
                    Some("custom_id"),
                ));
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            errors.push(BatchError::at(
                n,
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each individual request in a batch.",
                Some("custom_id"),
            ));
            continue;
        }
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            errors.push(BatchError::at(
                n,
                "invalid_method",
                "The HTTP method for this request is not supported. Only POST is allowed.",
                Some("method"),
            ));
            continue;
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint) {
            errors.push(BatchError::at(
                n,
                "invalid_url",
                format!("The URL provided for this request does not match the batch endpoint '{endpoint}'."),
                Some("url"),
            ));
            continue;
        }
        let body = match v.get("body") {
            Some(b @ Value::Object(_)) => b,
            _ => {
                errors.push(BatchError::at(
                    n,
                    "missing_required_parameter",
                    "Missing required parameter: 'body'.",
                    Some("body"),
                ));
                continue;
            }
        };
        if let Some(m) = body.get("model").and_then(Value::as_str) {
            match &model {
                None => model = Some((m.to_string(), n)),
                Some((first, first_line)) if first != m => {
                    errors.push(BatchError::at(
                        n,
                        "mismatched_model",
                        format!("All requests in a batch must use the same model. Line {n} uses '{m}', but line {first_line} uses '{first}'."),
                        Some("body.model"),
                    ));
                    continue;
                }
                Some(_) => {}
            }
        }
        let prepared = if endpoint == CHAT_ENDPOINT {
            chat::prepare(body, cfg)
        } else {
            Err(ApiError::invalid(format!(
                "openai-sim executes only {CHAT_ENDPOINT} batch lines, not {endpoint}."
            )))
        };
        lines.push(ParsedLine {
            custom_id,
            prepared,
        });
    }
    if count == 0 {
        errors.push(BatchError::file(
            "empty_file",
            "The batch input file is empty. It must contain at least one request.",
        ));
    } else if count > cfg.max_lines {
        errors.insert(
            0,
            BatchError::file(
                "too_many_requests",
                format!(
                    "The batch input file has {count} requests, above the maximum of {} requests per batch.",
                    cfg.max_lines
                ),
            ),
        );
    }
    if errors.is_empty() {
        Ok((lines, model.map(|(m, _)| m)))
    } else {
        Err(errors)
    }
}

/// Executes validated lines: answers, injected failures, then the `batch_output_order`.
pub fn run_lines<R: Rng>(
    parsed: Vec<ParsedLine>,
    cfg: &SimConfig,
    rng: &mut R,
    created_s: u64,
) -> Vec<Line> {
    let fail_rate = cfg.line_failure_rate.clamp(0.0, 1.0);
    let mut lines: Vec<Line> = parsed
        .into_iter()
        .map(|p| {
            let result = match p.prepared {
                Err(e) => LineResult::Failure {
                    status: e.status,
                    body: e.envelope(),
                },
                Ok(_) if rng.gen_bool(fail_rate) => LineResult::Failure {
                    status: cfg.line_failure_status,
                    body: injected_failure(cfg.line_failure_status).envelope(),
                },
                Ok(prep) => {
                    let (body, usage) = chat::complete(&prep, cfg, rng, created_s);
                    LineResult::Success { body, usage }
                }
            };
            Line {
                custom_id: p.custom_id,
                result,
            }
        })
        .collect();
    match cfg.batch_output_order {
        OutputOrder::Shuffled => lines.shuffle(rng),
        OutputOrder::Input => {}
        OutputOrder::Reversed => lines.reverse(),
    }
    lines
}

fn injected_failure(status: u16) -> ApiError {
    if status >= 500 {
        ApiError::server_error()
    } else {
        ApiError::new(
            status,
            "invalid_request_error",
            "openai-sim rejected this request on purpose (line_failure_rate).",
        )
        .code("sim_injected_failure")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, model: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": CHAT_ENDPOINT,
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    fn codes(input: &str, cfg: &SimConfig) -> Vec<(String, Option<u64>)> {
        validate_input(input.as_bytes(), CHAT_ENDPOINT, cfg)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.code, e.line))
            .collect()
    }

    #[test]
    fn accepts_valid_input_with_blank_lines() {
        let input = format!("{}\n\n{}\n", line("a", "gpt-4o"), line("b", "gpt-4o"));
        let (lines, model) =
            validate_input(input.as_bytes(), CHAT_ENDPOINT, &SimConfig::default()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn reports_each_file_problem_with_its_line() {
        let c = SimConfig::default();
        let dup = format!("{}\n{}\n", line("a", "gpt-4o"), line("a", "gpt-4o"));
        assert_eq!(
            codes(&dup, &c),
            vec![("duplicate_custom_id".into(), Some(2))]
        );
        let bad = format!("{}\nnot json\n", line("a", "gpt-4o"));
        assert_eq!(codes(&bad, &c), vec![("invalid_json_line".into(), Some(2))]);
        let mixed = format!("{}\n{}\n", line("a", "gpt-4o"), line("b", "gpt-4o-mini"));
        assert_eq!(
            codes(&mixed, &c),
            vec![("mismatched_model".into(), Some(2))]
        );
        let url = line("a", "gpt-4o").replace(CHAT_ENDPOINT, "/v1/embeddings");
        assert_eq!(codes(&url, &c), vec![("invalid_url".into(), Some(1))]);
        let method = line("a", "gpt-4o").replace("POST", "GET");
        assert_eq!(codes(&method, &c), vec![("invalid_method".into(), Some(1))]);
        let few = SimConfig {
            max_lines: 1,
            ..SimConfig::default()
        };
        let two = format!("{}\n{}\n", line("a", "gpt-4o"), line("b", "gpt-4o"));
        assert_eq!(codes(&two, &few), vec![("too_many_requests".into(), None)]);
        let small = SimConfig {
            max_file_bytes: 10,
            ..SimConfig::default()
        };
        assert_eq!(codes(&two, &small), vec![("file_too_large".into(), None)]);
        assert_eq!(codes("\n", &c), vec![("empty_file".into(), None)]);
    }
}
