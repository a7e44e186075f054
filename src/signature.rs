//! Webhook signatures (spec "Sécurisation des webhooks").
//!
//! Owner's rule: pure functions over bytes. The header value is
//! `sha256=<lowercase hex HMAC-SHA256(key = UTF-8 bytes of the secret, message = body)>`,
//! exactly what the spec's Python `verify_signature` recomputes with `secret.encode()`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Palo-Signature";

/// Computes the `X-Palo-Signature` value for `body` signed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a `sha256=<hex>` header value against `body` and `secret` in constant time.
/// Returns false for any malformed header, including uppercase hex: like the spec's Python
/// `verify_signature` (which compares the whole string), only the exact lowercase form
/// verifies. The daemon only signs; this is the receiver's half, kept here for tests and for
/// Rust receivers.
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.strip_prefix("sha256=") else {
        return false;
    };
    // Found by the signature_header fuzz target: `hex` also decodes uppercase.
    if hex_digest.len() != 64
        || !hex_digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return false;
    }
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_own_signature_and_refuses_others() {
        let body = br#"{"event_id":"evt_1"}"#;
        let header = sign("s3cret-with-é", body);
        assert!(verify("s3cret-with-é", body, &header));
        assert!(!verify("other", body, &header));
        assert!(!verify("s3cret-with-é", b"{}", &header));
        assert!(!verify("s3cret-with-é", body, "sha1=00"));
        assert!(!verify(
            "s3cret-with-é",
            body,
            &header.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }
}
