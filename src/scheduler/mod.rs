//! The scheduler: per-webhook due queues over the store's due index, and the attempt tasks
//! it starts.
//!
//! Owner's rule: the store's index is the source of truth; memory holds a bounded window of
//! each webhook's due entries ([`queues`], pure, unit-tested with explicit times). The store
//! publishes every committed change of the index and of the webhooks ([`Change`]) to
//! [`Scheduler::on_commit`] before the writer's callers are answered, so no API handler has
//! to tell the scheduler anything, and no write can leave a due entry unseen. This module
//! reads (refills, a delivery before its attempt) on the blocking pool and sends through
//! [`Sender`]; it never opens the database itself.
//!
//! Architecture invariants: at most one attempt per delivery is in flight in this process
//! (scheduled or manual), which keeps attempt numbers unique; a due delivery waits in its
//! webhook's queue (memory or disk), never postponed for lack of room; an event's body is in
//! memory once however many attempts use it, and the bodies held for attempts are bounded in
//! bytes ([`BODY_BUDGET_BYTES`]).

pub mod queues;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock;
use crate::delivery::{OutgoingAttempt, Sender};
use crate::ids::{DeliveryId, EventKey, WebhookId};
use crate::model::{Attempt, Delivery, Trigger, Webhook};
use crate::retry::RetrySchedule;
use crate::store::{blocking, Change, Store, StoreError};
use queues::{Key, Limits, Next, Queues, Refill, Slot};

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

