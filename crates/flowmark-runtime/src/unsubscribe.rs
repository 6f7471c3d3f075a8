//! One-click unsubscribe links (RFC 8058): `<base>/u/<subject>/<signature>`, where the
//! signature is an HMAC-SHA256 of the subject id under the deployment's secret, so a link
//! works without a lookup and cannot be forged for another contact.
//!
//! Invariant: `verify` accepts exactly the signatures `link` makes, compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The setting under which the deployment's link secret is stored.
pub const SECRET_SETTING: &str = "unsubscribe_secret";

/// Where a contact's one-click unsubscribe link points.
pub fn link(base_url: &str, secret: &[u8], subject_id: &str) -> String {
    format!("{}/u/{}/{}", base_url.trim_end_matches('/'), encode(subject_id), signature(secret, subject_id))
}

/// Does `signature` belong to `subject_id` under `secret`?
pub fn verify(secret: &[u8], subject_id: &str, signature: &str) -> bool {
    let Some(bytes) = decode_hex(signature) else { return false };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(subject_id.as_bytes());
    mac.verify_slice(&bytes).is_ok()
}

fn signature(secret: &[u8], subject_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(subject_id.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// Percent-encodes a subject id for a path segment (ids are free text).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_for_its_contact_only() {
        let link = link("https://mail.example.com/", b"secret", "ada@example.com");
        assert!(link.starts_with("https://mail.example.com/u/ada%40example.com/"), "{link}");
        let signature = link.rsplit('/').next().unwrap();
        assert!(verify(b"secret", "ada@example.com", signature));
        assert!(!verify(b"secret", "bob@example.com", signature), "another contact");
        assert!(!verify(b"other", "ada@example.com", signature), "another deployment");
        assert!(!verify(b"secret", "ada@example.com", "00"), "malformed");
    }
}
