//! Operations endpoints: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::{ApiError, Problem};
use super::AppState;
use crate::domain::JobStatus;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    pub version: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// 200 when the database answers (migrations run before the service listens), else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.app.ready(std::time::Duration::from_secs(2)).await {
        Ok(()) => Ok(Json(Health {
            status: "ready",
            version: env!("CARGO_PKG_VERSION"),
        })),
        Err(why) => Err(ApiError::NotReady(why)),
    }
}

/// Prometheus metrics in the text exposition format: this replica's counters, histograms
/// and governor readings (`batchlens_http_*`, `batchlens_openai_*`, `batchlens_governor_*`,
/// `batchlens_jobs_*_total`, `batchlens_items_*_total`, `batchlens_batches_*_total`) and
/// gauges read from the database at each scrape (`batchlens_jobs{status}`,
/// `batchlens_items_waiting{status}`, the same on every replica). No API key needed, like
/// the health checks: it carries counts, never a tenant's data.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
               content_type = "text/plain; version=0.0.4",
               example = "# TYPE batchlens_jobs gauge\nbatchlens_jobs{status=\"running\"} 2\n"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = &state.metrics else {
        return Err(ApiError::NotReady(
            "metrics go to a recorder installed by the program that embeds batchlens".into(),
        ));
    };
    match state.app.gauges().await {
        Ok(gauges) => {
            use crate::metrics::{ITEMS_WAITING, JOBS};
            for status in JobStatus::ALL {
                let jobs = gauges
                    .jobs
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(JOBS, "status" => status.as_str()).set(jobs as f64);
            }
            metrics::gauge!(ITEMS_WAITING, "status" => "pending").set(gauges.pending_items as f64);
            metrics::gauge!(ITEMS_WAITING, "status" => "submitted")
                .set(gauges.submitted_items as f64);
        }
        // The counters are still worth a scrape; the gauges keep their last values.
        Err(err) => tracing::warn!(error = %err, "metrics: could not read the gauges"),
    }
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response())
}
