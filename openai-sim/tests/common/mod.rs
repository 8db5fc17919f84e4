//! Helpers shared by the integration tests: a running simulator and a thin HTTP client.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use openai_sim::{Sim, SimConfig, SimServer};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

pub const KEY: &str = "sk-test";

pub struct Harness {
    pub server: SimServer,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(config: SimConfig) -> Harness {
        let server = SimServer::spawn(config).await.expect("sim starts");
        Harness {
            server,
            http: reqwest::Client::new(),
        }
    }

    /// Phases long enough that only `advance` moves a batch: tests step the clock.
    pub async fn stepped() -> Harness {
        Self::start(SimConfig {
            validating_ms: 10_000,
            in_progress_ms: 100_000,
            finalizing_ms: 10_000,
            cancel_ms: 10_000,
            ..SimConfig::default()
        })
        .await
    }

    pub fn sim(&self) -> Sim {
        self.server.sim()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.base_url(), path)
    }

    pub fn control(&self, path: &str) -> String {
        format!("http://{}/_sim{}", self.server.addr(), path)
    }

    pub fn advance(&self, ms: u64) {
        self.sim().advance_clock(Duration::from_millis(ms));
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub async fn upload(&self, filename: &str, purpose: &str, data: Vec<u8>) -> (u16, Value) {
        let form = Form::new()
            .text("purpose", purpose.to_string())
            .part("file", Part::bytes(data).file_name(filename.to_string()));
        let r = self
            .http
            .post(self.url("/files"))
            .bearer_auth(KEY)
            .multipart(form)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub async fn content(&self, file_id: &str) -> String {
        let r = self
            .http
            .get(self.url(&format!("/files/{file_id}/content")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Lines of a file as JSON, blank lines skipped.
    pub async fn jsonl(&self, file_id: &str) -> Vec<Value> {
        self.content(file_id)
            .await
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Uploads `lines` as a batch input and creates a chat batch with `metadata`.
    pub async fn batch(&self, lines: &[Value], metadata: Value) -> Value {
        let (s, file) = self.upload("input.jsonl", "batch", jsonl(lines)).await;
        assert_eq!(s, 200, "{file}");
        let (s, b) = self
            .post(
                "/batches",
                &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                        "completion_window": "24h", "metadata": metadata}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    pub async fn batch_status(&self, id: &str) -> Value {
        let (s, b) = self.get(&format!("/batches/{id}")).await;
        assert_eq!(s, 200, "{b}");
        b
    }

    /// Polls until the batch reaches `status` (tests with millisecond phases).
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let b = self.batch_status(id).await;
            if b["status"] == status {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "batch never reached {status}: {b}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the simulator has counted `n` delivered webhooks. A receiver records an
    /// event before it answers, and the simulator counts it only once the answer is back, so
    /// the count trails what a receiver has seen.
    pub async fn wait_webhooks_sent(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let sent = self.sim().stats().webhooks_sent;
            if sent >= n {
                assert_eq!(sent, n, "more webhooks counted than expected");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {sent} of {n} webhooks counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({s}): {text}"));
    (s, v)
}

pub fn jsonl(lines: &[Value]) -> Vec<u8> {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// One chat batch line asking about `text`.
pub fn line(custom_id: &str, model: &str, text: &str) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "messages": [{"role": "user", "content": text}],
                    "max_completion_tokens": 500}})
}

pub fn lines(n: usize, model: &str) -> Vec<Value> {
    (0..n)
        .map(|i| line(&format!("item-{i}"), model, &format!("describe item {i}")))
        .collect()
}

/// Asserts the OpenAI error envelope and returns its `error` object.
pub fn envelope(v: &Value) -> &Value {
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "envelope lacks {k}: {v}");
    }
    assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
    e
}
