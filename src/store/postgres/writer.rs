//! Group commit on PostgreSQL: ingests and attempt results share transactions.
//!
//! One task owns one connection. It takes the first waiting job, drains up to
//! [`MAX_BATCH`] more that are already queued, and runs them in one transaction with a
//! handful of statements whatever the batch's size (arrays through `unnest`): one read of
//! the events already stored under the batch's idempotency keys, one of the organizations'
//! webhooks, one insert of the events, one of the deliveries; for attempts, one locking read
//! of the deliveries, one insert of the attempts, one update of the deliveries. It commits
//! once, publishes the batch's [`Change`]s, then answers every caller. A lone job commits at
//! once: there is no artificial wait.
//!
//! If the batch fails, every job is run again alone, so one bad job fails only itself. An
//! idempotency key taken meanwhile by another daemon (the insert skips it) reruns the batch,
//! which then sees that daemon's event and answers as a replay or a conflict.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{cluster, rows, Shared};
use crate::event::PreparedEvent;
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Attempt, Delivery, Event};
use crate::retry::RetrySchedule;
use crate::store::{AcceptOutcome, Change, FanOut, StoreError, MAX_BATCH};

/// Jobs waiting beyond this block their callers (backpressure).
const QUEUE_BOUND: usize = 4096;

/// A write of the hot path.
pub(super) enum Input {
    /// [`crate::store::Store::accept_event`].
    Accept {
        prepared: PreparedEvent,
        fan_out: FanOut,
        now_ms: u64,
        first_due_ms: u64,
    },
    /// [`crate::store::Store::record_attempt`].
    Attempt {
        id: DeliveryId,
        attempt: Attempt,
        schedule: RetrySchedule,
        now_ms: u64,
    },
}

/// The answer of one [`Input`].
pub(super) enum Output {
    Accept(AcceptOutcome),
    Attempt(Option<Delivery>),
}

type Reply = oneshot::Sender<Result<Output, StoreError>>;

/// Handle to the writer task.
pub(super) struct Writer {
    jobs: std::sync::Mutex<Option<mpsc::Sender<(Input, Reply)>>>,
}

/// A rerun is needed: another daemon took an idempotency key of the batch meanwhile.
struct Raced;

impl Writer {
    /// Starts the task on `handle`.
    pub(super) fn start(
        handle: &tokio::runtime::Handle,
        pool: Pool,
        shared: Arc<Shared>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        handle.spawn(run(rx, pool, shared));
        Writer {
            jobs: std::sync::Mutex::new(Some(tx)),
        }
    }

    /// Stops taking jobs; the task ends once the queued ones are answered.
    pub(super) fn close(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Queues `input` and waits until its transaction is committed (or failed).
    ///
    /// # Errors
    /// The batch's [`StoreError`]; [`StoreError::Interrupted`] once the store is closing.
    pub(super) async fn write(&self, input: Input) -> Result<Output, StoreError> {
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Interrupted)?;
        let (tx, rx) = oneshot::channel();
        sender
            .send((input, tx))
            .await
            .map_err(|_| StoreError::Interrupted)?;
        rx.await.map_err(|_| StoreError::Interrupted)?
    }
}

