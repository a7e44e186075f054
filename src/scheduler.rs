//! The scheduler: the in-memory timer wheel over the store's retry index, and the attempt
//! tasks it starts.
//!
//! Owner's rule: the retry index in the store is the source of truth; the wheel is a bounded
//! cache of the entries due within the horizon. The loader reads the index from a cursor
//! `(due, delivery)` onward: every index key at or before the cursor is in the wheel, already
//! fired, or was pushed by [`Scheduler::schedule_hint`]. A hint for a key past the cursor is
//! dropped (the loader will read it); a hint that does not fit lowers the cursor instead, so
//! memory stays bounded and nothing is forgotten. A fired entry is re-checked against the store
//! before sending, so stale entries cost a read, never a wrong attempt.
//!
//! Architecture invariant: at most one attempt per delivery is in flight in this process
//! (scheduled or manual), which keeps attempt numbers unique.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock;
use crate::delivery::{OutgoingAttempt, Sender};
use crate::ids::{DeliveryId, WebhookId};
use crate::model::{Attempt, Delivery, Trigger};
use crate::retry::RetrySchedule;
use crate::store::{blocking, AttemptContext, Store, StoreError};

/// How far ahead the wheel holds entries (60 s).
const HORIZON_MS: u64 = 60_000;
/// The loader runs at least this often, even when nothing is due (1 s).
const REFILL_INTERVAL_MS: u64 = 1_000;
/// A delivery found busy or unreadable is looked at again after this long (1 s).
const RECHECK_MS: u64 = 1_000;
/// Most deliveries parked in memory for one webhook; beyond, they are postponed in the store.
const MAX_PARKED_PER_WEBHOOK: usize = 1_000;
/// How far a delivery beyond a webhook's parked queue is moved in the index (30 s).
const OVERFLOW_POSTPONE_MS: u64 = 30_000;
/// While its webhook is inactive, a due delivery is postponed by this much (10 min), so a
/// held backlog costs one write per delivery per 10 minutes; reactivation brings the held
/// deliveries back at once ([`Scheduler::webhook_reactivated`]).
const INACTIVE_POSTPONE_MS: u64 = 600_000;
/// Most held deliveries remembered per inactive webhook (16 bytes each); beyond, they go
/// within 10 minutes of reactivation.
const MAX_HELD_PER_WEBHOOK: usize = 100_000;

/// How long a manual attempt (redelivery, test) waits for a free in-flight slot of its
/// webhook and of the process before giving up with [`AttemptNowError::Busy`] (5 s).
pub const MANUAL_SLOT_WAIT: Duration = Duration::from_secs(5);

/// An attempt that takes longer than this (1 s) marks its webhook as not proven fast.
const SLOW_ATTEMPT_MS: u64 = 1_000;

/// In-flight slots reserved for one manual attempt ([`Scheduler::reserve_slots`]); released
/// when dropped.
pub struct Slots(Permits);

/// The in-flight permits of one attempt, released when dropped: its webhook's, the webhook's
/// single-file gate while the webhook is not proven fast, and the global one.
struct Permits {
    _own: OwnedSemaphorePermit,
    _gate: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
}

/// One webhook's in-flight limits. A webhook starts "unproven": its attempts go one at a
/// time (the gate) until one completes within [`SLOW_ATTEMPT_MS`]; then up to the
/// per-webhook limit run at once, until an attempt is slow again. So an endpoint that hangs
/// holds one in-flight slot, not `max_in_flight_per_webhook` of them, and a thousand
/// hanging endpoints cannot take the global slots the healthy ones need (issue 4).
struct Lane {
    permits: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    proven: std::sync::atomic::AtomicBool,
    /// Tasks waiting for a slot of this (proven) lane; at most `limit`, so a busy fast
    /// webhook always has its next attempts read and ready, and the rest stay parked.
    waiting: std::sync::atomic::AtomicUsize,
    limit: usize,
    /// Bumped when the webhook is changed or deleted through the API: a task that waited
    /// for a slot reads its delivery again only if this moved meanwhile.
    generation: std::sync::atomic::AtomicU64,
    /// Due deliveries of this webhook that found no room: no task, no body in memory, just
    /// the wheel entry, in order. The dispatcher takes them as soon as the lane has room.
    parked: Mutex<std::collections::VecDeque<Entry>>,
}

