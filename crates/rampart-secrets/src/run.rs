//! Starting a process with a service's secrets in its environment, for
//! `rampart run`. Values pass from memory to the child's environment block
//! and are never written to disk.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use rampart_keys::Caller;
use zeroize::Zeroizing;

use crate::{SecretService, SecretsError};

/// Environment variables resolved from secrets. Values are zeroized on drop
/// and never shown by `Debug`.
#[derive(Default)]
pub struct EnvMap {
    vars: BTreeMap<String, Zeroizing<String>>,
    versions: BTreeMap<String, u32>,
}

impl std::fmt::Debug for EnvMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvMap")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("versions", &self.versions)
            .finish()
    }
}

impl EnvMap {
    /// Adds a variable holding version `version` of the secret `secret`.
    pub fn insert(&mut self, var: String, value: String, version: u32, secret: String) {
        self.vars.insert(var, Zeroizing::new(value));
        self.versions.insert(secret, version);
    }

    /// The variable names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// A variable's value.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(|v| v.as_str())
    }

    /// The version of each secret that was resolved.
    pub fn versions(&self) -> &BTreeMap<String, u32> {
        &self.versions
    }

    /// How many variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    fn apply(&self, cmd: &mut tokio::process::Command) {
        for (k, v) in &self.vars {
            cmd.env(k, v.as_str());
        }
    }
}

fn spawn_err(program: &str) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Spawn {
        program: program.to_owned(),
        source,
    }
}

/// Runs `program` with `args`, its environment being ours plus `env`, and
/// waits for it.
pub async fn run_with_secrets(
    program: &str,
    args: &[String],
    env: &EnvMap,
) -> Result<ExitStatus, SecretsError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    env.apply(&mut cmd);
    cmd.status().await.map_err(spawn_err(program))
}

/// What [`run_watching`] did.
#[derive(Debug)]
pub struct WatchReport {
    /// How the last child exited.
    pub status: ExitStatus,
    /// How many times the child was restarted because a secret changed.
    pub restarts: u32,
}

/// Runs `program` with `service`'s secrets (as [`SecretService::resolve_env`]
/// maps them), checking every `poll` whether a secret has a new version; if
/// so the child is killed and started again with the new values. Returns
/// when the child exits by itself, or after `max_restarts` restarts the last
/// child is waited for.
#[allow(clippy::too_many_arguments)]
pub async fn run_watching(
    secrets: &SecretService,
    caller: &Caller,
    service: &str,
    mapping: &BTreeMap<String, String>,
    program: &str,
    args: &[String],
    poll: Duration,
    max_restarts: u32,
) -> Result<WatchReport, SecretsError> {
    let names: Vec<String> = mapping.keys().cloned().collect();
    let mut restarts = 0;
    loop {
        let env = secrets.resolve_env(caller, service, mapping).await?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).kill_on_drop(true);
        env.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(spawn_err(program))?;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(spawn_err(program))?;
                    return Ok(WatchReport { status, restarts });
                }
                _ = tokio::time::sleep(poll) => {
                    if restarts >= max_restarts {
                        continue;
                    }
                    let now = secrets.current_versions(caller, service, &names).await?;
                    if &now != env.versions() {
                        child.kill().await.map_err(spawn_err(program))?;
                        restarts += 1;
                        break;
                    }
                }
            }
        }
    }
}
