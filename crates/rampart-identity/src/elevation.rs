//! Time-bound elevation: a user asks for a role for a while, with a reason;
//! another admin approves; the role counts from approval until expiry and
//! then drops by itself (effective roles are computed against the clock,
//! and access tokens issued while elevated expire when the elevation does).

use rampart_audit::Outcome;
use rampart_store::Expect;
use serde::{Deserialize, Serialize};

use crate::policy::{Principal, PrincipalKind, Role, Scope, PLATFORM_ENV};
use crate::service::{new_id, read_lock, Identity, NS_ELEVATIONS};
use crate::IdentityError;

/// Where an elevation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevationStatus {
    /// Waiting for an approver.
    Pending,
    /// Approved; active until `expires_at`.
    Approved,
    /// Refused by an approver.
    Denied,
    /// Ran out (either waiting or after approval).
    Expired,
}

/// An elevation request and its fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elevation {
    /// Id (`el_…`).
    pub id: String,
    /// Who asked (and who gains the role).
    pub user: String,
    /// The role asked for.
    pub role: Role,
    /// Why.
    pub reason: String,
    /// For how long, seconds from approval.
    pub duration_secs: u64,
    /// When asked.
    pub requested_at: u64,
    /// Where it stands.
    pub status: ElevationStatus,
    /// Who approved or denied it.
    pub decided_by: Option<String>,
    /// When approved or denied.
    pub decided_at: Option<u64>,
    /// When the role drops (set on approval).
    pub expires_at: Option<u64>,
}

impl Elevation {
    /// Whether the role counts at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.status == ElevationStatus::Approved && self.expires_at.is_some_and(|e| now < e)
    }
}

