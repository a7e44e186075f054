//! Several daemons on one database (issue 14, item 3): what one daemon's commits tell the
//! others.
//!
//! Changes travel with `NOTIFY palo_changes` inside the committing transaction, so the
//! others hear of exactly what committed. One line per change: `i <webhook> <delivery>
//! <from|-> <to|->` for a retry-index entry that appeared, moved or went away, `w <webhook>`
//! for a webhook created, changed or deleted (they read it again), `k` when API keys
//! changed (they reload theirs). Accepted bodies are not sent: a first attempt on another
//! daemon reads its body.

use crate::store::{Change, StoreError};

/// The channel every daemon of a cluster listens on.
pub const CHANNEL: &str = "palo_changes";

/// PostgreSQL's limit on a notification's payload is 8000 bytes; lines are packed below it.
const PAYLOAD_BYTES: usize = 7900;

/// One line per change others must hear of (see the module documentation).
pub(super) fn encode(changes: &[Change]) -> Vec<String> {
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    changes
        .iter()
        .filter_map(|change| match change {
            Change::Index {
                webhook,
                delivery,
                from,
                to,
            } => Some(format!(
                "i {webhook} {delivery} {} {}",
                time(*from),
                time(*to)
            )),
            Change::Webhook { id, .. } => Some(format!("w {id}")),
            Change::Keys => Some("k".to_owned()),
            Change::Accepted { .. } => None,
        })
        .collect()
}

/// Sends `changes` to the other daemons within `txn` (delivered only if it commits).
///
/// # Errors
/// [`StoreError`] when the server refuses the notification; the transaction then fails.
pub(super) async fn notify_changes(
    txn: &deadpool_postgres::Transaction<'_>,
    changes: &[Change],
) -> Result<(), StoreError> {
    let mut payloads: Vec<String> = Vec::new();
    for line in encode(changes) {
        match payloads.last_mut() {
            Some(last) if last.len() + 1 + line.len() <= PAYLOAD_BYTES => {
                last.push('\n');
                last.push_str(&line);
            }
            _ => payloads.push(line),
        }
    }
    if payloads.is_empty() {
        return Ok(());
    }
    txn.execute(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
        &[&CHANNEL, &payloads],
    )
    .await?;
    Ok(())
}
