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
