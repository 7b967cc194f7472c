//! End-to-end: the identity plane through the real binary, its control API
//! and its client commands: users, logins, refresh and logout, API keys,
//! elevation, JWKS, throttling and bad input.

mod util;

use serde_json::{json, Value};
use util::{stderr, stdout, Rampart, Server};

const CONFIG: &str = r#"
[node]
name = "id-1"

[[environments]]
name = "prod"

[[roles]]
name = "admin"
permissions = ["*"]
require_mfa = false

[[roles]]
name = "team_member"
permissions = ["keys:encrypt", "secrets:read"]

[identity]
issuer = "https://id.test"
access_ttl_seconds = 600
"#;

const PASSWORD: &str = "correct horse battery staple";

/// A node with the config above, its bootstrap admin credential, and a
/// running server hashing passwords cheaply.
fn node() -> (Rampart, String, Server) {
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), CONFIG).unwrap();
    let admin = r.init();
    let mut cmd = r.cmd(&[]);
    cmd.env("RAMPART_INSECURE_TEST_PASSWORD_HASHING", "1");
    let srv = r.up_with(cmd, &["--config", "rampart.toml", "--data-dir", "data"]);
    (r, admin, srv)
}

/// Creates a user through the API; returns its id.
fn create_user(srv: &Server, admin: &str, name: &str, roles: &[&str]) -> String {
    let created = srv.post(
        "/v1/users",
        Some(admin),
        json!({"name": name, "roles": roles, "environments": ["prod", "platform"], "password": PASSWORD}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["id"].as_str().unwrap().to_string()
}

fn login(srv: &Server, name: &str) -> Value {
    let r = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": name, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

/// A 401 that says nothing but "no".
fn assert_refused(r: &util::Resp, code: &str) {
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.content_type.starts_with("application/json"));
    assert_eq!(r.json()["error"]["code"], code, "{}", r.body);
}

fn b64url_json(part: &str) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn login_refresh_reuse_logout_and_jwks() {
    let (_r, admin, srv) = node();
    let alice = create_user(&srv, &admin, "alice", &["team_member"]);

    // Wrong password and unknown account: the same generic 401.
    for name in ["alice", "nobody"] {
        let bad = srv.post(
            "/v1/auth/login",
            None,
            json!({"username": name, "password": "not the password at all"}),
        );
        assert_refused(&bad, "invalid_credentials");
        assert_eq!(bad.json()["error"]["message"], "invalid credentials");
    }

    // Log in; the access token works on an authenticated endpoint.
    let t1 = login(&srv, "alice");
    assert_eq!(t1["token_type"], "Bearer");
    let access1 = s(&t1, "access_token");
    let me = srv.get("/v1/whoami", Some(&access1));
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["principal"], alice.as_str());
    assert_eq!(me.json()["roles"], json!(["team_member"]));
    // Identity principals reach the keys plane under its policies: the
    // baseline lets only role:admin list keys.
    assert_eq!(srv.get("/v1/keys/prod", Some(&access1)).status, 403);
    // And never outside their environments.
    assert_eq!(srv.get("/v1/keys/staging", Some(&access1)).status, 403);

    // Its lifetime and issuer are the config file's.
    let claims = b64url_json(access1.split('.').nth(1).unwrap());
    assert_eq!(claims["iss"], "https://id.test", "{claims}");
    assert_eq!(claims["aud"], "rampart-api", "{claims}");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600,
        "{claims}"
    );

    // The token is signed by a key the JWKS publishes.
    let jwks = srv.get("/.well-known/jwks.json", None);
    assert_eq!(jwks.status, 200);
    let header = b64url_json(access1.split('.').next().unwrap());
    assert_eq!(header["alg"], "EdDSA");
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    let key = keys
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {keys:?}", header["kid"]));
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );

    // Refresh rotates; presenting the spent refresh token again revokes the
    // whole family, the fresh refresh token and access token included.
    let r1 = s(&t1, "refresh_token");
    let t2 = srv.post("/v1/auth/refresh", None, json!({"refresh_token": r1}));
    assert_eq!(t2.status, 200, "{}", t2.body);
    let t2 = t2.json();
    assert_ne!(s(&t2, "refresh_token"), r1);
    assert_eq!(
        srv.get("/v1/whoami", Some(&s(&t2, "access_token"))).status,
        200
    );
    let reuse = srv.post("/v1/auth/refresh", None, json!({"refresh_token": r1}));
    assert_refused(&reuse, "invalid_grant");
    let after = srv.post(
        "/v1/auth/refresh",
        None,
        json!({"refresh_token": s(&t2, "refresh_token")}),
    );
    assert_refused(&after, "invalid_grant");
    assert_refused(
        &srv.get("/v1/whoami", Some(&s(&t2, "access_token"))),
        "unauthenticated",
    );

    // Logout refuses the old access token at once.
    let t3 = login(&srv, "alice");
    let access3 = s(&t3, "access_token");
    assert_eq!(srv.get("/v1/whoami", Some(&access3)).status, 200);
    let out = srv.post("/v1/auth/logout", Some(&access3), json!({}));
    assert_eq!(out.status, 200, "{}", out.body);
    assert_refused(&srv.get("/v1/whoami", Some(&access3)), "unauthenticated");

    // Malformed and tampered tokens: 401 JSON, nothing more.
    let mut tampered = access3.clone();
    tampered.pop();
    tampered.push(if access3.ends_with('A') { 'B' } else { 'A' });
    for bad in ["a.b.c", "not-a-token", &tampered, "rk_live_x_y"] {
        assert_refused(&srv.get("/v1/whoami", Some(bad)), "unauthenticated");
    }
    let none_alg = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        access1.split('.').nth(1).unwrap()
    );
    assert_refused(&srv.get("/v1/whoami", Some(&none_alg)), "unauthenticated");
}

