//! The served OpenAPI document, checked by the field's validator and against what the server
//! really answers.
//!
//! `openapi-spec-validator` (from PyPI) validates the document `serve` publishes; then the
//! JSON answers of a demo server — lists, details, writes and refusals — are each validated
//! (`jsonschema`, draft 2020-12) against the schema the document gives for that operation,
//! status and content type, so a body that drifts from its description fails here.

use serde_json::{Value, json};

use super::serve::Server;

const VALIDATOR: &str = "openapi-spec-validator==0.9.0";

/// Validates the document, then each `(method, path template, status, content type, body)`.
const SCRIPT: &str = r#"
import json, sys
from openapi_spec_validator import validate
from jsonschema import Draft202012Validator
doc = json.load(open(sys.argv[1]))
validate(doc)
checked, failures = 0, []
for answer in json.load(open(sys.argv[2])):
    where = f"{answer['method'].upper()} {answer['path']} {answer['status']}"
    response = doc["paths"][answer["path"]][answer["method"]]["responses"].get(str(answer["status"]))
    if response is None:
        failures.append(f"{where}: the status is not documented")
        continue
    media = response.get("content", {}).get(answer["content_type"])
    if media is None:
        failures.append(f"{where}: {answer['content_type']} is not documented")
        continue
    schema = dict(media["schema"], components=doc["components"])
    for error in sorted(Draft202012Validator(schema).iter_errors(answer["body"]), key=str):
        failures.append(f"{where}: {error.message[:200]} at {list(error.absolute_path)}")
    checked += 1
assert not failures, "\n".join(failures)
print(f"ok {checked}")
"#;

#[test]
fn the_document_is_valid_and_describes_what_the_server_answers() {
    let library = super::pip_install(VALIDATOR, "openapi_spec_validator");
    let dir = super::validate::fresh_dir("openapi");
    let server = Server::start_with(&dir.join("flowmark.db"), &["--demo", "--write-key", "wk", "--api-token", "tok"]);
    let (status, _, doc) = server.api("GET", "/api/openapi.json", b"");
    assert_eq!(status, 200);

    let mut answers = Vec::new();
    let mut record = |method: &str, template: &str, path: &str, body: &[u8]| -> Value {
        let (status, content_type, value) = server.api(method, path, body);
        let content_type = content_type.split(';').next().unwrap_or_default().to_owned();
        answers.push(json!({
            "method": method.to_lowercase(), "path": template, "status": status,
            "content_type": content_type, "body": value,
        }));
        value
    };
    // Reads of what the demo holds.
    let workflows = record("GET", "/api/workflows", "/api/workflows", b"");
    let workflow = workflows[0]["id"].as_str().expect("the demo deploys workflows").to_owned();
    record("GET", "/api/workflows/{id}", &format!("/api/workflows/{workflow}"), b"");
    let runs = record("GET", "/api/runs", "/api/runs", b"");
    let run = runs[0]["id"].as_u64().expect("the demo starts runs");
    record("GET", "/api/runs/{id}", &format!("/api/runs/{run}"), b"");
    record("GET", "/api/runs/{id}/why", &format!("/api/runs/{run}/why"), b"");
    let events = record("GET", "/api/events", "/api/events?subject=demo-contact-1", b"");
    assert!(events.as_array().is_some_and(|e| !e.is_empty()), "the demo contact has events");
    record("GET", "/api/contacts/{id}", "/api/contacts/demo-contact-1", b"");
    record("GET", "/api/contacts/{id}/scores", "/api/contacts/demo-contact-1/scores", b"");
    record("GET", "/api/contacts/{id}/segments", "/api/contacts/demo-contact-1/segments", b"");
    let models = record("GET", "/api/score-models", "/api/score-models", b"");
    let segments = record("GET", "/api/segments", "/api/segments", b"");
    let directory = record("GET", "/api/directory", "/api/directory", b"");
    assert!(directory.is_object(), "the demo has a directory");
    // The documents written back as read.
    record("PUT", "/api/score-models", "/api/score-models", models.to_string().as_bytes());
    record("PUT", "/api/segments", "/api/segments", segments.to_string().as_bytes());
    record("PUT", "/api/directory", "/api/directory", directory.to_string().as_bytes());
    let work = record("GET", "/api/items/{id}/work", "/api/items/demo-post-1/work", b"");
    let item = work["work"][0]["id"].as_str().expect("the demo post has work").to_owned();
    record("GET", "/api/work/{id}", &format!("/api/work/{item}"), b"");
    let person = work["work"][0]["assignees"][0].as_str().unwrap_or("sam@example.com").to_owned();
    record("GET", "/api/people/{email}/work", &format!("/api/people/{person}/work"), b"");
    record("GET", "/api/people/{email}/notifications", &format!("/api/people/{person}/notifications"), b"");
    record("GET", "/api/people/{email}/calendar", &format!("/api/people/{person}/calendar"), b"");
    record("GET", "/api/items/{id}/comments", "/api/items/demo-post-1/comments", b"");
    record("GET", "/api/webhooks/gone", "/api/webhooks/gone", b"");
    // Writes.
    let source =
        b"id: by-hand\nsubject: contact\ntrigger: { manual: true }\nsteps:\n  - id: hello\n    action: { update: { set: { greeted: yes } } }\n";
    record("POST", "/api/workflows", "/api/workflows", source);
    record("POST", "/api/workflows/{id}/{action}", "/api/workflows/by-hand/activate", b"");
    record("POST", "/api/workflows/{id}/runs", "/api/workflows/by-hand/runs", br#"{"subject":"ada"}"#);
    record("PUT", "/api/contacts/{id}", "/api/contacts/ada", br#"{"traits":{"first_name":"Ada"}}"#);
    record(
        "POST",
        "/api/items/{id}/comments",
        "/api/items/demo-post-1/comments",
        format!(r#"{{"by":"{person}","body":"Looks good"}}"#).as_bytes(),
    );
    record(
        "PUT",
        "/api/accounts/{email}",
        "/api/accounts/new@example.com",
        br#"{"password":"a long enough password"}"#,
    );
    // Refusals.
    record("POST", "/api/workflows", "/api/workflows", b"id: bad\nsubject: contact\nsteps: []\n");
    record("GET", "/api/runs", "/api/runs?status=sleeping", b"");
    record("GET", "/api/runs/{id}", "/api/runs/999999", b"");
    record("GET", "/api/contacts/{id}", "/api/contacts/nobody", b"");
    record("POST", "/api/runs/{id}/cancel", "/api/runs/999999/cancel", b"");
    let written =
        answers.iter().filter(|a| a["method"] != "get" && a["status"].as_u64().is_some_and(|s| s < 300)).count();
    assert_eq!(written, 9, "every write but the refusals succeeds: {answers:#?}");
    let problems = answers.iter().filter(|a| a["content_type"] == "application/problem+json").count();
    assert!(problems >= 5, "the refusals are problem details ({problems})");

    let doc_file = dir.join("openapi.json");
    let answers_file = dir.join("answers.json");
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    std::fs::write(&answers_file, Value::Array(answers).to_string()).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&doc_file)
        .arg(&answers_file)
        .env("PYTHONPATH", &library)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("ok "), "{stdout}");
    server.stop();
}
