//! Chat Completions over HTTP: usage for OpenAI's worked examples, schema-valid content,
//! request validation, rate limits with their headers, faults and auth.

mod common;

use common::{envelope, Harness, KEY};
use openai_sim::{FaultRule, ImageSize, SimConfig};
use serde_json::{json, Value};
use testkit::{png_data_url, png_header};

fn image_request(model: &str, url: &str, detail: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    ]}]})
}

async fn image_tokens(h: &Harness, model: &str, w: u32, hgt: u32, detail: &str) -> u64 {
    let url = png_data_url(&png_header(w, hgt));
    let (s, v) = h
        .post("/chat/completions", &image_request(model, &url, detail))
        .await;
    assert_eq!(s, 200, "{v}");
    let usage = &v["usage"];
    let image = usage["prompt_tokens_details"]["image_tokens"]
        .as_u64()
        .unwrap();
    // One message (3) and the reply priming (3) are the only text tokens here.
    assert_eq!(
        usage["prompt_tokens"].as_u64().unwrap(),
        image + 6,
        "{usage}"
    );
    image
}

#[tokio::test]
async fn usage_matches_openai_worked_examples() {
    let h = Harness::start(SimConfig::default()).await;
    assert_eq!(image_tokens(&h, "gpt-4o", 1024, 1024, "high").await, 765);
    assert_eq!(image_tokens(&h, "gpt-4o", 2048, 4096, "high").await, 1105);
    assert_eq!(image_tokens(&h, "gpt-4o", 2048, 4096, "auto").await, 1105);
    assert_eq!(
        image_tokens(&h, "gpt-4o-mini", 1024, 1024, "low").await,
        2833
    );
    assert_eq!(
        image_tokens(&h, "gpt-4.1-mini", 1800, 2400, "high").await,
        2353
    );
    assert_eq!(
        image_tokens(&h, "gpt-4.1-mini", 1800, 2400, "low").await,
        2353
    );
    assert_eq!(
        image_tokens(&h, "mystery-model", 1024, 1024, "high").await,
        765
    );
}

#[tokio::test]
async fn https_images_use_the_default_size_knob() {
    let h = Harness::start(SimConfig::default()).await;
    let req = image_request("gpt-4o", "https://example.com/a.jpg", "high");
    let (_, v) = h.post("/chat/completions", &req).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["image_tokens"], 765);
    h.sim().set_config(SimConfig {
        default_image_size: ImageSize {
            width: 2048,
            height: 4096,
        },
        ..SimConfig::default()
    });
    let (_, v) = h.post("/chat/completions", &req).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["image_tokens"], 1105);
}

