//! The `palo-webhooks` binary: parse flags, set up logs, then serve or run a client command.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use palo_webhooks::cli::{run_client, Cli, Command};
use palo_webhooks::config::{Config, LogFormat, ServeArgs};
use palo_webhooks::server;
use tracing_subscriber::EnvFilter;

/// Threads for store calls (tokio's blocking pool).
const BLOCKING_THREADS: usize = 32;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::GenKey(args) = &cli.command {
        return match palo_webhooks::cli::run_gen_key(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Migrate(args) = &cli.command {
        return match palo_webhooks::migrate::run_migrate(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match &cli.command {
        Command::Verify(args) => {
            // 0 verified, 1 not verified, 2 the check could not be made (as clap's usage
            // errors), so a script tells a bad invocation from a failed check.
            return match palo_webhooks::cli::verify::run(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Completions { shell } => {
            palo_webhooks::cli::offline::print_completions(*shell);
            return ExitCode::SUCCESS;
        }
        Command::Man { out_dir } => {
            return match palo_webhooks::cli::offline::write_man(out_dir.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if let Command::Check(args) = &cli.command {
        return match palo_webhooks::cli::run_check(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                if args.json {
                    // Scripts read stdout: the failure is JSON there too.
                    println!(
                        "{}",
                        serde_json::json!({"ok": false, "error": format!("{e:#}")})
                    );
                }
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Store calls run on the blocking pool; they are short, and a pool of tokio's default 512
    // threads only adds stacks and allocator arenas when a backlog drains.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            other => run_client(other).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces the log filter of the running process (SIGHUP).
type LogReload = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn init_logs(config: &Config) -> Result<LogReload> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_new(&config.log_filter).context("invalid log filter")?;
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only for a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let format = match config.log_format {
        LogFormat::Text => format.boxed(),
        LogFormat::Json => format.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .context("cannot install the logger")?;
    Ok(reload)
}

/// On each SIGHUP, reads the settings again (flags, environment, config file), applies the
/// log filter and hands the settings to the server, which applies the allowed networks and
/// the rate limit (`server::run`). The other settings need a restart; an invalid file
/// changes nothing.
fn reload_on_sighup(
    args: ServeArgs,
    reload: LogReload,
    settings: tokio::sync::watch::Sender<Option<std::sync::Arc<palo_webhooks::config::Config>>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot install the SIGHUP handler; the log level cannot be changed at run time"
        );
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let filter = args
                .clone()
                .into_config()
                .map_err(anyhow::Error::from)
                .and_then(|config| {
                    EnvFilter::try_new(&config.log_filter)
                        .map(|f| (f, config))
                        .context("invalid log filter")
                });
            match filter {
                Ok((filter, config)) => match reload.reload(filter) {
                    Ok(()) => {
                        tracing::info!(log = %config.log_filter, "SIGHUP: log filter reloaded (allowed networks and rate limit follow; other settings need a restart)");
                        settings.send_replace(Some(std::sync::Arc::new(config)));
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: cannot replace the log filter"),
                },
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: settings not reloaded; keeping the current ones"
                ),
            }
        }
    });
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.clone().into_config()?;
    let reload = init_logs(&config)?;
    let (reloads_tx, reloads) = tokio::sync::watch::channel(None);
    reload_on_sighup(args, reload, reloads_tx);
    raise_open_file_limit(config.max_in_flight);
    // A file-size limit (RLIMIT_FSIZE) must fail the write (EFBIG, so a 503 and a paused
    // store) rather than kill the process: handling SIGXFSZ (25 on Linux) replaces its
    // default action. tokio keeps the handler installed for the life of the process.
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // The admin token is read or created by `run` once the store is open: a start refused
    // because another daemon holds the file leaves every file as it was.
    server::run(config, listener, None, shutdown_signal(), reloads).await?;
    Ok(())
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does): every attempt in
/// flight holds a socket, and systemd's default soft limit of 1024 would cap deliveries below
/// `--max-in-flight`. Warns when even the hard limit leaves little room.
fn raise_open_file_limit(max_in_flight: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = max_in_flight as u64 + 512; // API connections, the db, logs.
            if limit < wanted {
                tracing::warn!(
                    limit,
                    wanted,
                    "the open-file limit is low for --max-in-flight; raise LimitNOFILE"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Completes on the first SIGTERM or SIGINT. A second signal exits at once: whatever was
/// accepted is already committed, and unfinished attempts resume after restart.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}
