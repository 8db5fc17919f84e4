//! Webhooks: a job with a `webhook_url` gets one POST when it finishes (completed, failed
//! or cancelled). The delivery is owed in the same transaction that finishes the job, so
//! a crash never loses it; a replica claims it with a lease, sends it, and records the
//! outcome. A receiver that does not answer 2xx is tried again with doubling back-off
//! until `webhooks.max_attempts`; a crash mid-delivery means it is sent again (at least
//! once: receivers deduplicate by `webhook-id`, the job id).
//!
//! Deliveries follow Standard Webhooks (<https://www.standardwebhooks.com>): headers
//! `webhook-id`, `webhook-timestamp` and, with `webhooks.secret` set, `webhook-signature`
//! = `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")); the body is
//! `{"type": "job.finished", "timestamp": …, "data": <the job as GET /v1/jobs/{id}>}`.

use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;

use crate::api::AppState;
use crate::domain::{Job, WebhookState};
use crate::store::WebhookAttempt;

/// Deliveries claimed per round.
const CLAIM: i64 = 16;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The HMAC key of a `webhooks.secret`: None when empty, the bytes after `whsec_`
/// (base64) otherwise.
pub fn signing_key(secret: &str) -> Result<Option<Vec<u8>>, String> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Ok(None);
    }
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("must look like whsec_<base64> (Standard Webhooks)".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
    if key.len() < 16 {
        return Err("the key must be at least 16 bytes (24 to 64 recommended)".into());
    }
    Ok(Some(key))
}

/// The `webhook-signature` value of one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Wait before attempt `attempts + 1`, after `attempts` failed ones: `first`, doubling, at
/// most an hour.
pub fn backoff(first: Duration, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    first.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Sends the deliveries that are due.
#[derive(Clone)]
pub struct Webhooks {
    state: AppState,
    http: reqwest::Client,
    key: Option<Vec<u8>>,
}

impl Webhooks {
    pub fn new(state: &AppState) -> Self {
        let settings = &state.settings.webhooks;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client without custom TLS builds");
        Webhooks {
            state: state.clone(),
            http,
            // Checked when the settings were loaded.
            key: signing_key(settings.secret.expose_secret()).unwrap_or_default(),
        }
    }

    /// Claims what is due and delivers it; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, String> {
        let lease = Duration::from_secs(self.state.settings.webhooks.timeout_secs + 30);
        let claimed = self
            .state
            .store
            .claim_webhooks(lease, CLAIM)
            .await
            .map_err(|e| e.to_string())?;
        let n = claimed.len();
        let deliveries = claimed
            .into_iter()
            .map(|(job, claim)| async move { self.deliver(job, claim).await });
        for result in futures::future::join_all(deliveries).await {
            result?;
        }
        Ok(n)
    }

    async fn deliver(&self, job: Job, claim: chrono::DateTime<Utc>) -> Result<(), String> {
        // Only a job with a webhook_url ever owes a delivery; a row edited by hand that
        // lost it ends failed rather than being claimed forever.
        let url = job.webhook_url.clone().unwrap_or_default();
        let view = crate::api::jobs::job_view(&self.state, &job)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let body = serde_json::to_vec(&json!({
            "type": "job.finished",
            "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": view,
        }))
        .map_err(|e| e.to_string())?;
        let id = job.id.to_string();
        let timestamp = Utc::now().timestamp();
        let mut request = self
            .http
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("batchlens/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            request = request.header("webhook-signature", sign(key, &id, timestamp, &body));
        }
        let attempt = job.webhook_attempts + 1;
        let (status_code, error) = match request.body(body).send().await {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (
                Some(r.status().as_u16()),
                Some(format!(
                    "the receiver answered HTTP {}",
                    r.status().as_u16()
                )),
            ),
            Err(e) => (None, Some(format!("could not reach the receiver: {e}"))),
        };
        let settings = &self.state.settings.webhooks;
        let (state, retry_at) = match &error {
            None => (WebhookState::Delivered, None),
            Some(_) if attempt >= settings.max_attempts as i32 => (WebhookState::Failed, None),
            Some(_) => {
                let wait = backoff(Duration::from_millis(settings.retry_min_ms), attempt);
                let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                (WebhookState::Pending, Some(Utc::now() + wait))
            }
        };
        let detail = json!({"state": state.as_str(), "attempt": attempt,
            "status_code": status_code, "error": error, "retry_at": retry_at});
        let outcome = WebhookAttempt {
            state,
            retry_at,
            error: error.clone(),
            detail,
        };
        metrics::counter!(crate::metrics::WEBHOOKS, "outcome" => if error.is_none() { "delivered" } else { "failed_attempt" })
            .increment(1);
        match &error {
            None => tracing::info!(job = %job.id, attempt, "webhook delivered"),
            Some(why) => {
                tracing::warn!(job = %job.id, attempt, state = state.as_str(), error = %why, "webhook not delivered")
            }
        }
        let recorded = self
            .state
            .store
            .webhook_attempted(job.id, claim, &outcome)
            .await
            .map_err(|e| e.to_string())?;
        if !recorded {
            tracing::warn!(job = %job.id, "webhook claim expired before its outcome was recorded; it may be sent again");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The Standard Webhooks specification's example, checked with Python's hmac.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(signing_key("").unwrap(), None);
        assert!(signing_key("hunter2").unwrap_err().contains("whsec_"));
        assert!(signing_key("whsec_%%%").unwrap_err().contains("base64"));
        assert!(signing_key("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("16 bytes"));
    }

    #[test]
    fn back_off_doubles_up_to_an_hour() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 1), s(10));
        assert_eq!(backoff(s(10), 2), s(20));
        assert_eq!(backoff(s(10), 4), s(80));
        assert_eq!(backoff(s(10), 30), s(3600));
    }
}
