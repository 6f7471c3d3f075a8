//! The conformance suite: what every `Store` backend must do, as functions any backend's
//! tests call with a way to make a fresh, empty store.
//!
//! The transitions it commits come from the real run state machine on a small workflow, so
//! the suite checks the store against what the runtime will actually write.
//!
//! Invariant: each check starts from an empty store and panics with a message on failure.

use flowmark_core::engine::{Event, Facts, Input, Run, RunId, RunStatus, Transition, handle};
use flowmark_core::{Source, Timestamp, Workflow, compile};
use serde_json::json;

use crate::{
    Attempt, Batch, ContactChange, Error, KeyedStart, Position, RunFilter, Schedule, ScheduleChange, ScoreRecord,
    Store, WorkChange, WorkItem, WorkKind, WorkflowStatus,
};

const WORKFLOW: &str = r#"
id: conformance
subject: contact
steps:
  - id: hello
    action: { email: { subject: "Hi {{ contact.first_name | default: 'there' }}", text: "Hello" } }
  - id: clicked
    wait: { event: Email Link Clicked, timeout: 2d }
    on_timeout: bye
  - id: score
    action: { score: { model: engagement, add: 10 } }
    next: end
  - id: bye
    action: { email: { subject: "Bye", text: "Bye" } }
"#;

const T0: Timestamp = Timestamp(1_767_610_800_000); // 2026-01-05T11:00:00Z

/// The workflow the suite's runs follow: a start, a wait, an email (for backends' own tests too).
pub fn workflow() -> Workflow {
    compile(&Source::new("conformance.yaml", WORKFLOW)).workflow.expect("the conformance workflow is valid")
}

/// Two starts; the second reuses the first's effect key, so a batch holding both is refused.
fn good_and_refused(workflow: &Workflow) -> (Transition, Transition) {
    let good = start(workflow, 1, "c-1");
    let mut bad = start(workflow, 2, "c-2");
    bad.effects[0].key = good.effects[0].key.clone();
    (good, bad)
}

/// The transition that starts run `id` of `workflow` for `subject` (for backends' own tests too).
pub fn start(workflow: &Workflow, id: u64, subject: &str) -> Transition {
    let run = Run::new(RunId(id), workflow, 1, subject, T0);
    handle(workflow, run, &Input::Start { event: None }, &Facts::empty(), T0)
}

/// Runs every check, each on a fresh store from `make`.
pub fn run_all(make: &mut dyn FnMut() -> Box<dyn Store>) {
    commit_then_read_back(make()).expect("commit_then_read_back");
    timers_mirror_the_run(make()).expect("timers_mirror_the_run");
    a_batch_is_all_or_nothing(make()).expect("a_batch_is_all_or_nothing");
    attempts_contacts_and_results_commit_together(make()).expect("attempts_contacts_and_results_commit_together");
    events_are_deduplicated_by_message_id(make()).expect("events_are_deduplicated_by_message_id");
    the_outbox_retries_and_completes(make()).expect("the_outbox_retries_and_completes");
    claimed_effects_wait_for_their_lease(make()).expect("claimed_effects_wait_for_their_lease");
    lost_attempts_quarantine_and_requeue(make()).expect("lost_attempts_quarantine_and_requeue");
    start_keys_find_the_run_they_started(make()).expect("start_keys_find_the_run_they_started");
    a_runs_transitions_in_one_batch_read_back_in_order(make())
        .expect("a_runs_transitions_in_one_batch_read_back_in_order");
    results_join_the_trail_without_the_run(make()).expect("results_join_the_trail_without_the_run");
    workflow_versions_are_immutable(make()).expect("workflow_versions_are_immutable");
    contacts_merge_traits(make()).expect("contacts_merge_traits");
    tokens_are_found_by_hash(make()).expect("tokens_are_found_by_hash");
    gone_endpoints_stay_gone_until_forgotten(make()).expect("gone_endpoints_stay_gone_until_forgotten");
    schedules_are_found_by_due_time(make()).expect("schedules_are_found_by_due_time");
    merged_identities_keep_their_history(make()).expect("merged_identities_keep_their_history");
    runs_are_found_by_position(make()).expect("runs_are_found_by_position");
    an_active_run_is_rewritten_whole(make()).expect("an_active_run_is_rewritten_whole");
    inboxes_read_in_due_order(make()).expect("inboxes_read_in_due_order");
    erasure_removes_a_contact_everywhere_and_keeps_tombstones(make())
        .expect("erasure_removes_a_contact_everywhere_and_keeps_tombstones");
}

