//! `flowmark serve`, end to end: the real binary on a fresh SQLite file, spoken to over HTTP.
//!
//! Proves: workflows deploy through the API (and bad ones come back as problem details with
//! diagnostics); a Segment track call with the write key starts a run, a duplicate
//! `messageId` does not start another, the limits and keys are enforced with clear errors;
//! and what was acknowledged is still there after the server is stopped and started again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

pub struct Server {
    child: Child,
    pub address: String,
}

/// A test that fails before it stops its server leaves no process behind.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(db: &std::path::Path) -> Server {
        Server::start_with(db, &["--write-key", "wk", "--api-token", "tok"])
    }

    pub fn start_with(db: &std::path::Path, keys: &[&str]) -> Server {
        Server::start_under(Command::new(assert_cmd::cargo::cargo_bin("flowmark")), db, keys)
    }

    /// Starts the server with `command`, which runs the binary (or a wrapper that runs it
    /// with the arguments that follow).
    pub fn start_under(mut command: Command, db: &std::path::Path, keys: &[&str]) -> Server {
        let mut child = command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(keys)
            .arg("--db")
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().rsplit("http://").next().unwrap().to_owned();
        assert!(address.starts_with("127.0.0.1:"), "{line}");
        Server { child, address }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String, Value) {
        let (status, content_type, text) = self.request_text(method, path, headers, body);
        (status, content_type, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn request_text(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String, String) {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let (head, body) = raw(&self.address, method, path, &headers, body);
        let status: u16 = head[9..12].parse().unwrap();
        let content_type = head.lines().find_map(|l| l.strip_prefix("content-type: ")).unwrap_or_default().to_owned();
        (status, content_type, body)
    }

    fn track(&self, write_key: &str, event: &Value) -> (u16, String, Value) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
        let headers = [("Authorization", format!("Basic {basic}")), ("Content-Type", "application/json".to_owned())];
        self.request("POST", "/v1/track", &headers, event.to_string().as_bytes())
    }

    /// A Segment call (`track`, `identify`, …) with the write key `wk`.
    pub fn send(&self, kind: &str, event: &Value) -> (u16, String, Value) {
        let basic = base64::engine::general_purpose::STANDARD.encode("wk:");
        let headers = [("Authorization", format!("Basic {basic}")), ("Content-Type", "application/json".to_owned())];
        self.request("POST", &format!("/v1/{kind}"), &headers, event.to_string().as_bytes())
    }

    /// Any request, with the headers given.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String, Value) {
        self.request(method, path, headers, body)
    }

    /// A GET without credentials, answered as text.
    pub fn get_text(&self, path: &str) -> (u16, String, String) {
        self.request_text("GET", path, &[], b"")
    }

    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
        self.request(method, path, &[("Authorization", "Bearer tok".to_owned())], body)
    }

    /// Is the process still running (it has not exited or aborted)?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the server with SIGKILL: no chance to drain, flush or say goodbye.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        // SIGINT asks for a graceful stop; the server drains and exits by itself.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the server exits cleanly on SIGINT: {status}");
    }
}

#[test]
fn events_in_runs_out_and_everything_acknowledged_survives_a_restart() {
    let dir = super::validate::fresh_dir("serve");
    let db = dir.join("flowmark.db");
    let server = Server::start(&db);
    assert_eq!(server.request("GET", "/healthz", &[], b"").0, 200);

    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    let (status, _, body) = server.api("POST", "/api/workflows", &blueprint);
    assert_eq!((status, body), (201, json!({ "id": "whitepaper-nurture", "version": 1 })));
    let (status, content_type, body) = server.api("POST", "/api/workflows", b"id: bad\nsubject: contact\nsteps: []\n");
    assert_eq!((status, content_type.as_str()), (422, "application/problem+json"));
    assert_eq!(body["diagnostics"][0]["code"], "flowmark::no-steps");
    // A webhook back to this very server is refused, wherever it says so.
    let to_self = format!(
        "id: loop\nsubject: contact\ntrigger: {{ event: Signed Up }}\nsteps:\n  - id: tell\n    action:\n      webhook: {{ url: \"http://{}/v1/track\" }}\n",
        server.address.replace("127.0.0.1", "localhost")
    );
    let (status, _, body) = server.api("POST", "/api/workflows", to_self.as_bytes());
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["diagnostics"][0]["code"], "flowmark::webhook-to-self");
    assert_eq!(server.request("GET", "/api/workflows", &[], b"").0, 401, "the API needs a token");

    let download = json!({ "userId": "ada", "event": "Whitepaper Downloaded", "messageId": "m-1", "properties": { "topic": "automation" } });
    assert_eq!(server.track("wk", &download).0, 200);
    assert_eq!(server.track("wk", &download).0, 200, "a duplicate is acknowledged");
    let (status, _, run) = server.api("GET", "/api/runs/1", b"");
    assert_eq!(status, 200);
    assert_eq!(run["run"]["subject_id"], "ada");
    assert_eq!(run["history"][0]["what"], "run_started");
    assert_eq!(server.api("GET", "/api/runs/2", b"").0, 404, "the duplicate started no second run");

    let (status, _, list) = server.api("GET", "/api/runs?workflow=whitepaper-nurture&status=active", b"");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let step = list[0]["steps"][0].as_str().unwrap().to_owned();
    let (_, _, at_step) = server.api("GET", &format!("/api/runs?step={step}"), b"");
    assert_eq!(at_step[0]["id"], 1, "the step filter finds the run where it stands");
    let (status, _, why) = server.api("GET", "/api/runs/1/why", b"");
    assert_eq!(status, 200);
    assert!(why["text"].as_str().unwrap().contains("started by the event `Whitepaper Downloaded`"), "{why}");
    // The guide is queued, or held when the test runs inside the quiet hours (UTC night).
    let thanks: Vec<&str> = why["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["step"] == "thanks")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(thanks[0], "entered the action step", "{why}");
    assert!(
        thanks[1] == "queued send email as effect `1-thanks-2`" || thanks[1].starts_with("held by quiet hours until"),
        "{why}"
    );
    let (_, _, elsewhere) = server.api("GET", "/api/runs?step=handoff", b"");
    assert_eq!(elsewhere, json!([]));
    let (status, _, problem) = server.api("GET", "/api/runs?colour=red", b"");
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("`colour` is not a filter"));

    assert_eq!(server.api("POST", "/api/workflows/whitepaper-nurture/pause", b"").0, 200);
    let grace = json!({ "userId": "grace", "event": "Whitepaper Downloaded", "messageId": "m-2", "properties": { "topic": "automation" } });
    assert_eq!(server.track("wk", &grace).0, 200);
    let (_, _, graces) = server.api("GET", "/api/runs?subject=grace", b"");
    assert_eq!(graces, json!([]), "a paused workflow starts no run");
    let (status, _, body) = server.api("POST", "/api/workflows/whitepaper-nurture/activate", b"");
    assert_eq!(
        (status, body),
        (200, json!({ "id": "whitepaper-nurture", "status": "active" })),
        "the status as listed"
    );
    assert_eq!(server.api("POST", "/api/workflows/missing/pause", b"").0, 404);

    let (status, content_type, metrics) =
        server.request_text("GET", "/metrics", &[("Authorization", "Bearer tok".to_owned())], b"");
    assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4"));
    assert!(metrics.contains("flowmark_events_ingested_total 2\n"), "{metrics}");
    assert!(metrics.contains("flowmark_events_duplicate_total 1\n"), "{metrics}");
    assert!(metrics.contains("flowmark_runs_started_total 1\n"), "{metrics}");
    assert!(metrics.contains("# TYPE flowmark_timer_lateness_seconds histogram"));
    assert_eq!(server.request("GET", "/metrics", &[], b"").0, 401);

    let (status, _, problem) = server.track("nope", &download);
    assert_eq!((status, problem["title"].as_str()), (401, Some("Unknown credentials")));
    let too_big = json!({ "userId": "ada", "event": "Big", "properties": { "x": "y".repeat(40_000) } });
    let (status, _, problem) = server.track("wk", &too_big);
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("the limit is 32768 bytes (32 KB) per event"), "{problem}");
    server.stop();

    let server = Server::start(&db);
    let (status, _, run) = server.api("GET", "/api/runs/1", b"");
    assert_eq!(status, 200, "the acknowledged run is still there after a restart");
    assert_eq!(run["run"]["status"], "active");
    server.stop();

    // `flowmark why` tells the same story from the database.
    let output = crate::flowmark().args(["why", "1", "--db"]).arg(&db).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("Run 1 of `whitepaper-nurture` v1 for `ada`: active"), "{text}");
    assert!(text.contains("started by the event `Whitepaper Downloaded`"), "{text}");
    let missing = crate::flowmark().args(["why", "99", "--db"]).arg(&db).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

