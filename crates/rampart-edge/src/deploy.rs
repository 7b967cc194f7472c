//! Deployments that roll back when unhealthy: a reload that gives a service
//! other instances does not send them traffic until they are verified.
//!
//! The seeds promise circuit-breaker deployments: "if a new deployment
//! fails health checks, the platform automatically rolls back to the last
//! known healthy version". At the edge a deployment is a reload (SIGHUP or
//! the control API) that changes a service's instances. With active health
//! checks (`[edge.health_check]`) and a deploy window
//! (`deploy_window_ms`, default 60 s):
//!
//! - the service keeps serving from its current instances, and the new set
//!   is probed as a candidate, every instance starting as down;
//! - once every instance of the new set has passed `rise` probes, it takes
//!   the traffic, and the old instances drain (requests in flight on them
//!   finish);
//! - if the window ends first, the change is rolled back: the service stays
//!   on its old instances, the edge logs a warning naming the instances that
//!   failed, and [`crate::EdgeHandle::deployments`] (and `/metrics`) say so.
//!   The config file still names the new set: `rampart status` reports the
//!   drift, and the next reload of a fixed config tries again.
//!
//! A service new to the config, or one without instances before, has
//! nothing to fall back to and takes its instances at once; so does every
//! change when the window is 0 or no health checks run.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::Pool;

/// A service's new instances under verification.
#[derive(Debug, Clone)]
pub struct Deploy {
    candidate: Arc<Pool>,
    previous: Vec<String>,
    /// Unix nanoseconds.
    started: u64,
    until: u64,
}

/// How a deployment ended, or that it is still being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployState {
    /// The new instances are being probed; the old ones serve.
    Verifying,
    /// Every new instance passed: they serve now.
    Promoted,
    /// The window ended first: the old instances go on serving.
    RolledBack,
}

impl DeployState {
    /// A name for logs, metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Verifying => "verifying",
            DeployState::Promoted => "promoted",
            DeployState::RolledBack => "rolled_back",
        }
    }
}

/// One deployment as [`crate::EdgeHandle::deployments`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployStatus {
    /// The service.
    pub service: String,
    /// Its instances before the change.
    pub previous: Vec<String>,
    /// The instances the change named.
    pub new: Vec<String>,
    /// Those of them not yet (or never) healthy.
    pub unhealthy: Vec<String>,
    /// Where it stands.
    pub state: DeployState,
    /// When it began, Unix seconds.
    pub started_unix: u64,
}

impl Deploy {
    /// A deployment of `candidate` (whose instances start down) replacing
    /// `previous`, begun at `now` (Unix nanoseconds), given `window`.
    pub fn new(candidate: Arc<Pool>, previous: Vec<String>, now: u64, window: Duration) -> Deploy {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        Deploy {
            candidate,
            previous,
            started: now,
            until: now.saturating_add(window),
        }
    }

    /// The new instances' pool.
    pub fn candidate(&self) -> &Arc<Pool> {
        &self.candidate
    }

    /// Where the deployment stands at `now` (Unix nanoseconds): promoted
    /// once every new instance is healthy, rolled back once the window has
    /// ended without that.
    pub fn decide(&self, now: u64) -> DeployState {
        if self.candidate.all_healthy() {
            DeployState::Promoted
        } else if now >= self.until {
            DeployState::RolledBack
        } else {
            DeployState::Verifying
        }
    }

    /// The status of `service`'s deployment in `state`.
    pub fn status(&self, service: &str, state: DeployState) -> DeployStatus {
        DeployStatus {
            service: service.to_string(),
            previous: self.previous.clone(),
            new: self.candidate.addrs(),
            unhealthy: self.candidate.unhealthy_addrs(),
            state,
            started_unix: self.started / 1_000_000_000,
        }
    }
}
