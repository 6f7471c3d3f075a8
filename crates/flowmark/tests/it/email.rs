//! Email end to end: a real SMTP server (Python's `aiosmtpd`, installed from PyPI by this
//! test into the build directory) receives what `flowmark serve --smtp-url` sends; Python's
//! `email` package parses each message. Then the one-click unsubscribe link from the
//! message's own `List-Unsubscribe` header suppresses the contact and ends its journey.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::serve::Server;
use crate::PythonPeer;

const AIOSMTPD: &str = "aiosmtpd==1.4.6";

fn install_aiosmtpd() -> PathBuf {
    crate::pip_install(AIOSMTPD, "aiosmtpd")
}

/// An SMTP sink that parses every message with Python's `email` package and appends what it
/// found as a JSON line, with the time it arrived (`at`), then takes `argv[3]` seconds (none
/// when not given) to answer it.
const SINK: &str = r#"
import asyncio, email, email.policy, json, sys, time
from aiosmtpd.controller import Controller

class Handler:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        found = {
            "envelope_to": envelope.rcpt_tos,
            "from": str(message["From"]),
            "to": str(message["To"]),
            "subject": str(message["Subject"]),
            "message_id": str(message["Message-ID"]),
            "list_unsubscribe": str(message["List-Unsubscribe"]) if message["List-Unsubscribe"] else None,
            "list_unsubscribe_post": str(message["List-Unsubscribe-Post"]) if message["List-Unsubscribe-Post"] else None,
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
            "at": time.time(),
        }
        with open(sys.argv[2], "a") as out:
            out.write(json.dumps(found) + "\n")
        await asyncio.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)
        return "250 Message accepted for delivery"

controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// A real SMTP server for a test: a `PythonPeer` running `SINK`.
pub fn smtp_sink(dir: &Path) -> PythonPeer {
    PythonPeer::start(SINK, &install_aiosmtpd(), dir.join("received.jsonl"), &[])
}

/// `smtp_sink`, taking `delay_s` seconds to answer each message once it has arrived.
pub fn slow_smtp_sink(dir: &Path, delay_s: &str) -> PythonPeer {
    PythonPeer::start(SINK, &install_aiosmtpd(), dir.join("received.jsonl"), &[delay_s])
}

const WELCOME: &str = r#"
id: welcome
subject: contact
trigger: { event: Signed Up }
exit: { event: Unsubscribed }
steps:
  - id: hello
    action:
      email:
        subject: "Welcome, {{ contact.first_name }}"
        text: "Hi {{ contact.first_name }}, thanks for joining."
        html: "<p>Hi <b>{{ contact.first_name }}</b>, thanks for joining. <a href='https://example.com/guide?from=mail'>Your guide</a></p>"
  - id: clicked
    wait: { event: Email Link Clicked, where: 'event.properties.email_id == steps.hello.effect_id', timeout: 1h }
    on_timeout: later
  - id: enjoy
    action: { email: { subject: "Enjoy the guide, {{ contact.first_name }}", text: "Glad you opened it." } }
  - id: later
    wait: { duration: 1h }
  - id: again
    action: { email: { subject: "Still there?", text: "Hello again" } }
"#;

pub fn raw_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

pub fn post_form(url: &str, body: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

#[test]
fn email_goes_out_over_smtp_personalised_and_one_click_unsubscribe_stops_the_journey() {
    let dir = super::validate::fresh_dir("email");
    let sink = smtp_sink(&dir);
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &["--write-key", "wk", "--api-token", "tok", "--smtp-url", &smtp, "--email-from", "News <news@example.com>"],
    );
    assert_eq!(server.api("POST", "/api/workflows", WELCOME.as_bytes()).0, 201);
    let identify = json!({ "userId": "ada", "traits": { "first_name": "Ada", "email": "ada@example.com" } });
    assert_eq!(server.send("identify", &identify).0, 200);
    assert_eq!(server.send("track", &json!({ "userId": "ada", "event": "Signed Up" })).0, 200);

    let started = Instant::now();
    while sink.received().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no email arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let message = &sink.received()[0];
    assert_eq!(message["envelope_to"], json!(["ada@example.com"]));
    assert_eq!(message["from"], "News <news@example.com>");
    assert_eq!(message["subject"], "Welcome, Ada", "the subject is personalised");
    assert_eq!(message["text"].as_str().unwrap().trim(), "Hi Ada, thanks for joining.");
    let html = message["html"].as_str().unwrap();
    assert!(html.contains("<b>Ada</b>"));
    assert!(!html.contains("https://example.com/guide"), "the link goes through the tracker: {html}");
    assert!(message["message_id"].as_str().unwrap().starts_with("<1-hello-"), "the effect key is the Message-ID");
    assert_eq!(message["list_unsubscribe_post"], "List-Unsubscribe=One-Click");
    let link = message["list_unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_owned();
    assert!(link.starts_with(&format!("http://{}/u/ada/", server.address)), "{link}");

    // The contact clicks: the tracker records the click and redirects to the guide; the
    // journey's wait takes the click and the next email goes out.
    let tracked = html.split("href='").nth(1).unwrap().split('\'').next().unwrap().to_owned();
    assert!(tracked.starts_with(&format!("http://{}/t/c/", server.address)), "{tracked}");
    let (status, _, _) = server.get_text(&tracked.replacen(&format!("http://{}", server.address), "", 1));
    assert_eq!(status, 302);
    let redirect = raw_get(&tracked);
    assert!(redirect.contains("location: https://example.com/guide?from=mail"), "{redirect}");
    let started = Instant::now();
    while sink.received().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the click did not advance the journey");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sink.received()[1]["subject"], "Enjoy the guide, Ada");
    let (_, _, events) = server.api("GET", "/api/events?subject=ada", b"");
    let click = events.as_array().unwrap().iter().find(|e| e["event"] == "Email Link Clicked").unwrap();
    assert!(click["payload"]["properties"]["email_id"].as_str().unwrap().starts_with("1-hello-"));
    let forged_click = format!("{}x", tracked);
    assert_eq!(server.get_text(&forged_click.replacen(&format!("http://{}", server.address), "", 1)).0, 404);

    // A forged link does nothing; the real one shows a button, and its POST unsubscribes.
    let flipped = if link.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &link[..link.len() - 1]);
    assert_eq!(post_form(&forged, "List-Unsubscribe=One-Click").0, 404);
    let (status, _, _) = server.get_text(&link.replacen(&format!("http://{}", server.address), "", 1));
    assert_eq!(status, 200);
    let (status, page) = post_form(&link, "List-Unsubscribe=One-Click");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You are unsubscribed"));

    let (_, _, contact) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(contact["traits"]["unsubscribed"], true, "the contact is suppressed");
    let (_, _, runs) = server.api("GET", "/api/runs?subject=ada", b"");
    assert_eq!(runs[0]["status"], "exited", "the Unsubscribed event ended the journey at once");
    assert_eq!(sink.received().len(), 2, "nothing after the unsubscribe");
    server.stop();
}
