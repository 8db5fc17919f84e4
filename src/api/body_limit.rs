//! The request body limit (`server.max_body_bytes`): a request whose `Content-Length` is
//! over it is answered 413 as soon as its head is read, and every extractor that reads a
//! body knows the limit to name it in its 413.
//!
//! A client that waits for `100 Continue` (curl does for large bodies) gets the 413 without
//! sending anything. One that sends at once would see a broken pipe (or a reset that eats
//! the answer) if the connection were closed under it while it writes: so the 413 goes out
//! at once, as the head and first chunk of a chunked answer, and the refused body is read
//! and dropped behind it (at most [`DRAIN_MAX`] bytes, for at most [`DRAIN_TIME`], giving up
//! after [`DRAIN_IDLE`] without a byte) before the answer ends and the connection closes.
//! A client may read the 413 before it has sent the rest. A body of unknown length
//! (`Transfer-Encoding: chunked`) is over the limit only once that much has been read: the
//! extractor stops there and answers the 413, and what it left unread is drained the same
//! way; so is the body of any answer given before its body was read (a 401, an invalid
//! `Idempotency-Key`), unless its client waits for `100 Continue` and was never asked.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use super::problem::ApiError;

/// The limit in force for a request, as an extension for the body extractors.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The most of a refused body read (and dropped) behind its 413: 256 MiB, so a client
/// cannot make the service read gigabytes it refused.
const DRAIN_MAX: u64 = 256 << 20;
/// The longest a refused body is read behind its 413.
const DRAIN_TIME: Duration = Duration::from_secs(60);
/// A refused body whose client sends nothing for this long is not waited for any more (it
/// read the 413 and stopped).
const DRAIN_IDLE: Duration = Duration::from_secs(5);

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

/// Middleware: refuses a declared body over `limit` before reading it, drains what an
/// answer left unread behind it, and tells the extractors the limit.
pub async fn enforce(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limit as u64) {
        tracing::info!(
            length,
            limit,
            "request body over server.max_body_bytes refused"
        );
        if waits_for_continue(&req) {
            // Not polling the body means no `100 Continue`: the client sends nothing.
            return too_large(limit);
        }
        return drained_behind(too_large(limit), req.into_body().into_data_stream());
    }
    let waits = waits_for_continue(&req);
    let (parts, body) = req.into_parts();
    let left = Leftover::default();
    let body = if body.is_end_stream() {
        body
    } else {
        Body::from_stream(Tracked {
            inner: Some(body.into_data_stream()),
            started: false,
            left: left.clone(),
        })
    };
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(BodyLimit(limit));
    let response = next.run(req).await;
    let rest = left.lock().unwrap_or_else(|e| e.into_inner()).take();
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        // An answer that used the body (multipart may stop at its closing boundary).
        return response;
    }
    match rest {
        // Never asked for: the client sends nothing, there is nothing to drain.
        Some((_, false)) if waits => response,
        Some((rest, _)) => drained_behind(response, rest),
        None => response,
    }
}

fn waits_for_continue(req: &Request) -> bool {
    req.headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// The unread rest of a request body, handed back when its reader drops it, and whether
/// it was read at all.
type Leftover = Arc<Mutex<Option<(BodyDataStream, bool)>>>;

/// A request body that, dropped before its end, leaves the rest in `left`.
struct Tracked {
    inner: Option<BodyDataStream>,
    started: bool,
    left: Leftover,
}

impl Stream for Tracked {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.poll_next_unpin(cx);
        self.started = true;
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        polled
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take() {
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) = Some((rest, self.started));
        }
    }
}

/// `response` sent at once, its body followed by reading and dropping `rest`
/// before the answer ends: chunked, so the client has the whole problem before the end.
fn drained_behind(response: Response, rest: BodyDataStream) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let answer = futures::stream::once(axum::body::to_bytes(body, usize::MAX));
    let behind = futures::stream::once(drain(rest))
        .filter_map(|()| async { None::<Result<Bytes, axum::Error>> });
    Response::from_parts(parts, Body::from_stream(answer.chain(behind)))
}

/// Reads a body to its end (or first error, or a bound), keeping nothing.
async fn drain(mut data: BodyDataStream) {
    let mut read = 0u64;
    let reading = async {
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(DRAIN_IDLE, data.next()).await {
            read += chunk.len() as u64;
            if read > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, reading).await;
    tracing::debug!(read, "refused body drained");
}
