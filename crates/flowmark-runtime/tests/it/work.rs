//! People's work end to end on the engine: the blog-post blueprint's tasks and approvals
//! land in the right inboxes, move as people act, loop back on a change request, escalate
//! to the accountable person, and notify people on their channels once.

use flowmark_core::engine::{Decision, RunStatus};
use flowmark_core::{Duration, Timestamp};
use flowmark_runtime::directory::DirectorySource;
use flowmark_runtime::{Connectors, Engine, RecordingConnector, WorkAction, WorkRefusal};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{Store, WorkKind};
use serde_json::json;
use std::sync::Arc;

const MONDAY: Timestamp = Timestamp(1_767_600_000_000); // 2026-01-05T08:00:00Z

fn directory() -> DirectorySource {
    serde_json::from_value(json!({
        "people": [
            { "email": "sam@example.com", "name": "Sam" },
            { "email": "sia@example.com", "name": "Sia", "notify": { "chat": "https://chat.example.com/hook" } },
            { "email": "dana@example.com", "name": "Dana" },
            { "email": "bo@example.com", "name": "Bo", "notify": { "digest": true } },
            { "email": "lee@example.com", "name": "Lee" }
        ],
        "teams": { "content": ["sam@example.com"], "seo": ["sia@example.com"], "brand": ["bo@example.com"] }
    }))
    .expect("a directory")
}

fn setup() -> (Engine<SqliteStore>, flowmark_core::engine::RunId) {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/blog-post.yaml")).unwrap();
    engine.deploy("blog-post.yaml", &source, MONDAY).unwrap();
    engine.set_directory(directory(), MONDAY).unwrap().expect("the directory is valid");
    engine.set_public_url("https://flowmark.example.com/");
    engine.store_mut().upsert_contact("post-1", &json!({ "title": "Ten tips" }), None, MONDAY).unwrap();
    let run = engine.start("blog-post", "post-1", MONDAY).unwrap().expect("the run starts");
    (engine, run)
}

fn ids(items: &[flowmark_store::WorkItem]) -> Vec<String> {
    items.iter().map(|i| format!("{}:{}", i.step, i.role)).collect()
}

fn inbox(engine: &Engine<SqliteStore>, person: &str) -> Vec<flowmark_store::WorkItem> {
    engine.store().work_of_person(person, None, 100).unwrap()
}

