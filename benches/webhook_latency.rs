//! How late a finished batch shows: the time from openai-sim finishing a batch to
//! `GET /v1/jobs/{id}` answering `completed`, with OpenAI's `batch.completed` webhook
//! (signed by the simulator, verified at `POST /v1/openai/webhooks`) and with polling alone.
//!
//! `cargo bench --bench webhook_latency` (the figures hang on intervals, not on CPU, so
//! `--profile dev` measures the same). `BENCH_RUNS` (default 10) runs with the webhook at
//! `poll_min_ms` = `poll_max_ms` = 60,000; `BENCH_SLOW_RUNS` (default 1) without it at the
//! same interval; `BENCH_POLL_RUNS` (default 6) without it at 5,000 ms, the batch's
//! duration spread over the interval. Everything else at the shipped defaults
//! (`batch.tick_ms` 500), SQLite. Prints figures; asserts nothing about time.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use openai_sim::{Sim, SimConfig, SimServer};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn runs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One service and simulator polling every `poll_ms`.
struct Rig {
    base: String,
    http: reqwest::Client,
    sim: SimServer,
    service: common::Service,
    _data: tempfile::TempDir,
}

impl Rig {
    async fn start(poll_ms: u64) -> Rig {
        let sim = SimServer::spawn(SimConfig::fast()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let poll = poll_ms.to_string();
        let service = common::Service::start(
            &sim,
            data.path(),
            &[
                ("BATCHLENS__BATCH__POLL_MIN_MS", poll.clone()),
                ("BATCHLENS__BATCH__POLL_MAX_MS", poll),
                ("BATCHLENS__OPENAI__WEBHOOK_SECRET", SECRET.into()),
            ],
        )
        .await;
        Rig {
            base: service.base.clone(),
            http: reqwest::Client::new(),
            sim,
            service,
            _data: data,
        }
    }

    /// Points the simulator's webhooks at the service (or nowhere) and sets how long its
    /// batches stay in progress.
    fn configure(&self, webhook: bool, in_progress_ms: u64) {
        let sim = self.sim.sim();
        let mut config = sim.config();
        config.in_progress_ms = in_progress_ms;
        config.webhook_url = webhook.then(|| format!("{}/v1/openai/webhooks", self.base));
        config.webhook_secret = webhook.then(|| SECRET.to_string());
        sim.set_config(config);
    }

    /// Submits a small batch job and returns the time from its batch completing at the
    /// simulator to the job reading `completed`.
    async fn one(&self, deadline: Duration) -> Duration {
        let sim = self.sim.sim();
        let known: HashSet<String> = batch_ids(&sim).into_iter().collect();
        let items: Vec<Value> = (0..4)
            .map(|i| json!({"custom_id": format!("img-{i}"), "image_url": format!("https://cdn.example.com/{i}.jpg")}))
            .collect();
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .json(&json!({"mode": "batch", "items": items}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let job: Value = r.json().await.unwrap();
        let url = format!("{}/v1/jobs/{}", self.base, job["id"].as_str().unwrap());
        // The simulator's side: the first moment its new batch reads completed.
        let watcher = tokio::spawn(async move {
            loop {
                let done = sim.batches().iter().any(|b| {
                    b["status"] == "completed" && !known.contains(b["id"].as_str().unwrap())
                });
                if done {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let started = Instant::now();
        let seen = loop {
            let view: Value = self
                .http
                .get(&url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["status"] == "completed" {
                break Instant::now();
            }
            assert!(
                started.elapsed() < deadline,
                "job not completed within {deadline:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let done = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the simulator saw its batch complete")
            .unwrap();
        seen.saturating_duration_since(done)
    }

    async fn stop(self) {
        self.service.stop().await;
        self.sim.shutdown().await;
    }
}

fn batch_ids(sim: &Sim) -> Vec<String> {
    sim.batches()
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect()
}

fn report(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{label:<44} runs {:>2}  min {:>8.0} ms  median {:>8.0} ms  mean {:>8.0} ms  max {:>8.0} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        mean,
        ms(*samples.last().unwrap()),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let (fast, slow, polled) = (
        runs("BENCH_RUNS", 10),
        runs("BENCH_SLOW_RUNS", 1),
        runs("BENCH_POLL_RUNS", 6),
    );
    let mut results = Vec::new();

    let rig = Rig::start(60_000).await;
    rig.configure(true, 300);
    let mut with = Vec::new();
    for _ in 0..fast {
        with.push(rig.one(Duration::from_secs(30)).await);
    }
    results.push(("webhook, poll 60,000 ms", with));
    rig.configure(false, 300);
    let mut without = Vec::new();
    for _ in 0..slow {
        without.push(rig.one(Duration::from_secs(90)).await);
    }
    results.push(("no webhook, poll 60,000 ms", without));
    rig.stop().await;

    // Polling alone at 5 s, the batch ending anywhere in the interval: the wait is the rest
    // of the interval, so with 60 s it is up to 60 s.
    let rig = Rig::start(5_000).await;
    let mut sampled = Vec::new();
    for k in 0..polled {
        rig.configure(false, 300 + (k as u64 * 5_000) / polled.max(1) as u64);
        sampled.push(rig.one(Duration::from_secs(30)).await);
    }
    results.push(("no webhook, poll 5,000 ms (ends spread)", sampled));
    rig.stop().await;

    println!("time from openai-sim completing a batch to GET /v1/jobs/{{id}} = completed");
    for (label, samples) in results {
        report(label, samples);
    }
}