/// Erasing a contact and its alias removes its row, events, runs, effects and score history,
/// leaves other contacts alone, keeps the tombstones, and is idempotent.
pub fn erasure_removes_a_contact_everywhere_and_keeps_tombstones(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    store.upsert_contact("anon-1", &json!({ "utm_source": "ads" }), None, T0)?;
    store.upsert_contact("ada", &json!({ "email": "ada@example.com" }), None, T0)?;
    store.upsert_contact("bo", &json!({ "email": "bo@example.com" }), None, T0)?;
    let (ada_run, bo_run) = (start(&workflow, 1, "ada"), start(&workflow, 2, "bo"));
    let event = |id: &str| Event { id: id.into(), name: "Page Viewed".into(), at: T0, payload: json!({}).into() };
    let (e1, e2) = (event("m-1"), event("m-2"));
    store.commit_with_events(&[&ada_run, &bo_run], &[("anon-1", &e1), ("bo", &e2)], T0)?;
    store.write(&Batch { merges: vec![("anon-1", "ada")], ..Batch::default() }, T0)?;
    let score = ScoreRecord {
        subject_id: "ada".into(),
        model: "engagement".into(),
        at: T0,
        before: 0.0,
        delta: 5.0,
        after: 5.0,
        reason: "opened".into(),
    };
    store.write(&Batch { score_changes: vec![&score], ..Batch::default() }, T0)?;
    assert_eq!(store.aliases_of("ada")?, ["anon-1"]);

    let ids = vec!["ada".to_owned(), "anon-1".to_owned()];
    let erased = store.erase_subject(&ids, &["h-ada".into(), "h-anon".into()], T0)?;
    assert_eq!((erased.runs.as_slice(), erased.events, erased.score_changes), ([RunId(1)].as_slice(), 1, 1));
    assert!(erased.contact && erased.effects >= 1, "{erased:?}");
    assert!(store.contact("ada")?.is_none() && store.contact_id_by_email("ada@example.com")?.is_none());
    assert!(store.run(RunId(1))?.is_none() && store.history(RunId(1))?.is_empty());
    assert!(store.events_of_subject("ada", Timestamp(0), 10)?.is_empty());
    assert!(store.canonical_id("anon-1")?.is_none() && store.score_history("ada", 10)?.is_empty());
    assert!(!store.has_event("m-1")?, "the event is gone, not only unlinked");
    assert!(store.ready_effects(T0, 100)?.entries.iter().all(|e| e.run != RunId(1)), "its effects are never sent");
    let mut tombstones = store.tombstones()?;
    tombstones.sort();
    assert_eq!(tombstones, ["h-ada", "h-anon"]);
    assert!(store.contact("bo")?.is_some() && store.run(RunId(2))?.is_some(), "others are untouched");
    assert_eq!(store.events_of_subject("bo", Timestamp(0), 10)?.len(), 1);

    let again = store.erase_subject(&ids, &["h-ada".into()], T0)?;
    assert_eq!((again.runs.len(), again.events, again.contact), (0, 0, false), "idempotent");
    assert_eq!(store.tombstones()?.len(), 2);
    Ok(())
}

/// A committed transition reads back: state, history, decisions, timer, outbox effect.
pub fn commit_then_read_back(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    assert_eq!(store.next_run_id()?, RunId(1));
    let t = start(&workflow, 1, "c-1");
    store.commit(&[&t], T0)?;
    assert_eq!(store.next_run_id()?, RunId(2));
    assert_eq!(store.run(RunId(1))?, Some(t.run.clone()), "the run reads back equal");
    assert_eq!(store.history(RunId(1))?.len(), t.history.len());
    assert_eq!(store.history(RunId(1))?[0]["what"], "run_started");
    let timer = &t.run.timers[0];
    let due = store.due_timers(timer.due_at, 10)?;
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].run, due[0].timer, due[0].due_at), (RunId(1), timer.id, timer.due_at));
    assert!(store.due_timers(Timestamp(timer.due_at.ms() - 1), 10)?.is_empty(), "not due a millisecond early");
    let ready = store.ready_effects(T0, 10)?;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready.entries[0].key, t.effects[0].key);
    assert_eq!(ready.entries[0].step, "hello");
    assert_eq!(
        ready.entries[0].effect,
        crate::OutboxEffect::Run(t.effects[0].kind.clone()),
        "the effect reads back equal"
    );
    assert_eq!(store.outbox_depth()?, 1);
    assert_eq!(store.active_runs_of_subject("c-1")?.len(), 1);
    assert_eq!(store.latest_run("conformance", "c-1")?.map(|r| r.id), Some(RunId(1)));
    let active = crate::RunFilter { status: Some(RunStatus::Active), ..Default::default() };
    assert_eq!(store.runs(&active, 10)?.len(), 1);
    let other = crate::RunFilter { subject_id: Some("c-2".into()), ..Default::default() };
    assert!(store.runs(&other, 10)?.is_empty());
    let by_workflow =
        crate::RunFilter { workflow_id: Some("conformance".into()), version: Some(1), ..Default::default() };
    assert_eq!(store.runs(&by_workflow, 10)?[0].id, RunId(1));
    assert!(store.run(RunId(2))?.is_none());
    let sent = store.sent_messages("c-1", T0)?;
    assert_eq!(sent.len(), 1, "the email counts for frequency caps");
    assert!(store.sent_messages("c-1", Timestamp(T0.ms() + 1))?.is_empty());
    assert!(store.sent_messages("c-2", T0)?.is_empty());
    Ok(())
}

/// After a timer fires, the store's timers are the run's armed timers, no more.
pub fn timers_mirror_the_run(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let t = start(&workflow, 1, "c-1");
    store.commit(&[&t], T0)?;
    let timer = t.run.timers[0].clone();
    let fired = handle(&workflow, t.run.clone(), &Input::TimerFired { timer: timer.id }, &Facts::empty(), timer.due_at);
    store.commit(&[&fired], timer.due_at)?;
    assert_eq!(fired.run.status, RunStatus::Completed);
    assert!(store.due_timers(Timestamp(i64::MAX), 10)?.is_empty(), "the fired timer is gone");
    assert!(store.active_runs_of_subject("c-1")?.is_empty());
    let history = store.history(RunId(1))?;
    assert_eq!(history.len(), t.history.len() + fired.history.len(), "history is appended, in order");
    assert_eq!(history.last().unwrap()["what"], "run_ended");
    assert_eq!(store.outbox_depth()?, 2, "both emails are in the outbox");
    Ok(())
}

/// A batch with one bad transition leaves nothing of the batch behind.
pub fn a_batch_is_all_or_nothing(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let (good, bad) = good_and_refused(&workflow);
    match store.commit(&[&good, &bad], T0) {
        Err(Error::DuplicateEffect { key }) => assert_eq!(key, good.effects[0].key),
        other => panic!("expected DuplicateEffect, got {other:?}"),
    }
    assert!(store.run(RunId(1))?.is_none(), "the good transition was rolled back with the bad one");
    let cause = Event { id: "m-cause".into(), name: "E".into(), at: T0, payload: json!({}).into() };
    assert!(store.commit_with_events(&[&good, &bad], &[("c-1", &cause)], T0).is_err());
    assert!(!store.has_event("m-cause")?, "the event that caused a refused batch is not recorded either");
    assert!(store.history(RunId(1))?.is_empty());
    assert!(store.due_timers(Timestamp(i64::MAX), 10)?.is_empty());
    assert_eq!(store.outbox_depth()?, 0);
    store.commit_with_events(&[&good], &[("c-1", &cause)], T0)?;
    assert!(store.run(RunId(1))?.is_some(), "the store is usable after a refused batch");
    assert!(store.has_event("m-cause")?, "an event is recorded with the transitions it caused");
    Ok(())
}

