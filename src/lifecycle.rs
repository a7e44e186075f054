//! Endpoint lifecycle (issue 15): when the daemon disables a webhook, the failing-streak rule,
//! and the operational events it emits about it (`webhook.disabled`, `webhook.enabled`,
//! `delivery.exhausted`, `recovery.finished`).
//!
//! Owner's rule: policy here is pure ([`Streaks`] takes `now`); the store keeps the state
//! ([`crate::store::Store::set_webhook_lifecycle`]); an operational event is an ordinary
//! event of the webhook's organization, stored and delivered like any other, fanned out only
//! to webhooks that name its type (never through `"*"`), never to the webhook it is about,
//! and copied to the operator endpoint when one is configured (`operator_webhook_url`).
//! Architecture invariant: no operational event is emitted about a delivery of an
//! operational event (`delivery.exhausted` of a `delivery.exhausted` would loop between two
//! failing endpoints).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::event::{EventType, PreparedEvent};
use crate::ids::{generate_event_id, DeliveryId, WebhookId};
use crate::model::{Attempt, DisableReason, Disabled, Webhook};
use crate::store::{FanOut, Store, StoreError};

/// The organization under which copies of operational events for the operator endpoint are
/// stored. It is not a valid producer organization id (`@`), so no API key, event or webhook
/// of a customer can use it.
pub const OPERATOR_ORGANIZATION: &str = "@operator";

/// The fixed id of the operator endpoint's webhook (`wh_00000000000000000000000001`).
pub const OPERATOR_WEBHOOK: WebhookId = WebhookId(1);

/// When the daemon disables a webhook (`--disable-on-gone`, `--disable-after`,
/// `--disable-after-attempts`).
#[derive(Debug, Clone)]
pub struct DisablePolicy {
    /// Disable on an attempt answered `410 Gone` (default on).
    pub on_gone: bool,
    /// Disable when every attempt failed for at least this long (default 5 days)…
    pub after: Duration,
    /// …and at least this many attempts failed in the streak (default 10).
    pub after_attempts: u32,
}

impl DisablePolicy {
    /// Whether an attempt answered with `status_code` disables its webhook at once: a
    /// `410 Gone` (Standard Webhooks: the receiver asks to stop) under `--disable-on-gone`.
    pub fn disables_at_once(&self, status_code: Option<u16>) -> bool {
        self.on_gone && status_code == Some(410)
    }
}

impl Default for DisablePolicy {
    fn default() -> Self {
        DisablePolicy {
            on_gone: true,
            after: Duration::from_secs(5 * 24 * 3600),
            after_attempts: 10,
        }
    }
}

/// A webhook's current streak of failed attempts, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Streak {
    since_ms: u64,
    failures: u32,
}

/// What [`Streaks::observe`] asks the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreakAction {
    /// Nothing to store.
    None,
    /// Store the streak's start (a first failure after a success): `failing_since_ms`.
    Started(u64),
    /// Store that no streak runs (a success after failures).
    Ended,
    /// Disable the webhook: the streak began at this time (ms since the epoch).
    Disable {
        /// When the streak began.
        since_ms: u64,
    },
}

/// The failing-streak rule (issue 15, item 2), pure: every attempt's outcome goes in with its
/// time; a success ends the streak. The start is kept in the store, so a restart keeps it;
/// the count of failures starts again from zero after a restart (so a restarted daemon waits
/// for `after_attempts` more failures: it never disables sooner than the rule says).
#[derive(Debug, Default)]
pub struct Streaks {
    by_webhook: HashMap<WebhookId, Streak>,
}

impl Streaks {
    /// Notes one attempt's outcome for `webhook` at `now_ms`; `stored_since_ms` is the
    /// streak start the store holds (`Webhook::failing_since_ms`).
    pub fn observe(
        &mut self,
        webhook: WebhookId,
        stored_since_ms: Option<u64>,
        succeeded: bool,
        now_ms: u64,
        policy: &DisablePolicy,
    ) -> StreakAction {
        if succeeded {
            let had = self.by_webhook.remove(&webhook).is_some();
            return if had || stored_since_ms.is_some() {
                StreakAction::Ended
            } else {
                StreakAction::None
            };
        }
        let streak = self.by_webhook.entry(webhook).or_insert(Streak {
            since_ms: stored_since_ms.unwrap_or(now_ms),
            failures: 0,
        });
        streak.failures = streak.failures.saturating_add(1);
        let long_enough = now_ms.saturating_sub(streak.since_ms)
            >= u64::try_from(policy.after.as_millis()).unwrap_or(u64::MAX);
        if long_enough && streak.failures >= policy.after_attempts {
            let since_ms = streak.since_ms;
            self.by_webhook.remove(&webhook);
            return StreakAction::Disable { since_ms };
        }
        if stored_since_ms.is_none() && streak.failures == 1 {
            StreakAction::Started(streak.since_ms)
        } else {
            StreakAction::None
        }
    }

