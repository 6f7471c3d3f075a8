//! The SMTP connector: email effects sent through any SMTP server (an ESP's relay, Postfix,
//! a local sink), with lettre's pooled blocking transport over rustls.
//!
//! Each message carries the effect's key as its `Message-ID` (`<key@flowmark>`, the same on
//! every retry, so receivers and ESPs can drop duplicates), the contact's address from its
//! `email` trait, a text and/or HTML part, and, for marketing email, `List-Unsubscribe` with
//! the contact's one-click link and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
//! (RFC 8058). SMTP's 4xx answers and connection failures are retried; 5xx answers and bad
//! addresses are permanent.
//!
//! Invariant: no marketing message leaves without its unsubscribe headers.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Message as Email, SmtpTransport, Transport};

use crate::connector::{Connector, Job, Outcome};
use crate::{tracking, unsubscribe};
use flowmark_core::render::Message;

/// How email leaves.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, or STARTTLS when offered), `smtp://host:port?tls=required`
    /// (STARTTLS required), `smtps://host:port` (TLS from the start); credentials as
    /// `smtp://user:password@host`.
    pub url: String,
    /// The sender when a step names none, such as `Flowmark <news@example.com>`.
    pub from: String,
    /// The base URL contacts reach this server at (for unsubscribe links).
    pub public_url: String,
    /// The deployment's secret for signing unsubscribe and tracking links.
    pub secret: Vec<u8>,
    /// Send marketing email's links through the click tracker (`Email Link Clicked`).
    pub track_links: bool,
    /// Add an open pixel to marketing email (`Email Opened`).
    pub open_pixel: bool,
}

pub struct SmtpConnector {
    transport: SmtpTransport,
    from: Mailbox,
    public_url: String,
    secret: Vec<u8>,
    track_links: bool,
    open_pixel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("the SMTP URL is not usable: {0}")]
    Url(lettre::transport::smtp::Error),
    #[error("`{0}` is not a sender address such as `Flowmark <news@example.com>`")]
    From(String),
}

impl SmtpConnector {
    pub fn new(settings: SmtpSettings) -> Result<SmtpConnector, SmtpError> {
        let transport = SmtpTransport::from_url(&settings.url)
            .map_err(SmtpError::Url)?
            .timeout(Some(std::time::Duration::from_secs(30)))
            .build();
        let from = settings.from.parse().map_err(|_| SmtpError::From(settings.from.clone()))?;
        Ok(SmtpConnector {
            transport,
            from,
            public_url: settings.public_url,
            secret: settings.secret,
            track_links: settings.track_links,
            open_pixel: settings.open_pixel,
        })
    }

    fn build(&self, job: &Job<'_>) -> Result<Email, Outcome> {
        let permanent = |error: String| Outcome::Permanent { error };
        let Some(Message::Email { to, subject, html, text, from, transactional, .. }) = job.message else {
            return Err(permanent("the SMTP connector sends email messages only".to_owned()));
        };
        let Some(to) = to else { return Err(permanent("the contact has no `email` address".to_owned())) };
        let to: Mailbox = to.parse().map_err(|_| permanent(format!("`{to}` is not an email address")))?;
        let from = match from {
            Some(from) => from.parse().map_err(|_| permanent(format!("`{from}` is not a sender address")))?,
            None => self.from.clone(),
        };
        let domain = from.email.domain().to_owned();
        let mut builder = Email::builder()
            .from(from)
            .to(to)
            .subject(subject.clone().unwrap_or_default())
            .message_id(Some(format!("<{}@{domain}>", job.key)));
        if !transactional {
            let link = unsubscribe::link(&self.public_url, &self.secret, job.subject_id);
            let header =
                |name: &'static str, value: String| HeaderValue::new(HeaderName::new_from_ascii_str(name), value);
            builder = builder
                .raw_header(header("List-Unsubscribe", format!("<{link}>")))
                .raw_header(header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_owned()));
        }
        // Marketing email's links go through the tracker; transactional email (a password
        // reset, a receipt) is left as written.
        let tracked;
        let html = match html {
            Some(html) if !transactional && (self.track_links || self.open_pixel) => {
                let body = tracking::rewrite(
                    html,
                    &self.public_url,
                    &self.secret,
                    job.key,
                    job.subject_id,
                    self.track_links,
                    self.open_pixel,
                );
                tracked = body;
                Some(&tracked)
            }
            other => other.as_ref(),
        };
        let built = match (text, html) {
            (Some(text), Some(html)) => {
                builder.multipart(MultiPart::alternative_plain_html(text.clone(), html.clone()))
            }
            (None, Some(html)) => {
                builder.singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone()))
            }
            (text, None) => builder.singlepart(
                SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text.clone().unwrap_or_default()),
            ),
        };
        built.map_err(|e| permanent(format!("the message could not be built: {e}")))
    }
}

impl Connector for SmtpConnector {
    fn perform(&self, job: &Job<'_>) -> Outcome {
        let email = match self.build(job) {
            Ok(email) => email,
            Err(outcome) => return outcome,
        };
        match self.transport.send(&email) {
            Ok(response) => Outcome::Done {
                detail: Some(format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" "))),
            },
            Err(error) if error.is_permanent() => {
                Outcome::Permanent { error: format!("the SMTP server refused: {error}") }
            }
            Err(error) => Outcome::Retryable { error: format!("SMTP: {error}"), retry_after: None },
        }
    }
}
