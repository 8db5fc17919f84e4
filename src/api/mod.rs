//! The HTTP API: shared state, the router built from every resource's routes, the
//! OpenAPI document generated from the same handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Settings;
use crate::cost::estimate::Estimate;
use crate::cost::pricing::PriceTable;
use crate::domain::Job;
use crate::store::DynStore;

pub mod auth;
pub mod costs;
mod dashboard;
pub mod dto;
pub mod jobs;
pub mod ops;
pub mod problem;

use problem::ApiError;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub settings: Arc<Settings>,
    pub prices: Arc<PriceTable>,
    /// sha256(key) → tenant, from the configuration.
    pub keys: Arc<HashMap<String, String>>,
    pub openai: crate::providers::openai::OpenAiClient,
    /// Renders `/metrics`; None when another recorder took the process first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    /// Output tokens per image to assume for estimates: the average of the tenant's
    /// recent finished jobs with the same model and analyzer, else the configured default.
    pub async fn expected_output_tokens(
        &self,
        tenant: &str,
        model: &str,
        analyzer: &crate::domain::Analyzer,
    ) -> Result<u32, ApiError> {
        let recent = self
            .store
            .list_jobs(tenant, Some(crate::domain::JobStatus::Completed), None, 50)
            .await?;
        let (tokens, items) = recent
            .iter()
            .filter(|j| j.model == model && &j.analyzer == analyzer)
            .filter(|j| j.counts.succeeded > 0)
            .take(10)
            .fold((0i64, 0i64), |(t, n), j| {
                (
                    t + j.cost.output_tokens,
                    n + j.counts.succeeded + j.counts.failed,
                )
            });
        Ok(if items > 0 && tokens > 0 {
            (tokens as f64 / items as f64).round() as u32
        } else {
            self.settings.estimate.default_output_tokens
        })
    }

    /// `submit::prepare` on a blocking thread: image checks and downscaling are CPU work.
    pub async fn prepare(
        &self,
        tenant: &str,
        spec: crate::app::submit::JobSpec,
        req: dto::JobRequest,
        output_tokens: u32,
    ) -> Result<crate::app::submit::Prepared, ApiError> {
        let (settings, prices, tenant) = (
            self.settings.clone(),
            self.prices.clone(),
            tenant.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            crate::app::submit::prepare(&settings, &prices, &tenant, spec, req, output_tokens)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// The estimate of a stored job's pending items (an open job being submitted).
    pub async fn estimate_stored_job(&self, job: &Job) -> Result<Estimate, ApiError> {
        let dims: Vec<(u32, u32)> = self
            .store
            .pending_item_dims(job.id)
            .await?
            .into_iter()
            .map(|d| {
                d.unwrap_or((
                    self.settings.intake.default_image_width,
                    self.settings.intake.default_image_height,
                ))
            })
            .collect();
        let spec = crate::app::submit::JobSpec {
            name: job.name.clone(),
            model: job.model.clone(),
            requested_mode: job.requested_mode,
            detail: job.detail,
            analyzer: job.analyzer.clone(),
            metadata: None,
            webhook_url: None,
        };
        Ok(crate::cost::estimate::estimate(
            &self.prices,
            &crate::app::submit::estimate_input(
                &self.settings,
                &spec,
                &dims,
                self.expected_output_tokens(&job.tenant, &job.model, &job.analyzer)
                    .await?,
            ),
        ))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "batchlens",
        description = "Turns image sets into structured vision analyses at the lowest cost: \
            submit images, batchlens packs them into OpenAI Batch API jobs (half the price of \
            one call per image) or individual calls for small sets, and reports every image's \
            result, tokens and cost.\n\nErrors are `application/problem+json` (RFC 9457).",
        license(name = "MIT")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit image sets and follow them"),
        (name = "results", description = "Per-image analyses"),
        (name = "cost", description = "Spend, savings and estimates"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(costs::router())
        .merge(ops::router())
}

/// The OpenAPI document, exactly as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let (routes, doc) = api_router().split_for_parts();
    routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not answer that method".into())
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The document as committed: pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}
