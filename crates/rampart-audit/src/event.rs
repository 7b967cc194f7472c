//! What an audit record says: the event a plane reports, its tier, and the
//! retention each tier gets.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::AuditError;

/// A retention tier. Each tier is its own series of segments, its own hash
/// chain and its own Merkle tree, so that retention can drop whole segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Security decisions: authentication, authorisation, key use. Kept ten years.
    Security,
    /// Data processing records. Kept a year.
    Processing,
    /// Application events. Kept 180 days.
    Application,
    /// Network events (edge, firewall). Kept 90 days.
    Network,
    /// API access log. Kept 90 days.
    ApiAccess,
}

impl Tier {
    /// Every tier, in on-disk code order.
    pub const ALL: [Tier; 5] = [
        Tier::Security,
        Tier::Processing,
        Tier::Application,
        Tier::Network,
        Tier::ApiAccess,
    ];

    /// The kebab-case name, also the tier's directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Security => "security",
            Tier::Processing => "processing",
            Tier::Application => "application",
            Tier::Network => "network",
            Tier::ApiAccess => "api-access",
        }
    }

    /// Retention in days when the configuration says nothing.
    pub fn default_retention_days(self) -> u32 {
        match self {
            Tier::Security => 3653,
            Tier::Processing => 365,
            Tier::Application => 180,
            Tier::Network | Tier::ApiAccess => 90,
        }
    }

    /// The byte that names this tier in segment headers and signed checkpoints.
    pub(crate) fn code(self) -> u8 {
        match self {
            Tier::Security => 1,
            Tier::Processing => 2,
            Tier::Application => 3,
            Tier::Network => 4,
            Tier::ApiAccess => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.code() == code)
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| AuditError::UnknownTier(s.to_owned()))
    }
}

/// Retention in days for each tier; the config file supplies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Days to keep the security tier.
    pub security: u32,
    /// Days to keep the processing tier.
    pub processing: u32,
    /// Days to keep the application tier.
    pub application: u32,
    /// Days to keep the network tier.
    pub network: u32,
    /// Days to keep the api-access tier.
    pub api_access: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            security: Tier::Security.default_retention_days(),
            processing: Tier::Processing.default_retention_days(),
            application: Tier::Application.default_retention_days(),
            network: Tier::Network.default_retention_days(),
            api_access: Tier::ApiAccess.default_retention_days(),
        }
    }
}

impl RetentionPolicy {
    /// Days to keep `tier`.
    pub fn days(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Security => self.security,
            Tier::Processing => self.processing,
            Tier::Application => self.application,
            Tier::Network => self.network,
            Tier::ApiAccess => self.api_access,
        }
    }

    /// Returns the policy with `tier` kept for `days`.
    pub fn with(mut self, tier: Tier, days: u32) -> Self {
        match tier {
            Tier::Security => self.security = days,
            Tier::Processing => self.processing = days,
            Tier::Application => self.application = days,
            Tier::Network => self.network = days,
            Tier::ApiAccess => self.api_access = days,
        }
        self
    }
}

/// Who acted, and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actor {
    /// The principal: a user, service or key id.
    pub principal: String,
    /// How the principal authenticated (`mtls`, `password+totp`, `api-key`, `anonymous`…).
    pub auth: String,
}

impl Actor {
    /// An actor named `principal` that authenticated by `auth`.
    pub fn new(principal: impl Into<String>, auth: impl Into<String>) -> Self {
        Actor {
            principal: principal.into(),
            auth: auth.into(),
        }
    }
}

/// What became of the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The action was allowed.
    Allowed,
    /// The action was refused.
    Denied,
    /// The action failed.
    Error,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        })
    }
}

impl FromStr for Outcome {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allowed" => Ok(Outcome::Allowed),
            "denied" => Ok(Outcome::Denied),
            "error" => Ok(Outcome::Error),
            other => Err(AuditError::UnknownOutcome(other.to_owned())),
        }
    }
}

