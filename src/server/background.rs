//! The daemon's background loops besides the scheduler: retention, payload retention, SIGHUP
//! reloads, the rate limiter's memory, the metrics' upkeep and systemd's watchdog. Each one watches the
//! shutdown token and ends with it.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::Config;
use crate::scheduler::Scheduler;

/// Tells systemd (`Type=notify`) that the daemon is ready: the store is open, the scheduler
/// runs and the listener is bound. With `WatchdogSec=`, feeds the watchdog at half its
/// period, but only while the scheduler loop keeps turning, so a stuck scheduler gets the
/// service restarted. Without `NOTIFY_SOCKET` (not under systemd) this does nothing.
/// How long without a scheduler turn counts as stuck for the watchdog (5 s; the loop turns at
/// least every second).
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn notify_systemd(scheduler: &Scheduler, cancel: &CancellationToken) {
    use sd_notify::NotifyState;
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = std::time::Duration::from_micros(usec);
    let (scheduler, cancel) = (scheduler.clone(), cancel.clone());
    tracing::info!(
        period_ms = period.as_millis(),
        "feeding the systemd watchdog"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let age = scheduler.since_last_turn();
            // The loop turns at least every second (it sleeps at most that long), so a turn
            // older than STUCK_AFTER means it is stuck, whatever the watchdog's period.
            if age < STUCK_AFTER {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    age_ms = age.as_millis(),
                    "the scheduler loop is stuck; not feeding the watchdog"
                );
            }
        }
    });
}

/// Events purged per transaction: small, so ingest and attempt commits interleave.
const PURGE_BATCH: usize = 500;

/// Retention: every `retention / 10` (1 s to 60 s), deletes events older than `retention`
/// whose deliveries are all final, [`PURGE_BATCH`] per transaction, until none is left.
/// A failed pass (disk full, I/O error) is logged and tried again at the next tick.
pub(super) async fn purge_loop(
    store: Arc<crate::store::Store>,
    scheduler: Scheduler,
    retention: std::time::Duration,
    cancel: CancellationToken,
) {
    let period = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let cutoff = crate::clock::now_ms().saturating_sub(retention.as_millis() as u64);
        let mut after = None;
        let mut total = crate::store::PurgeReport::default();
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let claims = scheduler.clone();
            let report = match crate::store::blocking(&store, move |s| {
                s.purge_expired(cutoff, after, PURGE_BATCH, move |id| claims.is_claimed(id))
            })
            .await
            {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: purge failed; retrying at the next pass");
                    break;
                }
            };
            total.events += report.events;
            total.deliveries += report.deliveries;
            total.attempts += report.attempts;
            total.kept += report.kept;
            metrics::counter!(crate::metrics::PURGED, "kind" => "events").increment(report.events);
            metrics::counter!(crate::metrics::PURGED, "kind" => "deliveries")
                .increment(report.deliveries);
            metrics::counter!(crate::metrics::PURGED, "kind" => "attempts")
                .increment(report.attempts);
            match report.resume_after {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        if total.events > 0 {
            tracing::info!(
                events = total.events,
                deliveries = total.deliveries,
                attempts = total.attempts,
                kept_unfinished = total.kept,
                "retention: purged final records older than the retention"
            );
        }
    }
}

/// Payload retention (issue 15, item 7): every `payload_retention / 10` (1 s to 60 s),
/// replaces by the tombstone the bodies of events older than `payload_retention` whose
/// deliveries are all final, [`PURGE_BATCH`] per transaction. Each pass starts after the
/// last event the previous ones left done (every event before it is a tombstone or gone),
/// so old tombstones are not read again; the first pass after a start reads from the oldest.
pub(super) async fn blank_payloads_loop(
    store: Arc<crate::store::Store>,
    payload_retention: std::time::Duration,
    cancel: CancellationToken,
) {
    let period = (payload_retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every event up to this key is done: a tombstone, or purged.
    let mut done_through: Option<crate::ids::EventKey> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let now = crate::clock::now_ms();
        let cutoff = now.saturating_sub(payload_retention.as_millis() as u64);
        let mut after = done_through;
        let (mut blanked, mut kept, mut first_kept) = (0u64, 0u64, None);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let report = match crate::store::blocking(&store, move |s| {
                s.blank_expired_payloads(cutoff, after, PURGE_BATCH, now)
            })
            .await
            {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(error = %e, "payload retention: pass failed; retrying at the next one");
                    break;
                }
            };
            blanked += report.blanked;
            kept += report.kept;
            first_kept = first_kept.or(report.first_kept);
            metrics::counter!(crate::metrics::PURGED, "kind" => "payloads")
                .increment(report.blanked);
            if first_kept.is_none() {
                done_through = report.last_seen.or(done_through);
            }
            match report.resume_after {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        if let Some(kept) = first_kept {
            // Done up to just before the oldest event kept: it is looked at again next time.
            let before = crate::ids::EventKey(kept.0.saturating_sub(1));
            done_through = done_through.max(Some(before)).filter(|d| *d < kept);
        }
        if blanked > 0 {
            tracing::info!(
                events = blanked,
                kept_unfinished = kept,
                "payload retention: replaced old payloads by tombstones"
            );
        }
    }
}

pub(super) fn log_allowed_networks(policy: &crate::address::AddressPolicy) {
    if !policy.allowed().is_empty() {
        let networks: Vec<String> = policy.allowed().iter().map(ToString::to_string).collect();
        tracing::info!(networks = %networks.join(","), "deliveries may reach these otherwise forbidden networks");
    }
}

/// Applies the settings SIGHUP re-read (`main::reload_on_sighup` sends them): the allowed
/// networks (`allow_network`, checked at every new connection and URL check) and the per-key
/// rate limit (`rate_limit`). Every other setting needs a restart.
pub(super) async fn apply_reloads(
    mut reloads: tokio::sync::watch::Receiver<Option<Arc<Config>>>,
    policy: Arc<crate::address::PolicyCell>,
    rate_limit: Arc<api::guard::RateLimit>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = reloads.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
        let Some(config) = reloads.borrow_and_update().clone() else {
            continue;
        };
        if policy.replace(config.address_policy.clone()) {
            tracing::info!("SIGHUP: allowed networks reloaded");
            log_allowed_networks(&config.address_policy);
        }
        if rate_limit.set(config.rate_limit) {
            tracing::info!(
                rate_limit = config.rate_limit,
                "SIGHUP: rate limit reloaded"
            );
        }
    }
}

/// Removes `<db>.backup-*.tmp` files beside the db: copies of an online backup that a crash
/// (kill -9, power loss) interrupted before they were streamed and unlinked. Only this
/// process writes them, and it has just started, so none is in use.
pub(super) fn remove_stale_backup_copies(db: &Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.backup-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file, "removed the copy of an interrupted backup"),
                Err(e) => {
                    tracing::warn!(file, error = %e, "cannot remove the copy of an interrupted backup")
                }
            }
        }
    }
}

/// Every minute, drops the rate limiters' entries whose budget is full again, so their memory
/// follows the clients of the last minute.
pub(super) async fn forget_idle_clients(
    rate_limit: Arc<api::guard::RateLimit>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        if let Some(limiter) = rate_limit.limiter() {
            api::guard::forget_idle(&limiter);
        }
        api::guard::forget_idle(&rate_limit.failed_tokens());
    }
}

/// Every 5 s, folds the histograms' samples in (without the exporter's own listener nothing
/// else runs its upkeep).
pub(super) async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        handle.run_upkeep();
    }
}
