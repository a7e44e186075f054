//! `palo-webhooks webhooks recover|replay` and `palo-webhooks jobs list|get|cancel` (issue
//! 15, item 5): recovery and replay jobs through the API.

use anyhow::Result;
use clap::Subcommand;

use super::client::{encode_component, query, PageArgs, Request};
use super::output::JOB_COLUMNS;
use crate::api::jobs::{JobOut, RecoverIn, ReplayIn};
use crate::api::types::Page;

/// The webhook actions that start a job.
#[derive(Debug, Subcommand)]
pub enum WebhookJobCommand {
    /// Re-send the webhook's deliveries of a time window (default: the failed ones) as a
    /// tracked job; prints the job (follow it with `jobs get ID`).
    Recover {
        /// Webhook id.
        id: String,
        /// Start of the window, RFC 3339 (deliveries created at or after it).
        #[arg(long)]
        since: String,
        /// End of the window, RFC 3339, exclusive [default: now].
        #[arg(long)]
        until: Option<String>,
        /// Statuses to re-send (failed, succeeded, cancelled), comma-separated [default:
        /// failed].
        #[arg(long = "status", value_delimiter = ',')]
        statuses: Vec<String>,
    },
    /// Send the webhook the events of its organization in a time window that it never had
    /// (subscribed later, or created after) as a tracked job.
    Replay {
        /// Webhook id.
        id: String,
        /// Start of the window, RFC 3339 (events received at or after it).
        #[arg(long)]
        since: String,
        /// End of the window, RFC 3339, exclusive [default: now].
        #[arg(long)]
        until: Option<String>,
        /// Event types, comma-separated [default: what the webhook subscribes to now].
        #[arg(long = "event-type", value_delimiter = ',')]
        event_types: Vec<String>,
    },
}

/// `jobs` actions.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List recovery and replay jobs, newest first.
    List {
        /// With the admin token: only this organization's.
        #[arg(long)]
        organization_id: Option<String>,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a job and its progress.
    Get {
        /// Job id.
        id: String,
    },
    /// Cancel a job: it queues nothing more (what it queued already goes on).
    Cancel {
        /// Job id.
        id: String,
    },
}

/// The request of a webhook job action.
///
/// # Errors
/// The body cannot be serialized (never with these types).
pub(super) fn webhook_job_request(action: WebhookJobCommand) -> Result<Request> {
    let nonempty = |list: Vec<String>| (!list.is_empty()).then_some(list);
    match action {
        WebhookJobCommand::Recover {
            id,
            since,
            until,
            statuses,
        } => Request::with_body::<_, JobOut>(
            "POST",
            format!("/api/webhooks/{}/recover", encode_component(&id)),
            &RecoverIn {
                since,
                until,
                statuses: nonempty(statuses),
            },
            JOB_COLUMNS,
        ),
        WebhookJobCommand::Replay {
            id,
            since,
            until,
            event_types,
        } => Request::with_body::<_, JobOut>(
            "POST",
            format!("/api/webhooks/{}/replay", encode_component(&id)),
            &ReplayIn {
                since,
                until,
                event_types: nonempty(event_types),
            },
            JOB_COLUMNS,
        ),
    }
}

/// The request of a `jobs` action.
///
/// # Errors
/// None today; the signature matches the other request builders.
pub(super) fn job_request(action: JobCommand) -> Result<Request> {
    let job = |id: &str, tail: &str| format!("/api/jobs/{}{tail}", encode_component(id));
    Ok(match action {
        JobCommand::List {
            organization_id,
            page,
        } => Request::without_body::<Page<JobOut>>(
            "GET",
            format!(
                "/api/jobs{}",
                query(
                    [("organization_id", organization_id)]
                        .into_iter()
                        .chain(page.pairs())
                )
            ),
            JOB_COLUMNS,
        ),
        JobCommand::Get { id } => Request::without_body::<JobOut>("GET", job(&id, ""), JOB_COLUMNS),
        JobCommand::Cancel { id } => {
            Request::without_body::<JobOut>("POST", job(&id, "/cancel"), JOB_COLUMNS)
        }
    })
}
