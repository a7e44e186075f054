//! The job runner (issue 15, item 5): steps every recovery and replay job that is not final
//! through the store ([`Store::job_step`](crate::store::Store::job_step)), which queues their
//! deliveries into the retry index a window at a time. The queues then serve them like any
//! due work, round-robin with every other webhook, so live deliveries keep their latency.
//! A job that ends emits `recovery.finished`.
//!
//! The same loop carries on the held sweep ([`Store::sweep_held`](crate::store::Store::sweep_held)):
//! a webhook disabled or enabled with a large backlog has its deliveries held, released or
//! cancelled a chunk per transaction, between which every other writer gets its turn. The
//! sweep is looked for at start, when woken and at every relist, and goes on while a step
//! says more may be left.
//!
//! Jobs live in the store, so a restart (or kill -9) resumes them where their last committed
//! step left them; with several daemons on PostgreSQL every daemon steps them, one at a time
//! (the step holds the job's row). The runner keeps the active jobs it knows in memory, as
//! each step returned them, and lists the store's active jobs again only when woken (a job
//! created or cancelled here) or every [`RELIST_MS`] (jobs created on another daemon).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Inner, Scheduler};
use crate::clock;
use crate::ids::JobId;
use crate::model::{Job, JobLimits};
use crate::store::blocking;

/// Rows a step looks at, at most.
const SCAN_PER_STEP: usize = 500;
/// The runner's pause when no job moved (ms).
const IDLE_MS: u64 = 500;
/// The runner's pause between steps while jobs move (ms): what lets the attempts run.
const BUSY_MS: u64 = 10;
/// How often the runner lists the store's active jobs without being woken (ms).
const RELIST_MS: u64 = 10_000;
/// Webhooks one held-sweep step works on, at most ([`crate::store::HELD_CHUNK`] deliveries
/// each).
const SWEEP_WEBHOOKS: usize = 4;

impl Scheduler {
    /// Wakes the job runner: a job was created or cancelled, or a webhook was disabled or
    /// enabled (the held sweep).
    pub fn wake_jobs(&self) {
        self.inner.jobs_wake.notify_one();
    }

    /// Runs the job runner until shutdown. Spawn it once.
    pub async fn run_jobs(self) {
        let inner = &self.inner;
        // The active jobs as their last step left them; `None` until listed.
        let mut known: Option<HashMap<JobId, Option<Job>>> = None;
        let mut listed = Instant::now();
        // Whether the held sweep may have work.
        let mut sweep = true;
        loop {
            if known.is_none() || listed.elapsed() >= Duration::from_millis(RELIST_MS) {
                sweep = true;
                match blocking(&inner.store, |s| s.active_jobs()).await {
                    Ok(ids) => {
                        let mut previous = known.take().unwrap_or_default();
                        known = Some(
                            ids.into_iter()
                                .map(|id| (id, previous.remove(&id).flatten()))
                                .collect(),
                        );
                        listed = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not list the recovery jobs; will try again");
                    }
                }
            }
            let moved = match known.as_mut() {
                Some(jobs) => match Arc::clone(inner).step_jobs(jobs).await {
                    Ok(moved) => moved,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not step the recovery jobs; will try again");
                        false
                    }
                },
                None => false,
            };
            let mut moved = moved;
            if sweep {
                let now = clock::now_ms();
                match blocking(&inner.store, move |s| s.sweep_held(SWEEP_WEBHOOKS, now)).await {
                    Ok(report) => {
                        sweep = report.more;
                        moved |= report.more;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not move held deliveries; will try again");
                    }
                }
            }
            let pause = Duration::from_millis(if moved { BUSY_MS } else { IDLE_MS });
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = inner.jobs_wake.notified() => known = None,
                () = inner.shutdown.cancelled() => return,
            }
        }
    }
}

impl Inner {
    /// The step limits: a window of a few in-flight slots' worth of deliveries per job
    /// (8 × the per-webhook limit, at least 64), enough to keep the webhook's slots busy
    /// between steps, small enough that the queues stay short.
    fn job_limits(&self) -> JobLimits {
        JobLimits {
            scan: SCAN_PER_STEP,
            window: u64::try_from((self.settings.max_in_flight_per_webhook * 8).max(64))
                .unwrap_or(64),
            max_attempts: self.settings.schedule.max_attempts(),
        }
    }

    /// One step of every job in `jobs` (with the state its last step left, if any); a job
    /// that became final leaves the map. Returns whether any moved.
    async fn step_jobs(
        self: Arc<Self>,
        jobs: &mut HashMap<JobId, Option<Job>>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut moved = false;
        let ids: Vec<JobId> = jobs.keys().copied().collect();
        for id in ids {
            let limits = self.job_limits();
            let now = clock::now_ms();
            let Some(after) = blocking(&self.store, move |s| s.job_step(id, limits, now)).await?
            else {
                jobs.remove(&id);
                continue;
            };
            moved |= jobs.get(&id).and_then(Option::as_ref) != Some(&after);
            if after.finished_at_ms.is_some() {
                jobs.remove(&id);
                if after.finished_at_ms == Some(now) {
                    tracing::info!(job = %id, kind = after.kind.as_str(), matched = after.matched, succeeded = after.succeeded, failed = after.failed, "job finished");
                    self.emitter.recovery_finished(&after, now).await;
                }
            } else {
                jobs.insert(id, Some(after));
            }
        }
        Ok(moved)
    }
}
