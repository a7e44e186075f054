//! PgStore operations on recovery and replay jobs (issue 15, item 5): tables `jobs` and
//! `job_items` (migration V6). A step runs in one transaction holding the job's row
//! (`FOR UPDATE`), so daemons of a cluster may all step the same job: one at a time, and a
//! delivery is queued at most once per job (`job_items`' primary key).

use tokio_postgres::Row;

use super::{rows, PgStore};
use crate::event::EventType;
use crate::ids::{DeliveryId, EventKey, JobId};
use crate::model::{DeliveryStatus, Job, JobKind, JobLimits, JobState};
use crate::store::{Change, StoreError};

const JOB_COLS: &str = "id, organization_id, webhook_id, kind, statuses, event_types, since_ms, \
     until_ms, state, cursor, scan_done, matched, queued, succeeded, failed, created_at_ms, \
     started_at_ms, finished_at_ms";

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: "jobs",
        reason: reason.into(),
    }
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("bad id {text:?}")))
}

fn count(row: &Row, idx: usize) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.try_get::<_, i64>(idx)?).unwrap_or(0))
}

fn job(row: &Row) -> Result<Job, StoreError> {
    let kind_name: &str = row.try_get(3)?;
    let kind = match kind_name {
        "recover" => JobKind::Recover {
            statuses: row
                .try_get::<_, Vec<String>>(4)?
                .iter()
                .map(|s| DeliveryStatus::parse(s).ok_or_else(|| corrupt("status")))
                .collect::<Result<_, _>>()?,
        },
        "replay" => JobKind::Replay {
            event_types: row
                .try_get::<_, Option<Vec<String>>>(5)?
                .map(|types| {
                    types
                        .iter()
                        .map(|t| EventType::parse(t).ok_or_else(|| corrupt("event type")))
                        .collect::<Result<_, _>>()
                })
                .transpose()?,
        },
        other => return Err(corrupt(format!("kind {other:?}"))),
    };
    let cursor = match (row.try_get::<_, Option<&str>>(9)?, &kind) {
        (None, _) => None,
        (Some(text), JobKind::Recover { .. }) => Some(parse::<DeliveryId>(text)?.0),
        (Some(text), JobKind::Replay { .. }) => Some(parse::<EventKey>(text)?.0),
    };
    Ok(Job {
        id: parse(row.try_get(0)?)?,
        organization_id: row.try_get(1)?,
        webhook_id: parse(row.try_get(2)?)?,
        kind,
        since_ms: rows::from_ms(row.try_get(6)?),
        until_ms: rows::from_ms(row.try_get(7)?),
        state: JobState::parse(row.try_get(8)?).ok_or_else(|| corrupt("state"))?,
        cursor,
        scan_done: row.try_get(10)?,
        matched: count(row, 11)?,
        queued: count(row, 12)?,
        succeeded: count(row, 13)?,
        failed: count(row, 14)?,
        created_at_ms: rows::from_ms(row.try_get(15)?),
        started_at_ms: row.try_get::<_, Option<i64>>(16)?.map(rows::from_ms),
        finished_at_ms: row.try_get::<_, Option<i64>>(17)?.map(rows::from_ms),
    })
}

fn cursor_text(job: &Job) -> Option<String> {
    job.cursor.map(|c| match job.kind {
        JobKind::Recover { .. } => DeliveryId(c).to_string(),
        JobKind::Replay { .. } => EventKey(c).to_string(),
    })
}