#[tokio::test]
async fn text_usage_and_snapshot_names() {
    let h = Harness::start(SimConfig {
        cached_tokens_fraction: 0.5,
        ..SimConfig::default()
    })
    .await;
    let (s, v) = h
        .post(
            "/chat/completions",
            &json!({"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "hello world"},
                {"role": "user", "content": [{"type": "text", "text": "hello world"}]}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    // "hello world" is 2 tokens twice, 3 per message, 3 for the reply.
    assert_eq!(v["usage"]["prompt_tokens"], 2 + 2 + 3 + 3 + 3);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    for (alias, snap) in [
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("gpt-4.1", "gpt-4.1-2025-04-14"),
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
        ("gpt-5", "gpt-5-2025-08-07"),
        ("gpt-5-mini", "gpt-5-mini-2025-08-07"),
        ("gpt-5-nano", "gpt-5-nano-2025-08-07"),
        ("custom-model", "custom-model"),
    ] {
        let (_, v) = h
            .post(
                "/chat/completions",
                &json!({"model": alias, "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        assert_eq!(v["model"], snap);
    }
}

#[tokio::test]
async fn reasoning_models_reject_max_tokens_and_report_reasoning() {
    let h = Harness::start(SimConfig {
        reasoning_tokens: 64,
        ..SimConfig::default()
    })
    .await;
    let (s, v) = h
        .post(
            "/chat/completions",
            &json!({"model": "gpt-5-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 400);
    let e = envelope(&v);
    assert_eq!(e["param"], "max_tokens");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("Use 'max_completion_tokens' instead."));
    let (s, v) = h
        .post(
            "/chat/completions",
            &json!({"model": "o4-mini", "max_completion_tokens": 1000, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        64
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 64);
}

#[tokio::test]
async fn invalid_requests_get_the_envelope() {
    let h = Harness::start(SimConfig::default()).await;
    let cases = [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "gpt-4o"}),
        json!({"model": "gpt-4o", "messages": []}),
        json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}),
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
               "response_format": {"type": "json_object"}}),
    ];
    for body in cases {
        let (s, v) = h.post("/chat/completions", &body).await;
        assert_eq!(s, 400, "{body} → {v}");
        envelope(&v);
    }
    let r = h
        .http
        .post(h.url("/chat/completions"))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(h.sim().stats().chat_rejected, 6);
}

fn fashion_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["garments", "style", "season", "confidence", "notes", "palette"],
        "properties": {
            "garments": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": false,
                "required": ["category", "color", "pattern"],
                "properties": {
                    "category": {"type": "string", "enum": ["top", "bottom", "dress", "shoes", "outerwear"]},
                    "color": {"type": "string"},
                    "pattern": {"type": ["string", "null"], "enum": ["solid", "striped", "floral", null]}
                }}},
            "style": {"anyOf": [{"type": "string", "enum": ["casual", "formal"]}, {"type": "null"}]},
            "season": {"$ref": "#/$defs/season"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "notes": {"type": ["string", "null"], "maxLength": 40},
            "palette": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "maxItems": 3}
        },
        "$defs": {"season": {"type": "string", "enum": ["spring", "summer", "autumn", "winter"]}}
    })
}

#[tokio::test]
async fn content_validates_against_the_requested_schema() {
    let h = Harness::start(SimConfig::default()).await;
    let schema = fashion_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "describe"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "fashion", "strict": true, "schema": schema}}});
    let mut seen_null_style = false;
    for _ in 0..40 {
        let (s, v) = h.post("/chat/completions", &req).await;
        assert_eq!(s, 200, "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(content).unwrap();
        if let Err(e) = validator.validate(&parsed) {
            panic!("{content} does not validate: {e}");
        }
        seen_null_style |= parsed["style"].is_null();
        let schema_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(schema_tokens > 20, "schema tokens are part of the prompt");
    }
    assert!(seen_null_style, "nullable fields are sometimes null");
}

