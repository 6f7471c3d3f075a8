//! The dispatcher: effects from the outbox performed through the connectors, after the
//! commit that queued them.
//!
//! A round reads the ready effects, applies the internal ones (score changes, subject
//! updates, subflow starts) and the notifications of people's work in its own unit, renders
//! messages from the subject's data at that moment, hands what leaves Flowmark to each
//! connector within its limits, and commits every attempt's outcome, the results fed back to
//! the runs and what they cause in one transaction.
//!
//! Invariants: nothing is performed on the strength of a commit that is not durable yet
//! (`Store::make_durable` first); an effect this version cannot read is held, never
//! performed or dropped; a crash before the round's commit repeats its attempts under the
//! same keys, a crash after it leaves nothing to redo.

use std::collections::HashSet;

use flowmark_core::Timestamp;
use flowmark_core::engine::{
    EffectKind, Event, Facts, Input, ParentRun, RenderContext, Run, RunId, RunStatus, apply_update, effect_result,
    handle,
};
use flowmark_core::render::{Message, render_step_message};
use flowmark_store::{Attempt, OutboxEffect, OutboxEntry, ReadyEffects, Store};
use serde_json::Value;

use super::ingest::Unit;
use super::{Engine, Error, Incoming, Needs, RunRef, people, version_of};
use crate::connector::{Connector, Connectors, Job, Outbound, Outcome};
use crate::retry;
use crate::segments::Change;

/// How long an effect this version cannot read is held before it is looked at again (an
/// hour): long enough not to fill the log, short enough for a rolled-back upgrade.
pub const UNREADABLE_EFFECT_HOLD_MS: i64 = 3_600_000;

impl<S: Store> Engine<S> {
    /// Attempts up to `limit` ready effects through `connectors`; returns how many it took
    /// from the outbox. Internal effects (score changes, subject updates, subflow starts) are
    /// applied here; the others go to the connector registered for their kind, within its
    /// concurrency and rate limit (effects the rate holds back are deferred, not attempted).
    ///
    /// What the attempts gave, the subject changes, the results fed back to the runs, and what
    /// those cause (a parent whose subflow could not start moves on) are committed in one
    /// transaction: a crash after it leaves nothing to redo, a crash before it redoes the
    /// attempts under the same keys.
    pub fn dispatch(&mut self, now: Timestamp, limit: usize, connectors: &mut Connectors) -> Result<usize, Error> {
        self.store.begin()?;
        let result = self.dispatch_unit(now, limit, connectors);
        self.store.finish();
        self.store_gone_endpoints(connectors);
        result
    }

    /// Stores the webhook URLs that answered `410 Gone` in this round, so they stay disabled
    /// after a restart. A failure keeps them for the next round: in memory they are refused
    /// already, and a crash before they are stored costs at most one more `410` each.
    fn store_gone_endpoints(&mut self, connectors: &Connectors) {
        let Some(gone) = connectors.gone_endpoints() else { return };
        let new = gone.take_new();
        if new.is_empty() {
            return;
        }
        if let Err(error) = self.store.put_gone_endpoints(&new) {
            tracing::warn!(%error, endpoints = new.len(), "cannot store gone webhook endpoints; trying again next round");
            gone.keep(new);
        }
    }

