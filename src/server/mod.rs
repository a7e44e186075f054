//! Wiring of the daemon: open the store, start the scheduler, serve the API, shut down.
//! [`run`] is three steps: `open` (store and admin token), `start` (scheduler, background
//! loops in `background`, the API's state) and `serve_and_drain` (`http::serve_api`, then the
//! bounded drain).
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

mod background;
mod http;
mod parse_errors;

pub use http::{serve_api, ConnectionLimits};

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
    /// `operator_webhook_url` is not a usable webhook URL, or its webhook could not be stored.
    #[error("operator_webhook_url: {0}")]
    OperatorEndpoint(String),
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

/// What [`open`] made ready: the store, the admin token and the settings. Nothing runs yet.
struct Opened {
    config: Config,
    store: Arc<Store>,
    admin_token: String,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// What [`start`] set running: the scheduler, the background loops and the API's state, all
/// watching `cancel`; attempt tasks are on `tracker`.
struct Started {
    config: Config,
    store: Arc<Store>,
    scheduler: Scheduler,
    scheduler_task: tokio::task::JoinHandle<()>,
    app: axum::Router,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// This daemon's id in the cluster, on PostgreSQL.
    node: Option<String>,
    /// The lock on the node id's file, held while the daemon runs.
    _node_lock: Option<std::fs::File>,
}

/// Runs the daemon on `listener` until `shutdown` completes: [`open`] (store, admin token;
/// a refused start changes nothing on disk), [`start`] (scheduler and background loops),
/// then [`serve_and_drain`]. `admin_token`: the token to accept, or `None` to take it from
/// [`admin_token`] once the store is open.
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
    let opened = open(config, admin_token).await?;
    let started = start(opened, reloads)?;
    serve_and_drain(started, listener, shutdown).await
}

/// Opens the store (sealing secrets with the configured key) and reads or creates the admin
/// token, in that order: a start refused because another daemon holds the file writes
/// nothing. Then removes an interrupted backup's copy and checks the tables' lengths.
async fn open(config: Config, admin_token: Option<String>) -> Result<Opened, RunError> {
    // Installed before the store opens, so start-up commits are counted too.
    let metrics = crate::metrics::install();
    let key = read_secrets_key(config.secrets_key_file.as_deref())?;
    if let (Some(_), Some(file)) = (&key, &config.secrets_key_file) {
        tracing::info!("webhook secrets are sealed at rest with the secrets key file");
        warn_if_key_file_is_open(file);
    }
    let previous = read_secrets_key(config.previous_secrets_key_file.as_deref())?;
    let path = config.db_path.clone();
    let location = match &config.postgres {
        Some(options) => options.describe(),
        None => config.db_path.display().to_string(),
    };
    let store_error = |source| RunError::Store {
        path: location.clone(),
        source,
    };
    let postgres = config.postgres.clone();
    let store = tokio::task::spawn_blocking(move || match postgres {
        Some(options) => Store::open_postgres(&options, key, previous),
        None => Store::open_with_secrets_key(&path, key, previous),
    })
    .await
    .map_err(|_| store_error(StoreError::Interrupted))?
    .map_err(store_error)?;
    let store = Arc::new(store);
    sync_operator_endpoint(&store, &config).await?;
    let admin_token = match admin_token {
        Some(token) => token,
        None => self::admin_token(&config.db_path)?,
    };
    let pending = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.pending_count().unwrap_or(0))
            .await
            .unwrap_or(0)
    };
    tracing::info!(store = %location, backend = store.backend_name(), pending, "store open");
    if config.postgres.is_none() {
        background::remove_stale_backup_copies(&config.db_path);
    }
    // The start-up form of `palo-webhooks check`: table lengths only, so it costs no scan.
    let quick = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.quick_check())
            .await
            .unwrap_or(Err(StoreError::Interrupted))
    };
    match quick {
        Ok(problems) if problems.is_empty() => {}
        Ok(problems) => tracing::warn!(
            problems = %problems.join("; "),
            "the store's tables disagree; stop the daemon and run `palo-webhooks check --db`"
        ),
        Err(e) => tracing::warn!(error = %e, "start-up consistency check failed to read"),
    }
    Ok(Opened {
        config,
        store,
        admin_token,
        metrics,
    })
}

