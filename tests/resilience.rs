//! Resilience end to end, on SQLite and PostgreSQL: retries of what failed (and only that),
//! enqueued-token-limit refusals re-planned smaller, cancelling in both modes, attempt
//! limits, and a chaos run of the real binary killed again and again under faults.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::{self, fast_sim, mixed_items, submit_batch, Db, Service, TestApp, TestDb};
use batchlens::analyzer::{chat_request_body, fashion, RequestOptions};
use batchlens::domain::Detail;
use openai_sim::{FaultRule, SimConfig, SimServer};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

on_both!(
    an_expired_batch_is_finished_by_a_retry_shard,
    a_token_limit_refusal_is_replanned_smaller_and_succeeds,
    a_configured_token_limit_keeps_batches_under_it,
    cancelling_a_batch_job_mid_flight_keeps_finished_results,
    a_cancel_during_batch_creation_cancels_that_batch_too,
    cancelling_an_individual_job_stops_its_calls,
    retryable_failures_stop_at_max_attempts,
    non_retryable_failures_are_not_retried,
    an_individual_server_error_is_retried_in_a_new_shard,
    a_batch_that_cannot_be_polled_is_polled_again_later,
    a_failed_download_is_downloaded_again,
    chaos_kills_and_faults_lose_and_repeat_nothing,
);