#[test]
fn the_blog_post_moves_through_peoples_inboxes_and_loops_back_on_a_change_request() {
    let (mut engine, run) = setup();
    let research = inbox(&engine, "sia@example.com");
    assert_eq!(ids(&research), ["research:seo"]);
    assert_eq!(research[0].title, "Keyword research for Ten tips");
    assert_eq!(research[0].due_at, Some(MONDAY.plus(Duration(2 * Duration::DAY.ms()))));
    assert!(inbox(&engine, "sam@example.com").is_empty(), "the writer has nothing yet");

    // Only the person holding the role may act; a missing required field is refused.
    let id = research[0].id.clone();
    let refused = engine.act_on_work(&id, "sam@example.com", WorkAction::Claim, MONDAY).unwrap();
    assert!(matches!(refused, Err(WorkRefusal::NotYours(_))), "{refused:?}");
    let empty = WorkAction::Complete { fields: serde_json::Map::new() };
    let missing = engine.act_on_work(&id, "sia@example.com", empty, MONDAY).unwrap();
    assert!(matches!(&missing, Err(WorkRefusal::Ignored(r)) if r.contains("keywords")), "{missing:?}");
    let claimed = engine.act_on_work(&id, "SIA@example.com", WorkAction::Claim, MONDAY).unwrap().unwrap();
    assert_eq!(claimed.assignee.as_deref(), Some("sia@example.com"));
    let fields = json!({ "keywords": "workflow, approvals" }).as_object().unwrap().clone();
    let done = engine.act_on_work(&id, "sia@example.com", WorkAction::Complete { fields }, MONDAY).unwrap().unwrap();
    assert_eq!((done.status.as_str(), done.outcome.as_deref()), ("closed", Some("completed")));
    assert_eq!(done.closed_by.as_deref(), Some("sia@example.com"));
    assert!(inbox(&engine, "sia@example.com").is_empty());

    // The draft is the writer's, with the research's keywords in its description.
    let draft = inbox(&engine, "sam@example.com");
    assert_eq!(ids(&draft), ["draft:writer"]);
    assert_eq!(draft[0].description.as_deref(), Some("Target keywords: workflow, approvals"));
    let fields = json!({ "draft_url": "https://docs.example.com/d/1" }).as_object().unwrap().clone();
    engine.act_on_work(&draft[0].id, "sam@example.com", WorkAction::Complete { fields }, MONDAY).unwrap().unwrap();

    // Editor and SEO review in parallel: one approves, the other asks for changes.
    let dana = inbox(&engine, "dana@example.com");
    let sia = inbox(&engine, "sia@example.com");
    assert_eq!((ids(&dana), ids(&sia)), (vec!["review:editor".to_owned()], vec!["review:seo".to_owned()]));
    assert_eq!(dana[0].kind, WorkKind::Approval);
    assert_eq!(dana[0].title, "Approve “Ten tips” (review)");
    let approve = WorkAction::Decide { decision: Decision::Approve, comment: Some("Great".to_owned()) };
    let decided = engine.act_on_work(&dana[0].id, "dana@example.com", approve, MONDAY).unwrap().unwrap();
    assert_eq!(decided.outcome.as_deref(), Some("approve"));
    assert_eq!(ids(&inbox(&engine, "sia@example.com")), ["review:seo"], "the other decision is still pending");
    let changes = WorkAction::Decide { decision: Decision::RequestChanges, comment: Some("More examples".to_owned()) };
    engine.act_on_work(&sia[0].id, "sia@example.com", changes, MONDAY).unwrap().unwrap();
    assert!(inbox(&engine, "sia@example.com").is_empty());

    // Back to the draft: a fresh task for the writer, the old one closed.
    let again = inbox(&engine, "sam@example.com");
    assert_eq!(ids(&again), ["draft:writer"]);
    assert_ne!(again[0].id, draft[0].id, "a new round is a new work item");
    let all = engine.store().work_of_subject("post-1", 100).unwrap();
    let outcomes: Vec<(String, Option<String>)> =
        all.iter().map(|i| (format!("{}:{}", i.step, i.role), i.outcome.clone())).collect();
    assert_eq!(
        outcomes,
        [
            ("research:seo".to_owned(), Some("completed".to_owned())),
            ("draft:writer".to_owned(), Some("completed".to_owned())),
            ("review:editor".to_owned(), Some("approve".to_owned())),
            ("review:seo".to_owned(), Some("request_changes".to_owned())),
            ("draft:writer".to_owned(), None),
        ]
    );
    // The claim is in the run's history.
    let history = engine.store().history(run).unwrap();
    assert!(history.iter().any(|h| h["what"] == "work_assigned" && h["to"] == "sia@example.com"), "{history:?}");
}

