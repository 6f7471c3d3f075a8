//! `flowmark simulate`: a population dry run of one workflow in virtual time.
//!
//! Every synthetic subject gets a run driven by the same [`flowmark_core::engine::handle`]
//! the runtime uses. Effects are answered by a [`Behaviour`] model (opens, clicks, task
//! durations, approval decisions) or replayed from recorded events, and the answers come back
//! as inputs at their virtual time. A binary heap ordered by (time, sequence) is the clock.
//!
//! Invariant: the report is a pure function of (workflow, config): the same seed gives a
//! byte-identical report. Nothing here reads the system clock or a global random source.

mod behaviour;
mod report;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use flowmark_core::Timestamp;
use flowmark_core::engine::{Decision, EffectKind, Event, Facts, Input, Run, RunId, RunStatus, Sent, TimerId, handle};
use flowmark_core::model::{Channel, StepIndex, StepKind, SubjectKind, Trigger, Workflow};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

pub use behaviour::{Behaviour, Error as BehaviourError};
pub use report::{Report, StepReport};

/// Most subjects one simulation may hold: each keeps a run and its data in memory.
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

struct Subject {
    id: String,
    data: Value,
    timezone: Option<chrono_tz::Tz>,
    recent_events: Vec<Event>,
    sent: Vec<Sent>,
    /// The subject's run while it is active; an ended run is tallied and dropped, so a long
    /// simulation holds only the runs still in flight.
    run: Option<Run>,
    ended: bool,
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

/// Runs the simulation. `progress` is called now and then with (virtual ms done, ms total).
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
    Ok(sim.report.finish(workflow, config, sim.subjects.iter().filter_map(|s| s.run.as_ref())))
}

struct Simulation<'a> {
    workflow: &'a Workflow,
    config: &'a Config,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Timestamp, u64, u32, Pending)>>,
    sequence: u64,
    subjects: Vec<Subject>,
    end: Timestamp,
    report: report::Collector,
    env: Value,
}

