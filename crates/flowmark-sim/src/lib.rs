//! `flowmark simulate`: a population dry run of one workflow in virtual time.
//!
//! Every synthetic subject gets a run driven by the same [`flowmark_core::engine::handle`]
//! the runtime uses. Effects are answered by a [`Behaviour`] model (opens, clicks, task
//! durations, approval decisions) or replayed from recorded events, and the answers come back
//! as inputs at their virtual time. Subjects never act on each other, so they are simulated
//! one after another: each lives its whole horizon on its own clock (a binary heap ordered by
//! time, then order of scheduling) and its own random stream (the seeded ChaCha8 stream
//! numbered by the subject's position), then is tallied and dropped. Memory is one subject
//! in flight plus the report, which keeps each run's wait and completion times for its
//! percentiles (about 40 bytes per subject).
//!
//! Invariant: the report is a pure function of (workflow, config): the same seed gives a
//! byte-identical report, and a subject's draws depend only on the seed and its position.
//! Nothing here reads the system clock or a global random source.

mod behaviour;
mod report;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use flowmark_core::Timestamp;
use flowmark_core::engine::{Decision, EffectKind, Event, Facts, Input, Run, RunId, RunStatus, Sent, TimerId, handle};
use flowmark_core::model::{Channel, StepIndex, StepKind, SubjectKind, Trigger, Workflow};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

pub use behaviour::{Behaviour, Error as BehaviourError};
pub use report::{Report, StepReport};

/// Most subjects one simulation may run. Subjects are simulated one after another, so each
/// adds only its share of the report (about 40 bytes: 800 MB at the limit); the limit bounds
/// that and the time a simulation takes (a minute or two).
pub const SUBJECTS_COUNT_MAX: u32 = 20_000_000;
/// Longest horizon, in days.
pub const DAYS_MAX: u32 = 3660;
/// Most recent events kept per subject for the wait look-back.
const RECENT_EVENTS_KEPT: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    pub subjects: u32,
    pub days: u32,
    pub seed: u64,
    /// Virtual time at which the simulation starts.
    pub start: Timestamp,
    pub behaviour: Behaviour,
    /// Recorded events to replay instead of synthetic behaviour (Segment shapes).
    pub events: Option<Vec<RecordedEvent>>,
}

/// An event of a recorded file, with the subject it is about.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub subject_id: String,
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} subjects is more than the limit of {SUBJECTS_COUNT_MAX}")]
    TooManySubjects(u32),
    #[error("{0} days is more than the limit of {DAYS_MAX}")]
    TooManyDays(u32),
    #[error("the simulation needs at least one subject and one day")]
    Empty,
}

/// The subject in flight: its data, what the wait look-back and caps read, and its run.
struct Subject {
    data: Value,
    timezone: Option<chrono_tz::Tz>,
    recent_events: Vec<Event>,
    sent: Vec<Sent>,
    /// The subject's run while it is active; an ended run is tallied and dropped.
    run: Option<Run>,
    ended: bool,
}

impl Subject {
    fn new(data: Value, timezone: Option<chrono_tz::Tz>) -> Subject {
        Subject { data, timezone, recent_events: Vec::new(), sent: Vec::new(), run: None, ended: false }
    }
}

/// The id of the `index`-th synthetic subject: `contact-1`, `item-2`, …
fn synthetic_id(kind: SubjectKind, index: u32) -> String {
    [kind.as_str(), "-", itoa::Buffer::new().format(u64::from(index) + 1)].concat()
}

/// Recorded events by subject: the positions of each subject's events, by the subject's
/// position (synthetic subjects first, then those only the recording names, in order of first
/// appearance), and the ids of the latter. Only subjects with events have an entry, so a large
/// population costs nothing here.
fn group_by_subject(
    kind: SubjectKind,
    synthetic: u32,
    events: &[RecordedEvent],
) -> (HashMap<u32, Vec<usize>>, Vec<String>) {
    let mut index_of: HashMap<&str, u32> = HashMap::new();
    let mut recorded_only = Vec::new();
    let mut by_subject: HashMap<u32, Vec<usize>> = HashMap::new();
    for (position, recorded) in events.iter().enumerate() {
        let id = recorded.subject_id.as_str();
        let index = *index_of.entry(id).or_insert_with(|| match synthetic_position(kind, synthetic, id) {
            Some(index) => index,
            None => {
                recorded_only.push(id.to_owned());
                let only = u32::try_from(recorded_only.len() - 1).expect("fewer subjects than events");
                synthetic.saturating_add(only)
            }
        });
        by_subject.entry(index).or_default().push(position);
    }
    (by_subject, recorded_only)
}

