//! `palo-webhooks webhooks ...`: create, list, get, update, delete, test, enable, rotate a
//! webhook's secret, show its Ed25519 public key, through the API; the delivery options'
//! flags are in [`super::options`].

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use super::options::{options_body, DeliveryOptionArgs};
use super::{encode_component, jobs, query, PageArgs, Request};

/// Columns of a webhook in tables.
pub(super) const WEBHOOK_COLUMNS: &[&str] = &[
    "id",
    "organization_id",
    "url",
    "events",
    "active",
    "disabled",
    "description",
];

/// `webhooks` actions.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Recover or replay (tracked jobs).
    #[command(flatten)]
    Jobs(jobs::WebhookJobCommand),
    /// Create a webhook; prints the generated secret once if you give none.
    Create {
        /// The webhook's target URL (https).
        #[arg(value_name = "URL")]
        target_url: String,
        /// Event types, comma-separated: names, "*", or wildcards like "ticket.*".
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Signing secret (at least 32 characters); generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Create it inactive.
        #[arg(long)]
        inactive: bool,
        /// Organization (required with the admin token).
        #[arg(long)]
        organization_id: Option<String>,
        /// Delivery options.
        #[command(flatten)]
        options: Box<DeliveryOptionArgs>,
    },
    /// List webhooks.
    List {
        /// Only this organization (admin).
        #[arg(long)]
        organization_id: Option<String>,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one webhook.
    Get {
        /// Webhook id.
        id: String,
    },
    /// Change a webhook.
    Update {
        /// Webhook id.
        id: String,
        /// New target URL (`--url` is the daemon's address).
        #[arg(long = "webhook-url", value_name = "URL")]
        target_url: Option<String>,
        /// New event types, comma-separated.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// New secret.
        #[arg(long)]
        secret: Option<String>,
        /// Activate (true) or deactivate (false).
        #[arg(long)]
        active: Option<bool>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// Delivery options (only those given change).
        #[command(flatten)]
        options: Box<DeliveryOptionArgs>,
    },
    /// Show the Ed25519 public key that verifies its `v1a` signatures (`whpk_...`).
    PublicKey {
        /// Webhook id.
        id: String,
    },
    /// Delete a webhook (its unfinished deliveries, pending, retrying or held, are
    /// cancelled; their log stays: `deliveries list --organization-id ORG --webhook ID`).
    Delete {
        /// Webhook id.
        id: String,
    },
    /// Send a webhook.test event to it now and show the attempt.
    Test {
        /// Webhook id.
        id: String,
    },
    /// Enable a webhook the daemon disabled (410 Gone, a failing streak): its held
    /// deliveries are delivered (`--deliver-held`) or cancelled (`--discard-held`).
    #[command(group = clap::ArgGroup::new("held").required(true).multiple(false))]
    Enable {
        /// Webhook id.
        id: String,
        /// Queue every held delivery again, in due order.
        #[arg(long, group = "held")]
        deliver_held: bool,
        /// Cancel every held delivery.
        #[arg(long, group = "held")]
        discard_held: bool,
    },
    /// Rotate its secret: the new one signs X-Palo-Signature at once; the old one also signs
    /// webhook-signature during the grace period. Prints the new secret (shown once).
    RotateSecret {
        /// Webhook id.
        id: String,
        /// The new secret (at least 32 characters); generated when omitted.
        #[arg(long)]
        secret: Option<String>,
        /// How long the old secret keeps signing, e.g. 24h (default 24h, at most 7d).
        #[arg(long)]
        grace: Option<String>,
    },
}

pub(super) fn webhook_request(action: WebhookCommand) -> Result<Request> {
    let (method, path, body) = match action {
        WebhookCommand::Jobs(action) => return Ok(jobs::webhook_job_request(action)),
        WebhookCommand::Create {
            target_url,
            events,
            secret,
            description,
            inactive,
            organization_id,
            options,
        } => {
            let mut body = json!({"url": target_url, "events": events, "active": !inactive});
            body.as_object_mut()
                .expect("an object")
                .extend(options_body(*options)?);
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(o) = organization_id {
                body["organization_id"] = json!(o);
            }
            ("POST", "/api/webhooks".to_owned(), Some(body))
        }
        WebhookCommand::List {
            organization_id,
            page,
        } => (
            "GET",
            format!(
                "/api/webhooks{}",
                query(
                    [("organization_id", organization_id),]
                        .into_iter()
                        .chain(page.pairs())
                )
            ),
            None,
        ),
        WebhookCommand::Get { id } => (
            "GET",
            format!("/api/webhooks/{}", encode_component(&id)),
            None,
        ),
        WebhookCommand::Update {
            id,
            target_url,
            events,
            secret,
            active,
            description,
            options,
        } => {
            let mut body = Value::Object(options_body(*options)?);
            for (key, value) in [
                ("url", target_url.map(Value::from)),
                ("events", events.map(Value::from)),
                ("secret", secret.map(Value::from)),
                ("active", active.map(Value::from)),
                ("description", description.map(Value::from)),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            (
                "PATCH",
                format!("/api/webhooks/{}", encode_component(&id)),
                Some(body),
            )
        }
        WebhookCommand::PublicKey { id } => (
            "GET",
            format!("/api/webhooks/{}/public-key", encode_component(&id)),
            None,
        ),
        WebhookCommand::Delete { id } => (
            "DELETE",
            format!("/api/webhooks/{}", encode_component(&id)),
            None,
        ),
        WebhookCommand::Test { id } => (
            "POST",
            format!("/api/webhooks/{}/test", encode_component(&id)),
            None,
        ),
        WebhookCommand::Enable {
            id, deliver_held, ..
        } => (
            "POST",
            format!("/api/webhooks/{}/enable", encode_component(&id)),
            Some(json!({ "deliver_held": deliver_held })),
        ),
        WebhookCommand::RotateSecret { id, secret, grace } => {
            let mut body = json!({});
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            if let Some(g) = grace {
                body["grace"] = json!(g);
            }
            (
                "POST",
                format!("/api/webhooks/{}/rotate-secret", encode_component(&id)),
                Some(body),
            )
        }
    };
    Ok(Request {
        method,
        path,
        body: body.map(|b| b.to_string().into_bytes()),
        columns: WEBHOOK_COLUMNS,
    })
}