/// An event as a plane reports it. The log adds the time and the sequence
/// number when it takes the event. Stored records are read leniently
/// (unknown fields are ignored) so that later versions may add fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The tier (and so the retention) the record goes to.
    pub tier: Tier,
    /// The node that saw the event.
    pub node: String,
    /// The environment (`prod`, `staging`…).
    pub environment: String,
    /// Who acted.
    pub actor: Actor,
    /// What was attempted (`secrets.read`, `edge.request`…).
    pub action: String,
    /// What it was attempted on.
    pub resource: String,
    /// What came of it.
    pub outcome: Outcome,
    /// Why, when the outcome needs a reason (the rule that denied, the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request id that ties this record to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The source address of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What else the plane knows of the event, by name (for the edge:
    /// status, latency, bytes, upstream, matched WAF rules…). Values are
    /// never secrets.
    /// Names are mostly fixed ones (`"status"`), borrowed rather than
    /// copied into every event.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: Details,
}

/// The details of an [`Event`]: values by name.
pub type Details = std::collections::BTreeMap<std::borrow::Cow<'static, str>, String>;

impl Event {
    /// An event with the required fields; node, environment and the optional
    /// fields are empty.
    pub fn new(
        tier: Tier,
        actor: Actor,
        action: impl Into<String>,
        resource: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Event {
            tier,
            node: String::new(),
            environment: String::new(),
            actor,
            action: action.into(),
            resource: resource.into(),
            outcome,
            reason: None,
            request_id: None,
            source: None,
            details: std::collections::BTreeMap::new(),
        }
    }
}

/// The first byte of an event stored in its compact form (version 1).
///
/// Records hold their event encrypted. The first logs held it as JSON
/// (which begins with `{`); since version 1 an event is this byte and then
/// its fields in a fixed order with no names ([`postcard`]: varint lengths,
/// about half the bytes of the JSON, and less work to write). Both forms
/// are read, so older segments stay readable. Fields added later go at the
/// end: a reader ignores bytes after the fields it knows.
const EVENT_V1: u8 = 1;

/// The fixed field order of a version 1 event, as written; `D` is the
/// details as a map (an [`Event`]'s, or an [`EventRef`]'s pairs).
#[derive(Serialize)]
struct EventV1Out<'a, D> {
    tier: u8,
    node: &'a str,
    environment: &'a str,
    principal: &'a str,
    auth: &'a str,
    action: &'a str,
    resource: &'a str,
    outcome: u8,
    reason: Option<&'a str>,
    request_id: Option<&'a str>,
    source: Option<&'a str>,
    details: D,
}

/// An event lent to the log rather than given: the fields of an [`Event`],
/// borrowed, with its details as name and value pairs. A caller that
/// records an event per request (the edge) builds it from what it holds,
/// without an owned string or a map. It is stored exactly as the [`Event`]
/// with the same fields: details in name order, and of two with one name,
/// the later.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The tier (and so the retention) the record goes to.
    pub tier: Tier,
    /// The node that saw the event.
    pub node: &'a str,
    /// The environment.
    pub environment: &'a str,
    /// Who acted: the principal.
    pub principal: &'a str,
    /// How the principal authenticated.
    pub auth: &'a str,
    /// What was attempted.
    pub action: &'a str,
    /// What it was attempted on.
    pub resource: &'a str,
    /// What came of it.
    pub outcome: Outcome,
    /// Why, when the outcome needs a reason.
    pub reason: Option<&'a str>,
    /// The request id that ties this record to others.
    pub request_id: Option<&'a str>,
    /// The source address of the request.
    pub source: Option<&'a str>,
    /// What else the plane knows, as (name, value) pairs in any order.
    /// Values are never secrets.
    pub details: &'a [(&'a str, &'a str)],
}

/// Most details an [`EventRef`] puts in order without allocating.
const INLINE_DETAILS: usize = 32;

