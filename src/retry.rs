//! The retry schedule and the state change after an attempt (spec "Retries automatiques").
//!
//! Owner's rule: pure policy. Functions take `now` and the current state and return the next
//! state; the store applies it in the same transaction that logs the attempt.

use std::time::Duration;

use crate::model::{DeliveryStatus, Trigger};

/// Delays between scheduled attempts, measured from the previous failure.
/// The spec's is `5m,30m,2h,6h`: 4 retries, so a delivery is abandoned after 5 failed attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// A schedule text that does not parse (`--retry-schedule`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry schedule {text:?}: {reason} (expected comma-separated durations like 5m,30m,2h,6h, each from 100ms to 30d, at most 100)")]
pub struct ScheduleParseError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Shortest delay a schedule may hold (100 ms; tests use sub-second schedules): a zero
/// delay would retry in a loop.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay a schedule may hold (30 days): beyond, retention would purge the delivery
/// before its next attempt, and absurd values would overflow the due time.
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most delays in a schedule (100).
pub const MAX_STEPS: usize = 100;

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::parse("5m,30m,2h,6h").expect("the spec schedule parses")
    }
}

impl RetrySchedule {
    /// Parses `5m,30m,2h,6h` (humantime durations, comma-separated). An empty text means
    /// no retries: one scheduled attempt only.
    ///
    /// # Errors
    /// [`ScheduleParseError`] when a part is empty or not a duration, a delay is outside
    /// [`MIN_DELAY`]..=[`MAX_DELAY`], or there are more than [`MAX_STEPS`] delays.
    pub fn parse(text: &str) -> Result<RetrySchedule, ScheduleParseError> {
        let err = |reason: String| ScheduleParseError {
            text: text.to_owned(),
            reason,
        };
        if text.trim().is_empty() {
            return Ok(RetrySchedule { delays: Vec::new() });
        }
        let mut delays = Vec::new();
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            let n = i + 1;
            if part.is_empty() {
                return Err(err(format!("delay {n} is empty")));
            }
            let delay = humantime::parse_duration(part)
                .map_err(|e| err(format!("delay {n} ({part:?}) is not a duration: {e}")))?;
            if !(MIN_DELAY..=MAX_DELAY).contains(&delay) {
                return Err(err(format!("delay {n} ({part:?}) is outside 100ms to 30d")));
            }
            delays.push(delay);
        }
        if delays.len() > MAX_STEPS {
            return Err(err(format!(
                "{} delays, more than {MAX_STEPS}",
                delays.len()
            )));
        }
        Ok(RetrySchedule { delays })
    }

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How many scheduled attempts are made before a delivery is `failed` (delays + 1).
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len() + 1).unwrap_or(u32::MAX)
    }

    /// The longest delay of the schedule (zero when it has none): the cap on what a
    /// receiver's `Retry-After` can ask for.
    pub fn longest(&self) -> Duration {
        self.delays.iter().max().copied().unwrap_or(Duration::ZERO)
    }

    /// The delay after the `failed_attempts`-th scheduled failure, if another attempt follows.
    pub fn delay_after(&self, failed_attempts: u32) -> Option<Duration> {
        let index = usize::try_from(failed_attempts.checked_sub(1)?).ok()?;
        self.delays.get(index).copied()
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .delays
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The longest a delivery may wait for its next attempt, in ms, after `scheduled_attempts`
/// failed scheduled attempts, the last of which asked for `retry_after_ms` (`Retry-After`):
/// the schedule's next step, lengthened by `Retry-After` up to the schedule's longest step,
/// as [`after_attempt`] computes it; 0 before the first attempt. A due time further ahead
/// than this was scheduled by a clock that has since been set back (issue 13, item 9).
pub fn longest_wait(
    schedule: &RetrySchedule,
    scheduled_attempts: u32,
    retry_after_ms: Option<u64>,
) -> u64 {
    if scheduled_attempts == 0 {
        return 0;
    }
    let step = schedule
        .delay_after(scheduled_attempts)
        .unwrap_or(Duration::ZERO);
    let asked = Duration::from_millis(retry_after_ms.unwrap_or(0)).min(schedule.longest());
    u64::try_from(step.max(asked).as_millis()).unwrap_or(u64::MAX)
}

/// The scheduling state of a delivery that an attempt result changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleState {
    /// Current status.
    pub status: DeliveryStatus,
    /// Scheduled attempts made so far.
    pub scheduled_attempts: u32,
    /// Due time of the next scheduled attempt, ms since the epoch.
    pub next_attempt_at_ms: Option<u64>,
}

