//! `/v1/jobs`: submit, fill in chunks, cancel, read status, results, posts; the routes and
//! their handlers.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::Tenant;
use super::conditional::{self, Check};
use super::dto::{
    ItemsRequest, JobListQuery, JobPage, JobRequest, JobView, PostPage, PostView, PostsQuery,
    ResultPage, ResultView, ResultsQuery,
};
use super::extract::{bad_parameter, ApiPath, ApiQuery};
use super::multipart::{ItemsUpload, JobUpload, Upload};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::app::idempotency::Once;
use crate::app::views::JobCursor;
use crate::app::AppError;
use crate::domain::{ItemStatus, Job};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(append_items))
        .routes(routes!(submit_job))
        .routes(routes!(cancel_job))
        .routes(routes!(list_results))
        .routes(routes!(list_posts))
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Loads the caller's job or answers 404.
pub async fn load_job(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<Job, ApiError> {
    Ok(state.app.job(&tenant.0, id).await?)
}

fn accepted(view: &JobView) -> Response {
    let mut response = (StatusCode::ACCEPTED, axum::Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&view.links.self_) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Submit an image set.
///
/// Each item is checked on its own: a bad one is listed in `rejected` with a reason and
/// the rest go on; a body with no usable item is a 422. With `"open": true` the job waits
/// for more items (`POST /v1/jobs/{id}/items`) until `POST /v1/jobs/{id}/submit`.
/// Accepted means stored. `Idempotency-Key` makes retries safe: the same key and body
/// return the first answer (200), another body is a 422, a retry while the first request
/// is still running is a 409.
///
/// The body is JSON, or `multipart/form-data` with one `image` part per file and an
/// optional `job` part holding the JSON body (`curl -F 'job={…};type=application/json'
/// -F image=@look.jpg`). A multipart retry is the same body when its parts are (names,
/// filenames, bytes, in order), whatever its boundary.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content((JobRequest = "application/json"), (JobUpload = "multipart/form-data"))),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes retries safe (1 to 255 characters)")),
    responses(
        (status = 202, description = "Stored; work starts", body = JobView,
         headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 200, description = "Replay of an earlier request with the same Idempotency-Key", body = JobView),
        (status = 400, description = "Malformed JSON or wrong types", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still in flight", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over server.max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No usable item, a broken rule, an Idempotency-Key reused with another body, or (type …/problems/budget) an estimate over what is left of the tenant's monthly_budget_usd", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant is over its requests_per_second or max_open_items (Retry-After says when to try again)", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = [])))]
pub async fn create_job(
    State(state): State<AppState>,
    tenant: Tenant,
    IdempotencyKey(key): IdempotencyKey,
    upload: Upload<JobRequest>,
) -> Result<Response, ApiError> {
    let Upload {
        body: req,
        fingerprint,
    } = upload;
    let work = async {
        let submitted = state.app.submit(&tenant.0, req.into(), key.as_deref());
        let view = JobView::from(submitted.await?);
        Ok((view.id, view))
    };
    match state
        .app
        .once(&tenant.0, key.as_deref(), &fingerprint, work, |job| {
            job_now(&state, &tenant, job)
        })
        .await?
    {
        Once::Fresh(view) => Ok(accepted(&view)),
        Once::Replay(response) => Ok((StatusCode::OK, axum::Json(response)).into_response()),
    }
}

/// The job as it is now: the answer to a retry whose first request did its work and died
/// before its answer was recorded.
async fn job_now(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<JobView, AppError> {
    Ok(JobView::from(state.app.job_snapshot(&tenant.0, id).await?))
}

/// The `Idempotency-Key` header, checked as an extractor of the request's head: a bad key
/// is refused before a large body is read.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?
        .trim()
        .trim_matches('"')
        .to_string();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::field(
            "Idempotency-Key",
            "must be 1 to 255 characters",
        ));
    }
    Ok(Some(key))
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListQuery),
    responses((status = 200, body = JobPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<JobListQuery>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let limit = clamp_limit(q.limit, 50, 200)?;
    let after = q.cursor.as_deref().map(decode_job_cursor).transpose()?;
    let page = state
        .app
        .list_jobs(&tenant.0, q.status, after, limit)
        .await?;
    let next_cursor = page
        .more
        .then(|| page.data.last())
        .flatten()
        .map(|s| encode_cursor(&format!("{}|{}", s.job.created_at.to_rfc3339(), s.job.id)));
    Ok(axum::Json(JobPage {
        data: page.data.into_iter().map(JobView::from).collect(),
        next_cursor,
    }))
}

/// A job's status, progress, batches and cost summary.
///
/// Reads the job row and its shards, never its items: `rejected` holds the first 100
/// rejections, the rest are at `/results?status=rejected`. Carries an `ETag`; with a
/// matching `If-None-Match` the answer is a 304 with no body.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"),
           ("If-None-Match" = Option<String>, Header, description = "An ETag this endpoint gave (or a list, or `*`): 304 while it is current")),
    responses((status = 200, body = JobView,
               headers(("ETag" = String, description = "\"v<version>\": changes whenever what the job's views show changes"),
                       ("Cache-Control" = String, description = "no-cache"))),
              (status = 304, description = "Not Modified: the If-None-Match tag is current; no body",
               headers(("ETag" = String), ("Cache-Control" = String))),
              (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.views.enabled() {
        // The version first (it is the 404 check too), then the view kept at that version.
        let version = match conditional::check(&state, &tenant, id, &headers).await? {
            Check::NotModified(response) => return Ok(response),
            Check::Current(version) => version,
        };
        if let Some(body) = state.views.get(id, version) {
            return Ok(conditional::tagged(version, json_bytes(body)));
        }
    } else if let Some(not_modified) = conditional::unchanged(&state, &tenant, id, &headers).await?
    {
        return Ok(not_modified);
    }
    let snapshot = state.app.job_snapshot(&tenant.0, id).await?;
    let version = snapshot.job.version;
    let mut body = serde_json::to_vec(&JobView::from(snapshot))
        .map_err(|e| ApiError::from(AppError::Internal(format!("job view: {e}"))))?;
    // Kept bodies are counted by length: no spare capacity behind them.
    body.shrink_to_fit();
    let body = Bytes::from(body);
    state.views.put(id, version, body.clone());
    Ok(conditional::tagged(version, json_bytes(body)))
}

/// A JSON body already serialised.
fn json_bytes(body: Bytes) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
}

/// Append items to an open job.
///
/// Same item schema and per-item checks as `POST /v1/jobs`; answers the job with its
/// running `progress` and this chunk's `rejected`. 409 when the job is not open.
/// `Idempotency-Key` (scoped to the job) makes a resent chunk safe: the same key and body
/// answer the first chunk's answer again and store nothing, another body is a 422, a
/// retry while the first is still running is a 409. The body is JSON or
/// `multipart/form-data` with the parts of a `POST /v1/jobs` upload (the `job` part holds
/// `{"items": […]}`).
#[utoipa::path(post, path = "/v1/jobs/{id}/items", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"),
           ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes a resent chunk safe (1 to 255 characters; scoped to the job)")),
    request_body(content((ItemsRequest = "application/json"), (ItemsUpload = "multipart/form-data"))),
    responses((status = 200, body = JobView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "The job is not open, or a chunk with this Idempotency-Key is still in flight", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "No usable item, a broken rule, an Idempotency-Key reused with another body, or (type …/problems/budget) the chunk's estimate over what is left of the tenant's monthly_budget_usd", body = Problem, content_type = "application/problem+json"),
              (status = 429, description = "The tenant is over its requests_per_second or max_open_items (Retry-After says when to try again)", body = Problem, content_type = "application/problem+json",
               headers(("Retry-After" = u64, description = "Seconds to wait")))),
    security(("bearer" = [])))]
