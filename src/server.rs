//! Wiring of the daemon: open the store, start the scheduler, serve the API, shut down.
//!
//! Owner's rule: [`run`] takes a bound listener and any future as its shutdown trigger, so
//! `main` passes SIGTERM/SIGINT and tests pass their own. Shutdown is bounded: stop
//! accepting, stop dispatching, wait up to `shutdown_timeout` for attempts in flight (their
//! results are committed), then return; an unfinished attempt stays in the retry index and
//! is made again after restart.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::{admin_token_path, Config};
use crate::delivery::Sender;
use crate::ids::random_hex;
use crate::scheduler::{Scheduler, SchedulerSettings};
use crate::store::{Store, StoreError};

/// Environment variable that sets the admin token instead of the generated file.
pub const ADMIN_TOKEN_ENV: &str = "PALO_WEBHOOKS_ADMIN_TOKEN";

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("cannot open the store {path}")]
    Store {
        /// The db file.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The admin token file could not be read or written.
    #[error("admin token file {path}")]
    AdminToken {
        /// The token file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The secrets key file could not be used.
    #[error(transparent)]
    SecretsKey(crate::store::sealed::SealError),
    /// The delivery client's TLS roots could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::delivery::TlsSetupError),
}

/// Returns the admin token: `PALO_WEBHOOKS_ADMIN_TOKEN` if set, else the one in
/// `<db>.admin-token`, created on first start (32 random bytes, hex, mode 0600).
/// Logs where the file is, never the token.
///
/// # Errors
/// [`RunError::AdminToken`] when the file cannot be read or created.
pub fn admin_token(db_path: &Path) -> Result<String, RunError> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        if !token.trim().is_empty() {
            tracing::info!("admin token taken from {ADMIN_TOKEN_ENV}");
            return Ok(token.trim().to_owned());
        }
    }
    let path = admin_token_path(db_path);
    let err = |source| RunError::AdminToken {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(token.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = format!("pwa_{}", random_hex(32));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(err)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    tracing::info!(path = %path.display(), "admin token created (mode 0600); read it from this file");
    Ok(token)
}

/// Runs the daemon on `listener` until `shutdown` completes. `admin_token`: the token to
/// accept, or `None` to take it from [`admin_token`] once the store is open (so a start
/// refused because the file is locked writes nothing).
///
/// # Errors
/// [`RunError`] when the store cannot be opened or serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: tokio::sync::watch::Receiver<Option<Arc<Config>>>,
) -> Result<(), RunError> {
    // Installed before the store opens, so start-up commits are counted too.
    let metrics_handle = crate::metrics::install();
    {
        // Histograms keep their samples until upkeep folds them in; without the exporter's
        // own listener nothing else runs it.
        let handle = metrics_handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let path = config.db_path.clone();
    let key = match &config.secrets_key_file {
        Some(file) => {
            Some(crate::store::sealed::SecretsKey::from_file(file).map_err(RunError::SecretsKey)?)
        }
        None => None,
    };
    if let (Some(_), Some(file)) = (&key, &config.secrets_key_file) {
        tracing::info!("webhook secrets are sealed at rest with the secrets key file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).map_or(0, |m| m.permissions().mode());
            // Group read is how a root-owned key reaches the service user (0640, group
            // palo-webhooks, as the package lays it out); anything for others, or group
            // write, is too much.
            if mode & 0o027 != 0 {
                tracing::warn!(file = %file.display(), mode = format!("{:o}", mode & 0o777), "the secrets key file is writable by its group or readable by other users; chmod 640 (root-owned, the service's group) or 600 it");
            }
        }
    }
    let previous = match &config.previous_secrets_key_file {
        Some(file) => {
            Some(crate::store::sealed::SecretsKey::from_file(file).map_err(RunError::SecretsKey)?)
        }
        None => None,
    };
    let store =
        tokio::task::spawn_blocking(move || Store::open_with_secrets_key(&path, key, previous))
            .await
            .map_err(|_| RunError::Store {
                path: config.db_path.display().to_string(),
                source: StoreError::Interrupted,
            })?
            .map_err(|source| RunError::Store {
                path: config.db_path.display().to_string(),
                source,
            })?;
    let store = Arc::new(store);
    let admin_token = match admin_token {
        Some(token) => token,
        None => self::admin_token(&config.db_path)?,
    };
    let stats_store = Arc::clone(&store);
    let pending = store.pending_count().unwrap_or(0);
    tracing::info!(db = %config.db_path.display(), pending, "store open");
    remove_stale_backup_copies(&config.db_path);
    // The start-up form of `palo-webhooks check`: table lengths only, so it costs no scan.
    match store.quick_check() {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => tracing::warn!(
            problems = %problems.join("; "),
            "the store's tables disagree; stop the daemon and run `palo-webhooks check --db`"
        ),
        Err(e) => tracing::warn!(error = %e, "start-up consistency check failed to read"),
    }

    let address_policy = Arc::new(crate::address::PolicyCell::new(
        config.address_policy.clone(),
    ));
    log_allowed_networks(&config.address_policy);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let scheduler = Scheduler::new(
        Arc::clone(&store),
        Sender::new(
            config.attempt_timeout,
            Arc::clone(&address_policy),
            &crate::delivery::TlsSettings {
                extra_ca_file: config.extra_ca_file.clone(),
                system_roots: config.tls_system_roots,
            },
        )?,
        SchedulerSettings {
            schedule: config.retry_schedule.clone(),
            max_in_flight: config.max_in_flight,
            max_in_flight_per_webhook: config.max_in_flight_per_webhook,
            max_body_bytes: config.max_body_bytes,
        },
        tracker.clone(),
        cancel.clone(),
    )
    .map_err(|source| RunError::Store {
        path: config.db_path.display().to_string(),
        source,
    })?;
    let scheduler_task = tokio::spawn(scheduler.clone().run());
    if let Some(retention) = config.retention {
        tokio::spawn(purge_loop(
            Arc::clone(&store),
            scheduler.clone(),
            retention,
            cancel.clone(),
        ));
    }

    let state = AppState {
        store,
        scheduler: scheduler.clone(),
        admin_token_hash: api::token_hash(&admin_token),
        allow_http: config.allow_http,
        address_policy,
        attempt_timeout: config.attempt_timeout,
        read_timeout: config.api_read_timeout,
        max_body_bytes: config.max_body_bytes,
        rate_limit: Arc::new(api::guard::RateLimit::new(config.rate_limit)),
        started: std::time::Instant::now(),
        metrics: Arc::new(api::MetricsState {
            handle: metrics_handle,
            db_path: config.db_path.clone(),
            token_hash: config
                .metrics_token
                .as_ref()
                .map(|t| api::token_hash(t.0.trim())),
        }),
    };
    {
        let (rate_limit, stop) = (Arc::clone(&state.rate_limit), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(limiter) = rate_limit.limiter() {
                            api::guard::forget_idle(&limiter);
                        }
                        api::guard::forget_idle(&rate_limit.failed_tokens());
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    tokio::spawn(apply_reloads(
        reloads,
        Arc::clone(&state.address_policy),
        Arc::clone(&state.rate_limit),
        cancel.clone(),
    ));
    let app = api::router(state);
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!("listening on http://{addr}");
    tracing::info!(
        "web UI at http://{addr}{} (sign in with an organization API key or the admin token)",
        api::ui::UI_PATH
    );
    notify_systemd(&scheduler, &cancel);
    // One deadline bounds the whole drain: open HTTP requests first, then attempts in flight.
    let stopping_since = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let (stop, since) = (cancel.clone(), Arc::clone(&stopping_since));
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
        since.get_or_init(tokio::time::Instant::now);
        // Said before anything stops, so systemd hears it even if the process exits at once.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        stop.cancel();
        tracing::info!("shutting down: no new requests, finishing attempts in flight");
    });
    let deadline = || {
        let started = *stopping_since.get_or_init(tokio::time::Instant::now);
        started + config.shutdown_timeout
    };
    let limits = ConnectionLimits {
        read_timeout: config.api_read_timeout,
        max_connections: config.max_connections,
    };
    let served = tokio::select! {
        result = serve_api(listener, app, limits, cancel.clone()) => result,
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep_until(deadline()).await;
        } => {
            tracing::warn!("HTTP requests still open at the shutdown timeout were dropped");
            Ok(())
        }
    };
    cancel.cancel();
    let _ = scheduler_task.await;
    tracker.close();
    if tokio::time::timeout_at(deadline(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = scheduler.in_flight(),
            "shutdown timeout reached; unfinished attempts stay scheduled and resume after restart"
        );
    }
    let stats = stats_store.commit_stats();
    let (batches, writes) = (
        stats.batches.load(Ordering::Relaxed),
        stats.jobs.load(Ordering::Relaxed),
    );
    tracing::info!(
        transactions = batches,
        writes,
        mean_batch = format!("{:.1}", writes as f64 / batches.max(1) as f64),
        max_batch = stats.max_batch.load(Ordering::Relaxed),
        "stopped; group commit totals"
    );
    served.map_err(RunError::Serve)
}

