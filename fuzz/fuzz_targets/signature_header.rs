//! `X-Palo-Signature` headers: `signature::verify` on arbitrary (secret, body, header), and
//! on the correct header changed in one byte.
//!
//! Properties: nothing panics; a header made by `sign` verifies; a header that differs from
//! the correct one in any byte does not (the spec's Python `verify_signature` compares the
//! header text, so a receiver following it refuses such a header too).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use palo_webhooks::signature::{sign, verify};

#[derive(Arbitrary, Debug)]
struct Input {
    secret: String,
    body: Vec<u8>,
    /// Any header, verified against (secret, body).
    header: String,
    /// Which byte of the correct header to change.
    position: u8,
    /// What to XOR into it (0 is replaced by 1, so the header always changes).
    flip: u8,
}

fuzz_target!(|input: Input| {
    let Input {
        secret,
        body,
        header,
        position,
        flip,
    } = input;
    let _ = verify(&secret, &body, &header);

    let good = sign(&secret, &body);
    assert!(verify(&secret, &body, &good), "own signature refused");

    let mut bad = good.clone().into_bytes();
    let i = usize::from(position) % bad.len();
    bad[i] ^= flip.max(1);
    // A header is text: a change that breaks UTF-8 cannot reach `verify`.
    if let Ok(bad) = String::from_utf8(bad) {
        assert!(
            !verify(&secret, &body, &bad),
            "{bad:?} accepted in place of {good:?}"
        );
    }
});
