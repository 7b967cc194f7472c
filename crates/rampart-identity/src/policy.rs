//! Roles, permissions and the one authorisation check.
//!
//! Every plane and the edge ask [`Authorizer::authorize`] (or, for an
//! operation on a principal or a team, [`Authorizer::authorize_in`]) and
//! nothing else. A decision takes these steps, in this order, and the first
//! that fails names the reason: the resource's environment must be one of
//! the principal's (environments are hard walls: no role or wildcard crosses
//! them); a service principal never manages identities (no `identity:`
//! permission but reads: it cannot mint credentials); and one of the
//! principal's roles must grant the permission *within the [`Scope`]*:
//!
//! | role | reaches |
//! | --- | --- |
//! | `admin` | everything |
//! | `team_admin` | its own account; principals and teams it shares a team with: reads, and changes to members that hold neither `admin` nor `team_admin` and act in no environment the team admin lacks |
//! | `team_member` | its own account; reads of principals and teams it shares a team with |
//! | `individual` | its own account |
//!
//! A team admin administers the teams it belongs to (roles are global, team
//! membership says where a team role applies). `identity:` permissions asked
//! without a principal or team ([`Scope::Environment`]) are platform-wide:
//! only `admin` reaches them. Every decision is audited with its reason; if
//! the audit log refuses the record, the decision is a denial (fail closed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rampart_audit::{Actor, Audit, Event, Outcome, Tier};
use serde::{Deserialize, Serialize};

use crate::IdentityError;

/// The environment identity management itself (users, keys, elevations)
/// lives in. It is a wall like any other: a principal manages identities
/// only if it may act in `platform`.
pub const PLATFORM_ENV: &str = "platform";

/// A role. Permissions per role come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Platform administrator.
    Admin,
    /// Administers a team.
    TeamAdmin,
    /// Member of a team.
    TeamMember,
    /// A user on their own.
    Individual,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::TeamAdmin,
        Role::TeamMember,
        Role::Individual,
    ];

    /// The name used in configuration and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TeamAdmin => "team_admin",
            Role::TeamMember => "team_member",
            Role::Individual => "individual",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::InvalidRequest(format!("unknown role {s:?}")))
    }
}

/// What kind of principal acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    User,
    /// A machine identity; authenticates with API keys only.
    Service,
    /// The local operator running the CLI against the data directory (holds the root key).
    System,
}

/// An authenticated principal, as the check sees it: built from a verified
/// access token or API key, never from what a client claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id (`u_…`, `s_…`, or `system`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What kind of principal.
    pub kind: PrincipalKind,
    /// Effective roles, including approved elevations still active.
    pub roles: BTreeSet<Role>,
    /// Roles held without elevation (approvals need an unelevated admin).
    pub base_roles: BTreeSet<Role>,
    /// Teams the principal belongs to.
    pub teams: Vec<String>,
    /// Environments the principal may act in.
    pub environments: BTreeSet<String>,
    /// How it authenticated (`password`, `password+totp`, `api-key`, `local`).
    pub auth_method: String,
    /// The session (access tokens) or key id (API keys) it came through.
    pub session: Option<String>,
}

impl Principal {
    /// The local operator: an admin in the given environments, for the CLI
    /// run by whoever holds the root key (bootstrap, recovery).
    pub fn system(environments: &[&str]) -> Self {
        let roles: BTreeSet<Role> = [Role::Admin].into();
        Principal {
            id: "system".into(),
            name: "system".into(),
            kind: PrincipalKind::System,
            roles: roles.clone(),
            base_roles: roles,
            teams: Vec::new(),
            environments: environments.iter().map(|e| (*e).to_owned()).collect(),
            auth_method: "local".into(),
            session: None,
        }
    }
}

/// One segment of a permission pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Any,
    Exact(String),
}

impl Seg {
    fn matches(&self, s: &str) -> bool {
        match self {
            Seg::Any => true,
            Seg::Exact(e) => e == s,
        }
    }
}

/// A permission pattern: `plane:action`, where either side may be `*`, or
/// `*` alone for everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionPattern {
    plane: Seg,
    action: Seg,
    text: String,
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

