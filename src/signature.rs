//! Webhook signatures (spec "Sécurisation des webhooks", and Standard Webhooks).
//!
//! Owner's rule: pure functions over bytes. Two signatures go with every attempt:
//!
//! - `X-Palo-Signature: sha256=<lowercase hex HMAC-SHA256(key = UTF-8 bytes of the secret,
//!   message = body)>`, exactly what the spec's Python `verify_signature` recomputes with
//!   `secret.encode()`;
//! - the Standard Webhooks headers (<https://www.standardwebhooks.com>, spec v1):
//!   `webhook-id` (the delivery id, stable across attempts), `webhook-timestamp` (Unix
//!   seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "<webhook-id>.<webhook-timestamp>.<body>">`, so a receiver can refuse replays by age.
//!   The HMAC key is again the UTF-8 bytes of the secret; a Standard Webhooks library takes
//!   it as `whsec_` + base64(those bytes).
//! - opt-in per webhook (issue 16): a `v1a,<base64 Ed25519 signature of the same message>`
//!   entry in `webhook-signature` (Standard Webhooks' asymmetric scheme), verified with the
//!   webhook's public key in the form `whpk_` + base64 of its 32 bytes.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Palo-Signature";
/// Standard Webhooks: the message id (our delivery id).
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: Unix seconds of the attempt.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: space-separated `v1,<base64>` signatures, one per active secret.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// One Standard Webhooks signature, `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
/// `key` is the secret's bytes (UTF-8 of a webhook secret; the base64-decoded part after
/// `whsec_` for a Standard Webhooks secret).
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mac = standard_mac(key, msg_id, &timestamp.to_string(), body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The HMAC-SHA256 of the Standard Webhooks message `"<msg_id>.<timestamp>.<body>"` under
/// `key`, streamed (the body is not copied). `timestamp` is the header's text as sent.
fn standard_mac(key: &[u8], msg_id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The Standard Webhooks message `"<msg_id>.<timestamp>.<body>"` as one buffer, for Ed25519
/// (which signs and verifies a whole message).
fn standard_message(msg_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(msg_id.len() + timestamp.len() + 2 + body.len());
    message.extend_from_slice(msg_id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    message
}

/// The receiver's half of [`standard_signature`]: whether some `v1,` entry of a
/// `webhook-signature` header is the HMAC of `"<msg_id>.<timestamp>.<body>"` under `key`
/// (compared in constant time). `timestamp` is the `webhook-timestamp` header's text.
pub fn verify_standard(
    header: &str,
    key: &[u8],
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
) -> bool {
    header.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|expected| {
                standard_mac(key, msg_id, timestamp, body)
                    .verify_slice(&expected)
                    .is_ok()
            })
    })
}

/// The receiver's half of [`ed25519_signature`]: whether some `v1a,` entry of a
/// `webhook-signature` header is an Ed25519 signature (RFC 8032) of
/// `"<msg_id>.<timestamp>.<body>"` by `public_key` (32 bytes).
pub fn verify_ed25519(
    header: &str,
    public_key: &[u8],
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
) -> bool {
    let message = standard_message(msg_id, timestamp, body);
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key);
    header.split(' ').any(|entry| {
        entry
            .strip_prefix("v1a,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|signature| key.verify(&message, &signature).is_ok())
    })
}

/// One Standard Webhooks asymmetric signature, `v1a,<base64 Ed25519(seed, "<id>.<timestamp>.<body>")>`
/// (RFC 8032). `seed` is the 32-byte private key.
pub fn ed25519_signature(seed: &[u8; 32], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .expect("any 32 bytes are an Ed25519 seed");
    let message = standard_message(msg_id, &timestamp.to_string(), body);
    format!(
        "v1a,{}",
        base64::engine::general_purpose::STANDARD.encode(pair.sign(&message).as_ref())
    )
}

/// The verification key of `seed` as Standard Webhooks writes it: `whpk_` + base64 of the
/// 32-byte Ed25519 public key.
pub fn ed25519_public_key(seed: &[u8; 32]) -> String {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .expect("any 32 bytes are an Ed25519 seed");
    format!(
        "whpk_{}",
        base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
    )
}

/// The 32 seed bytes of a stored seed (64 hex characters); `None` when it is not that.
pub fn ed25519_seed(hex_seed: &str) -> Option<[u8; 32]> {
    hex::decode(hex_seed).ok()?.try_into().ok()
}

/// The `whsec_...` form of a webhook secret, for Standard Webhooks libraries: `whsec_` +
/// base64 of the secret's UTF-8 bytes.
pub fn standard_secret(secret: &str) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret.as_bytes())
    )
}

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
    fn ed25519_keys_and_signatures_follow_rfc_8032_and_standard_webhooks() {
        // RFC 8032 §7.1, test 1: the seed and its public key.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        assert_eq!(
            ed25519_public_key(&seed),
            format!(
                "whpk_{}",
                base64::engine::general_purpose::STANDARD.encode(&public)
            )
        );
        let signature = ed25519_signature(&seed, "msg_1", 1_700_000_000, b"{}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature.strip_prefix("v1a,").unwrap())
            .unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(b"msg_1.1700000000.{}", &raw)
            .unwrap();
        assert_eq!(ed25519_seed(&hex::encode(seed)), Some(seed));
        assert_eq!(ed25519_seed("zz"), None);
    }

    #[test]
    fn matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_webhooks_published_example_verifies() {
        // The example of the Standard Webhooks specification and its reference libraries'
        // tests: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek,
        // timestamp 1614265330, body {"test": 2432232314}.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(standard_secret("ab"), "whsec_YWI=");
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
