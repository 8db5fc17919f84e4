//! `POST /v1/openai/webhooks`: with polling at 60 s, openai-sim's signed `batch.completed`
//! finishes a job within seconds; forged, stale, unsigned, unknown-secret and replayed
//! deliveries are refused or harmless, leaving the shard and the job as they were.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batchlens::store::DynStore;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{fast_sim, submit_batch, wait_until, Db, TestApp};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A well-formed secret the service does not have.
const OTHER: &str = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
const HOOK: &str = "/v1/openai/webhooks";
const UNVERIFIED: &str = "https://batchlens.dev/problems/unverified-webhook";
/// Every wait is bounded well under the 60 s polling interval the tests set.
const WAIT: Duration = Duration::from_secs(20);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polling at 60 s (first poll a minute after submitting) and `secret` for webhooks.
async fn spawn(db: Db, secret: &str) -> Option<TestApp> {
    TestApp::spawn(
        db,
        fast_sim(),
        &[
            ("BATCHLENS__BATCH__POLL_MIN_MS", "60000"),
            ("BATCHLENS__BATCH__POLL_MAX_MS", "60000"),
            ("BATCHLENS__OPENAI__WEBHOOK_SECRET", secret),
        ],
    )
    .await
}

fn event(kind: &str, batch_id: &str) -> String {
    json!({"object": "event", "id": "evt_test", "type": kind, "created_at": unix_now(),
           "data": {"id": batch_id}})
    .to_string()
}

/// Signs with openai-sim's own signer (the one it uses for its deliveries).
fn signed(secret: &str, id: &str, ts: i64, body: &str) -> String {
    openai_sim::webhooks::sign(secret, id, ts as u64, body)
}

/// POSTs a delivery; `signature` None leaves the header out.
async fn deliver(
    app: &TestApp,
    id: &str,
    ts: i64,
    signature: Option<&str>,
    body: &str,
) -> (u16, String, Value) {
    let mut req = app
        .http
        .post(app.url(HOOK))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("webhook-signature", sig);
    }
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, r.json().await.unwrap_or(Value::Null))
}

/// What a webhook could change: each shard's status, next poll and lease, and the job's
/// status and counters.
async fn snapshot(store: &DynStore, app: &TestApp, job: Uuid) -> (Vec<String>, Value) {
    let shards = store
        .list_shards(job)
        .await
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{:?} {:?} {} {}",
                s.status, s.batch_status, s.next_poll_at, s.lease_token
            )
        })
        .collect();
    let (status, view) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{view}");
    (
        shards,
        json!({"status": view["status"], "progress": view["progress"]}),
    )
}

/// Submits a batch job of `n` images and waits until OpenAI (the simulator) has finished
/// its batch while batchlens, polling once a minute, has not looked yet. Returns the job
/// id, the batch id and a store on the same database.
async fn finished_at_openai_unseen(app: &TestApp, n: usize) -> (Uuid, String, DynStore) {
    let job_id: Uuid = submit_batch(app, n).await.parse().unwrap();
    let store = batchlens::store::connect(&app.db.url).await.unwrap();
    let sim = app.sim.sim();
    wait_until(WAIT, || {
        let sim = sim.clone();
        let store = store.clone();
        async move {
            let done = sim.batches().iter().any(|b| b["status"] == "completed");
            let shards = store.list_shards(job_id).await.unwrap();
            done && shards.iter().any(|s| s.openai_batch_id.is_some())
        }
    })
    .await;
    let batch_id = sim.batches()[0]["id"].as_str().unwrap().to_string();
    let (_, view) = app.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(view["status"], "running", "not polled yet: {view}");
    (job_id, batch_id, store)
}

async fn openai_sim_webhook_finishes_the_job_within_seconds_with_polling_at_a_minute(db: Db) {
    let Some(app) = spawn(db, SECRET).await else {
        return;
    };
    let sim = app.sim.sim();
    let mut config = sim.config();
    config.webhook_url = Some(app.url(HOOK));
    config.webhook_secret = Some(SECRET.into());
    sim.set_config(config);

    let id = submit_batch(&app, 6).await;
    // The first poll would come a minute after submitting; the webhook comes first.
    let done = app.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 6, "{done}");
    let counted = sim.clone();
    wait_until(WAIT, move || {
        let sim = counted.clone();
        async move { sim.stats().webhooks_sent == 1 }
    })
    .await;
    assert_eq!(sim.stats().webhooks_failed, 0);
    // The webhook was a hint: batchlens read the batch from OpenAI before ingesting.
    let batch_id = sim.batches()[0]["id"].as_str().unwrap().to_string();
    let reads = sim
        .journal()
        .iter()
        .filter(|e| e.method == "GET" && e.path == format!("/v1/batches/{batch_id}"))
        .count();
    assert!(reads >= 1, "the batch was retrieved {reads} times");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("batchlens_openai_webhooks_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
}

