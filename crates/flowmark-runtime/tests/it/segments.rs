//! Segments end to end: membership moved by events, traits, score steps and the passing of
//! time; the edges recorded as events that start workflows in the same commit; journeys
//! branching on membership.

use flowmark_core::Timestamp;
use flowmark_core::engine::RunStatus;
use flowmark_runtime::segments::SegmentsSource;
use flowmark_runtime::{Engine, SEGMENT_SWEEP_EVERY_MS};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{RunFilter, Store};
use serde_json::json;

use super::{NOON, recording, track};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn at(days: i64) -> Timestamp {
    Timestamp(NOON.ms() + days * DAY)
}

/// An engine with the two segments and a workflow that welcomes contacts entering `engaged`,
/// branching on whether they are also `pro`.
fn engine() -> Engine<SqliteStore> {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let segments: SegmentsSource = serde_json::from_value(json!({ "segments": [
        { "name": "engaged", "where": "events.count('Email Link Clicked', '30d') >= 2" },
        { "name": "pro", "description": "Paying for Pro", "where": "contact.plan == 'pro'" },
    ]}))
    .unwrap();
    engine.set_segments(segments, NOON).unwrap().unwrap();
    let welcome = r#"
id: engaged-welcome
subject: contact
trigger: { segment: engaged }
steps:
  - id: tier
    branch:
      - when: '"pro" in contact.segments'
        goto: pro-note
      - otherwise: note
  - id: note
    action: { update: { set: { welcomed: standard } } }
    next: end
  - id: pro-note
    action: { update: { set: { welcomed: pro } } }
"#;
    engine.deploy("welcome.yaml", welcome, NOON).unwrap();
    let lapsed = r#"
id: lapsed
subject: contact
trigger: { segment: engaged, on: exit }
steps:
  - id: mark
    action: { update: { set: { lapsed: true } } }
"#;
    engine.deploy("lapsed.yaml", lapsed, NOON).unwrap();
    engine
}

fn members(engine: &Engine<SqliteStore>, id: &str) -> serde_json::Value {
    engine.store().contact(id).unwrap().map(|c| c.traits["segments"].clone()).unwrap_or_default()
}

fn runs_of(engine: &mut Engine<SqliteStore>, workflow: &str) -> Vec<flowmark_core::engine::Run> {
    let filter = RunFilter { workflow_id: Some(workflow.to_owned()), ..RunFilter::default() };
    engine.runs(&filter, None, 100).unwrap()
}

#[test]
fn entering_a_segment_records_the_edge_and_starts_its_workflow_in_the_same_commit() {
    let mut engine = engine();
    let (_, mut connectors) = recording();
    engine.ingest("ada", track("c-1", "Email Link Clicked", at(0), json!({})), at(0)).unwrap();
    assert_eq!(members(&engine, "ada"), json!(null), "one click is not engaged: nothing to write");
    // The second click: membership, the `Segment Entered` event and the run, all in this commit.
    let second = engine.ingest("ada", track("c-2", "Email Link Clicked", at(1), json!({})), at(1)).unwrap();
    assert!(second.runs_started.is_empty(), "the run is the edge's, not the click's");
    assert_eq!(members(&engine, "ada"), json!(["engaged"]));
    let events = engine.store().events_of_subject("ada", Timestamp(0), 10).unwrap();
    let entered = events.iter().find(|e| e.name == "Segment Entered").expect("the edge is an event");
    assert_eq!(entered.payload["properties"]["segment"], "engaged");
    let runs = runs_of(&mut engine, "engaged-welcome");
    assert_eq!(runs.len(), 1, "the edge started the workflow");
    // The branch read membership: Ada is not `pro`.
    engine.dispatch(at(1), 100, &mut connectors).unwrap();
    assert_eq!(engine.store().contact("ada").unwrap().unwrap().traits["welcomed"], "standard");
    // A third click changes nothing: no second edge, no second run.
    engine.ingest("ada", track("c-3", "Email Link Clicked", at(2), json!({})), at(2)).unwrap();
    assert_eq!(runs_of(&mut engine, "engaged-welcome").len(), 1);
    assert_eq!(engine.stats().events_duplicate, 0);
}

