//! The scheduler: per-webhook due queues over the store's due index, and the attempt tasks
//! it starts.
//!
//! Owner's rule: the store's index is the source of truth; memory holds a bounded window of
//! each webhook's due entries ([`queues`], pure, unit-tested with explicit times). The store
//! publishes every committed change of the index and of the webhooks ([`Change`]) to
//! `Inner::on_commit` before the writer's callers are answered, so no API handler has
//! to tell the scheduler anything, and no write can leave a due entry unseen. This module
//! reads (refills, a delivery before its attempt) on the blocking pool and sends through
//! [`Sender`]; it never opens the database itself.
//!
//! Architecture invariants: at most one attempt per delivery is in flight in this process
//! (scheduled or manual), which keeps attempt numbers unique; a due delivery waits in its
//! webhook's queue (memory or disk), never postponed for lack of room; an event's body is in
//! memory once however many attempts use it, and the bodies held for attempts are bounded in
//! bytes ([`BODY_BUDGET_BYTES`]); a deleted payload ([`Change::PayloadDeleted`]) leaves memory
//! at its commit, and no attempt sends an empty body (the tombstone).
//!
//! Files: this one holds the loop, dispatch, manual attempts and the applying of changes;
//! `queues.rs` the pure queues and slots; `attempt.rs` one scheduled attempt from claim to
//! log; `bodies.rs` the shared bodies and their budget; `clock_step.rs` wall-clock steps.

mod attempt;
mod bodies;
mod clock_step;
mod flow;
mod jobs;
mod ordering;
pub mod ownership;
pub mod queues;

pub use bodies::BODY_BUDGET_BYTES;
use bodies::{budget_units, Bodies, Body, SharedBody};
use clock_step::clamp_far_due;
pub use clock_step::ClockWatch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock;
use crate::delivery::Sender;
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Attempt, Delivery, Trigger, Webhook};
use crate::retry::RetrySchedule;
use crate::store::{blocking, Change, Store, StoreError};
use queues::{Limits, Next, Queues, Refill, Slot};

/// The loop turns at least this often, even when nothing is due (1 s).
const TURN_INTERVAL_MS: u64 = 1_000;
/// A delivery whose read or commit failed is looked at again after this long (1 s).
const RECHECK_MS: u64 = 1_000;
/// While its webhook is inactive, a due delivery is postponed by this much (10 min), so a
/// held backlog costs one write per delivery per 10 minutes; reactivation brings the held
/// deliveries back at once.
const INACTIVE_POSTPONE_MS: u64 = 600_000;
/// Most held deliveries remembered per inactive webhook (16 bytes each); beyond, they go
/// within 10 minutes of reactivation.
const MAX_HELD_PER_WEBHOOK: usize = 100_000;
/// Most attempts started per loop turn before the loop lets other tasks run.
const DISPATCH_BATCH: usize = 512;
/// Most refill reads done in one blocking call.
const REFILL_BATCH: usize = 64;

/// Most just-accepted deliveries kept for their first attempts (about 250 bytes each, so
/// about 2 MiB at most); beyond, the attempt reads the delivery.
const FRESH_DELIVERIES: usize = 8_192;

/// How long a manual attempt (redelivery, test) waits for a free in-flight slot of its
/// webhook and of the process before giving up with [`AttemptNowError::Busy`] (5 s).
pub const MANUAL_SLOT_WAIT: Duration = Duration::from_secs(5);

/// An attempt that takes longer than this (1 s) marks its webhook as not proven fast.
const SLOW_ATTEMPT_MS: u64 = 1_000;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The retry schedule.
    pub schedule: RetrySchedule,
    /// Most attempts in flight in the whole process.
    pub max_in_flight: usize,
    /// Most attempts in flight to one webhook.
    pub max_in_flight_per_webhook: usize,
    /// The largest event body, in bytes (`--max-body-bytes`): what an attempt reserves in the
    /// body budget before reading a body.
    pub max_body_bytes: usize,
    /// When the daemon disables a webhook (issue 15).
    pub disable: crate::lifecycle::DisablePolicy,
    /// Whether the operator endpoint (`operator_webhook_url`) gets copies of operational
    /// events.
    pub operator_endpoint: bool,
}