/// Tells systemd (`Type=notify`) that the daemon is ready: the store is open, the scheduler
/// runs and the listener is bound. With `WatchdogSec=`, feeds the watchdog at half its
/// period, but only while the scheduler loop keeps turning, so a stuck scheduler gets the
/// service restarted. Without `NOTIFY_SOCKET` (not under systemd) this does nothing.
/// How long without a scheduler turn counts as stuck for the watchdog (5 s; the loop turns at
/// least every second).
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

fn notify_systemd(scheduler: &Scheduler, cancel: &CancellationToken) {
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

/// Limits of the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's head (hyper's header read timeout, which also closes an idle
    /// keep-alive connection); the body then has as long again (`api::guard`).
    pub read_timeout: std::time::Duration,
    /// Most connections served at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
}

/// Largest request head hyper buffers (256 KiB); beyond, it answers a bare 431 and closes.
/// Smaller limits with JSON answers are checked in `api::guard`.
const MAX_HEAD_BUFFER: usize = 256 * 1024;

/// Most header fields hyper parses in one request (256); beyond, it answers a bare 431.
const MAX_HEADER_FIELDS: usize = 256;

/// Serves `app` over HTTP/1.1 on `listener` until `stop` is cancelled, then waits for the
/// open connections to finish their requests (the caller bounds that wait). Each connection
/// holds one of `limits.max_connections` slots; a client that sends its head slower than
/// `limits.read_timeout` (slowloris) is disconnected, so it cannot hold the API.
///
/// # Errors
/// None today: accept errors (EMFILE, a reset before accept) are logged and the loop goes on.
pub async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .max_headers(MAX_HEADER_FIELDS)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE/ENFILE and aborted handshakes: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address goes in each request's extensions (for the failed-token budget);
        // the router itself is shared, not rebuilt per connection.
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(crate::api::guard::PeerAddr(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Events purged per transaction: small, so ingest and attempt commits interleave.
const PURGE_BATCH: usize = 500;

/// Retention: every `retention / 10` (1 s to 60 s), deletes events older than `retention`
/// whose deliveries are all final, [`PURGE_BATCH`] per transaction, until none is left.
/// A failed pass (disk full, I/O error) is logged and tried again at the next tick.
async fn purge_loop(
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

fn log_allowed_networks(policy: &crate::address::AddressPolicy) {
    if !policy.allowed().is_empty() {
        let networks: Vec<String> = policy.allowed().iter().map(ToString::to_string).collect();
        tracing::info!(networks = %networks.join(","), "deliveries may reach these otherwise forbidden networks");
    }
}

/// Applies the settings SIGHUP re-read (`main::reload_on_sighup` sends them): the allowed
/// networks (`allow_network`, checked at every new connection and URL check) and the per-key
/// rate limit (`rate_limit`). Every other setting needs a restart.
async fn apply_reloads(
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
fn remove_stale_backup_copies(db: &Path) {
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
