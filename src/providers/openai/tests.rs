//! Client behaviour against tiny scripted axum servers on 127.0.0.1: retries, back-off
//! headers, streaming uploads/downloads, and that the key never leaks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use secrecy::SecretString;

use super::*;

const KEY: &str = "sk-test-DO-NOT-LEAK-7f3a9c";

/// Longest any test may run; a deadline against hangs, not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        api_key: SecretString::from(KEY),
        request_timeout: Duration::from_secs(10),
        transfer_timeout: Duration::from_secs(20),
        max_retries: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        request_id_prefix: None,
    }
}

fn client(base_url: &str) -> OpenAiClient {
    OpenAiClient::new(config(base_url)).unwrap()
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("test exceeded its deadline")
}

/// What the scripted server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// One canned answer; `None` status means "never answer" (forces a client timeout).
#[derive(Clone)]
struct Reply {
    status: Option<u16>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn reply(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status: Some(status),
        headers: Vec::new(),
        body: body.into(),
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Clone, Default)]
struct Script {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn new(replies: impl IntoIterator<Item = Reply>) -> Script {
        Script {
            replies: Arc::new(Mutex::new(replies.into_iter().collect())),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn next_reply(&self) -> Reply {
        self.replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| reply(599, "script exhausted: the client sent too many requests"))
    }
}

fn to_response(reply: Reply) -> Response {
    let mut response = (
        StatusCode::from_u16(reply.status.unwrap()).unwrap(),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

async fn scripted(State(script): State<Script>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    script.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    });
    let reply = script.next_reply();
    if reply.status.is_none() {
        std::future::pending::<()>().await;
    }
    to_response(reply)
}

/// Serves `router` on 127.0.0.1:0 and returns its `/v1` base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

async fn serve_script(script: &Script) -> String {
    serve(Router::new().fallback(scripted).with_state(script.clone())).await
}

fn envelope(message: &str, kind: &str, code: Option<&str>) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
}

fn batch_json(id: &str, status: &str) -> String {
    serde_json::json!({
        "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
        "input_file_id": "file-in", "completion_window": "24h", "status": status,
        "output_file_id": null, "error_file_id": null, "created_at": 1711471533,
        "in_progress_at": null, "expires_at": null, "finalizing_at": null,
        "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null,
        "cancelled_at": null, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": {"shard": "s-1"}
    })
    .to_string()
}

#[tokio::test]
async fn retries_500_then_succeeds_with_bearer_auth() {
    let script = Script::new([
        reply(
            500,
            envelope("The server had an error", "server_error", None),
        ),
        reply(200, batch_json("batch_1", "in_progress")),
    ]);
    let client = client(&serve_script(&script).await);
    let batch = within(client.retrieve_batch("batch_1")).await.unwrap();
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.metadata_value("shard"), Some("s-1"));
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(client.attempt_count(), 2);
    for request in &seen {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1/batches/batch_1");
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            &format!("Bearer {KEY}")
        );
    }
}

