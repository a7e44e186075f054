//! The searchable delivery log through the API (issue 15, item 6): `GET /api/deliveries`
//! answers, page after page, exactly the deliveries a full scan through the existing routes
//! (`GET /api/events`, `GET /api/deliveries/{id}`) filtered in the test gives, for many
//! combinations of filters; `GET /api/events?delivery_status=`; the refusals.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Daemon, Receiver, ADMIN_TOKEN};

const ORG: &str = "org_search";

fn event(i: usize, org: &str) -> Value {
    let (t, data) = match i % 4 {
        0 => (
            "ticket.created",
            json!({"ticket_id": "T", "title": "t", "priority": "p1", "project_id": "p",
                   "created_by": "u"}),
        ),
        1 => (
            "ticket.status_changed",
            json!({"ticket_id": "T", "old_status": "a", "new_status": "b", "changed_by": "u"}),
        ),
        2 => (
            "ticket.resolved",
            json!({"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 2}),
        ),
        _ => (
            "system.incident",
            json!({"incident_id": "I", "severity": "high", "affected_services": ["api"],
                   "status": "open"}),
        ),
    };
    json!({"event_id": format!("evt_s_{i}"), "event_type": t, "organization_id": org,
           "data": data})
}

/// The outcome the test expects of an attempt, classified here independently of the daemon.
fn outcome_of(attempt: &Value) -> String {
    if let Some(error) = attempt["error"].as_str() {
        return error.to_owned();
    }
    match attempt["status_code"].as_u64() {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other_status",
        None => "io",
    }
    .to_owned()
}

/// Every delivery of `org`, read through the existing routes: the events' pages, then each
/// delivery with its attempts.
async fn scan(daemon: &Daemon, org: &str) -> Vec<Value> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = daemon
            .call(
                "GET",
                &format!("/api/events?organization_id={org}&limit=5{cursor}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for e in page["data"].as_array().unwrap() {
            for d in e["deliveries"].as_array().unwrap() {
                ids.push(d["id"].as_str().unwrap().to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let (status, delivery) = daemon
            .call("GET", &format!("/api/deliveries/{id}"), None)
            .await;
        assert_eq!(status, 200, "{delivery}");
        out.push(delivery);
    }
    out
}

/// Every page of `GET /api/deliveries?{query}` with `limit`, as `token`; the ids in order.
async fn search(daemon: &Daemon, token: &str, query: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = daemon
            .call_as(
                token,
                "GET",
                &format!("/api/deliveries?{query}&limit={limit}{cursor}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{query}: {page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        out.extend(data.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
        assert!(out.len() < 10_000, "the pages never end");
    }
}

/// One combination of filters: the query string, and the test's own predicate.
struct Filters {
    webhook: Option<String>,
    statuses: &'static [&'static str],
    outcomes: &'static [&'static str],
    event_type: Option<&'static str>,
    event_id: Option<&'static str>,
    window: Option<(String, String)>,
}

impl Filters {
    fn query(&self) -> String {
        let mut q = vec![format!("organization_id={ORG}")];
        if let Some(w) = &self.webhook {
            q.push(format!("webhook_id={w}"));
        }
        // Statuses as one comma-separated value, outcomes as repeated parameters.
        if !self.statuses.is_empty() {
            q.push(format!("status={}", self.statuses.join(",")));
        }
        q.extend(self.outcomes.iter().map(|o| format!("outcome={o}")));
        if let Some(t) = self.event_type {
            q.push(format!("event_type={t}"));
        }
        if let Some(e) = self.event_id {
            q.push(format!("event_id={e}"));
        }
        if let Some((since, until)) = &self.window {
            q.push(format!("since={since}&until={until}"));
        }
        q.join("&")
    }

    fn matches(&self, d: &Value) -> bool {
        let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        self.webhook.as_ref().is_none_or(|w| *w == s("webhook_id"))
            && (self.statuses.is_empty() || self.statuses.contains(&s("status").as_str()))
            && (self.outcomes.is_empty()
                || d["last_outcome"]
                    .as_str()
                    .is_some_and(|o| self.outcomes.contains(&o)))
            && self.event_type.is_none_or(|t| t == s("event_type"))
            && self.event_id.is_none_or(|e| e == s("event_id"))
            && self
                .window
                .as_ref()
                .is_none_or(|(since, until)| s("created_at") >= *since && s("created_at") <= *until)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_search_returns_exactly_what_a_scan_of_the_log_matches() {
    let mut daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "200ms",
        "--attempt-timeout",
        "1s",
    ]);
    let ok = Receiver::start(Behaviour::Status(200)).await;
    let broken = Receiver::start(Behaviour::Status(500)).await;
    let missing = Receiver::start(Behaviour::Status(404)).await;
    let moved = Receiver::start(Behaviour::Redirect).await;
    let hang = Receiver::start(Behaviour::Hang).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let w_ok = daemon.create_webhook(ORG, &ok.url, &["*"]).await;
    daemon.create_webhook(ORG, &broken.url, &["*"]).await;
    let w_missing = daemon
        .create_webhook(ORG, &missing.url, &["ticket.created", "ticket.resolved"])
        .await;
    daemon
        .create_webhook(ORG, &moved.url, &["ticket.status_changed"])
        .await;
    let w_hang = daemon
        .create_webhook(ORG, &hang.url, &["system.incident"])
        .await;
    daemon
        .create_webhook(ORG, &closed, &["ticket.created"])
        .await;
    daemon
        .create_webhook(
            ORG,
            "http://nowhere.invalid/hook",
            &["system.incident", "ticket.resolved"],
        )
        .await;
    let w_gone = daemon
        .create_webhook(ORG, &hang.url, &["ticket.resolved"])
        .await;
    daemon.create_webhook("org_other", &ok.url, &["*"]).await;
    for i in 0..12 {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(event(i, ORG)))
            .await;
        assert_eq!(status, 202, "{body}");
        let (status, _) = daemon
            .call("POST", "/api/events", Some(event(i, "org_other")))
            .await;
        assert_eq!(status, 202);
        // Spread the creation times, so a time window cuts the log.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    // Deleting a webhook cancels its deliveries that are not final.
    let (status, _) = daemon
        .call("DELETE", &format!("/api/webhooks/{w_gone}"), None)
        .await;
    assert_eq!(status, 204);
    // Everything else ends: succeeded, or failed after its two scheduled attempts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = scan(&daemon, ORG).await;
        if all.iter().all(|d| d["next_attempt_at"].is_null()) {
            break all;
        }
        assert!(Instant::now() < deadline, "deliveries never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(all.len() > 40, "{} deliveries", all.len());
    for d in &all {
        let expected = d["attempts"]
            .as_array()
            .unwrap()
            .last()
            .map(|a| Value::from(outcome_of(a)));
        assert_eq!(d["last_outcome"], expected.unwrap_or(Value::Null), "{d}");
    }
    for outcome in ["2xx", "3xx", "4xx", "5xx", "timeout", "connect", "dns"] {
        assert!(
            all.iter().any(|d| d["last_outcome"] == outcome),
            "no delivery came to {outcome}"
        );
    }
    for status in ["succeeded", "failed", "cancelled"] {
        assert!(all.iter().any(|d| d["status"] == status), "no {status}");
    }

    // The search against the scan, newest first, over pages of 3 and of 50.
    let mut times: Vec<String> = all
        .iter()
        .map(|d| d["created_at"].as_str().unwrap().to_owned())
        .collect();
    times.sort();
    let window = (
        times[times.len() / 4].clone(),
        times[times.len() * 3 / 4].clone(),
    );
    let mut combinations = 0;
    let mut found_some = 0;
    for webhook in [
        None,
        Some(&w_ok),
        Some(&w_missing),
        Some(&w_hang),
        Some(&w_gone),
    ] {
        for statuses in [
            &[][..],
            &["failed"][..],
            &["succeeded", "cancelled"][..],
            &["pending", "retrying"][..],
        ] {
            for outcomes in [
                &[][..],
                &["2xx"][..],
                &["5xx", "timeout"][..],
                &["3xx"][..],
                &["connect", "dns", "4xx"][..],
            ] {
                for (event_type, event_id) in [
                    (None, None),
                    (Some("ticket.created"), None),
                    (None, Some("evt_s_6")),
                ] {
                    for window in [None, Some(window.clone())] {
                        let filters = Filters {
                            webhook: webhook.cloned(),
                            statuses,
                            outcomes,
                            event_type,
                            event_id,
                            window,
                        };
                        let mut expected: Vec<&Value> =
                            all.iter().filter(|d| filters.matches(d)).collect();
                        expected.sort_by_key(|d| {
                            std::cmp::Reverse((
                                d["created_at"].as_str().unwrap().to_owned(),
                                d["id"].as_str().unwrap().to_owned(),
                            ))
                        });
                        let expected: Vec<String> = expected
                            .iter()
                            .map(|d| d["id"].as_str().unwrap().to_owned())
                            .collect();
                        let query = filters.query();
                        for limit in [3, 50] {
                            assert_eq!(
                                search(&daemon, ADMIN_TOKEN, &query, limit).await,
                                expected,
                                "{query}, limit {limit}"
                            );
                        }
                        combinations += 1;
                        found_some += usize::from(!expected.is_empty());
                    }
                }
            }
        }
    }
    assert_eq!(combinations, 5 * 4 * 5 * 3 * 2);
    assert!(found_some > 100, "only {found_some} searches found rows");

    // An organization key searches its own log, without naming it.
    let key = daemon.create_key(ORG).await;
    let everything = search(&daemon, &key, "status=succeeded", 50).await;
    let succeeded = all.iter().filter(|d| d["status"] == "succeeded").count();
    assert_eq!(everything.len(), succeeded);

    // Stripe's "events not delivered": events with a failed delivery.
    let (status, page) = daemon
        .call_as(
            &key,
            "GET",
            "/api/events?delivery_status=failed&limit=500",
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = all
        .iter()
        .filter(|d| d["status"] == "failed")
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(listed, expected);
    // `check` holds over the search index (its entries are the deliveries' facets).
    assert_eq!(daemon.terminate(), Some(0));
    let (ok, report) = support::check(&daemon.dir);
    assert!(ok, "{report}");
}

#[tokio::test]
async fn delivery_search_refuses_what_it_cannot_answer() {
    let daemon = support::start(&[]);
    let key = daemon.create_key(ORG).await;
    for (token, query, code) in [
        (ADMIN_TOKEN, "status=failed", "invalid_query"),
        (key.as_str(), "status=lost", "invalid_query"),
        (key.as_str(), "outcome=6xx", "invalid_query"),
        (key.as_str(), "event_type=ticket.eaten", "invalid_query"),
        (key.as_str(), "since=yesterday", "invalid_query"),
        (key.as_str(), "webhook_id=dlv_nope", "invalid_query"),
        (key.as_str(), "cursor=wh_nope", "invalid_query"),
        (key.as_str(), "limit=0", "invalid_query"),
        (key.as_str(), "limit=many", "invalid_query"),
        (key.as_str(), "stauts=failed", "invalid_query"),
        (key.as_str(), "event_id=a&event_id=b", "invalid_query"),
        (key.as_str(), "organization_id=org_other", "not_found"),
        (ADMIN_TOKEN, "delivery_status=lost", "invalid_query"),
    ] {
        let path = if query.starts_with("delivery_status") {
            format!("/api/events?{query}")
        } else {
            format!("/api/deliveries?{query}")
        };
        let (status, body) = daemon.call_as(token, "GET", &path, None).await;
        let expected = if code == "not_found" { 404 } else { 400 };
        assert_eq!(status, expected, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    // An empty organization's log is an empty page, not an error.
    let (status, body) = daemon
        .call_as(&key, "GET", "/api/deliveries?status=failed,pending", None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"data": [], "next_cursor": null}))
    );
}

/// `palo-webhooks deliveries list` with the search's filters answers what the API does.
#[tokio::test(flavor = "multi_thread")]
async fn cli_deliveries_list_searches_with_the_same_filters() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "200ms"]);
    let missing = Receiver::start(Behaviour::Status(404)).await;
    let ok = Receiver::start(Behaviour::Status(200)).await;
    let w_missing = daemon.create_webhook(ORG, &missing.url, &["*"]).await;
    daemon.create_webhook(ORG, &ok.url, &["*"]).await;
    for i in 0..3 {
        let (status, body) = daemon
            .call("POST", "/api/events", Some(event(i, ORG)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let failed = daemon
        .wait_until(
            &format!("/api/deliveries?organization_id={ORG}&status=failed,succeeded"),
            Duration::from_secs(20),
            |b| b["data"].as_array().is_some_and(|d| d.len() == 6),
        )
        .await;
    assert!(failed["data"][0]["last_outcome"].as_str().is_some());
    let cli = |args: &[&str]| {
        let (code, out, err) = support::cli_as(&daemon, ADMIN_TOKEN, args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = cli(&[
        "deliveries",
        "list",
        "--organization-id",
        ORG,
        "--status",
        "failed",
        "--status",
        "retrying",
        "--outcome",
        "4xx,5xx",
        "--json",
    ]);
    let page: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{out}");
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["webhook_id"] == w_missing.as_str() && d["last_outcome"] == "4xx"));
    // As a table: the outcome is a column.
    let out = cli(&[
        "deliveries",
        "list",
        "--organization-id",
        ORG,
        "--outcome",
        "2xx",
        "--event-type",
        "ticket.created",
    ]);
    assert!(
        out.lines().next().unwrap().contains("LAST_OUTCOME"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("2xx")).count(),
        1,
        "{out}"
    );
    // `--webhook` alone still lists one webhook's deliveries without naming the organization.
    let out = cli(&["deliveries", "list", "--webhook", &w_missing]);
    assert_eq!(
        out.lines().filter(|l| l.contains("failed")).count(),
        3,
        "{out}"
    );
}
