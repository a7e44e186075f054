//! What `palo-webhooks status` shows about the store (issue 7, item 6): deliveries by
//! status and the webhooks whose latest deliveries keep failing.

use redb::ReadableTable;

use super::deliveries::load_delivery;
use super::{FileStore, StoreError, DELIVERIES, WEBHOOKS, WEBHOOK_DELIVERIES};
use crate::ids::WebhookId;
use crate::model::DeliveryStatus;

/// Longest failure streak counted per webhook (the walk stops there).
pub const MAX_STREAK: u64 = 1000;

/// A webhook whose newest deliveries did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureStreak {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// Its organization.
    pub organization_id: String,
    /// Its URL.
    pub url: String,
    /// Newest deliveries in a row that are `failed` or `retrying` (at most [`MAX_STREAK`]).
    pub streak: u64,
}

/// Counts of [`FileStore::status_summary`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSummary {
    /// Deliveries by status, in [`DeliveryStatus::ALL`] order.
    pub by_status: [u64; DeliveryStatus::ALL.len()],
    /// Deliveries due at or before `now_ms`, due later, and the oldest due time if past
    /// (as [`FileStore::due_summary`]), from the same snapshot.
    pub due: (u64, u64, Option<u64>),
    /// Webhooks with a streak of at least one, longest first.
    pub streaks: Vec<FailureStreak>,
}

impl FileStore {
    /// See [`Store::status_summary`](crate::store::Store::status_summary).
    pub fn status_summary(&self, now_ms: u64) -> Result<StatusSummary, StoreError> {
        self.read(|txn| {
            let deliveries = txn.open_table(DELIVERIES)?;
            let mut summary = StatusSummary {
                due: super::due::due_in(txn, now_ms)?,
                ..StatusSummary::default()
            };
            for row in deliveries.iter()? {
                let (id, _) = row?;
                if let Some(d) = load_delivery(&deliveries, crate::ids::DeliveryId(id.value()))? {
                    let i = DeliveryStatus::ALL
                        .iter()
                        .position(|s| *s == d.status)
                        .unwrap_or(0);
                    summary.by_status[i] += 1;
                }
            }
            let index = txn.open_table(WEBHOOK_DELIVERIES)?;
            let webhooks = txn.open_table(WEBHOOKS)?;
            for row in webhooks.iter()? {
                let (id, _) = row?;
                let id = WebhookId(id.value());
                let Some(webhook) = super::get_webhook(&webhooks, id, None)? else {
                    continue;
                };
                let mut streak = 0;
                for row in index.range((id.0, 0)..=(id.0, u128::MAX))?.rev() {
                    let delivery = crate::ids::DeliveryId(row?.0.value().1);
                    let Some(d) = load_delivery(&deliveries, delivery)? else {
                        continue;
                    };
                    match d.status {
                        DeliveryStatus::Failed | DeliveryStatus::Retrying => streak += 1,
                        // Not yet attempted: says nothing either way.
                        DeliveryStatus::Pending | DeliveryStatus::Held => continue,
                        DeliveryStatus::Succeeded | DeliveryStatus::Cancelled => break,
                    }
                    if streak == MAX_STREAK {
                        break;
                    }
                }
                if streak > 0 {
                    summary.streaks.push(FailureStreak {
                        webhook_id: id,
                        organization_id: webhook.organization_id,
                        url: webhook.url,
                        streak,
                    });
                }
            }
            summary.streaks.sort_by_key(|s| std::cmp::Reverse(s.streak));
            Ok(summary)
        })
    }
}
