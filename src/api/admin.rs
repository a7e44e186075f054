//! Admin-only operations (issue 7): the online backup and the status summary.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller};
use crate::clock::{self, format_ms};
use crate::model::DeliveryStatus;
use crate::store::blocking;

/// Download a consistent backup of the store.
///
/// `GET /api/admin/backup` (admin): a consistent snapshot of the store as a redb file,
/// streamed as `application/octet-stream`. The copy is made from one read transaction into a
/// temporary file beside the db (`<db>.backup-<ulid>.tmp`, removed once opened), so the
/// answer is never a torn copy however much is written meanwhile; `Content-Length` is exact.
/// Headers `X-Palo-Backup-Events` and `X-Palo-Backup-Deliveries` give what it holds.
///
/// # Errors
/// 403 for an organization key; 503 `store_unavailable` when the copy cannot be written
/// (disk full): the partial file is removed.
#[utoipa::path(
    get,
    path = "/api/admin/backup",
    tag = "admin",
    responses(
        (status = 200, description = "A consistent copy of the store as a redb file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "not the admin token", body = crate::api::ErrorOut),
        (status = 501, description = "`not_supported`: the store is PostgreSQL; back it up with its own tools", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn backup(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let mut temp = state.metrics.db_path.clone().into_os_string();
    temp.push(format!(".backup-{}.tmp", ulid::Ulid::generate()));
    let temp = std::path::PathBuf::from(temp);
    let target = temp.clone();
    let report = match blocking(&state.store, move |s| s.backup_to(&target)).await {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
    };
    let file = tokio::fs::File::open(&temp).await;
    // Unlinked at once: the open handle keeps the bytes until the stream ends.
    let _ = std::fs::remove_file(&temp);
    let file = file.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("cannot read the backup copy: {e}"),
        )
    })?;
    tracing::info!(
        events = report.events,
        deliveries = report.deliveries,
        bytes = report.bytes,
        "backup taken"
    );
    let name = format!(
        "attachment; filename=\"palo-webhooks-{}.redb\"",
        clock::format_seconds(clock::now_ms()).replace(':', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, report.bytes.to_string()),
            (header::CONTENT_DISPOSITION, name),
            (
                header::HeaderName::from_static("x-palo-backup-events"),
                report.events.to_string(),
            ),
            (
                header::HeaderName::from_static("x-palo-backup-deliveries"),
                report.deliveries.to_string(),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// The daemon's state.
///
/// `GET /api/admin/status` (admin): `{"version","uptime_seconds","db_size_bytes",
/// "deliveries":{"pending",…},"due_now","scheduled_later","oldest_overdue_at",
/// "oldest_overdue_seconds","in_flight","failure_streaks":[{"webhook_id","organization_id",
/// "url","streak"}],"store":"file"|"postgres","cluster":null|{"node","daemons":[{"id",
/// "address"}],"serving_webhooks":[…]}}`. On PostgreSQL the counts are the whole cluster's;
/// `in_flight` and `cluster.serving_webhooks` are this daemon's. Counting reads every
/// delivery once (about a second per million).
///
/// # Errors
/// 403 for an organization key; 503 when the store cannot be read.
#[utoipa::path(
    get,
    path = "/api/admin/status",
    tag = "admin",
    responses(
        (status = 200, description = "The daemon's state", body = StatusOut),
        (status = 403, description = "not the admin token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<StatusOut>, ApiError> {
    caller.require_admin()?;
    let now = clock::now_ms();
    let (summary, db_size) = blocking(&state.store, move |s| {
        Ok((s.status_summary(now)?, s.size_bytes().unwrap_or(0)))
    })
    .await?;
    let (due_now, scheduled_later, oldest) = summary.due;
    Ok(Json(StatusOut {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: state.started.elapsed().as_secs(),
        db_size_bytes: db_size,
        deliveries: DeliveryStatus::ALL
            .iter()
            .zip(summary.by_status)
            .map(|(s, n)| (s.as_str().to_owned(), n))
            .collect(),
        due_now,
        scheduled_later,
        oldest_overdue_at: oldest.map(format_ms),
        oldest_overdue_seconds: oldest.map(|due| now.saturating_sub(due) / 1000),
        in_flight: state.scheduler.in_flight() as u64,
        failure_streaks: summary
            .streaks
            .iter()
            .map(|s| StreakOut {
                webhook_id: s.webhook_id.to_string(),
                organization_id: s.organization_id.clone(),
                url: s.url.clone(),
                streak: s.streak,
            })
            .collect(),
        store: state.store.backend_name().to_owned(),
        cluster: state.scheduler.cluster_status().map(|c| ClusterOut {
            node: c.node.clone(),
            daemons: c
                .daemons
                .iter()
                .map(|(id, address)| DaemonOut {
                    id: id.clone(),
                    address: address.clone(),
                })
                .collect(),
            serving_webhooks: c.serving.iter().map(ToString::to_string).collect(),
        }),
    }))
}

/// `GET /api/admin/status`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusOut {
    /// The daemon's version (Cargo's).
    pub version: String,
    /// Seconds since this daemon started.
    pub uptime_seconds: u64,
    /// The store's size, bytes (the redb file, or the PostgreSQL database).
    pub db_size_bytes: u64,
    /// Deliveries by status name (`pending`, `retrying`, `held`, `succeeded`, `failed`,
    /// `cancelled`).
    pub deliveries: std::collections::BTreeMap<String, u64>,
    /// Unfinished deliveries due now.
    pub due_now: u64,
    /// Unfinished deliveries due later.
    pub scheduled_later: u64,
    /// RFC 3339: when the oldest overdue delivery was due; null when none is.
    pub oldest_overdue_at: Option<String>,
    /// Seconds it is overdue; null when none is.
    pub oldest_overdue_seconds: Option<u64>,
    /// Attempts open now in this daemon.
    pub in_flight: u64,
    /// Webhooks whose recent attempts all failed, longest streak first.
    pub failure_streaks: Vec<StreakOut>,
    /// `file` or `postgres`.
    pub store: String,
    /// On PostgreSQL: this daemon, the live daemons and the webhooks this one serves.
    pub cluster: Option<ClusterOut>,
}

/// A webhook on a failing streak.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreakOut {
    /// `wh_<ULID>`.
    pub webhook_id: String,
    /// Its organization.
    pub organization_id: String,
    /// Its URL.
    pub url: String,
    /// Its newest deliveries in a row that are `failed` or `retrying`.
    pub streak: u64,
}

/// The cluster part of the status (PostgreSQL).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterOut {
    /// This daemon's id.
    pub node: String,
    /// The live daemons.
    pub daemons: Vec<DaemonOut>,
    /// The webhooks this daemon serves.
    pub serving_webhooks: Vec<String>,
}

/// One live daemon.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DaemonOut {
    /// Its id.
    pub id: String,
    /// The address it announced.
    pub address: String,
}
