//! The scheduler's pure part: one due queue per webhook, the timer over the queues' heads,
//! the round-robin ring of webhooks with due work, and the in-flight slot accounting.
//!
//! Owner's rule: no I/O and no clock. Every call that depends on time takes `now` (ms since
//! the epoch); the async loop (`scheduler::run`) does the reading and the sending and tells
//! this module what it read ([`Queues::refilled`]), what the store committed
//! ([`Queues::apply`]) and when a slot is released ([`Queues::release`]).
//!
//! Each webhook's queue holds a bounded *window* of its entries in the store's per-webhook
//! due index, in due order, and a *loaded-through* key. **Invariant:** every index entry of
//! the webhook with a key at or before `loaded_through` is in the window or claimed by an
//! attempt; entries after it are on disk and are read when the window runs low. So memory
//! holds at most [`Limits::window`] × 2 entries per webhook and [`Limits::total_window`] in
//! all, whatever the backlog, and no due work is ever postponed for lack of memory.
//!
//! Fairness: webhooks whose head is due wait in a ring; each turn takes one delivery from the
//! front webhook and puts it at the back while it has due work and room, so a webhook with a
//! million due deliveries delays another webhook's fresh one by at most one turn of the ring.
//! Slots: a webhook has at most [`Limits::per_webhook`] attempts in flight once *proven* fast,
//! one while not; not-proven webhooks together hold at most [`Limits::unproven_share`] of the
//! [`Limits::max_in_flight`] global slots, so hanging endpoints cannot starve healthy ones.
//! A webhook may set its own limit instead of [`Limits::per_webhook`] and a rate
//! ([`super::flow`]); a webhook out of tokens waits in the timer until one is back.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::flow::Flow;
use crate::ids::{DeliveryId, WebhookId};

/// An entry of a webhook's due index: (due ms since the epoch, delivery).
pub type Key = (u64, DeliveryId);

/// The key after every other key: "the whole index is in memory".
const END: Key = (u64::MAX, DeliveryId(u128::MAX));

/// How far ahead of now a window needs to know its entries (60 s): a webhook whose window
/// already reaches past this is not refilled, and when memory is full, entries past it are
/// the ones given back to the disk.
pub const HORIZON_MS: u64 = 60_000;

/// Bounds of the queues and slots.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries a webhook's window is refilled up to; changes may grow it to twice this.
    pub window: usize,
    /// Entries in all windows together that refills may bring in.
    pub total_window: usize,
    /// Attempts in flight in the process.
    pub max_in_flight: usize,
    /// Attempts in flight to one proven webhook.
    pub per_webhook: usize,
    /// Attempts in flight to webhooks that are not proven fast, together.
    pub unproven_share: usize,
}

impl Limits {
    /// Limits for `max_in_flight` global and `per_webhook` slots: windows of
    /// max(64, 4 × `per_webhook`) entries, 200,000 in all, and half the global slots for
    /// webhooks that are not proven fast.
    pub fn new(max_in_flight: usize, per_webhook: usize) -> Limits {
        let max_in_flight = max_in_flight.max(1);
        let per_webhook = per_webhook.max(1);
        Limits {
            window: (4 * per_webhook).max(64),
            total_window: 200_000,
            max_in_flight,
            per_webhook,
            unproven_share: (max_in_flight / 2).max(1),
        }
    }
}

/// A slot taken for one attempt; give it back with [`Queues::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The webhook it counts against.
    pub webhook: WebhookId,
    /// Whether it counts against the not-proven share.
    unproven: bool,
}

/// What [`Queues::next`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Attempt this delivery (its key left the window) in this slot.
    Dispatch(Slot, Key),
    /// Every global slot is taken: wait for a release.
    Full,
    /// Nothing is due; the earliest head falls due at this time, if any is known.
    Idle(Option<u64>),
}

#[derive(Debug)]
struct Queue {
    window: BTreeSet<Key>,
    loaded_through: Key,
    /// While a refill read is out: the changes applied meanwhile, applied again over its
    /// result (the read's snapshot may predate them).
    reading: Option<Vec<(Option<Key>, Option<Key>)>>,
    in_flight: usize,
    proven: bool,
    /// Its head's due time while it sits in the timer.
    timer_at: Option<u64>,
    in_ring: bool,
    /// Waiting for one of its own slots, or for the not-proven share.
    blocked: bool,
    wants_refill: bool,
    /// Entries put back after a failed read or commit, with the time to look again.
    deferred: Vec<(u64, Key)>,
    /// Its rate limit allows no request before this time (ms).
    not_before: u64,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            window: BTreeSet::new(),
            loaded_through: END,
            reading: None,
            in_flight: 0,
            proven: false,
            timer_at: None,
            in_ring: false,
            blocked: false,
            wants_refill: false,
            deferred: Vec::new(),
            not_before: 0,
        }
    }
}