async fn run(mut rx: mpsc::Receiver<(Input, Reply)>, pool: Pool, shared: Arc<Shared>) {
    let mut conn: Option<deadpool_postgres::Object> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (inputs, replies): (Vec<Input>, Vec<Reply>) = batch.into_iter().unzip();
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .jobs
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        shared
            .stats
            .max_batch
            .fetch_max(inputs.len() as u64, Ordering::Relaxed);
        let client = match conn.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    shared.writable.store(false, Ordering::Relaxed);
                    let e = StoreError::from(e).to_string();
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::CommitFailed(e.clone())));
                    }
                    continue;
                }
            },
        };
        let mut client = client;
        let began = std::time::Instant::now();
        let result = match tokio::time::timeout(
            super::COMMIT_TIMEOUT,
            commit(&mut client, &inputs, &shared),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                // The connection's state is unknown: it is not used again.
                shared.writable.store(false, Ordering::Relaxed);
                let e = format!(
                    "postgres did not answer within {} s",
                    super::COMMIT_TIMEOUT.as_secs()
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::CommitFailed(e.clone())));
                }
                continue;
            }
        };
        if result.is_ok() {
            metrics::histogram!(crate::metrics::COMMIT_SECONDS)
                .record(began.elapsed().as_secs_f64());
            metrics::histogram!(crate::metrics::COMMIT_BATCH).record(inputs.len() as f64);
        }
        match result {
            Ok(outputs) => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            Err(_) if inputs.len() > 1 => {
                // One job may be the cause: each alone, so only it fails.
                for (input, reply) in inputs.into_iter().zip(replies) {
                    let one = [input];
                    let answer = match commit(&mut client, &one, &shared).await {
                        Ok(mut outputs) => Ok(outputs.remove(0)),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if !client.is_closed() {
            conn = Some(client);
        }
    }
}

/// Runs `inputs` in one transaction (again, up to 3 times, when another daemon took an
/// idempotency key meanwhile), commits, publishes. Returns one output per input.
async fn commit(
    client: &mut deadpool_postgres::Object,
    inputs: &[Input],
    shared: &Shared,
) -> Result<Vec<Output>, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let txn = client.transaction().await.inspect_err(|e| {
            if e.is_closed() {
                shared.writable.store(false, Ordering::Relaxed);
            }
        })?;
        let (outputs, changes) = match batch(&txn, inputs).await? {
            Ok(done) => done,
            Err(Raced) if tries < 3 => {
                txn.rollback().await?;
                continue;
            }
            Err(Raced) => {
                return Err(StoreError::CommitFailed(
                    "an idempotency key kept being taken by another daemon".into(),
                ))
            }
        };
        cluster::notify_changes(&txn, shared, &changes).await?;
        if let Err(e) = txn.commit().await {
            if e.as_db_error().is_none() {
                shared.writable.store(false, Ordering::Relaxed);
            }
            return Err(StoreError::CommitFailed(StoreError::from(e).to_string()));
        }
        shared.publish(changes);
        return Ok(outputs);
    }
}

type Done = (Vec<Output>, Vec<Change>);

/// The statements of one batch, inside `txn`.
async fn batch(
    txn: &deadpool_postgres::Transaction<'_>,
    inputs: &[Input],
) -> Result<Result<Done, Raced>, StoreError> {
    let mut outputs: Vec<Option<Output>> = inputs.iter().map(|_| None).collect();
    let mut changes = Vec::new();
    if accepts(txn, inputs, &mut outputs, &mut changes)
        .await?
        .is_err()
    {
        return Ok(Err(Raced));
    }
    attempts(txn, inputs, &mut outputs, &mut changes).await?;
    let outputs = outputs
        .into_iter()
        .map(|o| o.ok_or(StoreError::Interrupted))
        .collect::<Result<_, _>>()?;
    Ok(Ok((outputs, changes)))
}

