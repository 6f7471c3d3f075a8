//! The simulation report: per step, what entered, how long it waited, where it went.
//!
//! The `Collector` reads every transition's history and decision records as they happen, one
//! subject after another; `finish` turns the tallies into a `Report` whose maps are ordered,
//! so it prints the same bytes for the same simulation.
//!
//! Invariant: counts only grow; a wait is measured once, from `Waiting` to its resolution.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowmark_core::Timestamp;
use flowmark_core::engine::{HistoryKind, Run, Transition};
use flowmark_core::model::Workflow;
use serde::Serialize;

use crate::Config;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub workflow: String,
    /// Every subject simulated: the synthetic ones, and those only recorded events name.
    pub subjects: u32,
    /// Of `subjects`, those only the recorded events name (not `contact-N` of the population).
    #[serde(skip_serializing_if = "is_zero")]
    pub recorded_only_subjects: u32,
    pub days: u32,
    pub seed: u64,
    pub transitions: u64,
    pub steps_executed: u64,
    pub runs: BTreeMap<String, u64>,
    pub conversions: u64,
    pub conversion_value: f64,
    /// Hours from start to end, for runs that ended within the horizon.
    pub completion_hours: Percentiles,
    pub effects: BTreeMap<String, u64>,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepReport {
    pub id: String,
    pub kind: String,
    pub entered: u64,
    /// Tokens still here when the horizon came.
    pub waiting_at_end: u64,
    /// Hours spent waiting here, for waits that resolved.
    pub wait_hours: Percentiles,
    /// Where control went and how often (branch, split, approval and wait outcomes).
    pub paths: BTreeMap<String, u64>,
    pub quiet_hours_held: u64,
    pub quiet_hours_dropped: u64,
    pub capped: u64,
    /// Failures here: conditions that could not be evaluated, and templates that failed to
    /// render (the first `RENDERED_PER_STEP_MAX` messages of a step are rendered).
    pub errors: u64,
    /// The first error seen here, to start the investigation.
    pub error_example: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    fn of(mut hours: Vec<f64>) -> Percentiles {
        if hours.is_empty() {
            return Percentiles::default();
        }
        hours.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let index = ((hours.len() as f64 * q).ceil() as usize).clamp(1, hours.len()) - 1;
            Some(round2(hours[index]))
        };
        Percentiles { count: hours.len() as u64, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1.0) }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// How many messages of each step the simulator renders to check their templates.
pub const RENDERED_PER_STEP_MAX: u64 = 1000;

struct StepTally {
    entered: u64,
    rendered: u64,
    wait_hours: Vec<f64>,
    paths: BTreeMap<String, u64>,
    quiet_held: u64,
    quiet_dropped: u64,
    capped: u64,
    errors: u64,
    error_example: Option<String>,
}

pub(crate) struct Collector {
    steps: Vec<StepTally>,
    /// The workflow's step ids, by position: entries name steps with these same `Arc`s.
    ids: Vec<Arc<str>>,
    /// The steps the subject in flight waits at and since when (a short list: one per token).
    waiting_since: Vec<(usize, Timestamp)>,
    /// Tokens still waiting at each step when the horizon came.
    waiting_at_end: Vec<u64>,
    transitions: u64,
    steps_executed: u64,
    conversions: u64,
    conversion_value: f64,
    effects: BTreeMap<&'static str, u64>,
    /// Runs by status (ended, or still active at the horizon), and the hours from start to
    /// end of those that ended.
    statuses: BTreeMap<&'static str, u64>,
    completion_hours: Vec<f64>,
}

