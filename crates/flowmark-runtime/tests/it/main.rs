//! The runtime end to end on an in-memory SQLite store and a virtual clock: deploy the nurture
//! blueprint, send events, fire timers, dispatch effects through a recording connector.

use flowmark_core::engine::{Event, RunStatus};
use flowmark_core::render::Message;
use flowmark_core::{Duration, Timestamp};
use std::sync::Arc;

use flowmark_runtime::{Connectors, Engine, Incoming, Outcome, RecordingConnector, retry};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{RunFilter, Store, WorkflowStatus};
use serde_json::json;

mod claims;
mod emit;
mod segments;
mod work;

const NOON: Timestamp = Timestamp(1_767_614_400_000); // 2026-01-05T12:00:00Z

fn engine() -> Engine<SqliteStore> {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/whitepaper-nurture.yaml"))
            .unwrap();
    assert_eq!(engine.deploy("whitepaper-nurture.yaml", &source, NOON).unwrap(), ("whitepaper-nurture".to_owned(), 1));
    assert_eq!(engine.deploy("again.yaml", &source, NOON).unwrap().1, 1, "the same source is not a new version");
    let changed = source.replace("Whitepaper nurture", "Whitepaper nurture (v2)");
    assert_eq!(engine.deploy("v2.yaml", &changed, NOON).unwrap().1, 2);
    assert_eq!(engine.deploy("v1-again.yaml", &source, NOON).unwrap().1, 3, "going back is a new version too");
    engine
}

/// A recording connector behind a registry that sends it everything.
fn recording() -> (Arc<RecordingConnector>, Connectors) {
    let recorder = Arc::new(RecordingConnector::default());
    (recorder.clone(), Connectors::new(recorder))
}

fn track(id: &str, name: &str, at: Timestamp, properties: serde_json::Value) -> Event {
    Event {
        id: id.to_owned(),
        name: name.to_owned(),
        at,
        payload: json!({ "type": "track", "event": name, "messageId": id, "properties": properties }).into(),
    }
}

#[test]
fn an_event_starts_a_run_once_and_duplicates_are_ignored() {
    let mut engine = engine();
    engine
        .store_mut()
        .upsert_contact("ada", &json!({ "first_name": "Ada", "scores": { "engagement": 10 } }), None, NOON)
        .unwrap();
    let download = track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" }));
    let first = engine.ingest("ada", download.clone(), NOON).unwrap();
    assert_eq!(first.runs_started.len(), 1);
    let again = engine.ingest("ada", download, NOON).unwrap();
    assert!(again.duplicate, "the same messageId is applied once");
    let other_topic =
        engine.ingest("ada", track("m-2", "Whitepaper Downloaded", NOON, json!({ "topic": "seo" })), NOON).unwrap();
    assert!(other_topic.runs_started.is_empty(), "the trigger's filter decides");
    let second = engine
        .ingest("ada", track("m-3", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON)
        .unwrap();
    assert!(second.runs_started.is_empty(), "the cool-down keeps a second run out while the first is active");
}

#[test]
fn a_click_advances_the_run_and_effects_are_dispatched_rendered() {
    let mut engine = engine();
    engine
        .store_mut()
        .upsert_contact("ada", &json!({ "first_name": "Ada", "scores": { "engagement": 30 } }), None, NOON)
        .unwrap();
    let started = engine
        .ingest("ada", track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON)
        .unwrap();
    let run = started.runs_started[0];
    let (recorder, mut connector) = recording();
    assert_eq!(engine.dispatch(NOON, 10, &mut connector).unwrap(), 1);
    let (key, _, message) = &recorder.performed()[0];
    assert!(matches!(message, Some(Message::Email { subject: Some(s), .. }) if s == "Your guide, Ada"));
    let later = NOON.plus(Duration::HOUR);
    let click =
        engine.ingest("ada", track("m-2", "Email Link Clicked", later, json!({ "email_id": key })), later).unwrap();
    assert_eq!(click.runs_advanced, vec![run]);
    // The click scores +30: the branch right after reads 60 ≥ 50 and hands the lead to sales;
    // the dispatcher persists the score.
    engine.dispatch(later, 10, &mut connector).unwrap();
    let contact = engine.store().contact("ada").unwrap().unwrap();
    assert_eq!(contact.traits["scores"]["engagement"], 60);
    let history = engine.store().history(run).unwrap();
    assert!(history.iter().any(|h| h["what"] == "effect_result" && h["ok"] == true), "outcomes come back to the run");
    // "Why?" tells the branch with the value it read.
    let why = flowmark_runtime::why::render(&flowmark_runtime::why::explain(
        &history,
        &engine.store().decisions(run).unwrap(),
    ));
    assert!(
        why.contains(
            "[route] decided (branch): `contact.scores.engagement >= 50` with contact.scores.engagement = 60 gave true, so the run went to `handoff`"
        ),
        "{why}"
    );
}

#[test]
fn timers_fire_from_the_store_and_the_run_ends() {
    let mut engine = engine();
    let started = engine
        .ingest("bo", track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON)
        .unwrap();
    let run = started.runs_started[0];
    let mut now = NOON;
    let (recorder, mut connector) = recording();
    for _ in 0..10 {
        now = now.plus(Duration::DAY);
        engine.fire_due_timers(now, 100).unwrap();
        engine.dispatch(now, 100, &mut connector).unwrap();
    }
    let run = engine.run(run).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed, "no click: reminder, second chance, then the end");
    assert_eq!(recorder.performed().len(), 2, "the guide and the reminder");
    assert!(engine.store().due_timers(Timestamp(i64::MAX), 10).unwrap().is_empty());
}