/// The accepts of the batch: idempotency, fan-out, inserts.
async fn accepts(
    txn: &deadpool_postgres::Transaction<'_>,
    inputs: &[Input],
    outputs: &mut [Option<Output>],
    changes: &mut Vec<Change>,
) -> Result<Result<(), Raced>, StoreError> {
    let accepts: Vec<(usize, &PreparedEvent, FanOut, u64, u64)> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| match input {
            Input::Accept {
                prepared,
                fan_out,
                now_ms,
                first_due_ms,
            } => Some((i, prepared, *fan_out, *now_ms, *first_due_ms)),
            Input::Attempt { .. } => None,
        })
        .collect();
    if accepts.is_empty() {
        return Ok(Ok(()));
    }
    let ids: Vec<&str> = accepts.iter().map(|a| a.1.event_id.as_str()).collect();
    let orgs: Vec<&str> = accepts
        .iter()
        .map(|a| a.1.organization_id.as_str())
        .collect();
    let mut existing: HashMap<(String, String), Event> = HashMap::new();
    for row in txn
        .query(
            &format!(
                "SELECT {} FROM events WHERE (event_id, organization_id) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))",
                rows::EVENT_COLS
            ),
            &[&ids, &orgs],
        )
        .await?
    {
        let event = rows::event(&row)?;
        existing.insert(
            (event.event_id.clone(), event.organization_id.clone()),
            event,
        );
    }
    let mut unique_orgs = orgs.clone();
    unique_orgs.sort_unstable();
    unique_orgs.dedup();
    // (organization) -> its webhooks, in creation order.
    let mut webhooks: HashMap<String, Vec<crate::store::FanOutTarget>> = HashMap::new();
    for row in txn
        .query(
            // KEY SHARE: a deletion on another daemon waits for this commit, then its
            // cancelling update sees these deliveries. A disable takes the row FOR UPDATE,
            // so it waits too, then holds what this commit made (edits are not blocked).
            "SELECT id, organization_id, event_types, active, disabled IS NOT NULL, options \
             FROM webhooks WHERE organization_id = ANY($1) ORDER BY id FOR KEY SHARE",
            &[&unique_orgs],
        )
        .await?
    {
        let (org, target) = rows::fan_out_row(&row)?;
        webhooks.entry(org).or_default().push(target);
    }
    let mut new_events: Vec<(Event, Vec<Delivery>)> = Vec::new();
    // Within the batch, an idempotency key taken by an earlier job.
    let mut taken: HashMap<(String, String), usize> = HashMap::new();
    for (i, prepared, fan_out, now_ms, first_due_ms) in accepts {
        let idem = (prepared.event_id.clone(), prepared.organization_id.clone());
        let earlier = existing
            .get(&idem)
            .or_else(|| taken.get(&idem).map(|n| &new_events[*n].0));
        if let Some(event) = earlier {
            outputs[i] = Some(Output::Accept(
                if event.content_hash == prepared.content_hash {
                    AcceptOutcome::Replayed {
                        event: event.clone(),
                    }
                } else {
                    AcceptOutcome::Conflict
                },
            ));
            continue;
        }
        let org_webhooks = webhooks
            .get(&prepared.organization_id)
            .map_or(&[][..], Vec::as_slice);
        let envelope = crate::store::Envelope::new(&prepared.body);
        let targets: Vec<(WebhookId, bool)> = org_webhooks
            .iter()
            .filter_map(|w| {
                crate::store::fan_out_to(fan_out, prepared.event_type, w, &envelope)
                    .map(|held| (w.id, held))
            })
            .collect();
        let (event, deliveries) = crate::store::new_event(prepared, &targets, now_ms, first_due_ms);
        if deliveries.is_empty() && matches!(fan_out, FanOut::SubscribersExcept(_)) {
            // An operational event nobody receives is not stored.
            outputs[i] = Some(Output::Accept(AcceptOutcome::Accepted {
                event,
                deliveries: Vec::new(),
            }));
            continue;
        }
        taken.insert(idem, new_events.len());
        outputs[i] = Some(Output::Accept(AcceptOutcome::Accepted {
            event: event.clone(),
            deliveries: deliveries.clone(),
        }));
        new_events.push((event, deliveries));
    }
    if new_events.is_empty() {
        return Ok(Ok(()));
    }
    let inserted = insert_events(txn, &new_events).await?;
    if inserted != new_events.len() {
        return Ok(Err(Raced));
    }
    insert_deliveries(txn, new_events.iter().flat_map(|(_, d)| d)).await?;
    for (event, deliveries) in new_events {
        if deliveries.is_empty() {
            continue;
        }
        changes.push(Change::Accepted {
            event: event.key,
            body: bytes::Bytes::from(event.body),
            deliveries: deliveries.clone(),
        });
        for d in deliveries {
            changes.push(Change::Index {
                webhook: d.webhook_id,
                delivery: d.id,
                from: None,
                to: d.next_attempt_at_ms,
            });
        }
    }
    Ok(Ok(()))
}

