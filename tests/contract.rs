//! API.md "Errors" from outside: every malformed path, query and body answers a 400
//! problem naming the parameter or field (not axum's `text/plain`), trailing bytes after
//! the JSON are refused, and every operation the document secures answers 401 without a
//! key. Nothing any of these sent was stored.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};

use crate::api::problem;
use crate::common::{fast_sim, mixed_items, Db, TestApp};
use crate::openapi::{is_public, operations};

const KEY: &str = "contract-key";

/// An application with one key configured, and a client that sends it.
async fn keyed_app(db: Db) -> Option<(TestApp, reqwest::Client, tempfile::TempDir)> {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let hash = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    std::fs::write(
        &file,
        format!("[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let app = TestApp::spawn_with_config(db, fast_sim(), &[], Some(&file)).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    Some((app, client, dir))
}

/// Asserts a 400 problem whose one error names `field` and whose message contains `says`.
async fn bad_request(r: reqwest::Response, field: &str, says: &str) -> Value {
    let (status, p) = problem(r).await;
    assert_eq!(status, 400, "{field}: {p}");
    assert_eq!(
        p["type"], "https://batchlens.dev/problems/bad-request",
        "{p}"
    );
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(p["errors"][0]["field"], field, "{p}");
    let message = p["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(says),
        "{field}: {message:?} lacks {says:?}"
    );
    assert!(p["detail"].as_str().unwrap().contains(message), "{p}");
    p
}

async fn malformed_paths_queries_and_bodies_are_400s_naming_the_field(db: Db) {
    let Some((app, http, _keys)) = keyed_app(db).await else {
        return;
    };
    let get = |path: &str| http.get(app.url(path)).send();
    // A job to page through, so the queries below reach a real job.
    let r = http
        .post(app.url("/v1/jobs"))
        .json(&json!({"open": true, "items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();

    // Every operation with a job id in its path, given one that is not a UUID.
    let doc: Value = serde_json::from_str(&batchlens::api::openapi_json()).unwrap();
    let mut with_id = 0;
    for (path, method, _) in operations(&doc) {
        if !path.contains("{id}") {
            continue;
        }
        with_id += 1;
        let url = app.url(&path.replace("{id}", "not-a-uuid"));
        let request = match method.as_str() {
            "get" => http.get(url),
            "post" => http
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"items": [{"image_url": "https://x.test/a.jpg"}]}"#),
            other => panic!("{other} {path}"),
        };
        bad_request(request.send().await.unwrap(), "id", "not a UUID").await;
    }
    assert!(with_id >= 8, "{with_id} operations with an id");

    for (path, field, says) in [
        ("/v1/jobs?limit=abc", "limit", "invalid digit"),
        ("/v1/jobs?limit=", "limit", "empty string"),
        ("/v1/jobs?limit=0", "limit", "between 1 and 200"),
        ("/v1/jobs?limit=201", "limit", "between 1 and 200"),
        ("/v1/jobs?status=bogus", "status", "unknown variant `bogus`"),
        ("/v1/jobs?cursor=!!", "cursor", "not a cursor"),
        ("/v1/jobs?cursor=bm9wZQ", "cursor", "not a cursor"),
        ("/v1/costs?to=", "to", ""),
        (
            "/v1/costs?from=yesterday",
            "from",
            "input contains invalid characters",
        ),
    ] {
        bad_request(get(path).await.unwrap(), field, says).await;
    }
    let job_queries = [
        ("results?status=bogus", "status", "expected one of"),
        ("results?limit=1001", "limit", "between 1 and 1000"),
        ("results?limit=-1", "limit", "between 1 and 1000"),
        ("results?cursor=zzz", "cursor", "not a cursor"),
        ("posts?limit=abc", "limit", "invalid digit"),
        ("posts?limit=501", "limit", "between 1 and 500"),
        ("posts?cursor=zzz", "cursor", "not a cursor"),
    ];
    for (query, field, says) in job_queries {
        let path = format!("/v1/jobs/{id}/{query}");
        bad_request(get(&path).await.unwrap(), field, says).await;
    }
    // The status names every variant it accepts.
    let p = bad_request(get("/v1/jobs?status=bogus").await.unwrap(), "status", "").await;
    assert!(p["detail"].as_str().unwrap().contains("`queued`"), "{p}");

    // Bodies: trailing bytes, an enum of the wrong type, malformed JSON, on both bodies.
    let item = json!({"image_url": "https://x.test/a.jpg"});
    let good = json!({"mode": "batch", "items": [item]}).to_string();
    for path in ["/v1/jobs", "/v1/estimates"] {
        let post = |body: String| {
            http.post(app.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        for tail in [" garbage", "{}", "\n{\"items\": []}", "]"] {
            let r = post(format!("{good}{tail}")).await.unwrap();
            bad_request(r, "body", "trailing characters").await;
        }
        let r = post(format!("{good}  \n")).await.unwrap();
        assert!(
            r.status().is_success(),
            "{path}: trailing white space is fine"
        );
        let r = post(json!({"mode": 5, "items": [item]}).to_string())
            .await
            .unwrap();
        bad_request(r, "mode", "invalid type").await;
        let r = post(json!({"detail": ["low"], "items": [item]}).to_string())
            .await
            .unwrap();
        bad_request(r, "detail", "invalid type").await;
        let r = post(
            json!({"items": [{"image_url": "https://x.test/a.jpg", "post_id": 5}]}).to_string(),
        )
        .await
        .unwrap();
        bad_request(r, "items[0].post_id", "invalid type: integer").await;
        let r = post(r#"{"items": [}"#.to_string()).await.unwrap();
        bad_request(r, "body", "malformed JSON").await;
        let r = post("\"a job\"".to_string()).await.unwrap();
        bad_request(r, "body", "invalid type: string").await;
    }
    let r = http
        .post(app.url(&format!("/v1/jobs/{id}/items")))
        .header("content-type", "application/json")
        .body(format!("{{\"items\": [{item}]}} trailing"))
        .send()
        .await
        .unwrap();
    bad_request(r, "body", "trailing characters").await;

    // Stored: the open job, still empty (no refused append reached it), and the one
    // well-formed submit; estimates store nothing.
    let list: Value = get("/v1/jobs").await.unwrap().json().await.unwrap();
    let jobs = list["data"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{list}");
    let open = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(open["progress"]["total"], 0, "{open}");
    app.shutdown().await;
}

async fn every_secured_operation_answers_401_without_a_key(db: Db) {
    let Some((app, _http, _keys)) = keyed_app(db).await else {
        return;
    };
    let doc: Value = serde_json::from_str(&batchlens::api::openapi_json()).unwrap();
    let job = uuid::Uuid::new_v4().to_string();
    let mut secured = 0;
    for (path, method, _) in operations(&doc) {
        if is_public(&path, &method) {
            continue;
        }
        secured += 1;
        let url = app.url(&path.replace("{id}", &job));
        for auth in [None, Some("Bearer wrong-key"), Some(KEY)] {
            let mut request = match method.as_str() {
                "get" => app.http.get(&url),
                "post" => app
                    .http
                    .post(&url)
                    .json(&json!({"items": mixed_items(1, 0)})),
                other => panic!("{other} {path}"),
            };
            if let Some(value) = auth {
                request = request.header(AUTHORIZATION, value);
            }
            let (status, p) = problem(request.send().await.unwrap()).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {p}");
            assert_eq!(p["type"], "https://batchlens.dev/problems/unauthorized");
        }
    }
    assert!(secured >= 12, "{secured}");
    for path in ["/healthz", "/v1/pricing"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    app.shutdown().await;
}

on_both!(
    malformed_paths_queries_and_bodies_are_400s_naming_the_field,
    every_secured_operation_answers_401_without_a_key,
);
