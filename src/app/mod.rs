//! The application layer: the use cases the HTTP API (and the webhook sender, for the job
//! view) call — submit, append, submit an open job, cancel, estimate, idempotent replays,
//! job and result views. Owns the domain error [`AppError`] that `api/problem.rs` maps to
//! problem+json. Knows nothing of axum or of the HTTP contract's DTOs; reaches storage
//! only through the store trait.

use std::sync::Arc;

use crate::config::Settings;
use crate::cost::pricing::PriceTable;
use crate::store::{DynStore, StoreError};

pub mod estimate;
pub mod events;
pub mod fetch;
pub mod idempotency;
pub mod jobs;
pub mod limits;
pub mod openai_webhooks;
pub mod results;
pub mod reuse;
pub mod submit;
pub mod views;

/// What the use cases need: the store, the settings, the price table in force, this
/// replica's state of the tenant limits, and the fetcher of `image_url`s.
#[derive(Clone)]
pub struct App {
    pub store: DynStore,
    pub settings: Arc<Settings>,
    pub prices: Arc<PriceTable>,
    pub gate: Arc<limits::TenantGate>,
    pub fetcher: Arc<fetch::Fetcher>,
}

/// A problem with one field of the input, named by its path (`items[3].image_url`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Why a use case refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The input breaks a rule; `errors` names the fields.
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    NotFound(String),
    /// The state of the job forbids the action, or an idempotency key is in flight.
    #[error("{0}")]
    Conflict(String),
    /// The tenant is over a limit (`requests_per_second`, `max_open_items`): try again
    /// after `retry_after`.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: std::time::Duration,
    },
    /// The job's estimate would take the tenant over its `monthly_budget_usd`; the detail
    /// says how much is left.
    #[error("{0}")]
    OverBudget(String),
    /// A failure of ours (storage, a task): logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// A validation error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        AppError::Validation {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError { field, message }],
        }
    }

    /// A validation error about several fields; the detail lists them all.
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        AppError::Validation { detail, errors }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        AppError::Internal(cause.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => AppError::NotFound("no such job".into()),
            StoreError::Conflict(why) => AppError::Conflict(why),
            StoreError::DuplicateCustomId(id) => AppError::Validation {
                detail: format!("custom_id {id:?} is already used in this job"),
                errors: vec![FieldError {
                    field: "items[].custom_id".into(),
                    message: format!("{id:?} is already used in this job"),
                }],
            },
            other => AppError::internal(other),
        }
    }
}
