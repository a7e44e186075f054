//! Several daemons on one database (issue 14, item 3): what one daemon's commits tell the
//! others.
//!
//! Changes travel with `NOTIFY palo_changes` inside the committing transaction, so the
//! others hear of exactly what committed; retry-index changes of webhooks the committing
//! daemon serves itself are not sent (no other daemon needs them). A payload starts with
//! `n <daemon>` (a daemon skips its own), then one line per change: `i <webhook> <delivery>
//! <from|-> <to|->` for a retry-index entry that appeared, moved or went away, `w <webhook>`
//! for a webhook created, changed or deleted (they read it again), `k` when API keys
//! changed (they reload theirs), `p <event>` when an event's payload was deleted (they drop
//! its body from memory). Accepted bodies are not sent: a first attempt on another
//! daemon reads its body.

use crate::store::{Change, StoreError};

/// The channel every daemon of a cluster listens on.
pub const CHANNEL: &str = "palo_changes";

/// PostgreSQL's limit on a notification's payload is 8000 bytes; lines are packed below it.
const PAYLOAD_BYTES: usize = 7900;

/// One line per change others must hear of (see the module documentation).
pub(super) fn encode(changes: &[Change]) -> Vec<String> {
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    changes
        .iter()
        .filter_map(|change| match change {
            Change::Index {
                webhook,
                delivery,
                from,
                to,
            } => Some(format!(
                "i {webhook} {delivery} {} {}",
                time(*from),
                time(*to)
            )),
            Change::Webhook { id, .. } => Some(format!("w {id}")),
            Change::Keys => Some("k".to_owned()),
            Change::PayloadDeleted { event } => Some(format!("p {event}")),
            Change::Accepted { .. } => None,
        })
        .collect()
}

/// Sends `changes` to the other daemons within `txn` (delivered only if it commits).
///
/// # Errors
/// [`StoreError`] when the server refuses the notification; the transaction then fails.
pub(super) async fn notify_changes(
    txn: &deadpool_postgres::Transaction<'_>,
    shared: &super::Shared,
    changes: &[Change],
) -> Result<(), StoreError> {
    let header = format!("n {}", super::shared_node(shared));
    let mut payloads: Vec<String> = Vec::new();
    let lines = {
        let serving = shared
            .serving
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let theirs: Vec<Change> = changes
            .iter()
            .filter(|c| !matches!(c, Change::Index { webhook, .. } if serving.contains(webhook)))
            .cloned()
            .collect();
        encode(&theirs)
    };
    for line in lines {
        match payloads.last_mut() {
            Some(last) if last.len() + 1 + line.len() <= PAYLOAD_BYTES => {
                last.push('\n');
                last.push_str(&line);
            }
            _ => payloads.push(format!("{header}\n{line}")),
        }
    }
    if payloads.is_empty() {
        return Ok(());
    }
    txn.execute(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
        &[&CHANNEL, &payloads],
    )
    .await?;
    Ok(())
}

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{rows, PgStore};
use crate::ids::{DeliveryId, WebhookId};

/// A daemon that counts as live: its heartbeat is at most this old (10 s: a slow round trip does not make it look dead).
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// How long a lease operation may wait for the server (3 s): a renewal that cannot finish
/// in time fails, and the lease deadline stops new attempts.
const LEASE_OP_TIMEOUT: Duration = Duration::from_secs(3);

/// What one [`PgStore::cluster_tick`] saw, from one transaction.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Live daemons: (id, API address), by id.
    pub daemons: Vec<(String, String)>,
    /// Every webhook.
    pub webhooks: Vec<WebhookId>,
    /// Every lease: (webhook, owner, still valid by the database's clock).
    pub leases: Vec<(WebhookId, String, bool)>,
    /// The leases of this daemon renewed by the tick.
    pub renewed: Vec<WebhookId>,
    /// The instance token found under this daemon's id before the tick wrote its own: not
    /// its own means another process heartbeats under the same id.
    pub previous_instance: Option<String>,
}