/// The position of a synthetic subject named `id`, if `id` names one (see [`synthetic_id`]).
fn synthetic_position(kind: SubjectKind, synthetic: u32, id: &str) -> Option<u32> {
    let number = id.strip_prefix(kind.as_str())?.strip_prefix('-')?;
    if number.starts_with('0') || number.starts_with('+') {
        return None;
    }
    let number: u32 = number.parse().ok()?;
    (1..=synthetic).contains(&number).then(|| number - 1)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Start,
    Timer(TimerId),
    /// A response of the behaviour model to an email, with the email's effect key.
    Event {
        kind: SimEvent,
        email: Option<std::sync::Arc<str>>,
    },
    Recorded(usize),
    /// An event the run emitted (`emit`): its position in `Simulation::emitted`.
    Emitted(usize),
    TaskDone {
        step: StepIndex,
    },
    Decide {
        step: StepIndex,
        /// Position of the deciding role among the approval step's approvers.
        role: u16,
        decision: u8,
    },
    SubflowEnded {
        step: StepIndex,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Opened,
    Clicked,
    /// The workflow's first goal event.
    Goal,
}

/// Runs the simulation. `progress` is called now and then with (subjects done, subjects in all).
pub fn simulate(workflow: &Workflow, config: &Config, mut progress: impl FnMut(u64, u64)) -> Result<Report, Error> {
    if config.subjects == 0 || config.days == 0 {
        return Err(Error::Empty);
    }
    if config.subjects > SUBJECTS_COUNT_MAX {
        return Err(Error::TooManySubjects(config.subjects));
    }
    if config.days > DAYS_MAX {
        return Err(Error::TooManyDays(config.days));
    }
    let mut sim = Simulation::new(workflow, config);
    sim.run(&mut progress);
    let recorded_only = u32::try_from(sim.recorded_only.len()).unwrap_or(u32::MAX);
    let mut report = sim.report.finish(workflow, config);
    report.subjects = report.subjects.saturating_add(recorded_only);
    report.recorded_only_subjects = recorded_only;
    Ok(report)
}

/// A subject's pending input: due time, then order of scheduling.
type Scheduled = Reverse<(Timestamp, u64, Pending)>;

/// The simulation of one subject after another. Subjects never act on each other (caps,
/// quiet hours and recent events are per subject), so each lives its whole horizon on its
/// own clock and is then tallied and dropped: memory grows only by the report's share of each
/// subject, and the one subject in flight stays in the processor's caches.
struct Simulation<'a> {
    workflow: &'a Workflow,
    config: &'a Config,
    /// The seeded generator every subject's stream is cut from (`set_stream(subject)`).
    seeded: ChaCha8Rng,
    /// The current subject's random stream: its draws do not depend on any other subject.
    rng: ChaCha8Rng,
    /// The current subject's pending inputs, earliest first.
    queue: BinaryHeap<Scheduled>,
    /// Orders the current subject's inputs that are due at the same instant.
    sequence: u64,
    end: Timestamp,
    report: report::Collector,
    env: Value,
    population: Population,
    /// Recorded events by subject: positions in `config.events`, in file order.
    recorded: HashMap<u32, Vec<usize>>,
    /// Subjects named by recorded events beyond the synthetic population, in order of first
    /// appearance.
    recorded_only: Vec<String>,
    /// The current subject's emitted events, delivered after the transition that emitted them.
    emitted: Vec<Event>,
}

