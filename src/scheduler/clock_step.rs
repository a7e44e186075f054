//! Wall-clock steps (issue 13, item 9): a step back seen against the monotonic clock, and
//! due times a clock that was ahead left too far in the future, brought back.

use crate::clock;
use crate::retry::RetrySchedule;
use crate::store::{Store, StoreError};

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

/// Runs [`Store::clamp_far_due`] at the wall clock's now and logs what moved. Only entries
/// further ahead than the schedule's shortest step are looked at: no retry can be wrong by
/// less (a test attempt's lease or an inactive webhook's hold brought back is harmless: the
/// claim and the hold apply again).
pub(super) fn clamp_far_due(
    store: &Store,
    schedule: &RetrySchedule,
    when: &str,
) -> Result<(), StoreError> {
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