impl Queue {
    /// Attempts it may have in flight: one until proven fast, then its own limit or the
    /// daemon's per-webhook one.
    fn limit(&self, limits: &Limits, flow: Option<&Flow>) -> usize {
        if self.proven {
            flow.and_then(|f| f.max_in_flight)
                .unwrap_or(limits.per_webhook)
        } else {
            1
        }
    }

    /// When its head may go: its due time, or later while it waits for a token.
    fn head_at(&self) -> Option<u64> {
        self.window
            .first()
            .map(|(due, _)| (*due).max(self.not_before))
    }

    /// Nothing to remember (whether it is proven is kept in [`Queues::proven`]): the queue is
    /// dropped, so memory follows the webhooks with work, not all webhooks.
    fn is_idle(&self) -> bool {
        self.window.is_empty()
            && self.loaded_through == END
            && self.in_flight == 0
            && self.reading.is_none()
            && self.deferred.is_empty()
    }
}

/// The per-webhook queues, timer, ring and slots. See the module documentation.
#[derive(Debug)]
pub struct Queues {
    limits: Limits,
    queues: HashMap<WebhookId, Queue>,
    /// The webhooks proven fast (16 bytes each), kept while their queue comes and goes.
    proven: HashSet<WebhookId>,
    /// The webhooks that set their own limit or rate, kept while their queue comes and goes.
    flows: HashMap<WebhookId, Flow>,
    timer: BTreeSet<(u64, WebhookId)>,
    ring: VecDeque<WebhookId>,
    refills: VecDeque<WebhookId>,
    /// Webhooks blocked on the not-proven share, woken when a not-proven slot frees.
    share_waiters: Vec<WebhookId>,
    windowed: usize,
    in_flight: usize,
    unproven_in_flight: usize,
    deferred: usize,
}

/// A refill to read: up to `limit` entries of `webhook`'s due index after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    /// The webhook.
    pub webhook: WebhookId,
    /// Read strictly after this key.
    pub after: Key,
    /// Read at most this many.
    pub limit: usize,
}

impl Queues {
    /// Empty queues under `limits`.
    pub fn new(limits: Limits) -> Queues {
        Queues {
            limits,
            queues: HashMap::new(),
            proven: HashSet::new(),
            flows: HashMap::new(),
            timer: BTreeSet::new(),
            ring: VecDeque::new(),
            refills: VecDeque::new(),
            share_waiters: Vec::new(),
            windowed: 0,
            in_flight: 0,
            unproven_in_flight: 0,
            deferred: 0,
        }
    }

    /// At start: `webhook`'s earliest index entry is `head`; the rest is read from disk.
    pub fn seed(&mut self, webhook: WebhookId, head: Key) {
        let q = queue_mut(&mut self.queues, &self.proven, webhook);
        q.loaded_through = q.loaded_through.min(head);
        if q.window.insert(head) {
            self.windowed += 1;
        }
        self.place(webhook);
    }

    /// A committed change of `webhook`'s index: the entry at `from` went away and one at
    /// `to` appeared (either may be `None`).
    pub fn apply(&mut self, webhook: WebhookId, from: Option<Key>, to: Option<Key>) {
        let q = queue_mut(&mut self.queues, &self.proven, webhook);
        if let Some(buffer) = &mut q.reading {
            buffer.push((from, to));
        }
        let (added, removed) = apply_to(q, &self.limits, from, to);
        self.windowed = self.windowed + added - removed;
        self.place(webhook);
    }

    /// Marks `webhook` proven fast (up to [`Limits::per_webhook`] in flight) or not (one).
    pub fn set_proven(&mut self, webhook: WebhookId, proven: bool) {
        if proven {
            self.proven.insert(webhook);
        } else {
            self.proven.remove(&webhook);
        }
        if let Some(q) = self.queues.get_mut(&webhook) {
            q.proven = proven;
        }
    }

    /// Sets `webhook`'s own limits (issue 16): `max_in_flight` once proven, `rate_per_s`
    /// requests started per second; `None` for both is the daemon's defaults. A changed rate
    /// starts with a full bucket.
    pub fn set_flow(
        &mut self,
        webhook: WebhookId,
        max_in_flight: Option<u32>,
        rate_per_s: Option<u32>,
    ) {
        match Flow::new(max_in_flight, rate_per_s) {
            None => {
                self.flows.remove(&webhook);
            }
            Some(flow) => {
                let kept = self.flows.get(&webhook).is_some_and(|old| {
                    old.max_in_flight == flow.max_in_flight
                        && old.bucket.as_ref().map(|b| b.rate())
                            == flow.bucket.as_ref().map(|b| b.rate())
                });
                if !kept {
                    self.flows.insert(webhook, flow);
                }
            }
        }
        if let Some(q) = self.queues.get_mut(&webhook) {
            q.not_before = 0;
            q.blocked = false;
        }
        self.place(webhook);
    }

