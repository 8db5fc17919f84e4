//! Progress that moves during a batch: `processing` from the polled `request_counts`,
//! rejected images not counted as work, and the `/events` cadence (a progress event per
//! change, at most one a second, heartbeats in between).

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::batch_jobs::wait_for;
use crate::common::{fast_sim, mixed_items, Db, TestApp};
use serde_json::{json, Value};

on_both!(
    progress_moves_while_the_batch_runs,
    a_job_with_rejected_items_starts_at_zero,
    events_follow_a_slow_batch_step_by_step,
    a_retry_says_reopened_before_a_lower_figure,
);

async fn progress_moves_while_the_batch_runs(db: Db) {
    let Some((app, job)) = ten_images(db, slow(6_000), &[]).await else {
        return;
    };
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

/// An application on a simulator configured by `sim`, and a 10-image batch job
/// submitted to it (None when the database is not available).
async fn ten_images(
    db: Db,
    sim: openai_sim::SimConfig,
    extra: &[(&str, &str)],
) -> Option<(TestApp, Value)> {
    let app = TestApp::spawn(db, sim, extra).await?;
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": mixed_items(10, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    Some((app, job))
}

/// The simulator with batches `in_progress_ms` in progress.
fn slow(in_progress_ms: u64) -> openai_sim::SimConfig {
    openai_sim::SimConfig {
        in_progress_ms,
        ..fast_sim()
    }
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

/// One `/events` stream, read event by event, every read under a timeout.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
    heartbeats: usize,
}

impl Events {
    async fn open(app: &TestApp, id: &str) -> Events {
        let r = app
            .http
            .get(app.url(&format!("/v1/jobs/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Events {
            body: r.bytes_stream().boxed(),
            buf: String::new(),
            heartbeats: 0,
        }
    }

    /// The next event (name, data); None when the stream ended. Panics after `within`.
    async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if line == ": keep-alive" {
                        self.heartbeats += 1;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(name), Some(data)) = (name, data) {
                    return Some((name, data));
                }
                continue;
            }
            let chunk = tokio::time::timeout(within, self.body.next())
                .await
                .expect("an event or a heartbeat within the timeout")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }
}

/// With the simulator's clock held and moved by hand, each step of the batch reaches the
/// stream as its own `progress` event before the batch completes; heartbeats (every 150 ms
/// here) fill the gaps; progress events never come faster than one a second.
async fn events_follow_a_slow_batch_step_by_step(db: Db) {
    let extra = [("BATCHLENS__SERVER__EVENTS_HEARTBEAT_MS", "150")];
    let Some((app, job)) = ten_images(db, slow(20_000), &extra).await else {
        return;
    };
    let id = job["id"].as_str().unwrap().to_string();
    // Hold the simulator's clock once the batch runs: nothing moves unless the test says.
    wait_for(Duration::from_secs(60), || async {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        (job["batches"][0]["status"] == "in_progress").then_some(())
    })
    .await;
    app.sim.sim().pause_clock();

    let opened = Instant::now();
    let mut events = Events::open(&app, &id).await;
    let mut arrivals = Vec::new();
    let within = Duration::from_secs(20);
    let (name, data) = events.next(within).await.unwrap();
    assert_eq!(
        (name.as_str(), &data),
        ("status", &json!({"status": "running"}))
    );
    let (name, first) = events.next(within).await.unwrap();
    assert_eq!(name, "progress", "{first}");
    let mut progress = vec![first];
    // Four steps of 4 s of the batch's 20 (2, 4, 6, 8 lines done), then the end.
    for step in 1..=4 {
        app.sim.sim().advance_clock(Duration::from_millis(4_000));
        let want = 2 * step;
        loop {
            let (name, data) = events.next(within).await.unwrap();
            assert_eq!(name, "progress", "{name}: {data} before the batch finished");
            arrivals.push(opened.elapsed().as_secs_f64());
            progress.push(data.clone());
            if data["processing"].as_i64().unwrap() >= want {
                break;
            }
        }
    }
    app.sim.sim().resume_clock();
    app.sim.sim().advance_clock(Duration::from_millis(20_000));
    let mut names = Vec::new();
    while let Some((name, data)) = events.next(within).await {
        if name == "progress" {
            progress.push(data.clone());
        }
        names.push((name, data));
    }
    let elapsed = opened.elapsed().as_secs_f64();

    // Several progress events while the batch ran, each a different figure in (0, 100).
    let mut during: Vec<f64> = progress
        .iter()
        .map(|p| p["percent"].as_f64().unwrap())
        .filter(|p| *p > 0.0 && *p < 100.0)
        .collect();
    during.dedup();
    assert!(during.len() >= 4, "{progress:?}");
    // Never backwards, ending at 100, then the terminal status closes the stream.
    let percents: Vec<f64> = progress
        .iter()
        .map(|p| p["percent"].as_f64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(*percents.last().unwrap(), 100.0);
    assert_eq!(
        names.last().unwrap(),
        &("status".to_string(), json!({"status": "completed"}))
    );
    // At most one progress event a second: n events span at least n − 1 seconds, and the
    // client watched for longer than the server sent.
    assert!(
        (progress.len() as f64) <= elapsed + 1.0,
        "{} progress events in {elapsed:.1} s",
        progress.len()
    );
    assert!(events.heartbeats >= 1, "no `: keep-alive` comment");
    eprintln!(
        "events: {percents:?} in {elapsed:.1} s; mid-batch arrivals at {arrivals:.2?} s; \
         {} heartbeats",
        events.heartbeats
    );
    app.shutdown().await;
}

/// Half the lines fail with a 500 (worth another attempt): the batch reports them done
/// while it runs, so the figure counts them, then they go back to run again. The stream says
/// `reopened` (how many) before any lower figure; otherwise percent only rises.
async fn a_retry_says_reopened_before_a_lower_figure(db: Db) {
    let sim = openai_sim::SimConfig {
        line_failure_rate: 0.5,
        line_failure_status: 500,
        seed: 7,
        in_progress_ms: 4_000,
        ..fast_sim()
    };
    let Some((app, job)) = ten_images(db, sim, &[]).await else {
        return;
    };
    let id = job["id"].as_str().unwrap().to_string();
    let mut events = Events::open(&app, &id).await;
    let mut seen = Vec::new();
    while let Some(event) = events.next(Duration::from_secs(30)).await {
        seen.push(event);
    }
    let reopened: Vec<&Value> = seen
        .iter()
        .filter(|(name, _)| name == "reopened")
        .map(|(_, data)| data)
        .collect();
    assert!(!reopened.is_empty(), "{seen:?}");
    for r in &reopened {
        assert_eq!(r["reason"], "retry", "{r}");
        assert!(r["items"].as_i64().unwrap() >= 1, "{r}");
    }
    // A lower figure only right after a `reopened`.
    let mut last: Option<f64> = None;
    let mut said = false;
    let mut lower = 0;
    for (name, data) in &seen {
        match name.as_str() {
            "reopened" => said = true,
            "progress" => {
                let p = data["percent"].as_f64().unwrap();
                if let Some(before) = last {
                    assert!(
                        p >= before || said,
                        "{before} then {p} unannounced: {seen:?}"
                    );
                    lower += usize::from(p < before);
                }
                last = Some(p);
                said = false;
            }
            _ => {}
        }
    }
    let trace: Vec<String> = seen
        .iter()
        .map(|(name, d)| match name.as_str() {
            "progress" => format!("{}%", d["percent"]),
            "reopened" => format!("reopened {}", d["items"]),
            _ => d["status"].to_string(),
        })
        .collect();
    eprintln!("retry stream: {}", trace.join(", "));
    // The batch ran for 4 s with its failed lines counted done: the figure sent before
    // they went back was higher than the one after.
    assert!(lower >= 1, "no lower figure: {trace:?}");
    let (name, data) = seen.last().unwrap();
    assert_eq!(name, "status");
    let end = app.get(&format!("/v1/jobs/{id}")).await.1;
    assert_eq!(data["status"], end["status"], "{end}");
    assert_eq!(last, Some(100.0));
    app.shutdown().await;
}