#[test]
fn a_review_nobody_decides_escalates_to_the_accountable_person_and_reassignment_reaches_them() {
    let (mut engine, _run) = setup();
    let complete = |engine: &mut Engine<SqliteStore>, person: &str, fields: serde_json::Value, now| {
        let item = inbox(engine, person).remove(0);
        let fields = fields.as_object().unwrap().clone();
        engine.act_on_work(&item.id, person, WorkAction::Complete { fields }, now).unwrap().unwrap();
    };
    complete(&mut engine, "sia@example.com", json!({ "keywords": "k" }), MONDAY);
    complete(&mut engine, "sam@example.com", json!({ "draft_url": "https://d.example.com" }), MONDAY);
    let (recorder, mut connectors) = {
        let recorder = Arc::new(RecordingConnector::default());
        (recorder.clone(), Connectors::new(recorder))
    };
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    // Each reviewer's notification leads to their own decision.
    for (person, role) in [("dana@example.com", "editor"), ("sia@example.com", "seo")] {
        let notes = engine.store().notifications(person, 10).unwrap();
        let asked = notes.iter().find(|n| n.reason == "approval_requested").expect("the reviewer is asked");
        assert!(asked.link.as_deref().unwrap().ends_with(&format!(":{role}")), "{asked:?}");
    }
    // The deadline passes: the accountable person (lee, the workflow's `lead`) is told.
    let later = MONDAY.plus(Duration(Duration::DAY.ms() + Duration::MINUTE.ms()));
    engine.fire_due_timers(later, 100).unwrap();
    // The escalation is resolved to people, then their deliveries go out.
    engine.dispatch(later, 100, &mut connectors).unwrap();
    engine.dispatch(later, 100, &mut connectors).unwrap();
    let lee = engine.store().notifications("lee@example.com", 10).unwrap();
    assert!(lee.iter().any(|n| n.reason == "escalation"), "{lee:?}");
    let sent = recorder.performed();
    let to_lee: Vec<_> = sent
        .iter()
        .filter(|(_, _, message)| message.as_ref().is_some_and(|m| format!("{m:?}").contains("lee@example.com")))
        .collect();
    assert_eq!(to_lee.len(), 1, "one email to the accountable person, nothing twice: {to_lee:#?}");
    // Escalated to, the accountable person may decide both reviews from their inbox.
    assert_eq!(ids(&inbox(&engine, "lee@example.com")), ["review:editor", "review:seo"]);
    // Reassigning a review to the accountable person makes it theirs alone.
    let review = inbox(&engine, "dana@example.com").remove(0);
    let moved = engine
        .act_on_work(&review.id, "lee@example.com", WorkAction::Reassign { to: "lee@example.com".to_owned() }, later)
        .unwrap()
        .unwrap();
    assert_eq!(moved.people, ["lee@example.com"]);
    assert!(inbox(&engine, "dana@example.com").is_empty());
    assert_eq!(ids(&inbox(&engine, "lee@example.com")), ["review:editor", "review:seo"]);
}

#[test]
fn notifications_go_once_per_person_and_channel_or_wait_for_the_digest() {
    let (mut engine, _run) = setup();
    let recorder = Arc::new(RecordingConnector::default());
    let mut connectors = Connectors::new(recorder.clone());
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    let sia = engine.store().notifications("sia@example.com", 10).unwrap();
    assert_eq!(sia.len(), 1, "{sia:?}");
    assert_eq!(sia[0].reason, "task_assigned");
    assert!(sia[0].text.starts_with("New task: Keyword research for Ten tips"), "{}", sia[0].text);
    let link = sia[0].link.clone().unwrap();
    assert!(link.starts_with("https://flowmark.example.com/ui/work/"), "{link}");
    // Sia gets an email and a chat post, each once, though the dispatcher ran twice.
    let performed = recorder.performed();
    let mut kinds: Vec<String> =
        performed.iter().map(|(_, effect, _)| effect["channel"].as_str().unwrap_or("?").to_owned()).collect();
    kinds.sort();
    assert_eq!(kinds, ["chat", "email"], "{performed:#?}");

    // Bo takes a digest: held, then one email at 08:00 in his time zone, once.
    engine.store_mut().upsert_contact("post-2", &json!({ "title": "Brand book" }), None, MONDAY).unwrap();
    let mut source = directory();
    source.roles.insert("seo".to_owned(), flowmark_runtime::directory::Binding::Person("bo@example.com".to_owned()));
    engine.set_directory(source, MONDAY).unwrap().unwrap();
    engine.start("blog-post", "post-2", MONDAY).unwrap().unwrap();
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    let before = recorder.performed().len();
    assert_eq!(engine.store().undigested(10).unwrap().len(), 1);
    let at_seven = Timestamp(MONDAY.ms() + 23 * 3_600_000); // 07:00 UTC the next day
    assert_eq!(engine.send_digests(at_seven).unwrap(), 0, "before the digest hour");
    let at_nine = Timestamp(MONDAY.ms() + 25 * 3_600_000);
    assert_eq!(engine.send_digests(at_nine).unwrap(), 1, "after 08:00 in Bo's time zone");
    assert_eq!(engine.send_digests(at_nine).unwrap(), 0, "once a day");
    engine.dispatch(at_nine, 100, &mut connectors).unwrap();
    let performed = recorder.performed();
    assert_eq!(performed.len(), before + 1);
    let digest = format!("{:?}", performed.last().unwrap().2);
    assert!(digest.contains("Flowmark digest") && digest.contains("Keyword research for Brand book"), "{digest}");
    assert!(engine.store().undigested(10).unwrap().is_empty());
}