#[test]
fn traits_move_membership_and_journeys_branch_on_it() {
    let mut engine = engine();
    let (_, mut connectors) = recording();
    let identify = |plan: &str, id: &str, now| {
        flowmark_runtime::Incoming::with_traits(
            "grace",
            flowmark_core::engine::Event {
                id: id.to_owned(),
                name: "identify".to_owned(),
                at: now,
                payload: json!({ "type": "identify" }).into(),
            },
            json!({ "plan": plan }),
            None,
        )
    };
    engine.ingest_many(vec![identify("pro", "i-1", at(0))], at(0)).unwrap();
    assert_eq!(members(&engine, "grace"), json!(["pro"]));
    for (n, id) in ["k-1", "k-2"].into_iter().enumerate() {
        engine.ingest("grace", track(id, "Email Link Clicked", at(n as i64), json!({})), at(n as i64)).unwrap();
    }
    assert_eq!(members(&engine, "grace"), json!(["engaged", "pro"]), "sorted");
    engine.dispatch(at(1), 100, &mut connectors).unwrap();
    assert_eq!(engine.store().contact("grace").unwrap().unwrap().traits["welcomed"], "pro");
    engine.ingest_many(vec![identify("free", "i-2", at(2))], at(2)).unwrap();
    assert_eq!(members(&engine, "grace"), json!(["engaged"]), "leaving `pro` by a trait");
    let explained = engine.explain_segments("grace", at(2)).unwrap().unwrap();
    assert_eq!(explained[1]["segment"], "pro");
    assert_eq!(explained[1]["now"], false);
    assert_eq!(explained[1]["inputs"]["contact.plan"], "free");
    assert_eq!(explained[0]["inputs"]["events"], json!({ "Email Link Clicked@30d": 2 }));
}

#[test]
fn the_sweep_catches_what_only_time_changes_and_the_exit_starts_its_workflow() {
    let mut engine = engine();
    let (_, mut connectors) = recording();
    for (n, id) in ["c-1", "c-2"].into_iter().enumerate() {
        engine.ingest("ada", track(id, "Email Link Clicked", at(n as i64), json!({})), at(n as i64)).unwrap();
    }
    assert_eq!(members(&engine, "ada"), json!(["engaged"]));
    // The first pass (due since the segments were set) finds nothing new.
    assert_eq!(engine.sweep_segments(at(2), 1000).unwrap(), 1);
    assert_eq!(members(&engine, "ada"), json!(["engaged"]));
    assert_eq!(engine.sweep_segments(at(2), 1000).unwrap(), 0, "the next pass is not due yet");
    // 30 days after the first click it has left the window: the next pass sees Ada leave.
    let later = Timestamp(at(30).ms() + SEGMENT_SWEEP_EVERY_MS);
    assert_eq!(engine.sweep_segments(later, 1000).unwrap(), 1);
    assert_eq!(members(&engine, "ada"), json!([]));
    let lapsed = runs_of(&mut engine, "lapsed");
    assert_eq!(lapsed.len(), 1, "the exit edge started `lapsed`");
    engine.dispatch(later, 100, &mut connectors).unwrap();
    assert_eq!(engine.store().contact("ada").unwrap().unwrap().traits["lapsed"], true);
    assert_eq!(engine.run(lapsed[0].id).unwrap().unwrap().status, RunStatus::Completed);
}

#[test]
fn a_sweep_goes_through_every_contact_a_page_at_a_time() {
    let mut engine = engine();
    for n in 0..25 {
        engine.store_mut().upsert_contact(&format!("c{n:02}"), &json!({ "plan": "pro" }), None, NOON).unwrap();
    }
    // Contacts written around the engine (import, API) join by the sweep.
    let mut seen = 0;
    loop {
        let page = engine.sweep_segments(at(0), 10).unwrap();
        seen += page;
        if page < 10 {
            break;
        }
    }
    assert_eq!(seen, 25);
    assert!((0..25).all(|n| members(&engine, &format!("c{n:02}")) == json!(["pro"])));
    let entered = (0..25)
        .flat_map(|n| engine.store().events_of_subject(&format!("c{n:02}"), Timestamp(0), 10).unwrap())
        .filter(|e| e.name == "Segment Entered")
        .count();
    assert_eq!(entered, 25, "one edge each");
}

