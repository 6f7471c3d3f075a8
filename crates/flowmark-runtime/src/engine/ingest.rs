//! Ingestion: events (and the traits, aliases and suppressions they carry) applied to
//! subjects, their runs and the workflows they start — and what those changes cause inside
//! Flowmark: score rules, threshold events, segment membership and its edges.
//!
//! Everything one operation changes accumulates in a [`Unit`] and is written as one batch,
//! so an event, the score it moved, the threshold it crossed, the segment it entered and the
//! runs all of those started commit together or not at all. The dispatcher and the segment
//! sweep feed what they cause through the same path, into their own unit.
//!
//! Invariant: an event is applied at most once (its insert is the duplicate check, in the
//! unit), and events the unit makes itself are bounded by `GENERATED_EVENTS_MAX`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use flowmark_core::Timestamp;
use flowmark_core::engine::{
    Effect, EffectKind, Event, Facts, HistoryEntry, Input, Run, RunId, Transition, apply_update, emitted_event, handle,
};
use flowmark_core::expr::Scope;
use flowmark_core::model::{SegmentEdge, Trigger, Workflow};
use flowmark_store::{Batch, ContactChange, ScoreRecord, Store};
use serde_json::Value;

use super::{
    CASCADE_DEPTH_MAX, Engine, Error, GENERATED_EVENTS_MAX, Incoming, Ingested, Needs, RunRef, SUPPRESSED_REASON_TRAIT,
    UNSUBSCRIBED_TRAIT, changed, suppression_of, version_of,
};
use crate::scoring::Models;
use crate::segments::{self, Change, MEMBERSHIP_TRAIT, SegmentsSource};
use crate::suppressions::Suppressions;

/// Contacts the segment sweep re-evaluates per round (and so per commit).
pub const SEGMENT_SWEEP_PAGE_COUNT: usize = 1000;
/// How often the sweep starts a new pass over every contact, catching membership that only
/// time changes (a count's window sliding, a score decaying).
pub const SEGMENT_SWEEP_EVERY_MS: i64 = 15 * 60 * 1000;

/// The setting the workspace's segments are stored under (JSON).
pub const SEGMENTS_SETTING: &str = "segments";

/// Where the segment sweep is: the contact it goes on after, and when the next pass starts.
#[derive(Debug, Clone, Default)]
pub(super) struct Sweep {
    cursor: Option<String>,
    next_at: Timestamp,
}

/// What one unit of work has changed so far, newer than the store's; written as one batch
/// at its end.
#[derive(Default)]
pub(super) struct Unit {
    pub transitions: Vec<Transition>,
    /// Effect results recorded without their runs (`engine::effect_result`): history only.
    pub results: Vec<(RunId, HistoryEntry)>,
    /// Where the latest state of every run this unit touched is: its latest transition's
    /// index in `transitions` (no copy of the run). Written through `push` and `index_from`.
    runs: HashMap<RunId, usize>,
    /// The ids in `runs`, by subject: what an event about a subject and an entry rule read,
    /// without going through every run of the unit (a unit holds thousands).
    by_subject: HashMap<String, Vec<RunId>>,
    /// Subjects' data (traits merged, scores moved, membership) and time zones.
    pub subjects: HashMap<String, (Value, Option<String>)>,
    pub contact_changes: Vec<(String, Value, Option<String>)>,
    /// Identities merged in this unit, newer than the store's aliases.
    pub merged: HashMap<String, String>,
    pub merges: Vec<(String, String)>,
    pub score_records: Vec<ScoreRecord>,
    /// Notifications recorded, and the deliveries they add to the outbox.
    pub notifications: Vec<flowmark_store::Notification>,
    pub outbox: Vec<flowmark_store::OutboxEntry>,
    /// Events applied in this unit.
    pub accepted: HashSet<String>,
    /// Events this unit made itself (thresholds, segment edges): applied, not answered for.
    pub generated: HashSet<String>,
    /// Inbox changes to write besides those the transitions make.
    pub work: Vec<flowmark_store::WorkChange>,
    /// Idempotency keys of the hand starts in this unit: `(workflow, key, run, request)`,
    /// the last the start's fingerprint (`engine::start_fingerprint`).
    pub start_keys: Vec<(String, String, RunId, String)>,
    /// Outcomes of claimed attempts: `(key, attempt number, outcome)` (`Batch::outcomes`).
    pub outcomes: Vec<(String, u32, flowmark_store::Attempt)>,
}

