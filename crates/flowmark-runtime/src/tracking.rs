//! Email engagement tracking: links in HTML email rewritten to pass through Flowmark, and an
//! optional open pixel, so clicks and opens come back as the events journeys wait for
//! (`Email Link Clicked`, `Email Opened`, with `email_id` = the sending effect's key).
//!
//! A tracking URL is `<base>/t/c/<token>` (click) or `<base>/t/o/<token>` (open), where the
//! token is the base64url of `{"k": key, "s": subject, "u": url}` and an HMAC-SHA256 of it
//! under the deployment's secret: nobody can make Flowmark redirect to a URL it did not put in
//! an email, or record an event for someone else.
//!
//! Invariant: `read` accepts exactly the tokens `token` makes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a tracking token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// The key of the effect that sent the email.
    #[serde(rename = "k")]
    pub key: String,
    /// The contact it went to.
    #[serde(rename = "s")]
    pub subject: String,
    /// Where a click goes (empty for the open pixel).
    #[serde(rename = "u", default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

/// The event a click records.
pub const CLICKED_EVENT: &str = "Email Link Clicked";
/// The event an open records.
pub const OPENED_EVENT: &str = "Email Opened";

/// A signed token for `tracked`.
pub fn token(secret: &[u8], tracked: &Tracked) -> String {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(tracked).unwrap_or_default());
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, &body).finalize().into_bytes());
    format!("{body}.{signature}")
}

/// What a token carries, if its signature is this deployment's.
pub fn read(secret: &[u8], token: &str) -> Option<Tracked> {
    let (body, signature) = token.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    mac(secret, body).verify_slice(&signature).ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
}

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"track:");
    mac.update(body.as_bytes());
    mac
}

/// Rewrites, when `links` is set, every `href` to an http(s) URL in `html` through the click
/// tracker, and, when `pixel` is set, adds the open pixel at the end of the body. Links to
/// other schemes (`mailto:`, `tel:`, anchors) are left alone.
pub fn rewrite(
    html: &str,
    base_url: &str,
    secret: &[u8],
    key: &str,
    subject: &str,
    links: bool,
    pixel: bool,
) -> String {
    let base = base_url.trim_end_matches('/');
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(found) = find_href(rest).filter(|_| links) {
        let (start, quote) = found;
        let value_start = start + 1;
        let Some(length) = rest[value_start..].find(quote) else { break };
        let url = &rest[value_start..value_start + length];
        out.push_str(&rest[..value_start]);
        let decoded = url.replace("&amp;", "&");
        if decoded.starts_with("http://") || decoded.starts_with("https://") {
            let tracked = Tracked { key: key.to_owned(), subject: subject.to_owned(), url: decoded };
            out.push_str(&format!("{base}/t/c/{}", token(secret, &tracked)));
        } else {
            out.push_str(url);
        }
        rest = &rest[value_start + length..];
    }
    out.push_str(rest);
    if pixel {
        let tracked = Tracked { key: key.to_owned(), subject: subject.to_owned(), url: String::new() };
        let img = format!(
            "<img src=\"{base}/t/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0\">",
            token(secret, &tracked)
        );
        match out.rfind("</body>") {
            Some(at) => out.insert_str(at, &img),
            None => out.push_str(&img),
        }
    }
    out
}

/// The position of the opening quote of the next `href=` value, and the quote.
fn find_href(text: &str) -> Option<(usize, char)> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("href") {
        let mut i = from + at + 4;
        let bytes = lower.as_bytes();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                return Some((i, bytes[i] as char));
            }
        }
        from = from + at + 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_go_through_the_tracker_and_tokens_cannot_be_forged() {
        let html =
            "<p><a href=\"https://example.com/guide?a=1&amp;b=2\">Guide</a> <a HREF='mailto:x@y.z'>Mail</a></p></body>";
        let rewritten = rewrite(html, "https://t.example.com/", b"secret", "1-thanks-2", "ada", true, true);
        assert!(rewritten.contains("href=\"https://t.example.com/t/c/"), "{rewritten}");
        assert!(rewritten.contains("HREF='mailto:x@y.z'"), "other schemes are left alone");
        assert!(rewritten.contains("/t/o/") && rewritten.ends_with("</body>"), "the pixel goes inside the body");
        let token = rewritten.split("/t/c/").nth(1).unwrap().split('"').next().unwrap();
        let tracked = read(b"secret", token).unwrap();
        assert_eq!(tracked.url, "https://example.com/guide?a=1&b=2");
        assert_eq!((tracked.key.as_str(), tracked.subject.as_str()), ("1-thanks-2", "ada"));
        assert_eq!(read(b"other", token), None, "another deployment's secret");
        let (body, signature) = token.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"k":"1-thanks-2","s":"ada","u":"https://evil.example"}"#);
        assert_eq!(read(b"secret", &format!("{forged}.{signature}")), None, "a changed URL");
        assert!(read(b"secret", body).is_none());
    }
}