/// An [`EventRef`]'s details, written as the map an [`Event`]'s would be:
/// in name order, one value per name (the later one).
struct PairsAsMap<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for PairsAsMap<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let pairs = self.0;
        if pairs.len() > INLINE_DETAILS {
            let map: std::collections::BTreeMap<&str, &str> = pairs.iter().copied().collect();
            return map.serialize(ser);
        }
        // Indices in name order (a stable sort, on the stack), then of each
        // run of one name, the last.
        let mut slots = [0u8; INLINE_DETAILS];
        let order = slots.get_mut(..pairs.len()).unwrap_or_default();
        for (i, o) in (0u8..).zip(order.iter_mut()) {
            *o = i;
        }
        order.sort_by(|&a, &b| name_of(pairs, a).cmp(name_of(pairs, b)));
        let kept = || {
            order
                .iter()
                .zip(order.iter().skip(1).map(Some).chain([None]))
                .filter(|(&i, next)| next.is_none_or(|&j| name_of(pairs, j) != name_of(pairs, i)))
                .filter_map(|(&i, _)| pairs.get(usize::from(i)))
        };
        let mut map = ser.serialize_map(Some(kept().count()))?;
        for (name, value) in kept() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

fn name_of<'a>(pairs: &[(&'a str, &'a str)], i: u8) -> &'a str {
    pairs.get(usize::from(i)).map_or("", |p| p.0)
}

/// A field after version 1's, and the last: the record's event also goes,
/// as a derived copy, to the tier whose code follows
/// ([`crate::Audit::record_ref_async_with_copy`]). Readers that do not
/// know it ignore it, as they do any later field.
const LATER_COPY: u8 = b'c';

/// The copy a stored event asks for (see [`LATER_COPY`]): its tier, and
/// its stored form, the same bytes with that tier's code and no mark.
pub(crate) fn copy_of(plain: &[u8]) -> Option<(Tier, Vec<u8>)> {
    // The mark is the last two bytes: most records end otherwise and need
    // no decoding to say so.
    let [.., LATER_COPY, _] = plain else {
        return None;
    };
    let (&EVENT_V1, rest) = plain.split_first()? else {
        return None;
    };
    let (_, later) = postcard::take_from_bytes::<EventV1In>(rest).ok()?;
    let &[LATER_COPY, code] = later else {
        return None;
    };
    let tier = Tier::from_code(code)?;
    let mut copy = plain.get(..plain.len() - later.len())?.to_vec();
    set_tier(&mut copy, tier)?;
    Some((tier, copy))
}

/// Sets the tier of a stored (version 1) event: its first field, the byte
/// after the version (postcard writes a u8 as is).
fn set_tier(plain: &mut [u8], tier: Tier) -> Option<()> {
    *plain.get_mut(1)? = tier.code();
    Some(())
}

impl EventRef<'_> {
    /// The event's stored form, marked as having a copy in tier `copy`
    /// ([`LATER_COPY`]), and the copy's stored form: the same as
    /// `EventRef { tier: copy, .. }` would have.
    pub(crate) fn encode_with_copy(&self, copy: Tier) -> Result<(Vec<u8>, Vec<u8>), AuditError> {
        let mut plain = self.encode(Vec::with_capacity(512))?;
        let mut copy_plain = plain.clone();
        set_tier(&mut copy_plain, copy);
        plain.extend_from_slice(&[LATER_COPY, copy.code()]);
        Ok((plain, copy_plain))
    }

    /// Appends the event's stored form (version 1) to `out`: the same
    /// bytes as the equal [`Event`]'s.
    pub(crate) fn encode(&self, mut out: Vec<u8>) -> Result<Vec<u8>, AuditError> {
        out.push(EVENT_V1);
        let wire = EventV1Out {
            tier: self.tier.code(),
            node: self.node,
            environment: self.environment,
            principal: self.principal,
            auth: self.auth,
            action: self.action,
            resource: self.resource,
            outcome: self.outcome.code(),
            reason: self.reason,
            request_id: self.request_id,
            source: self.source,
            details: PairsAsMap(self.details),
        };
        postcard::to_extend(&wire, out).map_err(|e| AuditError::Encode(e.to_string()))
    }
}

/// The same, as read.
#[derive(Deserialize)]
struct EventV1In {
    tier: u8,
    node: String,
    environment: String,
    principal: String,
    auth: String,
    action: String,
    resource: String,
    outcome: u8,
    reason: Option<String>,
    request_id: Option<String>,
    source: Option<String>,
    details: Details,
}