impl Unit {
    pub fn push(&mut self, t: Transition) {
        self.transitions.push(t);
        self.index(self.transitions.len() - 1);
    }

    /// Indexes the transitions from `from` on, which were pushed to `transitions` directly.
    pub fn index_from(&mut self, from: usize) {
        for at in from..self.transitions.len() {
            self.index(at);
        }
    }

    fn index(&mut self, at: usize) {
        let run = &self.transitions[at].run;
        if self.runs.insert(run.id, at).is_none() {
            self.by_subject.entry(run.subject_id.clone()).or_default().push(run.id);
        }
    }

    /// A run's latest state in this unit, if the unit touched it.
    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id).map(|&at| &self.transitions[at].run)
    }

    /// The runs of a subject this unit touched, in their latest state.
    pub fn runs_of<'u>(&'u self, subject_id: &str) -> impl Iterator<Item = &'u Run> + 'u {
        self.by_subject.get(subject_id).into_iter().flatten().filter_map(|id| self.run(*id))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            contacts: self
                .contact_changes
                .iter()
                .map(|(id, traits, timezone)| ContactChange { id, traits, timezone: timezone.as_deref() })
                .collect(),
            transitions: self.transitions.iter().collect(),
            trail: self.results.iter().map(|(run, entry)| (*run, entry)).collect(),
            merges: self.merges.iter().map(|(from, into)| (from.as_str(), into.as_str())).collect(),
            score_changes: self.score_records.iter().collect(),
            notifications: self.notifications.iter().collect(),
            outbox: self.outbox.iter().collect(),
            start_keys: self
                .start_keys
                .iter()
                .map(|(workflow, key, run, request)| (workflow.as_str(), key.as_str(), *run, request.as_str()))
                .collect(),
            outcomes: self.outcomes.iter().map(|(key, number, attempt)| (key.as_str(), *number, attempt)).collect(),
            ..Batch::default()
        }
    }

    /// Marks an event as made by this unit; `false` when the unit made as many as it may.
    pub fn generate(&mut self, event: &Event) -> bool {
        if self.generated.len() >= GENERATED_EVENTS_MAX {
            tracing::warn!(event = %event.name, "a unit of work made too many events itself; this one is dropped");
            return false;
        }
        self.generated.insert(event.id.clone());
        true
    }
}

/// Does this trigger start its workflow on this event?
fn starts_on(trigger: &Trigger, event: &Event) -> bool {
    match trigger {
        Trigger::Event { name, .. } => *name == event.name,
        Trigger::Segment { name, on } => {
            let edge = match on {
                SegmentEdge::Enter => segments::SEGMENT_ENTERED_EVENT,
                SegmentEdge::Exit => segments::SEGMENT_EXITED_EVENT,
            };
            event.name == edge
                && event.payload.get("properties").and_then(|p| p.get("segment")).and_then(Value::as_str)
                    == Some(name.as_str())
        }
        _ => false,
    }
}

impl<S: Store> Engine<S> {
    /// Applies one event about `subject_id`; see `ingest_many`.
    pub fn ingest(&mut self, subject_id: &str, event: Event, now: Timestamp) -> Result<Ingested, Error> {
        let mut results = self.ingest_many(vec![Incoming::event(subject_id, event)], now)?;
        Ok(results.pop().expect("one result per event"))
    }

    /// Applies events in order: each one's traits are merged into its subject first
    /// (`identify`), then the event is deduplicated by `messageId`, moves scores, updates
    /// segment membership, advances its subject's active runs and starts the workflows it
    /// triggers (entry rules applied). The contact changes, the events — those it caused too —
    /// and every resulting transition are committed together, in one transaction.
    pub fn ingest_many(&mut self, incoming: Vec<Incoming>, now: Timestamp) -> Result<Vec<Ingested>, Error> {
        self.store.begin()?;
        let result = self.ingest_unit(incoming, now);
        self.store.finish();
        result
    }

