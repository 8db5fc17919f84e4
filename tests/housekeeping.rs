//! What the README promises operators, each with a test that fails when it breaks: the
//! retention janitor, deleting files at OpenAI, `/readyz` following the database, and a
//! SIGTERM that lets the running step finish.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{self, fast_sim, mixed_items, sql_exec, sql_i64, Db, Service, TestApp, TestDb};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openai_sim::{FaultRule, SimConfig, SimServer};
use serde_json::json;

on_both!(
    the_janitor_removes_files_past_retention_and_keeps_newer,
    remote_files_are_deleted_only_when_configured,
    sigterm_lets_the_running_submit_finish_and_exits_0,
    a_crash_between_creating_a_batch_and_storing_its_id_adopts_that_batch,
    a_webhook_receiver_that_hangs_is_timed_out_and_tried_again,
    insufficient_quota_fails_the_items_with_that_code_and_is_not_retried,
    polls_of_a_batch_double_their_interval_up_to_poll_max,
);

/// Waits up to `within` for `done`; panics naming `what` if it does not come.
async fn eventually(within: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(
        common::wait_for(within, done).await,
        "timed out waiting for {what}"
    );
}

async fn finished_batch_job(app: &TestApp, n: usize) -> String {
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(n, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    id
}

/// Moves a job's `completed_at` `hours` into the past, in the database itself.
async fn age_job(url: &str, id: &str, hours: i64) {
    let sql = if url.starts_with("sqlite:") {
        // SQLite keeps timestamps as microseconds since the epoch.
        format!(
            "UPDATE jobs SET completed_at = completed_at - {} WHERE id = '{id}'",
            hours * 3_600_000_000
        )
    } else {
        format!("UPDATE jobs SET completed_at = completed_at - interval '{hours} hours' WHERE id = '{id}'")
    };
    sql_exec(url, &sql).await;
}

fn exists(dir: &Path) -> bool {
    dir.try_exists().unwrap()
}

async fn the_janitor_removes_files_past_retention_and_keeps_newer(db: Db) {
    let retention = [("BATCHLENS__BATCH__RETENTION_HOURS", "2")];
    let Some(app) = TestApp::spawn(db, fast_sim(), &retention).await else {
        return;
    };
    let old = finished_batch_job(&app, 3).await;
    let recent = finished_batch_job(&app, 3).await;
    let batches = app.data_dir.join("batches");
    let (old_dir, recent_dir) = (batches.join(&old), batches.join(&recent));
    assert!(
        exists(&old_dir) && exists(&recent_dir),
        "each job kept its JSONL files"
    );
    // A folder of a job this database does not know (another deployment's) is left alone.
    let foreign = batches.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("input-1.jsonl"), b"{}\n").unwrap();

    let (sim, tdb, data_dir, _keep) = app.shutdown().await;
    age_job(&tdb.url, &old, 3).await; // past the 2 h retention
    age_job(&tdb.url, &recent, 1).await; // within it
                                         // The janitor sweeps once at start, then every ten minutes.
    let app = TestApp::start(tdb, sim, data_dir, &retention).await;
    eventually(Duration::from_secs(20), "the old job's files to go", || {
        !exists(&old_dir)
    })
    .await;
    assert!(exists(&recent_dir), "files within retention were removed");
    assert!(exists(&foreign), "a foreign job's folder was removed");
    // The results themselves stay: only the files go.
    let (status, results) = app.get(&format!("/v1/jobs/{old}/results")).await;
    assert_eq!(status, 200);
    assert_eq!(results["data"].as_array().unwrap().len(), 3, "{results}");
    app.shutdown().await;
}

async fn remote_files_are_deleted_only_when_configured(db: Db) {
    for delete in [true, false] {
        let setting = [(
            "BATCHLENS__BATCH__DELETE_REMOTE_FILES",
            if delete { "true" } else { "false" },
        )];
        let Some(app) = TestApp::spawn(db, fast_sim(), &setting).await else {
            return;
        };
        finished_batch_job(&app, 4).await;
        let sim = app.sim.clone();
        let stats = sim.sim().stats();
        assert_eq!(stats.batches_created, 1, "{stats:?}");
        assert_eq!(stats.files_uploaded, 1, "{stats:?}");
        if delete {
            // The input file and the output file (no line failed: no error file).
            eventually(Duration::from_secs(10), "both files deleted", || {
                sim.sim().stats().files_deleted == 2
            })
            .await;
        }
        app.shutdown().await;
        assert_eq!(
            sim.sim().stats().files_deleted,
            if delete { 2 } else { 0 },
            "delete_remote_files = {delete}"
        );
    }
}

