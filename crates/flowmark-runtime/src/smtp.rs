//! The SMTP connector: email effects sent through any SMTP server (an ESP's relay, Postfix,
//! a local sink), over rustls.
//!
//! Each message carries the effect's key as its `Message-ID` (`<key@flowmark>`, the same on
//! every retry, so receivers and ESPs can drop duplicates), the contact's address from its
//! `email` trait, a text and/or HTML part, and, for marketing email, `List-Unsubscribe` with
//! the contact's one-click link and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
//! (RFC 8058). SMTP's 4xx answers and connection failures are retried; 5xx answers and bad
//! addresses are permanent.
//!
//! Connections are lettre's (`SmtpConnection`: EHLO, STARTTLS, AUTH, responses), kept in a
//! pool here, and each message's data goes out in one write with its terminating dot.
//! lettre's own transport writes the data and the dot in two writes on a socket without
//! `TCP_NODELAY`, so Nagle's algorithm holds the dot until the server's delayed ACK: 40 ms
//! per message (`docs/BENCHMARKS.md`, `bench smtp`).
//!
//! Invariant: no marketing message leaves without its unsubscribe headers.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration as StdDuration;

use lettre::Message as Email;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;

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

/// How to reach the SMTP server, read from the URL.
#[derive(Debug, Clone)]
struct Server {
    host: String,
    port: u16,
    /// TLS from the first byte (`smtps://`).
    wrapper: bool,
    starttls: Starttls,
    credentials: Option<Credentials>,
}

/// STARTTLS: required (`?tls=required`), used when offered (the default), or never
/// (`?tls=none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starttls {
    Required,
    Opportunistic,
    Never,
}

/// How long connecting, and each command, may take.
const SMTP_TIMEOUT: StdDuration = StdDuration::from_secs(30);
/// Idle connections kept for reuse.
const POOL_IDLE_MAX: usize = 64;

pub struct SmtpConnector {
    server: Server,
    pool: Mutex<Vec<SmtpConnection>>,
    from: Mailbox,
    public_url: String,
    secret: Vec<u8>,
    track_links: bool,
    open_pixel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("the SMTP URL is not usable: {0}")]
    Url(String),
    #[error("`{0}` is not a sender address such as `Flowmark <news@example.com>`")]
    From(String),
}

impl SmtpConnector {
    /// Checks an SMTP URL and a sender address without setting anything up, so a server can
    /// refuse bad settings before it opens anything.
    pub fn check(url: &str, from: &str) -> Result<(), SmtpError> {
        parse_url(url).map_err(SmtpError::Url)?;
        from.parse::<Mailbox>().map_err(|_| SmtpError::From(from.to_owned()))?;
        Ok(())
    }