impl Collector {
    pub(crate) fn new(workflow: &Workflow) -> Collector {
        Collector {
            steps: workflow
                .steps
                .iter()
                .map(|_| StepTally {
                    entered: 0,
                    rendered: 0,
                    wait_hours: Vec::new(),
                    paths: BTreeMap::new(),
                    quiet_held: 0,
                    quiet_dropped: 0,
                    capped: 0,
                    errors: 0,
                    error_example: None,
                })
                .collect(),
            ids: workflow.steps.iter().map(|s| s.id.clone()).collect(),
            waiting_since: Vec::new(),
            waiting_at_end: vec![0; workflow.steps.len()],
            transitions: 0,
            steps_executed: 0,
            conversions: 0,
            conversion_value: 0.0,
            effects: BTreeMap::new(),
            statuses: BTreeMap::new(),
            completion_hours: Vec::new(),
        }
    }

    /// The position of a step named in an entry: by pointer first (the core clones the
    /// workflow's own `Arc`s), by text otherwise.
    fn step_of(&self, id: &Arc<str>) -> Option<usize> {
        self.ids.iter().position(|s| Arc::ptr_eq(s, id)).or_else(|| self.ids.iter().position(|s| s == id))
    }

    /// A new subject comes: what the last one waited on (its run ended, or the horizon came)
    /// is forgotten.
    pub(crate) fn subject_started(&mut self) {
        self.waiting_since.clear();
    }

    /// Tallies a run still active when the horizon came, and where its tokens wait.
    pub(crate) fn run_unfinished(&mut self, run: &Run) {
        *self.statuses.entry(run.status.as_str()).or_default() += 1;
        for at in run.current_steps() {
            self.waiting_at_end[at.index()] += 1;
        }
    }

    /// Tallies a run that ended; the simulator then drops it.
    pub(crate) fn run_ended(&mut self, run: &Run) {
        *self.statuses.entry(run.status.as_str()).or_default() += 1;
        if let Some(ended_at) = run.ended_at {
            self.completion_hours.push(ended_at.since(run.started_at).ms() as f64 / 3_600_000.0);
        }
    }

    /// Whether the next message of this step is one of those rendered; counts it if so.
    pub(crate) fn should_render(&mut self, step: usize) -> bool {
        let tally = &mut self.steps[step];
        tally.rendered += 1;
        tally.rendered <= RENDERED_PER_STEP_MAX
    }

    pub(crate) fn render_failed(&mut self, step: usize, error: String) {
        let tally = &mut self.steps[step];
        tally.errors += 1;
        tally.error_example.get_or_insert(error);
    }

    pub(crate) fn record(&mut self, transition: &Transition, now: Timestamp) {
        self.transitions += 1;
        for entry in &transition.history {
            let step = entry.step.as_ref().and_then(|id| self.step_of(id));
            if let HistoryKind::GoalReached { value, .. } = &entry.kind {
                self.conversions += 1;
                self.conversion_value += value.unwrap_or(0.0);
            }
            let Some(step) = step else { continue };
            let tally = &mut self.steps[step];
            match &entry.kind {
                HistoryKind::StepEntered { .. } => {
                    tally.entered += 1;
                    self.steps_executed += 1;
                }
                HistoryKind::Waiting { .. } | HistoryKind::QuietHoursHeld { .. } => {
                    if matches!(entry.kind, HistoryKind::QuietHoursHeld { .. }) {
                        tally.quiet_held += 1;
                    }
                    self.waiting_since.retain(|(s, _)| *s != step);
                    self.waiting_since.push((step, now));
                }
                HistoryKind::WaitResolved { .. }
                | HistoryKind::TaskCompleted { .. }
                | HistoryKind::ApprovalResolved { .. } => {
                    if let Some(position) = self.waiting_since.iter().position(|(s, _)| *s == step) {
                        let (_, since) = self.waiting_since.swap_remove(position);
                        tally.wait_hours.push(now.since(since).ms() as f64 / 3_600_000.0);
                    }
                }
                HistoryKind::QuietHoursDropped => tally.quiet_dropped += 1,
                HistoryKind::Capped { .. } => tally.capped += 1,
                HistoryKind::StepFailed { error } => {
                    tally.errors += 1;
                    if tally.error_example.is_none() {
                        tally.error_example = Some(error.clone());
                    }
                }
                HistoryKind::EffectEmitted { effect, .. } => *self.effects.entry(effect).or_default() += 1,
                _ => {}
            }
        }
        for decision in &transition.decisions {
            let (Some(step), Some(path)) = (decision.step.as_ref().and_then(|id| self.step_of(id)), &decision.path)
            else {
                continue;
            };
            let paths = &mut self.steps[step].paths;
            match paths.get_mut(path) {
                Some(count) => *count += 1,
                None => {
                    paths.insert(path.clone(), 1);
                }
            }
        }
    }