impl FromStr for PermissionPattern {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::Config(format!("invalid permission pattern {s:?}"));
        if s == "*" {
            return Ok(PermissionPattern {
                plane: Seg::Any,
                action: Seg::Any,
                text: s.into(),
            });
        }
        let (plane, action) = s.split_once(':').ok_or_else(bad)?;
        let seg = |p: &str| -> Result<Seg, IdentityError> {
            if p == "*" {
                Ok(Seg::Any)
            } else if valid_word(p) {
                Ok(Seg::Exact(p.to_owned()))
            } else {
                Err(bad())
            }
        };
        Ok(PermissionPattern {
            plane: seg(plane)?,
            action: seg(action)?,
            text: s.into(),
        })
    }
}

impl PermissionPattern {
    /// Whether this pattern grants `permission` (`plane:action`).
    pub fn grants(&self, permission: &str) -> bool {
        match permission.split_once(':') {
            Some((p, a)) => self.plane.matches(p) && self.action.matches(a),
            None => false,
        }
    }
}

/// The principal an identity operation acts on, as team scoping sees it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its id.
    pub id: &'a str,
    /// The teams it belongs to.
    pub teams: &'a [String],
    /// The roles it holds, active elevations included (a member elevated
    /// to `admin` is out of a team admin's reach while it lasts).
    pub roles: &'a BTreeSet<Role>,
    /// The environments it may act in.
    pub environments: &'a BTreeSet<String>,
}

/// What an operation acts on, for team scoping (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Resources of the environment as a whole: keys, secrets, routes; for
    /// an `identity:` permission, the whole platform (only `admin`).
    Environment,
    /// The actor's own account, API keys, password, TOTP and elevations.
    Own,
    /// Another principal (or the actor, for reads).
    Principal(Target<'a>),
    /// Every one of these teams (none: nothing a team role reaches).
    Teams(&'a [String]),
}

impl Scope<'_> {
    fn describe(&self) -> String {
        match self {
            Scope::Environment => String::new(),
            Scope::Own => " on its own account".into(),
            Scope::Principal(t) => format!(" on {}", t.id),
            Scope::Teams(ts) => format!(" on team(s) [{}]", ts.join(", ")),
        }
    }
}

/// Whether `permission` only reads (`identity:users.read`).
fn is_read(permission: &str) -> bool {
    permission.ends_with(".read") || permission.ends_with(":read")
}

fn shares_team(actor: &Principal, teams: &[String]) -> bool {
    teams.iter().any(|t| actor.teams.contains(t))
}

/// Whether a grant through `role` reaches `scope`; `Err` says why not.
fn reaches(
    role: Role,
    actor: &Principal,
    permission: &str,
    scope: &Scope<'_>,
) -> Result<(), String> {
    let identity = permission.starts_with("identity:");
    let read = is_read(permission);
    match (role, scope) {
        (Role::Admin, _) => Ok(()),
        (_, Scope::Environment) if identity => {
            Err(format!("{permission} across the platform needs admin"))
        }
        (_, Scope::Environment | Scope::Own) => Ok(()),
        (_, Scope::Principal(t)) if read && t.id == actor.id => Ok(()),
        (Role::TeamAdmin, Scope::Principal(t)) => {
            if !shares_team(actor, t.teams) {
                Err(format!("{} is in none of the principal's teams", t.id))
            } else if !read
                && (t.roles.contains(&Role::Admin) || t.roles.contains(&Role::TeamAdmin))
            {
                Err(format!("{} holds admin or team_admin", t.id))
            } else if !read && !t.environments.is_subset(&actor.environments) {
                Err(format!(
                    "{} acts in environments the principal does not",
                    t.id
                ))
            } else {
                Ok(())
            }
        }
        (Role::TeamMember, Scope::Principal(t)) => {
            if !read {
                Err("team members administer no one".into())
            } else if !shares_team(actor, t.teams) {
                Err(format!("{} is in none of the principal's teams", t.id))
            } else {
                Ok(())
            }
        }
        (Role::Individual, Scope::Principal(t)) => {
            Err(format!("{} is not the principal itself", t.id))
        }
        (Role::TeamAdmin | Role::TeamMember, Scope::Teams(ts)) => {
            if ts.is_empty() || !ts.iter().all(|t| actor.teams.contains(t)) {
                Err(format!(
                    "team(s) [{}] are not all the principal's",
                    ts.join(", ")
                ))
            } else if role == Role::TeamMember && !read {
                Err("team members administer no team".into())
            } else {
                Ok(())
            }
        }
        (Role::Individual, Scope::Teams(_)) => Err("individuals belong to no team".into()),
    }
}

