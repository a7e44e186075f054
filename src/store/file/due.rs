//! FileStore operations on the due indexes: the retry index `(due, delivery)` and its
//! per-webhook twin `webhook_due` `(webhook, due, delivery)`, which move together in one
//! transaction ([`move_index_entry`]) and are published to the scheduler after the commit.

use redb::{ReadableTable, ReadableTableMetadata};

use super::deliveries::load_delivery;
use super::records::{decode, encode, AttemptRecord, DeliveryRecord};
use super::writer::{Change, Txn};
use super::{FileStore, StoreError, ATTEMPTS, DELIVERIES, RETRY_INDEX, WEBHOOK_DUE};
use crate::ids::{DeliveryId, WebhookId};
use crate::retry::RetrySchedule;

/// One read of [`FileStore::webhook_due_entries`]: (webhook, read strictly after this
/// `(due ms, delivery)` key or from the start, at most this many entries).
pub type DueRead = (WebhookId, Option<(u64, DeliveryId)>, usize);

/// What [`FileStore::clamp_far_due`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClampReport {
    /// Deliveries whose due time was brought back.
    pub moved: u64,
    /// The largest distance one was brought back by, in ms.
    pub max_shift_ms: u64,
}

impl FileStore {
    /// See [`Store::clamp_far_due`](crate::store::Store::clamp_far_due).
    pub fn clamp_far_due(
        &self,
        now_ms: u64,
        schedule: &RetrySchedule,
        floor_ms: u64,
    ) -> Result<ClampReport, StoreError> {
        let floor = now_ms.saturating_add(floor_ms);
        let moves: Vec<(DeliveryId, u64, u64)> = self.read(|txn| {
            let index = txn.open_table(RETRY_INDEX)?;
            if index.last()?.is_none_or(|(k, _)| k.value().0 <= floor) {
                return Ok(Vec::new());
            }
            let deliveries = txn.open_table(DELIVERIES)?;
            let attempts = txn.open_table(ATTEMPTS)?;
            let mut moves = Vec::new();
            for row in index.range((floor, u128::MAX)..)? {
                let (key, _) = row?;
                let (due, id) = key.value();
                let id = DeliveryId(id);
                let Some(delivery) = load_delivery(&deliveries, id)? else {
                    continue;
                };
                let retry_after = match attempts.get((id.0, delivery.attempt_count))? {
                    Some(bytes) => {
                        decode::<AttemptRecord>("attempts", bytes.value())?
                            .into_domain(delivery.attempt_count)?
                            .retry_after_ms
                    }
                    None => None,
                };
                let step =
                    crate::retry::longest_wait(schedule, delivery.scheduled_attempts, retry_after);
                let to = now_ms.saturating_add(step);
                if due > to && !delivery.status.is_final() {
                    moves.push((id, due, to));
                }
            }
            Ok(moves)
        })?;
        if moves.is_empty() {
            return Ok(ClampReport::default());
        }
        self.write(move |txn| {
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let mut report = ClampReport::default();
            for (id, due, to) in moves {
                // Moved or finished since the scan: its new time is its own.
                if reschedule(txn, &mut deliveries, id, to, |current| current == due)?.is_some() {
                    report.moved += 1;
                    report.max_shift_ms = report.max_shift_ms.max(due - to);
                }
            }
            Ok(report)
        })
    }

