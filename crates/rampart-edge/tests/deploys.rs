//! End-to-end: deployments that roll back when unhealthy. A reload that
//! gives a service other instances leaves the traffic on the old ones
//! until every new instance passes its health checks; if the deploy window
//! ends first, the change is rolled back and the old instances go on
//! serving. Upstreams are small hyper servers on 127.0.0.1:0.

mod util;

use std::time::Duration;

use rampart_edge::deploy::{DeployState, DeployStatus};
use util::*;

const ROUTES: &str = "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n";

/// The deployments, once the last one is no longer being verified (or
/// after five seconds).
async fn settled(edge: &TestEdge) -> Vec<DeployStatus> {
    for _ in 0..100 {
        let d = edge.handle.deployments();
        if d.last().is_some_and(|d| d.state != DeployState::Verifying) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    edge.handle.deployments()
}

async fn body(edge: &TestEdge) -> String {
    edge.https("GET", "api.test", "/").await.body
}

/// An edge whose service `app` starts on `first`, with health checks `hc`.
async fn edge_on(first: std::net::SocketAddr, hc: Option<rampart_edge::HealthCheck>) -> TestEdge {
    TestEdge::start(config(&[("app", vec![first])], ROUTES), |ec| {
        ec.health_check = hc
    })
    .await
}

/// Reloads the edge with `app` on `addrs`.
fn deploy(edge: &TestEdge, addrs: Vec<std::net::SocketAddr>) {
    edge.handle
        .reload(&config(&[("app", addrs)], ROUTES))
        .unwrap();
}

#[tokio::test]
async fn new_instances_that_fail_their_checks_are_rolled_back() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dead = dead_addr().await;
    let edge = edge_on(a.addr, Some(quick_health_check())).await;
    assert_eq!(body(&edge).await, "a");

    // A new version whose only instance never answers.
    deploy(&edge, vec![dead]);
    let now = edge.handle.deployments();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].state, DeployState::Verifying);
    assert_eq!(now[0].new, [dead.to_string()]);
    // The old instance serves while the new one is verified, and after.
    for _ in 0..3 {
        assert_eq!(body(&edge).await, "a");
    }
    let done = settled(&edge).await;
    assert_eq!(done[0].state, DeployState::RolledBack, "{done:?}");
    assert_eq!(done[0].previous, [a.addr.to_string()]);
    assert_eq!(done[0].unhealthy, [dead.to_string()]);
    for _ in 0..3 {
        assert_eq!(body(&edge).await, "a");
    }
    // The config names instances the service does not serve.
    assert_eq!(edge.handle.pending_deployments(), ["app"]);
    // Putting the config back to what serves settles that.
    deploy(&edge, vec![a.addr]);
    assert!(edge.handle.pending_deployments().is_empty());

    // Every new instance must pass: one good and one dead is rolled back
    // too, and the good one never answered a request.
    deploy(&edge, vec![b.addr, dead]);
    for _ in 0..3 {
        assert_eq!(body(&edge).await, "a");
    }
    let done = settled(&edge).await;
    assert_eq!(done.len(), 2);
    assert_eq!(done[1].state, DeployState::RolledBack, "{done:?}");
    assert_eq!(done[1].unhealthy, [dead.to_string()]);
    assert_eq!(body(&edge).await, "a");
}

#[tokio::test]
async fn new_instances_that_pass_take_the_traffic() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    // Two passes 300 ms apart: the request just after the reload comes
    // well before the new instance can be verified.
    let mut hc = quick_health_check();
    hc.interval = Duration::from_millis(300);
    hc.rise = 2;
    hc.deploy_window = Duration::from_secs(3);
    let edge = edge_on(a.addr, Some(hc)).await;
    deploy(&edge, vec![b.addr]);
    // Not yet verified: the old instance answers.
    assert_eq!(edge.handle.pending_deployments(), ["app"]);
    assert_eq!(body(&edge).await, "a");
    let done = settled(&edge).await;
    assert_eq!(done[0].state, DeployState::Promoted, "{done:?}");
    assert!(done[0].unhealthy.is_empty());
    for _ in 0..3 {
        assert_eq!(body(&edge).await, "b");
    }
    assert!(edge.handle.pending_deployments().is_empty());
    // Reloading the same config again is no new deployment.
    deploy(&edge, vec![b.addr]);
    assert_eq!(edge.handle.deployments().len(), 1);
    assert_eq!(body(&edge).await, "b");
}

#[tokio::test]
async fn with_no_window_or_no_checks_a_reload_applies_at_once() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let mut hc = quick_health_check();
    hc.deploy_window = Duration::ZERO;
    let edge = edge_on(a.addr, Some(hc)).await;
    deploy(&edge, vec![b.addr]);
    assert_eq!(body(&edge).await, "b");
    assert!(edge.handle.deployments().is_empty());

    let edge = edge_on(a.addr, None).await;
    deploy(&edge, vec![b.addr]);
    assert_eq!(body(&edge).await, "b");
    assert!(edge.handle.deployments().is_empty());
}

/// New weights for the same instances are no deployment: they apply at
/// once, window or not.
#[tokio::test]
async fn a_reload_that_changes_only_weights_applies_at_once() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let mut hc = quick_health_check();
    hc.interval = Duration::from_millis(300);
    hc.deploy_window = Duration::from_secs(3);
    let edge = TestEdge::start(config(&[("app", vec![a.addr, b.addr])], ROUTES), |ec| {
        ec.health_check = Some(hc)
    })
    .await;
    let text = format!(
        "[[environments]]\nname = \"test\"\n\
         [[services]]\nname = \"app\"\nenvironment = \"test\"\nport = 8080\n\
         upstreams = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n{ROUTES}",
        a.addr, b.addr
    );
    edge.handle
        .reload(&rampart_config::Config::parse(&text, "t.toml").unwrap())
        .unwrap();
    assert!(edge.handle.deployments().is_empty());
    assert!(edge.handle.pending_deployments().is_empty());
    let mut got = String::new();
    for _ in 0..8 {
        got.push_str(&body(&edge).await);
    }
    assert_eq!(got.matches('a').count(), 6, "{got}");
}