fn n(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

async fn save(
    txn: &deadpool_postgres::Transaction<'_>,
    job: &Job,
    insert: bool,
) -> Result<(), StoreError> {
    let (statuses, event_types): (Vec<&str>, Option<Vec<&str>>) = match &job.kind {
        JobKind::Recover { statuses } => (statuses.iter().map(|s| s.as_str()).collect(), None),
        JobKind::Replay { event_types } => (
            Vec::new(),
            event_types
                .as_ref()
                .map(|types| types.iter().map(|t| t.as_str()).collect()),
        ),
    };
    let sql = if insert {
        format!(
            "INSERT INTO jobs ({JOB_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18)"
        )
    } else {
        "UPDATE jobs SET state = $9, cursor = $10, scan_done = $11, matched = $12, \
         queued = $13, succeeded = $14, failed = $15, started_at_ms = $17, \
         finished_at_ms = $18 WHERE id = $1 AND organization_id = $2 AND webhook_id = $3 \
         AND kind = $4 AND statuses = $5 AND event_types IS NOT DISTINCT FROM $6 \
         AND since_ms = $7 AND until_ms = $8 AND created_at_ms = $16"
            .to_owned()
    };
    txn.execute(
        &sql,
        &[
            &job.id.to_string(),
            &job.organization_id,
            &job.webhook_id.to_string(),
            &job.kind.as_str(),
            &statuses,
            &event_types,
            &rows::ms(job.since_ms),
            &rows::ms(job.until_ms),
            &job.state.as_str(),
            &cursor_text(job),
            &job.scan_done,
            &n(job.matched),
            &n(job.queued),
            &n(job.succeeded),
            &n(job.failed),
            &rows::ms(job.created_at_ms),
            &job.started_at_ms.map(rows::ms),
            &job.finished_at_ms.map(rows::ms),
        ],
    )
    .await?;
    Ok(())
}

impl PgStore {
    /// See [`crate::store::Store::create_job`].
    pub fn create_job(&self, job: &Job) -> Result<(), StoreError> {
        let store = self.clone();
        let job = job.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        save(txn, &job, true).await?;
                        Ok(((), Vec::new()))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::get_job`].
    pub fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let row = store
                .conn()
                .await?
                .query_opt(
                    &format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"),
                    &[&id.to_string()],
                )
                .await?;
            row.map(|r| job(&r)).transpose()
        })
    }

    /// See [`crate::store::Store::list_jobs`].
    pub fn list_jobs(
        &self,
        organization_id: Option<&str>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let store = self.clone();
        let org = organization_id.map(str::to_owned);
        let before = before.map_or_else(|| "job_~".to_owned(), |b| b.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async move {
            let conn = store.conn().await?;
            let found = match org {
                Some(org) => {
                    conn.query(
                        &format!(
                            "SELECT {JOB_COLS} FROM jobs WHERE organization_id = $1 AND id < $2 \
                             ORDER BY id DESC LIMIT $3"
                        ),
                        &[&org, &before, &limit],
                    )
                    .await?
                }
                None => {
                    conn.query(
                        &format!(
                            "SELECT {JOB_COLS} FROM jobs WHERE id < $1 ORDER BY id DESC LIMIT $2"
                        ),
                        &[&before, &limit],
                    )
                    .await?
                }
            };
            found.iter().map(job).collect()
        })
    }

    /// See [`crate::store::Store::active_jobs`].
    pub fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .conn()
                .await?
                .query(
                    "SELECT id FROM jobs WHERE finished_at_ms IS NULL ORDER BY id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| parse(r.try_get(0)?))
                .collect()
        })
    }

    /// See [`crate::store::Store::cancel_job`].
    pub fn cancel_job(&self, id: JobId, now_ms: u64) -> Result<Option<Job>, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(row) = txn
                            .query_opt(
                                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 FOR UPDATE"),
                                &[&id.to_string()],
                            )
                            .await?
                        else {
                            return Ok((None, Vec::new()));
                        };
                        let mut found = job(&row)?;
                        if !found.state.is_final() {
                            // Its queued deliveries go on: the runner counts them and sets
                            // `finished_at` when the last has ended.
                            found.state = JobState::Cancelled;
                            save(txn, &found, false).await?;
                        }
                        let _ = now_ms;
                        Ok((Some(found), Vec::new()))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::job_step`].
    pub fn job_step(
        &self,
        id: JobId,
        limits: JobLimits,
        now_ms: u64,
    ) -> Result<Option<Job>, StoreError> {
        let store = self.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(row) = txn
                            .query_opt(
                                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1 FOR UPDATE"),
                                &[&id.to_string()],
                            )
                            .await?
                        else {
                            return Ok((None, Vec::new()));
                        };
                        let mut job = job(&row)?;
                        let mut changes = Vec::new();
                        if job.finished_at_ms.is_some() {
                            return Ok((Some(job), changes));
                        }
                        if job.state == JobState::Queued {
                            job.state = JobState::Running;
                            job.started_at_ms = Some(now_ms);
                        }
                        let outstanding = tally(txn, &mut job).await?;
                        if job.state == JobState::Cancelled {
                            if outstanding == 0 {
                                job.finished_at_ms = Some(now_ms);
                            }
                        } else if !job.scan_done && outstanding < limits.window {
                            let room = limits.window - outstanding;
                            match job.kind.clone() {
                                JobKind::Recover { statuses } => {
                                    scan_recover(
                                        txn,
                                        &mut job,
                                        &statuses,
                                        room,
                                        limits,
                                        now_ms,
                                        &mut changes,
                                    )
                                    .await?;
                                }
                                JobKind::Replay { event_types } => {
                                    scan_replay(
                                        txn,
                                        &mut job,
                                        event_types.as_deref(),
                                        room,
                                        limits,
                                        now_ms,
                                        &mut changes,
                                    )
                                    .await?;
                                }
                            }
                        }
                        if job.scan_done && job.succeeded + job.failed >= job.queued {
                            job.state = JobState::Finished;
                            job.finished_at_ms = Some(now_ms);
                        }
                        save(txn, &job, false).await?;
                        Ok((Some(job), changes))
                    })
                })
                .await
        })
    }
}

