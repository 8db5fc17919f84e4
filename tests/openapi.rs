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
        ("/v1/jobs/{id}/results/{custom_id}", "get"),
        ("/v1/jobs/{id}/results/{custom_id}/image", "get"),
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
    // One result is a results row; its image is binary, in the four formats intake keeps.
    let one = &doc["paths"]["/v1/jobs/{id}/results/{custom_id}"]["get"]["responses"];
    assert_eq!(
        one["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ResultView"
    );
    let image = &doc["paths"]["/v1/jobs/{id}/results/{custom_id}/image"]["get"]["responses"];
    for kind in ["image/png", "image/jpeg", "image/webp", "image/gif"] {
        assert!(image["200"]["content"][kind].is_object(), "{kind}");
    }
    assert_eq!(
        doc["components"]["schemas"]["ImageBytes"]["format"],
        "binary"
    );
    for responses in [one, image] {
        for status in ["401", "404"] {
            assert!(
                responses[status]["content"]["application/problem+json"].is_object(),
                "{status}"
            );
        }
    }
    // The events cadence, as API.md and the README say it.
    let events = doc["paths"]["/v1/jobs/{id}/events"]["get"]["description"]
        .as_str()
        .unwrap();
    for needle in [
        "one a second per job",
        "`reopened`",
        "`: keep-alive`",
        "15 s",
    ] {
        assert!(events.contains(needle), "{needle:?} not in {events}");
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
