//! The CLI side of the control API: `rampart keys|secrets|users|apikeys|
//! elevate|login|run` are clients of a running node, so one process alone
//! writes the audit log.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::cli::{
    ApikeysCommand, ClientArgs, ElevateCommand, KeysCommand, LoginArgs, RunArgs, SecretsCommand,
    UsersCommand,
};
use crate::errors::CliError;

/// The client certificate and key of `--client-cert`/`--client-key`, if
/// given. The key file's contents never appear in an error.
fn client_cert(args: &ClientArgs) -> Result<Option<ureq::tls::ClientCert>, CliError> {
    let (Some(cert_path), Some(key_path)) = (&args.client_cert, &args.client_key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).map_err(|e| CliError::Input(format!("{what} {}: {e}", p.display())))
    };
    let pem = read(cert_path, "client certificate")?;
    let chain = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Input(format!("client certificate {}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(CliError::Input(format!(
            "client certificate {}: no certificate in the file",
            cert_path.display()
        )));
    }
    let key = Zeroizing::new(read(key_path, "client key")?);
    let key = ureq::tls::PrivateKey::from_pem(&key).map_err(|_| {
        CliError::Input(format!(
            "client key {}: not a PEM private key",
            key_path.display()
        ))
    })?;
    Ok(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)))
}

/// A client of one control API, holding one credential.
pub struct Client {
    agent: ureq::Agent,
    addr: String,
    /// None only for `rampart login`, which has no credential yet.
    token: Option<Zeroizing<String>>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let token = Zeroizing::new(std::env::var(&args.token_env).map_err(|_| {
            CliError::Input(format!(
                "set {} to the admin credential, an identity API key or an access token",
                args.token_env
            ))
        })?);
        Self::connect(args, Some(token))
    }

    /// A client that sends no credential.
    pub fn anonymous(args: &ClientArgs) -> Result<Self, CliError> {
        Self::connect(args, None)
    }

    fn connect(args: &ClientArgs, token: Option<Zeroizing<String>>) -> Result<Self, CliError> {
        let ca_path = args
            .ca
            .clone()
            .unwrap_or_else(|| args.data_dir.join("tls/ca.pem"));
        let pem = std::fs::read(&ca_path)
            .map_err(|e| CliError::Input(format!("CA certificate {}: {e}", ca_path.display())))?;
        let cert = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| CliError::Input(format!("CA certificate {}: {e}", ca_path.display())))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .client_cert(client_cert(args)?)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Client {
            agent,
            addr: args.addr.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Sends a request; a JSON error answer becomes [`CliError::Api`].
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.addr);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {}", t.as_str()));
        }
        let result = match body {
            Some(b) => self.agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .map_err(|e| CliError::Input(e.to_string()))?,
            ),
            None => self
                .agent
                .run(req.body(()).map_err(|e| CliError::Input(e.to_string()))?),
        };
        let mut resp = result.map_err(|e| CliError::Runtime(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Runtime(format!("{url}: {e}")))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            let e = jf(&value, "error");
            let mut message = format!(
                "{} {}",
                jf(e, "code").as_str().unwrap_or("error"),
                jf(e, "message").as_str().unwrap_or(&text)
            );
            if let Some(f) = jf(e, "field").as_str() {
                message.push_str(&format!(" (field {f})"));
            }
            return Err(CliError::Api { status, message });
        }
        Ok(value)
    }
}

/// A field of a JSON object, or null.
fn jf<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn print(v: &Value) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| CliError::Runtime(e.to_string()))?
    );
    Ok(())
}

fn context(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

/// Path segments come from the command line: refuse anything that would
/// change the path's shape.
fn seg(what: &str, s: &str) -> Result<String, CliError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(CliError::Input(format!("invalid {what} {s:?}")));
    }
    Ok(s.to_string())
}