/// Counts a task in [`Lane::waiting`] until dropped.
struct Waiting(Arc<Lane>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lane {
    /// How many parked deliveries are worth dispatching now: free slots plus, for a proven
    /// webhook, free places in the queue of tasks waiting for one.
    fn room(&self) -> usize {
        let free = self.permits.available_permits();
        if self.proven.load(Ordering::Relaxed) {
            free + self
                .limit
                .saturating_sub(self.waiting.load(Ordering::Relaxed))
        } else {
            free.min(self.gate.available_permits())
        }
    }

    /// A place in the queue of tasks waiting for a slot, if the webhook is proven fast and
    /// the queue has room.
    fn join_queue(self: &Arc<Self>) -> Option<Waiting> {
        if !self.proven.load(Ordering::Relaxed) {
            return None;
        }
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let place = Waiting(Arc::clone(self));
        (before < self.limit).then_some(place)
    }

    /// The webhook's slot (and its gate while not proven) if free now.
    fn try_take(&self) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
        let own = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let gate = if self.proven.load(Ordering::Relaxed) {
            None
        } else {
            Some(Arc::clone(&self.gate).try_acquire_owned().ok()?)
        };
        Some((own, gate))
    }
}

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The retry schedule.
    pub schedule: RetrySchedule,
    /// Most entries held in memory (a hard cap is twice this).
    pub wheel_capacity: usize,
    /// Most attempts in flight in the whole process.
    pub max_in_flight: usize,
    /// Most attempts in flight to one webhook.
    pub max_in_flight_per_webhook: usize,
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

/// A wheel entry: fire at `fire_at` ms; `index_due` is the delivery's key in the retry index
/// (the same time, unless the entry is a recheck).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    fire_at: u64,
    id: DeliveryId,
    index_due: u64,
}

struct Wheel {
    entries: BTreeSet<Entry>,
    cursor: Option<(u64, DeliveryId)>,
    /// The index holds entries within the horizon that are not loaded (the last load hit the
    /// capacity, or a hint did not fit): load again as soon as there is room.
    behind: bool,
}

