//! Webhook URLs: `api::webhooks::validate_url` on arbitrary text, without and with
//! `--allow-http`, then the creation-time address check (`check_url_address`, default
//! policy) on what it accepts.
//!
//! Properties: nothing panics; an accepted URL parses with the WHATWG `url` crate, has the
//! scheme https (or http when allowed), a non-empty host, no user:password, no fragment,
//! and a port (if any) in 1..=65535.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palo_webhooks::address::AddressPolicy;
use palo_webhooks::api::webhooks::{check_url_address, validate_url};

fn check(given: &str, allow_http: bool) {
    let Ok(accepted) = validate_url(given, allow_http) else {
        return;
    };
    let _ = check_url_address(&accepted, &AddressPolicy::default());
    let parsed = url::Url::parse(&accepted)
        .unwrap_or_else(|e| panic!("accepted {accepted:?} does not parse as a URL: {e}"));
    match parsed.scheme() {
        "https" => {}
        "http" => assert!(
            allow_http,
            "http accepted without --allow-http: {accepted:?}"
        ),
        other => panic!("scheme {other:?} accepted: {accepted:?}"),
    }
    assert!(
        parsed.host_str().is_some_and(|h| !h.is_empty()),
        "no host: {accepted:?}"
    );
    assert!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "userinfo accepted: {accepted:?}"
    );
    assert!(parsed.fragment().is_none(), "fragment kept: {accepted:?}");
    assert_ne!(parsed.port(), Some(0), "port 0 accepted: {accepted:?}");
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(given) = std::str::from_utf8(bytes) else {
        return;
    };
    check(given, false);
    check(given, true);
});
