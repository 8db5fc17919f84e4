//! The HTTP surface: `/v1` (auth, faults, journal) and the `/_sim` control endpoints.

mod batches;
mod chat;
mod control;
mod files;
mod gate;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::ids;
use crate::state::{JournalEntry, Sim};

/// What a handler tells the journal about its request, carried in response extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Note {
    pub batch_id: Option<String>,
    pub file_id: Option<String>,
    pub metadata: Option<Value>,
    pub model: Option<String>,
    pub fault: Option<String>,
}

/// The whole simulator as an axum router (state already applied).
pub fn router(sim: Sim) -> Router {
    let v1 = Router::new()
        .route("/files", post(files::upload).get(files::list))
        .route(
            "/files/{file_id}",
            get(files::retrieve).delete(files::delete),
        )
        .route("/files/{file_id}/content", get(files::content))
        .route("/batches", post(batches::create).get(batches::list))
        .route("/batches/{batch_id}", get(batches::retrieve))
        .route("/batches/{batch_id}/cancel", post(batches::cancel))
        .route("/chat/completions", post(chat::create))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(sim.clone(), gate::gate));
    Router::new()
        .nest("/v1", v1)
        .nest("/_sim", control::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(sim.clone(), journal))
        // Uploads check `max_upload_bytes` themselves; chat bodies carry base64 images.
        .layer(DefaultBodyLimit::disable())
        .with_state(sim)
}

async fn not_found(req: Request) -> Response {
    error_response(&ApiError::not_found(format!(
        "Invalid URL ({} {})",
        req.method(),
        req.uri().path()
    )))
}

pub(crate) fn json_response(status: u16, value: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(value)).into_response()
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &e.envelope())
}

pub(crate) fn with_note(mut resp: Response, note: Note) -> Response {
    resp.extensions_mut().insert(note);
    resp
}

/// A JSON request body, or OpenAI's answer to one that is not JSON.
pub(crate) fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
        )
    })
}

pub(crate) type Params =
    Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

pub(crate) fn params(q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|e| ApiError::invalid(format!("Invalid query string: {e}")))
}

/// Records every non-control request and stamps the headers OpenAI sends on every answer.
async fn journal(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_sim") {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let api_key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, key)| key.to_string());
    let at_ms = sim.lock().now_ms();
    let started = std::time::Instant::now();
    let request_id = ids::request_id();
    let mut resp = next.run(req).await;
    let note = resp.extensions_mut().remove::<Note>().unwrap_or_default();
    let headers = resp.headers_mut();
    let organization = sim.lock().config.organization.clone();
    for (name, value) in [
        ("x-request-id", request_id.clone()),
        ("openai-organization", organization),
        ("openai-version", "2020-10-01".to_string()),
        (
            "openai-processing-ms",
            started.elapsed().as_millis().to_string(),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let mut st = sim.lock();
    st.stats.requests += 1;
    st.record(JournalEntry {
        seq: 0,
        at_ms,
        method,
        path,
        query,
        status: resp.status().as_u16(),
        request_id,
        batch_id: note.batch_id,
        file_id: note.file_id,
        metadata: note.metadata,
        model: note.model,
        fault: note.fault,
        api_key,
    });
    resp
}