#[test]
fn segments_survive_a_restart_and_bad_ones_are_refused_whole() {
    let dir = std::env::temp_dir().join(format!("flowmark-segments-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flowmark.db");
    {
        let mut engine = Engine::new(SqliteStore::open(&path).unwrap(), json!({})).unwrap();
        let good: SegmentsSource =
            serde_json::from_value(json!({ "segments": [{ "name": "pro", "where": "contact.plan == 'pro'" }] }))
                .unwrap();
        engine.set_segments(good, NOON).unwrap().unwrap();
        let bad: SegmentsSource = serde_json::from_value(json!({ "segments": [
            { "name": "x", "where": "events.count(contact.plan, '1d') > 0" },
        ]}))
        .unwrap();
        let errors = engine.set_segments(bad, NOON).unwrap().unwrap_err();
        assert!(errors[0].contains("two string literals"), "{errors:?}");
    }
    let engine = Engine::new(SqliteStore::open(&path).unwrap(), json!({})).unwrap();
    assert_eq!(engine.segments().unwrap().segments[0].name, "pro", "the good ones stayed");
    drop(engine);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_score_step_moves_membership_in_the_commit_of_its_step() {
    let mut engine = engine();
    let (_, mut connectors) = recording();
    let hot: SegmentsSource =
        serde_json::from_value(json!({ "segments": [{ "name": "hot", "where": "contact.scores.engagement >= 50" }] }))
            .unwrap();
    engine.set_segments(hot, NOON).unwrap().unwrap();
    let scorer = r#"
id: scorer
subject: contact
trigger: { event: Demo Requested }
steps:
  - id: bump
    action: { score: { model: engagement, add: 60 } }
"#;
    engine.deploy("scorer.yaml", scorer, NOON).unwrap();
    let hot_welcome = r#"
id: hot-welcome
subject: contact
trigger: { segment: hot }
steps:
  - id: mark
    action: { update: { set: { hot: true } } }
"#;
    engine.deploy("hot.yaml", hot_welcome, NOON).unwrap();
    // A score is internal: the event, the score step, the score it moved, the membership,
    // its edge, the run the edge starts and that run's update all commit together.
    engine.ingest("lin", track("d-1", "Demo Requested", at(0), json!({})), at(0)).unwrap();
    assert_eq!(members(&engine, "lin"), json!(["hot"]));
    let contact = engine.store().contact("lin").unwrap().unwrap();
    assert_eq!((contact.traits["scores"]["engagement"].as_f64(), &contact.traits["hot"]), (Some(60.0), &json!(true)));
    let scorer_runs = runs_of(&mut engine, "scorer");
    assert_eq!(scorer_runs.len(), 1);
    assert_eq!(scorer_runs[0].status, RunStatus::Completed, "the score's result went back to its run");
    assert_eq!(runs_of(&mut engine, "hot-welcome").len(), 1);
    assert_eq!(engine.store().score_history("lin", 10).unwrap().len(), 1, "the change is in the score history");
    assert_eq!(engine.dispatch(at(0), 100, &mut connectors).unwrap(), 0, "nothing is left for the dispatcher");
}

/// A chain of internal effects deeper than one unit applies (each workflow's update moves the
/// contact into the next segment, whose workflow updates it again) is not lost at the cascade
/// depth: the last round's effects stay pending and the dispatcher carries the chain on.
#[test]
fn a_chain_of_updates_deeper_than_a_unit_goes_on_in_the_dispatcher() {
    const LEVELS: u32 = 12;
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    let segments: Vec<_> = (1..=LEVELS)
        .map(|level| json!({ "name": format!("level-{level}"), "where": format!("contact.level >= {level}") }))
        .collect();
    let segments: SegmentsSource = serde_json::from_value(json!({ "segments": segments })).unwrap();
    engine.set_segments(segments, NOON).unwrap().unwrap();
    for level in 1..=LEVELS {
        let climb = format!(
            "id: climb-{level}\nsubject: contact\ntrigger: {{ segment: level-{level} }}\nsteps:\n  - id: up\n    \
             action: {{ update: {{ set: {{ level: {} }} }} }}\n",
            level + 1
        );
        engine.deploy(&format!("climb-{level}.yaml"), &climb, NOON).unwrap();
    }
    let (_, mut connectors) = recording();
    let event = track("go", "Signed Up", NOON, json!({}));
    let incoming = flowmark_runtime::Incoming::with_traits("kim", event, json!({ "level": 1 }), None);
    engine.ingest_many(vec![incoming], NOON).unwrap();
    let level = |engine: &Engine<SqliteStore>| engine.store().contact("kim").unwrap().unwrap().traits["level"].clone();
    assert!(level(&engine).as_u64().unwrap() < u64::from(LEVELS) + 1, "one unit stops at its depth");
    for _ in 0..LEVELS {
        engine.dispatch(NOON, 100, &mut connectors).unwrap();
    }
    assert_eq!(level(&engine), json!(LEVELS + 1), "every step of the chain ran");
    for level in 1..=LEVELS {
        assert_eq!(runs_of(&mut engine, &format!("climb-{level}")).len(), 1, "climb-{level} ran once");
    }
}
