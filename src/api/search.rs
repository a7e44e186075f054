//! `GET /api/deliveries`: the searchable delivery log of an organization (issue 15, item 6).
//!
//! Owner's rule: turns the query string into a typed [`DeliverySearch`] once (every value
//! checked, 400 `invalid_query` otherwise) and pages the store's answer; what matches is
//! the store's definition ([`DeliverySearch::matches`]), not this module's.

use axum::extract::{RawQuery, State};
use axum::Json;

use super::events::time_bound;
use super::extract::{cursor, page_limit};
use super::types::{DeliveryOut, Page};
use super::{ApiError, AppState, Caller};
use crate::event::EventType;
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{AttemptOutcome, DeliveryStatus};
use crate::store::{blocking, DeliverySearch};

/// The search's parameters as sent: list filters may repeat and hold commas
/// (`status=failed,retrying&status=pending`), every other one appears at most once.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RawSearch {
    /// The organization whose log to search (required with the admin token).
    organization_id: Option<String>,
    /// Only deliveries to this webhook (`wh_...`).
    webhook_id: Option<String>,
    /// Only these statuses (`pending`, `retrying`, `held`, `succeeded`, `failed`,
    /// `cancelled`), repeated or comma-separated.
    #[param(rename = "status")]
    statuses: Vec<String>,
    /// Only deliveries whose last attempt came to one of these (`2xx`, `3xx`, `4xx`, `5xx`,
    /// `other_status`, `timeout`, `connect`, `dns`, `tls`, `io`, `blocked_address`, `auth`),
    /// repeated or comma-separated.
    #[param(rename = "outcome")]
    outcomes: Vec<String>,
    /// Only this event type.
    event_type: Option<String>,
    /// Only the deliveries of this event.
    event_id: Option<String>,
    /// Created at or after, RFC 3339.
    since: Option<String>,
    /// Created at or before, RFC 3339.
    until: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl RawSearch {
    fn parse(query: &str) -> Result<RawSearch, ApiError> {
        let mut raw = RawSearch::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            let single = match name.as_ref() {
                "status" | "outcome" => {
                    let list = if name == "status" {
                        &mut raw.statuses
                    } else {
                        &mut raw.outcomes
                    };
                    list.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned),
                    );
                    continue;
                }
                "organization_id" => &mut raw.organization_id,
                "webhook_id" => &mut raw.webhook_id,
                "event_type" => &mut raw.event_type,
                "event_id" => &mut raw.event_id,
                "since" => &mut raw.since,
                "until" => &mut raw.until,
                "limit" => &mut raw.limit,
                "cursor" => &mut raw.cursor,
                other => {
                    return Err(ApiError::bad_query(format!(
                        "unknown query parameter {other:?}"
                    )))
                }
            };
            if single.replace(value).is_some() {
                return Err(ApiError::bad_query(format!("{name} is given twice")));
            }
        }
        Ok(raw)
    }
}

fn parse_each<T>(
    names: &[String],
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ApiError> {
    names
        .iter()
        .map(|n| parse(n).ok_or_else(|| ApiError::bad_query(format!("unknown {what} {n:?}"))))
        .collect()
}

/// The search of `caller` from `raw`: an organization key searches its own organization
/// (naming another is 404, as for any of its resources); the admin must name one.
fn typed(caller: &Caller, raw: RawSearch) -> Result<DeliverySearch, ApiError> {
    let organization_id = match (caller, raw.organization_id) {
        (Caller::Organization(own), Some(named)) if named != *own => {
            return Err(ApiError::not_found("organization"))
        }
        (Caller::Organization(own), _) => own.clone(),
        (Caller::Admin, Some(named)) => named,
        (Caller::Admin, None) => {
            return Err(ApiError::bad_query(
                "organization_id is required with the admin token",
            ))
        }
    };
    Ok(DeliverySearch {
        organization_id,
        webhook_id: raw
            .webhook_id
            .map(|w| {
                w.parse::<WebhookId>()
                    .map_err(|_| ApiError::bad_query("webhook_id is not a webhook id"))
            })
            .transpose()?,
        statuses: parse_each(&raw.statuses, "status", DeliveryStatus::parse)?,
        event_type: raw
            .event_type
            .map(|t| {
                EventType::parse(&t)
                    .ok_or_else(|| ApiError::bad_query(format!("unknown event type {t:?}")))
            })
            .transpose()?,
        event_id: raw.event_id,
        outcomes: parse_each(&raw.outcomes, "outcome", AttemptOutcome::parse)?,
        since_ms: time_bound("since", raw.since.as_deref())?,
        until_ms: time_bound("until", raw.until.as_deref())?,
    })
}

/// Search the delivery log.
///
/// `GET /api/deliveries` → a page of the organization's deliveries matching every filter
/// given, newest first (creation time, then id); `next_cursor` resumes after the page's
/// last row. 400 `invalid_query` for an unknown parameter, status, outcome or event type, a
/// bad time, id, limit or cursor, and for the admin without `organization_id`.
#[utoipa::path(
    get,
    path = "/api/deliveries",
    tag = "deliveries",
    params(RawSearch),
    responses(
        (status = 200, description = "A page of matching deliveries, newest first", body = Page<DeliveryOut>)
    )
)]
pub(super) async fn search_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<DeliveryOut>>, ApiError> {
    let mut raw = RawSearch::parse(query.as_deref().unwrap_or(""))?;
    let limit = page_limit(
        raw.limit
            .take()
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_query("limit must be between 1 and 500"))
            })
            .transpose()?,
    )?;
    let before: Option<DeliveryId> = cursor(raw.cursor.take().as_deref())?;
    let search = typed(&caller, raw)?;
    let deliveries = blocking(&state.store, move |s| {
        s.search_deliveries(&search, before, limit + 1)
    })
    .await?;
    Ok(Json(Page::new(
        &deliveries,
        limit,
        |d| d.id.to_string(),
        |d| DeliveryOut::from(d),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_repeat_and_split_on_commas() {
        let raw = RawSearch::parse("status=failed,retrying&status=pending&outcome=5xx").unwrap();
        assert_eq!(raw.statuses, ["failed", "retrying", "pending"]);
        assert_eq!(raw.outcomes, ["5xx"]);
        let search = typed(&Caller::Organization("org".into()), raw).unwrap();
        assert_eq!(search.statuses.len(), 3);
        assert_eq!(search.outcomes, [AttemptOutcome::Status5xx]);
    }

    #[test]
    fn unknown_and_repeated_single_parameters_are_refused() {
        assert!(RawSearch::parse("stauts=failed").is_err());
        assert!(RawSearch::parse("event_id=a&event_id=b").is_err());
        let raw = RawSearch::parse("outcome=6xx").unwrap();
        assert!(typed(&Caller::Organization("org".into()), raw).is_err());
    }

    #[test]
    fn the_admin_must_name_an_organization_and_a_key_only_its_own() {
        assert!(typed(&Caller::Admin, RawSearch::default()).is_err());
        let named = RawSearch {
            organization_id: Some("other".into()),
            ..RawSearch::default()
        };
        assert!(typed(&Caller::Organization("org".into()), named).is_err());
    }
}
