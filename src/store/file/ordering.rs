//! FileStore: the ordering index (issue 16). `ordering` `(webhook, ordering key, event key,
//! delivery) → ()` lists every unfinished (pending, retrying or held) delivery that has an
//! ordering key, per webhook and key in ingest order (event keys are monotonic ULIDs). A
//! delivery of a webhook with `ordering: "key"` waits while an entry comes before its own.
//!
//! [`reorder`] is the one way to keep it: every write of a delivery's status goes through
//! `put_delivery`, which calls it in the same transaction, as do the first write of a new
//! delivery and the purge.

use redb::{ReadableTable, TableDefinition};

use super::deliveries::load_delivery;
use super::writer::Txn;
use super::{FileStore, StoreError, DELIVERIES};
use crate::ids::{DeliveryId, WebhookId};
use crate::model::Delivery;

/// `(webhook, ordering key, event key, delivery) → ()`: unfinished deliveries with a key.
pub(crate) const ORDERING: TableDefinition<(u128, &str, u128, u128), ()> =
    TableDefinition::new("ordering");

/// The entry `d` has in the ordering index, if any.
fn entry(d: &Delivery) -> Option<(u128, &str, u128, u128)> {
    let key = d.ordering_key.as_deref()?;
    (!d.status.is_final()).then_some((d.webhook_id.0, key, d.event_key.0, d.id.0))
}

/// Moves a delivery's ordering entry from its stored state `before` (`None` when new) to
/// `after` (`None` when it is deleted), in the caller's transaction.
///
/// # Errors
/// [`StoreError`] on a table failure.
pub(super) fn reorder(
    txn: &Txn<'_>,
    before: Option<&Delivery>,
    after: Option<&Delivery>,
) -> Result<(), StoreError> {
    let (old, new) = (before.and_then(entry), after.and_then(entry));
    if old == new {
        return Ok(());
    }
    let mut table = txn.open_table(ORDERING)?;
    if let Some(old) = old {
        table.remove(old)?;
    }
    if let Some(new) = new {
        table.insert(new, ())?;
    }
    Ok(())
}

impl FileStore {
    /// See [`Store::ordering_blocker`](crate::store::Store::ordering_blocker).
    pub fn ordering_blocker(&self, delivery: &Delivery) -> Result<Option<Delivery>, StoreError> {
        let Some(key) = delivery.ordering_key.as_deref() else {
            return Ok(None);
        };
        let w = delivery.webhook_id.0;
        let mine = (w, key, delivery.event_key.0, delivery.id.0);
        self.read(|txn| {
            let table = txn.open_table(ORDERING)?;
            let first = table.range((w, key, 0, 0)..mine)?.next().transpose()?;
            let Some((k, _)) = first else {
                return Ok(None);
            };
            let id = DeliveryId(k.value().3);
            load_delivery(&txn.open_table(DELIVERIES)?, id)
        })
    }

    /// See [`Store::ordering_head`](crate::store::Store::ordering_head).
    pub fn ordering_head(
        &self,
        webhook: WebhookId,
        key: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        let w = webhook.0;
        self.read(|txn| {
            let table = txn.open_table(ORDERING)?;
            let first = table
                .range((w, key, 0, 0)..=(w, key, u128::MAX, u128::MAX))?
                .next()
                .transpose()?;
            let Some((k, _)) = first else {
                return Ok(None);
            };
            load_delivery(&txn.open_table(DELIVERIES)?, DeliveryId(k.value().3))
        })
    }
}

/// For `check`: every unfinished delivery with an ordering key has its entry, and every
/// entry names such a delivery. Violations go to `report`.
///
/// # Errors
/// [`StoreError`] on a read failure.
pub(super) fn check(
    txn: &redb::ReadTransaction,
    report: &mut super::check::CheckReport,
) -> Result<(), StoreError> {
    let table = match txn.open_table(ORDERING) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let deliveries = txn.open_table(DELIVERIES)?;
    let mut expected = 0u64;
    for row in deliveries.iter()? {
        let (id, _) = row?;
        // A record that does not decode is reported by the deliveries' check.
        let Ok(Some(d)) = load_delivery(&deliveries, DeliveryId(id.value())) else {
            continue;
        };
        if let Some(e) = entry(&d) {
            expected += 1;
            if table.get(e)?.is_none() {
                report.violation(format!(
                    "delivery {}: unfinished with ordering key {:?} but not in the ordering index",
                    d.id,
                    d.ordering_key.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    let entries = table.iter()?.count() as u64;
    if entries != expected {
        report.violation(format!(
            "the ordering index has {entries} entries but {expected} unfinished deliveries have a key"
        ));
    }
    Ok(())
}
