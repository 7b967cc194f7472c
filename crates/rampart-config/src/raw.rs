//! The raw, span-carrying form of the file, exactly as serde reads it.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub node: RawNode,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub roles: Vec<RawRole>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub audit: RawAudit,
    pub edge: Option<RawEdge>,
    #[serde(default)]
    pub identity: RawIdentity,
    pub store: Option<S<RawStore>>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub url_env: Option<S<String>>,
    pub sync_interval_ms: Option<S<i64>>,
    pub key_prefix: Option<S<String>>,
    pub tls_ca: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub backend: S<String>,
    pub url_env: Option<S<String>>,
    pub pool_size: Option<S<i64>>,
    pub tls_ca: Option<S<String>>,
    pub connect_timeout_seconds: Option<S<i64>>,
    pub reload_interval_ms: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub access_ttl_seconds: Option<S<i64>>,
    pub refresh_ttl_seconds: Option<S<i64>>,
    pub session_max_seconds: Option<S<i64>>,
    pub max_elevation_seconds: Option<S<i64>>,
    pub elevation_request_ttl_seconds: Option<S<i64>>,
    pub throttle: Option<RawThrottle>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThrottle {
    pub free_failures_per_account: Option<S<i64>>,
    pub free_failures_per_source: Option<S<i64>>,
    pub base_delay_seconds: Option<S<i64>>,
    pub max_delay_seconds: Option<S<i64>>,
    pub forget_after_seconds: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEdge {
    pub http_listen: Option<S<String>>,
    pub https_listen: Option<S<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    #[serde(default)]
    pub proxy_protocol_from: Vec<S<String>>,
    #[serde(default)]
    pub allow_cidrs: Vec<S<String>>,
    #[serde(default)]
    pub deny_cidrs: Vec<S<String>>,
    #[serde(default)]
    pub waf_rules: Vec<S<String>>,
    pub hsts_max_age_seconds: Option<S<i64>>,
    pub hsts_preload: Option<S<bool>>,
    pub tls_min_version: Option<S<String>>,
    pub tls_session_cache: Option<S<i64>>,
    pub tls_session_tickets: Option<S<bool>>,
    pub security_headers: Option<std::collections::BTreeMap<String, S<String>>>,
    pub max_body_bytes: Option<S<i64>>,
    pub max_buffered_body_bytes: Option<S<i64>>,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub client_ca: Vec<S<String>>,
    pub client_auth: Option<S<String>>,
    #[serde(default)]
    pub revoked_client_serials: Vec<S<String>>,
    pub rate_limits: Option<RawRateLimits>,
    pub balance: Option<S<String>>,
    pub connect_timeout_ms: Option<S<i64>>,
    pub upstream_timeout_seconds: Option<S<i64>>,
    pub header_read_timeout_seconds: Option<S<i64>>,
    pub body_read_timeout_seconds: Option<S<i64>>,
    pub send_timeout_seconds: Option<S<i64>>,
    pub keepalive_timeout_seconds: Option<S<i64>>,
    pub drain_seconds: Option<S<i64>>,
    pub worker_threads: Option<S<i64>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_per_client: Option<S<i64>>,
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub gzip: Option<RawGzip>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGzip {
    pub min_bytes: Option<S<i64>>,
    pub types: Option<Vec<S<String>>>,
    pub level: Option<S<i64>>,
    pub max_streams: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub failures_to_open: Option<S<i64>>,
    pub open_seconds: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: Option<S<String>>,
    pub interval_ms: Option<S<i64>>,
    pub timeout_ms: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub deploy_window_ms: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimits {
    pub per_client: Option<RawRate>,
    pub per_client_auth: Option<RawRate>,
    pub per_route: Option<RawRate>,
    pub per_principal: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub names: Vec<S<String>>,
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Option<S<String>>,
    pub data_dir: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub listen: Option<S<String>>,
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub client_ca: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    pub name: S<String>,
    #[serde(default)]
    pub production: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: S<String>,
    pub environment: S<String>,
    pub port: S<i64>,
    #[serde(default)]
    pub upstreams: Vec<S<RawUpstream>>,
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, S<String>>,
    pub health_path: Option<S<String>>,
    pub tls_ca: Option<S<String>>,
    pub tls_server_name: Option<S<String>>,
    pub tls_client_cert: Option<S<String>>,
    pub tls_client_key: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub balance: Option<S<String>>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: S<String>,
    pub path_prefix: Option<S<String>>,
    pub service: Option<S<String>>,
    pub redirect: Option<S<String>>,
    pub redirect_status: Option<S<i64>>,
    pub auth: Option<S<String>>,
    #[serde(default)]
    pub roles: Vec<S<String>>,
    #[serde(default)]
    pub allow_cidrs: Vec<S<String>>,
    #[serde(default)]
    pub deny_cidrs: Vec<S<String>>,
    pub rate_limit: Option<RawRate>,
    pub max_body_bytes: Option<S<i64>>,
    pub upstream_timeout_seconds: Option<S<i64>>,
    pub json_schema: Option<S<String>>,
    pub waf: Option<S<String>>,
    #[serde(default)]
    pub waf_exclusions: Vec<S<RawWafExclusion>>,
    #[serde(default)]
    pub websocket: bool,
    pub stream_request_body: Option<S<bool>>,
    pub upstream_path_prefix: Option<S<String>>,
    pub gzip: Option<bool>,
    #[serde(default)]
    pub response_headers: std::collections::BTreeMap<String, S<String>>,
    #[serde(default)]
    pub remove_response_headers: Vec<S<String>>,
    #[serde(default)]
    pub request_headers: std::collections::BTreeMap<String, S<String>>,
    #[serde(default)]
    pub remove_request_headers: Vec<S<String>>,
    #[serde(default)]
    pub methods: Vec<S<String>>,
    pub cors: Option<S<RawCors>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    #[serde(default)]
    pub origins: Vec<S<String>>,
    #[serde(default)]
    pub methods: Vec<S<String>>,
    #[serde(default)]
    pub headers: Vec<S<String>>,
    #[serde(default)]
    pub expose_headers: Vec<S<String>>,
    pub credentials: Option<S<bool>>,
    pub max_age_seconds: Option<S<i64>>,
}

/// `{ rule = N }`, `{ tag = "…" }`, either with `target = "COLLECTION[:key]"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWafExclusion {
    pub rule: Option<S<i64>>,
    pub tag: Option<S<String>>,
    pub target: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub burst: S<i64>,
    pub per_second: S<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub name: S<String>,
    #[serde(default)]
    pub permissions: Vec<S<String>>,
    #[serde(default)]
    pub require_mfa: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub name: S<String>,
    pub environment: S<String>,
    pub service: Option<S<String>>,
    pub rotation_days: Option<S<i64>>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default)]
    pub retention: RawRetention,
    pub checkpoint_every_records: Option<S<i64>>,
    pub checkpoint_every_seconds: Option<S<i64>>,
    pub checkpoint_dir: Option<S<String>>,
    pub commit_delay_us: Option<S<i64>>,
    pub commit_siblings: Option<S<i64>>,
    pub copy_delay_ms: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    pub security: Option<S<i64>>,
    pub processing: Option<S<i64>>,
    pub application: Option<S<i64>>,
    pub network: Option<S<i64>>,
    #[serde(rename = "api-access")]
    pub api_access: Option<S<i64>>,
}

