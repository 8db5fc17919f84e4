//! Wire types of the OpenAI Files, Batches and Chat Completions endpoints, and of batch
//! output/error lines. Lenient by design: unknown fields are ignored and every field the
//! spec lets be absent or null deserializes from either.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::Usage;

/// Deserializes `null` as the type's default, for fields we default when absent anyway.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Accepts a string, a number or a bool where the spec promises a string: error `code`s and
/// `param`s have been seen as numbers from some gateways, and losing the whole error envelope
/// over that would hide the real failure.
fn lenient_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The `error` object of OpenAI's error envelope `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    #[serde(
        rename = "type",
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub r#type: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub param: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub code: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ApiError,
}

impl ApiError {
    /// Longest non-JSON body kept as a message: an HTML error page from a proxy is noise past
    /// its first lines.
    const MAX_RAW_MESSAGE: usize = 2048;

    /// Reads an error body: the OpenAI envelope when it is one, otherwise the raw text (cut
    /// short) as the message, so a proxy's HTML or plain-text error still says something.
    pub fn from_body(body: &[u8]) -> ApiError {
        if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
            return envelope.error;
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut end = text.len().min(Self::MAX_RAW_MESSAGE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ApiError {
            message: text[..end].to_string(),
            ..ApiError::default()
        }
    }

    /// Reads the envelope out of an already-parsed JSON value (a batch error line's body).
    pub fn from_value(body: &serde_json::Value) -> Option<ApiError> {
        serde_json::from_value::<ErrorEnvelope>(body.clone())
            .ok()
            .map(|e| e.error)
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// A file stored at OpenAI (schema `OpenAIFile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub object: String,
    #[serde(default, deserialize_with = "null_default")]
    pub bytes: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "null_default")]
    pub filename: String,
    #[serde(default, deserialize_with = "null_default")]
    pub purpose: String,
    /// Deprecated by OpenAI (`uploaded`, `processed`, `error`), still sent.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_details: Option<String>,
}

/// One page of `GET /files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    #[serde(default, deserialize_with = "null_default")]
    pub data: Vec<FileObject>,
    #[serde(default)]
    pub first_id: Option<String>,
    #[serde(default)]
    pub last_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub has_more: bool,
}

/// Answer of `DELETE /files/{file_id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedFile {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub object: String,
    #[serde(default, deserialize_with = "null_default")]
    pub deleted: bool,
}

// ---------------------------------------------------------------------------------------------
// Batches

/// Body of `POST /batches`. Only the fields that are set are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateBatchRequest {
    pub input_file_id: String,
    /// e.g. `/v1/chat/completions`; every input line's `url` must equal it.
    pub endpoint: String,
    /// Only `"24h"` is accepted.
    pub completion_window: String,
    /// At most 16 pairs; keys ≤ 64 chars, values ≤ 512 chars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Where an OpenAI batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
    /// A status this client does not know yet; treat as "still running, poll again".
    #[serde(other)]
    Unknown,
}

impl BatchStatus {
    /// `completed`, `failed`, `expired` and `cancelled` never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Failed => "failed",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file-level validation failure of a batch (schema `BatchError`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    #[serde(default, deserialize_with = "lenient_string")]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub param: Option<String>,
    /// Input-file line the error refers to.
    #[serde(default)]
    pub line: Option<i64>,
}

/// `Batch.errors`: `{"object": "list", "data": [BatchError]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub data: Vec<BatchError>,
}

/// `Batch.request_counts`: `completed` succeeded, `failed` failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    #[serde(default, deserialize_with = "null_default")]
    pub total: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub completed: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub failed: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

/// `Batch.usage` totals (only batches created after 2025-09-07 carry it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchUsage {
    #[serde(default, deserialize_with = "null_default")]
    pub input_tokens: i64,
    #[serde(default)]
    pub input_tokens_details: Option<InputTokensDetails>,
    #[serde(default, deserialize_with = "null_default")]
    pub output_tokens: i64,
    #[serde(default)]
    pub output_tokens_details: Option<OutputTokensDetails>,
    #[serde(default, deserialize_with = "null_default")]
    pub total_tokens: i64,
}