#[tokio::test]
async fn max_completion_tokens_cuts_the_reply() {
    let h = Harness::start(SimConfig::default()).await;
    let (_, v) = h
        .post(
            "/chat/completions",
            &json!({"model": "gpt-4o", "max_completion_tokens": 2,
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": fashion_schema()}}}),
        )
        .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn rpm_limit_answers_429_with_headers() {
    let h = Harness::start(SimConfig {
        rpm: 2,
        ..SimConfig::default()
    })
    .await;
    let req = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]});
    for expected_remaining in ["1", "0"] {
        let r = h
            .http
            .post(h.url("/chat/completions"))
            .bearer_auth(KEY)
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let hd = r.headers();
        assert_eq!(hd["x-ratelimit-limit-requests"], "2");
        assert_eq!(hd["x-ratelimit-remaining-requests"], expected_remaining);
        for k in [
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "x-request-id",
        ] {
            assert!(hd.contains_key(k), "missing {k}");
        }
    }
    let r = h
        .http
        .post(h.url("/chat/completions"))
        .bearer_auth(KEY)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let hd = r.headers().clone();
    let secs: u64 = hd["retry-after"].to_str().unwrap().parse().unwrap();
    let ms: u64 = hd["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1 && ms > 0 && ms <= secs * 1000, "{secs} {ms}");
    assert_eq!(hd["x-ratelimit-remaining-requests"], "0");
    let reset = hd["x-ratelimit-reset-requests"].to_str().unwrap();
    assert!(reset.ends_with('s'), "{reset}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(envelope(&v)["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(h.sim().stats().rate_limited, 1);
}

#[tokio::test]
async fn tpm_limit_counts_prompt_plus_max_completion_tokens() {
    let h = Harness::start(SimConfig {
        tpm: 1_000,
        ..SimConfig::default()
    })
    .await;
    let req = |max: u64| {
        json!({"model": "gpt-4o", "max_completion_tokens": max,
               "messages": [{"role": "user", "content": "x"}]})
    };
    let (s, _) = h.post("/chat/completions", &req(600)).await;
    assert_eq!(s, 200);
    let (s, v) = h.post("/chat/completions", &req(600)).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["type"], "tokens");
    let (s, v) = h.post("/chat/completions", &req(5_000)).await;
    assert_eq!(s, 429);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Request too large"));
}

#[tokio::test]
async fn injected_faults_and_quota() {
    let h = Harness::start(SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/batches".into(),
            method: Some("GET".into()),
            fault_5xx_rate: 1.0,
            status_5xx: 503,
            remaining: Some(2),
            ..FaultRule::default()
        }],
        ..SimConfig::default()
    })
    .await;
    for _ in 0..2 {
        let (s, v) = h.get("/batches").await;
        assert_eq!(s, 503);
        assert_eq!(envelope(&v)["type"], "server_error");
    }
    let (s, _) = h.get("/batches").await;
    assert_eq!(s, 200, "the rule fired its two times");
    let (s, _) = h.get("/files").await;
    assert_eq!(s, 200, "other paths are untouched");
    assert_eq!(h.sim().config().faults[0].remaining, Some(0));
    assert_eq!(h.sim().stats().injected_5xx, 2);

    h.sim().set_config(SimConfig {
        fault_429_rate: 1.0,
        ..SimConfig::default()
    });
    let r = h
        .http
        .get(h.url("/files"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["retry-after-ms"], "1000");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    h.sim().set_config(SimConfig {
        insufficient_quota: true,
        ..SimConfig::default()
    });
    let r = h
        .http
        .get(h.url("/files"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");

    h.sim().set_config(SimConfig {
        fault_5xx_rate: 1.0,
        ..SimConfig::default()
    });
    let (s, _) = h.get("/files").await;
    assert_eq!(s, 500);
    let journal = h.sim().journal();
    let last = journal.last().unwrap();
    assert_eq!((last.status, last.fault.as_deref()), (500, Some("5xx")));
}

#[tokio::test]
async fn auth_is_required() {
    let h = Harness::start(SimConfig {
        api_key: Some("sk-right-key-123".into()),
        ..SimConfig::default()
    })
    .await;
    let r = h.http.get(h.url("/files")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    envelope(&r.json::<Value>().await.unwrap());
    let r = h
        .http
        .get(h.url("/files"))
        .bearer_auth("sk-wrong-key-456")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(!v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong-key"));
    let r = h
        .http
        .get(h.url("/files"))
        .bearer_auth("sk-right-key-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .get(h.url("/nope"))
        .bearer_auth("sk-right-key-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    envelope(&r.json::<Value>().await.unwrap());
    assert_eq!(h.sim().stats().unauthorized, 2);
}

#[tokio::test]
async fn held_calls_are_recorded_at_once_and_answered_on_release() {
    let h = Harness::start(SimConfig {
        chat_hold: true,
        ..SimConfig::default()
    })
    .await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let http = h.http.clone();
            let (url, body) = (h.url("/chat/completions"), body.clone());
            tokio::spawn(async move {
                let r = http.post(url).bearer_auth(KEY).json(&body);
                r.send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while h.sim().chat_calls().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the calls never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Recorded and counted, yet none answered while held.
    assert_eq!(h.sim().stats().chat_calls, 3);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "a held call answered"
    );
    let mut config = h.sim().config();
    config.chat_hold = false;
    h.sim().set_config(config);
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn a_fault_rule_may_skip_the_first_requests() {
    let h = Harness::start(SimConfig {
        faults: vec![FaultRule {
            path_prefix: "/v1/chat/completions".into(),
            fault_429_rate: 1.0,
            remaining: Some(1),
            skip: 2,
            ..FaultRule::default()
        }],
        ..SimConfig::default()
    })
    .await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(h.post("/chat/completions", &body).await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 200]);
}
