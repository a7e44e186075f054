//! FileStore operations on recovery and replay jobs (issue 15, item 5).
//!
//! Tables: `jobs` (id → [`JobRecord`]), `job_items` `(job, delivery) → ()` (every delivery a
//! job queued: a delivery is queued at most once per job, whatever restarts happen) and
//! `job_outstanding` `(job, delivery) → ()` (those not yet tallied as ended). A step is one
//! transaction: tally what ended, then, while fewer than the window are outstanding, look at
//! the next rows of the window after the cursor and queue what matches; the cursor, the
//! counters and the queued deliveries are written together, so a crash never queues a
//! delivery twice nor loses one.

use redb::ReadableTable;

use super::deliveries::{load_delivery, load_event, put_delivery};
use super::due::move_index_entry;
use super::records::{decode, encode, EventRecord, JobRecord, WebhookRecord};
use super::writer::Txn;
use super::{
    FileStore, StoreError, DELIVERIES, EVENTS, JOBS, JOB_ITEMS, JOB_OUTSTANDING, ORG_EVENTS,
    WEBHOOKS, WEBHOOK_DELIVERIES,
};
use crate::ids::{DeliveryId, EventKey, JobId};
use crate::model::{DeliveryStatus, Job, JobKind, JobLimits, JobState};

fn load_job(txn: &Txn<'_>, id: JobId) -> Result<Option<Job>, StoreError> {
    match txn.open_table(JOBS)?.get(id.0)? {
        Some(bytes) => Ok(Some(
            decode::<JobRecord>("jobs", bytes.value())?.into_domain(id)?,
        )),
        None => Ok(None),
    }
}

fn save_job(txn: &Txn<'_>, job: &Job) -> Result<(), StoreError> {
    txn.open_table(JOBS)?
        .insert(job.id.0, encode(&JobRecord::from_domain(job)).as_slice())?;
    Ok(())
}

