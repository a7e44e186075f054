//! Events, deliveries and attempts on PostgreSQL: ingest and attempt results (through the
//! group-commit [`super::writer`]), the delivery log's reads, webhook deletion.

use std::sync::Arc;

use super::writer::{Input, Output};
use super::{rows, PgStore};
use crate::event::{EventType, PreparedEvent};
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, Delivery, DeliveryStatus, Event};
use crate::retry::RetrySchedule;
use crate::store::{
    AcceptOutcome, Change, DeliveryForAttempt, EventQuery, FanOut, StoreError, WebhookActivity,
};

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

impl PgStore {
    /// See [`crate::store::Store::accept_event`].
    pub async fn accept_event(
        &self,
        prepared: PreparedEvent,
        fan_out: FanOut,
        now_ms: u64,
        first_due_ms: u64,
    ) -> Result<AcceptOutcome, StoreError> {
        let input = Input::Accept {
            prepared,
            fan_out,
            now_ms,
            first_due_ms,
        };
        match self.inner.writer.write(input).await? {
            Output::Accept(outcome) => Ok(outcome),
            Output::Attempt(_) => Err(StoreError::Interrupted),
        }
    }

    /// See [`crate::store::Store::record_attempt`].
    pub async fn record_attempt(
        &self,
        id: DeliveryId,
        attempt: Attempt,
        schedule: RetrySchedule,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        let input = Input::Attempt {
            id,
            attempt,
            schedule,
            now_ms,
        };
        match self.inner.writer.write(input).await? {
            Output::Attempt(delivery) => Ok(delivery),
            Output::Accept(_) => Err(StoreError::Interrupted),
        }
    }

