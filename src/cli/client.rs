//! The HTTP side of the client: one `Api` per command (base URL, key, connection pool), the
//! retry loop (connection errors, 5xx, 429 with Retry-After), and problem+json → `CliError`.

use std::future::Future;
use std::time::Duration;

use reqwest::{header, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::Connection;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A problem+json answer: printed as `<title>: <detail>`.
    #[error("{title}: {detail}")]
    Problem {
        status: u16,
        title: String,
        detail: String,
    },
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> CliError {
        CliError::Io(format!("{context}: {err}"))
    }
}

/// How often and how patiently a request is sent again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// About a minute in all: long enough for a service restart.
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay)
    }
}

/// A service to talk to.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
    pub retry: RetryPolicy,
}

impl Api {
    pub fn new(conn: &Connection) -> Result<Api, CliError> {
        let base = conn.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--url {base:?}: expected http://host:port or https://…"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("batchlens-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Http(e.to_string()))?;
        Ok(Api {
            base,
            key: conn.key.clone().filter(|k| !k.is_empty()),
            http,
            retry: RetryPolicy::default(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the key set.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// GET `path` as JSON, retried.
    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let resp = self
            .send(path, |_| async {
                Ok(self.request(reqwest::Method::GET, path))
            })
            .await?;
        read_json(resp).await
    }

    /// POST `body` to `path`, retried, with an optional Idempotency-Key.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CliError> {
        let resp = self
            .send(path, |_| async {
                let req = self.request(reqwest::Method::POST, path).json(body);
                Ok(match idempotency_key {
                    Some(key) => req.header("idempotency-key", key),
                    None => req,
                })
            })
            .await?;
        read_json(resp).await
    }

    /// Sends the request `build(attempt)` makes until it gets an answer that is not worth
    /// retrying: connection errors, 5xx, 429 and a 409 "still being processed" (our own
    /// earlier attempt with the same Idempotency-Key) are retried with back-off (429/503
    /// honour Retry-After). A 4xx/5xx left at the end is returned as `CliError::Problem`.
    pub async fn send<F, Fut>(&self, what: &str, mut build: F) -> Result<Response, CliError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<RequestBuilder, CliError>>,
    {
        let mut attempt = 0;
        loop {
            let last = attempt + 1 >= self.retry.attempts;
            let wait = match build(attempt).await?.send().await {
                Err(err) if !last && retryable(&err) => {
                    tracing::debug!(%err, attempt, "{what}: retrying");
                    self.retry.backoff(attempt)
                }
                Err(err) => return Err(CliError::Http(format!("{what}: {}", error_chain(&err)))),
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(&resp);
                    let problem = problem(resp).await;
                    let again = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || (status == StatusCode::CONFLICT
                            && attempt > 0
                            && problem_detail(&problem).contains("still being processed"));
                    if last || !again {
                        return Err(problem);
                    }
                    retry_after.unwrap_or_else(|| self.retry.backoff(attempt))
                }
            };
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

fn problem_detail(err: &CliError) -> String {
    match err {
        CliError::Problem { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

fn retryable(err: &reqwest::Error) -> bool {
    err.is_connect() || err.is_request() || err.is_timeout() || err.is_body()
}

/// The error with its causes ("error sending request: connection refused").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(120)))
}

/// A non-success answer as an error: problem+json's title and detail when it has them.
pub async fn problem(resp: Response) -> CliError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let title = body["title"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let detail = body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if text.trim().is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                text.trim().chars().take(300).collect()
            }
        });
    CliError::Problem {
        status: status.as_u16(),
        title,
        detail,
    }
}

pub async fn read_json(resp: Response) -> Result<Value, CliError> {
    resp.json()
        .await
        .map_err(|e| CliError::Http(format!("reading the answer: {}", error_chain(&e))))
}

/// `batchlens healthcheck`: 0 when `<url>/healthz` answers 200 within 2 s, else 1.
pub async fn healthcheck(url: Option<String>) -> i32 {
    let base = url.unwrap_or_else(|| {
        let port = crate::config::Settings::load()
            .map(|s| s.server.port)
            .unwrap_or(8080);
        format!("http://127.0.0.1:{port}")
    });
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return 1;
    };
    let url = format!("{}/healthz", base.trim_end_matches('/'));
    match http.get(&url).send().await {
        Ok(resp) if resp.status() == StatusCode::OK => 0,
        Ok(resp) => {
            eprintln!("batchlens: {url}: HTTP {}", resp.status().as_u16());
            1
        }
        Err(err) => {
            eprintln!("batchlens: {url}: {}", error_chain(&err));
            1
        }
    }
}
