//! Properties of the run state machine, over random input sequences on the blueprints.
//!
//! Each case builds a run of a blueprint and feeds it a random sequence of inputs (events
//! with names the workflow waits for, timer firings, task completions, approval decisions,
//! stray inputs), with time moving forward. After every transition the run must be in a
//! defined state; replaying the same sequence must give the same transitions; a goal event
//! must end the run from wherever it is; and answering every wait must end the run.

use std::collections::HashSet;

use flowmark_core::engine::{
    Decision, EffectKind, Event, Facts, HistoryKind, Input, Run, RunId, RunStatus, TimerPurpose, TokenState,
    Transition, effect_result, handle, timer_reach,
};
use flowmark_core::model::{StepKind, Wait, Workflow};
use flowmark_core::{Duration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::blueprint;

const START: i64 = 1_795_953_600_000;

#[derive(Debug, Clone)]
enum Action {
    Event(u8),
    FireTimer(u8),
    CompleteTask(u8),
    Decide(u8, u8),
    Wait(u32),
    /// The result of one of the effects emitted so far.
    EffectResult(u8, bool),
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let action = prop_oneof![
        1 => any::<u8>().prop_map(Action::Event),
        3 => any::<u8>().prop_map(Action::FireTimer),
        1 => any::<u8>().prop_map(Action::CompleteTask),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Action::Decide(a, b)),
        1 => (1u32..200_000).prop_map(Action::Wait),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, ok)| Action::EffectResult(i, ok)),
    ];
    proptest::collection::vec(action, 0..40)
}

fn event_names(workflow: &Workflow) -> Vec<String> {
    let mut names: Vec<String> = workflow
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Wait(Wait::Event { name, .. }) => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.extend(workflow.exits.iter().map(|e| e.event.clone()));
    names.push("Unrelated Event".to_owned());
    names
}

fn roles(workflow: &Workflow) -> Vec<String> {
    workflow.roles.keys().cloned().collect()
}

struct Driver<'w> {
    workflow: &'w Workflow,
    subject: Value,
    now: Timestamp,
    effect_keys: HashSet<String>,
}

impl Driver<'_> {
    fn apply(&mut self, run: Run, input: &Input) -> Transition {
        let facts = Facts { subject: &self.subject, timezone: Some(chrono_tz::Europe::Berlin), ..Facts::empty() };
        let before = run.clone();
        let transition = handle(self.workflow, run, input, &facts, self.now);
        check_defined(self.workflow, &transition);
        if !transition.run_changed {
            assert_eq!(transition.run, before, "a transition that says the run is unchanged leaves it as it was");
        }
        // A result changes nothing but the trail, whatever the run's state, and adds exactly
        // what `effect_result` makes: the runtime records results through it without the run.
        if let Input::EffectCompleted { key, ok, detail } = input {
            assert!(!transition.run_changed, "an effect result never changes its run");
            let expected = effect_result(self.workflow, before.id, key, *ok, detail.clone(), self.now);
            assert_eq!(
                transition.history,
                std::slice::from_ref(&expected),
                "a result adds exactly its `effect_result` entry"
            );
            let kind = HistoryKind::EffectResult {
                key: key.clone(),
                ok: *ok,
                detail: detail.clone(),
                started: None,
                attempt: None,
            };
            assert_eq!((expected.at, expected.kind), (self.now, kind), "the entry records the input");
            // Keys here are `<run>-<step>-<n>`, of steps the workflow has.
            let step = key.split_once('-').and_then(|(_, rest)| rest.rsplit_once('-')).map(|(step, _)| step);
            assert_eq!(expected.step.as_deref(), step, "the entry names the effect's step");
            assert!(transition.effects.is_empty() && transition.timers.is_empty() && transition.decisions.is_empty());
            assert!(transition.timers_cancelled.is_empty());
        }
        // A timer runs only steps `timer_reach` marks: the runtime loads the facts of those alone.
        if let Input::TimerFired { timer } = input {
            let reach = timer_reach(self.workflow, &before, *timer);
            let marked = |step: Option<&str>| {
                step.and_then(|id| self.workflow.step_index(id)).is_some_and(|at| reach[at.index()])
            };
            for entry in &transition.history {
                if matches!(entry.kind, HistoryKind::StepEntered { .. }) {
                    assert!(marked(entry.step.as_deref()), "timer entered {:?}, which it cannot reach", entry.step);
                }
            }
            for effect in transition.effects.iter().filter(|e| matches!(e.kind, EffectKind::SendMessage { .. })) {
                assert!(marked(Some(&effect.step)), "timer sent from {}, which it cannot reach", effect.step);
            }
        }
        for effect in &transition.effects {
            assert!(self.effect_keys.insert(effect.key.clone()), "effect key {} used twice", effect.key);
        }
        transition
    }

    fn input_for(&mut self, run: &Run, action: &Action) -> Option<Input> {
        let names = event_names(self.workflow);
        let steps = &self.workflow.steps;
        Some(match action {
            Action::Event(i) => {
                let name = names[usize::from(*i) % names.len()].clone();
                let event = Event {
                    id: format!("e{}", self.now.ms()),
                    name: name.clone(),
                    at: self.now,
                    payload: json!({ "event": name, "properties": {} }).into(),
                };
                Input::Event { event }
            }
            Action::FireTimer(i) => {
                if run.timers.is_empty() {
                    return None;
                }
                let timer = &run.timers[usize::from(*i) % run.timers.len()];
                self.now = self.now.max(timer.due_at);
                Input::TimerFired { timer: timer.id }
            }
            Action::CompleteTask(i) => {
                let step = &steps[usize::from(*i) % steps.len()];
                let fields = match &step.kind {
                    StepKind::Task(t) => t.fields.iter().map(|f| (f.name.clone(), json!("x"))).collect(),
                    _ => Default::default(),
                };
                Input::TaskCompleted { via: None, step: step.id.to_string(), by: "p".into(), fields }
            }
            Action::Decide(i, d) => {
                let step = &steps[usize::from(*i) % steps.len()];
                let roles = roles(self.workflow);
                let role = roles.get(usize::from(*i) % roles.len().max(1)).cloned().unwrap_or_default();
                let decision =
                    [Decision::Approve, Decision::ApproveWithChanges, Decision::RequestChanges, Decision::Reject]
                        [usize::from(*d) % 4];
                // One person per role, none of them an author: separation of duties holds.
                let by = format!("{role}-person");
                Input::ApprovalDecided { via: None, step: step.id.to_string(), role, by, decision, comment: None }
            }
            Action::Wait(seconds) => {
                self.now = self.now.plus(Duration(u64::from(*seconds) * 1000));
                return None;
            }
            Action::EffectResult(i, ok) => {
                if self.effect_keys.is_empty() {
                    return None;
                }
                let mut keys: Vec<&String> = self.effect_keys.iter().collect();
                keys.sort();
                let key = keys[usize::from(*i) % keys.len()].clone();
                Input::EffectCompleted { key, ok: *ok, detail: None }
            }
        })
    }
}

