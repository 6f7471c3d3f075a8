//! iCalendar (RFC 5545) feeds of people's work: a `VTODO` per open task or approval with its
//! `DUE`, and a `VEVENT` per scheduled publication (an item's `publish_at`).
//!
//! Written by hand: the format needed here is a few properties, and the two rules that matter
//! — text escaping (§3.3.11) and folding lines longer than 75 octets without splitting a
//! UTF-8 character (§3.1) — are short and tested; the feeds are checked with a real parser
//! (Python's `icalendar`) in the server's tests.
//!
//! Invariant: every line ends in CRLF and is at most 75 octets; every component has a `UID`
//! stable across fetches and a `DTSTAMP`.

use flowmark_core::Timestamp;
use flowmark_store::{WorkItem, WorkKind};

/// Most entries one feed holds.
pub const FEED_ENTRIES_MAX: usize = 5_000;
/// The item field a scheduled publication is read from (an RFC 3339 time).
pub const PUBLISH_AT_FIELD: &str = "publish_at";

/// A scheduled publication: an item and when it goes out.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub item_id: String,
    pub title: String,
    pub at: Timestamp,
    pub url: Option<String>,
}

/// The unguessable token of a feed: an HMAC-SHA256 of `calendar:<scope>` (`scope` is a
/// person's email or `workspace`) under the deployment's secret, URL-safe base64. Changing
/// the secret revokes every feed URL.
pub fn token(secret: &[u8], scope: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(secret, scope).finalize().into_bytes())
}

/// Does `token` open the feed of `scope`? Compared in constant time.
pub fn verify_token(secret: &[u8], scope: &str, token: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .is_ok_and(|bytes| mac(secret, scope).verify_slice(&bytes).is_ok())
}

fn mac(secret: &[u8], scope: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"calendar:");
    mac.update(scope.to_lowercase().as_bytes());
    mac
}

/// A calendar named `name` with `work` as to-dos and `publications` as events.
pub fn feed(name: &str, work: &[WorkItem], publications: &[Publication], base_url: &str, now: Timestamp) -> String {
    let mut out = String::new();
    let mut line = |text: String| push_folded(&mut out, &text);
    line("BEGIN:VCALENDAR".to_owned());
    line("VERSION:2.0".to_owned());
    line("PRODID:-//Flowmark//Flowmark//EN".to_owned());
    line("CALSCALE:GREGORIAN".to_owned());
    line(format!("X-WR-CALNAME:{}", escape(name)));
    let stamp = utc(now);
    for item in work.iter().take(FEED_ENTRIES_MAX) {
        line("BEGIN:VTODO".to_owned());
        line(format!("UID:{}@flowmark", escape(&item.id)));
        line(format!("DTSTAMP:{stamp}"));
        line(format!("CREATED:{}", utc(item.created_at)));
        let what = match item.kind {
            WorkKind::Task => "",
            WorkKind::Approval => " [approval]",
        };
        line(format!("SUMMARY:{}", escape(&format!("{}{what}", item.title))));
        if let Some(description) = &item.description {
            line(format!("DESCRIPTION:{}", escape(description)));
        }
        if let Some(due) = item.due_at {
            line(format!("DUE:{}", utc(due)));
        }
        line(format!("URL:{base_url}/ui/work/{}", crate::url_part(&item.id)));
        line(format!("STATUS:{}", if item.status == "open" { "NEEDS-ACTION" } else { "COMPLETED" }));
        line("END:VTODO".to_owned());
    }
    for publication in publications.iter().take(FEED_ENTRIES_MAX.saturating_sub(work.len())) {
        line("BEGIN:VEVENT".to_owned());
        line(format!("UID:publish-{}@flowmark", escape(&publication.item_id)));
        line(format!("DTSTAMP:{stamp}"));
        line(format!("DTSTART:{}", utc(publication.at)));
        line(format!("DTEND:{}", utc(publication.at.plus(flowmark_core::Duration::HOUR))));
        line(format!("SUMMARY:{}", escape(&format!("Publish: {}", publication.title))));
        let url = publication
            .url
            .clone()
            .unwrap_or_else(|| format!("{base_url}/ui/items/{}", crate::url_part(&publication.item_id)));
        line(format!("URL:{url}"));
        line("END:VEVENT".to_owned());
    }
    line("END:VCALENDAR".to_owned());
    out
}

/// `YYYYMMDDTHHMMSSZ`.
fn utc(at: Timestamp) -> String {
    at.to_chrono().format("%Y%m%dT%H%M%SZ").to_string()
}

/// TEXT escaping: backslash, semicolon, comma and newlines.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends a content line folded at 75 octets (continuations start with a space), CRLF-ended.
fn push_folded(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_fold_at_75_octets_without_splitting_a_character() {
        let mut out = String::new();
        let text = format!("SUMMARY:{}", "é".repeat(100));
        push_folded(&mut out, &text);
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 75, "{} octets: {line}", line.len());
        }
        let unfolded = out.trim_end_matches("\r\n").replace("\r\n ", "");
        assert_eq!(unfolded, text);
    }

    #[test]
    fn a_feed_token_opens_its_own_feed_only() {
        let token = token(b"secret", "Dana@example.com");
        assert!(verify_token(b"secret", "dana@example.com", &token));
        assert!(!verify_token(b"secret", "lee@example.com", &token));
        assert!(!verify_token(b"secret", "workspace", &token));
        assert!(!verify_token(b"other", "dana@example.com", &token));
        assert!(!verify_token(b"secret", "dana@example.com", "!!"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a,b;c\\d\ne"), "a\\,b\\;c\\\\d\\ne");
    }
}