    /// The next delivery to attempt at `now`, round-robin over the webhooks with due work.
    pub fn next(&mut self, now: u64) -> Next {
        self.fire_timer(now);
        loop {
            // Nothing can go when not even a proven webhook could.
            if !self.fast_room() {
                return Next::Full;
            }
            let Some(webhook) = self.ring.pop_front() else {
                return Next::Idle(self.timer.first().map(|(due, _)| *due));
            };
            let limits = self.limits;
            let share_full = !self.slow_room();
            let Some(q) = self.queues.get_mut(&webhook) else {
                continue;
            };
            q.in_ring = false;
            let Some(head) = q.window.first().copied().filter(|(due, _)| *due <= now) else {
                self.place(webhook);
                continue;
            };
            let mut flow = self.flows.get_mut(&webhook);
            let limit = q.limit(&limits, flow.as_deref());
            if q.in_flight >= limit {
                q.blocked = true;
                continue;
            }
            let bucket = flow.as_mut().and_then(|f| f.bucket.as_mut());
            if let Some(at) = bucket.and_then(|b| b.ready_at(now)) {
                // Out of tokens: it waits in the timer, not failed, not attempted.
                q.not_before = at;
                self.place(webhook);
                continue;
            }
            if !q.proven && share_full {
                q.blocked = true;
                self.share_waiters.push(webhook);
                continue;
            }
            q.window.remove(&head);
            self.windowed -= 1;
            q.in_flight += 1;
            if let Some(bucket) = flow.and_then(|f| f.bucket.as_mut()) {
                bucket.take(now);
                q.not_before = bucket.ready_at(now).unwrap_or(0);
            }
            let unproven = !q.proven;
            self.in_flight += 1;
            if unproven {
                self.unproven_in_flight += 1;
            }
            let more_now = q.head_at().is_some_and(|at| at <= now) && q.in_flight < limit;
            if more_now {
                q.in_ring = true;
                self.ring.push_back(webhook);
                self.want_refill_if_low(webhook);
            } else {
                self.place(webhook);
            }
            return Next::Dispatch(Slot { webhook, unproven }, head);
        }
    }

    /// Takes a slot of `webhook` outside the queues (a manual attempt), if one is free at
    /// `now`. A rate-limited webhook spends a token even when it has none (a debt its
    /// scheduled deliveries wait for): a person's redelivery is not refused for the rate.
    pub fn try_take(&mut self, webhook: WebhookId, now: u64) -> Option<Slot> {
        if !self.fast_room() {
            return None;
        }
        let share_full = !self.slow_room();
        let limits = self.limits;
        let mut flow = self.flows.get_mut(&webhook);
        let q = queue_mut(&mut self.queues, &self.proven, webhook);
        if q.in_flight >= q.limit(&limits, flow.as_deref()) || (!q.proven && share_full) {
            return None;
        }
        if let Some(bucket) = flow.as_mut().and_then(|f| f.bucket.as_mut()) {
            bucket.take(now);
            q.not_before = bucket.ready_at(now).unwrap_or(0);
        }
        q.in_flight += 1;
        let unproven = !q.proven;
        self.in_flight += 1;
        if unproven {
            self.unproven_in_flight += 1;
        }
        Some(Slot { webhook, unproven })
    }

    /// Gives a slot back. `fast`: how the attempt went (`Some(true)` proves the webhook,
    /// `Some(false)` takes it back to one at a time, `None` says nothing).
    pub fn release(&mut self, slot: Slot, fast: Option<bool>) {
        self.in_flight -= 1;
        if slot.unproven {
            self.unproven_in_flight -= 1;
        }
        for waiter in std::mem::take(&mut self.share_waiters) {
            if let Some(q) = self.queues.get_mut(&waiter) {
                q.blocked = false;
            }
            self.place(waiter);
        }
        if let Some(fast) = fast {
            self.set_proven(slot.webhook, fast);
        }
        if let Some(q) = self.queues.get_mut(&slot.webhook) {
            q.in_flight -= 1;
            q.blocked = false;
        }
        self.place(slot.webhook);
    }

    /// An attempt in `slot` has been running for long (over 1 s): its webhook is no longer
    /// proven, and the slot now counts in the not-proven share, so endpoints that answered
    /// fast and then hang hold at most that share of what the others see.
    pub fn slowed(&mut self, slot: &mut Slot) {
        if !slot.unproven {
            slot.unproven = true;
            self.unproven_in_flight += 1;
        }
        self.set_proven(slot.webhook, false);
    }

    /// Whether a proven webhook may start an attempt: slow attempts beyond the not-proven
    /// share do not count against the global limit for it (so the global number of requests
    /// may exceed `max_in_flight` by at most that many, for as long as they hang).
    fn fast_room(&self) -> bool {
        let slow = self.unproven_in_flight;
        let fast = self.in_flight - slow;
        fast + slow.min(self.limits.unproven_share) < self.limits.max_in_flight
    }

