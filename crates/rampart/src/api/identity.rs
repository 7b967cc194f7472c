//! `/v1/auth`, `/v1/users`, `/v1/teams`, `/v1/apikeys`, `/v1/elevations`
//! and `/.well-known/jwks.json`: HTTP in front of the identity plane.
//! Handlers only translate: strict JSON in, the caller as an identity
//! [`Principal`], one [`rampart_identity::Identity`] call, JSON out. Every
//! authorisation decision is the identity plane's; every error goes through
//! `From<IdentityError> for ApiError`.

use std::collections::BTreeSet;

use axum::extract::State;

use super::extract::{Path, Query};
use axum::http::header::{HeaderValue, CACHE_CONTROL};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rampart_identity::{LoginRequest, NewUser, Principal, PrincipalKind, Role, PLATFORM_ENV};
use serde::Deserialize;
use serde_json::{json, Value};

use super::json::ApiJson;
use super::{ApiError, AppState, Authenticated, Credential, RequestMeta, SharedState};

/// The identity routes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/token", post(exchange))
        .route("/v1/auth/signing-keys/rotate", post(rotate_signing_key))
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{user}", get(get_user))
        .route("/v1/users/{user}/roles", put(set_roles))
        .route("/v1/users/{user}/disable", post(disable_user))
        .route("/v1/users/{user}/enable", post(enable_user))
        .route("/v1/users/{user}/password", post(set_password))
        .route("/v1/users/{user}/sessions/revoke", post(revoke_sessions))
        .route("/v1/users/{user}/totp", post(enrol_totp))
        .route("/v1/users/{user}/totp/confirm", post(confirm_totp))
        .route("/v1/teams", get(list_teams).post(create_team))
        .route("/v1/apikeys", get(list_api_keys).post(create_api_key))
        .route("/v1/apikeys/{id}", axum::routing::delete(revoke_api_key))
        .route(
            "/v1/elevations",
            get(list_elevations).post(request_elevation),
        )
        .route("/v1/elevations/{id}/approve", post(approve_elevation))
        .route("/v1/elevations/{id}/deny", post(deny_elevation))
}

/// The caller as the identity plane sees it. The bootstrap admin credential
/// is the local operator ([`Principal::system`]) in `platform` and every
/// configured environment.
fn actor(st: &AppState, who: &Authenticated) -> Result<Principal, ApiError> {
    match &who.0 {
        Credential::Admin(p) => {
            let mut envs: Vec<&str> = vec![PLATFORM_ENV];
            envs.extend(st.environments.iter().map(String::as_str));
            let mut sys = Principal::system(&envs);
            sys.name = p.principal.clone();
            sys.auth_method = "bootstrap-credential".into();
            Ok(sys)
        }
        Credential::Identity(p) => Ok(p.clone()),
    }
}

fn source(meta: &RequestMeta) -> String {
    meta.peer.ip().to_string()
}

async fn jwks(State(st): State<SharedState>) -> Result<Response, ApiError> {
    let body = st.identity()?.jwks();
    Ok((
        [(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        )],
        Json(body),
    )
        .into_response())
}