/// What a dispatch writes (an effect's outcome, the subject change it made, and the result
/// fed back to the run) is one unit: refused together, or stored together.
pub fn attempts_contacts_and_results_commit_together(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let first = start(&workflow, 1, "c-1");
    let other = start(&workflow, 2, "c-2");
    store.commit(&[&first, &other], T0)?;
    let key = first.effects[0].key.clone();
    let done = Attempt::Done { detail: Some("250 ok".into()) };
    let traits = json!({ "scores": { "engagement": 10 } });
    let input = Input::EffectCompleted { key: key.clone(), ok: true, detail: Some("250 ok".into()) };
    let result = handle(&workflow, first.run.clone(), &input, &Facts::empty(), T0);
    let mut bad =
        handle(&workflow, other.run.clone(), &Input::TimerFired { timer: other.run.timers[0].id }, &Facts::empty(), T0);
    assert!(!bad.effects.is_empty(), "the timeout sends the goodbye email");
    bad.effects[0].key.clone_from(&key); // run 1's key on run 2's effect: refused
    let contacts = vec![ContactChange { id: "c-1", traits: &traits, timezone: Some("Europe/Paris") }];
    let refused = Batch {
        contacts: contacts.clone(),
        events: Vec::new(),
        transitions: vec![&result, &bad],
        attempts: vec![(key.as_str(), &done)],
        ..Batch::default()
    };
    assert!(store.write(&refused, T0).is_err(), "a refused transition refuses the whole batch");
    assert!(store.contact("c-1")?.is_none(), "the contact change was rolled back");
    assert_eq!(store.ready_effects(T0, 10)?.len(), 2, "the attempt was rolled back");
    assert_eq!(store.history(RunId(1))?.len(), first.history.len(), "the fed-back result was rolled back");
    let accepted =
        Batch { contacts, transitions: vec![&result], attempts: vec![(key.as_str(), &done)], ..Batch::default() };
    store.write(&accepted, T0)?;
    let contact = store.contact("c-1")?.expect("the contact is stored");
    assert_eq!((contact.traits, contact.timezone.as_deref()), (traits.clone(), Some("Europe/Paris")));
    assert_eq!(store.ready_effects(T0, 10)?.len(), 1, "only the other run's effect is left");
    let history = store.history(RunId(1))?;
    assert_eq!(history.last().unwrap()["what"], "effect_result", "the result is in the run's history");
    assert!(!result.run_changed, "a result only adds to the history");
    assert_eq!(store.run(RunId(1))?, Some(first.run.clone()), "the run stays as it was");
    let due = store.due_timers(Timestamp(i64::MAX), 10)?;
    assert!(due.iter().any(|d| d.run == RunId(1)), "and so does its timer: {due:?}");
    Ok(())
}

/// A run that starts, has its effect completed and its timer fired in one batch reads back
/// as if the three had been committed one by one: the latest state, every history entry in
/// order, no timer left, and the effect finished (recorded in the batch that added it).
pub fn a_runs_transitions_in_one_batch_read_back_in_order(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let started = start(&workflow, 1, "c-1");
    let key = started.effects[0].key.clone();
    let input = Input::EffectCompleted { key: key.clone(), ok: true, detail: Some("250 ok".into()) };
    let completed = handle(&workflow, started.run.clone(), &input, &Facts::empty(), T0);
    let timer = completed.run.timers[0].clone();
    let fired =
        handle(&workflow, completed.run.clone(), &Input::TimerFired { timer: timer.id }, &Facts::empty(), timer.due_at);
    let done = Attempt::Done { detail: Some("250 ok".into()) };
    let batch = Batch {
        transitions: vec![&started, &completed, &fired],
        attempts: vec![(key.as_str(), &done)],
        ..Batch::default()
    };
    store.write(&batch, timer.due_at)?;
    assert_eq!(store.run(RunId(1))?, Some(fired.run.clone()), "the latest state is stored");
    let whats: Vec<_> = [&started, &completed, &fired]
        .iter()
        .flat_map(|t| t.history.iter())
        .map(|h| serde_json::to_value(h).unwrap()["what"].clone())
        .collect();
    let stored: Vec<_> = store.history(RunId(1))?.iter().map(|h| h["what"].clone()).collect();
    assert_eq!(stored, whats, "every transition's history, in order");
    assert!(store.due_timers(Timestamp(i64::MAX), 10)?.is_empty(), "the fired timer is not stored");
    let ready = store.ready_effects(Timestamp(i64::MAX), 10)?;
    assert_eq!(ready.len(), 1, "only the goodbye email is pending: {ready:?}");
    assert_ne!(ready.entries[0].key, key);
    assert_eq!(store.outbox_depth()?, 1);
    // The same outcome recorded again changes nothing: the effect stays finished.
    store.record_attempt(&key, &Attempt::Failed { error: "late".into() }, timer.due_at)?;
    assert_eq!(store.outbox_depth()?, 1);
    // A later batch appends after the gathered row.
    let timer = fired.run.timers.first().cloned();
    assert!(timer.is_none(), "the run waits for nothing more");
    let goodbye = ready.entries[0].key.clone();
    let input = Input::EffectCompleted { key: goodbye, ok: true, detail: None };
    let last = handle(&workflow, fired.run.clone(), &input, &Facts::empty(), T0);
    store.commit(&[&last], T0)?;
    assert_eq!(store.history(RunId(1))?.len(), stored.len() + last.history.len());
    Ok(())
}

