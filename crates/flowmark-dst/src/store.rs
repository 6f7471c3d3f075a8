//! A store that fails on purpose: every write, unit of work and event insert may fail before
//! it happens (nothing changes) or, for writes, after it committed (the change is durable
//! but the caller sees an error, as when a process dies between its commit and its answer).
//!
//! Whether an operation fails is drawn from the harness's seeded random source, held in a
//! shared `Faults` so the harness can turn faults off for the final drain.
//!
//! Invariant: apart from the injected error, every call is the inner store's, unchanged.

use std::cell::RefCell;
use std::rc::Rc;

use flowmark_core::Timestamp;
use flowmark_core::engine::{Event, Run, RunId, Sent};
use flowmark_store::{
    Attempt, Batch, Comment, Contact, DeadLetter, DueTimer, Erasure, Error, GoneEndpoint, KeyedStart, Notification,
    Position, ReadyEffects, RunFilter, Schedule, ScoreRecord, Session, Store, Token, WorkItem, WorkKind,
    WorkflowStatus, WorkflowSummary,
};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde_json::Value;

/// How often each kind of fault happens, in parts per thousand, and the source that decides.
pub struct Faults {
    pub rng: ChaCha8Rng,
    pub write_before: u32,
    pub write_after: u32,
    pub begin: u32,
    pub insert_event: u32,
    /// Faults injected so far, by kind, for the report.
    pub injected: [u64; 4],
}

impl Faults {
    fn roll(&mut self, per_mille: u32, kind: usize) -> bool {
        let hit = per_mille > 0 && (self.rng.next_u64() % 1000) < u64::from(per_mille);
        if hit {
            self.injected[kind] += 1;
        }
        hit
    }

    pub fn off(&mut self) {
        (self.write_before, self.write_after, self.begin, self.insert_event) = (0, 0, 0, 0);
    }
}

pub struct FaultyStore<S> {
    pub inner: S,
    pub faults: Rc<RefCell<Faults>>,
}

fn injected(what: &str) -> Error {
    Error::Corrupt(format!("injected fault: {what}"))
}

impl<S: Store> Store for FaultyStore<S> {
    fn begin(&mut self) -> Result<(), Error> {
        let fail = {
            let mut faults = self.faults.borrow_mut();
            let p = faults.begin;
            faults.roll(p, 2)
        };
        if fail {
            return Err(injected("begin"));
        }
        self.inner.begin()
    }

    fn finish(&mut self) {
        self.inner.finish();
    }

    fn make_durable(&mut self) -> Result<(), Error> {
        self.inner.make_durable()
    }

    fn write(&mut self, batch: &Batch<'_>, now: Timestamp) -> Result<(), Error> {
        let (before, after) = {
            let mut faults = self.faults.borrow_mut();
            let (b, a) = (faults.write_before, faults.write_after);
            (faults.roll(b, 0), faults.roll(a, 1))
        };
        if before {
            self.inner.finish();
            return Err(injected("write, before the commit"));
        }
        self.inner.write(batch, now)?;
        if after {
            return Err(injected("write, after the commit"));
        }
        Ok(())
    }

