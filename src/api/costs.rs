//! Money endpoints: a job's cost, estimates before submitting, savings over a period, the
//! price table in force.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Tenant;
use super::conditional;
use super::dto::JobRequest;
use super::extract::{ApiPath, ApiQuery};
use super::jobs::load_job;
use super::problem::{ApiError, ApiJson, Problem};
use super::AppState;
use crate::domain::pico_to_usd;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(job_cost))
        .routes(routes!(create_estimate))
        .routes(routes!(cost_totals))
        .routes(routes!(pricing))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenTotals {
    pub input: i64,
    pub cached_input: i64,
    pub output: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModeCost {
    pub items: i64,
    pub usd: f64,
}

/// Items answered from another analysis (see Reuse) and what sending them would have
/// cost: at Batch API prices, and at standard prices (counted in `individual_usd`, so in
/// the savings).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReusedCost {
    pub items: i64,
    pub batch_usd: f64,
    pub individual_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModeCosts {
    pub batch: ModeCost,
    pub individual: ModeCost,
    /// Flex calls (`service_tier: "flex"`), billed at Batch API prices. An item that fell
    /// back counts where it ran (`batch` or `individual`).
    pub flex: ModeCost,
}

/// What a job spent, what individual calls would have cost, and the estimate made at submit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model": "gpt-4o-mini", "currency": "USD",
    "tokens": {"input": 290000, "cached_input": 0, "output": 6100},
    "actual_usd": 0.0236, "individual_usd": 0.0472, "savings_usd": 0.0236, "savings_percent": 50.0,
    "estimate_usd": 0.0240, "per_image_usd": 0.000236, "unpriced_items": 0,
    "by_mode": {"batch": {"items": 100, "usd": 0.0236}, "individual": {"items": 0, "usd": 0.0},
                "flex": {"items": 0, "usd": 0.0}},
    "reused": {"items": 0, "batch_usd": 0.0, "individual_usd": 0.0}}))]
pub struct JobCost {
    pub model: String,
    pub currency: &'static str,
    pub tokens: TokenTotals,
    pub actual_usd: f64,
    pub individual_usd: f64,
    pub savings_usd: f64,
    pub savings_percent: f64,
    /// The estimate for the job's mode, made when it was submitted.
    pub estimate_usd: Option<f64>,
    pub estimate_batch_usd: Option<f64>,
    pub estimate_individual_usd: Option<f64>,
    /// Actual cost per succeeded image.
    pub per_image_usd: Option<f64>,
    /// Items whose model has no price: their cost is unknown, not in the sums.
    pub unpriced_items: i64,
    pub by_mode: ModeCosts,
    pub reused: ReusedCost,
}

