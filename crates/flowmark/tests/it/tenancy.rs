//! Workspaces isolate, on the real server: a workspace made over the API gets a token that
//! works in it alone; then random request sequences with that workspace's credentials (its
//! token, as a bearer and as a write key, its web UI session, with and without the `/w/…`
//! prefix, and with the other workspace's prefix) over every route the OpenAPI document lists,
//! with ids taken from both workspaces, never show anything of the `default` workspace and
//! never change it.
//!
//! What "anything" is: markers only the default workspace holds (a trait, an event property,
//! a comment, its people's names) that no request of the sequence ever sends, so a marker in
//! an answer can only have come from the default workspace's store. "Never change": a snapshot
//! of the default workspace read with its own token is the same before and after. The server
//! runs on a virtual clock, so nothing in the snapshot moves by itself.
//!
//! The sequence is seeded (`FLOWMARK_TENANCY_SEED` picks another; the seed is in every failure).

use serde_json::{Value, json};

use super::serve::Server;

/// In the default workspace only; never in a request of the sequence.
const MARKERS: [&str; 6] =
    ["b-secret-7731", "b-secret-5521", "b-secret-4242", "Sam (writer)", "Dana (editor)", "victim-b@example.com"];

const DEFAULT_TOKEN: &str = "demo-api-token";

/// A small deterministic generator (splitmix64): the sequence is the seed's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}")), ("Content-Type", "application/json".to_owned())]
}

/// What the default workspace holds, read with its own token.
fn snapshot(server: &Server) -> Vec<(String, u16, String)> {
    let paths = [
        "/api/contacts/victim-b-1",
        "/api/contacts/victim-b-1/export",
        "/api/contacts/demo-contact-1/export",
        "/api/runs?limit=500",
        "/api/workflows",
        "/api/directory",
        "/api/score-models",
        "/api/segments",
        "/api/items/demo-post-1/work",
        "/api/items/demo-post-1/comments",
        "/api/events?subject=victim-b-1",
        "/api/webhooks/gone",
        "/api/people/sam@example.com/notifications",
    ];
    paths
        .iter()
        .map(|path| {
            let (status, _, body) = server.request_text("GET", path, &bearer(DEFAULT_TOKEN), b"");
            (path.to_string(), status, body)
        })
        .collect()
}