/// Effects come with their run's workflow, version and subject (none when the run is gone);
/// results recorded without the run (`Batch::trail`) join its history first in their batch,
/// before the batch's transitions of that run, and leave the run as it is.
pub fn results_join_the_trail_without_the_run(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let started = start(&workflow, 1, "c-1");
    let orphan = crate::OutboxEntry {
        key: "orphan/email".into(),
        run: RunId(99),
        step: "s".into(),
        effect: crate::OutboxEffect::Deliver(crate::Delivery::Email {
            to: "sam@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
            link: "l".into(),
        }),
        attempts: 0,
        lost: 0,
        next_attempt_at: T0,
        owner: None,
    };
    store.write(&Batch { transitions: vec![&started], outbox: vec![&orphan], ..Batch::default() }, T0)?;
    let ready = store.ready_effects(T0, 10)?;
    let owner_of = |key: &str| ready.entries.iter().find(|e| e.key == key).map(|e| e.owner.clone());
    let owner = crate::EffectOwner { workflow_id: "conformance".into(), version: 1, subject_id: "c-1".into() };
    assert_eq!(owner_of(&started.effects[0].key), Some(Some(owner)), "an effect comes with its run");
    assert_eq!(owner_of("orphan/email"), Some(None), "an effect whose run is gone comes without one");
    // A result and a transition of the same run in one batch: the result first.
    let key = &started.effects[0].key;
    let result = flowmark_core::engine::effect_result(&workflow, RunId(1), key, true, None, T0);
    let timer = started.run.timers[0].clone();
    let fired =
        handle(&workflow, started.run.clone(), &Input::TimerFired { timer: timer.id }, &Facts::empty(), timer.due_at);
    let batch = Batch { transitions: vec![&fired], trail: vec![(RunId(1), &result)], ..Batch::default() };
    store.write(&batch, timer.due_at)?;
    let whats: Vec<_> = store.history(RunId(1))?.iter().map(|h| h["what"].as_str().unwrap_or("").to_owned()).collect();
    let expected: Vec<String> = started
        .history
        .iter()
        .chain([&result])
        .chain(&fired.history)
        .map(|h| serde_json::to_value(h).unwrap()["what"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(whats, expected, "the result comes before the transition's entries");
    assert_eq!(store.history(RunId(1))?[started.history.len()]["step"], "hello", "the result names its step");
    assert_eq!(store.run(RunId(1))?, Some(fired.run.clone()));
    // Results alone: the history grows, the run's row stays.
    let goodbye = fired.effects[0].key.clone();
    let late = flowmark_core::engine::effect_result(&workflow, RunId(1), &goodbye, false, Some("550".into()), T0);
    store.write(&Batch { trail: vec![(RunId(1), &late), (RunId(1), &result)], ..Batch::default() }, T0)?;
    let history = store.history(RunId(1))?;
    assert_eq!(history.len(), expected.len() + 2);
    assert_eq!(history[expected.len()]["key"], goodbye.as_str(), "results keep their order");
    assert_eq!(history[expected.len()]["ok"], false);
    assert_eq!(store.run(RunId(1))?, Some(fired.run.clone()), "a result leaves the run as it was");
    Ok(())
}

/// A hand start's idempotency key is stored with the run it started, per workflow, in the
/// commit of the start; a refused batch stores no key.
pub fn start_keys_find_the_run_they_started(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let (good, bad) = good_and_refused(&workflow);
    let refused = Batch {
        transitions: vec![&good, &bad],
        start_keys: vec![("conformance", "k-1", RunId(1), "r-1")],
        ..Batch::default()
    };
    assert!(store.write(&refused, T0).is_err());
    assert_eq!(store.start_key("conformance", "k-1")?, None, "a refused batch stores no key");
    let accepted = Batch {
        transitions: vec![&good],
        start_keys: vec![("conformance", "k-1", RunId(1), "r-1")],
        ..Batch::default()
    };
    store.write(&accepted, T0)?;
    let keyed = KeyedStart { run: RunId(1), request: Some("r-1".to_owned()) };
    assert_eq!(store.start_key("conformance", "k-1")?, Some(keyed), "the run and the request's fingerprint");
    assert_eq!(store.start_key("conformance", "k-2")?, None, "another key");
    assert_eq!(store.start_key("other", "k-1")?, None, "keys are per workflow");
    let again = Batch { start_keys: vec![("conformance", "k-1", RunId(1), "r-1")], ..Batch::default() };
    assert!(store.write(&again, T0).is_err(), "a key is stored once");
    let later = Timestamp(T0.ms() + 1000);
    let newer = Batch { start_keys: vec![("conformance", "k-2", RunId(1), "r-2")], ..Batch::default() };
    store.write(&newer, later)?;
    assert_eq!(store.forget_start_keys(T0, 10)?, 0, "nothing stored before T0");
    assert_eq!(store.forget_start_keys(later, 10)?, 1, "the key stored at T0 goes");
    assert_eq!(store.start_key("conformance", "k-1")?, None);
    assert_eq!(store.start_key("conformance", "k-2")?.map(|k| k.run), Some(RunId(1)), "the newer key stays");
    Ok(())
}

pub fn events_are_deduplicated_by_message_id(mut store: Box<dyn Store>) -> Result<(), Error> {
    let event = |id: &str, at: i64| Event {
        id: id.to_owned(),
        name: "Email Opened".to_owned(),
        at: Timestamp(at),
        payload: json!({ "event": "Email Opened", "messageId": id }).into(),
    };
    assert!(store.insert_event("c-1", &event("m-1", 10), T0)?);
    assert!(!store.insert_event("c-1", &event("m-1", 10), T0)?, "the same messageId is a duplicate");
    assert!(store.insert_event("c-1", &event("m-2", 20), T0)?);
    assert!(store.insert_event("c-1", &event("m-3", 30), T0)?);
    assert!(store.insert_event("c-2", &event("m-4", 25), T0)?);
    assert!(store.has_event("m-4")? && !store.has_event("m-9")?);
    let events = store.events_of_subject("c-1", Timestamp(15), 10)?;
    assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["m-2", "m-3"], "oldest first, since 15");
    assert_eq!(events[0].payload["messageId"], "m-2");
    let newest = store.events_of_subject("c-1", Timestamp(0), 1)?;
    assert_eq!(newest[0].id, "m-3", "the limit keeps the newest");
    assert_eq!(store.count_events("c-1", "Email Opened", Timestamp(20))?, 2, "counted at or after `since`");
    assert_eq!(store.count_events("c-1", "Email Opened", Timestamp(31))?, 0);
    assert_eq!(store.count_events("c-1", "Email Clicked", Timestamp(0))?, 0, "counted by name");
    assert_eq!(store.count_events("c-2", "Email Opened", Timestamp(0))?, 1, "counted by subject");
    // By name: the limit counts the named events alone, newer others do not push them out.
    let viewed = Event { name: "Page Viewed".to_owned(), ..event("m-5", 40) };
    assert!(store.insert_event("c-1", &viewed, T0)?);
    assert!(store.insert_event("c-1", &Event { id: "m-6".into(), at: Timestamp(50), ..viewed.clone() }, T0)?);
    let opened = ["Email Opened".to_owned()];
    let named = store.events_named("c-1", &opened, Timestamp(0), 2)?;
    assert_eq!(
        named.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["m-2", "m-3"],
        "the newest named, oldest first"
    );
    assert_eq!(named[1].payload["messageId"], "m-3");
    assert_eq!(store.events_named("c-1", &opened, Timestamp(25), 10)?.len(), 1, "since 25");
    let both = ["Page Viewed".to_owned(), "Email Opened".to_owned()];
    assert_eq!(store.events_named("c-1", &both, Timestamp(0), 10)?.len(), 5);
    assert!(store.events_named("c-1", &[], Timestamp(0), 10)?.is_empty(), "no names, no events");
    assert!(store.events_named("c-2", &["Page Viewed".to_owned()], Timestamp(0), 10)?.is_empty(), "by subject");
    Ok(())
}

pub fn the_outbox_retries_and_completes(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let t = start(&workflow, 1, "c-1");
    store.commit(&[&t], T0)?;
    let key = t.effects[0].key.clone();
    let later = Timestamp(T0.ms() + 10_000);
    store.record_attempt(&key, &Attempt::Retry { at: later, error: "421 try again".into() }, T0)?;
    assert!(store.ready_effects(T0, 10)?.is_empty(), "not before its retry time");
    let ready = store.ready_effects(later, 10)?;
    assert_eq!((ready.len(), ready.entries[0].attempts), (1, 1));
    store.record_attempt(&key, &Attempt::Done { detail: Some("250 ok".into()) }, later)?;
    assert!(store.ready_effects(Timestamp(i64::MAX), 10)?.is_empty());
    assert_eq!(store.outbox_depth()?, 0);
    store.record_attempt(&key, &Attempt::Failed { error: "late".into() }, later)?;
    assert_eq!(store.outbox_depth()?, 0, "a finished effect stays finished");
    Ok(())
}

/// A claimed effect is not ready before its lease passes; after it, it is ready again under
/// the same key with the attempt counted; a late outcome of the earlier attempt changes
/// nothing, the latest attempt's outcome finishes it.
pub fn claimed_effects_wait_for_their_lease(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let t = start(&workflow, 1, "c-1");
    store.commit(&[&t], T0)?;
    let key = t.effects[0].key.clone();
    let lease = Timestamp(T0.ms() + 90_000);
    store.record_attempt(&key, &Attempt::Claimed { until: lease }, T0)?;
    assert!(store.ready_effects(Timestamp(lease.ms() - 1), 10)?.is_empty(), "not while the lease holds");
    assert_eq!(store.outbox_depth()?, 1, "a claimed effect is still owed");
    let ready = store.ready_effects(lease, 10)?;
    assert_eq!((ready.len(), ready.entries[0].key.as_str(), ready.entries[0].attempts), (1, key.as_str(), 1));
    // Claimed again (attempt 2); attempt 1's worker answers late: nothing changes.
    let second = Timestamp(lease.ms() + 90_000);
    store.record_attempt(&key, &Attempt::Claimed { until: second }, lease)?;
    let late = Attempt::Failed { error: "late".into() };
    store.write(&Batch { outcomes: vec![(key.as_str(), 1, &late)], ..Batch::default() }, lease)?;
    assert_eq!(store.outbox_depth()?, 1, "a stale outcome does not finish the effect");
    let retry = Attempt::Retry { at: Timestamp(lease.ms() + 5), error: "421 busy".into() };
    store.write(&Batch { outcomes: vec![(key.as_str(), 2, &retry)], ..Batch::default() }, lease)?;
    let ready = store.ready_effects(Timestamp(lease.ms() + 5), 10)?;
    assert_eq!(ready.entries[0].attempts, 2, "an outcome is not counted as another attempt");
    store.record_attempt(&key, &Attempt::Claimed { until: second }, lease)?;
    let done = Attempt::Done { detail: Some("250 ok".into()) };
    store.write(&Batch { outcomes: vec![(key.as_str(), 3, &done)], ..Batch::default() }, lease)?;
    assert_eq!(store.outbox_depth()?, 0);
    assert!(store.ready_effects(Timestamp(i64::MAX), 10)?.is_empty());
    Ok(())
}

/// Attempts claimed and never settled are counted as lost (an outcome settles them, a retry
/// too); a quarantined effect is not ready, is listed among the dead letters with the reason,
/// and is ready again once requeued, its lost attempts forgiven. Failed effects are dead
/// letters too, but only quarantined ones can be requeued.
pub fn lost_attempts_quarantine_and_requeue(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let t = start(&workflow, 1, "c-1");
    store.commit(&[&t], T0)?;
    let key = t.effects[0].key.clone();
    let mut at = T0;
    for lost in 1..=3u32 {
        let lease = Timestamp(at.ms() + 1_000);
        store.record_attempt(&key, &Attempt::Claimed { until: lease }, at)?;
        at = lease;
        let ready = store.ready_effects(at, 10)?;
        assert_eq!((ready.entries[0].attempts, ready.entries[0].lost), (lost, lost), "claimed, never settled");
    }
    // An outcome of the latest attempt settles every attempt before it too.
    store.record_attempt(&key, &Attempt::Claimed { until: Timestamp(at.ms() + 1_000) }, at)?;
    let retry = Attempt::Retry { at: Timestamp(at.ms() + 2_000), error: "421 busy".into() };
    store.write(&Batch { outcomes: vec![(key.as_str(), 4, &retry)], ..Batch::default() }, at)?;
    let ready = store.ready_effects(Timestamp(at.ms() + 2_000), 10)?;
    assert_eq!((ready.entries[0].attempts, ready.entries[0].lost), (4, 0));
    at = Timestamp(at.ms() + 2_000);
    let reason = "quarantined: 3 attempts ended with no outcome".to_owned();
    store.record_attempt(&key, &Attempt::Quarantined { reason: reason.clone() }, at)?;
    assert!(store.ready_effects(Timestamp(i64::MAX), 10)?.is_empty(), "set aside");
    let letters = store.dead_letters(10)?;
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].key.as_str(), letters[0].status.as_str()), (key.as_str(), "quarantined"));
    assert_eq!((letters[0].attempts, letters[0].result.as_deref()), (4, Some(reason.as_str())));
    assert!(!store.requeue_effect("no-such-effect", at)?);
    assert!(store.requeue_effect(&key, at)?);
    assert!(!store.requeue_effect(&key, at)?, "once: it is pending now");
    let ready = store.ready_effects(at, 10)?;
    assert_eq!((ready.entries[0].key.as_str(), ready.entries[0].lost), (key.as_str(), 0));
    assert!(store.dead_letters(10)?.is_empty());
    store.record_attempt(&key, &Attempt::Failed { error: "550 no such user".into() }, at)?;
    let letters = store.dead_letters(10)?;
    assert_eq!((letters[0].status.as_str(), letters[0].result.as_deref()), ("failed", Some("550 no such user")));
    assert!(!store.requeue_effect(&key, at)?, "a failed effect reported to its run; it is not requeued");
    Ok(())
}