    fn dispatch_unit(&mut self, now: Timestamp, limit: usize, connectors: &mut Connectors) -> Result<usize, Error> {
        let ReadyEffects { entries: ready, unreadable } = self.store.ready_effects(now, limit)?;
        if ready.is_empty() && unreadable.is_empty() {
            return Ok(0);
        }
        // What an effect does outside cannot be taken back: the commit that queued it must
        // survive a crash first, or a restart could queue something else in its place.
        self.store.make_durable()?;
        // Everything this dispatch changes — contacts, scores, runs, the events it causes.
        let mut unit = Unit::default();
        let mut thresholds: Vec<Incoming> = Vec::new();
        // Subjects an internal effect changed, with the effect: segments are re-evaluated.
        let mut touched: Vec<(String, String)> = Vec::new();
        // Phase 1, in outbox order: internal effects are applied, messages rendered; what
        // leaves Flowmark becomes a job for its connector.
        let mut outcomes: Vec<Option<Result<Outcome, Timestamp>>> = vec![None; ready.len()];
        let mut jobs: Vec<Vec<(usize, Option<Message>, String)>> = vec![Vec::new(); connectors.count()];
        // The run each effect's result goes back to (none for deliveries and gone runs).
        let mut owners: Vec<Option<RunRef<'_>>> = Vec::with_capacity(ready.len());
        for (index, entry) in ready.iter().enumerate() {
            let kind = match &entry.effect {
                OutboxEffect::Deliver(delivery) => {
                    // A notification's delivery: to its person, whatever became of the run.
                    let (route, message, to) = people::delivery_message(delivery);
                    jobs[connectors.route_of(route)].push((index, Some(message), to));
                    owners.push(None);
                    continue;
                }
                OutboxEffect::Run(kind) => kind,
            };
            let Some(run) = RunRef::owning(entry) else {
                outcomes[index] = Some(Ok(Outcome::Permanent { error: format!("run {} is gone", entry.run.0) }));
                owners.push(None);
                continue;
            };
            let mut subject = self.subject_in(&mut unit, run.subject_id)?.0.clone();
            let asks = match kind {
                EffectKind::CreateTask { .. } | EffectKind::RequestApproval { .. } | EffectKind::Notify { .. } => {
                    self.recipients(run, &entry.key, &entry.step, kind, &subject, now)?
                }
                _ => Vec::new(),
            };
            if !asks.is_empty() {
                // One notification per person and effect: the first ask that names them (a
                // person both responsible and consulted hears of the task once, as assigned).
                let mut notified: Vec<&str> = Vec::new();
                for ask in &asks {
                    for person in &ask.people {
                        if notified.contains(&person.as_str()) {
                            continue;
                        }
                        self.notify_person(&mut unit, (&entry.key, run.id, &entry.step), person, ask, now);
                        notified.push(person.as_str());
                    }
                }
                let detail = format!("notified {}", notified.join(", "));
                outcomes[index] = Some(Ok(Outcome::Done { detail: Some(detail) }));
                owners.push(Some(run));
                continue;
            }
            match kind {
                EffectKind::AdjustScore { model, change } => {
                    let (change, record, crossings) =
                        self.apply_score(run, &entry.step, model, *change, &mut subject, now);
                    unit.contact_changes.push((run.subject_id.to_owned(), change, None));
                    self.subject_in(&mut unit, run.subject_id)?.0 = subject;
                    touched.push((run.subject_id.to_owned(), entry.key.clone()));
                    unit.score_records.push(record);
                    thresholds.extend(crossings);
                    outcomes[index] = Some(Ok(Outcome::Done { detail: None }));
                }
                EffectKind::UpdateSubject { set } => {
                    apply_update(&mut subject, set);
                    unit.contact_changes.push((run.subject_id.to_owned(), Value::Object(set.clone()), None));
                    self.subject_in(&mut unit, run.subject_id)?.0 = subject;
                    touched.push((run.subject_id.to_owned(), entry.key.clone()));
                    outcomes[index] = Some(Ok(Outcome::Done { detail: None }));
                }
                EffectKind::StartRun { workflow, wait } => {
                    outcomes[index] = Some(Ok(self.start_subflow(run, entry, workflow, *wait, now, &mut unit)?));
                }
                EffectKind::SendMessage { channel, transactional, context } => {
                    let refusal =
                        if *transactional { None } else { flowmark_core::engine::refusal(&subject, *channel) };
                    if let Some(error) = refusal {
                        outcomes[index] = Some(Ok(Outcome::Permanent { error }));
                    } else {
                        match self.render(run, &entry.key, &entry.step, context, &subject)? {
                            Ok(message) => jobs[connectors.route_of(Outbound::of_message(&message))].push((
                                index,
                                Some(message),
                                run.subject_id.to_owned(),
                            )),
                            Err(error) => outcomes[index] = Some(Ok(Outcome::Permanent { error })),
                        }
                    }
                }
                EffectKind::CreateTask { .. }
                | EffectKind::RequestApproval { .. }
                | EffectKind::Notify { .. }
                | EffectKind::RecordConversion { .. } => {
                    jobs[connectors.route_of(Outbound::Other)].push((index, None, run.subject_id.to_owned()))
                }
            }
            owners.push(Some(run));
        }
        // Phase 2: each connector performs what its rate admits, `concurrency` at a time.
        let mut schedules: Vec<Option<&'static [u64]>> = vec![None; ready.len()];
        for (route, route_jobs) in jobs.into_iter().enumerate() {
            if route_jobs.is_empty() {
                continue;
            }
            let admitted = connectors.admit(route, route_jobs.len(), now);
            for (job, at) in admitted.later {
                outcomes[route_jobs[job].0] = Some(Err(at));
            }
            let going: Vec<&(usize, Option<Message>, String)> =
                admitted.now.iter().map(|&job| &route_jobs[job]).collect();
            let connector = connectors.connector(route).clone();
            if let Some(delays) = connector.retry_delays_ms() {
                for (index, _, _) in &route_jobs {
                    schedules[*index] = Some(delays);
                }
            }
            for (index, outcome) in perform_all(&*connector, connectors.concurrency(route), now, &ready, &going) {
                outcomes[index] = Some(Ok(outcome));
            }
            tracing::trace!(connector = connectors.name(route), performed = going.len(), "dispatched");
        }
        // Phase 3, in outbox order: attempts recorded, final results fed back to the runs.
        // A run this phase moved (a parent whose subflow could not start) takes its later
        // results as transitions too, so its history keeps outbox order.
        let mut moved: HashSet<RunId> = HashSet::new();
        let mut attempts: Vec<(String, Attempt, u32)> = Vec::new();
        // What this version cannot read stays in the outbox for the version that wrote it:
        // held back, loudly, never dropped or read as something else.
        let hold = Attempt::Deferred { at: Timestamp(now.ms().saturating_add(UNREADABLE_EFFECT_HOLD_MS)) };
        for effect in &unreadable {
            tracing::error!(effect = %effect.key, run = effect.run.0, error = %effect.error, attempts = effect.attempts,
                "an effect in the outbox cannot be read by this version; it is held, not performed");
            self.stats.effects_unreadable += 1;
        }
        for (((entry, outcome), owner), schedule) in ready.iter().zip(outcomes).zip(owners).zip(schedules) {
            let attempt_number = entry.attempts + 1;
            let outcome = match outcome {
                Some(Ok(outcome)) => outcome,
                Some(Err(at)) => {
                    attempts.push((entry.key.clone(), Attempt::Deferred { at }, entry.attempts));
                    continue;
                }
                None => Outcome::Permanent { error: "no connector answered".to_owned() },
            };
            let (attempt, final_result) = match outcome {
                Outcome::Done { detail } => (Attempt::Done { detail: detail.clone() }, Some((true, detail))),
                Outcome::Permanent { error } => (Attempt::Failed { error: error.clone() }, Some((false, Some(error)))),
                Outcome::Retryable { error, retry_after } => {
                    let next = match schedule {
                        Some(delays) => retry::next_attempt_on(delays, &entry.key, attempt_number, now, retry_after),
                        None => retry::next_attempt_at(&entry.key, attempt_number, now, retry_after),
                    };
                    match next {
                        Some(at) => (Attempt::Retry { at, error }, None),
                        None => {
                            let error = format!("gave up after {attempt_number} attempts: {error}");
                            (Attempt::Failed { error: error.clone() }, Some((false, Some(error))))
                        }
                    }
                }
            };
            attempts.push((entry.key.clone(), attempt, attempt_number));
            let (Some((ok, detail)), Some(owner)) = (final_result, owner) else { continue };
            // The result goes back to the run, committed with the attempt. It only adds to the
            // run's history (`engine::effect_result`), so neither the run nor facts are read.
            let workflow = self.workflow(owner.workflow_id, Some(owner.version))?;
            if moved.contains(&owner.id) {
                let Some(run) = self.run_in(&unit, owner.id)? else { continue };
                let input = Input::EffectCompleted { key: entry.key.clone(), ok, detail };
                unit.push(handle(&workflow, run, &input, &Facts::empty(), now));
                continue;
            }
            unit.results.push((owner.id, effect_result(&workflow, owner.id, &entry.key, ok, detail, now)));
            // A subflow that could not start ends, for a parent waiting on it, as failed: the
            // parent moves on, so it reads its state and facts (its results come first in the
            // history this commit writes for it).
            let waited = matches!(entry.effect, OutboxEffect::Run(EffectKind::StartRun { wait: true, .. }));
            if waited && !ok {
                let Some(run) = self.run_in(&unit, owner.id)? else { continue };
                let known = unit.subjects.get(owner.subject_id);
                let facts = self.load_facts(owner.subject_id, known, now, &Needs::of(&workflow))?;
                let input = Input::SubflowEnded { step: entry.step.clone(), status: RunStatus::Failed };
                unit.push(handle(&workflow, run, &input, &facts.facts(&self.env), now));
                moved.insert(owner.id);
            }
        }
        // What the internal effects caused — thresholds crossed, segments entered or left —
        // is applied in this same unit, so it commits with the scores and traits that caused
        // it, or not at all.
        let mut caused = Vec::new();
        for threshold in thresholds {
            if unit.generate(&threshold.event) {
                caused.push(threshold);
            }
        }
        if !self.segments.is_empty() {
            for (subject_id, key) in touched {
                caused.extend(self.segment_edges(&mut unit, &subject_id, Change::Contact, &key, now)?);
            }
        }
        let held = unreadable.iter().map(|effect| (effect.key.as_str(), &hold));
        let recorded: Vec<(&str, &Attempt)> =
            attempts.iter().map(|(key, attempt, _)| (key.as_str(), attempt)).chain(held).collect();
        self.commit_unit(&mut unit, caused, &recorded, now)?;
        for (key, attempt, number) in &attempts {
            match attempt {
                Attempt::Done { .. } => {
                    self.stats.effects_done += 1;
                    tracing::debug!(effect = %key, "effect done");
                }
                Attempt::Retry { at, error } => {
                    self.stats.effects_retried += 1;
                    tracing::warn!(effect = %key, attempt = number, %error, retry_at = %at, "effect failed; will retry");
                }
                Attempt::Failed { error } => {
                    self.stats.effects_failed += 1;
                    tracing::error!(effect = %key, attempt = number, %error, "effect failed for good");
                }
                Attempt::Deferred { at } => {
                    self.stats.effects_deferred += 1;
                    tracing::debug!(effect = %key, until = %at, "effect held back by its connector's rate");
                }
            }
        }
        Ok(ready.len() + unreadable.len())
    }

