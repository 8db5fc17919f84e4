//! Batch webhooks reach a receiver, signed, without anyone polling the batch.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{lines, Harness};
use openai_sim::{webhooks, SimConfig};
use serde_json::{json, Value};

type Seen = Arc<Mutex<(u32, Vec<(HeaderMap, String)>)>>;

/// A receiver that refuses its first delivery (to exercise retries) and records the rest.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    let mut s = seen.lock().unwrap();
                    s.0 += 1;
                    if s.0 == 1 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    s.1.push((headers, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn terminal_batches_send_signed_events() {
    let (url, seen) = receiver().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let h = Harness::start(SimConfig {
        webhook_url: Some(url),
        webhook_secret: Some(secret.into()),
        ..SimConfig::fast()
    })
    .await;
    let ok = h.batch(&lines(3, "gpt-4o"), Value::Null).await;
    let (_, bad_file) = h.upload("bad.jsonl", "batch", b"oops\n".to_vec()).await;
    let (_, bad) = h
        .post(
            "/batches",
            &json!({"input_file_id": bad_file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let got = seen.lock().unwrap().1.clone();
        if got.len() >= 2 {
            break got;
        }
        assert!(Instant::now() < deadline, "webhooks never arrived: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut kinds = Vec::new();
    for (headers, body) in &events {
        let id = headers["webhook-id"].to_str().unwrap();
        let ts: u64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let sig = headers["webhook-signature"].to_str().unwrap();
        assert_eq!(sig, webhooks::sign(secret, id, ts, body));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["object"], "event");
        assert_eq!(v["id"], id);
        assert!(v["created_at"].is_u64());
        kinds.push((
            v["type"].as_str().unwrap().to_string(),
            v["data"]["id"].clone(),
        ));
    }
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        kinds,
        vec![
            ("batch.completed".to_string(), ok["id"].clone()),
            ("batch.failed".to_string(), bad["id"].clone()),
        ]
    );
    h.wait_webhooks_sent(2).await;
}
