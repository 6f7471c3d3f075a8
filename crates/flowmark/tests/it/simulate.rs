//! `flowmark simulate`: the population dry run, end to end.
//!
//! Proves: the same seed gives byte-identical reports (text and JSON); another seed gives
//! another report; the report counts what the workflow did; bad arguments are clear errors.

use crate::{flowmark, repo_path};

fn simulate(args: &[&str]) -> (Option<i32>, String, String) {
    let output = flowmark().arg("simulate").args(args).output().unwrap();
    (output.status.code(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn same_seed_gives_byte_identical_reports() {
    let nurture = repo_path("blueprints/whitepaper-nurture.yaml");
    let nurture = nurture.to_str().unwrap();
    let args = [nurture, "--contacts", "2000", "--days", "20", "--seed", "42", "--json"];
    let (code, first, _) = simulate(&args);
    assert_eq!(code, Some(0));
    let (_, second, _) = simulate(&args);
    assert_eq!(first, second);
    let (_, other_seed, _) = simulate(&[nurture, "--contacts", "2000", "--days", "20", "--seed", "43", "--json"]);
    assert_ne!(first, other_seed);
    let (_, text_a, _) = simulate(&[nurture, "--contacts", "500", "--seed", "5", "-q"]);
    let (_, text_b, _) = simulate(&[nurture, "--contacts", "500", "--seed", "5", "-q"]);
    assert_eq!(text_a, text_b);
}

#[test]
fn the_report_accounts_for_every_contact() {
    let nurture = repo_path("blueprints/whitepaper-nurture.yaml");
    let (code, out, _) = simulate(&[nurture.to_str().unwrap(), "--contacts", "3000", "--days", "30", "--json"]);
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs: u64 = report["runs"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(runs, 3000);
    let steps = report["steps"].as_array().unwrap();
    let step = |id: &str| steps.iter().find(|s| s["id"] == id).unwrap();
    assert_eq!(step("thanks")["entered"], 3000, "everyone gets the first email");
    // Everyone leaves the click wait by a click or by the timeout; the paths add up.
    let engaged = step("engaged");
    let clicked = step("score-click")["entered"].as_u64().unwrap();
    let timed_out = engaged["paths"]["reminder"].as_u64().unwrap();
    assert_eq!(clicked + timed_out + engaged["waiting_at_end"].as_u64().unwrap(), 3000);
    let route = step("route");
    let routed: u64 = route["paths"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(routed, route["entered"].as_u64().unwrap(), "every branch entry took a path");
    // Waits are measured: the click timeout is 3 days, so no wait there is longer.
    assert!(engaged["wait_hours"]["max"].as_f64().unwrap() <= 72.0);
    assert!(step("thanks")["quiet_hours_held"].as_u64().unwrap() > 0, "contacts span time zones; some arrive at night");
}

#[test]
fn items_flow_through_the_content_workflow() {
    let blog = repo_path("blueprints/blog-post.yaml");
    let (code, out, _) = simulate(&[blog.to_str().unwrap(), "--items", "300", "--days", "90", "--json"]);
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["runs"]["completed"].as_u64().unwrap() > 200, "{}", report["runs"]);
    let review = report["steps"].as_array().unwrap().iter().find(|s| s["id"] == "review").unwrap();
    assert!(review["paths"]["draft"].as_u64().unwrap() > 0, "some reviews send the draft back");
}

#[test]
fn replays_recorded_events() {
    let dir = super::validate::tempdir();
    let events = dir.join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"type":"track","event":"Whitepaper Downloaded","userId":"u1","timestamp":"2026-01-05T10:00:00Z","properties":{"topic":"automation"}}"#, "\n",
            r#"{"type":"track","event":"Whitepaper Downloaded","userId":"u2","timestamp":"2026-01-05T10:00:00Z","properties":{"topic":"seo"}}"#, "\n",
            r#"{"type":"track","event":"Demo Booked","userId":"u1","timestamp":"2026-01-06T10:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let nurture = repo_path("blueprints/whitepaper-nurture.yaml");
    let (code, out, err) = simulate(&[
        nurture.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--contacts",
        "1",
        "--days",
        "5",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["conversions"], 1, "u1 entered (topic matches) and booked a demo; u2's topic does not match");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let nurture = repo_path("blueprints/whitepaper-nurture.yaml");
    let (code, _, err) = simulate(&[nurture.to_str().unwrap(), "--start", "yesterday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--start `yesterday` is not an RFC 3339 instant"), "{err}");
    let (code, _, err) = simulate(&[nurture.to_str().unwrap(), "--contacts", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("at least one subject"), "{err}");
    let dir = super::validate::tempdir();
    let behaviour = dir.join("behaviour.yaml");
    std::fs::write(&behaviour, "email_open: 1.5\n").unwrap();
    let (code, _, err) = simulate(&[nurture.to_str().unwrap(), "--behaviour", behaviour.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`email_open` is 1.5; it must be a probability from 0 to 1"), "{err}");
}

#[test]
fn templates_that_fail_on_the_population_are_reported() {
    let dir = super::validate::tempdir();
    let workflow = dir.join("company.yaml");
    std::fs::write(
        &workflow,
        "id: company\nsubject: contact\nsteps:\n  - id: hello\n    action:\n      email: { subject: \"For {{ contact.company }}\", text: \"Hi\" }\n",
    )
    .unwrap();
    let (code, out, err) = simulate(&[workflow.to_str().unwrap(), "--contacts", "50", "--days", "2", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hello = &report["steps"][0];
    assert_eq!(hello["errors"], 50, "no synthetic contact has a company, and there is no default");
    let example = hello["error_example"].as_str().unwrap();
    assert!(example.contains("step `hello`: the subject failed to render"), "{example}");
}

/// `flowmark simulate … | head`: the reader stops early, and the command stops quietly.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::io::Read;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("flowmark"))
        .args(["simulate", "--contacts", "300", "--json"])
        .arg(crate::repo_path("blueprints/whitepaper-nurture.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's read end is dropped here: the rest of the report has nowhere to go.
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "no `error: Broken pipe`");
}
