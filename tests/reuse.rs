//! Reuse: an image this tenant already had analysed (same bytes, analyzer, model and
//! detail, recently enough) is answered from that analysis without any OpenAI call and at
//! no cost; the same image twice in one job is sent once and every copy gets the result.
//! Requests are counted at openai-sim.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{b64, fast_sim, png, sql_exec, wait_until, Db, TestApp};
use crate::tenants;
use serde_json::{json, Value};

/// The default 200,000 tokens a minute would make individual jobs wait on the governor.
const UNLIMITED_TPM: (&str, &str) = ("BATCHLENS__INDIVIDUAL__TPM", "100000000");
/// The harness turns reuse off for the other areas' tests.
const REUSE: (&str, &str) = ("BATCHLENS__INTAKE__REUSE", "true");
const WAIT: Duration = Duration::from_secs(60);

/// Distinct inline images (each size gives other bytes), named `{prefix}-{i}`.
fn images(range: std::ops::Range<u32>, prefix: &str) -> Vec<Value> {
    range
        .map(|i| {
            json!({"custom_id": format!("{prefix}-{i}"),
                   "image_base64": b64(&png(8 + i, 8)), "mime_type": "image/png"})
        })
        .collect()
}

/// Submits `body`, waits for the job to finish, and returns it.
async fn run(app: &TestApp, body: &Value) -> Value {
    let (status, job) = app.post("/v1/jobs", body).await;
    assert_eq!(status, 202, "{job}");
    let done = app.wait_terminal(job["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    done
}

fn id(job: &Value) -> &str {
    job["id"].as_str().unwrap()
}

/// Every result of the job by custom_id.
async fn results(app: &TestApp, job: &Value, n: usize) -> HashMap<String, Value> {
    app.results_exactly(id(job), n)
        .await
        .into_iter()
        .map(|r| (r["custom_id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// Chat calls, batches created and every `/v1` request openai-sim has answered.
fn calls(app: &TestApp) -> (u64, u64, u64) {
    let s = app.sim.sim().stats();
    (s.chat_calls, s.batches_created, s.requests)
}

async fn the_same_images_twice_make_no_call_and_cost_nothing(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[REUSE]).await else {
        return;
    };
    let first = run(
        &app,
        &json!({"mode": "batch", "items": images(0..100, "img")}),
    )
    .await;
    assert_eq!(first["progress"]["succeeded"], 100, "{first}");
    assert_eq!(first["progress"]["reused"], 0, "{first}");
    let before = calls(&app);
    assert_eq!(before.1, 1, "the first job ran as one batch");
    let (_, first_cost) = app.get(&format!("/v1/jobs/{}/cost", id(&first))).await;
    assert!(first_cost["actual_usd"].as_f64().unwrap() > 0.0);

    // The estimate of the same images already counts them at 0.
    let again = json!({"mode": "batch", "items": images(0..100, "again")});
    let (status, est) = app.post("/v1/estimates", &again).await;
    assert_eq!(status, 200, "{est}");
    assert_eq!(est["reused"], 100, "{est}");
    assert_eq!(est["batch_usd"], 0.0, "{est}");

    let (status, second) = app.post("/v1/jobs", &again).await;
    assert_eq!(status, 202, "{second}");
    // Answered at submit: nothing is left to run.
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(second["progress"]["succeeded"], 100, "{second}");
    assert_eq!(second["progress"]["reused"], 100, "{second}");
    assert_eq!(second["progress"]["percent"], 100.0, "{second}");

    let earlier = results(&app, &first, 100).await;
    let reused = results(&app, &second, 100).await;
    for (custom_id, r) in &reused {
        let from = custom_id.replace("again-", "img-");
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["reused_from"]["job_id"], first["id"], "{r}");
        assert_eq!(r["reused_from"]["custom_id"], from.as_str(), "{r}");
        assert_eq!(r["output"], earlier[&from]["output"], "{r}");
        assert!(r["output"].is_object(), "{r}");
        assert_eq!(r["cost_usd"], 0.0, "{r}");
        assert_eq!(r["usage"]["input_tokens"], 0, "{r}");
        assert_eq!(r["usage"]["output_tokens"], 0, "{r}");
        assert_eq!(earlier[&from]["reused_from"], Value::Null);
    }

    let (_, cost) = app.get(&format!("/v1/jobs/{}/cost", id(&second))).await;
    assert_eq!(cost["actual_usd"], 0.0, "{cost}");
    assert_eq!(cost["tokens"]["input"], 0, "{cost}");
    assert_eq!(cost["reused"]["items"], 100, "{cost}");
    // What they would have cost: what the first job was billed, in batch and individually.
    assert_eq!(
        cost["reused"]["batch_usd"], first_cost["actual_usd"],
        "{cost}"
    );
    assert_eq!(
        cost["reused"]["individual_usd"], first_cost["individual_usd"],
        "{cost}"
    );
    assert_eq!(cost["individual_usd"], first_cost["individual_usd"]);
    assert_eq!(cost["savings_usd"], cost["individual_usd"], "{cost}");

    assert_eq!(calls(&app), before, "the second job made no OpenAI call");
    app.shutdown().await;
}

async fn another_analyzer_model_or_detail_sends_again(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[UNLIMITED_TPM, REUSE]).await else {
        return;
    };
    let base = json!({"mode": "individual", "items": images(0..3, "img")});
    run(&app, &base).await;
    assert_eq!(calls(&app).0, 3);

    let mut analyzer = base.clone();
    analyzer["analyzer"] = json!({"prompt": "Name the colour.", "schema": {
        "type": "object", "properties": {"colour": {"type": "string"}},
        "required": ["colour"], "additionalProperties": false}});
    let mut model = base.clone();
    model["model"] = json!("gpt-4o");
    let mut detail = base.clone();
    detail["detail"] = json!("high");
    let mut sent = 3;
    for (what, body) in [("analyzer", analyzer), ("model", model), ("detail", detail)] {
        let job = run(&app, &body).await;
        assert_eq!(job["progress"]["reused"], 0, "{what}: {job}");
        sent += 3;
        assert_eq!(calls(&app).0, sent, "{what}: the images are sent again");
        for r in results(&app, &job, 3).await.values() {
            assert_eq!(r["reused_from"], Value::Null, "{what}: {r}");
            assert!(r["cost_usd"].as_f64().unwrap() > 0.0, "{what}: {r}");
        }
    }
    // The same analyzer, model and detail again: nothing is sent.
    let job = run(&app, &base).await;
    assert_eq!(job["progress"]["reused"], 3, "{job}");
    assert_eq!(calls(&app).0, sent);
    app.shutdown().await;
}

/// `A, A, B, A, url, url`: A and B are sent once each; the URLs (OpenAI fetches them, no
/// hash) both.
fn with_duplicates(mode: &str) -> Value {
    let a = b64(&png(20, 10));
    let b = b64(&png(10, 20));
    let url = "https://cdn.example.com/same.jpg";
    json!({"mode": mode, "items": [
        {"custom_id": "a1", "image_base64": a},
        {"custom_id": "a2", "data_url": format!("data:image/png;base64,{a}")},
        {"custom_id": "b1", "image_base64": b},
        {"custom_id": "a3", "image_base64": a},
        {"custom_id": "u1", "image_url": url},
        {"custom_id": "u2", "image_url": url},
    ]})
}

async fn check_duplicates_fanned_out(app: &TestApp, job: &Value) {
    assert_eq!(job["progress"]["succeeded"], 6, "{job}");
    assert_eq!(job["progress"]["reused"], 2, "{job}");
    let r = results(app, job, 6).await;
    for copy in ["a2", "a3"] {
        assert_eq!(r[copy]["status"], "succeeded", "{copy}: {}", r[copy]);
        assert_eq!(r[copy]["output"], r["a1"]["output"], "{copy}");
        assert_eq!(r[copy]["reused_from"]["job_id"], job["id"], "{copy}");
        assert_eq!(r[copy]["reused_from"]["custom_id"], "a1", "{copy}");
        assert_eq!(r[copy]["cost_usd"], 0.0, "{copy}");
    }
    for sent in ["a1", "b1", "u1", "u2"] {
        assert_eq!(r[sent]["reused_from"], Value::Null, "{sent}");
        assert!(r[sent]["cost_usd"].as_f64().unwrap() > 0.0, "{sent}");
    }
    let (_, cost) = app.get(&format!("/v1/jobs/{}/cost", id(job))).await;
    assert_eq!(cost["reused"]["items"], 2, "{cost}");
    let a1 = r["a1"]["individual_usd"].as_f64().unwrap();
    let reused = cost["reused"]["individual_usd"].as_f64().unwrap();
    assert!((reused - 2.0 * a1).abs() < 1e-12, "{cost}");
}

async fn duplicates_in_one_job_are_sent_once(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[UNLIMITED_TPM, REUSE]).await else {
        return;
    };
    let job = run(&app, &with_duplicates("individual")).await;
    assert_eq!(calls(&app).0, 4, "a1, b1 and both URLs");
    check_duplicates_fanned_out(&app, &job).await;

    // In batch mode: one batch of four lines. A new analyzer, so nothing is reused.
    let mut body = with_duplicates("batch");
    body["analyzer"] = json!({"prompt": "Name the colour.", "schema": {
        "type": "object", "properties": {"colour": {"type": "string"}},
        "required": ["colour"], "additionalProperties": false}});
    let job = run(&app, &body).await;
    let batches = app.sim.sim().batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["request_counts"]["total"], 4, "{}", batches[0]);
    check_duplicates_fanned_out(&app, &job).await;
    app.shutdown().await;
}

async fn a_chunk_of_an_open_job_copies_an_earlier_chunk(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[UNLIMITED_TPM, REUSE]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"open": true, "mode": "individual", "items": images(0..2, "one")}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/jobs/{}", id(&job));
    let (status, chunk) = app
        .post(
            &format!("{path}/items"),
            &json!({"items": images(1..3, "two")}),
        )
        .await;
    assert_eq!(status, 200, "{chunk}");
    let (status, _) = app.post(&format!("{path}/submit"), &json!({})).await;
    assert!(status < 300, "{status}");
    let done = app.wait_terminal(id(&job), WAIT).await;
    assert_eq!(done["progress"]["succeeded"], 4, "{done}");
    assert_eq!(done["progress"]["reused"], 1, "{done}");
    assert_eq!(calls(&app).0, 3, "images 0, 1 and 2, once each");
    let r = results(&app, &job, 4).await;
    assert_eq!(
        r["two-1"]["reused_from"]["custom_id"], "one-1",
        "{}",
        r["two-1"]
    );
    assert_eq!(r["two-1"]["output"], r["one-1"]["output"]);
    app.shutdown().await;
}