    fn ingest_unit(&mut self, incoming: Vec<Incoming>, now: Timestamp) -> Result<Vec<Ingested>, Error> {
        let mut unit = Unit::default();
        // Which workflows may start is read once per batch.
        let active = self.active_workflows()?;
        let results = self.apply_incoming(&mut unit, incoming, &active, now)?;
        self.commit_unit(&mut unit, Vec::new(), &[], now)?;
        self.stats.runs_started += results.iter().map(|r| r.runs_started.len() as u64).sum::<u64>();
        Ok(results)
    }

    /// Ends a unit of work: applies the events it caused itself (`caused`: thresholds, segment
    /// edges, already marked as its own), the follow-ups of the runs that ended, the internal
    /// effects (`update`, `score`) its transitions emitted and what those cause, for up to
    /// `CASCADE_DEPTH_MAX` rounds, and writes everything, with `attempts`, in one commit.
    pub(super) fn commit_unit(
        &mut self,
        unit: &mut Unit,
        caused: Vec<Incoming>,
        attempts: &[(&str, &flowmark_store::Attempt)],
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut caused = caused;
        let mut from = 0;
        let mut applied = Vec::new();
        for round in 0..=CASCADE_DEPTH_MAX {
            if !caused.is_empty() {
                let active = self.active_workflows()?;
                self.apply_incoming(unit, std::mem::take(&mut caused), &active, now)?;
            }
            // Every transition before this point is indexed (`Unit::push`, `index_from`); the
            // follow-ups are indexed here.
            let before = unit.transitions.len();
            self.follow_ups_from(&mut unit.transitions, from, now)?;
            let to = unit.transitions.len();
            unit.index_from(before);
            if round == CASCADE_DEPTH_MAX {
                // What this round's internal effects would cause could not be applied in this
                // unit, so they are not applied here either: they stay pending, and the
                // dispatcher applies them in a unit of their own, with what they cause.
                tracing::warn!(
                    depth = CASCADE_DEPTH_MAX,
                    "internal effects and what they cause went deeper than a unit applies; the rest is dispatched"
                );
                break;
            }
            caused = self.apply_internal_effects(unit, from..to, &mut applied, now)?;
            from = to;
            if caused.is_empty() {
                break;
            }
        }
        let refs: Vec<&Transition> = unit.transitions.iter().collect();
        let mut work = self.work_changes(&refs, Some(&unit.subjects), now)?;
        work.append(&mut unit.work);
        let mut attempts = attempts.to_vec();
        attempts.extend(applied.iter().map(|(key, attempt)| (key.as_str(), attempt)));
        self.store.write(&Batch { attempts, work: work.iter().collect(), ..unit.batch() }, now)?;
        // Sends already handed to workers are checked against what this commit suppressed,
        // before anyone is told it is done.
        for (subject_id, change, _) in &unit.contact_changes {
            if Suppressions::concerns(change)
                && let Some((subject, _)) = unit.subjects.get(subject_id)
            {
                self.suppressions.note(subject_id, subject, now);
            }
        }
        self.stats.events_ingested += unit.accepted.len() as u64;
        // A result recorded without its run is still a transition of that run (its input
        // handled, its history grown), only a cheaper one to make.
        self.stats.transitions_committed += (unit.transitions.len() + unit.results.len()) as u64;
        Ok(())
    }