    pub fn new(settings: SmtpSettings) -> Result<SmtpConnector, SmtpError> {
        let server = parse_url(&settings.url).map_err(SmtpError::Url)?;
        let from = settings.from.parse().map_err(|_| SmtpError::From(settings.from.clone()))?;
        Ok(SmtpConnector {
            server,
            pool: Mutex::default(),
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
        let mut connection = match self.pool.lock().ok().and_then(|mut pool| pool.pop()) {
            Some(connection) => connection,
            None => match self.connect() {
                Ok(connection) => connection,
                Err(error) => return Outcome::Retryable { error: format!("SMTP: {error}"), retry_after: None },
            },
        };
        // The last check before the message is handed over: the contact may have been
        // suppressed while the connection was being made. From here to the end of DATA is the
        // one window left (a few round trips on an open connection).
        if let Some(error) = job.refusal() {
            if let Ok(mut pool) = self.pool.lock()
                && pool.len() < POOL_IDLE_MAX
            {
                pool.push(connection);
            }
            return Outcome::Permanent { error };
        }
        let sent = send(&mut connection, &email);
        let reusable = !connection.has_broken() && sent.is_ok();
        match self.pool.lock() {
            Ok(mut pool) if reusable && pool.len() < POOL_IDLE_MAX => pool.push(connection),
            _ => connection.abort(),
        }
        match sent {
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

impl SmtpConnector {
    /// A new connection: TLS or STARTTLS as the URL says, then AUTH when it has credentials.
    fn connect(&self) -> Result<SmtpConnection, lettre::transport::smtp::Error> {
        let server = &self.server;
        let hello = ClientId::default();
        let tls = TlsParameters::new(server.host.clone())?;
        let wrapper = server.wrapper.then_some(&tls);
        let mut connection =
            SmtpConnection::connect((server.host.as_str(), server.port), Some(SMTP_TIMEOUT), &hello, wrapper, None)?;
        if !server.wrapper {
            match server.starttls {
                Starttls::Required => connection.starttls(&tls, &hello)?,
                Starttls::Opportunistic if connection.can_starttls() => connection.starttls(&tls, &hello)?,
                _ => {}
            }
        }
        if let Some(credentials) = &server.credentials {
            connection.auth(&[Mechanism::Plain, Mechanism::Login], credentials)?;
        }
        Ok(connection)
    }
}

/// Sends one message on an open connection: MAIL, RCPT for each recipient, DATA, then the
/// data and its terminating dot in one write.
fn send(
    connection: &mut SmtpConnection,
    email: &Email,
) -> Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error> {
    let envelope = email.envelope();
    connection.command(Mail::new(envelope.from().cloned(), Vec::new()))?;
    for to in envelope.to() {
        connection.command(Rcpt::new(to.clone(), Vec::new()))?;
    }
    connection.command(Data)?;
    connection.command(Body(email.formatted()))
}

/// A message's data as sent after DATA: a line that starts with a dot gets another (RFC 5321
/// 4.5.2), and the data ends with `CRLF . CRLF`.
struct Body(Vec<u8>);

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let mut at_line_start = true;
        for line in text.split_inclusive('\n') {
            if at_line_start && line.starts_with('.') {
                f.write_str(".")?;
            }
            f.write_str(line)?;
            at_line_start = line.ends_with('\n');
        }
        if !text.ends_with("\r\n") {
            f.write_str("\r\n")?;
        }
        f.write_str(".\r\n")
    }
}

/// Reads `smtp://[user:password@]host[:port][?tls=required|opportunistic|none]` and
/// `smtps://…` (TLS from the start).
fn parse_url(text: &str) -> Result<Server, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}`: {e}"))?;
    let wrapper = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        other => return Err(format!("`{other}` is not smtp or smtps")),
    };
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("`{text}` has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port().unwrap_or(if wrapper { 465 } else { 25 });
    let mut starttls = Starttls::Opportunistic;
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), value.as_ref()) {
            ("tls", "required") => starttls = Starttls::Required,
            ("tls", "opportunistic") => starttls = Starttls::Opportunistic,
            ("tls", "none") => starttls = Starttls::Never,
            ("tls", other) => return Err(format!("`tls={other}`: use required, opportunistic or none")),
            (other, _) => return Err(format!("`{other}` is not a setting of the SMTP URL; use tls")),
        }
    }
    let credentials = (!url.username().is_empty())
        .then(|| Credentials::new(percent_decode(url.username()), percent_decode(url.password().unwrap_or_default())));
    Ok(Server { host, port, wrapper, starttls, credentials })
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_say_where_and_how() {
        let plain = parse_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.wrapper, plain.starttls),
            ("127.0.0.1", 2525, false, Starttls::Opportunistic)
        );
        let secure = parse_url("smtps://user%40example.com:p%40ss@mail.example.com").unwrap();
        assert_eq!((secure.port, secure.wrapper), (465, true));
        assert!(secure.credentials.is_some());
        assert_eq!(parse_url("smtp://relay:587?tls=required").unwrap().starttls, Starttls::Required);
        assert!(parse_url("http://x").unwrap_err().contains("not smtp"));
        assert!(parse_url("smtp://x?tls=maybe").unwrap_err().contains("required, opportunistic or none"));
        assert_eq!(percent_decode("p%40ss%4"), "p@ss%4");
    }

    #[test]
    fn data_is_dot_stuffed_and_terminated_in_one_piece() {
        let body = Body(b"Subject: x\r\n\r\n.hidden\r\nline\r\n..two".to_vec()).to_string();
        assert_eq!(body, "Subject: x\r\n\r\n..hidden\r\nline\r\n...two\r\n.\r\n");
    }
}
