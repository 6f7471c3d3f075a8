//! Templates that would take the server down, sent to the real binary under a memory limit
//! (`prlimit --as`, as a container would set it): a range of thirty million items and a string
//! doubled in a loop. Before template budgets, either one made Liquid allocate gigabytes and
//! the process abort, and every restart aborted again on the same pending effect. Now a
//! literal bomb is refused when the workflow is deployed, a computed one fails its effect with
//! the reason in the run's history, and a restart on the same database comes up and stays up.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::Server;

/// The address-space limit the server runs under: room for its threads and SQLite, far from
/// the 1.7 GB the range bomb allocated.
const MEMORY_LIMIT_BYTES: u64 = 1_500_000_000;

const BOMBS: &str = r#"
id: bombs
subject: contact
trigger: { event: Signed Up }
steps:
  - id: range
    action:
      email:
        subject: "Your {{ contact.n }} offers"
        html: "{% for i in (1..contact.n) %}<p>{{ i }}</p>{% endfor %}"
  - id: doubling
    action:
      email:
        subject: "More"
        html: "{% assign s = 'ab' %}{% for i in (1..contact.doublings) %}{% assign s = s | append: s %}{% endfor %}{{ s }}"
"#;

fn limited() -> Command {
    let mut command = Command::new("prlimit");
    command.arg(format!("--as={MEMORY_LIMIT_BYTES}")).arg("--").arg(assert_cmd::cargo::cargo_bin("flowmark"));
    command
}

fn start(db: &std::path::Path) -> Server {
    Server::start_under(limited(), db, &["--write-key", "wk", "--api-token", "tok"])
}

/// The run's history once both of its sends have a result, within a few seconds.
fn settled_history(server: &Server) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, runs) = server.api("GET", "/api/runs?workflow=bombs", b"");
        if let Some(id) = runs.as_array().and_then(|r| r.first()).map(|r| r["id"].clone()) {
            let (_, _, run) = server.api("GET", &format!("/api/runs/{id}"), b"");
            let history = run["history"].as_array().cloned().unwrap_or_default();
            if history.iter().filter(|h| h["what"] == "effect_result").count() == 2 {
                return history;
            }
        }
        assert!(Instant::now() < deadline, "the run's sends never settled: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn template_bombs_fail_their_effects_and_the_server_stays_up() {
    let dir = super::validate::fresh_dir("bombs");
    let db = dir.join("flowmark.db");
    let mut server = start(&db);

    // A literal range past the limit is refused at deploy, where it is written.
    let literal = BOMBS.replace("(1..contact.n)", "(1..30000000)");
    let (status, _, problem) = server.api("POST", "/api/workflows", literal.as_bytes());
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("30000000 items"), "{problem}");

    // Computed from the contact's data, the bombs can only be caught as they render.
    assert_eq!(server.api("POST", "/api/workflows", BOMBS.as_bytes()).0, 201);
    let traits = json!({ "userId": "ada", "traits": { "email": "ada@example.com", "n": 30_000_000, "doublings": 40 } });
    assert_eq!(server.send("identify", &traits).0, 200);
    assert_eq!(server.send("track", &json!({ "userId": "ada", "event": "Signed Up" })).0, 200);

    let history = settled_history(&server);
    let failure = |step: &str| {
        let result = history.iter().find(|h| h["what"] == "effect_result" && h["step"] == step).unwrap();
        assert_eq!(result["ok"], false, "{result}");
        result["detail"].as_str().unwrap().to_owned()
    };
    let range = failure("range");
    assert!(range.contains("over its rendering budget: a loop over 30000000 items"), "{range}");
    let doubling = failure("doubling");
    assert!(doubling.contains("over its rendering budget: it built a value of more than"), "{doubling}");
    assert!(server.alive(), "the server survived both bombs");
    assert_eq!(server.get_text("/healthz").0, 200);

    // A restart on the same database comes up and stays up: nothing is left to blow up again.
    server.stop();
    let mut server = start(&db);
    std::thread::sleep(Duration::from_secs(2));
    assert!(server.alive(), "the restarted server is still running");
    assert_eq!(server.get_text("/healthz").0, 200);
    assert_eq!(settled_history(&server).iter().filter(|h| h["what"] == "effect_result").count(), 2);
    server.stop();
}
