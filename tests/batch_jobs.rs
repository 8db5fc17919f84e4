//! Batch jobs end to end, on SQLite and on PostgreSQL: the real application against
//! openai-sim, driven over HTTP.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::{self, fast_sim, mixed_items, Db, TestApp};
use serde_json::{json, Value};

on_both!(
    a_thousand_mixed_items_complete_each_exactly_once,
    a_small_byte_cap_spreads_a_job_over_shards_one_batch_each,
    an_expired_batch_keeps_its_finished_results,
    a_token_limit_failure_fails_its_items_with_that_code,
);

/// Image sizes that give distinct token counts under gpt-4.1-mini's patch formula, so a
/// result matched to the wrong custom_id shows in its usage.
const SIZES: [(u32, u32); 4] = [(32, 32), (64, 32), (96, 64), (128, 128)];

async fn a_thousand_mixed_items_complete_each_exactly_once(db: Db) {
    let sim = openai_sim::SimConfig {
        line_failure_rate: 0.05,
        seed: 7,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let mut items = mixed_items(1000, 33);
    // Inline images of four sizes, keyed by position.
    let pngs: Vec<String> = SIZES
        .iter()
        .map(|&(w, h)| common::b64(&common::png(w, h)))
        .collect();
    for (i, item) in items.iter_mut().enumerate() {
        if item.get("data_url").is_some() {
            item["data_url"] = json!(format!("data:image/png;base64,{}", pngs[i % 4]));
        }
    }
    let invalid: HashSet<String> = (0..1000)
        .filter(|i| i % 33 == 32)
        .map(|i| format!("img-{i}"))
        .collect();
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"name": "thousand", "mode": "batch", "model": "gpt-4.1-mini", "items": items}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["mode"], "batch");
    assert_eq!(job["progress"]["total"], 1000);
    assert_eq!(job["progress"]["rejected"], invalid.len());
    let rejected: HashSet<String> = job["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(
                r["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not a PNG, JPEG, WEBP or GIF"),
                "{r}"
            );
            r["custom_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(rejected, invalid);

    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let p = &done["progress"];
    assert_eq!(p["total"], 1000);
    assert_eq!(p["pending"], 0);
    assert_eq!(p["submitted"], 0);
    assert_eq!(p["percent"], 100.0);
    let accepted = 1000 - invalid.len() as i64;
    let succeeded = p["succeeded"].as_i64().unwrap();
    let failed = p["failed"].as_i64().unwrap();
    assert_eq!(succeeded + failed, accepted);
    // 5% line failures, seeded: some but not most.
    assert!(failed > 0 && failed < accepted / 5, "failed {failed}");

    let results = app.all_results(id).await;
    assert_eq!(results.len(), 1000);
    let mut seen = HashSet::new();
    let mut tokens_by_size: HashMap<usize, HashSet<i64>> = HashMap::new();
    for (index, r) in results.iter().enumerate() {
        assert_eq!(r["index"], index, "results come in item order");
        let cid = r["custom_id"].as_str().unwrap().to_string();
        assert_eq!(cid, format!("img-{index}"));
        assert!(seen.insert(cid.clone()), "{cid} twice");
        match r["status"].as_str().unwrap() {
            "succeeded" => {
                assert!(r["output"]["category"].is_string(), "{r}");
                assert_eq!(r["attempts"], 1);
                assert_eq!(r["mode"], "batch");
                assert!(r["model"].as_str().unwrap().starts_with("gpt-4.1-mini"));
                assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
                if index % 3 == 2 {
                    tokens_by_size
                        .entry(index % 4)
                        .or_default()
                        .insert(r["usage"]["input_tokens"].as_i64().unwrap());
                }
            }
            "failed" => {
                assert!(r["error"]["code"].is_string(), "{r}");
                assert!(r["output"].is_null());
            }
            "rejected" => {
                assert!(invalid.contains(&cid));
                assert!(
                    r["error"]["message"].as_str().unwrap().contains("PDF"),
                    "{r}"
                );
            }
            other => panic!("{cid} ended {other}"),
        }
    }
    // Each image size has one token count, and the four differ: outputs were matched to
    // the right items.
    assert_eq!(tokens_by_size.len(), 4);
    let counts: HashSet<i64> = tokens_by_size
        .values()
        .map(|set| {
            assert_eq!(set.len(), 1, "one size, several token counts: {set:?}");
            *set.iter().next().unwrap()
        })
        .collect();
    assert_eq!(counts.len(), 4);

    // Grouped by post: every item once, under its post.
    let (status, posts) = app.get(&format!("/v1/jobs/{id}/posts?limit=500")).await;
    assert_eq!(status, 200);
    let grouped: usize = posts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let post = p["post_id"].as_str().unwrap();
            for item in p["items"].as_array().unwrap() {
                let i: usize = item["index"].as_u64().unwrap() as usize;
                assert_eq!(post, format!("post-{}", i / 4));
            }
            p["items"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(grouped, 250 * 4);
    assert_eq!(posts["data"].as_array().unwrap().len(), 250);

    // Cursor pages cover the same results.
    let mut paged = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs/{id}/results?limit=300&cursor={c}"),
            None => format!("/v1/jobs/{id}/results?limit=300"),
        };
        let (_, page) = app.get(&path).await;
        paged += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, 1000);
    let (_, failed_page) = app
        .get(&format!("/v1/jobs/{id}/results?status=failed&limit=1000"))
        .await;
    assert_eq!(failed_page["data"].as_array().unwrap().len() as i64, failed);
    app.shutdown().await;
}