/// Why a manual attempt could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AttemptNowError {
    /// Another attempt of this delivery is in flight.
    #[error("an attempt of this delivery is already in flight")]
    InFlight,
    /// The delivery does not exist.
    #[error("no such delivery")]
    NotFound,
    /// No in-flight slot of the webhook (or of the process) freed within
    /// [`MANUAL_SLOT_WAIT`]: manual attempts obey the same limits as scheduled ones.
    #[error("every in-flight slot of this webhook is busy")]
    Busy,
    /// Its webhook was deleted or is inactive.
    #[error("the delivery's webhook is deleted or inactive")]
    WebhookUnavailable,
    /// The event's payload was deleted (issue 15): there is nothing left to send.
    #[error("the event's payload was deleted")]
    PayloadDeleted,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An in-flight slot of one webhook (and of the process), given back when dropped.
pub struct Slots {
    inner: Arc<Inner>,
    slot: Option<Slot>,
}

impl Slots {
    /// Gives the slot back, saying how fast the webhook answered.
    fn finish(mut self, fast: Option<bool>) {
        if let Some(slot) = self.slot.take() {
            self.inner.release(slot, fast);
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.inner.release(slot, None);
        }
    }
}

struct Inner {
    store: Arc<Store>,
    sender: Sender,
    settings: SchedulerSettings,
    queues: Mutex<Queues>,
    /// Every webhook, as last committed (kept in step by [`Change::Webhook`]).
    webhooks: RwLock<HashMap<WebhookId, Arc<Webhook>>>,
    bodies: Mutex<Bodies>,
    /// Deliveries as accepted, until their first attempt starts or a change moves them
    /// (at most [`FRESH_DELIVERIES`]): present means unchanged since the commit.
    fresh: Mutex<HashMap<DeliveryId, Delivery>>,
    /// [`BODY_BUDGET_BYTES`] in 1 KiB units ([`budget_units`]).
    body_budget: Arc<Semaphore>,
    /// Rung when the loop may have work: a change, a released slot, a finished read.
    wake: Notify,
    /// Rung when a slot is released (manual attempts wait on it).
    slot_freed: Notify,
    in_flight: Mutex<HashSet<DeliveryId>>,
    /// Deliveries postponed because their webhook is inactive, with the time they were moved
    /// to, by webhook (at most [`MAX_HELD_PER_WEBHOOK`] each): reactivation brings exactly
    /// these back.
    held: Mutex<HashMap<WebhookId, Vec<(DeliveryId, u64)>>>,
    /// Webhooks that went from inactive to active, for the loop to bring their held
    /// deliveries back.
    reactivated: Mutex<Vec<WebhookId>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Monotonic ms since `started` of the loop's last turn ([`Scheduler::since_last_turn`]).
    last_turn_ms: AtomicU64,
    started: std::time::Instant,
    /// The webhooks this daemon serves: `None` for all (one daemon on its own store),
    /// `Some` when it is one of a cluster's ([`ownership`]); changes of others are ignored.
    owned: RwLock<Option<HashSet<WebhookId>>>,
    /// Monotonic ms (as [`Inner::monotonic_ms`]) after which no attempt may start: the
    /// cluster's lease deadline; `u64::MAX` alone.
    lease_deadline_ms: AtomicU64,
    /// The cluster as the coordinator last saw it.
    cluster: Mutex<Option<ownership::ClusterStatus>>,
    /// Failing streaks of the webhooks, for the disable rule (issue 15).
    streaks: Mutex<crate::lifecycle::Streaks>,
    /// Emits operational events (`webhook.disabled`, `delivery.exhausted`).
    emitter: crate::lifecycle::Emitter,
    /// Rung when a job is created, so the job runner starts it at once.
    jobs_wake: Notify,
}

