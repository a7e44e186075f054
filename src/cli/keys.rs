//! `palo-webhooks keys ...`: organization API keys (admin token only).

use anyhow::Result;
use clap::Subcommand;

use super::client::{encode_component, Request};
use super::output::KEY_COLUMNS;
use crate::api::types::{KeyIn, KeyOut};

/// `keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an organization API key; prints the key once.
    Create {
        /// The organization it acts for.
        #[arg(long)]
        organization_id: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (never the key text).
    List,
    /// Delete a key.
    Delete {
        /// Key id.
        id: String,
    },
}

/// The request of a `keys` action.
///
/// # Errors
/// The body cannot be serialized (never with these types).
pub(super) fn key_request(action: KeyCommand) -> Result<Request> {
    Ok(match action {
        KeyCommand::Create {
            organization_id,
            description,
        } => Request::with_body::<_, KeyOut>(
            "POST",
            "/api/keys".to_owned(),
            &KeyIn {
                organization_id,
                description,
            },
            KEY_COLUMNS,
        )?,
        KeyCommand::List => {
            Request::without_body::<Vec<KeyOut>>("GET", "/api/keys".to_owned(), KEY_COLUMNS)
        }
        KeyCommand::Delete { id } => {
            Request::no_content("DELETE", format!("/api/keys/{}", encode_component(&id)))
        }
    })
}