    /// See [`Store::due_entries`](crate::store::Store::due_entries).
    pub fn due_entries(
        &self,
        after: Option<(u64, DeliveryId)>,
        due_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(RETRY_INDEX)?;
            let start = match after {
                None => (0, 0),
                Some((due, id)) if id.0 == u128::MAX => (due.saturating_add(1), 0),
                Some((due, id)) => (due, id.0 + 1),
            };
            let mut out = Vec::new();
            for row in table.range(start..(due_before_ms, 0))? {
                let (k, _) = row?;
                let (due, id) = k.value();
                out.push((due, DeliveryId(id)));
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::webhook_due_entries`](crate::store::Store::webhook_due_entries).
    pub fn webhook_due_entries(
        &self,
        asks: &[DueRead],
    ) -> Result<Vec<Vec<(u64, DeliveryId)>>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(WEBHOOK_DUE)?;
            let mut answers = Vec::with_capacity(asks.len());
            for &(webhook, after, limit) in asks {
                let w = webhook.0;
                let start = match after {
                    None => (w, 0, 0),
                    // Nothing follows the last possible key.
                    Some((u64::MAX, DeliveryId(u128::MAX))) => {
                        answers.push(Vec::new());
                        continue;
                    }
                    Some((due, id)) if id.0 == u128::MAX => (w, due + 1, 0),
                    Some((due, id)) => (w, due, id.0 + 1),
                };
                let mut out = Vec::new();
                for row in table.range(start..=(w, u64::MAX, u128::MAX))?.take(limit) {
                    let (_, due, id) = row?.0.value();
                    out.push((due, DeliveryId(id)));
                }
                answers.push(out);
            }
            Ok(answers)
        })
    }

    /// See [`Store::webhook_due_heads`](crate::store::Store::webhook_due_heads).
    pub fn webhook_due_heads(&self) -> Result<Vec<(WebhookId, u64, DeliveryId)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(WEBHOOK_DUE)?;
            let mut out = Vec::new();
            let mut from = 0u128;
            loop {
                let Some(row) = table.range((from, 0, 0)..)?.next() else {
                    break;
                };
                let (k, _) = row?;
                let (webhook, due, id) = k.value();
                out.push((WebhookId(webhook), due, DeliveryId(id)));
                match webhook.checked_add(1) {
                    Some(next) => from = next,
                    None => break,
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::pending_count`](crate::store::Store::pending_count).
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.open_table(RETRY_INDEX)?.len()?))
    }

    /// See [`Store::due_summary`](crate::store::Store::due_summary).
    pub fn due_summary(&self, now_ms: u64) -> Result<(u64, u64, Option<u64>), StoreError> {
        self.read(|txn| due_in(txn, now_ms))
    }
    /// See [`Store::postpone`](crate::store::Store::postpone).
    pub fn postpone(&self, id: DeliveryId, now_ms: u64, to_ms: u64) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERIES)?;
            Ok(reschedule(txn, &mut table, id, to_ms, |due| due <= now_ms)?.is_some())
        })
    }

    /// See [`Store::resume_held`](crate::store::Store::resume_held).
    pub fn resume_held(
        &self,
        held: &[(DeliveryId, u64)],
        now_ms: u64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let held = held.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERIES)?;
            let mut moved = Vec::new();
            for (id, until) in held {
                if reschedule(txn, &mut table, id, now_ms, |due| due == until)?.is_some() {
                    moved.push(id);
                }
            }
            Ok(moved)
        })
    }
}

/// [`FileStore::due_summary`] within `txn`.
pub(super) fn due_in(
    txn: &redb::ReadTransaction,
    now_ms: u64,
) -> Result<(u64, u64, Option<u64>), StoreError> {
    let index = txn.open_table(RETRY_INDEX)?;
    let total = index.len()?;
    let oldest = index.first()?.map(|(k, _)| k.value().0);
    let mut due = 0u64;
    for row in index.range(..=(now_ms, u128::MAX))? {
        row?;
        due += 1;
    }
    Ok((due, total - due, oldest.filter(|d| *d <= now_ms)))
}

/// Moves the next attempt of delivery `id` to `to_ms` (index entries and record) if it is not
/// final and `is_current(its due time)` holds. Returns the due time it had, or `None` when
/// nothing moved (missing, final, not scheduled, or not current).
fn reschedule(
    txn: &Txn<'_>,
    table: &mut redb::Table<'_, u128, &'static [u8]>,
    id: DeliveryId,
    to_ms: u64,
    is_current: impl FnOnce(u64) -> bool,
) -> Result<Option<u64>, StoreError> {
    let Some(mut delivery) = load_delivery(table, id)? else {
        return Ok(None);
    };
    let Some(due) = delivery.next_attempt_at_ms.filter(|due| is_current(*due)) else {
        return Ok(None);
    };
    if delivery.status.is_final() {
        return Ok(None);
    }
    move_index_entry(txn, delivery.webhook_id, id, Some(due), Some(to_ms))?;
    delivery.next_attempt_at_ms = Some(to_ms);
    table.insert(
        id.0,
        encode(&DeliveryRecord::from_domain(&delivery)).as_slice(),
    )?;
    Ok(Some(due))
}

/// Moves a delivery's entry in the retry index and in the per-webhook due index (`None`: no
/// entry), and publishes the move for the scheduler.
pub(super) fn move_index_entry(
    txn: &Txn<'_>,
    webhook: WebhookId,
    id: DeliveryId,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<(), StoreError> {
    if from == to {
        return Ok(());
    }
    let mut index = txn.open_table(RETRY_INDEX)?;
    let mut by_webhook = txn.open_table(WEBHOOK_DUE)?;
    if let Some(due) = from {
        index.remove((due, id.0))?;
        by_webhook.remove((webhook.0, due, id.0))?;
    }
    if let Some(due) = to {
        index.insert((due, id.0), ())?;
        by_webhook.insert((webhook.0, due, id.0), ())?;
    }
    txn.publish(Change::Index {
        webhook,
        delivery: id,
        from,
        to,
    });
    Ok(())
}