impl<'a> Simulation<'a> {
    fn new(workflow: &'a Workflow, config: &'a Config) -> Simulation<'a> {
        let end = config.start.plus(flowmark_core::Duration(u64::from(config.days) * 86_400_000));
        let (recorded, recorded_only) = match &config.events {
            Some(events) => group_by_subject(workflow.subject, config.subjects, events),
            None => (HashMap::new(), Vec::new()),
        };
        Simulation {
            workflow,
            config,
            seeded: ChaCha8Rng::seed_from_u64(config.seed),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            queue: BinaryHeap::new(),
            sequence: 0,
            end,
            report: report::Collector::new(workflow),
            env: json!({}),
            population: Population::new(workflow, &config.behaviour),
            recorded,
            recorded_only,
            emitted: Vec::new(),
        }
    }

    fn schedule(&mut self, at: Timestamp, pending: Pending) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, pending)));
    }

    fn run(&mut self, progress: &mut impl FnMut(u64, u64)) {
        let total = u64::from(self.config.subjects) + self.recorded_only.len() as u64;
        for index in 0..total {
            let index =
                u32::try_from(index).expect("at most `SUBJECTS_COUNT_MAX` synthetic subjects, and recorded ones");
            self.simulate_subject(index);
            if index % 65_536 == 65_535 {
                progress(u64::from(index) + 1, total);
            }
        }
        progress(total, total);
    }

    /// Takes subject `index` through the whole horizon and tallies it.
    fn simulate_subject(&mut self, index: u32) {
        let mut subject = self.begin(index);
        while let Some(Reverse((at, sequence, pending))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            self.deliver(at, sequence, index, &mut subject, pending);
        }
        self.queue.clear();
        self.emitted.clear();
        if let Some(run) = &subject.run {
            self.report.run_unfinished(run);
        }
    }

    /// Makes subject `index`: its random stream, its data, and its first pending inputs (its
    /// arrival, or its recorded events).
    fn begin(&mut self, index: u32) -> Subject {
        self.rng.clone_from(&self.seeded);
        self.rng.set_stream(u64::from(index));
        self.sequence = 0;
        self.report.subject_started();
        let subject = if index < self.config.subjects {
            let behaviour = &self.config.behaviour;
            let data = self.population.synthetic_data(index, behaviour, &mut self.rng);
            let timezone = self.population.pick_timezone(&mut self.rng);
            Subject::new(data, timezone)
        } else {
            Subject::new(json!({}), None)
        };
        match &self.config.events {
            None => {
                let arrival_ms = (self.config.behaviour.arrival_hours * 3_600_000.0) as u64;
                let offset = if arrival_ms == 0 { 0 } else { self.rng.next_u64() % arrival_ms };
                self.schedule(self.config.start.plus(flowmark_core::Duration(offset)), Pending::Start);
            }
            Some(events) => {
                let positions = self.recorded.remove(&index).unwrap_or_default();
                for position in positions {
                    self.schedule(events[position].event.at, Pending::Recorded(position));
                }
            }
        }
        subject
    }

    /// The run of subject `index`, starting `now`: its id follows the subject's position.
    fn new_run(&self, index: u32, now: Timestamp) -> Run {
        let subject_id = match index.checked_sub(self.config.subjects) {
            None => synthetic_id(self.workflow.subject, index),
            Some(only) => self.recorded_only[only as usize].clone(),
        };
        Run::new(RunId(u64::from(index) + 1), self.workflow, 1, subject_id, now)
    }

    /// Delivers one pending input of the subject in flight; `sequence` is its own order of
    /// scheduling, which also names the events the behaviour model makes up.
    fn deliver(&mut self, now: Timestamp, sequence: u64, subject_index: u32, subject: &mut Subject, pending: Pending) {
        let workflow = self.workflow;
        let input = match pending {
            Pending::Start => {
                if subject.run.is_some() || subject.ended {
                    return;
                }
                subject.run = Some(self.new_run(subject_index, now));
                let event = self.population.trigger_event(subject_index, now);
                Input::Start { event }
            }
            Pending::Timer(timer) => Input::TimerFired { timer },
            Pending::Event { kind, email } => {
                let name = match kind {
                    SimEvent::Opened => "Email Opened".to_owned(),
                    SimEvent::Clicked => "Email Link Clicked".to_owned(),
                    SimEvent::Goal => workflow.goals.first().map_or_else(String::new, |g| g.event.clone()),
                };
                let properties = match email {
                    Some(key) => json!({ "email_id": &*key }),
                    None => json!({}),
                };
                let id = simulated_event_id(subject_index, sequence);
                let event = Event {
                    id,
                    name: name.clone(),
                    at: now,
                    payload: json!({ "type": "track", "event": name, "properties": properties }).into(),
                };
                remember(subject, &event);
                Input::Event { event }
            }
            Pending::Recorded(_) | Pending::Emitted(_) => {
                let event = match pending {
                    Pending::Recorded(position) => {
                        self.config.events.as_ref().expect("recorded events were given")[position].event.clone()
                    }
                    Pending::Emitted(position) => self.emitted[position].clone(),
                    _ => unreachable!("matched above"),
                };
                remember(subject, &event);
                if subject.ended {
                    return;
                }
                if subject.run.is_none() {
                    if !triggers(workflow, &event, &subject.data) {
                        return;
                    }
                    subject.run = Some(self.new_run(subject_index, now));
                    Input::Start { event: Some(event) }
                } else {
                    Input::Event { event }
                }
            }
            Pending::TaskDone { step } => {
                let fields = task_fields(workflow, step);
                Input::TaskCompleted {
                    via: None,
                    step: workflow.step(step).id.to_string(),
                    by: "simulated-person".to_owned(),
                    fields,
                }
            }
            Pending::Decide { step, role, decision } => {
                let StepKind::Approval(approval) = &workflow.step(step).kind else { return };
                let role = approval.approvers[usize::from(role)].clone();
                let decision =
                    [Decision::Approve, Decision::ApproveWithChanges, Decision::RequestChanges, Decision::Reject]
                        [usize::from(decision)];
                let step = workflow.step(step).id.to_string();
                Input::ApprovalDecided {
                    via: None,
                    step,
                    by: format!("simulated-{role}"),
                    role,
                    decision,
                    comment: None,
                }
            }
            Pending::SubflowEnded { step } => {
                Input::SubflowEnded { step: workflow.step(step).id.to_string(), status: RunStatus::Completed }
            }
        };
        let Some(run) = subject.run.take() else { return };
        let facts = Facts {
            subject: &subject.data,
            timezone: subject.timezone,
            recent_events: recent(&subject.recent_events),
            sent: &subject.sent,
            env: &self.env,
        };
        let transition = handle(workflow, run, &input, &facts, now);
        self.report.record(&transition, now);
        for timer in &transition.timers {
            self.schedule(timer.due_at, Pending::Timer(timer.timer));
        }
        for effect in &transition.effects {
            if matches!(effect.kind, EffectKind::SendMessage { .. }) {
                self.render_sample(subject, effect);
            }
            // An emitted event reaches the subject right after this transition, as in the
            // runtime's unit of work.
            let run = &transition.run;
            if let Some(event) =
                flowmark_core::engine::emitted_event(run.id, &workflow.id, &run.subject_id, effect, now)
            {
                self.emitted.push(event);
                self.schedule(now, Pending::Emitted(self.emitted.len() - 1));
            }
            self.respond(now, subject, &effect.key, &effect.step, &effect.kind);
        }
        // The run goes back to the subject last: one move of the state, not one per use.
        if transition.run.is_active() {
            subject.run = Some(transition.run);
        } else {
            self.report.run_ended(&transition.run);
            subject.ended = true;
        }
    }

    /// Renders the first `RENDERED_PER_STEP_MAX` messages of each step, as the dispatcher
    /// would when sending them, so the report shows templates that fail on real-looking data.
    fn render_sample(&mut self, subject: &Subject, effect: &flowmark_core::engine::Effect) {
        let Some(step) = self.workflow.step_index(&effect.step) else { return };
        if !self.report.should_render(step.index()) {
            return;
        }
        if let Err(error) = flowmark_core::render::render_message(self.workflow, effect, &subject.data, &self.env) {
            self.report.render_failed(step.index(), error.to_string());
        }
    }

    /// The behaviour model answers an effect, now or later.
    fn respond(&mut self, now: Timestamp, subject: &mut Subject, key: &str, step: &str, kind: &EffectKind) {
        let behaviour = &self.config.behaviour;
        // Only the answers to work and subflows name the step again.
        let workflow = self.workflow;
        let step = || workflow.step_index(step);
        let replaying = self.config.events.is_some();
        match kind {
            EffectKind::SendMessage { channel: Channel::Email, transactional, .. } => {
                if !transactional {
                    subject.sent.push(Sent { channel: Channel::Email, at: now });
                    if subject.sent.len() > 64 {
                        subject.sent.remove(0);
                    }
                }
                if replaying || !chance(&mut self.rng, behaviour.email_open) {
                    return;
                }
                let opened = now.plus(exponential(&mut self.rng, behaviour.open_delay_hours));
                let email: std::sync::Arc<str> = key.into();
                self.schedule(opened, Pending::Event { kind: SimEvent::Opened, email: Some(email.clone()) });
                if !chance(&mut self.rng, behaviour.email_click) {
                    return;
                }
                let clicked = opened.plus(exponential(&mut self.rng, behaviour.click_delay_hours));
                self.schedule(clicked, Pending::Event { kind: SimEvent::Clicked, email: Some(email) });
                if !self.workflow.goals.is_empty() && chance(&mut self.rng, behaviour.convert_after_click) {
                    let converted = clicked.plus(exponential(&mut self.rng, behaviour.convert_delay_hours));
                    self.schedule(converted, Pending::Event { kind: SimEvent::Goal, email: None });
                }
            }
            EffectKind::AdjustScore { model, change } => {
                flowmark_core::engine::apply_score(&mut subject.data, model, *change);
            }
            EffectKind::UpdateSubject { set } => {
                flowmark_core::engine::apply_update(&mut subject.data, set);
            }
            EffectKind::CreateTask { .. } if !replaying => {
                let Some(step) = step() else { return };
                let hours = log_normal(&mut self.rng, behaviour.task_hours_median, behaviour.task_hours_p90);
                self.schedule(now.plus(hours), Pending::TaskDone { step });
            }
            EffectKind::RequestApproval { approvers, .. } if !replaying => {
                let Some(step) = step() else { return };
                let StepKind::Approval(approval) = &self.workflow.step(step).kind else { return };
                let weights =
                    [behaviour.approve, behaviour.approve_with_changes, behaviour.request_changes, behaviour.reject];
                for role in approvers {
                    let Some(role) = approval.approvers.iter().position(|r| r == role) else { continue };
                    let delay =
                        log_normal(&mut self.rng, behaviour.approval_hours_median, behaviour.approval_hours_p90);
                    let decision = weighted(&mut self.rng, &weights) as u8;
                    let role =
                        u16::try_from(role).expect("an approval has at most `APPROVERS_COUNT_MAX` (32) approvers");
                    self.schedule(now.plus(delay), Pending::Decide { step, role, decision });
                }
            }
            EffectKind::StartRun { wait: true, .. } => {
                let Some(step) = step() else { return };
                let delay = flowmark_core::Duration((behaviour.subflow_hours * 3_600_000.0) as u64);
                self.schedule(now.plus(delay), Pending::SubflowEnded { step });
            }
            _ => {}
        }
    }
}

