//! The HTTP contract: problem+json errors, API keys and tenants, idempotent submits,
//! jobs filled in chunks, listings, operations endpoints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{
    self, b64, fast_sim, in_own_process, metric_sample, mixed_items, png, Db, TestApp,
};
use serde_json::{json, Value};

pub async fn problem(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(kind, "application/problem+json", "status {status}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("https://batchlens.dev/problems/"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    (status, body)
}

/// The problem `r` answers, asserting its status and its type (`…/problems/{kind}`).
pub async fn expect_problem(r: reqwest::Response, status: u16, kind: &str) -> Value {
    let (got, body) = problem(r).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(
        body["type"],
        format!("https://batchlens.dev/problems/{kind}"),
        "{body}"
    );
    body
}

/// An application whose `server.max_body_bytes` is 100000.
pub(crate) async fn with_body_limit_100000(db: Db) -> Option<TestApp> {
    TestApp::spawn(
        db,
        fast_sim(),
        &[("BATCHLENS__SERVER__MAX_BODY_BYTES", "100000")],
    )
    .await
}

async fn errors_are_problems_that_name_the_field(db: Db) {
    let Some(app) = with_body_limit_100000(db).await else {
        return;
    };
    let post = |body: &'static str| {
        app.http
            .post(app.url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (s, p) = problem(post("{\"items\": [").await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("malformed JSON"));
    let (s, p) = problem(post(r#"{"detail": "ultra", "items": []}"#).await.unwrap()).await;
    assert_eq!(s, 400);
    assert_eq!(p["errors"][0]["field"], "detail");
    let (s, p) = problem(post(r#"{"items": [{"image_url": 5}]}"#).await.unwrap()).await;
    assert_eq!(s, 400);
    assert_eq!(p["errors"][0]["field"], "items[0].image_url");
    let (s, p) = problem(
        post(r#"{"items": [{"image_url": "http://x.test/a.jpg"}]}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(p["errors"][0]["field"], "items[0].image_url");
    assert!(p["detail"].as_str().unwrap().contains("https"));
    let p = expect_problem(post(r#"{"items": []}"#).await.unwrap(), 422, "validation").await;
    assert_eq!(p["errors"][0]["field"], "items", "{p}");
    let (s, p) = problem(
        post(r#"{"analyzer": {"prompt": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}, "items": [{"image_url": "https://x.test/a.jpg"}]}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(p["errors"][0]["field"], "analyzer.schema");
    let (s, p) = problem(
        post(r#"{"webhook_url": "http://x.test/hook", "items": [{"image_url": "https://x.test/a.jpg"}]}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(p["errors"][0]["field"], "webhook_url");
    // Over the body limit.
    let big = json!({"items": [{"image_base64": "A".repeat(200_000), "mime_type": "image/png"}]});
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .json(&big)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 413);
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("limit of 100000 bytes"), "{detail}");
    assert!(
        detail.contains("/v1/jobs/{id}/items") && detail.contains("multipart/form-data"),
        "says how to send a large set: {detail}"
    );
    // Wrong content type, unknown route, unknown job, wrong method.
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415, "unsupported-media-type").await;
    let r = app.http.get(app.url("/v2/nothing")).send().await.unwrap();
    expect_problem(r, 404, "not-found").await;
    let r = app
        .http
        .get(app.url("/v1/jobs/0193a0a0-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not-found").await;
    let r = app.http.delete(app.url("/v1/jobs")).send().await.unwrap();
    expect_problem(r, 405, "method-not-allowed").await;
    let r = app
        .http
        .get(app.url("/v1/jobs?limit=0"))
        .send()
        .await
        .unwrap();
    let p = expect_problem(r, 400, "bad-request").await;
    assert_eq!(p["errors"][0]["field"], "limit", "{p}");
    // Nothing was stored by any of these.
    let (_, list) = app.get("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    app.shutdown().await;
}

async fn keys_scope_jobs_to_their_tenant(db: Db) {
    let hash = |k: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(k.as_bytes()))
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"{}\"\n[[auth.keys]]\ntenant = \"globex\"\nsha256 = \"{}\"\n",
            hash("key-a"),
            hash("key-b")
        ),
    )
    .unwrap();
    let Some(app) = TestApp::spawn_with_config(db, fast_sim(), &[], Some(&file)).await else {
        return;
    };
    let body = json!({"mode": "batch", "items": mixed_items(2, 0)});
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth("key-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}")))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap();
    // Another tenant's job is a 404, like a job that does not exist.
    expect_problem(r, 404, "not-found").await;
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}/results")))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not-found").await;
    let list: Value = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth("key-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["data"].as_array().unwrap().is_empty());
    let list: Value = app
        .http
        .get(app.url("/v1/jobs"))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Operations answer without a key.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.shutdown().await;
}

async fn idempotent_submits(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let body = json!({"mode": "batch", "items": mixed_items(3, 0)});
    let send = |key: &'static str, body: Value| {
        app.http
            .post(app.url("/v1/jobs"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("k-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send("k-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again, first, "the replay is the first answer");
    let other = send("k-1", json!({"mode": "batch", "items": mixed_items(4, 0)}))
        .await
        .unwrap();
    let (s, p) = problem(other).await;
    assert_eq!(s, 422);
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key");

    // Concurrent requests with one key create one job.
    let body = json!({"mode": "batch", "items": mixed_items(50, 0)});
    let tries: Vec<_> = (0..8).map(|_| send("k-2", body.clone())).collect();
    let answers = futures::future::join_all(tries).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for a in answers {
        let a = a.unwrap();
        match a.status().as_u16() {
            202 => {
                created += 1;
                ids.insert(
                    a.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            200 => {
                ids.insert(
                    a.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            409 => {
                problem(a).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let (_, list) = app.get("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    app.shutdown().await;
}

async fn an_open_job_filled_in_five_chunks(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"open": true, "mode": "batch", "name": "lookbook"}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "open");
    let id = job["id"].as_str().unwrap().to_string();
    let pngs = b64(&png(40, 30));
    for chunk in 0..5 {
        let items: Vec<Value> = (0..20)
            .map(|i| {
                let n = chunk * 20 + i;
                if n == 42 {
                    json!({"custom_id": format!("p-{n}"), "image_base64": b64(b"GIF89a broken"), "mime_type": "image/gif"})
                } else {
                    json!({"custom_id": format!("p-{n}"), "post_id": format!("post-{}", n / 10), "image_base64": pngs, "mime_type": "image/png"})
                }
            })
            .collect();
        let (status, view) = app
            .post(&format!("/v1/jobs/{id}/items"), &json!({"items": items}))
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["status"], "open");
        assert_eq!(view["progress"]["total"], (chunk + 1) * 20);
        let rejected = view["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), usize::from(chunk == 2), "{view}");
    }
    // A custom_id from an earlier chunk is refused, the rest of the chunk goes on.
    let (status, view) = app
        .post(
            &format!("/v1/jobs/{id}/items"),
            &json!({"items": [{"custom_id": "p-1", "image_base64": pngs, "mime_type": "image/png"},
                              {"custom_id": "p-100", "image_base64": pngs, "mime_type": "image/png"}]}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["rejected"][0]["index"], 100);
    assert!(view["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("p-1"));
    let (status, submitted) = app.post(&format!("/v1/jobs/{id}/submit"), &json!({})).await;
    assert_eq!(status, 202, "{submitted}");
    assert_eq!(submitted["status"], "queued");
    assert_eq!(submitted["mode"], "batch");
    assert!(submitted["estimate"]["batch_usd"].as_f64().unwrap() > 0.0);
    let (status, p) = app
        .post(&format!("/v1/jobs/{id}/items"), &json!({"items": []}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(p["type"], "https://batchlens.dev/problems/conflict", "{p}");
    assert_eq!(p["status"], 409, "{p}");
    let (status, p) = app.post(&format!("/v1/jobs/{id}/submit"), &json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(p["type"], "https://batchlens.dev/problems/conflict", "{p}");
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["total"], 102);
    assert_eq!(done["progress"]["succeeded"], 100);
    assert_eq!(done["progress"]["rejected"], 2);
    let (_, posts) = app.get(&format!("/v1/jobs/{id}/posts")).await;
    let posts = posts["data"].as_array().unwrap();
    assert_eq!(posts.len(), 11, "ten posts and the items without one");
    assert!(posts.last().unwrap()["post_id"].is_null());
    app.shutdown().await;
}

async fn listings_and_events(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, job) = app
            .post(
                "/v1/jobs",
                &json!({"mode": "batch", "items": mixed_items(2, 0)}),
            )
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (_, page) = app.get("/v1/jobs?limit=2").await;
    let first: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        vec![ids[2].as_str(), ids[1].as_str()],
        "newest first"
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = app.get(&format!("/v1/jobs?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["data"][0]["id"], ids[0].as_str());
    assert!(rest["next_cursor"].is_null());
    // The event stream ends after the terminal status (bounded: a stream that never
    // ends fails the test instead of hanging it).
    let events = app
        .http
        .get(app.url(&format!("/v1/jobs/{}/events", ids[0])))
        .send();
    let text = tokio::time::timeout(Duration::from_secs(60), async {
        events.await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the event stream ended within 60 s");
    assert!(text.contains("event: progress"), "{text}");
    assert!(text.contains("event: status"));
    assert!(text.contains("\"completed\""), "{text}");
    for id in &ids {
        app.wait_terminal(id, Duration::from_secs(60)).await;
    }
    let (_, done) = app.get("/v1/jobs?status=completed").await;
    assert_eq!(done["data"].as_array().unwrap().len(), 3);
    let (_, pricing) = app.get("/v1/pricing").await;
    assert!(pricing["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["model"] == "gpt-4o-mini"));
    app.shutdown().await;
}

async fn metrics_count_what_happened(db: Db) {
    // The recorder is process-wide: alone in a process, every count below is this job's.
    if !in_own_process() {
        return;
    }
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(4, 4)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");

    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = r.text().await.unwrap();
    let exactly = |name: &str, labels: &[(&str, &str)], n: f64| {
        let got = metric_sample(&text, name, labels);
        assert_eq!(got, Some(n), "{name}{labels:?}\n{text}");
    };
    let at_least = |name: &str, labels: &[(&str, &str)], n: f64| {
        let got = metric_sample(&text, name, labels);
        assert!(
            got.is_some_and(|v| v >= n),
            "{name}{labels:?} = {got:?}, want ≥ {n}\n{text}"
        );
    };
    exactly(
        "batchlens_http_requests_total",
        &[("method", "POST"), ("route", "/v1/jobs"), ("status", "202")],
        1.0,
    );
    // wait_terminal polls a varying number of times.
    at_least(
        "batchlens_http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/v1/jobs/{id}"),
            ("status", "200"),
        ],
        1.0,
    );
    exactly(
        "batchlens_http_request_duration_seconds_count",
        &[("method", "POST"), ("route", "/v1/jobs")],
        1.0,
    );
    exactly("batchlens_jobs_created_total", &[("mode", "batch")], 1.0);
    exactly("batchlens_items_accepted_total", &[], 3.0);
    exactly("batchlens_items_rejected_total", &[], 1.0);
    exactly(
        "batchlens_openai_requests_total",
        &[("endpoint", "POST batches"), ("status", "200")],
        1.0,
    );
    exactly(
        "batchlens_openai_requests_total",
        &[("endpoint", "GET files/{id}/content"), ("status", "200")],
        1.0,
    );
    exactly("batchlens_batches_submitted_total", &[], 1.0);
    exactly(
        "batchlens_batches_ended_total",
        &[("status", "completed")],
        1.0,
    );
    exactly(
        "batchlens_items_settled_total",
        &[("outcome", "succeeded")],
        3.0,
    );
    exactly(
        "batchlens_jobs_finished_total",
        &[("status", "completed")],
        1.0,
    );
    exactly("batchlens_jobs", &[("status", "completed")], 1.0);
    assert_eq!(
        metric_sample(&text, "batchlens_items_waiting", &[("status", "pending")]),
        Some(0.0)
    );
    // Routes are templates: no series per job.
    assert!(!text.contains(&id), "a job id leaked into a label");
    app.shutdown().await;
}

/// The calls a test receiver got: headers and body of each.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A receiver that answers 500 to its first `refusals` calls and 204 after, keeping what
/// it got.
async fn hook_receiver(refusals: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push((headers, body.to_vec()));
                    if seen.len() <= refusals {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn a_finished_job_calls_its_webhook_until_it_answers(db: Db) {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let Some(app) = TestApp::spawn(
        db,
        fast_sim(),
        &[
            ("BATCHLENS__WEBHOOKS__ALLOW_PRIVATE", "true"),
            ("BATCHLENS__WEBHOOKS__SECRET", SECRET),
            ("BATCHLENS__WEBHOOKS__RETRY_MIN_MS", "200"),
            ("BATCHLENS__WEBHOOKS__MAX_ATTEMPTS", "2"),
        ],
    )
    .await
    else {
        return;
    };
    let (hook, got) = hook_receiver(1).await;
    let (deaf, _) = hook_receiver(usize::MAX).await;
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "webhook_url": hook, "items": mixed_items(3, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["webhook"]["state"], "waiting");
    let id = job["id"].as_str().unwrap().to_string();
    let (_, unheard) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "webhook_url": deaf, "items": mixed_items(1, 0)}),
        )
        .await;
    let unheard = unheard["id"].as_str().unwrap().to_string();
    for job in [&id, &unheard] {
        app.wait_terminal(job, Duration::from_secs(60)).await;
        common::wait_until(Duration::from_secs(30), || async {
            let state = &app.get(&format!("/v1/jobs/{job}")).await.1["webhook"]["state"];
            state == "delivered" || state == "failed"
        })
        .await;
    }
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    assert!(job["webhook"].get("last_error").is_none(), "{job}");
    // A receiver that never answers 2xx: given up after webhooks.max_attempts, with why.
    let (_, job) = app.get(&format!("/v1/jobs/{unheard}")).await;
    assert_eq!(job["webhook"]["state"], "failed", "{job}");
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    assert_eq!(job["webhook"]["last_error"], "HTTP 500");

    let got = got.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        2,
        "one refused attempt, one delivery, nothing after"
    );
    let key = batchlens::pipeline::webhooks::signing_key(SECRET)
        .unwrap()
        .unwrap();
    for (headers, body) in &got {
        let header = |name: &str| headers[name].to_str().unwrap().to_string();
        assert_eq!(header("webhook-id"), id, "the same id on every attempt");
        assert_eq!(header("content-type"), "application/json");
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            header("webhook-signature"),
            batchlens::pipeline::webhooks::sign(&key, &id, timestamp, body)
        );
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["type"], "job.finished");
        assert_eq!(payload["data"]["id"], id.as_str());
        assert_eq!(payload["data"]["status"], "completed");
        assert_eq!(payload["data"]["progress"]["succeeded"], 3);
    }
    app.shutdown().await;
}

on_both!(
    a_finished_job_calls_its_webhook_until_it_answers,
    metrics_count_what_happened,
    errors_are_problems_that_name_the_field,
    keys_scope_jobs_to_their_tenant,
    idempotent_submits,
    an_open_job_filled_in_five_chunks,
    listings_and_events,
    a_declared_body_over_the_limit_gets_the_413_not_a_broken_pipe,
    a_body_over_the_limit_is_answered_before_the_rest_is_sent,
    an_items_chunk_sent_twice_with_one_key_stores_once,
);

/// Sends `head` (and `body`, unless the request waits for `100 Continue`) on a raw
/// connection and reads the answer to its end: what a client sees of a 413.
async fn raw_exchange(base: &str, head: String, body: Option<Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        conn.write_all(&body)
            .await
            .expect("the whole body is taken, no broken pipe");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes")
    .expect("the answer is read, not reset");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn a_declared_body_over_the_limit_gets_the_413_not_a_broken_pipe(db: Db) {
    let Some(app) = with_body_limit_100000(db).await else {
        return;
    };
    let length = 50_000_000;
    let head = |expect: &str| {
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n"
        )
    };
    // A client that sends at once: the body is read and dropped, then the 413.
    let answer = raw_exchange(&app.base, head(""), Some(vec![b' '; length])).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limit of 100000 bytes"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A client that waits for 100 Continue is answered without sending the body.
    let answer = raw_exchange(&app.base, head("Expect: 100-continue\r\n"), None).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("limit of 100000 bytes"), "{answer}");
    app.shutdown().await;
}

/// Reads from `conn` into `seen` until `want` is in it; panics on a reset, an early close
/// or after 20 s.
async fn read_until(conn: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, want: &str) {
    use tokio::io::AsyncReadExt;
    let reading = async {
        while !String::from_utf8_lossy(seen).contains(want) {
            let mut buf = [0u8; 4096];
            let n = conn
                .read(&mut buf)
                .await
                .expect("the answer is read, not reset");
            assert!(
                n > 0,
                "closed before {want:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(20), reading)
        .await
        .is_err()
    {
        panic!("no {want:?} within 20 s: {}", String::from_utf8_lossy(seen));
    }
}

/// The rest of the answer once the body is sent: it ends (chunked) and the connection
/// closes, with no reset.
async fn read_the_end(conn: &mut tokio::net::TcpStream, seen: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(std::time::Duration::from_secs(20), conn.read_to_end(seen))
        .await
        .expect("the server ends the answer and closes")
        .expect("the answer is read, not reset");
    String::from_utf8_lossy(seen).into_owned()
}

async fn a_body_over_the_limit_is_answered_before_the_rest_is_sent(db: Db) {
    use tokio::io::AsyncWriteExt;
    let Some(app) = with_body_limit_100000(db).await else {
        return;
    };
    let addr = app.base.trim_start_matches("http://").to_string();
    let check = |answer: &str| {
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("limit of 100000 bytes"), "{answer}");
        assert!(
            answer.contains("/v1/jobs/{id}/items") && answer.contains("multipart/form-data"),
            "says how to send a large set: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    };

    // Content-Length over the limit: the head and a little of the body are enough for
    // the 413; the rest is then taken (no broken pipe) and the answer ends.
    let length = 5_000_000;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[b' '; 1000]).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "multipart/form-data").await;
    check(&String::from_utf8_lossy(&seen));
    conn.write_all(&vec![b' '; length - 1000])
        .await
        .expect("the rest of the body is taken, no broken pipe");
    let answer = read_the_end(&mut conn, &mut seen).await;
    assert!(answer.ends_with("0\r\n\r\n"), "a complete answer: {answer}");

    // Chunked, no length: refused once 100000 bytes are read, answered before the body
    // ends; the chunks sent after are taken too.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("2710\r\n{}\r\n", " ".repeat(10_000));
    for _ in 0..11 {
        conn.write_all(chunk.as_bytes()).await.unwrap();
    }
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "multipart/form-data").await;
    check(&String::from_utf8_lossy(&seen));
    for _ in 0..20 {
        conn.write_all(chunk.as_bytes())
            .await
            .expect("later chunks are taken, no broken pipe");
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = read_the_end(&mut conn, &mut seen).await;
    assert!(answer.ends_with("0\r\n\r\n"), "a complete answer: {answer}");
    app.shutdown().await;
}

async fn an_items_chunk_sent_twice_with_one_key_stores_once(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let (status, job) = app
        .post("/v1/jobs", &json!({"open": true, "mode": "batch"}))
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // No custom_ids: without the key a resent chunk would be stored a second time.
    let image = b64(&png(40, 30));
    let chunk = json!({"items": [{"image_base64": image, "mime_type": "image/png"},
                                 {"image_base64": image, "mime_type": "image/png"}]});
    let send = |key: &'static str, body: Value| {
        app.http
            .post(app.url(&format!("/v1/jobs/{id}/items")))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("chunk-0", chunk.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["progress"]["total"], 2, "{first}");
    let again = send("chunk-0", chunk.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first answer, replayed");
    let (_, now) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(now["progress"]["total"], 2, "stored once: {now}");
    // The same key with another body is refused; another key is another chunk.
    let other = json!({"items": [{"image_base64": image, "mime_type": "image/png"}]});
    let (status, p) = problem(send("chunk-0", other.clone()).await.unwrap()).await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key", "{p}");
    let r = send("chunk-1", other).await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, now) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(now["progress"]["total"], 3, "{now}");
    app.shutdown().await;
}
