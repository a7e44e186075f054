//! PgStore operations on a webhook's lifecycle (issue 15): disabling holds its unfinished
//! deliveries (`status = 'held'`, `next_attempt_at_ms` moved to `held_due_ms`, so they leave
//! the retry index and keep their due order), enabling releases or cancels them.
//!
//! Invariant (checked by `check`): `held_due_ms` is set exactly when the status is `held`,
//! and then `next_attempt_at_ms` is `NULL`.

use std::sync::Arc;

use super::{lock_webhook, rows, write_webhook, PgStore};
use crate::ids::{DeliveryId, WebhookId};
use crate::store::{Change, Lifecycle, LifecycleMove, LifecycleOutcome, StoreError};

fn parse_delivery(text: &str) -> Result<DeliveryId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "deliveries",
        reason: format!("bad id {text:?}"),
    })
}

impl PgStore {
    /// See [`crate::store::Store::set_webhook_lifecycle`].
    pub fn set_webhook_lifecycle(
        &self,
        id: WebhookId,
        change: Lifecycle,
        now_ms: u64,
    ) -> Result<Option<LifecycleOutcome>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let key = store.secrets_key();
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(mut webhook) = lock_webhook(txn, id, key.as_deref()).await? else {
                            return Ok((None, Vec::new()));
                        };
                        let mut changes = Vec::new();
                        let mut deliveries = 0u64;
                        let step = crate::store::apply_lifecycle(&mut webhook, change, now_ms);
                        match step {
                            LifecycleMove::Unchanged | LifecycleMove::RecordOnly => {}
                            LifecycleMove::HoldAll => {
                                deliveries = hold_all(txn, id, now_ms, &mut changes).await?;
                            }
                            LifecycleMove::ReleaseAll(deliver) => {
                                deliveries =
                                    release_all(txn, id, deliver, now_ms, &mut changes).await?;
                            }
                        }
                        let changed = step != LifecycleMove::Unchanged;
                        if changed {
                            write_webhook(txn, &webhook, key.as_deref(), false).await?;
                            changes.push(Change::Webhook {
                                id,
                                webhook: Some(Arc::new(webhook.clone())),
                            });
                        }
                        Ok((
                            Some(LifecycleOutcome {
                                webhook,
                                changed,
                                deliveries,
                            }),
                            changes,
                        ))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::hold_delivery`].
    pub fn hold_delivery(&self, id: DeliveryId, now_ms: u64) -> Result<bool, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let row = txn
                            .query_opt(
                                "UPDATE deliveries d SET status = 'held', held_due_ms = o.due, \
                                 next_attempt_at_ms = NULL, updated_at_ms = $2 FROM (SELECT \
                                 id, webhook_id, next_attempt_at_ms AS due FROM deliveries \
                                 WHERE id = $1 AND next_attempt_at_ms IS NOT NULL FOR UPDATE) o \
                                 JOIN webhooks w ON w.id = o.webhook_id AND w.disabled IS NOT NULL \
                                 WHERE d.id = o.id RETURNING d.webhook_id, o.due",
                                &[&id.to_string(), &rows::ms(now_ms)],
                            )
                            .await?;
                        let Some(row) = row else {
                            return Ok((false, Vec::new()));
                        };
                        let webhook: WebhookId =
                            row.try_get::<_, &str>(0)?.parse().map_err(|_| {
                                StoreError::Corrupt {
                                    table: "deliveries",
                                    reason: "bad webhook id".into(),
                                }
                            })?;
                        let due: i64 = row.try_get(1)?;
                        Ok((
                            true,
                            vec![Change::Index {
                                webhook,
                                delivery: id,
                                from: Some(rows::from_ms(due)),
                                to: None,
                            }],
                        ))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::held_count`].
    pub fn held_count(&self, webhook: WebhookId) -> Result<u64, StoreError> {
        let store = self.clone();
        self.block(async move {
            let count: i64 = store
                .conn()
                .await?
                .query_one(
                    "SELECT count(*) FROM deliveries WHERE webhook_id = $1 \
                     AND held_due_ms IS NOT NULL",
                    &[&webhook.to_string()],
                )
                .await?
                .try_get(0)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }
}

/// Moves every unfinished delivery of `webhook` to the held index; returns how many.
async fn hold_all(
    txn: &deadpool_postgres::Transaction<'_>,
    webhook: WebhookId,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<u64, StoreError> {
    let held = txn
        .query(
            "UPDATE deliveries d SET status = 'held', held_due_ms = o.due, \
             next_attempt_at_ms = NULL, updated_at_ms = $2 FROM (SELECT id, \
             next_attempt_at_ms AS due FROM deliveries WHERE webhook_id = $1 \
             AND next_attempt_at_ms IS NOT NULL FOR UPDATE) o WHERE d.id = o.id \
             RETURNING d.id, o.due",
            &[&webhook.to_string(), &rows::ms(now_ms)],
        )
        .await?;
    for row in &held {
        let due: i64 = row.try_get(1)?;
        changes.push(Change::Index {
            webhook,
            delivery: parse_delivery(row.try_get(0)?)?,
            from: Some(rows::from_ms(due)),
            to: None,
        });
    }
    Ok(held.len() as u64)
}

/// Releases (back into the retry index at the due time each kept) or cancels every held
/// delivery of `webhook`; returns how many.
async fn release_all(
    txn: &deadpool_postgres::Transaction<'_>,
    webhook: WebhookId,
    deliver: bool,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<u64, StoreError> {
    let sql = if deliver {
        "UPDATE deliveries SET status = CASE WHEN scheduled_attempts = 0 THEN 'pending' \
         ELSE 'retrying' END, next_attempt_at_ms = held_due_ms, held_due_ms = NULL, \
         updated_at_ms = $2 WHERE webhook_id = $1 AND held_due_ms IS NOT NULL \
         RETURNING id, next_attempt_at_ms"
    } else {
        "UPDATE deliveries SET status = 'cancelled', held_due_ms = NULL, updated_at_ms = $2 \
         WHERE webhook_id = $1 AND held_due_ms IS NOT NULL RETURNING id, next_attempt_at_ms"
    };
    let released = txn
        .query(sql, &[&webhook.to_string(), &rows::ms(now_ms)])
        .await?;
    for row in &released {
        if let Some(due) = row.try_get::<_, Option<i64>>(1)? {
            changes.push(Change::Index {
                webhook,
                delivery: parse_delivery(row.try_get(0)?)?,
                from: None,
                to: Some(rows::from_ms(due)),
            });
        }
    }
    Ok(released.len() as u64)
}