    /// Whether a webhook that is not proven may start an attempt.
    fn slow_room(&self) -> bool {
        self.unproven_in_flight < self.limits.unproven_share
            && self.in_flight < self.limits.max_in_flight
    }

    /// Puts a claimed key back (its attempt could not be made or logged): it is due again at
    /// `at`, unless a change moves it meanwhile.
    pub fn defer(&mut self, webhook: WebhookId, key: Key, at: u64) {
        let q = queue_mut(&mut self.queues, &self.proven, webhook);
        q.deferred.push((at, key));
        self.deferred += 1;
        self.timer.insert((at, webhook));
    }

    /// The next refill to read at `now`: a webhook whose window runs low and does not
    /// already reach [`HORIZON_MS`] ahead. When the windows hold [`Limits::total_window`]
    /// entries, entries further ahead than that are given back to the disk first, so due
    /// work always finds room; a webhook with an empty window may always read one entry (its
    /// head), so the overshoot is at most one entry per webhook.
    pub fn take_refill(&mut self, now: u64) -> Option<Refill> {
        let horizon = now.saturating_add(HORIZON_MS);
        let mut evicted = false;
        while let Some(webhook) = self.refills.pop_front() {
            let Some(q) = self.queues.get(&webhook) else {
                continue;
            };
            if q.reading.is_some()
                || q.loaded_through == END
                || q.window.last().is_some_and(|(due, _)| *due > horizon)
            {
                if let Some(q) = self.queues.get_mut(&webhook) {
                    q.wants_refill = false;
                }
                continue;
            }
            let mut room = self.limits.total_window.saturating_sub(self.windowed);
            if room == 0 && !evicted {
                self.evict_beyond(horizon);
                evicted = true;
                room = self.limits.total_window.saturating_sub(self.windowed);
            }
            let Some(q) = self.queues.get_mut(&webhook) else {
                continue;
            };
            let floor = usize::from(q.window.is_empty());
            let limit = self
                .limits
                .window
                .saturating_sub(q.window.len())
                .min(room)
                .max(floor);
            if limit == 0 {
                // No room now: asked again when entries leave memory.
                self.refills.push_front(webhook);
                return None;
            }
            q.wants_refill = false;
            q.reading = Some(Vec::new());
            return Some(Refill {
                webhook,
                after: q.loaded_through,
                limit,
            });
        }
        None
    }

    /// Gives back to the disk every window entry due after `horizon` (keeping each window's
    /// head, for the timer); windows being read are left alone.
    fn evict_beyond(&mut self, horizon: u64) {
        for q in self.queues.values_mut() {
            if q.reading.is_some() {
                continue;
            }
            while q.window.len() > 1 && q.window.last().is_some_and(|(due, _)| *due > horizon) {
                if let Some(last) = q.window.pop_last() {
                    q.loaded_through = predecessor(last);
                    self.windowed -= 1;
                }
            }
        }
    }

    /// The result of a refill read: `entries` in key order, at most `refill.limit`.
    pub fn refilled(&mut self, refill: Refill, entries: &[Key]) {
        let Some(q) = self.queues.get_mut(&refill.webhook) else {
            return;
        };
        let buffered = q.reading.take().unwrap_or_default();
        for key in entries {
            if *key > q.loaded_through && q.window.insert(*key) {
                self.windowed += 1;
            }
        }
        q.loaded_through = if entries.len() < refill.limit {
            END
        } else {
            entries.last().copied().unwrap_or(END).max(q.loaded_through)
        };
        for (from, to) in buffered {
            let (added, removed) = apply_to(q, &self.limits, from, to);
            self.windowed = self.windowed + added - removed;
        }
        self.place(refill.webhook);
    }

    /// A refill read failed: it is asked again later (the next [`Queues::take_refill`]).
    pub fn refill_failed(&mut self, refill: Refill) {
        if let Some(q) = self.queues.get_mut(&refill.webhook) {
            q.reading = None;
        }
        self.want_refill(refill.webhook);
    }

    /// This daemon stopped serving `webhook` (another daemon of a cluster serves it now): its
    /// window and deferred entries are dropped and a refill read still out will add nothing;
    /// attempts in flight keep their slots until released.
    pub fn forget(&mut self, webhook: WebhookId) {
        let Some(q) = self.queues.get_mut(&webhook) else {
            return;
        };
        self.windowed -= q.window.len();
        q.window.clear();
        self.deferred -= q.deferred.len();
        q.deferred.clear();
        q.loaded_through = END;
        q.reading = None;
        q.wants_refill = false;
        self.place(webhook);
    }

    /// Attempts in flight to `webhook`.
    pub fn in_flight_of(&self, webhook: WebhookId) -> usize {
        self.queues.get(&webhook).map_or(0, |q| q.in_flight)
    }