    pub(crate) fn finish(self, workflow: &Workflow, config: &Config) -> Report {
        let steps = workflow
            .steps
            .iter()
            .zip(self.steps)
            .zip(self.waiting_at_end)
            .map(|((step, tally), waiting)| StepReport {
                id: step.id.to_string(),
                kind: match &step.kind {
                    flowmark_core::model::StepKind::Action(a) => format!("action/{}", a.name()),
                    other => other.name().to_owned(),
                },
                entered: tally.entered,
                waiting_at_end: waiting,
                wait_hours: Percentiles::of(tally.wait_hours),
                paths: tally.paths,
                quiet_hours_held: tally.quiet_held,
                quiet_hours_dropped: tally.quiet_dropped,
                capped: tally.capped,
                errors: tally.errors,
                error_example: tally.error_example,
            })
            .collect();
        Report {
            workflow: workflow.id.clone(),
            subjects: config.subjects,
            recorded_only_subjects: 0,
            days: config.days,
            seed: config.seed,
            transitions: self.transitions,
            steps_executed: self.steps_executed,
            runs: self.statuses.into_iter().map(|(status, count)| (status.to_owned(), count)).collect(),
            conversions: self.conversions,
            conversion_value: round2(self.conversion_value),
            completion_hours: Percentiles::of(self.completion_hours),
            effects: self.effects.into_iter().map(|(name, count)| (name.to_owned(), count)).collect(),
            steps,
        }
    }
}

impl Report {
    /// A plain-text rendering for people, one line per step.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Simulated `{}`: {} subjects over {} days (seed {})",
            self.workflow, self.subjects, self.days, self.seed
        );
        if self.recorded_only_subjects > 0 {
            let _ = writeln!(
                out,
                "({} of them named only by the recorded events, with no traits)",
                self.recorded_only_subjects
            );
        }
        let runs: Vec<String> = self.runs.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "Runs: {}", runs.join(", "));
        let _ = writeln!(out, "Conversions: {} (value {:.2})", self.conversions, self.conversion_value);
        let c = &self.completion_hours;
        let _ = writeln!(
            out,
            "Time to end, hours: p50 {} p90 {} p99 {} (of {})",
            opt(c.p50),
            opt(c.p90),
            opt(c.p99),
            c.count
        );
        let effects: Vec<String> = self.effects.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "Effects: {}", if effects.is_empty() { "none".to_owned() } else { effects.join(", ") });
        let _ = writeln!(out, "Transitions: {}, steps executed: {}", self.transitions, self.steps_executed);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:>9} {:>8} {:>9} {:>9}  paths / notes",
            "step", "kind", "entered", "waiting", "wait p50", "wait p90"
        );
        for step in &self.steps {
            let mut notes: Vec<String> = step.paths.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            if step.quiet_hours_held > 0 {
                notes.push(format!("held by quiet hours: {}", step.quiet_hours_held));
            }
            if step.quiet_hours_dropped > 0 {
                notes.push(format!("dropped in quiet hours: {}", step.quiet_hours_dropped));
            }
            if step.capped > 0 {
                notes.push(format!("capped: {}", step.capped));
            }
            if step.errors > 0 {
                notes.push(format!("errors: {} ({})", step.errors, step.error_example.as_deref().unwrap_or("")));
            }
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:>9} {:>8} {:>9} {:>9}  {}",
                step.id,
                step.kind,
                step.entered,
                step.waiting_at_end,
                opt(step.wait_hours.p50),
                opt(step.wait_hours.p90),
                notes.join(", ")
            );
        }
        out
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
