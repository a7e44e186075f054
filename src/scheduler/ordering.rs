//! Ordering by key (issue 16): a due delivery of a webhook with `ordering: "key"` is not
//! attempted while an earlier delivery of that webhook with the same ordering key is
//! unfinished. It is *postponed* in the store (its due time moves; no attempt is logged),
//! so what waits costs disk, not memory, and a restart or another daemon of a cluster finds
//! the same rule in the store: the check runs again at every dispatch. When a delivery
//! ends, the next one of its key is brought forward at once ([`Inner::next_in_order`]).
//!
//! At-least-once still holds: after a crash during an attempt, that attempt is unfinished in
//! the store, so it is sent again before anything behind it: a delivery may repeat, it never
//! overtakes.

use std::sync::Arc;

use super::Inner;
use crate::clock;
use crate::model::{Delivery, Ordering, Webhook};
use crate::store::blocking;

/// How long a waiting delivery sleeps past its blocker's next attempt (or past now, while
/// the blocker is in flight), ms: the blocker's outcome is logged by then, or the check runs
/// again. A blocker that ends wakes it sooner ([`Inner::next_in_order`]).
pub const ORDER_RECHECK_MS: u64 = 1_000;

/// How long a delivery waits behind a held blocker (its webhook disabled and enabled again
/// while the release sweep runs), ms.
pub const HELD_BLOCKER_RECHECK_MS: u64 = 5_000;

/// When a delivery that waits behind `blocker` should be looked at again, or `None` when it
/// may go now: the blocker has held the key for `hold_max_ms` (from its creation) already.
/// Pure; `now` in ms since the epoch.
pub fn wait_until(blocker: &Delivery, hold_max_ms: Option<u64>, now: u64) -> Option<u64> {
    let released_at = hold_max_ms.map(|max| blocker.created_at_ms.saturating_add(max));
    if released_at.is_some_and(|at| at <= now) {
        return None;
    }
    let until = match blocker.next_attempt_at_ms {
        Some(due) => due.max(now) + ORDER_RECHECK_MS,
        None => now + HELD_BLOCKER_RECHECK_MS,
    };
    Some(released_at.map_or(until, |at| until.min(at)))
}

/// Whether `delivery` is subject to ordering under `webhook`'s options.
pub fn is_ordered(webhook: &Webhook, delivery: &Delivery) -> bool {
    webhook.options.ordering == Ordering::Key && delivery.ordering_key.is_some()
}

impl Inner {
    /// For a due delivery of an ordered webhook: `Ok(None)` when it may go; `Ok(Some(t))`
    /// when it waits and was postponed to `t` (nothing else to do).
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the store cannot be read or written: the caller
    /// looks again shortly.
    pub(super) async fn ordering_wait(
        self: &Arc<Self>,
        webhook: &Webhook,
        delivery: &Delivery,
    ) -> Result<Option<u64>, crate::store::StoreError> {
        let probe = delivery.clone();
        let Some(blocker) = blocking(&self.store, move |s| s.ordering_blocker(&probe)).await?
        else {
            return Ok(None);
        };
        let now = clock::now_ms();
        let Some(until) = wait_until(&blocker, webhook.options.ordering_hold_max_ms, now) else {
            tracing::info!(delivery = %delivery.id, behind = %blocker.id, "ordering_hold_max reached: the delivery goes before the one it waited behind");
            return Ok(None);
        };
        let id = delivery.id;
        blocking(&self.store, move |s| s.postpone(id, now, until)).await?;
        tracing::debug!(delivery = %id, behind = %blocker.id, until_ms = until, "waits for an earlier delivery of its ordering key");
        Ok(Some(until))
    }

    /// After a delivery of an ordered webhook ended: the next one of its key, if it waits,
    /// is made due now. Only a head never attempted is brought forward: one with attempts
    /// is on its own retry schedule (it may be the blocker that `ordering_hold_max` let
    /// others pass), which this must not shorten. In a task of its own; a failure only
    /// delays it to its postponed time.
    pub(super) fn next_in_order(self: &Arc<Self>, webhook: &Webhook, ended: &Delivery) {
        if !is_ordered(webhook, ended) || !ended.status.is_final() {
            return;
        }
        let (webhook_id, key) = (webhook.id, ended.ordering_key.clone().unwrap_or_default());
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let head = blocking(&inner.store, move |s| s.ordering_head(webhook_id, &key)).await;
            let now = clock::now_ms();
            if let Ok(Some(head)) = head.map(|h| h.filter(|h| h.attempt_count == 0)) {
                if let Some(due) = head.next_attempt_at_ms.filter(|due| *due > now) {
                    let _ = blocking(&inner.store, move |s| s.resume_held(&[(head.id, due)], now))
                        .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeliveryId, EventKey, WebhookId};
    use crate::model::DeliveryStatus;

    fn blocker(due: Option<u64>) -> Delivery {
        Delivery {
            id: DeliveryId(1),
            organization_id: "o".into(),
            webhook_id: WebhookId(1),
            event_key: EventKey(1),
            event_id: "e".into(),
            event_type: crate::event::EventType::TicketCreated,
            status: DeliveryStatus::Retrying,
            attempt_count: 1,
            scheduled_attempts: 1,
            next_attempt_at_ms: due,
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
            last_outcome: None,
            ordering_key: Some("k".into()),
        }
    }

    #[test]
    fn a_delivery_waits_past_its_blockers_next_attempt() {
        // The blocker retries in 5 minutes: look again just after that attempt.
        assert_eq!(
            wait_until(&blocker(Some(301_000)), None, 2_000),
            Some(302_000)
        );
        // The blocker is in flight (due already): look again in a second.
        assert_eq!(wait_until(&blocker(Some(1_500)), None, 2_000), Some(3_000));
        // A held blocker: look again in five.
        assert_eq!(wait_until(&blocker(None), None, 2_000), Some(7_000));
    }

    #[test]
    fn ordering_hold_max_bounds_how_long_one_blocker_holds_its_key() {
        // Created at 1 s with a hold of 60 s: waiting ends at 61 s at the latest.
        assert_eq!(
            wait_until(&blocker(Some(301_000)), Some(60_000), 2_000),
            Some(61_000)
        );
        assert_eq!(
            wait_until(&blocker(Some(301_000)), Some(60_000), 61_000),
            None
        );
    }
}