/// Inserts events (skipping any whose idempotency key exists); returns how many went in.
pub(super) async fn insert_events(
    txn: &deadpool_postgres::Transaction<'_>,
    events: &[(Event, Vec<Delivery>)],
) -> Result<usize, StoreError> {
    let keys: Vec<String> = events.iter().map(|(e, _)| e.key.to_string()).collect();
    let orgs: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.organization_id.as_str())
        .collect();
    let ids: Vec<&str> = events.iter().map(|(e, _)| e.event_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let stamps: Vec<&str> = events.iter().map(|(e, _)| e.timestamp.as_str()).collect();
    let received: Vec<i64> = events
        .iter()
        .map(|(e, _)| rows::ms(e.received_at_ms))
        .collect();
    let bodies: Vec<&[u8]> = events.iter().map(|(e, _)| e.body.as_slice()).collect();
    let hashes: Vec<&[u8]> = events
        .iter()
        .map(|(e, _)| e.content_hash.as_slice())
        .collect();
    let delivery_ids: Vec<String> = events
        .iter()
        .map(|(e, _)| {
            e.delivery_ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    // Set only when `migrate` copies a tombstone (issue 15).
    let deleted: Vec<Option<i64>> = events
        .iter()
        .map(|(e, _)| e.payload_deleted_at_ms.map(rows::ms))
        .collect();
    let ordering_keys: Vec<Option<&str>> = events
        .iter()
        .map(|(e, _)| e.ordering_key.as_deref())
        .collect();
    let rows = txn
        .query(
            "INSERT INTO events (key, organization_id, event_id, event_type, \"timestamp\", \
             received_at_ms, body, content_hash, delivery_ids, payload_deleted_at_ms, \
             ordering_key) \
             SELECT k, o, i, t, s, r, b, h, string_to_array(d, ','), x, ok FROM \
             unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
             $7::bytea[], $8::bytea[], $9::text[], $10::bigint[], $11::text[]) \
             AS u(k, o, i, t, s, r, b, h, d, x, ok) \
             ON CONFLICT (event_id, organization_id) DO NOTHING RETURNING key",
            &[
                &keys,
                &orgs,
                &ids,
                &types,
                &stamps,
                &received,
                &bodies,
                &hashes,
                &delivery_ids,
                &deleted,
                &ordering_keys,
            ],
        )
        .await?;
    Ok(rows.len())
}

/// Inserts new deliveries (their retry-index entries are their `next_attempt_at_ms`).
pub(super) async fn insert_deliveries<'d>(
    txn: &deadpool_postgres::Transaction<'_>,
    deliveries: impl Iterator<Item = &'d Delivery>,
) -> Result<(), StoreError> {
    let deliveries: Vec<&Delivery> = deliveries.collect();
    if deliveries.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.to_string()).collect();
    let orgs: Vec<&str> = deliveries
        .iter()
        .map(|d| d.organization_id.as_str())
        .collect();
    let webhooks: Vec<String> = deliveries
        .iter()
        .map(|d| d.webhook_id.to_string())
        .collect();
    let keys: Vec<String> = deliveries.iter().map(|d| d.event_key.to_string()).collect();
    let event_ids: Vec<&str> = deliveries.iter().map(|d| d.event_id.as_str()).collect();
    let types: Vec<&str> = deliveries.iter().map(|d| d.event_type.as_str()).collect();
    let statuses: Vec<&str> = deliveries.iter().map(|d| d.status.as_str()).collect();
    let counts: Vec<i32> = deliveries
        .iter()
        .map(|d| i32::try_from(d.attempt_count).unwrap_or(i32::MAX))
        .collect();
    let scheduled: Vec<i32> = deliveries
        .iter()
        .map(|d| i32::try_from(d.scheduled_attempts).unwrap_or(i32::MAX))
        .collect();
    let next: Vec<Option<i64>> = deliveries
        .iter()
        .map(|d| d.next_attempt_at_ms.map(rows::ms))
        .collect();
    let created: Vec<i64> = deliveries
        .iter()
        .map(|d| rows::ms(d.created_at_ms))
        .collect();
    let updated: Vec<i64> = deliveries
        .iter()
        .map(|d| rows::ms(d.updated_at_ms))
        .collect();
    let outcomes: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.last_outcome.map(|o| o.as_str()))
        .collect();
    let ordering_keys: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.ordering_key.as_deref())
        .collect();
    txn.execute(
        "INSERT INTO deliveries (id, organization_id, webhook_id, event_key, event_id, \
         event_type, status, attempt_count, scheduled_attempts, next_attempt_at_ms, \
         created_at_ms, updated_at_ms, last_outcome, ordering_key, held_due_ms) SELECT *, \
         CASE WHEN s = 'held' THEN c END FROM unnest($1::text[], $2::text[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], $9::int[], $10::bigint[], \
         $11::bigint[], $12::bigint[], $13::text[], $14::text[]) AS u(i, o, w, k, e, t, s, a, \
         sa, n, c, up, lo, ok) ON CONFLICT (id) DO NOTHING",
        &[
            &ids,
            &orgs,
            &webhooks,
            &keys,
            &event_ids,
            &types,
            &statuses,
            &counts,
            &scheduled,
            &next,
            &created,
            &updated,
            &outcomes,
            &ordering_keys,
        ],
    )
    .await?;
    Ok(())
}

