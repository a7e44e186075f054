//! `GET /api/webhooks/{id}/stats`: a webhook's last hours at a glance, for the web UI's
//! list (last delivery status, success rate) and its chart (deliveries per hour by outcome,
//! attempt latency p50/p95).
//!
//! The numbers cover the deliveries *created* in the window and every attempt of those
//! deliveries (manual ones included); a delivery created before the window whose retry ran
//! inside it is not counted. The scan reads at most [`SCAN_CAP`] deliveries, newest first,
//! and says so (`truncated`) when it stops early.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiPath, ApiQuery};
use super::types::DeliveryOut;
use super::webhooks::visible_webhook;
use super::{ApiError, AppState, Caller};
use crate::clock::{self, format_ms};
use crate::model::DeliveryStatus;
use crate::store::{blocking, WebhookActivity};

/// Most deliveries one stats call reads (the newest ones of the window).
pub const SCAN_CAP: usize = 20_000;

/// Longest window, hours (7 days).
pub const MAX_HOURS: u64 = 168;

const HOUR_MS: u64 = 3_600_000;

/// Query of `GET /api/webhooks/{id}/stats`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// Window length in hours, 1 to [`MAX_HOURS`]; default 24.
    #[param(minimum = 1, maximum = 168)]
    hours: Option<u64>,
}

/// Deliveries counted by their current status.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OutcomeCounts {
    /// Delivered (a 2xx).
    pub succeeded: u64,
    /// Every scheduled attempt failed.
    pub failed: u64,
    /// Failed at least once, another attempt is scheduled.
    pub retrying: u64,
    /// No attempt failed yet (including not yet attempted).
    pub pending: u64,
    /// The webhook was deleted before the delivery ended.
    pub cancelled: u64,
    /// Held while the daemon keeps the webhook disabled (issue 15).
    pub held: u64,
}

impl OutcomeCounts {
    fn add(&mut self, status: DeliveryStatus) {
        match status {
            DeliveryStatus::Succeeded => self.succeeded += 1,
            DeliveryStatus::Failed => self.failed += 1,
            DeliveryStatus::Retrying => self.retrying += 1,
            DeliveryStatus::Pending => self.pending += 1,
            DeliveryStatus::Cancelled => self.cancelled += 1,
            DeliveryStatus::Held => self.held += 1,
        }
    }
}

/// One hour of the window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HourOut {
    /// Start of the hour, RFC 3339 UTC (hours are aligned to UTC hours).
    pub start: String,
    /// Deliveries created in this hour, by current status.
    #[serde(flatten)]
    pub deliveries: OutcomeCounts,
    /// Attempts started in this hour (of the deliveries counted in the window).
    pub attempts: u64,
    /// Median attempt duration, ms; null without attempts.
    pub latency_p50_ms: Option<u64>,
    /// 95th percentile attempt duration, ms (nearest rank); null without attempts.
    pub latency_p95_ms: Option<u64>,
}

/// Answer of `GET /api/webhooks/{id}/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsOut {
    /// Window length, hours.
    pub hours: u64,
    /// Start of the window (start of its first hour), RFC 3339.
    pub since: String,
    /// When the numbers were read, RFC 3339.
    pub until: String,
    /// One entry per hour, oldest first (`hours` entries; the last is the current hour).
    pub buckets: Vec<HourOut>,
    /// The whole window by current status.
    pub totals: OutcomeCounts,
    /// Attempts in the window.
    pub attempts: u64,
    /// Attempts in the window that succeeded (2xx, exchange complete).
    pub attempts_succeeded: u64,
    /// succeeded / (succeeded + failed + retrying): the share of deliveries that reached
    /// the receiver among those that had a verdict, 0.0 to 1.0; null when there are none.
    pub success_rate: Option<f64>,
    /// The webhook's newest delivery, in the window or not (without its attempts).
    pub last_delivery: Option<DeliveryOut>,
    /// Whether only the newest [`SCAN_CAP`] deliveries of the window were read.
    pub truncated: bool,
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied()
}

/// Start of a window of `hours` UTC hours ending with the hour that holds `now_ms`, ms.
fn window_start(now_ms: u64, hours: u64) -> u64 {
    (now_ms / HOUR_MS + 1).saturating_sub(hours) * HOUR_MS
}

/// Summarizes `activity` over `hours` hours ending with the hour that holds `now_ms`.
pub fn summarize(activity: &WebhookActivity, hours: u64, now_ms: u64) -> StatsOut {
    let first_hour = window_start(now_ms, hours);
    let slot = |ms: u64| -> Option<usize> {
        (ms >= first_hour)
            .then(|| ((ms - first_hour) / HOUR_MS) as usize)
            .filter(|i| (*i as u64) < hours)
    };
    let mut counts = vec![OutcomeCounts::default(); hours as usize];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); hours as usize];
    let mut totals = OutcomeCounts::default();
    for d in &activity.deliveries {
        totals.add(d.status);
        if let Some(i) = slot(d.created_at_ms) {
            counts[i].add(d.status);
        }
    }
    let mut attempts_succeeded = 0;
    for a in &activity.attempts {
        attempts_succeeded += u64::from(a.succeeded());
        if let Some(i) = slot(a.started_at_ms) {
            latencies[i].push(a.duration_ms);
        }
    }
    let buckets = counts
        .into_iter()
        .zip(latencies)
        .enumerate()
        .map(|(i, (deliveries, mut lat))| {
            lat.sort_unstable();
            HourOut {
                start: format_ms(first_hour + i as u64 * HOUR_MS),
                deliveries,
                attempts: lat.len() as u64,
                latency_p50_ms: percentile(&lat, 50),
                latency_p95_ms: percentile(&lat, 95),
            }
        })
        .collect();
    let judged = totals.succeeded + totals.failed + totals.retrying;
    StatsOut {
        hours,
        since: format_ms(first_hour),
        until: format_ms(now_ms),
        buckets,
        success_rate: (judged > 0).then(|| totals.succeeded as f64 / judged as f64),
        totals,
        attempts: activity.attempts.len() as u64,
        attempts_succeeded,
        last_delivery: activity.last.as_ref().map(DeliveryOut::from),
        truncated: activity.truncated,
    }
}

