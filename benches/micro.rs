//! Micro-benchmarks of the per-event CPU work: signing, strict JSON validation, stored-record
//! encode/decode, and fan-out matching against 10k webhooks. Run: `cargo bench --bench micro`.

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

criterion_group!(benches, signing, json_validation, records, fan_out);
criterion_main!(benches);
