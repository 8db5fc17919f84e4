//! Webhook URLs a tenant gives cannot reach loopback or private addresses: literal refused
//! addresses, credentials, over-long and non-https URLs are a 422 naming `webhook_url` at
//! submit, and a loopback listener counts no connection; a name that resolves (through a
//! test resolver) to loopback fails its delivery as "blocked address" without connecting;
//! `bearer` in any case is accepted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{fast_sim, mixed_items, Db, TestApp};
use batchlens::outbound::StaticResolver;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A loopback listener that counts the connections it accepts (and answers none).
async fn counting_listener(ip: &str) -> Option<(u16, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind((ip, 0)).await.ok()?;
    let port = listener.local_addr().ok()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    Some((port, count))
}

async fn submit(app: &TestApp, hook: &str) -> (u16, Value, String) {
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .json(&json!({"mode": "batch", "webhook_url": hook, "items": mixed_items(1, 0)}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.json().await.unwrap_or(Value::Null), kind)
}

async fn literal_refused_webhook_urls_are_a_422_and_never_connected(db: Db) {
    // allow_http on (the older development setting) still does not open loopback.
    let Some(app) = TestApp::spawn(
        db,
        fast_sim(),
        &[("BATCHLENS__WEBHOOKS__ALLOW_HTTP", "true")],
    )
    .await
    else {
        return;
    };
    let (v4, v4_seen) = counting_listener("127.0.0.1").await.unwrap();
    let v6 = counting_listener("::1").await;
    let v6_port = v6.as_ref().map(|(p, _)| *p).unwrap_or(v4);
    let long = format!("https://example.com/{}", "a".repeat(5000));
    let cases = [
        (format!("https://127.0.0.1:{v4}/hook"), "loopback"),
        (format!("http://127.0.0.1:{v4}/hook"), "loopback"),
        (format!("https://[::1]:{v6_port}/hook"), "loopback"),
        (format!("https://2130706433:{v4}/hook"), "loopback"),
        (format!("https://0x7f.1:{v4}/hook"), "loopback"),
        (format!("https://localhost:{v4}/hook"), "loopback"),
        (format!("https://[::ffff:127.0.0.1]:{v4}/hook"), ""),
        ("https://10.0.0.1/hook".to_string(), "private"),
        ("https://169.254.169.254/latest".to_string(), ""),
        (
            "https://user:pw@example.com/hook".to_string(),
            "user name or password",
        ),
        (long, "2048"),
        ("ftp://example.com/hook".to_string(), "https"),
    ];
    for (hook, says) in &cases {
        let (status, p, kind) = submit(&app, hook).await;
        assert_eq!(status, 422, "{hook}: {p}");
        assert_eq!(kind, "application/problem+json", "{hook}");
        assert_eq!(p["errors"][0]["field"], "webhook_url", "{hook}: {p}");
        let detail = p["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
            + p["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{hook}: {p}");
    }
    // Nothing was accepted, so nothing is ever delivered: give a worker round its chance.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(v4_seen.load(Ordering::SeqCst), 0);
    if let Some((_, v6_seen)) = v6 {
        assert_eq!(v6_seen.load(Ordering::SeqCst), 0);
    }
    let (_, jobs) = app.get("/v1/jobs").await;
    assert_eq!(jobs["data"].as_array().map(Vec::len), Some(0), "{jobs}");
    app.shutdown().await;
}

async fn the_bearer_scheme_is_case_insensitive(db: Db) {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let hash = hex::encode(sha2::Sha256::digest(b"key-a"));
    std::fs::write(
        &file,
        format!("[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let Some(app) = TestApp::spawn_with_config(db, fast_sim(), &[], Some(&file)).await else {
        return;
    };
    for (value, want) in [
        ("Bearer key-a", 200),
        ("bearer key-a", 200),
        ("BEARER key-a", 200),
        ("bEaReR  key-a", 200),
        ("bearer key-b", 401),
        ("Basic key-a", 401),
        ("bearerkey-a", 401),
        ("bearer ", 401),
    ] {
        let r = app
            .http
            .get(app.url("/v1/jobs"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{value:?}");
    }
    app.shutdown().await;
}

/// Waits until the job's webhook delivery has ended (delivered or failed) and answers it.
async fn delivery_outcome(app: &TestApp, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        let state = job["webhook"]["state"].as_str().unwrap_or_default();
        if state == "failed" || state == "delivered" {
            return job["webhook"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook outcome: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A name (accepted at submit: it is not a literal address) that resolves to loopback
/// fails its delivery as "blocked address" on the address actually resolved, and the
/// listener behind it never sees a connection. With `allow_private` the same name does
/// connect: the test resolver is the one deliveries use.
async fn a_name_resolving_to_loopback_is_a_blocked_delivery(db: Db) {
    let (port, seen) = counting_listener("127.0.0.1").await.unwrap();
    let resolver = || {
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        Arc::new(StaticResolver::new().with("hooks.example.test", &[loopback]))
    };
    let hook = format!("https://hooks.example.test:{port}/hook");
    let one_attempt = ("BATCHLENS__WEBHOOKS__MAX_ATTEMPTS", "1");
    let Some(app) = TestApp::spawn_resolving(db, fast_sim(), &[one_attempt], resolver()).await
    else {
        return;
    };
    let (status, job, _) = submit(&app, &hook).await;
    assert_eq!(status, 202, "{job}");
    let webhook = delivery_outcome(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(webhook["state"], "failed", "{webhook}");
    assert_eq!(webhook["attempts"], 1, "{webhook}");
    assert_eq!(webhook["last_error"], "blocked address", "{webhook}");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    app.shutdown().await;

    // The development setting: the same name now reaches the listener (which answers no
    // TLS, so the delivery still fails, without naming the host or the port).
    let Some(app) = TestApp::spawn_resolving(
        db,
        fast_sim(),
        &[one_attempt, ("BATCHLENS__WEBHOOKS__ALLOW_PRIVATE", "true")],
        resolver(),
    )
    .await
    else {
        return;
    };
    let (status, job, _) = submit(&app, &hook).await;
    assert_eq!(status, 202, "{job}");
    let webhook = delivery_outcome(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(webhook["last_error"], "delivery failed", "{webhook}");
    assert!(seen.load(Ordering::SeqCst) >= 1);
    app.shutdown().await;
}

on_both!(
    literal_refused_webhook_urls_are_a_422_and_never_connected,
    a_name_resolving_to_loopback_is_a_blocked_delivery,
    the_bearer_scheme_is_case_insensitive,
);