/// Keeps `event` among the subject's recent events. The list may grow to twice what is kept
/// before the older half goes in one move; `recent` gives the kept part.
fn remember(subject: &mut Subject, event: &Event) {
    if subject.recent_events.len() == 2 * RECENT_EVENTS_KEPT {
        subject.recent_events.drain(..RECENT_EVENTS_KEPT);
    }
    subject.recent_events.push(event.clone());
}

/// The subject's most recent events, newest last, as many as are kept.
fn recent(events: &[Event]) -> &[Event] {
    &events[events.len().saturating_sub(RECENT_EVENTS_KEPT)..]
}

/// `sim-<subject>-<sequence>`: the id of an event the behaviour model makes up.
fn simulated_event_id(subject: u32, sequence: u64) -> String {
    let (mut subject_digits, mut sequence_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (subject, sequence) = (subject_digits.format(subject), sequence_digits.format(sequence));
    let mut id = String::with_capacity(6 + subject.len() + sequence.len());
    for part in ["sim-", subject, "-", sequence] {
        id.push_str(part);
    }
    id
}

fn object(value: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut().expect("just made an object")
}

/// Does a recorded event start a run of this workflow (name and filter of an event trigger)?
fn triggers(workflow: &Workflow, event: &Event, data: &Value) -> bool {
    workflow.triggers.iter().any(|t| match t {
        Trigger::Event { name, filter } => {
            name == &event.name
                && filter.as_ref().is_none_or(|f| {
                    let scope = flowmark_core::expr::Scope::new()
                        .with(workflow.subject.as_str(), data)
                        .with("event", &event.payload);
                    f.eval(&scope).result == Ok(true)
                })
        }
        _ => false,
    })
}

fn task_fields(workflow: &Workflow, step: StepIndex) -> serde_json::Map<String, Value> {
    let StepKind::Task(task) = &workflow.step(step).kind else {
        return Default::default();
    };
    task.fields
        .iter()
        .map(|f| {
            let value = match f.kind {
                flowmark_core::model::FieldKind::Number => json!(1),
                flowmark_core::model::FieldKind::Bool | flowmark_core::model::FieldKind::Checkbox => json!(true),
                flowmark_core::model::FieldKind::Url => json!("https://example.com/simulated"),
                flowmark_core::model::FieldKind::Date => json!("2026-01-01"),
                flowmark_core::model::FieldKind::Text => json!(format!("simulated {}", f.name)),
            };
            (f.name.clone(), value)
        })
        .collect()
}

const FIRST_NAMES: [&str; 8] = ["Ada", "Bo", "Chen", "Dana", "Emeka", "Fatima", "Greta", "Hiro"];

/// What every synthetic subject shares, worked out once: the shape of its data, the time
/// zones it may live in, the event that starts its run.
struct Population {
    kind: SubjectKind,
    /// The data every subject of `kind` starts from; `synthetic_data` fills in its values.
    template: Value,
    /// The time zones subjects are drawn from, and their weights.
    timezones: Vec<Option<chrono_tz::Tz>>,
    timezone_weights: Vec<f64>,
    /// The name and payload of the first event trigger's event: the same for every subject.
    trigger: Option<(String, std::sync::Arc<Value>)>,
}

impl Population {
    fn new(workflow: &Workflow, behaviour: &Behaviour) -> Population {
        let template = match workflow.subject {
            SubjectKind::Contact => json!({ "first_name": "", "email": "", "scores": { "engagement": 0 } }),
            SubjectKind::Item => json!({ "title": "", "word_count": 0 }),
        };
        let trigger = workflow.triggers.iter().find_map(|t| match t {
            Trigger::Event { name, .. } => Some((
                name.clone(),
                json!({ "type": "track", "event": name, "properties": behaviour.trigger_properties }).into(),
            )),
            _ => None,
        });
        Population {
            kind: workflow.subject,
            template,
            timezones: behaviour.timezones.keys().map(|name| name.parse().ok()).collect(),
            timezone_weights: behaviour.timezones.values().copied().collect(),
            trigger,
        }
    }

    /// The data of the `index`-th subject: the template's fields, each with the subject's own
    /// value (set in place, in the template's field order), then the behaviour's traits.
    fn synthetic_data(&self, index: u32, behaviour: &Behaviour, rng: &mut ChaCha8Rng) -> Value {
        let mut data = self.template.clone();
        if let Value::Object(fields) = &mut data {
            for (name, value) in fields.iter_mut() {
                *value = match (self.kind, name.as_str()) {
                    (SubjectKind::Contact, "first_name") => json!(FIRST_NAMES[(index as usize) % FIRST_NAMES.len()]),
                    (SubjectKind::Contact, "email") => {
                        json!(["contact", itoa::Buffer::new().format(u64::from(index) + 1), "@example.com"].concat())
                    }
                    (SubjectKind::Contact, "scores") => {
                        if let Some(engagement) = value.get_mut("engagement") {
                            *engagement = json!(rng.next_u64() % 61);
                        }
                        continue;
                    }
                    (SubjectKind::Item, "title") => {
                        json!(["Item ", itoa::Buffer::new().format(u64::from(index) + 1)].concat())
                    }
                    (SubjectKind::Item, "word_count") => json!(300 + rng.next_u64() % 1201),
                    _ => continue,
                };
            }
        }
        for (name, spec) in &behaviour.traits {
            let value = match spec {
                Value::Object(o) if o.contains_key("between") => {
                    let bounds = o["between"].as_array().cloned().unwrap_or_default();
                    let low = bounds.first().and_then(Value::as_i64).unwrap_or(0);
                    let high = bounds.get(1).and_then(Value::as_i64).unwrap_or(low).max(low);
                    // In i128: the span of two i64s, plus one, always fits, and is never zero.
                    let span = i128::from(high) - i128::from(low) + 1;
                    let offset = i128::from(rng.next_u64()) % span;
                    json!(i64::try_from(i128::from(low) + offset).expect("low + offset lies in [low, high]"))
                }
                Value::Object(o) if o.contains_key("one_of") => {
                    let options = o["one_of"].as_array().cloned().unwrap_or_default();
                    if options.is_empty() {
                        Value::Null
                    } else {
                        options[(rng.next_u64() % options.len() as u64) as usize].clone()
                    }
                }
                constant => constant.clone(),
            };
            set_path(&mut data, name, value);
        }
        data
    }

    fn pick_timezone(&self, rng: &mut ChaCha8Rng) -> Option<chrono_tz::Tz> {
        if self.timezone_weights.is_empty() {
            return None;
        }
        self.timezones[weighted(rng, &self.timezone_weights)]
    }

    /// The event that starts subject `index`'s run: the first event trigger's, if any.
    fn trigger_event(&self, subject: u32, now: Timestamp) -> Option<Event> {
        let (name, payload) = self.trigger.as_ref()?;
        Some(Event {
            id: ["sim-start-", itoa::Buffer::new().format(subject)].concat(),
            name: name.clone(),
            at: now,
            payload: payload.clone(),
        })
    }
}

/// Sets a dotted path (`scores.engagement`) in an object.
fn set_path(data: &mut Value, path: &str, value: Value) {
    let mut current = data;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let map = object(current);
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        current = map.entry(part.to_owned()).or_insert_with(|| json!({}));
    }
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    // 53 random bits: a float in [0, 1) with every value equally likely.
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn chance(rng: &mut ChaCha8Rng, probability: f64) -> bool {
    uniform(rng) < probability
}

fn weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = uniform(rng) * total;
    for (index, weight) in weights.iter().enumerate() {
        if target < *weight {
            return index;
        }
        target -= weight;
    }
    weights.len() - 1
}

