//! Path parameters and query strings whose rejections are the API's JSON
//! errors: a path parameter that is not UTF-8 or does not parse, or a query
//! parameter of the wrong type, unknown or out of range, is a 400 whose
//! `field` names the parameter, like a bad JSON body (see
//! [`super::json::ApiJson`]). axum's own extractors answer such requests
//! with plain text.
//!
//! Handlers take [`Path`] and [`Query`] from here in place of axum's, with
//! the same tuple-struct shape (`Path((env, name)): Path<(String, String)>`).

use axum::extract::rejection::PathRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// The request path's parameters, deserialised as axum's `Path` does.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => {
                // A [`Name`] in a tuple fails without its key: find it.
                if is_name_error(&rejection) {
                    if let Ok(raw) =
                        axum::extract::RawPathParams::from_request_parts(parts, state).await
                    {
                        if let Some((key, _)) = raw
                            .iter()
                            .find(|(_, v)| rampart_keys::valid_name(v).is_err())
                        {
                            return Err(ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_path",
                                format!("path parameter `{key}` is {NAME_RULE}"),
                            )
                            .with_field(key));
                        }
                    }
                }
                Err(path_error(&rejection))
            }
        }
    }
}

fn is_name_error(rejection: &PathRejection) -> bool {
    use axum::extract::path::ErrorKind;
    matches!(rejection, PathRejection::FailedToDeserializePathParams(e)
        if matches!(e.kind(), ErrorKind::Message(m) if m == NAME_RULE))
}

/// A path rejection as an API error. The parameter's value is not echoed.
fn path_error(rejection: &PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        // No parameters where the route has some: a routing bug, not input.
        tracing::error!(error = %rejection, "path parameters missing");
        return ApiError::internal();
    };
    let bad = |key: &str, message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", message).with_field(key)
    };
    match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            bad(key, format!("path parameter `{key}` is not valid UTF-8"))
        }
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => bad(
            key,
            format!("path parameter `{key}` is not a valid {expected_type}"),
        ),
        ErrorKind::DeserializeError { key, message, .. } => {
            bad(key, format!("path parameter `{key}`: {message}"))
        }
        ErrorKind::ParseErrorAtIndex { expected_type, .. }
        | ErrorKind::ParseError { expected_type, .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("a path parameter is not a valid {expected_type}"),
        ),
        ErrorKind::Message(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", message.clone())
        }
        // The rest (a wrong number of parameters, an unsupported type) are
        // mistakes in a handler's signature.
        other => {
            tracing::error!(error = %other, "path parameters do not fit the handler");
            ApiError::internal()
        }
    }
}

/// A key, environment, service or secret name taken from a request (a path
/// parameter or a body field), checked as it is deserialised, so a bad one
/// is a 400 whose `field` names the parameter or field rather than a plane
/// error that names neither. Same rule as [`rampart_keys::valid_name`];
/// the value is not echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

/// What a bad [`Name`] is told.
const NAME_RULE: &str =
    "not a valid name: use 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit";

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match rampart_keys::valid_name(&s) {
            Ok(()) => Ok(Name(s)),
            Err(_) => Err(serde::de::Error::custom(NAME_RULE)),
        }
    }
}

/// The query string, deserialised strictly: the failing parameter is named.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        parse_query(query).map(Query)
    }
}

/// Deserialises a query string, naming the parameter that failed.
fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
        let path = e.path().to_string();
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("invalid query string: {}", e.inner()),
        );
        if path != "." {
            err = err.with_field(path);
        }
        err
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<u32>,
        tier: Option<String>,
    }

    #[test]
    fn a_bad_query_parameter_is_named() {
        let e = parse_query::<Q>("limit=99999999999999999999").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("limit"));
        let e = parse_query::<Q>("limit=-1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"));
    }

    #[test]
    fn an_unknown_query_parameter_is_refused() {
        let e = parse_query::<Q>("tier=x&surprise=1").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("surprise"), "{}", e.message);
    }

    #[test]
    fn good_and_hostile_queries() {
        let q: Q = parse_query("limit=5&tier=%F0%9F%94%92").unwrap();
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.tier.as_deref(), Some("🔒"));
        let q: Q = parse_query("").unwrap();
        assert!(q.limit.is_none());
        // Invalid UTF-8 and NUL bytes: decoded lossily or refused, never a panic.
        for hostile in [
            "tier=%ff%fe",
            "tier=%00",
            "limit=%",
            "&&&=",
            "limit=5&limit=6",
        ] {
            let _ = parse_query::<Q>(hostile);
        }
    }
}