pub fn keys(client: &ClientArgs, cmd: KeysCommand) -> Result<(), CliError> {
    let c = Client::new(client)?;
    let v = match cmd {
        KeysCommand::Create {
            env,
            name,
            rotation_days,
        } => c.call(
            "POST",
            &format!("/v1/keys/{}", seg("environment", &env)?),
            Some(json!({"name": name, "rotation_period_days": rotation_days})),
        )?,
        KeysCommand::List { env } => c.call(
            "GET",
            &format!("/v1/keys/{}", seg("environment", &env)?),
            None,
        )?,
        KeysCommand::Describe { env, name } => c.call(
            "GET",
            &format!(
                "/v1/keys/{}/{}",
                seg("environment", &env)?,
                seg("key", &name)?
            ),
            None,
        )?,
        KeysCommand::Rotate { env, name } => c.call(
            "POST",
            &format!(
                "/v1/keys/{}/{}/rotate",
                seg("environment", &env)?,
                seg("key", &name)?
            ),
            None,
        )?,
        KeysCommand::Encrypt {
            env,
            name,
            plaintext_env,
            from_file,
            context: ctx,
        } => {
            let plaintext = secret_input(plaintext_env, from_file)?.map_or_else(stdin_input, Ok)?;
            let v = c.call(
                "POST",
                &format!(
                    "/v1/keys/{}/{}/encrypt",
                    seg("environment", &env)?,
                    seg("key", &name)?
                ),
                Some(json!({"plaintext": B64.encode(&*plaintext), "context": context(ctx)})),
            )?;
            println!("{}", jf(&v, "ciphertext").as_str().unwrap_or_default());
            return Ok(());
        }
        KeysCommand::Decrypt {
            env,
            ciphertext,
            context: ctx,
        } => {
            let v = c.call(
                "POST",
                &format!("/v1/keys/{}/decrypt", seg("environment", &env)?),
                Some(json!({"ciphertext": ciphertext, "context": context(ctx)})),
            )?;
            let plain = Zeroizing::new(
                B64.decode(jf(&v, "plaintext").as_str().unwrap_or_default())
                    .map_err(|e| CliError::Runtime(e.to_string()))?,
            );
            let mut out = std::io::stdout().lock();
            let tty = out.is_terminal();
            out.write_all(&plain)
                .and_then(|()| if tty { out.write_all(b"\n") } else { Ok(()) })
                .and_then(|()| out.flush())
                .map_err(|e| CliError::Runtime(format!("standard output: {e}")))?;
            return Ok(());
        }
        KeysCommand::ScheduleDeletion { env, name, days } => c.call(
            "POST",
            &format!(
                "/v1/keys/{}/{}/schedule-deletion",
                seg("environment", &env)?,
                seg("key", &name)?
            ),
            Some(json!({"days": days})),
        )?,
        KeysCommand::CancelDeletion { env, name } => c.call(
            "POST",
            &format!(
                "/v1/keys/{}/{}/cancel-deletion",
                seg("environment", &env)?,
                seg("key", &name)?
            ),
            None,
        )?,
    };
    print(&v)
}

fn secret_path(env: &str, service: &str, name: Option<&str>) -> Result<String, CliError> {
    let mut p = format!(
        "/v1/secrets/{}/{}",
        seg("environment", env)?,
        seg("service", service)?
    );
    if let Some(n) = name {
        p.push('/');
        p.push_str(&seg("secret name", n)?);
    }
    Ok(p)
}

/// A secret input named by an environment variable or a file (the
/// variable first), or `None` when neither is given.
fn secret_input(
    var: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Zeroizing<Vec<u8>>>, CliError> {
    Ok(Some(Zeroizing::new(match (var, file) {
        (Some(var), _) => std::env::var(&var)
            .map_err(|_| CliError::Input(format!("environment variable {var} is not set")))?
            .into_bytes(),
        (None, Some(f)) => {
            std::fs::read(&f).map_err(|e| CliError::Input(format!("{}: {e}", f.display())))?
        }
        (None, None) => return Ok(None),
    })))
}

/// Standard input, read to its end.
fn stdin_input() -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Input(format!("standard input: {e}")))?;
    Ok(buf)
}

