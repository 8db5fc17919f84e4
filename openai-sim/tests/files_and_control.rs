//! Files API over HTTP, and the `/_sim` control endpoints.

mod common;

use common::{envelope, lines, Harness, KEY};
use openai_sim::SimConfig;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

#[tokio::test]
async fn upload_retrieve_list_content_delete() {
    let h = Harness::start(SimConfig::default()).await;
    let data = common::jsonl(&lines(3, "gpt-4o"));
    let (s, f) = h.upload("batchinput.jsonl", "batch", data.clone()).await;
    assert_eq!(s, 200, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"));
    assert_eq!(f["object"], "file");
    assert_eq!(f["bytes"], data.len());
    assert_eq!(f["status"], "processed");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["filename"], "batchinput.jsonl");
    let created = f["created_at"].as_u64().unwrap();
    assert_eq!(f["expires_at"].as_u64().unwrap(), created + 30 * 24 * 3600);

    let (s, again) = h.get(&format!("/files/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(again, f);
    assert_eq!(h.content(&id).await.into_bytes(), data);

    let (_, other) = h.upload("notes.txt", "user_data", b"hello".to_vec()).await;
    assert!(
        other.get("expires_at").is_none(),
        "only batch files expire by default"
    );
    let (s, list) = h.get("/files").await;
    assert_eq!(s, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["has_more"], false);
    let (_, only_batch) = h.get("/files?purpose=batch").await;
    assert_eq!(only_batch["data"].as_array().unwrap().len(), 1);
    assert_eq!(only_batch["first_id"], id.as_str());
    let (_, asc) = h.get("/files?order=asc&limit=1").await;
    assert_eq!(asc["data"][0]["id"], id.as_str());
    assert_eq!(asc["has_more"], true);
    let (_, next) = h.get(&format!("/files?order=asc&limit=1&after={id}")).await;
    assert_eq!(next["data"][0]["id"], other["id"]);

    let r = h
        .http
        .delete(h.url(&format!("/files/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let (s, del) = common::status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(del, json!({"id": id, "object": "file", "deleted": true}));
    let (s, v) = h.get(&format!("/files/{id}")).await;
    assert_eq!(s, 404);
    envelope(&v);
    let stats = h.sim().stats();
    assert_eq!(
        (
            stats.files_uploaded,
            stats.files_deleted,
            stats.file_downloads
        ),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn upload_rejects_missing_or_unknown_purpose() {
    let h = Harness::start(SimConfig::default()).await;
    let (s, v) = h.upload("a.jsonl", "homework", b"{}".to_vec()).await;
    assert_eq!(s, 400);
    assert_eq!(envelope(&v)["param"], "purpose");
    let form = Form::new().part("file", Part::bytes(b"{}".to_vec()).file_name("a.jsonl"));
    let r = h
        .http
        .post(h.url("/files"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, v) = common::status_json(r).await;
    assert_eq!(s, 400);
    assert_eq!(envelope(&v)["code"], "missing_required_parameter");
    let form = Form::new().text("purpose", "batch");
    let r = h
        .http
        .post(h.url("/files"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, v) = common::status_json(r).await;
    assert_eq!(s, 400);
    assert_eq!(envelope(&v)["param"], "file");
    let (s, v) = h.upload("a.csv", "batch", b"{}".to_vec()).await;
    assert_eq!(s, 400, "batch input must be .jsonl: {v}");

    h.sim().set_config(SimConfig {
        max_upload_bytes: 10,
        ..SimConfig::default()
    });
    let (s, v) = h.upload("a.jsonl", "batch", vec![b' '; 11]).await;
    assert_eq!(s, 400);
    assert_eq!(envelope(&v)["code"], "file_too_large");
}

#[tokio::test]
async fn control_endpoints() {
    let h = Harness::start(SimConfig::fast()).await;
    let http = &h.http;

    let cfg: Value = http
        .get(h.control("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["rpm"], 0);
    assert_eq!(cfg["default_image_size"], "1024x1024");
    let r = http
        .patch(h.control("/config"))
        .json(&json!({"rpm": 5, "enqueued_token_limits": {"gpt-4o": 1000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.sim().config().rpm, 5);
    assert_eq!(h.sim().config().enqueued_token_limits["gpt-4o"], 1000);
    assert_eq!(h.sim().config().validating_ms, 20, "other knobs are kept");
    let r = http
        .patch(h.control("/config"))
        .json(&json!({"no_such_knob": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let a = h
        .batch(&lines(2, "gpt-4o-mini"), json!({"shard": "A"}))
        .await;
    h.batch(&lines(2, "gpt-4o-mini"), json!({"shard": "B"}))
        .await;
    h.batch(&lines(2, "gpt-4o-mini"), json!({"shard": "A"}))
        .await;
    assert_eq!(h.sim().count_batches_with_metadata("shard", "A"), 2);
    assert_eq!(h.sim().count_batches_with_metadata("shard", "C"), 0);
    let found: Value = http
        .get(h.control("/batches?metadata_key=shard&metadata_value=A"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["count"], 2);
    assert!(found["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["metadata"]["shard"] == "A"));

    let journal: Value = http
        .get(h.control("/journal"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let creates: Vec<&Value> = journal["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["method"] == "POST" && e["path"] == "/v1/batches")
        .collect();
    assert_eq!(creates.len(), 3);
    assert_eq!(creates[0]["metadata"], json!({"shard": "A"}));
    assert_eq!(creates[0]["batch_id"], a["id"]);
    assert_eq!(creates[0]["status"], 200);
    assert!(creates[0]["at_ms"].as_u64().unwrap() > 0);

    let a_id = a["id"].as_str().unwrap();
    let r = http
        .post(h.control(&format!("/batches/{a_id}/expire")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["batch"]["status"], "expired");
    let r = http
        .post(h.control(&format!("/batches/{a_id}/expire")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(h.control("/batches/batch_x/expire"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let stats: Value = http
        .get(h.control("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["batches_created"], 3);
    assert_eq!(stats["files_uploaded"], 3);
    assert_eq!(stats["batches_expired"], 1);

    let r = http
        .post(h.control("/clock/advance?ms=60000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(h.control("/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.sim().batches().is_empty());
    assert!(h.sim().journal().is_empty());
    assert_eq!(h.sim().stats().batches_created, 0);
    assert_eq!(h.sim().config().rpm, 5, "reset keeps the knobs");
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let h = Harness::start(SimConfig::default()).await;
    let url = h.url("/files");
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(h);
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).bearer_auth(KEY).send().await.is_err());
}
