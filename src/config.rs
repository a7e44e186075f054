//! Daemon settings: flags, `PALO_WEBHOOKS_*` environment variables, an optional TOML file,
//! and defaults, merged once (flags > env > file > defaults) into a validated [`Config`].
//!
//! Owner's rule: raw strings are parsed here and nowhere else; the rest of the crate sees
//! typed values (`Duration`, `SocketAddr`, [`RetrySchedule`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::address::AddressPolicy;
use crate::retry::RetrySchedule;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for the journal and log collectors.
    Json,
}

/// `palo-webhooks serve` options as given on the command line or in the environment.
/// Every field is optional so the config file and defaults can fill the gaps.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file; packaging/config.toml lists every key with its default.
    #[arg(long, env = "PALO_WEBHOOKS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The redb database file [default: $STATE_DIRECTORY/palo-webhooks.redb under systemd,
    /// else ./palo-webhooks.redb].
    #[arg(long, env = "PALO_WEBHOOKS_DB")]
    pub db: Option<PathBuf>,
    /// Store everything in PostgreSQL instead of the redb file: a URL
    /// `postgres://user@host:port/database`, which several daemons may share (README,
    /// PostgreSQL). Put the password in `--store-password-file`, not in the URL
    /// [default: none, the redb file].
    #[arg(long, env = "PALO_WEBHOOKS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password (its first line); or set
    /// PALO_WEBHOOKS_STORE_PASSWORD [default: none, the URL's or none].
    #[arg(long, env = "PALO_WEBHOOKS_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// Address of the local API [default: 127.0.0.1:8080].
    #[arg(long, env = "PALO_WEBHOOKS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Allow plain http:// webhook URLs (default: https only, as the spec asks). Booleans
    /// take true/false, yes/no, on/off, 1/0, y/n or t/f (any case); the bare flag is true.
    #[arg(long, env = "PALO_WEBHOOKS_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_http: Option<bool>,
    /// A network deliveries may reach although the address policy forbids it (loopback,
    /// private, link-local, ...), as a CIDR block; repeatable, or comma-separated in the
    /// environment [default: none].
    #[arg(
        long = "allow-network",
        env = "PALO_WEBHOOKS_ALLOW_NETWORK",
        value_delimiter = ','
    )]
    pub allow_network: Vec<String>,
    /// Outbound HTTP proxy for deliveries, `http://[user:password@]host:port` (or `https://`,
    /// TLS to the proxy): each
    /// connection is a CONNECT tunnel to the address the daemon resolved and checked
    /// [default: none].
    #[arg(long, env = "PALO_WEBHOOKS_PROXY")]
    pub proxy: Option<String>,
    /// Hosts that bypass `--proxy`, comma-separated: names (their subdomains too), IP
    /// addresses, or `*`.
    #[arg(
        long = "no-proxy",
        env = "PALO_WEBHOOKS_NO_PROXY",
        value_delimiter = ','
    )]
    pub no_proxy: Vec<String>,
    /// Delays between attempts, comma-separated [default: 5m,30m,2h,6h].
    #[arg(long, env = "PALO_WEBHOOKS_RETRY_SCHEDULE")]
    pub retry_schedule: Option<String>,
    /// Time limit of one whole attempt [default: 10s].
    #[arg(long, env = "PALO_WEBHOOKS_ATTEMPT_TIMEOUT")]
    pub attempt_timeout: Option<String>,
    /// How long an idle keep-alive connection to a receiver is kept for the next attempt;
    /// keep it shorter than receivers' own keep-alive timeout (Node: 5s); `0` keeps none
    /// [default: 4s].
    #[arg(long, env = "PALO_WEBHOOKS_POOL_IDLE_TIMEOUT")]
    pub pool_idle_timeout: Option<String>,
    /// Largest accepted API request body, in bytes [default: 1048576].
    #[arg(long, env = "PALO_WEBHOOKS_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Most attempts in flight at once [default: 1024].
    #[arg(long, env = "PALO_WEBHOOKS_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Most attempts in flight to one webhook [default: 8].
    #[arg(long, env = "PALO_WEBHOOKS_MAX_IN_FLIGHT_PER_WEBHOOK")]
    pub max_in_flight_per_webhook: Option<usize>,
    /// How long SIGTERM waits for in-flight attempts [default: 15s].
    #[arg(long, env = "PALO_WEBHOOKS_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// How long finished events, deliveries and attempt logs are kept; also the idempotency
    /// window of `event_id`. `0s` keeps everything [default: 30d].
    #[arg(long, env = "PALO_WEBHOOKS_RETENTION")]
    pub retention: Option<String>,
    /// How long an event's payload is kept once its deliveries are all final; then its body
    /// is replaced by a tombstone (the event, deliveries and attempt logs stay until
    /// `--retention`). Must be shorter than `--retention` [default: none, kept as long].
    #[arg(long, env = "PALO_WEBHOOKS_PAYLOAD_RETENTION")]
    pub payload_retention: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "PALO_WEBHOOKS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, tracing-subscriber syntax [default: info].
    #[arg(long, env = "PALO_WEBHOOKS_LOG")]
    pub log: Option<String>,
    /// Time a client has to send a request's head, and then its body; an idle keep-alive
    /// connection is closed after it too [default: 10s].
    #[arg(long, env = "PALO_WEBHOOKS_API_READ_TIMEOUT")]
    pub api_read_timeout: Option<String>,
    /// Most API connections open at once; more wait in the listen backlog [default: 1024].
    #[arg(long, env = "PALO_WEBHOOKS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// API requests per second allowed to each key (and to the admin token), with bursts of
    /// as many; beyond, 429 with Retry-After. 0 turns the limit off [default: 0, off; failed
    /// tokens are always limited to 10/s per client address].
    #[arg(long, env = "PALO_WEBHOOKS_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// A PEM file of CA certificates trusted for deliveries besides the webpki roots (an
    /// internal CA) [default: none].
    #[arg(long, env = "PALO_WEBHOOKS_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
    /// Also trust the operating system's CA store for deliveries (true/false, yes/no, on/off,
    /// 1/0) [default: false].
    #[arg(long, env = "PALO_WEBHOOKS_TLS_SYSTEM_ROOTS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_system_roots: Option<bool>,
    /// A file holding the 32-byte key (64 hex characters) that encrypts webhook secrets in
    /// the db (XChaCha20-Poly1305); keep it outside the db's directory [default: none].
    #[arg(long, env = "PALO_WEBHOOKS_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// To replace the secrets key: the old key file. Secrets sealed with it are sealed with
    /// `--secrets-key-file` at start; afterwards it is no longer needed [default: none].
    #[arg(long, env = "PALO_WEBHOOKS_PREVIOUS_SECRETS_KEY_FILE")]
    pub previous_secrets_key_file: Option<PathBuf>,
    /// A bearer token `GET /metrics` requires; prefer the environment or the config file to
    /// the command line [default: none, /metrics open on the API's address].
    #[arg(long, env = "PALO_WEBHOOKS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<crate::model::Secret>,
    /// Disable a webhook whose receiver answers 410 Gone; its deliveries are held until it is
    /// enabled (README, Disabled webhooks); true/false, yes/no, on/off, 1/0 [default: true].
    #[arg(long, env = "PALO_WEBHOOKS_DISABLE_ON_GONE", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub disable_on_gone: Option<bool>,
    /// Disable a webhook whose attempts have all failed for this long (and at least
    /// `--disable-after-attempts` of them) [default: 5d].
    #[arg(long, env = "PALO_WEBHOOKS_DISABLE_AFTER")]
    pub disable_after: Option<String>,
    /// The fewest failed attempts in a row before `--disable-after` disables [default: 10].
    #[arg(long, env = "PALO_WEBHOOKS_DISABLE_AFTER_ATTEMPTS")]
    pub disable_after_attempts: Option<u32>,
    /// An operator endpoint that receives every organization's operational events
    /// (`webhook.disabled`, `webhook.enabled`, `delivery.exhausted`, `recovery.finished`),
    /// signed with `--operator-webhook-secret` [default: none].
    #[arg(long, env = "PALO_WEBHOOKS_OPERATOR_WEBHOOK_URL")]
    pub operator_webhook_url: Option<String>,
    /// The operator endpoint's signing secret (at least 16 characters); prefer the
    /// environment or the config file to the command line.
    #[arg(
        long,
        env = "PALO_WEBHOOKS_OPERATOR_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub operator_webhook_secret: Option<crate::model::Secret>,
}