pub fn secrets(client: &ClientArgs, cmd: SecretsCommand) -> Result<(), CliError> {
    let c = Client::new(client)?;
    let v = match cmd {
        SecretsCommand::Put {
            env,
            service,
            name,
            value_env,
            from_file,
            kind,
        } => {
            let value = secret_input(value_env, from_file)?.ok_or_else(|| {
                CliError::Input(
                    "give the value with --value-env VAR or --from-file FILE (never on the command line)".into(),
                )
            })?;
            c.call(
                "PUT",
                &secret_path(&env, &service, Some(&name))?,
                Some(json!({"value_base64": B64.encode(&*value), "kind": kind})),
            )?
        }
        SecretsCommand::Get {
            env,
            service,
            name,
            version,
        } => {
            let mut p = secret_path(&env, &service, Some(&name))?;
            if let Some(v) = version {
                p.push_str(&format!("?version={v}"));
            }
            let v = c.call("GET", &p, None)?;
            match jf(&v, "value").as_str() {
                Some(text) => println!("{text}"),
                None => println!("{}", jf(&v, "value_base64").as_str().unwrap_or_default()),
            }
            return Ok(());
        }
        SecretsCommand::List { env, service } => {
            c.call("GET", &secret_path(&env, &service, None)?, None)?
        }
        SecretsCommand::Delete {
            env,
            service,
            name,
            recovery_days,
        } => {
            let mut p = secret_path(&env, &service, Some(&name))?;
            if let Some(d) = recovery_days {
                p.push_str(&format!("?recovery_days={d}"));
            }
            c.call("DELETE", &p, None)?
        }
        SecretsCommand::Rotate { env, service, name } => c.call(
            "POST",
            &format!("{}/rotate", secret_path(&env, &service, Some(&name))?),
            None,
        )?,
    };
    print(&v)
}

fn read_env_secret(var: &str) -> Result<Zeroizing<String>, CliError> {
    std::env::var(var)
        .map(Zeroizing::new)
        .map_err(|_| CliError::Input(format!("environment variable {var} is not set")))
}

pub fn users(client: &ClientArgs, cmd: UsersCommand) -> Result<(), CliError> {
    let c = Client::new(client)?;
    // User names may hold `@`, which a path segment carries as it is.
    let user_path = |u: &str, rest: &str| -> Result<String, CliError> {
        if u.is_empty()
            || !u
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        {
            return Err(CliError::Input(format!("invalid user {u:?}")));
        }
        Ok(format!("/v1/users/{u}{rest}"))
    };
    let v = match cmd {
        UsersCommand::Create {
            name,
            roles,
            environments,
            teams,
            password_env,
            service,
        } => {
            let password = password_env.as_deref().map(read_env_secret).transpose()?;
            let mut body = json!({
                "name": name,
                "kind": if service { "service" } else { "user" },
                "roles": roles,
                "environments": environments,
                "teams": teams,
            });
            if let (Some(p), Some(obj)) = (&password, body.as_object_mut()) {
                obj.insert("password".into(), Value::String(p.to_string()));
            }
            c.call("POST", "/v1/users", Some(body))?
        }
        UsersCommand::List => c.call("GET", "/v1/users", None)?,
        UsersCommand::Show { user } => c.call("GET", &user_path(&user, "")?, None)?,
        UsersCommand::SetRoles { user, roles } => c.call(
            "PUT",
            &user_path(&user, "/roles")?,
            Some(json!({"roles": roles})),
        )?,
        UsersCommand::SetPassword {
            user,
            password_env,
            current_password_env,
        } => {
            let p = read_env_secret(&password_env)?;
            let mut body = json!({"password": p.as_str()});
            if let Some(var) = current_password_env {
                let current = read_env_secret(&var)?;
                if let Some(obj) = body.as_object_mut() {
                    obj.insert(
                        "current_password".into(),
                        Value::String(current.as_str().to_owned()),
                    );
                }
            }
            c.call("POST", &user_path(&user, "/password")?, Some(body))?
        }
        UsersCommand::Disable { user } => c.call("POST", &user_path(&user, "/disable")?, None)?,
        UsersCommand::Enable { user } => c.call("POST", &user_path(&user, "/enable")?, None)?,
        UsersCommand::RevokeSessions { user } => {
            c.call("POST", &user_path(&user, "/sessions/revoke")?, None)?
        }
        UsersCommand::TotpEnrol { user, qr_out, code } => {
            let body = code.map(|code| json!({ "code": code }));
            let mut v = c.call("POST", &user_path(&user, "/totp")?, body)?;
            if let Some(path) = qr_out {
                let svg = jf(&v, "qr_svg").as_str().unwrap_or_default();
                std::fs::write(&path, svg)
                    .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?;
            }
            // The SVG is long and useless in a terminal.
            if let Some(obj) = v.as_object_mut() {
                obj.remove("qr_svg");
            }
            v
        }
        UsersCommand::TotpConfirm { user, code } => c.call(
            "POST",
            &user_path(&user, "/totp/confirm")?,
            Some(json!({"code": code})),
        )?,
    };
    print(&v)
}

