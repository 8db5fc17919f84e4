//! The simulator's JSON checked against OpenAI's own component schemas
//! (tests/schemas/openai-components.json, extracted verbatim from openai/openai-openapi).

mod common;

use common::{lines, Harness, KEY};
use openai_sim::SimConfig;
use serde_json::{json, Value};

fn components() -> Value {
    let raw = include_str!("schemas/openai-components.json");
    let mut doc: Value = serde_json::from_str(raw).unwrap();
    allow_null_for_optional(&mut doc["components"]);
    doc["components"].clone()
}

/// OpenAI's responses (and the spec's own examples) send explicit `null` for optional fields
/// the schemas type as non-nullable (e.g. `Batch.failed_at: integer`). Optional properties
/// therefore also accept null here; required ones stay exactly as written.
fn allow_null_for_optional(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let required: Vec<String> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (k, v) in props.iter_mut() {
                    if !required.contains(k) && !accepts_null(v) {
                        *v = json!({"anyOf": [v.clone(), {"type": "null"}]});
                    }
                }
            }
            for v in map.values_mut() {
                allow_null_for_optional(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_null_for_optional),
        _ => {}
    }
}

fn accepts_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) if t == "null" => return true,
        Some(Value::Array(ts)) if ts.iter().any(|t| t == "null") => return true,
        _ => {}
    }
    schema
        .get("anyOf")
        .and_then(Value::as_array)
        .is_some_and(|alts| alts.iter().any(accepts_null))
}

struct Schemas {
    components: Value,
}

impl Schemas {
    fn validator(&self, name: &str) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": self.components,
        });
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn check(&self, name: &str, instance: &Value) {
        let v = self.validator(name);
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} invalid: {errors:?}\n{instance:#}"
        );
    }
}

#[test]
fn the_schemas_reject_what_they_should() {
    let s = Schemas {
        components: components(),
    };
    let batch = s.validator("Batch");
    let good = json!({"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1", "completion_window": "24h", "status": "validating",
        "created_at": 1, "failed_at": null});
    assert!(batch.is_valid(&good));
    let mut bad = good.clone();
    bad["status"] = json!("bogus");
    assert!(!batch.is_valid(&bad), "status enum is enforced");
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("created_at");
    assert!(!batch.is_valid(&bad), "required fields are enforced");
    let mut bad = good.clone();
    bad["request_counts"] = json!({"total": 1});
    assert!(!batch.is_valid(&bad), "$refs are followed");
    let file = s.validator("OpenAIFile");
    assert!(
        !file.is_valid(&json!({"id": "f", "object": "file", "bytes": null,
        "created_at": 1, "filename": "a", "purpose": "batch", "status": "processed"}))
    );
}

#[tokio::test]
async fn responses_match_openai_schemas() {
    let s = Schemas {
        components: components(),
    };
    let h = Harness::start(SimConfig {
        line_failure_rate: 0.3,
        ..SimConfig::fast()
    })
    .await;

    let (_, file) = h
        .upload(
            "in.jsonl",
            "batch",
            common::jsonl(&lines(10, "gpt-4o-mini")),
        )
        .await;
    s.check("OpenAIFile", &file);
    let (_, user_file) = h.upload("notes.txt", "user_data", b"hi".to_vec()).await;
    s.check("OpenAIFile", &user_file);
    let (_, list) = h.get("/files").await;
    s.check("ListFilesResponse", &list);

    let (_, created) = h
        .post(
            "/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"k": "v"}}),
        )
        .await;
    s.check("Batch", &created);
    let done = h
        .wait_for(created["id"].as_str().unwrap(), "completed")
        .await;
    assert!(done["output_file_id"].is_string() && done["error_file_id"].is_string());
    s.check("Batch", &done);
    let out = h.jsonl(done["output_file_id"].as_str().unwrap()).await;
    s.check("CreateChatCompletionResponse", &out[0]["response"]["body"]);
    let err = h.jsonl(done["error_file_id"].as_str().unwrap()).await;
    s.check("ErrorResponse", &err[0]["response"]["body"]);
    let (_, out_file) = h
        .get(&format!(
            "/files/{}",
            done["output_file_id"].as_str().unwrap()
        ))
        .await;
    s.check("OpenAIFile", &out_file);

    let (_, bad_file) = h.upload("bad.jsonl", "batch", b"nope\n".to_vec()).await;
    let (_, failed) = h
        .post(
            "/batches",
            &json!({"input_file_id": bad_file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    let failed = h.wait_for(failed["id"].as_str().unwrap(), "failed").await;
    s.check("Batch", &failed);

    let (_, cancelled) = h
        .post(
            "/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    let id = cancelled["id"].as_str().unwrap();
    let (_, cancelling) = h.post(&format!("/batches/{id}/cancel"), &json!({})).await;
    s.check("Batch", &cancelling);
    s.check("Batch", &h.wait_for(id, "cancelled").await);

    let (_, expiring) = h
        .post(
            "/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    assert!(h.sim().expire_batch(expiring["id"].as_str().unwrap()));
    s.check(
        "Batch",
        &h.batch_status(expiring["id"].as_str().unwrap()).await,
    );

    let (_, batches) = h.get("/batches?limit=2").await;
    s.check("ListBatchesResponse", &batches);

    let r = h
        .http
        .delete(h.url(&format!("/files/{}", user_file["id"].as_str().unwrap())))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    s.check("DeleteFileResponse", &r.json::<Value>().await.unwrap());

    let (_, chat) = h
        .post(
            "/chat/completions",
            &json!({"model": "gpt-5-mini", "n": 2, "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema":
                        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}}),
        )
        .await;
    assert_eq!(chat["choices"].as_array().unwrap().len(), 2);
    s.check("CreateChatCompletionResponse", &chat);
    let (_, e) = h.get("/batches/batch_nope").await;
    s.check("ErrorResponse", &e);
}