/// An exponential delay with the given median, in hours.
fn exponential(rng: &mut ChaCha8Rng, median_hours: f64) -> flowmark_core::Duration {
    let mean = median_hours / std::f64::consts::LN_2;
    let hours = -mean * (1.0 - uniform(rng)).ln();
    flowmark_core::Duration((hours * 3_600_000.0).max(1.0) as u64)
}

/// A log-normal delay with the given median and 90th percentile, in hours.
fn log_normal(rng: &mut ChaCha8Rng, median_hours: f64, p90_hours: f64) -> flowmark_core::Duration {
    const Z90: f64 = 1.281_551_565_545;
    let sigma = (p90_hours / median_hours).ln() / Z90;
    // Box–Muller for one standard normal draw.
    let (u1, u2) = (1.0 - uniform(rng), uniform(rng));
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let hours = median_hours * (sigma * z).exp();
    flowmark_core::Duration((hours * 3_600_000.0).max(60_000.0) as u64)
}

#[cfg(test)]
mod tests {
    use flowmark_core::{Source, compile};

    use super::*;

    fn nurture() -> Workflow {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../blueprints/whitepaper-nurture.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        compile(&Source::new(path, text)).workflow.unwrap()
    }

    fn config(subjects: u32, seed: u64) -> Config {
        Config {
            subjects,
            days: 30,
            seed,
            start: Timestamp(1_767_571_200_000),
            behaviour: Behaviour::default(),
            events: None,
        }
    }

