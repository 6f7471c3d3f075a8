//! Claims and workers: a send whose contact is suppressed after its claim is refused just
//! before it leaves, visibly; an attempt past its deadline is recorded as a timeout and the
//! late answer dropped; an effect whose worker never answers is claimed again after its
//! lease, under the same key.

use std::sync::Arc;

use flowmark_core::Timestamp;
use flowmark_runtime::{Connectors, Engine, Incoming, LEASE_MARGIN_MS, Outcome, Performed, RecordingConnector, Slots};
use flowmark_sqlite::SqliteStore;
use flowmark_store::Store;
use serde_json::json;

use super::{NOON, track};

const WELCOME: &str = r#"
id: welcome
subject: contact
trigger: { event: Signed Up }
steps:
  - id: hello
    action: { email: { subject: "Hello", text: "Welcome aboard." } }
"#;

fn started() -> (Engine<SqliteStore>, Arc<RecordingConnector>, Connectors) {
    let mut engine = Engine::new(SqliteStore::open_in_memory().unwrap(), json!({})).unwrap();
    engine.deploy("welcome.yaml", WELCOME, NOON).unwrap();
    engine.store_mut().upsert_contact("ada", &json!({ "email": "ada@example.com" }), None, NOON).unwrap();
    engine.ingest("ada", track("m-1", "Signed Up", NOON, json!({})), NOON).unwrap();
    let recorder = Arc::new(RecordingConnector::default());
    (engine, recorder.clone(), Connectors::new(recorder))
}

fn history(engine: &Engine<SqliteStore>) -> Vec<serde_json::Value> {
    let run = engine.store().runs(&Default::default(), 10).unwrap()[0].id;
    engine.store().history(run).unwrap()
}

#[test]
fn a_contact_suppressed_after_the_claim_is_not_sent_to() {
    let (mut engine, recorder, mut connectors) = started();
    let claimed = engine.claim(NOON, 10, &mut connectors, Slots::Free).unwrap();
    assert_eq!((claimed.claims.len(), engine.in_flight()), (1, 1));
    // The contact unsubscribes while the send is at a worker.
    let traits = Some((json!({ "unsubscribed": true }), None));
    let unsubscribe = Incoming { traits, ..Incoming::event("ada", track("m-2", "Unsubscribed", NOON, json!({}))) };
    engine.ingest_many(vec![unsubscribe], NOON).unwrap();
    let later = Timestamp(NOON.ms() + 40);
    let outcome = claimed.claims[0].perform(&*recorder, later);
    assert!(recorder.performed().is_empty(), "the connector was never called");
    let performed = Performed {
        key: claimed.claims[0].key.clone(),
        attempt: 1,
        started: later,
        ended: later,
        outcome,
        timed_out: false,
    };
    engine.record_performed(vec![performed], later).unwrap();
    let result = history(&engine).into_iter().find(|h| h["what"] == "effect_result").unwrap();
    assert_eq!(result["ok"], false);
    let detail = result["detail"].as_str().unwrap();
    assert!(detail.contains("suppressed") && detail.contains("since the send was queued"), "{detail}");
    assert_eq!(
        (result["attempt"].as_u64(), result["at"].as_i64()),
        (Some(1), Some(later.ms())),
        "timed as it happened"
    );
    assert_eq!(engine.store().outbox_depth().unwrap(), 0);
}

#[test]
fn a_timeout_is_recorded_and_a_late_answer_changes_nothing() {
    let (mut engine, _recorder, mut connectors) = started();
    let claimed = engine.claim(NOON, 10, &mut connectors, Slots::Free).unwrap();
    let claim = claimed.claims[0].clone();
    assert!(engine.timed_out(Timestamp(claim.deadline.ms() - 1)).is_empty());
    let late = engine.timed_out(claim.deadline);
    assert_eq!(late.len(), 1);
    engine.record_performed(late, claim.deadline).unwrap();
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.connector_stats()["fallback"].timeouts, 1);
    // The worker answers after all: dropped, the effect waits for its retry.
    let answer = Performed {
        key: claim.key.clone(),
        attempt: 1,
        started: NOON,
        ended: claim.deadline,
        outcome: Outcome::Done { detail: None },
        timed_out: false,
    };
    engine.record_performed(vec![answer], claim.deadline).unwrap();
    assert_eq!(engine.store().outbox_depth().unwrap(), 1, "still owed: the retry decides");
    assert!(history(&engine).iter().all(|h| h["what"] != "effect_result"));
}

#[test]
fn a_claim_whose_worker_never_answers_comes_back_after_its_lease() {
    let (mut engine, _recorder, mut connectors) = started();
    let first = engine.claim(NOON, 10, &mut connectors, Slots::Free).unwrap().claims[0].clone();
    // A restart: a new engine on the same store knows of no claim in flight.
    let store = engine.into_store();
    let mut engine = Engine::new(store, json!({})).unwrap();
    assert!(engine.claim(first.deadline, 10, &mut connectors, Slots::Free).unwrap().claims.is_empty(), "leased");
    let after = Timestamp(first.deadline.ms() + LEASE_MARGIN_MS);
    let again = engine.claim(after, 10, &mut connectors, Slots::Free).unwrap().claims;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].key.as_str(), again[0].attempt), (first.key.as_str(), 2), "the same key, the next attempt");
}