/// A webhook's delivery statistics by hour.
///
/// `GET /api/webhooks/{id}/stats?hours=24` → [`StatsOut`]; 400 `invalid_query` for `hours`
/// outside 1..=168, 404 for a webhook the caller cannot see.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}/stats",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`)."), StatsQuery),
    responses(
        (status = 200, description = "Hourly delivery statistics", body = StatsOut),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn webhook_stats(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<StatsOut>, ApiError> {
    let hours = query.hours.unwrap_or(24);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(ApiError::bad_query(format!(
            "hours must be 1 to {MAX_HOURS}"
        )));
    }
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let now = clock::now_ms();
    let since = window_start(now, hours);
    let id = webhook.id;
    let activity = blocking(&state.store, move |s| {
        s.webhook_activity(id, since, SCAN_CAP)
    })
    .await?;
    Ok(Json(summarize(&activity, hours, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeliveryId, EventKey, WebhookId};
    use crate::model::{Attempt, Delivery, Trigger};

    fn delivery(created_at_ms: u64, status: DeliveryStatus) -> Delivery {
        Delivery {
            id: DeliveryId::generate(),
            organization_id: "org".into(),
            webhook_id: WebhookId(1),
            event_key: EventKey(1),
            event_id: "evt".into(),
            event_type: crate::event::EventType::TicketCreated,
            status,
            attempt_count: 1,
            scheduled_attempts: 1,
            next_attempt_at_ms: None,
            created_at_ms,
            updated_at_ms: created_at_ms,
            last_outcome: None,
            ordering_key: None,
        }
    }

    fn attempt(started_at_ms: u64, duration_ms: u64, status_code: u16) -> Attempt {
        Attempt {
            number: 1,
            started_at_ms,
            duration_ms,
            status_code: Some(status_code),
            error: None,
            response_body: String::new(),
            response_body_truncated: false,
            trigger: Trigger::Scheduled,
            retry_after_ms: None,
            error_detail: None,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[1, 2], 50), Some(1));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn deliveries_and_attempts_land_in_their_hour() {
        let now = 100 * HOUR_MS + 1_000; // a second into hour 100
        let activity = WebhookActivity {
            deliveries: vec![
                delivery(100 * HOUR_MS + 10, DeliveryStatus::Succeeded),
                delivery(99 * HOUR_MS + 10, DeliveryStatus::Failed),
                delivery(99 * HOUR_MS + 20, DeliveryStatus::Retrying),
                delivery(77 * HOUR_MS, DeliveryStatus::Pending),
            ],
            attempts: vec![
                attempt(100 * HOUR_MS + 10, 40, 200),
                attempt(99 * HOUR_MS + 10, 10, 500),
                attempt(99 * HOUR_MS + 30, 30, 500),
                attempt(99 * HOUR_MS + 40, 20, 500),
            ],
            last: None,
            truncated: false,
        };
        let out = summarize(&activity, 24, now);
        assert_eq!(out.buckets.len(), 24);
        assert_eq!(out.since, format_ms(77 * HOUR_MS));
        assert_eq!(out.buckets[0].deliveries.pending, 1);
        let last = &out.buckets[23];
        assert_eq!(last.deliveries.succeeded, 1);
        assert_eq!((last.attempts, last.latency_p50_ms), (1, Some(40)));
        let previous = &out.buckets[22];
        assert_eq!(previous.deliveries.failed, 1);
        assert_eq!(previous.deliveries.retrying, 1);
        assert_eq!(previous.attempts, 3);
        assert_eq!(previous.latency_p50_ms, Some(20));
        assert_eq!(previous.latency_p95_ms, Some(30));
        assert_eq!(out.attempts, 4);
        assert_eq!(out.attempts_succeeded, 1);
        // 1 succeeded of 3 with a verdict (the pending one has none).
        assert_eq!(out.success_rate, Some(1.0 / 3.0));
        assert_eq!(out.totals.pending, 1);
    }

    #[test]
    fn an_empty_window_has_no_rate_and_no_latency() {
        let activity = WebhookActivity {
            deliveries: vec![],
            attempts: vec![],
            last: None,
            truncated: false,
        };
        let out = summarize(&activity, 1, 5 * HOUR_MS);
        assert_eq!(out.buckets.len(), 1);
        assert_eq!(out.success_rate, None);
        assert_eq!(out.buckets[0].latency_p95_ms, None);
    }
}
