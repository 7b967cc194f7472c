//! `/v1/keys`, `/v1/secrets` and `/v1/policies`: HTTP in front of the keys
//! and secrets planes. Handlers only translate: JSON and base64 in, a
//! [`Caller`] built from the credential, plane call, JSON out.

use std::collections::BTreeMap;

use axum::extract::State;

use super::extract::{Name, Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rampart_crypto::SecretBytes;
use rampart_identity::PrincipalKind;
use rampart_keys::policy::Statement;
use rampart_keys::{Caller, KeySpec, Principal};
use rampart_secrets::SecretKind;
use serde::Deserialize;
use serde_json::{json, Value};

use super::json::{ApiJson, B64Json};
use super::{ApiError, Authenticated, Credential, Recorded, RequestMeta, SharedState};

/// The routes of the keys and secrets planes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/keys/{env}", get(list_keys).post(create_key))
        .route("/v1/keys/{env}/decrypt", post(decrypt))
        .route("/v1/keys/{env}/rewrap", post(rewrap))
        .route("/v1/keys/{env}/{name}", get(describe_key))
        .route("/v1/keys/{env}/{name}/encrypt", post(encrypt))
        .route("/v1/keys/{env}/{name}/data-key", post(data_key))
        .route("/v1/keys/{env}/{name}/encrypt-batch", post(encrypt_batch))
        .route("/v1/keys/{env}/decrypt-batch", post(decrypt_batch))
        .route("/v1/keys/{env}/rewrap-batch", post(rewrap_batch))
        .route("/v1/keys/{env}/{name}/data-key-batch", post(data_key_batch))
        .route("/v1/keys/{env}/{name}/rotate", post(rotate_key))
        .route(
            "/v1/keys/{env}/{name}/schedule-deletion",
            post(schedule_deletion),
        )
        .route(
            "/v1/keys/{env}/{name}/cancel-deletion",
            post(cancel_deletion),
        )
        .route("/v1/secrets/{env}/{service}", get(list_secrets))
        .route(
            "/v1/secrets/{env}/{service}/{name}",
            put(put_secret).get(get_secret).delete(delete_secret),
        )
        .route(
            "/v1/secrets/{env}/{service}/{name}/restore",
            post(restore_secret),
        )
        .route(
            "/v1/secrets/{env}/{service}/{name}/rotate",
            post(rotate_secret),
        )
        .route("/v1/policies/{env}", get(get_policy).put(put_policy))
}

/// The caller a credential stands for, acting in environment `env`.
/// An admin acts in the environment named by the path, through the baseline
/// policy that allows `role:admin`. An identity principal acts only in its
/// own environments (an API key in its one environment; the planes enforce
/// the wall as well). A service principal is the service of its name
/// (`svc:<name>`), so `service:` principals and the caller-service condition
/// of keys policies match it; a user is its id with its roles.
fn caller(who: &Authenticated, meta: &RequestMeta, env: &str) -> Result<Caller, ApiError> {
    let principal = match &who.0 {
        Credential::Admin(p) => {
            let roles: Vec<&str> = p.roles.iter().map(String::as_str).collect();
            Principal::user(env, &p.principal, &roles)
        }
        Credential::Identity(p) => {
            if !p.environments.contains(env) {
                return Err(ApiError::forbidden(format!(
                    "this principal cannot act in {env:?}"
                )));
            }
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            match p.kind {
                PrincipalKind::Service => {
                    let mut svc = Principal::service(env, &p.name);
                    svc.roles = roles.iter().map(|r| (*r).to_owned()).collect();
                    svc
                }
                PrincipalKind::User | PrincipalKind::System => Principal::user(env, &p.id, &roles),
            }
        }
    };
    let mut c = Caller::direct(principal);
    c.request_id = Some(meta.request_id.clone());
    c.source = Some(rampart_edge::text::socket_addr_text(meta.peer));
    c.auth = who.auth_method().to_string();
    Ok(c)
}

fn require_admin(who: &Authenticated) -> Result<(), ApiError> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this endpoint needs an admin credential",
        ))
    }
}

fn b64(field: &'static str, text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text.as_bytes()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_base64",
            format!("{field} is not valid base64"),
        )
        .with_field(field)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: Name,
    #[serde(default)]
    description: String,
    rotation_period_days: Option<u32>,
}

async fn create_key(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let c = caller(&who, &meta, &env)?;
    let spec = KeySpec {
        description: body.description,
        rotation_period_days: body.rotation_period_days,
    };
    let info = st.planes()?.keys.create_key(&c, &body.name, spec).await?;
    Ok((StatusCode::CREATED, Json(json!(info))))
}

async fn list_keys(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let keys = st.planes()?.keys.list_keys(&c).await?;
    Ok(Json(json!({ "keys": keys })))
}

