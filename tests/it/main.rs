//! Integration tests: each starts the real `palo-webhooks` binary on 127.0.0.1 with a
//! temporary db and real HTTP receivers. On redb; `tests/postgres.rs` runs the modules that
//! hold on any store again on PostgreSQL.

/// The store of this binary's daemons (read by `support`).
const BACKEND: support::Backend = support::Backend::Redb;

/// Tests and helpers that only mean something on the redb file (its bytes, `--db`, backups
/// into a file, a full disk): kept here, dropped by `tests/postgres.rs`.
macro_rules! file_only {
    ($($item:item)*) => { $($item)* };
}

mod browser;
mod catalog;
mod cli;
mod conformance;
mod delivery;
mod flow;
mod hardening;
mod hostile;
mod hygiene;
mod ingest;
mod isolation;
mod jobs;
mod layout;
mod lifecycle;
mod openapi;
mod operations;
mod options;
mod ordering;
mod payload;
mod proxy;
mod receivers;
mod recovery;
mod search;
mod security;
mod support;
mod tls;
mod tools;
mod torture;
mod ui;