#[test]
fn a_comment_notifies_the_people_it_mentions() {
    let (mut engine, _run) = setup();
    let comment = engine
        .add_comment("post-1", None, "sam@example.com", "@dana@example.com can you look? cc @sam@example.com", MONDAY)
        .unwrap()
        .unwrap();
    assert_eq!(comment.by, "sam@example.com");
    assert_eq!(engine.store().comments("post-1", 10).unwrap(), [comment]);
    let dana = engine.store().notifications("dana@example.com", 10).unwrap();
    assert_eq!(dana.len(), 1);
    assert_eq!(dana[0].reason, "mention");
    assert!(engine.store().notifications("sam@example.com", 10).unwrap().is_empty(), "not oneself");
    let empty = engine.add_comment("post-1", None, "sam@example.com", "  ", MONDAY).unwrap();
    assert!(matches!(empty, Err(WorkRefusal::Invalid(_))));
}

/// Completes the research and the draft as their people: the run waits in review.
fn to_review(engine: &mut Engine<SqliteStore>) {
    let research = inbox(engine, "sia@example.com");
    let fields = json!({ "keywords": "k" }).as_object().unwrap().clone();
    engine.act_on_work(&research[0].id, "sia@example.com", WorkAction::Complete { fields }, MONDAY).unwrap().unwrap();
    let draft = inbox(engine, "sam@example.com");
    let fields = json!({ "draft_url": "https://docs.example.com/d/1" }).as_object().unwrap().clone();
    engine.act_on_work(&draft[0].id, "sam@example.com", WorkAction::Complete { fields }, MONDAY).unwrap().unwrap();
}

#[test]
fn a_completed_task_is_reopened_by_its_accountable_and_the_review_is_withdrawn() {
    let (mut engine, run) = setup();
    to_review(&mut engine);
    let draft = engine.store().work_of_subject("post-1", 100).unwrap().into_iter().find(|w| w.step == "draft").unwrap();
    assert_eq!(ids(&inbox(&engine, "dana@example.com")), ["review:editor"]);
    // Someone who neither completed it nor is accountable for it may not.
    let reopen = || WorkAction::Reopen { reason: Some("the brief changed".into()) };
    let refused = engine.act_on_work(&draft.id, "sia@example.com", reopen(), MONDAY).unwrap();
    assert!(matches!(refused, Err(WorkRefusal::NotYours(_))), "{refused:?}");
    // An open item or an approval is not reopened.
    let review = inbox(&engine, "dana@example.com").remove(0);
    let refused = engine.act_on_work(&review.id, "dana@example.com", reopen(), MONDAY).unwrap();
    assert!(matches!(refused, Err(WorkRefusal::Invalid(_))), "{refused:?}");
    // The draft's Accountable (the editor, Dana) sends it back.
    let later = MONDAY.plus(Duration::HOUR);
    let reopened = engine.act_on_work(&draft.id, "dana@example.com", reopen(), later).unwrap().unwrap();
    assert_ne!(reopened.id, draft.id, "a new work item, the completed one keeps its outcome");
    assert_eq!((reopened.step.as_str(), reopened.status.as_str()), ("draft", "open"));
    assert_eq!(ids(&inbox(&engine, "sam@example.com")), ["draft:writer"]);
    assert!(inbox(&engine, "dana@example.com").is_empty(), "the review is withdrawn");
    let all = engine.store().work_of_subject("post-1", 100).unwrap();
    let outcome = |step: &str, role: &str| {
        all.iter().filter(|w| w.step == step && w.role == role).map(|w| w.outcome.clone()).collect::<Vec<_>>()
    };
    assert_eq!(outcome("review", "editor"), [Some("withdrawn".to_owned())]);
    assert_eq!(outcome("draft", "writer"), [Some("completed".to_owned()), None]);
    let history = engine.store().history(run).unwrap();
    assert!(
        history.iter().any(|h| h["what"] == "task_reopened"
            && h["by"] == "dana@example.com"
            && h["reason"] == "the brief changed"
            && h["from"] == "review"),
        "{history:?}"
    );
}

