//! Approvals a team can trust, over the real server's API: separation of duties (an author
//! never approves their own work, one person decides one stage of a round), actors that are
//! people of the directory holding the role, and resets by new versions only from the people
//! responsible or accountable for the item.

use serde_json::{Value, json};

use super::serve::Server;

/// Wes writes and is also in SEO; Dana edits and is also in SEO; Rex has no role.
const TEAM: &str = r#"{
  "people": [
    { "email": "wes@example.com" }, { "email": "sia@example.com" }, { "email": "omar@example.com" },
    { "email": "dana@example.com" }, { "email": "bea@example.com" }, { "email": "lee@example.com" },
    { "email": "rex@example.com" }
  ],
  "teams": {
    "content": ["wes@example.com"],
    "seo": ["sia@example.com", "omar@example.com", "wes@example.com", "dana@example.com"],
    "brand": ["bea@example.com"]
  }
}"#;

fn open_work(server: &Server, step: &str) -> Vec<Value> {
    let (_, _, work) = server.api("GET", "/api/items/post-1/work", b"");
    work["work"].as_array().unwrap().iter().filter(|w| w["step"] == step && w["status"] == "open").cloned().collect()
}

#[test]
fn authors_outsiders_and_strangers_cannot_decide_or_reset_an_approval() {
    let dir = super::validate::fresh_dir("duties");
    let server = Server::start(&dir.join("flowmark.db"));
    let blueprint = std::fs::read(crate::repo_path("blueprints/blog-post.yaml")).unwrap();
    assert_eq!(server.api("POST", "/api/workflows", &blueprint).0, 201);
    assert_eq!(server.api("PUT", "/api/directory", TEAM.as_bytes()).0, 200);
    assert_eq!(server.api("PUT", "/api/contacts/post-1", br#"{"traits":{"title":"Launch"}}"#).0, 200);
    let (_, _, started) = server.api("POST", "/api/workflows/blog-post/runs", br#"{"subject":"post-1"}"#);
    let run = started["run"].as_u64().unwrap();
    let post = |path: &str, body: Value| server.api("POST", path, body.to_string().as_bytes());
    let at_run = |path: &str, body: Value| post(&format!("/api/runs/{run}/{path}"), body);

    assert_eq!(at_run("tasks/research", json!({ "by": "sia@example.com", "fields": { "keywords": "k" } })).0, 200);
    let (status, _, problem) =
        at_run("tasks/draft", json!({ "by": "ghost", "fields": { "draft_url": "https://d/1" } }));
    assert_eq!(status, 403, "a `by` who is nobody completes nothing: {problem}");
    let (status, _, _) =
        at_run("tasks/draft", json!({ "by": "wes@example.com", "fields": { "draft_url": "https://d/1" } }));
    assert_eq!(status, 200);
    let review = open_work(&server, "review");
    let seo = review.iter().find(|w| w["role"] == "seo").unwrap()["id"].as_str().unwrap().to_owned();

    // 1. The writer holds the SEO role too, and may not approve the draft they wrote: not
    //    from the inbox, not over the run's route, not by being handed the approval.
    let (status, _, problem) =
        post(&format!("/api/work/{seo}/decide"), json!({ "by": "wes@example.com", "decision": "approve" }));
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("may not approve their own work"), "{problem}");
    let decide_as =
        |role: &str, by: &str| at_run("approvals/review", json!({ "role": role, "by": by, "decision": "approve" }));
    let (status, _, problem) = decide_as("seo", "wes@example.com");
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("may not approve their own work"), "{problem}");
    let (status, _, problem) =
        post(&format!("/api/work/{seo}/reassign"), json!({ "by": "lee@example.com", "to": "wes@example.com" }));
    assert_eq!(status, 403, "the accountable lead cannot hand it to the author: {problem}");
    // Any `role` and any `by`: the run's route checks the person like the inbox does.
    assert_eq!(decide_as("editor", "wes@example.com").0, 403, "wes is not the editor");
    assert_eq!(decide_as("editor", "ghost").0, 403, "nobody");
    assert_eq!(decide_as("legal", "dana@example.com").0, 409, "no approval of that role is open");

    // 2. One person decides one stage of a round: Dana edits and is in SEO.
    assert_eq!(decide_as("editor", "dana@example.com").0, 200);
    let (status, _, problem) = decide_as("seo", "dana@example.com");
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("already decided a stage of round 1"), "{problem}");

    // 3. A new version resets the round: not from someone with no role, nor from nobody.
    let attach = |by: &str| {
        post(
            "/api/items/post-1/attachments",
            json!({ "by": by, "title": "v2", "url": "https://d/2", "new_version": true }),
        )
    };
    let (status, _, problem) = attach("rex@example.com");
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("only the people responsible or accountable"), "{problem}");
    assert_eq!(attach("ghost").0, 403);
    let (status, _, problem) = post("/api/items/post-1/comments", json!({ "by": "ghost", "body": "hi" }));
    assert_eq!(status, 403, "a comment by nobody: {problem}");
    let (_, _, history) = server.api("GET", &format!("/api/runs/{run}"), b"");
    let resets = |history: &Value| {
        history["history"].as_array().unwrap().iter().filter(|h| h["what"] == "approval_reset").count()
    };
    assert_eq!(resets(&history), 0, "the refused attempts changed nothing");
    // 4. A token bound to a person acts as that person only, whatever the body says.
    let output = std::process::Command::new(assert_cmd::cargo::cargo_bin("flowmark"))
        .args(["token", "create", "--name", "omar", "--scope", "admin", "--person", "Omar@Example.com", "--db"])
        .arg(dir.join("flowmark.db"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let omar = [("Authorization", format!("Bearer {}", String::from_utf8(output.stdout).unwrap().trim()))];
    let as_omar = |body: Value| {
        server.request_with("POST", &format!("/api/runs/{run}/approvals/review"), &omar, body.to_string().as_bytes())
    };
    let (status, _, problem) = as_omar(json!({ "role": "seo", "by": "dana@example.com", "decision": "approve" }));
    assert_eq!((status, problem["title"].as_str()), (403, Some("Not yours to act as")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("acts as `omar@example.com` only"), "{problem}");
    let (status, _, problem) = server.request_with(
        "POST",
        "/api/items/post-1/comments",
        &omar,
        json!({ "by": "wes@example.com", "body": "as someone else" }).to_string().as_bytes(),
    );
    assert_eq!(status, 403, "{problem}");
    let (status, _, answer) = as_omar(json!({ "role": "seo", "decision": "approve" }));
    assert_eq!(status, 200, "no `by`: the token's person decides, and the editor's decision still counts: {answer}");
    let (_, _, history) = server.api("GET", &format!("/api/runs/{run}"), b"");
    let decided = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["what"] == "approval_decision" && h["by"] == "omar@example.com");
    assert!(decided, "the history names the token's person: {history}");
    assert_eq!(open_work(&server, "brand-check").len(), 1, "review approved by two people");
    // The writer, responsible for the draft, may send a new version: brand's round starts over.
    assert_eq!(attach("wes@example.com").0, 201);
    let (_, _, history) = server.api("GET", &format!("/api/runs/{run}"), b"");
    assert_eq!(resets(&history), 1, "{history}");
    server.stop();
}

/// Legal, then the VP, sign off in turn; the lead is accountable, the head above them.
const LAUNCH: &str = r#"
id: launch
subject: item
roles:
  legal: { person: lia@example.com }
  vp: { person: vic@example.com }
  lead: { person: lee@example.com }
  head: { person: hal@example.com }
steps:
  - id: signoff
    approval:
      mode: sequential
      approvers: [legal, vp]
      accountable: lead
      due: 1d
      escalate: { after: 1d, every: 1d, to: [accountable, head], action: notify }
"#;

#[test]
fn a_late_stage_gets_its_own_day_escalates_once_per_period_up_the_chain_and_the_escalated_decide() {
    let dir = super::validate::fresh_dir("duties-stages");
    let sink = super::email::smtp_sink(&dir);
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &["--api-token", "tok", "--clock", "virtual", "--clock-start", "2026-12-07T09:00:00Z", "--smtp-url", &smtp],
    );
    let everyone: Vec<Value> =
        ["lia", "vic", "lee", "hal"].iter().map(|p| json!({ "email": format!("{p}@example.com") })).collect();
    let people = json!({ "people": everyone });
    assert_eq!(server.api("PUT", "/api/directory", people.to_string().as_bytes()).0, 200);
    assert_eq!(server.api("POST", "/api/workflows", LAUNCH.as_bytes()).0, 201);
    let item = json!({ "traits": { "title": "Spring launch" } });
    assert_eq!(server.api("PUT", "/api/contacts/launch-1", item.to_string().as_bytes()).0, 200);
    assert_eq!(server.api("POST", "/api/workflows/launch/runs", br#"{"subject":"launch-1"}"#).0, 201);
    let advance = |to: &str| {
        let (status, _, clock) = server.api("POST", "/api/clock/advance", json!({ "to": to }).to_string().as_bytes());
        assert_eq!(status, 200, "{clock}");
        std::thread::sleep(std::time::Duration::from_millis(400));
    };
    let emails_to = |person: &str| -> Vec<String> {
        sink.received()
            .iter()
            .filter(|m| m["envelope_to"] == json!([person]))
            .map(|m| m["subject"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let settled = |person: &str, count: usize| {
        for _ in 0..100 {
            if emails_to(person).len() >= count {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        emails_to(person)
    };
    // Legal takes 20 hours.
    advance("2026-12-08T05:00:00Z");
    let legal = server.api("GET", "/api/people/lia@example.com/work?kind=approval", b"").2["work"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let decided = json!({ "by": "lia@example.com", "decision": "approve" });
    assert_eq!(server.api("POST", &format!("/api/work/{legal}/decide"), decided.to_string().as_bytes()).0, 200);
    // The VP's day starts now: 23 hours later nobody has been escalated to.
    advance("2026-12-09T04:00:00Z");
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(emails_to("lee@example.com").is_empty(), "the VP still has an hour: {:?}", emails_to("lee@example.com"));
    // A day after the VP was asked: the lead, once; a day later the chain climbs to the head.
    advance("2026-12-09T05:30:00Z");
    let lead = settled("lee@example.com", 1);
    assert_eq!(lead.len(), 1, "{lead:?}");
    assert!(lead[0].contains("waiting past its deadline"), "{lead:?}");
    advance("2026-12-10T05:30:00Z");
    let head = settled("hal@example.com", 1);
    assert_eq!((head.len(), emails_to("lee@example.com").len()), (1, 1), "once per period, up the chain: {head:?}");
    // The escalated lead decides from their inbox, and the VP hears who decided for them.
    let inbox = server.api("GET", "/api/people/lee@example.com/work?kind=approval", b"").2;
    let vp_stage = inbox["work"][0]["id"].as_str().unwrap_or_else(|| panic!("in the lead's inbox: {inbox}")).to_owned();
    let decided = json!({ "by": "lee@example.com", "decision": "approve" });
    let (status, _, answer) =
        server.api("POST", &format!("/api/work/{vp_stage}/decide"), decided.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    let vic = settled("vic@example.com", 2);
    assert!(vic.iter().any(|s| s.contains("in your place")), "{vic:?}");
    let (_, _, runs) = server.api("GET", "/api/runs?workflow=launch", b"");
    assert_eq!(runs[0]["status"], "completed", "{runs}");
    // Both decisions came through an operator's service token: the history names the person
    // and the token, and `why` says so.
    let run = runs[0]["id"].as_u64().unwrap();
    let (_, _, detail) = server.api("GET", &format!("/api/runs/{run}"), b"");
    let decisions: Vec<&Value> =
        detail["history"].as_array().unwrap().iter().filter(|h| h["what"] == "approval_decision").collect();
    assert_eq!(decisions.len(), 2, "{detail}");
    assert!(decisions.iter().all(|d| d["via"] == "an operator's API token"), "{decisions:?}");
    assert_eq!(decisions[1]["by"], "lee@example.com");
    let (_, _, why) = server.api("GET", &format!("/api/runs/{run}/why"), b"");
    assert!(
        why["text"]
            .as_str()
            .unwrap()
            .contains("lee@example.com (vp) (through an operator's API token) decided: approve"),
        "{why}"
    );
    server.stop();
}

/// A workflow's own `notify` to the lead, and a task for a writer in New York.
const ANNOUNCE: &str = r#"
id: announce
subject: item
roles:
  lead: { person: lee@example.com }
  writer: { person: nia@example.com }
steps:
  - id: tell-lead
    action: { notify: { to: lead, message: "{{ item.title }} is out" } }
  - id: follow-up
    task:
      title: "Follow up on {{ item.title }}"
      responsible: writer
      accountable: lead
      due: 2d
"#;

/// A Slack-compatible incoming webhook: every POST body it receives, answered `200 ok`.
fn chat_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let received = posts.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            // Head, then as much body as Content-Length says.
            loop {
                let n = stream.read(&mut buffer).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        received.lock().unwrap().push(body.to_owned());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (format!("http://{address}/hook"), posts)
}

#[test]
fn a_workflows_notify_reaches_the_lead_by_email_and_chat_once_and_email_reads_in_the_readers_zone() {
    let dir = super::validate::fresh_dir("duties-notify");
    let sink = super::email::smtp_sink(&dir);
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let (chat, posts) = chat_receiver();
    let server = Server::start_with(
        &dir.join("flowmark.db"),
        &["--api-token", "tok", "--smtp-url", &smtp, "--webhook-allow-private"],
    );
    let people = json!({ "people": [
        { "email": "lee@example.com", "name": "Lee", "notify": { "email": true, "chat": chat } },
        { "email": "nia@example.com", "name": "Nia", "timezone": "America/New_York" },
    ] });
    assert_eq!(server.api("PUT", "/api/directory", people.to_string().as_bytes()).0, 200);
    assert_eq!(server.api("POST", "/api/workflows", ANNOUNCE.as_bytes()).0, 201);
    let item = json!({ "traits": { "title": "Spring launch" } });
    assert_eq!(server.api("PUT", "/api/contacts/launch-2", item.to_string().as_bytes()).0, 200);
    assert_eq!(server.api("POST", "/api/workflows/announce/runs", br#"{"subject":"launch-2"}"#).0, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let emails = loop {
        let emails = sink.received();
        if emails.len() >= 2 && !posts.lock().unwrap().is_empty() {
            break emails;
        }
        assert!(std::time::Instant::now() < deadline, "emails {emails:?}, chat {:?}", posts.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Give a second delivery the chance to show itself: there must be none.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let to_lee: Vec<_> =
        sink.received().into_iter().filter(|m| m["envelope_to"] == json!(["lee@example.com"])).collect();
    assert_eq!(to_lee.len(), 1, "one email to the lead: {to_lee:?}");
    assert!(to_lee[0]["subject"].as_str().unwrap().contains("Spring launch is out"), "{:?}", to_lee[0]);
    let chat_posts = posts.lock().unwrap().clone();
    assert_eq!(chat_posts.len(), 1, "one chat message: {chat_posts:?}");
    assert!(chat_posts[0].contains("Spring launch is out"), "{chat_posts:?}");
    // The writer in New York reads the task's due time in her zone, in her email too.
    let to_nia = emails.iter().find(|m| m["envelope_to"] == json!(["nia@example.com"])).expect("the writer's email");
    let text = to_nia["text"].as_str().unwrap_or_default().to_owned() + to_nia["subject"].as_str().unwrap_or_default();
    assert!(text.contains(" EST)") && !text.contains("Z)") && !text.contains("UTC)"), "{text}");
    server.stop();
}
