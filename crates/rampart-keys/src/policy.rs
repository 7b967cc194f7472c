//! Policies, default deny: which principal may take which action on which
//! resource, under which conditions. One policy per environment, shared by
//! the keys and secrets planes (as KMS key policies and Secrets Manager
//! resource policies are, through the via-service condition).
//!
//! The environment wall is not a policy: [`evaluate`] refuses a principal of
//! one environment on a resource of another before any statement is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use rampart_core::SharedClock;
use rampart_store::{Expect, Store};
use serde::{Deserialize, Serialize};

use crate::{Caller, KeysError};

const POLICY_NS: &str = "policy";

/// Every action a policy can name.
pub const ACTIONS: &[&str] = &[
    "keys:create",
    "keys:describe",
    "keys:list",
    "keys:encrypt",
    "keys:decrypt",
    "keys:generate-data-key",
    "keys:rewrap",
    "keys:rotate",
    "keys:configure",
    "keys:schedule-deletion",
    "keys:cancel-deletion",
    "secrets:put",
    "secrets:get",
    "secrets:list",
    "secrets:delete",
    "secrets:restore",
    "secrets:rotate",
];

/// Whether a statement allows or denies; a matching deny always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// Conditions that must all hold for a statement to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// The principal's environment must be one of these (empty: any).
    #[serde(default)]
    pub environments: Vec<String>,
    /// The request must come through one of these services or planes
    /// (empty: any, including direct calls).
    #[serde(default)]
    pub via_services: Vec<String>,
    /// The principal must be one of these services (empty: any principal).
    #[serde(default)]
    pub caller_services: Vec<String>,
    /// The encryption context must hold these keys with these values.
    #[serde(default)]
    pub context_equals: BTreeMap<String, String>,
    /// The encryption context must hold these keys, whatever their values.
    #[serde(default)]
    pub context_keys: Vec<String>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// A name, quoted in audit reasons.
    pub id: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Who: `*`, `id:NAME`, `service:NAME` or `role:NAME`.
    pub principals: Vec<String>,
    /// What: action names from [`ACTIONS`], or a prefix ending in `*` (`keys:*`).
    pub actions: Vec<String>,
    /// On what: `key:NAME` or `secret:SERVICE/NAME`, each may end in `*`.
    pub resources: Vec<String>,
    /// When.
    #[serde(default)]
    pub conditions: Conditions,
}

/// What a request is, as a policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The action (one of [`ACTIONS`]).
    pub action: &'a str,
    /// The resource (`key:NAME`, `secret:SERVICE/NAME`).
    pub resource: &'a str,
    /// The resource's environment.
    pub environment: &'a str,
    /// The encryption context, if the action has one.
    pub context: Option<&'a BTreeMap<String, String>>,
}

/// The verdict and the reason recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: String,
}

fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn principal_matches(pattern: &str, caller: &Caller) -> bool {
    let p = &caller.principal;
    if pattern == "*" {
        return true;
    }
    if let Some(id) = pattern.strip_prefix("id:") {
        return glob(id, &p.id);
    }
    if let Some(svc) = pattern.strip_prefix("service:") {
        return p.service.as_deref().is_some_and(|s| glob(svc, s));
    }
    if let Some(role) = pattern.strip_prefix("role:") {
        return p.roles.iter().any(|r| glob(role, r));
    }
    false
}

fn conditions_hold(c: &Conditions, caller: &Caller, req: &Request<'_>) -> bool {
    let p = &caller.principal;
    if !c.environments.is_empty() && !c.environments.iter().any(|e| e == &p.environment) {
        return false;
    }
    if !c.via_services.is_empty() {
        let Some(via) = caller.via_service.as_deref() else {
            return false;
        };
        if !c.via_services.iter().any(|v| v == via) {
            return false;
        }
    }
    if !c.caller_services.is_empty() {
        let Some(svc) = p.service.as_deref() else {
            return false;
        };
        if !c.caller_services.iter().any(|s| s == svc) {
            return false;
        }
    }
    if !c.context_equals.is_empty() || !c.context_keys.is_empty() {
        let Some(ctx) = req.context else {
            return false;
        };
        if !c
            .context_equals
            .iter()
            .all(|(k, v)| ctx.get(k).is_some_and(|got| got == v))
        {
            return false;
        }
        if !c.context_keys.iter().all(|k| ctx.contains_key(k)) {
            return false;
        }
    }
    true
}

