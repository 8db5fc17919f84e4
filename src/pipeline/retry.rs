//! Which failures are worth another attempt. One classification for both paths: the
//! ingester judges batch lines and leftovers with it, the individual executor its calls.
//! The store applies the verdict (attempts under `batch.max_attempts`, job not cancelling).

/// A batch the enqueued-token limit refused: nothing ran. Its items are re-planned into
/// smaller shards rather than failed.
pub const TOKEN_LIMIT_EXCEEDED: &str = "token_limit_exceeded";
/// Items of a finished batch that appear in neither of its files.
pub const NOT_EXECUTED: &str = "not_executed";
/// A line OpenAI did not run before the completion window closed.
pub const BATCH_EXPIRED: &str = "batch_expired";
/// A line OpenAI did not run because the batch was cancelled (by us for a cancelled job,
/// or by OpenAI).
pub const BATCH_CANCELLED: &str = "batch_cancelled";
/// An individual call that never got an HTTP answer (connect, timeout, reset).
pub const REQUEST_FAILED: &str = "request_failed";

/// What a failure means for the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It may succeed another time: OpenAI was busy, broken or out of time, or the
    /// request never ran. Sent again while attempts remain.
    Retryable,
    /// It will fail the same way again (a bad image, an answer outside the schema, a
    /// request OpenAI rejects). The item stays failed with its reason.
    Permanent,
}

/// Classifies a failure by its error code and, when there was an HTTP answer, its status.
///
/// With a status: 429 (except `insufficient_quota`, which waits on a human) and 5xx are
/// retryable, anything else (4xx, or a 200 whose answer was unusable) is not. Without
/// one: lines OpenAI never ran (`batch_expired`, `batch_cancelled`, `not_executed`), a
/// refused batch (`token_limit_exceeded`), a call without an answer (`request_failed`)
/// and OpenAI's own transient codes are retryable; everything else is not.
///
/// `batch_cancelled` is retryable here because OpenAI may cancel a batch on its own; when
/// the job itself is being cancelled the store turns these items into `cancelled` instead.
pub fn classify(code: &str, http_status: Option<u16>) -> FailureKind {
    use FailureKind::*;
    match http_status {
        Some(429) if code == "insufficient_quota" => Permanent,
        Some(429) | Some(500..=599) => Retryable,
        Some(_) => Permanent,
        None => match code {
            BATCH_EXPIRED
            | BATCH_CANCELLED
            | NOT_EXECUTED
            | TOKEN_LIMIT_EXCEEDED
            | REQUEST_FAILED
            | "server_error"
            | "rate_limit_exceeded"
            | "timeout" => Retryable,
            _ => Permanent,
        },
    }
}

/// `classify(..) == Retryable`.
pub fn retryable(code: &str, http_status: Option<u16>) -> bool {
    classify(code, http_status) == FailureKind::Retryable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_trouble_and_unrun_lines_are_retried() {
        for (code, status) in [
            ("server_error", Some(500)),
            ("sim_injected_failure", Some(503)),
            ("rate_limit_exceeded", Some(429)),
            ("http_502", Some(502)),
            (BATCH_EXPIRED, None),
            (BATCH_CANCELLED, None),
            (NOT_EXECUTED, None),
            (TOKEN_LIMIT_EXCEEDED, None),
            (REQUEST_FAILED, None),
        ] {
            assert!(retryable(code, status), "{code} {status:?}");
        }
    }

    #[test]
    fn bad_requests_and_bad_answers_are_final() {
        for (code, status) in [
            ("invalid_image", Some(400)),
            ("invalid_request_error", Some(400)),
            ("sim_injected_failure", Some(400)),
            ("insufficient_quota", Some(429)),
            ("invalid_output", Some(200)),
            ("refusal", Some(200)),
            ("invalid_output", None),
            ("invalid_json_line", None),
            ("batch_failed", None),
        ] {
            assert!(!retryable(code, status), "{code} {status:?}");
        }
    }
}
