//! `/v1/files` handlers: multipart upload, list, retrieve, delete, raw content.

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{error_response, json_response, params, with_note, Note, Params};
use crate::error::ApiError;
use crate::files::Upload;
use crate::state::Sim;

fn file_note(id: Option<&str>) -> Note {
    Note {
        file_id: id.map(str::to_string),
        ..Note::default()
    }
}

pub(super) async fn upload(
    State(sim): State<Sim>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut form = match multipart {
        Ok(m) => m,
        Err(e) => {
            return error_response(&ApiError::invalid(format!(
                "Invalid multipart/form-data request: {e}"
            )))
        }
    };
    let max = sim.config().max_upload_bytes;
    let mut up = Upload::default();
    let bad_form = |e: &dyn std::fmt::Display| {
        error_response(&ApiError::invalid(format!(
            "Invalid multipart/form-data request: {e}"
        )))
    };
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad_form(&e),
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            up.filename = field.file_name().map(str::to_string);
            let mut buf = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if (buf.len() + chunk.len()) as u64 > max {
                            return error_response(
                                &ApiError::invalid(format!(
                                    "File is too large: the maximum upload size is {max} bytes."
                                ))
                                .param("file")
                                .code("file_too_large"),
                            );
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => return bad_form(&e),
                }
            }
            up.data = Some(Bytes::from(buf));
            continue;
        }
        let text = match field.text().await {
            Ok(t) => t,
            Err(e) => return bad_form(&e),
        };
        match name.as_str() {
            "purpose" => up.purpose = Some(text),
            "expires_after[anchor]" => up.expires_anchor = Some(text),
            "expires_after[seconds]" => up.expires_seconds = Some(text),
            _ => {}
        }
    }
    let (mut st, now) = sim.advanced();
    match st.upload_file(up, now) {
        Ok(v) => {
            let id = v["id"].as_str().map(str::to_string);
            with_note(json_response(200, &v), file_note(id.as_deref()))
        }
        Err(e) => error_response(&e),
    }
}

pub(super) async fn list(State(sim): State<Sim>, q: Params) -> Response {
    let q = match params(q) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let (st, now) = sim.advanced();
    let get = |k: &str| q.get(k).map(String::as_str);
    match st.list_files(
        get("purpose"),
        get("limit"),
        get("order"),
        get("after"),
        now,
    ) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let (st, now) = sim.advanced();
    let resp = match st.file(&id, now) {
        Ok(f) => json_response(200, &f.to_json()),
        Err(e) => error_response(&e),
    };
    with_note(resp, file_note(Some(&id)))
}

pub(super) async fn delete(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let (mut st, now) = sim.advanced();
    let resp = match st.delete_file(&id, now) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    };
    with_note(resp, file_note(Some(&id)))
}

pub(super) async fn content(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let data = {
        let (mut st, now) = sim.advanced();
        match st.file(&id, now) {
            Ok(f) => {
                let d = f.data.clone();
                st.stats.file_downloads += 1;
                Ok(d)
            }
            Err(e) => Err(e),
        }
    };
    let resp = match data {
        Ok(d) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(d),
        )
            .into_response(),
        Err(e) => error_response(&e),
    };
    with_note(resp, file_note(Some(&id)))
}