    /// Applies the internal effects of `unit.transitions[range]` — `update`, `score` and
    /// `emit` — to their subjects in this unit: they change nothing outside Flowmark, so they take effect
    /// in the commit of the step that ran them (exactly once), their outbox rows are recorded
    /// done in that commit, and their results go back to their runs there too. Returns what
    /// the changes cause: events emitted, thresholds crossed and segment edges.
    fn apply_internal_effects(
        &mut self,
        unit: &mut Unit,
        range: std::ops::Range<usize>,
        applied: &mut Vec<(String, flowmark_store::Attempt)>,
        now: Timestamp,
    ) -> Result<Vec<Incoming>, Error> {
        let internal: Vec<(RunId, String, Effect)> = unit.transitions[range]
            .iter()
            .flat_map(|t| {
                t.effects
                    .iter()
                    .filter(|effect| {
                        matches!(
                            effect.kind,
                            EffectKind::UpdateSubject { .. }
                                | EffectKind::AdjustScore { .. }
                                | EffectKind::EmitEvent { .. }
                        )
                    })
                    .map(|effect| (t.run.id, t.run.subject_id.clone(), effect.clone()))
            })
            .collect();
        let mut caused = Vec::new();
        for (run_id, subject_id, effect) in internal {
            let Some(run) = self.run_in(unit, run_id)? else { continue };
            if matches!(effect.kind, EffectKind::EmitEvent { .. }) {
                // The event is applied right after this round, in this unit, like a threshold.
                let event = emitted_event(run.id, &run.workflow_id, &subject_id, &effect, now)
                    .expect("an EmitEvent effect makes an event");
                let (ok, detail) = if unit.generate(&event) {
                    let detail = emitted_detail(&event);
                    caused.push(Incoming::event(&subject_id, event));
                    (true, detail)
                } else {
                    (false, format!("not recorded: this unit of work already made {GENERATED_EVENTS_MAX} events"))
                };
                let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
                let input = Input::EffectCompleted { key: effect.key.clone(), ok, detail: Some(detail.clone()) };
                unit.push(handle(&workflow, run, &input, &Facts::empty(), now));
                let attempt = if ok {
                    flowmark_store::Attempt::Done { detail: Some(detail) }
                } else {
                    flowmark_store::Attempt::Failed { error: detail }
                };
                applied.push((effect.key.clone(), attempt));
                continue;
            }
            let (data, _) = self.subject_in(unit, &subject_id)?;
            match effect.kind {
                EffectKind::UpdateSubject { set } => {
                    apply_update(data, &set);
                    unit.contact_changes.push((subject_id.clone(), Value::Object(set), None));
                }
                EffectKind::AdjustScore { model, change } => {
                    let (traits, record, crossings) =
                        self.apply_score(RunRef::of(&run), &effect.step, &model, change, data, now);
                    unit.contact_changes.push((subject_id.clone(), traits, None));
                    unit.score_records.push(record);
                    for crossing in crossings {
                        if unit.generate(&crossing.event) {
                            caused.push(crossing);
                        }
                    }
                }
                _ => continue,
            }
            let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
            // A result only adds to the run's history (`Transition::run_changed`): it reads no facts.
            let input = Input::EffectCompleted { key: effect.key.clone(), ok: true, detail: None };
            unit.push(handle(&workflow, run, &input, &Facts::empty(), now));
            applied.push((effect.key.clone(), flowmark_store::Attempt::Done { detail: None }));
            if !self.segments.is_empty() {
                caused.extend(self.segment_edges(unit, &subject_id, Change::Contact, &effect.key, now)?);
            }
        }
        Ok(caused)
    }

