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

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::Instrument;

use crate::app::views::{job_snapshot, JobSnapshot};
use crate::domain::{Job, WebhookState};
use crate::outbound::{Failure, Options, Outbound, Resolver};
use crate::pipeline::{StepError, WorkerContext};
pub use crate::signing::{sign, signing_key};
use crate::store::WebhookAttempt;

/// Deliveries claimed per round.
const CLAIM: i64 = 16;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Wait before attempt `attempts + 1`, after `attempts` failed ones: `first`, doubling, at
/// most an hour.
pub fn backoff(first: Duration, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    first.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// A failure as the tenant may read it: `blocked address`, `timed out after N s`, or
/// `delivery failed` for anything else (a URL refused for another reason, too many
/// redirects: those name no host either, but keep to the few words the contract allows).
fn tenant_reason(failure: &Failure) -> String {
    match failure {
        Failure::BlockedAddress(_) | Failure::TimedOut(_) | Failure::Status(_) => {
            failure.to_string()
        }
        _ => Failure::Failed.to_string(),
    }
}

/// Renders a job as a delivery's `data`: the HTTP contract's job view, which `startup`
/// hands over (the pipeline does not import the API).
pub type RenderJob = fn(JobSnapshot) -> serde_json::Value;

/// Sends the deliveries that are due.
#[derive(Clone)]
pub struct Webhooks {
    ctx: WorkerContext,
    render: RenderJob,
    http: Outbound,
    key: Option<Vec<u8>>,
}

impl Webhooks {
    /// Deliveries resolve receivers' names through `resolver` (the system's in service; a
    /// fixed table in tests, so a name can point at loopback without the network).
    pub fn new(ctx: &WorkerContext, render: RenderJob, resolver: Arc<dyn Resolver>) -> Self {
        let settings = &ctx.settings.webhooks;
        let timeout = Duration::from_secs(settings.timeout_secs);
        let http = Outbound::new(
            Options::webhooks(timeout)
                .policy(settings.url_policy())
                .resolver(resolver),
        );
        Webhooks {
            ctx: ctx.clone(),
            render,
            http,
            // Checked when the settings were loaded.
            key: signing_key(settings.secret.expose_secret()).unwrap_or_default(),
        }
    }

    /// Claims what is due and delivers it; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, StepError> {
        let lease = Duration::from_secs(self.ctx.settings.webhooks.timeout_secs + 30);
        let claimed = self.ctx.store.claim_webhooks(lease, CLAIM).await?;
        let n = claimed.len();
        let deliveries = claimed.into_iter().map(|(job, claim)| {
            let span = tracing::info_span!("step", step = "webhook", job = %job.id);
            async move { self.deliver(job, claim).await }.instrument(span)
        });
        for result in futures::future::join_all(deliveries).await {
            result?;
        }
        Ok(n)
    }

    async fn deliver(&self, job: Job, claim: chrono::DateTime<Utc>) -> Result<(), StepError> {
        // Only a job with a webhook_url ever owes a delivery; a row edited by hand that
        // lost it ends failed rather than being claimed forever.
        let url = job.webhook_url.clone().unwrap_or_default();
        let view = (self.render)(job_snapshot(&self.ctx.store, &job).await?);
        let body = serde_json::to_vec(&json!({
            "type": "job.finished",
            "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": view,
        }))?;
        let id = job.id.to_string();
        let timestamp = Utc::now().timestamp();
        let attempt = job.webhook_attempts + 1;
        let sent = match self.http.post(&url) {
            Ok(request) => {
                let mut request = request
                    .header(CONTENT_TYPE, "application/json")
                    .header(USER_AGENT, concat!("batchlens/", env!("CARGO_PKG_VERSION")))
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", timestamp.to_string());
                if let Some(key) = &self.key {
                    request = request.header("webhook-signature", sign(key, &id, timestamp, &body));
                }
                self.http.send(request.body(body)).await
            }
            Err(refused) => Err(refused),
        };
        // What the tenant reads: the status code or one word, never a host or a port
        // (the client logs the full cause).
        let (status_code, error) = match sent {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(Failure::Status(code)) => (Some(code), Some(Failure::Status(code).to_string())),
            Err(other) => (None, Some(tenant_reason(&other))),
        };
        let settings = &self.ctx.settings.webhooks;
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
            .ctx
            .store
            .webhook_attempted(job.id, claim, &outcome)
            .await?;
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
    fn back_off_doubles_up_to_an_hour() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 1), s(10));
        assert_eq!(backoff(s(10), 2), s(20));
        assert_eq!(backoff(s(10), 4), s(80));
        assert_eq!(backoff(s(10), 30), s(3600));
    }

    #[test]
    fn a_tenant_reads_a_status_or_one_word() {
        use crate::outbound::UrlRefusal;
        let reason = |f: Failure| tenant_reason(&f);
        assert_eq!(
            reason(Failure::BlockedAddress(crate::outbound::Refusal::Loopback)),
            "blocked address"
        );
        assert_eq!(reason(Failure::Failed), "delivery failed");
        assert_eq!(
            reason(Failure::TimedOut(Duration::from_secs(10))),
            "timed out after 10 s"
        );
        assert_eq!(reason(Failure::Status(403)), "HTTP 403");
        assert_eq!(reason(Failure::TooManyRedirects), "delivery failed");
        assert_eq!(
            reason(Failure::Url(UrlRefusal::NotHttps)),
            "delivery failed"
        );
    }
}