/// The operator endpoint (`operator_webhook_url`): where copies of every operational event go.
#[derive(Debug, Clone)]
pub struct OperatorEndpoint {
    /// The URL, checked like a webhook's.
    pub url: String,
    /// The signing secret (its `Debug` prints stars).
    pub secret: crate::model::Secret,
}

/// The config file's keys; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    db: Option<PathBuf>,
    store: Option<String>,
    store_password_file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    allow_http: Option<bool>,
    allow_network: Option<Vec<String>>,
    proxy: Option<String>,
    no_proxy: Option<Vec<String>>,
    retry_schedule: Option<String>,
    attempt_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    max_in_flight_per_webhook: Option<usize>,
    shutdown_timeout: Option<String>,
    retention: Option<String>,
    payload_retention: Option<String>,
    log_format: Option<LogFormat>,
    log: Option<String>,
    api_read_timeout: Option<String>,
    max_connections: Option<usize>,
    rate_limit: Option<u32>,
    extra_ca_file: Option<PathBuf>,
    tls_system_roots: Option<bool>,
    secrets_key_file: Option<PathBuf>,
    previous_secrets_key_file: Option<PathBuf>,
    metrics_token: Option<String>,
    disable_on_gone: Option<bool>,
    disable_after: Option<String>,
    disable_after_attempts: Option<u32>,
    operator_webhook_url: Option<String>,
    operator_webhook_secret: Option<String>,
}