async fn unverified_and_replayed_webhooks_change_nothing(db: Db) {
    let Some(app) = spawn(db, SECRET).await else {
        return;
    };
    let (job, batch, store) = finished_at_openai_unseen(&app, 4).await;
    let before = snapshot(&store, &app, job).await;
    let body = event("batch.completed", &batch);
    let now = unix_now();
    let good = signed(SECRET, "evt_forged", now, &body);
    let refused: [(&str, i64, Option<String>, String, &str); 6] = [
        (
            "unknown secret",
            now,
            Some(signed(OTHER, "evt_forged", now, &body)),
            body.clone(),
            "no v1 signature",
        ),
        (
            "forged signature",
            now,
            Some(format!("v1,{}", "A".repeat(44))),
            body.clone(),
            "no v1 signature",
        ),
        (
            "body changed after signing",
            now,
            Some(good.clone()),
            event("batch.completed", "batch_other"),
            "no v1 signature",
        ),
        (
            "stale timestamp",
            now - 400,
            Some(signed(SECRET, "evt_forged", now - 400, &body)),
            body.clone(),
            "away from this server's clock",
        ),
        (
            "timestamp from the future",
            now + 400,
            Some(signed(SECRET, "evt_forged", now + 400, &body)),
            body.clone(),
            "away from this server's clock",
        ),
        (
            "unsigned",
            now,
            None,
            body.clone(),
            "webhook-signature is missing",
        ),
    ];
    for (case, ts, sig, sent, says) in &refused {
        let (status, kind, problem) = deliver(&app, "evt_forged", *ts, sig.as_deref(), sent).await;
        assert_eq!(status, 401, "{case}: {problem}");
        assert_eq!(kind, "application/problem+json", "{case}");
        assert_eq!(problem["type"], UNVERIFIED, "{case}: {problem}");
        assert_eq!(problem["status"], 401, "{case}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{case}: {detail}");
        assert_eq!(snapshot(&store, &app, job).await, before, "{case}");
    }

    // A genuine delivery about another batch records its id ...
    let elsewhere = event("batch.completed", "batch_elsewhere");
    let sig = signed(SECRET, "evt_once", now, &elsewhere);
    let (status, _, ack) = deliver(&app, "evt_once", now, Some(&sig), &elsewhere).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        ack,
        json!({"event": "batch.completed", "batch_id": "batch_elsewhere",
               "replay": false, "shards_due": 0})
    );
    // ... so the same webhook-id again, even signed and naming this batch, is a replay.
    let sig = signed(SECRET, "evt_once", now, &body);
    let (status, _, ack) = deliver(&app, "evt_once", now, Some(&sig), &body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        ack,
        json!({"event": "batch.completed", "batch_id": batch,
               "replay": true, "shards_due": 0})
    );
    assert_eq!(snapshot(&store, &app, job).await, before, "replay");

    // Verified but not an event of ours: a 400 naming the field, nothing recorded.
    let empty = json!({"type": "batch.completed", "data": {}}).to_string();
    let sig = signed(SECRET, "evt_empty", now, &empty);
    let (status, kind, problem) = deliver(&app, "evt_empty", now, Some(&sig), &empty).await;
    assert_eq!((status, kind.as_str()), (400, "application/problem+json"));
    assert_eq!(problem["errors"][0]["field"], "data.id", "{problem}");
    assert_eq!(snapshot(&store, &app, job).await, before, "bad body");

    // The one genuine, new delivery for this batch makes its shard due: the job finishes
    // long before the minute's poll.
    let sig = signed(SECRET, "evt_real", now, &body);
    let (status, _, ack) = deliver(&app, "evt_real", now, Some(&sig), &body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        ack,
        json!({"event": "batch.completed", "batch_id": batch,
               "replay": false, "shards_due": 1})
    );
    let done = app.wait_terminal(&job.to_string(), WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["succeeded"], 4, "{done}");
}

async fn without_a_secret_every_webhook_is_refused(db: Db) {
    let Some(app) = spawn(db, "").await else {
        return;
    };
    let (job, batch, store) = finished_at_openai_unseen(&app, 2).await;
    let before = snapshot(&store, &app, job).await;
    let body = event("batch.completed", &batch);
    let now = unix_now();
    let sig = signed(SECRET, "evt_1", now, &body);
    let (status, kind, problem) = deliver(&app, "evt_1", now, Some(&sig), &body).await;
    assert_eq!((status, kind.as_str()), (401, "application/problem+json"));
    assert_eq!(problem["type"], UNVERIFIED, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("openai.webhook_secret"),
        "{problem}"
    );
    assert_eq!(snapshot(&store, &app, job).await, before);
}

on_both!(
    openai_sim_webhook_finishes_the_job_within_seconds_with_polling_at_a_minute,
    unverified_and_replayed_webhooks_change_nothing,
    without_a_secret_every_webhook_is_refused,
);

#[test]
fn openai_sim_and_the_service_sign_alike() {
    use batchlens::signing::{sign, signing_key, verify, Received};
    let key = signing_key(SECRET).unwrap().unwrap();
    for (id, ts, body) in [
        ("evt_1", 1_700_000_000, "{}"),
        (
            "evt_685343a1381c819085d44c354e1b330e",
            1_750_287_018,
            r#"{"type":"batch.completed","data":{"id":"batch_1"}}"#,
        ),
        ("msg_ünïcode", 1, "données"),
    ] {
        let sim = openai_sim::webhooks::sign(SECRET, id, ts as u64, body);
        assert_eq!(sim, sign(&key, id, ts, body.as_bytes()), "{id}");
        let timestamp = ts.to_string();
        let headers = Received {
            id: Some(id),
            timestamp: Some(&timestamp),
            signature: Some(&sim),
        };
        assert_eq!(
            verify(Some(&key), headers, body.as_bytes(), ts),
            Ok(()),
            "{id}"
        );
    }
}