pub async fn append_items(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
    IdempotencyKey(key): IdempotencyKey,
    upload: Upload<ItemsRequest>,
) -> Result<Response, ApiError> {
    // Scoped to the job: the same key on another job's chunk is another request.
    let key = key.map(|k| format!("items:{id}:{k}"));
    let Upload {
        body: req,
        fingerprint,
    } = upload;
    let work = async {
        let appended = state.app.append(&tenant.0, id, req.items, key.as_deref());
        Ok((id, JobView::from(appended.await?)))
    };
    match state
        .app
        .once(&tenant.0, key.as_deref(), &fingerprint, work, |job| {
            job_now(&state, &tenant, job)
        })
        .await?
    {
        Once::Fresh(view) => Ok(axum::Json(view).into_response()),
        Once::Replay(response) => Ok(axum::Json(response).into_response()),
    }
}

/// Close an open job and start it.
#[utoipa::path(post, path = "/v1/jobs/{id}/submit", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 202, body = JobView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "The job is not open", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "The job has no usable item", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn submit_job(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let view = state.app.submit_open(&tenant.0, id).await?;
    Ok(accepted(&view.into()))
}

/// Cancel a job.
///
/// The job becomes `cancelling`: images not yet planned into a batch are cancelled at
/// once, a batch file being prepared is closed without a batch within a moment (or, if
/// its batch was just created, cancelled like the others), the job's batches in flight
/// are cancelled at OpenAI in the background (individual calls stop before the next one),
/// and results already finished are kept, including those a batch ran before it stopped. Images OpenAI did not run
/// end `cancelled`; the job becomes `cancelled` once nothing is in flight. Cancelling a
/// job that is already cancelling answers it again; a finished job is a 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 202, description = "Cancelling (or already cancelled if nothing was in flight)", body = JobView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "The job already finished", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let view = state.app.cancel(&tenant.0, id).await?;
    Ok(accepted(&view.into()))
}