#[test]
fn failing_effects_are_retried_on_the_schedule_then_given_up() {
    let mut engine = engine();
    engine.ingest("cy", track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON).unwrap();
    let (recorder, mut connector) = recording();
    for _ in 0..retry::ATTEMPTS_MAX {
        recorder.then(Outcome::Retryable { error: "421 busy".into(), retry_after: None });
    }
    let mut now = NOON;
    let mut attempts = 0;
    while attempts < retry::ATTEMPTS_MAX as usize {
        let tried = engine.dispatch(now, 10, &mut connector).unwrap();
        attempts += tried;
        now = now.plus(Duration::MINUTE);
    }
    assert_eq!(recorder.performed().len(), retry::ATTEMPTS_MAX as usize);
    assert!(recorder.performed().iter().all(|(key, _, _)| *key == recorder.performed()[0].0), "one key across retries");
    assert_eq!(engine.store().outbox_depth().unwrap(), 0, "given up after the last attempt");
    let run = engine.store().active_runs_of_subject("cy").unwrap()[0].id;
    let history = engine.store().history(run).unwrap();
    let result = history.iter().find(|h| h["what"] == "effect_result").unwrap();
    assert_eq!(result["ok"], false);
    assert!(result["detail"].as_str().unwrap().contains("gave up after 8 attempts"), "{result}");
}

#[test]
fn an_invalid_workflow_is_refused_with_diagnostics() {
    let mut engine = engine();
    let error = engine
        .deploy("bad.yaml", "id: bad\nsubject: contact\nsteps:\n  - id: a\n    wait: { duration: 3x }\n", NOON)
        .unwrap_err();
    let flowmark_runtime::DeployError::Invalid(diagnostics) = error else { panic!("expected diagnostics") };
    assert_eq!(diagnostics[0].code, "flowmark::bad-duration");
    assert_eq!((diagnostics[0].line, diagnostics[0].file.as_str()), (5, "bad.yaml"));
    assert!(engine.store().workflow_source("bad", None).unwrap().is_none(), "nothing was stored");
}

#[test]
fn a_batch_applies_its_events_in_order_in_one_commit() {
    let mut engine = engine();
    let download = track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" }));
    // The run starts with the first event and its first effect key is known: `1-thanks-2`.
    let click = track("m-2", "Email Link Clicked", NOON, json!({ "email_id": "1-thanks-2" }));
    let results = engine
        .ingest_many(
            vec![
                Incoming::event("ada", download.clone()),
                Incoming::event("ada", click),
                Incoming::event("ada", download.clone()),
            ],
            NOON,
        )
        .unwrap();
    assert_eq!(results[0].runs_started.len(), 1);
    let run = results[0].runs_started[0];
    assert_eq!(results[1].runs_advanced, vec![run], "the click reaches the run started earlier in the same batch");
    assert!(results[2].duplicate, "a messageId repeated inside a batch is a duplicate");
    assert!(engine.store().has_event("m-2").unwrap());
    let history = engine.store().history(run).unwrap();
    assert!(history.iter().any(|h| h["what"] == "wait_resolved" && h["by"] == "event"), "the wait took the click");
    let again = engine.ingest("ada", download, NOON).unwrap();
    assert!(again.duplicate, "and it stays one across batches");
}

