//! Schedule triggers: each active workflow's `schedule` triggers kept as stored schedules due
//! at their next occurrence, and the firing of those that are due, a page of subjects at a
//! time.
//!
//! Invariant: a schedule's due time and cursor move only in the commit that fires its
//! occurrence (or that brings it in line with a new version), so a restart neither skips nor
//! repeats an occurrence.

use std::collections::HashMap;

use flowmark_core::Timestamp;
use flowmark_core::engine::{Event, Input, Run, RunId, Transition, handle};
use flowmark_core::model::{SubjectKind, Trigger};
use flowmark_core::schedule::next_occurrence;
use flowmark_store::{Batch, Schedule, ScheduleChange, Store, WorkflowStatus};

use super::{Engine, Error, Needs, SCHEDULE_PAGE_COUNT, SCHEDULED_EVENT, version_of};

impl<S: Store> Engine<S> {
    /// Brings a workflow's schedules in line with its latest version and status: one per
    /// schedule trigger of an active workflow, due at the trigger's next occurrence after
    /// `now`; none for a paused workflow. A schedule whose trigger is unchanged keeps its due
    /// time and its place in a firing under way, so a restart or a redeploy neither skips
    /// nor repeats an occurrence.
    pub fn sync_schedules(&mut self, workflow_id: &str, now: Timestamp) -> Result<(), Error> {
        let Some(summary) = self.store.workflows()?.into_iter().find(|w| w.id == workflow_id) else {
            return Ok(());
        };
        let workflow = self.workflow(workflow_id, Some(summary.latest_version))?;
        let existing = self.store.schedules(workflow_id)?;
        let mut wanted = Vec::new();
        if summary.status == WorkflowStatus::Active {
            for (index, trigger) in workflow.triggers.iter().enumerate() {
                let Trigger::Schedule { cron, timezone } = trigger else { continue };
                let spec = format!("{cron} {timezone}");
                let trigger = index as u32;
                if let Some(kept) = existing.iter().find(|s| s.trigger == trigger && s.spec == spec) {
                    wanted.push(kept.clone());
                } else if let Some(due_at) = next_occurrence(cron, *timezone, now) {
                    wanted.push(Schedule { workflow_id: workflow_id.to_owned(), trigger, spec, due_at, cursor: None });
                }
            }
        }
        if wanted == existing {
            return Ok(());
        }
        let mut changes = vec![ScheduleChange::RemoveWorkflow(workflow_id)];
        changes.extend(wanted.iter().map(ScheduleChange::Put));
        self.store.write(&Batch { schedules: changes, ..Batch::default() }, now)?;
        Ok(())
    }

    /// Arms the schedules of every workflow that lacks them (after an upgrade, or a crash
    /// between storing a version and arming its schedules). Called when the server starts.
    pub fn sync_all_schedules(&mut self, now: Timestamp) -> Result<(), Error> {
        for summary in self.store.workflows()? {
            self.sync_schedules(&summary.id, now)?;
        }
        Ok(())
    }

    /// Fires up to `limit` due schedules: each starts a run of its workflow (entry rules
    /// applied) with a `Scheduled` event: for an `item` workflow, one run for a new item named
    /// `<workflow>@<occurrence>`; for a `contact` workflow, a run for every contact, up to
    /// `SCHEDULE_PAGE_COUNT` per round. When a firing is complete the schedule moves to the
    /// trigger's next occurrence after `now`: occurrences missed while the server was down
    /// fire once, not once each. Returns how many schedules it worked on.
    pub fn fire_due_schedules(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        self.store.begin()?;
        let result = self.schedules_unit(now, limit);
        self.store.finish();
        result
    }

    fn schedules_unit(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        let due = self.store.due_schedules(now, limit)?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut transitions: Vec<Transition> = Vec::new();
        let mut batch_runs: HashMap<RunId, Run> = HashMap::new();
        let mut updated: Vec<Schedule> = Vec::new();
        let mut finished: Vec<String> = Vec::new();
        for schedule in &due {
            let workflow = self.workflow(&schedule.workflow_id, None)?;
            let Some(Trigger::Schedule { cron, timezone }) = workflow.triggers.get(schedule.trigger as usize) else {
                // The latest version has no such trigger any more: re-arm from the workflow.
                finished.push(schedule.workflow_id.clone());
                continue;
            };
            let subjects = match workflow.subject {
                SubjectKind::Item => vec![format!("{}@{}", workflow.id, schedule.due_at.rfc3339())],
                SubjectKind::Contact => {
                    self.store.contact_ids_after(schedule.cursor.as_deref(), SCHEDULE_PAGE_COUNT)?
                }
            };
            let more = workflow.subject == SubjectKind::Contact && subjects.len() == SCHEDULE_PAGE_COUNT;
            let event = Event {
                id: format!("schedule:{}:{}:{}", workflow.id, schedule.trigger, schedule.due_at.ms()),
                name: SCHEDULED_EVENT.to_owned(),
                at: schedule.due_at,
                payload: serde_json::json!({
                    "type": "schedule",
                    "event": SCHEDULED_EVENT,
                    "cron": cron,
                    "timezone": timezone.name(),
                    "scheduledAt": schedule.due_at.rfc3339(),
                })
                .into(),
            };
            let needs = Needs::of(&workflow);
            let version = version_of(&self.compiled, &workflow);
            for subject in &subjects {
                if !self.may_enter(&workflow, subject, now, batch_runs.values())? {
                    continue;
                }
                let facts = self.load_facts(subject, None, now, &needs)?;
                let id = self.allocate_run_id();
                let run = Run::new(id, &workflow, version, subject.as_str(), now);
                let t =
                    handle(&workflow, run, &Input::Start { event: Some(event.clone()) }, &facts.facts(&self.env), now);
                batch_runs.insert(id, t.run.clone());
                transitions.push(t);
            }
            let next = if more {
                Some(Schedule { cursor: subjects.last().cloned(), ..schedule.clone() })
            } else {
                self.stats.schedules_fired += 1;
                next_occurrence(cron, *timezone, now.max(schedule.due_at)).map(|due_at| Schedule {
                    due_at,
                    cursor: None,
                    ..schedule.clone()
                })
            };
            match next {
                Some(next) => updated.push(next),
                None => finished.push(schedule.workflow_id.clone()),
            }
        }
        let started = transitions.len() as u64;
        self.follow_ups(&mut transitions, now)?;
        let refs: Vec<&Transition> = transitions.iter().collect();
        let work = self.work_changes(&refs, None, now)?;
        let batch = Batch {
            transitions: refs,
            schedules: updated.iter().map(ScheduleChange::Put).collect(),
            work: work.iter().collect(),
            ..Batch::default()
        };
        self.store.write(&batch, now)?;
        self.stats.runs_started += started;
        self.stats.transitions_committed += started;
        for workflow_id in finished {
            self.sync_schedules(&workflow_id, now)?;
        }
        Ok(due.len())
    }
}