/// Polls `probe` until it yields a value or the deadline passes.
async fn wait_for<T, F, Fut>(deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Each shard id in the simulator's batches, with how many batches carry it.
fn batches_per_shard(sim: &openai_sim::Sim) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in sim.batches() {
        if let Some(shard) = batch["metadata"]["batchlens_shard"].as_str() {
            *counts.entry(shard.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Every shard of the job that reached OpenAI has exactly one batch there, and no batch
/// belongs to a shard the job does not list.
fn assert_one_batch_per_shard(sim: &openai_sim::Sim, job: &Value) {
    let per_shard = batches_per_shard(sim);
    assert!(
        per_shard.values().all(|&n| n == 1),
        "a shard was submitted twice: {per_shard:?}"
    );
    let submitted: HashSet<String> = job["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["openai_batch_id"].is_string())
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let at_openai: HashSet<String> = per_shard.keys().cloned().collect();
    assert_eq!(submitted, at_openai);
}

async fn an_expired_batch_is_finished_by_a_retry_shard(db: Db) {
    let sim = SimConfig {
        in_progress_ms: 4_000,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let id = submit_batch(&app, 40).await;
    let batch_id = wait_for(Duration::from_secs(30), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        let b = &job["batches"][0];
        (b["request_counts"]["completed"].as_i64().unwrap_or(0) > 0)
            .then(|| b["openai_batch_id"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    // The retry batch runs at the usual pace; the window of the first passes now.
    app.sim.sim().set_config(fast_sim());
    assert!(app.sim.sim().expire_batch(&batch_id));
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 40, "{done}");
    let batches = done["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2, "{done}");
    assert_eq!(batches[0]["status"], "expired");
    assert_eq!(batches[0]["attempt"], 1);
    assert_eq!(batches[1]["status"], "completed");
    assert_eq!(batches[1]["attempt"], 2);
    let first_done = app
        .sim
        .sim()
        .batch(&batch_id)
        .unwrap()
        .pointer("/request_counts/completed")
        .and_then(Value::as_i64)
        .unwrap();
    assert!(first_done > 0 && first_done < 40);
    assert_eq!(batches[1]["items"], 40 - first_done);
    let results = app.results_exactly(&id, 40).await;
    let mut by_attempts: HashMap<i64, usize> = HashMap::new();
    for r in &results {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert!(r["output"].is_object());
        assert!(r["error"].is_null(), "{r}");
        *by_attempts
            .entry(r["attempts"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(by_attempts.get(&1).copied(), Some(first_done as usize));
    assert_eq!(by_attempts.get(&2).copied(), Some(40 - first_done as usize));
    assert_one_batch_per_shard(&app.sim.sim(), &done);
    app.shutdown().await;
}

/// Input tokens of one request of the built-in analyzer at low detail (the same for every
/// image: low detail prices every image alike), as the simulator bills them: asked of a
/// simulator of its own, never counted with the service's code.
async fn tokens_per_item(model: &str) -> u64 {
    let sim = SimServer::spawn(fast_sim()).await.unwrap();
    let opts = RequestOptions {
        model,
        detail: Detail::Low,
        max_completion_tokens: 600,
    };
    let body = chat_request_body(&fashion(), "https://cdn.example.com/x.jpg", &opts);
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", sim.base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage in {answer}"))
}

async fn a_token_limit_refusal_is_replanned_smaller_and_succeeds(db: Db) {
    let per_item = tokens_per_item("gpt-4o-mini").await;
    let mut sim = fast_sim();
    // Room for 10 items: the first shard of 16 is refused, shards of 8 fit one at a time.
    sim.enqueued_token_limits
        .insert("gpt-4o-mini".into(), per_item * 10);
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "model": "gpt-4o-mini", "items": mixed_items(16, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 16, "{done}");
    let batches = done["batches"].as_array().unwrap();
    assert_eq!(batches[0]["status"], "failed");
    assert_eq!(batches[0]["items"], 16);
    assert_eq!(batches[0]["error"]["code"], "token_limit_exceeded");
    let rest = &batches[1..];
    assert_eq!(rest.len(), 2, "{done}");
    for b in rest {
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(b["items"], 8);
        assert_eq!(b["attempt"], 2);
    }
    // The second half waited for the first: OpenAI refused nothing else.
    let stats = app.sim.sim().stats();
    assert_eq!(stats.batches_failed, 1, "{stats:?}");
    for r in app.results_exactly(id, 16).await {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["attempts"], 1, "a refused batch is not an attempt: {r}");
    }
    assert_one_batch_per_shard(&app.sim.sim(), &done);
    app.shutdown().await;
}

async fn a_configured_token_limit_keeps_batches_under_it(db: Db) {
    let per_item = tokens_per_item("gpt-4o-mini").await;
    let limit = (per_item * 10).to_string();
    let mut sim = fast_sim();
    sim.enqueued_token_limits
        .insert("gpt-4o-mini".into(), per_item * 10);
    let Some(app) = TestApp::spawn(
        db,
        sim,
        &[("BATCHLENS__BATCH__ENQUEUED_TOKEN_LIMIT", limit.as_str())],
    )
    .await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "model": "gpt-4o-mini", "items": mixed_items(30, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 30);
    let batches = done["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 3, "{done}");
    for b in batches {
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(b["items"], 10);
    }
    let stats = app.sim.sim().stats();
    assert_eq!(stats.batches_failed, 0, "{stats:?}");
    assert_one_batch_per_shard(&app.sim.sim(), &done);
    app.shutdown().await;
}

async fn cancelling_a_batch_job_mid_flight_keeps_finished_results(db: Db) {
    let sim = SimConfig {
        in_progress_ms: 6_000,
        cancel_ms: 1_500,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let id = submit_batch(&app, 40).await;
    wait_for(Duration::from_secs(30), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        (job["batches"][0]["request_counts"]["completed"]
            .as_i64()
            .unwrap_or(0)
            > 0)
        .then_some(())
    })
    .await;
    let (status, cancelling) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{cancelling}");
    assert_eq!(cancelling["status"], "cancelling");
    // Twice is safe: the same job again.
    let (status, again) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], cancelling["id"]);

    let done = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let p = &done["progress"];
    let (succeeded, cancelled) = (
        p["succeeded"].as_i64().unwrap(),
        p["cancelled"].as_i64().unwrap(),
    );
    assert!(succeeded > 0 && cancelled > 0, "{done}");
    assert_eq!(succeeded + cancelled, 40, "{done}");
    assert_eq!(done["batches"][0]["status"], "cancelled");
    assert_eq!(
        done["batches"].as_array().unwrap().len(),
        1,
        "no retry shard"
    );
    assert!(app.sim.sim().stats().cancel_requests >= 1);
    for r in app.results_exactly(&id, 40).await {
        match r["status"].as_str().unwrap() {
            "succeeded" => assert!(r["output"].is_object(), "{r}"),
            "cancelled" => {
                assert!(r["output"].is_null());
                assert_eq!(r["error"]["code"], "batch_cancelled", "{r}");
            }
            other => panic!("{other}: {r}"),
        }
    }

    // Finished: a 409 problem.
    let r = app
        .http
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["status"], 409);
    assert_eq!(problem["type"], "https://batchlens.dev/problems/conflict");
    let state = format!("job is {}", done["status"].as_str().unwrap());
    assert!(
        problem["detail"].as_str().unwrap().contains(&state),
        "{problem}"
    );
    let (status, problem) = app
        .post(
            &format!("/v1/jobs/{}/cancel", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(problem["type"], "https://batchlens.dev/problems/not-found");

    // Items never sent are cancelled at once: an open job has nothing in flight.
    let (_, open) = app
        .post(
            "/v1/jobs",
            &json!({"open": true, "mode": "batch", "items": mixed_items(3, 0)}),
        )
        .await;
    let oid = open["id"].as_str().unwrap();
    let (status, cancelled) = app
        .post(&format!("/v1/jobs/{oid}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["progress"]["cancelled"], 3);
    app.shutdown().await;
}

/// The cancel lands while `POST /v1/batches` is on its way (OpenAI will create the batch):
/// the shard's items are not cancelled under it, so the batch is recorded, cancelled at
/// OpenAI and ingested, instead of running to the end, billed, for a job already over.
async fn a_cancel_during_batch_creation_cancels_that_batch_too(db: Db) {
    let sim = SimConfig {
        in_progress_ms: 6_000,
        faults: vec![FaultRule {
            path_prefix: "/v1/batches".into(),
            method: Some("POST".into()),
            latency_ms: 1_500,
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let id = submit_batch(&app, 10).await;
    wait_for(Duration::from_secs(30), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        (job["batches"][0]["status"] == "creating").then_some(())
    })
    .await;
    let (status, cancelling) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{cancelling}");
    assert_eq!(cancelling["status"], "cancelling", "{cancelling}");
    assert_eq!(cancelling["progress"]["pending"], 10, "{cancelling}");

    let done = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let stats = app.sim.sim().stats();
    assert_eq!(stats.batches_created, 1, "{stats:?}");
    assert!(
        stats.cancel_requests >= 1,
        "the batch was cancelled: {stats:?}"
    );
    assert_eq!(done["batches"][0]["status"], "cancelled", "{done}");
    let p = &done["progress"];
    assert_eq!(
        p["succeeded"].as_i64().unwrap() + p["cancelled"].as_i64().unwrap(),
        10,
        "{done}"
    );
    app.shutdown().await;
}

async fn cancelling_an_individual_job_stops_its_calls(db: Db) {
    let sim = SimConfig {
        chat_latency_ms: 250,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[("BATCHLENS__INDIVIDUAL__CONCURRENCY", "2")]).await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "individual", "items": mixed_items(30, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), || async {
        (app.sim.sim().stats().chat_calls >= 2).then_some(())
    })
    .await;
    let (status, cancelling) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{cancelling}");
    let calls_at_cancel = app.sim.sim().stats().chat_calls;
    let done = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let p = &done["progress"];
    let succeeded = p["succeeded"].as_u64().unwrap();
    let cancelled = p["cancelled"].as_u64().unwrap();
    assert_eq!(p["failed"], 0, "{done}");
    assert_eq!(succeeded + cancelled, 30);
    // Only the calls already under way when the cancel came finished (two at a time):
    // every call the simulator answered is a kept result, and no more came.
    let calls = app.sim.sim().stats().chat_calls;
    assert_eq!(calls, succeeded, "{done}");
    assert!(
        calls <= calls_at_cancel + 2,
        "{calls} > {calls_at_cancel} + 2"
    );
    assert!(cancelled > 0);
    for r in app.results_exactly(&id, 30).await {
        match r["status"].as_str().unwrap() {
            "succeeded" => assert_eq!(r["mode"], "individual"),
            "cancelled" => assert_eq!(r["error"]["code"], "job_cancelled", "{r}"),
            other => panic!("{other}: {r}"),
        }
    }
    app.shutdown().await;
}

async fn retryable_failures_stop_at_max_attempts(db: Db) {
    let sim = SimConfig {
        line_failure_rate: 1.0,
        line_failure_status: 500,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[("BATCHLENS__BATCH__MAX_ATTEMPTS", "2")]).await
    else {
        return;
    };
    let id = &submit_batch(&app, 12).await;
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["progress"]["failed"], 12);
    let batches = done["batches"].as_array().unwrap();
    let attempts: Vec<i64> = batches
        .iter()
        .map(|b| b["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2], "{done}");
    for r in app.results_exactly(id, 12).await {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["attempts"], 2, "{r}");
        assert_eq!(r["error"]["code"], "server_error", "{r}");
    }
    assert_one_batch_per_shard(&app.sim.sim(), &done);
    app.shutdown().await;
}

async fn non_retryable_failures_are_not_retried(db: Db) {
    let sim = SimConfig {
        line_failure_rate: 1.0,
        line_failure_status: 400,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let id = &submit_batch(&app, 12).await;
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["batches"].as_array().unwrap().len(), 1, "{done}");
    for r in app.results_exactly(id, 12).await {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert_eq!(r["error"]["code"], "sim_injected_failure", "{r}");
    }
    app.shutdown().await;
}

async fn an_individual_server_error_is_retried_in_a_new_shard(db: Db) {
    let sim = SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/chat/completions".into(),
            fault_5xx_rate: 1.0,
            remaining: Some(1),
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    // No client retry: the 500 reaches the executor, which sends the item back.
    let Some(app) = TestApp::spawn(
        db,
        sim,
        &[
            ("BATCHLENS__OPENAI__MAX_RETRIES", "0"),
            ("BATCHLENS__INDIVIDUAL__CONCURRENCY", "1"),
        ],
    )
    .await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "individual", "items": mixed_items(5, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 5, "{done}");
    let results = app.results_exactly(id, 5).await;
    let retried: Vec<&Value> = results.iter().filter(|r| r["attempts"] == 2).collect();
    assert_eq!(retried.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| r["attempts"] == 1 || r["attempts"] == 2));
    let batches = done["batches"].as_array().unwrap();
    assert!(batches.iter().any(|b| b["attempt"] == 2), "{done}");
    assert_eq!(app.sim.sim().stats().injected_5xx, 1);
    app.shutdown().await;
}

/// A job of `n` items against `sim` with client retries off, so every fault reaches the
/// pipeline; returns the app and the finished job.
async fn run_with_faults(db: Db, sim: SimConfig, n: usize) -> Option<(TestApp, Value)> {
    let app = TestApp::spawn(db, sim, &[("BATCHLENS__OPENAI__MAX_RETRIES", "0")]).await?;
    let id = submit_batch(&app, n).await;
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], n, "{done}");
    assert_one_batch_per_shard(&app.sim.sim(), &done);
    Some((app, done))
}

async fn a_batch_that_cannot_be_polled_is_polled_again_later(db: Db) {
    let sim = SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/batches/batch_".into(),
            method: Some("GET".into()),
            fault_5xx_rate: 1.0,
            status_5xx: 503,
            remaining: Some(3),
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let Some((app, _)) = run_with_faults(db, sim, 10).await else {
        return;
    };
    let failed_polls = app
        .sim
        .sim()
        .journal()
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/v1/batches/batch_"))
        .filter(|e| e.status == 503)
        .count();
    assert_eq!(failed_polls, 3);
    app.shutdown().await;
}

async fn a_failed_download_is_downloaded_again(db: Db) {
    let sim = SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/files/".into(),
            method: Some("GET".into()),
            fault_5xx_rate: 1.0,
            remaining: Some(2),
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let Some((app, done)) = run_with_faults(db, sim, 10).await else {
        return;
    };
    let downloads: Vec<u16> = app
        .sim
        .sim()
        .journal()
        .iter()
        .filter(|e| e.method == "GET" && e.path.ends_with("/content"))
        .map(|e| e.status)
        .collect();
    assert_eq!(downloads, vec![500, 500, 200], "{downloads:?}");
    // The output file is there, complete, under its final name; no partial file is left.
    let dir = app
        .data_dir
        .join("batches")
        .join(done["id"].as_str().unwrap());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".tmp") || n.ends_with(".part")),
        "{names:?}"
    );
    let shard = done["batches"][0]["id"].as_str().unwrap();
    let output = std::fs::read_to_string(dir.join(format!("{shard}.output.jsonl"))).unwrap();
    assert_eq!(output.lines().count(), 10);
    app.shutdown().await;
}

/// 2,000 items through the real binary, SIGKILLed at random moments and started again,
/// while the simulator answers 10% of all requests with a 5xx or a 429 and fails 5% of
/// the lines with a 500: every item ends exactly once, each shard attempt had exactly one
/// batch, and the job's cost is the sum of its results'.
/// A step to kill the service in, by the simulator request that shows it under way.
type Phase = (&'static str, fn(&openai_sim::JournalEntry) -> bool);
const UPLOAD: Phase = ("upload", |e| e.method == "POST" && e.path == "/v1/files");
const POLL: Phase = ("poll", |e| {
    e.method == "GET" && e.path.starts_with("/v1/batches/batch_")
});
const INGEST: Phase = ("ingest", |e| {
    e.method == "GET" && e.path.ends_with("/content")
});

async fn chaos_kills_and_faults_lose_and_repeat_nothing(kind: Db) {
    const ITEMS: usize = 2_000;
    const MAX_ATTEMPTS: i64 = 4;
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let sim = SimServer::spawn(SimConfig {
        in_progress_ms: 800,
        line_failure_rate: 0.05,
        line_failure_status: 500,
        faults: vec![FaultRule {
            path_prefix: "/v1/".into(),
            fault_5xx_rate: 0.05,
            fault_429_rate: 0.05,
            retry_after_ms: 20,
            ..FaultRule::default()
        }],
        seed: 11,
        ..fast_sim()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let max_attempts = MAX_ATTEMPTS.to_string();
    let extra = [
        ("BATCHLENS__OPENAI__MAX_RETRIES", "8"),
        ("BATCHLENS__BATCH__MAX_FILE_BYTES", "2000000"),
        ("BATCHLENS__BATCH__MAX_ATTEMPTS", max_attempts.as_str()),
    ];
    let start = Instant::now();

    let mut service = Service::start(&db.url, &sim, data.path(), &extra).await;
    service.wait_ready(&http).await;
    let job = common::post_json(
        &http,
        &format!("{}/v1/jobs", service.base),
        &json!({"mode": "batch", "items": mixed_items(ITEMS, 0)}),
    )
    .await;
    let id = job["id"].as_str().expect("job accepted").to_string();
    // Each kill waits for the step it is meant to hit: right after OpenAI answered an
    // upload (the submit step goes on to create the batch and store its id), a poll (the
    // poller stores what it saw) or a download (the ingester settles the lines). A seeded
    // jitter of up to 30 ms moves it within the step; the seed is printed to replay a run.
    let seed: u64 = std::env::var("BATCHLENS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut landed: Vec<&str> = Vec::new();
    for phase in [UPLOAD, POLL, INGEST, UPLOAD, POLL, INGEST] {
        let mark = sim.sim().journal().last().map_or(0, |e| e.seq);
        let seen = common::wait_for(Duration::from_secs(20), || {
            sim.sim()
                .journal()
                .iter()
                .any(|e| e.seq > mark && e.status == 200 && phase.1(e))
        })
        .await;
        if !seen {
            // Nothing of that kind left to do (every shard uploaded, say).
            continue;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        service.kill();
        landed.push(phase.0);
        service = Service::start(&db.url, &sim, data.path(), &extra).await;
        service.wait_ready(&http).await;
    }
    for (name, _) in [UPLOAD, POLL, INGEST] {
        assert!(
            landed.contains(&name),
            "no kill landed during {name}: {landed:?}"
        );
    }
    let done = loop {
        let Ok(r) = http
            .get(format!("{}/v1/jobs/{id}", service.base))
            .send()
            .await
        else {
            let log = std::fs::read_to_string(data.path().join("service-stderr.log"));
            panic!(
                "the service stopped answering: {:?}; its stderr: {}",
                service.child.try_wait(),
                log.unwrap_or_default()
            );
        };
        let job: Value = r.json().await.unwrap();
        if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not finished: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    let p = &done["progress"];
    assert_eq!(p["total"], ITEMS);
    assert_eq!(p["pending"], 0);
    assert_eq!(p["submitted"], 0);

    let text = http
        .get(format!("{}/v1/jobs/{id}/results", service.base))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), ITEMS);
    let mut seen = HashSet::new();
    let mut cost = 0.0;
    let mut retried = 0;
    for (index, r) in results.iter().enumerate() {
        assert_eq!(r["custom_id"], format!("img-{index}"));
        assert!(seen.insert(r["custom_id"].to_string()));
        let attempts = r["attempts"].as_i64().unwrap();
        assert!((1..=MAX_ATTEMPTS).contains(&attempts), "{r}");
        if attempts > 1 {
            retried += 1;
        }
        match r["status"].as_str().unwrap() {
            "succeeded" => assert!(r["output"].is_object(), "{r}"),
            // Failed every attempt it had (5% per attempt: rare, not impossible).
            "failed" => assert_eq!(attempts, MAX_ATTEMPTS, "{r}\n{done}"),
            other => panic!("{other}: {r}"),
        }
        cost += r["cost_usd"].as_f64().unwrap_or(0.0);
    }
    assert!(retried > 0, "no item was retried");
    let actual = done["cost"]["actual_usd"].as_f64().unwrap();
    assert!(
        (actual - cost).abs() <= 1e-9 * actual.max(1.0),
        "job cost {actual} vs results {cost}"
    );
    // Against what OpenAI billed: the usage of every batch the simulator ran (each line
    // it ran once, whatever the kills) is the usage the results carry, and the cost is
    // that usage at the published batch prices.
    let (mut billed_in, mut billed_cached, mut billed_out) = (0, 0, 0);
    for batch in sim.sim().batches() {
        billed_in += batch["usage"]["input_tokens"].as_i64().unwrap_or(0);
        billed_cached += batch["usage"]["input_tokens_details"]["cached_tokens"]
            .as_i64()
            .unwrap_or(0);
        billed_out += batch["usage"]["output_tokens"].as_i64().unwrap_or(0);
    }
    let sum = |field: &str| -> i64 {
        results
            .iter()
            .map(|r| r["usage"][field].as_i64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        sum("input_tokens"),
        billed_in,
        "input tokens vs the simulator's"
    );
    assert_eq!(sum("cached_input_tokens"), billed_cached);
    assert_eq!(
        sum("output_tokens"),
        billed_out,
        "output tokens vs the simulator's"
    );
    let pricing = common::get_json(&http, &format!("{}/v1/pricing", service.base)).await;
    let model = done["model"].as_str().unwrap();
    let price = pricing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("no price for {model}: {pricing}"));
    let per_token = |field: &str| price[field].as_f64().unwrap() / 1e6;
    let billed_usd = (billed_in - billed_cached) as f64 * per_token("batch_input")
        + billed_cached as f64 * per_token("batch_cached_input")
        + billed_out as f64 * per_token("batch_output");
    assert!(
        (actual - billed_usd).abs() <= 1e-6 * billed_usd,
        "job cost {actual} vs the simulator's usage at batch prices {billed_usd}"
    );
    // One batch per (shard, attempt), whatever the kills hit.
    assert_one_batch_per_shard(&sim.sim(), &done);
    let stats = sim.sim().stats();
    // About 10% of some hundred requests: none at all would mean no fault was tried.
    assert!(stats.injected_5xx + stats.injected_429 > 0, "{stats:?}");
    assert!(done["batches"].as_array().unwrap().len() > 1);
    eprintln!(
        "chaos ({kind:?}, seed {seed}): kills during {landed:?}, {} shards, {retried} items retried, {} 5xx and {} 429 \
         injected, done in {:?}",
        done["batches"].as_array().unwrap().len(),
        stats.injected_5xx,
        stats.injected_429,
        start.elapsed()
    );
    service.kill();
}
