//! One scheduled attempt, from the claim to the logged result: read what is not in memory,
//! send, note the webhook's speed, record; and the hold of an inactive webhook's delivery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::queues::Key;
use super::{
    lock, AttemptNowError, Claim, Inner, SharedBody, Slots, INACTIVE_POSTPONE_MS,
    MAX_HELD_PER_WEBHOOK, RECHECK_MS, SLOW_ATTEMPT_MS,
};
use crate::clock;
use crate::delivery::OutgoingAttempt;
use crate::ids::WebhookId;
use crate::model::{Attempt, Delivery, Trigger, Webhook};
use crate::store::blocking;

impl Inner {
    pub(super) async fn run_scheduled(self: Arc<Self>, slots: Slots, key: Key) {
        let id = key.1;
        let Some(webhook_id) = slots.slot.map(|s| s.webhook) else {
            return;
        };
        // Already claimed: a manual attempt, or a duplicate window entry of an attempt in
        // flight. Look again in a second: a failed manual attempt leaves the schedule as it
        // was, so no change would bring this entry back (regression: it stayed due, unsent,
        // until a restart).
        let Some(claim) = self.claim(id) else {
            lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
            return;
        };
        // A deleted webhook's deliveries were cancelled in the same commit as the deletion.
        // One missing from the cache is read (another daemon of a cluster made it, and its
        // notification was missed).
        let webhook = match self.webhook(webhook_id) {
            Some(webhook) => webhook,
            None => match blocking(&self.store, move |s| s.get_webhook(webhook_id)).await {
                Ok(Some(webhook)) => {
                    let webhook = Arc::new(webhook);
                    self.webhooks
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(webhook_id)
                        .or_insert_with(|| Arc::clone(&webhook));
                    webhook
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(webhook = %webhook_id, error = %e, "could not read a webhook; will look again");
                    lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
                    return;
                }
            },
        };
        if webhook.disabled.is_some() {
            // Disabled by the daemon: the delivery goes to the held index (an entry that
            // reached the queues after the disable, from an attempt in flight then). When
            // the store does not hold it (the disable is not committed yet, or an enable
            // was), the entry is looked at again shortly rather than dropped.
            drop(slots);
            let now = clock::now_ms();
            if !matches!(
                blocking(&self.store, move |s| s.hold_delivery(id, now)).await,
                Ok(true)
            ) {
                lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS);
            }
            drop(claim);
            return;
        }
        if !webhook.active {
            drop(slots);
            self.hold(claim, webhook_id, key).await;
            return;
        }
        let fresh = lock(&self.fresh)
            .remove(&id)
            .filter(|d| d.next_attempt_at_ms == Some(key.0));
        let shared = fresh
            .as_ref()
            .and_then(|d| lock(&self.bodies).get(d.event_key));
        let read = match (fresh, shared) {
            (Some(delivery), Some(body)) => {
                Ok(Some((delivery, Bytes::from_owner(SharedBody(body)))))
            }
            _ => self.read_delivery(id).await,
        };
        let (delivery, body) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "could not load a due delivery; will look again");
                lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
                return;
            }
        };
        let now = clock::now_ms();
        if delivery.status.is_final() || delivery.next_attempt_at_ms.is_none_or(|due| due > now) {
            return; // Stale entry: the index moved on.
        }
        if super::ordering::is_ordered(&webhook, &delivery) {
            match self.ordering_wait(&webhook, &delivery).await {
                Ok(None) => {}
                // Postponed in the store: the move reaches the queue like any other.
                Ok(Some(_)) => return,
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "could not check the delivery's ordering key; will look again");
                    lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS);
                    return;
                }
            }
        }
        if body.is_empty() {
            // A tombstone (issue 15) with a delivery unfinished again (deleting the payload
            // cancelled them all): cancel it too, rather than send nothing, or retry for ever.
            drop(slots);
            drop(claim);
            let (org, event_id) = (delivery.organization_id, delivery.event_id);
            if let Err(e) = blocking(&self.store, move |s| {
                s.delete_event_payload(&org, &event_id, now)
            })
            .await
            {
                tracing::warn!(delivery = %id, error = %e, "could not cancel a delivery whose payload was deleted; will look again");
                lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS);
            }
            return;
        }
        match self.may_start(webhook_id) {
            Some(true) => {}
            // In a cluster, the webhook moved to another daemon while the attempt was
            // prepared: not sent; the entry is the new owner's.
            None => return,
            // The lease could not be renewed in time: not sent; looked at again.
            Some(false) => {
                lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS);
                return;
            }
        }
        if let Err(e) = Arc::clone(&self)
            .attempt(claim, slots, delivery, &webhook, body, Trigger::Scheduled)
            .await
        {
            tracing::warn!(delivery = %id, error = %e, "scheduled attempt not recorded; will try again");
            lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
        }
    }

    /// Postpones a due delivery of an inactive webhook by [`INACTIVE_POSTPONE_MS`] and
    /// remembers it, so reactivation brings it back at once.
    async fn hold(&self, claim: Claim, webhook_id: WebhookId, key: Key) {
        let id = claim.id;
        let now = clock::now_ms();
        let until = now + INACTIVE_POSTPONE_MS;
        match blocking(&self.store, move |s| s.postpone(id, now, until)).await {
            Ok(true) => {
                {
                    let mut held = lock(&self.held);
                    let list = held.entry(webhook_id).or_default();
                    if list.len() < MAX_HELD_PER_WEBHOOK {
                        list.push((id, until));
                    }
                }
                // Reactivated while the hold was being written: the reactivation may have
                // taken the held list already, so bring this one back itself (regression:
                // a quick off/on left some deliveries held for 10 minutes).
                if self.webhook(webhook_id).is_some_and(|w| w.active) {
                    let mine = lock(&self.held).get_mut(&webhook_id).and_then(|list| {
                        let at = list.iter().position(|(held, _)| *held == id)?;
                        Some(list.swap_remove(at))
                    });
                    if let Some(held) = mine {
                        let now = clock::now_ms();
                        if let Err(e) =
                            blocking(&self.store, move |s| s.resume_held(&[held], now)).await
                        {
                            tracing::warn!(delivery = %id, error = %e, "could not bring a held delivery forward; it goes within 10 minutes");
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(_) => lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS),
        }
        drop(claim);
    }

    /// Sends one attempt for a claimed delivery and records it. The in-flight slot is
    /// released as soon as the HTTP exchange ends: it bounds requests to receivers, and the
    /// claim (kept until the attempt is logged) already prevents a second attempt of the same
    /// delivery, so waiting for the commit does not take a slot from other deliveries.
    pub(super) async fn attempt(
        self: Arc<Self>,
        claim: Claim,
        slots: Slots,
        delivery: Delivery,
        webhook: &Webhook,
        body: Bytes,
        trigger: Trigger,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        // Its attempt count moves now: a kept copy of the delivery would be stale.
        lock(&self.fresh).remove(&delivery.id);
        // The tombstone of a deleted payload is empty (issue 15): nothing is sent. Every
        // path to a send passes here, so no attempt can go out with a deleted payload.
        if body.is_empty() {
            return Err(AttemptNowError::PayloadDeleted);
        }
        let mut slots = slots;
        let send = self.sender.send(OutgoingAttempt {
            url: &webhook.url,
            body,
            secret: &webhook.secret,
            previous_secret: webhook
                .previous_secret_at(clock::now_ms())
                .map(|p| &p.secret),
            event_key: delivery.event_key,
            webhook_id: webhook.id,
            event_type: delivery.event_type,
            event_id: &delivery.event_id,
            delivery_id: delivery.id,
            number: delivery.attempt_count + 1,
            trigger,
            options: &webhook.options,
        });
        tokio::pin!(send);
        let log = tokio::select! {
            log = &mut send => log,
            () = tokio::time::sleep(Duration::from_millis(SLOW_ATTEMPT_MS)) => {
                // Still waiting after a second: the webhook is slow now, whatever it was.
                if let Some(slot) = slots.slot.as_mut() {
                    lock(&self.queues).slowed(slot);
                }
                send.await
            }
        };
        let fast = log.duration_ms < SLOW_ATTEMPT_MS
            && log.error != Some(crate::model::AttemptError::Timeout);
        let gone =
            webhook.disabled.is_none() && self.settings.disable.disables_at_once(log.status_code);
        if gone {
            // Before the slot is freed: the next attempt to this webhook is held, not sent.
            self.mark_disabled(
                webhook.id,
                &crate::lifecycle::gone(delivery.id, clock::now_ms()),
            );
        }
        slots.finish(Some(fast));
        let id = delivery.id;
        let schedule = self.settings.schedule.clone();
        let recorded = self
            .store
            .record_attempt(id, log.clone(), schedule, clock::now_ms())
            .await;
        let updated = match recorded {
            Ok(Some(updated)) => updated,
            failed => {
                if gone {
                    // No disable follows: the webhook as stored decides again.
                    self.read_back_webhook(webhook.id).await;
                }
                return Err(match failed {
                    Err(e) => e.into(),
                    Ok(_) => AttemptNowError::NotFound,
                });
            }
        };
        drop(claim);
        crate::metrics::attempt(&log);
        // A transition into a final status, once: redelivering a delivery that had already
        // succeeded does not count it again.
        if updated.status.is_final() && updated.status != delivery.status {
            metrics::counter!(crate::metrics::DELIVERIES_FINISHED, "outcome" => updated.status.as_str())
                .increment(1);
        }
        tracing::debug!(
            delivery = %id,
            attempt = log.number,
            status = ?log.status_code,
            error = log.error.map(|e| e.as_str()),
            duration_ms = log.duration_ms,
            "attempt logged"
        );
        if updated.status.is_final() && trigger == Trigger::Scheduled {
            tracing::info!(delivery = %id, status = updated.status.as_str(), attempts = updated.attempt_count, "delivery finished");
        }
        self.after_outcome(webhook, &delivery, &updated, &log, trigger);
        self.next_in_order(webhook, &updated);
        Ok((updated, log))
    }

    /// Marks the cached webhook disabled at once (a 410, or a failing streak decided): no
    /// attempt to it starts from now on (dispatch holds), even before the disable commits.
    /// The commit's change then brings the stored webhook; a failed commit reads it back.
    fn mark_disabled(&self, webhook: WebhookId, disabled: &crate::model::Disabled) {
        let mut cache = self.webhooks.write().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = cache.get(&webhook).filter(|w| w.disabled.is_none()) {
            let mut marked = (**cached).clone();
            marked.disabled = Some(disabled.clone());
            cache.insert(webhook, Arc::new(marked));
        }
    }

    /// Replaces the cached webhook by the stored one (undoing [`Self::mark_disabled`] when no
    /// disable was committed).
    async fn read_back_webhook(&self, webhook: WebhookId) {
        match blocking(&self.store, move |s| s.get_webhook(webhook)).await {
            Ok(Some(stored)) => {
                self.webhooks
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(webhook, Arc::new(stored));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(webhook = %webhook, error = %e, "could not read the webhook back; its cached state may be stale until it changes");
            }
        }
    }

    /// The lifecycle rules after a logged attempt (issue 15): a 410 disables the webhook, a
    /// failing streak long enough disables it, a success ends the streak, and a delivery that
    /// just failed its last scheduled attempt emits `delivery.exhausted`. Store writes and
    /// events run in a task of their own: the attempt's caller does not wait for them.
    fn after_outcome(
        self: &Arc<Self>,
        webhook: &Webhook,
        before: &Delivery,
        updated: &Delivery,
        log: &Attempt,
        trigger: Trigger,
    ) {
        use crate::lifecycle::{describe_failure, StreakAction};
        use crate::model::{DeliveryStatus, DisableReason, Disabled};
        use crate::store::Lifecycle;
        let now = clock::now_ms();
        let policy = &self.settings.disable;
        let mut change = None;
        if webhook.disabled.is_none() {
            if policy.disables_at_once(log.status_code) {
                change = Some(Lifecycle::Disable(crate::lifecycle::gone(updated.id, now)));
            } else {
                let action = lock(&self.streaks).observe(
                    webhook.id,
                    webhook.failing_since_ms,
                    log.succeeded(),
                    now,
                    policy,
                );
                change = match action {
                    StreakAction::None => None,
                    StreakAction::Started(since) => Some(Lifecycle::FailingSince(Some(since))),
                    StreakAction::Ended => Some(Lifecycle::FailingSince(None)),
                    StreakAction::Disable { since_ms } => Some(Lifecycle::Disable(Disabled {
                        reason: DisableReason::Failing,
                        at_ms: now,
                        delivery_id: Some(updated.id),
                        status_code: log.status_code,
                        failing_since_ms: Some(since_ms),
                        last_error: Some(describe_failure(log)),
                    })),
                };
            }
        }
        let exhausted = trigger == Trigger::Scheduled
            && updated.status == DeliveryStatus::Failed
            && before.status != DeliveryStatus::Failed;
        if change.is_none() && !exhausted {
            return;
        }
        if let Some(Lifecycle::Disable(disabled)) = &change {
            self.mark_disabled(webhook.id, disabled);
        }
        let inner = Arc::clone(self);
        let webhook_id = webhook.id;
        let updated = updated.clone();
        let log = log.clone();
        self.tracker.spawn(async move {
            if exhausted {
                inner.emitter.delivery_exhausted(&updated, &log, now).await;
            }
            let Some(change) = change else {
                return;
            };
            let disabling = matches!(change, Lifecycle::Disable(_));
            match blocking(&inner.store, move |s| {
                s.set_webhook_lifecycle(webhook_id, change, now)
            })
            .await
            {
                Ok(Some(outcome)) if disabling && outcome.changed => {
                    lock(&inner.streaks).forget(webhook_id);
                    // A backlog past the first chunk is held by the sweep.
                    inner.jobs_wake.notify_one();
                    inner
                        .emitter
                        .webhook_disabled(&outcome.webhook, outcome.deliveries, now)
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(webhook = %webhook_id, error = %e, "could not record the webhook's lifecycle change; the next attempt decides again");
                    if disabling {
                        // Undo the early mark: the webhook as stored decides.
                        inner.read_back_webhook(webhook_id).await;
                    }
                }
            }
        });
    }
}
