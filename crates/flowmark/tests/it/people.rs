//! The team's work over the real server: a directory, inboxes, actions as people, comments
//! with mentions, and calendar feeds read back by a real iCalendar parser (Python's
//! `icalendar`).

use serde_json::{Value, json};

use super::serve::Server;

fn directory() -> Value {
    json!({
        "people": [
            { "email": "sam@example.com", "name": "Sam" },
            { "email": "sia@example.com", "name": "Sia" },
            { "email": "dana@example.com", "name": "Dana", "timezone": "Europe/Paris" },
            { "email": "bea@example.com", "name": "Bea" },
            { "email": "lee@example.com", "name": "Lee" }
        ],
        "teams": { "content": ["sam@example.com"], "seo": ["sia@example.com"], "brand": ["bea@example.com"] }
    })
}

fn started(dir_name: &str) -> (Server, u64) {
    let dir = super::validate::fresh_dir(dir_name);
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    assert_eq!(server.api("PUT", "/api/directory", directory().to_string().as_bytes()).0, 200);
    let item = json!({ "traits": { "title": "Spring launch", "publish_at": "2099-03-01T09:00:00Z" } });
    assert_eq!(server.api("PUT", "/api/contacts/post-1", item.to_string().as_bytes()).0, 200);
    let (_, _, started) = server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#);
    (server, started["run"].as_u64().unwrap())
}

fn inbox(server: &Server, person: &str, kind: &str) -> Vec<Value> {
    let (status, _, body) = server.api("GET", &format!("/api/people/{person}/work?kind={kind}"), b"");
    assert_eq!(status, 200, "{body}");
    body["work"].as_array().unwrap().clone()
}

fn act(server: &Server, id: &str, action: &str, body: Value) -> (u16, Value) {
    let (status, _, answer) = server.api("POST", &format!("/api/work/{id}/{action}"), body.to_string().as_bytes());
    (status, answer)
}

