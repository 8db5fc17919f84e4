//! Batch lifecycle over HTTP: statuses, counts, output files, failures, expiry, cancel,
//! validation and the enqueued-token limit.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{envelope, line, lines, Harness};
use openai_sim::SimConfig;
use serde_json::{json, Value};

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn lifecycle_walks_every_status_with_counts_advancing() {
    let h = Harness::stepped().await;
    let b = h
        .batch(&lines(50, "gpt-4o-mini"), json!({"shard": "s1"}))
        .await;
    let id = b["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("batch_"));
    assert_eq!(b["object"], "batch");
    assert_eq!(b["status"], "validating");
    assert_eq!(
        b["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    for k in [
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "output_file_id",
        "error_file_id",
        "errors",
    ] {
        assert!(
            b.get(k).is_some_and(Value::is_null),
            "{k} should be an explicit null: {b}"
        );
    }
    assert_eq!(
        b["expires_at"].as_u64().unwrap(),
        b["created_at"].as_u64().unwrap() + 86_400
    );
    assert_eq!(b["metadata"], json!({"shard": "s1"}));

    h.advance(10_000);
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "in_progress");
    assert!(b["in_progress_at"].is_u64());
    assert_eq!(b["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(b["request_counts"]["total"], 50);
    let first = b["request_counts"]["completed"].as_u64().unwrap();

    h.advance(40_000);
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "in_progress");
    let mid = b["request_counts"]["completed"].as_u64().unwrap();
    assert!(
        mid > first && mid < 50,
        "counts advance with time: {first} then {mid}"
    );
    assert!(b["usage"]["input_tokens"].as_u64().unwrap() > 0);

    h.advance(60_000);
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "finalizing");
    assert!(b["finalizing_at"].is_u64());
    assert_eq!(b["request_counts"]["completed"], 50);
    assert!(
        b["output_file_id"].is_null(),
        "files appear only at the end"
    );

    h.advance(10_000);
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "completed");
    assert!(b["completed_at"].is_u64());
    assert!(b["output_file_id"].is_string());
    assert!(
        b["error_file_id"].is_null(),
        "no failed lines, no error file"
    );
    assert_eq!(
        b["request_counts"],
        json!({"total": 50, "completed": 50, "failed": 0})
    );
}