impl BatchUsage {
    pub fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            cached_input_tokens: self
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            output_tokens: self.output_tokens,
            reasoning_tokens: self
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// An OpenAI batch (schema `Batch`). Only `id` and `status` are insisted on; the other
/// spec-required fields default rather than fail, so one odd response cannot wedge a poller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub object: String,
    #[serde(default, deserialize_with = "null_default")]
    pub endpoint: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub errors: Option<BatchErrors>,
    #[serde(default, deserialize_with = "null_default")]
    pub input_file_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub completion_window: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: i64,
    #[serde(default)]
    pub in_progress_at: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub finalizing_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub failed_at: Option<i64>,
    #[serde(default)]
    pub expired_at: Option<i64>,
    #[serde(default)]
    pub cancelling_at: Option<i64>,
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub usage: Option<BatchUsage>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Batch {
    /// The `metadata` value under `key`, if any.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key).map(String::as_str)
    }
}

/// One page of `GET /batches`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchList {
    #[serde(default, deserialize_with = "null_default")]
    pub data: Vec<Batch>,
    #[serde(default)]
    pub first_id: Option<String>,
    #[serde(default)]
    pub last_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub has_more: bool,
}

// ---------------------------------------------------------------------------------------------
// Chat Completions

/// The assistant message of a choice. A structured-output answer is a JSON *string* in
/// `content`; a refusal comes in `refusal` with `content` null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssistantMessage {
    #[serde(default, deserialize_with = "null_default")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default, deserialize_with = "null_default")]
    pub index: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub message: AssistantMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`, `function_call`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
    #[serde(default)]
    pub audio_tokens: Option<i64>,
    #[serde(default)]
    pub text_tokens: Option<i64>,
    #[serde(default)]
    pub image_tokens: Option<i64>,
    #[serde(default)]
    pub cache_write_tokens: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
    #[serde(default)]
    pub accepted_prediction_tokens: Option<i64>,
    #[serde(default)]
    pub rejected_prediction_tokens: Option<i64>,
    #[serde(default)]
    pub audio_tokens: Option<i64>,
    #[serde(default)]
    pub text_tokens: Option<i64>,
}

/// `usage` of a chat completion (schema `CompletionUsage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionUsage {
    /// All input tokens, image and cached ones included.
    #[serde(default, deserialize_with = "null_default")]
    pub prompt_tokens: i64,
    /// All output tokens, reasoning ones included.
    #[serde(default, deserialize_with = "null_default")]
    pub completion_tokens: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub total_tokens: i64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

impl CompletionUsage {
    pub fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            cached_input_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            output_tokens: self.completion_tokens,
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// A `chat.completion` object (schema `CreateChatCompletionResponse`, the fields we read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCompletion {
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub object: String,
    #[serde(default, deserialize_with = "null_default")]
    pub created: i64,
    /// The snapshot that actually answered, e.g. `gpt-4o-mini-2024-07-18`.
    #[serde(default, deserialize_with = "null_default")]
    pub model: String,
    #[serde(default, deserialize_with = "null_default")]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<CompletionUsage>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletion {
    /// The first choice's message, the only one when `n` is 1.
    pub fn first_message(&self) -> Option<&AssistantMessage> {
        self.choices.first().map(|c| &c.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Batch output / error file lines

/// The HTTP answer one batch line got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchLineResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub status_code: u16,
    #[serde(default)]
    pub request_id: Option<String>,
    /// The endpoint's JSON answer: a chat completion on 200, an error envelope otherwise.
    #[serde(default)]
    pub body: serde_json::Value,
}

impl BatchLineResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// The body read as a chat completion (meaningful when `is_success`).
    pub fn chat_completion(&self) -> Result<ChatCompletion, serde_json::Error> {
        ChatCompletion::deserialize(&self.body)
    }

    /// The body's error envelope, when it has one.
    pub fn api_error(&self) -> Option<ApiError> {
        ApiError::from_value(&self.body)
    }
}

/// Why a batch line never got a response, e.g. `batch_expired`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLineError {
    #[serde(default, deserialize_with = "lenient_string")]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// One line of a batch output or error file. `custom_id` is the only reliable join key:
/// lines come in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchOutputLine {
    #[serde(default)]
    pub id: Option<String>,
    pub custom_id: String,
    #[serde(default)]
    pub response: Option<BatchLineResponse>,
    #[serde(default)]
    pub error: Option<BatchLineError>,
}

impl BatchOutputLine {
    /// Parses one JSONL line (callers skip blank lines first).
    pub fn parse(line: &str) -> Result<BatchOutputLine, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's `Batch` example (components.schemas.Batch x-oaiMeta), explicit nulls kept.
    /// The spec text has a trailing comma inside `metadata`, which is not JSON; it is removed.
    const SPEC_BATCH: &str = r#"{
        "id": "batch_abc123",
        "object": "batch",
        "endpoint": "/v1/completions",
        "model": "gpt-5-2025-08-07",
        "errors": null,
        "input_file_id": "file-abc123",
        "completion_window": "24h",
        "status": "completed",
        "output_file_id": "file-cvaTdG",
        "error_file_id": "file-HOWS94",
        "created_at": 1711471533,
        "in_progress_at": 1711471538,
        "expires_at": 1711557933,
        "finalizing_at": 1711493133,
        "completed_at": 1711493163,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": 100, "completed": 95, "failed": 5},
        "usage": {
            "input_tokens": 1500,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 500,
            "output_tokens_details": {"reasoning_tokens": 300},
            "total_tokens": 2000
        },
        "metadata": {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}
    }"#;

    #[test]
    fn spec_batch_example_parses() {
        let b: Batch = serde_json::from_str(SPEC_BATCH).unwrap();
        assert_eq!(b.id, "batch_abc123");
        assert_eq!(b.status, BatchStatus::Completed);
        assert!(b.status.is_terminal());
        assert_eq!(b.model.as_deref(), Some("gpt-5-2025-08-07"));
        assert_eq!(b.errors, None);
        assert_eq!(b.output_file_id.as_deref(), Some("file-cvaTdG"));
        assert_eq!(b.error_file_id.as_deref(), Some("file-HOWS94"));
        assert_eq!(b.in_progress_at, Some(1711471538));
        assert_eq!(b.failed_at, None);
        assert_eq!(b.cancelled_at, None);
        assert_eq!(
            b.request_counts,
            Some(RequestCounts {
                total: 100,
                completed: 95,
                failed: 5
            })
        );
        let usage = b.usage.unwrap().to_usage();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 1500,
                cached_input_tokens: 1024,
                output_tokens: 500,
                reasoning_tokens: 300
            }
        );
        assert_eq!(b.metadata_value("customer_id"), Some("user_123456789"));
    }

    /// The `createBatch` example: a fresh batch, every optional field an explicit null.
    #[test]
    fn validating_batch_with_nulls_parses() {
        let json = r#"{"id":"batch_abc123","object":"batch","endpoint":"/v1/chat/completions",
            "errors":null,"input_file_id":"file-abc123","completion_window":"24h",
            "status":"validating","output_file_id":null,"error_file_id":null,
            "created_at":1711471533,"in_progress_at":null,"expires_at":null,
            "finalizing_at":null,"completed_at":null,"failed_at":null,"expired_at":null,
            "cancelling_at":null,"cancelled_at":null,
            "request_counts":{"total":0,"completed":0,"failed":0},
            "metadata":null,"usage":null,"model":null}"#;
        let b: Batch = serde_json::from_str(json).unwrap();
        assert_eq!(b.status, BatchStatus::Validating);
        assert!(!b.status.is_terminal());
        assert_eq!(b.output_file_id, None);
        assert_eq!(b.metadata, None);
        assert_eq!(b.usage, None);
        assert_eq!(b.request_counts.unwrap().total, 0);
    }

    #[test]
    fn failed_batch_errors_parse() {
        let json = r#"{"id":"batch_1","status":"failed","created_at":1,
            "errors":{"object":"list","data":[
              {"code":"token_limit_exceeded","message":"Enqueued token limit reached","param":null,"line":null},
              {"code":"invalid_json_line","message":"bad","param":"body","line":7}]}}"#;
        let b: Batch = serde_json::from_str(json).unwrap();
        let errors = b.errors.unwrap().data;
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].code.as_deref(), Some("token_limit_exceeded"));
        assert_eq!(errors[0].line, None);
        assert_eq!(errors[1].line, Some(7));
        assert_eq!(errors[1].param.as_deref(), Some("body"));
    }

    #[test]
    fn unknown_fields_and_statuses_are_tolerated() {
        let json = r#"{"id":"batch_1","object":"batch","status":"paused_for_reasons",
            "created_at":5,"brand_new_field":{"nested":[1,2,3]},
            "request_counts":{"total":3,"completed":1,"failed":0,"skipped":2},
            "output_expires_after":{"anchor":"created_at","seconds":3600}}"#;
        let b: Batch = serde_json::from_str(json).unwrap();
        assert_eq!(b.status, BatchStatus::Unknown);
        assert!(!b.status.is_terminal());
        assert_eq!(b.request_counts.unwrap().completed, 1);

        let file: FileObject = serde_json::from_str(
            r#"{"id":"file-1","object":"file","bytes":12,"created_at":1,"filename":"a.jsonl",
                "purpose":"batch","status":"processed","expires_at":null,
                "status_details":null,"shiny":true}"#,
        )
        .unwrap();
        assert_eq!(file.bytes, 12);
        assert_eq!(file.expires_at, None);
        assert_eq!(file.status.as_deref(), Some("processed"));
    }

    #[test]
    fn all_statuses_round_trip() {
        for (text, status) in [
            ("validating", BatchStatus::Validating),
            ("failed", BatchStatus::Failed),
            ("in_progress", BatchStatus::InProgress),
            ("finalizing", BatchStatus::Finalizing),
            ("completed", BatchStatus::Completed),
            ("expired", BatchStatus::Expired),
            ("cancelling", BatchStatus::Cancelling),
            ("cancelled", BatchStatus::Cancelled),
        ] {
            let parsed: BatchStatus = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(parsed, status);
            assert_eq!(status.as_str(), text);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(text)
            );
        }
        let terminal: Vec<_> = [
            BatchStatus::Validating,
            BatchStatus::Failed,
            BatchStatus::InProgress,
            BatchStatus::Finalizing,
            BatchStatus::Completed,
            BatchStatus::Expired,
            BatchStatus::Cancelling,
            BatchStatus::Cancelled,
        ]
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
        assert_eq!(
            terminal,
            [
                BatchStatus::Failed,
                BatchStatus::Completed,
                BatchStatus::Expired,
                BatchStatus::Cancelled
            ]
        );
    }

    #[test]
    fn create_batch_request_serializes_only_what_is_set() {
        let mut req = CreateBatchRequest {
            input_file_id: "file-1".into(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"})
        );
        req.metadata = Some(BTreeMap::from([("shard".to_string(), "s1".to_string())]));
        assert_eq!(
            serde_json::to_value(&req).unwrap()["metadata"],
            serde_json::json!({"shard":"s1"})
        );
    }

    #[test]
    fn file_list_and_deleted_parse() {
        let list: FileList = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"file-1","object":"file","bytes":1,"created_at":1,
                "filename":"x","purpose":"batch","status":"processed"}],
                "first_id":"file-1","last_id":"file-1","has_more":false}"#,
        )
        .unwrap();
        assert_eq!(list.data.len(), 1);
        assert_eq!(list.last_id.as_deref(), Some("file-1"));
        let empty: FileList = serde_json::from_str(
            r#"{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}"#,
        )
        .unwrap();
        assert!(empty.data.is_empty() && empty.first_id.is_none());
        let deleted: DeletedFile =
            serde_json::from_str(r#"{"id":"file-1","object":"file","deleted":true}"#).unwrap();
        assert!(deleted.deleted);
    }

    #[test]
    fn chat_completion_parses_and_maps_usage() {
        let json = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,
            "model":"gpt-4o-mini-2024-07-18","system_fingerprint":null,"service_tier":"default",
            "choices":[{"index":0,"logprobs":null,"finish_reason":"stop",
                "message":{"role":"assistant","content":"{\"a\":1}","refusal":null,"annotations":[]}}],
            "usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,
                "prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0,"image_tokens":85},
                "completion_tokens_details":{"reasoning_tokens":8,"audio_tokens":0,
                    "accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
        let c: ChatCompletion = serde_json::from_str(json).unwrap();
        assert_eq!(
            c.first_message().unwrap().content.as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            c.usage.unwrap().to_usage(),
            Usage {
                input_tokens: 100,
                cached_input_tokens: 64,
                output_tokens: 20,
                reasoning_tokens: 8
            }
        );
        // Details absent or null: zero, not a failure.
        let bare: CompletionUsage = serde_json::from_str(
            r#"{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":null}"#,
        )
        .unwrap();
        assert_eq!(bare.to_usage().cached_input_tokens, 0);
        assert_eq!(bare.to_usage().reasoning_tokens, 0);
    }

    #[test]
    fn batch_output_lines_of_all_three_kinds_parse() {
        let ok = BatchOutputLine::parse(
            r#"{"id":"batch_req_1","custom_id":"img-1","response":{"status_code":200,
                "request_id":"req_1","body":{"id":"chatcmpl-1","object":"chat.completion",
                "created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop",
                "message":{"role":"assistant","content":"hi","refusal":null}}],
                "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}},"error":null}"#,
        )
        .unwrap();
        let response = ok.response.as_ref().unwrap();
        assert!(response.is_success());
        assert_eq!(
            response
                .chat_completion()
                .unwrap()
                .first_message()
                .unwrap()
                .content
                .as_deref(),
            Some("hi")
        );
        assert!(ok.error.is_none());

        let rejected = BatchOutputLine::parse(
            r#"{"id":"batch_req_2","custom_id":"img-2","response":{"status_code":400,
                "request_id":"req_2","body":{"error":{"message":"Invalid image","type":
                "invalid_request_error","param":"messages","code":"invalid_image_url"}}},"error":null}"#,
        )
        .unwrap();
        let response = rejected.response.as_ref().unwrap();
        assert!(!response.is_success());
        let err = response.api_error().unwrap();
        assert_eq!(err.code.as_deref(), Some("invalid_image_url"));
        assert_eq!(err.r#type.as_deref(), Some("invalid_request_error"));

        let expired = BatchOutputLine::parse(
            r#"{"id":"batch_req_3","custom_id":"img-3","response":null,"error":{"code":
                "batch_expired","message":"This request could not be executed before the completion window expired."}}"#,
        )
        .unwrap();
        assert!(expired.response.is_none());
        assert_eq!(
            expired.error.unwrap().code.as_deref(),
            Some("batch_expired")
        );
    }

    #[test]
    fn api_error_tolerates_non_json_and_odd_codes() {
        let e = ApiError::from_body(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(e.param, None);
        let e = ApiError::from_body(b"<html>502 Bad Gateway</html>");
        assert_eq!(e.message, "<html>502 Bad Gateway</html>");
        assert_eq!(e.code, None);
        let e = ApiError::from_body(
            br#"{"error":{"message":"m","type":null,"param":null,"code":429}}"#,
        );
        assert_eq!(e.code.as_deref(), Some("429"));
        let long = "é".repeat(5000);
        assert!(ApiError::from_body(long.as_bytes()).message.len() <= ApiError::MAX_RAW_MESSAGE);
    }
}
