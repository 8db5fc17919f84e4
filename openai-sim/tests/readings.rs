//! The knobs that show each reading of OpenAI the docs allow: rate-limiter kinds, prompt-token
//! accounting, flex processing, batch output order and webhook timing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{envelope, lines, Harness, KEY};
use openai_sim::{OutputOrder, RateLimiterKind, SchemaTokens, SimConfig, WebhookTiming};
use serde_json::{json, Value};
use testkit::{png_data_url, png_header};

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Status and the headers a client reads from a chat call.
async fn call(h: &Harness, body: &Value) -> (u16, HeaderMap, Value) {
    let r = h
        .http
        .post(h.url("/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let headers = r.headers().clone();
    (s, headers, r.json().await.unwrap())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h[name].to_str().unwrap()
}

/// A limiter test's config: long phases, `rpm` requests a minute, the given kind.
fn limited(kind: RateLimiterKind, rpm: u64, tpm: u64) -> SimConfig {
    SimConfig {
        rate_limiter: kind,
        rpm,
        tpm,
        ..SimConfig::default()
    }
}

/// A simulator whose clock only `advance` moves, so header values are exact.
async fn paused(config: SimConfig) -> Harness {
    let h = Harness::start(config).await;
    h.sim().pause_clock();
    h
}

/// Moves the clock to just after a minute boundary so fixed-window arithmetic is exact.
fn align_to_minute(h: &Harness, after_ms: u64) {
    let now = h.sim().lock().now_ms();
    let to_boundary = 60_000 - now % 60_000;
    h.advance(to_boundary + after_ms);
}

#[tokio::test]
async fn token_bucket_is_the_default_and_refills_continuously() {
    let h = paused(limited(RateLimiterKind::TokenBucket, 2, 0)).await;
    assert_eq!(
        SimConfig::default().rate_limiter,
        RateLimiterKind::TokenBucket
    );
    for _ in 0..2 {
        assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 200);
    }
    let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 429);
    // One request comes back every 30 s; the bucket is full again after 60 s.
    assert_eq!(header(&hd, "retry-after-ms"), "30000");
    assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "1m0s");
    h.advance(30_000);
    assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 200);
}

#[tokio::test]
async fn sliding_window_counts_each_request_for_sixty_seconds() {
    let h = paused(limited(RateLimiterKind::SlidingWindow, 3, 0)).await;
    // t = 0, 10 s, 20 s: three requests; remaining counts down, reset runs to the newest + 60 s.
    let mut resets = Vec::new();
    for i in 0..3 {
        let (s, hd, v) = call(&h, &chat("gpt-4o", "x")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(header(&hd, "x-ratelimit-limit-requests"), "3");
        assert_eq!(
            header(&hd, "x-ratelimit-remaining-requests"),
            (2 - i).to_string()
        );
        resets.push(header(&hd, "x-ratelimit-reset-requests").to_string());
        if i < 2 {
            h.advance(10_000);
        }
    }
    assert_eq!(resets, ["1m0s", "1m0s", "1m0s"]);
    // t = 20 s: full. The oldest (t = 0) leaves at 60 s: retry in 40 s; empty at 80 s: reset 1m0s.
    let (s, hd, v) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 429);
    assert_eq!(header(&hd, "retry-after-ms"), "40000");
    assert_eq!(header(&hd, "retry-after"), "40");
    assert_eq!(header(&hd, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "1m0s");
    let e = envelope(&v);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Limit 3, Used 3, Requested 1. Please try again in 40s."),
        "{v}"
    );
    // t = 59.999 s: still full; t = 60 s: one slot free, reset still to 20 s + 60 s.
    h.advance(39_999);
    assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 429);
    h.advance(1);
    let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 200);
    assert_eq!(header(&hd, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "1m0s");
    // A token bucket would have let 3 more through in those 60 s (one per 20 s): here only 1.
    let calls = h.sim().chat_calls();
    let accepted = calls.iter().filter(|c| c.outcome == "accepted").count();
    let refused = calls.iter().filter(|c| c.outcome == "rate_limited").count();
    assert_eq!((accepted, refused), (4, 2));
    let counts = &h.sim().stats().chat_by_model["gpt-4o"];
    assert_eq!((counts.accepted, counts.rate_limited), (4, 2));
}

