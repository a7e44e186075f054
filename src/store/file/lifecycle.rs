//! FileStore operations on a webhook's lifecycle (issue 15): disabling holds its unfinished
//! deliveries in the held index `held` `(webhook, delivery) -> due ms`, enabling releases or
//! cancels them, and the failing streak's start is kept on the webhook record.
//!
//! The change itself moves at most [`HELD_CHUNK`] deliveries; when more are left, the
//! webhook gets a `held_sweeps` entry (`webhook -> discard-through delivery id`, 0 for
//! none) and [`FileStore::sweep_held`] moves the rest a chunk per transaction, so other
//! writers never wait behind a whole backlog.
//!
//! Invariants (checked by `check`): a delivery is `held` exactly when it has a `held` entry;
//! a held delivery has no retry-index entry and no `next_attempt_at_ms`; an enabled webhook
//! with held deliveries has a `held_sweeps` entry.

use redb::ReadableTable;

use super::deliveries::{load_delivery, put_delivery};
use super::due::move_index_entry;
use super::records::{decode, WebhookRecord};
use super::writer::Txn;
use super::{FileStore, StoreError, DELIVERIES, HELD, HELD_SWEEPS, WEBHOOKS, WEBHOOK_DUE};
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Delivery, DeliveryStatus};
use crate::store::{Lifecycle, LifecycleMove, LifecycleOutcome, SweepReport, HELD_CHUNK};

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
        // Counted before the change, in a snapshot: counting inside the write would make
        // every other writer wait for it.
        let concerned = match change {
            Lifecycle::Disable(_) => self.unfinished_count(id)?,
            Lifecycle::Enable { .. } => self.held_count(id)?,
            Lifecycle::FailingSince(_) => 0,
        };
        let key = self.secrets_key.clone();
        self.write(move |txn| {
            let mut webhooks = txn.open_table(WEBHOOKS)?;
            let Some(mut webhook) = super::get_webhook(&webhooks, id, key.as_deref())? else {
                return Ok(None);
            };
            let step = crate::store::apply_lifecycle(&mut webhook, change, now_ms);
            let mut deliveries = 0;
            match step {
                LifecycleMove::Unchanged | LifecycleMove::RecordOnly => {}
                LifecycleMove::HoldAll | LifecycleMove::ReleaseAll(true) => {
                    deliveries = concerned;
                    start_sweep(txn, id, webhook.disabled.is_some(), None, now_ms)?;
                }
                LifecycleMove::ReleaseAll(false) => {
                    deliveries = concerned;
                    // What is held now is what the person discards; anything held later
                    // (a new disable) is not.
                    let last = txn
                        .open_table(HELD)?
                        .range((id.0, 0)..=(id.0, u128::MAX))?
                        .next_back()
                        .transpose()?
                        .map(|(k, _)| k.value().1);
                    start_sweep(txn, id, false, last, now_ms)?;
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

    /// See [`Store::sweep_held`](crate::store::Store::sweep_held).
    pub fn sweep_held(&self, webhooks: usize, now_ms: u64) -> Result<SweepReport, StoreError> {
        self.write(move |txn| {
            let limit = webhooks.max(1);
            let pending: Vec<(u128, u128)> = txn
                .open_table(HELD_SWEEPS)?
                .iter()?
                .take(limit + 1)
                .map(|row| row.map(|(k, v)| (k.value(), v.value())))
                .collect::<Result<_, _>>()?;
            let mut report = SweepReport {
                more: pending.len() > limit,
                ..SweepReport::default()
            };
            for (id, discard) in pending.into_iter().take(limit) {
                let id = WebhookId(id);
                let (moved, left) = match webhook_disabled(txn, id)? {
                    Some(disabled) => sweep_one(txn, id, disabled, discard_of(discard), now_ms)?,
                    // Deleted: what is unfinished of it is cancelled.
                    None => sweep_deleted(txn, id, now_ms)?,
                };
                report.moved += moved;
                report.more |= left;
            }
            Ok(report)
        })
    }

    /// See [`Store::hold_chunk`](crate::store::Store::hold_chunk).
    pub fn hold_chunk(&self, id: WebhookId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |txn| {
            if webhook_disabled(txn, id)? != Some(true) {
                return Ok(false);
            }
            let pending = txn.open_table(HELD_SWEEPS)?.get(id.0)?.map(|v| v.value());
            let Some(discard) = pending else {
                // No sweep left: everything unfinished is held already.
                return Ok(false);
            };
            let (_, more) = sweep_one(txn, id, true, discard_of(discard), now_ms)?;
            Ok(more)
        })
    }

    /// See [`Store::hold_delivery`](crate::store::Store::hold_delivery).
    pub fn hold_delivery(&self, id: DeliveryId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(DELIVERIES)?;
            let Some(delivery) = load_delivery(&table, id)? else {
                return Ok(false);
            };
            if webhook_disabled(txn, delivery.webhook_id)? != Some(true) {
                return Ok(false);
            }
            hold(txn, &mut table, delivery, now_ms)
        })
    }

    /// See [`Store::held_count`](crate::store::Store::held_count).
    pub fn held_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        self.read(|txn| {
            count_rows(
                txn.open_table(HELD)?
                    .range((webhook.0, 0)..=(webhook.0, u128::MAX))?,
            )
        })
    }

    /// The webhook's unfinished deliveries with a due time (its retry-index entries).
    pub(super) fn unfinished_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        self.read(|txn| {
            count_rows(
                txn.open_table(WEBHOOK_DUE)?
                    .range((webhook.0, 0, 0)..=(webhook.0, u64::MAX, u128::MAX))?,
            )
        })
    }
}

