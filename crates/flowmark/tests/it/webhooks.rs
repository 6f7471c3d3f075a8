//! Standard Webhooks, both ways, proven with the reference Python library (`standardwebhooks`
//! from PyPI, installed by this test into the build directory):
//! - the library signs an inbound webhook; Flowmark verifies it, stores it as an event once
//!   (its `webhook-id` is the `messageId`), and refuses a tampered copy;
//! - that event starts a workflow whose webhook step calls a receiver that verifies
//!   Flowmark's signature with the library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::Server;
use crate::PythonPeer;

const LIBRARY: &str = "standardwebhooks==1.1.0";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const INBOUND_SECRET: &str = "whsec_aW5ib3VuZC1zZWNyZXQtZm9yLXRlc3Rz";

pub fn install_library() -> PathBuf {
    crate::pip_install(LIBRARY, "standardwebhooks")
}

/// A receiver that verifies each request with the library and appends what it found.
const RECEIVER: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from standardwebhooks import Webhook

webhook = Webhook(sys.argv[3])

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            payload = webhook.verify(body, dict(self.headers))
            found = {"verified": True, "id": self.headers["webhook-id"], "payload": payload}
        except Exception as error:
            found = {"verified": False, "error": str(error)}
        with open(sys.argv[2], "a") as out:
            out.write(json.dumps(found) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"#;

/// Signs a payload with the library and prints the headers as JSON.
const SIGNER: &str = r#"
import json, sys
from datetime import datetime, timezone
from standardwebhooks import Webhook
body = sys.argv[3]
signature = Webhook(sys.argv[1]).sign(sys.argv[2], datetime.now(tz=timezone.utc), body)
print(json.dumps({"webhook-id": sys.argv[2], "webhook-timestamp": str(int(datetime.now(tz=timezone.utc).timestamp())), "webhook-signature": signature}))
"#;

/// A webhook receiver for a test: a `PythonPeer` running `RECEIVER` with the outbound secret.
pub fn webhook_receiver(dir: &Path, library: &Path) -> PythonPeer {
    PythonPeer::start(RECEIVER, library, dir.join("webhooks-received.jsonl"), &[SECRET])
}

fn signed_headers(library: &Path, id: &str, body: &str) -> Vec<(&'static str, String)> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(SIGNER)
        .args([INBOUND_SECRET, id, body])
        .env("PYTHONPATH", library)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let headers: Value = serde_json::from_slice(&output.stdout).unwrap();
    ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .into_iter()
        .map(|name| (name, headers[name].as_str().unwrap().to_owned()))
        .chain([("Content-Type", "application/json".to_owned())])
        .collect()
}

#[test]
fn webhooks_are_signed_and_verified_the_standard_webhooks_way() {
    let library = install_library();
    let dir = super::validate::fresh_dir("webhooks");
    let receiver = webhook_receiver(&dir, &library);
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &[
            "--write-key",
            "wk",
            "--api-token",
            "tok",
            "--webhook-secret",
            SECRET,
            "--webhook-allow-private",
            "--inbound-webhook-secret",
            INBOUND_SECRET,
        ],
    );
    let workflow = format!(
        r#"
id: lead-to-crm
subject: contact
trigger: {{ event: Lead Created }}
steps:
  - id: crm
    action:
      webhook:
        url: "http://127.0.0.1:{}/leads"
        body: {{ lead: "{{{{ event.properties.email }}}}", source: flowmark }}
"#,
        receiver.port
    );
    assert_eq!(server.api("POST", "/api/workflows", workflow.as_bytes()).0, 201);

    // In: the library signs; Flowmark verifies and stores the event once.
    let body = r#"{"userId":"bo","event":"Lead Created","properties":{"email":"bo@example.com"}}"#;
    let headers = signed_headers(&library, "msg_inbound_1", body);
    assert_eq!(server.request_with("POST", "/hooks/crm", &headers, body.as_bytes()).0, 204);
    assert_eq!(server.request_with("POST", "/hooks/crm", &headers, body.as_bytes()).0, 204, "a retry is fine");
    let tampered = body.replace("bo@example.com", "eve@example.com");
    let (status, _, problem) = server.request_with("POST", "/hooks/crm", &headers, tampered.as_bytes());
    assert_eq!((status, problem["title"].as_str()), (401, Some("Bad signature")));
    let (_, _, events) = server.api("GET", "/api/events?subject=bo", b"");
    assert_eq!(events.as_array().unwrap().len(), 1, "stored once: {events}");
    assert_eq!(events[0]["messageId"], "hook:crm:msg_inbound_1");

    // Each source's ids are its own: the same id from Segment, from `crm` and from `esp` is three events.
    let track = json!({ "userId": "bo", "event": "Page Viewed", "messageId": "shared-id-1" });
    assert_eq!(server.send("track", &track).0, 200);
    let clicked = r#"{"userId":"bo","event":"Email Clicked"}"#;
    let headers = signed_headers(&library, "shared-id-1", clicked);
    assert_eq!(server.request_with("POST", "/hooks/esp", &headers, clicked.as_bytes()).0, 204);
    assert_eq!(server.request_with("POST", "/hooks/crm", &headers, clicked.as_bytes()).0, 204);
    assert_eq!(server.request_with("POST", "/hooks/esp", &headers, clicked.as_bytes()).0, 204, "a retry");
    let (_, _, events) = server.api("GET", "/api/events?subject=bo", b"");
    let mut ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["messageId"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["hook:crm:msg_inbound_1", "hook:crm:shared-id-1", "hook:esp:shared-id-1", "shared-id-1"]);

    // A bounce relayed from an ESP names the address: the contact is found and suppressed.
    let identify = json!({ "userId": "cy", "traits": { "email": "Cy@Example.com" } });
    assert_eq!(server.send("identify", &identify).0, 200);
    let bounce = r#"{"event":"Email Bounced","email":"cy@example.com","properties":{"bounce_type":"hard"}}"#;
    let headers = signed_headers(&library, "msg_bounce_1", bounce);
    assert_eq!(server.request_with("POST", "/hooks/esp", &headers, bounce.as_bytes()).0, 204);
    let (_, _, contact) = server.api("GET", "/api/contacts/cy", b"");
    assert_eq!(contact["traits"]["unsubscribed"], true, "{contact}");
    assert_eq!(contact["traits"]["suppressed_reason"], "bounced");
    let stranger = r#"{"event":"Email Bounced","email":"nobody@example.com"}"#;
    let headers = signed_headers(&library, "msg_bounce_2", stranger);
    let (status, _, problem) = server.request_with("POST", "/hooks/esp", &headers, stranger.as_bytes());
    assert_eq!((status, problem["title"].as_str()), (422, Some("Unknown contact")));

    // Out: the event started the workflow; the receiver verifies Flowmark's signature.
    let started = Instant::now();
    while receiver.received().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the webhook never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = &receiver.received()[0];
    assert_eq!(received["verified"], true, "the reference library verifies Flowmark's signature: {received}");
    assert!(received["id"].as_str().unwrap().starts_with("1-crm-"), "webhook-id is the effect's key");
    assert_eq!(received["payload"]["lead"], "bo@example.com");
    server.stop();
}

