//! Progress that moves during a batch: `processing` from the polled `request_counts`,
//! and rejected images not counted as work.

use std::time::Duration;

use crate::batch_jobs::wait_for;
use crate::common::{fast_sim, mixed_items, Db, TestApp};
use serde_json::{json, Value};

on_both!(
    progress_moves_while_the_batch_runs,
    a_job_with_rejected_items_starts_at_zero,
);

async fn progress_moves_while_the_batch_runs(db: Db) {
    let sim = openai_sim::SimConfig {
        in_progress_ms: 6_000,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(10, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["progress"]["processing"], 0);
    assert_eq!(job["progress"]["percent"], 0.0);
    let id = job["id"].as_str().unwrap().to_string();
    // The event stream, read to its end (the terminal status) beside the polling.
    let events = {
        let request = app.http.get(app.url(&format!("/v1/jobs/{id}/events")));
        tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() })
    };
    let running = wait_for(Duration::from_secs(60), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        let p = &job["progress"];
        (p["processing"].as_i64().unwrap_or(0) > 0).then_some(job)
    })
    .await;
    let p = &running["progress"];
    assert_ne!(running["status"], "completed", "{running}");
    assert!(p["percent"].as_f64().unwrap() > 0.0, "{running}");
    assert!(p["percent"].as_f64().unwrap() <= 100.0, "{running}");
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["percent"], 100.0);
    assert_eq!(done["progress"]["processing"], 0);
    let text = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .expect("the event stream ends after the terminal status")
        .unwrap();
    let progress: Vec<Value> = sse_data(&text, "progress");
    assert!(
        progress
            .iter()
            .any(|p| p["processing"].as_i64().unwrap() > 0 && p["percent"].as_f64().unwrap() > 0.0),
        "{text}"
    );
    assert!(progress
        .iter()
        .all(|p| p["percent"].as_f64().unwrap() <= 100.0));
    app.shutdown().await;
}

async fn a_job_with_rejected_items_starts_at_zero(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    // Every fifth item is not an image: 2 of 10 rejected.
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(10, 5)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["progress"]["rejected"], 2);
    assert_eq!(job["progress"]["percent"], 0.0, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(done["progress"]["percent"], 100.0, "{done}");
    app.shutdown().await;
}

/// The `data` of each SSE event named `name`, parsed.
fn sse_data(text: &str, name: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l == format!("event: {name}")))
        .filter_map(|block| {
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            serde_json::from_str(data).ok()
        })
        .collect()
}