    fn has_event(&self, message_id: &str) -> Result<bool, Error> {
        self.inner.has_event(message_id)
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, Error> {
        self.inner.run(id)
    }

    fn next_run_id(&self) -> Result<RunId, Error> {
        self.inner.next_run_id()
    }

    fn active_runs_of_subject(&self, subject_id: &str) -> Result<Vec<Run>, Error> {
        self.inner.active_runs_of_subject(subject_id)
    }

    fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Run>, Error> {
        self.inner.runs(filter, limit)
    }

    fn latest_run(&self, workflow_id: &str, subject_id: &str) -> Result<Option<Run>, Error> {
        self.inner.latest_run(workflow_id, subject_id)
    }

    fn start_key(&self, workflow_id: &str, key: &str) -> Result<Option<KeyedStart>, Error> {
        self.inner.start_key(workflow_id, key)
    }

    fn forget_start_keys(&mut self, before: Timestamp, limit: usize) -> Result<usize, Error> {
        self.inner.forget_start_keys(before, limit)
    }

    fn history(&self, id: RunId) -> Result<Vec<Value>, Error> {
        self.inner.history(id)
    }

    fn decisions(&self, id: RunId) -> Result<Vec<Value>, Error> {
        self.inner.decisions(id)
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<DueTimer>, Error> {
        self.inner.due_timers(now, limit)
    }

    fn ready_effects(&self, now: Timestamp, limit: usize) -> Result<ReadyEffects, Error> {
        self.inner.ready_effects(now, limit)
    }

    fn record_attempt(&mut self, key: &str, attempt: &Attempt, now: Timestamp) -> Result<(), Error> {
        self.inner.record_attempt(key, attempt, now)
    }

    fn outbox_depth(&self) -> Result<u64, Error> {
        self.inner.outbox_depth()
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.inner.dead_letters(limit)
    }

    fn requeue_effect(&mut self, key: &str, now: Timestamp) -> Result<bool, Error> {
        self.inner.requeue_effect(key, now)
    }

    fn sent_messages(&self, subject_id: &str, since: Timestamp) -> Result<Vec<Sent>, Error> {
        self.inner.sent_messages(subject_id, since)
    }

    fn insert_event(&mut self, subject_id: &str, event: &Event, received_at: Timestamp) -> Result<bool, Error> {
        let fail = {
            let mut faults = self.faults.borrow_mut();
            let p = faults.insert_event;
            faults.roll(p, 3)
        };
        if fail {
            return Err(injected("insert_event"));
        }
        self.inner.insert_event(subject_id, event, received_at)
    }

    fn events_of_subject(&self, subject_id: &str, since: Timestamp, limit: usize) -> Result<Vec<Event>, Error> {
        self.inner.events_of_subject(subject_id, since, limit)
    }

    fn events_named(
        &self,
        subject_id: &str,
        names: &[String],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        self.inner.events_named(subject_id, names, since, limit)
    }

    fn count_events(&self, subject_id: &str, name: &str, since: Timestamp) -> Result<u64, Error> {
        self.inner.count_events(subject_id, name, since)
    }

    fn put_workflow(&mut self, id: &str, source: &str, now: Timestamp) -> Result<u32, Error> {
        self.inner.put_workflow(id, source, now)
    }

    fn workflow_source(&self, id: &str, version: Option<u32>) -> Result<Option<(u32, String)>, Error> {
        self.inner.workflow_source(id, version)
    }

    fn workflows(&self) -> Result<Vec<WorkflowSummary>, Error> {
        self.inner.workflows()
    }

    fn set_workflow_status(&mut self, id: &str, status: WorkflowStatus, now: Timestamp) -> Result<bool, Error> {
        self.inner.set_workflow_status(id, status, now)
    }

    fn contact(&self, id: &str) -> Result<Option<Contact>, Error> {
        self.inner.contact(id)
    }

    fn work_item(&self, id: &str) -> Result<Option<WorkItem>, Error> {
        self.inner.work_item(id)
    }

    fn work_of_person(&self, person: &str, kind: Option<WorkKind>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        self.inner.work_of_person(person, kind, limit)
    }

    fn work_of_subject(&self, subject_id: &str, limit: usize) -> Result<Vec<WorkItem>, Error> {
        self.inner.work_of_subject(subject_id, limit)
    }

    fn open_work_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        self.inner.open_work_after(after, limit)
    }

    fn comments(&self, subject_id: &str, limit: usize) -> Result<Vec<Comment>, Error> {
        self.inner.comments(subject_id, limit)
    }

    fn notifications(&self, person: &str, limit: usize) -> Result<Vec<Notification>, Error> {
        self.inner.notifications(person, limit)
    }

    fn deliverable_version(&self, subject_id: &str) -> Result<u32, Error> {
        self.inner.deliverable_version(subject_id)
    }

    fn undigested(&self, limit: usize) -> Result<Vec<Notification>, Error> {
        self.inner.undigested(limit)
    }

    fn scheduled_items(&self, from: &str, until: Option<&str>, limit: usize) -> Result<Vec<(String, Value)>, Error> {
        self.inner.scheduled_items(from, until, limit)
    }

    fn open_work_due(&self, from: Timestamp, until: Timestamp, limit: usize) -> Result<Vec<WorkItem>, Error> {
        self.inner.open_work_due(from, until, limit)
    }

    fn positions(&self, workflow_id: &str) -> Result<Vec<Position>, Error> {
        self.inner.positions(workflow_id)
    }

    fn put_account(&mut self, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error> {
        self.inner.put_account(email, password_hash, now)
    }

    fn account(&self, email: &str) -> Result<Option<String>, Error> {
        self.inner.account(email)
    }

    fn put_session(&mut self, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error> {
        self.inner.put_session(hash, session, now)
    }

    fn session(&self, hash: &str, now: Timestamp) -> Result<Option<Session>, Error> {
        self.inner.session(hash, now)
    }

    fn end_session(&mut self, hash: &str) -> Result<(), Error> {
        self.inner.end_session(hash)
    }

    fn contact_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        self.inner.contact_ids_after(after, limit)
    }

    fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, Error> {
        self.inner.due_schedules(now, limit)
    }

    fn schedules(&self, workflow_id: &str) -> Result<Vec<Schedule>, Error> {
        self.inner.schedules(workflow_id)
    }

    fn contact_id_by_email(&self, email: &str) -> Result<Option<String>, Error> {
        self.inner.contact_id_by_email(email)
    }

    fn score_history(&self, subject_id: &str, limit: usize) -> Result<Vec<ScoreRecord>, Error> {
        self.inner.score_history(subject_id, limit)
    }

    fn canonical_id(&self, id: &str) -> Result<Option<String>, Error> {
        self.inner.canonical_id(id)
    }

    fn setting(&self, key: &str) -> Result<Option<String>, Error> {
        self.inner.setting(key)
    }

    fn put_setting_once(&mut self, key: &str, value: &str) -> Result<String, Error> {
        self.inner.put_setting_once(key, value)
    }

    fn aliases_of(&self, canonical: &str) -> Result<Vec<String>, Error> {
        self.inner.aliases_of(canonical)
    }

    fn erase_subject(&mut self, ids: &[String], tombstones: &[String], now: Timestamp) -> Result<Erasure, Error> {
        self.inner.erase_subject(ids, tombstones, now)
    }

    fn tombstones(&self) -> Result<Vec<String>, Error> {
        self.inner.tombstones()
    }

    fn put_token(&mut self, hash: &str, token: &Token) -> Result<(), Error> {
        self.inner.put_token(hash, token)
    }

    fn token(&self, hash: &str) -> Result<Option<Token>, Error> {
        self.inner.token(hash)
    }

    fn gone_endpoints(&self, limit: usize) -> Result<Vec<GoneEndpoint>, Error> {
        self.inner.gone_endpoints(limit)
    }

    fn put_gone_endpoints(&mut self, endpoints: &[GoneEndpoint]) -> Result<(), Error> {
        self.inner.put_gone_endpoints(endpoints)
    }

    fn forget_gone_endpoint(&mut self, url: &str) -> Result<bool, Error> {
        self.inner.forget_gone_endpoint(url)
    }
}
