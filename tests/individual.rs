//! Individual mode end to end: small jobs run as one chat completion per image, with the
//! same result records as batch mode, fairly between jobs, resuming after a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{self, fast_sim, mixed_items, wait_until, Db, Service, TestApp, TestDb};
use openai_sim::{FaultRule, SimConfig, SimServer};
use serde_json::{json, Value};

/// The default 200,000 tokens a minute would make these tests wait on the governor
/// (gpt-4o-mini bills 2,833 tokens per image); the governor has its own tests.
const UNLIMITED_TPM: (&str, &str) = ("BATCHLENS__INDIVIDUAL__TPM", "100000000");

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

async fn small_jobs_run_individually_with_batch_shaped_results(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let (status, job) = app
        .post("/v1/jobs", &json!({"items": mixed_items(6, 0)}))
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["mode"], "individual");
    assert!(
        job["mode_reason"]
            .as_str()
            .unwrap()
            .contains("individual.max_items"),
        "{job}"
    );
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 6);
    assert!(done["batches"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["openai_batch_id"].is_null()));
    let results = app.results_exactly(id, 6).await;
    for r in &results {
        assert_eq!(r["mode"], "individual", "{r}");
        assert_eq!(r["attempts"], 1);
        assert!(r["output"]["category"].is_string());
        // Standard prices: what it cost is what individual calls cost.
        assert_eq!(r["cost_usd"], r["individual_usd"]);
        assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(app.sim.sim().stats().chat_calls, 6);
    assert_eq!(app.sim.sim().stats().batches_created, 0);
    let (_, cost) = app.get(&format!("/v1/jobs/{id}/cost")).await;
    assert_eq!(cost["savings_usd"], 0.0);
    assert_eq!(cost["by_mode"]["individual"]["items"], 6);

    // The same images through the Batch API give records of the same shape.
    let (_, batch) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(6, 0)}),
        )
        .await;
    let batch_id = batch["id"].as_str().unwrap();
    app.wait_terminal(batch_id, Duration::from_secs(30)).await;
    let batch_results = app.all_results(batch_id).await;
    assert_eq!(keys(&results[0]), keys(&batch_results[0]));
    assert_eq!(keys(&results[0]["usage"]), keys(&batch_results[0]["usage"]));
    assert_eq!(
        keys(&results[0]["output"]),
        keys(&batch_results[0]["output"])
    );
    app.shutdown().await;
}