#[tokio::test]
async fn retry_after_ms_is_preferred_over_a_huge_retry_after() {
    // Were `retry-after-ms` ignored, the one-hour Retry-After exceeds what the client waits
    // out, so the call would end in a 429 instead of succeeding on the second attempt.
    let script = Script::new([
        reply(
            429,
            envelope(
                "Rate limit reached",
                "requests",
                Some("rate_limit_exceeded"),
            ),
        )
        .header("retry-after-ms", "3")
        .header("retry-after", "3600"),
        reply(200, batch_json("batch_1", "validating")),
    ]);
    let client = client(&serve_script(&script).await);
    let batch = within(client.retrieve_batch("batch_1")).await.unwrap();
    assert_eq!(batch.status, BatchStatus::Validating);
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn a_wait_longer_than_the_client_keeps_is_handed_back() {
    let script = Script::new([
        reply(
            429,
            envelope("Slow down", "requests", Some("rate_limit_exceeded")),
        )
        .header("retry-after", "3600"),
        reply(200, batch_json("batch_1", "validating")),
    ]);
    let client = client(&serve_script(&script).await);
    let err = within(client.retrieve_batch("batch_1")).await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let script = Script::new([
        reply(
            429,
            envelope(
                "You exceeded your current quota",
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
        ),
        reply(200, batch_json("batch_1", "validating")),
    ]);
    let client = client(&serve_script(&script).await);
    let err = within(client.retrieve_batch("batch_1")).await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.code(), Some("insufficient_quota"));
    assert!(!err.is_retryable());
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 404, 408, 409] {
        let script = Script::new([
            reply(
                status,
                envelope(
                    "Cannot cancel a batch with status 'completed'.",
                    "invalid_request_error",
                    None,
                ),
            ),
            reply(200, batch_json("batch_1", "cancelling")),
        ]);
        let client = client(&serve_script(&script).await);
        let err = within(client.cancel_batch("batch_1")).await.unwrap_err();
        assert_eq!(err.status(), Some(status));
        let OpenAiError::Api { body, .. } = &err else {
            panic!("expected an API error, got {err:?}");
        };
        assert_eq!(body.r#type.as_deref(), Some("invalid_request_error"));
        assert!(body.message.starts_with("Cannot cancel"));
        assert_eq!(script.seen().len(), 1, "status {status} was retried");
        assert_eq!(script.seen()[0].path, "/v1/batches/batch_1/cancel");
    }
}

#[tokio::test]
async fn non_json_5xx_is_retried_until_exhausted() {
    let script = Script::new(std::iter::repeat_n(
        reply(502, "<html>Bad Gateway</html>"),
        10,
    ));
    let client = client(&serve_script(&script).await);
    let err = within(client.retrieve_file("file-1")).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert_eq!(err.api_error().unwrap().message, "<html>Bad Gateway</html>");
    assert_eq!(script.seen().len(), 4, "1 attempt + max_retries 3");
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported_as_transport() {
    // Bound and never listening: refused, and no other process can take the port meanwhile
    // (a listener bound and dropped frees it).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let client = client(&format!("http://{addr}/v1"));
    let err = within(client.retrieve_batch("batch_1")).await.unwrap_err();
    assert!(matches!(err, OpenAiError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(client.attempt_count(), 4);
}

#[tokio::test]
async fn an_attempt_that_times_out_is_retried() {
    let script = Script::new([
        Reply {
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
        },
        reply(200, batch_json("batch_1", "completed")),
    ]);
    let mut config = config(&serve_script(&script).await);
    // Long enough that the answered attempt never times out on a loaded machine; the
    // first one gets no answer at all, so it times out whatever the value.
    config.request_timeout = Duration::from_secs(2);
    let client = OpenAiClient::new(config).unwrap();
    let batch = within(client.retrieve_batch("batch_1")).await.unwrap();
    assert_eq!(batch.status, BatchStatus::Completed);
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn create_batch_and_lists_send_what_the_spec_says() {
    let list = serde_json::json!({"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}).to_string();
    let script = Script::new([
        reply(200, batch_json("batch_new", "validating")),
        reply(200, list.clone()),
        reply(200, list),
    ]);
    let client = client(&(serve_script(&script).await + "/"));
    let req = CreateBatchRequest {
        input_file_id: "file-in".into(),
        endpoint: "/v1/chat/completions".into(),
        completion_window: "24h".into(),
        metadata: Some([("shard".to_string(), "s-1".to_string())].into()),
    };
    let batch = within(client.create_batch(&req)).await.unwrap();
    assert_eq!(batch.id, "batch_new");
    let files = within(client.list_files(Some("batch"), Some(5), Some("file-x")))
        .await
        .unwrap();
    assert!(files.data.is_empty() && !files.has_more);
    let batches = within(client.list_batches(Some("batch_x"), Some(100)))
        .await
        .unwrap();
    assert!(batches.data.is_empty());

    let seen = script.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/batches")
    );
    assert_eq!(
        seen[0].headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
        serde_json::json!({"input_file_id":"file-in","endpoint":"/v1/chat/completions",
            "completion_window":"24h","metadata":{"shard":"s-1"}})
    );
    assert_eq!(seen[1].path, "/v1/files");
    assert_eq!(
        seen[1].query.as_deref(),
        Some("purpose=batch&limit=5&after=file-x")
    );
    assert_eq!(seen[2].path, "/v1/batches");
    assert_eq!(seen[2].query.as_deref(), Some("after=batch_x&limit=100"));
}

#[tokio::test]
async fn ids_are_escaped_into_one_path_segment() {
    let script = Script::new([reply(
        200,
        r#"{"id":"a/b?c","object":"file","deleted":true}"#,
    )]);
    let client = client(&serve_script(&script).await);
    let deleted = within(client.delete_file("a/b?c")).await.unwrap();
    assert!(deleted.deleted);
    let seen = script.seen();
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].path, "/v1/files/a%2Fb%3Fc");
}

#[tokio::test]
async fn chat_completion_returns_rate_limit_headers() {
    let completion = serde_json::json!({
        "id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",
        "choices":[{"index":0,"finish_reason":"stop","logprobs":null,
            "message":{"role":"assistant","content":"{}","refusal":null}}],
        "usage":{"prompt_tokens":90,"completion_tokens":3,"total_tokens":93}
    })
    .to_string();
    let script = Script::new([reply(200, completion)
        .header("x-ratelimit-limit-requests", "500")
        .header("x-ratelimit-remaining-requests", "499")
        .header("x-ratelimit-reset-requests", "120ms")
        .header("x-ratelimit-limit-tokens", "200000")
        .header("x-ratelimit-remaining-tokens", "199907")
        .header("x-ratelimit-reset-tokens", "6m0s")]);
    let client = client(&serve_script(&script).await);
    let body =
        serde_json::json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]});
    let response = within(client.chat_completion(&body)).await.unwrap();
    assert_eq!(
        response.completion.usage.unwrap().to_usage().input_tokens,
        90
    );
    assert_eq!(response.rate_limits.remaining_tokens, Some(199_907));
    assert_eq!(
        response.rate_limits.reset_tokens,
        Some(Duration::from_secs(360))
    );
    assert_eq!(
        response.rate_limits.reset_requests,
        Some(Duration::from_millis(120))
    );
    let seen = script.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
        body
    );
}