#[test]
fn a_new_deliverable_version_restarts_the_review_and_plain_links_do_not() {
    let (mut engine, run) = setup();
    to_review(&mut engine);
    let editor = inbox(&engine, "dana@example.com").remove(0);
    let approve = WorkAction::Decide { decision: Decision::Approve, comment: None };
    engine.act_on_work(&editor.id, "dana@example.com", approve, MONDAY).unwrap().unwrap();
    assert!(inbox(&engine, "dana@example.com").is_empty(), "the editor has decided");
    let attach = |engine: &mut Engine<SqliteStore>, url: &str, new_version: bool| {
        let attachment = flowmark_runtime::Attachment {
            subject_id: "post-1",
            work_id: None,
            by: "sam@example.com",
            title: "Draft",
            url,
            new_version,
        };
        engine.attach(attachment, MONDAY).unwrap()
    };
    // Bad links are refused, nothing stored.
    for bad in ["javascript:alert(1)", "ftp://x", "https://a b", ""] {
        assert!(matches!(attach(&mut engine, bad, true), Err(WorkRefusal::Invalid(_))), "{bad}");
    }
    assert!(engine.store().comments("post-1", 10).unwrap().is_empty());
    // A reference link changes nothing in the review.
    let link = attach(&mut engine, "https://docs.example.com/brief", false).unwrap();
    assert_eq!(link.version, None);
    assert!(inbox(&engine, "dana@example.com").is_empty());
    // A new version: the editor's approval no longer counts, both reviewers are asked again.
    let v1 = attach(&mut engine, "https://docs.example.com/d/2", true).unwrap();
    assert_eq!(v1.version, Some(1));
    assert_eq!(ids(&inbox(&engine, "dana@example.com")), ["review:editor"]);
    let seo = inbox(&engine, "sia@example.com");
    assert_eq!(ids(&seo), ["review:seo"]);
    assert_eq!(seo[0].detail["round"], 2);
    let history = engine.store().history(run).unwrap();
    assert!(history.iter().any(|h| h["what"] == "approval_reset" && h["version"] == "v1" && h["decisions"] == 1));
    let closed: Vec<_> = engine
        .store()
        .work_of_subject("post-1", 100)
        .unwrap()
        .into_iter()
        .filter(|w| w.step == "review" && w.outcome.as_deref() == Some("reset"))
        .collect();
    assert_eq!(closed.len(), 1, "SEO's undecided round-1 request closed as reset");
    assert_eq!(attach(&mut engine, "https://docs.example.com/d/3", true).unwrap().version, Some(2));
}

#[test]
fn business_day_deadlines_land_in_the_inbox_and_escalate_after_the_weekend() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let source = r#"
id: weekly-brief
subject: item
timezone: UTC
roles:
  writer: { person: sam@example.com }
  lead: { person: lee@example.com }
steps:
  - id: review
    approval:
      approvers: [writer]
      accountable: lead
      due: 1d
      escalate: { after: 1d, to: accountable, action: notify }
      business_days: true
"#;
    let friday = MONDAY.plus(Duration(4 * Duration::DAY.ms())); // 2026-01-09T08:00:00Z
    let monday = friday.plus(Duration(3 * Duration::DAY.ms()));
    engine.deploy("weekly-brief.yaml", source, friday).unwrap();
    engine.set_directory(directory(), friday).unwrap().expect("the directory is valid");
    engine.store_mut().upsert_contact("brief-1", &json!({ "title": "Week 2" }), None, friday).unwrap();
    let run = engine.start("weekly-brief", "brief-1", friday).unwrap().expect("the run starts");
    let asked = inbox(&engine, "sam@example.com");
    assert_eq!(asked[0].due_at, Some(monday), "one working day after Friday 08:00 is Monday 08:00");

    let escalated = |engine: &Engine<SqliteStore>| {
        engine.store().history(run).unwrap().iter().any(|entry| entry["what"] == "approval_escalated")
    };
    // Nothing escalates over the weekend …
    engine.fire_due_timers(Timestamp(monday.ms() - 1), 100).unwrap();
    assert!(!escalated(&engine));
    // … and the accountable lead hears of it on Monday morning.
    engine.fire_due_timers(monday, 100).unwrap();
    assert!(escalated(&engine));
}

