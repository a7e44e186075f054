//! PostgreSQL: the ordering reads (issue 16), over the partial index `deliveries_ordering`
//! `(webhook_id, ordering_key, event_key, id)` of unfinished deliveries with a key
//! (migration V9). The index follows each delivery's status by itself, so no write has
//! anything to keep.

use super::{rows, PgStore};
use crate::ids::WebhookId;
use crate::model::Delivery;
use crate::store::StoreError;

const UNFINISHED: &str = "ordering_key IS NOT NULL AND status IN ('pending', 'retrying', 'held')";

impl PgStore {
    /// See [`crate::store::Store::ordering_blocker`].
    pub fn ordering_blocker(&self, delivery: &Delivery) -> Result<Option<Delivery>, StoreError> {
        let Some(key) = delivery.ordering_key.as_deref() else {
            return Ok(None);
        };
        self.first_unfinished(
            delivery.webhook_id,
            key,
            Some((delivery.event_key.to_string(), delivery.id.to_string())),
        )
    }

    /// See [`crate::store::Store::ordering_head`].
    pub fn ordering_head(
        &self,
        webhook: WebhookId,
        key: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        self.first_unfinished(webhook, key, None)
    }

    /// The first unfinished delivery of `webhook` with `key` in ingest order, before
    /// `before` (event key, id) when given.
    fn first_unfinished(
        &self,
        webhook: WebhookId,
        key: &str,
        before: Option<(String, String)>,
    ) -> Result<Option<Delivery>, StoreError> {
        let (webhook, key) = (webhook.to_string(), key.to_owned());
        let store = self.clone();
        self.block(async move {
            let conn = store.conn().await?;
            // Without a bound, the greatest possible key: every row is before it.
            let (event_key, id) = before.unwrap_or_else(|| ("~".to_owned(), "~".to_owned()));
            conn.query_opt(
                &format!(
                    "SELECT {} FROM deliveries WHERE webhook_id = $1 AND ordering_key = $2 \
                     AND {UNFINISHED} AND (event_key, id) < ($3, $4) \
                     ORDER BY event_key, id LIMIT 1",
                    rows::DELIVERY_COLS
                ),
                &[&webhook, &key, &event_key, &id],
            )
            .await?
            .map(|row| rows::delivery(&row))
            .transpose()
        })
    }
}