/// The rows of a range, counted (a read: nothing is decoded).
fn count_rows<I, T>(rows: I) -> Result<u64, StoreError>
where
    I: Iterator<Item = Result<T, redb::StorageError>>,
{
    let mut count = 0u64;
    for row in rows {
        row?;
        count += 1;
    }
    Ok(count)
}

/// Whether the webhook is disabled by the daemon; `None` when it does not exist (deleted).
/// Only its state is read: the secret is not opened.
fn webhook_disabled(txn: &Txn<'_>, id: WebhookId) -> Result<Option<bool>, StoreError> {
    match txn.open_table(WEBHOOKS)?.get(id.0)? {
        Some(bytes) => Ok(Some(
            decode::<WebhookRecord>("webhooks", bytes.value())?
                .into_domain(id, None)?
                .disabled
                .is_some(),
        )),
        None => Ok(None),
    }
}

/// A `held_sweeps` value as the discard boundary it stands for (0: none).
fn discard_of(value: u128) -> Option<u128> {
    (value != 0).then_some(value)
}

/// Moves the first chunk of a lifecycle change's deliveries in its own transaction and
/// leaves a `held_sweeps` entry when more may be left (merging a discard boundary with one
/// already pending: the later is the larger).
fn start_sweep(
    txn: &Txn<'_>,
    webhook: WebhookId,
    disabled: bool,
    discard_through: Option<u128>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let pending = txn
        .open_table(HELD_SWEEPS)?
        .get(webhook.0)?
        .map_or(0, |v| v.value());
    let discard = discard_of(discard_through.unwrap_or(0).max(pending));
    sweep_one(txn, webhook, disabled, discard, now_ms)?;
    Ok(())
}

/// One chunk (at most [`HELD_CHUNK`] deliveries) of a webhook's sweep: first the held
/// deliveries up to `discard_through` are cancelled; then a disabled webhook's unfinished
/// deliveries are held, an enabled one's held deliveries released. Writes (or removes) the
/// webhook's `held_sweeps` entry accordingly. Returns the deliveries moved and whether more
/// may be left.
fn sweep_one(
    txn: &Txn<'_>,
    webhook: WebhookId,
    disabled: bool,
    discard_through: Option<u128>,
    now_ms: u64,
) -> Result<(u64, bool), StoreError> {
    let mut moved = 0u64;
    let mut discard = discard_through;
    if let Some(last) = discard {
        let n = release_some(txn, webhook, 0, last, false, HELD_CHUNK, now_ms)?;
        moved += n;
        if n < HELD_CHUNK as u64 {
            discard = None;
        }
    }
    let budget = HELD_CHUNK - usize::try_from(moved).unwrap_or(HELD_CHUNK);
    let mut more = discard.is_some() || budget == 0;
    if budget > 0 {
        let n = if disabled {
            hold_some(txn, webhook, budget, now_ms)?
        } else {
            let from = discard.map_or(0, |d| d.saturating_add(1));
            release_some(txn, webhook, from, u128::MAX, true, budget, now_ms)?
        };
        moved += n;
        more |= n == budget as u64;
    }
    record_sweep(txn, webhook, more.then_some(discard.unwrap_or(0)))?;
    Ok((moved, more))
}

