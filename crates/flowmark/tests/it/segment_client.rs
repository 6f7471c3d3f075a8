//! Compatibility with Segment's official Python library (`segment-analytics-python`), sending
//! to a real `flowmark serve` unchanged except for its `host` setting.
//!
//! The test installs the library from PyPI into the build directory (once), starts the
//! server, has the library `identify` and `track` a contact, and checks the run it started.

use std::path::PathBuf;
use std::process::Command;

use super::serve::Server;

const LIBRARY: &str = "segment-analytics-python==2.4.0";

fn install_library() -> PathBuf {
    crate::pip_install(LIBRARY, "segment/analytics")
}

const SCRIPT: &str = r#"
import sys
import segment.analytics as analytics
analytics.write_key = "wk"
analytics.host = sys.argv[1]
analytics.sync_mode = True
errors = []
analytics.on_error = lambda error, batch: errors.append(str(error))
analytics.identify("ada", {"first_name": "Ada", "email": "ada@example.com"})
analytics.track("ada", "Whitepaper Downloaded", {"topic": "automation"})
analytics.flush()
if errors:
    print(errors)
    sys.exit(1)
"#;

#[test]
fn the_official_segment_python_library_sends_to_flowmark_unchanged() {
    let library = install_library();
    let dir = super::validate::fresh_dir("segment-client");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);

    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(format!("http://{}", server.address))
        .env("PYTHONPATH", &library)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let (status, _, run) = server.api("GET", "/api/runs/1", b"");
    assert_eq!(status, 200, "the track call started the nurture run");
    assert_eq!(run["run"]["subject_id"], "ada");
    let payload = &run["run"]["event"]["payload"];
    assert_eq!(payload["context"]["library"]["name"], "analytics-python", "{payload}");
    assert_eq!(payload["properties"]["topic"], "automation");
    // The first email is sent, or held when the test runs inside the quiet hours (UTC night).
    let decided = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["step"] == "thanks" && (h["what"] == "effect_emitted" || h["what"] == "quiet_hours_held"));
    assert!(decided, "the first email of the journey was decided: {}", run["history"]);
    server.stop();
}

/// The library with its clock two hours fast: it stamps each message's `timestamp` and the
/// batch's `sentAt` from that clock, as on a laptop whose clock is wrong.
const SKEWED_SCRIPT: &str = r#"
import sys
import time
from datetime import datetime
import segment.analytics as analytics
import segment.analytics.client as client
import segment.analytics.request as request

class Fast(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.fromtimestamp(time.time() + 2 * 3600, tz)

client.datetime = Fast
request.datetime = Fast
analytics.write_key = "wk"
analytics.host = sys.argv[1]
analytics.sync_mode = True
errors = []
analytics.on_error = lambda error, batch: errors.append(str(error))
for i in range(20):
    analytics.track("grace", "Page Viewed", {"n": i})
analytics.flush()
if errors:
    print(errors)
    sys.exit(1)
"#;

#[test]
fn a_client_clock_two_hours_fast_is_corrected_by_the_batch_sent_at() {
    let library = install_library();
    let dir = super::validate::fresh_dir("segment-skew");
    let server = Server::start(&dir.join("flowmark.db"));
    let mut client = Command::new("python3");
    client.arg("-c").arg(SKEWED_SCRIPT).arg(format!("http://{}", server.address)).env("PYTHONPATH", &library);
    for event in sent_at_true_time(&server, client, "grace", 20) {
        assert!(event["payload"]["sentAt"].is_null(), "the library sends sentAt on the batch, not the item");
    }
    server.stop();
}

/// Runs a client library's script (`client`), then reads the `count` events it stored for
/// `subject`, each stored within a second of the true time of the run, whatever the client's
/// clock said.
fn sent_at_true_time(server: &Server, mut client: Command, subject: &str, count: usize) -> Vec<serde_json::Value> {
    let before = std::time::SystemTime::now();
    let output = client.output().unwrap();
    let after = std::time::SystemTime::now();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (_, _, events) = server.api("GET", &format!("/api/events?subject={subject}&limit=100"), b"");
    let events = events.as_array().unwrap().clone();
    assert_eq!(events.len(), count, "{events:?}");
    for event in &events {
        let at = event["at"].as_i64().unwrap();
        assert!(
            at >= ms(before) - 1_000 && at <= ms(after) + 1_000,
            "stored at {at} — within a second of the true time, not two hours ahead: {event}"
        );
    }
    events
}

/// Segment's official Node library, pinned; installed from npm by the test.
const NODE_LIBRARY: &str = "@segment/analytics-node@2.3.0";

/// The Node library with its clock two hours fast (every `new Date()`, which stamps each
/// message's `timestamp` and the batch's `sentAt`; `Date.now` stays true, since Node's `fetch`
/// times its own requests with it), sending an identify and 20 track calls in one batch.
const NODE_SKEWED_SCRIPT: &str = r#"
const RealDate = Date;
const skew = 2 * 3600 * 1000;
class FastDate extends RealDate {
  constructor(...args) { if (args.length === 0) { super(RealDate.now() + skew); } else { super(...args); } }
}
globalThis.Date = FastDate;
const { Analytics } = require('@segment/analytics-node');
const analytics = new Analytics({ writeKey: 'wk', host: process.argv[1], flushAt: 21, maxRetries: 0 });
const errors = [];
analytics.on('error', (error) => errors.push(String(error && (error.reason || error.message || error))));
analytics.identify({ userId: 'hopper', traits: { first_name: 'Grace', email: 'grace@example.com' } });
for (let i = 0; i < 20; i++) { analytics.track({ userId: 'hopper', event: 'Page Viewed', properties: { n: i } }); }
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  if (errors.length) { console.log(JSON.stringify(errors)); process.exit(1); }
});
"#;

#[test]
fn the_official_segment_node_library_with_a_clock_two_hours_fast_is_corrected() {
    let modules = crate::npm_install(NODE_LIBRARY);
    let dir = super::validate::fresh_dir("segment-node");
    let server = Server::start(&dir.join("flowmark.db"));
    let mut client = Command::new("node");
    client.arg("-e").arg(NODE_SKEWED_SCRIPT).arg(format!("http://{}", server.address)).env("NODE_PATH", &modules);
    for event in sent_at_true_time(&server, client, "hopper", 21) {
        assert_eq!(event["payload"]["context"]["library"]["name"], "@segment/analytics-node", "{event}");
    }
    let (_, _, contact) = server.api("GET", "/api/contacts/hopper", b"");
    assert_eq!(contact["traits"]["email"], "grace@example.com", "{contact}");
    server.stop();
}
