//! Crashes and replicas: the real binary killed mid-job and started again; two
//! applications sharing one PostgreSQL database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, fast_sim, mixed_items, png, Db, Service, TestApp, TestDb};
use crate::outbound::{Reply, Server};
use openai_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Each shard id in the simulator's batches, with how many batches carry it.
fn batches_per_shard(sim: &SimServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in sim.sim().batches() {
        if let Some(shard) = batch["metadata"]["batchlens_shard"].as_str() {
            *counts.entry(shard.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

async fn killed_while_batches_are_in_flight(kind: Db) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let sim = SimServer::spawn(SimConfig {
        in_progress_ms: 1_500,
        ..fast_sim()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    let first = Service::start(&db.url, &sim, data.path(), &[]).await;
    first.wait_ready(&http).await;
    let job = common::post_json(
        &http,
        &format!("{}/v1/jobs", first.base),
        &json!({"mode": "batch", "items": mixed_items(120, 0)}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // Wait until a batch is in flight at OpenAI, then kill the process.
    let start = Instant::now();
    loop {
        let job = get(&http, format!("{}/v1/jobs/{id}", first.base)).await;
        if job["batches"]
            .as_array()
            .is_some_and(|b| b.iter().any(|s| s["openai_batch_id"].is_string()))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no batch submitted: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();

    let second = Service::start(&db.url, &sim, data.path(), &[]).await;
    second.wait_ready(&http).await;
    let start = Instant::now();
    let done = loop {
        let job = get(&http, format!("{}/v1/jobs/{id}", second.base)).await;
        if job["status"] == "completed" || job["status"] == "failed" {
            break job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not finished: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 120);
    let per_shard = batches_per_shard(&sim);
    assert_eq!(per_shard.len(), done["batches"].as_array().unwrap().len());
    assert!(
        per_shard.values().all(|&n| n == 1),
        "a shard was submitted twice: {per_shard:?}"
    );
    second.kill();
}

/// Sends `post` until it is not a 409 (a key held by a dead request, until its lease
/// lapses; 30 s at most); answers its status and body.
async fn past_the_hold<F, Fut>(post: F) -> (u16, Value)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post().await.unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        if status != 409 {
            return (status, answer);
        }
        assert!(
            Instant::now() < deadline,
            "the dead request's key still held after 30 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request holding an `Idempotency-Key` when its process is killed (SIGKILL, while it
/// fetches an image that never comes): after the restart the key is not held forever. A
/// retry is a 409 while the dead hold's lease (`server.idempotency_lease_secs`, 2 s here)
/// runs, then runs the request; the next retry replays it.
async fn a_key_held_by_a_killed_request_is_free_after_its_lease(kind: Db) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let sim = SimServer::spawn(fast_sim()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // The first fetch hangs, so the first request stays in flight; later ones answer.
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let image = png(64, 48);
    let server = Server::start(
        "127.0.0.1",
        Arc::new(move |_: &str| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                return Reply::Slow(Duration::from_secs(300));
            }
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                image.len()
            )
            .into_bytes();
            answer.extend_from_slice(&image);
            Reply::Raw(answer)
        }),
    )
    .await
    .unwrap();
    let extra = [
        ("BATCHLENS__INTAKE__FETCH_ALLOW_PRIVATE", "true"),
        ("BATCHLENS__INTAKE__FETCH_TIMEOUT_SECS", "120"),
        ("BATCHLENS__SERVER__IDEMPOTENCY_LEASE_SECS", "2"),
    ];
    let body = json!({"mode": "batch", "fetch": "inline", "items": [
        {"custom_id": "a", "image_url": format!("http://127.0.0.1:{}/a.png", server.port())}
    ]});
    let post = |base: &str| {
        http.post(format!("{base}/v1/jobs"))
            .header("Idempotency-Key", "killed-1")
            .json(&body)
            .send()
    };

    let first = Service::start(&db.url, &sim, data.path(), &extra).await;
    first.wait_ready(&http).await;
    let pending = tokio::spawn(post(&first.base));
    assert!(
        common::wait_for(Duration::from_secs(30), || fetches.load(Ordering::SeqCst)
            == 1)
        .await,
        "the first request reaches its fetch"
    );
    first.kill();
    let lost = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the first request ends with its process")
        .unwrap();
    assert!(lost.is_err(), "no answer from a killed process: {lost:?}");

    let second = Service::start(&db.url, &sim, data.path(), &extra).await;
    second.wait_ready(&http).await;
    let (status, job) = past_the_hold(|| post(&second.base)).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["progress"]["total"], 1, "{job}");
    assert_eq!(job["rejected"], json!([]), "{job}");
    let r = post(&second.base).await.unwrap();
    assert_eq!(r.status(), 200, "a replay");
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["id"], job["id"], "{again}");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "fetched by the retry that ran"
    );
    let jobs = get(&http, format!("{}/v1/jobs", second.base)).await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "one job: {jobs}");
    second.kill();
}

on_both!(
    a_key_held_by_a_killed_request_is_free_after_its_lease,
    a_job_stored_before_a_crash_is_answered_to_the_retry
);

/// A job creation with an `Idempotency-Key` whose process dies (failpoint
/// `after_create_job`) after the job is stored and before its answer is recorded: the
/// retry answers that job (200, the same id) instead of creating a second one.
async fn a_job_stored_before_a_crash_is_answered_to_the_retry(kind: Db) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let sim = SimServer::spawn(fast_sim()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let lease = ("BATCHLENS__SERVER__IDEMPOTENCY_LEASE_SECS", "1");
    let body = json!({"mode": "batch", "items": mixed_items(3, 0)});
    let post = |base: &str| {
        http.post(format!("{base}/v1/jobs"))
            .header("Idempotency-Key", "crashed-1")
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
    };

    let failpoint = [lease, ("BATCHLENS_FAILPOINTS", "after_create_job")];
    let mut first = Service::start(&db.url, &sim, data.path(), &failpoint).await;
    first.wait_ready(&http).await;
    let lost = post(&first.base).await;
    assert!(lost.is_err(), "no answer from a crashed process: {lost:?}");
    let status = first.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(batchlens::failpoint::EXIT_CODE),
        "{status}"
    );

    let second = Service::start(&db.url, &sim, data.path(), &[lease]).await;
    second.wait_ready(&http).await;
    let stored = get(&http, format!("{}/v1/jobs", second.base)).await;
    let stored = stored["data"].as_array().unwrap().clone();
    assert_eq!(stored.len(), 1, "the job was stored: {stored:?}");
    // Without the mark the retry would meet 409 until the lease lapsed, then run again.
    let (status, job) = past_the_hold(|| post(&second.base)).await;
    assert_eq!(status, 200, "the stored job, not a new one: {job}");
    assert_eq!(job["id"], stored[0]["id"], "{job}");
    assert_eq!(job["progress"]["total"], 3, "{job}");
    let r = post(&second.base).await.unwrap();
    assert_eq!(r.status(), 200, "a replay");
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["id"], stored[0]["id"], "{again}");
    let jobs = get(&http, format!("{}/v1/jobs", second.base)).await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "one job: {jobs}");
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_killed_while_batches_are_in_flight() {
    killed_while_batches_are_in_flight(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_while_batches_are_in_flight() {
    killed_while_batches_are_in_flight(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_replicas_share_one_job() {
    let sim = SimConfig {
        in_progress_ms: 1_500,
        ..fast_sim()
    };
    // Polls at least 300 ms apart: two polls of one batch under 150 ms apart can only be two
    // replicas holding it at once, whatever a loaded machine does to arrival times.
    const POLLS: [(&str, &str); 2] = [
        ("BATCHLENS__BATCH__POLL_MIN_MS", "300"),
        ("BATCHLENS__BATCH__POLL_MAX_MS", "300"),
    ];
    let Some(a) = TestApp::spawn(
        Db::Postgres,
        sim,
        &[
            ("BATCHLENS__BATCH__MAX_FILE_BYTES", "30000"),
            POLLS[0],
            POLLS[1],
        ],
    )
    .await
    else {
        return;
    };
    let b = TestApp::start(
        a.db.clone(),
        a.sim.clone(),
        a.data_dir.clone(),
        &[
            ("BATCHLENS__BATCH__MAX_FILE_BYTES", "30000"),
            POLLS[0],
            POLLS[1],
            // Its own OpenAI key, so the simulator's journal shows which replica sent what.
            ("OPENAI_API_KEY", "sk-replica-b"),
        ],
    )
    .await;
    let (status, job) = a
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(150, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = b.wait_terminal(id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 150);
    let shards = done["batches"].as_array().unwrap().len();
    assert!(shards > 2, "{done}");
    let per_shard = batches_per_shard(&a.sim);
    assert_eq!(per_shard.len(), shards);
    assert!(per_shard.values().all(|&n| n == 1), "{per_shard:?}");
    // Both replicas worked: each created batches or polled them (a's key is sk-test).
    let journal = a.sim.sim().journal();
    for key in ["sk-test", "sk-replica-b"] {
        let worked = journal.iter().any(|e| {
            e.api_key.as_deref() == Some(key)
                && (e.method == "POST" && e.path == "/v1/batches"
                    || e.method == "GET" && e.path.starts_with("/v1/batches/batch_"))
        });
        assert!(worked, "the replica with key {key} sent no batch request");
    }
    // A shard is polled by one replica at a time: each poll pushes the next one at least
    // poll_min_ms (300 ms) away.
    let mut polls: HashMap<String, Vec<i64>> = HashMap::new();
    for entry in a.sim.sim().journal() {
        if entry.method == "GET" && entry.path.starts_with("/v1/batches/batch_") {
            polls
                .entry(entry.path.clone())
                .or_default()
                .push(entry.at_ms as i64);
        }
    }
    assert!(!polls.is_empty());
    for (path, mut times) in polls {
        times.sort();
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= 150,
                "{path} polled twice within {} ms",
                pair[1] - pair[0]
            );
        }
    }
    b.shutdown().await;
    a.shutdown().await;
}