    /// Runs a query built at run time (optional filters) and maps its rows with `map`.
    pub(super) fn query_built<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<Param>,
        map: fn(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref() as _).collect();
            let rows = store.conn().await?.query(&sql, &refs).await?;
            rows.iter().map(map).collect()
        })
    }

    /// See [`crate::store::Store::get_event`].
    pub fn get_event(
        &self,
        organization_id: &str,
        event_id: &str,
    ) -> Result<Option<Event>, StoreError> {
        let store = self.clone();
        let (org, id) = (organization_id.to_owned(), event_id.to_owned());
        self.block(async move {
            let row = store
                .conn()
                .await?
                .query_opt(
                    &format!(
                        "SELECT {} FROM events WHERE event_id = $1 AND organization_id = $2",
                        rows::EVENT_COLS
                    ),
                    &[&id, &org],
                )
                .await?;
            row.map(|r| rows::event(&r)).transpose()
        })
    }

    /// See [`crate::store::Store::organizations_with_event_id`].
    pub fn organizations_with_event_id(&self, event_id: &str) -> Result<Vec<String>, StoreError> {
        let store = self.clone();
        let id = event_id.to_owned();
        self.block(async move {
            let rows = store
                .conn()
                .await?
                .query(
                    "SELECT organization_id FROM events WHERE event_id = $1 \
                     ORDER BY organization_id",
                    &[&id],
                )
                .await?;
            rows.iter()
                .map(|r| r.try_get(0).map_err(StoreError::from))
                .collect()
        })
    }

    /// See [`crate::store::Store::list_events`].
    pub fn list_events(
        &self,
        query: &EventQuery,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let Some((low, high)) = query.key_range(before) else {
            return Ok(Vec::new());
        };
        let mut sql = format!(
            "SELECT {} FROM events WHERE key >= $1 AND key <= $2",
            rows::EVENT_COLS
        );
        let mut params: Vec<Param> = vec![
            Box::new(rows::event_key(EventKey(low))),
            Box::new(rows::event_key(EventKey(high))),
        ];
        if let Some(org) = &query.organization_id {
            params.push(Box::new(org.clone()));
            sql.push_str(&format!(" AND organization_id = ${}", params.len()));
        }
        if let Some(t) = query.event_type {
            params.push(Box::new(t.as_str()));
            sql.push_str(&format!(" AND event_type = ${}", params.len()));
        }
        if let Some(s) = query.delivery_status {
            params.push(Box::new(s.as_str()));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_key = events.key \
                 AND d.status = ${})",
                params.len()
            ));
        }
        params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY key DESC LIMIT ${}", params.len()));
        self.query_built(sql, params, rows::event)
    }

    /// See [`crate::store::Store::get_deliveries`].
    pub fn get_deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<Delivery>, StoreError> {
        let store = self.clone();
        let ids = ids.to_vec();
        self.block(async move {
            let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let rows = store
                .conn()
                .await?
                .query(
                    &format!(
                        "SELECT {} FROM deliveries WHERE id = ANY($1)",
                        rows::DELIVERY_COLS
                    ),
                    &[&texts],
                )
                .await?;
            let mut found: std::collections::HashMap<DeliveryId, Delivery> = rows
                .iter()
                .map(|r| rows::delivery(r).map(|d| (d.id, d)))
                .collect::<Result<_, _>>()?;
            Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
        })
    }

    /// See [`crate::store::Store::get_delivery_with_attempts`].
    pub fn get_delivery_with_attempts(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let mut conn = store.conn().await?;
            let txn = super::admin::snapshot(&mut conn).await?;
            let Some(row) = txn
                .query_opt(
                    &format!(
                        "SELECT {} FROM deliveries WHERE id = $1",
                        rows::DELIVERY_COLS
                    ),
                    &[&id.to_string()],
                )
                .await?
            else {
                return Ok(None);
            };
            let delivery = rows::delivery(&row)?;
            let attempts = txn
                .query(
                    &format!(
                        "SELECT {} FROM attempts WHERE delivery_id = $1 ORDER BY number",
                        rows::ATTEMPT_COLS
                    ),
                    &[&id.to_string()],
                )
                .await?
                .iter()
                .map(|r| rows::attempt(r).map(|(_, a)| a))
                .collect::<Result<_, _>>()?;
            Ok(Some((delivery, attempts)))
        })
    }

    /// See [`crate::store::Store::list_webhook_deliveries`].
    pub fn list_webhook_deliveries(
        &self,
        webhook_id: WebhookId,
        status: Option<DeliveryStatus>,
        event_type: Option<EventType>,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let high = before.map_or(u128::MAX, |id| id.0.saturating_sub(1));
        let mut sql = format!(
            "SELECT {} FROM deliveries WHERE webhook_id = $1 AND id <= $2",
            rows::DELIVERY_COLS
        );
        let mut params: Vec<Param> = vec![
            Box::new(webhook_id.to_string()),
            Box::new(DeliveryId(high).to_string()),
        ];
        if let Some(s) = status {
            params.push(Box::new(s.as_str()));
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        if let Some(t) = event_type {
            params.push(Box::new(t.as_str()));
            sql.push_str(&format!(" AND event_type = ${}", params.len()));
        }
        params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        self.query_built(sql, params, rows::delivery)
    }

    /// See [`crate::store::Store::webhook_activity`].
    pub fn webhook_activity(
        &self,
        webhook_id: WebhookId,
        since_ms: u64,
        cap: usize,
    ) -> Result<WebhookActivity, StoreError> {
        let store = self.clone();
        self.block(async move {
            let mut conn = store.conn().await?;
            let txn = super::admin::snapshot(&mut conn).await?;
            let webhook = webhook_id.to_string();
            let last = txn
                .query_opt(
                    &format!(
                        "SELECT {} FROM deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT 1",
                        rows::DELIVERY_COLS
                    ),
                    &[&webhook],
                )
                .await?
                .map(|r| rows::delivery(&r))
                .transpose()?;
            // A delivery id is a ULID whose top 48 bits are its creation time in ms.
            let low = DeliveryId(u128::from(since_ms) << 80).to_string();
            let fetch = i64::try_from(cap).unwrap_or(i64::MAX - 1) + 1;
            let mut deliveries: Vec<Delivery> = txn
                .query(
                    &format!(
                        "SELECT {} FROM deliveries WHERE webhook_id = $1 AND id >= $2 \
                         AND created_at_ms >= $3 ORDER BY id DESC LIMIT $4",
                        rows::DELIVERY_COLS
                    ),
                    &[&webhook, &low, &rows::ms(since_ms), &fetch],
                )
                .await?
                .iter()
                .map(rows::delivery)
                .collect::<Result<_, _>>()?;
            let truncated = deliveries.len() > cap;
            deliveries.truncate(cap);
            let ids: Vec<String> = deliveries.iter().map(|d| d.id.to_string()).collect();
            let attempts = txn
                .query(
                    &format!(
                        "SELECT {} FROM attempts WHERE delivery_id = ANY($1)",
                        rows::ATTEMPT_COLS
                    ),
                    &[&ids],
                )
                .await?
                .iter()
                .map(|r| rows::attempt(r).map(|(_, a)| a))
                .collect::<Result<_, _>>()?;
            Ok(WebhookActivity {
                deliveries,
                attempts,
                last,
                truncated,
            })
        })
    }

    /// See [`crate::store::Store::delivery_for_attempt`].
    pub fn delivery_for_attempt(
        &self,
        id: DeliveryId,
        body_known: impl FnOnce(EventKey) -> bool,
    ) -> Result<Option<DeliveryForAttempt>, StoreError> {
        let Some(delivery) = self.get_deliveries(&[id])?.pop() else {
            return Ok(None);
        };
        if body_known(delivery.event_key) {
            return Ok(Some((delivery, None)));
        }
        let store = self.clone();
        let key = delivery.event_key.to_string();
        let body: Option<Vec<u8>> = self.block(async move {
            let row = store
                .conn()
                .await?
                .query_opt("SELECT body FROM events WHERE key = $1", &[&key])
                .await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })?;
        match body {
            Some(body) => Ok(Some((delivery, Some(body)))),
            None => Err(StoreError::Corrupt {
                table: "events",
                reason: format!("missing event of {id}"),
            }),
        }
    }

    /// See [`crate::store::Store::delete_webhook`].
    /// See [`crate::store::Store::delete_webhook`].
    pub fn delete_webhook(&self, id: WebhookId, now_ms: u64) -> Result<Option<u64>, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let webhook = id.to_string();
                        let gone = txn
                            .execute("DELETE FROM webhooks WHERE id = $1", &[&webhook])
                            .await?;
                        if gone == 0 {
                            return Ok((None, Vec::new()));
                        }
                        txn.execute(
                            "DELETE FROM webhook_leases WHERE webhook_id = $1",
                            &[&webhook],
                        )
                        .await?;
                        let concerned: i64 = txn
                            .query_one(
                                "SELECT count(*) FROM deliveries WHERE webhook_id = $1 \
                                 AND (next_attempt_at_ms IS NOT NULL OR held_due_ms IS NOT NULL)",
                                &[&webhook],
                            )
                            .await?
                            .try_get(0)?;
                        let mut changes = vec![Change::Webhook { id, webhook: None }];
                        // The first chunk here, the rest by the sweep.
                        super::lifecycle::sweep_deleted(txn, id, now_ms, &mut changes).await?;
                        Ok((Some(u64::try_from(concerned).unwrap_or(0)), changes))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::bulk_load`].
    pub fn bulk_load(
        &self,
        events: Vec<PreparedEvent>,
        webhook: WebhookId,
        now_ms: u64,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        self.block(async move {
            let built: Vec<_> = events
                .iter()
                .map(|p| crate::store::new_event(p, &[(webhook, false)], now_ms, due_ms))
                .collect();
            let built = Arc::new(built);
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        for chunk in built.chunks(1000) {
                            super::writer::insert_events(txn, chunk).await?;
                            super::writer::insert_deliveries(
                                txn,
                                chunk.iter().flat_map(|(_, d)| d),
                            )
                            .await?;
                        }
                        let changes = built
                            .iter()
                            .flat_map(|(_, ds)| ds)
                            .map(|d| Change::Index {
                                webhook: d.webhook_id,
                                delivery: d.id,
                                from: None,
                                to: d.next_attempt_at_ms,
                            })
                            .collect();
                        Ok(((), changes))
                    })
                })
                .await
        })
    }
}

/// One batch of [`PgStore::import`]: rows copied from another store, as stored there.
#[derive(Debug, Default)]
pub struct ImportBatch {
    /// Webhooks, secrets as stored (sealed text stays sealed).
    pub webhooks: Vec<crate::model::Webhook>,
    /// API keys (hashes only).
    pub api_keys: Vec<crate::model::ApiKey>,
    /// Events with their deliveries.
    pub events: Vec<(Event, Vec<Delivery>)>,
    /// Attempts, by delivery.
    pub attempts: Vec<(DeliveryId, Attempt)>,
}

impl PgStore {
    /// The keys among `keys` whose events are stored already (with their deliveries and
    /// attempts, which an import writes in the same transaction).
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn existing_events(&self, keys: &[EventKey]) -> Result<Vec<EventKey>, StoreError> {
        let store = self.clone();
        let texts: Vec<String> = keys.iter().map(ToString::to_string).collect();
        self.block(async move {
            let rows = store
                .conn()
                .await?
                .query("SELECT key FROM events WHERE key = ANY($1)", &[&texts])
                .await?;
            rows.iter()
                .map(|r| {
                    r.try_get::<_, &str>(0)?
                        .parse()
                        .map_err(|_| StoreError::Corrupt {
                            table: "events",
                            reason: "bad key".into(),
                        })
                })
                .collect()
        })
    }

    /// Writes `batch` in one transaction, skipping rows whose ids exist (so an interrupted
    /// copy is resumed by running it again). For `palo-webhooks migrate`.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; nothing of the batch is written then.
    pub fn import(&self, batch: ImportBatch) -> Result<(), StoreError> {
        let store = self.clone();
        self.block(async move {
            let mut conn = store.conn().await?;
            let txn = conn.transaction().await?;
            for w in &batch.webhooks {
                txn.execute(
                    "INSERT INTO webhooks (id, organization_id, url, event_types, secret, \
                     previous_secret, previous_expires_at_ms, active, description, \
                     created_at_ms, updated_at_ms, disabled, failing_since_ms, options) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &w.id.to_string(),
                        &w.organization_id,
                        &w.url,
                        &rows::event_types(&w.events),
                        &w.secret.0,
                        &w.previous_secret.as_ref().map(|p| p.secret.0.clone()),
                        &w.previous_secret
                            .as_ref()
                            .map(|p| rows::ms(p.expires_at_ms)),
                        &w.active,
                        &w.description,
                        &rows::ms(w.created_at_ms),
                        &rows::ms(w.updated_at_ms),
                        &rows::disabled_json(w.disabled.as_ref()),
                        &w.failing_since_ms.map(rows::ms),
                        // As stored: credentials sealed by the file store stay sealed.
                        &crate::store::options::encode(&w.options, w.id, None),
                    ],
                )
                .await?;
            }
            for k in &batch.api_keys {
                txn.execute(
                    "INSERT INTO api_keys (id, organization_id, description, created_at_ms, \
                     key_hash) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &k.id.to_string(),
                        &k.organization_id,
                        &k.description,
                        &rows::ms(k.created_at_ms),
                        &k.key_hash.as_slice(),
                    ],
                )
                .await?;
            }
            if !batch.events.is_empty() {
                super::writer::insert_events(&txn, &batch.events).await?;
                super::writer::insert_deliveries(&txn, batch.events.iter().flat_map(|(_, d)| d))
                    .await?;
            }
            if !batch.attempts.is_empty() {
                let logged: Vec<(DeliveryId, &Attempt)> =
                    batch.attempts.iter().map(|(d, a)| (*d, a)).collect();
                super::writer::insert_attempts(&txn, &logged).await?;
            }
            // Daemons running on the target hear of the new webhooks and keys; the due
            // entries reach their owners with the periodic resync.
            let mut changes: Vec<Change> = batch
                .webhooks
                .iter()
                .map(|w| Change::Webhook {
                    id: w.id,
                    webhook: None,
                })
                .collect();
            if !batch.api_keys.is_empty() {
                changes.push(Change::Keys);
            }
            super::cluster::notify_changes(&txn, store.shared(), &changes).await?;
            txn.commit().await?;
            Ok(())
        })
    }
}
