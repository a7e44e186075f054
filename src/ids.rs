//! Typed identifiers: `wh_<ULID>` webhooks, `dlv_<ULID>` deliveries, `key_<ULID>` API keys,
//! `job_<ULID>` recovery and replay jobs, and the internal key of a stored event.
//!
//! Owner's rule: an id is a ULID (time-ordered, 128 bits) with a fixed prefix in every
//! external form; inside the store it is the bare `u128`, so keys sort by creation time.
//! Nothing else in the crate formats or parses these prefixes.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

/// The error of parsing an id: wrong prefix or not a ULID. Carries no input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} id")]
pub struct IdParseError {
    /// What kind of id was expected (`webhook`, `delivery`, `key`).
    pub kind: &'static str,
}

/// How far back the wall clock may step (ms) with ids still increasing: within it, an id
/// keeps the last one's time (a few ms ahead of the clock); past it, the id takes the
/// clock's earlier time.
const CLOCK_STEP_KEPT_MS: u128 = 1_000;

/// A new ULID, as a `u128`. Ids of this process increase (within a millisecond, the last one
/// plus one), so ids made one after the other sort in the order they were made: an ingest
/// order the ordering by key relies on (issue 16). A new millisecond starts from fresh
/// random bits. If the wall clock steps back by up to [`CLOCK_STEP_KEPT_MS`] (a VM's clock
/// corrected, seen once in CI), ids go on from the last one; past that, the id takes the
/// earlier time (its time part stays true; order across such a step is not kept).
pub fn monotonic_ulid() -> u128 {
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let fresh = Ulid::generate().0;
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let (fresh_ms, last_ms) = (fresh >> 80, *last >> 80);
    let id = if fresh > *last || last_ms > fresh_ms + CLOCK_STEP_KEPT_MS {
        fresh
    } else {
        last.wrapping_add(1)
    };
    *last = id;
    id
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u128);

        impl $name {
            /// The text that starts every external form of this id.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id whose time part is the current time, greater than every id this
            /// process made before in the same millisecond ([`monotonic_ulid`]).
            pub fn generate() -> Self {
                Self(monotonic_ulid())
            }

            /// The creation time encoded in the id, in ms since the Unix epoch.
            pub fn timestamp_ms(self) -> u64 {
                Ulid(self.0).timestamp_ms()
            }

            /// The smallest id made at `ms` (ms since the Unix epoch): ids made at or after
            /// `ms` are `>=` it, ids made before are `<` it. For time ranges over tables
            /// keyed by id.
            pub fn first_at(ms: u64) -> Self {
                Self(u128::from(ms.min((1 << 48) - 1)) << 80)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, Ulid(self.0))
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let rest = s.strip_prefix($prefix).ok_or(IdParseError { kind: $kind })?;
                Ulid::from_string(rest)
                    .map(|u| Self(u.0))
                    .map_err(|_| IdParseError { kind: $kind })
            }
        }
    };
}

typed_id!(
    /// A webhook (endpoint) id, `wh_<ULID>`.
    WebhookId,
    "wh_",
    "webhook"
);
typed_id!(
    /// A delivery id (one event to one webhook), `dlv_<ULID>`.
    DeliveryId,
    "dlv_",
    "delivery"
);
typed_id!(
    /// An organization API key id, `key_<ULID>`.
    KeyId,
    "key_",
    "key"
);
typed_id!(
    /// A recovery or replay job (issue 15), `job_<ULID>`.
    JobId,
    "job_",
    "job"
);
typed_id!(
    /// The internal key of a stored event. Never shown: events are addressed by
    /// (organization, `event_id`). Its time part is the time of ingest.
    EventKey,
    "evk_",
    "event key"
);

/// A generated event id, `evt_<ULID>` (spec "Structure du payload").
pub fn generate_event_id() -> String {
    format!("evt_{}", Ulid::generate())
}

/// `n` bytes from the operating system's CSPRNG, as lowercase hex (`2n` characters).
///
/// # Panics
/// Panics if the operating system has no random source, which leaves nothing safe to do.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_made_one_after_the_other_increase_even_within_a_millisecond() {
        let ids: Vec<u128> = (0..10_000).map(|_| super::monotonic_ulid()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = WebhookId::generate();
        let text = id.to_string();
        assert!(text.starts_with("wh_") && text.len() == 29);
        assert_eq!(text.parse::<WebhookId>(), Ok(id));
    }

    #[test]
    fn wrong_prefix_is_refused() {
        let id = DeliveryId::generate().to_string();
        assert!(id.parse::<WebhookId>().is_err());
        assert!("wh_notaulid".parse::<WebhookId>().is_err());
    }
}
