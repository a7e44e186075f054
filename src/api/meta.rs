//! The daemon's own routes beside the resources: liveness (`/healthz`), readiness
//! (`/readyz`), Prometheus metrics (`/metrics`), who a token is (`/api/me`) and the event
//! types (`/api/event-types`). Each answer is a type here, so the OpenAPI document
//! ([`super::openapi`]) describes exactly what is sent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorOut};

/// Prometheus metrics.
///
/// `GET /metrics`: Prometheus text format (version 0.0.4), every name prefixed
/// `palo_webhooks_`; with `--metrics-token`, only for `Authorization: Bearer <token>` (401
/// otherwise).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "`--metrics-token` is set and the request does not carry it", body = ErrorOut)
    )
)]
pub(super) async fn metrics_text(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use subtle::ConstantTimeEq;

    use super::token_hash;
    if let Some(expected) = &state.metrics.token_hash {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| token_hash(t.trim()));
        if !given.is_some_and(|g| bool::from(g.ct_eq(expected))) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid metrics token",
            ));
        }
    }
    let now = crate::clock::now_ms();
    let ((due_now, scheduled_later, oldest), db_bytes) =
        crate::store::blocking(&state.store, move |s| {
            Ok((s.due_summary(now)?, s.size_bytes().unwrap_or(0)))
        })
        .await?;
    let snapshot = crate::metrics::Snapshot {
        due_now,
        scheduled_later,
        oldest_overdue_seconds: oldest.map_or(0.0, |due| now.saturating_sub(due) as f64 / 1000.0),
        in_flight: state.scheduler.in_flight() as u64,
        db_bytes,
        cluster: state
            .scheduler
            .cluster_status()
            .map(|c| (c.node, c.serving.len(), c.daemons.len())),
    };
    let text = crate::metrics::render(&state.metrics.handle, &snapshot);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /healthz`: liveness.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthOut {
    /// `ok`.
    pub status: String,
}

/// Liveness.
///
/// `GET /healthz`, liveness: 200 `{"status":"ok"}` while the process serves (the router is
/// only served once the store is open and the scheduler runs), no auth. A failing store
/// does not change it: restarting would not help, [`readyz`] says it.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The daemon serves", body = HealthOut))
)]
pub(super) async fn healthz() -> Json<HealthOut> {
    Json(HealthOut {
        status: "ok".to_owned(),
    })
}

/// `GET /readyz`: readiness.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadyOut {
    /// `ready` or `unavailable`.
    pub status: String,
    /// With `unavailable`: why, in words.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// Readiness.
///
/// `GET /readyz`, readiness: 200 `{"status":"ready"}` while the store commits; 503
/// `{"status":"unavailable","reason":...}` while it cannot (disk full, an I/O error, the
/// PostgreSQL server unreachable: ingest answers 503 and deliveries are paused until a probe
/// commits again, about every second), no auth. For load balancers and monitors.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The store commits", body = ReadyOut),
        (status = 503, description = "The store cannot commit; the reason says why", body = ReadyOut)
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyOut>) {
    if state.store.is_writable() {
        (
            StatusCode::OK,
            Json(ReadyOut {
                status: "ready".to_owned(),
                reason: None,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadyOut {
                status: "unavailable".to_owned(),
                reason: Some("the store cannot commit (disk full, I/O error or database unreachable): events are refused with 503 and deliveries are paused until it commits again".to_owned()),
            }),
        )
    }
}

/// `GET /api/me`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeOut {
    /// `admin` or `organization`.
    pub principal: String,
    /// With `organization`: which one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub organization_id: Option<String>,
}

/// Who the token is.
///
/// `GET /api/me` → who the token is: `{"principal":"admin"}` or
/// `{"principal":"organization","organization_id":"…"}` (the web UI's sign-in check).
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "operations",
    responses((status = 200, description = "Who the token is", body = MeOut))
)]
pub(super) async fn whoami(caller: Caller) -> Json<MeOut> {
    Json(match caller {
        Caller::Admin => MeOut {
            principal: "admin".to_owned(),
            organization_id: None,
        },
        Caller::Organization(org) => MeOut {
            principal: "organization".to_owned(),
            organization_id: Some(org),
        },
    })
}

/// One event type of `GET /api/event-types` (the event catalog, [`crate::catalog`]).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventTypeOut {
    /// The type's name, e.g. `ticket.created`.
    pub name: String,
    /// The `data` fields an event of this type must carry.
    pub required_fields: Vec<String>,
    /// Made by the daemon (issue 15), never ingested; reaches only webhooks that name it.
    pub operational: bool,
    /// Whether a producer may send it to `POST /api/events` (the spec's four types).
    pub ingestible: bool,
    /// Whether a webhook may name it in `events` (every type but `webhook.test`, which goes
    /// only to the webhook being tested).
    pub subscribable: bool,
    /// The JSON Schema (2020-12) of its `data`, with an example: ingest validates `data`
    /// with this very schema.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// `GET /api/event-types`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventTypesOut {
    /// Every type: the spec's four, `webhook.test`, then the operational ones.
    pub data: Vec<EventTypeOut>,
}

/// The event catalog: every event type with its JSON Schema.
///
/// `GET /api/event-types` → the event catalog: every event type (spec "Types
/// d'événements", `webhook.test`, and the operational types of issue 15, made by the daemon
/// and reaching only webhooks that name them), the `data` fields each carries, and the JSON
/// Schema ingest validates its `data` with.
#[utoipa::path(
    get,
    path = "/api/event-types",
    tag = "events",
    responses((status = 200, description = "The event types", body = EventTypesOut))
)]
pub(super) async fn event_types(_caller: Caller) -> Json<EventTypesOut> {
    Json(EventTypesOut {
        data: crate::catalog::all_types()
            .map(|t| EventTypeOut {
                name: t.as_str().to_owned(),
                required_fields: t
                    .required_fields()
                    .iter()
                    .map(|(name, _)| (*name).to_owned())
                    .collect(),
                operational: t.is_operational(),
                ingestible: crate::event::EventType::PUBLIC.contains(&t),
                subscribable: t != crate::event::EventType::WebhookTest,
                schema: crate::catalog::data_schema(t),
            })
            .collect(),
    })
}