#[tokio::test]
async fn sliding_window_tokens_wait_for_enough_old_tokens_to_leave() {
    let h = paused(limited(RateLimiterKind::SlidingWindow, 0, 100)).await;
    let body = |n: u64| {
        json!({"model": "gpt-4o", "max_completion_tokens": n,
               "messages": [{"role": "user", "content": "x"}]})
    };
    // Prompt "x" is 1 + 3 + 3 = 7 tokens, so each call costs 7 + max_completion_tokens.
    let (s, hd, _) = call(&h, &body(33)).await; // 40 at t = 0
    assert_eq!(s, 200);
    assert_eq!(header(&hd, "x-ratelimit-remaining-tokens"), "60");
    assert_eq!(header(&hd, "x-ratelimit-limit-requests"), "30000");
    h.advance(5_000);
    assert_eq!(call(&h, &body(33)).await.0, 200); // 40 at t = 5 s
    h.advance(5_000);
    // t = 10 s: 80 used, 60 asked: 40 must leave, the t = 0 call does at 60 s.
    let (s, hd, _) = call(&h, &body(53)).await;
    assert_eq!(s, 429);
    assert_eq!(header(&hd, "retry-after-ms"), "50000");
    assert_eq!(header(&hd, "x-ratelimit-remaining-tokens"), "20");
    assert_eq!(header(&hd, "x-ratelimit-reset-tokens"), "55s");
    // Too large for the whole limit: no retry-after.
    let (s, hd, v) = call(&h, &body(200)).await;
    assert_eq!(s, 429);
    assert!(!hd.contains_key("retry-after"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Request too large"));
    assert_eq!(h.sim().chat_calls().last().unwrap().outcome, "too_large");
}

#[tokio::test]
async fn fixed_window_resets_on_the_minute_boundary() {
    let h = paused(limited(RateLimiterKind::FixedWindow, 2, 0)).await;
    align_to_minute(&h, 50_000); // 50 s into a minute
    let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 200);
    assert_eq!(header(&hd, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "10s");
    assert_eq!(header(&hd, "x-ratelimit-reset-tokens"), "10s");
    assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 200);
    h.advance(2_500);
    let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 429);
    assert_eq!(header(&hd, "retry-after-ms"), "7500");
    assert_eq!(header(&hd, "retry-after"), "8");
    assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "7.5s");
    // The boundary gives the whole budget back at once.
    h.advance(7_500);
    for remaining in ["1", "0"] {
        let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
        assert_eq!(s, 200);
        assert_eq!(header(&hd, "x-ratelimit-remaining-requests"), remaining);
        assert_eq!(header(&hd, "x-ratelimit-reset-requests"), "1m0s");
    }
    assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 429);
    // Limits stay per model.
    assert_eq!(call(&h, &chat("gpt-4o-mini", "x")).await.0, 200);
}