/// The attempt results of the batch: log each, apply the retry policy, move the index.
async fn attempts(
    txn: &deadpool_postgres::Transaction<'_>,
    inputs: &[Input],
    outputs: &mut [Option<Output>],
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let ids: Vec<String> = inputs
        .iter()
        .filter_map(|input| match input {
            Input::Attempt { id, .. } => Some(id.to_string()),
            Input::Accept { .. } => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut current: HashMap<DeliveryId, Delivery> = HashMap::new();
    for row in txn
        .query(
            &format!(
                "SELECT {} FROM deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                rows::DELIVERY_COLS
            ),
            &[&ids],
        )
        .await?
    {
        let d = rows::delivery(&row)?;
        current.insert(d.id, d);
    }
    let mut logged: Vec<(DeliveryId, &Attempt)> = Vec::new();
    let mut touched: Vec<DeliveryId> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let Input::Attempt {
            id,
            attempt,
            schedule,
            now_ms,
        } = input
        else {
            continue;
        };
        let Some(delivery) = current.get_mut(id) else {
            outputs[i] = Some(Output::Attempt(None));
            continue;
        };
        let before = crate::store::apply_attempt(delivery, attempt, schedule, *now_ms);
        if before != delivery.next_attempt_at_ms {
            changes.push(Change::Index {
                webhook: delivery.webhook_id,
                delivery: *id,
                from: before,
                to: delivery.next_attempt_at_ms,
            });
        }
        logged.push((*id, attempt));
        if !touched.contains(id) {
            touched.push(*id);
        }
        outputs[i] = Some(Output::Attempt(Some(delivery.clone())));
    }
    if logged.is_empty() {
        return Ok(());
    }
    insert_attempts(txn, &logged).await?;
    let updated: Vec<&Delivery> = touched.iter().filter_map(|id| current.get(id)).collect();
    let ids: Vec<String> = updated.iter().map(|d| d.id.to_string()).collect();
    let statuses: Vec<&str> = updated.iter().map(|d| d.status.as_str()).collect();
    let scheduled: Vec<i32> = updated
        .iter()
        .map(|d| i32::try_from(d.scheduled_attempts).unwrap_or(i32::MAX))
        .collect();
    let next: Vec<Option<i64>> = updated
        .iter()
        .map(|d| d.next_attempt_at_ms.map(rows::ms))
        .collect();
    let counts: Vec<i32> = updated
        .iter()
        .map(|d| i32::try_from(d.attempt_count).unwrap_or(i32::MAX))
        .collect();
    let at: Vec<i64> = updated.iter().map(|d| rows::ms(d.updated_at_ms)).collect();
    let outcomes: Vec<Option<&str>> = updated
        .iter()
        .map(|d| d.last_outcome.map(|o| o.as_str()))
        .collect();
    txn.execute(
        "UPDATE deliveries d SET status = u.s, scheduled_attempts = u.sa, \
         next_attempt_at_ms = u.n, attempt_count = u.c, updated_at_ms = u.t, \
         last_outcome = u.o, held_due_ms = CASE WHEN u.s = 'held' THEN d.held_due_ms END \
         FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::int[], $6::bigint[], \
         $7::text[]) AS u(id, s, sa, n, c, t, o) WHERE d.id = u.id",
        &[&ids, &statuses, &scheduled, &next, &counts, &at, &outcomes],
    )
    .await?;
    Ok(())
}

/// Logs attempts (a number logged twice keeps the later one, as on the file backend).
pub(super) async fn insert_attempts(
    txn: &deadpool_postgres::Transaction<'_>,
    logged: &[(DeliveryId, &Attempt)],
) -> Result<(), StoreError> {
    let ids: Vec<String> = logged.iter().map(|(id, _)| id.to_string()).collect();
    let numbers: Vec<i32> = logged
        .iter()
        .map(|(_, a)| i32::try_from(a.number).unwrap_or(i32::MAX))
        .collect();
    let started: Vec<i64> = logged
        .iter()
        .map(|(_, a)| rows::ms(a.started_at_ms))
        .collect();
    let durations: Vec<i64> = logged
        .iter()
        .map(|(_, a)| rows::ms(a.duration_ms))
        .collect();
    let codes: Vec<Option<i32>> = logged
        .iter()
        .map(|(_, a)| a.status_code.map(i32::from))
        .collect();
    let errors: Vec<Option<&str>> = logged
        .iter()
        .map(|(_, a)| a.error.map(|e| e.as_str()))
        .collect();
    let bodies: Vec<&str> = logged
        .iter()
        .map(|(_, a)| a.response_body.as_str())
        .collect();
    let truncated: Vec<bool> = logged
        .iter()
        .map(|(_, a)| a.response_body_truncated)
        .collect();
    let triggers: Vec<&str> = logged.iter().map(|(_, a)| a.trigger.as_str()).collect();
    let retry_after: Vec<Option<i64>> = logged
        .iter()
        .map(|(_, a)| a.retry_after_ms.map(rows::ms))
        .collect();
    let details: Vec<Option<&str>> = logged
        .iter()
        .map(|(_, a)| a.error_detail.as_deref())
        .collect();
    txn.execute(
        "INSERT INTO attempts (delivery_id, number, started_at_ms, duration_ms, status_code, \
         error, response_body, response_body_truncated, trigger, retry_after_ms, error_detail) \
         SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::int[], \
         $6::text[], $7::text[], $8::bool[], $9::text[], $10::bigint[], $11::text[]) \
         ON CONFLICT (delivery_id, number) DO UPDATE SET started_at_ms = excluded.started_at_ms, \
         duration_ms = excluded.duration_ms, status_code = excluded.status_code, \
         error = excluded.error, response_body = excluded.response_body, \
         response_body_truncated = excluded.response_body_truncated, \
         trigger = excluded.trigger, retry_after_ms = excluded.retry_after_ms, \
         error_detail = excluded.error_detail",
        &[
            &ids,
            &numbers,
            &started,
            &durations,
            &codes,
            &errors,
            &bodies,
            &truncated,
            &triggers,
            &retry_after,
            &details,
        ],
    )
    .await?;
    Ok(())
}