impl Outcome {
    fn code(self) -> u8 {
        match self {
            Outcome::Allowed => 0,
            Outcome::Denied => 1,
            Outcome::Error => 2,
        }
    }

    fn from_code(code: u8) -> Option<Outcome> {
        [Outcome::Allowed, Outcome::Denied, Outcome::Error]
            .into_iter()
            .find(|o| o.code() == code)
    }
}

impl Event {
    /// Appends the event's stored form (version 1) to `out`.
    pub(crate) fn encode(&self, mut out: Vec<u8>) -> Result<Vec<u8>, AuditError> {
        out.push(EVENT_V1);
        let wire = EventV1Out {
            tier: self.tier.code(),
            node: &self.node,
            environment: &self.environment,
            principal: &self.actor.principal,
            auth: &self.actor.auth,
            action: &self.action,
            resource: &self.resource,
            outcome: self.outcome.code(),
            reason: self.reason.as_deref(),
            request_id: self.request_id.as_deref(),
            source: self.source.as_deref(),
            details: &self.details,
        };
        postcard::to_extend(&wire, out).map_err(|e| AuditError::Encode(e.to_string()))
    }

    /// Reads an event in either stored form (see [`EVENT_V1`]); the error
    /// says what is wrong with it.
    pub(crate) fn decode(plain: &[u8]) -> Result<Event, String> {
        match plain.split_first() {
            Some((&EVENT_V1, rest)) => {
                let (w, _later_fields) = postcard::take_from_bytes::<EventV1In>(rest)
                    .map_err(|e| format!("compact event: {e}"))?;
                let tier = Tier::from_code(w.tier)
                    .ok_or_else(|| format!("unknown tier code {}", w.tier))?;
                let outcome = Outcome::from_code(w.outcome)
                    .ok_or_else(|| format!("unknown outcome code {}", w.outcome))?;
                Ok(Event {
                    tier,
                    node: w.node,
                    environment: w.environment,
                    actor: Actor {
                        principal: w.principal,
                        auth: w.auth,
                    },
                    action: w.action,
                    resource: w.resource,
                    outcome,
                    reason: w.reason,
                    request_id: w.request_id,
                    source: w.source,
                    details: w.details,
                })
            }
            Some((b'{', _)) => {
                serde_json::from_slice(plain).map_err(|e| format!("JSON event: {e}"))
            }
            Some((b, _)) => Err(format!("unknown event format {b:#04x}")),
            None => Err("empty event".to_owned()),
        }
    }
}

/// A stored record, decrypted: the event with the time and sequence number
/// the log gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number within the tier, from 0.
    pub seq: u64,
    /// When the log took the event, RFC 3339 in UTC.
    pub time: String,
    /// The same instant as nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Hash of the record (hex), the Merkle leaf hash.
    pub hash: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Proof that a record is on disk: returned only once it is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The tier the record went to.
    pub tier: Tier,
    /// Its sequence number within the tier.
    pub seq: u64,
    /// Its hash (the RFC 6962 leaf hash of the encrypted record).
    pub hash: [u8; 32],
}

/// `t` as nanoseconds since the Unix epoch (0 before it, saturating after 2554).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nanoseconds.
pub fn format_rfc3339(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only), for query bounds.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, AuditError> {
    let bad = || AuditError::InvalidTime(s.to_owned());
    let b = s.as_bytes();
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, AuditError> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u64>().map_err(|_| bad())
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-')
        && sep(7, b'-')
        && (sep(10, b'T') || sep(10, b't'))
        && sep(13, b':')
        && sep(16, b':'))
    {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut nanos = 0u64;
    let tail = s.get(19..s.len() - 1).ok_or_else(bad)?;
    if let Some(frac) = tail.strip_prefix('.') {
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let mut v: u64 = frac.parse().map_err(|_| bad())?;
        for _ in frac.len()..9 {
            v *= 10;
        }
        nanos = v;
    } else if !tail.is_empty() {
        return Err(bad());
    }
    let days = days_from_civil(i64::try_from(y).map_err(|_| bad())?, mo, d);
    let days = u64::try_from(days).map_err(|_| bad())?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Ok(UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).map_err(|_| bad())?))
}

