//! Micro-benchmarks of the per-event CPU work: signing, strict JSON validation, stored-record
//! encode/decode, and fan-out matching against 10k webhooks: by event type, by envelope
//! filter (issue 16), and through the store (an accepted event in an organization of 10k
//! webhooks that all read their filter, against 10k that the event type alone rules out).
//! Run: `cargo bench --bench micro`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palo_webhooks::event::EventType;
use palo_webhooks::ids::{DeliveryId, EventKey, WebhookId};
use palo_webhooks::model::{Delivery, DeliveryStatus, EventFilter};

fn body() -> Vec<u8> {
    let filler = "x".repeat(800);
    format!(r#"{{"event_id":"evt_1","event_type":"ticket.created","timestamp":"2026-02-19T10:30:00Z","organization_id":"org_1","data":{{"ticket_id":"TKT-1","title":"{filler}","priority":"p3","project_id":"p","created_by":"u"}}}}"#).into_bytes()
}

fn signing(c: &mut Criterion) {
    let body = body();
    let mut group = c.benchmark_group("signature");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("hmac_sha256_1KiB", |b| {
        b.iter(|| {
            palo_webhooks::signature::sign(black_box("s".repeat(40).as_str()), black_box(&body))
        })
    });
    group.finish();
}

fn json_validation(c: &mut Criterion) {
    let text = String::from_utf8(body()).unwrap();
    let mut group = c.benchmark_group("json_strict");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("validate_1KiB_event", |b| {
        b.iter(|| palo_webhooks::json_strict::validate(black_box(&text)))
    });
    group.finish();
}

/// Ingest's per-event work before the store: the envelope built and `data` checked against
/// its type (issue 17: the event catalog's JSON Schema).
fn event_prepare(c: &mut Criterion) {
    let data = serde_json::value::RawValue::from_string(format!(
        r#"{{"ticket_id":"TKT-1","title":"{}","priority":"p3","project_id":"p","created_by":"u","tags":["a","b"],"custom":{{"n":1}}}}"#,
        "x".repeat(800)
    ))
    .unwrap();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("prepare_1KiB_ticket_created", |b| {
        b.iter(|| {
            palo_webhooks::event::prepare(
                palo_webhooks::event::EventInput {
                    event_id: Some("evt_1".into()),
                    event_type: "ticket.created".into(),
                    timestamp: None,
                    organization_id: "org_1".into(),
                    data: black_box(&data),
                },
                1_771_497_000_000,
                false,
            )
            .unwrap()
        })
    });
    group.finish();
}

fn records(c: &mut Criterion) {
    let delivery = Delivery {
        id: DeliveryId::generate(),
        organization_id: "org_bench".into(),
        webhook_id: WebhookId::generate(),
        event_key: EventKey::generate(),
        event_id: "evt_01HXBENCH".into(),
        event_type: EventType::TicketCreated,
        status: DeliveryStatus::Retrying,
        attempt_count: 2,
        scheduled_attempts: 2,
        next_attempt_at_ms: Some(1_771_497_000_000),
        created_at_ms: 1_771_497_000_000,
        updated_at_ms: 1_771_497_000_000,
        last_outcome: Some(palo_webhooks::model::AttemptOutcome::Status5xx),
        ordering_key: None,
    };
    c.bench_function("record/delivery_encode_decode", |b| {
        b.iter(|| palo_webhooks::store::roundtrip_delivery_record(black_box(&delivery)).unwrap())
    });
}

fn fan_out(c: &mut Criterion) {
    let filters: Vec<EventFilter> = (0..10_000)
        .map(|i| match i % 4 {
            0 => EventFilter::All,
            1 => EventFilter::Only(vec![EventType::TicketCreated]),
            2 => EventFilter::Only(vec![EventType::TicketResolved, EventType::SystemIncident]),
            _ => EventFilter::Only(vec![EventType::TicketStatusChanged]),
        })
        .collect();
    c.bench_function("fan_out/match_event_against_10k_webhooks", |b| {
        b.iter(|| {
            filters
                .iter()
                .filter(|f| f.matches(black_box(EventType::TicketCreated)))
                .count()
        })
    });
}

/// The filters of the filter benches: equality, `$in`, numeric range, `$or`, nested paths;
/// about one in a hundred matches the bench's event.
fn filter_document(i: usize) -> serde_json::Value {
    use serde_json::json;
    match i % 4 {
        0 => json!({"data.priority": format!("p{}", i % 100)}),
        1 => json!({"data.project_id": {"$in": [format!("prj_{i}"), "other"]}}),
        2 => json!({"data.points": {"$gt": 10, "$lt": 20}, "event_type": "ticket.created"}),
        _ => {
            json!({"$or": [{"data.assignee.team": format!("t{i}")}, {"data.tags": {"$exists": false}, "data.priority": "p0"}]})
        }
    }
}

fn filters(c: &mut Criterion) {
    let parsed: Vec<palo_webhooks::filter::Filter> = (0..10_000)
        .map(|i| palo_webhooks::filter::Filter::parse(&filter_document(i)).unwrap())
        .collect();
    let body = body();
    let mut group = c.benchmark_group("fan_out");
    group.bench_function("filters_10k_webhooks_one_envelope_parse", |b| {
        b.iter(|| {
            let envelope: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
            parsed.iter().filter(|f| f.matches(&envelope)).count()
        })
    });
    group.bench_function("parse_10k_filters", |b| {
        let sources: Vec<String> = parsed.iter().map(|f| f.source().to_owned()).collect();
        b.iter(|| {
            let parsed: Vec<_> = sources
                .iter()
                .map(|s| palo_webhooks::filter::Filter::from_source(black_box(s)).unwrap())
                .collect();
            parsed.len()
        })
    });
    group.finish();
}

/// An organization of 10k webhooks in a fresh store: with `filtered`, each subscribed to
/// `*` with a filter the bench's event does not meet; without, each subscribed to a type
/// the event is not (the type alone rules it out). Creates them from 16 threads, so the
/// writer groups them into few commits.
fn store_with_webhooks(
    dir: &std::path::Path,
    filtered: bool,
    count: usize,
) -> palo_webhooks::store::Store {
    use palo_webhooks::model::{DeliveryOptions, Secret, Webhook};
    let store = palo_webhooks::store::Store::open(&dir.join("bench.redb")).unwrap();
    let now = palo_webhooks::clock::now_ms();
    std::thread::scope(|scope| {
        for t in 0..16 {
            let store = &store;
            scope.spawn(move || {
                for i in (t..count).step_by(16) {
                    let mut options = DeliveryOptions::default();
                    let events = if filtered {
                        let mut doc = filter_document(i);
                        // Never met by the bench's event (priority p3).
                        doc["data.priority"] = serde_json::json!("never");
                        options.filter = Some(palo_webhooks::filter::Filter::parse(&doc).unwrap());
                        EventFilter::All
                    } else {
                        EventFilter::Only(vec![EventType::SystemIncident])
                    };
                    store
                        .create_webhook(&Webhook {
                            id: WebhookId::generate(),
                            organization_id: "org_1".into(),
                            url: "https://example.invalid/hook".into(),
                            events,
                            secret: Secret("s".repeat(32)),
                            previous_secret: None,
                            active: true,
                            disabled: None,
                            failing_since_ms: None,
                            description: String::new(),
                            options,
                            created_at_ms: now,
                            updated_at_ms: now,
                        })
                        .unwrap();
                }
            });
        }
    });
    store
}

fn store_fan_out(c: &mut Criterion) {
    use palo_webhooks::store::FanOut;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fan_out_store");
    group.sample_size(10);
    // 40k webhooks is past the fan-out cache (`FAN_OUT_CACHE`, 32,768 webhook views).
    for (name, filtered, count) in [
        ("accept_event_10k_webhooks_ruled_out_by_type", false, 10_000),
        (
            "accept_event_10k_webhooks_ruled_out_by_filter",
            true,
            10_000,
        ),
        (
            "accept_event_40k_webhooks_ruled_out_by_filter",
            true,
            40_000,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_webhooks(dir.path(), filtered, count);
        let data = serde_json::value::RawValue::from_string(
            r#"{"ticket_id":"T","title":"t","priority":"p3","project_id":"p","created_by":"u","points":5}"#.into(),
        )
        .unwrap();
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let now = palo_webhooks::clock::now_ms();
                let prepared = palo_webhooks::event::prepare(
                    palo_webhooks::event::EventInput {
                        event_id: Some(format!("evt_{n}")),
                        event_type: "ticket.created".into(),
                        timestamp: None,
                        organization_id: "org_1".into(),
                        data: &data,
                    },
                    now,
                    false,
                )
                .unwrap();
                runtime
                    .block_on(store.accept_event(prepared, FanOut::Subscribers, now, now))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    signing,
    json_validation,
    event_prepare,
    records,
    fan_out,
    filters,
    store_fan_out
);
criterion_main!(benches);
