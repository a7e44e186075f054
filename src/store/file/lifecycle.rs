//! FileStore operations on a webhook's lifecycle (issue 15): disabling holds its unfinished
//! deliveries in the held index `held` `(webhook, delivery) -> due ms`, enabling releases or
//! cancels them, and the failing streak's start is kept on the webhook record.
//!
//! Invariant (checked by `check`): a delivery is `held` exactly when it has a `held` entry;
//! a held delivery has no retry-index entry and no `next_attempt_at_ms`.

use redb::ReadableTable;

use super::deliveries::{load_delivery, put_delivery};
use super::due::move_index_entry;
use super::records::{decode, WebhookRecord};
use super::writer::Txn;
use super::{FileStore, StoreError, DELIVERIES, HELD, WEBHOOKS, WEBHOOK_DUE};
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Delivery, DeliveryStatus};
use crate::store::{Lifecycle, LifecycleMove, LifecycleOutcome};

/// Adds a held-index entry (the delivery's record is the caller's).
pub(super) fn put_held(
    txn: &Txn<'_>,
    webhook: WebhookId,
    delivery: DeliveryId,
    due_ms: u64,
) -> Result<(), StoreError> {
    txn.open_table(HELD)?
        .insert((webhook.0, delivery.0), due_ms)?;
    Ok(())
}

/// Removes a held-index entry, returning the due time it kept.
pub(super) fn take_held(
    txn: &Txn<'_>,
    webhook: WebhookId,
    delivery: DeliveryId,
) -> Result<Option<u64>, StoreError> {
    Ok(txn
        .open_table(HELD)?
        .remove((webhook.0, delivery.0))?
        .map(|v| v.value()))
}

/// Moves an unfinished delivery from the retry index to the held index (record included).
fn hold(
    txn: &Txn<'_>,
    table: &mut redb::Table<'_, u128, &'static [u8]>,
    mut delivery: Delivery,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let Some(due) = delivery.next_attempt_at_ms else {
        return Ok(false);
    };
    if delivery.status.is_final() || delivery.status == DeliveryStatus::Held {
        return Ok(false);
    }
    move_index_entry(txn, delivery.webhook_id, delivery.id, Some(due), None)?;
    put_held(txn, delivery.webhook_id, delivery.id, due)?;
    let before = delivery.clone();
    delivery.status = DeliveryStatus::Held;
    delivery.next_attempt_at_ms = None;
    delivery.updated_at_ms = now_ms;
    put_delivery(txn, table, Some(&before), &delivery)?;
    Ok(true)
}

impl FileStore {
    /// See [`Store::set_webhook_lifecycle`](crate::store::Store::set_webhook_lifecycle).
    pub fn set_webhook_lifecycle(
        &self,
        id: WebhookId,
        change: Lifecycle,
        now_ms: u64,
    ) -> Result<Option<LifecycleOutcome>, StoreError> {
        let key = self.secrets_key.clone();
        self.write(move |txn| {
            let mut webhooks = txn.open_table(WEBHOOKS)?;
            let Some(mut webhook) = super::get_webhook(&webhooks, id, key.as_deref())? else {
                return Ok(None);
            };
            let mut deliveries = 0u64;
            let step = crate::store::apply_lifecycle(&mut webhook, change, now_ms);
            match step {
                LifecycleMove::Unchanged | LifecycleMove::RecordOnly => {}
                LifecycleMove::HoldAll => deliveries = hold_all(txn, id, now_ms)?,
                LifecycleMove::ReleaseAll(deliver) => {
                    deliveries = release_all(txn, id, deliver, now_ms)?;
                }
            }
            let changed = step != LifecycleMove::Unchanged;
            if changed {
                super::put_webhook(txn, &mut webhooks, &webhook, key.as_deref())?;
            }
            Ok(Some(LifecycleOutcome {
                webhook,
                changed,
                deliveries,
            }))
        })
    }

    /// See [`Store::hold_delivery`](crate::store::Store::hold_delivery).
    pub fn hold_delivery(&self, id: DeliveryId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERIES)?;
            let Some(delivery) = load_delivery(&table, id)? else {
                return Ok(false);
            };
            let disabled = match txn.open_table(WEBHOOKS)?.get(delivery.webhook_id.0)? {
                Some(bytes) => decode::<WebhookRecord>("webhooks", bytes.value())?
                    .into_domain(delivery.webhook_id, None)?
                    .disabled
                    .is_some(),
                None => false,
            };
            if !disabled {
                return Ok(false);
            }
            hold(txn, &mut table, delivery, now_ms)
        })
    }

    /// See [`Store::held_count`](crate::store::Store::held_count).
    pub fn held_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(HELD)?;
            let mut count = 0u64;
            for row in table.range((webhook.0, 0)..=(webhook.0, u128::MAX))? {
                row?;
                count += 1;
            }
            Ok(count)
        })
    }
}

/// Holds every unfinished delivery of `webhook` (its entries in the per-webhook due index).
fn hold_all(txn: &Txn<'_>, webhook: WebhookId, now_ms: u64) -> Result<u64, StoreError> {
    let ids: Vec<DeliveryId> = txn
        .open_table(WEBHOOK_DUE)?
        .range((webhook.0, 0, 0)..=(webhook.0, u64::MAX, u128::MAX))?
        .map(|row| row.map(|(k, _)| DeliveryId(k.value().2)))
        .collect::<Result<_, _>>()?;
    let mut table = txn.open_table(DELIVERIES)?;
    let mut held = 0;
    for id in ids {
        if let Some(delivery) = load_delivery(&table, id)? {
            held += u64::from(hold(txn, &mut table, delivery, now_ms)?);
        }
    }
    Ok(held)
}

/// Releases (back into the retry index at the due time each kept) or cancels every held
/// delivery of `webhook`.
fn release_all(
    txn: &Txn<'_>,
    webhook: WebhookId,
    deliver: bool,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let entries: Vec<(DeliveryId, u64)> = txn
        .open_table(HELD)?
        .range((webhook.0, 0)..=(webhook.0, u128::MAX))?
        .map(|row| row.map(|(k, v)| (DeliveryId(k.value().1), v.value())))
        .collect::<Result<_, _>>()?;
    let mut table = txn.open_table(DELIVERIES)?;
    let mut moved = 0;
    for (id, due) in entries {
        take_held(txn, webhook, id)?;
        let Some(mut delivery) = load_delivery(&table, id)? else {
            continue;
        };
        if delivery.status != DeliveryStatus::Held {
            continue;
        }
        let before = delivery.clone();
        if deliver {
            delivery.status = if delivery.scheduled_attempts == 0 {
                DeliveryStatus::Pending
            } else {
                DeliveryStatus::Retrying
            };
            delivery.next_attempt_at_ms = Some(due);
            move_index_entry(txn, webhook, id, None, Some(due))?;
        } else {
            delivery.status = DeliveryStatus::Cancelled;
        }
        delivery.updated_at_ms = now_ms;
        put_delivery(txn, &mut table, Some(&before), &delivery)?;
        moved += 1;
    }
    Ok(moved)
}
