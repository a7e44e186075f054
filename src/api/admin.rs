//! Admin-only operations (issue 7): the online backup and the status summary.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState, Caller};
use crate::clock::{self, format_ms};
use crate::model::DeliveryStatus;
use crate::store::blocking;

/// `GET /api/admin/backup` (admin): a consistent snapshot of the store as a redb file,
/// streamed as `application/octet-stream`. The copy is made from one read transaction into a
/// temporary file beside the db (`<db>.backup-<ulid>.tmp`, removed once opened), so the
/// answer is never a torn copy however much is written meanwhile; `Content-Length` is exact.
/// Headers `X-Palo-Backup-Events` and `X-Palo-Backup-Deliveries` give what it holds.
///
/// # Errors
/// 403 for an organization key; 503 `store_unavailable` when the copy cannot be written
/// (disk full): the partial file is removed.
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
pub(super) async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let now = clock::now_ms();
    let (summary, db_size) = blocking(&state.store, move |s| {
        Ok((s.status_summary(now)?, s.size_bytes().unwrap_or(0)))
    })
    .await?;
    let (due_now, later, oldest) = summary.due;
    let by_status: serde_json::Map<String, serde_json::Value> = DeliveryStatus::ALL
        .iter()
        .zip(summary.by_status)
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    let streaks: Vec<serde_json::Value> = summary
        .streaks
        .iter()
        .map(|s| {
            json!({"webhook_id": s.webhook_id.to_string(), "organization_id": s.organization_id,
                   "url": s.url, "streak": s.streak})
        })
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "db_size_bytes": db_size,
        "deliveries": by_status,
        "due_now": due_now,
        "scheduled_later": later,
        "oldest_overdue_at": oldest.map(format_ms),
        "oldest_overdue_seconds": oldest.map(|due| now.saturating_sub(due) / 1000),
        "in_flight": state.scheduler.in_flight(),
        "failure_streaks": streaks,
        "store": state.store.backend_name(),
        "cluster": state.scheduler.cluster_status().map(|c| json!({
            "node": c.node,
            "daemons": c.daemons.iter().map(|(id, address)| json!({"id": id, "address": address})).collect::<Vec<_>>(),
            "serving_webhooks": c.serving.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
    })))
}
