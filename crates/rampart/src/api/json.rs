//! Strict JSON request bodies: unknown fields, wrong types and bad syntax
//! become 400 errors that name the field. And [`B64Json`], the answers of
//! the crypto endpoints, written straight into the response body.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::DeserializeOwned;

use super::ApiError;

/// How long a client may take to send a request body, from the moment its
/// handler asks for it.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
        // A client that sends its body slowly holds a connection and a
        // task: the whole body has a deadline, as the edge's bodies do.
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let bytes = read.map_err(|e| {
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
                // A missing field is reported at its object's path: name
                // the field itself.
                let missing = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                let field = match (path.as_str(), missing) {
                    (".", None) => None,
                    (".", Some(name)) => Some(name),
                    (_, None) => Some(path),
                    (_, Some(name)) => Some(format!("{path}.{name}")),
                };
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
                if let Some(field) = field {
                    err = err.with_field(field);
                }
                Err(err)
            }
        }
    }
}

/// An optional JSON body: none when the request has no `Content-Type`
/// and no content; otherwise as [`ApiJson`].
impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let h = req.headers();
        let empty = h.get(header::CONTENT_TYPE).is_none()
            && h.get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        if empty {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// A JSON answer made of objects whose values are the base64 of bytes
/// (`{"ciphertext":"…"}`, `{"results":[{"plaintext":"…"},{"error":…}]}`),
/// written straight into the body: base64 needs no JSON escaping, so
/// nothing is built twice, and a plaintext is copied once (into the
/// body) rather than through a string and a `serde_json::Value`.
pub struct B64Json {
    out: Vec<u8>,
    /// Whether the next field or array item is the first of its object or
    /// array (no comma before it).
    first: bool,
}

impl B64Json {
    /// An empty answer with room for about `bytes` bytes of binary values.
    pub fn with_capacity(bytes: usize) -> Self {
        B64Json {
            out: Vec::with_capacity(bytes.div_ceil(3) * 4 + 64),
            first: true,
        }
    }

    /// One object of base64 fields: `{"name":"b64",…}`. Field names are
    /// the handlers' own constants, never input.
    pub fn object(fields: &[(&'static str, &[u8])]) -> Self {
        let mut j = B64Json::with_capacity(fields.iter().map(|(_, v)| v.len()).sum());
        j.open_object(fields);
        j
    }

    /// Opens `{"results":[`.
    pub fn results(capacity: usize) -> Self {
        let mut j = B64Json::with_capacity(capacity);
        j.out.extend_from_slice(b"{\"results\":[");
        j
    }

    /// An item of `results`: an object of base64 fields.
    pub fn item(&mut self, fields: &[(&'static str, &[u8])]) {
        self.comma();
        self.open_object(fields);
    }

    /// An item of `results`: `{"error":{"code":…,"message":…}}`.
    pub fn error_item(&mut self, code: &str, message: &str) {
        self.comma();
        let e = serde_json::json!({ "error": { "code": code, "message": message } });
        // Serialising a Value into a String cannot fail.
        self.out.extend_from_slice(e.to_string().as_bytes());
    }

    /// The finished answer, 200.
    pub fn finish_results(mut self) -> Response {
        self.out.extend_from_slice(b"]}");
        self.into_response()
    }

    fn comma(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn open_object(&mut self, fields: &[(&'static str, &[u8])]) {
        self.out.push(b'{');
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"\":\"");
            push_b64(&mut self.out, value);
            self.out.push(b'"');
        }
        self.out.push(b'}');
    }
}

/// Appends the base64 of `bytes` (one pass of the engine over the whole
/// input, rather than `encode_string`'s chunks).
fn push_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = out
        .get_mut(start..)
        .map_or(0, |tail| B64.encode_slice(bytes, tail).unwrap_or(0));
    out.truncate(start + written);
}

impl IntoResponse for B64Json {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.out));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A body that sends its first bytes and then nothing, for ever: 408
    /// once the deadline passes (on tokio's paused clock, which moves on
    /// by itself once everything waits).
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_gets_408() {
        struct Stalls(bool);
        impl hyper::body::Body for Stalls {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>>
            {
                if std::mem::replace(&mut self.0, true) {
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                    b"{\"a\":",
                )))))
            }
        }
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::new(Stalls(false)))
            .unwrap();
        let started = tokio::time::Instant::now();
        let Err(e) = ApiJson::<serde_json::Value>::from_request(req, &()).await else {
            panic!("a body that never ends was accepted");
        };
        assert!(started.elapsed() >= BODY_READ_TIMEOUT);
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body_json(r).await["error"]["code"], "body_timeout");
    }

    #[tokio::test]
    async fn objects_and_results_are_the_json_a_value_would_give() {
        let r =
            B64Json::object(&[("ciphertext", b"\x00\xffab"), ("plaintext", b"")]).into_response();
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        assert_eq!(
            body_json(r).await,
            serde_json::json!({ "ciphertext": B64.encode(b"\x00\xffab"), "plaintext": "" })
        );

        let mut j = B64Json::results(16);
        j.item(&[("ciphertext", b"one")]);
        j.error_item("denied", "a \"quoted\" message\n");
        j.item(&[("ciphertext", b"two")]);
        assert_eq!(
            body_json(j.finish_results()).await,
            serde_json::json!({ "results": [
                { "ciphertext": B64.encode(b"one") },
                { "error": { "code": "denied", "message": "a \"quoted\" message\n" } },
                { "ciphertext": B64.encode(b"two") },
            ] })
        );
        assert_eq!(
            body_json(B64Json::results(0).finish_results()).await,
            serde_json::json!({ "results": [] })
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        id: u32,
    }

    async fn field_of(body: &str) -> Option<String> {
        let req = Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        match ApiJson::<Outer>::from_request(req, &()).await {
            Ok(_) => panic!("{body} parsed"),
            Err(e) => body_json(e.into_response()).await["error"]["field"]
                .as_str()
                .map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_missing_field_is_named_where_it_is_missing() {
        assert_eq!(field_of("{}").await.as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name":"a","inner":{}}"#).await.as_deref(),
            Some("inner.id")
        );
        assert_eq!(field_of(r#"{"name":5}"#).await.as_deref(), Some("name"));
        assert_eq!(
            field_of(r#"{"name":"a","extra":1}"#).await.as_deref(),
            Some("extra")
        );
        assert_eq!(field_of("[").await, None);
    }
}