    /// The tallies of subject `index` alone, after the subjects `before` went first.
    fn one_subject(workflow: &Workflow, config: &Config, before: std::ops::Range<u32>, index: u32) -> Report {
        let mut sim = Simulation::new(workflow, config);
        for other in before {
            sim.simulate_subject(other);
        }
        sim.report = report::Collector::new(workflow);
        sim.simulate_subject(index);
        let mut report = sim.report.finish(workflow, config);
        report.subjects = 0;
        report
    }

    #[test]
    fn an_emitted_event_reaches_the_run_that_waits_for_it_at_once() {
        let source = "id: self-signal\nsubject: contact\ntrigger: { event: Signed Up }\nsteps:\n  - id: signal\n    action: { emit: { event: Ready, properties: { n: 1 } } }\n  - id: heard\n    wait: { event: Ready, where: 'event.properties.n == 1', timeout: 1d }\n    on_timeout: missed\n  - id: done\n    exit: { reason: heard }\n  - id: missed\n    exit: { reason: missed }\n";
        let workflow = compile(&Source::new("self-signal.yaml", source)).workflow.unwrap();
        let report = simulate(&workflow, &config(20, 1), |_, _| {}).unwrap();
        let step = |id: &str| report.steps.iter().find(|s| s.id == id).unwrap().entered;
        assert_eq!(step("signal"), 20);
        assert_eq!(step("done"), 20, "every run heard its own event: {report:?}");
        assert_eq!(step("missed"), 0);
        assert_eq!(report.effects.get("emit_event"), Some(&20));
    }

