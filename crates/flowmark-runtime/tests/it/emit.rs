//! `emit`: an event recorded for the subject in the step's own unit of work, starting
//! workflows and satisfying waits there; chains of emits end at `EMIT_DEPTH_MAX`; and a
//! webhook to our own ingestion is refused at deploy with a hint naming `emit`.

use flowmark_core::limits::EMIT_DEPTH_MAX;
use flowmark_runtime::own_address::OwnAddresses;
use flowmark_runtime::{DeployError, Engine};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{RunFilter, Store};
use serde_json::{Value, json};

use super::{NOON, recording, track};

const QUALIFY: &str = r#"
id: qualify
subject: contact
trigger: { event: Signed Up }
steps:
  - id: qualified
    action:
      emit:
        event: Lead Qualified
        properties: { plan: "{{ event.properties.plan }}", score: 42, source: { form: signup } }
  - id: hear-back
    wait: { event: Sales Accepted, timeout: 1d }
"#;

const HANDOFF: &str = r#"
id: handoff
subject: contact
trigger:
  event: Lead Qualified
  where: 'event.properties.score == 42 && event.properties.source.form == "signup"'
steps:
  - id: note
    action: { update: { set: { plan: "{{ event.properties.plan }}" } } }
  - id: accept
    action: { emit: { event: Sales Accepted } }
"#;

fn engine_with(workflows: &[&str]) -> Engine<SqliteStore> {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    for (n, source) in workflows.iter().enumerate() {
        engine.deploy(&format!("w{n}.yaml"), source, NOON).unwrap();
    }
    engine
}

fn runs_of(engine: &mut Engine<SqliteStore>, workflow: &str) -> Vec<flowmark_core::engine::Run> {
    engine.runs(&RunFilter { workflow_id: Some(workflow.into()), ..RunFilter::default() }, None, 100).unwrap()
}

fn history_of(engine: &Engine<SqliteStore>, run: &flowmark_core::engine::Run) -> Vec<Value> {
    engine.store().history(run.id).unwrap()
}

#[test]
fn an_emitted_event_starts_workflows_and_satisfies_waits_in_the_same_unit() {
    let mut engine = engine_with(&[QUALIFY, HANDOFF]);
    let signed_up = track("s-1", "Signed Up", NOON, json!({ "plan": "pro" }));
    let ingested = engine.ingest("ada", signed_up, NOON).unwrap();
    assert_eq!(ingested.runs_started.len(), 1, "the answer counts the event's own runs");
    // One unit: the emitted event started `handoff`, whose update and its own emit ran, and
    // the `Sales Accepted` it emitted ended `qualify`'s wait — before any dispatch.
    let handoff = runs_of(&mut engine, "handoff");
    assert_eq!(handoff.len(), 1);
    assert!(!handoff[0].is_active(), "handoff ran to its end: {:?}", handoff[0].status);
    let qualify = runs_of(&mut engine, "qualify");
    assert!(!qualify[0].is_active(), "the wait was satisfied by the emitted event: {:?}", qualify[0].status);
    let contact = engine.store().contact("ada").unwrap().unwrap();
    assert_eq!(contact.traits["plan"], "pro", "the emitted properties were rendered from the trigger");
    // The emitted event is stored like any other, typed as written, and says who emitted it.
    let event = engine
        .store()
        .events_named("ada", &["Lead Qualified".to_owned()], NOON, 10)
        .unwrap()
        .into_iter()
        .next()
        .expect("the emitted event is stored");
    assert_eq!(event.payload["properties"], json!({ "plan": "pro", "score": 42, "source": { "form": "signup" } }));
    assert_eq!(event.payload["context"]["flowmark"]["emitted_by"]["workflow"], "qualify");
    assert_eq!(event.payload["context"]["flowmark"]["emit_depth"], 1);
    assert_eq!(event.id, format!("emitted:{}", qualify[0].outputs["qualified"]["effect_id"].as_str().unwrap()));
    assert_eq!(qualify[0].outputs["qualified"]["event_id"], event.id.as_str());
    // The run's history says what it recorded.
    let history = history_of(&engine, &qualify[0]);
    let result = history.iter().find(|h| h["what"] == "effect_result").expect("the emit's result");
    assert_eq!(result["ok"], true);
    assert!(result["detail"].as_str().unwrap().contains("recorded `Lead Qualified`"), "{result}");
    // Nothing is left for the dispatcher: the emits were applied in their unit.
    let (_, mut connectors) = recording();
    assert_eq!(engine.dispatch(NOON, 100, &mut connectors).unwrap(), 0);
}

#[test]
fn a_loop_of_emits_between_workflows_stops_at_the_depth_limit() {
    let ping = "id: ping\nsubject: contact\ntrigger: { event: Ping }\nentry: { reentry: always }\nsteps:\n  - id: send\n    action: { emit: { event: Pong } }\n";
    let pong = "id: pong\nsubject: contact\ntrigger: { event: Pong }\nentry: { reentry: always }\nsteps:\n  - id: send\n    action: { emit: { event: Ping } }\n";
    let mut engine = engine_with(&[ping, pong]);
    engine.ingest("ada", track("p-0", "Ping", NOON, json!({})), NOON).unwrap();
    // Whatever the unit could not apply the dispatcher does, in units of its own.
    let (_, mut connectors) = recording();
    for _ in 0..10 {
        engine.dispatch(NOON, 100, &mut connectors).unwrap();
    }
    let started = runs_of(&mut engine, "ping").len() + runs_of(&mut engine, "pong").len();
    // The outside `Ping` and EMIT_DEPTH_MAX emitted events each start one run.
    assert_eq!(started, 1 + EMIT_DEPTH_MAX as usize);
    let mut failures = Vec::new();
    for workflow in ["ping", "pong"] {
        for run in runs_of(&mut engine, workflow) {
            failures.extend(history_of(&engine, &run).into_iter().filter(|h| h["what"] == "step_failed"));
        }
    }
    assert_eq!(failures.len(), 1, "only the emit past the limit fails: {failures:?}");
    assert!(failures[0]["error"].as_str().unwrap().contains("a chain of emits stops at 8"), "{}", failures[0]);
}

#[test]
fn a_webhook_to_our_own_ingestion_is_refused_at_deploy_with_a_hint() {
    let mut engine = engine_with(&[]);
    engine.set_own_addresses(OwnAddresses::new("https://flowmark.example.com", "127.0.0.1:8080".parse().unwrap()));
    let looping = "id: loop\nsubject: contact\ntrigger: { event: Signed Up }\nsteps:\n  - id: tell\n    action:\n      webhook: { url: \"http://localhost:8080/v1/track\", body: { event: Lead Qualified } }\n";
    let Err(DeployError::Invalid(diagnostics)) = engine.deploy("loop.yaml", looping, NOON) else {
        panic!("a webhook to ourselves deployed");
    };
    let error = diagnostics.iter().find(|d| d.code == "flowmark::webhook-to-self").expect("the located error");
    assert_eq!(error.line, 7, "{error:?}");
    assert!(error.help.as_deref().unwrap_or_default().contains("emit:"), "{error:?}");
    assert!(runs_of(&mut engine, "loop").is_empty());
    assert!(engine.store().workflow_source("loop", None).unwrap().is_none(), "nothing was stored");
    // Elsewhere is fine, Segment's own API included.
    let forward = looping.replace("http://localhost:8080/v1/track", "https://api.segment.io/v1/track");
    engine.deploy("forward.yaml", &forward, NOON).unwrap();
}
