//! The step logic behind `engine::handle`: moves tokens through steps until each one blocks.
//!
//! A `Machine` owns the run for the length of one input and collects what happens into a
//! `Transition`. It reads only its arguments.
//!
//! Invariant: when `handle` returns, every token of an active run is blocked on something
//! that will wake it (a timer it owns, an event, a person, a child run or a join), and every
//! armed timer belongs to a live token.

use serde_json::{Value, json};

use std::sync::Arc;

use super::*;
use crate::expr::{Condition, Scope};
use crate::limits::{EMIT_DEPTH_MAX, STEPS_PER_TRANSITION_MAX, TOKENS_COUNT_MAX, WAIT_LOOKBACK_MS};
use crate::model::{
    Action, Approval, ApprovalMode, CapAction, EscalationAction, JoinMode, QuietAction, StepKind, Target,
    TemplateValue, TimezoneSource, Wait,
};
use crate::template::Template;

pub(super) struct Machine<'a> {
    workflow: &'a Workflow,
    facts: &'a Facts<'a>,
    /// The subject's data as this transition sees it: the facts', plus the score changes and
    /// updates this transition's own steps made (their effects persist them), so a branch
    /// after a `score` step reads the new score.
    subject: std::borrow::Cow<'a, Value>,
    now: Timestamp,
    out: Transition,
    steps_executed: u32,
}

enum Flow {
    /// The token moves on to a target.
    Go(Target),
    /// The token stays where it is, blocked.
    Block,
    /// The token is gone (joined into another, or the run ended).
    Done,
}

