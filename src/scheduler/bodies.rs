//! Event bodies in memory: one shared copy per event, however many attempts use it, within
//! a byte budget; the newest accepted ones kept for their first attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::{lock, Inner};
use crate::ids::{DeliveryId, EventKey};
use crate::model::Delivery;
use crate::store::{blocking, StoreError};

/// Bytes of event bodies held in memory for attempts (64 MiB): an attempt whose body is not
/// already in memory waits for room before reading it. A body shared by many attempts
/// counts once.
pub const BODY_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Bodies of just-accepted events kept for their first attempts (4 MiB, within the budget);
/// beyond, the attempt reads the body from the store.
const FRESH_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The budget's unit (1 KiB).
const BUDGET_UNIT: usize = 1024;

/// An event body shared by every attempt that uses it; its budget is given back when the
/// last one drops it.
pub(super) struct Body {
    pub(super) bytes: Bytes,
    pub(super) _budget: Option<OwnedSemaphorePermit>,
}

/// Lets `Bytes` share a [`Body`] without copying it.
pub(super) struct SharedBody(pub(super) Arc<Body>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// The bodies in memory: every live one by event (weak), and the newest accepted ones (strong,
/// at most [`FRESH_BODY_BYTES`]) for their first attempts.
#[derive(Default)]
pub(super) struct Bodies {
    live: HashMap<EventKey, Weak<Body>>,
    /// `live`'s size at which dropped bodies are next swept out (twice the size after the
    /// last sweep, at least 4,096), so sweeping costs O(1) per insert.
    sweep_at: usize,
    fresh: VecDeque<(EventKey, Arc<Body>)>,
    fresh_bytes: usize,
    /// Payload deletions seen ([`Bodies::forget`]): a body read from the store before one
    /// is not shared afterwards, since the read may predate it.
    forgotten: u64,
}

impl Bodies {
    pub(super) fn get(&self, event: EventKey) -> Option<Arc<Body>> {
        self.live.get(&event).and_then(Weak::upgrade)
    }

    pub(super) fn insert(&mut self, event: EventKey, body: &Arc<Body>) {
        if self.live.len() >= self.sweep_at.max(4096) {
            self.live.retain(|_, weak| weak.strong_count() > 0);
            self.sweep_at = self.live.len() * 2;
        }
        self.live.insert(event, Arc::downgrade(body));
    }

    /// Drops the body of `event`, whose payload was deleted (issue 15): out of the shared
    /// map and of the fresh ones, so only attempts that hold it already still have it.
    pub(super) fn forget(&mut self, event: EventKey) {
        self.forgotten += 1;
        self.live.remove(&event);
        let before = self.fresh.len();
        self.fresh.retain(|(key, _)| *key != event);
        if self.fresh.len() != before {
            self.fresh_bytes = self.fresh.iter().map(|(_, b)| b.bytes.len()).sum();
        }
    }

    pub(super) fn keep_fresh(&mut self, event: EventKey, body: Arc<Body>) {
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

/// The budget units (KiB, at least 1) a body of `len` bytes takes.
pub(super) fn budget_units(len: usize) -> u32 {
    u32::try_from(len.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX)
}

impl Inner {
    /// Reads a delivery and its event's body: from memory when it is there, else from the
    /// store, within the body budget (room for the largest body is reserved before a body is
    /// read, and cut to the body's size after).
    pub(super) async fn read_delivery(
        self: &Arc<Self>,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Bytes)>, StoreError> {
        let largest = budget_units(self.settings.max_body_bytes.min(BODY_BUDGET_BYTES));
        let mut reserved = Arc::clone(&self.body_budget)
            .try_acquire_many_owned(largest)
            .ok();
        let may_read_body = reserved.is_some();
        let forgotten = lock(&self.bodies).forgotten;
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
        let event = delivery.event_key;
        loop {
            if let Some(shared) = lock(&self.bodies).get(event) {
                return Ok(Some((delivery, Bytes::from_owner(SharedBody(shared)))));
            }
            if let (Some(bytes), Some(mut permit)) = (body.take(), reserved.take()) {
                // The rest of the reservation goes back when `permit` drops.
                let exact = permit.split(budget_units(bytes.len()).min(largest) as usize);
                let mut bodies = lock(&self.bodies);
                // Another attempt may have loaded it meanwhile: share that one. A payload
                // deleted since the read began: this attempt keeps its copy (it read before
                // the deletion), but nobody else may find it.
                let shared = match bodies.get(event) {
                    Some(shared) => shared,
                    None if bodies.forgotten != forgotten => Arc::new(Body {
                        bytes: Bytes::from(bytes),
                        _budget: exact,
                    }),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &'static [u8]) -> Arc<Body> {
        Arc::new(Body {
            bytes: Bytes::from_static(bytes),
            _budget: None,
        })
    }

    /// A deleted payload (issue 15) leaves both the shared map and the fresh ones, and its
    /// bytes leave the fresh count; other events keep theirs.
    #[test]
    fn forget_drops_a_deleted_payload_from_every_place_it_was_kept() {
        let mut bodies = Bodies::default();
        let (deleted, kept) = (EventKey(1), EventKey(2));
        let (a, b) = (body(b"personal data"), body(b"other"));
        bodies.insert(deleted, &a);
        bodies.keep_fresh(deleted, Arc::clone(&a));
        bodies.insert(kept, &b);
        bodies.keep_fresh(kept, Arc::clone(&b));
        drop(a);
        let before = bodies.forgotten;
        bodies.forget(deleted);
        assert!(bodies.get(deleted).is_none());
        assert_eq!(
            bodies.forgotten,
            before + 1,
            "reads begun before it do not share"
        );
        assert_eq!(bodies.fresh.len(), 1);
        assert_eq!(bodies.fresh_bytes, b"other".len());
        assert_eq!(&bodies.get(kept).unwrap().bytes[..], b"other");
    }
}
