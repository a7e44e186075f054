//! `palo-webhooks deliveries ...`: search the delivery log, show a delivery with every
//! attempt, redeliver.

use clap::{Args, Subcommand};

use super::client::{encode_component, query, PageArgs, Request};
use super::output::DELIVERY_COLUMNS;
use crate::api::types::{AttemptResultOut, DeliveryOut, Page};

/// The filters of `deliveries list`.
#[derive(Debug, Args)]
pub struct ListDeliveries {
    /// Only deliveries to this webhook.
    #[arg(long)]
    pub webhook: Option<String>,
    /// The organization whose log to search (required with the admin token).
    #[arg(long)]
    pub organization_id: Option<String>,
    /// Only these statuses, repeated or comma-separated (pending, retrying, held,
    /// succeeded, failed, cancelled).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only deliveries whose last attempt came to one of these, repeated or
    /// comma-separated (2xx, 3xx, 4xx, 5xx, other_status, timeout, connect, dns, tls,
    /// io, blocked_address, auth).
    #[arg(long, value_delimiter = ',')]
    pub outcome: Vec<String>,
    /// Only this event type.
    #[arg(long, alias = "type")]
    pub event_type: Option<String>,
    /// Only the deliveries of this event.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Created at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Created at or before (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `deliveries` actions.
#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// Search the delivery log, newest first (`GET /api/deliveries`); with `--webhook`
    /// alone (and at most one `--status`, `--event-type`), that webhook's deliveries, which
    /// needs no `--organization-id` with the admin token.
    List(Box<ListDeliveries>),
    /// Show a delivery and every attempt (status, duration, error, the start of the
    /// response body; `--json` for the whole body).
    Get {
        /// Delivery id.
        id: String,
    },
    /// Make one manual attempt now and show it.
    Redeliver {
        /// Delivery id.
        id: String,
    },
}

/// The request of a `deliveries` action.
pub(super) fn delivery_request(action: DeliveryCommand) -> Request {
    match action {
        DeliveryCommand::List(list) => {
            let ListDeliveries {
                webhook,
                organization_id,
                status,
                outcome,
                event_type,
                event_id,
                since,
                until,
                page,
            } = *list;
            let joined = |values: Vec<String>| (!values.is_empty()).then(|| values.join(","));
            let search_only = organization_id.is_some()
                || !outcome.is_empty()
                || status.len() > 1
                || event_id.is_some()
                || since.is_some()
                || until.is_some();
            let path = match webhook {
                Some(webhook) if !search_only => format!(
                    "/api/webhooks/{}/deliveries{}",
                    encode_component(&webhook),
                    query(
                        [("status", joined(status)), ("event_type", event_type)]
                            .into_iter()
                            .chain(page.pairs())
                    )
                ),
                webhook => format!(
                    "/api/deliveries{}",
                    query(
                        [
                            ("organization_id", organization_id),
                            ("webhook_id", webhook),
                            ("status", joined(status)),
                            ("outcome", joined(outcome)),
                            ("event_type", event_type),
                            ("event_id", event_id),
                            ("since", since),
                            ("until", until),
                        ]
                        .into_iter()
                        .chain(page.pairs())
                    )
                ),
            };
            Request::without_body::<Page<DeliveryOut>>("GET", path, DELIVERY_COLUMNS)
        }
        DeliveryCommand::Get { id } => Request::without_body::<DeliveryOut>(
            "GET",
            format!("/api/deliveries/{}", encode_component(&id)),
            DELIVERY_COLUMNS,
        ),
        DeliveryCommand::Redeliver { id } => Request::without_body::<AttemptResultOut>(
            "POST",
            format!("/api/deliveries/{}/redeliver", encode_component(&id)),
            DELIVERY_COLUMNS,
        ),
    }
}
