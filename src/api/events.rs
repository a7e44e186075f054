//! `/api/events`: durable ingest with idempotency on (organization, `event_id`), lookup, list,
//! and payload deletion (issue 15, item 7).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::extract::{cursor, page_limit, ApiPath, ApiQuery, JsonBody};
use super::types::{EventAccepted, EventIn, EventOut, Page};
use super::{ApiError, AppState, Caller};
use crate::clock;
use crate::event::{self, EventInput, EventType};
use crate::ids::EventKey;
use crate::model::{DeliveryStatus, Event};
use crate::store::{blocking, AcceptOutcome, EventQuery, FanOut};

/// Send an event (durable before the answer, idempotent on event_id).
///
/// `POST /api/events` → 202 `{"event_id","deliveries"}` once the event and its deliveries
/// are committed (fsync'd); 200 with the original answer for an idempotent replay; 409 when
/// the `event_id` was used with different content.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    request_body = EventIn,
    responses(
        (status = 202, description = "Accepted and durable (committed before the answer)", body = EventAccepted, links(
            ("GetEvent" = (operation_id = "get_event", parameters(("event_id" = "$response.body#/event_id")))),
            ("DeletePayload" = (operation_id = "delete_payload", parameters(("event_id" = "$response.body#/event_id"))))
        )),
        (status = 200, description = "An idempotent replay: this `event_id` was accepted before with the same content", body = EventAccepted),
        (status = 403, description = "an organization key naming another organization", body = crate::api::ErrorOut),
        (status = 409, description = "`event_id_conflict`: this `event_id` was accepted with different content", body = crate::api::ErrorOut),
        (status = 422, description = "the event is invalid (`field` names what)", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn ingest_event(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(input): JsonBody<EventIn>,
) -> Result<(StatusCode, Json<EventAccepted>), ApiError> {
    let organization_id = caller.acting_for(input.organization_id.as_deref())?;
    let now = clock::now_ms();
    let mut prepared = event::prepare(
        EventInput {
            event_id: input.event_id,
            event_type: input.event_type,
            timestamp: input.timestamp,
            organization_id,
            data: &input.data,
        },
        now,
        false,
    )?;
    if let Some(key) = input.ordering_key {
        event::check_ordering_key(&key)?;
        prepared.set_ordering_key(key);
    }
    let outcome = state
        .store
        .accept_event(prepared, FanOut::Subscribers, now, now)
        .await?;
    match outcome {
        AcceptOutcome::Accepted { event, deliveries } => {
            metrics::counter!(crate::metrics::EVENTS_ACCEPTED).increment(1);
            tracing::debug!(event_id = %event.event_id, deliveries = deliveries.len(), "event accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(EventAccepted {
                    event_id: event.event_id,
                    deliveries: deliveries.len(),
                    delivery_ids: deliveries.iter().map(|d| d.id.to_string()).collect(),
                }),
            ))
        }
        AcceptOutcome::Replayed { event } => Ok((
            StatusCode::OK,
            Json(EventAccepted {
                deliveries: event.delivery_ids.len(),
                delivery_ids: event.delivery_ids.iter().map(ToString::to_string).collect(),
                event_id: event.event_id,
            }),
        )),
        AcceptOutcome::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "event_id_conflict",
            "this event_id was already accepted with different content",
        )),
    }
}

/// Query of `GET /api/events/{event_id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GetEvent {
    organization_id: Option<String>,
}

/// Get an event and its deliveries.
///
/// `GET /api/events/{event_id}`: the envelope fields as delivered, `received_at` and the
/// deliveries. The admin may name `?organization_id=`; 409 `ambiguous_event_id` if it must.
#[utoipa::path(
    get,
    path = "/api/events/{event_id}",
    tag = "events",
    params(("event_id" = String, Path, description = "The event's `event_id`."), GetEvent),
    responses(
        (status = 200, description = "The event as delivered, and its deliveries", body = EventOut),
        (status = 404, description = "no such event visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`ambiguous_event_id`: the admin must name `organization_id`", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn get_event(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(event_id): ApiPath,
    ApiQuery(query): ApiQuery<GetEvent>,
) -> Result<Json<EventOut>, ApiError> {
    let org = event_organization(&state, &caller, &event_id, query.organization_id).await?;
    let found = blocking(&state.store, move |s| {
        let Some(event) = s.get_event(&org, &event_id)? else {
            return Ok(None);
        };
        let deliveries = s.get_deliveries(&event.delivery_ids)?;
        Ok(Some((event, deliveries)))
    })
    .await?;
    let (event, deliveries) = found.ok_or_else(|| ApiError::not_found("event"))?;
    Ok(Json(EventOut::new(&event, &deliveries)))
}

/// Delete an event's payload.
///
/// `DELETE /api/events/{event_id}/payload` (issue 15, item 7): the stored body becomes a
/// tombstone, the event's unfinished deliveries are cancelled, the attempt log stays. 200
/// with the event as `GET` shows it now (`data: null`, `payload_deleted_at`); the same again
/// on a second call. Organization as `GET /api/events/{event_id}`.
#[utoipa::path(
    delete,
    path = "/api/events/{event_id}/payload",
    tag = "events",
    params(("event_id" = String, Path, description = "The event's `event_id`."), GetEvent),
    responses(
        (status = 200, description = "The event with `data: null`; its unfinished deliveries cancelled", body = EventOut),
        (status = 404, description = "no such event visible to this token", body = crate::api::ErrorOut),
        (status = 409, description = "`ambiguous_event_id`: the admin must name `organization_id`", body = crate::api::ErrorOut)
    )
)]
pub(super) async fn delete_payload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(event_id): ApiPath,
    ApiQuery(query): ApiQuery<GetEvent>,
) -> Result<Json<EventOut>, ApiError> {
    let org = event_organization(&state, &caller, &event_id, query.organization_id).await?;
    let now = clock::now_ms();
    let found = blocking(&state.store, move |s| {
        let Some(event) = s.delete_event_payload(&org, &event_id, now)? else {
            return Ok(None);
        };
        let deliveries = s.get_deliveries(&event.delivery_ids)?;
        Ok(Some((event, deliveries)))
    })
    .await?;
    let (event, deliveries) = found.ok_or_else(|| ApiError::not_found("event"))?;
    tracing::info!(event_id = %event.event_id, organization = %event.organization_id, "event payload deleted");
    Ok(Json(EventOut::new(&event, &deliveries)))
}

