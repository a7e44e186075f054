//! Per-webhook flow control (issue 16): the `max_in_flight` a webhook sets for itself and
//! its `rate_limit`, a token bucket. Pure, like [`super::queues`], which consults it before
//! each dispatch: a delivery that must wait stays in its queue (it is neither failed nor
//! counted as an attempt) and its webhook goes in the timer at the time a token is back.
//!
//! Only webhooks that set one of the two have a [`Flow`], so memory follows them.

/// Token units per request: a bucket counts thousandths, so a rate of `r` per second adds
/// exactly `r` units per ms.
const UNIT: i64 = 1000;

/// A webhook's own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Attempts in flight once proven fast, instead of the daemon's per-webhook value.
    pub max_in_flight: Option<usize>,
    /// Requests started per second.
    pub bucket: Option<Bucket>,
}

impl Flow {
    /// The flow of a webhook with these options; `None` when it sets neither.
    pub fn new(max_in_flight: Option<u32>, rate_per_s: Option<u32>) -> Option<Flow> {
        if max_in_flight.is_none() && rate_per_s.is_none() {
            return None;
        }
        Some(Flow {
            max_in_flight: max_in_flight.map(|n| n.max(1) as usize),
            bucket: rate_per_s.map(Bucket::new),
        })
    }
}

/// A token bucket: `rate` requests per second, bursts of up to `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    rate: u32,
    /// In thousandths of a request; below zero after manual attempts that went without a
    /// token (they are not refused, and scheduled ones wait for the debt).
    tokens: i64,
    /// When `tokens` was last brought up to date, ms since the epoch.
    at_ms: u64,
}

impl Bucket {
    /// A full bucket of `rate` per second (at least 1).
    pub fn new(rate: u32) -> Bucket {
        let rate = rate.max(1);
        Bucket {
            rate,
            tokens: i64::from(rate) * UNIT,
            at_ms: 0,
        }
    }

    /// Requests per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    fn refill(&mut self, now: u64) {
        if now > self.at_ms {
            let elapsed = i64::try_from(now - self.at_ms).unwrap_or(i64::MAX);
            let capacity = i64::from(self.rate) * UNIT;
            self.tokens = self
                .tokens
                .saturating_add(elapsed.saturating_mul(i64::from(self.rate)))
                .min(capacity);
            self.at_ms = now;
        }
    }

    /// `None` when a request may start at `now`; else the time (ms) a token is back.
    pub fn ready_at(&mut self, now: u64) -> Option<u64> {
        self.refill(now);
        if self.tokens >= UNIT {
            return None;
        }
        let missing = u64::try_from(UNIT - self.tokens).unwrap_or(u64::MAX);
        Some(now + missing.div_ceil(u64::from(self.rate)))
    }

    /// A request starts at `now`: one token goes, even if there was none (a manual attempt).
    pub fn take(&mut self, now: u64) {
        self.refill(now);
        self.tokens -= UNIT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_its_rate_then_paces_it() {
        let mut bucket = Bucket::new(20);
        let start = 1_000_000;
        for _ in 0..20 {
            assert_eq!(bucket.ready_at(start), None);
            bucket.take(start);
        }
        // Empty: the next token is back 50 ms later (1000 / 20).
        assert_eq!(bucket.ready_at(start), Some(start + 50));
        assert_eq!(bucket.ready_at(start + 49), Some(start + 50));
        assert_eq!(bucket.ready_at(start + 50), None);
        // Over 10 s of steady demand, the bucket lets through 20 per second.
        let mut now = start + 50;
        let mut sent = 0;
        while now < start + 10_050 {
            match bucket.ready_at(now) {
                None => {
                    bucket.take(now);
                    sent += 1;
                }
                Some(at) => now = at,
            }
        }
        assert_eq!(sent, 200);
    }

    #[test]
    fn a_manual_attempt_without_a_token_is_a_debt_scheduled_ones_wait_for() {
        let mut bucket = Bucket::new(1);
        bucket.take(0);
        bucket.take(0);
        assert_eq!(bucket.ready_at(0), Some(2000));
        // An idle bucket never holds more than one second's worth.
        assert_eq!(bucket.ready_at(60_000), None);
        bucket.take(60_000);
        assert_eq!(bucket.ready_at(60_000), Some(61_000));
    }

    #[test]
    fn flows_exist_only_for_webhooks_that_set_a_limit() {
        assert_eq!(Flow::new(None, None), None);
        assert_eq!(Flow::new(Some(3), None).unwrap().max_in_flight, Some(3));
        assert_eq!(Flow::new(None, Some(5)).unwrap().bucket.unwrap().rate(), 5);
    }
}
