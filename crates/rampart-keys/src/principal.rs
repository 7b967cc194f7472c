//! Who is calling: the principal and the plane it calls through.
//!
//! This crate authenticates nobody. The identity plane verifies the
//! credential (a service principal's API key, a user's access token) and the
//! control API hands the result in as a [`Principal`].

use serde::{Deserialize, Serialize};

/// An authenticated caller, as the identity plane vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// A stable identifier (`alice`, `svc:payments`).
    pub id: String,
    /// The environment the principal belongs to; a hard wall.
    pub environment: String,
    /// The service the principal is, when it is one.
    #[serde(default)]
    pub service: Option<String>,
    /// Roles, matched by `role:NAME` in policies.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Principal {
    /// A principal that is the service `service` in `environment`.
    pub fn service(environment: &str, service: &str) -> Self {
        Principal {
            id: format!("svc:{service}"),
            environment: environment.to_owned(),
            service: Some(service.to_owned()),
            roles: Vec::new(),
        }
    }

    /// A human or other non-service principal.
    pub fn user(environment: &str, id: &str, roles: &[&str]) -> Self {
        Principal {
            id: id.to_owned(),
            environment: environment.to_owned(),
            service: None,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// A request's caller: the principal, the Rampart plane it came through (the
/// via-service condition), and what ties the audit record to the request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The plane or service that calls on the principal's behalf (`secrets`).
    pub via_service: Option<String>,
    /// The request id for the audit record.
    pub request_id: Option<String>,
    /// The source address for the audit record.
    pub source: Option<String>,
    /// How the principal authenticated, for the audit record.
    pub auth: String,
    system: bool,
}

impl Caller {
    /// A principal calling directly.
    pub fn direct(principal: Principal) -> Self {
        Caller {
            principal,
            via_service: None,
            request_id: None,
            source: None,
            auth: "api-token".into(),
            system: false,
        }
    }

    /// A principal calling through the Rampart plane or service `via`.
    pub fn via(principal: Principal, via: &str) -> Self {
        Caller {
            via_service: Some(via.to_owned()),
            ..Caller::direct(principal)
        }
    }

    /// Rampart itself (the scheduler, configuration loading) acting in
    /// `environment`. Policy does not apply to it, the environment wall and
    /// the audit log do. Never build one from a network request.
    pub fn system(environment: &str, component: &str) -> Self {
        Caller {
            principal: Principal {
                id: format!("rampart:{component}"),
                environment: environment.to_owned(),
                service: Some("rampart".into()),
                roles: vec!["system".into()],
            },
            via_service: None,
            request_id: None,
            source: None,
            auth: "internal".into(),
            system: true,
        }
    }

    /// The same caller, now calling through `via` (a plane forwarding the request).
    pub fn through(&self, via: &str) -> Self {
        Caller {
            via_service: Some(via.to_owned()),
            ..self.clone()
        }
    }

    /// Whether this is Rampart itself.
    pub fn is_system(&self) -> bool {
        self.system
    }
}
