//! Conditional GETs of a job's views (the job, its results, posts and cost): they carry
//! `ETag: "v<version>"`, the job row's version, which moves whenever anything they show
//! changes (no hashing of bodies), and `Cache-Control: no-cache` so clients revalidate. A
//! request whose `If-None-Match` names the current tag (weak comparison, a list, or `*`)
//! gets `304 Not Modified` with no body, after reading the version alone.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::auth::Tenant;
use super::problem::ApiError;
use super::AppState;

const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// The entity tag of a job's views at this version.
pub fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// Whether an `If-None-Match` value names `tag`: `*`, or any entity-tag of the list whose
/// opaque part equals it (a `W/` prefix on either side does not matter).
pub fn none_match_names(if_none_match: &str, tag: &str) -> bool {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let mut rest = if_none_match.trim();
    if rest == "*" {
        return true;
    }
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let candidate = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(body) = candidate.strip_prefix('"') else {
            // Not an entity-tag: skip to the next list element.
            rest = candidate.split_once(',').map_or("", |(_, r)| r);
            continue;
        };
        let Some(end) = body.find('"') else {
            return false;
        };
        if &candidate[..end + 2] == tag {
            return true;
        }
        rest = &body[end + 1..];
    }
    false
}

/// The request's `If-None-Match` values, joined as one list (None without the header).
fn if_none_match(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Where a conditional request stands against the job's current version.
pub enum Check {
    /// The request's `If-None-Match` names it: answer this 304.
    NotModified(Response),
    /// The view is to be answered, tagged with this version.
    Current(i64),
}

/// Reads the version of the caller's job (alone, nothing else of it; 404 when it is not
/// the caller's) and checks the request's `If-None-Match` against it. For views read
/// after it (results, posts), so the tag never claims more than the body shows.
pub async fn check(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    headers: &HeaderMap,
) -> Result<Check, ApiError> {
    let version = state.app.job_version(&tenant.0, id).await?;
    Ok(match if_none_match(headers) {
        Some(wanted) if none_match_names(&wanted, &etag(version)) => {
            Check::NotModified(not_modified(version))
        }
        _ => Check::Current(version),
    })
}

/// The 304 when the request has an `If-None-Match` naming the job's current version;
/// None (and nothing read) without the header. For views whose row read brings the
/// version anyway (the job, its cost).
pub async fn unchanged(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    headers: &HeaderMap,
) -> Result<Option<Response>, ApiError> {
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return Ok(None);
    }
    Ok(match check(state, tenant, id, headers).await? {
        Check::NotModified(response) => Some(response),
        Check::Current(_) => None,
    })
}

/// `304 Not Modified` with the tag and no body.
pub fn not_modified(version: i64) -> Response {
    tagged(version, StatusCode::NOT_MODIFIED)
}

/// The view with its `ETag` and `Cache-Control: no-cache`.
pub fn tagged(version: i64, view: impl IntoResponse) -> Response {
    let mut response = view.into_response();
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&etag(version)) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(header::CACHE_CONTROL, NO_CACHE);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_the_version_quoted() {
        assert_eq!(etag(7), "\"v7\"");
    }

    #[test]
    fn if_none_match_compares_weakly_and_reads_lists() {
        let tag = etag(7);
        for yes in [
            "\"v7\"",
            "W/\"v7\"",
            "*",
            " * ",
            "\"v6\", \"v7\"",
            "\"a,b\", W/\"v7\"",
            "\"v1\",\"v7\"",
            "garbage, \"v7\"",
        ] {
            assert!(none_match_names(yes, &tag), "{yes} names {tag}");
        }
        for no in [
            "\"v6\"",
            "\"v77\"",
            "v7",
            "\"v7",
            "W/\"v70\", \"v8\"",
            "",
            "\"\"",
        ] {
            assert!(!none_match_names(no, &tag), "{no} does not name {tag}");
        }
        assert!(none_match_names("\"v7\"", "W/\"v7\""));
    }
}