/// Bytes of event bodies held in memory for attempts (64 MiB): an attempt whose body is not
/// already in memory waits for room before reading it. A body shared by many attempts
/// counts once.
pub const BODY_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Bodies of just-accepted events kept for their first attempts (4 MiB, within the budget);
/// beyond, the attempt reads the body from the store.
const FRESH_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most just-accepted deliveries kept for their first attempts (about 250 bytes each, so
/// about 2 MiB at most); beyond, the attempt reads the delivery.
const FRESH_DELIVERIES: usize = 8_192;
/// The budget's unit (1 KiB).
const BUDGET_UNIT: usize = 1024;

/// How long a manual attempt (redelivery, test) waits for a free in-flight slot of its
/// webhook and of the process before giving up with [`AttemptNowError::Busy`] (5 s).
pub const MANUAL_SLOT_WAIT: Duration = Duration::from_secs(5);

/// An attempt that takes longer than this (1 s) marks its webhook as not proven fast.
const SLOW_ATTEMPT_MS: u64 = 1_000;

/// A wall-clock step back larger than this (1 s), seen against the monotonic clock, makes
/// the scheduler bring back due times the old clock put too far ahead.
const CLOCK_STEP_MS: i64 = 1_000;

/// Watches the wall clock against the monotonic one: a step back shows as a drop of their
/// difference (issue 13, item 9). Pure: it is given both readings.
#[derive(Debug)]
pub struct ClockWatch {
    offset_ms: i64,
}

impl ClockWatch {
    /// Starts from one reading of both clocks, in ms.
    pub fn new(wall_ms: u64, monotonic_ms: u64) -> ClockWatch {
        ClockWatch {
            offset_ms: wall_ms as i64 - monotonic_ms as i64,
        }
    }

    /// A new reading; returns how far the wall clock stepped back since the last one (ms),
    /// if more than [`CLOCK_STEP_MS`].
    pub fn observe(&mut self, wall_ms: u64, monotonic_ms: u64) -> Option<u64> {
        let offset = wall_ms as i64 - monotonic_ms as i64;
        let change = offset - self.offset_ms;
        self.offset_ms = offset;
        (change < -CLOCK_STEP_MS).then(|| change.unsigned_abs())
    }
}

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

/// An event body shared by every attempt that uses it; its budget is given back when the
/// last one drops it.
struct Body {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Lets `Bytes` share a [`Body`] without copying it.
struct SharedBody(Arc<Body>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// The bodies in memory: every live one by event (weak), and the newest accepted ones (strong,
/// at most [`FRESH_BODY_BYTES`]) for their first attempts.
#[derive(Default)]
struct Bodies {
    live: HashMap<EventKey, Weak<Body>>,
    /// `live`'s size at which dropped bodies are next swept out (twice the size after the
    /// last sweep, at least 4,096), so sweeping costs O(1) per insert.
    sweep_at: usize,
    fresh: VecDeque<(EventKey, Arc<Body>)>,
    fresh_bytes: usize,
}

impl Bodies {
    fn get(&self, event: EventKey) -> Option<Arc<Body>> {
        self.live.get(&event).and_then(Weak::upgrade)
    }

    fn insert(&mut self, event: EventKey, body: &Arc<Body>) {
        if self.live.len() >= self.sweep_at.max(4096) {
            self.live.retain(|_, weak| weak.strong_count() > 0);
            self.sweep_at = self.live.len() * 2;
        }
        self.live.insert(event, Arc::downgrade(body));
    }

    fn keep_fresh(&mut self, event: EventKey, body: Arc<Body>) {
        self.fresh_bytes += body.bytes.len();
        self.fresh.push_back((event, body));
        while self.fresh_bytes > FRESH_BODY_BYTES {
            let Some((_, old)) = self.fresh.pop_front() else {
                break;
            };
            self.fresh_bytes -= old.bytes.len();
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
    /// [`BODY_BUDGET_BYTES`] in [`BUDGET_UNIT`]s.
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
        let inner = Arc::new(Inner {
            store: Arc::clone(&store),
            sender,
            settings,
            queues: Mutex::new(Queues::new(limits)),
            webhooks: RwLock::new(HashMap::new()),
            bodies: Mutex::new(Bodies::default()),
            fresh: Mutex::new(HashMap::new()),
            body_budget: Arc::new(Semaphore::new(BODY_BUDGET_BYTES / BUDGET_UNIT)),
            wake: Notify::new(),
            slot_freed: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            held: Mutex::new(HashMap::new()),
            reactivated: Mutex::new(Vec::new()),
            tracker,
            shutdown,
            last_turn_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
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
        let heads = store.webhook_due_heads()?;
        let mut queues = lock(&inner.queues);
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
        let (delivery, _) = self
            .inner
            .read_delivery(id, true)
            .await?
            .ok_or(AttemptNowError::NotFound)?;
        let slots = self.reserve_slots(delivery.webhook_id).await?;
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
            if let Some(slot) = lock(&self.inner.queues).try_take(webhook) {
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
            .read_delivery(claim.id, false)
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

/// Runs [`Store::clamp_far_due`] at the wall clock's now and logs what moved. Only entries
/// further ahead than the schedule's shortest step are looked at: no retry can be wrong by
/// less (a test attempt's lease or an inactive webhook's hold brought back is harmless: the
/// claim and the hold apply again).
fn clamp_far_due(store: &Store, schedule: &RetrySchedule, when: &str) -> Result<(), StoreError> {
    let shortest = schedule
        .delays()
        .iter()
        .min()
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let report = store.clamp_far_due(clock::now_ms(), schedule, shortest)?;
    if report.moved > 0 {
        tracing::warn!(
            moved = report.moved,
            max_shift_s = report.max_shift_ms / 1000,
            "{when}: brought back due times further ahead than their retry step (the clock was ahead when they were scheduled)"
        );
    }
    Ok(())
}

impl Inner {
    /// Applies a committed batch's changes (on the store's writer thread: memory only).
    fn on_commit(&self, changes: Vec<Change>) {
        let mut queues = lock(&self.queues);
        for change in changes {
            match change {
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
                    let units = body.len().div_ceil(BUDGET_UNIT).max(1);
                    let Ok(permit) = u32::try_from(units).map_err(drop).and_then(|units| {
                        Arc::clone(&self.body_budget)
                            .try_acquire_many_owned(units)
                            .map_err(drop)
                    }) else {
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
                Change::Webhook { id, webhook } => {
                    let mut cache = self.webhooks.write().unwrap_or_else(|e| e.into_inner());
                    let was_active = cache.get(&id).is_some_and(|w| w.active);
                    match webhook {
                        Some(webhook) => {
                            if webhook.active && !was_active && cache.contains_key(&id) {
                                lock(&self.reactivated).push(id);
                            }
                            cache.insert(id, webhook);
                        }
                        None => {
                            cache.remove(&id);
                            lock(&self.held).remove(&id);
                        }
                    }
                }
            }
        }
        drop(queues);
        self.wake.notify_one();
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
        let store = Arc::clone(&self.store);
        let asks = wanted.clone();
        let read = tokio::task::spawn_blocking(move || {
            asks.iter()
                .map(|r| store.webhook_due_entries(r.webhook, Some(r.after), r.limit))
                .collect::<Vec<_>>()
        })
        .await;
        let mut queues = lock(&self.queues);
        match read {
            Ok(results) => {
                for (refill, result) in wanted.into_iter().zip(results) {
                    match result {
                        Ok(entries) => queues.refilled(refill, &entries),
                        Err(e) => {
                            tracing::warn!(webhook = %refill.webhook, error = %e, "could not read the due index; will try again");
                            queues.refill_failed(refill);
                        }
                    }
                }
            }
            Err(_) => {
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

    /// Reads a delivery and its event's body: from memory when it is there, else from the
    /// store, within the body budget (room for the largest body is reserved before a body is
    /// read, and cut to the body's size after). `skip_body`: the delivery only.
    async fn read_delivery(
        self: &Arc<Self>,
        id: DeliveryId,
        skip_body: bool,
    ) -> Result<Option<(Delivery, Bytes)>, StoreError> {
        let largest = u32::try_from(
            self.settings
                .max_body_bytes
                .min(BODY_BUDGET_BYTES)
                .div_ceil(BUDGET_UNIT)
                .max(1),
        )
        .unwrap_or(u32::MAX);
        let mut reserved = if skip_body {
            None
        } else {
            Arc::clone(&self.body_budget)
                .try_acquire_many_owned(largest)
                .ok()
        };
        let may_read_body = reserved.is_some();
        let inner = Arc::clone(self);
        let read = blocking(&self.store, move |s| {
            s.delivery_for_attempt(id, |event| {
                !may_read_body || lock(&inner.bodies).get(event).is_some()
            })
        })
        .await?;
        let Some((delivery, mut body)) = read else {
            return Ok(None);
        };
        if skip_body {
            return Ok(Some((delivery, Bytes::new())));
        }
        let event = delivery.event_key;
        loop {
            if let Some(shared) = lock(&self.bodies).get(event) {
                return Ok(Some((delivery, Bytes::from_owner(SharedBody(shared)))));
            }
            if let (Some(bytes), Some(mut permit)) = (body.take(), reserved.take()) {
                let units =
                    u32::try_from(bytes.len().div_ceil(BUDGET_UNIT).max(1)).unwrap_or(largest);
                // The rest of the reservation goes back when `permit` drops.
                let exact = permit.split(units.min(largest) as usize);
                let mut bodies = lock(&self.bodies);
                // Another attempt may have loaded it meanwhile: share that one.
                let shared = match bodies.get(event) {
                    Some(shared) => shared,
                    None => {
                        let shared = Arc::new(Body {
                            bytes: Bytes::from(bytes),
                            _budget: exact,
                        });
                        bodies.insert(event, &shared);
                        shared
                    }
                };
                return Ok(Some((delivery, Bytes::from_owner(SharedBody(shared)))));
            }
            // The body was in memory when the read began and left since, or the budget was
            // full: wait for room, then read it.
            if reserved.is_none() {
                reserved = tokio::select! {
                    permit = Arc::clone(&self.body_budget).acquire_many_owned(largest) => permit.ok(),
                    () = self.shutdown.cancelled() => return Err(StoreError::Interrupted),
                };
            }
            body = match blocking(&self.store, move |s| s.delivery_for_attempt(id, |_| false))
                .await?
            {
                Some((_, Some(bytes))) => Some(bytes),
                _ => return Ok(None),
            };
        }
    }

    async fn run_scheduled(self: Arc<Self>, slots: Slots, key: Key) {
        let id = key.1;
        let Some(webhook_id) = slots.slot.map(|s| s.webhook) else {
            return;
        };
        // Already claimed: a manual attempt, or a duplicate window entry of an attempt in
        // flight. Look again in a second: a failed manual attempt leaves the schedule as it
        // was, so no change would bring this entry back (regression: it stayed due, unsent,
        // until a restart).
        let Some(claim) = self.claim(id) else {
            lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
            return;
        };
        // A deleted webhook's deliveries were cancelled in the same commit as the deletion.
        let Some(webhook) = self.webhook(webhook_id) else {
            return;
        };
        if !webhook.active {
            drop(slots);
            self.hold(claim, webhook_id, key).await;
            return;
        }
        let fresh = lock(&self.fresh)
            .remove(&id)
            .filter(|d| d.next_attempt_at_ms == Some(key.0));
        let shared = fresh
            .as_ref()
            .and_then(|d| lock(&self.bodies).get(d.event_key));
        let read = match (fresh, shared) {
            (Some(delivery), Some(body)) => {
                Ok(Some((delivery, Bytes::from_owner(SharedBody(body)))))
            }
            _ => self.read_delivery(id, false).await,
        };
        let (delivery, body) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "could not load a due delivery; will look again");
                lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
                return;
            }
        };
        let now = clock::now_ms();
        if delivery.status.is_final() || delivery.next_attempt_at_ms.is_none_or(|due| due > now) {
            return; // Stale entry: the index moved on.
        }
        if let Err(e) = Arc::clone(&self)
            .attempt(claim, slots, delivery, &webhook, body, Trigger::Scheduled)
            .await
        {
            tracing::warn!(delivery = %id, error = %e, "scheduled attempt not recorded; will try again");
            lock(&self.queues).defer(webhook_id, key, clock::now_ms() + RECHECK_MS);
        }
    }

    /// Postpones a due delivery of an inactive webhook by [`INACTIVE_POSTPONE_MS`] and
    /// remembers it, so reactivation brings it back at once.
    async fn hold(&self, claim: Claim, webhook_id: WebhookId, key: Key) {
        let id = claim.id;
        let now = clock::now_ms();
        let until = now + INACTIVE_POSTPONE_MS;
        match blocking(&self.store, move |s| s.postpone(id, now, until)).await {
            Ok(true) => {
                {
                    let mut held = lock(&self.held);
                    let list = held.entry(webhook_id).or_default();
                    if list.len() < MAX_HELD_PER_WEBHOOK {
                        list.push((id, until));
                    }
                }
                // Reactivated while the hold was being written: the reactivation may have
                // taken the held list already, so bring this one back itself (regression:
                // a quick off/on left some deliveries held for 10 minutes).
                if self.webhook(webhook_id).is_some_and(|w| w.active) {
                    let mine = lock(&self.held).get_mut(&webhook_id).and_then(|list| {
                        let at = list.iter().position(|(held, _)| *held == id)?;
                        Some(list.swap_remove(at))
                    });
                    if let Some(held) = mine {
                        let now = clock::now_ms();
                        if let Err(e) =
                            blocking(&self.store, move |s| s.resume_held(&[held], now)).await
                        {
                            tracing::warn!(delivery = %id, error = %e, "could not bring a held delivery forward; it goes within 10 minutes");
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(_) => lock(&self.queues).defer(webhook_id, key, now + RECHECK_MS),
        }
        drop(claim);
    }

    /// Sends one attempt for a claimed delivery and records it. The in-flight slot is
    /// released as soon as the HTTP exchange ends: it bounds requests to receivers, and the
    /// claim (kept until the attempt is logged) already prevents a second attempt of the same
    /// delivery, so waiting for the commit does not take a slot from other deliveries.
    async fn attempt(
        self: Arc<Self>,
        claim: Claim,
        slots: Slots,
        delivery: Delivery,
        webhook: &Webhook,
        body: Bytes,
        trigger: Trigger,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        // Its attempt count moves now: a kept copy of the delivery would be stale.
        lock(&self.fresh).remove(&delivery.id);
        let mut slots = slots;
        let send = self.sender.send(OutgoingAttempt {
            url: &webhook.url,
            body,
            secret: &webhook.secret,
            previous_secret: webhook
                .previous_secret_at(clock::now_ms())
                .map(|p| &p.secret),
            event_key: delivery.event_key,
            webhook_id: webhook.id,
            event_type: delivery.event_type,
            event_id: &delivery.event_id,
            delivery_id: delivery.id,
            number: delivery.attempt_count + 1,
            trigger,
        });
        tokio::pin!(send);
        let log = tokio::select! {
            log = &mut send => log,
            () = tokio::time::sleep(Duration::from_millis(SLOW_ATTEMPT_MS)) => {
                // Still waiting after a second: the webhook is slow now, whatever it was.
                if let Some(slot) = slots.slot.as_mut() {
                    lock(&self.queues).slowed(slot);
                }
                send.await
            }
        };
        let fast = log.duration_ms < SLOW_ATTEMPT_MS
            && log.error != Some(crate::model::AttemptError::Timeout);
        slots.finish(Some(fast));
        let id = delivery.id;
        let schedule = self.settings.schedule.clone();
        let updated = self
            .store
            .record_attempt(id, log.clone(), schedule, clock::now_ms())
            .await?
            .ok_or(AttemptNowError::NotFound)?;
        drop(claim);
        crate::metrics::attempt(&log);
        // A transition into a final status, once: redelivering a delivery that had already
        // succeeded does not count it again.
        if updated.status.is_final() && updated.status != delivery.status {
            metrics::counter!(crate::metrics::DELIVERIES_FINISHED, "outcome" => updated.status.as_str())
                .increment(1);
        }
        tracing::debug!(
            delivery = %id,
            attempt = log.number,
            status = ?log.status_code,
            error = log.error.map(|e| e.as_str()),
            duration_ms = log.duration_ms,
            "attempt logged"
        );
        if updated.status.is_final() && trigger == Trigger::Scheduled {
            tracing::info!(delivery = %id, status = updated.status.as_str(), attempts = updated.attempt_count, "delivery finished");
        }
        Ok((updated, log))
    }
}

#[cfg(test)]
mod tests {
    use super::ClockWatch;

    #[test]
    fn a_wall_clock_step_back_is_seen_against_the_monotonic_clock() {
        let year = 365 * 24 * 3_600_000;
        let mut watch = ClockWatch::new(year + 1_000, 0);
        assert_eq!(watch.observe(year + 2_000, 1_000), None, "time passing");
        assert_eq!(watch.observe(year + 2_500, 1_500), None);
        // NTP corrects a clock that was a year ahead.
        assert_eq!(watch.observe(3_000, 2_000), Some(year));
        assert_eq!(watch.observe(4_000, 3_000), None);
        // A forward step is not a step back.
        assert_eq!(watch.observe(year, 4_000), None);
    }
}
