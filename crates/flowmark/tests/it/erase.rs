//! Erasure (GDPR Art. 17, CCPA deletion) on the real server: a contact who was in a journey,
//! scored, segmented, merged from an anonymous visitor and waiting on a queued email is erased
//! over the API; then every table of the SQLite file is scanned for their id, alias, email and
//! traits, their old events are re-sent with their old `messageId`s, and nothing comes back.

use std::process::Command;

use serde_json::json;

use super::serve::Server;

const ID: &str = "ada-7q2x";
const ALIAS: &str = "anon-5k1m";
const EMAIL: &str = "ada.lovelace-7q2x@example.com";
const NAME: &str = "Adalindequist";

/// Every row of every table of the database, as text, that mentions one of `needles`.
const SCAN: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
needles = sys.argv[2:]
found = []
for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
    for row in db.execute(f'SELECT * FROM "{table}"'):
        text = " ".join(str(v) for v in row)
        for needle in needles:
            if needle in text:
                found.append(f"{table}: {needle}")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
raw = open(sys.argv[1], "rb").read()
for needle in needles:
    if needle.encode() in raw:
        found.append(f"file bytes: {needle}")
print("\n".join(found))
"#;

#[test]
fn an_erased_contact_is_gone_from_every_table_and_stays_gone() {
    let dir = super::validate::fresh_dir("erase");
    let db = dir.join("flowmark.db");
    let server = Server::start(&db);
    let blueprint = std::fs::read(crate::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    let models =
        json!({ "models": [{ "name": "engagement", "rules": [{ "event": "Whitepaper Downloaded", "add": 10 }] }] });
    assert_eq!(server.api("PUT", "/api/score-models", models.to_string().as_bytes()).0, 200);
    let segments =
        json!({ "segments": [{ "name": "readers", "where": "events.count('Whitepaper Downloaded', '30d') >= 1" }] });
    assert_eq!(server.api("PUT", "/api/segments", segments.to_string().as_bytes()).0, 200);
    // Someone else, who must stay.
    let bo = json!({ "userId": "bo-3v8n", "event": "Whitepaper Downloaded", "messageId": "bo-1" });
    assert_eq!(server.send("track", &bo).0, 200);

    // An anonymous visit, then the sign-up that merges it, then the download that starts the
    // nurture journey, scores the contact and puts them in the segment.
    let calls = [
        ("page", json!({ "anonymousId": ALIAS, "name": "Pricing", "messageId": "old-1" })),
        (
            "identify",
            json!({ "userId": ID, "anonymousId": ALIAS, "messageId": "old-2",
                             "traits": { "email": EMAIL, "first_name": NAME } }),
        ),
        (
            "track",
            json!({ "userId": ID, "event": "Whitepaper Downloaded", "messageId": "old-3",
                          "properties": { "topic": "automation", "reader": NAME } }),
        ),
    ];
    for (kind, call) in &calls {
        assert_eq!(server.send(kind, call).0, 200, "{kind}");
    }
    let (_, _, contact) = server.api("GET", &format!("/api/contacts/{ID}"), b"");
    assert_eq!(contact["traits"]["scores"]["engagement"].as_f64().map(|s| s > 0.0), Some(true), "{contact}");
    let (_, _, runs) = server.api("GET", &format!("/api/runs?subject={ID}"), b"");
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");

    // Access first (GDPR Art. 15): everything held about them, in one document.
    let (status, _, export) = server.api("GET", &format!("/api/contacts/{ALIAS}/export"), b"");
    assert_eq!(status, 200, "{export}");
    assert_eq!((export["id"].as_str(), export["aliases"].clone()), (Some(ID), json!([ALIAS])));
    assert_eq!(export["contact"]["traits"]["email"], EMAIL);
    assert!(
        export["events"].as_array().unwrap().len() >= 3 && export["runs"].as_array().unwrap().len() == 1,
        "{export}"
    );
    assert!(export["runs"][0]["history"].as_array().is_some_and(|h| !h.is_empty()));
    assert!(!export["score_history"].as_array().unwrap().is_empty(), "{export}");

    let (status, _, erased) = server.api("DELETE", &format!("/api/contacts/{ALIAS}"), b"");
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["erased"], ALIAS, "an alias finds the contact");
    let mut ids: Vec<&str> = erased["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [ID, ALIAS]);
    assert_eq!(erased["runs"].as_array().unwrap().len(), 1);
    assert!(erased["events"].as_u64().unwrap() >= 3 && erased["contact"] == true, "{erased}");

    assert_eq!(server.api("GET", &format!("/api/contacts/{ID}"), b"").0, 404);
    assert_eq!(server.api("GET", &format!("/api/contacts/{ID}/export"), b"").0, 404, "nothing is held any more");
    assert_eq!(server.api("GET", &format!("/api/runs?subject={ID}"), b"").2, json!([]));
    assert_eq!(server.api("GET", &format!("/api/events?subject={ID}"), b"").2, json!([]));
    // Old events re-sent, with their old ids or new ones: acknowledged, and dropped.
    for (kind, call) in &calls {
        assert_eq!(server.send(kind, call).0, 200, "{kind}");
    }
    let mut fresh = calls[2].1.clone();
    fresh["messageId"] = json!("new-1");
    assert_eq!(server.send("track", &fresh).0, 200);
    assert_eq!(server.api("GET", &format!("/api/contacts/{ID}"), b"").0, 404, "not brought back");
    assert_eq!(server.api("GET", &format!("/api/contacts/{ALIAS}"), b"").0, 404);
    assert_eq!(server.api("GET", &format!("/api/events?subject={ID}"), b"").2, json!([]));
    assert_eq!(server.api("GET", &format!("/api/runs?subject={ID}"), b"").2, json!([]));
    let (status, _, problem) = server.api("PUT", &format!("/api/contacts/{ID}"), br#"{"traits":{"plan":"pro"}}"#);
    assert_eq!((status, problem["title"].as_str()), (409, Some("Contact erased")), "{problem}");
    let (status, _, again) = server.api("DELETE", &format!("/api/contacts/{ID}"), b"");
    assert_eq!(
        (status, again["runs"].as_array().map(Vec::len), again["contact"].as_bool()),
        (200, Some(0), Some(false))
    );
    assert_eq!(server.api("GET", "/api/contacts/bo-3v8n", b"").0, 200, "others stay");
    server.stop();

    let output = Command::new("python3").arg("-c").arg(SCAN).arg(&db).args([ID, ALIAS, EMAIL, NAME]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found = String::from_utf8(output.stdout).unwrap();
    assert_eq!(found.trim(), "", "the database still holds:\n{found}");

    // The CLI erases the same way, on a database no server has open.
    let cli = super::flowmark().args(["erase", "contact", "bo-3v8n", "--json", "--db"]).arg(&db).output().unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let report: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!((report["erased"].as_str(), report["contact"].as_bool()), (Some("bo-3v8n"), Some(true)), "{report}");
}