    /// Forgets a webhook (deleted, or disabled).
    pub fn forget(&mut self, webhook: WebhookId) {
        self.by_webhook.remove(&webhook);
    }
}

/// An attempt's failure in words for `disabled.last_error`: `HTTP 500`, or the error kind
/// and its detail (`timeout`, `connect: Connection refused`), at most 256 bytes.
pub fn describe_failure(attempt: &Attempt) -> String {
    let text = match (attempt.status_code, attempt.error) {
        (_, Some(error)) => match &attempt.error_detail {
            Some(detail) => format!("{}: {detail}", error.as_str()),
            None => error.as_str().to_owned(),
        },
        (Some(code), None) => format!("HTTP {code}"),
        (None, None) => "no answer".to_owned(),
    };
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The `Disabled` record for an attempt answered 410.
pub fn gone(delivery: DeliveryId, now_ms: u64) -> Disabled {
    Disabled {
        reason: DisableReason::Gone,
        at_ms: now_ms,
        delivery_id: Some(delivery),
        status_code: Some(410),
        failing_since_ms: None,
        last_error: None,
    }
}

/// The operational events' emitter: stores each as an event of the organization (and a copy
/// for the operator endpoint), logs it and counts it.
#[derive(Clone)]
pub struct Emitter {
    store: Arc<Store>,
    /// Whether the operator endpoint is configured (its webhook is [`OPERATOR_WEBHOOK`]).
    operator: bool,
}

impl Emitter {
    /// An emitter over `store`; `operator`: whether the operator endpoint is configured.
    pub fn new(store: Arc<Store>, operator: bool) -> Emitter {
        Emitter { store, operator }
    }

    /// Emits an operational event of `organization_id` about `about` (the webhook it
    /// concerns, which never receives it) with `data` (a JSON object), at `now_ms`.
    ///
    /// # Errors
    /// [`StoreError`] when the event could not be stored (logged by the caller); the
    /// operator copy's failure is logged here and not returned.
    pub async fn emit(
        &self,
        organization_id: &str,
        about: WebhookId,
        event_type: EventType,
        data: serde_json::Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        debug_assert!(event_type.is_operational());
        metrics::counter!(crate::metrics::OPERATIONAL_EVENTS, "type" => event_type.as_str())
            .increment(1);
        let event_id = generate_event_id();
        let prepared = prepare(
            &event_id,
            event_type,
            organization_id,
            organization_id,
            &data,
            now_ms,
        );
        tracing::info!(
            event_type = event_type.as_str(),
            event_id = %event_id,
            organization = organization_id,
            webhook = %about,
            "operational event"
        );
        self.store
            .accept_event(prepared, FanOut::SubscribersExcept(about), now_ms, now_ms)
            .await?;
        if self.operator {
            let copy = prepare(
                &event_id,
                event_type,
                OPERATOR_ORGANIZATION,
                organization_id,
                &data,
                now_ms,
            );
            if let Err(e) = self
                .store
                .accept_event(copy, FanOut::Only(OPERATOR_WEBHOOK), now_ms, now_ms)
                .await
            {
                tracing::warn!(error = %e, event_id = %event_id, "could not store the operator endpoint's copy of an operational event");
            }
        }
        Ok(())
    }

    /// `webhook.disabled` about `webhook` (its `disabled` set).
    pub async fn webhook_disabled(&self, webhook: &Webhook, held: u64, now_ms: u64) {
        let Some(d) = &webhook.disabled else {
            return;
        };
        let data = serde_json::json!({
            "webhook_id": webhook.id.to_string(),
            "url": webhook.url,
            "reason": d.reason.as_str(),
            "disabled_at": crate::clock::format_ms(d.at_ms),
            "delivery_id": d.delivery_id.map(|id| id.to_string()),
            "status_code": d.status_code,
            "failing_since": d.failing_since_ms.map(crate::clock::format_ms),
            "last_error": d.last_error,
            "held": held,
        });
        tracing::warn!(webhook = %webhook.id, reason = d.reason.as_str(), "webhook disabled; its deliveries are held until it is enabled");
        self.log_failure(
            self.emit(
                &webhook.organization_id,
                webhook.id,
                EventType::WebhookDisabled,
                data,
                now_ms,
            )
            .await,
        );
    }

    /// `webhook.enabled` about `webhook`.
    pub async fn webhook_enabled(
        &self,
        webhook: &Webhook,
        deliver_held: bool,
        held: u64,
        now_ms: u64,
    ) {
        let data = serde_json::json!({
            "webhook_id": webhook.id.to_string(),
            "url": webhook.url,
            "deliver_held": deliver_held,
            "held": held,
        });
        self.log_failure(
            self.emit(
                &webhook.organization_id,
                webhook.id,
                EventType::WebhookEnabled,
                data,
                now_ms,
            )
            .await,
        );
    }

    /// `delivery.exhausted` about a delivery that failed after its last scheduled attempt.
    pub async fn delivery_exhausted(
        &self,
        delivery: &crate::model::Delivery,
        last: &Attempt,
        now_ms: u64,
    ) {
        if delivery.event_type.is_operational() {
            return;
        }
        let data = serde_json::json!({
            "delivery_id": delivery.id.to_string(),
            "webhook_id": delivery.webhook_id.to_string(),
            "event_id": delivery.event_id,
            "event_type": delivery.event_type.as_str(),
            "attempts": delivery.attempt_count,
            "last_status_code": last.status_code,
            "last_error": last.error.map(|e| e.as_str()),
        });
        self.log_failure(
            self.emit(
                &delivery.organization_id,
                delivery.webhook_id,
                EventType::DeliveryExhausted,
                data,
                now_ms,
            )
            .await,
        );
    }

    /// `recovery.finished` about a job that ended (finished or cancelled).
    pub async fn recovery_finished(&self, job: &crate::model::Job, now_ms: u64) {
        let data = serde_json::json!({
            "job_id": job.id.to_string(),
            "kind": job.kind.as_str(),
            "webhook_id": job.webhook_id.to_string(),
            "state": job.state.as_str(),
            "matched": job.matched,
            "queued": job.queued,
            "succeeded": job.succeeded,
            "failed": job.failed,
        });
        self.log_failure(
            self.emit(
                &job.organization_id,
                job.webhook_id,
                EventType::RecoveryFinished,
                data,
                now_ms,
            )
            .await,
        );
    }

    fn log_failure(&self, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not store an operational event");
        }
    }
}