#[test]
fn bad_input_is_a_json_400_or_401_naming_the_field() {
    let (_r, admin, srv) = node();
    let unknown = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": "a", "password": "b", "remember_me": true}),
    );
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(unknown.json()["error"]["field"], "remember_me");
    let wrong_type = srv.post("/v1/auth/refresh", None, json!({"refresh_token": 7}));
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.json()["error"]["field"], "refresh_token");
    let bad_role = srv.post(
        "/v1/users",
        Some(&admin),
        json!({"name": "x", "roles": ["root"], "environments": ["prod"]}),
    );
    assert_eq!(bad_role.status, 400);
    assert_eq!(bad_role.json()["error"]["field"], "roles[0]");
    let garbage_refresh = srv.post(
        "/v1/auth/refresh",
        None,
        json!({"refresh_token": "rr_nope"}),
    );
    assert_refused(&garbage_refresh, "invalid_grant");
    let garbage_key = srv.post("/v1/auth/token", None, json!({"api_key": "rk_prod_zz"}));
    assert_refused(&garbage_key, "invalid_api_key");
    // Identity endpoints need a credential; a service's API key reaches
    // only what its roles grant (here nothing), and the interim service
    // tokens are gone.
    assert_refused(&srv.get("/v1/users", None), "unauthenticated");
    let svc = srv.post(
        "/v1/users",
        Some(&admin),
        json!({"name": "api", "kind": "service", "roles": [], "environments": ["prod", "platform"]}),
    );
    assert_eq!(svc.status, 201, "{}", svc.body);
    let key = srv.post(
        "/v1/apikeys",
        Some(&admin),
        json!({"environment": "platform", "owner": "api"}),
    );
    assert_eq!(key.status, 201, "{}", key.body);
    let t = s(&key.json(), "key");
    assert_eq!(srv.get("/v1/users", Some(&t)).status, 403);
    let rst = "rst_0123456789abcdef_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0YWJj";
    assert_refused(&srv.get("/v1/whoami", Some(rst)), "unauthenticated");
    assert_eq!(
        srv.post(
            "/v1/tokens",
            Some(&admin),
            json!({"environment": "prod", "service": "api"})
        )
        .status,
        404
    );
    // Repeated failures are throttled with a Retry-After.
    let mut throttled = None;
    for _ in 0..12 {
        let r = srv.post(
            "/v1/auth/login",
            None,
            json!({"username": "mallory", "password": "guessing-password-1"}),
        );
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_refused(&r, "invalid_credentials");
    }
    let t = throttled.expect("never throttled");
    assert_eq!(t.json()["error"]["code"], "too_many_attempts");
    assert!(t.retry_after.unwrap().parse::<u64>().unwrap() >= 1);
}

