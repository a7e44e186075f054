//! Prometheus metrics (issue 7, item 2): every name starts with `palo_webhooks_`.
//!
//! Owner's rule: counters and histograms are recorded where things happen, through the
//! `metrics` facade (ingest, attempts, final outcomes, commits); gauges that describe state
//! (backlog, in flight, db size) are read at scrape time by [`render`], so they cost nothing
//! between scrapes. `metrics-exporter-prometheus` renders the text format.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::{Attempt, AttemptError};

/// Events accepted (202; idempotent replays are not counted).
pub const EVENTS_ACCEPTED: &str = "palo_webhooks_events_accepted_total";
/// Deliveries that reached a final status, by `outcome` (succeeded, failed, cancelled).
pub const DELIVERIES_FINISHED: &str = "palo_webhooks_deliveries_finished_total";
/// Attempts by `result`: 2xx, 3xx, 4xx, 5xx, or the error (timeout, connect, dns, tls, io,
/// blocked).
pub const ATTEMPTS: &str = "palo_webhooks_attempts_total";
/// Duration of one attempt's whole exchange, seconds.
pub const ATTEMPT_SECONDS: &str = "palo_webhooks_attempt_duration_seconds";
/// Duration of one group commit (fsync included), seconds.
pub const COMMIT_SECONDS: &str = "palo_webhooks_store_commit_duration_seconds";
/// Writes per group commit.
pub const COMMIT_BATCH: &str = "palo_webhooks_store_commit_batch_size";

/// Records purged by retention, by `kind` (events, deliveries, attempts).
pub const PURGED: &str = "palo_webhooks_purged_total";

/// Operational events emitted (issue 15), by `type` (`webhook.disabled`, ...).
pub const OPERATIONAL_EVENTS: &str = "palo_webhooks_operational_events_total";

/// Installs the process-wide recorder and returns the handle that renders it. A second call
/// (another daemon in the same process, in tests) gets a handle of its own that the global
/// facade does not feed.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(ATTEMPT_SECONDS.to_owned()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(COMMIT_SECONDS.to_owned()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(COMMIT_BATCH.to_owned()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )
        })
        .expect("bucket lists are not empty")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder is already installed in this process");
    }
    // `# HELP` lines for what is recorded where it happens (the gauges get theirs in render).
    metrics::describe_counter!(
        EVENTS_ACCEPTED,
        "Events accepted (202; idempotent replays not counted)."
    );
    metrics::describe_counter!(
        DELIVERIES_FINISHED,
        "Deliveries reaching a final status, by outcome."
    );
    metrics::describe_counter!(ATTEMPTS, "Attempts by result class.");
    metrics::describe_histogram!(
        ATTEMPT_SECONDS,
        metrics::Unit::Seconds,
        "Whole exchange of one attempt."
    );
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "One group commit of the store, fsync included."
    );
    metrics::describe_histogram!(COMMIT_BATCH, "Writes per group commit.");
    metrics::describe_counter!(PURGED, "Records deleted by retention, by kind.");
    metrics::describe_counter!(
        OPERATIONAL_EVENTS,
        "Operational events emitted (webhook.disabled, webhook.enabled, delivery.exhausted, recovery.finished), by type."
    );
    handle
}

/// Records one logged attempt: its result class and its duration.
pub fn attempt(attempt: &Attempt) {
    let result = match (attempt.error, attempt.status_code) {
        (Some(AttemptError::BlockedAddress), _) => "blocked",
        (Some(e), _) => e.as_str(),
        (None, Some(200..=299)) => "2xx",
        (None, Some(300..=399)) => "3xx",
        (None, Some(400..=499)) => "4xx",
        (None, Some(_)) => "5xx",
        (None, None) => "io",
    };
    metrics::counter!(ATTEMPTS, "result" => result).increment(1);
    metrics::histogram!(ATTEMPT_SECONDS).record(attempt.duration_ms as f64 / 1000.0);
}

/// The state read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Deliveries due now (retry-index entries at or before now).
    pub due_now: u64,
    /// Deliveries scheduled later.
    pub scheduled_later: u64,
    /// Age of the oldest overdue delivery, seconds (0 when none is overdue).
    pub oldest_overdue_seconds: f64,
    /// Attempts in flight now.
    pub in_flight: u64,
    /// The store's size in bytes (the redb file, or the PostgreSQL database).
    pub db_bytes: u64,
    /// In a cluster (PostgreSQL): this daemon's id, the webhooks it serves, the live daemons.
    pub cluster: Option<(String, usize, usize)>,
}

/// The Prometheus text: the recorded metrics, then the scrape-time gauges of `snapshot` and
/// the store's size.
pub fn render(handle: &PrometheusHandle, snapshot: &Snapshot) -> String {
    let mut out = handle.render();
    let db_bytes = snapshot.db_bytes;
    let gauges: [(&str, &str, f64); 5] = [
        (
            "palo_webhooks_deliveries_due",
            "Deliveries due now (waiting for a slot or a scheduler turn).",
            snapshot.due_now as f64,
        ),
        (
            "palo_webhooks_deliveries_scheduled",
            "Deliveries scheduled for later (retries).",
            snapshot.scheduled_later as f64,
        ),
        (
            "palo_webhooks_oldest_overdue_seconds",
            "Age of the oldest overdue delivery, seconds.",
            snapshot.oldest_overdue_seconds,
        ),
        (
            "palo_webhooks_attempts_in_flight",
            "Attempts in flight now.",
            snapshot.in_flight as f64,
        ),
        (
            "palo_webhooks_db_size_bytes",
            "Size of the store (the redb file, or the PostgreSQL database), bytes.",
            db_bytes as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    if let Some((node, serving, daemons)) = &snapshot.cluster {
        out.push_str(&format!(
            "# HELP palo_webhooks_cluster_webhooks_served Webhooks this daemon serves (holds the lease of).\n\
             # TYPE palo_webhooks_cluster_webhooks_served gauge\n\
             palo_webhooks_cluster_webhooks_served{{node=\"{node}\"}} {serving}\n\
             # HELP palo_webhooks_cluster_daemons Live daemons of the cluster, as this one sees them.\n\
             # TYPE palo_webhooks_cluster_daemons gauge\n\
             palo_webhooks_cluster_daemons{{node=\"{node}\"}} {daemons}\n"
        ));
    }
    out
}
