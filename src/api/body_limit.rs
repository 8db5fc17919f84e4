//! The request body limit (`server.max_body_bytes`): a request whose `Content-Length` is
//! over it is answered 413 before its body is read, and every extractor that reads a body
//! knows the limit to name it in its 413.
//!
//! A client that waits for `100 Continue` (curl does for large bodies) gets the 413 without
//! sending anything. One that sends at once would see a broken pipe if the connection were
//! closed under it: up to [`DRAIN_MAX`] bytes of the refused body are read and dropped
//! first, so the client finishes writing and reads the answer; the connection is closed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::problem::ApiError;

/// The limit in force for a request, as an extension for the body extractors.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The most of a refused body read (and dropped) so its client gets the 413: 256 MiB, so a
/// client cannot make the service read gigabytes it refused; a larger declared body gets the
/// 413 and the connection closed at once.
const DRAIN_MAX: u64 = 256 << 20;

/// The limit a request carries (the server's default when it came in by another route,
/// as in unit tests).
pub fn limit_of(req: &Request) -> usize {
    req.extensions()
        .get::<BodyLimit>()
        .map_or(64 * 1024 * 1024, |l| l.0)
}

/// A 413 naming `limit`, closing the connection.
pub fn too_large(limit: usize) -> Response {
    let mut response = ApiError::PayloadTooLarge { limit }.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Middleware: refuses a declared body over `limit` before reading it, and tells the
/// extractors the limit.
pub async fn enforce(State(limit): State<usize>, mut req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limit as u64) {
        let waits_for_continue = req
            .headers()
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if !waits_for_continue && length <= DRAIN_MAX {
            drain(req.into_body()).await;
        }
        tracing::info!(
            length,
            limit,
            "request body over server.max_body_bytes refused"
        );
        return too_large(limit);
    }
    req.extensions_mut().insert(BodyLimit(limit));
    next.run(req).await
}

/// Reads a body to its end (or first error), keeping nothing.
async fn drain(body: Body) {
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        if chunk.is_err() {
            break;
        }
    }
}
