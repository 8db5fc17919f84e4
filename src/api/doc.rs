//! The statuses every operation can answer besides its own, added to the OpenAPI document
//! in one place from what the operation has (API.md "Errors"): a secured one answers 401
//! (no or an unknown key), 429 (the tenant over its limit) and 500; one with parameters or
//! a body 400 (a path or query value that does not parse, malformed JSON); one with a path
//! parameter 404 (no such job, or another tenant's); one with a body 413 (over
//! `server.max_body_bytes`), 415 (not JSON, or not multipart where that is taken) and 422 (valid JSON that breaks a rule).
//! All of them are `application/problem+json` with the `Problem` schema. A status the
//! handler declares itself keeps the handler's description.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, Object, Ref, RefOr, ResponseBuilder, Type};
use utoipa::Modify;

/// Declares the shared error statuses on every operation they apply to.
pub struct ErrorStatuses;

impl Modify for ErrorStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                declare(operation);
            }
        }
    }
}

/// Whether the operation needs a key.
pub fn is_secured(operation: &Operation) -> bool {
    operation.security.as_ref().is_some_and(|s| !s.is_empty())
}

fn declare(operation: &mut Operation) {
    let has_param = |place: ParameterIn| {
        operation
            .parameters
            .iter()
            .flatten()
            .any(|p| p.parameter_in == place)
    };
    let in_path = has_param(ParameterIn::Path);
    let in_query = has_param(ParameterIn::Query);
    let has_body = operation.request_body.is_some();
    let takes_multipart = operation
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("multipart/form-data"));
    let secured = is_secured(operation);
    let mut add = |status: u16, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| problem(status, description));
    };
    if in_path || in_query || has_body {
        add(
            400,
            "Malformed: a path or query parameter that does not parse, malformed JSON, \
             wrong types; `errors[].field` names it",
        );
    }
    if in_path {
        add(404, "No such job (or another tenant's)");
    }
    if has_body {
        add(413, "Body over server.max_body_bytes");
        add(
            415,
            if takes_multipart {
                "Content-Type is neither application/json nor multipart/form-data"
            } else {
                "Content-Type is not application/json"
            },
        );
        add(
            422,
            "Valid JSON that breaks a rule; `errors[].field` names it",
        );
    }
    if secured {
        add(401, "Missing or unknown API key");
        add(
            429,
            "The tenant is over its limit; retry after `Retry-After` seconds",
        );
        add(
            500,
            "The server failed; the cause is logged, never answered",
        );
    }
}

fn problem(status: u16, description: &str) -> RefOr<utoipa::openapi::Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    if status == 429 {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    RefOr::T(response.build())
}
