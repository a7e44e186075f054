//! `palo-webhooks events ...`: send an event, show one, list them, delete a payload.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;

use super::client::{encode_component, query, ApiClient, ClientArgs, PageArgs, Request};
use super::output::{print_human, EVENT_COLUMNS};
use crate::api::types::{EventAccepted, EventOut, Page};

/// `events` actions.
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Send an event: JSON `{"event_type","organization_id","data",...}` from a file or
    /// stdin; prints the event id and the deliveries it created.
    Send {
        /// File to read, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Show an event and its deliveries.
    Get {
        /// The event_id.
        event_id: String,
        /// Organization (admin, when the id exists in several).
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// Delete an event's payload: its stored body becomes a tombstone and its unfinished
    /// deliveries are cancelled; the deliveries and their attempt logs stay.
    DeletePayload {
        /// The event_id.
        event_id: String,
        /// Organization (admin, when the id exists in several).
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// List events, newest first.
    List {
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this organization (admin).
        #[arg(long)]
        organization_id: Option<String>,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
}

/// `events send`: posts the file's JSON as it is (the daemon explains what is wrong with
/// it), then prints the event id and its deliveries, or the answer as JSON with `--json`.
///
/// # Errors
/// The file cannot be read; the daemon refuses the event.
pub(super) async fn send(args: &ClientArgs, file: &Path) -> Result<()> {
    let bytes = super::read_input(file)?;
    let api = ApiClient::new(args)?;
    // The file as it is: the daemon explains what is wrong with it.
    let request = Request {
        body: Some(bytes),
        ..Request::without_body::<EventAccepted>("POST", "/api/events".into(), EVENT_COLUMNS)
    };
    let (status, value) = api.send_with_status(&request).await?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let accepted: EventAccepted = serde_json::from_value(value)?;
    out!(
        "event_id: {}\ndeliveries: {}",
        accepted.event_id,
        accepted.deliveries
    );
    if status == 200 {
        out!("\nThis event_id was accepted before with the same content: nothing new was created (an idempotent replay).");
    } else if accepted.deliveries == 0 {
        out!("\nNo webhook of this organization subscribes to this event type (or its filters leave it out): nothing will be delivered.");
    }
    if !accepted.delivery_ids.is_empty() {
        let rows: Vec<serde_json::Value> = accepted
            .delivery_ids
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        out!("");
        print_human(&serde_json::Value::Array(rows), &["id"]);
        out!(
            "\nfollow one: palo-webhooks deliveries get {}",
            accepted.delivery_ids[0]
        );
    }
    Ok(())
}

/// The request of an `events` action other than `send`.
///
/// # Errors
/// `send`, which [`send`] runs instead.
pub(super) fn event_request(action: EventCommand) -> Result<Request> {
    Ok(match action {
        EventCommand::Send { .. } => anyhow::bail!("events send is not a plain request"),
        EventCommand::Get {
            event_id,
            organization_id,
        } => Request::without_body::<EventOut>(
            "GET",
            format!(
                "/api/events/{}{}",
                encode_component(&event_id),
                query([("organization_id", organization_id)])
            ),
            EVENT_COLUMNS,
        ),
        EventCommand::DeletePayload {
            event_id,
            organization_id,
        } => Request::without_body::<EventOut>(
            "DELETE",
            format!(
                "/api/events/{}/payload{}",
                encode_component(&event_id),
                query([("organization_id", organization_id)])
            ),
            EVENT_COLUMNS,
        ),
        EventCommand::List {
            event_type,
            organization_id,
            page,
        } => Request::without_body::<Page<EventOut>>(
            "GET",
            format!(
                "/api/events{}",
                query(
                    [("type", event_type), ("organization_id", organization_id)]
                        .into_iter()
                        .chain(page.pairs())
                )
            ),
            EVENT_COLUMNS,
        ),
    })
}