pub fn apikeys(client: &ClientArgs, cmd: ApikeysCommand) -> Result<(), CliError> {
    let c = Client::new(client)?;
    let v = match cmd {
        ApikeysCommand::Create { env, name, owner } => c.call(
            "POST",
            "/v1/apikeys",
            Some(json!({"environment": env, "name": name, "owner": owner})),
        )?,
        ApikeysCommand::List { owner, all } => {
            let path = match (owner, all) {
                (Some(o), _) => format!("/v1/apikeys?owner={}", seg("owner", &o)?),
                (None, true) => "/v1/apikeys?all=true".to_string(),
                (None, false) => "/v1/apikeys".to_string(),
            };
            c.call("GET", &path, None)?
        }
        ApikeysCommand::Revoke { id } => c.call(
            "DELETE",
            &format!("/v1/apikeys/{}", seg("key id", &id)?),
            None,
        )?,
    };
    print(&v)
}

pub fn elevate(client: &ClientArgs, cmd: ElevateCommand) -> Result<(), CliError> {
    let c = Client::new(client)?;
    let v = match cmd {
        ElevateCommand::Request {
            role,
            minutes,
            reason,
        } => c.call(
            "POST",
            "/v1/elevations",
            Some(json!({
                "role": role,
                "duration_secs": minutes.saturating_mul(60),
                "reason": reason,
            })),
        )?,
        ElevateCommand::Approve { id } => c.call(
            "POST",
            &format!("/v1/elevations/{}/approve", seg("elevation id", &id)?),
            None,
        )?,
        ElevateCommand::Deny { id } => c.call(
            "POST",
            &format!("/v1/elevations/{}/deny", seg("elevation id", &id)?),
            None,
        )?,
        ElevateCommand::List => c.call("GET", "/v1/elevations", None)?,
    };
    print(&v)
}

/// `rampart login`: the tokens go to standard output, for a script to keep
/// (for instance as RAMPART_TOKEN); nothing is written to disk.
/// `rampart status`: prints `/v1/status`; with `check_drift`, exits 1
/// (after printing) unless the config file says what the node runs,
/// including the edge serving every service's new instances (not while a
/// deployment is verified, nor after one was rolled back).
pub fn status(client: &ClientArgs, check_drift: bool) -> Result<u8, CliError> {
    let c = Client::new(client)?;
    let v = c.call("GET", "/v1/status", None)?;
    print(&v)?;
    if !check_drift {
        return Ok(0);
    }
    // A deployment being verified or rolled back: the node serves other
    // instances than the file names.
    let pending: Vec<&str> = jf(jf(&v, "deployments"), "pending")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    match jf(jf(&v, "config"), "state").as_str() {
        Some("current") if !pending.is_empty() => {
            eprintln!(
                "config drift: new instances not serving (deployment being verified or rolled back): {}",
                pending.join(", ")
            );
            Ok(1)
        }
        Some("current") => Ok(0),
        Some(state) => {
            eprintln!("config drift: {state}");
            Ok(1)
        }
        None => Err(CliError::Input(
            "the status has no config report: --check-drift needs an admin credential".into(),
        )),
    }
}

pub fn login(args: &LoginArgs) -> Result<(), CliError> {
    let c = Client::anonymous(&args.client)?;
    let password = read_env_secret(&args.password_env)?;
    let v = c.call(
        "POST",
        "/v1/auth/login",
        Some(json!({
            "username": args.username,
            "password": password.as_str(),
            "totp": args.totp,
        })),
    )?;
    print(&v)
}

