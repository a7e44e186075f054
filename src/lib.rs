//! palo-webhooks: a single-binary webhook delivery daemon.
//!
//! See docs/ARCHITECTURE.md for the map of modules and the path of an event.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod api;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod event;
pub mod filter;
pub mod ids;
pub mod json_strict;
pub mod lifecycle;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod retry;
pub mod scheduler;
pub mod server;
pub mod signature;
pub mod store;
