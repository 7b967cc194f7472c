//! A whole request through the engine with rules that read every body
//! processor's variables: the first byte picks the Content-Type, the second
//! line onward is the body, the first line the request target. The same
//! transaction is then kept open ([`Waf::inspect`]) and finished with a
//! response carrying the same bytes as its body, so the response phases
//! (body limit, partial processing) see hostile input too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_waf::{Request, Response, Waf};
use std::sync::OnceLock;

const RULES: &str = r#"
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" "id:1,phase:1,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQUEST_HEADERS:Content-Type "@rx ^text/xml" "id:2,phase:1,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQBODY_ERROR "!@eq 0" "id:3,phase:2,pass,log,msg:'body error %{REQBODY_ERROR_MSG}'"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:4,phase:2,pass,log"
SecRule ARGS|ARGS_NAMES|FILES|FILES_NAMES|XML:/*|XML://@*|REQUEST_COOKIES "@rx (?i)<script" "id:5,phase:2,deny,status:403,t:none,t:urlDecodeUni,t:htmlEntityDecode,t:lowercase"
SecRule ARGS "@detectSQLi" "id:6,phase:2,deny,status:403"
SecRule &ARGS "@gt 100" "id:7,phase:2,deny,status:403"
SecResponseBodyAccess On
SecResponseBodyMimeType text/html application/json
SecResponseBodyLimit 256
SecResponseBodyLimitAction ProcessPartial
SecRule RESPONSE_HEADERS:X-Powered-By "@rx ^PHP" "id:8,phase:3,deny,status:403"
SecRule RESPONSE_BODY "@rx (?i)error in your sql syntax" "id:9,phase:4,deny,status:403,t:none,t:htmlEntityDecode"
SecRule RESPONSE_BODY "@pm stack trace exception" "id:10,phase:4,pass,log,setvar:tx.outbound_anomaly_score=+5"
SecRule TX:OUTBOUND_ANOMALY_SCORE "@ge 5" "id:11,phase:4,deny,status:403"
"#;

const TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "application/json",
    "text/xml",
];

fn waf() -> &'static Waf {
    static W: OnceLock<Waf> = OnceLock::new();
    W.get_or_init(|| match Waf::from_str_named("fuzz.conf", RULES) {
        Ok(w) => w,
        Err(e) => panic!("fuzz rules: {e}"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &[][..]),
    };
    let ct = TYPES[usize::from(pick) % TYPES.len()];
    let uri = format!("/{}", String::from_utf8_lossy(target));
    let req = Request::new("POST", &uri)
        .header("Host", "example.com")
        .header("Content-Type", ct)
        .header("Content-Length", body.len().to_string())
        .body(body);
    let whole = waf().evaluate(&req);
    let open = waf().inspect(&req, None);
    assert_eq!(open.request_verdict().matched_ids, whole.matched_ids);
    let resp_ct = if pick & 0x80 == 0 { "text/html" } else { "application/json" };
    let resp = Response::new(200)
        .header("Content-Type", resp_ct)
        .header("X-Powered-By", String::from_utf8_lossy(target).into_owned())
        .body(body);
    let _ = open.finish(&resp);
});