/// The permissions each role grants, validated once from configuration.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: BTreeMap<Role, Vec<PermissionPattern>>,
}

impl Policy {
    /// Builds the policy from `rampart.toml`'s table (role name → patterns).
    /// Unknown role names and malformed patterns are errors.
    pub fn from_config(table: &BTreeMap<String, Vec<String>>) -> Result<Self, IdentityError> {
        let mut grants = BTreeMap::new();
        for (name, patterns) in table {
            let role: Role = name
                .parse()
                .map_err(|_| IdentityError::Config(format!("unknown role {name:?}")))?;
            let parsed = patterns
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<PermissionPattern>, _>>()?;
            grants.insert(role, parsed);
        }
        Ok(Policy { grants })
    }

    /// A sensible starting table, for `rampart init` to write into `rampart.toml`.
    pub fn default_table() -> BTreeMap<String, Vec<String>> {
        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        BTreeMap::from([
            ("admin".to_owned(), t(&["*"])),
            (
                "team_admin".to_owned(),
                t(&[
                    "keys:*",
                    "secrets:*",
                    "identity:users.read",
                    "identity:users.create",
                    "identity:users.update",
                    "identity:sessions.revoke",
                    "identity:apikeys.manage",
                    "identity:apikeys.own",
                    "identity:mfa.own",
                    "identity:password.own",
                    "identity:elevations.request",
                ]),
            ),
            (
                "team_member".to_owned(),
                t(&[
                    "keys:read",
                    "keys:encrypt",
                    "keys:decrypt",
                    "secrets:read",
                    "identity:users.read",
                    "identity:apikeys.own",
                    "identity:mfa.own",
                    "identity:password.own",
                    "identity:elevations.request",
                ]),
            ),
            (
                "individual".to_owned(),
                t(&[
                    "secrets:read",
                    "identity:apikeys.own",
                    "identity:mfa.own",
                    "identity:password.own",
                ]),
            ),
        ])
    }

    /// Each of `roles` that grants `permission`, with the first pattern
    /// that does.
    fn grants<'a>(
        &'a self,
        roles: &'a BTreeSet<Role>,
        permission: &'a str,
    ) -> impl Iterator<Item = (Role, &'a str)> + 'a {
        roles.iter().filter_map(move |r| {
            self.grants
                .get(r)
                .and_then(|ps| ps.iter().find(|p| p.grants(permission)))
                .map(|p| (*r, p.text.as_str()))
        })
    }
}

/// The answer to one authorisation question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action may go ahead.
    pub allowed: bool,
    /// Why, in words fit for the audit log (never shown to the caller).
    pub reason: String,
}

/// The one authorisation check. Cheap to clone; share it with every plane.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policy: Arc<Policy>,
    audit: Arc<Audit>,
    node: String,
}

impl Authorizer {
    /// A check over `policy` that records to `audit`, naming `node` in records.
    pub fn new(policy: Policy, audit: Arc<Audit>, node: impl Into<String>) -> Self {
        Authorizer {
            policy: Arc::new(policy),
            audit,
            node: node.into(),
        }
    }

    /// The decision alone, unaudited: for tests and for listing what a
    /// principal could do. Enforcement always goes through [`Self::authorize`].
    pub fn decide(&self, principal: &Principal, permission: &str, resource_env: &str) -> Decision {
        self.decide_in(principal, permission, resource_env, Scope::Environment)
    }

