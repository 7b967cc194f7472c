//! Drift: what the config file on disk says against what this node runs
//! (DESIGN.md: "the running system reports drift between the file and its
//! state"). `GET /v1/status` shows it to admins: whether the file still
//! says what runs, and, where it does not, which sections an edge reload
//! (SIGHUP or `POST /v1/edge/reload`) would apply and which need a
//! restart.

use std::path::PathBuf;
use std::sync::Mutex;

use rampart_config::Config;
use serde_json::{json, Value};

/// The configuration this node runs, and the file it came from.
pub struct Running {
    path: Option<PathBuf>,
    /// Whether this node's edge reloads from the file (routes, services and
    /// revoked client serials then follow it without a restart).
    reloads: bool,
    config: Mutex<Config>,
}

impl Running {
    /// A node started from `config`, read from `path` (`None`: built in).
    pub fn new(path: Option<PathBuf>, config: Config, reloads: bool) -> Self {
        Running {
            path,
            reloads,
            config: Mutex::new(config),
        }
    }

    /// Notes a successful edge reload: the edge now runs `new`'s routes,
    /// services and revoked client serials.
    pub fn reloaded(&self, new: &Config) {
        let mut running = self.config.lock().unwrap_or_else(|p| p.into_inner());
        running.routes = new.routes.clone();
        running.services = new.services.clone();
        if let (Some(r), Some(n)) = (running.edge.as_mut(), new.edge.as_ref()) {
            r.revoked_client_serials = n.revoked_client_serials.clone();
        }
    }

    /// The drift report: `state` is `current` (the file says what runs),
    /// `drifted` (with `reload_applies` and `restart_needed`), `invalid`
    /// (the file no longer loads: `error` says where) or `none` (the node
    /// runs the built-in development config).
    pub fn report(&self) -> Value {
        let Some(path) = &self.path else {
            return json!({ "file": null, "state": "none" });
        };
        let file = path.display().to_string();
        let on_disk = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                return json!({ "file": file, "state": "invalid", "error": e.to_string() });
            }
        };
        let running = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let (reload, restart) = differences(&running, &on_disk, self.reloads);
        let state = if reload.is_empty() && restart.is_empty() {
            "current"
        } else {
            "drifted"
        };
        json!({
            "file": file,
            "state": state,
            "reload_applies": reload,
            "restart_needed": restart,
        })
    }
}

/// The sections of `disk` that differ from `running`: those an edge reload
/// applies (when `reloads`), and those only a restart does.
fn differences(
    running: &Config,
    disk: &Config,
    reloads: bool,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut reload = Vec::new();
    let mut restart = Vec::new();
    let mut by_reload = |differs: bool, name: &'static str| {
        if differs {
            if reloads {
                reload.push(name);
            } else {
                restart.push(name);
            }
        }
    };
    by_reload(running.routes != disk.routes, "routes");
    by_reload(running.services != disk.services, "services");
    by_reload(
        running.edge.as_ref().map(|e| &e.revoked_client_serials)
            != disk.edge.as_ref().map(|e| &e.revoked_client_serials),
        "edge.revoked_client_serials",
    );
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            restart.push(name);
        }
    };
    check(running.node != disk.node, "node");
    check(running.control != disk.control, "control");
    check(running.environments != disk.environments, "environments");
    check(running.roles != disk.roles, "roles");
    check(running.keys != disk.keys, "keys");
    check(running.audit != disk.audit, "audit");
    check(running.identity != disk.identity, "identity");
    check(running.store != disk.store, "store");
    check(running.redis != disk.redis, "redis");
    restart.extend(crate::edge::start_only_changes(
        running.edge.as_ref(),
        disk.edge.as_ref(),
    ));
    (reload, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[edge]\n[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, "d.toml").unwrap()
    }

    #[test]
    fn sections_are_sorted_into_reload_and_restart() {
        let running = parse(BASE);
        assert_eq!(differences(&running, &parse(BASE), true), (vec![], vec![]));
        let more = format!(
            "{BASE}[[routes]]\nhost = \"y.test\"\nservice = \"a\"\n[audit]\ncheckpoint_every_records = 5\n"
        )
        .replace("[edge]\n", "[edge]\ndrain_seconds = 3\n");
        let (reload, restart) = differences(&running, &parse(&more), true);
        assert_eq!(reload, ["routes"]);
        assert_eq!(restart, ["audit", "edge.drain_seconds"]);
        // Without an edge that reloads, routes need a restart too.
        let (reload, restart) = differences(&running, &parse(&more), false);
        assert!(reload.is_empty());
        assert_eq!(restart, ["routes", "audit", "edge.drain_seconds"]);
    }
}