async fn a_small_byte_cap_spreads_a_job_over_shards_one_batch_each(db: Db) {
    let Some(app) = TestApp::spawn(
        db,
        fast_sim(),
        &[("BATCHLENS__BATCH__MAX_FILE_BYTES", "40000")],
    )
    .await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(60, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 60);
    let shards = done["batches"].as_array().unwrap();
    assert!(shards.len() > 1, "one shard only: {done}");
    let sim = app.sim.sim();
    assert_eq!(
        sim.count_batches_with_metadata("batchlens_job", id),
        shards.len()
    );
    for shard in shards {
        assert_eq!(shard["status"], "completed");
        assert_eq!(
            sim.count_batches_with_metadata("batchlens_shard", shard["id"].as_str().unwrap()),
            1
        );
    }
    let total: i64 = shards.iter().map(|s| s["items"].as_i64().unwrap()).sum();
    assert_eq!(total, 60);
    app.shutdown().await;
}

async fn an_expired_batch_keeps_its_finished_results(db: Db) {
    let sim = openai_sim::SimConfig {
        in_progress_ms: 4_000,
        ..fast_sim()
    };
    // One attempt: expired items stay failed (tests/resilience.rs covers their retry).
    let Some(app) = TestApp::spawn(db, sim, &[("BATCHLENS__BATCH__MAX_ATTEMPTS", "1")]).await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(40, 0)}),
        )
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_string();
    // Wait until the batch has finished some lines, then let its window pass.
    let batch_id = wait_for(Duration::from_secs(30), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        let b = &job["batches"][0];
        (b["request_counts"]["completed"].as_i64().unwrap_or(0) > 0)
            .then(|| b["openai_batch_id"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    assert!(app.sim.sim().expire_batch(&batch_id));
    let done = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let succeeded = done["progress"]["succeeded"].as_i64().unwrap();
    let failed = done["progress"]["failed"].as_i64().unwrap();
    assert!(succeeded > 0 && failed > 0, "{done}");
    assert_eq!(succeeded + failed, 40);
    assert_eq!(done["batches"][0]["status"], "expired");
    for r in app.results_exactly(&id, 40).await {
        match r["status"].as_str().unwrap() {
            "succeeded" => assert!(r["output"].is_object()),
            "failed" => assert_eq!(r["error"]["code"], "batch_expired", "{r}"),
            other => panic!("{other}"),
        }
    }
    app.shutdown().await;
}

async fn a_token_limit_failure_fails_its_items_with_that_code(db: Db) {
    let mut sim = fast_sim();
    sim.enqueued_token_limits
        .insert("gpt-4o-mini".into(), 1_000);
    let Some(app) = TestApp::spawn(db, sim, &[("BATCHLENS__BATCH__MAX_ATTEMPTS", "1")]).await
    else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "model": "gpt-4o-mini", "items": mixed_items(10, 0)}),
        )
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["progress"]["failed"], 10);
    assert_eq!(done["batches"][0]["status"], "failed");
    for r in app.results_exactly(id, 10).await {
        assert_eq!(r["error"]["code"], "token_limit_exceeded", "{r}");
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Enqueued token limit"));
    }
    app.shutdown().await;
}

/// Polls `probe` until it yields a value or the deadline passes.
pub async fn wait_for<T, F, Fut>(deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
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

#[allow(dead_code)]
fn unused(_: Value) {}