// Howard Hinnant's civil-date algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The [`Event`] an [`EventRef`] stands for.
    fn owned(e: &EventRef<'_>) -> Event {
        let mut ev = Event::new(
            e.tier,
            Actor::new(e.principal, e.auth),
            e.action,
            e.resource,
            e.outcome,
        );
        ev.node = e.node.to_owned();
        ev.environment = e.environment.to_owned();
        ev.reason = e.reason.map(str::to_owned);
        ev.request_id = e.request_id.map(str::to_owned);
        ev.source = e.source.map(str::to_owned);
        for (k, v) in e.details {
            ev.details.insert((*k).to_owned().into(), (*v).to_owned());
        }
        ev
    }

    #[test]
    fn a_lent_event_is_stored_as_the_owned_one() {
        let many: Vec<(String, String)> = (0..40)
            .rev()
            .map(|i| (format!("k{i:02}"), format!("v{i}")))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&**k, &**v)).collect();
        let lists: [&[(&str, &str)]; 5] = [
            &[],
            &[("status", "200")],
            // out of order, one name twice: the later value is kept
            &[
                ("status", "403"),
                ("latency_ms", "1.250"),
                ("bytes_in", "0"),
                ("status", "404"),
                ("waf_rules", "942100,949110"),
                ("", "empty name"),
            ],
            &many,
            &[("z", "1"), ("é", "2"), ("a", "3"), ("a", "4"), ("a", "5")],
        ];
        for details in lists {
            let e = edge_denial(Tier::Security, details);
            let lent = e.encode(Vec::new()).unwrap();
            let own = owned(&e);
            assert_eq!(lent, own.encode(Vec::new()).unwrap());
            assert_eq!(Event::decode(&lent).unwrap(), own);
        }
    }

    /// A denial as the edge lends it.
    fn edge_denial<'a>(tier: Tier, details: &'a [(&'a str, &'a str)]) -> EventRef<'a> {
        EventRef {
            tier,
            node: "node-1",
            environment: "prod",
            principal: "anonymous",
            auth: "edge",
            action: "edge.get",
            resource: "shop.example.com/cart",
            outcome: Outcome::Denied,
            reason: Some("status 403: waf"),
            request_id: Some("r-1"),
            source: None,
            details,
        }
    }

    #[test]
    fn a_marked_event_reads_as_itself_and_names_its_copy() {
        let details = [("status", "403"), ("waf_rules", "942100")];
        let e = edge_denial(Tier::ApiAccess, &details);
        let (marked, copy) = e.encode_with_copy(Tier::Security).unwrap();
        // the marked record reads as the event, the mark ignored
        assert_eq!(Event::decode(&marked).unwrap(), owned(&e));
        // the copy is exactly what the event in the other tier stores
        let other = EventRef {
            tier: Tier::Security,
            ..e
        };
        assert_eq!(copy, other.encode(Vec::new()).unwrap());
        assert_eq!(copy_of(&marked), Some((Tier::Security, copy.clone())));
        // an unmarked record, or one whose later bytes are anything else, asks for none
        assert_eq!(copy_of(&copy), None);
        let mut odd = copy.clone();
        odd.extend_from_slice(&[LATER_COPY, 99]);
        assert_eq!(copy_of(&odd), None);
        odd.truncate(copy.len());
        odd.extend_from_slice(&[LATER_COPY, Tier::Security.code(), 0]);
        assert_eq!(copy_of(&odd), None);
        assert_eq!(copy_of(b"{}"), None);
        assert_eq!(copy_of(&[]), None);
        // an unmarked event whose own last bytes look like a mark (a
        // client's value ending in "c" and a tier's code) asks for none
        let tail = format!("x{}{}", LATER_COPY as char, Tier::Security.code() as char);
        let details = [("field", tail.as_str())];
        let looks = edge_denial(Tier::ApiAccess, &details)
            .encode(Vec::new())
            .unwrap();
        assert!(looks.ends_with(&[LATER_COPY, Tier::Security.code()]));
        assert_eq!(copy_of(&looks), None);
    }

    #[test]
    fn tier_names_are_kebab_case() {
        assert_eq!(
            serde_json::to_string(&Tier::ApiAccess).unwrap(),
            "\"api-access\""
        );
        assert_eq!("api-access".parse::<Tier>().unwrap(), Tier::ApiAccess);
        assert!("bogus".parse::<Tier>().is_err());
        let days: Vec<u32> = Tier::ALL
            .iter()
            .map(|t| t.default_retention_days())
            .collect();
        assert_eq!(days, vec![3653, 365, 180, 90, 90]);
        for t in Tier::ALL {
            assert_eq!(Tier::from_code(t.code()), Some(t));
        }
    }

    #[test]
    fn retention_policy_overrides_one_tier() {
        let p: RetentionPolicy = serde_json::from_str(r#"{"network": 30}"#).unwrap();
        assert_eq!(p.days(Tier::Network), 30);
        assert_eq!(p.days(Tier::Security), 3653);
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = parse_rfc3339("2026-11-25T13:45:07.123456789Z").unwrap();
        assert_eq!(
            format_rfc3339(unix_nanos(t)),
            "2026-11-25T13:45:07.123456789Z"
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            unix_nanos(parse_rfc3339("2000-03-01T00:00:00Z").unwrap()),
            951_868_800 * 1_000_000_000
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-25 13:45:07Z",
            "2026-11-25T13:45:07+01:00",
            "2026-11-25T13:45:07.Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    fn full_event() -> Event {
        let mut e = Event::new(
            Tier::Network,
            Actor::new("svc-1@prod", "mtls"),
            "edge.request",
            "/v1/things?q=\"x\"",
            Outcome::Error,
        );
        e.node = "node-2".into();
        e.environment = "prod".into();
        e.reason = Some("upstream reset\n\u{0}".into());
        e.request_id = Some("req-9".into());
        e.source = Some("[2001:db8::1]:443".into());
        e.details.insert("status".into(), "502".into());
        e.details.insert("ünï".into(), String::new());
        e
    }

    #[test]
    fn compact_events_round_trip_and_are_smaller_than_json() {
        for e in [
            full_event(),
            Event::new(Tier::Security, Actor::default(), "", "", Outcome::Allowed),
        ] {
            let bytes = e.encode(Vec::new()).unwrap();
            assert_eq!(bytes[0], EVENT_V1);
            assert_eq!(Event::decode(&bytes).unwrap(), e);
            assert!(bytes.len() < serde_json::to_vec(&e).unwrap().len());
        }
    }

    #[test]
    fn json_events_from_older_logs_still_decode() {
        let e = full_event();
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(Event::decode(&json).unwrap(), e);
        let err = Event::decode(b"{\"tier\":\"network\"").unwrap_err();
        assert!(err.starts_with("JSON event"), "{err}");
    }

    #[test]
    fn later_fields_are_ignored_and_damage_is_an_error() {
        let e = full_event();
        let mut bytes = e.encode(Vec::new()).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[7, 7, 7]);
        assert_eq!(Event::decode(&bytes).unwrap(), e);
        for cut in 0..whole {
            assert!(Event::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_tier = e.encode(Vec::new()).unwrap();
        bad_tier[1] = 9;
        assert_eq!(Event::decode(&bad_tier).unwrap_err(), "unknown tier code 9");
        assert!(Event::decode(&[0x02, 1, 2])
            .unwrap_err()
            .contains("unknown event format"));
        // A string that is not UTF-8.
        let mut bad_utf8 = vec![EVENT_V1, 1, 1, 0xff];
        bad_utf8.extend_from_slice(&[0; 12]);
        assert!(Event::decode(&bad_utf8).is_err());
    }

    #[test]
    fn hostile_compact_bytes_never_panic() {
        // Lengths that claim more than there is, and every single-byte
        // mutation of a valid event.
        assert!(Event::decode(&[EVENT_V1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let good = full_event().encode(Vec::new()).unwrap();
        for i in 0..good.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = b;
                let _ = Event::decode(&m);
            }
        }
    }
}
