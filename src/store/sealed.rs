//! Optional encryption at rest of webhook signing secrets (issue 5, item 6).
//!
//! Owner's rule: a sealed secret is stored in the same record field as a plain one, as the
//! text `pwenc1:<base64 of nonce (24 bytes) || ciphertext || tag (16 bytes)>`, sealed with
//! XChaCha20-Poly1305 (RFC 8439 with the extended nonce) under the operator's 32-byte key
//! and bound to its webhook (the webhook id is the associated data, so a sealed secret copied
//! into another record does not open). Records are sealed on write and opened on read inside
//! the store only; the rest of the crate sees plain [`Secret`]s.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::ids::WebhookId;
use crate::model::Secret;

/// The prefix of a sealed secret in a record.
pub const SEALED_PREFIX: &str = "pwenc1:";

const NONCE_BYTES: usize = 24;

/// The key that seals webhook secrets. Its `Debug` prints nothing of the key.
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(***)")
    }
}

/// Why a key file or a sealed secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read.
    #[error("cannot read the secrets key file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex characters.
    #[error("the secrets key file {path} must hold 32 bytes as 64 hex characters (create one with `palo-webhooks gen-key --out FILE`)")]
    Format {
        /// The file.
        path: String,
    },
    /// A sealed secret did not open: another key, or a damaged record.
    #[error("a webhook secret does not open with this key (wrong --secrets-key-file, or a damaged record)")]
    WrongKey,
}

impl SecretsKey {
    /// Reads a key file: 64 hex characters (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`SealError::Read`] or [`SealError::Format`], naming the file, never its content.
    pub fn from_file(path: &std::path::Path) -> Result<SecretsKey, SealError> {
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let format = || SealError::Format {
            path: path.display().to_string(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| format())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format())?;
        Ok(SecretsKey::from_bytes(&key))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(key: &[u8; 32]) -> SecretsKey {
        SecretsKey {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// 32 random bytes from the OS, as 64 hex characters: the content of a new key file.
    pub fn generate_hex() -> String {
        crate::ids::random_hex(32)
    }

    /// Seals `secret` for `webhook` with a fresh random nonce.
    pub fn seal(&self, webhook: WebhookId, secret: &Secret) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let aad = webhook.0.to_be_bytes();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.0.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message under 256 GiB");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        )
    }

    /// Opens a value written by [`SecretsKey::seal`] for `webhook`.
    ///
    /// # Errors
    /// [`SealError::WrongKey`] when it is not sealed, or not with this key for this webhook.
    pub fn open(&self, webhook: WebhookId, stored: &str) -> Result<Secret, SealError> {
        let encoded = stored
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::WrongKey)?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::WrongKey)?;
        if bytes.len() < NONCE_BYTES {
            return Err(SealError::WrongKey);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let aad = webhook.0.to_be_bytes();
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SealError::WrongKey)
    }
}

/// Whether a stored secret field is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Of a webhook as stored (secrets not opened): (whether any of its secrets is sealed,
/// whether all of them are). Its secrets are the signing secret, the previous one, and the
/// credentials among its delivery options (issue 16). What opening a store with or without
/// a key decides on.
pub fn sealing_of(stored: &crate::model::Webhook) -> (bool, bool) {
    let all: Vec<bool> = std::iter::once(&stored.secret)
        .chain(stored.previous_secret.as_ref().map(|p| &p.secret))
        .chain(stored.options.credentials())
        .map(|s| is_sealed(&s.0))
        .collect();
    (all.iter().any(|s| *s), all.iter().all(|s| *s))
}

/// What opening a store with `key` (and `previous`, a key being replaced) does with one
/// stored webhook, on either backend: `Ok(None)` nothing, `Ok(Some(webhook))` write it back
/// sealed with `key` (it is returned with its secrets opened: they were plain, or sealed
/// with `previous`). `open(k)` reads the stored webhook with its secrets opened with `k`
/// (`None`: as stored).
///
/// # Errors
/// [`crate::store::StoreError::SecretsKeyRequired`] without `key` when a secret is sealed;
/// [`crate::store::StoreError::Sealed`] when a secret opens with neither key.
pub(crate) fn reseal(
    key: Option<&SecretsKey>,
    previous: Option<&SecretsKey>,
    open: impl Fn(Option<&SecretsKey>) -> Result<crate::model::Webhook, crate::store::StoreError>,
) -> Result<Option<crate::model::Webhook>, crate::store::StoreError> {
    use crate::store::StoreError;
    let (any_sealed, all_sealed) = sealing_of(&open(None)?);
    let Some(key) = key else {
        return if any_sealed {
            Err(StoreError::SecretsKeyRequired)
        } else {
            Ok(None)
        };
    };
    let (webhook, with_previous) = match open(Some(key)) {
        Ok(webhook) => (webhook, false),
        Err(StoreError::Sealed(_)) if previous.is_some() => (open(previous)?, true),
        Err(e) => return Err(e),
    };
    Ok((!all_sealed || with_previous).then_some(webhook))
}

/// Logs how many webhooks [`reseal`] had written back at open (nothing when none).
pub(crate) fn log_resealed(count: usize) {
    if count > 0 {
        tracing::info!(
            webhooks = count,
            "sealed webhook secrets (plain, or of the previous key) with the secrets key"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_webhook() {
        let key = SecretsKey::from_bytes(&[7; 32]);
        let secret = Secret("whsec_abcdefghijklmnopqrstuvwxyz012345".into());
        let sealed = key.seal(WebhookId(1), &secret);
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("abcdefghijklmnop"));
        assert_ne!(
            sealed,
            key.seal(WebhookId(1), &secret),
            "fresh nonce each time"
        );
        assert_eq!(key.open(WebhookId(1), &sealed).unwrap(), secret);
        assert!(
            key.open(WebhookId(2), &sealed).is_err(),
            "bound to its webhook"
        );
        let other = SecretsKey::from_bytes(&[8; 32]);
        assert!(other.open(WebhookId(1), &sealed).is_err());
        // Another last character (a sealed secret ends in 'A' once in 64 runs).
        let mut tampered = sealed.clone();
        let last = tampered.pop();
        tampered.push(if last == Some('A') { 'B' } else { 'A' });
        assert!(key.open(WebhookId(1), &tampered).is_err());
        assert!(format!("{key:?}").contains("***"));
    }

    #[test]
    fn key_files_hold_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("k");
        std::fs::write(&good, format!("{}\n", SecretsKey::generate_hex())).unwrap();
        assert!(SecretsKey::from_file(&good).is_ok());
        let bad = dir.path().join("b");
        std::fs::write(&bad, "0123").unwrap();
        let e = SecretsKey::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("64 hex") && !e.contains("0123"), "{e}");
    }
}
