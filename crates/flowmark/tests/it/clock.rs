//! A journey of days through the real server on a virtual clock (`serve --clock virtual`):
//! the nurture journey's first email, three days without a click, the reminder, four more
//! days, and the end, in seconds, with every email written by the real connector.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::Server;

/// The run of `subject`, once `done` holds for it (within a few seconds of real time).
fn run_when(server: &Server, subject: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, runs) = server.api("GET", &format!("/api/runs?subject={subject}"), b"");
        if let Some(run) = runs.as_array().and_then(|r| r.first()) {
            let (_, _, detail) = server.api("GET", &format!("/api/runs/{}", run["id"]), b"");
            if done(&detail) {
                return detail;
            }
        }
        assert!(Instant::now() < deadline, "the run never got there: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sent(detail: &Value, step: &str) -> bool {
    detail["history"].as_array().unwrap().iter().any(|h| h["what"] == "effect_result" && h["step"] == step)
}

#[test]
fn a_journey_of_days_runs_in_seconds_on_the_virtual_clock() {
    let dir = super::validate::fresh_dir("virtual-clock");
    let effects = dir.join("effects.jsonl");
    let effects_flag = effects.to_str().unwrap().to_owned();
    let args =
        ["--write-key", "wk", "--api-token", "tok", "--clock", "virtual", "--clock-start", "2026-12-07T10:00:00Z"];
    let server = Server::start_with(&dir.join("flowmark.db"), &[&args[..], &["--effects-log", &effects_flag]].concat());
    let (status, _, clock) = server.api("GET", "/api/clock", b"");
    assert_eq!(
        (status, clock["at"].as_str(), clock["virtual"].as_bool()),
        (200, Some("2026-12-07T10:00:00.000Z"), Some(true))
    );
    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let identify = json!({ "userId": "ada", "traits": { "email": "ada@example.com", "first_name": "Ada", "timezone": "Europe/London" } });
    assert_eq!(server.send("identify", &identify).0, 200);
    let download = json!({ "userId": "ada", "event": "Whitepaper Downloaded", "properties": { "topic": "automation" },
                           "timestamp": "2026-12-07T10:00:00Z" });
    assert_eq!(server.send("track", &download).0, 200);

    let detail = run_when(&server, "ada", |d| sent(d, "thanks"));
    assert_eq!(detail["run"]["status"], "active");
    std::thread::sleep(Duration::from_millis(600));
    let (_, _, still) = server.api("GET", &format!("/api/runs/{}", detail["run"]["id"]), b"");
    assert!(!sent(&still, "reminder"), "time stands still until it is moved");

    // Three days without a click: the wait times out and the reminder goes.
    let (status, _, moved) = server.api("POST", "/api/clock/advance", br#"{"by": "3d"}"#);
    assert_eq!((status, moved["at"].as_str()), (200, Some("2026-12-10T10:00:00.000Z")), "{moved}");
    run_when(&server, "ada", |d| sent(d, "reminder"));
    // Four more: the second chance times out and the journey ends.
    assert_eq!(server.api("POST", "/api/clock/advance", br#"{"to": "2026-12-14T10:00:01Z"}"#).0, 200);
    let done = run_when(&server, "ada", |d| d["run"]["status"] == "completed");
    assert!(done["run"]["ended_at"].as_i64().unwrap() >= 1_797_242_400_000, "ended on the virtual clock: {done}");

    let (status, _, problem) = server.api("POST", "/api/clock/advance", br#"{"to": "2026-12-08T00:00:00Z"}"#);
    assert_eq!((status, problem["title"].as_str()), (409, Some("Clock not moved")), "never backwards");
    assert_eq!(server.api("POST", "/api/clock/advance", br#"{"by": "soon"}"#).0, 400);
    let emails = std::fs::read_to_string(&effects).unwrap().lines().filter(|l| l.contains("ada@example.com")).count();
    assert_eq!(emails, 2, "the guide and the reminder, through the real connector");
    server.stop();

    // On the system clock, time cannot be moved.
    let server = Server::start(&dir.join("other.db"));
    let (status, _, problem) = server.api("POST", "/api/clock/advance", br#"{"by": "1d"}"#);
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("--clock virtual"), "{problem}");
    assert_eq!(server.api("GET", "/api/clock", b"").2["virtual"], false);
    server.stop();
}
