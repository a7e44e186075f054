//! Untrusted `POST /api/webhooks` bodies: strict JSON validation, serde into the API's own
//! `WebhookIn`, then the URL check (with and without `--allow-http`) and the events list.
//!
//! Properties: nothing panics; an accepted URL validates again to itself, carries no
//! user:password and no fragment, and is the given URL up to its fragment; https accepted
//! without `--allow-http` is accepted identically with it; an accepted events list is `"*"`
//! or a non-empty list of distinct public types (or, with a wildcard, names each of its
//! prefixes as given); the delivery options (issue 16) either are refused with a field or
//! give options whose filter parses again from its stored source to the same filter and
//! evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palo_webhooks::api::types::WebhookIn;
use palo_webhooks::api::webhooks::{parse_events, validate_url};
use palo_webhooks::event::EventType;
use palo_webhooks::json_strict;
use palo_webhooks::model::EventFilter;

/// The authority of an absolute URL text: between `://` and the next `/`, `?` or `#`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}

fn check_url(given: &str, allow_http: bool) {
    let Ok(accepted) = validate_url(given, allow_http) else {
        return;
    };
    assert!(!accepted.contains('#'), "fragment kept: {accepted:?}");
    assert!(
        !authority(&accepted).contains('@'),
        "userinfo kept: {accepted:?}"
    );
    // The URL is stored normalized (WHATWG parsing: IDN to ASCII, `[::0]` to `[::]`, default
    // port dropped), so it equals what the `url` crate makes of the given text, fragment cut.
    let parsed = url::Url::parse(&accepted).expect("an accepted URL parses");
    assert!(parsed.username().is_empty() && parsed.password().is_none());
    assert!(parsed.fragment().is_none());
    let mut expected = url::Url::parse(given.trim()).expect("the given URL parses");
    expected.set_fragment(None);
    assert_eq!(
        accepted,
        expected.as_str(),
        "normalized as the WHATWG parser does"
    );
    let again = validate_url(&accepted, allow_http)
        .unwrap_or_else(|e| panic!("{accepted:?} no longer validates: {}", e.message));
    assert_eq!(again, accepted, "validation is idempotent");
    if !allow_http {
        let relaxed = validate_url(given, true).expect("https passes with --allow-http too");
        assert_eq!(relaxed, accepted);
    }
}

fn check_events(names: &[String]) {
    match parse_events(names) {
        Ok(EventFilter::All) => assert!(names.iter().any(|n| n == "*")),
        Ok(EventFilter::Only(types)) => {
            assert!(!types.is_empty());
            assert!(!types.contains(&EventType::WebhookTest));
            for (i, t) in types.iter().enumerate() {
                assert!(!types[..i].contains(t), "duplicate {t:?}");
                assert!(names.iter().any(|n| n == t.as_str()));
            }
            assert!(names.iter().all(|n| EventType::parse(n).is_some()));
        }
        // Issue 15: "*" plus operational types named beside it.
        Ok(EventFilter::AllPlus(extra)) => {
            assert!(names.iter().any(|n| n == "*"));
            assert!(!extra.is_empty());
            for (i, t) in extra.iter().enumerate() {
                assert!(t.is_operational(), "{t:?} is not operational");
                assert!(!extra[..i].contains(t), "duplicate {t:?}");
                assert!(names.iter().any(|n| n == t.as_str()));
            }
        }
        // Issue 16: wildcards like `ticket.*`, each given in the list.
        Ok(EventFilter::Wildcards { prefixes, .. }) => {
            assert!(!prefixes.is_empty());
            for p in &prefixes {
                assert!(names.iter().any(|n| *n == format!("{p}.*")), "{p}");
                assert!(palo_webhooks::model::wildcard_prefix_is_valid(p));
            }
        }
        Err(_) => {}
    }
}

fn check_options(input: &mut WebhookIn) {
    let policy = palo_webhooks::address::AddressPolicy::default();
    let context = palo_webhooks::api::options::OptionsContext {
        allow_http: false,
        policy: &policy,
    };
    let Ok(options) = input.take_options().apply(&Default::default(), context) else {
        return;
    };
    if let Some(filter) = &options.filter {
        let again = palo_webhooks::filter::Filter::from_source(filter.source())
            .expect("a stored filter parses again");
        assert_eq!(&again, filter);
        let envelope = serde_json::json!({"event_type": "ticket.created",
            "data": {"priority": "p1", "count": 3, "tags": ["a"], "n": null}});
        assert_eq!(again.matches(&envelope), filter.matches(&envelope));
    }
    assert!(options.headers.len() <= palo_webhooks::model::MAX_CUSTOM_HEADERS);
    if let Some(n) = options.max_in_flight {
        assert!((1..=palo_webhooks::model::MAX_IN_FLIGHT_LIMIT).contains(&n));
    }
    assert_ne!(options.rate_limit, Some(0));
}

fuzz_target!(|bytes: &[u8]| {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if json_strict::validate(text).is_err() {
        return;
    }
    let Ok(mut input) = serde_json::from_str::<WebhookIn>(text) else {
        return;
    };
    check_url(&input.url, false);
    check_url(&input.url, true);
    check_events(&input.events);
    check_options(&mut input);
});