#[tokio::test]
async fn rate_limiter_is_patchable() {
    let h = paused(SimConfig::default()).await;
    let r = h
        .http
        .patch(h.control("/config"))
        .json(&json!({"rate_limiter": "sliding_window", "rpm": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.sim().config().rate_limiter,
        RateLimiterKind::SlidingWindow
    );
    assert_eq!(call(&h, &chat("gpt-4o", "x")).await.0, 200);
    let (s, hd, _) = call(&h, &chat("gpt-4o", "x")).await;
    assert_eq!(s, 429);
    assert_eq!(header(&hd, "retry-after-ms"), "60000");
    let r = h
        .http
        .patch(h.control("/config"))
        .json(&json!({"rate_limiter": "leaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, log) = common::status_json(
        h.http
            .get(h.control("/chat_calls?model=gpt-4o"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let outcomes: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "rate_limited"]);
}

async fn prompt_tokens(h: &Harness, body: &Value) -> (u64, u64) {
    let (s, v) = h.post("/chat/completions", body).await;
    assert_eq!(s, 200, "{v}");
    let u = &v["usage"];
    (
        u["prompt_tokens_details"]["text_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["image_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn prompt_framing_schema_factor_and_offset_are_knobs() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}},
                        "required": ["a"], "additionalProperties": false});
    let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "hello world"},
            {"role": "user", "content": "hello world"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "r", "strict": true, "schema": schema}}});
    let h = Harness::start(SimConfig::default()).await;
    let (compact, _) = prompt_tokens(&h, &body).await;
    h.sim().set_config(SimConfig {
        schema_tokens: SchemaTokens::None,
        ..SimConfig::default()
    });
    let (none, _) = prompt_tokens(&h, &body).await;
    // "hello world" is 2 tokens; 2 messages × 3 + 3 for the reply.
    assert_eq!(none, 2 + 2 + 2 * 3 + 3);
    assert!(compact > none);
    h.sim().set_config(SimConfig {
        schema_tokens: SchemaTokens::Pretty,
        ..SimConfig::default()
    });
    let (pretty, _) = prompt_tokens(&h, &body).await;
    assert!(pretty > compact, "{pretty} vs {compact}");
    h.sim().set_config(SimConfig {
        schema_tokens: SchemaTokens::Fixed,
        schema_fixed_tokens: 50,
        tokens_per_message: 4,
        tokens_per_reply: 2,
        ..SimConfig::default()
    });
    assert_eq!(prompt_tokens(&h, &body).await.0, 4 + 2 * 4 + 2 + 50);
    h.sim().set_config(SimConfig {
        schema_tokens: SchemaTokens::None,
        text_token_factor: 1.5,
        text_token_offset: -3,
        ..SimConfig::default()
    });
    // round(13 × 1.5) − 3 = 20 − 3.
    assert_eq!(prompt_tokens(&h, &body).await.0, 17);
    // Patchable, and a large negative offset stops at 0.
    let r = h
        .http
        .patch(h.control("/config"))
        .json(&json!({"text_token_factor": null, "text_token_offset": -1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(prompt_tokens(&h, &body).await.0, 0);
}

#[tokio::test]
async fn image_token_factor_scales_the_table() {
    let url = png_data_url(&png_header(1024, 1024));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}}]}]});
    let h = Harness::start(SimConfig::default()).await;
    assert_eq!(prompt_tokens(&h, &body).await, (6, 765));
    h.sim().set_config(SimConfig {
        image_token_factor: 1.1,
        ..SimConfig::default()
    });
    // ⌈765 × 1.1⌉ = 842 (841.5 rounded up).
    assert_eq!(prompt_tokens(&h, &body).await, (6, 842));
}

fn flex(model: &str) -> Value {
    json!({"model": model, "service_tier": "flex",
           "messages": [{"role": "user", "content": "x"}]})
}

#[tokio::test]
async fn flex_is_offered_by_configured_models_only() {
    let h = Harness::start(SimConfig::default()).await;
    for model in [
        "o3",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini-2025-08-07",
        "gpt-5-nano",
    ] {
        let (s, _, v) = call(&h, &flex(model)).await;
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(v["service_tier"], "flex");
    }
    let (_, _, v) = call(&h, &chat("gpt-5", "x")).await;
    assert_eq!(v["service_tier"], "default");
    let (s, _, v) = call(&h, &flex("gpt-4o")).await;
    assert_eq!(s, 400);
    let e = envelope(&v);
    assert_eq!(e["message"], "Flex is not available for this model.");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], "service_tier");
    h.sim().set_config(SimConfig {
        flex_models: vec!["gpt-4o".into()],
        ..SimConfig::default()
    });
    assert_eq!(call(&h, &flex("gpt-4o")).await.0, 200);
    assert_eq!(call(&h, &flex("o3")).await.0, 400);
}

#[tokio::test]
async fn flex_unavailable_is_a_429_without_rate_limit_meaning() {
    let h = Harness::start(SimConfig {
        flex_unavailable_rate: 1.0,
        rpm: 1,
        ..SimConfig::default()
    })
    .await;
    let (s, hd, v) = call(&h, &flex("o3")).await;
    assert_eq!(s, 429);
    assert_eq!(envelope(&v)["code"], "resource_unavailable");
    assert!(!hd.contains_key("retry-after"));
    assert!(hd.keys().all(|k| !k.as_str().starts_with("x-ratelimit")));
    // Default-tier calls are never unavailable, and the failed flex call took no budget.
    assert_eq!(call(&h, &chat("o3", "x")).await.0, 200);
    h.sim().set_config(SimConfig {
        rpm: 1,
        ..SimConfig::default()
    });
    // Accepted flex calls count against the same RPM.
    h.advance(60_000);
    assert_eq!(call(&h, &flex("o3")).await.0, 200);
    let (s, _, v) = call(&h, &flex("o3")).await;
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let stats = h.sim().stats();
    assert_eq!(stats.flex_unavailable, 1);
    let c = &stats.chat_by_model["o3"];
    assert_eq!((c.accepted, c.rate_limited, c.flex_unavailable), (2, 1, 1));
    let journal = h.sim().journal();
    assert_eq!(journal[0].fault.as_deref(), Some("flex_unavailable"));
}

