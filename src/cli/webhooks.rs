//! `palo-webhooks webhooks ...`: create, list, get, update, delete, test, enable, rotate a
//! webhook's secret, show its Ed25519 public key, through the API; the delivery options'
//! flags are in [`super::options`].

use anyhow::Result;
use clap::Subcommand;

use super::client::{encode_component, query, PageArgs, Request};
use super::jobs;
use super::options::{options_body, DeliveryOptionArgs};
use super::output::WEBHOOK_COLUMNS;
use crate::api::options::PublicKeyOut;
use crate::api::types::{
    AttemptResultOut, EnableIn, Page, RotateSecretIn, WebhookIn, WebhookOut, WebhookPatch,
};

/// Printed after a rotation: what changes for receivers at once.
const ROTATION_NOTE: &str = "X-Palo-Signature is signed with the new secret from now on: a receiver that checks only it (the spec's verify_signature) refuses deliveries until it has the new secret. webhook-signature carries both secrets until previous_secret_expires_at. To rotate without a gap, give receivers the new secret first (README, Security: rotation with overlap).";

/// `webhooks` actions.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
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
    /// Rotate its secret: the new one signs X-Palo-Signature at once (receivers checking only
    /// it need the new secret now); the old one also signs webhook-signature during the grace
    /// period. Prints the new secret (shown once). See README, Security.
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
    /// Recover or replay (tracked jobs).
    #[command(flatten)]
    Jobs(jobs::WebhookJobCommand),
}

/// The request of a `webhooks` action.
///
/// # Errors
/// A delivery option flag that does not parse or a credential file that cannot be read.
pub(super) fn webhook_request(action: WebhookCommand) -> Result<Request> {
    let webhook = |id: &str, tail: &str| format!("/api/webhooks/{}{tail}", encode_component(id));
    Ok(match action {
        WebhookCommand::Jobs(action) => jobs::webhook_job_request(action)?,
        WebhookCommand::Create {
            target_url,
            events,
            secret,
            description,
            inactive,
            organization_id,
            options,
        } => {
            let body = WebhookIn {
                url: target_url,
                events,
                secret,
                active: Some(!inactive),
                description,
                organization_id,
                ..WebhookIn::default()
            }
            .with_options(options_body(*options)?);
            Request::with_body::<_, WebhookOut>(
                "POST",
                "/api/webhooks".to_owned(),
                &body,
                WEBHOOK_COLUMNS,
            )?
        }
        WebhookCommand::List {
            organization_id,
            page,
        } => Request::without_body::<Page<WebhookOut>>(
            "GET",
            format!(
                "/api/webhooks{}",
                query(
                    [("organization_id", organization_id)]
                        .into_iter()
                        .chain(page.pairs())
                )
            ),
            WEBHOOK_COLUMNS,
        ),
        WebhookCommand::Get { id } => {
            Request::without_body::<WebhookOut>("GET", webhook(&id, ""), WEBHOOK_COLUMNS)
        }
        WebhookCommand::Update {
            id,
            target_url,
            events,
            secret,
            active,
            description,
            options,
        } => {
            let body = WebhookPatch {
                url: target_url,
                events,
                secret,
                active,
                description,
                ..WebhookPatch::default()
            }
            .with_options(options_body(*options)?);
            Request::with_body::<_, WebhookOut>("PATCH", webhook(&id, ""), &body, WEBHOOK_COLUMNS)?
        }
        WebhookCommand::PublicKey { id } => Request::without_body::<PublicKeyOut>(
            "GET",
            webhook(&id, "/public-key"),
            WEBHOOK_COLUMNS,
        ),
        WebhookCommand::Delete { id } => Request::no_content("DELETE", webhook(&id, "")),
        WebhookCommand::Test { id } => Request::without_body::<AttemptResultOut>(
            "POST",
            webhook(&id, "/test"),
            WEBHOOK_COLUMNS,
        ),
        WebhookCommand::Enable {
            id, deliver_held, ..
        } => Request::with_body::<_, WebhookOut>(
            "POST",
            webhook(&id, "/enable"),
            &EnableIn { deliver_held },
            WEBHOOK_COLUMNS,
        )?,
        WebhookCommand::RotateSecret { id, secret, grace } => Request::with_body::<_, WebhookOut>(
            "POST",
            webhook(&id, "/rotate-secret"),
            &RotateSecretIn { secret, grace },
            WEBHOOK_COLUMNS,
        )?
        .with_note(ROTATION_NOTE),
    })
}