async fn sigterm_lets_the_running_submit_finish_and_exits_0(kind: Db) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    // Creating the batch takes 2 s: the signal arrives while the submit step waits for it.
    let sim = SimServer::spawn(SimConfig {
        in_progress_ms: 600,
        faults: vec![FaultRule {
            path_prefix: "/v1/batches".into(),
            method: Some("POST".into()),
            latency_ms: 2_000,
            ..FaultRule::default()
        }],
        ..fast_sim()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let grace = [("BATCHLENS__SERVER__SHUTDOWN_TIMEOUT_SECS", "10")];
    let service = Service::start(&db.url, &sim, data.path(), &grace).await;
    service.wait_ready(&http).await;
    let job = common::post_json(
        &http,
        &format!("{}/v1/jobs", service.base),
        &json!({"mode": "batch", "items": mixed_items(6, 0)}),
    )
    .await;
    let id = job["id"].as_str().expect("a job id").to_string();
    // The upload is answered (the journal records answered requests): the batch is next.
    eventually(Duration::from_secs(30), "the input file's upload", || {
        sim.sim()
            .journal()
            .iter()
            .any(|e| e.method == "POST" && e.path == "/v1/files")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.sim().stats().batches_created,
        0,
        "the batch is still being created"
    );

    let status = service.terminate(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    // The step finished: the batch OpenAI created is the one the database knows, and no
    // lease outlives the process.
    assert_eq!(sim.sim().stats().batches_created, 1);
    let stored = "SELECT COUNT(*) FROM shards WHERE openai_batch_id IS NOT NULL";
    assert_eq!(sql_i64(&db.url, stored).await, 1, "the batch id was stored");
    for table in ["shards", "jobs"] {
        let held = format!("SELECT COUNT(*) FROM {table} WHERE lease_owner IS NOT NULL");
        assert_eq!(
            sql_i64(&db.url, &held).await,
            0,
            "{table} leases held after exit"
        );
    }

    // Started again, it carries on with that batch and submits nothing twice.
    let again = Service::start(&db.url, &sim, data.path(), &grace).await;
    again.wait_ready(&http).await;
    let start = Instant::now();
    loop {
        let job = common::get_json(&http, &format!("{}/v1/jobs/{id}", again.base)).await;
        if job["status"] == "completed" {
            assert_eq!(job["progress"]["succeeded"], 6, "{job}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.sim().stats().batches_created, 1, "submitted twice");
    let status = again.terminate(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

/// `/readyz` follows the database: 503 while PostgreSQL refuses connections to it, 200
/// again once it accepts them. (SQLite is a file the process holds open: nothing to stop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_readyz_is_503_while_the_database_is_gone() {
    let Some(app) = TestApp::spawn(Db::Postgres, fast_sim(), &[]).await else {
        return;
    };
    let ready = || async { app.http.get(app.url("/readyz")).send().await.unwrap() };
    assert_eq!(ready().await.status(), 200);
    let name = app
        .db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let admin = std::env::var("DATABASE_URL").unwrap();
    sql_exec(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
    )
    .await;
    sql_exec(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid)::int FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ),
    )
    .await;
    let start = Instant::now();
    let refused = loop {
        let r = ready().await;
        if r.status() == 503 {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "readyz stayed {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["status"], 503, "{problem}");
    sql_exec(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    )
    .await;
    let start = Instant::now();
    loop {
        let r = ready().await;
        if r.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "readyz stayed {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.shutdown().await;
}

async fn a_crash_between_creating_a_batch_and_storing_its_id_adopts_that_batch(kind: Db) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let sim = SimServer::spawn(fast_sim()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let failpoint = [("BATCHLENS_FAILPOINTS", "after_create_batch")];
    let mut first = Service::start(&db.url, &sim, data.path(), &failpoint).await;
    first.wait_ready(&http).await;
    let job = common::post_json(
        &http,
        &format!("{}/v1/jobs", first.base),
        &json!({"mode": "batch", "items": mixed_items(6, 0)}),
    )
    .await;
    let id = job["id"].as_str().expect("a job id").to_string();
    let status = first.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(batchlens::failpoint::EXIT_CODE),
        "{status}"
    );
    // OpenAI has the batch; the database does not know it.
    assert_eq!(sim.sim().stats().batches_created, 1);
    let unknown = "SELECT COUNT(*) FROM shards WHERE openai_batch_id IS NULL";
    assert_eq!(sql_i64(&db.url, unknown).await, 1, "the id was not stored");

    let again = Service::start(&db.url, &sim, data.path(), &[]).await;
    again.wait_ready(&http).await;
    let start = Instant::now();
    let done = loop {
        let job = common::get_json(&http, &format!("{}/v1/jobs/{id}", again.base)).await;
        if job["status"] == "completed" {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["progress"]["succeeded"], 6, "{done}");
    // Adopted, not created again: still one batch, and it is the one the shard names.
    let batches = sim.sim().batches();
    assert_eq!(batches.len(), 1, "a second batch was created");
    assert_eq!(
        done["batches"][0]["openai_batch_id"], batches[0]["id"],
        "{done}"
    );
    assert_eq!(
        again.terminate(Duration::from_secs(15)).await.code(),
        Some(0)
    );
}

/// A receiver whose first `hangs` calls never answer; later ones answer 204. Counts calls.
async fn hanging_receiver(hangs: usize) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n <= hangs {
                    std::future::pending::<()>().await;
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

async fn a_webhook_receiver_that_hangs_is_timed_out_and_tried_again(db: Db) {
    let Some(app) = TestApp::spawn(
        db,
        fast_sim(),
        &[
            ("BATCHLENS__WEBHOOKS__ALLOW_PRIVATE", "true"),
            ("BATCHLENS__WEBHOOKS__TIMEOUT_SECS", "1"),
            ("BATCHLENS__WEBHOOKS__RETRY_MIN_MS", "100"),
            ("BATCHLENS__WEBHOOKS__MAX_ATTEMPTS", "2"),
        ],
    )
    .await
    else {
        return;
    };
    let (patient, patient_calls) = hanging_receiver(1).await;
    let (stuck, stuck_calls) = hanging_receiver(usize::MAX).await;
    let mut ids = Vec::new();
    for hook in [&patient, &stuck] {
        let body = json!({"mode": "batch", "webhook_url": hook, "items": mixed_items(2, 0)});
        let (status, job) = app.post("/v1/jobs", &body).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        app.wait_terminal(id, Duration::from_secs(60)).await;
        common::wait_until(Duration::from_secs(30), || async {
            let state = &app.get(&format!("/v1/jobs/{id}")).await.1["webhook"]["state"];
            state == "delivered" || state == "failed"
        })
        .await;
    }
    // The first call hung and was cut off after timeout_secs; the second was delivered.
    let (_, job) = app.get(&format!("/v1/jobs/{}", ids[0])).await;
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    assert_eq!(patient_calls.load(Ordering::SeqCst), 2);
    // One that always hangs: given up after max_attempts, saying it timed out.
    let (_, job) = app.get(&format!("/v1/jobs/{}", ids[1])).await;
    assert_eq!(job["webhook"]["state"], "failed", "{job}");
    assert_eq!(job["webhook"]["attempts"], 2, "{job}");
    let why = job["webhook"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("timed out"), "{job}");
    assert_eq!(stuck_calls.load(Ordering::SeqCst), 2);
    app.shutdown().await;
}

async fn insufficient_quota_fails_the_items_with_that_code_and_is_not_retried(db: Db) {
    // Individual calls: every chat completion is refused for quota.
    let sim = SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/chat/completions".into(),
            insufficient_quota: true,
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let body = json!({"mode": "individual", "items": mixed_items(3, 0)});
    let (status, job) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["progress"]["failed"], 3, "{done}");
    for r in app.results_exactly(&id, 3).await {
        assert_eq!(r["error"]["code"], "insufficient_quota", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
    }
    // One call per item: a quota refusal waits on a human, so nothing is sent again.
    let refused = app
        .sim
        .sim()
        .journal()
        .iter()
        .filter(|e| e.path == "/v1/chat/completions")
        .count();
    assert_eq!(refused, 3);
    app.shutdown().await;

    // Batches: OpenAI refuses to create the batch for quota.
    let sim = SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/batches".into(),
            method: Some("POST".into()),
            insufficient_quota: true,
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let body = json!({"mode": "batch", "items": mixed_items(3, 0)});
    let (_, job) = app.post("/v1/jobs", &body).await;
    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    for r in app.results_exactly(&id, 3).await {
        assert_eq!(r["error"]["code"], "insufficient_quota", "{r}");
    }
    let creates = app
        .sim
        .sim()
        .journal()
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v1/batches")
        .count();
    assert_eq!(creates, 1, "a quota refusal was retried");
    app.shutdown().await;
}

async fn polls_of_a_batch_double_their_interval_up_to_poll_max(db: Db) {
    const MIN: u64 = 100;
    const MAX: u64 = 800;
    let sim = SimConfig {
        in_progress_ms: 6_000,
        ..fast_sim()
    };
    let (min, max) = (MIN.to_string(), MAX.to_string());
    let extra = [
        ("BATCHLENS__BATCH__POLL_MIN_MS", min.as_str()),
        ("BATCHLENS__BATCH__POLL_MAX_MS", max.as_str()),
    ];
    let Some(app) = TestApp::spawn(db, sim, &extra).await else {
        return;
    };
    let id = finished_batch_job(&app, 2).await;
    let polls: Vec<u64> = app
        .sim
        .sim()
        .journal()
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/v1/batches/batch_"))
        .map(|e| e.at_ms)
        .collect();
    assert!(
        polls.len() >= 6,
        "{} polls of job {id}: {polls:?}",
        polls.len()
    );
    // Each poll sets the next one an interval after itself: 2·min, doubling, capped at max.
    // A late poll (a busy machine) only makes a gap longer, so the lower bounds hold; 10 ms
    // is the clocks' rounding.
    let gaps: Vec<u64> = polls.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, gap) in gaps.iter().enumerate() {
        let interval = (MIN << (k + 1)).min(MAX);
        assert!(
            *gap + 10 >= interval,
            "gap {k} is {gap} ms, under {interval}: {gaps:?}"
        );
    }
    app.shutdown().await;
}
