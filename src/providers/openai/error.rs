//! The one error type of the OpenAI client, and which of its cases are worth retrying.

use std::time::Duration;

use super::ratelimit::RateLimitHeaders;
use super::types::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// OpenAI (or a proxy in front of it) answered with a non-2xx status.
    #[error("OpenAI API error {status}: {} (type {:?}, code {:?})", .body.message, .body.r#type, .body.code)]
    Api {
        status: u16,
        body: ApiError,
        /// What `retry-after-ms` / `Retry-After` asked for, when present.
        retry_after: Option<Duration>,
        /// The `x-ratelimit-*` headers of the answer (a 429 carries them too); boxed to
        /// keep every `Result` of the client small.
        rate_limits: Box<RateLimitHeaders>,
    },
    /// Connecting, sending or reading failed, or an attempt timed out (after all retries).
    #[error("transport error talking to OpenAI: {0}")]
    Transport(String),
    /// Local file trouble: the upload source or the download destination.
    #[error("file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A 2xx answer whose body is not what the endpoint promises.
    #[error("unreadable OpenAI response: {0}")]
    Decode(String),
    #[error("OpenAI client configuration: {0}")]
    Config(String),
}

impl OpenAiError {
    /// 429 (except `insufficient_quota`, which waits on a human), 5xx and transport failures
    /// can succeed later. Every other 4xx, 408 and 409 included, will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            OpenAiError::Api { status, body, .. } => {
                (*status == 429 && !is_quota_exhausted(body)) || (500..=599).contains(status)
            }
            OpenAiError::Transport(_) => true,
            OpenAiError::Io(_) | OpenAiError::Decode(_) | OpenAiError::Config(_) => false,
        }
    }

    /// A 429 without a rate-limit meaning: flex processing's "resource unavailable" (no
    /// capacity now; not billed). OpenAI documents only the status and the name, so it is
    /// told by its `resource_unavailable` type or code, or by a 429 that is neither quota
    /// nor `rate_limit_exceeded` and carries no `retry-after` and no `x-ratelimit-*`.
    pub fn capacity_unavailable(&self) -> bool {
        let OpenAiError::Api {
            status: 429,
            body,
            retry_after,
            rate_limits,
        } = self
        else {
            return false;
        };
        let named = |v: &Option<String>| v.as_deref() == Some("resource_unavailable");
        if named(&body.code) || named(&body.r#type) {
            return true;
        }
        !is_quota_exhausted(body)
            && body.code.as_deref() != Some("rate_limit_exceeded")
            && retry_after.is_none()
            && **rate_limits == RateLimitHeaders::default()
    }

    /// The account is out of quota (a 429 `insufficient_quota`): nothing goes through
    /// until a human adds credit.
    pub fn quota_exhausted(&self) -> bool {
        matches!(self, OpenAiError::Api { status: 429, body, .. } if is_quota_exhausted(body))
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OpenAiError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The envelope's `code`, e.g. `insufficient_quota`, `rate_limit_exceeded`.
    pub fn code(&self) -> Option<&str> {
        self.api_error()?.code.as_deref()
    }

    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            OpenAiError::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The delay the server asked for, when it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OpenAiError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(err: reqwest::Error) -> OpenAiError {
        if err.is_builder() {
            return OpenAiError::Config(error_chain(&err));
        }
        let kind = if err.is_timeout() {
            "timed out: "
        } else if err.is_connect() {
            "connect failed: "
        } else {
            ""
        };
        OpenAiError::Transport(format!("{kind}{}", error_chain(&err)))
    }
}

/// OpenAI marks an exhausted quota by `code` and by `type`; either one is enough.
fn is_quota_exhausted(body: &ApiError) -> bool {
    body.code.as_deref() == Some("insufficient_quota")
        || body.r#type.as_deref() == Some("insufficient_quota")
}

/// reqwest's own message hides the cause ("error sending request"); the chain names it.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>, kind: Option<&str>) -> OpenAiError {
        OpenAiError::Api {
            status,
            body: ApiError {
                message: "m".into(),
                r#type: kind.map(str::to_string),
                param: None,
                code: code.map(str::to_string),
            },
            retry_after: None,
            rate_limits: Box::default(),
        }
    }

    #[test]
    fn retryable_classification() {
        assert!(api(429, Some("rate_limit_exceeded"), Some("requests")).is_retryable());
        assert!(api(429, None, None).is_retryable());
        assert!(!api(429, Some("insufficient_quota"), Some("insufficient_quota")).is_retryable());
        assert!(!api(429, None, Some("insufficient_quota")).is_retryable());
        for status in [500, 502, 503, 504, 599] {
            assert!(api(status, None, None).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 408, 409, 413, 422] {
            assert!(!api(status, None, None).is_retryable(), "{status}");
        }
        assert!(OpenAiError::Transport("reset".into()).is_retryable());
        assert!(!OpenAiError::Decode("x".into()).is_retryable());
        assert!(!OpenAiError::Config("x".into()).is_retryable());
        assert!(!OpenAiError::Io(std::io::Error::other("disk")).is_retryable());
    }

    #[test]
    fn accessors() {
        let e = api(429, Some("insufficient_quota"), None);
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.code(), Some("insufficient_quota"));
        assert!(e.to_string().contains("429"));
        assert_eq!(OpenAiError::Transport("x".into()).status(), None);
        assert_eq!(OpenAiError::Transport("x".into()).code(), None);
    }
}