impl Identity {
    /// Asks for `role` for `duration_secs`, giving `reason`.
    pub async fn request_elevation(
        &self,
        actor: &Principal,
        role: Role,
        duration_secs: u64,
        reason: &str,
    ) -> Result<Elevation, IdentityError> {
        self.authz.require_in(
            actor,
            "identity:elevations.request",
            PLATFORM_ENV,
            Scope::Own,
        )?;
        if actor.kind != PrincipalKind::User || actor.auth_method == "api-key" {
            return Err(IdentityError::InvalidRequest(
                "only users in a login session may ask for elevation".into(),
            ));
        }
        if actor.base_roles.contains(&role) {
            return Err(IdentityError::InvalidRequest(format!(
                "already holds {role}"
            )));
        }
        if duration_secs == 0 || duration_secs > self.cfg.max_elevation_secs {
            return Err(IdentityError::InvalidRequest(format!(
                "duration must be 1 to {} seconds",
                self.cfg.max_elevation_secs
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(IdentityError::InvalidRequest(
                "a reason of 1 to 500 bytes is required".into(),
            ));
        }
        let e = Elevation {
            id: new_id("el_")?,
            user: actor.id.clone(),
            role,
            reason: reason.to_owned(),
            duration_secs,
            requested_at: self.now(),
            status: ElevationStatus::Pending,
            decided_by: None,
            decided_at: None,
            expires_at: None,
        };
        self.put_json(NS_ELEVATIONS, &e.id, &e, Expect::Absent)
            .await?;
        self.cache_mut().elevations.insert(e.id.clone(), e.clone());
        self.record_by(
            actor,
            "identity.elevation.request",
            &e.id,
            Outcome::Allowed,
            format!("{role} for {duration_secs} s: {reason}"),
        )?;
        Ok(e)
    }

    /// Approves (or with `approve = false`, denies) a pending elevation.
    /// The approver must hold `admin` without elevation, may approve only
    /// through `identity:elevations.approve`, and is never the requester.
    pub async fn decide_elevation(
        &self,
        actor: &Principal,
        id: &str,
        approve: bool,
    ) -> Result<Elevation, IdentityError> {
        let e = read_lock(&self.cache)
            .elevations
            .get(id)
            .cloned()
            .ok_or_else(|| IdentityError::NotFound("elevation".into()))?;
        let action = if approve {
            "identity.elevation.approve"
        } else {
            "identity.elevation.deny"
        };
        let refuse = |why: &str| -> IdentityError {
            match self.record_by(actor, action, id, Outcome::Denied, why) {
                Ok(()) => IdentityError::Forbidden(why.to_owned()),
                Err(e) => e,
            }
        };
        if e.user == actor.id {
            return Err(refuse("requester cannot decide their own elevation"));
        }
        if !actor.base_roles.contains(&Role::Admin) {
            return Err(refuse("approver must be an admin without elevation"));
        }
        self.authz
            .require(actor, "identity:elevations.approve", PLATFORM_ENV)?;
        // Decided on the record as stored, not on this node's copy, and
        // written only if nobody decided it meanwhile: an approval on a
        // node that has not reloaded never overwrites another admin's
        // denial (or the other way round).
        let stored = self
            .store
            .get(NS_ELEVATIONS, id)
            .await?
            .ok_or_else(|| IdentityError::NotFound("elevation".into()))?;
        let e: Elevation = serde_json::from_slice(&stored.value)
            .map_err(|err| IdentityError::Corrupt(format!("{NS_ELEVATIONS}/{id}: {err}")))?;
        let now = self.now();
        if e.status != ElevationStatus::Pending {
            return Err(IdentityError::InvalidRequest(
                "elevation is not pending".into(),
            ));
        }
        if now
            >= e.requested_at
                .saturating_add(self.cfg.elevation_request_ttl_secs)
        {
            return Err(IdentityError::InvalidRequest(
                "elevation request has expired".into(),
            ));
        }
        let mut d = e;
        d.decided_by = Some(actor.id.clone());
        d.decided_at = Some(now);
        if approve {
            d.status = ElevationStatus::Approved;
            d.expires_at = Some(now.saturating_add(d.duration_secs));
        } else {
            d.status = ElevationStatus::Denied;
        }
        match self
            .put_json(NS_ELEVATIONS, id, &d, Expect::Version(stored.version))
            .await
        {
            Err(IdentityError::Store(rampart_store::StoreError::Conflict { .. })) => {
                return Err(IdentityError::InvalidRequest(
                    "elevation is not pending".into(),
                ))
            }
            other => other?,
        }
        self.cache_mut().elevations.insert(id.to_owned(), d.clone());
        self.record_by(
            actor,
            action,
            id,
            Outcome::Allowed,
            format!(
                "{} {} for {}",
                if approve { "approved" } else { "denied" },
                d.role,
                d.user
            ),
        )?;
        Ok(d)
    }

    /// Elevations: all of them for approvers, else the actor's own.
    pub fn list_elevations(&self, actor: &Principal) -> Result<Vec<Elevation>, IdentityError> {
        let all = self
            .authz
            .decide(actor, "identity:elevations.approve", PLATFORM_ENV)
            .allowed;
        if !all {
            self.authz.require_in(
                actor,
                "identity:elevations.request",
                PLATFORM_ENV,
                Scope::Own,
            )?;
        }
        let mut v: Vec<Elevation> = read_lock(&self.cache)
            .elevations
            .values()
            .filter(|e| all || e.user == actor.id)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// The roles a principal holds right now, elevations included.
    pub fn effective_roles(&self, user: &str) -> Option<std::collections::BTreeSet<Role>> {
        let u = self.user(user)?;
        Some(self.principal_of(&u, "-", None, None).0.roles)
    }

    /// Marks ended elevations (approved past expiry, pending past the
    /// request lifetime) as expired, and audits each.
    pub(crate) async fn expire_elevations(&self) -> Result<(), IdentityError> {
        let now = self.now();
        let ended: Vec<Elevation> = read_lock(&self.cache)
            .elevations
            .values()
            .filter(|e| match e.status {
                ElevationStatus::Approved => e.expires_at.is_some_and(|x| now >= x),
                ElevationStatus::Pending => {
                    now >= e
                        .requested_at
                        .saturating_add(self.cfg.elevation_request_ttl_secs)
                }
                _ => false,
            })
            .cloned()
            .collect();
        for mut e in ended {
            let was = e.status;
            e.status = ElevationStatus::Expired;
            self.put_json(NS_ELEVATIONS, &e.id, &e, Expect::Any).await?;
            self.cache_mut().elevations.insert(e.id.clone(), e.clone());
            self.record(
                "system",
                "local",
                "identity.elevation.expire",
                &e.id,
                Outcome::Allowed,
                if was == ElevationStatus::Approved {
                    format!("{} dropped from {}", e.role, e.user)
                } else {
                    "request lapsed unapproved".to_owned()
                },
                None,
            )?;
        }
        Ok(())
    }
}
