//! The HTTP side of the OpenAI client: configuration, authentication, the retry loop, and
//! one method per endpoint batchlens calls. Uploads stream from disk and downloads stream to
//! disk, so a 190 MB batch file never sits in memory.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::error::OpenAiError;
use super::ratelimit::RateLimitHeaders;
use super::retry::{parse_retry_after, RetryPolicy};
use super::types::{
    ApiError, Batch, BatchList, ChatCompletion, CreateBatchRequest, DeletedFile, FileList,
    FileObject,
};

/// Chunk size when reading an upload from disk; reqwest's default of 4 KiB means 50,000
/// tiny writes for one batch file.
const UPLOAD_CHUNK: usize = 256 * 1024;
const DOWNLOAD_BUFFER: usize = 1024 * 1024;

/// How to reach OpenAI. `Debug` prints the key as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1`; a trailing slash is fine.
    pub base_url: String,
    pub api_key: SecretString,
    /// Whole-attempt limit for ordinary calls (chat completions included).
    pub request_timeout: Duration,
    /// Whole-attempt limit for file uploads and downloads.
    pub transfer_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Sent as `X-Client-Request-Id: <prefix>-<n>`, `n` counting this client's attempts:
    /// OpenAI keeps the id with the request (support can find a call that never answered),
    /// and several replicas' calls to one account can be told apart. The service passes
    /// its replica id; characters other than ASCII letters, digits, `-`, `.` and `_` are
    /// dropped and it is cut to [`MAX_REQUEST_ID_PREFIX`] (OpenAI refuses ids that are not
    /// ASCII or longer than 512). `None`: the header is not sent.
    pub request_id_prefix: Option<String>,
}

/// Longest request id prefix kept (see [`OpenAiConfig::request_id_prefix`]).
pub const MAX_REQUEST_ID_PREFIX: usize = 400;

impl OpenAiConfig {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    /// The given endpoint and key with default timeouts and retries.
    pub fn new(base_url: impl Into<String>, api_key: SecretString) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key,
            // Reasoning models answering about an image can take minutes.
            request_timeout: Duration::from_secs(300),
            transfer_timeout: Duration::from_secs(1800),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            request_id_prefix: None,
        }
    }
}

/// A chat completion with the rate-limit headers that came with it.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    pub completion: ChatCompletion,
    pub rate_limits: RateLimitHeaders,
}

