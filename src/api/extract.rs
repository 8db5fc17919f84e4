//! Path and query extractors whose every rejection is a 400 problem naming the parameter
//! (`id: not a UUID`, `limit: invalid digit found in string`), in place of axum's
//! `text/plain` ones. The JSON body extractor is [`super::problem::ApiJson`].

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::{ApiError, FieldError};

/// `Path<T>`, rejected as a 400 naming the path parameter.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                let (field, message) = match err.kind() {
                    ErrorKind::ParseErrorAtKey {
                        key, expected_type, ..
                    } => (key.clone(), format!("not a valid {expected_type}")),
                    ErrorKind::DeserializeError { key, message, .. } => {
                        (key.clone(), path_message(message))
                    }
                    ErrorKind::InvalidUtf8InPathParam { key } => {
                        (key.clone(), "not valid UTF-8".to_string())
                    }
                    // A handler whose type does not fit its route: the server's fault.
                    ErrorKind::UnsupportedType { .. }
                    | ErrorKind::WrongNumberOfParameters { .. } => {
                        return Err(ApiError::internal(err.body_text()))
                    }
                    other => ("path".to_string(), path_message(&other.to_string())),
                };
                Err(bad_parameter(field, message))
            }
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

/// The words a client reads about a path value that did not parse.
fn path_message(message: &str) -> String {
    if message.starts_with("UUID parsing failed") {
        "not a UUID".to_string()
    } else {
        message.to_string()
    }
}

/// `Query<T>`, rejected as a 400 naming the query parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(ApiQuery)
    }
}

/// Parses a query string, naming the parameter that does not fit.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "query".to_string()
        } else {
            path
        };
        bad_parameter(field, err.into_inner().to_string())
    })
}

/// A 400 about one parameter.
pub fn bad_parameter(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    let (field, message) = (field.into(), message.into());
    ApiError::BadRequest {
        detail: format!("{field}: {message}"),
        errors: vec![FieldError { field, message }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dto::JobListQuery;

    fn field_of(err: ApiError) -> (String, String) {
        match err {
            ApiError::BadRequest { errors, .. } => {
                (errors[0].field.clone(), errors[0].message.clone())
            }
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn a_query_that_does_not_fit_names_the_parameter() {
        let (field, message) = field_of(parse_query::<JobListQuery>("limit=abc").unwrap_err());
        assert_eq!(field, "limit");
        assert!(message.contains("invalid digit"), "{message}");
        let (field, message) = field_of(parse_query::<JobListQuery>("status=bogus").unwrap_err());
        assert_eq!(field, "status");
        assert!(message.contains("unknown variant `bogus`"), "{message}");
        assert!(message.contains("`queued`"), "{message}");
        let ok: JobListQuery = parse_query("limit=5&cursor=abc&other=1").unwrap();
        assert_eq!((ok.limit, ok.cursor.as_deref()), (Some(5), Some("abc")));
    }
}
