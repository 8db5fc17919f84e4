//! `fetch: "inline"`: batchlens downloads `image_url`s itself, against loopback servers
//! started here that count the connections they accept. With the development setting,
//! images are fetched and stored inline (estimated by their real size; 200 of them in one
//! job, each fetched once), and a 404, a timeout, an oversized or non-image body each
//! reject their item with the reason; a redirect to a refused address is refused (one
//! loopback address exempt through `Application::with_fetch_policy`) as `resolves to a
//! loopback address`. Without it, loopback in any spelling and a name that resolves to
//! loopback are refused without a connection. Nothing here leaves loopback.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{b64, fast_sim, png, Db, TestApp};
use crate::outbound::{redirect, status, Reply, Server};
use batchlens::outbound::{StaticResolver, UrlPolicy};
use openai_sim::SimConfig;
use serde_json::{json, Value};

/// A 200 answer carrying `body` as `image/png` (whatever the bytes are).
fn image(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

const MAX_IMAGE_BYTES: &str = "100000";

/// Serves `/a.png` (64×48), `/b.png` (300×200), `/missing` (404), `/slow` (answers after
/// 3 s), `/huge` (300 kB, more than the limit, with no length announced), `/pdf` (not an
/// image) and `/to-refused` (a redirect to `to`).
async fn image_server(ip: &str, to: String) -> Option<Server> {
    Server::start(
        ip,
        Arc::new(move |path| match path {
            "/a.png" => Reply::Raw(image(&png(64, 48))),
            "/b.png" => Reply::Raw(image(&png(300, 200))),
            "/missing" => Reply::Raw(status(404)),
            "/slow" => Reply::Slow(Duration::from_secs(3)),
            "/huge" => Reply::Endless(300_000),
            "/pdf" => Reply::Raw(image(b"%PDF-1.4 not an image at all")),
            "/to-refused" => Reply::Raw(redirect(&to)),
            _ => Reply::Raw(status(404)),
        }),
    )
    .await
}

/// The PNG `/img/<n>.png` serves: each `n` its own size, so its own bytes.
fn numbered(n: u32) -> Vec<u8> {
    png(16 + n % 20, 16 + n / 20)
}

/// Serves `/img/<n>.png` (see [`numbered`]), anything else 404.
async fn numbered_server() -> Server {
    Server::start(
        "127.0.0.1",
        Arc::new(|path| {
            let n = path
                .strip_prefix("/img/")
                .and_then(|p| p.strip_suffix(".png"))
                .and_then(|n| n.parse().ok());
            match n {
                Some(n) => Reply::Raw(image(&numbered(n))),
                None => Reply::Raw(status(404)),
            }
        }),
    )
    .await
    .unwrap()
}

const DEV: [(&str, &str); 3] = [
    ("BATCHLENS__INTAKE__FETCH_ALLOW_PRIVATE", "true"),
    ("BATCHLENS__INTAKE__FETCH_TIMEOUT_SECS", "1"),
    ("BATCHLENS__INTAKE__MAX_IMAGE_BYTES", MAX_IMAGE_BYTES),
];

async fn submit(app: &TestApp, body: Value) -> Value {
    let (code, job) = app.post("/v1/jobs", &body).await;
    assert_eq!(code, 202, "{job}");
    job
}

/// The bytes and content type `…/results/{custom_id}/image` answers.
async fn stored_image(app: &TestApp, job: &str, custom_id: &str) -> (u16, String, Vec<u8>) {
    let url = app.url(&format!("/v1/jobs/{job}/results/{custom_id}/image"));
    let r = app.http.get(url).send().await.unwrap();
    let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap());
    let kind = kind.unwrap_or_default().to_string();
    (r.status().as_u16(), kind, r.bytes().await.unwrap().to_vec())
}