/// Per-image results in item order.
///
/// With `Accept: application/x-ndjson` every result is streamed, one JSON object per line,
/// in item order (the `cursor` and `limit` are then ignored; `status` still filters).
/// A JSON page carries an `ETag`; with a matching `If-None-Match` the answer is a 304.
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "results",
    params(("id" = Uuid, Path, description = "Job id"), ResultsQuery,
           ("If-None-Match" = Option<String>, Header, description = "An ETag this endpoint gave (or a list, or `*`): 304 while it is current")),
    responses((status = 200, body = ResultPage,
               content((ResultPage = "application/json"), (ResultView = "application/x-ndjson")),
               headers(("ETag" = String, description = "\"v<version>\" of the job (JSON pages only)"),
                       ("Cache-Control" = String, description = "no-cache"))),
              (status = 304, description = "Not Modified: the If-None-Match tag is current; no body",
               headers(("ETag" = String), ("Cache-Control" = String))),
              (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_results(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<ResultsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if wants_ndjson(&headers) {
        let job = load_job(&state, &tenant, id).await?;
        return Ok(ndjson_results(state, job.id, q.status));
    }
    let limit = clamp_limit(q.limit, 100, 1000)?;
    let after = q.cursor.as_deref().map(decode_position).transpose()?;
    let version = match conditional::check(&state, &tenant, id, &headers).await? {
        Check::NotModified(response) => return Ok(response),
        Check::Current(version) => version,
    };
    let page = state.app.results(id, q.status, after, limit).await?;
    let next_cursor = page
        .more
        .then(|| page.data.last())
        .flatten()
        .map(|i| encode_cursor(&i.position.to_string()));
    let body = ResultPage {
        data: page.data.iter().map(ResultView::from).collect(),
        next_cursor,
    };
    Ok(conditional::tagged(version, axum::Json(body)))
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-ndjson"))
}

fn ndjson_results(state: AppState, job_id: Uuid, status: Option<ItemStatus>) -> Response {
    const PAGE: i64 = 1000;
    let pages = futures::stream::unfold(Some(None), move |cursor: Option<Option<i64>>| {
        let state = state.clone();
        async move {
            let after = cursor?;
            match state.app.items(job_id, status, after, PAGE).await {
                Err(err) => {
                    tracing::error!(job = %job_id, error = %err, "results stream failed");
                    Some((Err(std::io::Error::other("results stream failed")), None))
                }
                Ok(items) if items.is_empty() => None,
                Ok(items) => {
                    let next =
                        (items.len() as i64 == PAGE).then(|| items.last().map(|i| i.position));
                    let mut buf = Vec::with_capacity(items.len() * 256);
                    for item in &items {
                        if serde_json::to_writer(&mut buf, &ResultView::from(item)).is_ok() {
                            buf.push(b'\n');
                        }
                    }
                    Some((Ok(Bytes::from(buf)), next))
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(pages))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Results grouped by `post_id` (items without one come under `post_id: null`, last).
///
/// Carries an `ETag`; with a matching `If-None-Match` the answer is a 304 with no body.
#[utoipa::path(get, path = "/v1/jobs/{id}/posts", tag = "results",
    params(("id" = Uuid, Path, description = "Job id"), PostsQuery,
           ("If-None-Match" = Option<String>, Header, description = "An ETag this endpoint gave (or a list, or `*`): 304 while it is current")),
    responses((status = 200, body = PostPage,
               headers(("ETag" = String, description = "\"v<version>\" of the job"),
                       ("Cache-Control" = String, description = "no-cache"))),
              (status = 304, description = "Not Modified: the If-None-Match tag is current; no body",
               headers(("ETag" = String), ("Cache-Control" = String))),
              (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_posts(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<PostsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = clamp_limit(q.limit, 100, 500)?;
    // The cursor is the last post of the previous page.
    let after: Option<Option<String>> = match q.cursor.as_deref() {
        Some(c) => Some(
            serde_json::from_str(&decode_cursor(c)?)
                .map_err(|_| bad_parameter("cursor", "not a cursor this API gave out"))?,
        ),
        None => None,
    };
    let version = match conditional::check(&state, &tenant, id, &headers).await? {
        Check::NotModified(response) => return Ok(response),
        Check::Current(version) => version,
    };
    let page = state.app.posts(id, after, limit).await?;
    let next_cursor = if page.more {
        page.data
            .last()
            .map(|p| encode_cursor(&serde_json::to_string(&p.post_id).unwrap_or_default()))
    } else {
        None
    };
    let body = PostPage {
        data: page
            .data
            .into_iter()
            .map(|p| PostView {
                items: p.items.iter().map(ResultView::from).collect(),
                post_id: p.post_id,
            })
            .collect(),
        next_cursor,
    };
    Ok(conditional::tagged(version, axum::Json(body)))
}

pub fn clamp_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(bad_parameter(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

fn encode_cursor(raw: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad_parameter("cursor", "not a cursor this API gave out"))
}

fn decode_position(cursor: &str) -> Result<i64, ApiError> {
    decode_cursor(cursor)?
        .parse()
        .map_err(|_| bad_parameter("cursor", "not a cursor this API gave out"))
}

fn decode_job_cursor(cursor: &str) -> Result<JobCursor, ApiError> {
    let raw = decode_cursor(cursor)?;
    let bad = || bad_parameter("cursor", "not a cursor this API gave out");
    let (at, id) = raw.split_once('|').ok_or_else(bad)?;
    Ok(JobCursor {
        created_at: DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&Utc),
        id: id.parse().map_err(|_| bad())?,
    })
}
