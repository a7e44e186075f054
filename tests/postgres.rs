//! The integration tests on the PostgreSQL backend: the modules of `tests/it` whose tests
//! hold on any store, run again with each daemon on a database of its own in a throwaway
//! cluster (`support::pg_database`). The file-specific tests (the redb file's bytes, `--db`,
//! backups into a file, a full disk, `$STATE_DIRECTORY`) are wrapped in `file_only!`, which
//! drops them here.

/// The store of this binary's daemons (read by `support`).
const BACKEND: support::Backend = support::Backend::Postgres;

/// Drops the redb-only tests of the shared modules (see `tests/it/main.rs`).
macro_rules! file_only {
    ($($item:item)*) => {};
}

// Helpers of the file-specific tests go unused here.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

#[path = "it/browser.rs"]
mod browser;
#[path = "it/cli.rs"]
mod cli;
#[path = "it/cluster.rs"]
mod cluster;
#[path = "it/conformance.rs"]
mod conformance;
#[path = "it/delivery.rs"]
mod delivery;
#[path = "it/flow.rs"]
mod flow;
#[path = "it/hardening.rs"]
mod hardening;
#[path = "it/hostile.rs"]
mod hostile;
#[path = "it/ingest.rs"]
mod ingest;
#[path = "it/isolation.rs"]
mod isolation;
#[path = "it/jobs.rs"]
mod jobs;
#[path = "it/lifecycle.rs"]
mod lifecycle;
#[path = "it/migrate.rs"]
mod migrate;
#[path = "it/operations.rs"]
mod operations;
#[path = "it/options.rs"]
mod options;
#[path = "it/ordering.rs"]
mod ordering;
#[path = "it/payload.rs"]
mod payload;
#[path = "it/proxy.rs"]
mod proxy;
#[path = "it/recovery.rs"]
mod recovery;
#[path = "it/search.rs"]
mod search;
#[path = "it/security.rs"]
mod security;
#[path = "it/tls.rs"]
mod tls;
#[path = "it/torture.rs"]
mod torture;
#[path = "it/ui.rs"]
mod ui;

/// The harness itself: each call gets a new, empty database of its own on 127.0.0.1, in a
/// cluster with PostgreSQL's durable defaults and room for several daemons' pools, and a
/// dropped database is gone.
#[test]
fn the_harness_cluster_gives_each_caller_its_own_empty_database() {
    let first = support::pg_database();
    let second = support::pg_database();
    assert_ne!(first, second);
    for url in [&first, &second] {
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
        assert_eq!(support::psql(url, "select 1").as_deref(), Ok("1"));
    }
    let settings = support::psql(
        &first,
        "select concat_ws(' ', current_setting('fsync'), current_setting('synchronous_commit'), \
         current_setting('max_connections'), current_setting('listen_addresses'))",
    );
    assert_eq!(settings.as_deref(), Ok("on on 500 127.0.0.1"));

    let tables = "select count(*) from pg_tables where schemaname = 'public'";
    assert_eq!(support::psql(&second, tables).as_deref(), Ok("0"));
    support::psql(&first, "create table webhooks (id text primary key)").unwrap();
    assert_eq!(support::psql(&first, tables).as_deref(), Ok("1"));
    assert_eq!(support::psql(&second, tables).as_deref(), Ok("0"));

    support::pg_drop_database(&second).unwrap();
    assert!(support::psql(&second, "select 1").is_err());
}
