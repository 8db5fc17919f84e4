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

/// The operations anyone may call: health, readiness, metrics and the public price table
/// (the document and the Swagger UI are not in the document). OpenAI's own webhooks, when
/// the route exists, are verified by signature instead of a key.
const PUBLIC: [(&str, &str); 5] = [
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/v1/pricing", "get"),
    ("/v1/openai/webhooks", "post"),
];

/// Every (path, method, operation) of the document.
pub fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    out
}

pub fn is_public(path: &str, method: &str) -> bool {
    PUBLIC.contains(&(path, method))
}

#[test]
fn every_secured_operation_declares_401_429_and_500_as_problems() {
    let doc: serde_json::Value = serde_json::from_str(&batchlens::api::openapi_json()).unwrap();
    let ops = operations(&doc);
    let secured: Vec<_> = ops.iter().filter(|(p, m, _)| !is_public(p, m)).collect();
    assert!(secured.len() >= 12, "{} secured operations", secured.len());
    for (path, method, op) in secured {
        assert_eq!(
            op["security"],
            serde_json::json!([{"bearer": []}]),
            "{method} {path} needs the bearer key"
        );
        for status in ["401", "429", "500"] {
            let content = &op["responses"][status]["content"]["application/problem+json"];
            assert_eq!(
                content["schema"]["$ref"], "#/components/schemas/Problem",
                "{method} {path} does not declare {status} as a problem"
            );
        }
        let has = |place: &str| {
            op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == place))
        };
        if has("path") {
            for status in ["400", "404"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
        if op["requestBody"].is_object() {
            for status in ["400", "413", "415", "422"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    for (path, method) in PUBLIC {
        if let Some(op) = doc["paths"][path][method].as_object() {
            assert!(op.get("security").is_none(), "{method} {path} is public");
        }
    }
}

#[test]
fn limits_are_bounded_and_events_are_an_event_stream() {
    let doc: serde_json::Value = serde_json::from_str(&batchlens::api::openapi_json()).unwrap();
    for (path, max) in [
        ("/v1/jobs", 200),
        ("/v1/jobs/{id}/results", 1000),
        ("/v1/jobs/{id}/posts", 500),
    ] {
        let limit = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap_or_else(|| panic!("{path} has no limit"))
            .clone();
        assert_eq!(limit["schema"]["minimum"], 1, "{path}");
        assert_eq!(limit["schema"]["maximum"], max, "{path}");
    }
    let events = &doc["paths"]["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        events["text/event-stream"]["schema"]["$ref"],
        "#/components/schemas/JobEvent"
    );
    let event = &doc["components"]["schemas"]["JobEvent"];
    assert_eq!(event["type"], "object");
    assert!(event["properties"]["event"].is_object() && event["properties"]["data"].is_object());
    let prompt = &doc["components"]["schemas"]["Analyzer"]["properties"]["prompt"];
    assert_eq!(prompt["minLength"], 1);
}