async fn tenants_never_share(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let keys = [("acme", "key-acme"), ("globex", "key-globex")];
    let file = tenants::config(dir.path(), &keys, "");
    let Some(app) =
        TestApp::spawn_with_config(db, fast_sim(), &[UNLIMITED_TPM, REUSE], Some(&file)).await
    else {
        return;
    };
    let body = json!({"mode": "individual", "items": images(0..3, "img")});
    // Submits the body with `key` and waits for the job to finish.
    let run_as = |key: &'static str| {
        let (app, body) = (&app, &body);
        async move {
            let r = tenants::post_with(app, "/v1/jobs", key, body).await;
            assert_eq!(r.status(), 202);
            let path = format!("/v1/jobs/{}", id(&r.json::<Value>().await.unwrap()));
            wait_until(WAIT, || async {
                tenants::json_with(app, &path, key).await["status"] == "completed"
            })
            .await;
            tenants::json_with(app, &path, key).await
        }
    };
    let acme = run_as("key-acme").await;
    assert_eq!(acme["progress"]["reused"], 0);
    let globex = run_as("key-globex").await;
    assert_eq!(
        globex["progress"]["reused"], 0,
        "another tenant's: {globex}"
    );
    assert_eq!(calls(&app).0, 6);
    let acme = run_as("key-acme").await;
    assert_eq!(acme["progress"]["reused"], 3, "the tenant's own: {acme}");
    assert_eq!(calls(&app).0, 6);
    app.shutdown().await;
}

