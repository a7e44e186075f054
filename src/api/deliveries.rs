//! Deliveries and their log (spec "Logs de livraison"), redelivery, and test deliveries.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::extract::{cursor, page_limit, ApiPath, ApiQuery};
use super::types::{AttemptOut, AttemptResultOut, DeliveryOut, Page};
use super::webhooks::visible_webhook;
use super::{ApiError, AppState, Caller};
use crate::clock;
use crate::event::{self, EventInput};
use crate::ids::DeliveryId;
use crate::model::{Attempt, Delivery, DeliveryStatus};
use crate::scheduler::AttemptNowError;
use crate::store::{blocking, AcceptOutcome, FanOut};

/// Query of `GET /api/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListDeliveries {
    status: Option<String>,
    event_type: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List a webhook's deliveries.
///
/// `GET /api/webhooks/{id}/deliveries` → a page, newest first, optionally by `status` and
/// `event_type`; 400 `invalid_query` for an unknown status or event type.
#[utoipa::path(
    get,
    path = "/api/webhooks/{id}/deliveries",
    tag = "deliveries",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`)."), ListDeliveries),
    responses(
        (status = 200, description = "A page of the webhook's deliveries, newest first", body = Page<DeliveryOut>),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn list_webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
    ApiQuery(query): ApiQuery<ListDeliveries>,
) -> Result<Json<Page<DeliveryOut>>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    let limit = page_limit(query.limit)?;
    let before: Option<DeliveryId> = cursor(query.cursor.as_deref())?;
    let status = query
        .status
        .map(|s| {
            DeliveryStatus::parse(&s)
                .ok_or_else(|| ApiError::bad_query(format!("unknown status {s:?}")))
        })
        .transpose()?;
    let event_type = query
        .event_type
        .map(|t| {
            event::EventType::parse(&t)
                .ok_or_else(|| ApiError::bad_query(format!("unknown event type {t:?}")))
        })
        .transpose()?;
    let id = webhook.id;
    let deliveries = blocking(&state.store, move |s| {
        s.list_webhook_deliveries(id, status, event_type, before, limit + 1)
    })
    .await?;
    Ok(Json(Page::new(
        &deliveries,
        limit,
        |d| d.id.to_string(),
        |d| DeliveryOut::from(d),
    )))
}

async fn visible_delivery(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Delivery, Vec<Attempt>), ApiError> {
    let id: DeliveryId = id.parse().map_err(|_| ApiError::not_found("delivery"))?;
    blocking(&state.store, move |s| s.get_delivery_with_attempts(id))
        .await?
        .filter(|(d, _)| caller.can_see(&d.organization_id))
        .ok_or_else(|| ApiError::not_found("delivery"))
}

/// Get a delivery and its attempts.
///
/// `GET /api/deliveries/{id}` → the delivery with every attempt in ascending `number`.
#[utoipa::path(
    get,
    path = "/api/deliveries/{id}",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery's id (`dlv_...`).")),
    responses(
        (status = 200, description = "The delivery with every attempt", body = DeliveryOut),
        (status = 404, description = "no such delivery visible to this token", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn get_delivery(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<DeliveryOut>, ApiError> {
    let (delivery, attempts) = visible_delivery(&state, &caller, &id).await?;
    let mut out = DeliveryOut::from(&delivery);
    out.attempts = Some(attempts.iter().map(AttemptOut::from).collect());
    Ok(Json(out))
}

/// `Retry-After` of a manual attempt that found no free slot (s).
const MANUAL_RETRY_AFTER_S: u64 = 5;

fn attempt_error(e: AttemptNowError) -> ApiError {
    match e {
        AttemptNowError::InFlight => ApiError::new(
            StatusCode::CONFLICT,
            "attempt_in_flight",
            "an attempt of this delivery is in flight; wait for it to finish",
        ),
        AttemptNowError::NotFound => ApiError::not_found("delivery"),
        AttemptNowError::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_busy",
            "every in-flight slot of this webhook is taken by attempts still running; retry later",
        )
        .with_retry_after(MANUAL_RETRY_AFTER_S),
        AttemptNowError::WebhookUnavailable => ApiError::new(
            StatusCode::CONFLICT,
            "webhook_unavailable",
            "the delivery's webhook was deleted or is inactive",
        ),
        AttemptNowError::PayloadDeleted => payload_deleted(),
        AttemptNowError::Store(e) => e.into(),
    }
}

/// 409 `payload_deleted`: the event's payload was deleted (issue 15), nothing can be sent.
fn payload_deleted() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "payload_deleted",
        "the event's payload was deleted: there is nothing left to send",
    )
}

/// Redeliver now (one manual attempt).
///
/// `POST /api/deliveries/{id}/redeliver`: one manual attempt now, answered with that attempt
/// and the delivery after it (spec: "re-déclencher manuellement une livraison échouée").
#[utoipa::path(
    post,
    path = "/api/deliveries/{id}/redeliver",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery's id (`dlv_...`).")),
    responses(
        (status = 200, description = "The manual attempt just made and the delivery after it", body = AttemptResultOut),
        (status = 404, description = "no such delivery visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "an attempt of this delivery is in flight, its payload was deleted, or its webhook is deleted or disabled", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<AttemptResultOut>, ApiError> {
    let (delivery, _) = visible_delivery(&state, &caller, &id).await?;
    // Read from the store, not memory: another daemon of a cluster may have deleted it.
    let (org, event_id) = (delivery.organization_id.clone(), delivery.event_id.clone());
    let event = blocking(&state.store, move |s| s.get_event(&org, &event_id)).await?;
    if event.is_some_and(|e| e.payload_deleted_at_ms.is_some()) {
        return Err(payload_deleted());
    }
    let (delivery, attempt) = state
        .scheduler
        .redeliver(delivery.id)
        .await
        .map_err(attempt_error)?;
    tracing::info!(
        delivery = %delivery.id,
        attempt = attempt.number,
        status = attempt.status_code.unwrap_or(0),
        error = attempt.error.map_or("", |e| e.as_str()),
        "manual redelivery"
    );
    Ok(Json(AttemptResultOut {
        attempt: AttemptOut::from(&attempt),
        delivery: DeliveryOut::from(&delivery),
    }))
}

/// Send a test event to a webhook now.
///
/// `POST /api/webhooks/{id}/test`: a `webhook.test` event for this webhook alone, its first
/// attempt made now and answered; afterwards a normal delivery (logged, retried, listed).
#[utoipa::path(
    post,
    path = "/api/webhooks/{id}/test",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id (`wh_...`).")),
    responses(
        (status = 200, description = "The first attempt of a `webhook.test` delivery, made now", body = AttemptResultOut, links(
            ("GetDelivery" = (operation_id = "get_delivery", parameters(("id" = "$response.body#/delivery/id")))),
            ("Redeliver" = (operation_id = "redeliver", parameters(("id" = "$response.body#/delivery/id"))))
        )),
        (status = 404, description = "no such webhook visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "the webhook is inactive", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath,
) -> Result<Json<AttemptResultOut>, ApiError> {
    let webhook = visible_webhook(&state, &caller, &id).await?;
    if !webhook.active {
        return Err(attempt_error(AttemptNowError::WebhookUnavailable));
    }
    let data = serde_json::json!({
        "webhook_id": webhook.id.to_string(),
        "message": "Test event from palo-webhooks",
    });
    let data = RawValue::from_string(data.to_string())
        .map_err(|_| ApiError::bad_json("internal test payload"))?;
    // The slots first: a busy webhook answers 503 with nothing written. The webhook is read
    // again after the wait: deleted or deactivated meanwhile, nothing is written either.
    let slots = state
        .scheduler
        .reserve_slots(webhook.id)
        .await
        .map_err(attempt_error)?;
    let webhook = visible_webhook(&state, &caller, &id).await?;
    if !webhook.active {
        return Err(attempt_error(AttemptNowError::WebhookUnavailable));
    }
    let now = clock::now_ms();
    let prepared = event::prepare(
        EventInput {
            event_id: None,
            event_type: "webhook.test".to_owned(),
            timestamp: None,
            organization_id: webhook.organization_id.clone(),
            data: &data,
        },
        now,
        true,
    )?;
    // The first attempt runs in this request; the index entry is a lease past its timeout,
    // so the scheduler takes over only if this process dies before logging the attempt.
    let lease =
        now + u64::try_from(state.attempt_timeout.as_millis()).unwrap_or(u64::MAX / 2) + 5_000;
    let target = webhook.id;
    let outcome = state
        .store
        .accept_event(prepared, FanOut::Only(target), now, lease)
        .await?;
    let AcceptOutcome::Accepted { deliveries, .. } = outcome else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "event_id_conflict",
            "test event id collision; retry",
        ));
    };
    let delivery = deliveries
        .first()
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let (delivery, attempt) = state
        .scheduler
        .attempt_now(delivery.id, slots)
        .await
        .map_err(attempt_error)?;
    Ok(Json(AttemptResultOut {
        attempt: AttemptOut::from(&attempt),
        delivery: DeliveryOut::from(&delivery),
    }))
}
