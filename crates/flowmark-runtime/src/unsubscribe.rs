//! One-click unsubscribe links (RFC 8058): `<base>/u/<subject>/<signature>`, where the
//! signature is an HMAC-SHA256 of the subject id under the deployment's secret, so a link
//! works without a lookup and cannot be forged for another contact.
//!
//! Invariant: `verify` accepts exactly the signatures `link` makes, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// The setting under which the deployment's link secret is stored.
pub const SECRET_SETTING: &str = "unsubscribe_secret";

/// What a subject id keeps unescaped in a path segment: RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Where a contact's one-click unsubscribe link points.
pub fn link(base_url: &str, secret: &[u8], subject_id: &str) -> String {
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, subject_id).finalize().into_bytes());
    format!("{}/u/{}/{signature}", base_url.trim_end_matches('/'), utf8_percent_encode(subject_id, PATH_SEGMENT))
}

/// Does `signature` belong to `subject_id` under `secret`?
pub fn verify(secret: &[u8], subject_id: &str, signature: &str) -> bool {
    URL_SAFE_NO_PAD.decode(signature).is_ok_and(|bytes| mac(secret, subject_id).verify_slice(&bytes).is_ok())
}

fn mac(secret: &[u8], subject_id: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(subject_id.as_bytes());
    mac
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