/// Every attempt carries `<prefix>-<n>` in `X-Client-Request-Id`, the prefix cleaned of
/// what OpenAI refuses; without a prefix the header is not sent.
#[tokio::test]
async fn each_attempt_carries_a_client_request_id_with_the_prefix() {
    let deleted = || reply(200, r#"{"id":"f","object":"file","deleted":true}"#);
    let script = Script::new([reply(500, "{}"), deleted()]);
    let prefixed = OpenAiClient::new(OpenAiConfig {
        request_id_prefix: Some("host ü/a-1".into()),
        ..config(&serve_script(&script).await)
    })
    .unwrap();
    within(prefixed.delete_file("f")).await.unwrap();
    let ids: Vec<_> = script
        .seen()
        .iter()
        .map(|s| {
            s.headers["x-client-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["hosta-1-1", "hosta-1-2"]);

    let script = Script::new([deleted()]);
    let plain = client(&serve_script(&script).await);
    within(plain.delete_file("f")).await.unwrap();
    assert!(script.seen()[0]
        .headers
        .get("x-client-request-id")
        .is_none());
}

/// The individual executor's governor pauses every sender on a 429; a retry inside the
/// call would hide it. Server errors are still retried here.
#[tokio::test]
async fn a_chat_429_comes_back_at_once_with_its_headers() {
    let limited = || {
        reply(
            429,
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        )
        .header("retry-after-ms", "1500")
        .header("x-ratelimit-limit-requests", "600")
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "100ms")
    };
    let script = Script::new([limited(), limited()]);
    let client = client(&serve_script(&script).await);
    let body = serde_json::json!({"model":"gpt-4o-mini","messages":[]});
    let err = within(client.chat_completion(&body)).await.unwrap_err();
    assert_eq!(
        script.seen().len(),
        1,
        "a 429 is not retried inside the call"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    let OpenAiError::Api { rate_limits, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(rate_limits.remaining_requests, Some(0));
    assert_eq!(rate_limits.reset_requests, Some(Duration::from_millis(100)));

    let script = Script::new([reply(503, "busy"), reply(200, "{}")]);
    let client = self::client(&serve_script(&script).await);
    within(client.chat_completion(&body)).await.unwrap();
    assert_eq!(script.seen().len(), 2, "a 503 is retried inside the call");
}

#[tokio::test]
async fn a_2xx_with_a_wrong_body_is_a_decode_error_not_retried() {
    let script = Script::new([
        reply(200, "not json"),
        reply(200, batch_json("b", "failed")),
    ]);
    let client = client(&serve_script(&script).await);
    let err = within(client.retrieve_batch("b")).await.unwrap_err();
    assert!(matches!(err, OpenAiError::Decode(_)), "{err:?}");
    assert_eq!(script.seen().len(), 1);
}

// --- Uploads ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Upload {
    purpose: Option<String>,
    filename: Option<String>,
    bytes: Vec<u8>,
    content_length: Option<u64>,
}

#[derive(Clone, Default)]
struct UploadState {
    uploads: Arc<Mutex<Vec<Upload>>>,
}

async fn receive_upload(
    State(state): State<UploadState>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let mut upload = Upload {
        content_length: headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        ..Upload::default()
    };
    while let Some(field) = multipart.next_field().await.unwrap() {
        match field.name() {
            Some("purpose") => upload.purpose = Some(field.text().await.unwrap()),
            Some("file") => {
                upload.filename = field.file_name().map(str::to_string);
                upload.bytes = field.bytes().await.unwrap().to_vec();
            }
            other => panic!("unexpected field {other:?}"),
        }
    }
    let attempt = {
        let mut uploads = state.uploads.lock().unwrap();
        uploads.push(upload.clone());
        uploads.len()
    };
    if attempt == 1 {
        // The first attempt fails after the body was read, so the retry must re-send it all.
        return to_response(reply(500, envelope("try again", "server_error", None)));
    }
    axum::Json(serde_json::json!({
        "id": "file-up", "object": "file", "bytes": upload.bytes.len(), "created_at": 1,
        "filename": upload.filename, "purpose": upload.purpose, "status": "processed",
        "expires_at": null, "status_details": null
    }))
    .into_response()
}

/// Bytes no text codec would survive intact, large enough to span many stream chunks.
fn sample_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn upload_streams_exact_bytes_filename_and_purpose_and_reopens_on_retry() {
    let state = UploadState::default();
    let router = Router::new()
        .route("/v1/files", post(receive_upload))
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    let client = client(&serve(router).await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.jsonl");
    let content = sample_bytes(3 * 1024 * 1024 + 17);
    std::fs::write(&path, &content).unwrap();

    let file = within(client.upload_file(&path, "shard-s1.jsonl", "batch"))
        .await
        .unwrap();
    assert_eq!(file.id, "file-up");
    assert_eq!(file.bytes, content.len() as i64);
    assert_eq!(file.filename, "shard-s1.jsonl");
    assert_eq!(file.purpose, "batch");

    let uploads = state.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 2);
    for upload in &uploads {
        assert_eq!(upload.purpose.as_deref(), Some("batch"));
        assert_eq!(upload.filename.as_deref(), Some("shard-s1.jsonl"));
        assert!(
            upload.bytes == content,
            "uploaded bytes differ from the file"
        );
        // A known length, not chunked transfer: OpenAI needs the size up front.
        assert!(upload.content_length.unwrap() > content.len() as u64);
    }
}

#[tokio::test]
async fn upload_of_a_missing_file_is_an_io_error_without_a_request() {
    let script = Script::new([]);
    let client = client(&serve_script(&script).await);
    let err = within(client.upload_file(
        std::path::Path::new("/nonexistent/batchlens/input.jsonl"),
        "x.jsonl",
        "batch",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, OpenAiError::Io(_)), "{err:?}");
    assert!(script.seen().is_empty());
}

// --- Downloads -------------------------------------------------------------------------------

#[tokio::test]
async fn download_writes_exact_bytes_after_a_retry() {
    let content = sample_bytes(2 * 1024 * 1024 + 5);
    let script = Script::new([
        reply(503, envelope("overloaded", "server_error", None)),
        reply(200, content.clone()),
    ]);
    let client = client(&serve_script(&script).await);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("output.jsonl");
    let written = within(client.download_file("file-out", &dest))
        .await
        .unwrap();
    assert_eq!(written, content.len() as u64);
    assert!(
        std::fs::read(&dest).unwrap() == content,
        "downloaded bytes differ"
    );
    assert!(!dir.path().join("output.jsonl.tmp").exists());
    let seen = script.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/v1/files/file-out/content");
}

#[tokio::test]
async fn failed_download_leaves_no_file_behind() {
    let script = Script::new([reply(
        404,
        envelope("No such File object: file-x", "invalid_request_error", None),
    )]);
    let client = client(&serve_script(&script).await);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("output.jsonl");
    let err = within(client.download_file("file-x", &dest))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A server that promises more bytes than it sends, then hangs up, on its first connection.
#[tokio::test]
async fn a_truncated_download_is_retried_from_scratch() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let content = b"{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n".to_vec();
    let served = content.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                served.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            let body = if connection == 0 {
                &served[..10]
            } else {
                &served[..]
            };
            socket.write_all(body).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    let client = client(&format!("http://{addr}/v1"));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.jsonl");
    let written = within(client.download_file("file-out", &dest))
        .await
        .unwrap();
    assert_eq!(written, content.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert_eq!(client.attempt_count(), 2);
}

// --- Secrets ---------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_key_appears_in_no_debug_output_and_no_log() {
    let config = config("http://127.0.0.1:9/v1");
    assert!(!format!("{config:?}").contains(KEY));
    assert!(!format!("{config:#?}").contains("DO-NOT-LEAK"));
    let client = OpenAiClient::new(config).unwrap();
    assert!(!format!("{client:?}").contains(KEY));
    assert!(!format!("{client:#?}").contains("DO-NOT-LEAK"));

    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let script = Script::new([
        reply(500, envelope("boom", "server_error", None)),
        reply(
            401,
            envelope(
                "Incorrect API key provided",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
        ),
    ]);
    let client = self::client(&serve_script(&script).await);
    let err = within(client.retrieve_batch("batch_1")).await.unwrap_err();
    assert!(!format!("{err:?} {err}").contains(KEY));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("openai request"),
        "no attempt was logged:\n{logs}"
    );
    assert!(
        logs.contains("status=401") && logs.contains("attempt=2"),
        "{logs}"
    );
    assert!(
        !logs.contains("DO-NOT-LEAK"),
        "the key leaked into logs:\n{logs}"
    );
}

#[test]
fn bad_configuration_is_refused() {
    let bad = |mutate: fn(&mut OpenAiConfig)| {
        let mut config = config("https://api.openai.com/v1");
        mutate(&mut config);
        matches!(OpenAiClient::new(config), Err(OpenAiError::Config(_)))
    };
    assert!(!bad(|_| {}));
    // An empty key is allowed: the service starts without one and OpenAI answers 401.
    assert!(!bad(|c| c.api_key = SecretString::from("")));
    assert!(bad(|c| c.api_key = SecretString::from("sk-with\nnewline")));
    assert!(bad(|c| c.base_url = "api.openai.com/v1".into()));
    assert!(bad(|c| c.base_url = "ftp://api.openai.com/v1".into()));
    assert!(bad(
        |c| c.base_url = "https://user:pw@api.openai.com/v1".into()
    ));
    assert!(bad(|c| c.request_timeout = Duration::ZERO));
    let err = OpenAiClient::new(OpenAiConfig {
        api_key: SecretString::from("sk-with\nnewline-DO-NOT-LEAK"),
        ..config("https://api.openai.com/v1")
    })
    .unwrap_err();
    assert!(!err.to_string().contains("DO-NOT-LEAK"));
}