/// The run is in a state the machine defines: tokens stand where their state makes sense,
/// and timers belong to live tokens.
fn check_defined(workflow: &Workflow, transition: &Transition) {
    let run = &transition.run;
    if !run.is_active() {
        assert!(run.tokens.is_empty(), "an ended run has no tokens");
        assert!(run.timers.is_empty(), "an ended run has no timers");
        assert!(run.ended_at.is_some());
        return;
    }
    assert!(!run.tokens.is_empty(), "an active run has a token somewhere");
    for token in &run.tokens {
        assert!(token.at.index() < workflow.steps.len());
        let kind = &workflow.step(token.at).kind;
        let fits = match (&token.state, kind) {
            (TokenState::Sleeping { quiet_hold: false, .. }, StepKind::Wait(w)) => !matches!(w, Wait::Event { .. }),
            (TokenState::Sleeping { quiet_hold: true, .. }, StepKind::Action(_)) => true,
            (TokenState::Sleeping { cap_hold: true, .. }, StepKind::Action(_)) => true,
            (TokenState::AwaitingEvent { .. }, StepKind::Wait(Wait::Event { .. })) => true,
            (TokenState::AwaitingTask { .. }, StepKind::Task(_)) => true,
            (TokenState::AwaitingApproval(_), StepKind::Approval(_)) => true,
            (TokenState::AwaitingSubflow, StepKind::Subflow(_)) => true,
            (TokenState::Joined, StepKind::Join(_)) => true,
            _ => false,
        };
        assert!(fits, "token in state {:?} at a {} step", token.state, kind.name());
        match &token.state {
            TokenState::Sleeping { timer, .. } => assert!(run.timers.iter().any(|t| t.id == *timer)),
            TokenState::AwaitingEvent { timeout: Some(timer) } => assert!(run.timers.iter().any(|t| t.id == *timer)),
            _ => {}
        }
    }
    for timer in &run.timers {
        assert!(run.tokens.iter().any(|t| t.id == timer.token), "timer {:?} belongs to a live token", timer.id);
    }
    for request in &transition.timers {
        assert!(run.timers.iter().any(|t| t.id == request.timer), "a requested timer is armed");
    }
}

fn run_sequence(workflow: &Workflow, subject: Value, actions: &[Action]) -> (Vec<Transition>, Vec<Run>) {
    let mut driver = Driver { workflow, subject, now: Timestamp(START), effect_keys: HashSet::new() };
    let mut transitions = Vec::new();
    let mut states = Vec::new();
    let mut run = Run::new(RunId(9), workflow, 1, "s-1", driver.now);
    let t = driver.apply(run, &Input::Start { event: None });
    run = t.run.clone();
    transitions.push(t);
    for action in actions {
        states.push(run.clone());
        let Some(input) = driver.input_for(&run, action) else { continue };
        let t = driver.apply(run, &input);
        run = t.run.clone();
        transitions.push(t);
    }
    states.push(run);
    (transitions, states)
}