    /// [`Self::decide`] for an operation on `scope`.
    pub fn decide_in(
        &self,
        principal: &Principal,
        permission: &str,
        resource_env: &str,
        scope: Scope<'_>,
    ) -> Decision {
        let deny = |reason: String| Decision {
            allowed: false,
            reason,
        };
        if !permission.contains(':') {
            return deny(format!("malformed permission {permission:?}"));
        }
        if !principal.environments.contains(resource_env) {
            return deny(format!(
                "environment {resource_env:?} is outside the principal's environments"
            ));
        }
        if principal.kind == PrincipalKind::Service
            && permission.starts_with("identity:")
            && !is_read(permission)
        {
            return deny(format!(
                "service principals manage no identities and mint no credentials ({permission})"
            ));
        }
        let on = scope.describe();
        let mut out_of_reach = Vec::new();
        for (role, pattern) in self.policy.grants(&principal.roles, permission) {
            match reaches(role, principal, permission, &scope) {
                Ok(()) => {
                    return Decision {
                        allowed: true,
                        reason: format!("role {role} grants {pattern:?}{on}"),
                    }
                }
                Err(why) => out_of_reach.push(format!("role {role}: {why}")),
            }
        }
        if !out_of_reach.is_empty() {
            return deny(format!(
                "{permission}{on} is out of reach: {}",
                out_of_reach.join("; ")
            ));
        }
        deny(format!(
            "no role of [{}] grants {permission}",
            principal
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Decides whether `principal` may do `permission` (`plane:action`) on a
    /// resource in `resource_env`, and audits the decision with its reason.
    /// If the audit log refuses the record the answer is a denial.
    pub fn authorize(
        &self,
        principal: &Principal,
        permission: &str,
        resource_env: &str,
    ) -> Decision {
        self.authorize_in(principal, permission, resource_env, Scope::Environment)
    }

    /// [`Self::authorize`] for an operation on `scope`: a principal, a team,
    /// the actor's own account.
    pub fn authorize_in(
        &self,
        principal: &Principal,
        permission: &str,
        resource_env: &str,
        scope: Scope<'_>,
    ) -> Decision {
        let d = self.decide_in(principal, permission, resource_env, scope);
        let outcome = if d.allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let mut ev = Event::new(
            Tier::Security,
            Actor::new(principal.id.clone(), principal.auth_method.clone()),
            "authz.decide",
            permission,
            outcome,
        );
        ev.environment = resource_env.to_owned();
        ev.node = self.node.clone();
        ev.reason = Some(d.reason.clone());
        match crate::record_durably(&self.audit, ev) {
            Ok(_) => d,
            Err(e) => Decision {
                allowed: false,
                reason: format!("audit log refused the record: {e}"),
            },
        }
    }

    /// [`Self::authorize`] as a `Result`, for code paths that stop on denial.
    pub fn require(
        &self,
        principal: &Principal,
        permission: &str,
        resource_env: &str,
    ) -> Result<(), IdentityError> {
        self.require_in(principal, permission, resource_env, Scope::Environment)
    }

    /// [`Self::authorize_in`] as a `Result`.
    pub fn require_in(
        &self,
        principal: &Principal,
        permission: &str,
        resource_env: &str,
        scope: Scope<'_>,
    ) -> Result<(), IdentityError> {
        let d = self.authorize_in(principal, permission, resource_env, scope);
        if d.allowed {
            Ok(())
        } else {
            Err(IdentityError::Forbidden(permission.to_owned()))
        }
    }

    /// The audit log decisions go to.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// The node name put in records.
    pub fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let p = |s: &str| s.parse::<PermissionPattern>().unwrap();
        assert!(p("*").grants("keys:rotate"));
        assert!(p("keys:*").grants("keys:rotate"));
        assert!(!p("keys:*").grants("keysx:rotate"));
        assert!(!p("keys:*").grants("secrets:read"));
        assert!(p("*:read").grants("secrets:read"));
        assert!(!p("*:read").grants("secrets:read_all"));
        assert!(p("keys:read").grants("keys:read"));
        assert!(!p("keys:read").grants("keys:rea"));
        assert!(!p("*").grants("no-colon"));
        for bad in [
            "",
            "keys",
            "keys:",
            ":read",
            "Keys:read",
            "keys:re*",
            "a:b:c",
            "**",
        ] {
            assert!(bad.parse::<PermissionPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(Policy::from_config(&Policy::default_table()).is_ok());
        let bad_role = BTreeMap::from([("root".to_owned(), vec!["*".to_owned()])]);
        assert!(matches!(
            Policy::from_config(&bad_role),
            Err(IdentityError::Config(_))
        ));
        let bad_pattern = BTreeMap::from([("admin".to_owned(), vec!["keys".to_owned()])]);
        assert!(Policy::from_config(&bad_pattern).is_err());
    }

    #[test]
    fn errors_map_to_statuses_without_detail() {
        assert_eq!(IdentityError::InvalidCredentials.status(), 401);
        assert_eq!(IdentityError::InvalidToken.code(), "invalid_token");
        let t = IdentityError::Throttled {
            retry_after: std::time::Duration::from_secs(3),
        };
        assert_eq!((t.status(), t.code()), (429, "too_many_attempts"));
        assert_eq!(IdentityError::Forbidden("x".into()).status(), 403);
    }
}