    /// Performs a `start_run` effect: a run of the named workflow (its latest version) for the
    /// same subject, started in this unit of work, so exactly once. Entry rules and pauses do
    /// not apply: a subflow is an explicit call. A waiting parent is recorded in the child,
    /// which reports its end to it.
    fn start_subflow(
        &mut self,
        parent: RunRef<'_>,
        entry: &OutboxEntry,
        name: &str,
        wait: bool,
        now: Timestamp,
        unit: &mut Unit,
    ) -> Result<Outcome, Error> {
        let workflow = match self.workflow(name, None) {
            Ok(workflow) => workflow,
            Err(Error::UnknownWorkflow(_)) => {
                return Ok(Outcome::Permanent { error: format!("there is no workflow `{name}` to start") });
            }
            Err(error) => return Err(error),
        };
        let id = self.allocate_run_id();
        let mut child = Run::new(id, &workflow, version_of(&self.compiled, &workflow), parent.subject_id, now);
        if wait {
            child.parent = Some(ParentRun { run: parent.id, step: entry.step.clone() });
        }
        let event = Event {
            id: format!("subflow:{}", entry.key),
            name: "Subflow Started".to_owned(),
            at: now,
            payload: serde_json::json!({
                "type": "subflow",
                "event": "Subflow Started",
                "parent": { "run": parent.id, "workflow": parent.workflow_id, "step": entry.step },
            })
            .into(),
        };
        let facts = self.load_facts(parent.subject_id, None, now, &Needs::of(&workflow))?;
        unit.push(handle(&workflow, child, &Input::Start { event: Some(event) }, &facts.facts(&self.env), now));
        self.stats.runs_started += 1;
        Ok(Outcome::Done { detail: Some(format!("run {}", id.0)) })
    }