/// Writes the webhook's `held_sweeps` entry (`Some(discard_through)`, 0 for none: work is
/// left) or removes it (`None`: the sweep is over).
fn record_sweep(txn: &Txn<'_>, webhook: WebhookId, left: Option<u128>) -> Result<(), StoreError> {
    let mut sweeps = txn.open_table(HELD_SWEEPS)?;
    match left {
        Some(discard) => sweeps.insert(webhook.0, discard)?,
        None => sweeps.remove(webhook.0)?,
    };
    Ok(())
}

/// One chunk (at most [`HELD_CHUNK`]) of a deleted webhook's sweep: its unfinished
/// deliveries (due ones, then held ones) are cancelled; their log stays. Writes (or removes)
/// its `held_sweeps` entry. Returns the deliveries moved and whether more may be left.
pub(super) fn sweep_deleted(
    txn: &Txn<'_>,
    webhook: WebhookId,
    now_ms: u64,
) -> Result<(u64, bool), StoreError> {
    let entries: Vec<(u64, DeliveryId)> = txn
        .open_table(WEBHOOK_DUE)?
        .range((webhook.0, 0, 0)..=(webhook.0, u64::MAX, u128::MAX))?
        .take(HELD_CHUNK)
        .map(|row| row.map(|(k, _)| (k.value().1, DeliveryId(k.value().2))))
        .collect::<Result<_, _>>()?;
    let mut table = txn.open_table(DELIVERIES)?;
    for &(due, id) in &entries {
        move_index_entry(txn, webhook, id, Some(due), None)?;
        let Some(mut delivery) = load_delivery(&table, id)? else {
            continue;
        };
        if delivery.status.is_final() || delivery.next_attempt_at_ms != Some(due) {
            continue;
        }
        let before = delivery.clone();
        delivery.status = DeliveryStatus::Cancelled;
        delivery.next_attempt_at_ms = None;
        delivery.updated_at_ms = now_ms;
        put_delivery(txn, &mut table, Some(&before), &delivery)?;
    }
    drop(table);
    let mut moved = entries.len() as u64;
    let budget = HELD_CHUNK - entries.len();
    if budget > 0 {
        moved += release_some(txn, webhook, 0, u128::MAX, false, budget, now_ms)?;
    }
    let more = moved == HELD_CHUNK as u64;
    record_sweep(txn, webhook, more.then_some(0))?;
    Ok((moved, more))
}

/// Holds at most `limit` unfinished deliveries of `webhook` (its per-webhook due index, in
/// due order); returns how many entries it took.
fn hold_some(
    txn: &Txn<'_>,
    webhook: WebhookId,
    limit: usize,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let entries: Vec<(u64, DeliveryId)> = txn
        .open_table(WEBHOOK_DUE)?
        .range((webhook.0, 0, 0)..=(webhook.0, u64::MAX, u128::MAX))?
        .take(limit)
        .map(|row| row.map(|(k, _)| (k.value().1, DeliveryId(k.value().2))))
        .collect::<Result<_, _>>()?;
    let mut table = txn.open_table(DELIVERIES)?;
    for &(due, id) in &entries {
        match load_delivery(&table, id)? {
            Some(delivery) if delivery.next_attempt_at_ms == Some(due) => {
                if !hold(txn, &mut table, delivery, now_ms)? {
                    // Final or held with a due entry (check reports it): the entry goes,
                    // or it would be taken again and again.
                    move_index_entry(txn, webhook, id, Some(due), None)?;
                }
            }
            // An entry that names no such due delivery would be taken again and again:
            // it goes (check reports such entries).
            _ => move_index_entry(txn, webhook, id, Some(due), None)?,
        }
    }
    Ok(entries.len() as u64)
}