/// The draft's RACI consults `seo`: when the draft opens, Sia is told her input is sought,
/// with a link to the item's page (where she comments); the task stays the writer's.
#[test]
fn consulted_people_are_told_when_the_task_opens_and_may_comment() {
    let (mut engine, _run) = setup();
    let research = inbox(&engine, "sia@example.com");
    let fields = json!({ "keywords": "workflow" }).as_object().unwrap().clone();
    engine.act_on_work(&research[0].id, "sia@example.com", WorkAction::Complete { fields }, MONDAY).unwrap().unwrap();
    let recorder = Arc::new(RecordingConnector::default());
    let mut connectors = Connectors::new(recorder.clone());
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    let sia = engine.store().notifications("sia@example.com", 10).unwrap();
    let consulted: Vec<_> = sia.iter().filter(|n| n.reason == "consulted").collect();
    assert_eq!(consulted.len(), 1, "{sia:?}");
    assert!(
        consulted[0].text.starts_with("Your input is sought on the task “Draft Ten tips”"),
        "{}",
        consulted[0].text
    );
    assert_eq!(consulted[0].link.as_deref(), Some("https://flowmark.example.com/ui/items/post-1"));
    assert_eq!(ids(&inbox(&engine, "sam@example.com")), ["draft:writer"]);
    assert!(inbox(&engine, "sia@example.com").is_empty(), "consulted is not responsible: nothing to act on");
    let claim =
        engine.act_on_work(&inbox(&engine, "sam@example.com")[0].id, "sia@example.com", WorkAction::Claim, MONDAY);
    assert!(matches!(claim.unwrap(), Err(WorkRefusal::NotYours(_))), "she may not claim the task");
    let draft = inbox(&engine, "sam@example.com")[0].id.clone();
    let comment = engine.add_comment("post-1", Some(&draft), "sia@example.com", "Use 'approval workflow'", MONDAY);
    assert_eq!(comment.unwrap().unwrap().by, "sia@example.com", "she comments on the draft");
}

/// A workflow's own `notify` step tells its people as the engine's notices do: one
/// notification, an email and a chat post, each once; a `to` that names no one fails, and the run's history says why.
#[test]
fn a_notify_step_reaches_its_people_on_their_channels_once() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let source = r#"
id: launch-note
subject: item
roles:
  lead: { person: sia@example.com }
  ghosts: { team: ghosts }
steps:
  - id: tell
    action:
      notify: { to: lead, message: "{{ item.title }} is out" }
"#;
    engine.deploy("launch-note.yaml", source, MONDAY).unwrap();
    engine
        .deploy(
            "ghost-note.yaml",
            &source.replace("launch-note", "ghost-note").replace("to: lead", "to: ghosts"),
            MONDAY,
        )
        .unwrap();
    engine.set_directory(directory(), MONDAY).unwrap().expect("the directory is valid");
    engine.set_public_url("https://flowmark.example.com/");
    engine.store_mut().upsert_contact("post-9", &json!({ "title": "Spring launch" }), None, MONDAY).unwrap();
    let run = engine.start("launch-note", "post-9", MONDAY).unwrap().expect("the run starts");
    let recorder = Arc::new(RecordingConnector::default());
    let mut connectors = Connectors::new(recorder.clone());
    for _ in 0..3 {
        engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    }
    let sia = engine.store().notifications("sia@example.com", 10).unwrap();
    let told: Vec<_> = sia.iter().filter(|n| n.reason == "message").collect();
    assert_eq!(told.len(), 1, "{sia:?}");
    assert_eq!(told[0].text, "Spring launch is out — “Spring launch”");
    assert_eq!(told[0].link.as_deref(), Some("https://flowmark.example.com/ui/items/post-9"));
    let performed = recorder.performed();
    let mut kinds: Vec<String> =
        performed.iter().map(|(_, effect, _)| effect["channel"].as_str().unwrap_or("?").to_owned()).collect();
    kinds.sort();
    assert_eq!(kinds, ["chat", "email"], "Sia is told by email and chat, each once: {performed:#?}");
    assert!(format!("{performed:?}").contains("Spring launch is out"), "{performed:#?}");
    assert_eq!(engine.run(run).unwrap().unwrap().status, RunStatus::Completed);

    let ghost = engine.start("ghost-note", "post-9", MONDAY).unwrap().expect("the run starts");
    for _ in 0..3 {
        engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    }
    assert_eq!(recorder.performed().len(), 2, "no one to tell: nothing sent");
    let history = engine.store().history(ghost).unwrap();
    let failed = history.iter().find(|entry| entry["what"] == "effect_result").expect("the effect's result");
    assert_eq!(failed["ok"], false, "a notify that names no one fails for good: {history:#?}");
    assert_eq!(failed["detail"], "notify: its `to` names no one in the directory");
}