impl<'a> Simulation<'a> {
    fn new(workflow: &'a Workflow, config: &'a Config) -> Simulation<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let end = config.start.plus(flowmark_core::Duration(u64::from(config.days) * 86_400_000));
        let mut sim = Simulation {
            workflow,
            config,
            rng: ChaCha8Rng::seed_from_u64(0),
            queue: BinaryHeap::new(),
            sequence: 0,
            subjects: Vec::with_capacity(config.subjects as usize),
            end,
            report: report::Collector::new(workflow),
            env: json!({}),
        };
        let arrival_ms = (config.behaviour.arrival_hours * 3_600_000.0) as u64;
        for index in 0..config.subjects {
            let data = synthetic_data(workflow.subject, index, &config.behaviour, &mut rng);
            let timezone = pick_timezone(&config.behaviour, &mut rng);
            sim.subjects.push(Subject {
                id: [workflow.subject.as_str(), "-", itoa::Buffer::new().format(index + 1)].concat(),
                data,
                timezone,
                recent_events: Vec::new(),
                sent: Vec::new(),
                run: None,
                ended: false,
            });
            if config.events.is_none() {
                let offset = if arrival_ms == 0 { 0 } else { rng.next_u64() % arrival_ms };
                sim.schedule(config.start.plus(flowmark_core::Duration(offset)), index, Pending::Start);
            }
        }
        if let Some(events) = &config.events {
            for (position, recorded) in events.iter().enumerate() {
                let index = sim.subject_index(&recorded.subject_id);
                sim.schedule(recorded.event.at, index, Pending::Recorded(position));
            }
        }
        sim.rng = rng;
        sim
    }

    /// The subject with this id, added on first sight (recorded events name their subjects).
    fn subject_index(&mut self, id: &str) -> u32 {
        if let Some(position) = self.subjects.iter().position(|s| s.id == id) {
            return position as u32;
        }
        self.subjects.push(Subject {
            id: id.to_owned(),
            data: json!({}),
            timezone: None,
            recent_events: Vec::new(),
            sent: Vec::new(),
            run: None,
            ended: false,
        });
        (self.subjects.len() - 1) as u32
    }

    fn schedule(&mut self, at: Timestamp, subject: u32, pending: Pending) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, subject, pending)));
    }

    fn run(&mut self, progress: &mut impl FnMut(u64, u64)) {
        let total = self.end.since(self.config.start).ms();
        let mut processed: u64 = 0;
        while let Some(Reverse((at, _, subject, pending))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            processed += 1;
            if processed.is_multiple_of(65_536) {
                progress(at.since(self.config.start).ms(), total);
            }
            self.deliver(at, subject, pending);
        }
        progress(total, total);
    }

    fn deliver(&mut self, now: Timestamp, subject_index: u32, pending: Pending) {
        let workflow = self.workflow;
        let subject = &mut self.subjects[subject_index as usize];
        let input = match pending {
            Pending::Start => {
                if subject.run.is_some() || subject.ended {
                    return;
                }
                subject.run = Some(Run::new(RunId(u64::from(subject_index) + 1), workflow, 1, subject.id.clone(), now));
                let event = trigger_event(workflow, &self.config.behaviour, subject_index, now);
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
                let id = simulated_event_id(subject_index, self.sequence);
                let event = Event {
                    id,
                    name: name.clone(),
                    at: now,
                    payload: json!({ "type": "track", "event": name, "properties": properties }).into(),
                };
                remember(subject, &event);
                Input::Event { event }
            }
            Pending::Recorded(position) => {
                let events = self.config.events.as_ref().expect("recorded events were given");
                let event = events[position].event.clone();
                remember(subject, &event);
                if subject.ended {
                    return;
                }
                if subject.run.is_none() {
                    if !triggers(workflow, &event, &subject.data) {
                        return;
                    }
                    subject.run =
                        Some(Run::new(RunId(u64::from(subject_index) + 1), workflow, 1, subject.id.clone(), now));
                    Input::Start { event: Some(event) }
                } else {
                    Input::Event { event }
                }
            }
            Pending::TaskDone { step } => {
                let fields = task_fields(workflow, step);
                Input::TaskCompleted {
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
                Input::ApprovalDecided { step, by: format!("simulated-{role}"), role, decision, comment: None }
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
        self.report.record(subject_index, &transition, now);
        let flowmark_core::engine::Transition { run, timers, effects, .. } = transition;
        let subject = &mut self.subjects[subject_index as usize];
        if run.is_active() {
            subject.run = Some(run);
        } else {
            self.report.run_ended(&run);
            subject.ended = true;
        }
        for timer in &timers {
            self.schedule(timer.due_at, subject_index, Pending::Timer(timer.timer));
        }
        for effect in &effects {
            if matches!(effect.kind, EffectKind::SendMessage { .. }) {
                self.render_sample(subject_index, effect);
            }
            self.respond(now, subject_index, &effect.key, &effect.step, &effect.kind);
        }
    }

    /// Renders the first `RENDERED_PER_STEP_MAX` messages of each step, as the dispatcher
    /// would when sending them, so the report shows templates that fail on real-looking data.
    fn render_sample(&mut self, subject_index: u32, effect: &flowmark_core::engine::Effect) {
        let Some(step) = self.workflow.step_index(&effect.step) else { return };
        if !self.report.should_render(step.index()) {
            return;
        }
        let subject = &self.subjects[subject_index as usize].data;
        if let Err(error) = flowmark_core::render::render_message(self.workflow, effect, subject, &self.env) {
            self.report.render_failed(step.index(), error.to_string());
        }
    }

    /// The behaviour model answers an effect, now or later.
    fn respond(&mut self, now: Timestamp, subject_index: u32, key: &str, step: &str, kind: &EffectKind) {
        let behaviour = &self.config.behaviour;
        let step = self.workflow.step_index(step);
        let replaying = self.config.events.is_some();
        match kind {
            EffectKind::SendMessage { channel: Channel::Email, transactional, .. } => {
                let subject = &mut self.subjects[subject_index as usize];
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
                self.schedule(
                    opened,
                    subject_index,
                    Pending::Event { kind: SimEvent::Opened, email: Some(email.clone()) },
                );
                if !chance(&mut self.rng, behaviour.email_click) {
                    return;
                }
                let clicked = opened.plus(exponential(&mut self.rng, behaviour.click_delay_hours));
                self.schedule(clicked, subject_index, Pending::Event { kind: SimEvent::Clicked, email: Some(email) });
                if !self.workflow.goals.is_empty() && chance(&mut self.rng, behaviour.convert_after_click) {
                    let converted = clicked.plus(exponential(&mut self.rng, behaviour.convert_delay_hours));
                    self.schedule(converted, subject_index, Pending::Event { kind: SimEvent::Goal, email: None });
                }
            }
            EffectKind::AdjustScore { model, change } => {
                flowmark_core::engine::apply_score(&mut self.subjects[subject_index as usize].data, model, *change);
            }
            EffectKind::UpdateSubject { set } => {
                flowmark_core::engine::apply_update(&mut self.subjects[subject_index as usize].data, set);
            }
            EffectKind::CreateTask { .. } if !replaying => {
                let Some(step) = step else { return };
                let hours = log_normal(&mut self.rng, behaviour.task_hours_median, behaviour.task_hours_p90);
                self.schedule(now.plus(hours), subject_index, Pending::TaskDone { step });
            }
            EffectKind::RequestApproval { approvers, .. } if !replaying => {
                let Some(step) = step else { return };
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
                    self.schedule(now.plus(delay), subject_index, Pending::Decide { step, role, decision });
                }
            }
            EffectKind::StartRun { wait: true, .. } => {
                let Some(step) = step else { return };
                let delay = flowmark_core::Duration((behaviour.subflow_hours * 3_600_000.0) as u64);
                self.schedule(now.plus(delay), subject_index, Pending::SubflowEnded { step });
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

fn trigger_event(workflow: &Workflow, behaviour: &Behaviour, subject: u32, now: Timestamp) -> Option<Event> {
    workflow.triggers.iter().find_map(|t| match t {
        Trigger::Event { name, .. } => Some(Event {
            id: format!("sim-start-{subject}"),
            name: name.clone(),
            at: now,
            payload: json!({ "type": "track", "event": name, "properties": behaviour.trigger_properties }).into(),
        }),
        _ => None,
    })
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

fn synthetic_data(kind: SubjectKind, index: u32, behaviour: &Behaviour, rng: &mut ChaCha8Rng) -> Value {
    let mut data = match kind {
        SubjectKind::Contact => json!({
            "first_name": FIRST_NAMES[(index as usize) % FIRST_NAMES.len()],
            "email": (["contact", itoa::Buffer::new().format(index + 1), "@example.com"].concat()),
            "scores": { "engagement": rng.next_u64() % 61 },
        }),
        SubjectKind::Item => json!({
            "title": format!("Item {}", index + 1),
            "word_count": 300 + rng.next_u64() % 1201,
        }),
    };
    for (name, spec) in &behaviour.traits {
        let value = match spec {
            Value::Object(o) if o.contains_key("between") => {
                let bounds = o["between"].as_array().cloned().unwrap_or_default();
                let low = bounds.first().and_then(Value::as_i64).unwrap_or(0);
                let high = bounds.get(1).and_then(Value::as_i64).unwrap_or(low).max(low);
                json!(low + (rng.next_u64() % ((high - low) as u64 + 1)) as i64)
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

fn pick_timezone(behaviour: &Behaviour, rng: &mut ChaCha8Rng) -> Option<chrono_tz::Tz> {
    let weights: Vec<f64> = behaviour.timezones.values().copied().collect();
    if weights.is_empty() {
        return None;
    }
    let index = weighted(rng, &weights);
    behaviour.timezones.keys().nth(index).and_then(|name| name.parse().ok())
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