const WEEKLY_NEWSLETTER: &str = r#"
id: weekly-newsletter
subject: item
trigger: { schedule: { cron: "0 9 * * MON", timezone: Europe/Paris } }
steps:
  - id: draft
    wait: { duration: 1d }
"#;

const MONTHLY_DIGEST: &str = r#"
id: monthly-digest
subject: contact
trigger: { schedule: { cron: "0 8 1 * *" } }
entry: { reentry: always }
steps:
  - id: send
    action: { email: { subject: "This month", text: "Hi {{ contact.first_name | default: 'there' }}" } }
"#;

/// 2026-01-05 is a Monday; 09:00 in Paris is 08:00 UTC in winter.
fn utc(text: &str) -> Timestamp {
    Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(text).unwrap())
}

#[test]
fn a_schedule_starts_one_item_run_per_occurrence_and_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("flowmark-schedules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("flowmark.db");
    let deployed_at = utc("2026-01-05T07:00:00Z");
    let mut engine = Engine::new(SqliteStore::open(&db).unwrap(), json!({})).unwrap();
    engine.deploy("newsletter.yaml", WEEKLY_NEWSLETTER, deployed_at).unwrap();
    let schedules = engine.store().schedules("weekly-newsletter").unwrap();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].due_at, utc("2026-01-05T08:00:00Z"), "Monday 09:00 in Paris");

    assert_eq!(engine.fire_due_schedules(utc("2026-01-05T07:59:59Z"), 10).unwrap(), 0, "not before its time");
    assert_eq!(engine.fire_due_schedules(utc("2026-01-05T08:00:01Z"), 10).unwrap(), 1);
    let runs = engine.runs(&RunFilter::default(), None, 10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].subject_id, "weekly-newsletter@2026-01-05T08:00:00.000Z");
    let history = engine.store().history(runs[0].id).unwrap();
    assert_eq!(history[0]["trigger"], "Scheduled");
    assert_eq!(engine.fire_due_schedules(utc("2026-01-05T08:00:02Z"), 10).unwrap(), 0, "fired once");

    // A restart re-arms nothing twice: the next occurrence is still the next Monday.
    drop(engine);
    let mut engine = Engine::new(SqliteStore::open(&db).unwrap(), json!({})).unwrap();
    engine.sync_all_schedules(utc("2026-01-05T09:00:00Z")).unwrap();
    assert_eq!(engine.store().schedules("weekly-newsletter").unwrap()[0].due_at, utc("2026-01-12T08:00:00Z"));
    // Down for three weeks: the missed Mondays fire once, then the schedule moves on.
    assert_eq!(engine.fire_due_schedules(utc("2026-02-02T10:00:00Z"), 10).unwrap(), 1);
    assert_eq!(engine.runs(&RunFilter::default(), None, 10).unwrap().len(), 2);
    assert_eq!(engine.store().schedules("weekly-newsletter").unwrap()[0].due_at, utc("2026-02-09T08:00:00Z"));

    // Paused: no schedule; active again: armed from then.
    engine.set_status("weekly-newsletter", WorkflowStatus::Paused, utc("2026-02-03T00:00:00Z")).unwrap();
    assert!(engine.store().schedules("weekly-newsletter").unwrap().is_empty());
    engine.set_status("weekly-newsletter", WorkflowStatus::Active, utc("2026-02-10T00:00:00Z")).unwrap();
    assert_eq!(engine.store().schedules("weekly-newsletter").unwrap()[0].due_at, utc("2026-02-16T08:00:00Z"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_schedule_on_a_contact_workflow_reaches_every_contact_a_page_at_a_time() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let count = flowmark_runtime::SCHEDULE_PAGE_COUNT + 5;
    for i in 0..count {
        engine.store_mut().upsert_contact(&format!("c-{i:05}"), &json!({ "first_name": "A" }), None, NOON).unwrap();
    }
    engine.deploy("digest.yaml", MONTHLY_DIGEST, utc("2026-01-20T00:00:00Z")).unwrap();
    let due = utc("2026-02-01T08:00:00Z");
    assert_eq!(engine.store().schedules("monthly-digest").unwrap()[0].due_at, due);
    let now = utc("2026-02-01T08:00:05Z");
    engine.fire_due_schedules(now, 10).unwrap();
    assert_eq!(engine.stats().runs_started as usize, flowmark_runtime::SCHEDULE_PAGE_COUNT, "one page per round");
    let schedule = &engine.store().schedules("monthly-digest").unwrap()[0];
    assert_eq!((schedule.due_at, schedule.cursor.is_some()), (due, true), "the firing is under way");
    engine.fire_due_schedules(now, 10).unwrap();
    assert_eq!(engine.stats().runs_started as usize, count, "every contact once");
    let schedule = &engine.store().schedules("monthly-digest").unwrap()[0];
    assert_eq!((schedule.due_at, schedule.cursor.as_deref()), (utc("2026-03-01T08:00:00Z"), None));
    let (recorder, mut connector) = recording();
    while engine.dispatch(now, 500, &mut connector).unwrap() > 0 {}
    assert_eq!(recorder.performed().len(), count, "every contact got the digest");
}

const CAMPAIGN: &str = r#"
id: campaign
subject: item
steps:
  - id: produce
    subflow: { workflow: asset }
  - id: check
    branch:
      - when: 'steps.produce.status == "completed"'
        goto: launch
      - otherwise: end
  - id: launch
    action: { webhook: { url: "https://hooks.example.com/launch", body: { ok: "yes" } } }
"#;

const ASSET: &str = r#"
id: asset
subject: item
steps:
  - id: render
    action: { webhook: { url: "https://hooks.example.com/render", body: { ok: "yes" } } }
  - id: settle
    wait: { duration: 1h }
"#;

const RETRO: &str = r#"
id: retro
subject: item
trigger: { workflow: campaign, outcome: completed }
steps:
  - id: notes
    action: { webhook: { url: "https://hooks.example.com/retro", body: { ok: "yes" } } }
"#;

#[test]
fn a_subflow_resumes_its_parent_and_an_ending_run_triggers_another_workflow() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    for (name, source) in [("campaign.yaml", CAMPAIGN), ("asset.yaml", ASSET), ("retro.yaml", RETRO)] {
        engine.deploy(name, source, NOON).unwrap();
    }
    let parent = engine.start("campaign", "spring-launch", NOON).unwrap().unwrap();
    let (recorder, mut connector) = recording();
    // The start_run effect starts the child in the dispatcher's own commit.
    engine.dispatch(NOON, 10, &mut connector).unwrap();
    let runs = engine.runs(&RunFilter { workflow_id: Some("asset".into()), ..RunFilter::default() }, None, 10).unwrap();
    assert_eq!(runs.len(), 1, "one child run");
    let child = runs[0].id;
    assert_eq!(runs[0].subject_id, "spring-launch", "the child works on the same subject");
    assert!(engine.run(parent).unwrap().unwrap().is_active(), "the parent waits for its child");
    // The child's hour passes; its end resumes the parent in the same commit, which branches
    // to the launch and completes; its completion starts the retro.
    let later = NOON.plus(Duration::HOUR);
    engine.fire_due_timers(later, 10).unwrap();
    assert!(engine.is_ended(child).unwrap());
    let parent_run = engine.run(parent).unwrap().unwrap();
    assert_eq!(parent_run.status, RunStatus::Completed);
    assert_eq!(parent_run.outputs["produce"]["status"], "completed");
    let retros =
        engine.runs(&RunFilter { workflow_id: Some("retro".into()), ..RunFilter::default() }, None, 10).unwrap();
    assert_eq!(retros.len(), 1, "the campaign's completion started the retro");
    assert_eq!(engine.store().history(retros[0].id).unwrap()[0]["trigger"], "Workflow Ended");
    while engine.dispatch(later, 10, &mut connector).unwrap() > 0 {}
    let performed = recorder.performed();
    let urls: Vec<&str> = performed
        .iter()
        .filter_map(|(_, _, message)| match message {
            Some(Message::Webhook { url, .. }) => Some(url.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        urls,
        ["https://hooks.example.com/render", "https://hooks.example.com/launch", "https://hooks.example.com/retro"]
    );
}

#[test]
fn a_subflow_that_cannot_start_fails_for_its_waiting_parent() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("campaign.yaml", CAMPAIGN, NOON).unwrap();
    let parent = engine.start("campaign", "summer", NOON).unwrap().unwrap();
    engine.dispatch(NOON, 10, &mut recording().1).unwrap();
    let run = engine.run(parent).unwrap().unwrap();
    assert_eq!(run.outputs["produce"]["status"], "failed", "no `asset` workflow: the subflow failed");
    assert_eq!(run.status, RunStatus::Completed, "the branch took the `otherwise` path to the end");
}

/// A wait's look-back finds the event it listens for even when a stream of other events
/// came after it: the recent events loaded are the waited-for ones.
#[test]
fn a_waits_look_back_is_not_crowded_out_by_other_events() {
    const GATE: &str = r#"
id: gate
subject: contact
trigger: { event: Signed Up }
steps:
  - id: settle
    wait: { duration: 1m }
  - id: clicked
    wait: { event: Email Link Clicked, timeout: 1d }
    on_timeout: end
  - id: thanks
    action: { webhook: { url: "https://hooks.example.com/thanks", body: { ok: "yes" } } }
"#;
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("gate.yaml", GATE, NOON).unwrap();
    let run = engine.ingest("ada", track("s-1", "Signed Up", NOON, json!({})), NOON).unwrap().runs_started[0];
    let click_at = NOON.plus(Duration(10_000));
    engine.ingest("ada", track("c-1", "Email Link Clicked", click_at, json!({})), click_at).unwrap();
    // More page views than the look-back keeps, after the click and before the wait starts.
    let views_at = NOON.plus(Duration(20_000));
    let views: Vec<Incoming> = (0..flowmark_core::limits::RECENT_EVENTS_COUNT_MAX + 44)
        .map(|i| Incoming::event("ada", track(&format!("v-{i}"), "Page Viewed", views_at, json!({}))))
        .collect();
    engine.ingest_many(views, views_at).unwrap();
    engine.fire_due_timers(NOON.plus(Duration::MINUTE), 10).unwrap();
    let history = engine.store().history(run).unwrap();
    let whats: Vec<&str> = history.iter().filter_map(|h| h["what"].as_str()).collect();
    assert!(whats.contains(&"wait_resolved"), "the click before the wait satisfied it: {whats:?}");
    assert_eq!(engine.run(run).unwrap().unwrap().outputs["clicked"]["event_id"], "c-1");
}

/// Two effects of one run in one dispatch: a subflow that cannot start (the run moves on and
/// ends) and, after it in the outbox, a webhook. The run's history keeps outbox order: the
/// webhook's result comes after the end its earlier effect caused.
#[test]
fn results_keep_outbox_order_around_a_subflow_that_cannot_start() {
    const KIT: &str = r#"
id: kit
subject: item
steps:
  - id: fork
    parallel: [produce, tell]
  - id: produce
    subflow: { workflow: asset }
    next: done
  - id: tell
    action: { webhook: { url: "https://hooks.example.com/tell", body: { ok: "yes" } } }
    next: done
  - id: done
    join: all
"#;
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("kit.yaml", KIT, NOON).unwrap();
    let run = engine.start("kit", "autumn", NOON).unwrap().unwrap();
    let ready = engine.store().ready_effects(NOON, 10).unwrap();
    let keys: Vec<&str> = ready.entries.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(keys, ["produce", "tell"], "the outbox order this test is about");
    engine.dispatch(NOON, 10, &mut recording().1).unwrap();
    assert!(engine.is_ended(run).unwrap(), "the failed subflow let the join complete");
    let history = engine.store().history(run).unwrap();
    let trail: Vec<(String, String)> = history
        .iter()
        .map(|h| (h["what"].as_str().unwrap_or("").to_owned(), h["step"].as_str().unwrap_or("").to_owned()))
        .skip_while(|(what, _)| what != "effect_result")
        .collect();
    let results: Vec<usize> =
        trail.iter().enumerate().filter(|(_, (w, _))| w == "effect_result").map(|(i, _)| i).collect();
    let ended = trail.iter().position(|(what, _)| what == "run_ended").expect("the run ended");
    assert_eq!(trail[results[0]].1, "produce", "{trail:?}");
    assert_eq!(trail[results[1]].1, "tell", "{trail:?}");
    assert!(results[0] < ended && ended < results[1], "produce's result, the end it caused, then tell's: {trail:?}");
}

#[test]
fn workflows_that_trigger_each_other_forever_are_cut_short() {
    let ping = "id: ping\nsubject: item\nentry: { reentry: always }\ntriggers: [ { manual: true }, { workflow: pong } ]\nsteps:\n  - id: done\n    exit: ping\n";
    let pong = "id: pong\nsubject: item\nentry: { reentry: always }\ntrigger: { workflow: ping, outcome: any }\nsteps:\n  - id: done\n    exit: pong\n";
    let ping = ping.replace("{ workflow: pong }", "{ workflow: pong, outcome: any }");
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("ping.yaml", &ping, NOON).unwrap();
    engine.deploy("pong.yaml", pong, NOON).unwrap();
    engine.start("ping", "ball", NOON).unwrap().unwrap();
    let runs = engine.runs(&RunFilter::default(), None, 100).unwrap();
    assert_eq!(runs.len(), 1 + flowmark_runtime::CASCADE_DEPTH_MAX, "the first run and one per round, then the cut");
}

const BLAST: &str = r#"
id: blast
subject: contact
trigger: { event: Go }
entry: { reentry: always }
steps:
  - id: hook
    action: { webhook: { url: "https://hooks.example.com/x", body: { ok: "yes" } } }
"#;

/// Counts how many `perform`s overlap; each waits (up to a second) for `target` to be in
/// flight together, so a registry that runs them one at a time shows a maximum of 1.
#[derive(Default)]
struct Overlap {
    state: std::sync::Mutex<(usize, usize)>,
    changed: std::sync::Condvar,
    target: usize,
}

impl flowmark_runtime::Connector for Overlap {
    fn perform(&self, _: &flowmark_runtime::Job<'_>) -> Outcome {
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        state.1 = state.1.max(state.0);
        self.changed.notify_all();
        let (mut state, _) =
            self.changed.wait_timeout_while(state, std::time::Duration::from_secs(1), |s| s.1 < self.target).unwrap();
        state.0 -= 1;
        Outcome::Done { detail: None }
    }
}

fn blast(engine: &mut Engine<SqliteStore>, count: usize) {
    engine.deploy("blast.yaml", BLAST, NOON).unwrap();
    for i in 0..count {
        engine.ingest(&format!("c-{i}"), track(&format!("go-{i}"), "Go", NOON, json!({})), NOON).unwrap();
    }
}

#[test]
fn a_connector_performs_up_to_its_concurrency_at_once() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    blast(&mut engine, 8);
    let overlap = Arc::new(Overlap { target: 4, ..Overlap::default() });
    let limits = flowmark_runtime::Limits { concurrency: 4, per_second: None, burst: 1, ..Default::default() };
    let mut connectors = Connectors::new(Arc::new(RecordingConnector::default())).route(
        "webhooks",
        &[flowmark_runtime::Outbound::Webhook],
        overlap.clone(),
        limits,
    );
    assert_eq!(engine.dispatch(NOON, 100, &mut connectors).unwrap(), 8);
    assert_eq!(overlap.state.lock().unwrap().1, 4, "four webhooks were in flight together, never more");
    assert_eq!(engine.store().outbox_depth().unwrap(), 0);
}