    #[test]
    fn a_subject_lives_the_same_life_whatever_the_population() {
        let workflow = nurture();
        for index in [0, 7, 41] {
            let alone = one_subject(&workflow, &config(50, 3), 0..0, index);
            assert!(alone.transitions > 0);
            assert_eq!(alone, one_subject(&workflow, &config(100_000, 3), 0..0, index), "subject {index}");
            assert_eq!(alone, one_subject(&workflow, &config(50, 3), 0..index, index), "subject {index}");
        }
        // The seed still matters: some subject among the first fifty lives differently.
        assert!((0..50).any(
            |i| one_subject(&workflow, &config(50, 3), 0..0, i) != one_subject(&workflow, &config(50, 4), 0..0, i)
        ));
    }

    #[test]
    fn synthetic_data_has_the_documented_fields() {
        let workflow = nurture();
        let population = Population::new(&workflow, &Behaviour::default());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for index in 0..200 {
            let data = population.synthetic_data(index, &Behaviour::default(), &mut rng);
            assert_eq!(data["first_name"], FIRST_NAMES[index as usize % FIRST_NAMES.len()]);
            assert_eq!(data["email"], format!("contact{}@example.com", index + 1));
            let engagement = data["scores"]["engagement"].as_u64().unwrap();
            assert!(engagement <= 60, "{engagement}");
        }
        let mut behaviour = Behaviour::default();
        behaviour.traits.insert("plan".into(), json!({ "one_of": ["free", "pro"] }));
        behaviour.traits.insert("any".into(), json!({ "between": [i64::MIN, i64::MAX] }));
        behaviour.traits.insert("seats".into(), json!({ "between": [-3, 3] }));
        for index in 0..50 {
            let data = population.synthetic_data(index, &behaviour, &mut rng);
            assert!(data["plan"] == "free" || data["plan"] == "pro", "{data}");
            assert!(data["any"].is_i64(), "{data}");
            assert!((-3..=3).contains(&data["seats"].as_i64().unwrap()), "{data}");
        }
    }