#[test]
fn api_keys_and_elevation_through_the_cli() {
    let (r, admin, srv) = node();
    let client = |token: &str, args: &[&str]| {
        let mut c = r.cmd(args);
        c.args(["--addr", &srv.base(), "--data-dir", "data"])
            .env("RAMPART_TOKEN", token)
            .env("PW", PASSWORD);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()
    };

    let bob = client(
        &admin,
        &[
            "users",
            "create",
            "bob",
            "--role",
            "team_member",
            "--env",
            "prod",
            "--env",
            "platform",
            "--password-env",
            "PW",
        ],
    );
    let bob_id = s(&bob, "id");
    let listed = client(&admin, &["users", "list"]);
    assert!(listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "bob"));

    // An API key: shown once, works, listed without its secret, revoked, refused.
    let created = client(
        &admin,
        &["apikeys", "create", "--env", "prod", "--owner", "bob"],
    );
    let key = s(&created, "key");
    let key_id = s(&created["info"], "id");
    assert!(key.starts_with("rk_prod_"), "{key}");
    let me = srv.get("/v1/whoami", Some(&key));
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["principal"], bob_id.as_str());
    assert_eq!(me.json()["environments"], json!(["prod"]));
    let exchanged = srv.post("/v1/auth/token", None, json!({"api_key": key}));
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);
    let listing = client(&admin, &["apikeys", "list", "--owner", "bob"]);
    let text = listing.to_string();
    assert!(text.contains(&key_id) && !text.contains(&key));
    client(&admin, &["apikeys", "revoke", &key_id]);
    assert_refused(&srv.get("/v1/whoami", Some(&key)), "unauthenticated");

    // Elevation: bob asks for admin, cannot approve himself, the bootstrap
    // admin approves, and bob's next token carries the role.
    let mut login = r.cmd(&[
        "login",
        "--username",
        "bob",
        "--password-env",
        "PW",
        "--addr",
        &srv.base(),
        "--data-dir",
        "data",
    ]);
    let o = login.env("PW", PASSWORD).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let tokens: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let bob_token = s(&tokens, "access_token");
    assert_eq!(srv.get("/v1/keys/prod", Some(&bob_token)).status, 403);
    let el = client(
        &bob_token,
        &[
            "elevate",
            "request",
            "--role",
            "admin",
            "--minutes",
            "10",
            "--reason",
            "incident 42",
        ],
    );
    let el_id = s(&el, "id");
    let self_approve = srv.post(
        &format!("/v1/elevations/{el_id}/approve"),
        Some(&bob_token),
        json!({}),
    );
    assert!(
        matches!(self_approve.status, 400 | 403),
        "{}",
        self_approve.body
    );
    let approved = client(&admin, &["elevate", "approve", &el_id]);
    assert_eq!(approved["status"], "approved", "{approved}");
    let pending = client(&admin, &["elevate", "list"]);
    assert_eq!(pending["elevations"].as_array().unwrap().len(), 1);
    let fresh = srv.post(
        "/v1/auth/refresh",
        None,
        json!({"refresh_token": s(&tokens, "refresh_token")}),
    );
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let elevated = s(&fresh.json(), "access_token");
    let keys = srv.get("/v1/keys/prod", Some(&elevated));
    assert_eq!(keys.status, 200, "{}", keys.body);

    // Disabling bob revokes his sessions at once.
    client(&admin, &["users", "disable", "bob"]);
    assert_refused(&srv.get("/v1/whoami", Some(&elevated)), "unauthenticated");
}

/// RFC 4648 base32 without padding, as the enrolment shows the secret.
fn base32_decode(s: &str) -> Vec<u8> {
    let (mut bits, mut acc, mut out) = (0u32, 0u64, Vec::new());
    for c in s.trim_end_matches('=').chars() {
        let v = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            .find(c.to_ascii_uppercase())
            .unwrap() as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn totp_enrolled_by_an_admin_is_required_and_single_use() {
    let (r, admin, srv) = node();
    create_user(&srv, &admin, "carol", &["team_member"]);
    let enrol = r
        .cmd(&[
            "users",
            "totp-enrol",
            "carol",
            "--qr-out",
            "carol.svg",
            "--addr",
            &srv.base(),
            "--data-dir",
            "data",
        ])
        .env("RAMPART_TOKEN", &admin)
        .output()
        .unwrap();
    assert!(enrol.status.success(), "{}", stderr(&enrol));
    let e: Value = serde_json::from_str(&stdout(&enrol)).unwrap();
    assert!(e.get("qr_svg").is_none(), "the SVG goes to the file only");
    assert!(std::fs::read_to_string(r.path("carol.svg"))
        .unwrap()
        .contains("<svg"));
    assert!(s(&e, "otpauth_uri").starts_with("otpauth://totp/"));
    let totp = rampart_identity::totp::Totp::new(base32_decode(&s(&e, "secret_base32")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let step = totp.step_at(now);
    let confirm = srv.post(
        "/v1/users/carol/totp/confirm",
        Some(&admin),
        json!({"code": totp.code_for_step(step)}),
    );
    assert_eq!(confirm.status, 200, "{}", confirm.body);

    // The password alone is no longer enough.
    let bare = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": "carol", "password": PASSWORD}),
    );
    assert_refused(&bare, "second_factor_required");
    // The confirming code was spent; the next step's (one step of drift) works once.
    let next = totp.code_for_step(step + 1);
    let ok = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": "carol", "password": PASSWORD, "totp": next}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let again = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": "carol", "password": PASSWORD, "totp": next}),
    );
    assert_refused(&again, "invalid_credentials");
    // A recovery code works once.
    let code = e["recovery_codes"][0].as_str().unwrap().to_string();
    let rec = srv.post(
        "/v1/auth/login",
        None,
        json!({"username": "carol", "password": PASSWORD, "totp": code}),
    );
    assert_eq!(rec.status, 200, "{}", rec.body);
}