#[test]
fn a_rate_limit_defers_effects_without_counting_an_attempt() {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    blast(&mut engine, 5);
    let recorder = Arc::new(RecordingConnector::default());
    let limits = flowmark_runtime::Limits { concurrency: 1, per_second: Some(1.0), burst: 2, ..Default::default() };
    let mut connectors = Connectors::with_limits(recorder.clone(), limits);
    engine.dispatch(NOON, 100, &mut connectors).unwrap();
    assert_eq!(recorder.performed().len(), 2, "the burst goes at once");
    assert_eq!(engine.stats().effects_deferred, 3);
    assert_eq!(engine.store().ready_effects(NOON, 100).unwrap().len(), 0, "the rest wait for their turn");
    let later = NOON.plus(Duration::SECOND);
    let ready = engine.store().ready_effects(later, 100).unwrap();
    assert_eq!((ready.len(), ready.entries[0].attempts), (1, 0), "one more a second later, never attempted yet");
    let mut now = later;
    while engine.store().outbox_depth().unwrap() > 0 {
        engine.dispatch(now, 100, &mut connectors).unwrap();
        now = now.plus(Duration::SECOND);
    }
    assert_eq!(recorder.performed().len(), 5);
    assert_eq!(now, NOON.plus(Duration(4000)), "2 at once, then 1 a second");
}