pub fn workflow_versions_are_immutable(mut store: Box<dyn Store>) -> Result<(), Error> {
    assert_eq!(store.put_workflow("w", "id: w # v1", T0)?, 1);
    assert_eq!(store.put_workflow("w", "id: w # v2", T0)?, 2);
    assert_eq!(store.workflow_source("w", Some(1))?, Some((1, "id: w # v1".to_owned())));
    assert_eq!(store.workflow_source("w", None)?, Some((2, "id: w # v2".to_owned())));
    assert_eq!(store.workflow_source("w", Some(3))?, None);
    assert!(store.set_workflow_status("w", WorkflowStatus::Paused, T0)?);
    assert!(!store.set_workflow_status("missing", WorkflowStatus::Paused, T0)?);
    let list = store.workflows()?;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].latest_version, list[0].status), (2, WorkflowStatus::Paused));
    Ok(())
}

pub fn tokens_are_found_by_hash(mut store: Box<dyn Store>) -> Result<(), Error> {
    let token = crate::Token {
        workspace: "default".into(),
        name: "ci".into(),
        scopes: vec![crate::Scope::Ingest, crate::Scope::Admin],
        created_at: T0,
        person: None,
    };
    store.put_token("ab12", &token)?;
    assert_eq!(store.token("ab12")?, Some(token.clone()));
    let personal = crate::Token { name: "dana's".into(), person: Some("dana@example.com".into()), ..token.clone() };
    store.put_token("cd34", &personal)?;
    assert_eq!(store.token("cd34")?, Some(personal), "the person a token acts as is kept");
    assert_eq!(store.token("ab13")?, None);
    assert!(store.put_token("ab12", &token).is_err(), "a hash is stored once");
    Ok(())
}