/// Makes the operator endpoint's webhook ([`crate::lifecycle::OPERATOR_WEBHOOK`], organization
/// [`crate::lifecycle::OPERATOR_ORGANIZATION`]) match the config: created or updated when
/// `operator_webhook_url` is set, deleted (its unfinished deliveries cancelled) when not.
async fn sync_operator_endpoint(store: &Arc<Store>, config: &Config) -> Result<(), RunError> {
    use crate::lifecycle::{OPERATOR_ORGANIZATION, OPERATOR_WEBHOOK};
    use crate::model::{EventFilter, Webhook, WebhookChanges};
    let wanted = match &config.operator_endpoint {
        Some(endpoint) => Some((
            crate::api::webhooks::validate_url(&endpoint.url, config.allow_http)
                .map_err(|e| RunError::OperatorEndpoint(e.message.clone()))?,
            endpoint.secret.clone(),
        )),
        None => None,
    };
    let store = Arc::clone(store);
    let done = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        let existing = store.get_webhook(OPERATOR_WEBHOOK)?;
        match (wanted, existing) {
            (None, None) => {}
            (None, Some(_)) => {
                store.delete_webhook(OPERATOR_WEBHOOK, now)?;
                tracing::info!("operator endpoint removed");
            }
            (Some((url, secret)), Some(current)) => {
                if current.url != url || current.secret != secret || !current.active {
                    let changes = WebhookChanges {
                        url: Some(url),
                        secret: Some(secret),
                        active: Some(true),
                        ..WebhookChanges::default()
                    };
                    store.update_webhook(OPERATOR_WEBHOOK, changes, now)?;
                }
                tracing::info!("operator endpoint receives operational events");
            }
            (Some((url, secret)), None) => {
                store.create_webhook(&Webhook {
                    id: OPERATOR_WEBHOOK,
                    organization_id: OPERATOR_ORGANIZATION.to_owned(),
                    url,
                    events: EventFilter::Only(crate::event::EventType::OPERATIONAL.to_vec()),
                    secret,
                    previous_secret: None,
                    active: true,
                    disabled: None,
                    failing_since_ms: None,
                    description: "operator endpoint (operator_webhook_url)".to_owned(),
                    options: Default::default(),
                    created_at_ms: now,
                    updated_at_ms: now,
                })?;
                tracing::info!("operator endpoint receives operational events");
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| RunError::OperatorEndpoint("interrupted".into()))?;
    done.map_err(|e| RunError::OperatorEndpoint(e.to_string()))
}

fn read_secrets_key(
    file: Option<&Path>,
) -> Result<Option<crate::store::sealed::SecretsKey>, RunError> {
    file.map(crate::store::sealed::SecretsKey::from_file)
        .transpose()
        .map_err(RunError::SecretsKey)
}

/// Group read is how a root-owned key reaches the service user (0640, group palo-webhooks,
/// as the package lays it out); anything for others, or group write, is too much.
fn warn_if_key_file_is_open(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).map_or(0, |m| m.permissions().mode());
        if mode & 0o027 != 0 {
            tracing::warn!(file = %file.display(), mode = format!("{:o}", mode & 0o777), "the secrets key file is writable by its group or readable by other users; chmod 640 (root-owned, the service's group) or 600 it");
        }
    }
}