#[tokio::test]
async fn output_covers_every_custom_id_once_shuffled_with_usage_totals() {
    let h = Harness::start(SimConfig::fast()).await;
    let input = lines(40, "gpt-4o");
    let b = h.batch(&input, Value::Null).await;
    let b = h.wait_for(b["id"].as_str().unwrap(), "completed").await;
    let out = h.jsonl(b["output_file_id"].as_str().unwrap()).await;
    let want = custom_ids(&input);
    let got = custom_ids(&out);
    assert_eq!(got.len(), want.len());
    assert_eq!(
        got.iter().collect::<HashSet<_>>(),
        want.iter().collect::<HashSet<_>>()
    );
    assert_ne!(got, want, "output order is not input order");

    let (mut input_tokens, mut output_tokens) = (0, 0);
    let mut req_ids = HashSet::new();
    for l in &out {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(req_ids.insert(l["id"].as_str().unwrap().to_string()));
        assert!(l["error"].is_null());
        assert_eq!(l["response"]["status_code"], 200);
        assert!(l["response"]["request_id"].is_string());
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-4o-2024-08-06");
        input_tokens += body["usage"]["prompt_tokens"].as_u64().unwrap();
        output_tokens += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert_eq!(b["usage"]["input_tokens"], input_tokens);
    assert_eq!(b["usage"]["output_tokens"], output_tokens);
    assert_eq!(b["usage"]["total_tokens"], input_tokens + output_tokens);

    let (s, f) = h
        .get(&format!("/files/{}", b["output_file_id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(f["purpose"], "batch_output");
}

#[tokio::test]
async fn failed_lines_go_to_the_error_file() {
    let h = Harness::start(SimConfig {
        line_failure_rate: 0.3,
        seed: 7,
        ..SimConfig::fast()
    })
    .await;
    let input = lines(60, "gpt-4o-mini");
    let b = h.batch(&input, Value::Null).await;
    let b = h.wait_for(b["id"].as_str().unwrap(), "completed").await;
    let completed = b["request_counts"]["completed"].as_u64().unwrap();
    let failed = b["request_counts"]["failed"].as_u64().unwrap();
    assert!(completed > 0 && failed > 0, "{b}");
    assert_eq!(completed + failed, 60);
    let out = h.jsonl(b["output_file_id"].as_str().unwrap()).await;
    let err = h.jsonl(b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len() as u64, completed);
    assert_eq!(err.len() as u64, failed);
    for l in &err {
        assert!(l["error"].is_null());
        assert_eq!(l["response"]["status_code"], 400);
        envelope(&l["response"]["body"]);
    }
    let mut all = custom_ids(&out);
    all.extend(custom_ids(&err));
    all.sort();
    let mut want = custom_ids(&input);
    want.sort();
    assert_eq!(all, want);
}

#[tokio::test]
async fn a_line_the_endpoint_rejects_fails_alone() {
    let h = Harness::start(SimConfig::fast()).await;
    let mut bad = line("bad", "gpt-5-mini", "hi");
    bad["body"]["max_tokens"] = json!(100);
    let input = vec![line("good", "gpt-5-mini", "hi"), bad];
    let b = h.batch(&input, Value::Null).await;
    let b = h.wait_for(b["id"].as_str().unwrap(), "completed").await;
    assert_eq!(
        b["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let err = h.jsonl(b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(err[0]["custom_id"], "bad");
    assert_eq!(err[0]["response"]["body"]["error"]["param"], "max_tokens");
}

#[tokio::test]
async fn expiry_keeps_finished_lines_and_marks_the_rest() {
    let h = Harness::stepped().await;
    let b = h.batch(&lines(50, "gpt-4o-mini"), Value::Null).await;
    let id = b["id"].as_str().unwrap().to_string();
    h.advance(10_000 + 30_000);
    assert!(h.sim().expire_batch(&id));
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "expired");
    assert!(b["expired_at"].is_u64());
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!(done > 0 && done < 50, "{b}");
    let out = h.jsonl(b["output_file_id"].as_str().unwrap()).await;
    let err = h.jsonl(b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len() as u64, done);
    assert_eq!(err.len() as u64, 50 - done);
    for l in &err {
        assert!(l["response"].is_null());
        assert_eq!(
            l["error"],
            json!({"code": "batch_expired",
                   "message": "This request could not be executed before the completion window expired."})
        );
    }
    assert!(
        !h.sim().expire_batch(&id),
        "a terminal batch cannot expire again"
    );
}

#[tokio::test]
async fn the_completion_window_expires_by_the_clock() {
    let h = Harness::start(SimConfig {
        validating_ms: 1_000,
        in_progress_ms: 100_000,
        expire_after_ms: 50_000,
        ..SimConfig::default()
    })
    .await;
    let b = h.batch(&lines(10, "gpt-4o"), Value::Null).await;
    let id = b["id"].as_str().unwrap();
    h.advance(49_000);
    assert_eq!(h.batch_status(id).await["status"], "in_progress");
    h.advance(2_000);
    let b = h.batch_status(id).await;
    assert_eq!(b["status"], "expired");
    assert_eq!(b["expired_at"], b["expires_at"]);
}

#[tokio::test]
async fn cancel_keeps_partial_output_and_terminal_cancel_is_409() {
    let h = Harness::stepped().await;
    let b = h.batch(&lines(50, "gpt-4o-mini"), Value::Null).await;
    let id = b["id"].as_str().unwrap().to_string();
    h.advance(10_000 + 50_000);
    let (s, b) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "cancelling");
    assert!(b["cancelling_at"].is_u64());
    h.advance(10_000);
    let b = h.batch_status(&id).await;
    assert_eq!(b["status"], "cancelled");
    assert!(b["cancelled_at"].is_u64());
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!(done > 0 && done < 50, "{b}");
    let out = h.jsonl(b["output_file_id"].as_str().unwrap()).await;
    let err = h.jsonl(b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len() as u64, done);
    assert_eq!(err.len() as u64, 50 - done);
    assert!(err.iter().all(|l| l["error"]["code"] == "batch_cancelled"));

    let (s, e) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 409);
    assert_eq!(
        e,
        json!({"error": {"message": "Cannot cancel a batch with status 'cancelled'.",
                         "type": "invalid_request_error", "param": null, "code": null}})
    );

    let done = h.batch(&lines(2, "gpt-4o-mini"), Value::Null).await;
    let done_id = done["id"].as_str().unwrap();
    h.advance(200_000);
    assert_eq!(h.batch_status(done_id).await["status"], "completed");
    let (s, e) = h
        .post(&format!("/batches/{done_id}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        e["error"]["message"],
        "Cannot cancel a batch with status 'completed'."
    );
}

#[tokio::test]
async fn cancelling_while_validating_runs_nothing() {
    let h = Harness::stepped().await;
    let b = h.batch(&lines(5, "gpt-4o"), Value::Null).await;
    let id = b["id"].as_str().unwrap();
    let (s, b) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelling")));
    h.advance(10_000);
    let b = h.batch_status(id).await;
    assert_eq!(b["status"], "cancelled");
    assert!(b["output_file_id"].is_null() && b["error_file_id"].is_null());
}

#[tokio::test]
async fn asynchronous_validation_failures() {
    let h = Harness::start(SimConfig {
        max_lines: 3,
        ..SimConfig::fast()
    })
    .await;
    let ok = line("a", "gpt-4o", "hi");
    let mut wrong_url = line("b", "gpt-4o", "hi");
    wrong_url["url"] = json!("/v1/embeddings");
    let mut wrong_method = line("b", "gpt-4o", "hi");
    wrong_method["method"] = json!("GET");
    let cases: Vec<(&str, Vec<u8>, &str, Option<u64>)> = vec![
        (
            "invalid json",
            format!("{ok}\n{{nope\n").into_bytes(),
            "invalid_json_line",
            Some(2),
        ),
        (
            "duplicate",
            common::jsonl(&[ok.clone(), ok.clone()]),
            "duplicate_custom_id",
            Some(2),
        ),
        (
            "url",
            common::jsonl(&[ok.clone(), wrong_url]),
            "invalid_url",
            Some(2),
        ),
        (
            "method",
            common::jsonl(&[ok.clone(), wrong_method]),
            "invalid_method",
            Some(2),
        ),
        (
            "too many",
            common::jsonl(&lines(4, "gpt-4o")),
            "too_many_requests",
            None,
        ),
        (
            "mixed models",
            common::jsonl(&[ok.clone(), line("b", "gpt-4o-mini", "hi")]),
            "mismatched_model",
            Some(2),
        ),
    ];
    for (name, data, code, at) in cases {
        let (s, f) = h.upload("in.jsonl", "batch", data).await;
        assert_eq!(s, 200);
        let (s, b) = h
            .post(
                "/batches",
                &json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            )
            .await;
        assert_eq!(s, 200, "{name}: {b}");
        let b = h.wait_for(b["id"].as_str().unwrap(), "failed").await;
        assert!(b["failed_at"].is_u64(), "{name}");
        assert_eq!(b["errors"]["object"], "list", "{name}");
        let e = &b["errors"]["data"][0];
        assert_eq!(e["code"], code, "{name}: {b}");
        assert_eq!(e["line"].as_u64(), at, "{name}: {b}");
        assert!(e["message"].is_string() && e.get("param").is_some());
        assert!(b["output_file_id"].is_null() && b["error_file_id"].is_null());
    }

    h.sim().set_config(SimConfig {
        max_file_bytes: 100,
        ..SimConfig::fast()
    });
    let b = h.batch(&lines(3, "gpt-4o"), Value::Null).await;
    let b = h.wait_for(b["id"].as_str().unwrap(), "failed").await;
    assert_eq!(b["errors"]["data"][0]["code"], "file_too_large");
}

#[tokio::test]
async fn create_rejects_bad_requests_with_400() {
    let h = Harness::start(SimConfig::fast()).await;
    let (_, good) = h
        .upload("in.jsonl", "batch", common::jsonl(&lines(1, "gpt-4o")))
        .await;
    let (_, other) = h.upload("notes.jsonl", "user_data", b"{}\n".to_vec()).await;
    let base = json!({"input_file_id": good["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let many: BTreeMap<String, String> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases = vec![
        (
            "missing file",
            with("input_file_id", json!("file-nope")),
            "input_file_id",
        ),
        (
            "wrong purpose",
            with("input_file_id", other["id"].clone()),
            "input_file_id",
        ),
        (
            "window",
            with("completion_window", json!("1h")),
            "completion_window",
        ),
        ("endpoint", with("endpoint", json!("/v1/nope")), "endpoint"),
        ("17 pairs", with("metadata", json!(many)), "metadata"),
        (
            "long key",
            with("metadata", json!({"k".repeat(65): "v"})),
            "metadata",
        ),
        (
            "long value",
            with("metadata", json!({"k": "v".repeat(513)})),
            "metadata.k",
        ),
    ];
    for (name, body, param) in cases {
        let (s, v) = h.post("/batches", &body).await;
        assert_eq!(s, 400, "{name}: {v}");
        assert_eq!(envelope(&v)["param"], param, "{name}: {v}");
    }
    let (s, v) = h
        .post("/batches", &json!({"endpoint": "/v1/chat/completions"}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(envelope(&v)["code"], "missing_required_parameter");
    let ok_meta: BTreeMap<String, String> = (0..16)
        .map(|i| (format!("{i}{}", "k".repeat(62)), "v".repeat(512)))
        .collect();
    let (s, v) = h.post("/batches", &with("metadata", json!(ok_meta))).await;
    assert_eq!(s, 200, "16 pairs at the limits are fine: {v}");
    assert_eq!(h.sim().stats().batches_rejected, 8);
}

#[tokio::test]
async fn enqueued_token_limit_fails_the_batch_that_overflows() {
    let h = Harness::stepped().await;
    let input = lines(10, "gpt-4o-mini");
    // Measure what one such batch enqueues by running it once.
    let probe = h.batch(&input, Value::Null).await;
    h.advance(200_000);
    let probe = h.batch_status(probe["id"].as_str().unwrap()).await;
    let tokens = probe["usage"]["input_tokens"].as_u64().unwrap();
    assert!(tokens > 0);

    let limit = tokens + tokens / 2;
    let mut cfg = h.sim().config();
    cfg.enqueued_token_limits
        .insert("gpt-4o-mini".into(), limit);
    h.sim().set_config(cfg);

    let a = h.batch(&input, Value::Null).await;
    h.advance(10_000);
    let a_id = a["id"].as_str().unwrap();
    assert_eq!(h.batch_status(a_id).await["status"], "in_progress");
    let b = h.batch(&input, Value::Null).await;
    h.advance(10_000);
    let b = h.batch_status(b["id"].as_str().unwrap()).await;
    assert_eq!(b["status"], "failed", "{b}");
    let e = &b["errors"]["data"][0];
    assert_eq!(e["code"], "token_limit_exceeded");
    assert_eq!(
        e["message"].as_str().unwrap(),
        format!(
            "Enqueued token limit reached for gpt-4o-mini in organization org-sim. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
            thousands(limit)
        )
    );
    assert!(e["line"].is_null());

    // Another model has its own budget; once A is done the model has room again.
    let other = h.batch(&lines(10, "gpt-4o"), Value::Null).await;
    h.advance(200_000);
    assert_eq!(h.batch_status(a_id).await["status"], "completed");
    assert_eq!(
        h.batch_status(other["id"].as_str().unwrap()).await["status"],
        "completed"
    );
    let c = h.batch(&input, Value::Null).await;
    h.advance(10_000);
    assert_eq!(
        h.batch_status(c["id"].as_str().unwrap()).await["status"],
        "in_progress"
    );
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test]
async fn list_batches_pages_newest_first() {
    let h = Harness::stepped().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = h
            .batch(&lines(1, "gpt-4o"), json!({"n": i.to_string()}))
            .await;
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let (s, page) = h.get("/batches?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(page["first_id"], ids[0].as_str());
    assert_eq!(page["last_id"], ids[1].as_str());
    let (_, page) = h.get(&format!("/batches?limit=2&after={}", ids[3])).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], ids[4].as_str());
    assert_eq!(page["has_more"], false);
    let (_, page) = h.get("/batches").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    let (s, v) = h.get("/batches?limit=101").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h.get("/batches/batch_nope").await;
    assert_eq!(s, 404);
    envelope(&v);
}