/// Validated daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The redb database file (with PostgreSQL: only where the generated admin token goes).
    pub db_path: PathBuf,
    /// The PostgreSQL store, when one is configured instead of the redb file.
    pub postgres: Option<crate::store::postgres::PgOptions>,
    /// Address of the local API.
    pub listen: SocketAddr,
    /// Whether http:// webhook URLs are accepted.
    pub allow_http: bool,
    /// Which addresses deliveries may connect to (SSRF policy plus `--allow-network`).
    pub address_policy: AddressPolicy,
    /// The outbound proxy and the hosts that bypass it (issue 16).
    pub proxy: Option<crate::delivery::ProxyRoute>,
    /// Delays between scheduled attempts.
    pub retry_schedule: RetrySchedule,
    /// Time limit of one whole attempt.
    pub attempt_timeout: Duration,
    /// How long an idle keep-alive connection to a receiver is kept (zero: none).
    pub pool_idle_timeout: Duration,
    /// Largest accepted API request body, bytes.
    pub max_body_bytes: usize,
    /// Most attempts in flight at once.
    pub max_in_flight: usize,
    /// Most attempts in flight to one webhook.
    pub max_in_flight_per_webhook: usize,
    /// How long shutdown waits for in-flight attempts.
    pub shutdown_timeout: Duration,
    /// How long final records are kept (`None`: for ever); the idempotency window.
    pub retention: Option<Duration>,
    /// How long the payload of an event whose deliveries are all final is kept before it is
    /// blanked (`None`: as long as the event, issue 15).
    pub payload_retention: Option<Duration>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_filter: String,
    /// Time for a request's head, then for its body; also the keep-alive idle limit.
    pub api_read_timeout: Duration,
    /// Most API connections open at once.
    pub max_connections: usize,
    /// Requests per second per key (burst the same); 0 = no limit.
    pub rate_limit: u32,
    /// Extra CA certificates (PEM) trusted for deliveries.
    pub extra_ca_file: Option<PathBuf>,
    /// Whether the OS CA store is trusted for deliveries too.
    pub tls_system_roots: bool,
    /// Key file encrypting webhook secrets at rest.
    pub secrets_key_file: Option<PathBuf>,
    /// The key file being replaced: its secrets are resealed with `secrets_key_file`.
    pub previous_secrets_key_file: Option<PathBuf>,
    /// Bearer token for `GET /metrics`, if any (its `Debug` prints stars).
    pub metrics_token: Option<crate::model::Secret>,
    /// When the daemon disables a webhook (issue 15).
    pub disable: crate::lifecycle::DisablePolicy,
    /// Where copies of operational events go, if anywhere.
    pub operator_endpoint: Option<OperatorEndpoint>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: PathBuf::from("palo-webhooks.redb"),
            postgres: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_http: false,
            address_policy: AddressPolicy::default(),
            proxy: None,
            retry_schedule: RetrySchedule::default(),
            attempt_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(4),
            max_body_bytes: 1024 * 1024,
            max_in_flight: 1024,
            max_in_flight_per_webhook: 8,
            shutdown_timeout: Duration::from_secs(15),
            retention: Some(Duration::from_secs(30 * 86_400)),
            payload_retention: None,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            api_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            rate_limit: 0,
            extra_ca_file: None,
            tls_system_roots: false,
            secrets_key_file: None,
            previous_secrets_key_file: None,
            metrics_token: None,
            disable: crate::lifecycle::DisablePolicy::default(),
            operator_endpoint: None,
        }
    }
}