/// Decides a request: the environment wall first, then system callers, then
/// an explicit deny, then an allow; nothing matching is a deny.
pub fn evaluate(statements: &[Statement], caller: &Caller, req: &Request<'_>) -> Decision {
    if caller.principal.environment != req.environment {
        return Decision {
            allowed: false,
            reason: format!(
                "environment wall: principal of {:?} may not use a resource of {:?}",
                caller.principal.environment, req.environment
            ),
        };
    }
    if caller.is_system() {
        return Decision {
            allowed: true,
            reason: format!("system caller {}", caller.principal.id),
        };
    }
    let applies = |s: &&Statement| {
        s.principals.iter().any(|p| principal_matches(p, caller))
            && s.actions.iter().any(|a| glob(a, req.action))
            && s.resources.iter().any(|r| glob(r, req.resource))
            && conditions_hold(&s.conditions, caller, req)
    };
    if let Some(s) = statements
        .iter()
        .filter(|s| s.effect == Effect::Deny)
        .find(applies)
    {
        return Decision {
            allowed: false,
            reason: format!("denied by statement {:?}", s.id),
        };
    }
    if let Some(s) = statements
        .iter()
        .filter(|s| s.effect == Effect::Allow)
        .find(applies)
    {
        return Decision {
            allowed: true,
            reason: format!("allowed by statement {:?}", s.id),
        };
    }
    Decision {
        allowed: false,
        reason: format!(
            "default deny: no statement allows {} on {} for {}",
            req.action, req.resource, caller.principal.id
        ),
    }
}