    #[test]
    fn recorded_subjects_are_the_synthetic_ones_they_name_or_new_ones() {
        let kind = SubjectKind::Contact;
        assert_eq!(synthetic_position(kind, 5, "contact-1"), Some(0));
        assert_eq!(synthetic_position(kind, 5, "contact-5"), Some(4));
        for other in ["contact-6", "contact-0", "contact-01", "contact-+1", "contact1", "item-1", "u1", ""] {
            assert_eq!(synthetic_position(kind, 5, other), None, "{other}");
        }
        let event = |subject: &str| RecordedEvent {
            subject_id: subject.to_owned(),
            event: Event { id: String::new(), name: "x".into(), at: Timestamp(0), payload: Value::Null.into() },
        };
        let events = [event("u2"), event("contact-2"), event("u1"), event("u2")];
        let (by_subject, recorded_only) = group_by_subject(kind, 3, &events);
        assert_eq!(recorded_only, ["u2", "u1"]);
        assert_eq!(by_subject, HashMap::from([(1, vec![1]), (3, vec![0, 3]), (4, vec![2])]));
        // The report counts every subject it simulated, and says how many only the recording named.
        let workflow = nurture();
        let report = simulate(&workflow, &Config { events: Some(events.to_vec()), ..config(3, 1) }, |_, _| {}).unwrap();
        assert_eq!((report.subjects, report.recorded_only_subjects), (5, 2));
        assert!(
            report.to_text().contains("5 subjects")
                && report.to_text().contains("2 of them named only by the recorded events")
        );
    }
}
