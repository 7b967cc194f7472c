//! End-to-end: per-route WAF exclusions (`waf_exclusions` in
//! `rampart.toml`) through the real edge on 127.0.0.1:0.

mod util;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::StatusCode;
use rampart_config::{WafExclusion, WafRuleSelector, WafTarget, WafTargetKey};
use rampart_edge::phases::Firewall;
use util::*;

/// 10 refuses "attack" in any argument; 20, tagged, refuses "evil" in
/// arguments and cookies.
const RULES: &str = "SecRuleEngine On\n\
SecRequestBodyAccess On\n\
SecRule ARGS \"@contains attack\" \"id:10,phase:2,deny,status:403,msg:'attack'\"\n\
SecRule ARGS|REQUEST_COOKIES \"@contains evil\" \"id:20,phase:2,deny,status:403,msg:'evil',tag:'attack-evil'\"\n";

fn waf() -> Arc<rampart_waf::Waf> {
    Arc::new(rampart_waf::Waf::from_str_named("test.conf", RULES).unwrap())
}

fn routes(cms_exclusions: &str) -> String {
    format!(
        "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/cms\"\nservice = \"a\"\n\
         waf_exclusions = [{cms_exclusions}]\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/form\"\nservice = \"a\"\n\
         waf_exclusions = [{{ rule = 10, target = \"ARGS:body\" }}]\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/session\"\nservice = \"a\"\n\
         waf_exclusions = [{{ tag = \"attack-evil\", target = \"REQUEST_COOKIES:session\" }}]\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n"
    )
}

#[tokio::test]
async fn a_rule_removed_on_one_route_still_blocks_on_the_others() {
    let a = upstream("a").await;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(
        config(&[("a", vec![a.addr])], &routes("{ rule = 10 }")),
        |ec| {
            ec.waf = Some(waf());
            ec.audit = rec;
        },
    )
    .await;
    let get = |path: &'static str| edge.https("GET", "api.test", path);

    assert_eq!(get("/cms/page?q=attack").await.status, StatusCode::OK);
    assert_eq!(records.0.lock().unwrap().last().unwrap().waf, None);
    // Only rule 10 is removed there.
    assert_eq!(get("/cms/page?q=evil").await.status, StatusCode::FORBIDDEN);
    // Elsewhere rule 10 still refuses.
    let r = get("/?q=attack").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["rule"], 10);
    assert_eq!(get("/form?q=attack").await.status, StatusCode::FORBIDDEN);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_removed_target_lets_that_argument_through_and_no_other() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes("")), |ec| {
        ec.waf = Some(waf())
    })
    .await;
    let get = |path: &'static str| edge.https("GET", "api.test", path);
    assert_eq!(get("/form?body=attack").await.status, StatusCode::OK);
    assert_eq!(
        get("/form?title=attack").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/form?body=attack&title=attack").await.status,
        StatusCode::FORBIDDEN
    );
    // The same argument in a form body.
    let post = |body: &'static str| async {
        let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
        let tls = edge.tls("api.test", cfg).await.unwrap();
        let ct = [("content-type", "application/x-www-form-urlencoded")];
        send_body(tls, "POST", "api.test", "/form", &ct, body.into()).await
    };
    assert_eq!(post("body=attack").await.status, StatusCode::OK);
    assert_eq!(post("note=attack").await.status, StatusCode::FORBIDDEN);
    // Rule 20 was never excluded on /form.
    assert_eq!(get("/form?body=evil").await.status, StatusCode::FORBIDDEN);
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_tag_exclusion_removes_a_cookie_from_the_tagged_rules() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes("")), |ec| {
        ec.waf = Some(waf())
    })
    .await;
    let edge = &edge;
    let with_cookie = |path: &'static str, cookie: &'static str| async move {
        edge.https_with("GET", "api.test", path, &[("cookie", cookie)])
            .await
    };
    assert_eq!(
        with_cookie("/session", "session=evil").await.status,
        StatusCode::OK
    );
    assert_eq!(
        with_cookie("/session", "theme=evil").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        with_cookie("/", "session=evil").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn exclusions_follow_a_reload() {
    let a = upstream("a").await;
    let services = [("a", vec![a.addr])];
    let edge = TestEdge::start(config(&services, &routes("{ rule = 10 }")), |ec| {
        ec.waf = Some(waf())
    })
    .await;
    let get = |path: &'static str| edge.https("GET", "api.test", path);
    assert_eq!(get("/cms?q=attack").await.status, StatusCode::OK);
    assert_eq!(get("/cms?q=evil").await.status, StatusCode::FORBIDDEN);

    edge.handle
        .reload(&config(&services, &routes("{ tag = \"attack-evil\" }")))
        .unwrap();
    assert_eq!(get("/cms?q=attack").await.status, StatusCode::FORBIDDEN);
    assert_eq!(get("/cms?q=evil").await.status, StatusCode::OK);

    edge.handle.reload(&config(&services, &routes(""))).unwrap();
    assert_eq!(get("/cms?q=evil").await.status, StatusCode::FORBIDDEN);
}

#[test]
fn start_warnings_name_the_route_and_the_missing_rule() {
    let cfg = config(
        &[("a", vec![])],
        &routes("{ rule = 10 }, { rule = 942100, target = \"ARGS:q\" }"),
    );
    let warnings = Firewall::check_exclusions(&waf(), &cfg.routes);
    assert_eq!(
        warnings,
        vec![
            "routes[0] (api.test/cms): waf_exclusions names rule 942100, which the loaded rules do not hold"
                .to_string()
        ]
    );
}

/// Every collection the configuration accepts as a target, with and
/// without a key where it has keys, is one the engine accepts.
#[test]
fn the_engine_accepts_every_target_the_config_accepts() {
    let waf = waf();
    for &(collection, keyed) in rampart_config::WAF_TARGET_COLLECTIONS {
        let mut keys = vec![None];
        if keyed {
            keys.push(Some(WafTargetKey::Name("x".into())));
            keys.push(Some(WafTargetKey::Regex("^x_".into())));
        }
        for key in keys {
            let target = WafTarget {
                collection: collection.into(),
                key,
            };
            for rules in [WafRuleSelector::Id(10), WafRuleSelector::Tag("a".into())] {
                let list = [WafExclusion {
                    rules,
                    target: Some(target.clone()),
                }];
                if let Err(e) = Firewall::compile_exclusions(&waf, &list) {
                    panic!("{target}: {e}");
                }
            }
        }
    }
}
