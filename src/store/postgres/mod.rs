//! The PostgreSQL backend (issue 14): the operations of [`crate::store::Store`] on a
//! database that several daemons may share.
//!
//! Owner's rule: the only module that imports the PostgreSQL client. Its operations mean
//! exactly what the file backend's mean (one conformance suite, `tests/postgres.rs`, runs the
//! integration tests against both), and its schema (`migrations/`, embedded and run at
//! open under an advisory lock) keeps the same invariants: a delivery that is not final has
//! `next_attempt_at_ms` set (the retry index is a partial index over it), a final one has
//! it `NULL`.
//!
//! Execution: the backend owns a small tokio runtime (`pg-store` threads) that runs the
//! connection pool (deadpool-postgres) and the group-commit writer ([`writer`]). Synchronous
//! operations hand a future to that runtime and wait for its answer, so they may be called
//! from any thread, as the file backend's are; `accept_event` and `record_attempt` are
//! async and group-committed: concurrent calls share one transaction and one commit
//! (`synchronous_commit` is forced on for every connection), and each returns after it.
//!
//! Changes: after each commit the backend hands the [`Change`]s to its subscriber, as the
//! file backend does; in a cluster ([`cluster`]) it also sends them to the other daemons
//! with `NOTIFY` in the same transaction, so they reach them only if it commits.

mod admin;
pub mod cluster;
pub use deliveries::ImportBatch;
mod deliveries;
mod due;
mod jobs;
mod lifecycle;
mod ordering;
mod payload;
mod rows;
mod search;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::ids::{KeyId, WebhookId};
use crate::model::{ApiKey, Webhook, WebhookChanges};
use crate::store::sealed::{self, SecretsKey};
use crate::store::{
    BackupReport, Change, CheckReport, CommitStats, StoreError, Subscriber, TableSpace,
};

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// The advisory lock key held while migrations run, so daemons starting together migrate
/// one at a time ("palo" in ASCII).
const MIGRATION_LOCK: i64 = 0x7061_6c6f;

/// How long one store operation may wait for the server (30 s): `check`, status and
/// retention scans included. Lease operations use shorter limits ([`cluster`]).
const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a group commit may wait for the server (10 s) before its callers get an error
/// (an ingest answers 503; whether the commit happened is then unknown: a replay tells).
pub(super) const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections in the pool by default (the writer holds one of them).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How to reach the database: `--store postgres://user@host:port/database` and an optional
/// password from `--store-password-file` or `PALO_STORE_PASSWORD` (never logged).
#[derive(Clone)]
pub struct PgOptions {
    /// The connection URL (`postgres://…` or `postgresql://…`). May hold a password:
    /// never logged nor shown; [`PgOptions::describe`] is the safe form.
    pub url: String,
    /// A password that overrides any in `url`.
    pub password: Option<String>,
    /// Connections in the pool (at least 2).
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.describe())
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Options for `url` with the default pool size and no separate password.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }

    /// Options for `url` with the password from `password_file` (its first line) or, without
    /// one, from the environment variable `PALO_WEBHOOKS_STORE_PASSWORD`.
    ///
    /// # Errors
    /// A message when `url` is not a `postgres://` URL or the file cannot be read.
    pub fn from_url(
        url: &str,
        password_file: Option<&std::path::Path>,
    ) -> Result<PgOptions, String> {
        if !PgOptions::is_postgres_url(url) {
            return Err("expected a postgres:// URL".into());
        }
        let mut options = PgOptions::new(url);
        options.password = match password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            ),
            None => std::env::var("PALO_WEBHOOKS_STORE_PASSWORD").ok(),
        };
        Ok(options)
    }

    /// Whether `text` names a PostgreSQL store (`postgres://` or `postgresql://`).
    pub fn is_postgres_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// The client configuration: the URL, the password if given, and
    /// `synchronous_commit=on` for every session (a commit is durable before any answer).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL does not parse (the message never repeats it).
    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|_| {
            StoreError::Backend(
                "invalid PostgreSQL URL (expected postgres://user@host:port/database)".into(),
            )
        })?;
        if let Some(password) = &self.password {
            config.password(password);
        }
        // synchronous_commit: a commit is durable before any answer. The timeouts keep one
        // daemon cut off from the server (a partition, a frozen process) from holding rows
        // the others need: the server ends its session when it sits in a transaction for
        // 10 s, and a lock wait gives up after 5 s.
        config.options(
            "-c synchronous_commit=on -c idle_in_transaction_session_timeout=10s \
             -c lock_timeout=5s",
        );
        config.application_name("palo-webhooks");
        config.connect_timeout(std::time::Duration::from_secs(5));
        // A server gone silent (no reset) is noticed within about 20 s, not TCP's 2 hours.
        config.keepalives(true);
        config.keepalives_idle(std::time::Duration::from_secs(5));
        config.keepalives_interval(std::time::Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(std::time::Duration::from_secs(20));
        Ok(config)
    }

    /// `postgres://user@host:port/database` without any password: what logs and errors say.
    pub fn describe(&self) -> String {
        let Ok(config) = self.url.parse::<tokio_postgres::Config>() else {
            return "postgres://(invalid URL)".into();
        };
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        )
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Backend(format!(
                "postgres: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            )),
            None => {
                // The client's own errors say what failed in their source ("password
                // missing", "connection refused"): none of them holds the password.
                let mut text = format!("postgres: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                StoreError::Backend(text)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            other => StoreError::Backend(format!("postgres connection pool: {other}")),
        }
    }
}

/// The PostgreSQL store. Cheap to clone (an `Arc`); all methods take `&self`.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    writer: writer::Writer,
    shared: Arc<Shared>,
    describe: String,
    /// The client configuration (for the change listener's own connection).
    config: tokio_postgres::Config,
}