/// Environment variable name → secret name for `rampart run`.
fn mapping(args: &RunArgs, c: &Client) -> Result<BTreeMap<String, String>, CliError> {
    if let Some(path) = &args.config {
        let cfg = rampart_config::Config::load(path).map_err(CliError::Config)?;
        let svc = cfg
            .services
            .iter()
            .find(|s| s.name == args.service && s.environment == args.env)
            .ok_or_else(|| {
                CliError::Input(format!(
                    "{}: no service {:?} in environment {:?}",
                    path.display(),
                    args.service,
                    args.env
                ))
            })?;
        if !svc.secrets.is_empty() {
            return Ok(svc.secrets.clone());
        }
    }
    // Every current secret of the service, named in upper case.
    let list = c.call("GET", &secret_path(&args.env, &args.service, None)?, None)?;
    let mut out = BTreeMap::new();
    for s in jf(&list, "secrets").as_array().into_iter().flatten() {
        if jf(s, "recover_until").is_null() {
            if let Some(name) = jf(s, "name").as_str() {
                let var: String = name
                    .chars()
                    .map(|ch| {
                        if ch.is_ascii_alphanumeric() {
                            ch.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if let Some(other) = out.insert(var.clone(), name.to_string()) {
                    // `db.password` and `db-password` would both be
                    // DB_PASSWORD: refuse rather than pick one.
                    return Err(CliError::Input(format!(
                        "secrets {other:?} and {name:?} would both be ${var}; name the variables in the service's `secrets` (--config)"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Environment variables for the child, zeroized when dropped.
type Vars = Vec<(String, Zeroizing<String>)>;

/// Fetches every mapped secret: the variables and the versions seen.
fn fetch(
    c: &Client,
    args: &RunArgs,
    map: &BTreeMap<String, String>,
) -> Result<(Vars, BTreeMap<String, u64>), CliError> {
    let mut vars = Vec::new();
    let mut versions = BTreeMap::new();
    for (var, name) in map {
        let v = c.call(
            "GET",
            &secret_path(&args.env, &args.service, Some(name))?,
            None,
        )?;
        let value = jf(&v, "value").as_str().ok_or_else(|| {
            CliError::Input(format!(
                "secret {name} is binary: it cannot be an environment variable"
            ))
        })?;
        vars.push((var.clone(), Zeroizing::new(value.to_string())));
        versions.insert(name.clone(), jf(&v, "version").as_u64().unwrap_or(0));
    }
    Ok((vars, versions))
}

fn versions(c: &Client, args: &RunArgs) -> Result<BTreeMap<String, u64>, CliError> {
    let list = c.call("GET", &secret_path(&args.env, &args.service, None)?, None)?;
    Ok(jf(&list, "secrets")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                jf(s, "name").as_str()?.to_string(),
                jf(s, "current_version").as_u64()?,
            ))
        })
        .collect())
}

/// `rampart run`: secrets go to the child's environment and nowhere else.
pub fn run(args: RunArgs) -> Result<u8, CliError> {
    let c = Client::new(&args.client)?;
    let map = mapping(&args, &c)?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::Input("no command given after --".into()))?;
    loop {
        let (vars, seen) = fetch(&c, &args, &map)?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(rest);
        for (k, v) in &vars {
            cmd.env(k, v.as_str());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| CliError::Input(format!("cannot start {program}: {e}")))?;
        drop(vars);
        if !args.watch {
            let status = child.wait().map_err(|e| CliError::Runtime(e.to_string()))?;
            return Ok(exit_code(status));
        }
        let changed = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| CliError::Runtime(e.to_string()))?
            {
                return Ok(exit_code(status));
            }
            std::thread::sleep(Duration::from_secs(args.interval.max(1)));
            let now = versions(&c, &args)?;
            if seen.iter().any(|(name, v)| now.get(name) != Some(v)) {
                break true;
            }
        };
        if changed {
            eprintln!("rampart run: a secret changed; restarting {program}");
            stop(&mut child);
        }
    }
}

/// SIGTERM, ten seconds' grace, then SIGKILL.
fn stop(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1)
}
