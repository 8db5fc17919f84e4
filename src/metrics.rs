//! Prometheus metrics, served at `GET /metrics`. Counters and histograms are recorded
//! where things happen (HTTP requests, OpenAI calls, governor waits, jobs and items as
//! they settle); gauges of jobs by status and of items waiting are read from the database
//! at each scrape, so every replica reports the same cluster-wide totals beside its own
//! counters.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "batchlens_http_requests_total";
pub const HTTP_DURATION: &str = "batchlens_http_request_duration_seconds";
pub const OPENAI_REQUESTS: &str = "batchlens_openai_requests_total";
pub const OPENAI_DURATION: &str = "batchlens_openai_request_duration_seconds";
pub const GOVERNOR_WAIT: &str = "batchlens_governor_wait_seconds";
pub const GOVERNOR_HELD: &str = "batchlens_governor_held_seconds";
pub const GOVERNOR_TOKEN_RATIO: &str = "batchlens_governor_token_ratio";
pub const JOBS_CREATED: &str = "batchlens_jobs_created_total";
pub const JOBS_FINISHED: &str = "batchlens_jobs_finished_total";
pub const ITEMS_ACCEPTED: &str = "batchlens_items_accepted_total";
pub const ITEMS_REJECTED: &str = "batchlens_items_rejected_total";
pub const ITEMS_SETTLED: &str = "batchlens_items_settled_total";
pub const BATCHES_SUBMITTED: &str = "batchlens_batches_submitted_total";
pub const BATCHES_ENDED: &str = "batchlens_batches_ended_total";
pub const WEBHOOKS: &str = "batchlens_webhook_attempts_total";
pub const OPENAI_WEBHOOKS: &str = "batchlens_openai_webhooks_total";
pub const TENANT_LIMITED: &str = "batchlens_tenant_limited_total";
pub const JOBS: &str = "batchlens_jobs";
pub const ITEMS_WAITING: &str = "batchlens_items_waiting";

/// Histogram buckets in seconds: from a fast local call to a long governor wait.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder, installed by the first call (several applications in one
/// process, as in tests, share it). None when another recorder was installed first, by a
/// program that embeds batchlens: metrics then go there and `/metrics` answers 503.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics: another recorder is installed; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to the headers of a streamed answer)"
    );
    describe_counter!(
        OPENAI_REQUESTS,
        "Requests sent to OpenAI (each retry counts), by endpoint and status (`error` when no answer came)"
    );
    describe_histogram!(
        OPENAI_DURATION,
        Unit::Seconds,
        "Time for OpenAI to answer one request"
    );
    describe_histogram!(
        GOVERNOR_WAIT,
        Unit::Seconds,
        "Time an individual call waited for the RPM/TPM governor, by model"
    );
    describe_histogram!(
        GOVERNOR_HELD,
        Unit::Seconds,
        "Each wait the governor set a model's next call (reason: budget, or a 429's pause); one call per model and replica waits at a time, so the sum's rate is the share of time the model was held at its limit"
    );
    describe_gauge!(
        GOVERNOR_TOKEN_RATIO,
        "Tokens OpenAI counted per token estimated here, running average by model; the governor scales its estimates by it"
    );
    describe_counter!(JOBS_CREATED, "Jobs accepted, by the mode they got");
    describe_counter!(JOBS_FINISHED, "Jobs that reached a final status, by status");
    describe_counter!(ITEMS_ACCEPTED, "Images accepted into jobs");
    describe_counter!(ITEMS_REJECTED, "Images rejected at intake");
    describe_counter!(
        ITEMS_SETTLED,
        "Items settled from a result, by outcome (succeeded, failed, requeued for another attempt, cancelled)"
    );
    describe_counter!(BATCHES_SUBMITTED, "OpenAI batches created");
    describe_counter!(
        BATCHES_ENDED,
        "OpenAI batches that ended, by their final status"
    );
    describe_counter!(
        WEBHOOKS,
        "Webhook delivery attempts, by outcome (delivered, failed_attempt)"
    );
    describe_counter!(
        OPENAI_WEBHOOKS,
        "OpenAI webhooks received at /v1/openai/webhooks, by outcome (accepted, replay, unverified, bad_request)"
    );
    describe_counter!(
        TENANT_LIMITED,
        "Requests refused by a tenant limit, by limit (requests_per_second, max_open_items, monthly_budget_usd)"
    );
    describe_gauge!(JOBS, "Jobs in the database, by status (all replicas)");
    describe_gauge!(
        ITEMS_WAITING,
        "Items of unfinished jobs not yet settled, by status (all replicas)"
    );
}

/// Counts and times every HTTP request by the route that matched (its template, so
/// `/v1/jobs/{id}` is one series, not one per job).
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The endpoint label of an OpenAI URL path relative to the base: ids become `{id}`, so
/// `files/file-abc/content` is `files/{id}/content`.
pub fn openai_endpoint(segments: &[&str]) -> String {
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i == 1 && matches!(segments[0], "files" | "batches") {
                "{id}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_endpoints_hide_ids() {
        assert_eq!(
            openai_endpoint(&["chat", "completions"]),
            "chat/completions"
        );
        assert_eq!(openai_endpoint(&["files"]), "files");
        assert_eq!(
            openai_endpoint(&["files", "file-abc", "content"]),
            "files/{id}/content"
        );
        assert_eq!(
            openai_endpoint(&["batches", "batch_1", "cancel"]),
            "batches/{id}/cancel"
        );
    }
}