pub fn gone_endpoints_stay_gone_until_forgotten(mut store: Box<dyn Store>) -> Result<(), Error> {
    let gone = |url: &str, at: i64| crate::GoneEndpoint {
        url: url.to_owned(),
        gone_at: Timestamp(T0.ms() + at),
        reason: format!("{url} answered 410 Gone"),
    };
    assert_eq!(store.gone_endpoints(10)?, Vec::new());
    store.put_gone_endpoints(&[gone("https://a.example/hook", 1), gone("https://b.example/hook", 2)])?;
    // Recorded again later: the first time stays.
    store.put_gone_endpoints(&[gone("https://a.example/hook", 3)])?;
    let listed = store.gone_endpoints(10)?;
    assert_eq!(listed, vec![gone("https://b.example/hook", 2), gone("https://a.example/hook", 1)], "newest first");
    assert_eq!(store.gone_endpoints(1)?, vec![gone("https://b.example/hook", 2)]);
    assert!(store.forget_gone_endpoint("https://a.example/hook")?);
    assert!(!store.forget_gone_endpoint("https://a.example/hook")?, "forgotten once");
    assert_eq!(store.gone_endpoints(10)?, vec![gone("https://b.example/hook", 2)]);
    Ok(())
}

pub fn contacts_merge_traits(mut store: Box<dyn Store>) -> Result<(), Error> {
    store.upsert_contact("c-1", &json!({ "first_name": "Ada", "plan": "free" }), Some("Europe/Paris"), T0)?;
    let merged = store.upsert_contact("c-1", &json!({ "plan": "pro" }), None, T0)?;
    assert_eq!(merged.traits, json!({ "first_name": "Ada", "plan": "pro" }));
    assert_eq!(merged.timezone.as_deref(), Some("Europe/Paris"), "a missing time zone keeps the known one");
    assert_eq!(store.contact("c-1")?, Some(merged));
    assert_eq!(store.contact("c-2")?, None);
    Ok(())
}