#[test]
fn a_team_admin_manages_its_own_team_only() {
    let (_r, admin, srv) = node();
    for team in ["alpha", "beta"] {
        let t = srv.post("/v1/teams", Some(&admin), json!({"name": team}));
        assert_eq!(t.status, 201, "{}", t.body);
    }
    let member = |name: &str, role: &str, team: &str| {
        let created = srv.post(
            "/v1/users",
            Some(&admin),
            json!({"name": name, "roles": [role], "teams": [team],
                   "environments": ["prod", "platform"], "password": PASSWORD}),
        );
        assert_eq!(created.status, 201, "{}", created.body);
    };
    member("tina", "team_admin", "alpha");
    member("max", "team_member", "alpha");
    member("bob", "team_member", "beta");
    let tina = s(&login(&srv, "tina"), "access_token");
    let max = s(&login(&srv, "max"), "access_token");

    // tina gives max, of her team, an API key; bob, of beta, she cannot.
    let key = srv.post(
        "/v1/apikeys",
        Some(&tina),
        json!({"environment": "prod", "owner": "max"}),
    );
    assert_eq!(key.status, 201, "{}", key.body);
    for (method, path, body) in [
        (
            "POST",
            "/v1/apikeys",
            json!({"environment": "prod", "owner": "bob"}).to_string(),
        ),
        ("POST", "/v1/users/bob/disable", "{}".to_string()),
        ("GET", "/v1/users/bob", String::new()),
        ("GET", "/v1/apikeys?owner=bob", String::new()),
    ] {
        let r = if method == "GET" {
            srv.get(path, Some(&tina))
        } else {
            srv.send(method, path, Some(&tina), &body)
        };
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "forbidden");
    }
    let users = srv.get("/v1/users", Some(&tina)).json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["max", "tina"]);

    // max sees his team but cannot administer it.
    assert_eq!(srv.get("/v1/users/tina", Some(&max)).status, 200);
    assert_eq!(
        srv.post("/v1/users/tina/disable", Some(&max), json!({}))
            .status,
        403
    );
    let teams = srv.get("/v1/teams", Some(&max)).json();
    assert_eq!(teams["teams"].as_array().unwrap().len(), 1, "{teams}");
}

#[test]
fn changing_ones_own_password_over_the_api_needs_the_current_one() {
    let (_r, admin, srv) = node();
    create_user(&srv, &admin, "bob", &["team_member"]);
    let access = s(&login(&srv, "bob"), "access_token");
    let new = "bob's brand new long password";
    let missing = srv.post(
        "/v1/users/bob/password",
        Some(&access),
        json!({ "password": new }),
    );
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert_eq!(missing.json()["error"]["field"], "current_password");
    let wrong = srv.post(
        "/v1/users/bob/password",
        Some(&access),
        json!({ "password": new, "current_password": "not the password at all" }),
    );
    assert_refused(&wrong, "invalid_credentials");
    let ok = srv.post(
        "/v1/users/bob/password",
        Some(&access),
        json!({ "password": new, "current_password": PASSWORD }),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let relogin = srv.post(
        "/v1/auth/login",
        None,
        json!({ "username": "bob", "password": new }),
    );
    assert_eq!(relogin.status, 200, "{}", relogin.body);
    // An admin's reset needs no current password; a first TOTP enrolment
    // needs no body.
    let reset = srv.post(
        "/v1/users/bob/password",
        Some(&admin),
        json!({ "password": "an admin reset long password" }),
    );
    assert_eq!(reset.status, 200, "{}", reset.body);
    let enrol = srv.request("POST", "/v1/users/bob/totp", Some(&access));
    assert_eq!(enrol.status, 200, "{}", enrol.body);
}