/// A sign-off asked of one person at a time, escalating up a chain.
const SIGNOFF: &str = r#"
id: signoff
subject: item
roles:
  vp: { person: dana@example.com }
  lead: { person: lee@example.com }
  head: { person: bo@example.com }
steps:
  - id: signoff
    approval:
      approvers: [vp]
      accountable: lead
      escalate: { after: 1d, every: 1d, to: [accountable, head], action: notify }
"#;

#[test]
fn an_escalation_links_to_the_approval_waiting_and_climbs_its_chain() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("signoff.yaml", SIGNOFF, MONDAY).unwrap();
    engine.set_directory(directory(), MONDAY).unwrap().expect("the directory is valid");
    engine.store_mut().upsert_contact("launch", &json!({ "title": "Launch" }), None, MONDAY).unwrap();
    engine.start("signoff", "launch", MONDAY).unwrap().expect("the run starts");
    let mut connectors = Connectors::new(Arc::new(RecordingConnector::default()));
    engine.dispatch(MONDAY, 100, &mut connectors).unwrap();
    let approval = inbox(&engine, "dana@example.com").remove(0);
    for days in 1..=2 {
        let later = MONDAY.plus(Duration(days * Duration::DAY.ms() + Duration::MINUTE.ms()));
        engine.fire_due_timers(later, 100).unwrap();
        engine.dispatch(later, 100, &mut connectors).unwrap();
    }
    // The first escalation to the accountable lead, the second up the chain to the head;
    // each leads to the approval itself, not the item's page.
    for person in ["lee@example.com", "bo@example.com"] {
        let notes = engine.store().notifications(person, 10).unwrap();
        let escalation =
            notes.iter().find(|n| n.reason == "escalation").unwrap_or_else(|| panic!("{person}: {notes:?}"));
        assert_eq!(escalation.link.as_deref(), Some(format!("/ui/work/{}", approval.id).as_str()), "{escalation:?}");
    }
    let lee = engine.store().notifications("lee@example.com", 10).unwrap();
    assert_eq!(lee.iter().filter(|n| n.reason == "escalation").count(), 1, "the lead once, then the chain climbs");
    // The lead decides in the VP's place: the VP is told who decided for them.
    let later = MONDAY.plus(Duration(3 * Duration::DAY.ms()));
    let decide = WorkAction::Decide { decision: Decision::Approve, comment: None };
    engine
        .act_on_work(&approval.id, "lee@example.com", decide, later)
        .unwrap()
        .expect("the accountable lead may decide");
    let dana = engine.store().notifications("dana@example.com", 10).unwrap();
    let told = dana.iter().find(|n| n.reason == "decided_for_you").unwrap_or_else(|| panic!("{dana:?}"));
    assert!(told.text.starts_with("Lee decided “Launch” (vp) in your place: approve"), "{told:?}");
    assert!(engine.store().notifications("lee@example.com", 10).unwrap().iter().all(|n| n.reason != "decided_for_you"));
}