impl<'a> Machine<'a> {
    pub(super) fn new(workflow: &'a Workflow, run: Run, facts: &'a Facts<'a>, now: Timestamp) -> Machine<'a> {
        Machine {
            workflow,
            facts,
            subject: std::borrow::Cow::Borrowed(facts.subject),
            now,
            out: Transition {
                run,
                // Most inputs leave a handful of entries: one allocation for them.
                history: Vec::with_capacity(6),
                effects: Vec::new(),
                timers: Vec::new(),
                timers_cancelled: Vec::new(),
                decisions: Vec::new(),
                run_changed: true,
            },
            steps_executed: 0,
        }
    }

    pub(super) fn handle(mut self, input: &Input) -> Transition {
        if !self.out.run.is_active() {
            // An effect emitted just before the run ended still reports how it went: its
            // result belongs in the trail. Anything else has nothing left to act on.
            match input {
                Input::EffectCompleted { key, ok, detail } => {
                    let entry = effect_result(self.workflow, self.out.run.id, key, *ok, detail.clone(), self.now);
                    self.out.history.push(entry);
                }
                _ => self.ignore(input, "the run has ended"),
            }
            // Only the trail grows: an ended run's state stays as it was.
            self.out.run_changed = false;
            return self.out;
        }
        match input {
            Input::Start { event } => self.start(event.as_ref()),
            Input::Event { event } => self.event(event),
            Input::TimerFired { timer } => self.timer(*timer),
            Input::EffectCompleted { key, ok, detail } => {
                // A result is recorded; the run does not wait for it, so nothing else moves.
                let entry = effect_result(self.workflow, self.out.run.id, key, *ok, detail.clone(), self.now);
                self.out.history.push(entry);
                self.out.run_changed = false;
            }
            Input::TaskCompleted { step, by, fields, via } => self.task_completed(step, by, fields, via.as_ref()),
            Input::WorkAssigned { step, to, by } => self.work_assigned(step, to.as_ref(), by),
            Input::ApprovalDecided { step, role, by, decision, comment, via } => {
                self.approval_decided(step, role, by, *decision, comment.as_ref(), via.as_ref())
            }
            Input::SubflowEnded { step, status } => self.subflow_ended(step, *status),
            Input::Reopen { step, by, reason } => self.reopen(step, by, reason.as_ref()),
            Input::DeliverableUpdated { by, version } => self.deliverable_updated(by, version.as_ref()),
            Input::Cancel { reason } => self.end(RunStatus::Exited, Some(reason.clone())),
        }
        self.out
    }

    // ---- inputs --------------------------------------------------------------------------

    fn start(&mut self, event: Option<&Event>) {
        if !self.out.run.tokens.is_empty() || self.out.run.sequence != 0 {
            self.ignore(&Input::Start { event: None }, "the run has already started");
            return;
        }
        if let Some(event) = event {
            self.out.run.event = Some(event.clone());
            self.out.run.last_event_at = Some(event.at);
        }
        self.history(None, HistoryKind::RunStarted { trigger: event.map(|e| e.name.clone()) });
        let id = self.next_id();
        self.out.run.tokens.push(Token {
            id,
            at: StepIndex(0),
            state: TokenState::Joined, // replaced as soon as the token runs
            entered_at: self.now,
        });
        self.run_token(id, Target::Step(StepIndex(0)));
    }

    fn event(&mut self, event: &Event) {
        // Exit rules and goals apply from any step.
        for rule in &self.workflow.exits {
            if rule.event == event.name && self.event_filter_matches(rule.filter.as_ref(), event, None, "exit") {
                self.out.run.replace_event(event);
                self.end(RunStatus::Exited, Some(format!("exit rule: {}", rule.event)));
                return;
            }
        }
        for goal in &self.workflow.goals {
            if goal.event == event.name && self.event_filter_matches(goal.filter.as_ref(), event, None, "goal") {
                self.out.run.replace_event(event);
                self.convert(None, &goal.name.clone(), goal.value, goal.currency.clone());
                return;
            }
        }
        if self.out.run.last_event_at.is_some_and(|last| event.at < last) {
            // An event older than one already consumed cannot satisfy a later wait.
            self.ignore(&Input::Event { event: event.clone() }, "older than an event the run already used");
            return;
        }
        let waiting: Vec<(u32, StepIndex)> = self
            .out
            .run
            .tokens
            .iter()
            .filter(|t| matches!(t.state, TokenState::AwaitingEvent { .. }))
            .map(|t| (t.id, t.at))
            .collect();
        for (token, at) in waiting {
            if !self.out.run.is_active() {
                return;
            }
            let StepKind::Wait(Wait::Event { name, filter, .. }) = &self.workflow.step(at).kind else { continue };
            if *name == event.name && self.event_filter_matches(filter.as_ref(), event, Some(at), "wait") {
                self.consume_event(token, event);
            }
        }
    }

    fn consume_event(&mut self, token: u32, event: &Event) {
        self.out.run.replace_event(event);
        self.out.run.last_event_at = Some(event.at);
        let Some(t) = self.token(token) else { return };
        let (at, timeout) = match &t.state {
            TokenState::AwaitingEvent { timeout } => (t.at, *timeout),
            _ => return,
        };
        if let Some(timer) = timeout {
            self.cancel_timer(timer);
        }
        let step_id = self.workflow.step(at).id.clone();
        self.set_output(&step_id, json!({ "event_id": event.id, "matched_at": event.at }));
        self.history(Some(at), HistoryKind::WaitResolved { by: "event" });
        let next = self.workflow.step(at).next.unwrap_or(Target::End);
        self.run_token(token, next);
    }

    fn timer(&mut self, timer: TimerId) {
        let Some(position) = self.out.run.timers.iter().position(|t| t.id == timer) else {
            // Cancelled or already fired: a timer may fire late or twice; only the armed one counts.
            self.ignore(&Input::TimerFired { timer }, "the timer is no longer armed");
            return;
        };
        let armed = self.out.run.timers.remove(position);
        let Some(token) = self.token(armed.token).cloned() else { return };
        let step = self.workflow.step(token.at);
        match armed.purpose {
            TimerPurpose::Wake => {
                let TokenState::Sleeping { quiet_hold, cap_hold, .. } = token.state else { return };
                if quiet_hold {
                    // Quiet hours are over: perform the held action now.
                    self.run_step_from(token.id, token.at, true);
                } else if cap_hold {
                    // The cap's window has room: the step runs again, every check anew.
                    self.run_step_from(token.id, token.at, false);
                } else {
                    self.history(Some(token.at), HistoryKind::WaitResolved { by: "time" });
                    self.run_token(token.id, step.next.unwrap_or(Target::End));
                }
            }
            TimerPurpose::EventTimeout => {
                let StepKind::Wait(Wait::Event { on_timeout, .. }) = &step.kind else { return };
                self.history(Some(token.at), HistoryKind::WaitResolved { by: "timeout" });
                let target = on_timeout.or(step.next).unwrap_or(Target::End);
                self.decision(
                    Some(token.at),
                    "wait",
                    None,
                    Default::default(),
                    json!("timeout"),
                    Some(self.target_name(target)),
                );
                self.run_token(token.id, target);
            }
            TimerPurpose::TaskDue => {
                self.history(Some(token.at), HistoryKind::TaskOverdue);
                if let StepKind::Task(task) = &step.kind {
                    let to = task.raci.accountable.clone();
                    let message = format!("Task `{}` is overdue", step.id);
                    self.emit(token.at, EffectKind::Notify { to, message, reason: NotifyReason::TaskOverdue });
                }
            }
            TimerPurpose::ApprovalReminder => {
                if let TokenState::AwaitingApproval(state) = &token.state {
                    self.history(Some(token.at), HistoryKind::ApprovalReminded);
                    let pending = self.pending_approvers(token.at, state);
                    for to in pending {
                        let message = format!("Reminder: your approval is needed on `{}`", step.id);
                        self.emit(token.at, EffectKind::Notify { to, message, reason: NotifyReason::ApprovalReminder });
                    }
                    if let StepKind::Approval(approval) = &step.kind {
                        self.repeat(&token, &armed, approval.remind_every, approval.business_days);
                    }
                }
            }
            TimerPurpose::ApprovalEscalation => {
                self.escalate(token.id, token.at);
                if let StepKind::Approval(approval) = &step.kind {
                    let every = approval.escalate.as_ref().and_then(|e| e.every);
                    self.repeat(&token, &armed, every, approval.business_days);
                }
            }
        }
    }

    /// A repeating approval timer (`remind` or `escalate` with `every`) arms the next one in
    /// place of `fired`, while the token still waits on the same approval.
    fn repeat(&mut self, token: &Token, fired: &ArmedTimer, every: Option<Duration>, business_days: bool) {
        let Some(every) = every else { return };
        let Some(TokenState::AwaitingApproval(state)) =
            self.token(token.id).filter(|t| t.at == token.at).map(|t| t.state.clone())
        else {
            return;
        };
        let mut state = state;
        state.timers.retain(|t| *t != fired.id);
        let next = self.deadline(every, business_days);
        state.timers.push(self.arm(token.id, fired.purpose, next));
        self.set_state(token.id, TokenState::AwaitingApproval(state));
    }

    fn task_completed(&mut self, step: &str, by: &str, fields: &serde_json::Map<String, Value>, via: Option<&String>) {
        let input = || Input::TaskCompleted {
            step: step.to_owned(),
            by: by.to_owned(),
            fields: fields.clone(),
            via: via.cloned(),
        };
        let Some(token) = self.token_at(step, |s| matches!(s, TokenState::AwaitingTask { .. })) else {
            self.ignore(&input(), format!("no task is open at step `{step}`"));
            return;
        };
        let at = token.at;
        let StepKind::Task(task) = &self.workflow.step(at).kind else { return };
        let missing: Vec<&str> = task
            .fields
            .iter()
            .filter(|f| f.required && fields.get(&f.name).is_none_or(Value::is_null))
            .map(|f| f.name.as_str())
            .collect();
        if !missing.is_empty() {
            self.ignore(&input(), format!("required fields are missing: {}", missing.join(", ")));
            return;
        }
        if let TokenState::AwaitingTask { due: Some(timer) } = token.state {
            self.cancel_timer(timer);
        }
        let step_id = self.workflow.step(at).id.clone();
        self.set_output(&step_id, json!({ "completed_by": by, "completed_at": self.now.ms(), "fields": fields }));
        self.history(Some(at), HistoryKind::TaskCompleted { by: by.to_owned(), via: via.cloned() });
        for informed in task.raci.informed.clone() {
            let message = format!("`{step_id}` was completed by {by}");
            self.emit(at, EffectKind::Notify { to: informed, message, reason: NotifyReason::TaskCompleted });
        }
        self.run_token(token.id, self.workflow.step(at).next.unwrap_or(Target::End));
    }

    fn work_assigned(&mut self, step: &str, to: Option<&String>, by: &str) {
        let open = |s: &TokenState| matches!(s, TokenState::AwaitingTask { .. } | TokenState::AwaitingApproval(_));
        let Some(token) = self.token_at(step, open) else {
            let input = Input::WorkAssigned { step: step.to_owned(), to: to.cloned(), by: by.to_owned() };
            self.ignore(&input, format!("no task or approval is open at step `{step}`"));
            return;
        };
        self.history(Some(token.at), HistoryKind::WorkAssigned { to: to.cloned(), by: by.to_owned() });
    }

    fn approval_decided(
        &mut self,
        step: &str,
        role: &str,
        by: &str,
        decision: Decision,
        comment: Option<&String>,
        via: Option<&String>,
    ) {
        let input = || Input::ApprovalDecided {
            step: step.to_owned(),
            role: role.to_owned(),
            by: by.to_owned(),
            decision,
            comment: comment.cloned(),
            via: via.cloned(),
        };
        let Some(token) = self.token_at(step, |s| matches!(s, TokenState::AwaitingApproval(_))) else {
            self.ignore(&input(), format!("no approval is open at step `{step}`"));
            return;
        };
        let at = token.at;
        let StepKind::Approval(approval) = &self.workflow.step(at).kind else { return };
        let TokenState::AwaitingApproval(mut state) = token.state else { return };
        // Who may decide now: the pending approvers, or the delegate after a reassignment.
        let pending = self.pending_approvers(at, &state);
        let deciding_for = if pending.iter().any(|p| p == role) {
            role.to_owned()
        } else if state.delegate.as_deref() == Some(role) && !pending.is_empty() {
            pending[0].clone()
        } else {
            self.ignore(&input(), format!("`{role}` has no pending decision at `{step}`"));
            return;
        };
        let as_delegate = deciding_for != role;
        if let Some(reason) = super::separation_of_duties(self.workflow, &self.out.run, at, &state, by, as_delegate) {
            self.ignore(&input(), reason);
            return;
        }
        state.decisions.push((deciding_for.clone(), decision));
        state.deciders.push(by.to_owned());
        self.history(
            Some(at),
            HistoryKind::ApprovalDecision {
                role: deciding_for,
                by: by.to_owned(),
                decision,
                comment: comment.cloned(),
                via: via.cloned(),
            },
        );
        let outcome = approval_outcome(approval, &state);
        match outcome {
            None => {
                if approval.mode == ApprovalMode::Sequential {
                    // The next stage's approver is asked now: their due time, reminders and
                    // escalation count from now, and an escalation spent on an earlier stage
                    // (and the person it reassigned to) is theirs alone.
                    state.stage += 1;
                    for timer in std::mem::take(&mut state.timers) {
                        self.cancel_timer(timer);
                    }
                    state.delegate = None;
                    state.escalations = 0;
                    let approvers = vec![approval.approvers[usize::from(state.stage)].clone()];
                    let due_at = approval.due.map(|d| self.deadline(d, approval.business_days));
                    self.emit(at, EffectKind::RequestApproval { round: state.round, approvers, due_at });
                    state.timers = self.arm_approval_clocks(token.id, approval);
                }
                self.set_state(token.id, TokenState::AwaitingApproval(state));
            }
            Some(outcome) => self.resolve_approval(token.id, at, *state, outcome),
        }
    }

    fn reopen(&mut self, step: &str, by: &str, reason: Option<&String>) {
        let input = || Input::Reopen { step: step.to_owned(), by: by.to_owned(), reason: reason.cloned() };
        let Some(at) = self.workflow.step_index(step) else {
            self.ignore(&input(), format!("there is no step `{step}`"));
            return;
        };
        if !matches!(self.workflow.step(at).kind, StepKind::Task(_)) {
            self.ignore(&input(), format!("`{step}` is not a task"));
            return;
        }
        let [token] = self.out.run.tokens.as_slice() else {
            self.ignore(&input(), "the run is in several places at once (a parallel section)");
            return;
        };
        let token = token.clone();
        match token.state {
            TokenState::AwaitingTask { .. } if token.at == at => {
                self.ignore(&input(), format!("`{step}` is open already"));
                return;
            }
            TokenState::AwaitingSubflow | TokenState::Joined => {
                self.ignore(&input(), "the run waits for a subflow or a join");
                return;
            }
            _ => {}
        }
        let from = self.workflow.step(token.at).id.to_string();
        self.cancel_token_timers(token.id);
        self.history(Some(at), HistoryKind::TaskReopened { by: by.to_owned(), reason: reason.cloned(), from });
        self.run_step_from(token.id, at, false);
    }

    fn deliverable_updated(&mut self, by: &str, version: Option<&String>) {
        let awaiting: Vec<Token> = self
            .out
            .run
            .tokens
            .iter()
            .filter(|t| matches!(t.state, TokenState::AwaitingApproval(_)))
            .cloned()
            .collect();
        if awaiting.is_empty() {
            let input = Input::DeliverableUpdated { by: by.to_owned(), version: version.cloned() };
            self.ignore(&input, "no approval is open");
            return;
        }
        for token in awaiting {
            let TokenState::AwaitingApproval(state) = &token.state else { continue };
            let decisions = state.decisions.len();
            self.cancel_token_timers(token.id);
            self.history(
                Some(token.at),
                HistoryKind::ApprovalReset { by: by.to_owned(), version: version.cloned(), decisions },
            );
            // Entering the step again starts the next round: new requests, new clocks.
            self.run_step_from(token.id, token.at, false);
        }
    }

    fn subflow_ended(&mut self, step: &str, status: RunStatus) {
        let Some(token) = self.token_at(step, |s| matches!(s, TokenState::AwaitingSubflow)) else {
            self.ignore(
                &Input::SubflowEnded { step: step.to_owned(), status },
                format!("no subflow is awaited at `{step}`"),
            );
            return;
        };
        let at = token.at;
        self.set_output(&self.workflow.step(at).id, json!({ "status": status }));
        self.history(Some(at), HistoryKind::WaitResolved { by: "subflow" });
        self.run_token(token.id, self.workflow.step(at).next.unwrap_or(Target::End));
    }

    // ---- moving tokens -------------------------------------------------------------------

    /// Moves a token to `target` and runs steps until it blocks or ends.
    fn run_token(&mut self, token: u32, target: Target) {
        match target {
            Target::End => self.finish_token(token),
            Target::Step(at) => self.run_step_from(token, at, false),
        }
    }

    fn run_step_from(&mut self, token: u32, mut at: StepIndex, mut quiet_released: bool) {
        loop {
            if !self.out.run.is_active() {
                return;
            }
            self.steps_executed += 1;
            if self.steps_executed > STEPS_PER_TRANSITION_MAX {
                self.history(
                    Some(at),
                    HistoryKind::StepFailed {
                        error: format!("more than {STEPS_PER_TRANSITION_MAX} steps ran for one input"),
                    },
                );
                self.end(RunStatus::Failed, Some("runaway loop".to_owned()));
                return;
            }
            let now = self.now;
            if let Some(t) = self.token_mut(token) {
                t.at = at;
                t.entered_at = now;
            }
            if !quiet_released {
                self.history(Some(at), HistoryKind::StepEntered { kind: self.workflow.step(at).kind_name() });
            }
            let flow = self.execute(token, at, quiet_released);
            quiet_released = false;
            match flow {
                Flow::Go(Target::Step(next)) => at = next,
                Flow::Go(Target::End) => {
                    self.finish_token(token);
                    return;
                }
                Flow::Block | Flow::Done => return,
            }
        }
    }

    fn execute(&mut self, token: u32, at: StepIndex, quiet_released: bool) -> Flow {
        let workflow = self.workflow;
        let step = workflow.step(at);
        let next = step.next.unwrap_or(Target::End);
        match &step.kind {
            StepKind::Action(action) => self.action(token, at, action, quiet_released).unwrap_or(Flow::Go(next)),
            StepKind::Task(task) => {
                let title = self.render(at, &task.title);
                let description = task.description.as_ref().and_then(|d| self.render(at, d));
                let due_at = task.due.map(|d| self.deadline(d, task.business_days));
                self.emit(
                    at,
                    EffectKind::CreateTask {
                        title: title.unwrap_or_default(),
                        description,
                        raci: task.raci.clone(),
                        due_at,
                    },
                );
                let due = due_at.map(|due_at| self.arm(token, TimerPurpose::TaskDue, due_at));
                self.history(Some(at), HistoryKind::Waiting { until: due_at, reason: "task" });
                self.set_state(token, TokenState::AwaitingTask { due });
                Flow::Block
            }
            StepKind::Approval(approval) => {
                let round =
                    match self.out.run.outputs.get(&*step.id).and_then(|o| o.get("round")).and_then(Value::as_u64) {
                        Some(previous) => previous as u32 + 1,
                        None => 1,
                    };
                self.set_output(&step.id, json!({ "round": round }));
                let approvers = match approval.mode {
                    ApprovalMode::Sequential => vec![approval.approvers[0].clone()],
                    _ => approval.approvers.clone(),
                };
                let due_at = approval.due.map(|d| self.deadline(d, approval.business_days));
                self.emit(at, EffectKind::RequestApproval { round, approvers, due_at });
                let timers = self.arm_approval_clocks(token, approval);
                self.history(Some(at), HistoryKind::Waiting { until: due_at, reason: "approval" });
                let state = ApprovalState {
                    round,
                    stage: 0,
                    decisions: Vec::new(),
                    delegate: None,
                    timers,
                    deciders: Vec::new(),
                    escalations: 0,
                };
                self.set_state(token, TokenState::AwaitingApproval(Box::new(state)));
                Flow::Block
            }
            StepKind::Wait(wait) => self.wait(token, at, wait),
            StepKind::Branch(branch) => {
                for arm in &branch.arms {
                    match self.evaluate(at, "branch", &arm.when, None) {
                        Ok(true) => {
                            self.last_decision_path(self.target_name(arm.target));
                            return Flow::Go(arm.target);
                        }
                        Ok(false) => {}
                        Err(error) => {
                            // A condition that cannot be evaluated is false, visibly.
                            self.history(Some(at), HistoryKind::StepFailed { error });
                        }
                    }
                }
                self.decision(
                    Some(at),
                    "branch",
                    Some("otherwise".to_owned()),
                    Default::default(),
                    json!(true),
                    Some(self.target_name(branch.otherwise)),
                );
                Flow::Go(branch.otherwise)
            }
            StepKind::Split(split) => {
                let total: u32 = split.arms.iter().map(|a| a.weight).sum();
                let bucket = split_bucket(&workflow.id, &step.id, &self.out.run.subject_id, total);
                let mut upper = 0;
                let arm = split
                    .arms
                    .iter()
                    .find(|a| {
                        upper += a.weight;
                        bucket < upper
                    })
                    .expect("the bucket is below the total weight");
                let inputs = [("bucket".to_owned(), json!(bucket)), ("total".to_owned(), json!(total))].into();
                self.decision(Some(at), "split", None, inputs, json!(arm.name), Some(self.target_name(arm.target)));
                self.set_output(&step.id, json!({ "arm": arm.name }));
                Flow::Go(arm.target)
            }
            StepKind::Parallel(parallel) => {
                if self.out.run.tokens.len() + parallel.branches.len() > TOKENS_COUNT_MAX {
                    self.history(Some(at), HistoryKind::StepFailed { error: "too many parallel paths".to_owned() });
                    self.end(RunStatus::Failed, Some("too many parallel paths".to_owned()));
                    return Flow::Done;
                }
                self.remove_token(token);
                let ids: Vec<u32> = parallel.branches.iter().map(|_| self.next_id()).collect();
                for id in &ids {
                    self.out.run.tokens.push(Token { id: *id, at, state: TokenState::Joined, entered_at: self.now });
                }
                for (id, branch) in ids.into_iter().zip(parallel.branches.clone()) {
                    self.run_token(id, Target::Step(branch));
                }
                Flow::Done
            }
            StepKind::Join(mode) => self.join(token, at, *mode),
            StepKind::Goal(goal) => {
                self.convert(Some(at), &goal.name.clone(), goal.value, goal.currency.clone());
                Flow::Done
            }
            StepKind::Exit(exit) => {
                self.end(RunStatus::Exited, exit.reason.clone());
                Flow::Done
            }
            StepKind::Subflow(subflow) => {
                self.emit(at, EffectKind::StartRun { workflow: subflow.workflow.clone(), wait: subflow.wait });
                if subflow.wait {
                    self.history(Some(at), HistoryKind::Waiting { until: None, reason: "subflow" });
                    self.set_state(token, TokenState::AwaitingSubflow);
                    Flow::Block
                } else {
                    Flow::Go(next)
                }
            }
        }
    }

    /// Performs an action; `None` means "go on to `next`".
    fn action(&mut self, token: u32, at: StepIndex, action: &Action, quiet_released: bool) -> Option<Flow> {
        let workflow = self.workflow;
        let is_message = matches!(action, Action::Email(e) if !e.transactional);
        if is_message
            && let Some(channel) = action.channel()
            && let Some(reason) = super::refusal(&self.subject, channel)
        {
            self.history(Some(at), HistoryKind::NotPermitted { channel, reason });
            return None;
        }
        if is_message
            && !quiet_released
            && let Some(quiet) = &workflow.quiet_hours
        {
            let tz = self.timezone(quiet.timezone);
            {
                if let Some(until) = in_quiet_hours(self.now, quiet.from_minute, quiet.to_minute, tz) {
                    match quiet.action {
                        QuietAction::Delay => {
                            self.history(Some(at), HistoryKind::QuietHoursHeld { until });
                            let timer = self.arm(token, TimerPurpose::Wake, until);
                            self.set_state(token, TokenState::Sleeping { timer, quiet_hold: true, cap_hold: false });
                            return Some(Flow::Block);
                        }
                        QuietAction::Drop => {
                            self.history(Some(at), HistoryKind::QuietHoursDropped);
                            return None;
                        }
                    }
                }
            }
        }
        if is_message && let Some(channel) = action.channel() {
            for cap in workflow.caps.iter().filter(|c| c.channel == channel) {
                let window_start = Timestamp(self.now.ms() - duration_ms_i64(cap.per));
                let stored = self.facts.sent.iter().filter(|s| s.channel == channel && s.at > window_start).count();
                let this_transition = self
                    .out
                    .effects
                    .iter()
                    .filter(|e| matches!(e.kind, EffectKind::SendMessage { channel: c, transactional: false, .. } if c == channel))
                    .count();
                let sent_count = (stored + this_transition) as u32;
                if sent_count >= cap.max {
                    if cap.action == CapAction::Hold {
                        // Room comes when enough of the sends in the window have left it: the
                        // (count − max + 1)-th oldest, `per` after it was sent.
                        let mut times: Vec<Timestamp> = self
                            .facts
                            .sent
                            .iter()
                            .filter(|s| s.channel == channel && s.at > window_start)
                            .map(|s| s.at)
                            .chain(std::iter::repeat_n(self.now, this_transition))
                            .collect();
                        times.sort();
                        let oldest = times[(sent_count - cap.max) as usize];
                        let until = Timestamp(oldest.ms() + duration_ms_i64(cap.per));
                        self.history(Some(at), HistoryKind::CapHeld { channel, sent_count, max: cap.max, until });
                        let timer = self.arm(token, TimerPurpose::Wake, until);
                        self.set_state(token, TokenState::Sleeping { timer, quiet_hold: false, cap_hold: true });
                        return Some(Flow::Block);
                    }
                    self.history(Some(at), HistoryKind::Capped { channel, sent_count, max: cap.max });
                    return None;
                }
            }
        }
        let kind = match action {
            Action::Email(_) | Action::Webhook(_) | Action::Notify(_) => {
                let reads = |root: &str| action.any_template(|t| t.reads(root));
                let context = RenderContext {
                    event: reads("event")
                        .then(|| self.out.run.event.as_ref().map_or(Value::Null, |e| (*e.payload).clone())),
                    trigger: reads("trigger")
                        .then(|| self.out.run.trigger().map_or(Value::Null, |e| (*e.payload).clone())),
                    steps: reads("steps").then(|| self.out.run.outputs.clone()),
                    run: reads("run").then(|| self.run_json()),
                };
                let transactional = matches!(action, Action::Email(e) if e.transactional);
                let channel = action.channel().expect("messages have a channel");
                EffectKind::SendMessage { channel, transactional, context }
            }
            Action::Score(score) => {
                super::apply_score(self.subject.to_mut(), &score.model, score.change);
                EffectKind::AdjustScore { model: score.model.clone(), change: score.change }
            }
            Action::Update(update) => {
                let mut set = serde_json::Map::new();
                for (field, value) in &update.set {
                    set.insert(field.clone(), self.render_value(at, value)?);
                }
                super::apply_update(self.subject.to_mut(), &set);
                EffectKind::UpdateSubject { set }
            }
            Action::Emit(emit) => {
                let properties = match &emit.properties {
                    Some(properties) => self.render_value(at, properties)?,
                    None => Value::Object(serde_json::Map::new()),
                };
                let depth = self.out.run.event.as_ref().map_or(0, super::emit_depth).saturating_add(1);
                if depth > EMIT_DEPTH_MAX {
                    let error = format!(
                        "emit `{}`: this run is handling an event {} emits deep, and a chain of emits stops at \
                         {EMIT_DEPTH_MAX} (do two workflows emit what starts each other?)",
                        emit.event,
                        depth - 1
                    );
                    self.history(Some(at), HistoryKind::StepFailed { error });
                    return None;
                }
                EffectKind::EmitEvent { event: emit.event.clone(), properties, depth }
            }
        };
        // An update's values are readable after it, as `steps.<id>.set`.
        let set = match &kind {
            EffectKind::UpdateSubject { set } => Some(Value::Object(set.clone())),
            _ => None,
        };
        let key = self.emit(at, kind);
        let step_id = workflow.step(at).id.clone();
        let emitted = matches!(action, Action::Emit(_)).then(|| super::emitted_event_id(&key));
        let output = match (set, emitted) {
            (Some(set), _) => json!({ "effect_id": key, "set": set }),
            (None, Some(event_id)) => json!({ "effect_id": key, "event_id": event_id }),
            (None, None) => json!({ "effect_id": key }),
        };
        self.set_output(&step_id, output);
        None
    }

    fn wait(&mut self, token: u32, at: StepIndex, wait: &Wait) -> Flow {
        let due_at = match wait {
            Wait::Duration(d) => Some(self.now.plus(*d)),
            Wait::TimeOfDay { minute, timezone, weekdays } => {
                Some(next_time_of_day(self.now, *minute, self.timezone(*timezone), weekdays))
            }
            Wait::Until(at) => Some(*at),
            Wait::Event { .. } => None,
        };
        if let Some(due_at) = due_at {
            if due_at <= self.now {
                self.history(Some(at), HistoryKind::WaitResolved { by: "time" });
                return Flow::Go(self.workflow.step(at).next.unwrap_or(Target::End));
            }
            self.history(Some(at), HistoryKind::Waiting { until: Some(due_at), reason: "time" });
            let timer = self.arm(token, TimerPurpose::Wake, due_at);
            self.set_state(token, TokenState::Sleeping { timer, quiet_hold: false, cap_hold: false });
            return Flow::Block;
        }
        let Wait::Event { name, filter, timeout, .. } = wait else { unreachable!("only event waits have no due time") };
        // Look back: an event that arrived just before this wait began still satisfies it.
        let since = Timestamp(self.now.ms() - WAIT_LOOKBACK_MS as i64)
            .max(self.out.run.last_event_at.map_or(Timestamp(i64::MIN), |t| Timestamp(t.ms() + 1)));
        let recent = self.facts.recent_events;
        let now = self.now;
        for event in recent.iter().filter(|e| e.at >= since && e.at <= now) {
            if event.name == *name && self.event_filter_matches(filter.as_ref(), event, Some(at), "wait") {
                self.set_state(token, TokenState::AwaitingEvent { timeout: None });
                self.consume_event_inline(at, event);
                return Flow::Go(self.workflow.step(at).next.unwrap_or(Target::End));
            }
        }
        let until = timeout.map(|d| self.now.plus(d));
        let timeout = until.map(|due_at| self.arm(token, TimerPurpose::EventTimeout, due_at));
        self.history(Some(at), HistoryKind::Waiting { until, reason: "event" });
        self.set_state(token, TokenState::AwaitingEvent { timeout });
        Flow::Block
    }

    fn consume_event_inline(&mut self, at: StepIndex, event: &Event) {
        self.out.run.replace_event(event);
        self.out.run.last_event_at = Some(event.at);
        let step_id = self.workflow.step(at).id.clone();
        self.set_output(&step_id, json!({ "event_id": event.id, "matched_at": event.at }));
        self.history(Some(at), HistoryKind::WaitResolved { by: "event (look-back)" });
    }

    fn join(&mut self, token: u32, at: StepIndex, mode: JoinMode) -> Flow {
        let workflow = self.workflow;
        // Branches of the parallel step whose join this is.
        let expected = workflow
            .steps
            .iter()
            .find_map(|s| match &s.kind {
                StepKind::Parallel(p) if p.join == at => Some(p.branches.len()),
                _ => None,
            })
            .unwrap_or(1);
        match mode {
            JoinMode::Any => {
                // The first to arrive goes on; every other token of the run is cancelled.
                let others: Vec<u32> = self.out.run.tokens.iter().map(|t| t.id).filter(|id| *id != token).collect();
                for other in others {
                    self.remove_token(other);
                }
                self.history(Some(at), HistoryKind::WaitResolved { by: "first branch" });
                Flow::Go(workflow.step(at).next.unwrap_or(Target::End))
            }
            JoinMode::All => {
                self.set_state(token, TokenState::Joined);
                let arrived =
                    self.out.run.tokens.iter().filter(|t| t.at == at && t.state == TokenState::Joined).count();
                if arrived < expected {
                    return Flow::Block;
                }
                let others: Vec<u32> =
                    self.out.run.tokens.iter().filter(|t| t.at == at && t.id != token).map(|t| t.id).collect();
                for other in others {
                    self.remove_token(other);
                }
                self.history(Some(at), HistoryKind::WaitResolved { by: "all branches" });
                Flow::Go(workflow.step(at).next.unwrap_or(Target::End))
            }
        }
    }

    /// Arms an approval's reminders and escalation, counted from now: at the step's entry, and
    /// again for each stage of a sequential approval.
    fn arm_approval_clocks(&mut self, token: u32, approval: &Approval) -> Vec<TimerId> {
        let mut timers = Vec::new();
        for remind in approval.remind.iter().chain(&approval.remind_every) {
            let at = self.deadline(*remind, approval.business_days);
            timers.push(self.arm(token, TimerPurpose::ApprovalReminder, at));
        }
        if let Some(escalation) = &approval.escalate {
            let at = self.deadline(escalation.after, approval.business_days);
            timers.push(self.arm(token, TimerPurpose::ApprovalEscalation, at));
        }
        timers
    }

    fn escalate(&mut self, token: u32, at: StepIndex) {
        let StepKind::Approval(approval) = &self.workflow.step(at).kind else { return };
        let Some(escalation) = &approval.escalate else { return };
        let Some(TokenState::AwaitingApproval(mut state)) = self.token(token).map(|t| t.state.clone()) else { return };
        // Each escalation of a stage goes one further up the chain, staying with the last.
        let level = (state.escalations as usize).min(escalation.to.len().saturating_sub(1));
        let named = escalation.to.get(level).cloned().unwrap_or_else(|| "accountable".to_owned());
        let to = if named == "accountable" { approval.accountable.clone().unwrap_or(named) } else { named };
        state.escalations = state.escalations.saturating_add(1);
        self.set_state(token, TokenState::AwaitingApproval(state.clone()));
        let action_name = match escalation.action {
            EscalationAction::Notify => "notify",
            EscalationAction::Reassign => "reassign",
            EscalationAction::AutoApprove => "auto_approve",
            EscalationAction::AutoReject => "auto_reject",
        };
        self.history(Some(at), HistoryKind::ApprovalEscalated { to: to.clone(), action: action_name });
        let step_id = self.workflow.step(at).id.clone();
        match escalation.action {
            EscalationAction::Notify | EscalationAction::Reassign => {
                let message = format!("Approval `{step_id}` is waiting past its deadline ({action_name})");
                self.emit(at, EffectKind::Notify { to: to.clone(), message, reason: NotifyReason::Escalation });
                if escalation.action == EscalationAction::Reassign {
                    let mut state = state;
                    state.delegate = Some(to);
                    self.set_state(token, TokenState::AwaitingApproval(state));
                }
            }
            EscalationAction::AutoApprove => self.resolve_approval(token, at, *state, ApprovalOutcome::Approved),
            EscalationAction::AutoReject => self.resolve_approval(token, at, *state, ApprovalOutcome::Rejected),
        }
    }

    fn resolve_approval(&mut self, token: u32, at: StepIndex, state: ApprovalState, outcome: ApprovalOutcome) {
        let StepKind::Approval(approval) = &self.workflow.step(at).kind else { return };
        for timer in &state.timers {
            self.cancel_timer(*timer);
        }
        let (name, target) = match outcome {
            ApprovalOutcome::Approved => ("approved", self.workflow.step(at).next),
            ApprovalOutcome::Rejected => ("rejected", approval.on_reject),
            ApprovalOutcome::ChangesRequested => ("changes_requested", approval.on_changes.or(approval.on_reject)),
        };
        let step_id = self.workflow.step(at).id.clone();
        let decisions: serde_json::Map<String, Value> =
            state.decisions.iter().map(|(role, d)| (role.clone(), json!(d))).collect();
        self.set_output(&step_id, json!({ "round": state.round, "outcome": name, "decisions": decisions }));
        self.history(Some(at), HistoryKind::ApprovalResolved { outcome: name, round: state.round });
        let path = target.map_or_else(|| "exit".to_owned(), |t| self.target_name(t));
        self.decision(Some(at), "approval", None, Default::default(), json!(name), Some(path));
        match target {
            Some(target) => self.run_token(token, target),
            None => self.end(RunStatus::Exited, Some(format!("approval {name}"))),
        }
    }

    fn pending_approvers(&self, at: StepIndex, state: &ApprovalState) -> Vec<String> {
        let StepKind::Approval(approval) = &self.workflow.step(at).kind else { return Vec::new() };
        match approval.mode {
            ApprovalMode::Sequential => approval.approvers.get(usize::from(state.stage)).cloned().into_iter().collect(),
            _ => approval
                .approvers
                .iter()
                .filter(|a| !state.decisions.iter().any(|(role, _)| role == *a))
                .cloned()
                .collect(),
        }
    }

    fn finish_token(&mut self, token: u32) {
        self.remove_token(token);
        if self.out.run.tokens.is_empty() && self.out.run.is_active() {
            self.end(RunStatus::Completed, None);
        }
    }

    fn convert(&mut self, at: Option<StepIndex>, goal: &str, value: Option<f64>, currency: Option<String>) {
        self.history(at, HistoryKind::GoalReached { goal: goal.to_owned(), value });
        let effect_step = at.unwrap_or(StepIndex(0));
        self.emit_at(at.map(|_| effect_step), EffectKind::RecordConversion { goal: goal.to_owned(), value, currency });
        self.end(RunStatus::Converted, Some(format!("goal: {goal}")));
    }

    fn end(&mut self, status: RunStatus, reason: Option<String>) {
        assert!(status != RunStatus::Active);
        if !self.out.run.is_active() {
            return;
        }
        let timers: Vec<TimerId> = self.out.run.timers.iter().map(|t| t.id).collect();
        for timer in timers {
            self.cancel_timer(timer);
        }
        self.out.run.tokens.clear();
        self.out.run.status = status;
        self.out.run.ended_at = Some(self.now);
        self.history(None, HistoryKind::RunEnded { status, reason });
    }

    // ---- helpers -------------------------------------------------------------------------

    fn next_id(&mut self) -> u32 {
        self.out.run.sequence += 1;
        self.out.run.sequence
    }

    fn token(&self, id: u32) -> Option<&Token> {
        self.out.run.tokens.iter().find(|t| t.id == id)
    }

    fn token_mut(&mut self, id: u32) -> Option<&mut Token> {
        self.out.run.tokens.iter_mut().find(|t| t.id == id)
    }

    fn token_at(&self, step: &str, state: impl Fn(&TokenState) -> bool) -> Option<Token> {
        let at = self.workflow.step_index(step)?;
        self.out.run.tokens.iter().find(|t| t.at == at && state(&t.state)).cloned()
    }

    fn set_state(&mut self, token: u32, state: TokenState) {
        if let Some(t) = self.token_mut(token) {
            t.state = state;
        }
    }

    fn remove_token(&mut self, token: u32) {
        self.cancel_token_timers(token);
        self.out.run.tokens.retain(|t| t.id != token);
    }

    fn cancel_token_timers(&mut self, token: u32) {
        let timers: Vec<TimerId> = self.out.run.timers.iter().filter(|t| t.token == token).map(|t| t.id).collect();
        for timer in timers {
            self.cancel_timer(timer);
        }
    }

    fn arm(&mut self, token: u32, purpose: TimerPurpose, due_at: Timestamp) -> TimerId {
        let timer = TimerId(self.next_id());
        self.out.run.timers.push(ArmedTimer { id: timer, token, purpose, due_at });
        self.out.timers.push(TimerRequest { timer, due_at, purpose });
        timer
    }

    fn cancel_timer(&mut self, timer: TimerId) {
        let before = self.out.run.timers.len();
        self.out.run.timers.retain(|t| t.id != timer);
        if self.out.run.timers.len() < before {
            // A timer armed and cancelled within one transition never reaches the store.
            if let Some(position) = self.out.timers.iter().position(|t| t.timer == timer) {
                self.out.timers.remove(position);
            } else {
                self.out.timers_cancelled.push(timer);
            }
        }
    }

    fn emit(&mut self, at: StepIndex, kind: EffectKind) -> String {
        self.emit_at(Some(at), kind)
    }

    fn emit_at(&mut self, at: Option<StepIndex>, kind: EffectKind) -> String {
        let n = self.next_id();
        // Run-level effects (a conversion by a workflow goal) name `_run`, which no step id can be.
        let step: Arc<str> = at.map_or_else(|| Arc::from(RUN_LEVEL_STEP), |at| self.workflow.step(at).id.clone());
        let key = effect_key(self.out.run.id, &step, n);
        self.history(at, HistoryKind::EffectEmitted { key: key.clone(), effect: kind.name() });
        self.out.effects.push(Effect { key: key.clone(), step, kind });
        key
    }

    fn history(&mut self, at: Option<StepIndex>, kind: HistoryKind) {
        let step = at.map(|at| self.workflow.step(at).id.clone());
        self.out.history.push(HistoryEntry { at: self.now, step, kind });
    }

    fn ignore(&mut self, input: &Input, reason: impl Into<String>) {
        self.history(None, HistoryKind::InputIgnored { input: input.name(), reason: reason.into() });
    }

    fn decision(
        &mut self,
        at: Option<StepIndex>,
        kind: &'static str,
        expression: Option<String>,
        inputs: BTreeMap<String, Value>,
        result: Value,
        path: Option<String>,
    ) {
        let step = at.map(|at| self.workflow.step(at).id.clone());
        self.out.decisions.push(DecisionRecord {
            at: self.now,
            step,
            kind,
            expression,
            inputs,
            result,
            path,
            notes: Vec::new(),
        });
    }

    fn last_decision_path(&mut self, path: String) {
        if let Some(last) = self.out.decisions.last_mut() {
            last.path = Some(path);
        }
    }

    fn target_name(&self, target: Target) -> String {
        match target {
            Target::End => "end".to_owned(),
            Target::Step(at) => self.workflow.step(at).id.to_string(),
        }
    }

    /// When a deadline `duration` from now falls: counted in working days when the step asks
    /// for business days, in elapsed time otherwise.
    fn deadline(&self, duration: Duration, business_days: bool) -> Timestamp {
        if business_days {
            add_working_time(self.now, duration, self.workflow.timezone, &self.workflow.working_days)
        } else {
            self.now.plus(duration)
        }
    }

    fn timezone(&self, source: TimezoneSource) -> chrono_tz::Tz {
        match source {
            TimezoneSource::Subject => self.facts.timezone.unwrap_or(self.workflow.timezone),
            TimezoneSource::Workspace => self.workflow.timezone,
            TimezoneSource::Fixed(tz) => tz,
        }
    }

    fn run_json(&self) -> Value {
        json!({ "id": self.out.run.id.0, "workflow": self.out.run.workflow_id, "started_at": self.out.run.started_at })
    }

    fn set_output(&mut self, step: &str, value: Value) {
        if let Value::Object(map) = &mut self.out.run.outputs {
            map.insert(step.to_owned(), value);
        }
    }

    /// The variables conditions and templates read; `run` is passed in because it is built
    /// only when read.
    fn scope<'s>(&'s self, run: &'s Value, event: Option<&'s Event>) -> Scope<'s> {
        let event = event.or(self.out.run.event.as_ref()).map_or(&Value::Null, |e| e.payload.as_ref());
        let trigger = self.out.run.trigger().map_or(&Value::Null, |e| e.payload.as_ref());
        Scope::new()
            .with(self.workflow.subject.as_str(), &self.subject)
            .with("event", event)
            .with("trigger", trigger)
            .with("steps", &self.out.run.outputs)
            .with("run", run)
            .with("env", self.facts.env)
    }

    /// Evaluates a condition and leaves a decision record of what it read and gave.
    fn evaluate(
        &mut self,
        at: StepIndex,
        kind: &'static str,
        condition: &Condition,
        event: Option<&Event>,
    ) -> Result<bool, String> {
        let run = if condition.reads("run") { self.run_json() } else { Value::Null };
        let scope = self.scope(&run, event);
        let evaluation = condition.eval(&scope);
        let result = match &evaluation.result {
            Ok(b) => json!(b),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let notes = condition.notes(&evaluation.inputs);
        self.decision(Some(at), kind, Some(condition.source().to_owned()), evaluation.inputs, result, None);
        if !notes.is_empty()
            && let Some(last) = self.out.decisions.last_mut()
        {
            last.notes = notes;
        }
        evaluation.result.map_err(|e| format!("{}: {e}", condition.source()))
    }

    fn event_filter_matches(
        &mut self,
        filter: Option<&Condition>,
        event: &Event,
        at: Option<StepIndex>,
        kind: &'static str,
    ) -> bool {
        let Some(filter) = filter else { return true };
        let at = at.unwrap_or(StepIndex(0));
        match self.evaluate(at, kind, filter, Some(event)) {
            Ok(matched) => {
                if at == StepIndex(0)
                    && kind != "wait"
                    && let Some(last) = self.out.decisions.last_mut()
                {
                    last.step = None;
                }
                matched
            }
            Err(_) => false,
        }
    }

    /// Renders a template; a failure is recorded on the step and gives `None`.
    fn render(&mut self, at: StepIndex, template: &Template) -> Option<String> {
        let run = if template.reads("run") { self.run_json() } else { Value::Null };
        let rendered = template.render(&self.scope(&run, None));
        match rendered {
            Ok(text) => Some(text),
            Err(error) => {
                self.history(Some(at), HistoryKind::StepFailed { error: format!("template: {error}") });
                None
            }
        }
    }

    fn render_value(&mut self, at: StepIndex, value: &TemplateValue) -> Option<Value> {
        let run = self.run_json();
        let scope = self.scope(&run, None);
        let rendered = crate::render::render_value_typed(value, &scope, &|t: &Template, _| t.render(&scope));
        match rendered {
            Ok(value) => Some(value),
            Err(error) => {
                self.history(Some(at), HistoryKind::StepFailed { error: format!("template: {error}") });
                None
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApprovalOutcome {
    Approved,
    Rejected,
    ChangesRequested,
}

/// Whether the decisions so far settle the round, and how.
fn approval_outcome(approval: &Approval, state: &ApprovalState) -> Option<ApprovalOutcome> {
    let approved = state.decisions.iter().filter(|(_, d)| d.approves()).count();
    let against: Vec<Decision> = state.decisions.iter().map(|(_, d)| *d).filter(|d| !d.approves()).collect();
    let refusal = || {
        if against.contains(&Decision::RequestChanges) {
            ApprovalOutcome::ChangesRequested
        } else {
            ApprovalOutcome::Rejected
        }
    };
    match approval.mode {
        ApprovalMode::Single => {
            state.decisions.last().map(|(_, d)| if d.approves() { ApprovalOutcome::Approved } else { refusal() })
        }
        ApprovalMode::Sequential => {
            if !against.is_empty() {
                Some(refusal())
            } else if approved >= approval.approvers.len() {
                Some(ApprovalOutcome::Approved)
            } else {
                None
            }
        }
        ApprovalMode::Parallel => {
            let needed = approval.approvals_needed();
            let undecided = approval.approvers.len() - state.decisions.len();
            if approved >= needed {
                Some(ApprovalOutcome::Approved)
            } else if approved + undecided < needed {
                Some(refusal())
            } else {
                None
            }
        }
    }
}
