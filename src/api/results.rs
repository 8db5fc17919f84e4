//! `/v1/jobs/{id}/results/{custom_id}`: one result, and the image it was analyzed from.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Tenant;
use super::dto::ResultView;
use super::extract::ApiPath;
use super::jobs::load_job;
use super::problem::{ApiError, Problem};
use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_result))
        .routes(routes!(get_result_image))
}

/// Image bytes (the schema of the binary answer).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(#[allow(dead_code)] Vec<u8>);

/// One result: the same object as a row of `GET /v1/jobs/{id}/results`.
#[utoipa::path(get, path = "/v1/jobs/{id}/results/{custom_id}", tag = "results",
    params(("id" = Uuid, Path, description = "Job id"),
           ("custom_id" = String, Path, description = "The item's custom_id")),
    responses((status = 200, body = ResultView),
              (status = 401, description = "Missing or unknown API key", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "No such job for this key, or no item with this custom_id in it", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_result(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath((id, custom_id)): ApiPath<(Uuid, String)>,
) -> Result<axum::Json<ResultView>, ApiError> {
    let job = load_job(&state, &tenant, id).await?;
    let item = state.app.result(job.id, &custom_id).await?;
    Ok(axum::Json(ResultView::from(&item)))
}

/// The image of one result, as it was sent to the model.
///
/// The bytes of an inline or uploaded image as batchlens stored and sent them (after
/// downscaling, when `intake` limits asked for it), with their content type. An item
/// given as `image_url` was fetched by OpenAI itself, so there are no bytes to answer:
/// 404, as for an item rejected at intake.
#[utoipa::path(get, path = "/v1/jobs/{id}/results/{custom_id}/image", tag = "results",
    params(("id" = Uuid, Path, description = "Job id"),
           ("custom_id" = String, Path, description = "The item's custom_id")),
    responses((status = 200, description = "The image bytes",
               content((ImageBytes = "image/png"), (ImageBytes = "image/jpeg"),
                       (ImageBytes = "image/webp"), (ImageBytes = "image/gif"))),
              (status = 401, description = "Missing or unknown API key", body = Problem, content_type = "application/problem+json"),
              (status = 404, description = "No such job or item, an `image_url` item OpenAI fetched itself, or a rejected item", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_result_image(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath((id, custom_id)): ApiPath<(Uuid, String)>,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &tenant, id).await?;
    let image = state.app.result_image(job.id, &custom_id).await?;
    let content_type = HeaderValue::from_str(&image.content_type)
        .map_err(|_| ApiError::internal("a stored image has an unusable content type"))?;
    let mut response = image.bytes.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    // An item's image never changes; only its owner may read it.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