/// Starts the scheduler (which reads the webhooks and the head of every webhook's due index,
/// and brings back due times a corrected clock left far ahead) and the background loops, and
/// builds the API.
fn start(
    opened: Opened,
    reloads: tokio::sync::watch::Receiver<Option<Arc<Config>>>,
) -> Result<Started, RunError> {
    let Opened {
        config,
        store,
        admin_token,
        metrics,
    } = opened;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(background::metrics_upkeep(metrics.clone(), cancel.clone()));
    let address_policy = Arc::new(crate::address::PolicyCell::new(
        config.address_policy.clone(),
    ));
    background::log_allowed_networks(&config.address_policy);
    let sender = Sender::new(
        config.attempt_timeout,
        Arc::clone(&address_policy),
        &crate::delivery::TlsSettings {
            extra_ca_file: config.extra_ca_file.clone(),
            system_roots: config.tls_system_roots,
        },
        config.pool_idle_timeout,
        config.proxy.clone(),
    )?;
    if let Some(route) = &config.proxy {
        tracing::info!(proxy = %route.proxy.origin(), no_proxy = ?route.no_proxy, "deliveries go through a CONNECT proxy");
    }
    let scheduler = Scheduler::new(
        Arc::clone(&store),
        sender,
        SchedulerSettings {
            schedule: config.retry_schedule.clone(),
            max_in_flight: config.max_in_flight,
            max_in_flight_per_webhook: config.max_in_flight_per_webhook,
            max_body_bytes: config.max_body_bytes,
            disable: config.disable.clone(),
            operator_endpoint: config.operator_endpoint.is_some(),
        },
        tracker.clone(),
        cancel.clone(),
    )
    .map_err(|source| RunError::Store {
        path: config.db_path.display().to_string(),
        source,
    })?;
    let (node, node_lock) = match store.as_postgres() {
        Some(_) => {
            let (id, lock) = node_id(&config.db_path);
            (Some(id), lock)
        }
        None => (None, None),
    };
    if let Some(node) = &node {
        scheduler.join_cluster(
            Arc::clone(&store),
            crate::scheduler::ownership::Cluster {
                node: node.clone(),
                address: config.listen.to_string(),
                attempt_timeout: config.attempt_timeout,
            },
        );
    }
    let scheduler_task = tokio::spawn(scheduler.clone().run());
    tokio::spawn(scheduler.clone().run_jobs());
    if let Some(retention) = config.retention {
        tokio::spawn(background::purge_loop(
            Arc::clone(&store),
            scheduler.clone(),
            retention,
            cancel.clone(),
        ));
    }
    if let Some(payload_retention) = config.payload_retention {
        tokio::spawn(background::blank_payloads_loop(
            Arc::clone(&store),
            payload_retention,
            cancel.clone(),
        ));
    }
    let state = AppState {
        store: Arc::clone(&store),
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
            handle: metrics,
            db_path: config.db_path.clone(),
            token_hash: config
                .metrics_token
                .as_ref()
                .map(|t| api::token_hash(t.0.trim())),
        }),
    };
    tokio::spawn(background::forget_idle_clients(
        Arc::clone(&state.rate_limit),
        cancel.clone(),
    ));
    tokio::spawn(background::apply_reloads(
        reloads,
        Arc::clone(&state.address_policy),
        Arc::clone(&state.rate_limit),
        cancel.clone(),
    ));
    Ok(Started {
        config,
        store,
        scheduler,
        scheduler_task,
        app: api::router(state),
        cancel,
        tracker,
        node,
        _node_lock: node_lock,
    })
}

/// This daemon's id in a cluster, kept in `<db>.node-id` (beside the admin token) and locked
/// while it runs: a daemon restarted after a crash takes back its own leases at once instead
/// of waiting for them to expire. When the file is locked by another process (two daemons
/// sharing a directory) or cannot be written, a new id is used for this run only.
fn node_id(db_path: &Path) -> (String, Option<std::fs::File>) {
    use std::io::{Read, Seek, Write};
    let fresh = || format!("dmn_{}", ulid::Ulid::generate());
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "palo-webhooks.redb".into());
    name.push(".node-id");
    let path = db_path.with_file_name(name);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the cluster node id; using a new one for this run");
            return (fresh(), None);
        }
    };
    if file.try_lock().is_err() {
        tracing::warn!(file = %path.display(), "another daemon holds this node id; using a new one for this run");
        return (fresh(), None);
    }
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let kept = text.trim();
    if kept.starts_with("dmn_") && kept.len() == 30 {
        return (kept.to_owned(), Some(file));
    }
    let id = fresh();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(format!("{id}\n").as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep the cluster node id; using it for this run only");
    }
    (id, Some(file))
}

/// Serves the API until `shutdown` (or a fatal error), then drains within one deadline
/// (`shutdown_timeout`): open HTTP requests first, then attempts in flight, whose results
/// are committed; unfinished ones stay scheduled and resume after restart.
async fn serve_and_drain(
    started: Started,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Started {
        config,
        store,
        scheduler,
        scheduler_task,
        app,
        cancel,
        tracker,
        node,
        _node_lock,
    } = started;
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!("listening on http://{addr}");
    tracing::info!(
        "web UI at http://{addr}{} (sign in with an organization API key or the admin token)",
        api::ui::UI_PATH
    );
    background::notify_systemd(&scheduler, &cancel);
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
    if let Some(node) = &node {
        scheduler.leave_cluster(&store, node).await;
    }
    let stats = store.commit_stats();
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