/// The context keys that some statement's conditions read, sorted and
/// without repeats. [`evaluate`] reads a request's context only through
/// these keys (whether each is present, and its value), so two requests
/// that differ only in their contexts, and agree on these keys, get the same
/// decision: a batch decides such items once.
pub fn condition_context_keys(statements: &[Statement]) -> Vec<&str> {
    let mut keys: Vec<&str> = statements
        .iter()
        .flat_map(|s| {
            s.conditions
                .context_equals
                .keys()
                .chain(&s.conditions.context_keys)
                .map(String::as_str)
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Checks a policy once, when it is set, so evaluation never meets a bad one.
pub fn validate(statements: &[Statement]) -> Result<(), KeysError> {
    let bad = |why: String| Err(KeysError::InvalidRequest(why));
    let mut ids = std::collections::HashSet::new();
    for s in statements {
        if s.id.is_empty() || !ids.insert(s.id.as_str()) {
            return bad(format!("statement id {:?} is empty or repeated", s.id));
        }
        if s.principals.is_empty() || s.actions.is_empty() || s.resources.is_empty() {
            return bad(format!(
                "statement {:?} needs principals, actions and resources",
                s.id
            ));
        }
        for p in &s.principals {
            let ok = p == "*"
                || ["id:", "service:", "role:"]
                    .iter()
                    .any(|pre| p.strip_prefix(pre).is_some_and(|r| !r.is_empty()));
            if !ok {
                return bad(format!(
                    "statement {:?}: principal {p:?} is not *, id:, service: or role:",
                    s.id
                ));
            }
        }
        for a in &s.actions {
            if !ACTIONS.iter().any(|known| glob(a, known)) {
                return bad(format!("statement {:?}: unknown action {a:?}", s.id));
            }
        }
        for r in &s.resources {
            if !(r.starts_with("key:") || r.starts_with("secret:") || r == "*") {
                return bad(format!(
                    "statement {:?}: resource {r:?} is not key:… or secret:…",
                    s.id
                ));
            }
        }
    }
    Ok(())
}

/// The policies of every environment, kept in the store (namespace `policy`,
/// one JSON record per environment) and cached in memory for
/// [`CACHE_TTL_SECS`](crate::CACHE_TTL_SECS), so that a policy another node
/// sets through a shared store takes effect here within that time.
#[derive(Clone)]
pub struct Policies {
    store: Arc<dyn Store>,
    clock: SharedClock,
    cache: Arc<RwLock<HashMap<String, Cached>>>,
    /// Bumped (with the cache locked) by every `set`: a `get` that read the
    /// store before a `set` landed does not cache what it read.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// A policy and when it was read (Unix seconds).
type Cached = (u64, Arc<Vec<Statement>>);

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Policies {
    /// Policies kept in `store`; `clock` times the cache.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Policies {
            store,
            clock,
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// Replaces the policy of `environment` after validating it.
    pub async fn set(
        &self,
        environment: &str,
        statements: Vec<Statement>,
    ) -> Result<(), KeysError> {
        crate::valid_name(environment)?;
        validate(&statements)?;
        let json =
            serde_json::to_vec(&statements).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        self.store
            .put(POLICY_NS, environment, &json, Expect::Any)
            .await?;
        let now = self.clock.unix_secs();
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.insert(environment.to_owned(), (now, Arc::new(statements)));
        Ok(())
    }

    /// The policy of `environment` (empty, so deny-all, if none was set).
    pub async fn get(&self, environment: &str) -> Result<Arc<Vec<Statement>>, KeysError> {
        let now = self.clock.unix_secs();
        if let Some((loaded_at, p)) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(environment)
        {
            if crate::service::younger_than(now, *loaded_at, crate::CACHE_TTL_SECS) {
                return Ok(p.clone());
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let statements: Vec<Statement> = match self.store.get(POLICY_NS, environment).await? {
            Some(e) => serde_json::from_slice(&e.value)
                .map_err(|e| KeysError::Corrupt(format!("{POLICY_NS}/{environment}: {e}")))?,
            None => Vec::new(),
        };
        let p = Arc::new(statements);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // A `set` since the read above: what was read may be the old
        // policy, so it is used for this call only.
        if self.generation.load(Ordering::SeqCst) == generation {
            cache.insert(environment.to_owned(), (now, p.clone()));
        }
        Ok(p)
    }

    /// Decides `req` for `caller` under the policy of the request's environment.
    pub async fn decide(&self, caller: &Caller, req: &Request<'_>) -> Result<Decision, KeysError> {
        let statements = self.get(req.environment).await?;
        Ok(evaluate(&statements, caller, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Principal;

    fn stmt(
        effect: Effect,
        principals: &[&str],
        actions: &[&str],
        resources: &[&str],
    ) -> Statement {
        Statement {
            id: format!("{effect:?}-{}", principals.join(",")),
            effect,
            principals: principals.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            conditions: Conditions::default(),
        }
    }

    fn req<'a>(action: &'a str, resource: &'a str, env: &'a str) -> Request<'a> {
        Request {
            action,
            resource,
            environment: env,
            context: None,
        }
    }

    #[test]
    fn default_deny_and_explicit_deny_wins() {
        let c = Caller::direct(Principal::service("prod", "payments"));
        let d = evaluate(&[], &c, &req("keys:encrypt", "key:k", "prod"));
        assert!(!d.allowed && d.reason.starts_with("default deny"), "{d:?}");
        let allow = stmt(
            Effect::Allow,
            &["service:payments"],
            &["keys:*"],
            &["key:*"],
        );
        let deny = stmt(Effect::Deny, &["*"], &["keys:decrypt"], &["key:k"]);
        let p = vec![allow, deny];
        assert!(evaluate(&p, &c, &req("keys:encrypt", "key:k", "prod")).allowed);
        let d = evaluate(&p, &c, &req("keys:decrypt", "key:k", "prod"));
        assert!(
            !d.allowed && d.reason.contains("denied by statement"),
            "{d:?}"
        );
    }

    #[test]
    fn environment_wall_beats_any_policy_and_system() {
        let p = vec![stmt(Effect::Allow, &["*"], &["*"], &["*"])];
        let c = Caller::direct(Principal::service("staging", "payments"));
        let d = evaluate(&p, &c, &req("keys:encrypt", "key:k", "prod"));
        assert!(!d.allowed && d.reason.contains("environment wall"), "{d:?}");
        let sys = Caller::system("staging", "scheduler");
        assert!(!evaluate(&p, &sys, &req("keys:rotate", "key:k", "prod")).allowed);
    }

    #[test]
    fn conditions_via_service_and_context() {
        let mut s = stmt(
            Effect::Allow,
            &["service:payments"],
            &["keys:decrypt"],
            &["key:k"],
        );
        s.conditions.via_services = vec!["secrets".into()];
        s.conditions
            .context_equals
            .insert("tenant".into(), "acme".into());
        s.conditions.context_keys = vec!["purpose".into()];
        let p = vec![s];
        let direct = Caller::direct(Principal::service("prod", "payments"));
        let via = direct.through("secrets");
        let mut ctx = BTreeMap::new();
        ctx.insert("tenant".to_string(), "acme".to_string());
        ctx.insert("purpose".to_string(), "x".to_string());
        let mut r = req("keys:decrypt", "key:k", "prod");
        r.context = Some(&ctx);
        assert!(evaluate(&p, &via, &r).allowed);
        assert!(!evaluate(&p, &direct, &r).allowed, "via-service condition");
        let mut wrong = ctx.clone();
        wrong.insert("tenant".into(), "evil".into());
        r.context = Some(&wrong);
        assert!(!evaluate(&p, &via, &r).allowed, "context value");
        let mut missing = ctx.clone();
        missing.remove("purpose");
        r.context = Some(&missing);
        assert!(!evaluate(&p, &via, &r).allowed, "context key");
    }

    #[test]
    fn decisions_depend_on_the_context_only_through_condition_keys() {
        let mut s = stmt(Effect::Allow, &["*"], &["keys:*"], &["key:k"]);
        s.conditions
            .context_equals
            .insert("tenant".into(), "acme".into());
        s.conditions.context_keys = vec!["purpose".into(), "tenant".into()];
        let mut d = stmt(Effect::Deny, &["*"], &["keys:decrypt"], &["key:*"]);
        d.conditions.context_keys = vec!["legacy".into()];
        let p = vec![s, d];
        assert_eq!(
            condition_context_keys(&p),
            vec!["legacy", "purpose", "tenant"]
        );
        assert!(condition_context_keys(&[]).is_empty());
        // Contexts that agree on those keys decide alike, whatever else they hold.
        let c = Caller::direct(Principal::service("prod", "payments"));
        let keys = condition_context_keys(&p);
        let values = ["", "acme", "x"];
        let mut contexts = Vec::new();
        for extra in [None, Some("noise")] {
            for mask in 0..27u32 {
                let mut ctx = BTreeMap::new();
                let mut m = mask;
                for k in ["tenant", "purpose", "legacy"] {
                    match m % 3 {
                        0 => {}
                        v => {
                            ctx.insert(k.to_string(), values[v as usize].to_string());
                        }
                    }
                    m /= 3;
                }
                if let Some(e) = extra {
                    ctx.insert("other".to_string(), e.to_string());
                }
                contexts.push(ctx);
            }
        }
        for action in ["keys:encrypt", "keys:decrypt"] {
            for a in &contexts {
                for b in &contexts {
                    let same = keys.iter().all(|k| a.get(*k) == b.get(*k));
                    if !same {
                        continue;
                    }
                    let mut ra = req(action, "key:k", "prod");
                    ra.context = Some(a);
                    let mut rb = ra;
                    rb.context = Some(b);
                    assert_eq!(evaluate(&p, &c, &ra), evaluate(&p, &c, &rb));
                }
            }
        }
    }

    #[test]
    fn validation_rejects_unknown_actions_and_principals() {
        assert!(validate(&[stmt(Effect::Allow, &["*"], &["keys:explode"], &["key:*"])]).is_err());
        assert!(validate(&[stmt(Effect::Allow, &["bob"], &["keys:*"], &["key:*"])]).is_err());
        assert!(validate(&[stmt(Effect::Allow, &["*"], &["keys:*"], &["file:x"])]).is_err());
        assert!(validate(&[stmt(
            Effect::Allow,
            &["role:ops"],
            &["secrets:*"],
            &["secret:a/*"]
        )])
        .is_ok());
    }

    #[tokio::test]
    async fn a_policy_set_through_another_handle_is_seen_within_the_cache_time() {
        use rampart_core::ManualClock;
        use rampart_store::SqliteStore;
        let clock = Arc::new(ManualClock::at_unix_secs(1_000));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory(clock.clone()).unwrap());
        // Two nodes over one store.
        let (here, there) = (
            Policies::new(store.clone(), clock.clone()),
            Policies::new(store, clock.clone()),
        );
        assert!(here.get("prod").await.unwrap().is_empty());
        let allow = stmt(Effect::Allow, &["role:ops"], &["keys:encrypt"], &["*"]);
        there.set("prod", vec![allow]).await.unwrap();
        // Within the cache time the old (empty, deny-all) policy holds.
        clock.advance(std::time::Duration::from_secs(crate::CACHE_TTL_SECS - 1));
        assert!(here.get("prod").await.unwrap().is_empty());
        clock.advance(std::time::Duration::from_secs(1));
        assert_eq!(here.get("prod").await.unwrap().len(), 1);
        // The writer sees its own change at once.
        there.set("prod", Vec::new()).await.unwrap();
        assert!(there.get("prod").await.unwrap().is_empty());
    }
}
