//! The delivery search's filters (issue 15, item 6), shared by both backends.
//!
//! Owner's rule: what a match is and in which order results come is said once, here
//! ([`DeliverySearch::matches`], [`order_key`]); each backend only finds the same rows
//! faster with its indexes. Pure: no I/O.

use crate::event::EventType;
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{AttemptOutcome, Delivery, DeliveryStatus};

/// Filters of [`crate::store::Store::search_deliveries`]. Each filter given must hold; a
/// list filter (`statuses`, `outcomes`) holds when the delivery has one of its values; an
/// empty list is no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySearch {
    /// Only this organization's deliveries (always set: the search is per organization).
    pub organization_id: String,
    /// Only deliveries to this webhook.
    pub webhook_id: Option<WebhookId>,
    /// Only deliveries with one of these statuses.
    pub statuses: Vec<DeliveryStatus>,
    /// Only deliveries of this event type.
    pub event_type: Option<EventType>,
    /// Only deliveries of the event with this `event_id`.
    pub event_id: Option<String>,
    /// Only deliveries whose last attempt came to one of these; a delivery never attempted
    /// matches none.
    pub outcomes: Vec<AttemptOutcome>,
    /// Created at or after, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Created at or before, ms since the epoch.
    pub until_ms: Option<u64>,
}

impl DeliverySearch {
    /// Whether `delivery` matches every filter: the definition both backends implement.
    pub fn matches(&self, delivery: &Delivery) -> bool {
        delivery.organization_id == self.organization_id
            && self.webhook_id.is_none_or(|w| w == delivery.webhook_id)
            && (self.statuses.is_empty() || self.statuses.contains(&delivery.status))
            && self.event_type.is_none_or(|t| t == delivery.event_type)
            && self
                .event_id
                .as_deref()
                .is_none_or(|e| e == delivery.event_id)
            && (self.outcomes.is_empty()
                || delivery
                    .last_outcome
                    .is_some_and(|o| self.outcomes.contains(&o)))
            && self.since_ms.is_none_or(|s| delivery.created_at_ms >= s)
            && self.until_ms.is_none_or(|u| delivery.created_at_ms <= u)
    }

    /// The creation times to look at, `(low, high)` inclusive, or `None` when no time can
    /// match (`since` after `until`).
    pub fn time_range(&self) -> Option<(u64, u64)> {
        let low = self.since_ms.unwrap_or(0);
        let high = self.until_ms.unwrap_or(u64::MAX);
        (low <= high).then_some((low, high))
    }
}

/// The search's order: results come in descending order of this key (newest first; the id
/// breaks ties between deliveries created in the same millisecond).
pub fn order_key(delivery: &Delivery) -> (u64, DeliveryId) {
    (delivery.created_at_ms, delivery.id)
}

/// Where a page resumes: the cursor delivery's order key. `created_at_ms` is the cursor
/// delivery's creation time when it still exists, else the time part of its id (a ULID),
/// which is when it was made.
pub fn cursor_key(cursor: DeliveryId, created_at_ms: Option<u64>) -> (u64, DeliveryId) {
    (
        created_at_ms.unwrap_or_else(|| cursor.timestamp_ms()),
        cursor,
    )
}

/// The deliveries among `candidates` that match `search` and come strictly after `before`
/// in the search's order, sorted newest first, at most `limit`: the search over a set small
/// enough to hold (the deliveries of one event).
pub fn filter_sorted(
    search: &DeliverySearch,
    mut candidates: Vec<Delivery>,
    before: Option<(u64, DeliveryId)>,
    limit: usize,
) -> Vec<Delivery> {
    candidates.retain(|d| search.matches(d) && before.is_none_or(|b| order_key(d) < b));
    candidates.sort_by_key(|d| std::cmp::Reverse(order_key(d)));
    candidates.truncate(limit);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventKey;
    use crate::model::AttemptError;

    fn delivery(created_at_ms: u64, status: DeliveryStatus) -> Delivery {
        Delivery {
            id: DeliveryId(u128::from(created_at_ms) << 80 | 7),
            organization_id: "org".into(),
            webhook_id: WebhookId(1),
            event_key: EventKey(1),
            event_id: "evt_1".into(),
            event_type: EventType::PUBLIC[0],
            status,
            attempt_count: 0,
            scheduled_attempts: 0,
            next_attempt_at_ms: None,
            created_at_ms,
            updated_at_ms: created_at_ms,
            last_outcome: None,
            ordering_key: None,
        }
    }

    #[test]
    fn a_delivery_never_attempted_matches_no_outcome() {
        let d = delivery(10, DeliveryStatus::Pending);
        let search = DeliverySearch {
            organization_id: "org".into(),
            outcomes: AttemptOutcome::ALL.to_vec(),
            ..DeliverySearch::default()
        };
        assert!(!search.matches(&d));
        let attempted = Delivery {
            last_outcome: Some(AttemptOutcome::Status5xx),
            ..d
        };
        assert!(search.matches(&attempted));
    }

    #[test]
    fn time_bounds_are_inclusive_and_other_organizations_never_match() {
        let d = delivery(10, DeliveryStatus::Failed);
        let mut search = DeliverySearch {
            organization_id: "org".into(),
            since_ms: Some(10),
            until_ms: Some(10),
            statuses: vec![DeliveryStatus::Pending, DeliveryStatus::Failed],
            ..DeliverySearch::default()
        };
        assert!(search.matches(&d));
        search.until_ms = Some(9);
        assert!(!search.matches(&d) && search.time_range().is_none());
        search.until_ms = None;
        search.organization_id = "other".into();
        assert!(!search.matches(&d));
    }

    #[test]
    fn outcomes_classify_errors_before_statuses() {
        assert_eq!(
            AttemptOutcome::of(Some(200), Some(AttemptError::Timeout)),
            AttemptOutcome::Timeout
        );
        assert_eq!(
            AttemptOutcome::of(Some(204), None),
            AttemptOutcome::Status2xx
        );
        assert_eq!(
            AttemptOutcome::of(Some(301), None),
            AttemptOutcome::Status3xx
        );
        assert_eq!(
            AttemptOutcome::of(Some(410), None),
            AttemptOutcome::Status4xx
        );
        assert_eq!(
            AttemptOutcome::of(Some(503), None),
            AttemptOutcome::Status5xx
        );
        assert_eq!(
            AttemptOutcome::of(Some(101), None),
            AttemptOutcome::StatusOther
        );
        assert_eq!(AttemptOutcome::of(None, None), AttemptOutcome::Io);
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(outcome.as_str()), Some(outcome));
        }
    }

    #[test]
    fn filter_sorted_is_newest_first_and_resumes_after_the_cursor() {
        let all: Vec<Delivery> = (1..=5)
            .map(|t| delivery(t, DeliveryStatus::Succeeded))
            .collect();
        let search = DeliverySearch {
            organization_id: "org".into(),
            ..DeliverySearch::default()
        };
        let page = filter_sorted(&search, all.clone(), None, 2);
        assert_eq!(
            page.iter().map(|d| d.created_at_ms).collect::<Vec<_>>(),
            [5, 4]
        );
        let next = filter_sorted(&search, all, Some(order_key(&page[1])), 10);
        assert_eq!(
            next.iter().map(|d| d.created_at_ms).collect::<Vec<_>>(),
            [3, 2, 1]
        );
    }
}
