//! The whitepaper-nurture blueprint end to end, as the journeys issue states it: a contact
//! downloads, gets the email (a real SMTP server), clicks its tracked link, scores, crosses
//! the branch's threshold, sales is notified and the CRM webhook is called (a receiver that
//! verifies the Standard Webhooks signature with the reference library); `why` explains the
//! turn the run took.

use std::time::{Duration, Instant};

use serde_json::json;

use super::email::{raw_get, smtp_sink};
use super::serve::Server;
use super::webhooks::{SECRET, install_library, webhook_receiver};

/// A time zone where it is now between 09:00 and 20:00, so the blueprint's quiet hours
/// (21:00–08:00 in the contact's zone) hold nothing back, whenever the test runs.
fn daytime_zone() -> &'static str {
    let now = chrono::Utc::now();
    [
        "UTC",
        "Europe/London",
        "America/New_York",
        "Asia/Tokyo",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Pacific/Auckland",
    ]
    .into_iter()
    .find(|zone| {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let hour = chrono::Timelike::hour(&now.with_timezone(&tz));
        (9..20).contains(&hour)
    })
    .expect("some zone has daytime now")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_nurture_blueprint_runs_from_download_to_sales_hand_off() {
    let library = install_library();
    let dir = super::validate::fresh_dir("nurture");
    let sink = smtp_sink(&dir);
    let receiver = webhook_receiver(&dir, &library);
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &[
            "--write-key",
            "wk",
            "--api-token",
            "tok",
            "--smtp-url",
            &smtp,
            "--webhook-secret",
            SECRET,
            "--webhook-allow-private",
        ],
    );
    let blueprint = std::fs::read_to_string(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    let blueprint =
        blueprint.replace("https://crm.example.com/leads", &format!("http://127.0.0.1:{}/leads", receiver.port));
    assert_eq!(server.api("POST", "/api/workflows", blueprint.as_bytes()).0, 201);

    let traits = json!({ "first_name": "Ada", "email": "ada@example.com", "scores": { "engagement": 30 } });
    let zone = daytime_zone();
    let identify = json!({ "userId": "ada", "traits": traits, "context": { "timezone": zone } });
    assert_eq!(server.send("identify", &identify).0, 200);
    let download =
        json!({ "userId": "ada", "event": "Whitepaper Downloaded", "properties": { "topic": "automation" } });
    assert_eq!(server.send("track", &download).0, 200);

    // The guide arrives, personalised, with its link tracked.
    wait_for("the guide email", || !sink.received().is_empty());
    let guide = &sink.received()[0];
    assert_eq!(guide["subject"], "Your guide, Ada");
    let html = guide["html"].as_str().unwrap();
    let link = html.split("href='").nth(1).unwrap().split('\'').next().unwrap();
    assert!(raw_get(link).contains("location: https://example.com/guide"), "the click goes on to the guide");

    // The click scores 30 more: 60 ≥ 50, so the branch hands the lead to sales and the CRM.
    wait_for("the CRM webhook", || !receiver.received().is_empty());
    let crm = &receiver.received()[0];
    assert_eq!(crm["verified"], true, "{crm}");
    assert_eq!(crm["payload"], json!({ "email": "ada@example.com", "source": "whitepaper" }));
    let (_, _, runs) = server.api("GET", "/api/runs?subject=ada", b"");
    let run = runs[0]["id"].as_u64().unwrap();
    wait_for("the run to end", || {
        server.api("GET", &format!("/api/runs/{run}"), b"").2["run"]["status"] == "completed"
    });
    let (_, _, contact) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(contact["traits"]["scores"]["engagement"], 60);

    // Why: each turn with the values it read.
    let (_, _, why) = server.api("GET", &format!("/api/runs/{run}/why"), b"");
    let text = why["text"].as_str().unwrap();
    assert!(text.contains("[engaged] the wait ended: event"), "{text}");
    assert!(
        text.contains("[route] decided (branch): `contact.scores.engagement >= 50` with contact.scores.engagement = 60 gave true, so the run went to `handoff`"),
        "{text}"
    );
    assert!(text.contains("[handoff] queued notify"), "{text}");
    assert!(text.contains("[crm] effect `") && text.contains("done (HTTP 200)"), "{text}");
    server.stop();
}
