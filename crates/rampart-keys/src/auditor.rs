//! Recording decisions in the audit log, fail closed.

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_audit::{Actor, Audit, Event, Outcome, RecordFuture, Tier};

use crate::{Caller, KeysError};

/// Writes the keys and secrets planes' records to the audit log. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Auditor {
    audit: Arc<Audit>,
    node: Arc<str>,
}

impl Auditor {
    /// Records to `audit`, naming this node `node`.
    pub fn new(audit: Arc<Audit>, node: &str) -> Self {
        Auditor {
            audit,
            node: Arc::from(node),
        }
    }

    /// Records one decision or outcome; an error means the record was not
    /// taken and the caller must refuse the operation.
    pub async fn record(
        &self,
        caller: &Caller,
        environment: &str,
        action: &str,
        resource: &str,
        outcome: Outcome,
        reason: String,
    ) -> Result<(), KeysError> {
        // The async path waits for the group commit without holding a thread.
        self.submit(
            caller,
            environment,
            action,
            resource,
            outcome,
            reason,
            BTreeMap::new(),
        )
        .await?;
        Ok(())
    }

    /// Queues one record now and returns the future of its durability, so
    /// that a caller with several records (a batch) queues them all before
    /// waiting and they share one group commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        caller: &Caller,
        environment: &str,
        action: &str,
        resource: &str,
        outcome: Outcome,
        reason: String,
        details: rampart_audit::Details,
    ) -> RecordFuture {
        let mut event = Event::new(
            Tier::Security,
            Actor::new(caller.principal.id.clone(), caller.auth.clone()),
            action,
            resource,
            outcome,
        );
        event.environment = environment.to_owned();
        event.node = self.node.to_string();
        event.reason = Some(match &caller.via_service {
            Some(via) => format!("{reason} (via {via})"),
            None => reason,
        });
        event.request_id = caller.request_id.clone();
        event.source = caller.source.clone();
        event.details = details;
        self.audit.record_async(event)
    }
}