/// Schedules come back by due time, change in place, and go with their workflow; contacts
/// page in id order.
pub fn schedules_are_found_by_due_time(mut store: Box<dyn Store>) -> Result<(), Error> {
    let schedule = |workflow: &str, trigger: u32, due: i64| Schedule {
        workflow_id: workflow.to_owned(),
        trigger,
        spec: "0 9 * * * UTC".to_owned(),
        due_at: Timestamp(due),
        cursor: None,
    };
    let (a0, a1, b0) = (schedule("a", 0, 30), schedule("a", 1, 10), schedule("b", 0, 20));
    let puts = vec![ScheduleChange::Put(&a0), ScheduleChange::Put(&a1), ScheduleChange::Put(&b0)];
    store.write(&Batch { schedules: puts, ..Batch::default() }, T0)?;
    let due: Vec<(String, u32)> =
        store.due_schedules(Timestamp(25), 10)?.into_iter().map(|s| (s.workflow_id, s.trigger)).collect();
    assert_eq!(due, [("a".to_owned(), 1), ("b".to_owned(), 0)], "earliest first, only the due ones");
    let moved = Schedule { cursor: Some("c-9".into()), ..schedule("a", 1, 40) };
    store.write(&Batch { schedules: vec![ScheduleChange::Put(&moved)], ..Batch::default() }, T0)?;
    assert_eq!(store.schedules("a")?, [a0, moved], "a put replaces the trigger's schedule");
    store.write(&Batch { schedules: vec![ScheduleChange::RemoveWorkflow("a")], ..Batch::default() }, T0)?;
    assert!(store.schedules("a")?.is_empty());
    assert_eq!(store.due_schedules(Timestamp(i64::MAX), 10)?, [b0]);
    for id in ["c-2", "c-1", "c-3"] {
        store.upsert_contact(id, &json!({}), None, T0)?;
    }
    assert_eq!(store.contact_ids_after(None, 2)?, ["c-1", "c-2"]);
    assert_eq!(store.contact_ids_after(Some("c-2"), 2)?, ["c-3"]);
    assert_eq!(store.setting("secret")?, None);
    assert_eq!(store.put_setting_once("secret", "first")?, "first");
    assert_eq!(store.put_setting_once("secret", "second")?, "first", "a setting is written once");
    store.write(&Batch { settings: vec![("secret", "third")], ..Batch::default() }, T0)?;
    assert_eq!(store.setting("secret")?.as_deref(), Some("third"), "a batch replaces a setting");
    store.upsert_contact("c-mail", &json!({ "email": "Ada@Example.com" }), None, T0)?;
    assert_eq!(store.contact_id_by_email("ada@example.COM")?.as_deref(), Some("c-mail"), "found in any case");
    assert_eq!(store.contact_id_by_email("nobody@example.com")?, None);
    Ok(())
}

/// Merging an anonymous identity into a known one moves its events and runs, fills the known
/// contact's gaps with its traits (the known values win), and leaves an alias that resolves,
/// flattened through chains.
pub fn merged_identities_keep_their_history(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    store.upsert_contact("anon-1", &json!({ "plan": "free", "utm_source": "ads" }), Some("Europe/Paris"), T0)?;
    store.upsert_contact("ada", &json!({ "plan": "pro", "email": "ada@example.com" }), None, T0)?;
    let run = start(&workflow, 1, "anon-1");
    let event = Event { id: "m-anon".into(), name: "Page Viewed".into(), at: T0, payload: json!({}).into() };
    store.commit_with_events(&[&run], &[("anon-1", &event)], T0)?;
    store.write(&Batch { merges: vec![("anon-1", "ada")], ..Batch::default() }, T0)?;
    assert_eq!(store.canonical_id("anon-1")?.as_deref(), Some("ada"));
    assert_eq!(store.canonical_id("ada")?, None);
    let ada = store.contact("ada")?.expect("the known contact stays");
    assert_eq!(
        ada.traits,
        json!({ "plan": "pro", "utm_source": "ads", "email": "ada@example.com" }),
        "known values win"
    );
    assert_eq!(ada.timezone.as_deref(), Some("Europe/Paris"), "a gap is filled");
    assert!(store.contact("anon-1")?.is_none(), "the anonymous contact is merged away");
    assert_eq!(store.events_of_subject("ada", Timestamp(0), 10)?.len(), 1, "its events moved");
    let moved = store.run(RunId(1))?.expect("its run stays");
    assert_eq!(moved.subject_id, "ada", "its runs moved, state included");
    assert_eq!(store.active_runs_of_subject("ada")?.len(), 1);
    // A later merge of the known identity carries its aliases along.
    store.write(&Batch { merges: vec![("ada", "ada-42")], ..Batch::default() }, T0)?;
    assert_eq!(store.canonical_id("anon-1")?.as_deref(), Some("ada-42"), "chains stay flat");
    Ok(())
}

