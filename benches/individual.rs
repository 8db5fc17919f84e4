//! Individual mode at the rate limit: 2,000 items through the real service against
//! openai-sim limited to 600 requests and 200,000 tokens a minute with 200 ms latency.
//! Prints achieved requests/min and tokens/min as a share of the limits and the 429s
//! received, with the governor on and then off (the baseline), and then with three replicas
//! sharing one PostgreSQL database (and so one rate budget) and the job spread over them,
//! for each of the simulator's limiter kinds. From the simulator's call log it also prints
//! the share of the binding limit used over the steady part of the run (2 s after the first
//! accepted call to the last) and in the busiest 60 s span (what a sliding window sees),
//! whether every item was called exactly once, and, with three replicas, how many calls each
//! made (from the `x-client-request-id` each sends).
//!
//! `cargo bench --bench individual` (`BENCH_ITEMS=…` for a shorter run, `BENCH_GOVERNOR=on`
//! or `off` for one single-replica pass, `BENCH_REPLICAS=1` or `3` for the single-replica
//! passes or the three-replica one only, `BENCH_LIMITER=token_bucket`, `sliding_window` or
//! `fixed_window` for one kind; each pass takes about items / 600 minutes). The
//! three-replica pass needs `DATABASE_URL` to name a PostgreSQL server (a database of its
//! own is created and dropped); without one it is skipped.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openai_sim::{RateLimiterKind, SimConfig, SimServer};
use serde_json::{json, Value};

const RPM: u64 = 600;
const TPM: u64 = 200_000;

/// One pass: the governor on or off, and how many replicas share the work.
#[derive(Clone, Copy, Debug)]
struct Pass {
    governor: bool,
    replicas: usize,
}

#[tokio::main]
async fn main() {
    let items: usize = std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    println!("individual benchmark: {items} items, limits {RPM} RPM / {TPM} TPM, 200 ms latency");
    let single: &[bool] = match std::env::var("BENCH_GOVERNOR").as_deref() {
        Ok("on") => &[true],
        Ok("off") => &[false],
        _ => &[true, false],
    };
    let replicas: &[usize] = match std::env::var("BENCH_REPLICAS").as_deref() {
        Ok("1") => &[1],
        Ok("3") => &[3],
        _ => &[1, 3],
    };
    let mut passes = Vec::new();
    for &n in replicas {
        if n == 1 {
            passes.extend(single.iter().map(|&governor| Pass {
                governor,
                replicas: 1,
            }));
        } else {
            passes.push(Pass {
                governor: true,
                replicas: n,
            });
        }
    }
    let kinds: &[RateLimiterKind] = match std::env::var("BENCH_LIMITER").as_deref() {
        Ok("token_bucket") => &[RateLimiterKind::TokenBucket],
        Ok("sliding_window") => &[RateLimiterKind::SlidingWindow],
        Ok("fixed_window") => &[RateLimiterKind::FixedWindow],
        _ => &[
            RateLimiterKind::TokenBucket,
            RateLimiterKind::SlidingWindow,
            RateLimiterKind::FixedWindow,
        ],
    };
    for &kind in kinds {
        for &pass in &passes {
            run(items, pass, kind).await;
        }
    }
}

