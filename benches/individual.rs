//! Individual mode at the rate limit: 2,000 items through the real service against
//! openai-sim limited to 600 requests and 200,000 tokens a minute with 200 ms latency.
//! Prints achieved requests/min and tokens/min as a share of the limits and the 429s
//! received, with the governor on and then off (the baseline).
//!
//! `cargo bench --bench individual` (`BENCH_ITEMS=…` for a shorter run, `BENCH_GOVERNOR=on`
//! or `off` for one pass; each pass takes about items / 600 minutes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use batchlens::config::Settings;
use batchlens::startup::Application;
use openai_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

const RPM: u64 = 600;
const TPM: u64 = 200_000;

#[tokio::main]
async fn main() {
    let items: usize = std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    println!("individual benchmark: {items} items, limits {RPM} RPM / {TPM} TPM, 200 ms latency");
    let passes: &[bool] = match std::env::var("BENCH_GOVERNOR").as_deref() {
        Ok("on") => &[true],
        Ok("off") => &[false],
        _ => &[true, false],
    };
    for &governor in passes {
        run(items, governor).await;
    }
}

async fn run(items: usize, governor: bool) {
    let sim = SimServer::spawn(SimConfig {
        rpm: RPM,
        tpm: TPM,
        chat_latency_ms: 200,
        ..SimConfig::fast()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        ),
        ("OPENAI_BASE_URL", sim.base_url()),
        ("OPENAI_API_KEY", "sk-bench".into()),
        ("BATCHLENS__SERVER__PORT", "0".into()),
        ("BATCHLENS__DATA_DIR", dir.path().display().to_string()),
        ("BATCHLENS__LOG__LEVEL", "error".into()),
        ("BATCHLENS__BATCH__TICK_MS", "20".into()),
        ("BATCHLENS__OPENAI__MAX_COMPLETION_TOKENS", "20".into()),
        ("BATCHLENS__OPENAI__MAX_RETRIES", "3".into()),
        ("BATCHLENS__INDIVIDUAL__RPM", RPM.to_string()),
        ("BATCHLENS__INDIVIDUAL__TPM", TPM.to_string()),
        ("BATCHLENS__INDIVIDUAL__CONCURRENCY", "32".into()),
        ("BATCHLENS__INDIVIDUAL__GOVERNOR", governor.to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    let settings = Settings::load_from(None, &env).unwrap();
    let app = Application::build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let handle = tokio::spawn(app.run_until_stopped(async move { s.cancelled().await }));

    let png = testkit::png_data_url(&testkit::TINY_PNG);
    let body = json!({
        "mode": "individual", "model": "gpt-4o", "detail": "low",
        "analyzer": {"prompt": "Name the main colour.", "schema": {
            "type": "object", "properties": {"color": {"type": "string"}},
            "required": ["color"], "additionalProperties": false}},
        "items": (0..items).map(|_| json!({"data_url": png})).collect::<Vec<_>>(),
    });
    let http = reqwest::Client::new();
    let job: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let done = loop {
        let j: Value = http
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "completed" || j["status"] == "failed" {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let stats = sim.sim().stats();
    let answered = stats.chat_calls;
    let requests = stats.chat_calls + stats.rate_limited;
    let tokens = stats.prompt_tokens + stats.completion_tokens;
    // What the limiter counted: prompt tokens plus the max_completion_tokens asked for.
    let limiter_tokens = stats.prompt_tokens + answered * 20;
    let rpm = answered as f64 / minutes;
    let tpm = limiter_tokens as f64 / minutes;
    let binding = (rpm / RPM as f64).max(tpm / TPM as f64);
    println!(
        "  governor {:>3}: {:.2} min; succeeded {} failed {}; {:.0} req/min ({:.1}% of RPM), {:.0} limiter tokens/min ({:.1}% of TPM); binding-limit use {:.1}%; 429s received {} of {} requests ({:.2}%); billed tokens {}",
        if governor { "on" } else { "off" },
        minutes,
        done["progress"]["succeeded"],
        done["progress"]["failed"],
        rpm,
        100.0 * rpm / RPM as f64,
        tpm,
        100.0 * tpm / TPM as f64,
        100.0 * binding,
        stats.rate_limited,
        requests,
        100.0 * stats.rate_limited as f64 / requests.max(1) as f64,
        tokens,
    );
    stop.cancel();
    let _ = handle.await;
}