async fn describe_key(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    Ok(Json(json!(st.planes()?.keys.describe(&c, &name).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    plaintext: String,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

async fn encrypt(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
    ApiJson(body): ApiJson<EncryptBody>,
) -> Result<Recorded<B64Json>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let plain = SecretBytes::new(b64("plaintext", &body.plaintext)?);
    let ct = st
        .planes()?
        .keys
        .encrypt(&c, &name, plain.expose(), &body.context)
        .await?;
    Ok(Recorded(B64Json::object(&[("ciphertext", &ct)])))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CiphertextBody {
    ciphertext: String,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

async fn decrypt(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<CiphertextBody>,
) -> Result<Recorded<B64Json>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let ct = b64("ciphertext", &body.ciphertext)?;
    let plain = st
        .planes()?
        .keys
        .decrypt(&c, &ct, &body.context)
        .await
        .map_err(ciphertext_error)?;
    Ok(Recorded(B64Json::object(&[("plaintext", plain.expose())])))
}

async fn rewrap(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<CiphertextBody>,
) -> Result<Recorded<B64Json>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let ct = b64("ciphertext", &body.ciphertext)?;
    let out = st
        .planes()?
        .keys
        .rewrap(&c, &ct, &body.context)
        .await
        .map_err(ciphertext_error)?;
    Ok(Recorded(B64Json::object(&[("ciphertext", &out)])))
}

/// A keys error of a call whose one ciphertext is the body's `ciphertext`:
/// a malformed one names that field.
fn ciphertext_error(e: rampart_keys::KeysError) -> ApiError {
    let malformed = matches!(e, rampart_keys::KeysError::Malformed(_));
    let err = ApiError::from(e);
    if malformed {
        err.with_field("ciphertext")
    } else {
        err
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextBody {
    #[serde(default)]
    context: BTreeMap<String, String>,
}

async fn data_key(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
    ApiJson(body): ApiJson<ContextBody>,
) -> Result<Recorded<B64Json>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let dk = st
        .planes()?
        .keys
        .generate_data_key(&c, &name, &body.context)
        .await?;
    Ok(Recorded(B64Json::object(&[
        ("plaintext", dk.plaintext.expose()),
        ("ciphertext", &dk.wrapped),
    ])))
}

/// Most items one batch call takes.
const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBatchBody {
    items: Vec<EncryptBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CiphertextBatchBody {
    items: Vec<CiphertextBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextBatchBody {
    contexts: Vec<BTreeMap<String, String>>,
}

/// A batch must have 1 to [`MAX_BATCH_ITEMS`] items.
fn batch_size(field: &'static str, n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_BATCH_ITEMS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field} must hold 1 to {MAX_BATCH_ITEMS} items, not {n}"),
        )
        .with_field(field));
    }
    Ok(())
}

/// The answer of a batch call: each item's value, or the error a single
/// call would have answered (code and message, no status: the batch is a
/// 200). `bytes` is about how many bytes the values hold in all.
fn batch_results<T>(
    out: Vec<Result<T, rampart_keys::KeysError>>,
    bytes: usize,
    fields: impl Fn(&T, &mut B64Json),
) -> Response {
    let mut j = B64Json::results(bytes);
    for res in out {
        match res {
            Ok(v) => fields(&v, &mut j),
            Err(e) => {
                let e = ApiError::from(e);
                j.error_item(e.code, &e.message);
            }
        }
    }
    j.finish_results()
}

/// Decodes every item's base64 first: one bad item refuses the whole batch
/// with 400, naming it (`items[3].plaintext`).
fn b64_items<'a>(
    what: &'static str,
    texts: impl Iterator<Item = &'a str>,
) -> Result<Vec<Vec<u8>>, ApiError> {
    texts
        .enumerate()
        .map(|(i, t)| {
            B64.decode(t.as_bytes()).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_base64",
                    format!("items[{i}].{what} is not valid base64"),
                )
                .with_field(format!("items[{i}].{what}"))
            })
        })
        .collect()
}

async fn encrypt_batch(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
    ApiJson(body): ApiJson<EncryptBatchBody>,
) -> Result<Response, ApiError> {
    let c = caller(&who, &meta, &env)?;
    batch_size("items", body.items.len())?;
    let plains = b64_items("plaintext", body.items.iter().map(|i| i.plaintext.as_str()))?;
    let items: Vec<(Vec<u8>, BTreeMap<String, String>)> = plains
        .into_iter()
        .zip(body.items)
        .map(|(p, i)| (p, i.context))
        .collect();
    let out = st.planes()?.keys.encrypt_batch(&c, &name, &items).await;
    let bytes = items.iter().map(|(p, _)| p.len() + 64).sum();
    for (p, _) in items {
        drop(SecretBytes::new(p));
    }
    Ok(batch_results(out, bytes, |ct, j| {
        j.item(&[("ciphertext", ct)])
    }))
}

/// The items of a batch of ciphertexts, decoded; the first bad one named.
fn ciphertext_items(
    body: CiphertextBatchBody,
) -> Result<Vec<(Vec<u8>, rampart_keys::Context)>, ApiError> {
    batch_size("items", body.items.len())?;
    let cts = b64_items(
        "ciphertext",
        body.items.iter().map(|i| i.ciphertext.as_str()),
    )?;
    Ok(cts
        .into_iter()
        .zip(body.items)
        .map(|(ct, i)| (ct, i.context))
        .collect())
}

