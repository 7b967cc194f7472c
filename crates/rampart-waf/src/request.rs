//! What the edge hands the engine and what it gets back.

use std::borrow::Cow;
use std::net::IpAddr;

/// An HTTP request as it arrived, before any normalisation. Its fields
/// borrow or own their bytes: the edge lends the engine the request it
/// already holds (`Request<'a>`), without copying a header; the builder
/// methods make an owned one (`Request<'static>`).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: Cow<'a, str>,
    /// The request target exactly as sent (path and query, or absolute form).
    pub uri: Cow<'a, str>,
    /// The protocol, e.g. `HTTP/1.1`.
    pub protocol: Cow<'a, str>,
    /// The client address.
    pub remote_addr: IpAddr,
    /// The client port.
    pub remote_port: u16,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<Field<'a>>,
    /// The request body (empty when there is none).
    pub body: Cow<'a, [u8]>,
}

/// One header field: its name as sent and its value.
pub type Field<'a> = (Cow<'a, str>, Cow<'a, [u8]>);

impl Request<'static> {
    /// A request with no headers and no body, from 127.0.0.1.
    pub fn new(method: &str, uri: &str) -> Request<'static> {
        Request {
            method: Cow::Owned(method.to_string()),
            uri: Cow::Owned(uri.to_string()),
            protocol: Cow::Borrowed("HTTP/1.1"),
            remote_addr: IpAddr::from([127, 0, 0, 1]),
            remote_port: 0,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }
}

impl<'a> Request<'a> {
    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request<'a> {
        self.headers
            .push((Cow::Owned(name.to_string()), Cow::Owned(value.into())));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request<'a> {
        self.body = Cow::Owned(body.into());
        self
    }
}

/// An upstream response as the edge received it, for phases 3 and 4; it
/// borrows or owns its bytes as [`Request`] does.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The protocol, e.g. `HTTP/1.1`.
    pub protocol: Cow<'a, str>,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<Field<'a>>,
    /// The response body, or as much of it as the edge buffered (inspected
    /// only with `SecResponseBodyAccess On` and a listed media type).
    pub body: Cow<'a, [u8]>,
}

impl Response<'static> {
    /// A response with this status, no headers and no body.
    pub fn new(status: u16) -> Response<'static> {
        Response {
            status,
            protocol: Cow::Borrowed("HTTP/1.1"),
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }
}

impl<'a> Response<'a> {
    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Response<'a> {
        self.headers
            .push((Cow::Owned(name.to_string()), Cow::Owned(value.into())));
        self
    }

    /// Sets the body (builder style).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response<'a> {
        self.body = Cow::Owned(body.into());
        self
    }
}

/// What the edge must do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let it through.
    Pass,
    /// Answer with this status and do not forward.
    Deny {
        /// HTTP status to send.
        status: u16,
    },
    /// Close the connection without answering.
    Drop,
    /// Answer with a redirect.
    Redirect {
        /// HTTP status (302 unless the rule set one).
        status: u16,
        /// Where to.
        location: String,
    },
}

/// One rule that matched and asked to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule id.
    pub id: u64,
    /// The phase it ran in (1 request headers, 2 request body, 3 response
    /// headers, 4 response body).
    pub phase: u8,
    /// `msg`, macros expanded.
    pub msg: String,
    /// `logdata`, macros expanded.
    pub data: String,
    /// Severity 0 (emergency) to 7 (debug), if the rule set one.
    pub severity: Option<u8>,
    /// `tag` values, shared with the rule (a match copies no strings).
    pub tags: std::sync::Arc<[String]>,
    /// The variable that matched last, e.g. `ARGS:id`.
    pub matched_var_name: String,
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What to do. Always `Pass` in detection-only mode.
    pub action: Action,
    /// The rule whose disruptive action decided, if any (also set in
    /// detection-only mode, where it is not enforced).
    pub disrupted_by: Option<u64>,
    /// Rules that matched and log (CRS's `nolog` rules are left out).
    pub matched_rules: Vec<RuleMatch>,
    /// Every rule id that matched, logged or not, in order.
    pub matched_ids: Vec<u64>,
    /// `tx.blocking_inbound_anomaly_score` (CRS), or `tx.anomaly_score`.
    pub anomaly_score: i64,
    /// `tx.blocking_outbound_anomaly_score` (CRS); 0 until the response
    /// phases have run.
    pub outbound_anomaly_score: i64,
}

impl Verdict {
    /// True when the request may be forwarded.
    pub fn is_pass(&self) -> bool {
        self.action == Action::Pass
    }
}
