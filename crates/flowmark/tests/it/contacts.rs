//! `flowmark import contacts` and `flowmark export contacts`, end to end on a database file;
//! and the same import over the API.

use std::process::Command;

use serde_json::{Value, json};
use sha2::Digest;

use super::serve::Server;

fn flowmark(args: &[&str], db: &std::path::Path) -> (i32, String, String) {
    let output =
        Command::new(assert_cmd::cargo::cargo_bin("flowmark")).args(args).arg("--db").arg(db).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn export_json(db: &std::path::Path) -> Vec<Value> {
    let (code, out, err) = flowmark(&["export", "contacts", "--format", "json"], db);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn contacts_import_from_csv_whole_or_not_at_all_and_export_again() {
    let dir = super::validate::fresh_dir("import");
    let db = dir.join("flowmark.db");

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "E-mail Address,Given name,Opt out\nada@example.com,Ada,no\nbob-at-example,Bob,yes\ncy@example.com,Cy,perhaps\n").unwrap();
    let (code, _, err) = flowmark(&["import", "contacts", bad.to_str().unwrap()], &db);
    assert_eq!(code, 1);
    assert!(err.contains("row 3, column `E-mail Address`: `bob-at-example` is not an email address"), "{err}");
    assert!(err.contains("row 4, column `Opt out`: `perhaps` is not a yes or no"), "{err}");
    assert!(err.contains("2 problem(s); nothing was imported"), "{err}");

    let good = dir.join("good.csv");
    std::fs::write(
        &good,
        "E-mail Address,Given name,Signup date,Opt out,Time zone\nada@example.com,Ada,2026-01-05,no,Europe/London\nbob@example.com,Bob,,yes,\n",
    )
    .unwrap();
    let (code, out, err) = flowmark(&["import", "contacts", good.to_str().unwrap()], &db);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 created, 0 updated"), "{out}");
    let contacts = export_json(&db);
    assert_eq!(contacts.len(), 2, "the bad file wrote nothing; the good one wrote both");
    let ada = contacts.iter().find(|c| c["id"] == "ada@example.com").unwrap();
    assert_eq!(ada["traits"]["first_name"], "Ada");
    assert_eq!(ada["traits"]["signup_date"], "2026-01-05");
    assert_eq!(ada["traits"]["unsubscribed"], false);
    assert_eq!(ada["timezone"], "Europe/London");
    let bob = contacts.iter().find(|c| c["id"] == "bob@example.com").unwrap();
    assert_eq!(bob["traits"]["unsubscribed"], true, "the do-not-contact column suppresses");

    let (_, out, _) = flowmark(&["import", "contacts", good.to_str().unwrap()], &db);
    assert!(out.contains("already imported (2 rows)"), "{out}");
    let (_, out, _) = flowmark(&["import", "contacts", good.to_str().unwrap(), "--again"], &db);
    assert!(out.contains("0 created, 2 updated"), "{out}");

    let (code, csv, _) = flowmark(&["export", "contacts", "--format", "csv"], &db);
    assert_eq!(code, 0);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,timezone,email,first_name,signup_date,unsubscribed"));
    assert_eq!(lines.next(), Some("ada@example.com,Europe/London,ada@example.com,Ada,2026-01-05,false"));
}

#[test]
fn an_interrupted_import_resumes_where_it_stopped() {
    let dir = super::validate::fresh_dir("import-resume");
    let db = dir.join("flowmark.db");
    let mut text = String::from("id,email,plan\n");
    for i in 0..2500 {
        text.push_str(&format!("u-{i:04},u{i}@example.com,free\n"));
    }
    let file = dir.join("big.csv");
    std::fs::write(&file, &text).unwrap();
    // An earlier run wrote its first 1 000 rows, then stopped: what its checkpoint says.
    let (code, _, err) = flowmark(&["export", "contacts"], &db);
    assert_ne!(code, 0, "{err}");
    assert_eq!(flowmark(&["token", "create", "--name", "x", "--scope", "admin"], &db).0, 0, "the database exists");
    let digest: String = sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("INSERT INTO settings (key, value) VALUES (?1, '1000')", [format!("import:contacts:{digest}")])
        .unwrap();
    drop(conn);
    let (code, out, err) = flowmark(&["import", "contacts", file.to_str().unwrap()], &db);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resumed after row 1001"), "{out}");
    assert!(out.contains("1500 created, 0 updated"), "{out}");
    assert_eq!(export_json(&db).len(), 1500, "only the rows after the checkpoint were written this time");
}

#[test]
fn contacts_import_over_the_api() {
    let dir = super::validate::fresh_dir("import-api");
    let server = Server::start(&dir.join("flowmark.db"));
    let (status, _, problem) = server.api("POST", "/api/contacts/import", b"email\nnot-an-address\n");
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["row"], 2);
    let (status, _, body) = server.api("POST", "/api/contacts/import", b"Email,First name\nada@example.com,Ada\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["created"], 1);
    let (_, _, contact) = server.api("GET", "/api/contacts/ada@example.com", b"");
    assert_eq!(contact["traits"]["first_name"], "Ada");

    // Imported contacts join their segments at once, not at the next sweep (15 minutes on):
    // the segments' own first pass is long over when the import comes.
    let segments = json!({ "segments": [{ "name": "pro", "where": "contact.plan == 'pro'" }] });
    assert_eq!(server.api("PUT", "/api/segments", segments.to_string().as_bytes()).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, _, body) = server.api(
        "POST",
        "/api/contacts/import",
        b"email,plan
bo@example.com,pro
",
    );
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    loop {
        let (_, _, contact) = server.api("GET", "/api/contacts/bo@example.com", b"");
        if contact["traits"]["segments"] == json!(["pro"]) {
            break;
        }
        assert!(started.elapsed().as_secs() < 10, "the imported contact never joined `pro`: {contact}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop();
}

/// Items (the subjects of item workflows, such as a blog post) share the subjects' table
/// with contacts, but an export of contacts leaves them out.
#[test]
fn an_export_of_contacts_leaves_items_out() {
    let dir = super::validate::fresh_dir("export-items");
    let db = dir.join("flowmark.db");
    let server = Server::start(&db);
    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let item = json!({ "traits": { "title": "Spring launch" } });
    assert_eq!(server.api("PUT", "/api/contacts/post-1", item.to_string().as_bytes()).0, 200);
    let (status, _, started) = server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#);
    assert!(status < 300, "{started}");
    let ada = json!({ "traits": { "email": "ada@example.com" } });
    assert_eq!(server.api("PUT", "/api/contacts/ada", ada.to_string().as_bytes()).0, 200);
    server.stop();
    let ids: Vec<Value> = export_json(&db).into_iter().map(|c| c["id"].clone()).collect();
    assert_eq!(ids, [json!("ada")], "the blog post is an item, not a contact");
    let (code, csv, err) = flowmark(&["export", "contacts", "--format", "csv"], &db);
    assert_eq!(code, 0, "{err}");
    assert_eq!(csv.lines().collect::<Vec<_>>(), ["id,timezone,email", "ada,,ada@example.com"]);
}

#[test]
fn import_export_and_token_options_say_what_they_are() {
    let help = |args: &[&str]| {
        let output = Command::new(assert_cmd::cargo::cargo_bin("flowmark")).args(args).arg("--help").output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let export = help(&["export", "contacts"]);
    assert!(export.contains("The SQLite database file the server uses"), "{export}");
    assert!(export.contains("one JSON object per line"), "{export}");
    let import = help(&["import", "contacts"]);
    assert!(import.contains("a header row naming `id` and/or `email`"), "{import}");
    let token = help(&["token", "create"]);
    assert!(token.contains("--json"), "{token}");
}

#[test]
fn token_create_prints_json_for_tools() {
    let dir = super::validate::fresh_dir("token-json");
    let db = dir.join("flowmark.db");
    let (code, out, err) = flowmark(&["token", "create", "--name", "ci", "--scope", "ingest,admin", "--json"], &db);
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((created["name"].as_str(), created["workspace"].as_str()), (Some("ci"), Some("default")));
    assert_eq!(created["scopes"], json!(["ingest", "admin"]));
    let token = created["token"].as_str().unwrap();
    assert!(token.len() >= 32, "{token}");
    assert!(err.is_empty(), "JSON output says nothing on standard error: {err}");
}