/// Releases (back into the retry index at the due time each kept: `deliver`) or cancels at
/// most `limit` held deliveries of `webhook` whose ids lie in `from..=through`; returns how
/// many entries it took.
fn release_some(
    txn: &Txn<'_>,
    webhook: WebhookId,
    from: u128,
    through: u128,
    deliver: bool,
    limit: usize,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let entries: Vec<(DeliveryId, u64)> = txn
        .open_table(HELD)?
        .range((webhook.0, from)..=(webhook.0, through))?
        .take(limit)
        .map(|row| row.map(|(k, v)| (DeliveryId(k.value().1), v.value())))
        .collect::<Result<_, _>>()?;
    let mut table = txn.open_table(DELIVERIES)?;
    for &(id, due) in &entries {
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
    }
    Ok(entries.len() as u64)
}

#[cfg(test)]
mod tests {
    use crate::ids::WebhookId;
    use crate::model::{DeliveryStatus, DisableReason, Disabled, EventFilter, Secret, Webhook};
    use crate::store::{FileStore, Lifecycle, HELD_CHUNK};

    fn webhook(now: u64) -> Webhook {
        Webhook {
            id: WebhookId::generate(),
            organization_id: "org".into(),
            url: "https://example.com/hook".into(),
            events: EventFilter::All,
            secret: Secret("a_secret_of_at_least_thirty_two_chars".into()),
            previous_secret: None,
            disabled: None,
            failing_since_ms: None,
            active: true,
            description: String::new(),
            options: Default::default(),
            created_at_ms: now,
            updated_at_ms: now,
        }
    }

    /// `n` pending deliveries to `webhook`, due at `now` (events `{tag}{i}`).
    fn load(store: &FileStore, webhook: WebhookId, tag: &str, n: usize, now: u64) {
        let data = serde_json::value::RawValue::from_string(
            r#"{"ticket_id":"T","title":"t","priority":"p3","project_id":"p","created_by":"u"}"#
                .to_owned(),
        )
        .unwrap();
        let events = (0..n)
            .map(|i| {
                crate::event::prepare(
                    crate::event::EventInput {
                        event_id: Some(format!("{tag}{i}")),
                        event_type: "ticket.created".into(),
                        timestamp: None,
                        organization_id: "org".into(),
                        data: &data,
                    },
                    now,
                    false,
                )
                .unwrap()
            })
            .collect();
        store.bulk_load(events, webhook, now, now).unwrap();
    }

    fn gone(now: u64) -> Lifecycle {
        Lifecycle::Disable(Disabled {
            reason: DisableReason::Gone,
            at_ms: now,
            delivery_id: None,
            status_code: Some(410),
            failing_since_ms: None,
            last_error: None,
        })
    }

    /// Sweep steps until none is left; returns how many steps moved something.
    fn sweep(store: &FileStore, now: u64) -> usize {
        let mut steps = 0;
        loop {
            let report = store.sweep_held(4, now).unwrap();
            if report.moved > 0 {
                steps += 1;
            }
            if !report.more {
                return steps;
            }
        }
    }

    fn count(store: &FileStore, status: DeliveryStatus, now: u64) -> u64 {
        let summary = store.status_summary(now).unwrap();
        let i = DeliveryStatus::ALL
            .iter()
            .position(|s| *s == status)
            .unwrap();
        summary.by_status[i]
    }

    fn assert_checks(store: &FileStore) {
        let report = store.check().unwrap();
        assert!(report.is_ok(), "{:?}", report.violations);
    }

