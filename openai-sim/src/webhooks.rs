//! Batch webhooks (`batch.completed`, `batch.failed`, `batch.expired`, `batch.cancelled`),
//! signed the Standard Webhooks way and POSTed to `webhook_url` by a background loop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::state::{PendingWebhook, Sim};

/// How often the loop moves the clock and looks for events.
const TICK: Duration = Duration::from_millis(50);
/// Attempts per event; a non-2xx answer or a network error is retried.
const ATTEMPTS: u32 = 3;

/// HMAC-SHA256 (RFC 2104), small enough to write out rather than add a crate for.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`; a `whsec_` secret is base64.
pub fn sign(secret: &str, webhook_id: &str, timestamp: u64, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => b64
            .decode(encoded)
            .unwrap_or_else(|_| encoded.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let signed = format!("{webhook_id}.{timestamp}.{body}");
    format!("v1,{}", b64.encode(hmac_sha256(&key, signed.as_bytes())))
}

/// The event body OpenAI sends: only the batch id, clients fetch the rest.
pub fn event_body(event_id: &str, ev: &PendingWebhook) -> String {
    json!({
        "object": "event",
        "id": event_id,
        "type": ev.event_type,
        "created_at": ev.at_ms / 1000,
        "data": {"id": ev.batch_id},
    })
    .to_string()
}

/// Delivers batch events while the simulator lives. `SimServer` runs it; an embedder serving
/// `router()` itself spawns it to get webhooks.
pub async fn run(sim: Sim) {
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(TICK).await;
        let (url, secret, due) = {
            let mut st = sim.lock();
            let Some(url) = st.config.webhook_url.clone() else {
                st.webhooks.clear();
                continue;
            };
            // Batches change status lazily; with a receiver waiting, time must move on its own.
            let now = st.now_ms();
            st.advance(now);
            // `webhook_timing` may hold events back (`delayed`, the second `duplicate` copy).
            let (due, later) = std::mem::take(&mut st.webhooks)
                .into_iter()
                .partition(|ev| ev.due_ms <= now);
            st.webhooks = later;
            (url, st.config.webhook_secret.clone(), due)
        };
        for ev in due {
            let ok = deliver(&http, &url, secret.as_deref(), &ev).await;
            let mut st = sim.lock();
            if ok {
                st.stats.webhooks_sent += 1;
            } else {
                st.stats.webhooks_failed += 1;
            }
        }
    }
}

async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    ev: &PendingWebhook,
) -> bool {
    let event_id = &ev.event_id;
    let body = event_body(event_id, ev);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        // Receivers check the timestamp against their own clock, so it is wall time.
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut req = http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", ts.to_string())
            .timeout(Duration::from_secs(10))
            .body(body.clone());
        if let Some(secret) = secret {
            req = req.header("webhook-signature", sign(secret, event_id, ts, &body));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(status = %r.status(), url, "webhook refused"),
            Err(e) => tracing::warn!(error = %e, url, "webhook not delivered"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(
            sign(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn long_keys_are_hashed_first() {
        // RFC 4231 test case 6: a 131-byte key.
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
