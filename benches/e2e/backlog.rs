//! Bulk-loads a backlog: a large number of deliveries due at once (stored directly through
//! the store, since ingesting a million events over HTTP would take minutes), for the restart
//! and fairness sections of `engine.rs`.

use palo_webhooks::event::{self, EventInput};
use palo_webhooks::ids::WebhookId;
use palo_webhooks::model::{EventFilter, Secret, Webhook};
use palo_webhooks::store::Store;
use serde_json::value::RawValue;

use super::SECRET;

/// Events per bulk-load transaction.
const CHUNK: usize = 5_000;

/// A `ticket.created` event of `org` with this id and about 1 KiB of data, prepared for the
/// store.
fn ticket(
    org: &str,
    event_id: &str,
    filler: &str,
    now: u64,
) -> palo_webhooks::event::PreparedEvent {
    let data = RawValue::from_string(format!(
        r#"{{"ticket_id":"TKT-{event_id}","title":"{filler}","priority":"p3","project_id":"prj","created_by":"user"}}"#
    ))
    .unwrap();
    event::prepare(
        EventInput {
            event_id: Some(event_id.to_owned()),
            event_type: "ticket.created".into(),
            timestamp: None,
            organization_id: org.into(),
            data: &data,
        },
        now,
        false,
    )
    .unwrap()
}

fn webhook(org: &str, receiver: std::net::SocketAddr, now: u64) -> Webhook {
    Webhook {
        id: WebhookId::generate(),
        organization_id: org.into(),
        url: format!("http://{receiver}/hook"),
        events: EventFilter::All,
        secret: Secret(SECRET.into()),
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        active: true,
        description: "backlog bench".into(),
        options: Default::default(),
        created_at_ms: now,
        updated_at_ms: now,
    }
}

/// Creates a db at `db` with one webhook (organization `org_backlog`, at `receiver`) and
/// `pending` deliveries to it, all due a minute ago, and one webhook per organization
/// `org_fresh_<k>` for each of `fresh` (k = 0..), at `fresh_receiver`. Returns the file size.
pub fn load(
    db: &std::path::Path,
    receiver: std::net::SocketAddr,
    pending: usize,
    fresh: usize,
    fresh_receiver: std::net::SocketAddr,
) -> u64 {
    let store = Store::open(db).expect("open store");
    let now = palo_webhooks::clock::now_ms();
    let webhook = webhook("org_backlog", receiver, now);
    store.create_webhook(&webhook).expect("webhook");
    for k in 0..fresh {
        store
            .create_webhook(&self::webhook(
                &format!("org_fresh_{k}"),
                fresh_receiver,
                now,
            ))
            .expect("webhook");
    }
    let filler = "x".repeat(800);
    let mut loaded = 0;
    while loaded < pending {
        let count = CHUNK.min(pending - loaded);
        let events = (loaded..loaded + count)
            .map(|i| ticket("org_backlog", &format!("evt_backlog_{i}"), &filler, now))
            .collect();
        // Due times in ascending order, all in the past: everything is overdue at restart.
        store
            .bulk_load(
                events,
                webhook.id,
                now,
                now - 60_000 + (loaded / CHUNK) as u64,
            )
            .expect("bulk load");
        loaded += count;
    }
    // Where the bytes are: stored keys and values, B-tree metadata, partly filled pages.
    let mut totals = (0u64, 0u64, 0u64);
    for t in store.space().expect("space") {
        if t.entries > 0 {
            println!(
                "  (store) {:<20} {:>9} entries  stored {:>6.0} MiB  metadata {:>5.0} MiB  fragmented {:>5.0} MiB",
                t.table,
                t.entries,
                t.stored_bytes as f64 / 1048576.0,
                t.metadata_bytes as f64 / 1048576.0,
                t.fragmented_bytes as f64 / 1048576.0
            );
        }
        totals.0 += t.stored_bytes;
        totals.1 += t.metadata_bytes;
        totals.2 += t.fragmented_bytes;
    }
    println!(
        "  (store) per pending delivery: stored {:.0} B, metadata {:.0} B, fragmented {:.0} B",
        totals.0 as f64 / pending as f64,
        totals.1 as f64 / pending as f64,
        totals.2 as f64 / pending as f64
    );
    drop(store);
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
}

/// Creates a db at `db` with `webhooks` webhooks (organization `org_many`, at `receiver`),
/// each with `each` deliveries due a minute ago. Returns the file size.
pub fn load_many(
    db: &std::path::Path,
    receiver: std::net::SocketAddr,
    webhooks: usize,
    each: usize,
) -> u64 {
    let store = Store::open(db).expect("open store");
    let now = palo_webhooks::clock::now_ms();
    let filler = "x".repeat(800);
    for w in 0..webhooks {
        let webhook = webhook("org_many", receiver, now);
        store.create_webhook(&webhook).expect("webhook");
        let events = (0..each)
            .map(|i| ticket("org_many", &format!("evt_many_{w}_{i}"), &filler, now))
            .collect();
        store
            .bulk_load(events, webhook.id, now, now - 60_000)
            .expect("bulk load");
    }
    drop(store);
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
}