/// A setting that does not parse or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for our keys.
    #[error("invalid config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is invalid.
    #[error("invalid {key}: {message}")]
    Value {
        /// The setting's name.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `payload_retention` (issue 15): a duration shorter than `retention` when both are set;
/// `0s` or absent is none.
fn payload_retention(
    text: Option<String>,
    retention: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = text.filter(|t| t.trim() != "0" && t.trim() != "0s") else {
        return Ok(None);
    };
    let payload = duration("payload_retention", &text)?;
    if retention.is_some_and(|r| payload >= r) {
        return Err(ConfigError::Value {
            key: "payload_retention",
            message: "must be shorter than retention (bodies go first, then whole events)".into(),
        });
    }
    Ok(Some(payload))
}

fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text).map_err(|e| ConfigError::Value {
        key,
        message: format!("{text:?}: {e} (use e.g. 10s, 500ms, 2m)"),
    })?;
    if d.is_zero() {
        return Err(ConfigError::Value {
            key,
            message: "must be more than zero".into(),
        });
    }
    Ok(d)
}

fn positive(key: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(ConfigError::Value {
            key,
            message: "must be at least 1".into(),
        });
    }
    Ok(n)
}

impl ServeArgs {
    /// Merges flags and environment (already in `self`) over the config file and defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the setting at fault.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let schedule_text = self.retry_schedule.or(file.retry_schedule);
        let retry_schedule = match schedule_text {
            Some(text) => RetrySchedule::parse(&text).map_err(|e| ConfigError::Value {
                key: "retry_schedule",
                message: e.to_string(),
            })?,
            None => defaults.retry_schedule,
        };
        let attempt_timeout = match self.attempt_timeout.or(file.attempt_timeout) {
            Some(text) => duration("attempt_timeout", &text)?,
            None => defaults.attempt_timeout,
        };
        let pool_idle_timeout = match self.pool_idle_timeout.or(file.pool_idle_timeout) {
            Some(text) if text.trim() == "0" || text.trim() == "0s" => Duration::ZERO,
            Some(text) => duration("pool_idle_timeout", &text)?,
            None => defaults.pool_idle_timeout,
        };
        let shutdown_timeout = match self.shutdown_timeout.or(file.shutdown_timeout) {
            Some(text) => duration("shutdown_timeout", &text)?,
            None => defaults.shutdown_timeout,
        };
        let retention = match self.retention.or(file.retention) {
            Some(text) if text.trim() == "0" || text.trim() == "0s" => None,
            Some(text) => Some(duration("retention", &text)?),
            None => defaults.retention,
        };
        let payload_retention =
            payload_retention(self.payload_retention.or(file.payload_retention), retention)?;
        let api_read_timeout = match self.api_read_timeout.or(file.api_read_timeout) {
            Some(text) => duration("api_read_timeout", &text)?,
            None => defaults.api_read_timeout,
        };
        if (self.previous_secrets_key_file.is_some() || file.previous_secrets_key_file.is_some())
            && self.secrets_key_file.is_none()
            && file.secrets_key_file.is_none()
        {
            return Err(ConfigError::Value {
                key: "previous_secrets_key_file",
                message: "needs secrets_key_file, the key that replaces it".into(),
            });
        }
        let networks = if self.allow_network.is_empty() {
            file.allow_network.unwrap_or_default()
        } else {
            self.allow_network
        };
        let address_policy =
            AddressPolicy::new(AddressPolicy::parse_networks(&networks).map_err(|e| {
                ConfigError::Value {
                    key: "allow_network",
                    message: e.to_string(),
                }
            })?);
        let proxy = match self.proxy.or(file.proxy).filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(text) => Some(crate::delivery::ProxyRoute {
                proxy: crate::delivery::Proxy::parse(&text).map_err(|message| {
                    ConfigError::Value {
                        key: "proxy",
                        message,
                    }
                })?,
                no_proxy: crate::delivery::parse_no_proxy(&if self.no_proxy.is_empty() {
                    file.no_proxy.unwrap_or_default()
                } else {
                    self.no_proxy
                }),
            }),
        };
        let disable = crate::lifecycle::DisablePolicy {
            on_gone: self
                .disable_on_gone
                .or(file.disable_on_gone)
                .unwrap_or(defaults.disable.on_gone),
            after: match self.disable_after.or(file.disable_after) {
                Some(text) => duration("disable_after", &text)?,
                None => defaults.disable.after,
            },
            after_attempts: match self.disable_after_attempts.or(file.disable_after_attempts) {
                Some(0) => {
                    return Err(ConfigError::Value {
                        key: "disable_after_attempts",
                        message: "must be at least 1".into(),
                    })
                }
                Some(n) => n,
                None => defaults.disable.after_attempts,
            },
        };
        let operator_secret = self
            .operator_webhook_secret
            .or(file.operator_webhook_secret.map(crate::model::Secret));
        let operator_endpoint = match (
            self.operator_webhook_url.or(file.operator_webhook_url),
            operator_secret,
        ) {
            (None, None) => None,
            (Some(url), Some(secret)) => {
                if secret.0.chars().count() < 16 {
                    return Err(ConfigError::Value {
                        key: "operator_webhook_secret",
                        message: "must be at least 16 characters".into(),
                    });
                }
                Some(OperatorEndpoint { url, secret })
            }
            (Some(_), None) => {
                return Err(ConfigError::Value {
                    key: "operator_webhook_secret",
                    message: "is required with operator_webhook_url".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Value {
                    key: "operator_webhook_url",
                    message: "is required with operator_webhook_secret".into(),
                })
            }
        };
        let password_file = self.store_password_file.or(file.store_password_file);
        let postgres = match self.store.or(file.store) {
            None => None,
            Some(url) => Some(
                crate::store::postgres::PgOptions::from_url(&url, password_file.as_deref())
                    .map_err(|message| ConfigError::Value {
                        key: "store",
                        message,
                    })?,
            ),
        };
        Ok(Config {
            postgres,
            db_path: self.db.or(file.db).unwrap_or_else(|| {
                // Under systemd (`StateDirectory=`), the db lives in the state directory.
                std::env::var_os("STATE_DIRECTORY")
                    .and_then(|dirs| std::env::split_paths(&dirs).next())
                    .map_or(defaults.db_path, |dir| dir.join("palo-webhooks.redb"))
            }),
            listen: self.listen.or(file.listen).unwrap_or(defaults.listen),
            allow_http: self
                .allow_http
                .or(file.allow_http)
                .unwrap_or(defaults.allow_http),
            address_policy,
            proxy,
            retry_schedule,
            attempt_timeout,
            pool_idle_timeout,
            max_body_bytes: positive(
                "max_body",
                self.max_body
                    .or(file.max_body_bytes)
                    .unwrap_or(defaults.max_body_bytes),
            )?,
            max_in_flight: positive(
                "max_in_flight",
                self.max_in_flight
                    .or(file.max_in_flight)
                    .unwrap_or(defaults.max_in_flight),
            )?,
            max_in_flight_per_webhook: positive(
                "max_in_flight_per_webhook",
                self.max_in_flight_per_webhook
                    .or(file.max_in_flight_per_webhook)
                    .unwrap_or(defaults.max_in_flight_per_webhook),
            )?,
            shutdown_timeout,
            retention,
            payload_retention,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            log_filter: self.log.or(file.log).unwrap_or(defaults.log_filter),
            api_read_timeout,
            max_connections: positive(
                "max_connections",
                self.max_connections
                    .or(file.max_connections)
                    .unwrap_or(defaults.max_connections),
            )?,
            rate_limit: self
                .rate_limit
                .or(file.rate_limit)
                .unwrap_or(defaults.rate_limit),
            extra_ca_file: self.extra_ca_file.or(file.extra_ca_file),
            tls_system_roots: self
                .tls_system_roots
                .or(file.tls_system_roots)
                .unwrap_or(defaults.tls_system_roots),
            secrets_key_file: self.secrets_key_file.or(file.secrets_key_file),
            previous_secrets_key_file: self
                .previous_secrets_key_file
                .or(file.previous_secrets_key_file),
            metrics_token: self
                .metrics_token
                .or(file.metrics_token.map(crate::model::Secret))
                .filter(|t| !t.0.trim().is_empty()),
            disable,
            operator_endpoint,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    // The parser's message without its excerpt of the file: a line of the file may hold a
    // secret (a password in `store`), and errors reach the journal.
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: match e.span() {
            Some(span) => format!(
                "line {}: {}",
                text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1,
                e.message()
            ),
            None => e.message().to_owned(),
        },
    })
}

