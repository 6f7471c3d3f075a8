//! `Box<S>` is a store wherever `S` is, `Box<dyn Store + Send>` included: what lets a server
//! run on whichever backend the binary that starts it picks.
//!
//! Invariant: every method forwards, the defaulted ones too (a box that fell back to a
//! default `make_durable` would answer before a deferred commit is synced); the conformance
//! suite runs through this impl, since it drives each backend as a `Box<dyn Store>`.

use flowmark_core::Timestamp;
use flowmark_core::engine::{Event, Run, RunId, Sent, Transition};
use serde_json::Value;

use crate::*;

impl<S: Store + ?Sized> Store for Box<S> {
    fn begin(&mut self) -> Result<(), Error> {
        (**self).begin()
    }

    fn finish(&mut self) {
        (**self).finish()
    }

    fn write(&mut self, batch: &Batch<'_>, now: Timestamp) -> Result<(), Error> {
        (**self).write(batch, now)
    }

    fn make_durable(&mut self) -> Result<(), Error> {
        (**self).make_durable()
    }

    fn defer_durability(&mut self, defer: bool) -> Result<(), Error> {
        (**self).defer_durability(defer)
    }

    fn durability(&self) -> Option<std::sync::Arc<dyn Durability>> {
        (**self).durability()
    }

    fn commit(&mut self, transitions: &[&Transition], now: Timestamp) -> Result<(), Error> {
        (**self).commit(transitions, now)
    }

    fn commit_with_events(
        &mut self,
        transitions: &[&Transition],
        events: &[(&str, &Event)],
        now: Timestamp,
    ) -> Result<(), Error> {
        (**self).commit_with_events(transitions, events, now)
    }

    fn has_event(&self, message_id: &str) -> Result<bool, Error> {
        (**self).has_event(message_id)
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, Error> {
        (**self).run(id)
    }

    fn next_run_id(&self) -> Result<RunId, Error> {
        (**self).next_run_id()
    }

    fn active_runs_of_subject(&self, subject_id: &str) -> Result<Vec<Run>, Error> {
        (**self).active_runs_of_subject(subject_id)
    }

    fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Run>, Error> {
        (**self).runs(filter, limit)
    }

    fn start_key(&self, workflow_id: &str, key: &str) -> Result<Option<KeyedStart>, Error> {
        (**self).start_key(workflow_id, key)
    }

    fn forget_start_keys(&mut self, before: Timestamp, limit: usize) -> Result<usize, Error> {
        (**self).forget_start_keys(before, limit)
    }

    fn latest_run(&self, workflow_id: &str, subject_id: &str) -> Result<Option<Run>, Error> {
        (**self).latest_run(workflow_id, subject_id)
    }

    fn history(&self, id: RunId) -> Result<Vec<Value>, Error> {
        (**self).history(id)
    }

    fn decisions(&self, id: RunId) -> Result<Vec<Value>, Error> {
        (**self).decisions(id)
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<DueTimer>, Error> {
        (**self).due_timers(now, limit)
    }

    fn ready_effects(&self, now: Timestamp, limit: usize) -> Result<ReadyEffects, Error> {
        (**self).ready_effects(now, limit)
    }

    fn record_attempt(&mut self, key: &str, attempt: &Attempt, now: Timestamp) -> Result<(), Error> {
        (**self).record_attempt(key, attempt, now)
    }

    fn outbox_depth(&self) -> Result<u64, Error> {
        (**self).outbox_depth()
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        (**self).dead_letters(limit)
    }

    fn requeue_effect(&mut self, key: &str, now: Timestamp) -> Result<bool, Error> {
        (**self).requeue_effect(key, now)
    }

    fn sent_messages(&self, subject_id: &str, since: Timestamp) -> Result<Vec<Sent>, Error> {
        (**self).sent_messages(subject_id, since)
    }

    fn insert_event(&mut self, subject_id: &str, event: &Event, received_at: Timestamp) -> Result<bool, Error> {
        (**self).insert_event(subject_id, event, received_at)
    }

    fn events_of_subject(&self, subject_id: &str, since: Timestamp, limit: usize) -> Result<Vec<Event>, Error> {
        (**self).events_of_subject(subject_id, since, limit)
    }

    fn events_named(
        &self,
        subject_id: &str,
        names: &[String],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        (**self).events_named(subject_id, names, since, limit)
    }

    fn count_events(&self, subject_id: &str, name: &str, since: Timestamp) -> Result<u64, Error> {
        (**self).count_events(subject_id, name, since)
    }

    fn put_workflow(&mut self, id: &str, source: &str, now: Timestamp) -> Result<u32, Error> {
        (**self).put_workflow(id, source, now)
    }

    fn workflow_source(&self, id: &str, version: Option<u32>) -> Result<Option<(u32, String)>, Error> {
        (**self).workflow_source(id, version)
    }

    fn workflows(&self) -> Result<Vec<WorkflowSummary>, Error> {
        (**self).workflows()
    }

    fn set_workflow_status(&mut self, id: &str, status: WorkflowStatus, now: Timestamp) -> Result<bool, Error> {
        (**self).set_workflow_status(id, status, now)
    }

    fn upsert_contact(
        &mut self,
        id: &str,
        traits: &Value,
        timezone: Option<&str>,
        now: Timestamp,
    ) -> Result<Contact, Error> {
        (**self).upsert_contact(id, traits, timezone, now)
    }

    fn contact(&self, id: &str) -> Result<Option<Contact>, Error> {
        (**self).contact(id)
    }

    fn contact_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        (**self).contact_ids_after(after, limit)
    }

    fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, Error> {
        (**self).due_schedules(now, limit)
    }

    fn schedules(&self, workflow_id: &str) -> Result<Vec<Schedule>, Error> {
        (**self).schedules(workflow_id)
    }

    fn contact_id_by_email(&self, email: &str) -> Result<Option<String>, Error> {
        (**self).contact_id_by_email(email)
    }

    fn score_history(&self, subject_id: &str, limit: usize) -> Result<Vec<ScoreRecord>, Error> {
        (**self).score_history(subject_id, limit)
    }

    fn canonical_id(&self, id: &str) -> Result<Option<String>, Error> {
        (**self).canonical_id(id)
    }

    fn setting(&self, key: &str) -> Result<Option<String>, Error> {
        (**self).setting(key)
    }

    fn put_setting_once(&mut self, key: &str, value: &str) -> Result<String, Error> {
        (**self).put_setting_once(key, value)
    }

    fn aliases_of(&self, canonical: &str) -> Result<Vec<String>, Error> {
        (**self).aliases_of(canonical)
    }

    fn erase_subject(&mut self, ids: &[String], tombstones: &[String], now: Timestamp) -> Result<Erasure, Error> {
        (**self).erase_subject(ids, tombstones, now)
    }

    fn tombstones(&self) -> Result<Vec<String>, Error> {
        (**self).tombstones()
    }

    fn put_token(&mut self, hash: &str, token: &Token) -> Result<(), Error> {
        (**self).put_token(hash, token)
    }

    fn token(&self, hash: &str) -> Result<Option<Token>, Error> {
        (**self).token(hash)
    }

    fn gone_endpoints(&self, limit: usize) -> Result<Vec<GoneEndpoint>, Error> {
        (**self).gone_endpoints(limit)
    }

    fn put_gone_endpoints(&mut self, endpoints: &[GoneEndpoint]) -> Result<(), Error> {
        (**self).put_gone_endpoints(endpoints)
    }

    fn forget_gone_endpoint(&mut self, url: &str) -> Result<bool, Error> {
        (**self).forget_gone_endpoint(url)
    }

    fn work_item(&self, id: &str) -> Result<Option<WorkItem>, Error> {
        (**self).work_item(id)
    }

    fn work_of_person(&self, person: &str, kind: Option<WorkKind>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        (**self).work_of_person(person, kind, limit)
    }

    fn work_of_subject(&self, subject_id: &str, limit: usize) -> Result<Vec<WorkItem>, Error> {
        (**self).work_of_subject(subject_id, limit)
    }

    fn open_work_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        (**self).open_work_after(after, limit)
    }