#[tokio::test]
async fn flex_latency_delays_flex_answers() {
    let h = Harness::start(SimConfig {
        flex_latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let t = Instant::now();
    assert_eq!(call(&h, &chat("o3", "x")).await.0, 200);
    assert!(t.elapsed() < Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(call(&h, &flex("o3")).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn flex_in_batch_lines_is_accepted_or_fails_the_line() {
    let h = Harness::start(SimConfig::fast()).await;
    let line = |id: &str, model: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": flex(model)})
    };
    let ok = h.batch(&[line("a", "o4-mini")], Value::Null).await;
    let bad = h.batch(&[line("b", "gpt-4o")], Value::Null).await;
    let ok = h.wait_for(ok["id"].as_str().unwrap(), "completed").await;
    let out = h.jsonl(ok["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out[0]["response"]["body"]["service_tier"], "flex");
    let bad = h.wait_for(bad["id"].as_str().unwrap(), "completed").await;
    let err = h.jsonl(bad["error_file_id"].as_str().unwrap()).await;
    assert_eq!(err[0]["response"]["status_code"], 400);
    assert_eq!(
        err[0]["response"]["body"]["error"]["message"],
        "Flex is not available for this model."
    );
}

async fn output_ids(order: OutputOrder) -> Vec<String> {
    let h = Harness::start(SimConfig {
        batch_output_order: order,
        ..SimConfig::fast()
    })
    .await;
    let b = h.batch(&lines(8, "gpt-4o"), Value::Null).await;
    let b = h.wait_for(b["id"].as_str().unwrap(), "completed").await;
    h.jsonl(b["output_file_id"].as_str().unwrap())
        .await
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn batch_output_order_knob() {
    let input: Vec<String> = (0..8).map(|i| format!("item-{i}")).collect();
    let mut reversed = input.clone();
    reversed.reverse();
    assert_eq!(
        SimConfig::default().batch_output_order,
        OutputOrder::Shuffled
    );
    assert_eq!(output_ids(OutputOrder::Input).await, input);
    assert_eq!(output_ids(OutputOrder::Reversed).await, reversed);
    let shuffled = output_ids(OutputOrder::Shuffled).await;
    assert_ne!(shuffled, input);
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, input);
}

type Seen = Arc<Mutex<Vec<(Instant, String, String)>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    seen.lock().unwrap().push((Instant::now(), id, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn wait_events(seen: &Seen, n: usize) -> Vec<(Instant, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "webhooks never arrived: {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn delayed_webhooks_wait_after_the_terminal_status() {
    let (url, seen) = receiver().await;
    let h = paused(SimConfig {
        webhook_url: Some(url),
        webhook_timing: WebhookTiming::Delayed,
        webhook_delay_ms: 10_000,
        ..SimConfig::fast()
    })
    .await;
    let b = h.batch(&lines(2, "gpt-4o"), Value::Null).await;
    let id = b["id"].as_str().unwrap();
    h.advance(1_000);
    assert_eq!(h.batch_status(id).await["status"], "completed");
    // Several ticks of the webhook loop pass; the event is held back on the simulator clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().unwrap().is_empty());
    h.advance(9_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().unwrap().is_empty(), "due 10 s after completion");
    h.advance(1_000);
    let events = wait_events(&seen, 1).await;
    let v: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(v["type"], "batch.completed");
    assert_eq!(v["data"]["id"], id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn duplicate_webhooks_repeat_the_same_event() {
    let (url, seen) = receiver().await;
    let h = Harness::start(SimConfig {
        webhook_url: Some(url),
        webhook_timing: WebhookTiming::Duplicate,
        webhook_delay_ms: 200,
        ..SimConfig::fast()
    })
    .await;
    let b = h.batch(&lines(2, "gpt-4o"), Value::Null).await;
    let events = wait_events(&seen, 2).await;
    assert_eq!(events[0].1, events[1].1, "same webhook-id");
    assert_eq!(events[0].2, events[1].2, "same body");
    // Arrival times are wall-clock and a loaded machine may deliver the first copy late,
    // so only their order is checked; the delay itself runs on the simulator's clock.
    assert!(events[1].0 >= events[0].0);
    let v: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(v["data"]["id"], b["id"]);
    assert_eq!(v["id"], events[0].1);
    h.wait_webhooks_sent(2).await;
}