/// The state after an attempt with the given result, finished at `now_ms`.
///
/// - Any 2xx: `succeeded`, nothing scheduled (a manual success also cancels a scheduled retry).
/// - A failed manual attempt changes nothing.
/// - A failed scheduled attempt: `retrying` with the next delay of the schedule, or `failed`
///   once the schedule is exhausted. A receiver's `retry_after` (429/503 `Retry-After`)
///   lengthens that delay: max(scheduled delay, `retry_after`), but never past the schedule's
///   longest step; it still counts as an attempt, and never shortens the schedule.
/// - A `held` delivery stays held after a failed attempt (a scheduled one that was in flight
///   when its webhook was disabled, or a manual one); a success makes it `succeeded`.
/// - A final delivery (`cancelled`, or `failed`/`succeeded` for a scheduled attempt that
///   raced with a change) stays as it is unless an attempt succeeds on it (a cancelled one
///   stays cancelled); such a late success is not counted as a scheduled attempt.
pub fn after_attempt(
    state: ScheduleState,
    trigger: Trigger,
    succeeded: bool,
    retry_after: Option<Duration>,
    schedule: &RetrySchedule,
    now_ms: u64,
) -> ScheduleState {
    if state.status == DeliveryStatus::Cancelled {
        return state;
    }
    if succeeded {
        // A scheduled attempt that raced with the delivery becoming final does not count:
        // the count never passes the schedule's maximum.
        let counts = trigger == Trigger::Scheduled && !state.status.is_final();
        let scheduled_attempts = state.scheduled_attempts + u32::from(counts);
        return ScheduleState {
            status: DeliveryStatus::Succeeded,
            scheduled_attempts,
            next_attempt_at_ms: None,
        };
    }
    // A held delivery (its webhook disabled) stays held after a failure: only a success, or
    // enabling the webhook, takes it out.
    if trigger == Trigger::Manual || state.status.is_final() || state.status == DeliveryStatus::Held
    {
        return state;
    }
    let failed = state.scheduled_attempts + 1;
    match schedule.delay_after(failed) {
        Some(delay) if failed < schedule.max_attempts() => {
            let asked = retry_after
                .unwrap_or(Duration::ZERO)
                .min(schedule.longest());
            let delay = delay.max(asked);
            ScheduleState {
                status: DeliveryStatus::Retrying,
                scheduled_attempts: failed,
                next_attempt_at_ms: Some(
                    now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                ),
            }
        }
        _ => ScheduleState {
            status: DeliveryStatus::Failed,
            scheduled_attempts: failed,
            next_attempt_at_ms: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> ScheduleState {
        ScheduleState {
            status: DeliveryStatus::Pending,
            scheduled_attempts: 0,
            next_attempt_at_ms: Some(0),
        }
    }

    #[test]
    fn longest_wait_is_the_next_step_or_a_capped_retry_after() {
        let schedule = RetrySchedule::default();
        assert_eq!(longest_wait(&schedule, 0, None), 0);
        assert_eq!(longest_wait(&schedule, 1, None), 5 * 60_000);
        assert_eq!(longest_wait(&schedule, 1, Some(3_600_000)), 3_600_000);
        assert_eq!(
            longest_wait(&schedule, 2, Some(99 * 3_600_000)),
            6 * 3_600_000
        );
    }

    #[test]
    fn spec_schedule_gives_up_after_five_failed_attempts() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 5);
        let mut state = pending();
        let mut offsets = Vec::new();
        let mut now = 1_000;
        for _ in 0..5 {
            state = after_attempt(state, Trigger::Scheduled, false, None, &schedule, now);
            if let Some(next) = state.next_attempt_at_ms {
                offsets.push(next - now);
                now = next;
            }
        }
        assert_eq!(offsets, [300_000, 1_800_000, 7_200_000, 21_600_000]);
        assert_eq!(state.status, DeliveryStatus::Failed);
        assert_eq!(state.scheduled_attempts, 5);
        assert_eq!(state.next_attempt_at_ms, None);
    }

    #[test]
    fn manual_failure_changes_nothing_and_manual_success_finishes() {
        let schedule = RetrySchedule::default();
        let retrying = ScheduleState {
            status: DeliveryStatus::Retrying,
            scheduled_attempts: 2,
            next_attempt_at_ms: Some(9),
        };
        assert_eq!(
            after_attempt(retrying, Trigger::Manual, false, None, &schedule, 5),
            retrying
        );
        let done = after_attempt(retrying, Trigger::Manual, true, None, &schedule, 5);
        assert_eq!(done.status, DeliveryStatus::Succeeded);
        assert_eq!(done.scheduled_attempts, 2);
        assert_eq!(done.next_attempt_at_ms, None);
        let failed = ScheduleState {
            status: DeliveryStatus::Failed,
            scheduled_attempts: 5,
            next_attempt_at_ms: None,
        };
        assert_eq!(
            after_attempt(failed, Trigger::Manual, true, None, &schedule, 5).status,
            DeliveryStatus::Succeeded
        );
    }

    #[test]
    fn cancelled_delivery_stays_cancelled() {
        let cancelled = ScheduleState {
            status: DeliveryStatus::Cancelled,
            scheduled_attempts: 1,
            next_attempt_at_ms: None,
        };
        assert_eq!(
            after_attempt(
                cancelled,
                Trigger::Manual,
                true,
                None,
                &RetrySchedule::default(),
                5
            ),
            cancelled
        );
    }

    #[test]
    fn a_late_scheduled_success_on_a_failed_delivery_is_not_counted() {
        // Found by the property below: five failures, then a scheduled attempt that raced
        // with the delivery becoming final succeeds.
        let failed = ScheduleState {
            status: DeliveryStatus::Failed,
            scheduled_attempts: 5,
            next_attempt_at_ms: None,
        };
        let schedule = RetrySchedule::default();
        let state = after_attempt(failed, Trigger::Scheduled, true, None, &schedule, 9);
        assert_eq!(state.status, DeliveryStatus::Succeeded);
        assert_eq!(state.scheduled_attempts, 5);
    }

    #[test]
    fn retry_after_lengthens_a_delay_up_to_the_longest_step_and_never_shortens_it() {
        let schedule = RetrySchedule::default(); // 5m,30m,2h,6h
        let after = |retry_after: Option<Duration>| {
            after_attempt(
                pending(),
                Trigger::Scheduled,
                false,
                retry_after,
                &schedule,
                0,
            )
            .next_attempt_at_ms
        };
        assert_eq!(after(None), Some(300_000));
        assert_eq!(after(Some(Duration::from_secs(10))), Some(300_000));
        assert_eq!(after(Some(Duration::from_secs(3600))), Some(3_600_000));
        assert_eq!(
            after(Some(Duration::from_secs(86_400 * 30))),
            Some(21_600_000)
        );
        // It still counts as an attempt: the fifth failure is final whatever it asked.
        let last = ScheduleState {
            status: DeliveryStatus::Retrying,
            scheduled_attempts: 4,
            next_attempt_at_ms: Some(0),
        };
        let state = after_attempt(
            last,
            Trigger::Scheduled,
            false,
            Some(Duration::from_secs(60)),
            &schedule,
            0,
        );
        assert_eq!(state.status, DeliveryStatus::Failed);
    }

    #[test]
    fn schedule_parses_and_prints() {
        let schedule = RetrySchedule::parse("1s, 2s,500ms").unwrap();
        assert_eq!(schedule.max_attempts(), 4);
        assert_eq!(schedule.to_string(), "1s,2s,500ms");
        assert!(RetrySchedule::parse("soon").is_err());
        assert_eq!(RetrySchedule::parse("").unwrap().max_attempts(), 1);
        assert_eq!(RetrySchedule::parse("  ").unwrap().max_attempts(), 1);
        for bad in ["0s", "5m,,30m", "5m,", "50ms", "31d", "5000000000000h"] {
            let e = RetrySchedule::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(!e.reason.is_empty(), "{bad}");
        }
        assert!(RetrySchedule::parse(&vec!["1s"; 101].join(",")).is_err());
        assert_eq!(
            RetrySchedule::parse(&vec!["1s"; 100].join(","))
                .unwrap()
                .max_attempts(),
            101
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One attempt's result: (2xx?, manual?, Retry-After in s).
        fn outcome() -> impl Strategy<Value = (bool, bool, Option<u64>)> {
            (
                any::<bool>(),
                prop::bool::weighted(0.2),
                proptest::option::of(0u64..200_000),
            )
        }

        proptest! {
            // Failures are shrunk and printed; a case worth keeping becomes a unit test (no
            // regression files beside the sources).
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

            /// Any sequence of outcomes follows the schedule: retries wait at least the
            /// schedule's step and at most its longest step, only scheduled failures count,
            /// the fifth scheduled failure is final, a success is final, and a final delivery
            /// has no due time.
            #[test]
            fn any_outcome_sequence_follows_the_schedule(
                outcomes in proptest::collection::vec(outcome(), 0..20)
            ) {
                let schedule = RetrySchedule::default();
                let mut state = ScheduleState {
                    status: DeliveryStatus::Pending,
                    scheduled_attempts: 0,
                    next_attempt_at_ms: Some(0),
                };
                let mut now = 1_000_000u64;
                for (ok, manual, retry_after) in outcomes {
                    let trigger = if manual { Trigger::Manual } else { Trigger::Scheduled };
                    let before = state;
                    state = after_attempt(
                        state,
                        trigger,
                        ok,
                        retry_after.map(Duration::from_secs),
                        &schedule,
                        now,
                    );
                    prop_assert!(state.scheduled_attempts <= schedule.max_attempts());
                    prop_assert_eq!(state.status.is_final(), state.next_attempt_at_ms.is_none());
                    if before.status.is_final() && !(ok && before.status != DeliveryStatus::Cancelled) {
                        prop_assert_eq!(state, before, "a final delivery stays as it is");
                    }
                    if ok && before.status != DeliveryStatus::Cancelled {
                        prop_assert_eq!(state.status, DeliveryStatus::Succeeded);
                    }
                    if !ok && manual {
                        prop_assert_eq!(state, before, "a failed manual attempt changes nothing");
                    }
                    if !ok && !manual && !before.status.is_final() {
                        let failed = before.scheduled_attempts + 1;
                        prop_assert_eq!(state.scheduled_attempts, failed);
                        match state.next_attempt_at_ms {
                            None => {
                                prop_assert_eq!(state.status, DeliveryStatus::Failed);
                                prop_assert_eq!(failed, schedule.max_attempts());
                            }
                            Some(due) => {
                                let step = schedule.delay_after(failed).unwrap().as_millis() as u64;
                                let wait = due - now;
                                prop_assert!(wait >= step);
                                prop_assert!(wait <= step.max(schedule.longest().as_millis() as u64));
                                if let Some(asked) = retry_after {
                                    prop_assert!(wait >= (asked * 1000).min(schedule.longest().as_millis() as u64));
                                }
                            }
                        }
                    }
                    now += 1_000;
                }
            }
        }
    }
}