/// The envelope of an operational event, stored under `organization_id`, naming `owner` (the
/// organization it is about) in its body.
fn prepare(
    event_id: &str,
    event_type: EventType,
    organization_id: &str,
    owner: &str,
    data: &serde_json::Value,
    now_ms: u64,
) -> PreparedEvent {
    let timestamp = crate::clock::format_seconds(now_ms);
    let body = crate::event::envelope(event_id, event_type, &timestamp, owner, &data.to_string());
    PreparedEvent {
        event_id: event_id.to_owned(),
        event_type,
        timestamp,
        organization_id: organization_id.to_owned(),
        content_hash: Sha256::digest(&body).into(),
        body,
        ordering_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DisablePolicy {
        DisablePolicy {
            on_gone: true,
            after: Duration::from_secs(10),
            after_attempts: 3,
        }
    }

    #[test]
    fn a_streak_disables_only_when_long_enough_and_with_enough_failures() {
        let mut s = Streaks::default();
        let w = WebhookId(7);
        assert_eq!(
            s.observe(w, None, false, 1_000, &policy()),
            StreakAction::Started(1_000)
        );
        assert_eq!(
            s.observe(w, Some(1_000), false, 2_000, &policy()),
            StreakAction::None
        );
        // Three failures, but only 10 s after the first one counts.
        assert_eq!(
            s.observe(w, Some(1_000), false, 5_000, &policy()),
            StreakAction::None
        );
        assert_eq!(
            s.observe(w, Some(1_000), false, 11_000, &policy()),
            StreakAction::Disable { since_ms: 1_000 }
        );
    }

    #[test]
    fn a_success_ends_the_streak() {
        let mut s = Streaks::default();
        let w = WebhookId(7);
        s.observe(w, None, false, 1_000, &policy());
        s.observe(w, Some(1_000), false, 2_000, &policy());
        assert_eq!(
            s.observe(w, Some(1_000), true, 3_000, &policy()),
            StreakAction::Ended
        );
        // A new streak starts from the next failure.
        assert_eq!(
            s.observe(w, None, false, 20_000, &policy()),
            StreakAction::Started(20_000)
        );
        assert_eq!(
            s.observe(w, Some(20_000), false, 21_000, &policy()),
            StreakAction::None
        );
        assert_eq!(
            s.observe(w, Some(20_000), false, 22_000, &policy()),
            StreakAction::None
        );
    }

    #[test]
    fn after_a_restart_the_stored_start_counts_but_failures_are_counted_again() {
        let mut s = Streaks::default();
        let w = WebhookId(7);
        // Stored start an hour ago: long enough, but 3 failures must be seen again.
        let start = 1_000;
        let now = 3_600_000;
        assert_eq!(
            s.observe(w, Some(start), false, now, &policy()),
            StreakAction::None
        );
        assert_eq!(
            s.observe(w, Some(start), false, now + 1, &policy()),
            StreakAction::None
        );
        assert_eq!(
            s.observe(w, Some(start), false, now + 2, &policy()),
            StreakAction::Disable { since_ms: start }
        );
    }

    #[test]
    fn a_success_without_a_streak_stores_nothing() {
        let mut s = Streaks::default();
        assert_eq!(
            s.observe(WebhookId(1), None, true, 5, &policy()),
            StreakAction::None
        );
    }
}