/// Counts the job's outstanding deliveries that ended; returns how many are still going.
async fn tally(txn: &deadpool_postgres::Transaction<'_>, job: &mut Job) -> Result<u64, StoreError> {
    let found = txn
        .query(
            "SELECT i.delivery_id, d.status FROM job_items i LEFT JOIN deliveries d \
             ON d.id = i.delivery_id WHERE i.job_id = $1 AND i.outstanding",
            &[&job.id.to_string()],
        )
        .await?;
    let mut ended: Vec<String> = Vec::new();
    let mut left = 0;
    for row in found {
        let status = row
            .try_get::<_, Option<&str>>(1)?
            .map(|s| DeliveryStatus::parse(s).ok_or_else(|| corrupt("delivery status")))
            .transpose()?;
        match crate::store::job_outcome(status) {
            Some(true) => job.succeeded += 1,
            Some(false) => job.failed += 1,
            None => {
                left += 1;
                continue;
            }
        }
        ended.push(row.try_get::<_, String>(0)?);
    }
    if !ended.is_empty() {
        txn.execute(
            "UPDATE job_items SET outstanding = false WHERE job_id = $1 AND delivery_id = ANY($2)",
            &[&job.id.to_string(), &ended],
        )
        .await?;
    }
    Ok(left)
}

async fn queue_item(
    txn: &deadpool_postgres::Transaction<'_>,
    job: &Job,
    delivery: DeliveryId,
) -> Result<bool, StoreError> {
    let inserted = txn
        .execute(
            "INSERT INTO job_items (job_id, delivery_id, outstanding) VALUES ($1, $2, true) \
             ON CONFLICT DO NOTHING",
            &[&job.id.to_string(), &delivery.to_string()],
        )
        .await?;
    Ok(inserted == 1)
}

/// The exclusive lower bound of the scan: after the cursor, or from the window's start.
fn after(job: &Job) -> u128 {
    job.cursor
        .unwrap_or_else(|| DeliveryId::first_at(job.since_ms).0.saturating_sub(1))
}