/// A job's tokens, actual cost, individual-call equivalent and savings.
///
/// Carries an `ETag`; with a matching `If-None-Match` the answer is a 304 with no body.
#[utoipa::path(get, path = "/v1/jobs/{id}/cost", tag = "cost",
    params(("id" = Uuid, Path, description = "Job id"),
           ("If-None-Match" = Option<String>, Header, description = "An ETag this endpoint gave (or a list, or `*`): 304 while it is current")),
    responses((status = 200, body = JobCost,
               headers(("ETag" = String, description = "\"v<version>\" of the job"),
                       ("Cache-Control" = String, description = "no-cache"))),
              (status = 304, description = "Not Modified: the If-None-Match tag is current; no body",
               headers(("ETag" = String), ("Cache-Control" = String))),
              (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn job_cost(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(not_modified) = conditional::unchanged(&state, &tenant, id, &headers).await? {
        return Ok(not_modified);
    }
    let job = load_job(&state, &tenant, id).await?;
    let c = job.cost;
    let savings = c.individual_pico_usd - c.actual_pico_usd;
    // Batch and flex bill Batch API prices; an open job's `auto` is not decided yet.
    let estimate = match job.mode {
        crate::domain::Mode::Individual => job.estimate_individual_pico_usd,
        _ => job.estimate_batch_pico_usd,
    };
    let priced = c.batch_items + c.individual_items + c.flex_items;
    let cost = JobCost {
        model: job.model.clone(),
        currency: "USD",
        tokens: TokenTotals {
            input: c.input_tokens,
            cached_input: c.cached_input_tokens,
            output: c.output_tokens,
        },
        actual_usd: pico_to_usd(c.actual_pico_usd),
        individual_usd: pico_to_usd(c.individual_pico_usd),
        savings_usd: pico_to_usd(savings),
        savings_percent: if c.individual_pico_usd > 0 {
            (savings as f64 * 1000.0 / c.individual_pico_usd as f64).round() / 10.0
        } else {
            0.0
        },
        estimate_usd: estimate.map(pico_to_usd),
        estimate_batch_usd: job.estimate_batch_pico_usd.map(pico_to_usd),
        estimate_individual_usd: job.estimate_individual_pico_usd.map(pico_to_usd),
        per_image_usd: (priced > 0).then(|| pico_to_usd(c.actual_pico_usd) / priced as f64),
        unpriced_items: c.unpriced_items,
        by_mode: ModeCosts {
            batch: ModeCost {
                items: c.batch_items,
                usd: pico_to_usd(c.batch_pico_usd),
            },
            individual: ModeCost {
                items: c.individual_items,
                usd: pico_to_usd(c.individual_mode_pico_usd),
            },
            flex: ModeCost {
                items: c.flex_items,
                usd: pico_to_usd(c.flex_pico_usd),
            },
        },
        reused: ReusedCost {
            items: job.counts.reused,
            batch_usd: pico_to_usd(c.reused_batch_pico_usd),
            individual_usd: pico_to_usd(c.reused_individual_pico_usd),
        },
    };
    Ok(conditional::tagged(job.version, Json(cost)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateTokens {
    pub input: u64,
    pub output: u64,
}

/// One model's price for the same images.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEstimate {
    pub model: String,
    /// `observed`: from this analyzer's billed usage on the model; `formula`: o200k count.
    pub basis: crate::cost::Basis,
    pub batch_usd: Option<f64>,
    /// Flex calls, at Batch API prices; null where the model offers no flex.
    pub flex_usd: Option<f64>,
    pub individual_usd: Option<f64>,
    pub per_image_batch_usd: Option<f64>,
    pub per_image_individual_usd: Option<f64>,
}

/// What a job would cost, by mode and by model.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateResponse {
    pub items: usize,
    pub rejected: usize,
    pub model: String,
    /// The mode `auto` (or the requested mode) would pick.
    pub mode: crate::domain::Mode,
    pub tokens: EstimateTokens,
    /// null when the model has no price.
    pub batch_usd: Option<f64>,
    /// Flex calls, at Batch API prices; null where the model offers no flex.
    pub flex_usd: Option<f64>,
    pub individual_usd: Option<f64>,
    pub savings_usd: Option<f64>,
    pub per_image_batch_usd: Option<f64>,
    pub per_image_individual_usd: Option<f64>,
    /// Output tokens per image assumed.
    pub output_tokens_per_item: u32,
    /// Input tokens per image assumed beside the image's formula tokens (prompt, schema,
    /// chat framing).
    pub overhead_tokens_per_item: i64,
    /// `observed` once the analyzer has `estimate.min_observed_items` finished items on the
    /// model (averages of their billed usage), else `formula` (the o200k count and
    /// `estimate.default_output_tokens`).
    pub basis: crate::cost::Basis,
    /// Finished items the observed figures come from (0 on the formula).
    pub observed_items: u64,
    /// Every priced model, cheapest batch cost first.
    pub models: Vec<ModelEstimate>,
    pub rejections: Vec<crate::intake::Rejection>,
    /// The cheapest way to run these images among the priced models, details and modes;
    /// null when no model is priced.
    pub recommendation: Option<RecommendationView>,
    /// Images that would be answered from earlier analyses (see Reuse), counted at 0.
    pub reused: usize,
}

/// The cheapest (model, detail, mode) for a body, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecommendationView {
    pub model: String,
    pub detail: crate::domain::Detail,
    /// `batch`, `flex` (where the model offers it) or `individual`.
    pub mode: String,
    /// The images on this model and detail at Batch API prices.
    pub batch_usd: f64,
    /// What the recommended mode costs (equal to `batch_usd` for batch and flex).
    pub usd: f64,
    pub why: String,
}

impl From<crate::cost::recommend::Recommendation> for RecommendationView {
    fn from(r: crate::cost::recommend::Recommendation) -> Self {
        Self {
            model: r.model,
            detail: r.detail,
            mode: r.mode.to_string(),
            batch_usd: pico_to_usd(r.batch),
            usd: pico_to_usd(r.cost),
            why: r.why,
        }
    }
}

fn per_image(total: Option<i64>, items: usize) -> Option<f64> {
    total
        .filter(|_| items > 0)
        .map(|t| pico_to_usd(t) / items as f64)
}

/// Estimate a job without submitting it: same body as `POST /v1/jobs`, nothing stored or sent.
#[utoipa::path(post, path = "/v1/estimates", tag = "cost", request_body = JobRequest,
    responses((status = 200, body = EstimateResponse),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_estimate(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<Json<EstimateResponse>, ApiError> {
    let est = state.app.estimate(&tenant.0, req.into()).await?;
    let (accepted, e) = (est.accepted, est.estimate);
    let flex = |model: &str, batch: Option<i64>| {
        batch
            .filter(|_| est.flex_models.iter().any(|m| m == model))
            .map(pico_to_usd)
    };
    let models = est
        .models
        .into_iter()
        .map(|e| ModelEstimate {
            per_image_batch_usd: per_image(e.batch, accepted),
            per_image_individual_usd: per_image(e.individual, accepted),
            batch_usd: e.batch.map(pico_to_usd),
            flex_usd: flex(&e.model, e.batch),
            individual_usd: e.individual.map(pico_to_usd),
            basis: e.basis,
            model: e.model,
        })
        .collect();
    Ok(Json(EstimateResponse {
        items: accepted,
        rejected: est.rejected,
        model: est.model,
        mode: est.mode,
        tokens: EstimateTokens {
            input: e.input_tokens,
            output: e.output_tokens,
        },
        batch_usd: e.batch.map(pico_to_usd),
        flex_usd: e.batch.filter(|_| est.offers_flex).map(pico_to_usd),
        individual_usd: e.individual.map(pico_to_usd),
        savings_usd: e.batch.zip(e.individual).map(|(b, i)| pico_to_usd(i - b)),
        per_image_batch_usd: per_image(e.batch, accepted),
        per_image_individual_usd: per_image(e.individual, accepted),
        output_tokens_per_item: est.per_item.output_tokens,
        overhead_tokens_per_item: est.per_item.overhead_tokens,
        basis: est.per_item.basis,
        observed_items: est.per_item.observed_items,
        models,
        rejections: est.rejections,
        recommendation: est.recommendation.map(Into::into),
        reused: est.reused,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// Start of the period (RFC 3339), inclusive; default 30 days ago.
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339), exclusive; default now.
    pub to: Option<DateTime<Utc>>,
}

/// Spend and savings of the caller's jobs created in a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct CostTotalsView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub jobs: i64,
    pub images: i64,
    pub actual_usd: f64,
    pub individual_usd: f64,
    pub savings_usd: f64,
    /// The tenant's monthly budget this calendar month (UTC), whatever the period asked.
    pub budget: BudgetView,
}

/// The caller's `monthly_budget_usd` and what is left of it this month.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"monthly_usd": 50.0, "month_start": "2026-12-01T00:00:00Z",
    "spent_usd": 12.5, "in_flight_usd": 2.5, "remaining_usd": 35.0}))]
pub struct BudgetView {
    /// null: the tenant has no budget.
    pub monthly_usd: Option<f64>,
    /// The month counted: jobs created since then.
    pub month_start: DateTime<Utc>,
    /// What the month's finished jobs cost.
    pub spent_usd: f64,
    /// What its unfinished jobs hold: each one's estimate, or its cost so far when more.
    pub in_flight_usd: f64,
    /// The budget less both, at least 0; null without a budget.
    pub remaining_usd: Option<f64>,
}

/// Savings over a period, all jobs of the tenant, and its monthly budget.
#[utoipa::path(get, path = "/v1/costs", tag = "cost", params(CostQuery),
    responses((status = 200, body = CostTotalsView),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json",
               description = "The tenant is over its requests_per_second (Retry-After says when to try again)")),
    security(("bearer" = [])))]
