//! The HTTP API, and only HTTP: shared state, the router built from every resource's
//! routes, the OpenAPI document generated from the same handlers. Handlers extract, call
//! `app`, and answer; nothing here touches the store.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::App;

pub mod auth;
pub mod body_limit;
pub mod conditional;
pub mod costs;
mod dashboard;
pub mod doc;
pub mod dto;
pub mod events;
pub mod extract;
pub mod jobs;
pub mod multipart;
pub mod openai_webhooks;
pub mod ops;
pub mod problem;
pub mod results;
pub mod view_cache;

use problem::ApiError;

/// What every handler may use: the use cases, the API keys, the metrics renderer.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    /// The API keys: configured, and the database's (cached for `auth.key_cache_secs`).
    pub keys: Arc<auth::KeyRing>,
    /// Renders `/metrics`; None when another recorder took the process first.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Rendered `GET /v1/jobs/{id}` bodies by version (`server.job_view_cache_bytes`).
    pub views: Arc<view_cache::ViewCache>,
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
        (name = "openai", description = "Webhooks from OpenAI (batch events)"),
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
        .merge(events::router())
        .merge(results::router())
        .merge(costs::router())
        .merge(ops::router())
        .merge(openai_webhooks::router())
}

/// The routes and their document, the shared error statuses declared on every operation
/// (they need the operations, so they are added once the routes are merged).
fn api_parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = api_router().split_for_parts();
    doc::ErrorStatuses.modify(&mut doc);
    (routes, doc)
}

/// The OpenAPI document, exactly as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_parts().1
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let max_body = state.app.settings.server.max_body_bytes;
    let (routes, doc) = api_parts();
    routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(dashboard::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not answer that method".into())
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            body_limit::enforce,
        ))
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