/// Answers whatever the run waits for: fires the earliest timer, completes tasks, approves,
/// sends the awaited event. Returns the number of inputs it took to end the run.
fn drain(workflow: &Workflow, subject: Value, mut run: Run, now: Timestamp) -> Option<usize> {
    let mut driver = Driver { workflow, subject, now, effect_keys: HashSet::new() };
    for round in 0..500 {
        if !run.is_active() {
            return Some(round);
        }
        let token = run.tokens.iter().find(|t| t.state != TokenState::Joined).unwrap_or(&run.tokens[0]).clone();
        let step = workflow.step(token.at);
        let input = if let Some(timer) = run
            .timers
            .iter()
            .filter(|t| matches!(t.purpose, TimerPurpose::Wake | TimerPurpose::EventTimeout))
            .min_by_key(|t| (t.due_at, t.id))
        {
            driver.now = driver.now.max(timer.due_at);
            Input::TimerFired { timer: timer.id }
        } else {
            match (&token.state, &step.kind) {
                (TokenState::AwaitingTask { .. }, StepKind::Task(task)) => Input::TaskCompleted {
                    via: None,
                    step: step.id.to_string(),
                    by: "p".into(),
                    fields: task.fields.iter().map(|f| (f.name.clone(), json!("x"))).collect(),
                },
                (TokenState::AwaitingApproval(state), StepKind::Approval(a)) => {
                    let role = a
                        .approvers
                        .iter()
                        .find(|r| !state.decisions.iter().any(|(d, _)| d == *r))
                        .cloned()
                        .unwrap_or_default();
                    let role = if a.mode == flowmark_core::model::ApprovalMode::Sequential {
                        a.approvers[usize::from(state.stage)].clone()
                    } else {
                        role
                    };
                    Input::ApprovalDecided {
                        via: None,
                        step: step.id.to_string(),
                        by: format!("{role}-person"),
                        role,
                        decision: Decision::Approve,
                        comment: None,
                    }
                }
                (TokenState::AwaitingEvent { .. }, StepKind::Wait(Wait::Event { name, .. })) => Input::Event {
                    event: Event {
                        id: format!("d{round}"),
                        name: name.clone(),
                        at: driver.now,
                        payload: json!({ "event": name, "properties": {} }).into(),
                    },
                },
                (TokenState::AwaitingSubflow, _) => {
                    Input::SubflowEnded { step: step.id.to_string(), status: RunStatus::Completed }
                }
                _ => return None,
            }
        };
        driver.now = driver.now.plus(Duration(1000));
        run = driver.apply(run, &input).run;
    }
    None
}

fn subjects() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        (0i64..100).prop_map(|score| (
            "whitepaper-nurture".to_owned(),
            json!({ "first_name": "A", "email": "a@x.io", "scores": { "engagement": score } })
        )),
        (100i64..2000).prop_map(|words| ("blog-post".to_owned(), json!({ "title": "T", "word_count": words }))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The same inputs give the same transitions: history, effects, timers and decisions.
    #[test]
    fn replay_gives_the_same_history((name, subject) in subjects(), actions in actions()) {
        let workflow = blueprint(&name);
        let (first, _) = run_sequence(&workflow, subject.clone(), &actions);
        let (second, _) = run_sequence(&workflow, subject, &actions);
        prop_assert_eq!(first, second);
    }

    /// From any state a run reaches, answering what it waits for ends it: every wait resolves
    /// by its event or its timeout, every task and approval by a person.
    #[test]
    fn every_run_can_finish((name, subject) in subjects(), actions in actions()) {
        let workflow = blueprint(&name);
        let (transitions, states) = run_sequence(&workflow, subject.clone(), &actions);
        let now = transitions.last().map_or(Timestamp(START), |t| t.history.last().map_or(Timestamp(START), |h| h.at));
        let last = states.last().unwrap().clone();
        prop_assert!(drain(&workflow, subject, last, now).is_some(), "the run never ended");
    }

    /// A goal event ends the run as converted from any state it reaches, cancelling its timers.
    #[test]
    fn a_goal_event_ends_the_run_from_any_step(subject_score in 0i64..100, actions in actions()) {
        let workflow = blueprint("whitepaper-nurture");
        let subject = json!({ "first_name": "A", "scores": { "engagement": subject_score } });
        let (_, states) = run_sequence(&workflow, subject.clone(), &actions);
        for state in states.into_iter().filter(Run::is_active) {
            let armed: HashSet<_> = state.timers.iter().map(|t| t.id).collect();
            let facts = Facts { subject: &subject, ..Facts::empty() };
            let goal = Event { id: "g".into(), name: "Demo Booked".into(), at: Timestamp(START * 2), payload: json!({}).into() };
            let t = handle(&workflow, state, &Input::Event { event: goal }, &facts, Timestamp(START * 2));
            prop_assert_eq!(t.run.status, RunStatus::Converted);
            prop_assert!(t.run.tokens.is_empty() && t.run.timers.is_empty());
            let cancelled: HashSet<_> = t.timers_cancelled.iter().copied().collect();
            prop_assert_eq!(cancelled, armed);
        }
    }
}