#[test]
fn a_marketing_email_queued_before_an_unsubscribe_is_never_sent() {
    let mut engine = engine();
    engine
        .store_mut()
        .upsert_contact("ada", &json!({ "first_name": "Ada", "email": "ada@example.com" }), None, NOON)
        .unwrap();
    let started = engine
        .ingest("ada", track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON)
        .unwrap();
    assert_eq!(engine.store().outbox_depth().unwrap(), 1, "the guide is queued");
    // The contact unsubscribes before the dispatcher gets to it.
    engine
        .store_mut()
        .upsert_contact("ada", &json!({ flowmark_runtime::UNSUBSCRIBED_TRAIT: true }), None, NOON)
        .unwrap();
    let (recorder, mut connectors) = recording();
    engine.dispatch(NOON, 10, &mut connectors).unwrap();
    assert!(recorder.performed().is_empty(), "nothing reached the connector");
    let history = engine.store().history(started.runs_started[0]).unwrap();
    let result = history.iter().find(|h| h["what"] == "effect_result").expect("the effect's result is recorded");
    assert_eq!(result["ok"], false);
    assert!(result["detail"].as_str().unwrap().starts_with("suppressed"), "{result}");
}

#[test]
fn consent_withdrawn_stops_queued_email_and_later_steps_say_why() {
    let mut engine = engine();
    let contact = json!({ "first_name": "Ada", "email": "ada@example.com", "consent": { "email": true } });
    engine.store_mut().upsert_contact("ada", &contact, None, NOON).unwrap();
    let started = engine
        .ingest("ada", track("m-1", "Whitepaper Downloaded", NOON, json!({ "topic": "automation" })), NOON)
        .unwrap();
    let run = started.runs_started[0];
    assert_eq!(engine.store().outbox_depth().unwrap(), 1, "the guide is queued: consent was given");
    engine.store_mut().upsert_contact("ada", &json!({ "consent": { "email": false } }), None, NOON).unwrap();
    let (recorder, mut connectors) = recording();
    engine.dispatch(NOON, 10, &mut connectors).unwrap();
    assert!(recorder.performed().is_empty(), "the queued email did not go");
    let history = engine.store().history(run).unwrap();
    let result = history.iter().find(|h| h["what"] == "effect_result").expect("the effect's result is recorded");
    assert_eq!(result["detail"], "no consent: `contact.consent.email` is false");
    // Three days on, the reminder step skips the email itself, and `why` says so.
    let later = Timestamp(NOON.ms() + 3 * 24 * 3_600_000 + 1);
    engine.fire_due_timers(later, 10).unwrap();
    assert_eq!(engine.store().outbox_depth().unwrap(), 0, "no reminder queued");
    let history = engine.store().history(run).unwrap();
    let refused = history.iter().find(|h| h["what"] == "not_permitted").expect("the skip is in the history");
    assert_eq!(refused["step"], "reminder");
    let why = flowmark_runtime::why::render(&flowmark_runtime::why::explain(
        &history,
        &engine.store().decisions(run).unwrap(),
    ));
    assert!(why.contains("not sent on email: no consent: `contact.consent.email` is false"), "{why}");
}