impl FileStore {
    /// See [`Store::create_job`](crate::store::Store::create_job).
    pub fn create_job(&self, job: &Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |txn| save_job(txn, &job))
    }

    /// See [`Store::get_job`](crate::store::Store::get_job).
    pub fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(|txn| match txn.open_table(JOBS)?.get(id.0)? {
            Some(bytes) => Ok(Some(
                decode::<JobRecord>("jobs", bytes.value())?.into_domain(id)?,
            )),
            None => Ok(None),
        })
    }

    /// See [`Store::list_jobs`](crate::store::Store::list_jobs).
    pub fn list_jobs(
        &self,
        organization_id: Option<&str>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(JOBS)?;
            let end = before.map_or(u128::MAX, |b| b.0);
            let mut out = Vec::new();
            for row in table.range(..end)?.rev() {
                let (id, bytes) = row?;
                let job =
                    decode::<JobRecord>("jobs", bytes.value())?.into_domain(JobId(id.value()))?;
                if organization_id.is_none_or(|org| org == job.organization_id) {
                    out.push(job);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::active_jobs`](crate::store::Store::active_jobs).
    pub fn active_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(JOBS)?.iter()? {
                let (id, bytes) = row?;
                let job =
                    decode::<JobRecord>("jobs", bytes.value())?.into_domain(JobId(id.value()))?;
                if job.finished_at_ms.is_none() {
                    out.push(job.id);
                }
            }
            Ok(out)
        })
    }

    /// See [`Store::cancel_job`](crate::store::Store::cancel_job).
    pub fn cancel_job(&self, id: JobId, now_ms: u64) -> Result<Option<Job>, StoreError> {
        self.write(move |txn| {
            let Some(mut job) = load_job(txn, id)? else {
                return Ok(None);
            };
            if !job.state.is_final() {
                // Its queued deliveries go on: the runner counts them and sets
                // `finished_at` when the last has ended.
                job.state = JobState::Cancelled;
                save_job(txn, &job)?;
            }
            let _ = now_ms;
            Ok(Some(job))
        })
    }

    /// See [`Store::job_step`](crate::store::Store::job_step).
    pub fn job_step(
        &self,
        id: JobId,
        limits: JobLimits,
        now_ms: u64,
    ) -> Result<Option<Job>, StoreError> {
        self.write(move |txn| {
            let Some(mut job) = load_job(txn, id)? else {
                return Ok(None);
            };
            if job.finished_at_ms.is_some() {
                return Ok(Some(job));
            }
            if job.state == JobState::Queued {
                job.state = JobState::Running;
                job.started_at_ms = Some(now_ms);
            }
            let outstanding = tally(txn, &mut job)?;
            if job.state == JobState::Cancelled {
                if outstanding == 0 {
                    job.finished_at_ms = Some(now_ms);
                }
            } else if !job.scan_done && outstanding < limits.window {
                let room = limits.window - outstanding;
                match job.kind.clone() {
                    JobKind::Recover { statuses } => {
                        scan_recover(txn, &mut job, &statuses, room, limits, now_ms)?;
                    }
                    JobKind::Replay { event_types } => {
                        scan_replay(txn, &mut job, event_types.as_deref(), room, limits, now_ms)?;
                    }
                }
            }
            if job.scan_done && job.succeeded + job.failed >= job.queued {
                job.state = JobState::Finished;
                job.finished_at_ms = Some(now_ms);
            }
            save_job(txn, &job)?;
            Ok(Some(job))
        })
    }
}

/// Counts the job's outstanding deliveries that ended; returns how many are still going.
fn tally(txn: &Txn<'_>, job: &mut Job) -> Result<u64, StoreError> {
    let mut outstanding = txn.open_table(JOB_OUTSTANDING)?;
    let deliveries = txn.open_table(DELIVERIES)?;
    let ids: Vec<u128> = outstanding
        .range((job.id.0, 0)..=(job.id.0, u128::MAX))?
        .map(|row| row.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut left = 0;
    for id in ids {
        let status = load_delivery(&deliveries, DeliveryId(id))?.map(|d| d.status);
        match crate::store::job_outcome(status) {
            Some(true) => job.succeeded += 1,
            Some(false) => job.failed += 1,
            None => {
                left += 1;
                continue;
            }
        }
        outstanding.remove((job.id.0, id))?;
    }
    Ok(left)
}

fn queue_item(txn: &Txn<'_>, job: &Job, delivery: DeliveryId) -> Result<bool, StoreError> {
    let fresh = txn
        .open_table(JOB_ITEMS)?
        .insert((job.id.0, delivery.0), ())?
        .is_none();
    if fresh {
        txn.open_table(JOB_OUTSTANDING)?
            .insert((job.id.0, delivery.0), ())?;
    }
    Ok(fresh)
}

fn scan_recover(
    txn: &Txn<'_>,
    job: &mut Job,
    statuses: &[DeliveryStatus],
    mut room: u64,
    limits: JobLimits,
    now_ms: u64,
) -> Result<(), StoreError> {
    let w = job.webhook_id.0;
    // The webhook was deleted (its unfinished deliveries cancelled with it): nothing more to
    // recover (regression: a step after the deletion re-queued deliveries of a webhook that
    // no longer existed).
    if txn.open_table(WEBHOOKS)?.get(w)?.is_none() {
        job.scan_done = true;
        return Ok(());
    }
    let start = job
        .cursor
        .map_or(DeliveryId::first_at(job.since_ms).0, |c| {
            c.saturating_add(1)
        });
    let end = DeliveryId::first_at(job.until_ms).0;
    let ids: Vec<u128> = txn
        .open_table(WEBHOOK_DELIVERIES)?
        .range((w, start)..(w, end))?
        .take(limits.scan)
        .map(|row| row.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    if ids.len() < limits.scan {
        job.scan_done = true;
    }
    let mut table = txn.open_table(DELIVERIES)?;
    let events = txn.open_table(EVENTS)?;
    for id in ids {
        if room == 0 {
            job.scan_done = false;
            break;
        }
        job.cursor = Some(id);
        let Some(mut delivery) = load_delivery(&table, DeliveryId(id))? else {
            continue;
        };
        if !statuses.contains(&delivery.status) {
            continue;
        }
        // A deleted payload is never sent again (issue 15, item 7).
        if load_event(&events, delivery.event_key)?
            .is_none_or(|e| e.payload_deleted_at_ms.is_some())
        {
            continue;
        }
        job.matched += 1;
        if !queue_item(txn, job, delivery.id)? {
            continue;
        }
        let before = delivery.clone();
        crate::store::requeue_for_recovery(&mut delivery, limits.max_attempts, now_ms);
        move_index_entry(txn, delivery.webhook_id, delivery.id, None, Some(now_ms))?;
        put_delivery(txn, &mut table, Some(&before), &delivery)?;
        job.queued += 1;
        room -= 1;
    }
    Ok(())
}

fn scan_replay(
    txn: &Txn<'_>,
    job: &mut Job,
    event_types: Option<&[crate::event::EventType]>,
    mut room: u64,
    limits: JobLimits,
    now_ms: u64,
) -> Result<(), StoreError> {
    let org = job.organization_id.clone();
    let Some(bytes) = txn
        .open_table(WEBHOOKS)?
        .get(job.webhook_id.0)?
        .map(|v| v.value().to_vec())
    else {
        // The webhook is gone: nothing more to replay.
        job.scan_done = true;
        return Ok(());
    };
    let webhook = decode::<WebhookRecord>("webhooks", &bytes)?.into_domain(job.webhook_id, None)?;
    let start = job
        .cursor
        .map_or(EventKey::first_at(job.since_ms).0, |c| c.saturating_add(1));
    let end = EventKey::first_at(job.until_ms).0;
    let keys: Vec<u128> = txn
        .open_table(ORG_EVENTS)?
        .range((org.as_str(), start)..(org.as_str(), end))?
        .take(limits.scan)
        .map(|row| row.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    if keys.len() < limits.scan {
        job.scan_done = true;
    }
    let mut events = txn.open_table(EVENTS)?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    for key in keys {
        if room == 0 {
            job.scan_done = false;
            break;
        }
        job.cursor = Some(key);
        let Some(mut event) = load_event(&events, EventKey(key))? else {
            continue;
        };
        // A deleted payload is never sent again (issue 15, item 7).
        if event.payload_deleted_at_ms.is_some()
            || !crate::store::replay_matches(event.event_type, event_types, &webhook.events)
        {
            continue;
        }
        let mut had = false;
        for d in &event.delivery_ids {
            if load_delivery(&deliveries, *d)?.is_some_and(|d| d.webhook_id == job.webhook_id) {
                had = true;
                break;
            }
        }
        if had {
            continue;
        }
        job.matched += 1;
        let delivery = crate::store::new_delivery(&event, job.webhook_id, false, now_ms, now_ms);
        if !queue_item(txn, job, delivery.id)? {
            continue;
        }
        put_delivery(txn, &mut deliveries, None, &delivery)?;
        txn.open_table(WEBHOOK_DELIVERIES)?
            .insert((job.webhook_id.0, delivery.id.0), ())?;
        move_index_entry(txn, job.webhook_id, delivery.id, None, Some(now_ms))?;
        event.delivery_ids.push(delivery.id);
        events.insert(key, encode(&EventRecord::from_domain(&event)).as_slice())?;
        job.queued += 1;
        room -= 1;
    }
    Ok(())
}