fn create_token(db: &std::path::Path, scope: &str) -> String {
    let output = Command::new(assert_cmd::cargo::cargo_bin("flowmark"))
        .args(["token", "create", "--name", scope, "--scope", scope, "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn stored_tokens_are_checked_by_hash_and_scope() {
    let dir = super::validate::fresh_dir("tokens");
    let db = dir.join("flowmark.db");
    let ingest = create_token(&db, "ingest");
    let admin = create_token(&db, "admin");
    assert!(ingest.starts_with("fm_") && ingest.len() == 67 && ingest != admin);
    let server = Server::start_with(&db, &[]);
    let event = json!({ "userId": "ada", "event": "Signed Up" });
    assert_eq!(server.track(&ingest, &event).0, 200, "an ingest token sends events");
    let (status, _, problem) = server.track(&admin, &event);
    assert_eq!(
        (status, problem["title"].as_str()),
        (403, Some("Missing scope")),
        "an admin-only token does not ingest"
    );
    let bearer = |token: &str| [("Authorization", format!("Bearer {token}"))];
    assert_eq!(server.request("GET", "/api/workflows", &bearer(&admin), b"").0, 200);
    assert_eq!(server.request("GET", "/api/workflows", &bearer(&ingest), b"").0, 403);
    assert_eq!(server.request("GET", "/api/workflows", &bearer("fm_guess"), b"").0, 401);
    // A read token reads what admin reads, and changes nothing.
    let read = create_token(&db, "read");
    for path in ["/api/workflows", "/api/score-models", "/api/runs", "/metrics", "/api/clock"] {
        assert_eq!(server.request("GET", path, &bearer(&read), b"").0, 200, "{path}");
    }
    let blueprint = std::fs::read(crate::repo_path("blueprints/lead-routing.yaml")).unwrap();
    for (method, path, body) in [
        ("POST", "/api/workflows", blueprint.as_slice()),
        ("PUT", "/api/contacts/ada", br#"{"traits":{}}"#.as_slice()),
        ("DELETE", "/api/contacts/ada", b"".as_slice()),
        ("PUT", "/api/score-models", br#"{"models":[]}"#.as_slice()),
    ] {
        let (status, _, problem) = server.request(method, path, &bearer(&read), body);
        assert_eq!((status, problem["title"].as_str()), (403, Some("Missing scope")), "{method} {path}");
    }
    assert_eq!(server.track(&read, &event).0, 403, "a read token does not ingest");
    server.stop();
    // The database and its write-ahead log hold the tokens' hashes, never their text.
    let mut stored = std::fs::read(&db).unwrap();
    stored.extend(std::fs::read(dir.join("flowmark.db-wal")).unwrap_or_default());
    let stored = String::from_utf8_lossy(&stored);
    let hash = flowmark_server::auth::token_hash(&ingest);
    assert!(stored.contains(&hash), "the check can see what is stored");
    assert!(!stored.contains(&ingest) && !stored.contains(&admin), "only hashes are stored");
}

#[test]
fn contacts_events_and_workflow_versions_are_served() {
    let dir = super::validate::fresh_dir("contacts");
    let server = Server::start(&dir.join("flowmark.db"));

    let (status, _, doc) = server.request("GET", "/api/openapi.json", &[], b"");
    assert_eq!(status, 200, "the OpenAPI document is public");
    assert!(doc["paths"]["/api/contacts/{id}"]["put"].is_object());

    let (status, _, contact) =
        server.api("PUT", "/api/contacts/ada", br#"{"traits":{"first_name":"Ada"},"timezone":"Europe/London"}"#);
    assert_eq!(status, 200);
    assert_eq!(
        (contact["traits"]["first_name"].as_str(), contact["timezone"].as_str()),
        (Some("Ada"), Some("Europe/London"))
    );
    let (_, _, contact) = server.api("PUT", "/api/contacts/ada", br#"{"traits":{"plan":"pro"}}"#);
    assert_eq!(contact["traits"], json!({ "first_name": "Ada", "plan": "pro" }), "traits merge");
    assert_eq!(contact["timezone"], "Europe/London", "an absent time zone keeps the stored one");
    let (status, _, problem) = server.api("PUT", "/api/contacts/ada", br#"{"timezone":"Mars/Olympus"}"#);
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("IANA time zone"), "{problem}");
    let (status, _, problem) = server.api("PUT", "/api/contacts/ada", br#"{"trait":{}}"#);
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("`trait` is not a field"), "{problem}");
    let (_, _, unchanged) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(unchanged["traits"], json!({ "first_name": "Ada", "plan": "pro" }), "bad bodies change nothing");
    assert_eq!(server.api("GET", "/api/contacts/nobody", b"").0, 404);

    for (id, name) in [("e-1", "Signed Up"), ("e-2", "Webinar Joined"), ("e-1", "Signed Up")] {
        let event = json!({ "userId": "ada", "event": name, "messageId": id, "timestamp": "2026-11-20T10:00:00Z" });
        assert_eq!(server.track("wk", &event).0, 200);
    }
    let (status, _, events) = server.api("GET", "/api/events?subject=ada", b"");
    assert_eq!(status, 200);
    let names: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["Signed Up", "Webinar Joined"], "each messageId once, oldest first");
    let (_, _, newest) = server.api("GET", "/api/events?subject=ada&limit=1", b"");
    assert_eq!(newest.as_array().unwrap().len(), 1);
    let (_, _, later) = server.api("GET", "/api/events?subject=ada&since=2026-11-21T00:00:00Z", b"");
    assert_eq!(later, json!([]));
    assert_eq!(server.api("GET", "/api/events", b"").0, 400, "a subject is required");
    assert_eq!(server.request("GET", "/api/events?subject=ada", &[], b"").0, 401);

    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    let (_, _, deployed) = server.api("POST", "/api/workflows", &blueprint);
    let id = deployed["id"].as_str().unwrap();
    let (status, _, version) = server.api("GET", &format!("/api/workflows/{id}"), b"");
    assert_eq!(status, 200);
    assert_eq!((version["version"].as_u64(), version["status"].as_str()), (Some(1), Some("active")));
    assert_eq!(version["source"].as_str().unwrap().as_bytes(), &blueprint[..]);
    assert_eq!(server.api("GET", &format!("/api/workflows/{id}?version=2"), b"").0, 404);

    // The API's manual trigger: a run for a named item, once (the entry rule is `never`).
    let (status, _, started) = server.api("POST", &format!("/api/workflows/{id}/runs"), br#"{"subject":"post-42"}"#);
    assert_eq!(status, 201, "{started}");
    let (_, _, run) = server.api("GET", &format!("/api/runs/{}", started["run"]), b"");
    assert_eq!(run["run"]["subject_id"], "post-42");
    let (status, _, problem) = server.api("POST", &format!("/api/workflows/{id}/runs"), br#"{"subject":"post-42"}"#);
    assert_eq!((status, problem["title"].as_str()), (409, Some("Entry refused")));
    assert_eq!(server.api("POST", "/api/workflows/nope/runs", br#"{"subject":"x"}"#).0, 404);
    assert_eq!(server.api("POST", &format!("/api/workflows/{id}/runs"), br#"{"who":"x"}"#).0, 400);
    server.stop();
}

#[test]
fn alias_merges_an_anonymous_visitor_into_the_known_contact() {
    let dir = super::validate::fresh_dir("alias");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    // An anonymous visitor downloads the whitepaper: a run starts for the anonymous id.
    let download = json!({ "anonymousId": "anon-7", "event": "Whitepaper Downloaded", "messageId": "a-1",
                           "properties": { "topic": "automation" }, "context": { "campaign": { "source": "ads" } } });
    assert_eq!(server.send("track", &download).0, 200);
    let page = json!({ "anonymousId": "anon-7", "traits": { "utm_source": "ads" } });
    assert_eq!(server.send("identify", &page).0, 200);
    // They sign up: the site aliases the anonymous id to the user id.
    let (status, _, problem) = server.send("alias", &json!({ "userId": "user-42" }));
    assert_eq!(status, 400, "an alias needs its previousId: {problem}");
    assert_eq!(server.send("alias", &json!({ "userId": "user-42", "previousId": "anon-7" })).0, 200);
    let (_, _, runs) = server.api("GET", "/api/runs?subject=user-42", b"");
    assert_eq!(runs.as_array().unwrap().len(), 1, "the run moved to the known contact: {runs}");
    let (_, _, contact) = server.api("GET", "/api/contacts/user-42", b"");
    assert_eq!(contact["traits"]["utm_source"], "ads", "the anonymous traits came along");
    // Later calls that carry only the anonymous id land on the known contact.
    let late = json!({ "anonymousId": "anon-7", "event": "Pricing Viewed", "messageId": "a-2" });
    assert_eq!(server.send("track", &late).0, 200);
    let (_, _, events) = server.api("GET", "/api/events?subject=user-42", b"");
    let names: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&"Whitepaper Downloaded") && names.contains(&"Pricing Viewed"), "{names:?}");
    assert_eq!(server.api("GET", "/api/events?subject=anon-7", b"").2, json!([]));
    server.stop();
}

const HANDOFF: &str = r#"
id: sales-handoff
subject: contact
trigger: { event: Lead Qualified }
steps:
  - id: tell-sales
    action: { notify: { to: sales, message: "{{ contact.email | default: 'A lead' }} scored {{ event.properties.score }}" } }
roles:
  sales: { team: sales }
"#;

#[test]
fn a_score_crossing_its_threshold_hands_the_lead_to_sales() {
    let dir = super::validate::fresh_dir("scoring");
    let server = Server::start(&dir.join("flowmark.db"));
    assert_eq!(server.api("POST", "/api/workflows", HANDOFF.as_bytes()).0, 201);
    let bad = json!({ "models": [{ "name": "engagement", "half_life": "soon", "rules": [{ "event": "X", "add": 1, "where": "nope > 1" }] }] });
    let (status, _, problem) = server.api("PUT", "/api/score-models", bad.to_string().as_bytes());
    assert_eq!(status, 422);
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
    let models = json!({ "models": [{
        "name": "engagement", "half_life": "30d",
        "rules": [
            { "event": "Email Link Clicked", "add": 30 },
            { "event": "Webinar Attended", "where": "event.properties.minutes > 20", "add": 25 }
        ],
        "thresholds": [{ "at": 50, "event": "Lead Qualified" }]
    }]});
    assert_eq!(server.api("PUT", "/api/score-models", models.to_string().as_bytes()).0, 200);
    let (_, _, stored) = server.api("GET", "/api/score-models", b"");
    assert_eq!(stored["models"][0]["rules"][1]["where"], "event.properties.minutes > 20");
    assert_eq!(stored["models"][0]["thresholds"][0]["at"].as_f64(), Some(50.0));

    let identify = json!({ "userId": "ada", "traits": { "email": "ada@example.com" } });
    assert_eq!(server.send("identify", &identify).0, 200);
    let click = json!({ "userId": "ada", "event": "Email Link Clicked", "messageId": "c-1" });
    assert_eq!(server.send("track", &click).0, 200);
    assert_eq!(server.api("GET", "/api/runs?workflow=sales-handoff", b"").2, json!([]), "30 is below 50");
    let short =
        json!({ "userId": "ada", "event": "Webinar Attended", "messageId": "w-1", "properties": { "minutes": 5 } });
    assert_eq!(server.send("track", &short).0, 200);
    let long =
        json!({ "userId": "ada", "event": "Webinar Attended", "messageId": "w-2", "properties": { "minutes": 45 } });
    assert_eq!(server.send("track", &long).0, 200);

    let (_, _, runs) = server.api("GET", "/api/runs?workflow=sales-handoff", b"");
    assert_eq!(runs.as_array().unwrap().len(), 1, "crossing 50 handed the lead to sales: {runs}");
    let (_, _, scores) = server.api("GET", "/api/contacts/ada/scores", b"");
    let now = scores["scores"]["engagement"].as_f64().unwrap();
    assert!((54.9..=55.0).contains(&now), "30 + 25, barely decayed: {scores}");
    let history = scores["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "the short webinar did not count: {scores}");
    assert_eq!(history[0]["reason"], "event:Webinar Attended");
    assert_eq!(history[1]["after"], 30.0);
    let (_, _, events) = server.api("GET", "/api/events?subject=ada", b"");
    let qualified =
        events.as_array().unwrap().iter().find(|e| e["event"] == "Lead Qualified").expect("the event is stored");
    assert_eq!(qualified["payload"]["properties"]["model"], "engagement");
    server.stop();
}

const VIP_WELCOME: &str = r#"
id: vip-welcome
subject: contact
trigger: { segment: vip }
steps:
  - id: tell-sales
    action: { notify: { to: sales, message: "{{ contact.email | default: 'A contact' }} is now a VIP" } }
roles:
  sales: { team: sales }
"#;

#[test]
fn segments_over_the_api_move_with_events_and_start_workflows() {
    let dir = super::validate::fresh_dir("segments");
    let server = Server::start(&dir.join("flowmark.db"));
    assert_eq!(server.api("POST", "/api/workflows", VIP_WELCOME.as_bytes()).0, 201);
    let bad = json!({ "segments": [
        { "name": "vip", "where": "events.count('Order Completed', 'a while') >= 3" },
        { "name": "vip", "where": "contact.plan = 'pro'" },
    ]});
    let (status, _, problem) = server.api("PUT", "/api/segments", bad.to_string().as_bytes());
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3, "{problem}");
    let (status, _, problem) = server.api("PUT", "/api/segments", br#"{"segmints": []}"#);
    assert_eq!((status, problem["title"].as_str()), (400, Some("Invalid segments")));
    assert_eq!(server.api("GET", "/api/segments", b"").2, json!({ "segments": [] }), "nothing was stored");
    let good = json!({ "segments": [
        { "name": "vip", "description": "Three orders in a month", "where": "events.count('Order Completed', '30d') >= 3" },
    ]});
    assert_eq!(server.api("PUT", "/api/segments", good.to_string().as_bytes()).0, 200);
    assert_eq!(server.api("GET", "/api/segments", b"").2, good);
    for n in 1..=3 {
        let order = json!({ "userId": "ada", "event": "Order Completed", "messageId": format!("o-{n}") });
        assert_eq!(server.send("track", &order).0, 200);
    }
    let (_, _, contact) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(contact["traits"]["segments"], json!(["vip"]), "{contact}");
    let (_, _, runs) = server.api("GET", "/api/runs?workflow=vip-welcome", b"");
    assert_eq!(runs.as_array().unwrap().len(), 1, "entering `vip` started the welcome: {runs}");
    let (status, _, explained) = server.api("GET", "/api/contacts/ada/segments", b"");
    assert_eq!(status, 200);
    assert_eq!(explained[0]["member"], true);
    assert_eq!(explained[0]["inputs"]["events"]["Order Completed@30d"], 3, "{explained}");
    assert_eq!(server.api("GET", "/api/contacts/nobody/segments", b"").0, 404);
    // A contact written through the API moves membership at once.
    let segments = json!({ "segments": [{ "name": "pro", "where": "contact.plan == 'pro'" }] });
    assert_eq!(server.api("PUT", "/api/segments", segments.to_string().as_bytes()).0, 200);
    let (status, _, contact) = server.api("PUT", "/api/contacts/grace", br#"{"traits": {"plan": "pro"}}"#);
    assert_eq!(status, 200);
    assert_eq!(contact["traits"]["segments"], json!(["pro"]), "{contact}");
    server.stop();
}

#[test]
fn oversized_batches_unknown_calls_and_forged_pixels_change_nothing() {
    let dir = super::validate::fresh_dir("bad-input");
    let server = Server::start(&dir.join("flowmark.db"));
    // 20 events of 30 KB: each under the per-event limit, the batch over 500 KB.
    let item = json!({ "type": "track", "userId": "ada", "event": "Big", "properties": { "x": "y".repeat(30_000) } });
    let batch = json!({ "batch": vec![item; 20] });
    let (status, _, problem) = server.send("batch", &batch);
    assert_eq!((status, problem["title"].as_str()), (400, Some("Batch too large")));
    assert!(problem["detail"].as_str().unwrap().contains("the limit is 512000 bytes (500 KB) per batch"), "{problem}");
    let (status, _, problem) = server.send("purchase", &json!({ "userId": "ada" }));
    assert_eq!((status, problem["title"].as_str()), (404, Some("Unknown call")));
    // Past the limit of any body: refused, as a problem detail that names the limit. One byte
    // over: the limit is crossed by the body's last byte, so the server has read the whole
    // request when it answers, and the connection is not reset under the answer.
    let mut stream = TcpStream::connect(&server.address).unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode("wk:");
    let oversized = 1024 * 1024 + 1;
    write!(
        stream,
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/json\r\nContent-Length: {oversized}\r\n\r\n"
    )
    .unwrap();
    // The server may answer (and stop reading) before the whole body is sent.
    let _ = stream.write_all(&vec![b' '; oversized]);
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let (head, body) = read_answer(&mut BufReader::new(stream));
    let response = format!("{head}\r\n\r\n{body}");
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("content-type: application/problem+json"), "{response}");
    assert!(response.contains("the limit for any request"), "{response}");
    let mut stream = TcpStream::connect(&server.address).unwrap();
    write!(stream, "GET /t/o/not-a-token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let head = String::from_utf8_lossy(&response[..response.len().min(200)]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("content-type: image/gif"),
        "the pixel answers either way: {head}"
    );
    assert_eq!(server.api("GET", "/api/events?subject=ada", b"").2, json!([]), "nothing was stored");
    server.stop();
}

/// The blog post's team: writers, two SEO people (one researches, the other reviews), brand.
pub const BLOG_TEAM: &str = r#"{
  "people": [
    { "email": "wes@example.com" }, { "email": "sia@example.com" }, { "email": "omar@example.com" },
    { "email": "dana@example.com" }, { "email": "bea@example.com" }, { "email": "lee@example.com" },
    { "email": "rex@example.com" }
  ],
  "teams": {
    "content": ["wes@example.com"], "seo": ["sia@example.com", "omar@example.com"], "brand": ["bea@example.com"]
  }
}"#;

#[test]
fn the_blog_post_blueprint_is_driven_through_tasks_and_approvals_over_the_api() {
    let dir = super::validate::fresh_dir("blog-post");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    assert_eq!(server.api("PUT", "/api/directory", BLOG_TEAM.as_bytes()).0, 200);
    assert_eq!(server.api("PUT", "/api/contacts/post-1", br#"{"traits":{"title":"Spring launch"}}"#).0, 200);
    let (_, _, started) = server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#);
    let run = started["run"].as_u64().unwrap();
    let post =
        |path: &str, body: Value| server.api("POST", &format!("/api/runs/{run}/{path}"), body.to_string().as_bytes());

    let (status, _, problem) = post("tasks/draft", json!({ "by": "wes@example.com" }));
    assert_eq!((status, problem["title"].as_str()), (409, Some("Input ignored")), "the run is at research, not draft");
    let (status, _, at) =
        post("tasks/research", json!({ "by": "sia@example.com", "fields": { "keywords": "workflow automation" } }));
    assert_eq!((status, at["steps"].clone()), (200, json!(["draft"])));
    post("tasks/draft", json!({ "by": "wes@example.com", "fields": { "draft_url": "https://docs.example.com/d/1" } }));
    assert_eq!(
        post("approvals/review", json!({ "role": "editor", "by": "dana@example.com", "decision": "maybe" })).0,
        400
    );
    let (_, _, at) =
        post("approvals/review", json!({ "role": "editor", "by": "dana@example.com", "decision": "approve" }));
    assert_eq!(at["steps"], json!(["review"]), "parallel review waits for SEO too");
    let (_, _, at) = post(
        "approvals/review",
        json!({ "role": "seo", "by": "omar@example.com", "decision": "request_changes", "comment": "More keywords" }),
    );
    assert_eq!(at["steps"], json!(["draft"]), "changes requested: back to the draft");
    post("tasks/draft", json!({ "by": "wes@example.com", "fields": { "draft_url": "https://docs.example.com/d/2" } }));
    post("approvals/review", json!({ "role": "editor", "by": "dana@example.com", "decision": "approve" }));
    let (_, _, at) =
        post("approvals/review", json!({ "role": "seo", "by": "omar@example.com", "decision": "approve" }));
    assert_eq!(at["steps"], json!(["brand-check"]), "a fresh round, approved by both");
    let (_, _, at) =
        post("approvals/brand-check", json!({ "role": "brand", "by": "bea@example.com", "decision": "approve" }));
    assert_eq!(
        at["steps"],
        json!(["done", "social"]),
        "published; the newsletter is notified and waits at the join, social waits"
    );
    let (_, _, at) = post("tasks/social", json!({ "by": "wes@example.com" }));
    assert_eq!(at["status"], "completed");
    let (_, _, why) = server.api("GET", &format!("/api/runs/{run}/why"), b"");
    let text = why["text"].as_str().unwrap();
    assert!(
        text.contains(
            "omar@example.com (seo) (through an operator's API token) decided: request changes — \"More keywords\""
        ),
        "{text}"
    );
    assert_eq!(post("cancel", json!({})).0, 409, "an ended run takes no more input");
    server.stop();
}

#[test]
fn a_calls_context_time_zone_becomes_the_contacts() {
    let dir = super::validate::fresh_dir("context-timezone");
    let server = Server::start(&dir.join("flowmark.db"));
    let page = |id: &str, tz: &str| json!({ "userId": "ada", "event": "Page Viewed", "messageId": id, "context": { "timezone": tz } });
    assert_eq!(server.send("track", &page("p-1", "Europe/Paris")).0, 200);
    let (_, _, first) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(first["timezone"], "Europe/Paris", "the browser's time zone is the contact's");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(server.send("track", &page("p-2", "Europe/Paris")).0, 200);
    let (_, _, same) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(same["updated_at"], first["updated_at"], "the same time zone again writes nothing");
    assert_eq!(server.send("track", &page("p-3", "Not/AZone")).0, 200, "an unknown zone is ignored, not refused");
    assert_eq!(server.send("track", &page("p-4", "America/New_York")).0, 200);
    let (_, _, moved) = server.api("GET", "/api/contacts/ada", b"");
    assert_eq!(moved["timezone"], "America/New_York", "a new one replaces it");
    server.stop();
}

#[test]
fn an_api_call_runs_lead_routing_and_answers_with_its_result() {
    let dir = super::validate::fresh_dir("respond");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/lead-routing.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let start = |subject: &str, score: i64| {
        let body = json!({ "subject": subject, "event": { "name": "Lead Scored", "properties": { "score": score } } });
        server.api("POST", "/api/workflows/lead-routing/runs", body.to_string().as_bytes())
    };

    // No waits in the workflow: the answer comes after its end, with what its steps did.
    let (status, _, hot) = start("lead-1", 72);
    assert_eq!(status, 201, "{hot}");
    assert_eq!(hot["status"], "completed");
    assert_eq!(hot["steps"]["hot"]["set"], json!({ "segment": "hot" }));
    assert!(hot["steps"].get("cold").is_none(), "{hot}");
    let (_, _, cold) = start("lead-2", 10);
    assert_eq!(cold["steps"]["cold"]["set"]["segment"], "cold");
    // The run's decision record says why.
    let (_, _, run) = server.api("GET", &format!("/api/runs/{}", hot["run"]), b"");
    let decision = &run["decisions"][0];
    assert_eq!(
        (decision["inputs"]["event.properties.score"].as_i64(), decision["path"].as_str()),
        (Some(72), Some("hot"))
    );

    // Concurrent calls share commits and each gets its own answer.
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..24).map(|i| scope.spawn(move || (i, start(&format!("lead-c{i}"), i * 5)))).collect();
        for call in calls {
            let (i, (status, _, answer)) = call.join().unwrap();
            let segment = if i * 5 > 50 { "hot" } else { "cold" };
            assert_eq!(status, 201, "{answer}");
            assert_eq!(answer["steps"][segment]["set"]["segment"], segment, "{answer}");
        }
    });

    // An update is internal: it is in the commit the answer waited for, and its result is in
    // the run's history.
    assert_eq!(server.api("GET", "/api/contacts/lead-1", b"").2["traits"]["segment"], "hot");
    let result = run["history"].as_array().unwrap().iter().find(|h| h["what"] == "effect_result").cloned();
    assert_eq!(result.map(|h| h["ok"].clone()), Some(json!(true)), "{run}");

    // Bad starts are refused with the reason and start nothing.
    let (_, _, before) = server.api("GET", "/api/runs?workflow=lead-routing", b"");
    for (body, says) in [
        (r#"{"subject":"x","event":"Lead Scored"}"#, "`event` must be an object"),
        (r#"{"subject":"x","event":{"properties":{}}}"#, "`event.name` must be a non-empty string"),
        (r#"{"subject":"x","event":{"name":"L","properties":[1]}}"#, "`event.properties` must be an object"),
        (r#"{"subject":"x","event":{"name":"L","when":"now"}}"#, "unknown field `event.when`"),
        (r#"{"subject":"x","score":1}"#, "unknown field `score`"),
        (r#"{"subject":""}"#, "`subject` must be a non-empty string"),
    ] {
        let (status, _, problem) = server.api("POST", "/api/workflows/lead-routing/runs", body.as_bytes());
        assert_eq!(status, 400, "{body}");
        assert!(problem["detail"].as_str().unwrap().contains(says), "{body}: {problem}");
    }
    let oversized = json!({ "subject": "x", "event": { "name": "L", "properties": { "pad": "x".repeat(40_000) } } });
    let (status, _, problem) = server.api("POST", "/api/workflows/lead-routing/runs", oversized.to_string().as_bytes());
    assert_eq!((status, problem["title"].as_str()), (400, Some("Start too large")));
    assert_eq!(server.api("GET", "/api/runs?workflow=lead-routing", b"").2, before, "nothing started");
    server.stop();
}

#[test]
fn bad_flags_stop_serve_before_it_opens_anything() {
    let dir = super::validate::fresh_dir("bad-flags");
    let db = dir.join("flowmark.db");
    let cases: [(&[&str], &str); 6] = [
        (&["--effects-per-second", "0"], "is not a rate"),
        (&["--smtp-per-second", "fast"], "is not a rate"),
        (&["--effects-concurrency", "0"], "0 is not in 1..=256"),
        (&["--webhook-secret", "not-a-secret"], "a webhook secret is not usable"),
        (&["--inbound-webhook-secret", "whsec_!!"], "a webhook secret is not usable"),
        (&["--smtp-url", "ftp://mail.example.com"], "`ftp` is not smtp or smtps"),
    ];
    for (flags, says) in cases {
        let output = crate::flowmark()
            .args(["serve", "--bind", "127.0.0.1:0", "--db"])
            .arg(&db)
            .args(flags)
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?} says {says:?}: {stderr}");
        assert!(!db.exists(), "{flags:?} opened the database");
    }
}

/// A raw request that answers with the whole head (status line and headers) and the body.
/// The connection is kept alive and the answer read by its length (or its chunks), and the
/// client closes first: a server closing a connection under an answer can reset it before
/// the answer is read.
pub fn raw(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    read_answer(&mut BufReader::new(stream))
}

/// Reads one HTTP/1.1 answer: its head, then a body of `content-length` bytes or in chunks.
fn read_answer(reader: &mut impl BufRead) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_ascii_lowercase())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length = header("content-length").map_or(0, |value| value.parse().unwrap());
        body.resize(length, 0);
        reader.read_exact(&mut body).unwrap();
    }
    (head.trim_end().to_owned(), String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn ui_filters_and_calendar_parameters_that_do_not_parse_are_ignored() {
    let dir = super::validate::fresh_dir("ui-bad-params");
    let server = Server::start_with(&dir.join("flowmark.db"), &["--demo"]);
    let form = "email=sam%40example.com&password=flowmark-demo&next=%2Fui";
    let (head, _) = raw(
        &server.address,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    let cookie = head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("signing in sets a session cookie: {head}"))
        .to_owned();
    let page = |path: &str| {
        let (head, body) = raw(&server.address, "GET", path, &[("Cookie", &cookie)], b"");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        body
    };
    // The page without the parameters is fetched before and after: a day or a due time that
    // turns between two requests changes the page, and the bad parameters' page must match
    // one of the two.
    let same_as_plain = |plain: &str, bad: &str| {
        let before = page(plain);
        let with_bad = page(bad);
        let after = page(plain);
        assert!(with_bad == before || with_bad == after, "{bad} gives the page of {plain}");
        before
    };
    let all_runs = same_as_plain("/ui/runs", "/ui/runs?status=bogus&version=x");
    assert!(all_runs.contains("blog-post"), "the demo's blog post run is listed");
    same_as_plain("/ui/calendar", "/ui/calendar?date=not-a-date&view=fortnight");
    server.stop();
}

#[test]
fn a_retried_start_with_the_same_idempotency_key_answers_the_run_it_started() {
    let dir = super::validate::fresh_dir("idempotent-start");
    let db = dir.join("flowmark.db");
    let server = Server::start(&db);
    let blueprint = std::fs::read(crate::repo_path("blueprints/lead-routing.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let start_scored = |address: &str, key: &str, subject: &str, score: u32| {
        let body = json!({ "subject": subject, "event": { "name": "Lead Scored", "properties": { "score": score } } });
        let headers = [("Authorization", "Bearer tok"), ("Idempotency-Key", key), ("Content-Type", "application/json")];
        let (head, body) =
            raw(address, "POST", "/api/workflows/lead-routing/runs", &headers, body.to_string().as_bytes());
        let status: u16 = head[9..12].parse().unwrap();
        (status, head.contains("idempotent-replayed: true"), serde_json::from_str::<Value>(&body).unwrap())
    };
    let start = |address: &str, key: &str, subject: &str| start_scored(address, key, subject, 72);

    let (status, replayed, first) = start(&server.address, "order-17", "lead-1");
    assert_eq!((status, replayed, first["status"].as_str()), (201, false, Some("completed")), "{first}");
    let (status, replayed, again) = start(&server.address, "order-17", "lead-1");
    assert_eq!((status, replayed), (201, true), "a retry is answered as a replay");
    assert_eq!(again, first, "with the run the first call started, where it stands");

    // Concurrent retries of one start (they may share a commit): one run between them.
    let answers: Vec<(u16, bool, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8).map(|_| scope.spawn(|| start(&server.address, "order-18", "lead-2"))).collect();
        calls.into_iter().map(|call| call.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, _, answer)| *status == 201 && answer["run"] == answers[0].2["run"]));
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "exactly one call started the run");

    // The same key for another subject is a mistake, not a retry; a bad key is refused.
    let (status, _, problem) = start(&server.address, "order-17", "lead-9");
    assert_eq!((status, problem["title"].as_str()), (422, Some("Idempotency key reused")), "{problem}");
    // So is the same key for the same subject with another event.
    let (status, _, problem) = start_scored(&server.address, "order-17", "lead-1", 10);
    assert_eq!((status, problem["title"].as_str()), (422, Some("Idempotency key reused")), "{problem}");
    for bad in ["x".repeat(256), "two words".to_owned()] {
        let (status, _, problem) = start(&server.address, &bad, "lead-3");
        assert_eq!((status, problem["title"].as_str()), (400, Some("Invalid idempotency key")), "{problem}");
    }
    let runs = server.api("GET", "/api/runs?workflow=lead-routing", b"").2;
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "two starts, two runs: {runs}");

    // Keys are durable: after a restart a retry still finds its run.
    server.stop();
    let server = Server::start(&db);
    let (status, replayed, after) = start(&server.address, "order-17", "lead-1");
    assert_eq!((status, replayed, &after["run"]), (201, true, &first["run"]));
    server.stop();
}

#[test]
fn the_server_goes_on_when_nobody_reads_its_output() {
    let dir = super::validate::fresh_dir("closed-stdout");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("flowmark"))
        .args(["serve", "--demo", "--bind", &address, "--db"])
        .arg(dir.join("flowmark.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Whoever started it stops reading before the server says where it listens.
    drop(child.stdout.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let health = loop {
        if let Ok(stream) = TcpStream::connect(&address) {
            let mut stream = stream;
            write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
            break read_answer(&mut BufReader::new(stream));
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(std::time::Instant::now() < deadline, "the server never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(health.0.starts_with("HTTP/1.1 200"), "{health:?}");
    assert!(child.try_wait().unwrap().is_none(), "the server is still running");
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success(), "and stops cleanly");
}

/// One sign-in through the UI's form: the status, and the `Retry-After` header if any.
fn sign_in(address: &str, email: &str, password: &str) -> (u16, Option<u64>, String) {
    let form = format!("email={}&password={password}&next=%2Fui", email.replace('@', "%40"));
    let (head, body) =
        raw(address, "POST", "/ui/login", &[("Content-Type", "application/x-www-form-urlencoded")], form.as_bytes());
    let status = head[9..12].parse().unwrap();
    let retry = head.lines().find_map(|l| l.strip_prefix("retry-after: ")).map(|v| v.trim().parse().unwrap());
    (status, retry, body)
}

#[test]
fn failed_sign_ins_back_off_and_a_flood_of_them_leaves_the_server_responsive() {
    let dir = super::validate::fresh_dir("sign-in-throttle");
    let server = Server::start_with(&dir.join("flowmark.db"), &["--demo"]);
    let address = server.address.clone();

    // Forty wrong passwords in a row: five are checked, the rest wait out the lock unchecked.
    let answers: Vec<(u16, Option<u64>)> =
        (0..40).map(|i| sign_in(&address, "sam@example.com", &format!("guess-{i}"))).map(|(s, r, _)| (s, r)).collect();
    assert!(answers[..5].iter().all(|a| a.0 == 401), "{answers:?}");
    assert!(answers[5..].iter().all(|a| a.0 == 429 && a.1 == Some(1)), "{answers:?}");
    let (status, retry, page) = sign_in(&address, "sam@example.com", "flowmark-demo");
    assert_eq!((status, retry), (429, Some(1)), "the right password is not accepted while the account is locked");
    assert!(page.contains("Too many failed sign-ins (5 in a row)"), "the form says why and for how long: {page}");
    assert_eq!(sign_in(&address, "dana@example.com", "flowmark-demo").0, 303, "other accounts sign in");

    // 128 concurrent wrong sign-ins (spread over accounts) while /healthz is asked: most are
    // refused before any Argon2 work, and the server keeps answering.
    let slowest_health = std::thread::scope(|scope| {
        let flood: Vec<_> = (0..128)
            .map(|i| {
                let address = address.clone();
                scope.spawn(move || sign_in(&address, &format!("user{}@example.com", i % 8), "wrong").0)
            })
            .collect();
        let health = scope.spawn(|| {
            (0..20)
                .map(|_| {
                    let asked = std::time::Instant::now();
                    assert_eq!(server.get_text("/healthz").0, 200);
                    asked.elapsed()
                })
                .max()
                .unwrap()
        });
        let statuses: Vec<u16> = flood.into_iter().map(|h| h.join().unwrap()).collect();
        let checked = statuses.iter().filter(|s| **s == 401).count();
        assert!(checked <= 20, "at most the address's free failures were checked, not {checked}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 128 - checked);
        health.join().unwrap()
    });
    assert!(slowest_health < std::time::Duration::from_secs(2), "/healthz answered within {slowest_health:?}");

    // Once the lock has passed, the right password works and clears the record.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(sign_in(&address, "sam@example.com", "flowmark-demo").0, 303);
    server.stop();
}

#[test]
fn slow_heads_slow_bodies_and_huge_declared_bodies_are_cut_off() {
    let dir = super::validate::fresh_dir("slow-clients");
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &["--write-key", "wk", "--api-token", "tok", "--header-timeout", "1", "--body-timeout", "1"],
    );
    let address = server.address.clone();
    // Six slowloris connections: a request head trickled one header every 200 ms, forever.
    let held: Vec<_> = (0..6)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut stream = TcpStream::connect(&address).unwrap();
                stream.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
                let _ = stream.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n");
                loop {
                    let mut buffer = [0u8; 256];
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                    if stream.write_all(b"X-Slow: 1\r\n").is_err() || started.elapsed().as_secs() > 20 {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    // A declared body of 100 GB is refused before a byte of it is sent.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n")
        .unwrap();
    let (head, body) = read_answer(&mut BufReader::new(&mut stream));
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(body.contains("Request too large"), "{body}");
    // A body that stops halfway is answered 408 once its second is up.
    let mut stream = TcpStream::connect(&address).unwrap();
    let asked = std::time::Instant::now();
    stream
        .write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d2s6\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"userId\":")
        .unwrap();
    let (head, body) = read_answer(&mut BufReader::new(&mut stream));
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(body.contains("did not arrive within 1 seconds"), "{body}");
    assert!(asked.elapsed() < std::time::Duration::from_secs(5));
    for slow in held {
        let held_for = slow.join().unwrap();
        assert!(held_for < std::time::Duration::from_secs(5), "a slowloris connection stayed open {held_for:?}");
    }
    assert_eq!(server.get_text("/healthz").0, 200);
    server.stop();
}

#[test]
fn ui_times_read_in_the_readers_own_time_zone() {
    let dir = super::validate::fresh_dir("ui-zones");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let team = json!({
        "people": [{ "email": "sia@example.com", "timezone": "America/New_York" }, { "email": "omar@example.com" }],
        "teams": { "seo": ["sia@example.com", "omar@example.com"] }
    });
    assert_eq!(server.api("PUT", "/api/directory", team.to_string().as_bytes()).0, 200);
    for person in ["sia@example.com", "omar@example.com"] {
        let path = format!("/api/accounts/{person}");
        assert_eq!(server.api("PUT", &path, br#"{"password":"correct horse"}"#).0, 200);
    }
    assert_eq!(server.api("PUT", "/api/contacts/post-1", br#"{"traits":{"title":"Launch"}}"#).0, 200);
    assert_eq!(server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#).0, 201);
    let page = |email: &str| {
        let (head, _) = raw(
            &server.address,
            "POST",
            "/ui/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            format!("email={}&password=correct+horse&next=%2Fui", email.replace('@', "%40")).as_bytes(),
        );
        let cookie =
            head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap().split(';').next().unwrap().to_owned();
        raw(&server.address, "GET", "/ui", &[("Cookie", &cookie)], b"").1
    };
    // The research task is due in two days: Sia reads it in New York time, Omar in UTC.
    let sia = page("sia@example.com");
    assert!(sia.contains(" EST</time>") && !sia.contains(" UTC</time>"), "{sia}");
    // Her notification of the task says its due time as she reads it, not a raw timestamp.
    let (_, _, notes) = server.api("GET", "/api/people/sia@example.com/notifications", b"");
    let text = notes.to_string();
    assert!(text.contains("(due ") && text.contains(" EST)") && !text.contains("Z)"), "{text}");
    let omar = page("omar@example.com");
    assert!(omar.contains(" UTC</time>"), "{omar}");
    server.stop();
}

/// The session cookie of one demo sign-in, as set (`set-cookie` value), sent with `extra`
/// headers.
fn session_cookie_set(address: &str, extra: &[(&str, &str)]) -> String {
    let form = "email=sam%40example.com&password=flowmark-demo&next=%2Fui";
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    let (head, _) = raw(address, "POST", "/ui/login", &headers, form.as_bytes());
    head.lines().find_map(|line| line.strip_prefix("set-cookie: ")).unwrap_or_else(|| panic!("{head}")).to_owned()
}

#[test]
fn session_cookies_are_secure_over_https() {
    let dir = super::validate::fresh_dir("secure-cookies");
    // Reached over plain http: no `Secure` (the browser would drop the cookie).
    let server = Server::start_with(&dir.join("plain.db"), &["--demo"]);
    let plain = session_cookie_set(&server.address, &[]);
    assert!(plain.contains("HttpOnly") && !plain.contains("Secure"), "{plain}");
    // Behind a TLS-terminating proxy that says so.
    let proxied = session_cookie_set(&server.address, &[("X-Forwarded-Proto", "https")]);
    assert!(proxied.contains("; Secure"), "{proxied}");
    server.stop();
    // Declared as reached at an https URL.
    let server = Server::start_with(&dir.join("https.db"), &["--demo", "--public-url", "https://flowmark.example.com"]);
    let declared = session_cookie_set(&server.address, &[]);
    assert!(declared.contains("; Secure") && declared.contains("SameSite=Lax"), "{declared}");
    server.stop();
}