/// Typed client for OpenAI Files, Batches and Chat Completions. Cheap to clone; clones share
/// one connection pool.
#[derive(Clone)]
pub struct OpenAiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    request_timeout: Duration,
    transfer_timeout: Duration,
    policy: RetryPolicy,
    attempts: AtomicU64,
    request_id_prefix: Option<String>,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("base_url", &self.inner.base.as_str())
            .field("request_timeout", &self.inner.request_timeout)
            .field("transfer_timeout", &self.inner.transfer_timeout)
            .field("retry", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> Result<Self, OpenAiError> {
        let base = parse_base_url(&config.base_url)?;
        if config.request_timeout.is_zero() || config.transfer_timeout.is_zero() {
            return Err(OpenAiError::Config(
                "request_timeout and transfer_timeout must be positive".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        // Without a key the service still starts (a laptop trying the API); OpenAI then
        // answers 401 and the items fail saying so.
        let key = config.api_key.expose_secret().trim();
        if !key.is_empty() {
            let mut auth = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                OpenAiError::Config(
                    "the OpenAI API key contains characters not allowed in an HTTP header".into(),
                )
            })?;
            auth.set_sensitive(true);
            headers.insert(AUTHORIZATION, auth);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("batchlens/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.request_timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| OpenAiError::Config(format!("building the HTTP client: {e}")))?;
        Ok(OpenAiClient {
            inner: Arc::new(Inner {
                http,
                base,
                request_timeout: config.request_timeout,
                transfer_timeout: config.transfer_timeout,
                policy: RetryPolicy {
                    max_retries: config.max_retries,
                    backoff_base: config.backoff_base,
                    backoff_max: config.backoff_max,
                },
                attempts: AtomicU64::new(0),
                request_id_prefix: config
                    .request_id_prefix
                    .as_deref()
                    .map(request_id_prefix)
                    .filter(|p| !p.is_empty()),
            }),
        })
    }

    /// HTTP attempts this client and its clones have started, retries included.
    pub fn attempt_count(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    // --- Files ---------------------------------------------------------------------------

    /// `POST /files`: uploads `path` as `filename` with `purpose` (`batch` for batch input),
    /// streamed from disk with a known length. Each retry re-opens the file.
    pub async fn upload_file(
        &self,
        path: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, OpenAiError> {
        let url = self.url(&["files"]);
        self.with_retries(&Method::POST, &url, On429::WaitHere, |attempt| {
            let url = url.clone();
            async move {
                let file = tokio::fs::File::open(path).await?;
                let length = file.metadata().await?.len();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK);
                let part = Part::stream_with_length(Body::wrap_stream(stream), length)
                    .file_name(filename.to_string())
                    .mime_str("application/octet-stream")
                    .map_err(OpenAiError::from_reqwest)?;
                // `purpose` first, so a server reading the stream knows it before the bytes.
                let form = Form::new()
                    .text("purpose", purpose.to_string())
                    .part("file", part);
                let request = self
                    .inner
                    .http
                    .post(url.clone())
                    .timeout(self.inner.transfer_timeout)
                    .multipart(form);
                let response = self.send(request, &Method::POST, &url, attempt).await?;
                read_json(response).await
            }
        })
        .await
    }

    /// `GET /files/{file_id}`.
    pub async fn retrieve_file(&self, file_id: &str) -> Result<FileObject, OpenAiError> {
        self.call_json(Method::GET, &["files", file_id], &[], None)
            .await
    }

    /// `GET /files`, newest first (OpenAI's default order); `after` is a file id cursor.
    pub async fn list_files(
        &self,
        purpose: Option<&str>,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<FileList, OpenAiError> {
        let mut query = Vec::new();
        if let Some(purpose) = purpose {
            query.push(("purpose", purpose.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        self.call_json(Method::GET, &["files"], &query, None).await
    }

    /// `GET /files/{file_id}/content`, streamed into `dest`. Bytes go to `dest` + `.tmp`
    /// first and are renamed into place once complete, so `dest` is never half-written.
    /// A failed attempt starts over. Returns the number of bytes written.
    pub async fn download_file(&self, file_id: &str, dest: &Path) -> Result<u64, OpenAiError> {
        let url = self.url(&["files", file_id, "content"]);
        let tmp = tmp_path(dest);
        let tmp = tmp.as_path();
        self.with_retries(&Method::GET, &url, On429::WaitHere, |attempt| {
            let url = url.clone();
            async move {
                let request = self
                    .inner
                    .http
                    .get(url.clone())
                    .timeout(self.inner.transfer_timeout);
                let response = self.send(request, &Method::GET, &url, attempt).await?;
                match write_body(response, tmp).await {
                    Ok(written) => {
                        tokio::fs::rename(tmp, dest).await?;
                        Ok(written)
                    }
                    Err(err) => {
                        // Best effort: the next attempt truncates it anyway.
                        let _ = tokio::fs::remove_file(tmp).await;
                        Err(err)
                    }
                }
            }
        })
        .await
    }

    /// `DELETE /files/{file_id}`.
    pub async fn delete_file(&self, file_id: &str) -> Result<DeletedFile, OpenAiError> {
        self.call_json(Method::DELETE, &["files", file_id], &[], None)
            .await
    }

    // --- Batches -------------------------------------------------------------------------

    /// `POST /batches`.
    ///
    /// Not idempotent: when an attempt times out or the connection drops after OpenAI
    /// accepted it, the retry creates a second batch. It is retried anyway; callers put
    /// their own id in `metadata` and reconcile with [`OpenAiClient::list_batches`] (adopt
    /// the batch carrying it, cancel extras) rather than trusting one answer.
    pub async fn create_batch(&self, req: &CreateBatchRequest) -> Result<Batch, OpenAiError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| OpenAiError::Decode(format!("encoding the batch request: {e}")))?;
        self.call_json(Method::POST, &["batches"], &[], Some(Bytes::from(body)))
            .await
    }

    /// `GET /batches/{batch_id}`.
    pub async fn retrieve_batch(&self, batch_id: &str) -> Result<Batch, OpenAiError> {
        self.call_json(Method::GET, &["batches", batch_id], &[], None)
            .await
    }

    /// `GET /batches`, newest first; `after` is a batch id cursor, `limit` 1–100 (default 20).
    pub async fn list_batches(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<BatchList, OpenAiError> {
        let mut query = Vec::new();
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.call_json(Method::GET, &["batches"], &query, None)
            .await
    }

    /// `POST /batches/{batch_id}/cancel`. A batch already terminal answers 409 (not retried).
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<Batch, OpenAiError> {
        self.call_json(Method::POST, &["batches", batch_id, "cancel"], &[], None)
            .await
    }

    // --- Chat ----------------------------------------------------------------------------

    /// `POST /chat/completions` with `body` sent as is. Server errors and transport
    /// failures are retried like every call; a 429 comes back at once (with its
    /// `retry_after` and `rate_limits`), for the caller's governor to hold every sender to
    /// the model, not only this one. A caller pacing itself reads `rate_limits`.
    pub async fn chat_completion(
        &self,
        body: &serde_json::Value,
    ) -> Result<ChatResponse, OpenAiError> {
        self.chat_completion_within(body, self.inner.request_timeout)
            .await
    }

    /// [`Self::chat_completion`] with its own per-attempt timeout (a flex call may take
    /// minutes: OpenAI's flex guide raises the client timeout to 15).
    pub async fn chat_completion_within(
        &self,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<ChatResponse, OpenAiError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| OpenAiError::Decode(format!("encoding the chat request: {e}")))?;
        let (completion, headers) = self
            .call_json_with_headers(
                Method::POST,
                &["chat", "completions"],
                &[],
                Some(Bytes::from(body)),
                (On429::HandBack, timeout),
            )
            .await?;
        Ok(ChatResponse {
            completion,
            rate_limits: RateLimitHeaders::from_headers(&headers),
        })
    }

    // --- Plumbing ------------------------------------------------------------------------

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("base URL was checked to have a path in new()")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// The metrics label of `url`: its path below the base, ids hidden.
    fn endpoint(&self, url: &Url) -> String {
        let below = self
            .inner
            .base
            .path_segments()
            .map_or(0, |s| s.filter(|s| !s.is_empty()).count());
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.skip(below).collect())
            .unwrap_or_default();
        crate::metrics::openai_endpoint(&segments)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        json_body: Option<Bytes>,
    ) -> Result<T, OpenAiError> {
        let timeout = self.inner.request_timeout;
        self.call_json_with_headers(
            method,
            segments,
            query,
            json_body,
            (On429::WaitHere, timeout),
        )
        .await
        .map(|(value, _)| value)
    }

    async fn call_json_with_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        json_body: Option<Bytes>,
        (on_429, timeout): (On429, Duration),
    ) -> Result<(T, HeaderMap), OpenAiError> {
        let url = self.url(segments);
        let (method, url, json_body) = (&method, &url, &json_body);
        self.with_retries(method, url, on_429, |attempt| async move {
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout);
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = json_body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let response = self.send(request, method, url, attempt).await?;
            let headers = response.headers().clone();
            Ok((read_json(response).await?, headers))
        })
        .await
    }

    /// Runs `attempt(1)`, `attempt(2)`, … until one succeeds or the policy gives up.
    async fn with_retries<T, F, Fut>(
        &self,
        method: &Method,
        url: &Url,
        on_429: On429,
        mut attempt: F,
    ) -> Result<T, OpenAiError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, OpenAiError>>,
    {
        let mut retry = 0u32;
        loop {
            let err = match attempt(retry + 1).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if on_429 == On429::HandBack && err.status() == Some(429) {
                return Err(err);
            }
            let Some(delay) = self.inner.policy.delay_after(&err, retry) else {
                return Err(err);
            };
            tracing::debug!(
                method = %method,
                path = url.path(),
                attempt = retry + 1,
                status = err.status(),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "openai: retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// Sends one attempt; a non-2xx answer becomes [`OpenAiError::Api`].
    async fn send(
        &self,
        request: RequestBuilder,
        method: &Method,
        url: &Url,
        attempt: u32,
    ) -> Result<Response, OpenAiError> {
        let n = self.inner.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let request = match &self.inner.request_id_prefix {
            Some(prefix) => request.header("x-client-request-id", format!("{prefix}-{n}")),
            None => request,
        };
        let endpoint = format!("{method} {}", self.endpoint(url));
        let started = std::time::Instant::now();
        let sent = request.send().await;
        metrics::histogram!(crate::metrics::OPENAI_DURATION, "endpoint" => endpoint.clone())
            .record(started.elapsed().as_secs_f64());
        let status_label = match &sent {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "error".to_string(),
        };
        metrics::counter!(crate::metrics::OPENAI_REQUESTS, "endpoint" => endpoint, "status" => status_label)
            .increment(1);
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                let err = OpenAiError::from_reqwest(err);
                tracing::debug!(method = %method, path = url.path(), attempt, error = %err, "openai request");
                return Err(err);
            }
        };
        let status = response.status();
        tracing::debug!(method = %method, path = url.path(), status = status.as_u16(), attempt, "openai request");
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = parse_retry_after(response.headers());
        let rate_limits = Box::new(RateLimitHeaders::from_headers(response.headers()));
        // A body cut off mid-read still leaves the status, which decides what happens next.
        let body = response.bytes().await.unwrap_or_default();
        Err(OpenAiError::Api {
            status: status.as_u16(),
            body: ApiError::from_body(&body),
            retry_after,
            rate_limits,
        })
    }
}

/// What a call does with a 429 it could wait out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On429 {
    /// Sleep for `retry-after` (or the back-off) and try again inside the call.
    WaitHere,
    /// Return it: the caller paces every request to the model and pauses them all.
    HandBack,
}

/// `prefix` as a header value OpenAI accepts in `X-Client-Request-Id`.
fn request_id_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(MAX_REQUEST_ID_PREFIX)
        .collect()
}

fn parse_base_url(text: &str) -> Result<Url, OpenAiError> {
    let bad = |why: &str| OpenAiError::Config(format!("openai base_url {text:?} {why}"));
    let url = Url::parse(text.trim()).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials; use api_key"));
    }
    if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "must be a plain base such as https://api.openai.com/v1",
        ));
    }
    Ok(url)
}

async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T, OpenAiError> {
    let body = response.bytes().await.map_err(OpenAiError::from_reqwest)?;
    serde_json::from_slice(&body).map_err(|e| OpenAiError::Decode(e.to_string()))
}

fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Streams the body into `path` (truncating it) and syncs it, so the rename that follows
/// publishes complete bytes even across a crash.
async fn write_body(mut response: Response, path: &Path) -> Result<u64, OpenAiError> {
    let expected = response.content_length();
    let file = crate::files::create_file(path).await?;
    let mut out = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(OpenAiError::from_reqwest)? {
        out.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    out.flush().await?;
    out.into_inner().sync_all().await?;
    if let Some(expected) = expected.filter(|&e| e != written) {
        return Err(OpenAiError::Transport(format!(
            "download ended after {written} of {expected} bytes"
        )));
    }
    Ok(written)
}
