//! Feeds arbitrary bytes to the key-policy parser and checker, as a policy
//! document arrives through the API: parsing, validation and evaluation must
//! never panic, and a policy without an allow statement allows nothing.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rampart_keys::policy::{evaluate, validate, Effect, Request, Statement};
use rampart_keys::{Caller, Principal};

fuzz_target!(|data: &[u8]| {
    let Ok(statements) = serde_json::from_slice::<Vec<Statement>>(data) else {
        return;
    };
    if validate(&statements).is_err() {
        return;
    }
    let context = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
    let callers = [
        Caller::direct(Principal::user("prod", "alice", &["admin"])),
        Caller::via(Principal::service("prod", "payments"), "secrets"),
    ];
    let requests = [
        Request {
            action: "keys:encrypt",
            resource: "key:payments",
            environment: "prod",
            context: Some(&context),
        },
        Request {
            action: "secrets:get",
            resource: "secret:payments/db",
            environment: "prod",
            context: None,
        },
    ];
    let any_allow = statements.iter().any(|s| s.effect == Effect::Allow);
    for caller in &callers {
        for req in &requests {
            let d = evaluate(&statements, caller, req);
            assert!(any_allow || !d.allowed, "{}", d.reason);
        }
    }
});