/// `(index, custom_id, reason)` of each rejection of an answer.
fn rejections(job: &Value) -> Vec<(i64, String, String)> {
    job["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().unwrap(),
                r["custom_id"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn fetched_images_are_inlined_and_failures_rejected(db: Db) {
    let server = image_server("127.0.0.1", String::new()).await.unwrap();
    let Some(app) = TestApp::spawn(db, fast_sim(), &DEV).await else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", server.port());
    let url = |path: &str| format!("{base}{path}");
    let job = submit(
        &app,
        json!({"mode": "batch", "detail": "high", "fetch": "inline", "items": [
            {"custom_id": "a", "post_id": "p1", "image_url": url("/a.png")},
            {"custom_id": "gone", "image_url": url("/missing")},
            {"custom_id": "slow", "image_url": url("/slow")},
            {"custom_id": "huge", "image_url": url("/huge")},
            {"custom_id": "pdf", "image_url": url("/pdf")},
            {"post_id": "p2", "image_url": url("/b.png")},
        ]}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let got = rejections(&job);
    let expect = [
        (1, "gone", "image_url: HTTP 404".to_string()),
        (2, "slow", "image_url: timed out after 1 s".to_string()),
        (
            3,
            "huge",
            format!("image_url: too large (over {MAX_IMAGE_BYTES} bytes)"),
        ),
    ];
    assert_eq!(got.len(), 4, "{job}");
    for ((index, cid, reason), (want_index, want_cid, want_reason)) in got.iter().zip(&expect) {
        assert_eq!((*index, cid.as_str()), (*want_index, *want_cid), "{job}");
        assert_eq!(reason, want_reason, "{job}");
    }
    assert_eq!((got[3].0, got[3].1.as_str()), (4, "pdf"), "{job}");
    assert!(
        got[3]
            .2
            .starts_with("image_url: not a PNG, JPEG, WEBP or GIF image"),
        "{job}"
    );
    assert_eq!(job["progress"]["total"], 6, "{job}");
    assert_eq!(job["progress"]["rejected"], 4, "{job}");

    // Stored inline, as fetched (too small to be downscaled), ids kept.
    let (code, kind, bytes) = stored_image(&app, id, "a").await;
    assert_eq!((code, kind.as_str()), (200, "image/png"));
    assert_eq!(bytes, png(64, 48));
    let (code, _, bytes) = stored_image(&app, id, "item-5").await;
    assert_eq!(code, 200);
    assert_eq!(bytes, png(300, 200));
    let (_, result) = app.get(&format!("/v1/jobs/{id}/results/a")).await;
    assert_eq!(result["post_id"], "p1", "{result}");

    // The estimate is that of the same images sent inline, not of the configured default
    // size `fetch: "pass"` assumes.
    let inline = submit(
        &app,
        json!({"mode": "batch", "detail": "high", "items": [
            {"image_base64": b64(&png(64, 48)), "mime_type": "image/png"},
            {"image_base64": b64(&png(300, 200)), "mime_type": "image/png"},
        ]}),
    )
    .await;
    assert_eq!(job["estimate"], inline["estimate"], "{job} {inline}");
    let https = |path: &str| format!("https://cdn.example.com{path}");
    let passed = submit(
        &app,
        json!({"mode": "batch", "detail": "high", "items": [
            {"image_url": https("/a.png")}, {"image_url": https("/b.png")},
        ]}),
    )
    .await;
    assert_ne!(job["estimate"], passed["estimate"], "{job} {passed}");
    let (code, _, _) = stored_image(&app, passed["id"].as_str().unwrap(), "item-0").await;
    assert_eq!(code, 404, "an image_url OpenAI fetches is not stored");
    app.shutdown().await;
}

async fn two_hundred_images_are_fetched_and_inlined(db: Db) {
    let server = numbered_server().await;
    // Batches that take a minute: no result comes in to sharpen the estimate between the
    // two submits compared below.
    let sim = SimConfig {
        in_progress_ms: 60_000,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &DEV).await else {
        return;
    };
    let items: Vec<Value> = (0..200)
        .map(|n| {
            json!({"custom_id": format!("i{n}"), "post_id": format!("p{}", n / 10),
                   "image_url": format!("http://127.0.0.1:{}/img/{n}.png", server.port())})
        })
        .collect();
    let job = submit(
        &app,
        json!({"mode": "batch", "detail": "high", "fetch": "inline", "items": items}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    assert!(rejections(&job).is_empty(), "{job}");
    assert_eq!(job["progress"]["total"], 200, "{job}");
    assert_eq!(server.accepted(), 200, "each image fetched once");
    // Estimated as the same bytes sent inline are.
    let inline: Vec<Value> = (0..200)
        .map(|n| json!({"image_base64": b64(&numbered(n))}))
        .collect();
    let inline = submit(
        &app,
        json!({"mode": "batch", "detail": "high", "items": inline}),
    )
    .await;
    assert_eq!(job["estimate"], inline["estimate"], "{job} {inline}");
    for n in 0..200 {
        let (code, kind, bytes) = stored_image(&app, id, &format!("i{n}")).await;
        assert_eq!((code, kind.as_str()), (200, "image/png"), "i{n}");
        assert_eq!(bytes, numbered(n), "i{n} stored as fetched");
    }
    let (_, now) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(now["progress"]["total"], 200, "{now}");
    assert_eq!(now["progress"]["rejected"], 0, "{now}");
    assert_eq!(server.accepted(), 200, "nothing fetched again");
    app.shutdown().await;
}

async fn chunks_of_an_open_job_are_fetched_as_the_job_says(db: Db) {
    let server = image_server("127.0.0.1", String::new()).await.unwrap();
    let Some(app) = TestApp::spawn(db, fast_sim(), &DEV).await else {
        return;
    };
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", server.port());
    let job = submit(&app, json!({"open": true, "fetch": "inline", "items": []})).await;
    let id = job["id"].as_str().unwrap();
    let (code, chunk) = app
        .post(
            &format!("/v1/jobs/{id}/items"),
            &json!({"items": [
                {"custom_id": "a", "image_url": url("/a.png")},
                {"custom_id": "gone", "image_url": url("/missing")},
            ]}),
        )
        .await;
    assert_eq!(code, 200, "{chunk}");
    assert_eq!(
        rejections(&chunk),
        [(1, "gone".to_string(), "image_url: HTTP 404".to_string())]
    );
    let (code, _, bytes) = stored_image(&app, id, "a").await;
    assert_eq!(code, 200);
    assert_eq!(bytes, png(64, 48));
    // Nothing fetchable: a 422 naming the item's field.
    let (code, problem) = app
        .post(
            &format!("/v1/jobs/{id}/items"),
            &json!({"items": [{"image_url": url("/missing")}]}),
        )
        .await;
    assert_eq!(code, 422, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "items[0].image_url",
        "{problem}"
    );
    assert_eq!(problem["errors"][0]["message"], "HTTP 404", "{problem}");
    app.shutdown().await;
}

async fn a_redirect_to_a_refused_address_is_not_followed(db: Db) {
    let refused = Server::counting("127.0.0.2").await.unwrap();
    let target = format!("http://127.0.0.2:{}/a.png", refused.port());
    let server = image_server("127.0.0.1", target).await.unwrap();
    // http allowed, and only 127.0.0.1 of the refused addresses.
    let policy = UrlPolicy {
        allow_http: true,
        allow_private: false,
        exempt: vec!["127.0.0.1".parse().unwrap()],
    };
    let Some(app) =
        TestApp::spawn_customized(db, fast_sim(), &[], |a| a.with_fetch_policy(policy)).await
    else {
        return;
    };
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", server.port());
    let job = submit(
        &app,
        json!({"fetch": "inline", "items": [
            {"custom_id": "ok", "image_url": url("/a.png")},
            {"custom_id": "hop", "image_url": url("/to-refused")},
        ]}),
    )
    .await;
    let got = rejections(&job);
    assert_eq!(got.len(), 1, "{job}");
    assert_eq!((got[0].0, got[0].1.as_str()), (1, "hop"));
    assert!(
        got[0]
            .2
            .starts_with("image_url: resolves to a loopback address"),
        "{job}"
    );
    assert_eq!(refused.accepted(), 0, "the refused hop was connected to");
    assert!(server.accepted() >= 2);
    app.shutdown().await;
}

async fn without_the_setting_loopback_is_never_connected_to(db: Db) {
    let v4 = Server::counting("127.0.0.1").await.unwrap();
    let second = Server::counting("127.0.0.2").await.unwrap();
    // Not every machine has IPv6 loopback; the URL is refused either way.
    let v6 = Server::counting("::1").await;
    let (p, q) = (v4.port(), second.port());
    let r = v6.as_ref().map_or(p, Server::port);
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let resolver = Arc::new(StaticResolver::new().with("images.example.test", &[loopback]));
    // `intake.fetch = "inline"`: the default for a body without `fetch`.
    let Some(app) = TestApp::spawn_customized(
        db,
        fast_sim(),
        &[("BATCHLENS__INTAKE__FETCH", "inline")],
        move |a| a.with_resolver(resolver),
    )
    .await
    else {
        return;
    };
    let urls = [
        format!("https://127.0.0.1:{p}/a.png"),
        format!("https://[::1]:{r}/"),
        format!("https://127.0.0.2:{q}/a.png"),
        format!("https://2130706433:{p}/a.png"),
        format!("https://images.example.test:{p}/a.png"),
    ];
    let items: Vec<Value> = urls.iter().map(|u| json!({"image_url": u})).collect();
    let (code, problem) = app.post("/v1/jobs", &json!({"items": items})).await;
    assert_eq!(code, 422, "{problem}");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), urls.len(), "{problem}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["field"], format!("items[{i}].image_url"), "{problem}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.starts_with("resolves to a loopback address"),
            "{}: {message}",
            urls[i]
        );
    }
    // Plain http is refused too without the setting.
    let (code, problem) = app
        .post(
            "/v1/jobs",
            &json!({"items": [{"image_url": format!("http://images.example.test:{p}/a.png")}]}),
        )
        .await;
    assert_eq!(code, 422, "{problem}");
    assert_eq!(
        problem["errors"][0]["message"], "URL scheme must be https",
        "{problem}"
    );
    assert_eq!(v4.accepted(), 0);
    assert_eq!(second.accepted(), 0);
    assert_eq!(v6.as_ref().map_or(0, Server::accepted), 0);

    // `fetch: "pass"` in the body overrides the default: OpenAI would fetch these (and
    // openai-sim does not), so they are accepted, and still nothing is connected to.
    let (code, job) = app
        .post(
            "/v1/jobs",
            &json!({"fetch": "pass", "mode": "batch",
                    "items": [{"image_url": "https://images.example.test/a.png"}]}),
        )
        .await;
    assert_eq!(code, 202, "{job}");
    assert_eq!(v4.accepted(), 0);
    app.shutdown().await;
}

on_both!(
    fetched_images_are_inlined_and_failures_rejected,
    two_hundred_images_are_fetched_and_inlined,
    chunks_of_an_open_job_are_fetched_as_the_job_says,
    a_redirect_to_a_refused_address_is_not_followed,
    without_the_setting_loopback_is_never_connected_to,
);
