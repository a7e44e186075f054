//! Integration tests: each starts the real `palo-webhooks` binary on 127.0.0.1 with a
//! temporary db and real HTTP receivers.

mod browser;
mod cli;
mod delivery;
mod hardening;
mod hostile;
mod ingest;
mod isolation;
mod layout;
mod operations;
mod recovery;
mod security;
mod support;
mod tls;
mod torture;
mod ui;