#[test]
fn people_work_their_inboxes_over_the_api_and_refusals_change_nothing() {
    let (server, run) = started("people-api");
    let bad = json!({ "people": [{ "email": "x@example.com", "away": { "until": "2030-01-01", "delegate": "y@example.com" } }] });
    let (status, _, problem) = server.api("PUT", "/api/directory", bad.to_string().as_bytes());
    assert_eq!(status, 422, "{problem}");
    assert!(problem["errors"][0].as_str().unwrap().contains("delegate `y@example.com` is not in `people`"));
    assert_eq!(server.api("GET", "/api/directory", b"").2["people"].as_array().unwrap().len(), 5, "unchanged");

    let research = inbox(&server, "sia@example.com", "task");
    assert_eq!(research.len(), 1);
    let id = research[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(research[0]["title"], "Keyword research for Spring launch");
    assert_eq!(act(&server, &id, "claim", json!({ "by": "sam@example.com" })).0, 403, "not Sam's");
    assert_eq!(act(&server, &id, "claim", json!({})).0, 400, "who acts?");
    assert_eq!(act(&server, &id, "dance", json!({ "by": "sia@example.com" })).0, 400);
    assert_eq!(act(&server, "no-such", "claim", json!({ "by": "sia@example.com" })).0, 404);
    let (status, answer) = act(&server, &id, "complete", json!({ "by": "sia@example.com" }));
    assert_eq!((status, answer["title"].as_str()), (409, Some("Input ignored")), "{answer}");
    let (status, item) = act(&server, &id, "reassign", json!({ "by": "sia@example.com", "to": "nobody@example.com" }));
    assert_eq!(status, 422, "{item}");
    let fields = json!({ "by": "sia@example.com", "fields": { "keywords": "launch" } });
    let (status, item) = act(&server, &id, "complete", fields.clone());
    assert_eq!((status, item["outcome"].as_str()), (200, Some("completed")), "{item}");
    assert_eq!(act(&server, &id, "complete", fields).0, 409, "closed");

    let draft = inbox(&server, "sam@example.com", "task");
    let id = draft[0]["id"].as_str().unwrap().to_owned();
    let done = json!({ "by": "sam@example.com", "fields": { "draft_url": "https://docs.example.com/1" } });
    assert_eq!(act(&server, &id, "complete", done).0, 200);
    let reviews = inbox(&server, "dana@example.com", "approval");
    assert_eq!(reviews.len(), 1);
    let (status, item) = act(
        &server,
        reviews[0]["id"].as_str().unwrap(),
        "decide",
        json!({ "by": "dana@example.com", "decision": "approve" }),
    );
    assert_eq!((status, item["outcome"].as_str()), (200, Some("approve")), "{item}");

    // Comments with a mention notify the person mentioned.
    let comment = json!({ "by": "dana@example.com", "body": "Nice. @sia@example.com can you check the title?" });
    assert_eq!(server.api("POST", "/api/items/post-1/comments", comment.to_string().as_bytes()).0, 201);
    let (_, _, comments) = server.api("GET", "/api/items/post-1/comments", b"");
    assert_eq!(comments["comments"][0]["by"], "dana@example.com");
    // The dispatcher resolves notifications between requests: wait for it.
    let mut reasons: Vec<String> = Vec::new();
    for _ in 0..100 {
        let (_, _, notes) = server.api("GET", "/api/people/sia@example.com/notifications", b"");
        reasons = notes["notifications"].as_array().unwrap().iter().map(|n| n["reason"].to_string()).collect();
        if reasons.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(reasons.contains(&r#""mention""#.to_owned()), "{reasons:?}");
    assert!(reasons.contains(&r#""task_assigned""#.to_owned()), "{reasons:?}");

    let (_, _, work) = server.api("GET", "/api/items/post-1/work", b"");
    let outcomes: Vec<Value> = work["work"].as_array().unwrap().iter().map(|w| w["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("completed"), json!("completed"), json!("approve"), Value::Null]);
    let (_, _, history) = server.api("GET", &format!("/api/runs/{run}"), b"");
    assert!(history.to_string().contains("sia@example.com"), "who did what is in the run's history");
    server.stop();
}

#[test]
fn calendar_feeds_parse_with_a_real_icalendar_parser_and_need_their_token() {
    let (server, _run) = started("people-calendar");
    let (status, _, urls) = server.api("GET", "/api/people/sia@example.com/calendar", b"");
    assert_eq!(status, 200, "{urls}");
    let person = urls["person"].as_str().unwrap().to_owned();
    let workspace = urls["workspace"].as_str().unwrap().to_owned();
    assert_eq!(server.get_text(&person.replace("sia@", "sam@")).0, 404, "a token opens its own feed only");
    assert_eq!(server.get_text(&format!("{workspace}x")).0, 404);
    let (status, content_type, feed) = server.get_text(&format!("{person}.ics"));
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/calendar"), "{content_type}");
    let (_, _, workspace_feed) = server.get_text(&workspace);
    server.stop();

    let library = super::pip_install("icalendar==7.3.2", "icalendar");
    let parse = r#"
import json, sys
from icalendar import Calendar
out = []
for text in sys.stdin.read().split("\0"):
    cal = Calendar.from_ical(text)
    items = []
    for c in cal.walk():
        if c.name in ("VTODO", "VEVENT"):
            items.append({
                "type": c.name, "uid": str(c["UID"]), "summary": str(c["SUMMARY"]),
                "stamp": c["DTSTAMP"].dt.isoformat(),
                "due": c["DUE"].dt.isoformat() if "DUE" in c else None,
                "start": c["DTSTART"].dt.isoformat() if "DTSTART" in c else None,
            })
    out.append(items)
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", parse])
        .env("PYTHONPATH", &library)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(format!("{feed}\0{workspace_feed}").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "icalendar refused the feeds: {}", String::from_utf8_lossy(&output.stderr));
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let sia = parsed[0].as_array().unwrap();
    assert_eq!(sia.len(), 2, "Sia's research task and the post's publication: {sia:?}");
    assert_eq!(sia[0]["type"], "VTODO");
    assert_eq!(sia[0]["summary"], "Keyword research for Spring launch");
    assert!(sia[0]["due"].as_str().unwrap().ends_with("+00:00"), "DUE is UTC: {}", sia[0]["due"]);
    assert_eq!(sia[1]["type"], "VEVENT");
    assert_eq!(sia[1]["summary"], "Publish: Spring launch");
    assert_eq!(sia[1]["start"], "2099-03-01T09:00:00+00:00");
    assert_eq!(sia[1]["uid"], "publish-post-1@flowmark");
    assert_eq!(parsed[1].as_array().unwrap().len(), 2, "the workspace: all open work and every publication");
}

/// Signs `email` in to the web UI with `password` (set first): the session cookie.
fn ui_session(server: &Server, email: &str, password: &str) -> String {
    let account = json!({ "password": password });
    assert_eq!(server.api("PUT", &format!("/api/accounts/{email}"), account.to_string().as_bytes()).0, 200);
    let form = format!("email={}&password={password}&next=%2Fui", email.replace('@', "%40"));
    let (head, _) = super::serve::raw(
        &server.address,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    head.lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("signed in: {head}"))
        .to_owned()
}

#[test]
fn item_and_approval_pages_show_the_deliverable_the_rounds_decisions_and_closed_due_times() {
    let (server, _run) = started("people-pages");
    let research = inbox(&server, "sia@example.com", "task");
    let fields = json!({ "by": "sia@example.com", "fields": { "keywords": "launch" } });
    assert_eq!(act(&server, research[0]["id"].as_str().unwrap(), "complete", fields).0, 200);
    // The writer attaches the deliverable's first version, then hands the draft in.
    let attach = json!({ "by": "sam@example.com", "title": "Draft v1", "url": "https://docs.example.com/draft-v1", "new_version": true });
    let (status, _, body) = server.api("POST", "/api/items/post-1/attachments", attach.to_string().as_bytes());
    assert_eq!(status, 201, "{body}");
    let draft = inbox(&server, "sam@example.com", "task");
    let done = json!({ "by": "sam@example.com", "fields": { "draft_url": "https://docs.example.com/1" } });
    assert_eq!(act(&server, draft[0]["id"].as_str().unwrap(), "complete", done).0, 200);
    // The editor approves with a comment; SEO's review is still open.
    let review = inbox(&server, "dana@example.com", "approval");
    let decided = json!({ "by": "dana@example.com", "decision": "approve", "comment": "Tight and on brand" });
    assert_eq!(act(&server, review[0]["id"].as_str().unwrap(), "decide", decided).0, 200);
    let seo_review = inbox(&server, "sia@example.com", "approval");
    let seo_review = seo_review[0]["id"].as_str().unwrap().to_owned();

    let cookie = ui_session(&server, "sia@example.com", "sia-password-1");
    let page = |path: &str| {
        let (head, body) = super::serve::raw(&server.address, "GET", path, &[("Cookie", &cookie)], b"");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        body
    };
    // The approval's page: what is under review, and what the round has said so far.
    let approval = page(&format!("/ui/work/{seo_review}"));
    assert!(approval.contains("This round"), "{approval}");
    assert!(approval.contains("https://docs.example.com/draft-v1") && approval.contains("Draft v1"), "{approval}");
    assert!(approval.contains("dana@example.com (editor): <strong>approve</strong>"), "{approval}");
    assert!(approval.contains("Tight and on brand"), "{approval}");
    // The item's page: the decision's comment, and the due times of closed work (Dana in Paris
    // reads her times in her zone; Sia reads UTC).
    let item = page("/ui/items/post-1");
    assert!(item.contains("“Tight and on brand”"), "{item}");
    let work_table = item.split("<h2 id=\"work\">").nth(1).unwrap().split("</table>").next().unwrap();
    let due_cells = work_table.matches("<time datetime=").count();
    assert_eq!(
        due_cells, 4,
        "closed work keeps its due time (research, draft, the editor's review), as open work: {work_table}"
    );
    server.stop();
}
