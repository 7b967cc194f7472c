//! Strict JSON request bodies: unknown fields, wrong types and bad syntax
//! become 400 errors that name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON body deserialised with the failing field's path reported.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            )
            .with_field("content-type"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body rejected: {e}"),
            )
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let parsed = serde_path_to_error::deserialize::<_, T>(&mut de);
        match parsed {
            Ok(v) => match de.end() {
                Ok(()) => Ok(ApiJson(v)),
                Err(_) => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "trailing characters after the JSON value",
                )),
            },
            Err(e) => {
                // The path names the failing field, unknown fields included.
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = if inner.is_syntax() || inner.is_eof() {
                    format!(
                        "malformed JSON at line {} column {}",
                        inner.line(),
                        inner.column()
                    )
                } else {
                    inner.to_string()
                };
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
                if path != "." {
                    err = err.with_field(path);
                }
                Err(err)
            }
        }
    }
}