    fn comments(&self, subject_id: &str, limit: usize) -> Result<Vec<Comment>, Error> {
        (**self).comments(subject_id, limit)
    }

    fn deliverable_version(&self, subject_id: &str) -> Result<u32, Error> {
        (**self).deliverable_version(subject_id)
    }

    fn notifications(&self, person: &str, limit: usize) -> Result<Vec<Notification>, Error> {
        (**self).notifications(person, limit)
    }

    fn undigested(&self, limit: usize) -> Result<Vec<Notification>, Error> {
        (**self).undigested(limit)
    }

    fn scheduled_items(&self, from: &str, until: Option<&str>, limit: usize) -> Result<Vec<(String, Value)>, Error> {
        (**self).scheduled_items(from, until, limit)
    }

    fn open_work_due(&self, from: Timestamp, until: Timestamp, limit: usize) -> Result<Vec<WorkItem>, Error> {
        (**self).open_work_due(from, until, limit)
    }

    fn positions(&self, workflow_id: &str) -> Result<Vec<Position>, Error> {
        (**self).positions(workflow_id)
    }

    fn put_account(&mut self, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error> {
        (**self).put_account(email, password_hash, now)
    }

    fn account(&self, email: &str) -> Result<Option<String>, Error> {
        (**self).account(email)
    }

    fn put_session(&mut self, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error> {
        (**self).put_session(hash, session, now)
    }

    fn session(&self, hash: &str, now: Timestamp) -> Result<Option<Session>, Error> {
        (**self).session(hash, now)
    }

    fn end_session(&mut self, hash: &str) -> Result<(), Error> {
        (**self).end_session(hash)
    }
}

#[cfg(test)]
mod tests {
    /// The trait's methods, defaulted or not, and this impl's, by name.
    fn methods(source: &str, block: &str) -> Vec<String> {
        let start = source.find(block).unwrap_or_else(|| panic!("`{block}` is in the source"));
        let body = &source[start..];
        let end = body.find("\n}\n").expect("the block ends");
        let mut names: Vec<String> = body[..end]
            .lines()
            .filter_map(|line| line.strip_prefix("    fn "))
            .map(|rest| rest.split(['(', '<']).next().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_box_forwards_every_method_of_the_trait() {
        let contract = methods(include_str!("lib.rs"), "pub trait Store {");
        let forwarded = methods(include_str!("boxed.rs"), "impl<S: Store + ?Sized> Store for Box<S> {");
        assert!(contract.len() > 50 && contract.contains(&"make_durable".to_owned()), "{contract:?}");
        assert_eq!(forwarded, contract);
    }
}