    #[test]
    fn changes_move_one_chunk_and_the_sweep_the_rest_and_a_discard_takes_only_what_was_held() {
        let store = FileStore::open_in_memory().unwrap();
        let now = crate::clock::now_ms();
        let hook = webhook(now);
        store.create_webhook(&hook).unwrap();
        let n = HELD_CHUNK * 4 + 10;
        load(&store, hook.id, "a", n, now);

        // The disable holds one chunk; the sweep holds the rest, a chunk per step.
        let outcome = store
            .set_webhook_lifecycle(hook.id, gone(now), now)
            .unwrap()
            .unwrap();
        assert!(outcome.changed);
        assert_eq!(
            outcome.deliveries, n as u64,
            "counts every delivery concerned"
        );
        assert_eq!(store.held_count(hook.id).unwrap(), HELD_CHUNK as u64);
        assert_checks(&store);
        assert!(sweep(&store, now) >= 4);
        assert_eq!(store.held_count(hook.id).unwrap(), n as u64);
        assert_eq!(count(&store, DeliveryStatus::Pending, now), 0);
        assert_checks(&store);

        // A discarding enable names what is held now; a new disable before its sweep ends
        // holds new deliveries, which the discard does not take.
        let outcome = store
            .set_webhook_lifecycle(
                hook.id,
                Lifecycle::Enable {
                    deliver_held: false,
                },
                now,
            )
            .unwrap()
            .unwrap();
        assert_eq!(outcome.deliveries, n as u64);
        assert_eq!(
            count(&store, DeliveryStatus::Cancelled, now),
            HELD_CHUNK as u64
        );
        assert_checks(&store);
        store
            .set_webhook_lifecycle(hook.id, gone(now), now)
            .unwrap()
            .unwrap();
        load(&store, hook.id, "b", 300, now);
        sweep(&store, now);
        assert_eq!(count(&store, DeliveryStatus::Cancelled, now), n as u64);
        assert_eq!(store.held_count(hook.id).unwrap(), 300);
        assert_checks(&store);

        // Delivering enable: every held delivery back in the retry index, in steps.
        store
            .set_webhook_lifecycle(hook.id, Lifecycle::Enable { deliver_held: true }, now)
            .unwrap()
            .unwrap();
        assert_eq!(store.held_count(hook.id).unwrap(), 300 - HELD_CHUNK as u64);
        assert_checks(&store);
        sweep(&store, now);
        assert_eq!(store.held_count(hook.id).unwrap(), 0);
        assert_eq!(count(&store, DeliveryStatus::Pending, now), 300);
        assert_eq!(store.sweep_held(4, now).unwrap(), Default::default());
        assert_checks(&store);
    }

    #[test]
    fn hold_chunks_finish_a_disable_so_a_discard_takes_every_delivery_it_concerned() {
        let store = FileStore::open_in_memory().unwrap();
        let now = crate::clock::now_ms();
        let hook = webhook(now);
        store.create_webhook(&hook).unwrap();
        let n = HELD_CHUNK * 3 + 7;
        load(&store, hook.id, "a", n, now);
        store
            .set_webhook_lifecycle(hook.id, gone(now), now)
            .unwrap()
            .unwrap();
        assert_eq!(store.held_count(hook.id).unwrap(), HELD_CHUNK as u64);
        // What an enable that discards does first (the runner has not swept yet).
        let mut chunks = 0;
        while store.hold_chunk(hook.id, now).unwrap() {
            chunks += 1;
        }
        assert!(chunks >= 2, "{chunks}");
        assert_eq!(store.held_count(hook.id).unwrap(), n as u64);
        store
            .set_webhook_lifecycle(
                hook.id,
                Lifecycle::Enable {
                    deliver_held: false,
                },
                now,
            )
            .unwrap()
            .unwrap();
        sweep(&store, now);
        assert_eq!(count(&store, DeliveryStatus::Cancelled, now), n as u64);
        assert_eq!(count(&store, DeliveryStatus::Pending, now), 0);
        // Enabled: nothing to hold.
        assert!(!store.hold_chunk(hook.id, now).unwrap());
        assert_checks(&store);
    }

    #[test]
    fn deleting_a_webhook_cancels_its_backlog_a_chunk_at_a_time() {
        let store = FileStore::open_in_memory().unwrap();
        let now = crate::clock::now_ms();
        let hook = webhook(now);
        store.create_webhook(&hook).unwrap();
        load(&store, hook.id, "a", HELD_CHUNK * 2, now);
        // Disabled, part held by the change, the rest still due: the deletion takes both.
        store
            .set_webhook_lifecycle(hook.id, gone(now), now)
            .unwrap()
            .unwrap();
        load(&store, hook.id, "b", 100, now);
        let concerned = store.delete_webhook(hook.id, now).unwrap().unwrap();
        assert_eq!(concerned, (HELD_CHUNK * 2 + 100) as u64);
        assert_eq!(
            count(&store, DeliveryStatus::Cancelled, now),
            HELD_CHUNK as u64
        );
        assert_checks(&store);
        assert!(sweep(&store, now) >= 1);
        assert_eq!(store.sweep_held(4, now).unwrap(), Default::default());
        assert_eq!(count(&store, DeliveryStatus::Cancelled, now), concerned);
        assert_eq!(count(&store, DeliveryStatus::Held, now), 0);
        assert_eq!(count(&store, DeliveryStatus::Pending, now), 0);
        assert_checks(&store);
    }
}