    fn render(
        &mut self,
        run: RunRef<'_>,
        key: &str,
        step: &str,
        context: &RenderContext,
        subject: &Value,
    ) -> Result<Result<Message, String>, Error> {
        let workflow = self.workflow(run.workflow_id, Some(run.version))?;
        Ok(render_step_message(&workflow, key, step, context, subject, &self.env).map_err(|e| e.to_string()))
    }
}

/// Performs `jobs` (indexes into `ready`, with their rendered messages) through `connector`,
/// at most `concurrency` at a time, on scoped threads when that is more than one.
fn perform_all(
    connector: &dyn Connector,
    concurrency: usize,
    now: Timestamp,
    ready: &[OutboxEntry],
    jobs: &[&(usize, Option<Message>, String)],
) -> Vec<(usize, Outcome)> {
    let perform = |(index, message, subject_id): &(usize, Option<Message>, String)| {
        let entry = &ready[*index];
        let job = Job {
            key: &entry.key,
            effect: &entry.effect,
            message: message.as_ref(),
            subject_id,
            attempt: entry.attempts + 1,
            now,
        };
        (*index, connector.perform(&job))
    };
    let workers = concurrency.min(jobs.len());
    if workers <= 1 {
        return jobs.iter().map(|job| perform(job)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let job = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = jobs.get(job) else { return done };
                        done.push(perform(job));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}
