//! The committed OpenAPI document is the one the code generates.

#[test]
fn committed_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = batchlens::api::openapi_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date: run `cargo run --bin gen-openapi` and commit it"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_covers_the_contract() {
    let doc: serde_json::Value = serde_json::from_str(&batchlens::api::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, method) in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}/items", "post"),
        ("/v1/jobs/{id}/submit", "post"),
        ("/v1/jobs/{id}/results", "get"),
        ("/v1/jobs/{id}/posts", "get"),
        ("/v1/jobs/{id}/cost", "get"),
        ("/v1/jobs/{id}/events", "get"),
        ("/v1/estimates", "post"),
        ("/v1/costs", "get"),
        ("/v1/pricing", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/openai/webhooks", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is missing from the document"
        );
    }
    let job = &doc["components"]["schemas"]["JobView"]["properties"];
    for field in [
        "id",
        "status",
        "mode",
        "model",
        "created_at",
        "progress",
        "rejected",
        "estimate",
        "links",
        "batches",
        "cost",
        "mode_reason",
    ] {
        assert!(job[field].is_object(), "JobView.{field} missing");
    }
    // OpenAI's webhooks carry no API key: the signature is the credential.
    let hook = &doc["paths"]["/v1/openai/webhooks"]["post"];
    assert!(hook.get("security").is_none(), "{hook}");
    for status in ["200", "400", "401"] {
        assert!(hook["responses"][status].is_object(), "{status} missing");
    }
    let ack = &doc["components"]["schemas"]["OpenAiWebhookAck"]["properties"];
    for field in ["event", "batch_id", "replay", "shards_due"] {
        assert!(ack[field].is_object(), "OpenAiWebhookAck.{field} missing");
    }
}
