//! Three replicas on one PostgreSQL database share the account's rate limit (issue 14,
//! item 2): one individual-mode job spread over them, against openai-sim at 300 RPM, stays
//! within the limit with under 1% 429s, every item called exactly once. (Which replica made
//! each call is not asserted yet: a finished shard no longer names its lease owner.) The
//! same run with the shared budget off (each replica pacing alone at the full 300 RPM,
//! three times the limit together) meets many 429s: the check that the first test can fail.
//!
//! The simulator's token bucket holds 2 s of its refill (10 requests, then 5 a second)
//! instead of a minute's 300, so a client sending over the limit meets 429s within seconds
//! and a run of 120 items lasts about 25 s. The governor's own burst (2% of a minute, 6
//! requests) fits in it. Utilisation is read from the simulator's call log as in
//! `governor.rs`: accepted calls from 2 s after the first to the last, over what 300 RPM
//! allows in that span.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{fast_sim, mixed_items, Db, TestApp};
use openai_sim::{RateLimiterKind, SimConfig};
use serde_json::json;

const ITEMS: usize = 120;
const RPM: u64 = 300;

struct Run {
    calls: usize,
    limited: usize,
    share: f64,
}

/// The job through three replicas; None outside CI without PostgreSQL.
async fn three_replicas(shared_budget: &str) -> Option<Run> {
    let sim = SimConfig {
        rate_limiter: RateLimiterKind::TokenBucket,
        rpm: RPM,
        bucket_capacity_ms: 2_000,
        chat_latency_ms: 50,
        ..fast_sim()
    };
    let rpm = RPM.to_string();
    let extra = [
        ("BATCHLENS__INDIVIDUAL__RPM", rpm.as_str()),
        ("BATCHLENS__INDIVIDUAL__TPM", "150000000"),
        ("BATCHLENS__INDIVIDUAL__CONCURRENCY", "16"),
        ("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", shared_budget),
    ];
    let a = TestApp::spawn(Db::Postgres, sim, &extra).await?;
    let b = TestApp::start(a.db.clone(), a.sim.clone(), a.data_dir.clone(), &extra).await;
    let c = TestApp::start(a.db.clone(), a.sim.clone(), a.data_dir.clone(), &extra).await;
    let (status, job) = a
        .post(
            "/v1/jobs",
            &json!({"mode": "individual", "items": mixed_items(ITEMS, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = b.wait_terminal(id, Duration::from_secs(150)).await;
    let calls = a.sim.sim().chat_calls();
    let limited = calls.iter().filter(|c| c.outcome == "rate_limited").count();
    if shared_budget == "off" {
        // Items that met 429 after 429 may end failed: only the 429s are read.
        for app in [c, b, a] {
            app.shutdown().await;
        }
        return Some(Run {
            calls: calls.len(),
            limited,
            share: 0.0,
        });
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], ITEMS as u64, "{done}");
    let results = c.results_exactly(id, ITEMS).await;
    let ids: BTreeSet<_> = results
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), ITEMS);

    let accepted: Vec<_> = calls.iter().filter(|c| c.outcome == "accepted").collect();
    assert_eq!(accepted.len(), ITEMS, "every item called once");
    let first = accepted.first().unwrap().at_ms + 2_000;
    let last = accepted.last().unwrap().at_ms;
    let steady = accepted
        .iter()
        .filter(|c| (first..=last).contains(&c.at_ms))
        .count();
    let share = steady as f64 / ((last - first) as f64 / 60_000.0 * RPM as f64);
    eprintln!(
        "3 replicas, shared_budget {shared_budget}: {:.1}% of {RPM} RPM over {:.1} s, \
         {limited} 429s of {} calls",
        100.0 * share,
        (last - first) as f64 / 1000.0,
        calls.len()
    );
    for app in [c, b, a] {
        app.shutdown().await;
    }
    Some(Run {
        calls: calls.len(),
        limited,
        share,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_three_replicas_share_the_account_limit() {
    // The default ("auto") shares the budget on PostgreSQL.
    let Some(run) = three_replicas("auto").await else {
        return;
    };
    assert!(
        (run.limited as f64) < 0.01 * run.calls as f64,
        "{} 429s of {} calls",
        run.limited,
        run.calls
    );
    // Within the limit: the simulator refuses what is over it, so the 429s above are the
    // check; the share says the replicas did not stall each other. In the debug test binary
    // beside every other test the service can be slower than the limit (as in
    // `governor.rs`); a benchmark of the 90% goal with 3 replicas is not written yet
    // (issue 14).
    assert!(run.share <= 1.05, "{}", run.share);
    assert!(run.share >= 0.6, "{}", run.share);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_three_replicas_each_pacing_alone_meet_429s() {
    let Some(run) = three_replicas("off").await else {
        return;
    };
    assert!(
        (run.limited as f64) >= 0.05 * run.calls as f64,
        "only {} 429s of {} calls at three times the limit",
        run.limited,
        run.calls
    );
}
