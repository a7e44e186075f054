//! A webhook's own flow control (issue 16): `rate_limit` and `max_in_flight`, enforced by the
//! scheduler, against the real daemon and real receivers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Behaviour, Receiver, SECRET};

fn ticket(n: usize) -> Value {
    json!({"event_type": "ticket.created", "organization_id": "org_f", "event_id": format!("evt_f{n}"),
           "data": {"ticket_id": format!("T-{}", n % 20), "title": "t", "priority": "p1",
                    "project_id": "p", "created_by": "u"}})
}

async fn webhook(daemon: &support::Daemon, url: &str, options: Value) -> String {
    let mut body =
        json!({"url": url, "events": ["*"], "secret": SECRET, "organization_id": "org_f"});
    for (k, v) in options.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, created) = daemon.call("POST", "/api/webhooks", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_of_20_per_second_holds_over_20_seconds_of_2000_due_deliveries() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1s"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let id = webhook(&daemon, &receiver.url, json!({"rate_limit": 20})).await;
    for n in 0..2000 {
        let (status, body) = daemon.call("POST", "/api/events", Some(ticket(n))).await;
        assert_eq!(status, 202, "{body}");
    }
    let first = receiver.wait_for(1, Duration::from_secs(10)).await[0].at;
    tokio::time::sleep_until((first + Duration::from_secs(20)).into()).await;
    let in_window = receiver
        .received()
        .iter()
        .filter(|r| r.at < first + Duration::from_secs(20))
        .count();
    eprintln!("rate_limit 20/s: {in_window} requests in the first 20 s");
    // 20 per second over 20 s, plus the first second's burst of up to 20: 400 to 420.
    assert!(
        (360..=440).contains(&in_window),
        "{in_window} requests in 20 s at 20/s"
    );
    // Waiting deliveries are neither failed nor attempted: each arrived once, first try.
    assert!(receiver
        .received()
        .iter()
        .all(|r| r.header("x-palo-attempt") == "1"));
    let (_, page) = daemon
        .call(
            "GET",
            &format!("/api/webhooks/{id}/deliveries?limit=500"),
            None,
        )
        .await;
    for d in page["data"].as_array().unwrap() {
        assert!(
            d["status"] == "succeeded" || d["status"] == "pending",
            "{d}"
        );
        assert!(d["attempt_count"].as_u64().unwrap() <= 1, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_1_never_has_two_requests_open_while_4_overlaps() {
    let daemon = support::start(&["--allow-http", "--max-in-flight-per-webhook", "8"]);
    let one = Receiver::start(Behaviour::Slow(100)).await;
    let four = Receiver::start(Behaviour::Slow(100)).await;
    webhook(&daemon, &one.url, json!({"max_in_flight": 1})).await;
    webhook(&daemon, &four.url, json!({"max_in_flight": 4})).await;
    for n in 0..40 {
        let (status, _) = daemon.call("POST", "/api/events", Some(ticket(n))).await;
        assert_eq!(status, 202);
    }
    let one_got = one.wait_for(40, Duration::from_secs(30)).await;
    let four_got = four.wait_for(40, Duration::from_secs(30)).await;
    // Each request is answered 100 ms after it arrives: two arrivals closer than that were
    // open at once.
    let overlaps = |got: &[support::Received]| {
        let mut at: Vec<_> = got.iter().map(|r| r.at).collect();
        at.sort();
        at.windows(2)
            .filter(|w| w[1] - w[0] < Duration::from_millis(95))
            .count()
    };
    assert_eq!(
        overlaps(&one_got),
        0,
        "max_in_flight 1 had two requests open"
    );
    assert!(overlaps(&four_got) > 10, "max_in_flight 4 never overlapped");
}