async fn reuse_false_sends_again(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[UNLIMITED_TPM, REUSE]).await else {
        return;
    };
    let mut body = json!({"mode": "individual", "items": images(0..3, "img")});
    run(&app, &body).await;
    body["reuse"] = json!(false);
    let (status, est) = app.post("/v1/estimates", &body).await;
    assert_eq!(status, 200, "{est}");
    assert_eq!(est["reused"], 0, "{est}");
    let job = run(&app, &body).await;
    assert_eq!(job["progress"]["reused"], 0, "{job}");
    assert_eq!(calls(&app).0, 6);
    body["reuse"] = json!(true);
    let job = run(&app, &body).await;
    assert_eq!(job["progress"]["reused"], 3, "{job}");
    assert_eq!(calls(&app).0, 6);
    app.shutdown().await;
}

/// Moves every finished item of the database `days` further into the past.
async fn age_items(app: &TestApp, days: i64) {
    let sql = if app.db.url.starts_with("sqlite:") {
        format!(
            "UPDATE items SET finished_at = finished_at - {} WHERE finished_at IS NOT NULL",
            days * 86_400 * 1_000_000
        )
    } else {
        format!(
            "UPDATE items SET finished_at = finished_at - interval '{days} days' \
             WHERE finished_at IS NOT NULL"
        )
    };
    sql_exec(&app.db.url, &sql).await;
}

async fn only_results_within_the_max_age_are_reused(db: Db) {
    let extra = [
        UNLIMITED_TPM,
        REUSE,
        ("BATCHLENS__INTAKE__REUSE_MAX_AGE_DAYS", "10"),
    ];
    let Some(app) = TestApp::spawn(db, fast_sim(), &extra).await else {
        return;
    };
    let body = json!({"mode": "individual", "items": images(0..3, "img")});
    let first = run(&app, &body).await;
    age_items(&app, 9).await;
    let job = run(&app, &body).await;
    assert_eq!(job["progress"]["reused"], 3, "9 days old: {job}");
    assert_eq!(calls(&app).0, 3);
    age_items(&app, 2).await;
    let job = run(&app, &body).await;
    assert_eq!(job["progress"]["reused"], 0, "11 days old: {job}");
    assert_eq!(calls(&app).0, 6);
    // The fresh analysis is what the next job takes, not the old one.
    let job = run(&app, &body).await;
    for r in results(&app, &job, 3).await.values() {
        assert_ne!(r["reused_from"]["job_id"], first["id"], "{r}");
        assert!(r["reused_from"]["job_id"].is_string(), "{r}");
    }
    app.shutdown().await;
}

on_both!(
    the_same_images_twice_make_no_call_and_cost_nothing,
    another_analyzer_model_or_detail_sends_again,
    duplicates_in_one_job_are_sent_once,
    a_chunk_of_an_open_job_copies_an_earlier_chunk,
    tenants_never_share,
    reuse_false_sends_again,
    only_results_within_the_max_age_are_reused,
);
