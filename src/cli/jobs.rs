//! `palo-webhooks webhooks recover|replay` and `palo-webhooks jobs list|get|cancel` (issue
//! 15, item 5): recovery and replay jobs through the API.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::{encode_component, Request};

/// Columns of a job in tables.
pub(super) const JOB_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "webhook_id",
    "state",
    "matched",
    "queued",
    "succeeded",
    "failed",
    "created_at",
];

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
        /// Page size (1-500).
        #[arg(long)]
        limit: Option<usize>,
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
pub(super) fn webhook_job_request(action: WebhookJobCommand) -> Request {
    let (path, body) = match action {
        WebhookJobCommand::Recover {
            id,
            since,
            until,
            statuses,
        } => {
            let mut body = json!({ "since": since });
            if let Some(until) = until {
                body["until"] = json!(until);
            }
            if !statuses.is_empty() {
                body["statuses"] = json!(statuses);
            }
            (
                format!("/api/webhooks/{}/recover", encode_component(&id)),
                body,
            )
        }
        WebhookJobCommand::Replay {
            id,
            since,
            until,
            event_types,
        } => {
            let mut body = json!({ "since": since });
            if let Some(until) = until {
                body["until"] = json!(until);
            }
            if !event_types.is_empty() {
                body["event_types"] = json!(event_types);
            }
            (
                format!("/api/webhooks/{}/replay", encode_component(&id)),
                body,
            )
        }
    };
    Request {
        method: "POST",
        path,
        body: Some(body.to_string().into_bytes()),
        columns: JOB_COLUMNS,
    }
}

/// The request of a `jobs` action.
///
/// # Errors
/// None today; the signature matches the other request builders.
pub(super) fn job_request(action: JobCommand) -> Result<Request> {
    let (method, path) = match action {
        JobCommand::List {
            organization_id,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(org) = organization_id {
                query.push(format!("organization_id={}", encode_component(&org)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            ("GET", format!("/api/jobs{query}"))
        }
        JobCommand::Get { id } => ("GET", format!("/api/jobs/{}", encode_component(&id))),
        JobCommand::Cancel { id } => (
            "POST",
            format!("/api/jobs/{}/cancel", encode_component(&id)),
        ),
    };
    Ok(Request {
        method,
        path,
        body: None,
        columns: JOB_COLUMNS,
    })
}