async fn decrypt_batch(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<CiphertextBatchBody>,
) -> Result<Response, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let items = ciphertext_items(body)?;
    let out = st.planes()?.keys.decrypt_batch(&c, &items).await;
    let bytes = items.iter().map(|(ct, _)| ct.len()).sum();
    Ok(batch_results(out, bytes, |pt, j| {
        j.item(&[("plaintext", pt.expose())])
    }))
}

async fn rewrap_batch(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<CiphertextBatchBody>,
) -> Result<Response, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let items = ciphertext_items(body)?;
    let out = st.planes()?.keys.rewrap_batch(&c, &items).await;
    let bytes = items.iter().map(|(ct, _)| ct.len()).sum();
    Ok(batch_results(out, bytes, |ct, j| {
        j.item(&[("ciphertext", ct)])
    }))
}

async fn data_key_batch(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
    ApiJson(body): ApiJson<ContextBatchBody>,
) -> Result<Response, ApiError> {
    let c = caller(&who, &meta, &env)?;
    batch_size("contexts", body.contexts.len())?;
    let out = st
        .planes()?
        .keys
        .generate_data_key_batch(&c, &name, &body.contexts)
        .await;
    let bytes = out.len() * 160;
    Ok(batch_results(out, bytes, |dk, j| {
        j.item(&[
            ("plaintext", dk.plaintext.expose()),
            ("ciphertext", &dk.wrapped),
        ])
    }))
}

async fn rotate_key(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let v = st.planes()?.keys.rotate(&c, &name).await?;
    Ok(Json(json!({ "version": v })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeletionBody {
    days: Option<u32>,
}

async fn schedule_deletion(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
    ApiJson(body): ApiJson<DeletionBody>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let at = st
        .planes()?
        .keys
        .schedule_deletion(&c, &name, body.days)
        .await?;
    Ok(Json(json!({ "delete_at": at })))
}

async fn cancel_deletion(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, name)): Path<(Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    st.planes()?.keys.cancel_deletion(&c, &name).await?;
    Ok(Json(json!({ "cancelled": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// The value as text, or
    value: Option<String>,
    /// the value as base64 for binary data.
    value_base64: Option<String>,
    #[serde(default = "generic")]
    kind: SecretKind,
}

fn generic() -> SecretKind {
    SecretKind::Generic
}

async fn put_secret(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service, name)): Path<(Name, Name, Name)>,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let value = zeroize::Zeroizing::new(match (body.value, body.value_base64) {
        (Some(v), None) => v.into_bytes(),
        (None, Some(b)) => b64("value_base64", &b)?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "give exactly one of value and value_base64",
            )
            .with_field("value"))
        }
    });
    let v = st
        .planes()?
        .secrets
        .put(&c, &service, &name, &value, body.kind)
        .await?;
    Ok(Json(json!({ "version": v })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
}

async fn get_secret(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service, name)): Path<(Name, Name, Name)>,
    Query(q): Query<VersionQuery>,
) -> Result<Recorded<Json<Value>>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let s = st
        .planes()?
        .secrets
        .get(&c, &service, &name, q.version)
        .await?;
    let bytes = s.value.expose();
    Ok(Recorded(Json(json!({
        "version": s.version,
        "kind": s.kind,
        "created_at": s.created_at,
        "value": std::str::from_utf8(bytes).ok(),
        "value_base64": B64.encode(bytes),
    }))))
}

async fn list_secrets(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service)): Path<(Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let list = st.planes()?.secrets.list(&c, &service).await?;
    Ok(Json(json!({ "secrets": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryQuery {
    recovery_days: Option<u32>,
}

async fn delete_secret(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service, name)): Path<(Name, Name, Name)>,
    Query(q): Query<RecoveryQuery>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let until = st
        .planes()?
        .secrets
        .delete(&c, &service, &name, q.recovery_days)
        .await?;
    Ok(Json(json!({ "recover_until": until })))
}

async fn restore_secret(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service, name)): Path<(Name, Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    st.planes()?.secrets.restore(&c, &service, &name).await?;
    Ok(Json(json!({ "restored": true })))
}

async fn rotate_secret(
    State(st): State<SharedState>,
    who: Authenticated,
    meta: RequestMeta,
    Path((env, service, name)): Path<(Name, Name, Name)>,
) -> Result<Json<Value>, ApiError> {
    let c = caller(&who, &meta, &env)?;
    let v = st.planes()?.secrets.rotate(&c, &service, &name).await?;
    Ok(Json(json!({ "version": v })))
}

async fn get_policy(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(env): Path<Name>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&who)?;
    let statements = st.planes()?.keys.policies().get(&env).await?;
    Ok(Json(json!({ "statements": *statements })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    statements: Vec<Statement>,
}

async fn put_policy(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(env): Path<Name>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&who)?;
    st.planes()?
        .keys
        .policies()
        .set(&env, body.statements)
        .await?;
    Ok(Json(json!({ "updated": true })))
}
