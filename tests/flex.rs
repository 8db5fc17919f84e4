//! Flex mode end to end on the simulator: one chat completion per image with
//! `service_tier: "flex"`, billed at Batch API prices; "resource unavailable" 429s backed
//! off and retried; after `individual.flex_fallback_after_secs` the item falls back to a
//! batch (or a standard call); `auto` picks flex for small sets of a flex model.

use std::time::Duration;

use crate::common::{fast_sim, mixed_items, Db, TestApp};
use openai_sim::SimConfig;
use serde_json::{json, Value};

/// The governor has its own tests; its default 200,000 tokens a minute would only slow
/// these down.
const UNLIMITED_TPM: (&str, &str) = ("BATCHLENS__INDIVIDUAL__TPM", "100000000");
/// Short back-offs, so a test meets many "resource unavailable" answers quickly.
const QUICK_BACKOFF: [(&str, &str); 2] = [
    ("BATCHLENS__INDIVIDUAL__FLEX_BACKOFF_MS", "10"),
    ("BATCHLENS__INDIVIDUAL__FLEX_BACKOFF_MAX_MS", "50"),
];
/// A flex model of the default `individual.flex_models` (and of the simulator's list).
const FLEX_MODEL: &str = "gpt-5-mini";

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Batch API prices are half the standard ones for the gpt-5 family: what an item cost at
/// batch prices is half its `individual_usd` (to rounding of the pico-dollar sums).
fn at_batch_prices(r: &Value) -> bool {
    let (cost, standard) = (f(&r["cost_usd"]), f(&r["individual_usd"]));
    cost > 0.0 && (cost * 2.0 - standard).abs() <= standard * 1e-9
}

fn flex_sim(unavailable_rate: f64) -> SimConfig {
    SimConfig {
        flex_latency_ms: 20,
        flex_unavailable_rate: unavailable_rate,
        ..fast_sim()
    }
}

async fn spawn(db: Db, sim: SimConfig, extra: &[(&str, &str)]) -> Option<TestApp> {
    let mut all = vec![UNLIMITED_TPM];
    all.extend(QUICK_BACKOFF);
    all.extend_from_slice(extra);
    TestApp::spawn(db, sim, &all).await
}

async fn submit(app: &TestApp, body: Value) -> String {
    let (status, job) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_string()
}

async fn flex_results_are_billed_at_batch_prices(db: Db) {
    let Some(app) = spawn(db, flex_sim(0.0), &[]).await else {
        return;
    };
    let id = submit(
        &app,
        json!({"mode": "flex", "model": FLEX_MODEL, "items": mixed_items(6, 0)}),
    )
    .await;
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["mode"], "flex");
    assert_eq!(done["mode_reason"], "requested: flex");
    for r in app.results_exactly(&id, 6).await {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["mode"], "flex", "{r}");
        assert!(at_batch_prices(&r), "not at batch prices: {r}");
        assert!(r["note"].is_null(), "{r}");
    }
    // The simulator saw six flex calls and no batch.
    let calls = app.sim.sim().chat_calls();
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert!(
        calls.iter().all(|c| c.flex && c.outcome == "accepted"),
        "{calls:?}"
    );
    assert_eq!(app.sim.sim().stats().batches_created, 0);
    let (_, cost) = app.get(&format!("/v1/jobs/{id}/cost")).await;
    assert_eq!(cost["by_mode"]["flex"]["items"], 6, "{cost}");
    assert_eq!(cost["by_mode"]["flex"]["usd"], cost["actual_usd"], "{cost}");
    assert_eq!(cost["by_mode"]["individual"]["items"], 0, "{cost}");
    assert!(
        f(&cost["savings_usd"]) > 0.0 && f(&cost["savings_percent"]) > 49.9,
        "{cost}"
    );
    app.shutdown().await;
}

async fn resource_unavailable_429s_still_finish_every_image_once(db: Db) {
    let Some(app) = spawn(db, flex_sim(0.2), &[]).await else {
        return;
    };
    let n = 40;
    let id = submit(
        &app,
        json!({"mode": "flex", "model": FLEX_MODEL, "items": mixed_items(n, 0)}),
    )
    .await;
    let done = app.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(done["progress"]["succeeded"], n, "{done}");
    let stats = app.sim.sim().stats();
    assert!(stats.flex_unavailable > 0, "no 429 was injected: {stats:?}");
    // Each image was answered exactly once, at flex prices, in its first attempt: the
    // 429s were waited out in the call, not sent round the retry pass.
    let accepted = app
        .sim
        .sim()
        .chat_calls()
        .iter()
        .filter(|c| c.outcome == "accepted")
        .count();
    assert_eq!(accepted, n, "{stats:?}");
    assert_eq!(stats.batches_created, 0);
    for r in app.results_exactly(&id, n).await {
        assert_eq!(
            (&r["mode"], &r["attempts"]),
            (&json!("flex"), &json!(1)),
            "{r}"
        );
        assert!(at_batch_prices(&r), "{r}");
    }
    app.shutdown().await;
}