/// The organization whose event `event_id` the caller means: its own; for the admin, the
/// one named by `?organization_id=`, or the only one that has this id (409
/// `ambiguous_event_id` when several do).
async fn event_organization(
    state: &AppState,
    caller: &Caller,
    event_id: &str,
    named: Option<String>,
) -> Result<String, ApiError> {
    Ok(match (caller, named) {
        (Caller::Organization(own), Some(named)) if named != *own => {
            return Err(ApiError::not_found("event"))
        }
        (Caller::Organization(own), _) => own.clone(),
        (Caller::Admin, Some(named)) => named,
        (Caller::Admin, None) => {
            let id = event_id.to_owned();
            let mut orgs =
                blocking(&state.store, move |s| s.organizations_with_event_id(&id)).await?;
            match orgs.len() {
                0 => return Err(ApiError::not_found("event")),
                1 => orgs.remove(0),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "ambiguous_event_id",
                        "this event_id exists in several organizations; add ?organization_id=",
                    ))
                }
            }
        }
    })
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListEvents {
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<String>,
    until: Option<String>,
    organization_id: Option<String>,
    /// Only events of which at least one delivery has this status (issue 15).
    delivery_status: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// An RFC 3339 bound of a list query, in ms since the epoch.
///
/// # Errors
/// 400 `invalid_query` for what is not an RFC 3339 date-time or is before 1970.
pub(super) fn time_bound(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|text| {
            clock::parse_rfc3339(text)
                .map(|(_, ms)| ms)
                .map_err(|reason| ApiError::bad_query(format!("{name} {reason}")))
        })
        .transpose()
}

/// List events.
///
/// `GET /api/events` → a page, newest first. `since`/`until` bound the time of ingest;
/// `delivery_status` keeps the events of which a delivery has that status.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(ListEvents),
    responses(
        (status = 200, description = "A page of events, newest first", body = Page<EventOut>)
    )
)]
pub(super) async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListEvents>,
) -> Result<Json<Page<EventOut>>, ApiError> {
    let limit = page_limit(query.limit)?;
    let before: Option<EventKey> = cursor(query.cursor.as_deref())?;
    let event_type = query
        .event_type
        .map(|t| {
            EventType::parse(&t)
                .ok_or_else(|| ApiError::bad_query(format!("unknown event type {t:?}")))
        })
        .transpose()?;
    let organization_id = match &caller {
        Caller::Admin => query.organization_id,
        Caller::Organization(own) => Some(own.clone()),
    };
    let filter = EventQuery {
        organization_id,
        event_type,
        since_ms: time_bound("since", query.since.as_deref())?,
        until_ms: time_bound("until", query.until.as_deref())?,
        delivery_status: query
            .delivery_status
            .map(|s| {
                DeliveryStatus::parse(&s)
                    .ok_or_else(|| ApiError::bad_query(format!("unknown status {s:?}")))
            })
            .transpose()?,
    };
    let (events, deliveries) = blocking(&state.store, move |s| {
        let events = s.list_events(&filter, before, limit + 1)?;
        // One read for the whole page's deliveries, not one per event.
        let ids: Vec<_> = events
            .iter()
            .flat_map(|e| e.delivery_ids.iter().copied())
            .collect();
        Ok((events, s.get_deliveries(&ids)?))
    })
    .await?;
    let by_id: HashMap<_, _> = deliveries.into_iter().map(|d| (d.id, d)).collect();
    Ok(Json(Page::new(
        &events,
        limit,
        |e: &Event| e.key.to_string(),
        |e| {
            let own: Vec<_> = e
                .delivery_ids
                .iter()
                .filter_map(|id| by_id.get(id).cloned())
                .collect();
            EventOut::new(e, &own)
        },
    )))
}
