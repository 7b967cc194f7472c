//! Feeds arbitrary text to the SecLang parser as a rule file; a rule set that
//! loads then evaluates one request. Neither may panic; a bad rule file must
//! be an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_waf::{Request, WafBuilder};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Include and the *FromFile operators read files named by the input:
    // /dev/zero would only measure memory, not the parser.
    let lower = text.to_ascii_lowercase();
    if lower.contains("include") || lower.contains("file") {
        return;
    }
    let mut b = WafBuilder::new();
    if b.load_str("fuzz.conf", &text).is_err() {
        return;
    }
    if let Ok(waf) = b.build() {
        let req = Request::new("POST", "/a/b.php?x=1&y=%3Cscript%3E")
            .header("Host", "example.com")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", "s=1; t=2")
            .body("q=1%27%20or%201=1&z=..%2f..%2fetc%2fpasswd");
        let _ = waf.evaluate(&req);
    }
});