async fn no_flex_capacity_falls_back_to_batch_after_the_configured_time(db: Db) {
    let fallback = [("BATCHLENS__INDIVIDUAL__FLEX_FALLBACK_AFTER_SECS", "1")];
    let Some(app) = spawn(db, flex_sim(1.0), &fallback).await else {
        return;
    };
    let id = submit(
        &app,
        json!({"mode": "flex", "model": FLEX_MODEL, "items": mixed_items(4, 0)}),
    )
    .await;
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 4, "{done}");
    for r in app.results_exactly(&id, 4).await {
        assert_eq!(r["mode"], "batch", "{r}");
        assert!(r["error"].is_null(), "{r}");
        let note = r["note"].as_str().unwrap_or_default();
        assert!(note.contains("fell back to the Batch API"), "{r}");
        assert!(at_batch_prices(&r), "{r}");
    }
    let stats = app.sim.sim().stats();
    assert!(stats.batches_created >= 1, "{stats:?}");
    assert!(stats.flex_unavailable >= 4, "{stats:?}");
    assert!(
        app.sim
            .sim()
            .chat_calls()
            .iter()
            .all(|c| c.outcome != "accepted"),
        "no flex call was answered"
    );
    let (_, cost) = app.get(&format!("/v1/jobs/{id}/cost")).await;
    assert_eq!(cost["by_mode"]["batch"]["items"], 4, "{cost}");
    assert_eq!(cost["by_mode"]["flex"]["items"], 0, "{cost}");
    app.shutdown().await;
}

async fn no_flex_capacity_falls_back_to_standard_when_configured(db: Db) {
    let fallback = [
        ("BATCHLENS__INDIVIDUAL__FLEX_FALLBACK_AFTER_SECS", "1"),
        ("BATCHLENS__INDIVIDUAL__FLEX_FALLBACK", "standard"),
    ];
    let Some(app) = spawn(db, flex_sim(1.0), &fallback).await else {
        return;
    };
    let id = submit(
        &app,
        json!({"mode": "flex", "model": FLEX_MODEL, "items": mixed_items(3, 0)}),
    )
    .await;
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["progress"]["succeeded"], 3, "{done}");
    for r in app.results_exactly(&id, 3).await {
        assert_eq!(
            (&r["mode"], &r["attempts"]),
            (&json!("individual"), &json!(1)),
            "{r}"
        );
        assert_eq!(r["cost_usd"], r["individual_usd"], "standard prices: {r}");
        let note = r["note"].as_str().unwrap_or_default();
        assert!(note.contains("fell back to a standard call"), "{r}");
    }
    let calls = app.sim.sim().chat_calls();
    let standard = calls
        .iter()
        .filter(|c| c.outcome == "accepted")
        .collect::<Vec<_>>();
    assert_eq!(standard.len(), 3, "{calls:?}");
    assert!(standard.iter().all(|c| !c.flex), "{calls:?}");
    assert_eq!(app.sim.sim().stats().batches_created, 0);
    app.shutdown().await;
}

async fn auto_chooses_flex_for_a_small_set_of_a_flex_model(db: Db) {
    let Some(app) = spawn(db, flex_sim(0.0), &[]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"model": "gpt-5-nano", "items": mixed_items(3, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["mode"], "flex", "{job}");
    let reason = job["mode_reason"].as_str().unwrap();
    assert!(
        reason.contains("flex") && reason.contains("Batch API prices"),
        "{reason}"
    );
    let id = job["id"].as_str().unwrap();
    app.wait_terminal(id, Duration::from_secs(60)).await;
    for r in app.results_exactly(id, 3).await {
        assert_eq!(r["mode"], "flex", "{r}");
    }
    assert!(app.sim.sim().chat_calls().iter().all(|c| c.flex));
    // A model without flex keeps standard calls for a small set.
    let (_, plain) = app
        .post(
            "/v1/jobs",
            &json!({"model": "gpt-4o-mini", "items": mixed_items(3, 0)}),
        )
        .await;
    assert_eq!(plain["mode"], "individual", "{plain}");
    app.shutdown().await;
}

on_both!(
    flex_results_are_billed_at_batch_prices,
    resource_unavailable_429s_still_finish_every_image_once,
    no_flex_capacity_falls_back_to_batch_after_the_configured_time,
    no_flex_capacity_falls_back_to_standard_when_configured,
    auto_chooses_flex_for_a_small_set_of_a_flex_model,
);

/// Nothing is stored: one backend is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flex_on_a_model_without_flex_is_a_422_naming_mode() {
    let app = spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let body = json!({"mode": "flex", "model": "gpt-4o-mini", "items": mixed_items(2, 0)});
    for path in ["/v1/jobs", "/v1/estimates"] {
        let (status, problem) = app.post(path, &body).await;
        assert_eq!(status, 422, "{path}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "mode", "{path}: {problem}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("gpt-4o-mini does not offer flex"),
            "{message}"
        );
    }
    assert!(app.sim.sim().chat_calls().is_empty());
    // A snapshot of a flex model is a flex model.
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "flex", "model": "gpt-5-mini-2025-08-07", "items": mixed_items(1, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    app.shutdown().await;
}
