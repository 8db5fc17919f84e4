//! The one API error type and its `application/problem+json` form (RFC 9457).
//! A 500 logs its cause and shows none of it.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppError;

const TYPE_BASE: &str = "https://batchlens.dev/problems/";

/// A problem with one field of the request.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `items[3].image_url`.
    #[schema(example = "items[3].image_url")]
    pub field: String,
    #[schema(example = "scheme must be https")]
    pub message: String,
}

/// The body of every 4xx and 5xx answer (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://batchlens.dev/problems/validation", "title": "Invalid request",
    "status": 422, "detail": "items[3].image_url: scheme must be https",
    "errors": [{"field": "items[3].image_url", "message": "scheme must be https"}]}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON or has the wrong types.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 401: missing or unknown key.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// 401: a webhook whose Standard Webhooks signature does not verify (why, in words).
    #[error("{0}")]
    UnverifiedWebhook(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the state of the job forbids the action, or the idempotency key is in flight.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over `server.max_body_bytes` (`limit`, in bytes).
    #[error("the request body is over this server's limit of {limit} bytes (server.max_body_bytes); send a large set in chunks under it: create the job with \"open\": true, POST its images to /v1/jobs/{{id}}/items (JSON or multipart/form-data, one request per chunk, each with its own Idempotency-Key), then POST /v1/jobs/{{id}}/submit; `batchlens submit <folder>` does all of this")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: valid JSON that breaks a rule.
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 422 of type `budget`: the job would take the tenant over its monthly budget.
    #[error("{0}")]
    OverBudget(String),
    /// 429 with `Retry-After` (whole seconds): the tenant is over a limit.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    NotReady(String),
    /// 500: logged with its cause, answered bare.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 422 about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::field(field, message).into()
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::UnverifiedWebhook(_) => (
                StatusCode::UNAUTHORIZED,
                "unverified-webhook",
                "Unverified webhook",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            ApiError::OverBudget(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "budget",
                "Over the monthly budget",
            ),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limit",
                "Too many requests",
            ),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let (detail, errors) = match self {
            ApiError::BadRequest { detail, errors } | ApiError::Validation { detail, errors } => {
                (detail.clone(), errors.clone())
            }
            ApiError::Internal(_) => (
                "the server failed to answer; the error was logged".to_string(),
                Vec::new(),
            ),
            other => (other.to_string(), Vec::new()),
        };
        Problem {
            kind: format!("{TYPE_BASE}{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        let problem = self.to_problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}

impl From<crate::app::FieldError> for FieldError {
    fn from(e: crate::app::FieldError) -> Self {
        FieldError {
            field: e.field,
            message: e.message,
        }
    }
}

/// The one mapping of the use cases' errors to HTTP problems.
impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        match err {
            AppError::Validation { detail, errors } => ApiError::Validation {
                detail,
                errors: errors.into_iter().map(FieldError::from).collect(),
            },
            AppError::NotFound(why) => ApiError::NotFound(why),
            AppError::Conflict(why) => ApiError::Conflict(why),
            AppError::TooManyRequests {
                detail,
                retry_after,
            } => ApiError::TooManyRequests {
                detail,
                retry_after,
            },
            AppError::OverBudget(why) => ApiError::OverBudget(why),
            AppError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// JSON body extractor whose every failure is a problem naming the field
/// (`items[3].detail: unknown variant ...`).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiBody(bytes) = ApiBody::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The raw bytes of a JSON body, its content type and size limit checked (for handlers
/// that also need the exact bytes, as idempotency does).
pub struct ApiBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with Content-Type: application/json".into(),
            ));
        }
        let limit = super::body_limit::limit_of(&req);
        axum::body::Bytes::from_request(req, state)
            .await
            .map(ApiBody)
            .map_err(|e| body_rejection(e, limit))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub(super) fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        })
}

/// Parses JSON, naming the path of the first field that does not fit. The whole body must
/// be one JSON value: trailing bytes after it are malformed JSON too.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde_json reports a value of the wrong type for an enum (`{"mode": 5}`) as a
        // syntax error ("expected value"): the body is well-formed JSON, so it is the
        // field that is wrong.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        if (inner.is_syntax() || inner.is_eof()) && !well_formed {
            return malformed(&inner);
        }
        let message = if inner.is_syntax() {
            "invalid type: expected one of the documented strings".to_string()
        } else {
            inner.to_string()
        };
        let path = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::BadRequest {
            detail: format!("{path}: {message}"),
            errors: vec![FieldError {
                field: path,
                message,
            }],
        }
    })?;
    de.end().map_err(|err| malformed(&err))?;
    Ok(parsed)
}

/// A body that is not one JSON value: the field is the whole `body`.
fn malformed(err: &serde_json::Error) -> ApiError {
    let message = format!("malformed JSON: {err}");
    ApiError::BadRequest {
        detail: message.clone(),
        errors: vec![FieldError {
            field: "body".to_string(),
            message,
        }],
    }
}

pub(super) fn body_rejection(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::BadRequest {
            detail: format!("could not read the body: {rejection}"),
            errors: Vec::new(),
        }
    }
}