    /// A subject's data as this unit has it, loaded from the store the first time.
    pub(super) fn subject_in<'u>(
        &self,
        unit: &'u mut Unit,
        subject_id: &str,
    ) -> Result<&'u mut (Value, Option<String>), Error> {
        if !unit.subjects.contains_key(subject_id) {
            let known = self
                .store
                .contact(subject_id)?
                .map_or((Value::Object(Default::default()), None), |c| (c.traits, c.timezone));
            unit.subjects.insert(subject_id.to_owned(), known);
        }
        Ok(unit.subjects.get_mut(subject_id).expect("inserted above"))
    }

    /// Applies events in order into `unit`, with the events they cause right after each;
    /// returns a result for each event not made by the unit itself.
    pub(super) fn apply_incoming(
        &mut self,
        unit: &mut Unit,
        incoming: Vec<Incoming>,
        active: &[Arc<Workflow>],
        now: Timestamp,
    ) -> Result<Vec<Ingested>, Error> {
        let mut results = Vec::with_capacity(incoming.len());
        let mut queue: VecDeque<Incoming> = incoming.into();
        while let Some(Incoming { subject_id, event, traits, anonymous, merge_from }) = queue.pop_front() {
            let own = unit.generated.contains(&event.id);
            let subject_id = if anonymous {
                match unit.merged.get(&subject_id) {
                    Some(canonical) => canonical.clone(),
                    None => self.store.canonical_id(&subject_id)?.unwrap_or(subject_id),
                }
            } else {
                subject_id
            };
            // An erased contact stays erased: nothing naming one of its ids is stored again.
            if !own
                && (self.tombstones.holds(&subject_id)
                    || merge_from.as_deref().is_some_and(|m| self.tombstones.holds(m)))
            {
                self.stats.events_erased += 1;
                results.push(Ingested { erased: true, ..Ingested::default() });
                continue;
            }
            if let Some(from) = merge_from.filter(|from| *from != subject_id) {
                for canonical in unit.merged.values_mut().filter(|c| **c == from) {
                    canonical.clone_from(&subject_id);
                }
                unit.merged.insert(from.clone(), subject_id.clone());
                unit.merges.push((from, subject_id.clone()));
            }
            // A hard bounce, a spam complaint or an unsubscribe from any source suppresses the
            // contact in the same commit as the event.
            let traits = match suppression_of(&event) {
                Some(reason) => {
                    let (mut traits, timezone) = traits.unwrap_or((Value::Object(Default::default()), None));
                    if let Value::Object(map) = &mut traits {
                        map.insert(UNSUBSCRIBED_TRAIT.to_owned(), Value::Bool(true));
                        map.insert(SUPPRESSED_REASON_TRAIT.to_owned(), Value::String(reason.to_owned()));
                    }
                    Some((traits, timezone))
                }
                None => traits,
            };
            let mut contact_changed = false;
            if let Some((traits, timezone)) = traits {
                let (data, zone) = self.subject_in(unit, &subject_id)?;
                if let (Value::Object(into), Value::Object(from)) = (&mut *data, &traits) {
                    into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                // Only a time zone, and the one the contact has: nothing to write (most calls
                // from a browser carry its time zone).
                let unchanged = traits.as_object().is_some_and(serde_json::Map::is_empty)
                    && (timezone.is_none() || timezone == *zone);
                if timezone.is_some() {
                    zone.clone_from(&timezone);
                }
                if !unchanged {
                    contact_changed = true;
                    unit.contact_changes.push((subject_id.clone(), traits, timezone));
                }
            }
            // Inserting is the duplicate check: one index probe, and the insert is part of
            // this unit of work, so it commits with the transitions or not at all.
            if unit.accepted.contains(&event.id) || !self.store.insert_event(&subject_id, &event, now)? {
                self.stats.events_duplicate += 1;
                if !own {
                    results.push(Ingested { duplicate: true, ..Ingested::default() });
                }
                continue;
            }
            // Score rules move the subject's scores before anything reads them; a threshold
            // crossed records its event in this same unit, right after this one.
            if self.scoring.has_rule_for(&event.name) {
                let (data, _) = self.subject_in(unit, &subject_id)?;
                let changes = self.scoring.apply_event(&subject_id, data, &event, now);
                let scores = serde_json::json!({ "scores": data["scores"], "scores_at": data["scores_at"] });
                let mut crossed = Vec::new();
                for change in &changes {
                    for name in self.scoring.crossed(change) {
                        crossed.push(Models::threshold_event(change, &name));
                    }
                }
                if !changes.is_empty() {
                    contact_changed = true;
                    unit.contact_changes.push((subject_id.clone(), scores, None));
                }
                unit.score_records.extend(changes);
                for threshold in crossed.into_iter().rev() {
                    if unit.generate(&threshold) {
                        queue.push_front(Incoming::event(&subject_id, threshold));
                    }
                }
            }
            // Segment membership moves with what it reads; its edges are events of this unit.
            if !self.segments.is_empty() {
                let change = if contact_changed { Change::Contact } else { Change::Event(&event.name) };
                for edge in self.segment_edges(unit, &subject_id, change, &event.id, now)?.into_iter().rev() {
                    queue.push_front(edge);
                }
            }
            let mut runs: Vec<Run> = self
                .store
                .active_runs_of_subject(&subject_id)?
                .into_iter()
                .filter(|r| unit.run(r.id).is_none())
                .collect();
            runs.extend(unit.runs_of(&subject_id).filter(|r| r.is_active()).cloned());
            runs.sort_by_key(|r| r.id);
            let candidates: Vec<&Arc<Workflow>> =
                active.iter().filter(|w| w.triggers.iter().any(|t| starts_on(t, &event))).collect();
            let mut result = Ingested::default();
            // An event no run waits for and no workflow starts on is only stored: most of a
            // busy stream, so its facts are not even loaded.
            if !runs.is_empty() || !candidates.is_empty() {
                let mut needs = candidates.iter().fold(Needs::default(), |n, w| n.or(Needs::of(w)));
                for run in &runs {
                    needs = needs.or(Needs::of(&*self.workflow(&run.workflow_id, Some(run.version))?));
                }
                let facts = self.load_facts(&subject_id, unit.subjects.get(&subject_id), now, &needs)?;
                // The store's recent events include this unit's, this one too: they were
                // inserted in this unit of work.
                for run in runs {
                    let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
                    let id = run.id;
                    let input = Input::Event { event: event.clone() };
                    let t = handle(&workflow, run, &input, &facts.facts(&self.env), now);
                    if changed(&t) {
                        result.runs_advanced.push(id);
                        unit.push(t);
                    }
                }
                for workflow in candidates {
                    let triggered = workflow.triggers.iter().any(|trigger| match trigger {
                        Trigger::Event { filter, .. } => {
                            starts_on(trigger, &event)
                                && filter.as_ref().is_none_or(|f| {
                                    let scope = Scope::new()
                                        .with(workflow.subject.as_str(), &facts.subject)
                                        .with("event", event.payload.as_ref());
                                    f.eval(&scope).result == Ok(true)
                                })
                        }
                        other => starts_on(other, &event),
                    });
                    if !triggered || !self.may_enter(workflow, &subject_id, now, unit.runs_of(&subject_id))? {
                        continue;
                    }
                    let id = self.allocate_run_id();
                    let version = version_of(&self.compiled, workflow);
                    let run = Run::new(id, workflow, version, subject_id.as_str(), now);
                    let input = Input::Start { event: Some(event.clone()) };
                    let t = handle(workflow, run, &input, &facts.facts(&self.env), now);
                    result.runs_started.push(id);
                    unit.push(t);
                }
            }
            unit.accepted.insert(event.id);
            if !own {
                results.push(result);
            }
        }
        Ok(results)
    }

    /// Re-evaluates the segments `change` concerns for a subject, writes its new membership
    /// into the unit, and returns the edge events to apply (marked as the unit's own).
    /// `cause` is the id of what caused the change, which makes the edges' ids.
    pub(super) fn segment_edges(
        &self,
        unit: &mut Unit,
        subject_id: &str,
        change: Change<'_>,
        cause: &str,
        now: Timestamp,
    ) -> Result<Vec<Incoming>, Error> {
        // Most events concern no segment: nothing to load or evaluate.
        if let Change::Event(name) = change
            && !self.segments.counts_event(name)
        {
            return Ok(Vec::new());
        }
        let (data, _) = self.subject_in(unit, subject_id)?;
        let mut current = data.clone();
        self.scoring.decay_scores(&mut current, now);
        let membership = self
            .segments
            .evaluate(&current, change, now, |event, since| self.store.count_events(subject_id, event, since))?;
        if !membership.write {
            return Ok(Vec::new());
        }
        let list = Value::from(membership.segments.clone());
        let (data, _) = self.subject_in(unit, subject_id)?;
        if let Value::Object(map) = data {
            map.insert(MEMBERSHIP_TRAIT.to_owned(), list.clone());
        }
        unit.contact_changes.push((subject_id.to_owned(), serde_json::json!({ MEMBERSHIP_TRAIT: list }), None));
        let edges = membership
            .entered
            .iter()
            .map(|name| (name, true))
            .chain(membership.exited.iter().map(|name| (name, false)));
        let mut events = Vec::new();
        for (name, entered) in edges {
            let event = segments::edge_event(subject_id, name, entered, cause, now);
            if unit.generate(&event) {
                events.push(Incoming::event(subject_id, event));
            }
        }
        Ok(events)
    }

    /// Merges traits (and a time zone) into a contact, creating it if need be, by hand (the
    /// contact API): segment membership moves in the same commit, and the edges start their
    /// workflows. Returns the contact as stored.
    pub fn put_contact(
        &mut self,
        id: &str,
        traits: &Value,
        timezone: Option<&str>,
        now: Timestamp,
    ) -> Result<flowmark_store::Contact, Error> {
        self.store.begin()?;
        let result = self.put_contact_unit(id, traits, timezone, now);
        self.store.finish();
        result?;
        let contact = self.store.contact(id)?;
        Ok(contact.ok_or_else(|| flowmark_store::Error::Corrupt(format!("contact `{id}` vanished")))?)
    }

    fn put_contact_unit(
        &mut self,
        id: &str,
        traits: &Value,
        timezone: Option<&str>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut unit = Unit::default();
        let (data, zone) = self.subject_in(&mut unit, id)?;
        if let (Value::Object(into), Value::Object(from)) = (&mut *data, traits) {
            into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(timezone) = timezone {
            *zone = Some(timezone.to_owned());
        }
        unit.contact_changes.push((id.to_owned(), traits.clone(), timezone.map(str::to_owned)));
        let edges = if self.segments.is_empty() {
            Vec::new()
        } else {
            self.segment_edges(&mut unit, id, Change::Contact, &format!("contact-{}", now.ms()), now)?
        };
        self.commit_unit(&mut unit, edges, &[], now)
    }

    /// The workspace's segments, as written.
    pub fn segments(&self) -> Option<&SegmentsSource> {
        self.segments.source.as_ref()
    }

    /// Replaces the workspace's segments, after checking them (every problem is returned).
    /// Events from now on move membership; a sweep over every contact starts at once.
    pub fn set_segments(&mut self, source: SegmentsSource, now: Timestamp) -> Result<Result<(), Vec<String>>, Error> {
        Ok(self.store_document(SEGMENTS_SETTING, source, segments::Segments::compile, now)?.map(|compiled| {
            self.segments = compiled;
            self.restart_segment_sweep(now);
        }))
    }

    /// Starts a pass of the segment sweep over every contact at once, from the first, for
    /// contacts written without the engine (a CSV import): they join their segments within one
    /// pass, not at the next one (`SEGMENT_SWEEP_EVERY_MS`). A pass under way starts over, so
    /// contacts before its cursor are not missed.
    pub fn restart_segment_sweep(&mut self, now: Timestamp) {
        self.sweep = Sweep { cursor: None, next_at: now };
    }

    /// Re-evaluates every segment for the next `limit` contacts of the current pass, when a
    /// pass is due; membership changes and their edges commit together. Returns how many
    /// contacts it looked at (0 when no pass is due).
    pub fn sweep_segments(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        if self.segments.is_empty() || now < self.sweep.next_at {
            return Ok(0);
        }
        self.store.begin()?;
        let result = self.sweep_unit(now, limit);
        self.store.finish();
        result
    }

    fn sweep_unit(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        let ids = self.store.contact_ids_after(self.sweep.cursor.as_deref(), limit)?;
        let mut unit = Unit::default();
        let mut edges = Vec::new();
        let cause = format!("sweep-{}", now.ms());
        for id in &ids {
            edges.extend(self.segment_edges(&mut unit, id, Change::Contact, &cause, now)?);
        }
        self.commit_unit(&mut unit, edges, &[], now)?;
        self.sweep = if ids.len() < limit {
            Sweep { cursor: None, next_at: Timestamp(now.ms() + SEGMENT_SWEEP_EVERY_MS) }
        } else {
            Sweep { cursor: ids.last().cloned(), next_at: now }
        };
        Ok(ids.len())
    }

    /// A contact's segments: for each, whether it is a member and what its condition says
    /// now, with the values it read (`GET /api/contacts/{id}/segments`).
    pub fn explain_segments(
        &self,
        subject_id: &str,
        now: Timestamp,
    ) -> Result<Option<Vec<Value>>, flowmark_store::Error> {
        let Some(contact) = self.store.contact(subject_id)? else { return Ok(None) };
        let mut data = contact.traits;
        self.scoring.decay_scores(&mut data, now);
        let explained =
            self.segments.explain(&data, now, |event, since| self.store.count_events(subject_id, event, since))?;
        Ok(Some(explained))
    }
}

/// What an `emit` effect's result says: the event recorded, with its id.
pub(super) fn emitted_detail(event: &Event) -> String {
    format!("recorded `{}` ({})", event.name, event.id)
}