async fn a_small_job_is_not_starved_by_a_large_one(db: Db) {
    // The simulator holds every call: the big job's first shard fills the four call slots
    // and waits there while the small job arrives and is planned. Released, the calls
    // arrive in the order the executor claims shards, read off the simulator's record
    // (the small job's model tells its calls apart): no clock in it, however slow the
    // machine.
    let sim = openai_sim::SimConfig {
        chat_hold: true,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(
        db,
        sim,
        &[("BATCHLENS__INDIVIDUAL__CONCURRENCY", "4"), UNLIMITED_TPM],
    )
    .await
    else {
        return;
    };
    let (status, big) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "individual", "model": "gpt-4o-mini", "items": mixed_items(160, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{big}");
    let big_id = big["id"].as_str().unwrap().to_string();
    let sim = app.sim.sim();
    let held = sim.clone();
    wait_until(Duration::from_secs(30), move || {
        let sim = held.clone();
        async move { sim.chat_calls().len() == 4 }
    })
    .await;
    let (status, small) = app
        .post(
            "/v1/jobs",
            &json!({"name": "small", "mode": "individual", "model": "gpt-4o",
                    "items": mixed_items(3, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{small}");
    let small_id = small["id"].as_str().unwrap().to_string();
    // Planned: its shard is in the database (its items stay pending until a slot runs it).
    let planned = "SELECT COUNT(*) FROM shards s JOIN jobs j ON j.id = s.job_id \
                   WHERE j.name = 'small' AND s.kind = 'individual'";
    wait_until(Duration::from_secs(30), || async {
        common::sql_i64(&app.db.url, planned).await == 1
    })
    .await;
    assert_eq!(
        sim.chat_calls().len(),
        4,
        "the slots were full while it was planned"
    );
    let mut config = sim.config();
    config.chat_hold = false;
    sim.set_config(config);

    let done = app.wait_terminal(&small_id, Duration::from_secs(60)).await;
    assert_eq!(done["progress"]["succeeded"], 3, "{done}");
    let big_done = app.wait_terminal(&big_id, Duration::from_secs(120)).await;
    assert_eq!(big_done["progress"]["succeeded"], 160, "{big_done}");
    let models: Vec<String> = sim.chat_calls().into_iter().map(|c| c.model).collect();
    assert_eq!(models.len(), 163, "{models:?}");
    let small_at: Vec<usize> = (0..models.len())
        .filter(|&i| models[i] == "gpt-4o")
        .collect();
    assert_eq!(small_at.len(), 3, "{models:?}");
    // The shard in the slots finishes (8 calls), then the small job's shard is claimed:
    // next, or after one more of the big job's at most. First come, first served would
    // put it after all 160.
    let shard = batchlens::pipeline::INDIVIDUAL_SHARD_ITEMS;
    assert!(
        small_at.iter().all(|&i| i < 2 * shard + 3),
        "the small job's calls came at {small_at:?} of 163"
    );
    app.shutdown().await;
}

async fn a_restart_does_not_call_again_for_finished_items(db: Db) {
    let Some(test_db) = TestDb::new(db).await else {
        return;
    };
    let sim = SimServer::spawn(openai_sim::SimConfig {
        chat_latency_ms: 30,
        ..fast_sim()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let extra = [("BATCHLENS__INDIVIDUAL__CONCURRENCY", "4"), UNLIMITED_TPM];
    let first = Service::start(&test_db.url, &sim, data.path(), &extra).await;
    first.wait_ready(&http).await;
    let job = common::post_json(
        &http,
        &format!("{}/v1/jobs", first.base),
        &json!({"mode": "individual", "items": mixed_items(60, 0)}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job_url = format!("{}/v1/jobs/{id}", first.base);
    wait_until(Duration::from_secs(30), || async {
        let j = common::get_json(&http, &job_url).await;
        j["progress"]["succeeded"].as_i64().unwrap_or(0) >= 20
    })
    .await;
    first.kill();
    let calls_at_kill = sim.sim().stats().chat_calls;

    let second = Service::start(&test_db.url, &sim, data.path(), &extra).await;
    second.wait_ready(&http).await;
    let job_url = format!("{}/v1/jobs/{id}", second.base);
    wait_until(Duration::from_secs(60), || async {
        let j = common::get_json(&http, &job_url).await;
        j["status"] == "completed"
    })
    .await;
    let j = common::get_json(&http, &job_url).await;
    assert_eq!(j["progress"]["succeeded"], 60, "{j}");
    // Calls in flight at the kill may be repeated (at most the 4 call slots); items that
    // had succeeded never are.
    let calls = sim.sim().stats().chat_calls;
    assert!(calls >= 60);
    assert!(
        calls <= 60 + 4,
        "{calls} calls for 60 items ({calls_at_kill} before the kill)"
    );
    second.kill();
}

/// One 429 asking for 1.5 s holds every sender to the model, not only the call that got it
/// (a retry inside that call alone would let the others run into the limit too).
async fn a_429_pauses_every_call_to_the_model(db: Db) {
    const RETRY_AFTER_MS: u64 = 3_000;
    // The simulator holds the first three calls unanswered and throttles the fourth (a
    // fault, answered at once). The held three are released a second after the 429, when
    // batchlens has long had it in hand; their slots are then free to send again, and only
    // the shared pause stops them. Whatever the machine's speed, every call after the
    // held three must arrive after the pause.
    let sim = SimConfig {
        chat_hold: true,
        faults: vec![FaultRule {
            path_prefix: "/v1/chat/completions".into(),
            fault_429_rate: 1.0,
            retry_after_ms: RETRY_AFTER_MS,
            remaining: Some(1),
            skip: 3,
            ..FaultRule::default()
        }],
        ..fast_sim()
    };
    let extra = [UNLIMITED_TPM, ("BATCHLENS__INDIVIDUAL__CONCURRENCY", "4")];
    let Some(app) = TestApp::spawn(db, sim, &extra).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "individual", "items": mixed_items(20, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let sim = app.sim.sim();
    let throttled = |sim: &openai_sim::Sim| {
        sim.journal()
            .iter()
            .find(|e| e.path == "/v1/chat/completions" && e.status == 429)
            .map(|e| e.at_ms)
    };
    let probe = sim.clone();
    wait_until(Duration::from_secs(30), move || {
        let sim = probe.clone();
        async move { sim.chat_calls().len() == 3 && throttled(&sim).is_some() }
    })
    .await;
    let throttled_at = throttled(&sim).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(sim.chat_calls().len(), 3, "nothing sent after the 429");
    let mut config = sim.config();
    config.chat_hold = false;
    sim.set_config(config);

    let done = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 20, "{done}");
    // The throttled item was sent again in the same attempt, not failed.
    assert!(app
        .results_exactly(id, 20)
        .await
        .iter()
        .all(|r| r["attempts"] == 1));
    let calls: Vec<u64> = sim.chat_calls().iter().map(|c| c.at_ms).collect();
    assert_eq!(calls.len(), 20, "{calls:?}");
    // Without the shared pause, the three released slots would send the next images at
    // once, about a second into it.
    let early: Vec<u64> = calls[3..]
        .iter()
        // (less 50 ms for the two processes' clocks)
        .filter(|at| **at < throttled_at + RETRY_AFTER_MS - 50)
        .map(|at| at - throttled_at)
        .collect();
    assert!(
        early.is_empty(),
        "calls {early:?} ms after the 429, inside its {RETRY_AFTER_MS} ms pause"
    );
    app.shutdown().await;
}

on_both!(
    small_jobs_run_individually_with_batch_shaped_results,
    a_small_job_is_not_starved_by_a_large_one,
    a_restart_does_not_call_again_for_finished_items,
    a_429_pauses_every_call_to_the_model,
);