pub async fn cost_totals(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> Result<Json<CostTotalsView>, ApiError> {
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    let t = state.app.cost_totals(&tenant.0, from, to).await?;
    let b = state.app.budget(&tenant.0).await?;
    Ok(Json(CostTotalsView {
        from,
        to,
        jobs: t.jobs,
        images: t.images,
        actual_usd: pico_to_usd(t.actual_pico_usd),
        individual_usd: pico_to_usd(t.individual_pico_usd),
        savings_usd: pico_to_usd(t.individual_pico_usd - t.actual_pico_usd),
        budget: BudgetView {
            monthly_usd: b.monthly_budget_usd,
            month_start: b.month_start,
            spent_usd: b.spent_usd,
            in_flight_usd: b.in_flight_usd,
            remaining_usd: b.remaining_usd,
        },
    }))
}

/// Prices of one model, USD per 1M tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceView {
    pub model: String,
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
    pub batch_input: f64,
    pub batch_cached_input: f64,
    pub batch_output: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"as_of": "2026-11-01", "models": [{"model": "gpt-4o-mini", "input": 0.15,
    "cached_input": 0.075, "output": 0.60, "batch_input": 0.075, "batch_cached_input": 0.0375, "batch_output": 0.30}]}))]
pub struct PricingView {
    pub as_of: String,
    pub currency: &'static str,
    pub models: Vec<PriceView>,
}

/// The price table in force (built-in dated defaults plus `[pricing]` overrides).
#[utoipa::path(get, path = "/v1/pricing", tag = "cost",
    responses((status = 200, body = PricingView)))]
pub async fn pricing(State(state): State<AppState>) -> Json<PricingView> {
    Json(PricingView {
        as_of: state.app.prices.as_of().to_string(),
        currency: "USD",
        models: state
            .app
            .prices
            .models()
            .map(|(model, p)| PriceView {
                model: model.to_string(),
                input: p.input,
                cached_input: p.cached_input,
                output: p.output,
                batch_input: p.batch_input,
                batch_cached_input: p.batch_cached_input,
                batch_output: p.batch_output,
            })
            .collect(),
    })
}
