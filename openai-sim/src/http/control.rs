//! `/_sim` control endpoints: knobs, journal, counters, batch lookup, forced expiry, reset.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{error_response, json_response, params, Params};
use crate::config::{merge_patch, SimConfig};
use crate::state::Sim;

pub(super) fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/health",
            get(|| async { json_response(200, &json!({"ok": true})) }),
        )
        .route("/config", get(config).patch(patch_config).put(put_config))
        .route("/journal", get(journal))
        .route("/stats", get(stats))
        .route("/chat_calls", get(chat_calls))
        .route("/batches", get(batches))
        .route("/batches/{batch_id}/expire", post(expire))
        .route("/clock/advance", post(advance_clock))
        .route("/reset", post(reset))
}

fn bad(message: impl Into<String>) -> Response {
    json_response(
        400,
        &json!({"error": {"message": message.into(), "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// `{"object": "list", "data": [ChatCall]}`, optionally only `?model=M`.
async fn chat_calls(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let data: Vec<_> = sim
        .chat_calls()
        .into_iter()
        .filter(|c| q.get("model").is_none_or(|m| *m == c.model))
        .collect();
    json_response(200, &json!({"object": "list", "data": data}))
}

async fn config(State(sim): State<Sim>) -> Response {
    json_response(200, &json!(sim.config()))
}

async fn patch_config(State(sim): State<Sim>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("body is not JSON: {e}")),
    };
    let mut st = sim.lock();
    let mut current = json!(st.config);
    merge_patch(&mut current, &patch);
    match serde_json::from_value::<SimConfig>(current) {
        Ok(c) => {
            st.set_config(c.clone());
            json_response(200, &json!(c))
        }
        Err(e) => bad(format!("invalid config: {e}")),
    }
}

async fn put_config(State(sim): State<Sim>, body: Bytes) -> Response {
    match serde_json::from_slice::<SimConfig>(&body) {
        Ok(c) => {
            sim.set_config(c.clone());
            json_response(200, &json!(c))
        }
        Err(e) => bad(format!("invalid config: {e}")),
    }
}

async fn journal(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let data: Vec<_> = sim
        .journal()
        .into_iter()
        .filter(|e| e.seq > since)
        .collect();
    json_response(200, &json!({"object": "list", "data": data}))
}

async fn stats(State(sim): State<Sim>) -> Response {
    json_response(200, &json!(sim.stats()))
}

async fn batches(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let key = q.get("metadata_key");
    let value = q.get("metadata_value");
    let data: Vec<Value> = sim
        .batches()
        .into_iter()
        .filter(|b| match key {
            None => true,
            Some(k) => {
                let v = &b["metadata"][k.as_str()];
                match value {
                    None => !v.is_null(),
                    Some(want) => v.as_str() == Some(want.as_str()),
                }
            }
        })
        .collect();
    json_response(200, &json!({"count": data.len(), "data": data}))
}

async fn expire(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    if sim.expire_batch(&id) {
        json_response(200, &json!({"expired": true, "batch": sim.batch(&id)}))
    } else {
        match sim.batch(&id) {
            None => json_response(
                404,
                &json!({"error": {"message": format!("No batch found with id '{id}'."), "type": "invalid_request_error", "param": null, "code": null}}),
            ),
            Some(b) => json_response(
                409,
                &json!({"error": {"message": format!("Batch '{id}' is {} and cannot expire.", b["status"].as_str().unwrap_or("")), "type": "invalid_request_error", "param": null, "code": null}}),
            ),
        }
    }
}

async fn advance_clock(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let Some(ms) = q.get("ms").and_then(|s| s.parse::<u64>().ok()) else {
        return bad("query parameter 'ms' (milliseconds, integer) is required");
    };
    sim.advance_clock(std::time::Duration::from_millis(ms));
    let now = sim.lock().now_ms();
    json_response(200, &json!({"advanced_ms": ms, "now_ms": now}))
}

async fn reset(State(sim): State<Sim>) -> Response {
    sim.reset();
    json_response(200, &json!({"reset": true}))
}