async fn scan_recover(
    txn: &deadpool_postgres::Transaction<'_>,
    job: &mut Job,
    statuses: &[DeliveryStatus],
    mut room: u64,
    limits: JobLimits,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    // The webhook was deleted: nothing more to recover. KEY SHARE makes a concurrent
    // deletion wait for this step, then cancel what it queued.
    let exists = txn
        .query_opt(
            "SELECT 1 FROM webhooks WHERE id = $1 FOR KEY SHARE",
            &[&job.webhook_id.to_string()],
        )
        .await?
        .is_some();
    if !exists {
        job.scan_done = true;
        return Ok(());
    }
    let found = txn
        .query(
            &format!(
                "SELECT {} FROM deliveries d WHERE webhook_id = $1 AND id > $2 AND id < $3 \
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.key = d.event_key \
                 AND e.payload_deleted_at_ms IS NOT NULL) \
                 ORDER BY id LIMIT $4 FOR UPDATE OF d",
                rows::DELIVERY_COLS
            ),
            &[
                &job.webhook_id.to_string(),
                &DeliveryId(after(job)).to_string(),
                &DeliveryId::first_at(job.until_ms).to_string(),
                &i64::try_from(limits.scan).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    if found.len() < limits.scan {
        job.scan_done = true;
    }
    for row in found {
        if room == 0 {
            job.scan_done = false;
            break;
        }
        let mut delivery = rows::delivery(&row)?;
        job.cursor = Some(delivery.id.0);
        if !statuses.contains(&delivery.status) {
            continue;
        }
        job.matched += 1;
        if !queue_item(txn, job, delivery.id).await? {
            continue;
        }
        crate::store::requeue_for_recovery(&mut delivery, limits.max_attempts, now_ms);
        txn.execute(
            "UPDATE deliveries SET status = $2, scheduled_attempts = $3, next_attempt_at_ms = $4, \
             updated_at_ms = $4 WHERE id = $1",
            &[
                &delivery.id.to_string(),
                &delivery.status.as_str(),
                &i32::try_from(delivery.scheduled_attempts).unwrap_or(i32::MAX),
                &rows::ms(now_ms),
            ],
        )
        .await?;
        changes.push(Change::Index {
            webhook: delivery.webhook_id,
            delivery: delivery.id,
            from: None,
            to: Some(now_ms),
        });
        job.queued += 1;
        room -= 1;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn scan_replay(
    txn: &deadpool_postgres::Transaction<'_>,
    job: &mut Job,
    event_types: Option<&[EventType]>,
    mut room: u64,
    limits: JobLimits,
    now_ms: u64,
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let Some(webhook) = txn
        .query_opt(
            &format!(
                "SELECT {} FROM webhooks WHERE id = $1 FOR KEY SHARE",
                rows::WEBHOOK_COLS
            ),
            &[&job.webhook_id.to_string()],
        )
        .await?
    else {
        job.scan_done = true;
        return Ok(());
    };
    // Only the subscriptions are used: the secret is not opened.
    let subscribed = rows::webhook(&webhook, None)?.events;
    let start = job
        .cursor
        .unwrap_or_else(|| EventKey::first_at(job.since_ms).0.saturating_sub(1));
    let found = txn
        .query(
            &format!(
                "SELECT {} FROM events e WHERE organization_id = $1 AND key > $2 AND key < $3 \
                 ORDER BY key LIMIT $4",
                rows::EVENT_COLS
            ),
            &[
                &job.organization_id,
                &EventKey(start).to_string(),
                &EventKey::first_at(job.until_ms).to_string(),
                &i64::try_from(limits.scan).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    if found.len() < limits.scan {
        job.scan_done = true;
    }
    for row in found {
        if room == 0 {
            job.scan_done = false;
            break;
        }
        let event = rows::event(&row)?;
        job.cursor = Some(event.key.0);
        // A deleted payload is never sent again (issue 15, item 7).
        if event.payload_deleted_at_ms.is_some()
            || !crate::store::replay_matches(event.event_type, event_types, &subscribed)
        {
            continue;
        }
        let had = txn
            .query_opt(
                "SELECT 1 FROM deliveries WHERE event_key = $1 AND webhook_id = $2 LIMIT 1",
                &[&event.key.to_string(), &job.webhook_id.to_string()],
            )
            .await?
            .is_some();
        if had {
            continue;
        }
        job.matched += 1;
        let delivery = crate::store::new_delivery(&event, job.webhook_id, false, now_ms, now_ms);
        if !queue_item(txn, job, delivery.id).await? {
            continue;
        }
        super::writer::insert_deliveries(txn, std::iter::once(&delivery)).await?;
        txn.execute(
            "UPDATE events SET delivery_ids = array_append(delivery_ids, $2) WHERE key = $1",
            &[&event.key.to_string(), &delivery.id.to_string()],
        )
        .await?;
        changes.push(Change::Index {
            webhook: job.webhook_id,
            delivery: delivery.id,
            from: None,
            to: Some(now_ms),
        });
        job.queued += 1;
        room -= 1;
    }
    Ok(())
}
