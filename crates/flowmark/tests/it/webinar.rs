//! The webinar follow-up blueprint, written as a marketer says it (the registration's
//! `trigger` in scope, `emit`, a plain `has()`), run on recorded events twice: by `flowmark
//! simulate`, and through the real server on its virtual clock over six days with a real SMTP
//! server receiving the email. Both must enter every step the same number of times.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve::Server;

const START: &str = "2026-12-07T10:00:00Z";

/// Who registered for webinar 77, who attended it, who attended another one (78) instead.
fn recorded() -> Vec<Value> {
    let registered = |user: &str, at: &str| {
        json!({ "userId": user, "event": "Webinar Registered", "timestamp": at, "messageId": format!("reg-{user}"),
                "properties": { "webinar_id": 77, "title": "Flows 101" } })
    };
    let attended = |user: &str, webinar: u32, at: &str| {
        json!({ "userId": user, "event": "Webinar Attended", "timestamp": at, "messageId": format!("att-{user}"),
                "properties": { "webinar_id": webinar } })
    };
    vec![
        registered("u1", "2026-12-07T10:00:00Z"),
        registered("u2", "2026-12-07T10:00:00Z"),
        registered("u3", "2026-12-07T10:00:00Z"),
        registered("u4", "2026-12-07T10:05:00Z"),
        attended("u1", 77, "2026-12-07T11:00:00Z"),
        attended("u2", 78, "2026-12-07T11:00:00Z"),
        attended("u4", 77, "2026-12-08T09:00:00Z"),
    ]
}

#[test]
fn the_webinar_journey_enters_each_step_as_often_on_the_server_as_in_simulate() {
    let dir = super::validate::fresh_dir("webinar");
    let events = recorded();
    let file = dir.join("recorded.jsonl");
    std::fs::write(&file, events.iter().map(|e| format!("{e}\n")).collect::<String>()).unwrap();
    let blueprint = crate::repo_path("blueprints/webinar-follow-up.yaml");

    let output = super::flowmark()
        .args(["simulate", "--json", "-q", "--contacts", "1", "--days", "6", "--start", START, "--events"])
        .arg(&file)
        .arg(&blueprint)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let simulated: Vec<(String, u64)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["entered"].as_u64().unwrap()))
        .collect();

    let sink = super::email::smtp_sink(&dir);
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &[
            "--write-key",
            "wk",
            "--api-token",
            "tok",
            "--clock",
            "virtual",
            "--clock-start",
            START,
            "--smtp-url",
            &smtp,
            "--email-from",
            "Webinars <webinars@example.com>",
        ],
    );
    assert_eq!(server.api("POST", "/api/workflows", &std::fs::read(&blueprint).unwrap()).0, 201);
    for user in ["u1", "u2", "u3", "u4"] {
        let identify = json!({ "userId": user, "traits": { "email": format!("{user}@example.com") } });
        assert_eq!(server.send("identify", &identify).0, 200);
    }
    let advance = |to: &str| {
        let (status, _, clock) = server.api("POST", "/api/clock/advance", json!({ "to": to }).to_string().as_bytes());
        assert_eq!(status, 200, "{clock}");
        // The owner fires what came due at its next tick.
        std::thread::sleep(Duration::from_millis(400));
    };
    for event in &events {
        advance(event["timestamp"].as_str().unwrap());
        assert_eq!(server.send("track", event).0, 200);
    }
    advance("2026-12-13T10:00:00Z");

    let deadline = Instant::now() + Duration::from_secs(20);
    let histories = loop {
        let (_, _, runs) = server.api("GET", "/api/runs?workflow=webinar-follow-up", b"");
        let runs = runs.as_array().cloned().unwrap_or_default();
        if runs.len() == 4 && runs.iter().all(|r| r["status"] == "completed") {
            break runs
                .iter()
                .map(|r| server.api("GET", &format!("/api/runs/{}", r["id"]), b"").2["history"].clone())
                .collect::<Vec<Value>>();
        }
        assert!(Instant::now() < deadline, "the runs did not all complete: {runs:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let served: Vec<(String, u64)> = simulated
        .iter()
        .map(|(step, _)| {
            let entered = histories
                .iter()
                .flat_map(|h| h.as_array().unwrap())
                .filter(|h| h["what"] == "step_entered" && h["step"] == step.as_str())
                .count() as u64;
            (step.clone(), entered)
        })
        .collect();
    assert_eq!(served, simulated, "the server and simulate enter each step as often");
    let entered = |step: &str| simulated.iter().find(|(s, _)| s == step).unwrap().1;
    assert_eq!((entered("recording"), entered("sorry"), entered("qualified"), entered("case-study")), (2, 2, 2, 2));

    // Six emails reached the SMTP server: the recording, sorry and the case study, two each.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.received().len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", sink.received());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut subjects: Vec<String> = sink.received().iter().map(|m| m["subject"].as_str().unwrap().to_owned()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "How teams like yours automate",
            "How teams like yours automate",
            "Sorry we missed you",
            "Sorry we missed you",
            "The recording of Flows 101",
            "The recording of Flows 101",
        ]
    );
    // The qualified leads were emitted as events of their own, with the webinar id as a number.
    let (_, _, events) = server.api("GET", "/api/events?subject=u1", b"");
    let qualified = events.as_array().unwrap().iter().find(|e| e["event"] == "Lead Qualified").cloned();
    assert_eq!(qualified.map(|e| e["payload"]["properties"]["webinar_id"].clone()), Some(json!(77)));
    server.stop();
}