fn webhook_id(text: &str) -> Result<WebhookId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "webhook_leases",
        reason: format!("bad webhook id {text:?}"),
    })
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PgStore {
    /// Joins the cluster as daemon `node` (reachable at `address`): registers it, sends this
    /// daemon's changes to the others from now on, and starts listening to theirs (their
    /// retry-index moves and webhook changes reach the subscriber; key changes reload the
    /// keys). Returns at once; the listener reconnects by itself.
    ///
    /// # Errors
    /// [`StoreError`] when the registration cannot be written.
    pub fn cluster_join(
        &self,
        node: &str,
        instance: &str,
        address: &str,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        let (node, address) = (node.to_owned(), address.to_owned());
        let (registered, instance) = (node.clone(), instance.to_owned());
        self.block(async move {
            store
                .conn()
                .await?
                .execute(
                    "INSERT INTO daemons (id, address, instance) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
                     heartbeat_at = now(), instance = excluded.instance",
                    &[&registered, &address, &instance],
                )
                .await?;
            Ok(())
        })?;
        *self
            .inner
            .shared
            .node
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = node.clone();
        if !self.inner.shared.listening.swap(true, Ordering::Relaxed) {
            let store = self.clone();
            self.inner.handle.spawn(async move { store.listen().await });
        }
        Ok(())
    }

    /// One heartbeat of daemon `node`, in one transaction: its own heartbeat, the renewal of
    /// its valid leases for `ttl` (by the database's clock), and the view it plans from.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be reached: the caller must stop starting
    /// attempts before its leases can expire.
    pub fn cluster_tick(
        &self,
        node: &str,
        instance: &str,
        ttl: Duration,
    ) -> Result<ClusterView, StoreError> {
        let store = self.clone();
        let (node, instance) = (node.to_owned(), instance.to_owned());
        self.block_within(LEASE_OP_TIMEOUT, async move {
            let mut conn = store.conn().await?;
            let txn = conn.transaction().await?;
            let previous_instance: Option<String> = txn
                .query_one(
                    "WITH prev AS (SELECT instance FROM daemons WHERE id = $1) \
                     INSERT INTO daemons (id, address, instance) VALUES ($1, '', $2) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), \
                     instance = excluded.instance RETURNING (SELECT instance FROM prev)",
                    &[&node, &instance],
                )
                .await?
                .try_get(0)?;
            let renewed = txn
                .query(
                    "UPDATE webhook_leases SET expires_at = now() + make_interval(secs => $2) \
                     WHERE owner = $1 AND expires_at > now() RETURNING webhook_id",
                    &[&node, &seconds(ttl)],
                )
                .await?
                .iter()
                .map(|r| webhook_id(r.try_get(0)?))
                .collect::<Result<_, _>>()?;
            let daemons = txn
                .query(
                    "SELECT id, address FROM daemons WHERE heartbeat_at > now() - \
                     make_interval(secs => $1) ORDER BY id",
                    &[&seconds(LIVE_WITHIN)],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, StoreError>>()?;
            let webhooks = txn
                .query("SELECT id FROM webhooks ORDER BY id", &[])
                .await?
                .iter()
                .map(|r| webhook_id(r.try_get(0)?))
                .collect::<Result<_, _>>()?;
            let leases = txn
                .query(
                    "SELECT webhook_id, owner, expires_at > now() FROM webhook_leases",
                    &[],
                )
                .await?
                .iter()
                .map(|r| Ok((webhook_id(r.try_get(0)?)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<_, StoreError>>()?;
            // Daemons silent for a minute are forgotten (their leases long expired).
            txn.execute(
                "DELETE FROM daemons WHERE heartbeat_at < now() - interval '60 seconds'",
                &[],
            )
            .await?;
            txn.commit().await?;
            Ok(ClusterView {
                daemons,
                webhooks,
                leases,
                renewed,
                previous_instance,
            })
        })
    }

    /// Takes the leases of `webhooks` for `ttl` where they are free, expired or already
    /// `node`'s; returns the ones taken.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be reached (nothing is taken then).
    pub fn cluster_claim(
        &self,
        node: &str,
        webhooks: &[WebhookId],
        ttl: Duration,
    ) -> Result<Vec<WebhookId>, StoreError> {
        let store = self.clone();
        let node = node.to_owned();
        let ids: Vec<String> = webhooks.iter().map(ToString::to_string).collect();
        self.block_within(LEASE_OP_TIMEOUT, async move {
            let rows = store
                .conn()
                .await?
                .query(
                    "INSERT INTO webhook_leases (webhook_id, owner, expires_at) \
                     SELECT w, $1, now() + make_interval(secs => $3) FROM unnest($2::text[]) AS w \
                     WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = w) \
                     ON CONFLICT (webhook_id) DO UPDATE SET owner = excluded.owner, \
                     expires_at = excluded.expires_at \
                     WHERE webhook_leases.owner = excluded.owner \
                     OR webhook_leases.expires_at < now() RETURNING webhook_id",
                    &[&node, &ids, &seconds(ttl)],
                )
                .await?;
            rows.iter().map(|r| webhook_id(r.try_get(0)?)).collect()
        })
    }

    /// Gives up `node`'s leases of `webhooks` (after its attempts to them ended), so their
    /// new owner may take them at once.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be reached (the leases then expire).
    pub fn cluster_release(&self, node: &str, webhooks: &[WebhookId]) -> Result<(), StoreError> {
        let store = self.clone();
        let node = node.to_owned();
        let ids: Vec<String> = webhooks.iter().map(ToString::to_string).collect();
        self.block(async move {
            store
                .conn()
                .await?
                .execute(
                    "DELETE FROM webhook_leases WHERE owner = $1 AND webhook_id = ANY($2)",
                    &[&node, &ids],
                )
                .await?;
            Ok(())
        })
    }

    /// Leaves the cluster at shutdown: every lease of `node` is given up and its
    /// registration removed, so the others take over at once rather than after the leases
    /// expire.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot be reached (the leases then expire).
    pub fn cluster_leave(&self, node: &str) -> Result<(), StoreError> {
        let store = self.clone();
        let node = node.to_owned();
        self.block(async move {
            let conn = store.conn().await?;
            conn.execute("DELETE FROM webhook_leases WHERE owner = $1", &[&node])
                .await?;
            conn.execute("DELETE FROM daemons WHERE id = $1", &[&node])
                .await?;
            Ok(())
        })
    }

    /// The earliest due entry of each of `webhooks` that has one (what a daemon seeds its
    /// queues with when it starts serving them).
    ///
    /// # Errors
    /// [`StoreError`] on read failure.
    pub fn due_heads_of(
        &self,
        webhooks: &[WebhookId],
    ) -> Result<Vec<(WebhookId, u64, DeliveryId)>, StoreError> {
        self.due_heads(Some(webhooks.to_vec()))
    }

    /// Listens to the other daemons' changes until the store closes, reconnecting after a
    /// lost connection (1 s apart).
    async fn listen(self) {
        loop {
            if let Err(e) = self.listen_once().await {
                tracing::warn!(error = %e, "lost the cluster's change notifications; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen_once(&self) -> Result<(), StoreError> {
        let (client, mut connection) = self.inner.config.connect(NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Notifications sent before LISTEN took effect are missed: webhooks and keys are read
        // again now, and the owner's periodic resync of its queues covers the due entries.
        self.refresh_all().await?;
        while let Some(payload) = rx.recv().await {
            self.apply_remote(&payload).await;
        }
        pump.abort();
        drop(client);
        Err(StoreError::Backend(
            "the notification connection closed".into(),
        ))
    }

    /// Reads every webhook and API key again (after the listener (re)connected): the
    /// webhooks reach the subscriber as changes, the keys replace the ones in memory.
    async fn refresh_all(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let key = self.secrets_key();
        let webhooks = conn
            .query(&format!("SELECT {} FROM webhooks", rows::WEBHOOK_COLS), &[])
            .await?
            .iter()
            .map(|r| rows::webhook(r, key.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        drop(conn);
        self.load_keys().await?;
        self.inner.shared.publish(
            webhooks
                .into_iter()
                .map(|w| Change::Webhook {
                    id: w.id,
                    webhook: Some(Arc::new(w)),
                })
                .collect(),
        );
        Ok(())
    }

    /// Turns another daemon's notification into changes for the subscriber.
    async fn apply_remote(&self, payload: &str) {
        let node = super::shared_node(&self.inner.shared);
        let mut lines = payload.lines();
        if lines.next() == Some(&format!("n {node}")[..]) {
            return; // Our own.
        }
        let mut changes = Vec::new();
        let mut webhooks = Vec::new();
        let mut keys = false;
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["i", webhook, delivery, from, to] => {
                    let time = |t: &str| t.parse::<u64>().ok();
                    if let (Ok(webhook), Ok(delivery)) = (webhook.parse(), delivery.parse()) {
                        changes.push(Change::Index {
                            webhook,
                            delivery,
                            from: time(from),
                            to: time(to),
                        });
                    }
                }
                ["w", id] => {
                    if let Ok(id) = id.parse::<WebhookId>() {
                        webhooks.push(id);
                    }
                }
                ["k"] => keys = true,
                ["p", event] => {
                    if let Ok(event) = event.parse() {
                        changes.push(Change::PayloadDeleted { event });
                    }
                }
                _ => {}
            }
        }
        for id in webhooks {
            match self.fetch_webhook(id).await {
                Ok(webhook) => changes.push(Change::Webhook {
                    id,
                    webhook: webhook.map(Arc::new),
                }),
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "could not read a webhook another daemon changed")
                }
            }
        }
        if keys {
            if let Err(e) = self.load_keys().await {
                tracing::warn!(error = %e, "could not reload the API keys another daemon changed");
            }
        }
        self.inner.shared.publish(changes);
    }

    /// Marks `webhooks` as served by this daemon (`serving`) or not: the retry-index changes
    /// of the ones it serves are not sent to the others, whose schedulers ignore them anyway
    /// (an attempt result on its own webhook then costs no notification).
    pub fn set_serving(&self, webhooks: &[WebhookId], serving: bool) {
        let mut set = self
            .inner
            .shared
            .serving
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in webhooks {
            if serving {
                set.insert(*w);
            } else {
                set.remove(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventKey;

    /// A deleted payload reaches the other daemons (issue 15), so each drops the body it
    /// holds; accepted bodies never travel.
    #[test]
    fn a_deleted_payload_is_one_line_of_the_notification() {
        let event = EventKey(42);
        let lines = encode(&[
            Change::PayloadDeleted { event },
            Change::Keys,
            Change::Accepted {
                event,
                body: bytes::Bytes::from_static(b"{}"),
                deliveries: Vec::new(),
            },
        ]);
        assert_eq!(lines, [format!("p {event}"), "k".to_owned()]);
        assert_eq!(
            lines[0]
                .strip_prefix("p ")
                .and_then(|k| k.parse::<EventKey>().ok()),
            Some(event)
        );
    }
}
