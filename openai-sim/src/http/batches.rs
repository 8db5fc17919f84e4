//! `/v1/batches` handlers: create, retrieve, list, cancel.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;

use super::{error_response, json_response, params, parse_json, with_note, Note, Params};
use crate::state::Sim;

fn batch_note(id: Option<&str>) -> Note {
    Note {
        batch_id: id.map(str::to_string),
        ..Note::default()
    }
}

pub(super) async fn create(State(sim): State<Sim>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let (mut st, now) = sim.advanced();
    match st.create_batch(&body, now) {
        Ok(v) => {
            let note = Note {
                batch_id: v["id"].as_str().map(str::to_string),
                metadata: Some(v["metadata"].clone()).filter(|m| !m.is_null()),
                ..Note::default()
            };
            with_note(json_response(200, &v), note)
        }
        Err(e) => {
            st.stats.batches_rejected += 1;
            error_response(&e)
        }
    }
}

pub(super) async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let (st, now) = sim.advanced();
    let resp = match st.batch_json(&id, now) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    };
    with_note(resp, batch_note(Some(&id)))
}

pub(super) async fn list(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let (st, now) = sim.advanced();
    let get = |k: &str| q.get(k).map(String::as_str);
    match st.list_batches(get("after"), get("limit"), now) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn cancel(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let (mut st, now) = sim.advanced();
    let resp = match st.cancel_batch(&id, now) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    };
    with_note(resp, batch_note(Some(&id)))
}