/// What the writer task and the store both use.
pub(super) struct Shared {
    subscriber: OnceLock<Subscriber>,
    stats: CommitStats,
    /// Every API key by its hash, as on the file backend: authentication answers from
    /// memory. Other daemons' changes arrive through [`cluster`].
    keys: RwLock<HashMap<[u8; 32], ApiKey>>,
    secrets_key: Option<Arc<SecretsKey>>,
    /// False after a commit failed for a lost connection, until [`PgStore::recover`].
    writable: AtomicBool,
    /// This daemon's id in the cluster (empty until it joins).
    node: RwLock<String>,
    /// The webhooks this daemon serves ([`PgStore::set_serving`]): their retry-index
    /// changes concern no other daemon and are not sent.
    serving: RwLock<std::collections::HashSet<crate::ids::WebhookId>>,
    /// Whether the change listener runs (it is started once, at the first join).
    listening: AtomicBool,
}

/// This daemon's id in the cluster.
pub(super) fn shared_node(shared: &Shared) -> String {
    shared
        .node
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl Shared {
    /// Hands committed changes to the subscriber.
    pub(super) fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        if let Some(subscriber) = self.subscriber.get() {
            subscriber(changes);
        }
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], ApiKey>> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection of the pool.
type Conn = deadpool_postgres::Object;

impl PgStore {
    /// Connects, migrates and loads the API keys. See [`crate::store::Store::open_postgres`].
    ///
    /// # Errors
    /// As [`crate::store::Store::open_postgres`].
    pub fn open(
        options: &PgOptions,
        key: Option<SecretsKey>,
        previous: Option<SecretsKey>,
    ) -> Result<PgStore, StoreError> {
        PgStore::open_with(options, key, previous, Open::Daemon)
    }

    /// [`PgStore::open`] as `how` says.
    pub(crate) fn open_with(
        options: &PgOptions,
        key: Option<SecretsKey>,
        previous: Option<SecretsKey>,
        how: Open,
    ) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the store runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let config = options.config()?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres connection pool: {e}")))?;
        let describe = options.describe();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let done = match how {
                Open::Check => schema_present(config).await,
                Open::Daemon | Open::Import => migrate(config).await,
            };
            let _ = tx.send(done);
        });
        rx.recv().map_err(|_| StoreError::Interrupted)??;
        let shared = Arc::new(Shared {
            subscriber: OnceLock::new(),
            stats: CommitStats::default(),
            keys: RwLock::default(),
            secrets_key: key.map(Arc::new),
            writable: AtomicBool::new(true),
            node: RwLock::default(),
            serving: RwLock::default(),
            listening: AtomicBool::new(false),
        });
        let writer = writer::Writer::start(&handle, pool.clone(), Arc::clone(&shared));
        let store = PgStore {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                handle,
                pool,
                writer,
                shared,
                describe,
                config: options.config()?,
            }),
        };
        if how == Open::Daemon {
            store.reconcile_sealing(previous)?;
        }
        store.reload_keys()?;
        tracing::info!(store = %store.inner.describe, "opened the PostgreSQL store");
        Ok(store)
    }

    /// `postgres://user@host:port/database`, without the password.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// Runs `fut` on the store's runtime and waits for it: the synchronous face of every
    /// read and of the writes that are not group-committed. Callable from any thread.
    fn block<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.block_within(OPERATION_TIMEOUT, fut)
    }

    /// [`PgStore::block`] with its own time limit: a server that does not answer (a
    /// partition: no reset) fails the operation with [`StoreError::Backend`] after `limit`
    /// instead of holding the caller (an API request answers 503).
    fn block_within<T, F>(&self, limit: std::time::Duration, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let answer = match tokio::time::timeout(limit, fut).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Backend(format!(
                    "postgres did not answer within {} s",
                    limit.as_secs()
                ))),
            };
            let _ = tx.send(answer);
        });
        rx.recv().map_err(|_| StoreError::Interrupted)?
    }

    /// A connection of the pool.
    async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.inner.pool.get().await?)
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn secrets_key(&self) -> Option<Arc<SecretsKey>> {
        self.inner.shared.secrets_key.clone()
    }

    /// Reloads every API key into memory (at open, and when another daemon changed them).
    ///
    /// # Errors
    /// [`StoreError`] on read failure; the keys in memory stay as they were.
    pub fn reload_keys(&self) -> Result<(), StoreError> {
        let store = self.clone();
        self.block(async move { store.load_keys().await })
    }

    /// [`PgStore::reload_keys`] on the store's runtime.
    async fn load_keys(&self) -> Result<(), StoreError> {
        let keys = self.read_api_keys().await?;
        *self.shared().keys_mut() = keys.into_iter().map(|k| (k.key_hash, k)).collect();
        Ok(())
    }

    /// As the file backend: with a key, every secret must open with it or `previous`, and
    /// plain ones and those of `previous` are sealed with it now (one transaction); without
    /// a key, no secret may be sealed.
    fn reconcile_sealing(&self, previous: Option<SecretsKey>) -> Result<(), StoreError> {
        let store = self.clone();
        let sealed = self.block(async move {
            let key = store.secrets_key();
            let mut conn = store.conn().await?;
            let txn = conn.transaction().await?;
            let rows = txn
                .query(
                    &format!("SELECT {} FROM webhooks FOR UPDATE", rows::WEBHOOK_COLS),
                    &[],
                )
                .await?;
            let mut sealed_now = 0usize;
            for row in &rows {
                let resealed =
                    sealed::reseal(key.as_deref(), previous.as_ref(), |k| rows::webhook(row, k))?;
                if let Some(webhook) = resealed {
                    write_webhook(&txn, &webhook, key.as_deref(), false).await?;
                    sealed_now += 1;
                }
            }
            txn.commit().await?;
            Ok(sealed_now)
        })?;
        sealed::log_resealed(sealed);
        Ok(())
    }

    /// Runs one transaction's worth of `f`, commits it, then publishes `changes` (and sends
    /// them to the other daemons in a cluster, within the transaction).
    async fn write_txn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(
            &'t deadpool_postgres::Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<(T, Vec<Change>), StoreError>> + Send + 't>,
        >,
    {
        let began = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let txn = conn.transaction().await?;
        let (value, changes) = f(&txn).await?;
        cluster::notify_changes(&txn, self.shared(), &changes).await?;
        match txn.commit().await {
            Ok(()) => {}
            Err(e) => {
                if e.as_db_error().is_none() {
                    self.shared().writable.store(false, Ordering::Relaxed);
                }
                return Err(StoreError::CommitFailed(StoreError::from(e).to_string()));
            }
        }
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(began.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::COMMIT_BATCH).record(1.0);
        self.shared().publish(changes);
        Ok(value)
    }

    /// See [`crate::store::Store::size_bytes`]: `pg_database_size` of the database.
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let store = self.clone();
        self.block(async move {
            let row = store
                .conn()
                .await?
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok(rows::from_ms(row.try_get(0)?))
        })
    }

    /// See [`crate::store::Store::is_writable`].
    pub fn is_writable(&self) -> bool {
        self.shared().writable.load(Ordering::Relaxed)
    }

    /// See [`crate::store::Store::recover`]: one round trip to the server.
    pub fn recover(&self) -> Result<(), StoreError> {
        let store = self.clone();
        self.block(async move {
            store.conn().await?.simple_query("SELECT 1").await?;
            store.shared().writable.store(true, Ordering::Relaxed);
            Ok(())
        })
    }

    /// See [`crate::store::Store::subscribe`].
    pub fn subscribe(&self, subscriber: Subscriber) -> bool {
        self.shared().subscriber.set(subscriber).is_ok()
    }

    /// See [`crate::store::Store::commit_stats`].
    pub fn commit_stats(&self) -> &CommitStats {
        &self.shared().stats
    }

    /// See [`crate::store::Store::create_webhook`].
    pub fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let store = self.clone();
        let webhook = webhook.clone();
        self.block(async move {
            let key = store.secrets_key();
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        write_webhook(txn, &webhook, key.as_deref(), true).await?;
                        let change = Change::Webhook {
                            id: webhook.id,
                            webhook: Some(Arc::new(webhook)),
                        };
                        Ok(((), vec![change]))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::get_webhook`].
    pub fn get_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        let store = self.clone();
        self.block(async move { store.fetch_webhook(id).await })
    }

    /// The webhook `id`, secrets opened, on the store's runtime.
    async fn fetch_webhook(&self, id: WebhookId) -> Result<Option<Webhook>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                &format!("SELECT {} FROM webhooks WHERE id = $1", rows::WEBHOOK_COLS),
                &[&id.to_string()],
            )
            .await?;
        let key = self.secrets_key();
        row.map(|r| rows::webhook(&r, key.as_deref())).transpose()
    }

    /// See [`crate::store::Store::list_webhooks`].
    pub fn list_webhooks(
        &self,
        organization_id: Option<&str>,
        after: Option<WebhookId>,
        limit: usize,
    ) -> Result<Vec<Webhook>, StoreError> {
        let store = self.clone();
        let org = organization_id.map(str::to_owned);
        let after = after.map_or_else(String::new, |id| id.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async move {
            let conn = store.conn().await?;
            let rows = match org {
                Some(org) => {
                    conn.query(
                        &format!(
                            "SELECT {} FROM webhooks WHERE organization_id = $1 AND id > $2 \
                             ORDER BY id LIMIT $3",
                            rows::WEBHOOK_COLS
                        ),
                        &[&org, &after, &limit],
                    )
                    .await?
                }
                None => {
                    conn.query(
                        &format!(
                            "SELECT {} FROM webhooks WHERE id > $1 ORDER BY id LIMIT $2",
                            rows::WEBHOOK_COLS
                        ),
                        &[&after, &limit],
                    )
                    .await?
                }
            };
            let key = store.secrets_key();
            rows.iter()
                .map(|r| rows::webhook(r, key.as_deref()))
                .collect()
        })
    }

    /// See [`crate::store::Store::all_webhooks`].
    pub fn all_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.list_webhooks(None, None, usize::MAX)
    }

    /// See [`crate::store::Store::update_webhook`].
    pub fn update_webhook(
        &self,
        id: WebhookId,
        changes: WebhookChanges,
        now_ms: u64,
    ) -> Result<Option<Webhook>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let key = store.secrets_key();
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let Some(mut webhook) = lock_webhook(txn, id, key.as_deref()).await? else {
                            return Ok((None, Vec::new()));
                        };
                        changes.apply(&mut webhook, now_ms);
                        write_webhook(txn, &webhook, key.as_deref(), false).await?;
                        let change = Change::Webhook {
                            id,
                            webhook: Some(Arc::new(webhook.clone())),
                        };
                        Ok((Some(webhook), vec![change]))
                    })
                })
                .await
        })
    }

    /// See [`crate::store::Store::create_api_key`].
    pub fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let store = self.clone();
        let stored = key.clone();
        self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        txn.execute(
                            "INSERT INTO api_keys (id, organization_id, description, \
                             created_at_ms, key_hash) VALUES ($1, $2, $3, $4, $5)",
                            &[
                                &stored.id.to_string(),
                                &stored.organization_id,
                                &stored.description,
                                &rows::ms(stored.created_at_ms),
                                &stored.key_hash.as_slice(),
                            ],
                        )
                        .await?;
                        Ok(((), vec![Change::Keys]))
                    })
                })
                .await
        })?;
        self.shared().keys_mut().insert(key.key_hash, key.clone());
        Ok(())
    }

    /// See [`crate::store::Store::list_api_keys`].
    pub fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let store = self.clone();
        self.block(async move { store.read_api_keys().await })
    }

    /// Every API key in creation order, on the store's runtime.
    async fn read_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.conn()
            .await?
            .query(
                &format!("SELECT {} FROM api_keys ORDER BY id", rows::API_KEY_COLS),
                &[],
            )
            .await?
            .iter()
            .map(rows::api_key)
            .collect()
    }

    /// See [`crate::store::Store::delete_api_key`].
    pub fn delete_api_key(&self, id: KeyId) -> Result<bool, StoreError> {
        let removed = {
            let mut keys = self.shared().keys_mut();
            let hash = keys.iter().find(|(_, k)| k.id == id).map(|(h, _)| *h);
            hash.and_then(|h| keys.remove(&h))
        };
        let store = self.clone();
        let result = self.block(async move {
            store
                .write_txn(move |txn| {
                    Box::pin(async move {
                        let n = txn
                            .execute("DELETE FROM api_keys WHERE id = $1", &[&id.to_string()])
                            .await?;
                        Ok((n > 0, vec![Change::Keys]))
                    })
                })
                .await
        });
        if result.is_err() {
            if let Some(key) = removed {
                self.shared().keys_mut().insert(key.key_hash, key);
            }
        }
        result
    }

    /// See [`crate::store::Store::find_api_key`].
    pub fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        Ok(self
            .shared()
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key_hash)
            .cloned())
    }

    /// See [`crate::store::Store::backup_to`]: not on PostgreSQL.
    ///
    /// # Errors
    /// Always [`StoreError::Unsupported`], naming PostgreSQL's own backups.
    pub fn backup_to(&self, _path: &std::path::Path) -> Result<BackupReport, StoreError> {
        Err(StoreError::Unsupported(
            "the online backup copies the redb file; this daemon stores in PostgreSQL: back it \
             up with pg_dump or a base backup (pg_basebackup); see README, PostgreSQL",
        ))
    }

    /// See [`crate::store::Store::space`]: each table's rows and bytes with its indexes.
    pub fn space(&self) -> Result<Vec<TableSpace>, StoreError> {
        let store = self.clone();
        self.block(async move {
            let rows = store
                .conn()
                .await?
                .query(
                    "SELECT c.relname::text, c.reltuples::bigint, \
                     pg_table_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 1",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for row in rows {
                let name: String = row.try_get(0)?;
                let Some(table) = TABLES.iter().find(|t| **t == name) else {
                    continue;
                };
                out.push(TableSpace {
                    table,
                    entries: rows::from_ms(row.try_get::<_, i64>(1)?.max(0)),
                    stored_bytes: rows::from_ms(row.try_get(2)?),
                    metadata_bytes: rows::from_ms(row.try_get(3)?),
                    fragmented_bytes: 0,
                });
            }
            Ok(out)
        })
    }

    /// See [`crate::store::Store::check`].
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let store = self.clone();
        self.block(async move { admin::check(&store).await })
    }
}

/// The tables of the schema, for [`PgStore::space`].
const TABLES: [&str; 10] = [
    "held_sweeps",
    "jobs",
    "job_items",
    "webhooks",
    "events",
    "deliveries",
    "attempts",
    "api_keys",
    "daemons",
    "webhook_leases",
];

/// The webhook `id`, its row locked (`FOR UPDATE`) until the transaction ends, secrets
/// opened with `key`.
async fn lock_webhook(
    txn: &deadpool_postgres::Transaction<'_>,
    id: WebhookId,
    key: Option<&SecretsKey>,
) -> Result<Option<Webhook>, StoreError> {
    txn.query_opt(
        &format!(
            "SELECT {} FROM webhooks WHERE id = $1 FOR UPDATE",
            rows::WEBHOOK_COLS
        ),
        &[&id.to_string()],
    )
    .await?
    .map(|row| rows::webhook(&row, key))
    .transpose()
}

/// Inserts (`insert`) or rewrites a webhook row, secrets sealed with `key`.
async fn write_webhook(
    txn: &deadpool_postgres::Transaction<'_>,
    webhook: &Webhook,
    key: Option<&SecretsKey>,
    insert: bool,
) -> Result<(), StoreError> {
    let sql = if insert {
        "INSERT INTO webhooks (id, organization_id, url, event_types, secret, previous_secret, \
         previous_expires_at_ms, active, description, created_at_ms, updated_at_ms, disabled, \
         failing_since_ms, options) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    } else {
        "UPDATE webhooks SET organization_id = $2, url = $3, event_types = $4, secret = $5, \
         previous_secret = $6, previous_expires_at_ms = $7, active = $8, description = $9, \
         created_at_ms = $10, updated_at_ms = $11, disabled = $12, failing_since_ms = $13, \
         options = $14 WHERE id = $1"
    };
    let previous = webhook
        .previous_secret
        .as_ref()
        .map(|p| rows::stored_secret(webhook.id, &p.secret, key));
    let previous_expires = webhook
        .previous_secret
        .as_ref()
        .map(|p| rows::ms(p.expires_at_ms));
    txn.execute(
        sql,
        &[
            &webhook.id.to_string(),
            &webhook.organization_id,
            &webhook.url,
            &rows::event_types(&webhook.events),
            &rows::stored_secret(webhook.id, &webhook.secret, key),
            &previous,
            &previous_expires,
            &webhook.active,
            &webhook.description,
            &rows::ms(webhook.created_at_ms),
            &rows::ms(webhook.updated_at_ms),
            &rows::disabled_json(webhook.disabled.as_ref()),
            &webhook.failing_since_ms.map(rows::ms),
            &crate::store::options::encode(&webhook.options, webhook.id, key),
        ],
    )
    .await?;
    Ok(())
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// By a daemon: migrations run, secrets are checked and resealed with the key.
    Daemon,
    /// By `migrate` (its target): migrations run, secrets are left as stored.
    Import,
    /// By `check`: nothing is written; the schema must be there already.
    Check,
}

/// Fails unless the database holds our schema (for `check`, which must not create it).
async fn schema_present(config: tokio_postgres::Config) -> Result<(), StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one("SELECT to_regclass('palo_schema_history') IS NOT NULL", &[])
        .await?;
    drop(client);
    task.abort();
    if row.try_get::<_, bool>(0)? {
        Ok(())
    } else {
        Err(StoreError::Backend(
            "this database holds no palo-webhooks store (no schema: was a daemon ever started on it?)".into(),
        ))
    }
}

/// Runs the embedded migrations that are missing, one daemon at a time (advisory lock).
async fn migrate(config: tokio_postgres::Config) -> Result<(), StoreError> {
    let (mut client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner()
        .set_migration_table_name("palo_schema_history")
        .run_async(&mut client)
        .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    drop(client);
    task.abort();
    match report {
        Ok(report) => {
            for m in report.applied_migrations() {
                tracing::info!(
                    version = m.version(),
                    name = m.name(),
                    "applied a schema migration"
                );
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Backend(format!("schema migration failed: {e}"))),
    }
}