async fn run(items: usize, pass: Pass, kind: RateLimiterKind) {
    let sim = SimServer::spawn(SimConfig {
        rpm: RPM,
        tpm: TPM,
        rate_limiter: kind,
        chat_latency_ms: 200,
        ..SimConfig::fast()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vec![
        ("BATCHLENS__BATCH__TICK_MS", "20".into()),
        ("BATCHLENS__OPENAI__MAX_COMPLETION_TOKENS", "20".into()),
        ("BATCHLENS__OPENAI__MAX_RETRIES", "3".into()),
        ("BATCHLENS__INDIVIDUAL__RPM", RPM.to_string()),
        ("BATCHLENS__INDIVIDUAL__TPM", TPM.to_string()),
        ("BATCHLENS__INDIVIDUAL__CONCURRENCY", "32".into()),
        ("BATCHLENS__INDIVIDUAL__GOVERNOR", pass.governor.to_string()),
    ];
    // Several replicas share a PostgreSQL database ("auto": the budget is shared in it).
    let _pg = if pass.replicas > 1 {
        let Some(pg) = testkit::PgDatabase::create("bl_bench").await else {
            println!(
                "  {kind:?}, {} replicas: skipped (DATABASE_URL names no PostgreSQL server)",
                pass.replicas
            );
            return;
        };
        settings.push(("DATABASE_URL", pg.url().to_string()));
        Some(pg)
    } else {
        None
    };
    let mut services = Vec::new();
    for _ in 0..pass.replicas {
        services.push(common::Service::start(&sim, dir.path(), &settings).await);
    }
    let service = &services[0];
    let base = service.base.clone();

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
    let label = if pass.replicas > 1 {
        format!("{} replicas (shared budget)", pass.replicas)
    } else {
        format!("governor {:>3}", if pass.governor { "on" } else { "off" })
    };
    println!(
        "  {kind:?}, {label}: {:.2} min; succeeded {} failed {}; {:.0} req/min ({:.1}% of RPM), {:.0} limiter tokens/min ({:.1}% of TPM); binding-limit use {:.1}%; 429s received {} of {} requests ({:.2}%); billed tokens {}",
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
    let calls = sim.sim().chat_calls();
    let accepted: Vec<_> = calls.iter().filter(|c| c.outcome == "accepted").collect();
    let limited = calls.iter().filter(|c| c.outcome == "rate_limited").count();
    let (first, last) = (
        accepted.first().map_or(0, |c| c.at_ms + 2_000),
        accepted.last().map_or(0, |c| c.at_ms),
    );
    let steady: Vec<_> = accepted
        .iter()
        .filter(|c| (first..=last).contains(&c.at_ms))
        .collect();
    let span_minutes = last.saturating_sub(first).max(1) as f64 / 60_000.0;
    let steady_share = (steady.len() as f64 / (span_minutes * RPM as f64))
        .max(steady.iter().map(|c| c.tokens).sum::<u64>() as f64 / (span_minutes * TPM as f64));
    // The busiest 60 s span starting at an accepted call.
    let mut busiest = 0f64;
    let mut end = 0;
    let mut tokens_in = 0u64;
    for (start, call) in accepted.iter().enumerate() {
        while end < accepted.len() && accepted[end].at_ms < call.at_ms + 60_000 {
            tokens_in += accepted[end].tokens;
            end += 1;
        }
        busiest = busiest
            .max((end - start) as f64 / RPM as f64)
            .max(tokens_in as f64 / TPM as f64);
        tokens_in -= call.tokens;
    }
    let once = accepted.len() == items && done["progress"]["succeeded"] == items as u64;
    println!(
        "    binding limit over the steady part ({:.1} s): {:.1}%; busiest 60 s span: {:.1}%; 429s {} of {} calls ({:.2}%); {} items, each called once: {}",
        span_minutes * 60.0,
        100.0 * steady_share,
        100.0 * busiest,
        limited,
        calls.len(),
        100.0 * limited as f64 / calls.len().max(1) as f64,
        items,
        once,
    );
    if pass.replicas > 1 {
        let mut per_replica = BTreeMap::<String, usize>::new();
        for call in &accepted {
            let id = call.client_request_id.as_deref().unwrap_or("none");
            let replica = id.rsplit_once('-').map_or(id, |(replica, _)| replica);
            *per_replica.entry(replica.to_string()).or_default() += 1;
        }
        println!(
            "    accepted calls per replica: {:?}",
            per_replica.values().collect::<Vec<_>>()
        );
    }
    for service in services {
        service.stop().await;
    }
}
