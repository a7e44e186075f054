//! The local HTTP API: JSON over HTTP under `/api`, bearer-token auth, one error shape.
//!
//! Owner's rule: this is the only module that knows our HTTP/JSON shapes ([`types`]). It
//! authenticates the caller, validates input, calls the store (on the blocking pool) and the
//! scheduler, and maps every failure to `{"error":{"code","message"}}` with the right status.
//! Architecture invariant: a resource of another organization is answered 404, never 403.

pub mod admin;
mod deliveries;
mod error;
mod events;
mod extract;
pub mod guard;
pub mod jobs;
mod keys;
mod meta;
pub mod openapi;
pub mod options;
mod search;
pub mod stats;
pub mod types;
pub mod ui;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::scheduler::Scheduler;
use crate::store::Store;

pub use error::{ApiError, ErrorDetail, ErrorOut};
pub use extract::{token_hash, Caller};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// The scheduler (redelivery and test deliveries).
    pub scheduler: Scheduler,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// Whether http:// webhook URLs are accepted.
    pub allow_http: bool,
    /// The outbound address policy: IP-literal webhook URLs are checked at creation.
    pub address_policy: Arc<crate::address::PolicyCell>,
    /// The attempt timeout, to lease a test delivery while its first attempt runs.
    pub attempt_timeout: Duration,
    /// How long a client has to send a request body (408 after it).
    pub read_timeout: Duration,
    /// Largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Per-key request rate limit (reloadable).
    pub rate_limit: Arc<guard::RateLimit>,
    /// What `GET /metrics` renders.
    pub metrics: Arc<MetricsState>,
    /// When the daemon started (uptime in `GET /api/admin/status`).
    pub started: std::time::Instant,
}

/// `GET /metrics`: the recorder's handle, the db file (for its size) and the optional token.
pub struct MetricsState {
    /// Renders the recorded metrics.
    pub handle: metrics_exporter_prometheus::PrometheusHandle,
    /// The db file.
    pub db_path: std::path::PathBuf,
    /// SHA-256 of the bearer token `/metrics` requires, if one is set.
    pub token_hash: Option<[u8; 32]>,
}

/// Builds the router: every route behind [`guard::check_head`], the `/api` routes behind
/// [`guard::authenticate`] then [`guard::read_body`], and JSON answers for unknown routes, wrong methods and
/// panics.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.max_body_bytes;
    let api = Router::new()
        .route("/keys", post(keys::create_key).get(keys::list_keys))
        .route("/keys/{id}", axum::routing::delete(keys::delete_key))
        .route(
            "/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/webhooks/{id}",
            get(webhooks::get_webhook)
                .patch(webhooks::update_webhook)
                .delete(webhooks::delete_webhook),
        )
        .route(
            "/webhooks/{id}/deliveries",
            get(deliveries::list_webhook_deliveries),
        )
        .route("/webhooks/{id}/test", post(deliveries::test_webhook))
        .route("/webhooks/{id}/enable", post(webhooks::enable_webhook))
        .route("/webhooks/{id}/public-key", get(options::public_key))
        .route("/webhooks/{id}/recover", post(jobs::recover))
        .route("/webhooks/{id}/replay", post(jobs::replay))
        .route("/jobs", get(jobs::list_jobs))
        .route("/jobs/{id}", get(jobs::get_job))
        .route("/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/webhooks/{id}/stats", get(stats::webhook_stats))
        .route("/me", get(meta::whoami))
        .route("/admin/backup", get(admin::backup))
        .route("/admin/status", get(admin::status))
        .route("/event-types", get(meta::event_types))
        .route(
            "/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/events",
            post(events::ingest_event).get(events::list_events),
        )
        .route("/events/{event_id}", get(events::get_event))
        .route("/deliveries", get(search::search_deliveries))
        .route(
            "/events/{event_id}/payload",
            axum::routing::delete(events::delete_payload),
        )
        .route("/deliveries/{id}", get(deliveries::get_delivery))
        .route("/deliveries/{id}/redeliver", post(deliveries::redeliver))
        // Outermost last: authenticate, then read the body.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::authenticate,
        ));
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics_text))
        // Outside `/api`'s authentication: the document describes the API to anyone.
        .route("/api/openapi.json", get(openapi::document))
        .nest("/api", api)
        .merge(ui::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(guard::check_head))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(axum::middleware::map_response(ui::baseline_headers))
        .with_state(state)
}