    /// Counts for status and tests: (entries in windows, attempts in flight, webhooks known).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.windowed + self.deferred,
            self.in_flight,
            self.queues.len(),
        )
    }

    /// Moves timer entries due at `now` into the ring, and deferred keys back into windows.
    fn fire_timer(&mut self, now: u64) {
        while let Some(&(due, webhook)) = self.timer.first() {
            if due > now {
                break;
            }
            self.timer.remove(&(due, webhook));
            let Some(q) = self.queues.get_mut(&webhook) else {
                continue;
            };
            if q.timer_at == Some(due) {
                q.timer_at = None;
            }
            let mut back = Vec::new();
            q.deferred.retain(|(at, key)| {
                let ready = *at <= now;
                if ready {
                    back.push(*key);
                }
                !ready
            });
            self.deferred -= back.len();
            for key in back {
                // Like a change that (re)adds it: kept only if not past the loaded range,
                // where the disk read will find it.
                let (added, removed) = apply_to(q, &self.limits, None, Some(key));
                self.windowed = self.windowed + added - removed;
            }
            let head_due = q.head_at().is_some_and(|at| at <= now);
            if head_due && !q.in_ring && !q.blocked {
                if let Some(old) = q.timer_at.take() {
                    self.timer.remove(&(old, webhook));
                }
                q.in_ring = true;
                self.ring.push_back(webhook);
            } else if !head_due {
                self.place(webhook);
            }
        }
    }

    /// Puts `webhook` where it belongs: in the ring if its head is due and it has room (the
    /// caller knows no `now`: a due head goes through the timer), in the timer at its head's
    /// time, in the refill list if its window is empty but the disk holds more, or nowhere.
    fn place(&mut self, webhook: WebhookId) {
        self.want_refill_if_low(webhook);
        let Some(q) = self.queues.get_mut(&webhook) else {
            return;
        };
        if q.in_ring || q.blocked {
            return;
        }
        match q.head_at() {
            Some(due) => {
                if q.timer_at != Some(due) {
                    if let Some(old) = q.timer_at.take() {
                        self.timer.remove(&(old, webhook));
                    }
                    q.timer_at = Some(due);
                    self.timer.insert((due, webhook));
                }
            }
            None => {
                if let Some(old) = q.timer_at.take() {
                    self.timer.remove(&(old, webhook));
                }
                if q.is_idle() {
                    self.queues.remove(&webhook);
                }
            }
        }
    }

    fn want_refill_if_low(&mut self, webhook: WebhookId) {
        let Some(q) = self.queues.get(&webhook) else {
            return;
        };
        if q.loaded_through != END && q.reading.is_none() && q.window.len() < self.limits.window / 2
        {
            self.want_refill(webhook);
        }
    }

    fn want_refill(&mut self, webhook: WebhookId) {
        if let Some(q) = self.queues.get_mut(&webhook) {
            if !q.wants_refill {
                q.wants_refill = true;
                self.refills.push_back(webhook);
            }
        }
    }
}

/// `webhook`'s queue, made (with what is known of its speed) if it has none.
fn queue_mut<'a>(
    queues: &'a mut HashMap<WebhookId, Queue>,
    proven: &HashSet<WebhookId>,
    webhook: WebhookId,
) -> &'a mut Queue {
    queues.entry(webhook).or_insert_with(|| Queue {
        proven: proven.contains(&webhook),
        ..Queue::default()
    })
}

/// Applies one change to a queue's window, keeping the loaded-through invariant and the
/// window's hard cap (twice [`Limits::window`]): entries pushed out lower `loaded_through`,
/// so the disk read finds them again. Returns how many entries it (added, removed).
fn apply_to(q: &mut Queue, limits: &Limits, from: Option<Key>, to: Option<Key>) -> (usize, usize) {
    let mut added = 0;
    let mut removed = 0;
    if let Some(from) = from {
        if q.window.remove(&from) {
            removed += 1;
        }
    }
    if let Some(to) = to {
        if to <= q.loaded_through && q.window.insert(to) {
            added += 1;
        }
    }
    while q.window.len() > limits.window * 2 {
        if let Some(last) = q.window.pop_last() {
            removed += 1;
            q.loaded_through = predecessor(last);
        }
    }
    (added, removed)
}