#[test]
fn hard_bounces_complaints_and_unsubscribes_suppress_soft_bounces_do_not() {
    let mut engine = engine();
    for (subject, name, properties, suppressed) in [
        ("a", "Email Bounced", json!({ "bounce_type": "hard" }), Some("bounced")),
        ("b", "Email Bounced", json!({ "bounce_type": "soft" }), None),
        ("c", "Email Marked as Spam", json!({}), Some("complained")),
        ("d", "Unsubscribed", json!({}), Some("unsubscribed")),
        ("e", "Email Opened", json!({}), None),
    ] {
        engine.ingest(subject, track(&format!("m-{subject}"), name, NOON, properties), NOON).unwrap();
        let traits = engine.store().contact(subject).unwrap().map(|c| c.traits).unwrap_or_default();
        assert_eq!(traits.get("suppressed_reason").and_then(|v| v.as_str()), suppressed, "{subject}: {name}");
        assert_eq!(traits.get("unsubscribed").and_then(|v| v.as_bool()), suppressed.map(|_| true), "{subject}");
    }
}

#[test]
fn a_start_with_an_idempotency_key_starts_once_until_the_key_is_forgotten() {
    use flowmark_runtime::{START_KEY_RETENTION_MS, StartRequest, Started};
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let onboarding = "id: onboarding\nsubject: contact\nentry: { reentry: always }\nsteps:\n  - id: settle\n    wait: { duration: 60d }\n";
    engine.deploy("onboarding.yaml", onboarding, NOON).unwrap();
    let request = |subject: &str, key: &str| StartRequest {
        workflow_id: "onboarding".to_owned(),
        subject_id: subject.to_owned(),
        event: None,
        idempotency_key: Some(key.to_owned()),
    };
    let run_of = |started: &Started| match started {
        Started::Run { id, replayed, .. } => (*id, *replayed),
        other => panic!("not a run: {other:?}"),
    };
    // Twice in one commit, then again later: one run.
    let first = engine.start_many(vec![request("ana", "k-1"), request("ana", "k-1")], NOON).unwrap();
    let (id, replayed) = run_of(&first[0]);
    assert!(!replayed);
    assert_eq!(run_of(&first[1]), (id, true), "the same key in the same commit");
    let day = Timestamp(NOON.ms() + 24 * 60 * 60 * 1000);
    assert_eq!(run_of(&engine.start_many(vec![request("ana", "k-1")], day).unwrap()[0]), (id, true));
    // Ana's anonymous id is merged into her known one: a retry under either id is the same start.
    let alias = track("m-alias", "Signed Up", day, json!({}));
    let merge = Incoming { merge_from: Some("ana".to_owned()), ..Incoming::event("ana-known", alias) };
    engine.ingest_many(vec![merge], day).unwrap();
    assert_eq!(run_of(&engine.start_many(vec![request("ana", "k-1")], day).unwrap()[0]), (id, true));
    assert_eq!(engine.start_many(vec![request("bo", "k-1")], day).unwrap()[0], Started::KeyReused { run: id });
    // The same subject with another event is another start, not a retry; the same event with
    // its properties in another order is a retry.
    let with_event = |key: &str, properties: serde_json::Value| StartRequest {
        event: Some(("Plan Chosen".to_owned(), properties)),
        ..request("ana-known", key)
    };
    assert_eq!(
        engine.start_many(vec![with_event("k-1", json!({}))], day).unwrap()[0],
        Started::KeyReused { run: id },
        "the key started a run without an event"
    );
    let first = json!({ "plan": "pro", "seats": { "count": 3, "kind": "named" } });
    let reordered: serde_json::Value =
        serde_json::from_str(r#"{"seats":{"kind":"named","count":3},"plan":"pro"}"#).unwrap();
    let both = engine.start_many(vec![with_event("k-2", first.clone()), with_event("k-2", reordered)], day).unwrap();
    let (second, replayed) = run_of(&both[0]);
    assert!(!replayed);
    assert_eq!(run_of(&both[1]), (second, true), "reordered properties in the same commit");
    let other = with_event("k-2", json!({ "plan": "team", "seats": { "count": 3, "kind": "named" } }));
    assert_eq!(engine.start_many(vec![other], day).unwrap()[0], Started::KeyReused { run: second });
    assert_eq!(run_of(&engine.start_many(vec![with_event("k-2", first)], day).unwrap()[0]), (second, true));
    let runs = engine.runs(&RunFilter { workflow_id: Some("onboarding".to_owned()), ..RunFilter::default() }, None, 10);
    assert_eq!(runs.unwrap().len(), 2, "one run for every call with the key, one for the other key");
    // Past the retention window the key is forgotten, and the same key starts a new run.
    let month = Timestamp(NOON.ms() + START_KEY_RETENTION_MS as i64 + 1);
    assert_eq!(engine.forget_old_start_keys(month, 100).unwrap(), 1, "k-1 only: k-2 was stored a day later");
    let (again, replayed) = run_of(&engine.start_many(vec![request("ana-known", "k-1")], month).unwrap()[0]);
    assert!(again != id && !replayed);
}
