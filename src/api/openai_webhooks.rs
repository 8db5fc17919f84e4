//! `POST /v1/openai/webhooks`: OpenAI's batch events in. No API key: the Standard Webhooks
//! signature (`openai.webhook_secret`) is the credential, checked over the exact bytes
//! before anything is parsed; an unverified delivery is a 401 and changes nothing.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::{body_rejection, parse_json, ApiError, Problem};
use super::AppState;
use crate::app::openai_webhooks::is_batch_event;
use crate::metrics::OPENAI_WEBHOOKS;
use crate::signing::{self, Received};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openai_webhook))
}

/// An OpenAI event as delivered: only its type and the id of what it is about are read.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"object": "event", "id": "evt_685343a1381c819085d44c354e1b330e",
    "type": "batch.completed", "created_at": 1750287018,
    "data": {"id": "batch_abc123"}}))]
pub struct OpenAiEvent {
    /// `batch.completed`, `batch.failed`, `batch.expired`, `batch.cancelled`; other types
    /// are recorded and otherwise ignored.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<OpenAiEventData>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAiEventData {
    /// The batch id, for batch events.
    #[serde(default)]
    pub id: Option<String>,
}

/// What the delivery did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"event": "batch.completed", "batch_id": "batch_abc123",
    "replay": false, "shards_due": 1}))]
pub struct OpenAiWebhookAck {
    /// The event type.
    pub event: String,
    /// The batch it names (null for events that name none).
    pub batch_id: Option<String>,
    /// This `webhook-id` was received before: nothing changed.
    pub replay: bool,
    /// In-flight shards of the batch made due for polling now.
    pub shards_due: u64,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn counted(outcome: &'static str) {
    metrics::counter!(OPENAI_WEBHOOKS, "outcome" => outcome).increment(1);
}

/// Receives OpenAI's batch webhooks, verified as Standard Webhooks with
/// `openai.webhook_secret` (`webhook-id`, `webhook-timestamp` within 5 minutes,
/// `webhook-signature`: any `v1,<base64>` of the list may match). A verified batch event
/// makes the batch's in-flight shards due for polling at once; the poller still asks
/// OpenAI for the batch before ingesting. A replayed `webhook-id` changes nothing. No API
/// key is needed on this path.
#[utoipa::path(post, path = "/v1/openai/webhooks", tag = "openai",
    request_body = OpenAiEvent,
    params(
        ("webhook-id" = String, Header, description = "The event's delivery id; a replay of one is harmless"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; refused more than 5 minutes from the server's clock"),
        ("webhook-signature" = String, Header, description = "Space-separated `v1,<base64 HMAC-SHA256 of \"id.timestamp.body\">` list"),
    ),
    responses(
        (status = 200, description = "Verified and taken (or a replay, changing nothing)", body = OpenAiWebhookAck),
        (status = 400, description = "Verified, but the body is not an event", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not verified: no secret configured, a header missing, a stale timestamp or no matching signature; nothing changed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn openai_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<OpenAiWebhookAck>, ApiError> {
    let body = body.map_err(|e| body_rejection(e, state.app.settings.server.max_body_bytes))?;
    let received = Received {
        id: header(&headers, "webhook-id"),
        timestamp: header(&headers, "webhook-timestamp"),
        signature: header(&headers, "webhook-signature"),
    };
    let key = state.app.openai_webhook_key();
    if let Err(why) = signing::verify(key.as_deref(), received, &body, Utc::now().timestamp()) {
        counted("unverified");
        tracing::warn!(reason = %why, "OpenAI webhook refused");
        return Err(ApiError::UnverifiedWebhook(why.to_string()));
    }
    let id = received.id.unwrap_or_default();
    let event: OpenAiEvent = parse_json(&body).inspect_err(|_| counted("bad_request"))?;
    let batch_id = event.data.and_then(|d| d.id);
    if is_batch_event(&event.kind) && batch_id.is_none() {
        counted("bad_request");
        return Err(ApiError::BadRequest {
            detail: "data.id: a batch event names its batch".into(),
            errors: vec![super::problem::FieldError {
                field: "data.id".into(),
                message: "a batch event names its batch".into(),
            }],
        });
    }
    let receipt = state
        .app
        .openai_webhook(id, &event.kind, batch_id.as_deref())
        .await?;
    counted(match (receipt.replay, is_batch_event(&event.kind)) {
        (true, _) => "replay",
        (false, true) => "accepted",
        (false, false) => "ignored",
    });
    tracing::info!(webhook_id = id, event = %event.kind, batch = ?batch_id,
        replay = receipt.replay, shards_due = receipt.shards_due, "OpenAI webhook received");
    Ok(Json(OpenAiWebhookAck {
        event: event.kind,
        batch_id,
        replay: receipt.replay,
        shards_due: receipt.shards_due,
    }))
}