/// A receiver on loopback that answers every request `410 Gone`; returns its port and how
/// many requests it got.
fn gone_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut seen = Vec::new();
            let mut buffer = [0u8; 8192];
            // The request's head and its short body arrive at once or in a few reads.
            while let Ok(n @ 1..) = stream.read(&mut buffer) {
                seen.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&seen);
                if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                    break;
                }
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, calls)
}

/// Waits until `subject`'s run has tried its webhook; returns the run's history.
fn webhook_error(server: &Server, subject: &str) -> String {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(20), "{subject}'s webhook was never tried");
        let (_, _, runs) = server.api("GET", &format!("/api/runs?subject={subject}"), b"");
        if let Some(id) = runs.as_array().and_then(|runs| runs.first()).map(|run| run["id"].clone()) {
            let (_, _, run) = server.api("GET", &format!("/api/runs/{id}"), b"");
            let history = run["history"].to_string();
            if history.contains("410 Gone") {
                return history;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A URL that answered `410 Gone` is not called again, by this server or after a restart,
/// until an admin enables it through `/api/webhooks/gone`.
#[test]
fn a_url_that_answered_410_stays_disabled_across_restarts_until_enabled() {
    let dir = super::validate::fresh_dir("webhooks-gone");
    let db = dir.join("flowmark.db");
    let (port, calls) = gone_receiver();
    let url = format!("http://127.0.0.1:{port}/leads");
    let keys = ["--write-key", "wk", "--api-token", "tok", "--webhook-secret", SECRET, "--webhook-allow-private"];
    let server = Server::start_with(&db, &keys);
    let workflow = format!(
        "id: lead-to-crm\nsubject: contact\ntrigger: {{ event: Lead Created }}\nsteps:\n  - id: crm\n    action:\n      webhook:\n        url: \"{url}\"\n        body: {{ source: flowmark }}\n"
    );
    assert_eq!(server.api("POST", "/api/workflows", workflow.as_bytes()).0, 201);
    let lead = |server: &Server, who: &str| {
        assert_eq!(server.send("track", &json!({ "userId": who, "event": "Lead Created" })).0, 200);
    };
    let calls_now = || calls.load(std::sync::atomic::Ordering::SeqCst);

    lead(&server, "first");
    let error = webhook_error(&server, "first");
    assert!(error.contains("the endpoint is disabled"), "{error}");
    assert_eq!(calls_now(), 1);
    // Stored by the dispatcher after its round, and listed.
    let started = Instant::now();
    let listed = loop {
        let (status, _, listed) = server.api("GET", "/api/webhooks/gone", b"");
        assert_eq!(status, 200, "{listed}");
        if !listed.as_array().unwrap().is_empty() {
            break listed;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the gone URL was never stored");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed[0]["url"], url.as_str(), "{listed}");
    assert!(listed[0]["reason"].as_str().unwrap().contains("410 Gone"), "{listed}");

    lead(&server, "second");
    assert!(webhook_error(&server, "second").contains("answered 410 Gone earlier"));
    assert_eq!(calls_now(), 1, "not called again by this server");

    server.stop();
    let server = Server::start_with(&db, &keys);
    lead(&server, "third");
    assert!(webhook_error(&server, "third").contains("answered 410 Gone earlier"));
    assert_eq!(calls_now(), 1, "not called again after a restart");

    let path = format!("/api/webhooks/gone?url={}", url.replace(':', "%3A").replace('/', "%2F"));
    let (status, _, problem) = server.request_with("DELETE", &path, &[], b"");
    assert_eq!(status, 401, "enabling needs the admin token: {problem}");
    assert_eq!(server.api("DELETE", &path, b"").0, 204);
    let (status, _, problem) = server.api("DELETE", &path, b"");
    assert_eq!((status, problem["title"].as_str()), (404, Some("Not disabled")));
    assert_eq!(server.api("GET", "/api/webhooks/gone", b"").2, json!([]));
    let (status, _, problem) = server.api("GET", "/api/webhooks/gone?limit=0", b"");
    assert_eq!((status, problem["title"].as_str()), (400, Some("Invalid limit")));
    let (status, _, problem) = server.api("DELETE", "/api/webhooks/gone", b"");
    assert_eq!((status, problem["title"].as_str()), (400, Some("Missing URL")));
    lead(&server, "fourth");
    assert!(webhook_error(&server, "fourth").contains("the endpoint is disabled"));
    assert_eq!(calls_now(), 2, "called again once enabled");
    server.stop();
}
