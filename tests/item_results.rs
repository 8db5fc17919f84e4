//! One result by `custom_id`, and the image bytes it was analyzed from: for the owner
//! only, 404 problem+json for unknown ids, other tenants' jobs and `image_url` items.

use std::time::Duration;

use crate::common::{b64, fast_sim, mixed_items, png, Db, TestApp};
use serde_json::{json, Value};

on_both!(
    one_result_and_its_image,
    image_bytes_are_the_downscaled_ones
);

struct Answer {
    status: u16,
    content_type: String,
    body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A 404 problem+json whose detail contains `needle`.
    fn not_found(&self, needle: &str) {
        assert_eq!(self.status, 404);
        assert_eq!(self.content_type, "application/problem+json");
        let p = self.json();
        assert_eq!(p["status"], 404, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }
}

async fn get(app: &TestApp, key: Option<&str>, path: &str) -> Answer {
    let mut r = app.http.get(app.url(path));
    if let Some(key) = key {
        r = r.bearer_auth(key);
    }
    let r = r.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        content_type: r.headers()["content-type"].to_str().unwrap().to_string(),
        body: r.bytes().await.unwrap(),
    }
}

/// Two tenants, `acme` (key-a) and `umbrella` (key-u).
fn keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("keys.toml");
    let mut text = String::new();
    for (tenant, key) in [("acme", "key-a"), ("umbrella", "key-u")] {
        text.push_str(&format!(
            "[[auth.keys]]\ntenant = \"{tenant}\"\nsha256 = \"{}\"\n",
            batchlens::api::auth::sha256_hex(key)
        ));
    }
    std::fs::write(&file, text).unwrap();
    file
}

async fn one_result_and_its_image(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let file = keys_file(dir.path());
    let Some(app) = TestApp::spawn_with_config(db, fast_sim(), &[], Some(&file)).await else {
        return;
    };
    // img-0 and img-3 by URL, img-1 base64, img-2 and img-5 data URLs, img-4 rejected.
    let items = mixed_items(6, 5);
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth("key-a")
        .json(&json!({"mode": "batch", "items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let done = crate::batch_jobs::wait_for(Duration::from_secs(60), || async {
        let job = get(&app, Some("key-a"), &format!("/v1/jobs/{id}"))
            .await
            .json();
        ["completed", "failed"]
            .contains(&job["status"].as_str().unwrap())
            .then_some(job)
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let rows = get(&app, Some("key-a"), &format!("/v1/jobs/{id}/results"))
        .await
        .json();
    let rows = rows["data"].as_array().unwrap();
    assert_eq!(rows.len(), 6);

    // Each result is the same object as its row of the listing.
    for row in rows {
        let cid = row["custom_id"].as_str().unwrap();
        let one = get(&app, Some("key-a"), &format!("/v1/jobs/{id}/results/{cid}")).await;
        assert_eq!(one.status, 200, "{cid}");
        assert_eq!(one.content_type, "application/json");
        assert_eq!(&one.json(), row, "{cid}");
    }
    assert_eq!(rows[1]["status"], "succeeded");
    assert_eq!(rows[4]["status"], "rejected");

    // The inline images, as sent (64×48 is under every downscale target).
    for cid in ["img-1", "img-2", "img-5"] {
        let image = get(
            &app,
            Some("key-a"),
            &format!("/v1/jobs/{id}/results/{cid}/image"),
        )
        .await;
        assert_eq!(image.status, 200, "{cid}");
        assert_eq!(image.content_type, "image/png", "{cid}");
        assert_eq!(image.body.as_ref(), png(64, 48).as_slice(), "{cid}");
    }
    assert_eq!(
        b64(&png(64, 48)),
        items[1]["image_base64"].as_str().unwrap()
    );

    // Not found: an image_url OpenAI fetched itself, a rejected item, an unknown id.
    get(
        &app,
        Some("key-a"),
        &format!("/v1/jobs/{id}/results/img-0/image"),
    )
    .await
    .not_found("image_url");
    get(
        &app,
        Some("key-a"),
        &format!("/v1/jobs/{id}/results/img-4/image"),
    )
    .await
    .not_found("rejected");
    for path in ["/results/nope", "/results/nope/image"] {
        get(&app, Some("key-a"), &format!("/v1/jobs/{id}{path}"))
            .await
            .not_found("nope");
    }
    // Another tenant's job is not found, as if it did not exist; no key is a 401.
    for path in ["/results/img-1", "/results/img-1/image"] {
        get(&app, Some("key-u"), &format!("/v1/jobs/{id}{path}"))
            .await
            .not_found(&id);
        let anonymous = get(&app, None, &format!("/v1/jobs/{id}{path}")).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert_eq!(anonymous.content_type, "application/problem+json");
    }
    app.shutdown().await;
}

async fn image_bytes_are_the_downscaled_ones(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let photo = testkit::jpeg_photo(2048, 1024);
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "detail": "low", "items": [
                {"custom_id": "big", "image_base64": b64(&photo), "mime_type": "image/jpeg"}]}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}/results/big/image")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    let bytes = r.bytes().await.unwrap();
    let size = imagesize::blob_size(&bytes).unwrap();
    // detail low: the model looks at 512 px at most, so that is what was stored and sent.
    assert_eq!((size.width, size.height), (512, 256), "{kind}");
    assert!(kind.starts_with("image/"), "{kind}");
    assert!(bytes.len() < photo.len());
    app.shutdown().await;
}