/// Where active runs stand is counted per version and step, and the run list filters by it.
pub fn runs_are_found_by_position(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let (a, b) = (start(&workflow, 1, "c-1"), start(&workflow, 2, "c-2"));
    store.commit(&[&a, &b], T0)?;
    let at: Vec<u16> = a.run.current_steps().map(|s| s.0).collect();
    assert_eq!(at.len(), 1, "the run waits at one step");
    assert_eq!(store.positions("conformance")?, [Position { version: 1, steps: at.clone(), runs: 2 }]);
    assert!(store.positions("other")?.is_empty());
    let filter =
        |at: Vec<(u32, u16)>| RunFilter { workflow_id: Some("conformance".into()), at: Some(at), ..Default::default() };
    let found: Vec<RunId> = store.runs(&filter(vec![(1, at[0])]), 10)?.into_iter().map(|r| r.id).collect();
    assert_eq!(found, [RunId(2), RunId(1)], "newest first");
    assert_eq!(store.runs(&filter(vec![(1, at[0])]), 1)?.len(), 1, "the limit holds");
    assert!(store.runs(&filter(vec![(1, at[0] + 1)]), 10)?.is_empty(), "another step");
    assert!(store.runs(&filter(vec![(2, at[0])]), 10)?.is_empty(), "another version");
    assert!(store.runs(&filter(Vec::new()), 10)?.is_empty(), "no position matches nothing");
    // A run that ends leaves the counts.
    let timer = a.run.timers[0].id;
    let ended = handle(&workflow, a.run.clone(), &Input::TimerFired { timer }, &Facts::empty(), Timestamp(T0.ms() + 1));
    store.commit(&[&ended], T0)?;
    let counted: u64 = store.positions("conformance")?.iter().filter(|p| p.steps == at).map(|p| p.runs).sum();
    assert_eq!(counted, 1);
    Ok(())
}

/// A later commit of a run that stays active stores all of its new state and where it stands,
/// and leaves what a running run cannot change (status, subject, start) as it was.
pub fn an_active_run_is_rewritten_whole(mut store: Box<dyn Store>) -> Result<(), Error> {
    let workflow = workflow();
    let started = start(&workflow, 1, "c-1");
    store.commit(&[&started], T0)?;
    let mut later = started.clone();
    later.history.clear();
    later.effects.clear();
    later.run.outputs = serde_json::json!({ "hello": { "effect_id": "x" } });
    later.run.sequence += 5;
    later.run.last_event_at = Some(Timestamp(T0.ms() + 5));
    later.run.tokens.truncate(1);
    later.run.tokens[0].at = flowmark_core::model::StepIndex(0);
    later.run_changed = true;
    store.commit(&[&later], Timestamp(T0.ms() + 5))?;
    assert_eq!(store.run(RunId(1))?, Some(later.run.clone()), "the new state reads back");
    assert_eq!(store.active_runs_of_subject("c-1")?, [later.run.clone()]);
    assert_eq!(store.positions("conformance")?, [Position { version: 1, steps: vec![0], runs: 1 }]);
    let active = RunFilter { status: Some(RunStatus::Active), subject_id: Some("c-1".into()), ..Default::default() };
    assert_eq!(store.runs(&active, 10)?, [later.run]);
    Ok(())
}

fn work_item(id: &str, kind: WorkKind, due_at: Option<i64>, people: &[&str]) -> WorkItem {
    WorkItem {
        id: id.to_owned(),
        run: RunId(1),
        workflow_id: "w".to_owned(),
        subject_id: "post-1".to_owned(),
        step: id.to_owned(),
        kind,
        role: "writer".to_owned(),
        title: format!("Do {id}"),
        description: None,
        due_at: due_at.map(Timestamp),
        created_at: T0,
        status: "open".to_owned(),
        assignee: None,
        outcome: None,
        closed_by: None,
        closed_at: None,
        detail: json!({}),
        people: people.iter().map(|p| (*p).to_owned()).collect(),
    }
}

/// A person's inbox comes back soonest due first, no due date last, kind by kind or merged;
/// the calendar finds open work by due window; closed work leaves both.
pub fn inboxes_read_in_due_order(mut store: Box<dyn Store>) -> Result<(), Error> {
    let changes = [
        WorkChange::Open(Box::new(work_item("late", WorkKind::Task, Some(300), &["Ann@example.com"]))),
        WorkChange::Open(Box::new(work_item("undated", WorkKind::Task, None, &["ann@example.com"]))),
        WorkChange::Open(Box::new(work_item(
            "soon",
            WorkKind::Task,
            Some(100),
            &["ann@example.com", "bo@example.com"],
        ))),
        WorkChange::Open(Box::new(work_item("review", WorkKind::Approval, Some(200), &["ann@example.com"]))),
    ];
    store.write(&Batch { work: changes.iter().collect(), ..Batch::default() }, T0)?;
    let ids = |items: Vec<WorkItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(store.work_of_person("ann@example.com", Some(WorkKind::Task), 10)?), ["soon", "late", "undated"]);
    assert_eq!(ids(store.work_of_person("ann@example.com", Some(WorkKind::Task), 2)?), ["soon", "late"]);
    assert_eq!(ids(store.work_of_person("ANN@example.com", None, 10)?), ["soon", "review", "late", "undated"]);
    assert_eq!(ids(store.work_of_person("ann@example.com", Some(WorkKind::Approval), 10)?), ["review"]);
    assert_eq!(ids(store.open_work_due(Timestamp(100), Timestamp(300), 10)?), ["soon", "review"], "[from, until)");
    // Reassigning keeps the item's place in the new person's inbox.
    let moved = WorkChange::People {
        id: "late".into(),
        assignee: Some("bo@example.com".into()),
        people: vec!["bo@example.com".into()],
    };
    store.write(&Batch { work: vec![&moved], ..Batch::default() }, T0)?;
    assert_eq!(ids(store.work_of_person("bo@example.com", None, 10)?), ["soon", "late"]);
    let settle = WorkChange::Settle {
        run: RunId(1),
        keep: vec![("late".into(), "writer".into())],
        outcomes: Vec::new(),
        otherwise: "cancelled".into(),
    };
    store.write(&Batch { work: vec![&settle], ..Batch::default() }, T0)?;
    assert_eq!(ids(store.work_of_person("ann@example.com", None, 10)?), Vec::<String>::new());
    assert_eq!(ids(store.open_work_due(Timestamp(0), Timestamp(1000), 10)?), ["late"]);
    Ok(())
}