#[test]
fn a_workspace_never_sees_or_changes_another() {
    let dir = super::validate::fresh_dir("tenancy");
    let db = dir.join("flowmark.db");
    let server = Server::start_with(&db, &["--demo", "--clock", "virtual", "--clock-start", "2026-12-08T10:00:00Z"]);
    let default = bearer(DEFAULT_TOKEN);

    // The default workspace's own data, with the markers.
    let identify = json!({ "userId": "victim-b-1", "traits": { "email": "victim-b@example.com", "plan": "b-secret-7731" }, "writeKey": "demo-write-key" });
    assert_eq!(server.request_text("POST", "/v1/identify", &default, identify.to_string().as_bytes()).0, 200);
    let track = json!({ "userId": "victim-b-1", "event": "Whitepaper Downloaded", "properties": { "note": "b-secret-5521" }, "messageId": "b-1", "writeKey": "demo-write-key" });
    assert_eq!(server.request_text("POST", "/v1/track", &default, track.to_string().as_bytes()).0, 200);
    let comment = json!({ "by": "lee@example.com", "body": "b-secret-4242" });
    let (status, _, body) =
        server.request_text("POST", "/api/items/demo-post-1/comments", &default, comment.to_string().as_bytes());
    assert_eq!(status, 201, "{body}");

    // A new workspace, by the default workspace's admin; its first token comes back once.
    let (status, _, created) =
        server.request_text("POST", "/api/workspaces", &default, json!({ "name": "acme" }).to_string().as_bytes());
    assert_eq!(status, 201, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!((created["name"].as_str(), created["prefix"].as_str()), (Some("acme"), Some("/w/acme")));
    let acme_token = created["token"].as_str().unwrap().to_owned();
    let acme = bearer(&acme_token);
    for (body, status) in [(json!({ "name": "acme" }), 409), (json!({ "name": "Not Valid" }), 400)] {
        assert_eq!(server.request_text("POST", "/api/workspaces", &default, body.to_string().as_bytes()).0, status);
    }
    // Only the default workspace's admins see or make workspaces, or move the server's clock.
    assert_eq!(server.request_text("GET", "/api/workspaces", &acme, b"").0, 403);
    assert_eq!(server.request_text("POST", "/api/workspaces", &acme, br#"{"name":"evil"}"#).0, 403);
    assert_eq!(server.request_text("POST", "/api/clock/advance", &acme, br#"{"by":"1d"}"#).0, 403);
    let (_, _, whoami) = server.request_text("GET", "/api/workspace", &acme, b"");
    assert_eq!(serde_json::from_str::<Value>(&whoami).unwrap()["name"], "acme");

    // What the finding showed: acme's token read default's contacts, events, runs and
    // directory, and changed a contact. Now each is acme's own (empty) or refused.
    let (status, _, body) = server.request_text("GET", "/api/contacts/victim-b-1", &acme, b"");
    assert_eq!(status, 404, "{body}");
    let (_, _, runs) = server.request_text("GET", "/api/runs?limit=500", &acme, b"");
    assert_eq!(serde_json::from_str::<Value>(&runs).unwrap(), json!([]), "{runs}");
    let (_, _, directory) = server.request_text("GET", "/api/directory", &acme, b"");
    assert!(!directory.contains("Sam (writer)"), "{directory}");
    let (_, _, events) = server.request_text("GET", "/api/events?subject=victim-b-1", &acme, b"");
    assert!(!events.contains("b-secret-5521"), "{events}");
    // Each token is its own workspace's: under the other's prefix it is unknown.
    assert_eq!(server.request_text("GET", "/w/default/api/contacts/victim-b-1", &acme, b"").0, 401);
    assert_eq!(server.request_text("GET", "/w/acme/api/workflows", &default, b"").0, 401);
    // A prefix naming no workspace is a path the server does not serve: nothing says more.
    let (status, _, body) = server.request_text("GET", "/w/nowhere/healthz", &[], b"");
    assert_eq!((status, body.as_str()), (404, ""));
    assert_eq!(sign_in_status(&server, "nowhere", "sam@example.com", "flowmark-demo"), 401);

    // Acme's own life: a workflow, a contact of the same id as default's, an account.
    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    assert_eq!(server.request_text("POST", "/w/acme/api/workflows", &acme, &blueprint).0, 201);
    let acme_identify =
        json!({ "userId": "victim-b-1", "traits": { "email": "someone@acme.test", "plan": "acme-plan" } });
    assert_eq!(server.request_text("POST", "/v1/identify", &acme, acme_identify.to_string().as_bytes()).0, 200);
    let (_, _, contact) = server.request_text("GET", "/api/contacts/victim-b-1", &acme, b"");
    assert!(contact.contains("acme-plan") && !contact.contains("b-secret-7731"), "{contact}");
    let password = json!({ "password": "acme-password-1" });
    assert_eq!(
        server.request_text("PUT", "/api/accounts/ann@acme.test", &acme, password.to_string().as_bytes()).0,
        200
    );
    let cookie = sign_in(&server, "acme", "ann@acme.test", "acme-password-1");
    assert!(cookie.starts_with("fm_session=acme.fm_"), "{cookie}");
    // The default workspace's people cannot sign in to acme with their own password.
    assert_eq!(sign_in_status(&server, "acme", "sam@example.com", "flowmark-demo"), 401);

    let before = snapshot(&server);
    let seed: u64 = std::env::var("FLOWMARK_TENANCY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261208);
    let mut rng = Rng(seed);
    let (_, _, document) = server.request_text("GET", "/api/openapi.json", &[], b"");
    let document: Value = serde_json::from_str(&document).unwrap();
    let mut operations = Vec::new();
    for (template, methods) in document["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            operations.push((method.to_uppercase(), template.clone()));
        }
    }
    // UI pages, read with acme's session.
    for page in [
        "/ui",
        "/ui/runs",
        "/ui/runs/1",
        "/ui/items/demo-post-1",
        "/ui/calendar",
        "/ui/workflows",
        "/ui/workflows/blog-post",
    ] {
        operations.push(("PAGE".to_owned(), page.to_owned()));
    }
    let ids = [
        "victim-b-1",
        "demo-contact-1",
        "demo-post-1",
        "blog-post",
        "whitepaper-nurture",
        "1",
        "2",
        "3",
        "sam@example.com",
        "lee@example.com",
    ];
    let bodies = [
        json!({}),
        json!({ "userId": "victim-b-1", "event": "Whitepaper Downloaded", "messageId": "acme-m" }),
        json!({ "traits": { "plan": "acme-plan" } }),
        json!({ "by": "lee@example.com", "decision": "approve", "comment": "acme says ok" }),
        json!({ "by": "lee@example.com", "body": "acme comment", "fields": { "keywords": "acme" } }),
        json!({ "subject": "demo-post-1" }),
        json!({ "people": [{ "email": "lee@example.com", "name": "Acme Lee" }] }),
        json!({ "url": "https://example.com/hook" }),
        json!({ "password": "acme-password-2" }),
        json!({ "reason": "acme cancels" }),
    ];
    let prefixes = ["", "", "/w/acme", "/w/default"];
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for step in 0..1500 {
        let (method, template) = rng.pick(&operations).clone();
        let mut path = template.clone();
        while let Some(start) = path.find('{') {
            let end = start + path[start..].find('}').unwrap();
            let id = *rng.pick(&ids);
            path.replace_range(start..=end, id);
        }
        let path = format!("{}{path}", rng.pick(&prefixes));
        let body = rng.pick(&bodies).to_string();
        let (method, headers) = match (method.as_str(), rng.next() % 4) {
            ("PAGE", _) => ("GET".to_owned(), vec![("Cookie", cookie.clone())]),
            (_, 0) => {
                let basic =
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{acme_token}:"));
                (
                    method,
                    vec![("Authorization", format!("Basic {basic}")), ("Content-Type", "application/json".to_owned())],
                )
            }
            (_, 1) => (method, vec![("Cookie", cookie.clone()), ("Content-Type", "application/json".to_owned())]),
            _ => (method, acme.clone()),
        };
        let (status, _, answer) = server.request_text(&method, &path, &headers, body.as_bytes());
        *answered.entry(status).or_default() += 1;
        assert!(status < 500, "seed {seed}, step {step}: {method} {path} answered {status}: {answer}");
        for marker in MARKERS {
            assert!(
                !answer.contains(marker),
                "seed {seed}, step {step}: {method} {path} with {body} showed the default workspace's `{marker}`: {answer}"
            );
        }
    }
    eprintln!("tenancy: seed {seed}, answers by status: {answered:?}");
    // The sequence reached handlers, not only refusals.
    assert!(answered.get(&200).copied().unwrap_or(0) >= 200, "seed {seed}: {answered:?}");
    let after = snapshot(&server);
    for ((path, status, body), (_, status_after, body_after)) in before.iter().zip(&after) {
        assert_eq!((status, body), (status_after, body_after), "seed {seed}: the default workspace's {path} changed");
    }
    assert!(before.iter().any(|(_, _, body)| body.contains("b-secret-7731")), "the snapshot reads the markers");
    server.stop();

    // Restarted, the server serves the workspace it finds beside its database.
    let server = Server::start_with(&db, &["--demo"]);
    let (status, _, body) = server.request_text("GET", "/api/workflows", &bearer(&acme_token), b"");
    assert!(status == 200 && body.contains("whitepaper-nurture") && !body.contains("blog-post"), "{status} {body}");
    server.stop();
}

/// Signs in to `workspace`'s web UI: the session cookie (`name=value`).
fn sign_in(server: &Server, workspace: &str, email: &str, password: &str) -> String {
    let form = format!("workspace={workspace}&email={}&password={password}&next=%2Fui", email.replace('@', "%40"));
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (head, _) = super::serve::raw(&server.address, "POST", "/ui/login", &headers, form.as_bytes());
    head.lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("signing in sets a session cookie: {head}"))
        .to_owned()
}

fn sign_in_status(server: &Server, workspace: &str, email: &str, password: &str) -> u16 {
    let form = format!("workspace={workspace}&email={}&password={password}&next=%2Fui", email.replace('@', "%40"));
    let headers = [("Content-Type", "application/x-www-form-urlencoded".to_owned())];
    server.request_text("POST", "/ui/login", &headers, form.as_bytes()).0
}

#[test]
fn workspaces_from_the_command_line() {
    let dir = super::validate::fresh_dir("tenancy-cli");
    let db = dir.join("flowmark.db");
    let flowmark = || std::process::Command::new(assert_cmd::cargo::cargo_bin("flowmark"));
    // A token for a workspace that does not exist is refused, saying how to make it.
    let refused = flowmark()
        .args(["token", "create", "--name", "x", "--scope", "admin", "--workspace", "acme", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("flowmark workspace create acme"));
    assert!(flowmark().args(["workspace", "create", "acme", "--db"]).arg(&db).status().unwrap().success());
    assert!(!flowmark().args(["workspace", "create", "acme", "--db"]).arg(&db).status().unwrap().success(), "once");
    let listed = flowmark().args(["workspace", "list", "--json", "--db"]).arg(&db).output().unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed, json!({ "workspaces": ["default", "acme"] }));
    let made = flowmark()
        .args(["token", "create", "--name", "x", "--scope", "admin,ingest", "--workspace", "acme", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let token = serde_json::from_slice::<Value>(&made.stdout).unwrap()["token"].as_str().unwrap().to_owned();

    let server = Server::start(&db);
    let track = json!({ "userId": "u-acme", "event": "Signed Up", "messageId": "a-1" });
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{token}:"));
    let headers = [("Authorization", format!("Basic {basic}")), ("Content-Type", "application/json".to_owned())];
    assert_eq!(server.request_text("POST", "/v1/track", &headers, track.to_string().as_bytes()).0, 200);
    // With the write key in the body, as some Segment libraries send it, too.
    let track = json!({ "userId": "u-acme-2", "event": "Signed Up", "messageId": "a-2", "writeKey": token });
    let headers = [("Content-Type", "application/json".to_owned())];
    assert_eq!(server.request_text("POST", "/v1/track", &headers, track.to_string().as_bytes()).0, 200);
    let (_, _, events) = server.request_text("GET", "/api/events?subject=u-acme-2", &bearer(&token), b"");
    assert!(events.contains("a-2"), "{events}");
    let (_, _, events) = server.api("GET", "/api/events?subject=u-acme", b"");
    assert_eq!(events, json!([]), "not in the default workspace");
    server.stop();

    // The command line works in a workspace too.
    let exported =
        flowmark().args(["export", "contact", "u-acme", "--workspace", "acme", "--db"]).arg(&db).output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let document: Value = serde_json::from_slice(&exported.stdout).unwrap();
    assert_eq!(document["id"], "u-acme", "{document}");
    let missing = flowmark().args(["export", "contact", "u-acme", "--db"]).arg(&db).output().unwrap();
    assert_eq!(missing.status.code(), Some(1), "not in the default workspace");
    let erased = flowmark()
        .args(["erase", "contact", "u-acme", "--workspace", "acme", "--json", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(erased.status.success(), "{}", String::from_utf8_lossy(&erased.stderr));
}

const HELLO: &str = r#"
id: hello
subject: contact
trigger: { event: Signed Up }
steps:
  - id: hello
    action: { email: { subject: "Hello from {{ env.brand }}", text: "Welcome, {{ contact.first_name }}." } }
"#;

#[test]
fn each_workspace_sends_as_itself_and_its_links_come_back_to_it() {
    let dir = super::validate::fresh_dir("tenancy-email");
    let sink = super::email::smtp_sink(&dir);
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
            "--email-from",
            "Server <server@example.com>",
        ],
    );
    let default = bearer("tok");
    let (_, _, created) =
        server.request_text("POST", "/api/workspaces", &default, json!({ "name": "acme" }).to_string().as_bytes());
    let acme_token = serde_json::from_str::<Value>(&created).unwrap()["token"].as_str().unwrap().to_owned();
    let acme = bearer(&acme_token);
    // Each workspace's own sender and variables; a bad sender is refused, naming the field.
    let bad = json!({ "email_from": "not an address" });
    let (status, _, body) = server.request_text("PUT", "/api/workspace/settings", &acme, bad.to_string().as_bytes());
    assert!(status == 422 && body.contains("email_from"), "{status} {body}");
    for (headers, sender, brand) in
        [(&default, "Default Co <hello@default.example>", "Default Co"), (&acme, "Acme <news@acme.example>", "Acme")]
    {
        let settings = json!({ "email_from": sender, "variables": { "brand": brand } });
        assert_eq!(
            server.request_text("PUT", "/api/workspace/settings", headers, settings.to_string().as_bytes()).0,
            200
        );
        assert_eq!(server.request_text("POST", "/api/workflows", headers, HELLO.as_bytes()).0, 201);
        // The same contact id in both workspaces: two people who never meet.
        let identify = json!({ "userId": "ada", "traits": { "first_name": brand, "email": format!("ada@{}.example", brand.to_lowercase().replace(' ', "")) } });
        assert_eq!(server.request_text("POST", "/v1/identify", headers, identify.to_string().as_bytes()).0, 200);
        let track = json!({ "userId": "ada", "event": "Signed Up" });
        assert_eq!(server.request_text("POST", "/v1/track", headers, track.to_string().as_bytes()).0, 200);
    }
    let (_, _, settings) = server.request_text("GET", "/api/workspace/settings", &acme, b"");
    assert!(settings.contains("news@acme.example") && !settings.contains("default.example"), "{settings}");
    let started = std::time::Instant::now();
    while sink.received().len() < 2 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "two emails, one per workspace");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let received = sink.received();
    let from_acme = received.iter().find(|m| m["envelope_to"] == json!(["ada@acme.example"])).unwrap();
    let from_default = received.iter().find(|m| m["envelope_to"] == json!(["ada@defaultco.example"])).unwrap();
    assert_eq!(
        (from_acme["from"].as_str(), from_acme["subject"].as_str()),
        (Some("Acme <news@acme.example>"), Some("Hello from Acme"))
    );
    assert_eq!(
        (from_default["from"].as_str(), from_default["subject"].as_str()),
        (Some("Default Co <hello@default.example>"), Some("Hello from Default Co"))
    );
    // Acme's unsubscribe link carries its prefix, and unsubscribes acme's Ada only.
    let link = from_acme["list_unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_owned();
    assert!(link.starts_with(&format!("http://{}/w/acme/u/ada/", server.address)), "{link}");
    let default_link = from_default["list_unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_owned();
    // Default's signature does not work under acme's prefix (each workspace signs its own).
    let crossed = default_link.replacen(
        &format!("http://{}/u/", server.address),
        &format!("http://{}/w/acme/u/", server.address),
        1,
    );
    assert_eq!(super::email::post_form(&crossed, "List-Unsubscribe=One-Click").0, 404);
    let (status, page) = super::email::post_form(&link, "List-Unsubscribe=One-Click");
    assert_eq!(status, 200, "{page}");
    // A default link opened in a browser signed in to acme still goes to default, which
    // signed it (the session cookie chooses only for the web UI).
    let path = default_link.replacen(&format!("http://{}", server.address), "", 1);
    let headers = [("Cookie", "fm_session=acme.fm_whatever"), ("Content-Type", "application/x-www-form-urlencoded")];
    let (head, _) = super::serve::raw(&server.address, "GET", &path, &headers, b"");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, _, contact) = server.request_text("GET", "/api/contacts/ada", &acme, b"");
    assert!(contact.contains("\"unsubscribed\":true"), "{contact}");
    let (_, _, contact) = server.request_text("GET", "/api/contacts/ada", &default, b"");
    assert!(!contact.contains("unsubscribed"), "default's Ada is still subscribed: {contact}");
    server.stop();
}