/// The largest key strictly before `key`.
fn predecessor((due, id): Key) -> Key {
    match id.0.checked_sub(1) {
        Some(prev) => (due, DeliveryId(prev)),
        None => (due.saturating_sub(1), DeliveryId(u128::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            window: 4,
            total_window: 100,
            max_in_flight: 8,
            per_webhook: 2,
            unproven_share: 4,
        }
    }

    fn key(due: u64, id: u128) -> Key {
        (due, DeliveryId(id))
    }

    const A: WebhookId = WebhookId(1);
    const B: WebhookId = WebhookId(2);

    /// Dispatches everything due at `now`, releasing each slot at once, and returns the order.
    fn drain(q: &mut Queues, now: u64) -> Vec<(WebhookId, Key)> {
        let mut out = Vec::new();
        while let Next::Dispatch(slot, key) = q.next(now) {
            out.push((slot.webhook, key));
            q.release(slot, Some(true));
        }
        out
    }

    #[test]
    fn entries_go_in_due_order_and_not_before_due() {
        let mut q = Queues::new(limits());
        q.apply(A, None, Some(key(30, 3)));
        q.apply(A, None, Some(key(10, 1)));
        q.apply(A, None, Some(key(20, 2)));
        assert_eq!(q.next(5), Next::Idle(Some(10)));
        assert_eq!(drain(&mut q, 20), vec![(A, key(10, 1)), (A, key(20, 2))]);
        assert_eq!(q.next(25), Next::Idle(Some(30)));
        assert_eq!(drain(&mut q, 30), vec![(A, key(30, 3))]);
        assert_eq!(
            q.counts(),
            (0, 0, 0),
            "a webhook with nothing to do has no queue"
        );
        // But it is still known to be fast: its next deliveries may go several at once.
        q.apply(A, None, Some(key(40, 4)));
        q.apply(A, None, Some(key(40, 5)));
        assert!(matches!(q.next(40), Next::Dispatch(..)));
        assert!(matches!(q.next(40), Next::Dispatch(..)));
    }

    #[test]
    fn a_moved_or_removed_entry_is_not_dispatched_at_its_old_time() {
        let mut q = Queues::new(limits());
        q.apply(A, None, Some(key(10, 1)));
        q.apply(A, None, Some(key(10, 2)));
        q.apply(A, Some(key(10, 1)), Some(key(50, 1)));
        q.apply(A, Some(key(10, 2)), None);
        assert_eq!(drain(&mut q, 20), vec![]);
        assert_eq!(drain(&mut q, 50), vec![(A, key(50, 1))]);
    }

    #[test]
    fn webhooks_with_due_work_are_served_round_robin() {
        let mut q = Queues::new(limits());
        for i in 0..6 {
            q.apply(A, None, Some(key(1, i)));
        }
        q.apply(B, None, Some(key(5, 100)));
        q.set_proven(A, true);
        q.set_proven(B, true);
        let order: Vec<WebhookId> = drain(&mut q, 10).into_iter().map(|(w, _)| w).collect();
        // B's one delivery goes second, not after A's backlog.
        assert_eq!(order[..3], [A, B, A]);
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn a_full_window_spills_to_disk_and_is_read_back_in_order() {
        let mut q = Queues::new(limits());
        // 20 changes for a window of 4 (hard cap 8): the last 12 are left to the disk.
        let disk: Vec<Key> = (0..20).map(|i| key(1, i)).collect();
        for k in &disk {
            q.apply(A, None, Some(*k));
        }
        assert_eq!(q.counts().0, 8, "memory is bounded");
        q.set_proven(A, true);
        let mut sent = Vec::new();
        loop {
            while let Next::Dispatch(slot, k) = q.next(10) {
                sent.push(k);
                q.release(slot, Some(true));
            }
            let Some(refill) = q.take_refill(10) else {
                break;
            };
            let read: Vec<Key> = disk
                .iter()
                .copied()
                .filter(|k| *k > refill.after && !sent.contains(k))
                .take(refill.limit)
                .collect();
            assert!(read.len() <= refill.limit);
            q.refilled(refill, &read);
        }
        assert_eq!(sent, disk, "every entry once, in order");
    }

    #[test]
    fn a_change_during_a_refill_read_is_not_lost_or_undone() {
        let mut q = Queues::new(limits());
        q.seed(A, key(1, 1));
        // The head goes; the window is empty, so a refill is wanted.
        let Next::Dispatch(slot, _) = q.next(10) else {
            panic!("nothing dispatched")
        };
        q.release(slot, Some(true));
        let refill = q.take_refill(10).expect("a refill");
        // While the read is out: entry 2 (which the read will return) is removed, and entry
        // 3 appears at a key the read did not reach.
        q.apply(A, Some(key(1, 2)), None);
        q.apply(A, None, Some(key(1, 3)));
        q.refilled(refill, &[key(1, 2)]);
        let due: Vec<Key> = drain(&mut q, 10).into_iter().map(|(_, k)| k).collect();
        assert!(
            !due.contains(&key(1, 2)),
            "a removed entry came back: {due:?}"
        );
        // The read hit its limit only if it returned `limit` entries; with 1 < limit it was
        // the end, so entry 3 is known without another read.
        let mut all = due;
        while let Some(r) = q.take_refill(10) {
            q.refilled(r, &[]);
            while let Next::Dispatch(slot, k) = q.next(10) {
                all.push(k);
                q.release(slot, None);
            }
        }
        assert!(all.contains(&key(1, 3)), "{all:?}");
    }

    #[test]
    fn not_proven_webhooks_hold_at_most_their_share_of_global_slots() {
        let mut q = Queues::new(limits());
        // Six hanging (not proven) webhooks and one proven one, all due.
        for w in 10..16 {
            q.apply(WebhookId(w), None, Some(key(1, w)));
        }
        q.set_proven(A, true);
        q.apply(A, None, Some(key(2, 1)));
        q.apply(A, None, Some(key(2, 2)));
        let mut slots = Vec::new();
        while let Next::Dispatch(slot, _) = q.next(10) {
            slots.push(slot);
        }
        let unproven = slots.iter().filter(|s| s.webhook != A).count();
        let healthy = slots.iter().filter(|s| s.webhook == A).count();
        assert_eq!(unproven, 4, "the share is 4 of 8");
        assert_eq!(healthy, 2, "the proven webhook still got its slots");
        // A not-proven slot frees: a waiting not-proven webhook goes.
        q.release(slots[0], Some(false));
        assert!(matches!(q.next(10), Next::Dispatch(s, _) if s.webhook != A));
    }

    #[test]
    fn a_rate_limited_webhook_waits_for_tokens_while_others_go() {
        let mut q = Queues::new(Limits {
            per_webhook: 8,
            ..limits()
        });
        q.set_proven(A, true);
        q.set_proven(B, true);
        q.set_flow(A, None, Some(2));
        for i in 0..6 {
            q.apply(A, None, Some(key(0, i)));
        }
        q.apply(B, None, Some(key(0, 100)));
        // A burst of 2 (the bucket holds one second), then B, then A waits 500 ms a token.
        let mut sent = Vec::new();
        while let Next::Dispatch(slot, _) = q.next(1_000) {
            sent.push(slot.webhook);
            q.release(slot, Some(true));
        }
        assert_eq!(sent.iter().filter(|w| **w == A).count(), 2);
        assert!(sent.contains(&B));
        assert_eq!(q.next(1_000), Next::Idle(Some(1_500)));
        assert_eq!(q.next(1_499), Next::Idle(Some(1_500)));
        assert!(matches!(q.next(1_500), Next::Dispatch(s, _) if s.webhook == A));
        // The limit is lifted: the rest goes at once.
        q.set_flow(A, None, None);
        let mut rest = 0;
        while let Next::Dispatch(slot, _) = q.next(1_500) {
            rest += 1;
            q.release(slot, Some(true));
        }
        assert_eq!(rest, 3);
    }

    #[test]
    fn a_webhooks_own_max_in_flight_replaces_the_daemons_once_proven() {
        let mut q = Queues::new(Limits {
            per_webhook: 2,
            ..limits()
        });
        q.set_flow(A, Some(3), None);
        for i in 0..6 {
            q.apply(A, None, Some(key(0, i)));
        }
        // Not proven: one at a time, whatever it asks (the lane protection stays on top).
        assert!(matches!(q.next(1), Next::Dispatch(_, _)));
        assert_eq!(q.in_flight_of(A), 1);
        assert!(matches!(q.next(1), Next::Idle(_)));
        q.set_proven(A, true);
        q.set_flow(A, Some(3), None);
        while let Next::Dispatch(_, _) = q.next(1) {}
        assert_eq!(q.in_flight_of(A), 3, "its own limit, above the daemon's 2");
        q.set_flow(A, Some(1), None);
        assert!(q.try_take(A, 1).is_none());
    }

    /// Regression (issue 13 adversarial pass): webhooks that answered fast, then hung, kept
    /// every global slot until their timeouts.
    #[test]
    fn proven_webhooks_that_start_hanging_keep_only_the_share() {
        let mut q = Queues::new(Limits {
            max_in_flight: 4,
            per_webhook: 4,
            unproven_share: 2,
            ..limits()
        });
        q.set_proven(A, true);
        q.set_proven(B, true);
        for i in 0..4 {
            q.apply(A, None, Some(key(1, i)));
        }
        let mut hanging = Vec::new();
        while let Next::Dispatch(slot, _) = q.next(10) {
            hanging.push(slot);
        }
        assert_eq!(hanging.len(), 4);
        assert_eq!(q.next(10), Next::Full);
        // A second later they are all still running: slow.
        for slot in &mut hanging {
            q.slowed(slot);
        }
        q.apply(B, None, Some(key(20, 100)));
        q.apply(B, None, Some(key(20, 101)));
        q.apply(B, None, Some(key(20, 102)));
        let healthy: Vec<Slot> = std::iter::from_fn(|| match q.next(20) {
            Next::Dispatch(slot, _) => Some(slot),
            _ => None,
        })
        .collect();
        assert_eq!(
            healthy.len(),
            2,
            "the healthy webhook gets max - share slots"
        );
        assert!(healthy.iter().all(|s| s.webhook == B));
        // A, no longer proven, starts nothing more.
        q.apply(A, None, Some(key(20, 9)));
        assert_eq!(q.next(20), Next::Full);
    }

    #[test]
    fn a_webhook_goes_one_at_a_time_until_proven() {
        let mut q = Queues::new(limits());
        q.apply(A, None, Some(key(1, 1)));
        q.apply(A, None, Some(key(1, 2)));
        let Next::Dispatch(first, _) = q.next(10) else {
            panic!("nothing dispatched")
        };
        assert_eq!(q.next(10), Next::Idle(None));
        q.release(first, Some(true));
        assert!(matches!(q.next(10), Next::Dispatch(..)));
    }

    #[test]
    fn global_slots_bound_dispatch_and_manual_attempts() {
        let mut q = Queues::new(Limits {
            max_in_flight: 2,
            unproven_share: 2,
            ..limits()
        });
        for w in 1..=3 {
            q.apply(WebhookId(w), None, Some(key(1, w)));
        }
        assert!(matches!(q.next(10), Next::Dispatch(..)));
        assert!(matches!(q.next(10), Next::Dispatch(..)));
        assert_eq!(q.next(10), Next::Full);
        assert_eq!(q.try_take(WebhookId(9), 0), None);
    }

    #[test]
    fn a_deferred_entry_comes_back_at_its_time() {
        let mut q = Queues::new(limits());
        q.apply(A, None, Some(key(1, 1)));
        let Next::Dispatch(slot, k) = q.next(10) else {
            panic!("nothing dispatched")
        };
        q.release(slot, None);
        q.defer(A, k, 1_010);
        assert_eq!(q.next(500), Next::Idle(Some(1_010)));
        assert_eq!(drain(&mut q, 1_010), vec![(A, k)]);
    }

    #[test]
    fn due_work_finds_room_when_memory_is_full_of_later_retries() {
        let mut q = Queues::new(Limits {
            total_window: 50,
            ..limits()
        });
        let hour = 3_600_000;
        // 20 webhooks with retries due in an hour fill memory (8 each, past the total).
        for w in 10..30u128 {
            for i in 0..8 {
                q.apply(WebhookId(w), None, Some(key(hour, w * 100 + i)));
            }
        }
        assert!(q.counts().0 >= 50);
        // A healthy webhook's due work is on disk, past its (empty) window.
        q.seed(A, key(1, 1));
        q.set_proven(A, true);
        let disk: Vec<Key> = (1..=20).map(|i| key(1, i)).collect();
        let mut sent = Vec::new();
        for _ in 0..100 {
            while let Next::Dispatch(slot, k) = q.next(10) {
                if slot.webhook == A {
                    sent.push(k);
                }
                q.release(slot, Some(true));
            }
            let Some(r) = q.take_refill(10) else { break };
            assert_eq!(r.webhook, A, "only the webhook with due work reads");
            let read: Vec<Key> = disk
                .iter()
                .copied()
                .filter(|k| *k > r.after)
                .take(r.limit)
                .collect();
            q.refilled(r, &read);
        }
        assert_eq!(
            sent, disk,
            "every due entry, in order, despite the full memory"
        );
    }

    #[test]
    fn memory_stays_bounded_with_many_webhooks() {
        let mut q = Queues::new(Limits {
            total_window: 50,
            ..limits()
        });
        // 100 webhooks with 100 due each, seeded from disk heads only.
        for w in 0..100u128 {
            q.seed(WebhookId(w), key(1, w * 1000));
        }
        assert_eq!(q.counts().0, 100);
        // Refills stop once the total is reached.
        let mut reads = 0;
        while let Some(r) = q.take_refill(10) {
            let entries: Vec<Key> = (1..=r.limit as u128)
                .map(|i| key(1, r.webhook.0 * 1000 + i))
                .collect();
            q.refilled(r, &entries);
            reads += 1;
            assert!(reads < 1000);
        }
        assert!(q.counts().0 <= 100 + 50, "{:?}", q.counts());
    }

    #[test]
    fn a_forgotten_webhook_holds_nothing_and_a_late_refill_adds_nothing() {
        let mut q = Queues::new(Limits::new(8, 2));
        let w = WebhookId(7);
        q.seed(w, (10, DeliveryId(1)));
        q.apply(w, None, Some((20, DeliveryId(2))));
        let refill = q
            .take_refill(0)
            .expect("the disk holds more after the head");
        let Next::Dispatch(slot, key) = q.next(10) else {
            panic!("the head is due");
        };
        assert_eq!(key, (10, DeliveryId(1)));
        q.forget(w);
        assert_eq!(q.counts().0, 0, "no entry stays in memory");
        assert_eq!(q.in_flight_of(w), 1, "the attempt in flight keeps its slot");
        q.refilled(refill, &[(30, DeliveryId(3))]);
        assert_eq!(
            q.counts().0,
            0,
            "a refill read before the forget adds nothing"
        );
        assert_eq!(q.next(1_000), Next::Idle(None));
        q.release(slot, Some(true));
        assert_eq!(q.counts(), (0, 0, 0), "nothing is left of it");
    }
}