/// Handle to the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// Removes a delivery from the in-flight set when the attempt ends, however it ends.
struct Claim {
    inner: Arc<Inner>,
    id: DeliveryId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data that is still consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Scheduler {
    /// A scheduler over `store`, sending with `sender`, stopping when `shutdown` is cancelled.
    /// Attempt tasks are spawned on `tracker`, so the caller can wait for them. It subscribes
    /// to the store's committed changes at once, then reads every webhook and the head of
    /// every webhook's due index (blocking: call it before the API serves).
    ///
    /// # Errors
    /// [`StoreError`] when the webhooks or the due index cannot be read.
    pub fn new(
        store: Arc<Store>,
        sender: Sender,
        settings: SchedulerSettings,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Scheduler, StoreError> {
        let limits = Limits::new(settings.max_in_flight, settings.max_in_flight_per_webhook);
        let settings_operator = settings.operator_endpoint;
        // On PostgreSQL, webhooks are served as leases are taken ([`ownership`]).
        let clustered = store.as_postgres().is_some();
        let inner = Arc::new(Inner {
            store: Arc::clone(&store),
            sender,
            settings,
            queues: Mutex::new(Queues::new(limits)),
            webhooks: RwLock::new(HashMap::new()),
            bodies: Mutex::new(Bodies::default()),
            fresh: Mutex::new(HashMap::new()),
            body_budget: Arc::new(Semaphore::new(budget_units(BODY_BUDGET_BYTES) as usize)),
            wake: Notify::new(),
            slot_freed: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            held: Mutex::new(HashMap::new()),
            reactivated: Mutex::new(Vec::new()),
            tracker,
            shutdown,
            last_turn_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            owned: RwLock::new(clustered.then(HashSet::new)),
            lease_deadline_ms: AtomicU64::new(if clustered { 0 } else { u64::MAX }),
            cluster: Mutex::new(None),
            streaks: Mutex::new(crate::lifecycle::Streaks::default()),
            emitter: crate::lifecycle::Emitter::new(Arc::clone(&store), settings_operator),
            jobs_wake: Notify::new(),
        });
        let weak = Arc::downgrade(&inner);
        store.subscribe(Box::new(move |changes| {
            if let Some(inner) = weak.upgrade() {
                inner.on_commit(changes);
            }
        }));
        let webhooks = store.all_webhooks()?;
        {
            let mut cache = inner.webhooks.write().unwrap_or_else(|e| e.into_inner());
            for webhook in webhooks {
                cache.entry(webhook.id).or_insert_with(|| Arc::new(webhook));
            }
        }
        let heads = if clustered {
            Vec::new()
        } else {
            store.webhook_due_heads()?
        };
        let mut queues = lock(&inner.queues);
        for webhook in inner
            .webhooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            queues.set_flow(
                webhook.id,
                webhook.options.max_in_flight,
                webhook.options.rate_limit,
            );
        }
        for (webhook, due, id) in heads {
            queues.seed(webhook, (due, id));
        }
        drop(queues);
        Ok(Scheduler { inner })
    }

    /// Runs the loop (refills, dispatch) until shutdown. Spawn it once.
    pub async fn run(self) {
        let inner = &self.inner;
        let mut paused = false;
        let monotonic_ms =
            || u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut clock_watch = ClockWatch::new(clock::now_ms(), monotonic_ms());
        // At start, off the path to readiness: a clock corrected while the daemon was down.
        {
            let store = Arc::clone(&inner.store);
            let schedule = inner.settings.schedule.clone();
            let clamped =
                tokio::task::spawn_blocking(move || clamp_far_due(&store, &schedule, "at start"))
                    .await;
            if !matches!(clamped, Ok(Ok(()))) {
                tracing::warn!("could not check for due times a corrected clock left far ahead");
            }
        }
        loop {
            inner.last_turn_ms.store(monotonic_ms(), Ordering::Relaxed);
            if let Some(back) = clock_watch.observe(clock::now_ms(), monotonic_ms()) {
                tracing::warn!(
                    stepped_back_ms = back,
                    "the wall clock stepped back; bringing back due times it put too far ahead"
                );
                let store = Arc::clone(&inner.store);
                let schedule = inner.settings.schedule.clone();
                let clamped = tokio::task::spawn_blocking(move || {
                    clamp_far_due(&store, &schedule, "after a clock step")
                })
                .await;
                if !matches!(clamped, Ok(Ok(()))) {
                    tracing::warn!("could not bring back far due times; they stay as they are");
                }
            }
            // A failed commit (disk full, I/O error) pauses delivery: an attempt that cannot
            // be logged would only be sent again later. Probe every second; resume when the
            // store commits again (reopened if redb latched the error), without a restart.
            if !inner.store.is_writable() {
                if !paused {
                    paused = true;
                    tracing::warn!("pausing deliveries: the store cannot log attempts (disk full or I/O error); probing every second");
                }
                let store = Arc::clone(&inner.store);
                let recovered = tokio::task::spawn_blocking(move || store.recover()).await;
                if !matches!(recovered, Ok(Ok(()))) {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
                        () = inner.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
            if paused {
                paused = false;
                tracing::info!("resuming deliveries: the store commits again");
            }
            inner.resume_reactivated();
            let refilled = Arc::clone(inner).refill().await;
            let (started, next) = self.dispatch();
            if started >= DISPATCH_BATCH || refilled {
                // More may be due at once: let the tasks just spawned run, then go round.
                tokio::task::yield_now().await;
                if inner.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            let now = clock::now_ms();
            let next_wake = next.unwrap_or(u64::MAX).min(now + TURN_INTERVAL_MS);
            let sleep = Duration::from_millis(next_wake.saturating_sub(now));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = inner.wake.notified() => {}
                () = inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Starts up to [`DISPATCH_BATCH`] attempts that are due and have a slot. Returns how
    /// many started and when the next head falls due (if nothing more is due now).
    fn dispatch(&self) -> (usize, Option<u64>) {
        let now = clock::now_ms();
        if self.inner.monotonic_ms() > self.inner.lease_deadline_ms.load(Ordering::Relaxed) {
            // The cluster's leases could not be renewed in time: start nothing.
            return (0, Some(now + TURN_INTERVAL_MS));
        }
        let mut started = 0;
        let mut next_due = None;
        let mut queues = lock(&self.inner.queues);
        while started < DISPATCH_BATCH {
            match queues.next(now) {
                Next::Dispatch(slot, key) => {
                    let slots = Slots {
                        inner: Arc::clone(&self.inner),
                        slot: Some(slot),
                    };
                    let inner = Arc::clone(&self.inner);
                    self.inner
                        .tracker
                        .spawn(async move { inner.run_scheduled(slots, key).await });
                    started += 1;
                }
                Next::Full => break,
                Next::Idle(next) => {
                    next_due = next;
                    break;
                }
            }
        }
        (started, next_due)
    }

    /// Makes one manual attempt of a delivery now (spec: "re-déclencher manuellement une
    /// livraison"), logs it with trigger `manual`, and returns it with the updated delivery.
    /// It first takes its webhook's in-flight slot like any attempt, waiting up to
    /// [`MANUAL_SLOT_WAIT`], then reads the delivery afresh.
    ///
    /// # Errors
    /// [`AttemptNowError`]: already in flight (409), not found, webhook gone/inactive, no
    /// free slot in time (`Busy`), store.
    pub async fn redeliver(&self, id: DeliveryId) -> Result<(Delivery, Attempt), AttemptNowError> {
        self.check_writable()?;
        let claim = self.inner.claim(id).ok_or(AttemptNowError::InFlight)?;
        let webhook = blocking(&self.inner.store, move |s| s.get_deliveries(&[id]))
            .await?
            .first()
            .map(|d| d.webhook_id)
            .ok_or(AttemptNowError::NotFound)?;
        let slots = self.reserve_slots(webhook).await?;
        self.attempt_with(claim, slots, Trigger::Manual).await
    }

    /// Takes one in-flight slot of `webhook` (within the process's limits), waiting up to
    /// [`MANUAL_SLOT_WAIT`]: manual attempts obey the same limits as scheduled ones, so a
    /// person clicking "redeliver" on a hundred deliveries of a hanging endpoint holds its one
    /// slot, not a hundred. The test endpoint reserves before it writes anything.
    ///
    /// # Errors
    /// [`AttemptNowError::Busy`] when no slot freed in time or the daemon is stopping.
    pub async fn reserve_slots(&self, webhook: WebhookId) -> Result<Slots, AttemptNowError> {
        let deadline = tokio::time::Instant::now() + MANUAL_SLOT_WAIT;
        loop {
            let freed = self.inner.slot_freed.notified();
            if let Some(slot) = lock(&self.inner.queues).try_take(webhook, clock::now_ms()) {
                return Ok(Slots {
                    inner: Arc::clone(&self.inner),
                    slot: Some(slot),
                });
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep_until(deadline) => return Err(AttemptNowError::Busy),
                () = self.inner.shutdown.cancelled() => return Err(AttemptNowError::Busy),
            }
        }
    }

    /// Makes the first attempt of a just-accepted delivery now, as a scheduled attempt, in
    /// `slots` reserved before the delivery was written (the test-delivery endpoint). The
    /// delivery's index entry must be a lease far enough ahead that the queues do not fire it
    /// meanwhile; it is moved when the attempt is logged.
    ///
    /// # Errors
    /// As [`Scheduler::redeliver`], but never `Busy`.
    pub async fn attempt_now(
        &self,
        id: DeliveryId,
        slots: Slots,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        self.check_writable()?;
        let claim = self.inner.claim(id).ok_or(AttemptNowError::InFlight)?;
        self.attempt_with(claim, slots, Trigger::Scheduled).await
    }

    fn check_writable(&self) -> Result<(), AttemptNowError> {
        if self.inner.store.is_writable() {
            Ok(())
        } else {
            Err(AttemptNowError::Store(StoreError::CommitFailed(
                "the store cannot log attempts now (disk full or I/O error)".into(),
            )))
        }
    }

    /// Reads the claimed delivery now (after any wait for slots) and makes the attempt.
    async fn attempt_with(
        &self,
        claim: Claim,
        slots: Slots,
        trigger: Trigger,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        let (delivery, body) = self
            .inner
            .read_delivery(claim.id)
            .await?
            .ok_or(AttemptNowError::NotFound)?;
        let webhook = self
            .inner
            .webhook(delivery.webhook_id)
            .filter(|w| w.active)
            .ok_or(AttemptNowError::WebhookUnavailable)?;
        Arc::clone(&self.inner)
            .attempt(claim, slots, delivery, &webhook, body, trigger)
            .await
    }

    /// How long ago the scheduler loop last turned, by the monotonic clock (since the
    /// scheduler was created, if it never turned). It turns at least every second while
    /// running, so a large value means it is stuck (the systemd watchdog is fed only while
    /// it is small).
    pub fn since_last_turn(&self) -> Duration {
        let now = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.inner.last_turn_ms.load(Ordering::Relaxed)))
    }

    /// The operational events' emitter (the API emits `webhook.enabled` with it).
    pub fn emitter(&self) -> &crate::lifecycle::Emitter {
        &self.inner.emitter
    }

    /// Number of attempts in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.in_flight).len()
    }

    /// Entries held in memory by the queues (windows and deferred entries), for status.
    pub fn queued_in_memory(&self) -> usize {
        lock(&self.inner.queues).counts().0
    }

    /// Whether an attempt of `id` is claimed now (running, or about to): retention leaves
    /// such a delivery alone, so an attempt is never sent for a delivery it then deletes.
    pub fn is_claimed(&self, id: DeliveryId) -> bool {
        lock(&self.inner.in_flight).contains(&id)
    }
}

impl Inner {
    /// Applies a committed batch's changes (on the store's writer thread: memory only).
    fn on_commit(&self, changes: Vec<Change>) {
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        let serves = |w: &WebhookId| owned.as_ref().is_none_or(|set| set.contains(w));
        let mut queues = lock(&self.queues);
        for change in changes {
            match change {
                Change::Index { webhook, .. } if !serves(&webhook) => {}
                Change::Accepted { deliveries, .. }
                    if !deliveries.iter().any(|d| serves(&d.webhook_id)) => {}
                Change::Index {
                    webhook,
                    delivery,
                    from,
                    to,
                } => {
                    if from.is_some() {
                        lock(&self.fresh).remove(&delivery);
                    }
                    queues.apply(
                        webhook,
                        from.map(|due| (due, delivery)),
                        to.map(|due| (due, delivery)),
                    );
                }
                Change::Accepted {
                    event,
                    body,
                    deliveries,
                } => {
                    {
                        let mut fresh = lock(&self.fresh);
                        for delivery in deliveries {
                            if fresh.len() >= FRESH_DELIVERIES {
                                break;
                            }
                            fresh.insert(delivery.id, delivery);
                        }
                    }
                    let Ok(permit) = Arc::clone(&self.body_budget)
                        .try_acquire_many_owned(budget_units(body.len()))
                    else {
                        continue; // No room: the first attempt reads it.
                    };
                    let body = Arc::new(Body {
                        bytes: body,
                        _budget: Some(permit),
                    });
                    let mut bodies = lock(&self.bodies);
                    bodies.insert(event, &body);
                    bodies.keep_fresh(event, body);
                }
                // The store keeps its own keys; nothing here depends on them.
                Change::Keys => {}
                // Issue 15, item 7: the body leaves memory, so no later attempt finds it
                // (those that hold it already were in flight at the deletion).
                Change::PayloadDeleted { event } => lock(&self.bodies).forget(event),
                Change::Webhook { id, webhook } => {
                    let mut cache = self.webhooks.write().unwrap_or_else(|e| e.into_inner());
                    let was_active = cache.get(&id).is_some_and(|w| w.active);
                    match webhook {
                        Some(webhook) => {
                            if webhook.active && !was_active && cache.contains_key(&id) {
                                lock(&self.reactivated).push(id);
                            }
                            queues.set_flow(
                                id,
                                webhook.options.max_in_flight,
                                webhook.options.rate_limit,
                            );
                            cache.insert(id, webhook);
                        }
                        None => {
                            queues.set_flow(id, None, None);
                            cache.remove(&id);
                            lock(&self.held).remove(&id);
                            lock(&self.streaks).forget(id);
                        }
                    }
                }
            }
        }
        drop(queues);
        drop(owned);
        self.wake.notify_one();
    }

    /// Monotonic ms since the scheduler started.
    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn webhook(&self, id: WebhookId) -> Option<Arc<Webhook>> {
        self.webhooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn claim(self: &Arc<Self>, id: DeliveryId) -> Option<Claim> {
        lock(&self.in_flight).insert(id).then(|| Claim {
            inner: Arc::clone(self),
            id,
        })
    }

    fn release(&self, slot: Slot, fast: Option<bool>) {
        lock(&self.queues).release(slot, fast);
        self.slot_freed.notify_waiters();
        self.wake.notify_one();
    }

    /// Reads the refills the queues want (up to [`REFILL_BATCH`], in one blocking call).
    /// Returns whether any was read.
    async fn refill(self: Arc<Self>) -> bool {
        let now = clock::now_ms();
        let wanted: Vec<Refill> = {
            let mut queues = lock(&self.queues);
            std::iter::from_fn(|| queues.take_refill(now))
                .take(REFILL_BATCH)
                .collect()
        };
        if wanted.is_empty() {
            return false;
        }
        let asks: Vec<_> = wanted
            .iter()
            .map(|r| (r.webhook, Some(r.after), r.limit))
            .collect();
        let read = blocking(&self.store, move |s| s.webhook_due_entries(&asks)).await;
        let mut queues = lock(&self.queues);
        match read {
            Ok(answers) => {
                for (refill, entries) in wanted.into_iter().zip(answers) {
                    queues.refilled(refill, &entries);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the due index; will try again");
                for refill in wanted {
                    queues.refill_failed(refill);
                }
            }
        }
        true
    }

    /// Brings back the held deliveries of webhooks that were reactivated.
    fn resume_reactivated(self: &Arc<Self>) {
        let ids = std::mem::take(&mut *lock(&self.reactivated));
        for id in ids {
            let held = lock(&self.held).remove(&id).unwrap_or_default();
            if held.is_empty() {
                continue;
            }
            let inner = Arc::clone(self);
            self.tracker.spawn(async move {
                let now = clock::now_ms();
                let count = held.len();
                if let Err(e) = blocking(&inner.store, move |s| s.resume_held(&held, now)).await {
                    tracing::warn!(webhook = %id, held = count, error = %e, "could not bring held deliveries forward; they go within 10 minutes");
                }
            });
        }
    }
}