/// A problem found while reading raw TOML.
pub(crate) struct RawError {
    pub span: Option<std::ops::Range<usize>>,
    pub path: String,
    pub message: String,
}

pub(crate) fn parse(text: &str) -> Result<RawConfig, RawError> {
    let de = toml::Deserializer::parse(text).map_err(|e| RawError {
        span: e.span(),
        path: String::new(),
        message: format!("invalid TOML: {}", first_line(e.message())),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` shows up in serde's path as private segments; drop them.
        let path = e
            .path()
            .to_string()
            .split('.')
            .filter(|seg| !seg.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        let inner = e.into_inner();
        RawError {
            span: inner.span(),
            path: if path == "." { String::new() } else { path },
            message: first_line(inner.message()).to_string(),
        }
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

/// One of a service's `upstreams`: `"host:port"`, or
/// `{ addr = "host:port", weight = N }`.
#[derive(Debug)]
pub(crate) struct RawUpstream {
    pub addr: String,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = RawUpstream;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""host:port" or { addr = "host:port", weight = N, backup = B }"#)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream {
                    addr: v.to_owned(),
                    weight: None,
                    backup: None,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawUpstream, A::Error> {
                use serde::de::Error;
                const FIELDS: &[&str] = &["addr", "weight", "backup"];
                let (mut addr, mut weight, mut backup) = (None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "addr" if addr.is_none() => addr = Some(map.next_value::<String>()?),
                        "weight" if weight.is_none() => weight = Some(map.next_value::<i64>()?),
                        "backup" if backup.is_none() => backup = Some(map.next_value::<bool>()?),
                        "addr" => return Err(A::Error::duplicate_field("addr")),
                        "weight" => return Err(A::Error::duplicate_field("weight")),
                        "backup" => return Err(A::Error::duplicate_field("backup")),
                        other => return Err(A::Error::unknown_field(other, FIELDS)),
                    }
                }
                Ok(RawUpstream {
                    addr: addr.ok_or_else(|| A::Error::missing_field("addr"))?,
                    weight,
                    backup,
                })
            }
        }
        d.deserialize_any(Entry)
    }
}
