//! Per-webhook delivery options (issue 16): custom headers, receiver authentication,
//! Ed25519 signatures, wildcards and filters, against the real daemon and real receivers.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver, SECRET};

const FAST: &[&str] = &["--allow-http", "--retry-schedule", "300ms"];

fn ticket(id: &str, priority: &str) -> Value {
    json!({"event_type": "ticket.created", "organization_id": "org_o", "event_id": id,
           "data": {"ticket_id": format!("T-{id}"), "title": "t", "priority": priority,
                    "project_id": "p", "created_by": "u", "points": 5}})
}

fn incident(id: &str, severity: &str) -> Value {
    json!({"event_type": "system.incident", "organization_id": "org_o", "event_id": id,
           "data": {"incident_id": format!("I-{id}"), "severity": severity,
                    "affected_services": ["api"], "status": "open"}})
}

async fn create(daemon: &support::Daemon, body: Value) -> (u16, Value) {
    let mut body = body;
    body["secret"] = json!(SECRET);
    body["organization_id"] = json!("org_o");
    daemon.call("POST", "/api/webhooks", Some(body)).await
}

/// Verifies each request's `v1a` entry with Python's `cryptography` (an Ed25519
/// implementation independent of ours, installed by `.ci/run`) and the `whpk_` key, through
/// the README's own `verify_v1a`, so the documented receiver code is what is tested.
fn python_ed25519_verifies(requests: &[support::Received], public_key: &str) -> (bool, String) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```python")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .find(|code| code.contains("def verify_v1a"))
        .expect("the README shows verify_v1a");
    let script = format!(
        "{block}
import json, sys
for c in json.loads(sys.argv[1]):
    ok = verify_v1a(open(c['body'], 'rb').read(), c['headers'], sys.argv[2])
    assert ok, c['headers']
    # A changed body and a request without a v1a entry are refused.
    assert not verify_v1a(open(c['body'], 'rb').read() + b' ', c['headers'], sys.argv[2])
    plain = dict(c['headers'], **{{'webhook-signature': c['headers']['webhook-signature'].split(' ')[0]}})
    assert not verify_v1a(open(c['body'], 'rb').read(), plain, sys.argv[2])
print('VERIFIED')
"
    );
    support::python_over_requests(requests, &script, public_key)
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_basic_and_bearer_auth_and_ed25519_signatures_reach_the_receiver() {
    const API_KEY: &str = "header-credential-0d9f8e7a";
    const PASSWORD: &str = "basic-password-5c4b3a29";
    const TOKEN: &str = "bearer-token-1f2e3d4c";
    let daemon = support::start(FAST);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let (status, created) = create(
        &daemon,
        json!({"url": receiver.url, "events": ["*"],
               "headers": [{"name": "X-Tenant", "value": "acme"},
                           {"name": "X-Api-Key", "value": API_KEY, "secret": true}],
               "auth": {"type": "basic", "username": "palo", "password": PASSWORD},
               "signature_scheme": ["hmac", "ed25519"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Write-only: the secret header's value and the password are not answered.
    assert_eq!(
        created["headers"],
        json!([{"name": "x-tenant", "value": "acme", "secret": false},
               {"name": "x-api-key", "secret": true}])
    );
    assert_eq!(
        created["auth"],
        json!({"type": "basic", "username": "palo", "configured": true})
    );
    assert_eq!(created["signature_scheme"], json!(["hmac", "ed25519"]));
    let (status, key) = daemon
        .call("GET", &format!("/api/webhooks/{id}/public-key"), None)
        .await;
    assert_eq!(status, 200, "{key}");
    let public_key = key["public_key"].as_str().unwrap().to_owned();
    assert!(public_key.starts_with("whpk_"), "{public_key}");

    let (status, body) = daemon
        .call("POST", "/api/events", Some(ticket("evt_h1", "p1")))
        .await;
    assert_eq!(status, 202, "{body}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-tenant"), "acme");
    assert_eq!(got[0].header("x-api-key"), API_KEY);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("palo:{PASSWORD}"));
    assert_eq!(got[0].header("authorization"), format!("Basic {basic}"));
    // HMAC still signs both headers; the v1a entry verifies independently.
    assert!(support::python_verifies(&got[..1], SECRET));
    let (ok, output) = support::python_standard_verifies(&got[..1], SECRET);
    assert!(ok, "{output}");
    let (ok, output) = python_ed25519_verifies(&got[..1], &public_key);
    assert!(ok, "{output}");

    // PATCH: bearer instead of basic; the secret header sent back without its value keeps
    // it. The Ed25519 key stays the same while the scheme stays on.
    let (status, patched) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({"auth": {"type": "bearer", "token": TOKEN},
                        "headers": [{"name": "x-api-key", "secret": true}]})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["auth"],
        json!({"type": "bearer", "configured": true})
    );
    daemon
        .call("POST", "/api/events", Some(ticket("evt_h2", "p1")))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("authorization"), format!("Bearer {TOKEN}"));
    assert_eq!(got[1].header("x-api-key"), API_KEY);
    assert_eq!(got[1].header("x-tenant"), "");
    let (ok, output) = python_ed25519_verifies(&got[1..2], &public_key);
    assert!(ok, "{output}");

    // HMAC only again: no v1a entry, and no public key.
    let (status, _) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{id}"),
            // `null` is the default: HMAC only.
            Some(json!({"signature_scheme": null, "auth": null})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = daemon
        .call("GET", &format!("/api/webhooks/{id}/public-key"), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("ed25519_not_enabled"))
    );
    daemon
        .call("POST", "/api/events", Some(ticket("evt_h3", "p1")))
        .await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert!(!got[2].header("webhook-signature").contains("v1a,"));
    assert_eq!(got[2].header("authorization"), "");

    // No credential appears in any answer after creation, nor in the log.
    let mut answers = Vec::new();
    for path in [format!("/api/webhooks/{id}"), "/api/webhooks".to_owned()] {
        answers.push(daemon.call("GET", &path, None).await.1.to_string());
    }
    answers.push(patched.to_string());
    answers.push(created.to_string());
    let log = daemon.log_text();
    for credential in [API_KEY, PASSWORD, TOKEN, &basic] {
        assert!(!log.contains(credential), "{credential} in the log");
        for answer in &answers {
            assert!(!answer.contains(credential), "{credential} in {answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_sealed_at_rest_with_a_secrets_key() {
    const PASSWORD: &str = "sealed-password-7e6d5c4b";
    const HEADER: &str = "sealed-header-3a2b1c0d";
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("secrets.key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--secrets-key-file", key_file.to_str().unwrap()]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut daemon = support::start_in(dir.path(), &args);
    let (status, created) = create(
        &daemon,
        json!({"url": receiver.url, "events": ["*"],
               "headers": [{"name": "x-key", "value": HEADER, "secret": true}],
               "auth": {"type": "basic", "username": "u", "password": PASSWORD}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    daemon.terminate();
    if support::backend() == support::Backend::Redb {
        let bytes = std::fs::read(dir.path().join("palo.redb")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(PASSWORD) && !text.contains(HEADER),
            "plain credentials on disk"
        );
    }
    // They open again after a restart and reach the receiver.
    let daemon = support::start_in(dir.path(), &args);
    daemon
        .call("POST", "/api/events", Some(ticket("evt_s1", "p1")))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-key"), HEADER);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("u:{PASSWORD}"));
    assert_eq!(got[0].header("authorization"), format!("Basic {basic}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_options_are_refused_with_422_naming_the_field() {
    let daemon = support::start(FAST);
    let url = "http://127.0.0.1:9/hook";
    let table = [
        (
            json!({"headers": [{"name": "X-Palo-Signature", "value": "x"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "webhook-id", "value": "x"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "Host", "value": "x"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "Transfer-Encoding", "value": "x"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "bad name", "value": "x"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "x-a", "value": "line\nbreak"}]}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}]}),
            "headers",
        ),
        (json!({"headers": [{"name": "x-a"}]}), "headers"),
        (
            json!({"headers": (0..21).map(|i| json!({"name": format!("x-{i}"), "value": "v"})).collect::<Vec<_>>()}),
            "headers",
        ),
        (
            json!({"headers": [{"name": "authorization", "value": "x"}], "auth": {"type": "bearer", "token": "t"}}),
            "headers",
        ),
        (
            json!({"auth": {"type": "basic", "username": "a:b", "password": "p"}}),
            "auth.username",
        ),
        (
            json!({"auth": {"type": "basic", "username": "a", "password": ""}}),
            "auth.password",
        ),
        (
            json!({"auth": {"type": "bearer", "token": "has space"}}),
            "auth.token",
        ),
        (json!({"auth": {"type": "digest"}}), "auth.type"),
        (json!({"signature_scheme": ["ed25519"]}), "signature_scheme"),
        (
            json!({"signature_scheme": ["hmac", "rsa"]}),
            "signature_scheme",
        ),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"max_in_flight": 65}), "max_in_flight"),
        (json!({"rate_limit": 0}), "rate_limit"),
        (json!({"ordering": "fifo"}), "ordering"),
        (json!({"ordering_hold_max": "soon"}), "ordering_hold_max"),
        (
            json!({"filter": {"data.priority": {"$regex": "p"}}}),
            "filter",
        ),
        (json!({"filter": []}), "filter"),
        (json!({"filter": {"$or": []}}), "filter"),
        (json!({"events": ["tickets.*"]}), "events"),
        (json!({"events": ["ticket.**"]}), "events"),
    ];
    for (extra, field) in table {
        let mut body = json!({"url": url, "events": ["*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = create(&daemon, body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{body} → {answer}");
    }
    // Nothing was created.
    let (_, list) = daemon.call("GET", "/api/webhooks", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcards_and_filters_deliver_exactly_the_matching_events() {
    let daemon = support::start(FAST);
    let events = [
        ticket("evt_t_p1", "p1"),
        ticket("evt_t_p2", "p2"),
        ticket("evt_t_p3", "p3"),
        incident("evt_i_crit", "critical"),
        incident("evt_i_low", "low"),
    ];
    // (subscription, filter, the event ids it must receive)
    let table: Vec<(Value, Value, Vec<&str>)> = vec![
        (
            json!(["ticket.*"]),
            Value::Null,
            vec!["evt_t_p1", "evt_t_p2", "evt_t_p3"],
        ),
        (
            json!(["system.*"]),
            Value::Null,
            vec!["evt_i_crit", "evt_i_low"],
        ),
        (
            json!(["*"]),
            json!({"data.priority": {"$in": ["p1", "p2"]}}),
            vec!["evt_t_p1", "evt_t_p2"],
        ),
        (
            json!(["ticket.*", "system.incident"]),
            json!({"$or": [{"data.priority": "p3"}, {"data.severity": "critical"}]}),
            vec!["evt_t_p3", "evt_i_crit"],
        ),
        (
            json!(["*"]),
            json!({"data.severity": {"$exists": false}, "data.points": {"$gt": 4, "$lt": 6}}),
            vec!["evt_t_p1", "evt_t_p2", "evt_t_p3"],
        ),
        (
            json!(["*"]),
            json!({"event_type": "system.incident", "data.severity": {"$ne": "critical"}}),
            vec!["evt_i_low"],
        ),
        (json!(["*"]), json!({"data.points": {"$gt": 5}}), vec![]),
    ];
    let mut receivers = Vec::new();
    for (events, filter, want) in &table {
        let receiver = Receiver::start(Behaviour::Status(200)).await;
        let mut body = json!({"url": receiver.url, "events": events});
        if !filter.is_null() {
            body["filter"] = filter.clone();
        }
        let (status, created) = create(&daemon, body).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["events"], *events);
        assert_eq!(created["filter"], *filter);
        receivers.push((receiver, want.clone()));
    }
    for event in &events {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(event.clone()))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    for (i, (receiver, want)) in receivers.iter().enumerate() {
        let got = receiver.wait_for(want.len(), Duration::from_secs(10)).await;
        // Every event was accepted before these waits; a wrong extra delivery would have
        // been attempted by now too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ids: Vec<String> = receiver
            .received()
            .iter()
            .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(ids, want, "webhook {i} ({:?})", table[i]);
        assert!(got.len() >= want.len());
    }
}

/// A tiny HTTP server on 127.0.0.1: `answer(authorization, body)` gives (status, body).
/// Returns its base URL.
async fn serve(answer: impl Fn(String, String) -> (u16, String) + Send + Sync + 'static) -> String {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let answer = std::sync::Arc::clone(&answer);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let answer = std::sync::Arc::clone(&answer);
                    async move {
                        let authorization = request
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap_or("").to_owned())
                            .unwrap_or_default();
                        let body = request.into_body().collect().await?.to_bytes();
                        let (status, text) =
                            answer(authorization, String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(text)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_client_credentials_fetch_a_token_reuse_it_and_refresh_after_a_401_or_expiry() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    const CLIENT_SECRET: &str = "oauth-client-secret-9a8b7c";
    let issued = Arc::new(AtomicUsize::new(0));
    let token_requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let token_url = {
        let (issued, seen) = (Arc::clone(&issued), Arc::clone(&token_requests));
        serve(move |authorization, body| {
            seen.lock().unwrap().push(body.clone());
            let expected = base64::engine::general_purpose::STANDARD
                .encode(format!("palo-client:{CLIENT_SECRET}"));
            if authorization != format!("Basic {expected}")
                || !body.contains("grant_type=client_credentials")
            {
                return (401, r#"{"error":"invalid_client"}"#.to_owned());
            }
            let n = issued.fetch_add(1, SeqCst) + 1;
            (
                200,
                format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":4}}"#),
            )
        })
        .await
    };
    let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let receiver_url = {
        let (revoked, seen) = (Arc::clone(&revoked), Arc::clone(&seen));
        serve(move |authorization, _| {
            seen.lock().unwrap().push(authorization.clone());
            let token = authorization.trim_start_matches("Bearer ").to_owned();
            if revoked.lock().unwrap().contains(&token) || !token.starts_with("tok-") {
                (401, "{}".to_owned())
            } else {
                (200, "ok".to_owned())
            }
        })
        .await
    };
    let daemon = support::start(FAST);
    let (status, created) = create(
        &daemon,
        json!({"url": receiver_url, "events": ["ticket.*"],
               "auth": {"type": "oauth2_client_credentials", "token_url": format!("{token_url}/token"),
                        "client_id": "palo-client", "client_secret": CLIENT_SECRET,
                        "scope": "webhooks:write", "audience": "https://receiver.example"}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["auth"]["type"], "oauth2_client_credentials");
    assert_eq!(created["auth"]["client_id"], "palo-client");
    assert_eq!(created["auth"]["configured"], true);
    let webhook = created["id"].as_str().unwrap().to_owned();
    let succeeded = |n: usize| {
        let daemon = &daemon;
        let webhook = webhook.clone();
        async move {
            daemon
                .wait_until(
                    &format!("/api/webhooks/{webhook}/deliveries"),
                    Duration::from_secs(10),
                    |b| {
                        b["data"].as_array().is_some_and(|d| {
                            d.iter().filter(|d| d["status"] == "succeeded").count() == n
                        })
                    },
                )
                .await
        }
    };
    // Three deliveries, one token.
    for n in 0..3 {
        daemon
            .call(
                "POST",
                "/api/events",
                Some(ticket(&format!("evt_oa{n}"), "p1")),
            )
            .await;
    }
    succeeded(3).await;
    assert_eq!(issued.load(SeqCst), 1, "one token for three deliveries");
    assert!(seen.lock().unwrap().iter().all(|a| a == "Bearer tok-1"));
    let first = token_requests.lock().unwrap()[0].clone();
    assert!(
        first.contains("scope=webhooks%3Awrite") && first.contains("audience="),
        "{first}"
    );
    // The receiver revokes it: the next attempt gets a 401, fetches a new token and is
    // sent again within the same attempt.
    revoked.lock().unwrap().push("tok-1".to_owned());
    daemon
        .call("POST", "/api/events", Some(ticket("evt_oa3", "p1")))
        .await;
    let page = succeeded(4).await;
    assert_eq!(issued.load(SeqCst), 2, "refreshed once after the 401");
    let newest = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "evt_oa3")
        .unwrap()
        .clone();
    assert_eq!(newest["attempt_count"], 1, "{newest}");
    assert_eq!(seen.lock().unwrap().last().unwrap(), "Bearer tok-2");
    // After expires_in (4 s), a new token.
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    daemon
        .call("POST", "/api/events", Some(ticket("evt_oa4", "p1")))
        .await;
    succeeded(5).await;
    assert_eq!(
        issued.load(SeqCst),
        3,
        "a token past its expiry is not reused"
    );
    assert_eq!(seen.lock().unwrap().last().unwrap(), "Bearer tok-3");

    // A wrong client secret: the attempt fails as `auth`, naming the endpoint's error, and
    // nothing reaches the receiver.
    let before = seen.lock().unwrap().len();
    let (status, bad) = create(
        &daemon,
        json!({"url": format!("{receiver_url}/other"), "events": ["system.incident"],
               "auth": {"type": "oauth2_client_credentials", "token_url": format!("{token_url}/token"),
                        "client_id": "palo-client", "client_secret": "wrong-secret"}}),
    )
    .await;
    assert_eq!(status, 201, "{bad}");
    daemon
        .call("POST", "/api/events", Some(incident("evt_oa5", "low")))
        .await;
    let detail = daemon.first_attempt_of(bad["id"].as_str().unwrap()).await;
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["error"], "auth", "{detail}");
    assert!(
        attempt["error_detail"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{attempt}"
    );
    assert_eq!(seen.lock().unwrap().len(), before, "nothing was sent");
    // The client secret and the tokens appear in no answer and no log line.
    let (_, list) = daemon.call("GET", "/api/webhooks", None).await;
    let log = daemon.log_text();
    for secret in [CLIENT_SECRET, "tok-1", "tok-2"] {
        assert!(!list.to_string().contains(secret), "{secret} answered");
        assert!(!log.contains(secret), "{secret} logged");
    }
}