async fn login(
    State(st): State<SharedState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<Value>, ApiError> {
    let tokens = st.identity()?.login(&body, Some(&source(&meta))).await?;
    Ok(Json(json!(tokens)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(st): State<SharedState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    let tokens = st
        .identity()?
        .refresh(&body.refresh_token, Some(&source(&meta)))
        .await?;
    Ok(Json(json!(tokens)))
}

async fn logout(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    st.identity()?.logout(&p).await?;
    Ok(Json(json!({"status": "logged_out"})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    api_key: String,
}

/// An API key for a session limited to the key's environment.
async fn exchange(
    State(st): State<SharedState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<ExchangeBody>,
) -> Result<Json<Value>, ApiError> {
    let tokens = st
        .identity()?
        .exchange_api_key(&body.api_key, Some(&source(&meta)))
        .await?;
    Ok(Json(json!(tokens)))
}

async fn rotate_signing_key(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    let kid = st.identity()?.rotate_signing_key(&p).await?;
    Ok(Json(json!({"kid": kid})))
}

// ------------------------------------------------------------------- users

fn default_kind() -> PrincipalKind {
    PrincipalKind::User
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    #[serde(default = "default_kind")]
    kind: PrincipalKind,
    roles: BTreeSet<Role>,
    #[serde(default)]
    teams: Vec<String>,
    environments: BTreeSet<String>,
    #[serde(default)]
    password: Option<String>,
}

async fn create_user(
    State(st): State<SharedState>,
    who: Authenticated,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = actor(&st, &who)?;
    if body.kind == PrincipalKind::System {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "kind must be user or service",
        )
        .with_field("kind"));
    }
    let new = NewUser {
        name: body.name,
        kind: body.kind,
        roles: body.roles,
        teams: body.teams,
        environments: body.environments,
        password: body.password,
    };
    let user = st.identity()?.create_user(&p, new).await?;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

async fn list_users(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    Ok(Json(json!({"users": st.identity()?.list_users(&p)?})))
}

async fn get_user(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    Ok(Json(json!(st.identity()?.get_user(&p, &user)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRoles {
    roles: BTreeSet<Role>,
}

async fn set_roles(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<SetRoles>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    Ok(Json(json!(
        st.identity()?.set_roles(&p, &user, body.roles).await?
    )))
}

async fn set_disabled(
    st: &AppState,
    who: &Authenticated,
    user: &str,
    disabled: bool,
) -> Result<Json<Value>, ApiError> {
    let p = actor(st, who)?;
    let id = st.identity()?;
    id.set_disabled(&p, user, disabled).await?;
    Ok(Json(json!({"user": user, "disabled": disabled})))
}

async fn disable_user(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_disabled(&st, &who, &user, true).await
}

async fn enable_user(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_disabled(&st, &who, &user, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    password: String,
    /// Needed when users change their own password.
    #[serde(default)]
    current_password: Option<String>,
}

async fn set_password(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<SetPassword>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    st.identity()?
        .set_password(&p, &user, &body.password, body.current_password.as_deref())
        .await?;
    Ok(Json(json!({"user": user, "password": "set"})))
}

async fn revoke_sessions(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    let id = st.identity()?;
    // The library keys sessions by user id; accept a name as well.
    let target = id.get_user(&p, &user).map(|u| u.id).unwrap_or(user);
    let n = id.revoke_sessions(&p, &target).await?;
    Ok(Json(json!({"user": target, "revoked_sessions": n})))
}

/// The optional body of a TOTP enrolment: a current code, needed when users
/// restart their own confirmed enrolment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolTotp {
    code: Option<String>,
}

async fn enrol_totp(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
    body: Option<ApiJson<EnrolTotp>>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    let code = body.and_then(|ApiJson(b)| b.code);
    Ok(Json(json!(
        st.identity()?
            .enrol_totp(&p, &user, code.as_deref())
            .await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmTotp {
    code: String,
}

async fn confirm_totp(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<ConfirmTotp>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    st.identity()?.confirm_totp(&p, &user, &body.code).await?;
    Ok(Json(json!({"user": user, "totp_enabled": true})))
}

// ------------------------------------------------------------------- teams

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTeam {
    name: String,
}

async fn create_team(
    State(st): State<SharedState>,
    who: Authenticated,
    ApiJson(body): ApiJson<CreateTeam>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = actor(&st, &who)?;
    let team = st.identity()?.create_team(&p, &body.name).await?;
    Ok((StatusCode::CREATED, Json(json!(team))))
}

async fn list_teams(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    Ok(Json(json!({"teams": st.identity()?.list_teams(&p).await?})))
}

// ---------------------------------------------------------------- API keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApiKey {
    environment: String,
    #[serde(default)]
    name: String,
    /// Id or name; the caller by default.
    #[serde(default)]
    owner: Option<String>,
}

fn no_owner() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the bootstrap credential owns no keys: name an owner",
    )
    .with_field("owner")
}

/// Creates a key; the answer is the only place its text ever appears.
async fn create_api_key(
    State(st): State<SharedState>,
    who: Authenticated,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = actor(&st, &who)?;
    let owner = match body.owner {
        Some(o) => o,
        None if p.kind == PrincipalKind::System => return Err(no_owner()),
        None => p.id.clone(),
    };
    let key = st
        .identity()?
        .create_api_key(&p, &owner, &body.name, &body.environment)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(key))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListKeys {
    /// Id or name of the owner.
    owner: Option<String>,
    /// Everyone's keys the caller reaches (needs `identity:apikeys.manage`).
    #[serde(default)]
    all: bool,
}

/// Lists keys: the caller's own by default (everyone's for the bootstrap
/// credential), one owner's with `?owner=`, everyone's with `?all=true`
/// (for a team admin: those of its teams' members).
async fn list_api_keys(
    State(st): State<SharedState>,
    who: Authenticated,
    Query(q): Query<ListKeys>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    let id = st.identity()?;
    let owner = match (q.owner, q.all) {
        (Some(o), _) => Some(id.get_user(&p, &o).map(|u| u.id).unwrap_or(o)),
        (None, true) => None,
        (None, false) if p.kind == PrincipalKind::System => None,
        (None, false) => Some(p.id.clone()),
    };
    let keys = id.list_api_keys(&p, owner.as_deref())?;
    Ok(Json(json!({"api_keys": keys})))
}

async fn revoke_api_key(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    st.identity()?.revoke_api_key(&p, &key_id).await?;
    Ok(Json(json!({"id": key_id, "revoked": true})))
}

// -------------------------------------------------------------- elevations

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestElevation {
    role: Role,
    duration_secs: u64,
    reason: String,
}

async fn request_elevation(
    State(st): State<SharedState>,
    who: Authenticated,
    ApiJson(body): ApiJson<RequestElevation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = actor(&st, &who)?;
    let e = st
        .identity()?
        .request_elevation(&p, body.role, body.duration_secs, &body.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(e))))
}

async fn list_elevations(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<Value>, ApiError> {
    let p = actor(&st, &who)?;
    Ok(Json(
        json!({"elevations": st.identity()?.list_elevations(&p)?}),
    ))
}

async fn decide(
    st: &AppState,
    who: &Authenticated,
    id: &str,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let p = actor(st, who)?;
    let e = st.identity()?.decide_elevation(&p, id, approve).await?;
    Ok(Json(json!(e)))
}

async fn approve_elevation(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    decide(&st, &who, &id, true).await
}

async fn deny_elevation(
    State(st): State<SharedState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    decide(&st, &who, &id, false).await
}