struct Inner {
    store: Arc<Store>,
    sender: Sender,
    settings: SchedulerSettings,
    wheel: Mutex<Wheel>,
    wake: Notify,
    in_flight: Mutex<HashSet<DeliveryId>>,
    global: Arc<Semaphore>,
    per_webhook: Mutex<HashMap<WebhookId, Arc<Lane>>>,
    /// Deliveries postponed because their webhook is inactive, with the time they were moved
    /// to, by webhook (at most [`MAX_HELD_PER_WEBHOOK`] each): reactivation brings exactly
    /// these back.
    held: Mutex<HashMap<WebhookId, Vec<(DeliveryId, u64)>>>,
    /// Lanes holding parked deliveries.
    parked_lanes: Mutex<HashSet<WebhookId>>,
    /// Parked deliveries in all lanes; they count toward the wheel's capacity.
    parked_total: std::sync::atomic::AtomicUsize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Monotonic ms since `started` of the loop's last turn ([`Scheduler::since_last_turn`]).
    last_turn_ms: std::sync::atomic::AtomicU64,
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
    /// The delivery's retry-index time when it was claimed (what a recheck must rewind to).
    index_due: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.id);
        // The dispatcher may be waiting for room under its cap of active claims.
        self.inner.wake.notify_one();
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
    /// Attempt tasks are spawned on `tracker`, so the caller can wait for them.
    pub fn new(
        store: Arc<Store>,
        sender: Sender,
        settings: SchedulerSettings,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Scheduler {
        let global = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        Scheduler {
            inner: Arc::new(Inner {
                store,
                sender,
                settings,
                wheel: Mutex::new(Wheel {
                    entries: BTreeSet::new(),
                    cursor: None,
                    behind: false,
                }),
                wake: Notify::new(),
                in_flight: Mutex::new(HashSet::new()),
                global,
                per_webhook: Mutex::new(HashMap::new()),
                held: Mutex::new(HashMap::new()),
                parked_lanes: Mutex::new(HashSet::new()),
                parked_total: std::sync::atomic::AtomicUsize::new(0),
                tracker,
                shutdown,
                last_turn_ms: std::sync::atomic::AtomicU64::new(0),
                started: std::time::Instant::now(),
            }),
        }
    }

    /// Runs the loader and dispatcher until shutdown. Spawn it once.
    pub async fn run(self) {
        let inner = &self.inner;
        let mut next_refill_ms = 0;
        // After a failed index read, the "behind" shortcut waits for the regular interval.
        let mut refill_failed = false;
        let mut paused = false;
        loop {
            inner.last_turn_ms.store(
                u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
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
            let now = clock::now_ms();
            // New writes reach the wheel as hints, so the index is read only when the horizon
            // moves on (every REFILL_INTERVAL_MS) or when the wheel fell behind it.
            let behind = !refill_failed && {
                let wheel = lock(&inner.wheel);
                wheel.behind
                    && wheel.entries.len() + inner.parked_total.load(Ordering::Relaxed)
                        < inner.settings.wheel_capacity / 2
            };
            if now >= next_refill_ms || behind {
                next_refill_ms = now + REFILL_INTERVAL_MS;
                let refill = Arc::clone(inner);
                refill_failed = true;
                match tokio::task::spawn_blocking(move || refill.refill(now)).await {
                    Ok(Ok(())) => refill_failed = false,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not read the retry index; will try again")
                    }
                    Err(e) => tracing::error!(error = %e, "retry index loader panicked"),
                }
            }
            // Dispatch what is due, up to the cap of active claims (so a backlog costs wheel
            // entries, not tasks): first parked deliveries whose webhook has room again, then
            // the wheel's due entries.
            let room = inner
                .max_active()
                .saturating_sub(lock(&inner.in_flight).len());
            let mut due = inner.unpark(room);
            let (next_fire, behind_with_room) = {
                let mut wheel = lock(&inner.wheel);
                while due.len() < room {
                    let Some(first) = wheel.entries.first().copied().filter(|e| e.fire_at <= now)
                    else {
                        break;
                    };
                    wheel.entries.remove(&first);
                    due.push(first);
                }
                let next = wheel.entries.first().map_or(u64::MAX, |e| e.fire_at);
                let held = wheel.entries.len() + inner.parked_total.load(Ordering::Relaxed);
                let behind =
                    wheel.behind && held < inner.settings.wheel_capacity / 2 && !refill_failed;
                (next, behind)
            };
            let capped = due.len() >= room;
            for entry in due {
                self.dispatch(entry);
            }
            if !capped && (next_fire <= now || behind_with_room) {
                // More is due, or the wheel can load more of a backlog: go round again at once,
                // letting the tasks just spawned run first.
                tokio::task::yield_now().await;
                if inner.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            // At the cap, a finishing attempt wakes the loop (Claim::drop); otherwise the next
            // entry's time, a hint or the refill interval does.
            let next_wake = if capped {
                now + REFILL_INTERVAL_MS
            } else {
                next_fire.min(now + REFILL_INTERVAL_MS)
            };
            let sleep = Duration::from_millis(next_wake.saturating_sub(clock::now_ms()));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = inner.wake.notified() => {}
                () = inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Tells the scheduler that a webhook was changed or deleted (after the commit), so
    /// attempts waiting for its slots read it again before sending.
    pub fn webhook_changed(&self, id: WebhookId) {
        let lane = lock(&self.inner.per_webhook).get(&id).cloned();
        if let Some(lane) = lane {
            lane.generation.fetch_add(1, Ordering::Release);
        }
        self.inner.wake.notify_one();
    }

    /// Tells the scheduler that a webhook went from inactive to active: the deliveries this
    /// process held back meanwhile (postponed 10 minutes at a time) are made due now, unless
    /// they were rescheduled since. Deliveries due later by their own schedule stay so; ones
    /// held before a restart go within 10 minutes.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; they are then attempted within 10 minutes.
    pub async fn webhook_reactivated(&self, id: WebhookId) -> Result<usize, StoreError> {
        let now = clock::now_ms();
        let held = lock(&self.inner.held).remove(&id).unwrap_or_default();
        if held.is_empty() {
            self.webhook_changed(id);
            return Ok(0);
        }
        let moved = blocking(&self.inner.store, move |s| s.resume_held(&held, now)).await?;
        for delivery in &moved {
            self.inner.hint(now, *delivery);
        }
        self.webhook_changed(id);
        Ok(moved.len())
    }

    /// Tells the scheduler that a webhook was deleted (after the commit): as
    /// [`Scheduler::webhook_changed`], and what it remembered of the webhook's held
    /// deliveries is dropped.
    pub fn webhook_deleted(&self, id: WebhookId) {
        lock(&self.inner.held).remove(&id);
        self.webhook_changed(id);
    }

    /// Tells the scheduler that `id` was (re)scheduled at `due_ms` by a committed write.
    /// Call it after the commit; it never blocks on the store.
    pub fn schedule_hint(&self, due_ms: u64, id: DeliveryId) {
        self.inner.hint(due_ms, id);
    }

    /// Makes one manual attempt of a delivery now (spec: "re-déclencher manuellement une
    /// livraison"), logs it with trigger `manual`, and returns it with the updated delivery.
    /// It first takes its webhook's in-flight slots like any attempt, waiting up to
    /// [`MANUAL_SLOT_WAIT`], then reads the delivery and its webhook afresh, so a change or
    /// deletion made while it waited is honoured.
    ///
    /// # Errors
    /// [`AttemptNowError`]: already in flight (409), not found, webhook gone/inactive, no
    /// free slot in time (`Busy`), store.
    pub async fn redeliver(&self, id: DeliveryId) -> Result<(Delivery, Attempt), AttemptNowError> {
        self.check_writable()?;
        // A manual attempt is never rechecked by the scheduler, so its index time is moot.
        let claim = self.inner.claim(id, 0).ok_or(AttemptNowError::InFlight)?;
        let webhook = blocking(&self.inner.store, move |s| s.attempt_context(id))
            .await?
            .ok_or(AttemptNowError::NotFound)?
            .delivery
            .webhook_id;
        let slots = self.reserve_slots(webhook).await?;
        self.attempt_with(claim, slots, Trigger::Manual).await
    }

    /// Takes one in-flight slot of `webhook` (its own, its single-file gate while it is not
    /// proven fast, and a global one), waiting up to [`MANUAL_SLOT_WAIT`]: manual attempts
    /// obey the same limits as scheduled ones, so a person clicking "redeliver" on a hundred
    /// deliveries of a hanging endpoint holds its one slot, not a hundred. The test endpoint
    /// reserves before it writes anything.
    ///
    /// # Errors
    /// [`AttemptNowError::Busy`] when no slot freed in time or the daemon is stopping.
    pub async fn reserve_slots(&self, webhook: WebhookId) -> Result<Slots, AttemptNowError> {
        let lane = self.inner.lane(webhook);
        tokio::select! {
            permits = tokio::time::timeout(MANUAL_SLOT_WAIT, self.inner.wait_for_slots(&lane)) => {
                permits.ok().flatten().map(Slots).ok_or(AttemptNowError::Busy)
            }
            () = self.inner.shutdown.cancelled() => Err(AttemptNowError::Busy),
        }
    }

    /// Makes the first attempt of a just-accepted delivery now, as a scheduled attempt, in
    /// `slots` reserved before the delivery was written (the test-delivery endpoint). The
    /// delivery's index entry must be a lease far enough ahead that the loader does not fire
    /// it meanwhile; it is moved when the attempt is logged.
    ///
    /// # Errors
    /// As [`Scheduler::redeliver`], but never `Busy`.
    pub async fn attempt_now(
        &self,
        id: DeliveryId,
        slots: Slots,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        self.check_writable()?;
        let claim = self.inner.claim(id, 0).ok_or(AttemptNowError::InFlight)?;
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

    /// Reads the claimed delivery and its webhook now (after any wait for slots) and makes
    /// the attempt.
    async fn attempt_with(
        &self,
        claim: Claim,
        slots: Slots,
        trigger: Trigger,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        let id = claim.id;
        let context = blocking(&self.inner.store, move |s| s.attempt_context(id))
            .await?
            .ok_or(AttemptNowError::NotFound)?;
        Arc::clone(&self.inner)
            .attempt(claim, Some(slots.0), context, trigger)
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

    /// Whether an attempt of `id` is claimed now (running, or about to): retention leaves
    /// such a delivery alone, so an attempt is never sent for a delivery it then deletes.
    pub fn is_claimed(&self, id: DeliveryId) -> bool {
        lock(&self.inner.in_flight).contains(&id)
    }

    fn dispatch(&self, entry: Entry) {
        let Some(claim) = self.inner.claim(entry.id, entry.index_due) else {
            // Busy (a manual attempt, say): look again later.
            self.inner
                .recheck(clock::now_ms() + RECHECK_MS, entry.id, entry.index_due);
            return;
        };
        let inner = Arc::clone(&self.inner);
        self.inner
            .tracker
            .spawn(async move { inner.run_scheduled(claim).await });
    }
}

impl Inner {
    fn claim(self: &Arc<Self>, id: DeliveryId, index_due: u64) -> Option<Claim> {
        lock(&self.in_flight).insert(id).then(|| Claim {
            inner: Arc::clone(self),
            id,
            index_due,
        })
    }

    /// Most deliveries claimed at once (attempting, or reading before they park): twice the
    /// global in-flight limit, at least 1024.
    fn max_active(&self) -> usize {
        self.settings.max_in_flight.saturating_mul(2).max(1024)
    }

    /// A committed write put `id` in the retry index at `due_ms`.
    fn hint(&self, due_ms: u64, id: DeliveryId) {
        self.recheck(due_ms, id, due_ms);
    }

    /// Puts `id` (whose retry-index key is `(index_due, id)`) in the wheel to fire at
    /// `fire_at`. If its index key is past the cursor, the loader will read it; if the wheel
    /// is full, the cursor moves back before its index key instead, so nothing is forgotten.
    fn recheck(&self, fire_at: u64, id: DeliveryId, index_due: u64) {
        let mut wheel = lock(&self.wheel);
        let key = (index_due, id);
        if wheel.cursor.is_none_or(|cursor| key > cursor) {
            return;
        }
        let held = wheel.entries.len() + self.parked_total.load(Ordering::Relaxed);
        if held >= self.settings.wheel_capacity * 2 {
            wheel.cursor = Some(predecessor(key));
            wheel.behind = true;
            return;
        }
        let entry = Entry {
            fire_at,
            id,
            index_due,
        };
        let earliest = wheel.entries.first().is_none_or(|first| entry < *first);
        wheel.entries.insert(entry);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Loads index entries due within the horizon, past the cursor, up to the capacity.
    fn refill(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut wheel = lock(&self.wheel);
        let room = self
            .settings
            .wheel_capacity
            .saturating_sub(wheel.entries.len() + self.parked_total.load(Ordering::Relaxed));
        if room == 0 {
            return Ok(());
        }
        let horizon_end = now_ms + HORIZON_MS;
        let loaded = self.store.due_entries(wheel.cursor, horizon_end, room)?;
        wheel.behind = loaded.len() == room;
        let new_cursor = match loaded.last() {
            Some(last) if wheel.behind => *last,
            _ => (horizon_end - 1, DeliveryId(u128::MAX)),
        };
        wheel
            .entries
            .extend(loaded.into_iter().map(|(due, id)| Entry {
                fire_at: due,
                id,
                index_due: due,
            }));
        wheel.cursor = Some(wheel.cursor.map_or(new_cursor, |c| c.max(new_cursor)));
        Ok(())
    }

    async fn run_scheduled(self: Arc<Self>, claim: Claim) {
        let (id, index_due) = (claim.id, claim.index_due);
        // The read names the webhook whose in-flight limit applies. When the webhook has no
        // free slot (and no room in its short queue), the delivery parks in its lane: no task
        // waits, and it is dispatched again as soon as the lane has room.
        let Some(context) = self.load_due(&claim).await else {
            return;
        };
        let webhook_id = context.delivery.webhook_id;
        let lane = self.lane(webhook_id);
        let ((own, gate), context) = match lane.try_take() {
            Some(slot) => (slot, context),
            None => {
                let Some(place) = lane.join_queue() else {
                    drop(context);
                    if self.may_park(&lane) {
                        self.park(&lane, webhook_id, id, index_due);
                    } else {
                        // This webhook already has a long queue: move the delivery later in
                        // the index, so the loader reads past it and the wheel keeps room for
                        // every other webhook (one slow endpoint must not stall the rest).
                        let now = clock::now_ms();
                        let to = now + OVERFLOW_POSTPONE_MS;
                        match blocking(&self.store, move |s| s.postpone(id, now, to)).await {
                            Ok(true) => self.hint(to, id),
                            Ok(false) => {}
                            Err(_) => self.recheck(now + RECHECK_MS, id, index_due),
                        }
                    }
                    drop(claim);
                    return;
                };
                // A proven webhook's next attempts wait in a short queue (at most the
                // per-webhook limit, so holding their bodies is bounded), ready to go; they
                // read again only if the webhook was changed or deleted meanwhile.
                let generation = lane.generation.load(Ordering::Acquire);
                let own = tokio::select! {
                    own = Arc::clone(&lane.permits).acquire_owned() => match own {
                        Ok(own) => own,
                        Err(_) => return,
                    },
                    () = self.shutdown.cancelled() => return,
                };
                drop(place);
                let context = if lane.generation.load(Ordering::Acquire) == generation {
                    context
                } else {
                    drop(context);
                    let Some(context) = self.load_due(&claim).await else {
                        return;
                    };
                    context
                };
                ((own, None), context)
            }
        };
        let (global, context) = match Arc::clone(&self.global).try_acquire_owned() {
            Ok(global) => (global, context),
            Err(_) => {
                // Every global slot is taken: wait for one holding only the webhook's slot
                // (the body is dropped meanwhile), then read again, since the webhook may
                // have been deleted, deactivated or pointed elsewhere.
                drop(context);
                let global = tokio::select! {
                    global = Arc::clone(&self.global).acquire_owned() => match global {
                        Ok(global) => global,
                        Err(_) => return,
                    },
                    () = self.shutdown.cancelled() => return,
                };
                let Some(context) = self.load_due(&claim).await else {
                    return;
                };
                (global, context)
            }
        };
        let permits = Permits {
            _own: own,
            _gate: gate,
            _global: global,
        };
        // Boxed: the attempt's (large) state exists only once the attempt starts.
        if let Err(e) =
            Box::pin(Arc::clone(&self).attempt(claim, Some(permits), context, Trigger::Scheduled))
                .await
        {
            tracing::warn!(delivery = %id, error = %e, "scheduled attempt not recorded; will try again");
            self.recheck(clock::now_ms() + RECHECK_MS, id, index_due);
        }
    }

    /// Reads a claimed delivery and returns it if an attempt is due now: not final, due, and
    /// its webhook exists and is active. A stale wheel entry or a deleted webhook yields
    /// `None`; an inactive webhook postpones the delivery; a read error looks again later.
    async fn load_due(self: &Arc<Self>, claim: &Claim) -> Option<AttemptContext> {
        let (id, index_due) = (claim.id, claim.index_due);
        let context = match blocking(&self.store, move |s| s.attempt_context(id)).await {
            Ok(context) => context?,
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "could not load a due delivery; will look again");
                self.recheck(clock::now_ms() + RECHECK_MS, id, index_due);
                return None;
            }
        };
        let now = clock::now_ms();
        let delivery = &context.delivery;
        if delivery.status.is_final() || delivery.next_attempt_at_ms.is_none_or(|due| due > now) {
            return None; // Stale wheel entry: the index moved on.
        }
        // A deleted webhook's deliveries were cancelled in the same commit as the deletion.
        if !context.webhook.as_ref()?.active {
            let delivery_webhook = delivery.webhook_id;
            let until = now + INACTIVE_POSTPONE_MS;
            let postponed = blocking(&self.store, move |s| s.postpone(id, now, until)).await;
            match postponed {
                Ok(true) => {
                    self.hint(until, id);
                    let mut held = lock(&self.held);
                    let list = held.entry(delivery_webhook).or_default();
                    if list.len() < MAX_HELD_PER_WEBHOOK {
                        list.push((id, until));
                    }
                }
                Ok(false) => {}
                Err(_) => self.recheck(now + RECHECK_MS, id, index_due),
            }
            return None;
        }
        Some(context)
    }

    /// Waits for the webhook's slot, its single-file gate while it is not proven fast, and a
    /// global slot, in that order (the order every attempt takes them). `None` if a semaphore
    /// was closed.
    async fn wait_for_slots(&self, lane: &Lane) -> Option<Permits> {
        let own = Arc::clone(&lane.permits).acquire_owned().await.ok()?;
        let gate = if lane.proven.load(Ordering::Relaxed) {
            None
        } else {
            Some(Arc::clone(&lane.gate).acquire_owned().await.ok()?)
        };
        let global = Arc::clone(&self.global).acquire_owned().await.ok()?;
        Some(Permits {
            _own: own,
            _gate: gate,
            _global: global,
        })
    }

    /// Whether a delivery of `lane` may wait in memory: at most [`MAX_PARKED_PER_WEBHOOK`] per
    /// webhook and, in all, half the wheel's capacity, so the loader always has room for the
    /// deliveries of other webhooks.
    fn may_park(&self, lane: &Lane) -> bool {
        lock(&lane.parked).len() < MAX_PARKED_PER_WEBHOOK
            && self.parked_total.load(Ordering::Relaxed) < self.settings.wheel_capacity / 2
    }

    /// Parks a due delivery in its webhook's lane (no task, no body kept).
    fn park(&self, lane: &Lane, webhook_id: WebhookId, id: DeliveryId, index_due: u64) {
        lock(&lane.parked).push_back(Entry {
            fire_at: 0,
            id,
            index_due,
        });
        self.parked_total.fetch_add(1, Ordering::Relaxed);
        lock(&self.parked_lanes).insert(webhook_id);
    }

    /// Takes up to `room` parked deliveries from lanes that have room now, in each lane's
    /// order; a lane left empty stops being visited.
    fn unpark(&self, room: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        // The dispatcher calls this on every pass; most passes have nothing parked.
        if room == 0 || self.parked_total.load(Ordering::Relaxed) == 0 {
            return out;
        }
        let mut lanes = lock(&self.parked_lanes);
        let ids: Vec<WebhookId> = lanes.iter().copied().collect();
        for webhook_id in ids {
            if out.len() >= room {
                break;
            }
            let lane = self.lane(webhook_id);
            let take = lane.room().min(room - out.len());
            let mut parked = lock(&lane.parked);
            for _ in 0..take {
                let Some(entry) = parked.pop_front() else {
                    break;
                };
                out.push(entry);
            }
            if parked.is_empty() {
                lanes.remove(&webhook_id);
            }
        }
        self.parked_total.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    fn lane(&self, webhook_id: WebhookId) -> Arc<Lane> {
        let mut map = lock(&self.per_webhook);
        let limit = self.settings.max_in_flight_per_webhook.max(1);
        Arc::clone(map.entry(webhook_id).or_insert_with(|| {
            Arc::new(Lane {
                permits: Arc::new(Semaphore::new(limit)),
                gate: Arc::new(Semaphore::new(1)),
                proven: std::sync::atomic::AtomicBool::new(false),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                limit,
                generation: std::sync::atomic::AtomicU64::new(0),
                parked: Mutex::new(std::collections::VecDeque::new()),
            })
        }))
    }

    /// Records how fast the webhook answered: a quick answer (success or not) proves it,
    /// a slow one or a timeout puts it back to one attempt at a time.
    fn note_speed(&self, webhook_id: WebhookId, attempt: &Attempt) {
        let fast = attempt.duration_ms < SLOW_ATTEMPT_MS
            && attempt.error != Some(crate::model::AttemptError::Timeout);
        self.lane(webhook_id).proven.store(fast, Ordering::Relaxed);
    }

    /// Sends one attempt for a claimed delivery and records it. The in-flight `permits` are
    /// released as soon as the HTTP exchange ends: they bound requests to receivers, and the
    /// claim (kept until the attempt is logged) already prevents a second attempt of the same
    /// delivery, so waiting for the commit does not take a slot from other deliveries.
    async fn attempt(
        self: Arc<Self>,
        claim: Claim,
        permits: Option<Permits>,
        context: AttemptContext,
        trigger: Trigger,
    ) -> Result<(Delivery, Attempt), AttemptNowError> {
        let AttemptContext {
            delivery,
            webhook,
            body,
        } = context;
        let webhook = webhook
            .filter(|w| w.active)
            .ok_or(AttemptNowError::WebhookUnavailable)?;
        let log = self
            .sender
            .send(OutgoingAttempt {
                url: &webhook.url,
                body: Bytes::from(body),
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
            })
            .await;
        drop(permits);
        self.note_speed(webhook.id, &log);
        // A slot is free: parked deliveries of this webhook may go.
        self.wake.notify_one();
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
        if let Some(due) = updated.next_attempt_at_ms {
            self.hint(due, id);
        }
        Ok((updated, log))
    }
}

/// The largest key strictly before `key`.
fn predecessor((due, id): (u64, DeliveryId)) -> (u64, DeliveryId) {
    match id.0.checked_sub(1) {
        Some(prev) => (due, DeliveryId(prev)),
        None => (due.saturating_sub(1), DeliveryId(u128::MAX)),
    }
}