/// Where the generated admin token is kept: beside the db file, `<db>.admin-token`.
pub fn admin_token_path(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "palo-webhooks.redb".into());
    name.push(".admin-token");
    db_path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "attempt_timeout = \"3s\"\nmax_body_bytes = 10\nretry_schedule = \"1s\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            max_body: Some(20),
            ..ServeArgs::default()
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.attempt_timeout, Duration::from_secs(3));
        assert_eq!(config.max_body_bytes, 20);
        assert_eq!(config.retry_schedule.max_attempts(), 2);
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let args = ServeArgs {
            attempt_timeout: Some("soon".into()),
            ..ServeArgs::default()
        };
        assert!(args
            .into_config()
            .unwrap_err()
            .to_string()
            .contains("attempt_timeout"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "typo_key = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        assert!(args
            .into_config()
            .unwrap_err()
            .to_string()
            .contains("typo_key"));
    }

    #[test]
    fn shipped_config_file_sets_every_key_to_its_default() {
        let file: FileConfig = toml::from_str(include_str!("../packaging/config.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, include_str!("../packaging/config.toml")).unwrap();
        let config = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .into_config()
        .unwrap();
        let defaults = Config::default();
        assert!(
            file.listen.is_some() && file.max_in_flight_per_webhook.is_some() && file.log.is_some()
        );
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.retry_schedule, defaults.retry_schedule);
        assert_eq!(config.attempt_timeout, defaults.attempt_timeout);
        assert_eq!(config.max_body_bytes, defaults.max_body_bytes);
        assert_eq!(config.max_in_flight, defaults.max_in_flight);
        assert_eq!(
            config.max_in_flight_per_webhook,
            defaults.max_in_flight_per_webhook
        );
        assert_eq!(config.shutdown_timeout, defaults.shutdown_timeout);
        assert_eq!(config.log_format, defaults.log_format);
        assert_eq!(config.log_filter, defaults.log_filter);
        assert_eq!(config.allow_http, defaults.allow_http);
        assert_eq!(config.api_read_timeout, defaults.api_read_timeout);
        assert_eq!(config.max_connections, defaults.max_connections);
        assert_eq!(config.rate_limit, defaults.rate_limit);
        assert_eq!(config.tls_system_roots, defaults.tls_system_roots);
        assert_eq!(config.retention, defaults.retention);
        // Every key is there, set or commented out, and the file ends whole (a cut-off
        // last line once hid `metrics_token` and swallowed keys appended after it).
        let text = include_str!("../packaging/config.toml");
        assert!(text.ends_with('\n'));
        for key in [
            "db",
            "listen",
            "allow_http",
            "allow_network",
            "proxy",
            "no_proxy",
            "retry_schedule",
            "attempt_timeout",
            "max_body_bytes",
            "max_in_flight",
            "max_in_flight_per_webhook",
            "shutdown_timeout",
            "retention",
            "payload_retention",
            "log_format",
            "log",
            "api_read_timeout",
            "max_connections",
            "rate_limit",
            "extra_ca_file",
            "tls_system_roots",
            "secrets_key_file",
            "previous_secrets_key_file",
            "metrics_token",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))
                    || l.starts_with(&format!("# {key} = "))),
                "packaging/config.toml lacks {key}"
            );
        }
        assert!(
            file.extra_ca_file.is_none()
                && file.secrets_key_file.is_none()
                && file.previous_secrets_key_file.is_none()
                && file.metrics_token.is_none()
        );
    }

    #[test]
    fn payload_retention_must_be_shorter_than_retention() {
        let with = |payload: &str, retention: Option<&str>| {
            ServeArgs {
                payload_retention: Some(payload.into()),
                retention: retention.map(Into::into),
                ..ServeArgs::default()
            }
            .into_config()
        };
        let config = with("7d", None).unwrap();
        assert_eq!(
            config.payload_retention,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(with("0s", None).unwrap().payload_retention, None);
        assert_eq!(
            ServeArgs::default()
                .into_config()
                .unwrap()
                .payload_retention,
            None
        );
        assert!(with("2s", Some("1h")).is_ok());
        for (payload, retention) in [("30d", None), ("1h", Some("1h")), ("2h", Some("1h"))] {
            let error = with(payload, retention).unwrap_err().to_string();
            assert!(error.contains("payload_retention"), "{error}");
        }
        assert!(with("1h", Some("0s")).is_ok(), "retention off: no bound");
    }

    #[test]
    fn admin_token_sits_beside_the_db() {
        assert_eq!(
            admin_token_path(Path::new("/var/lib/x/db.redb")),
            PathBuf::from("/var/lib/x/db.redb.admin-token")
        );
    }
}
