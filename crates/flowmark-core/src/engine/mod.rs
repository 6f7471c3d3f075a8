//! The run state machine: what one input does to one run, decided without I/O.
//!
//! [`handle`] takes a workflow, a run's state, an [`Input`], the stored [`Facts`] about the
//! subject that the shell loaded, and `now`; it returns a [`Transition`]: the next state, the
//! history entries to append, the effects for the outbox (each with an idempotency key), the
//! timers to arm and to cancel, and a decision record for every branch, split, wait and goal
//! evaluation.
//!
//! Invariant: `handle` is a pure function of its arguments: no clock, no I/O, no global
//! random source (splits hash the subject). Equal arguments give an equal `Transition`.
//! A run that is not `Active` never changes again.

mod calendar;
mod machine;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Channel, Raci, ScoreChange, StepIndex, StepKind, Workflow};
use crate::time::{Duration, Timestamp};

pub use calendar::{add_working_time, in_quiet_hours, next_time_of_day};

/// A run's id, unique within a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

/// A timer's id, unique within its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Active,
    /// Reached the end of the workflow.
    Completed,
    /// Reached a goal: counted as a conversion.
    Converted,
    /// Left early: an exit step, an exit rule, a rejection without a target, or a cancel.
    Exited,
    /// Stopped by an error the workflow cannot go past (a runaway loop, a bad input).
    Failed,
}

/// One subject's trip through one pinned workflow version. Small: histories live elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub workflow_id: String,
    pub version: u32,
    pub subject_id: String,
    pub status: RunStatus,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub tokens: Vec<Token>,
    pub timers: Vec<ArmedTimer>,
    /// What steps produced, readable as `steps.<id>.<field>` in conditions and templates.
    pub outputs: Value,
    /// The latest event that started or advanced the run, readable as `event`.
    pub event: Option<Event>,
    /// The event that started the run, readable as `trigger`, kept here once a later event
    /// has taken its place as `event` (`None` while `event` is still the trigger; `Some(None)`
    /// for a run started without an event). Read it with `Run::trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub trigger: Option<Option<Event>>,
    /// When the latest consumed event happened: a wait never consumes an event twice.
    pub last_event_at: Option<Timestamp>,
    /// Source of run-local ids (tokens, timers, effects): each use takes the next number.
    pub sequence: u32,
    /// The run and step that started this one as a subflow: where its end is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRun>,
}

/// The run and `subflow` step a child run reports its end to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRun {
    pub run: RunId,
    pub step: String,
}

impl RunStatus {
    /// Every status, in the order people read them.
    pub const ALL: [RunStatus; 5] =
        [RunStatus::Active, RunStatus::Completed, RunStatus::Converted, RunStatus::Exited, RunStatus::Failed];

    /// The status named `text` (as `as_str` writes it).
    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Active => "active",
            RunStatus::Completed => "completed",
            RunStatus::Converted => "converted",
            RunStatus::Exited => "exited",
            RunStatus::Failed => "failed",
        }
    }
}

/// A field that is present is `Some`, even when it is `null` (serde reads `null` as `None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Event>>, D::Error> {
    Ok(Some(Option::deserialize(deserializer)?))
}

impl Run {
    /// The event that started the run (`None` for a run started without one).
    pub fn trigger(&self) -> Option<&Event> {
        match &self.trigger {
            Some(trigger) => trigger.as_ref(),
            None => self.event.as_ref(),
        }
    }

    /// Makes `event` the run's latest event, keeping the trigger it replaces.
    pub fn replace_event(&mut self, event: &Event) {
        if self.trigger.is_none() {
            self.trigger = Some(self.event.take());
        }
        self.event = Some(event.clone());
    }

    pub fn new(id: RunId, workflow: &Workflow, version: u32, subject_id: impl Into<String>, now: Timestamp) -> Run {
        Run {
            id,
            workflow_id: workflow.id.clone(),
            version,
            subject_id: subject_id.into(),
            status: RunStatus::Active,
            started_at: now,
            ended_at: None,
            tokens: Vec::new(),
            timers: Vec::new(),
            outputs: Value::Object(serde_json::Map::new()),
            event: None,
            trigger: None,
            last_event_at: None,
            sequence: 0,
            parent: None,
        }
    }

    pub fn is_active(&self) -> bool {
        self.status == RunStatus::Active
    }

    /// The steps this run's tokens stand at.
    pub fn current_steps(&self) -> impl Iterator<Item = StepIndex> + '_ {
        self.tokens.iter().map(|t| t.at)
    }
}

/// One path of control through the workflow; a run has several only inside a `parallel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: u32,
    pub at: StepIndex,
    pub state: TokenState,
    /// When the token arrived at `at`.
    pub entered_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenState {
    /// Waiting on a timer: a `wait` for time, a message held by quiet hours (`quiet_hold`:
    /// it is sent when the timer fires), or held by a frequency cap (`cap_hold`: the step runs
    /// again when the timer fires, quiet hours and caps checked anew).
    Sleeping {
        timer: TimerId,
        quiet_hold: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cap_hold: bool,
    },
    /// Waiting for an event, with an optional timeout timer.
    AwaitingEvent { timeout: Option<TimerId> },
    /// Waiting for a person to complete a task.
    AwaitingTask { due: Option<TimerId> },
    /// Waiting for approval decisions.
    AwaitingApproval(Box<ApprovalState>),
    /// Waiting for a child run to end.
    AwaitingSubflow,
    /// Arrived at a `join`, waiting for the other branches.
    Joined,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalState {
    /// Rounds start at 1; a rejection that loops back starts a fresh round.
    pub round: u32,
    /// For sequential approvals, the position of the approver being asked.
    pub stage: u16,
    /// Decisions of this round, by role.
    pub decisions: Vec<(String, Decision)>,
    /// After a `reassign` escalation, this role decides for anyone who has not.
    pub delegate: Option<String>,
    pub timers: Vec<TimerId>,
    /// Who gave this round's decisions, in order (for `distinct_approvers`). Runs stored
    /// before it was kept read it as empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deciders: Vec<String>,
    /// Escalations of the stage being asked so far, which says how far up the escalation
    /// chain the next goes. Runs stored before chains read it as 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub escalations: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why `person` may not decide the approval at `at` now under separation of duties, or `None`
/// when they may. An author — whoever completed the work under review, the task completed last
/// before the approval — never decides it unless the approval says `allow_self_approval: true`;
/// one person decides at most one stage of a round unless it says `distinct_approvers: false`,
/// except the delegate an escalation handed the open decisions to (`as_delegate`), who decides
/// in the others' place. People are compared without regard to ASCII case (email addresses).
pub fn separation_of_duties(
    workflow: &Workflow,
    run: &Run,
    at: StepIndex,
    state: &ApprovalState,
    person: &str,
    as_delegate: bool,
) -> Option<String> {
    let step = workflow.step(at);
    let StepKind::Approval(approval) = &step.kind else { return None };
    if !approval.allow_self_approval
        && let Some(task) = reviewed_work(workflow, run, at).into_iter().find(|c| c.by.eq_ignore_ascii_case(person))
    {
        return Some(format!(
            "{person} completed `{}`, the work `{}` reviews, and may not approve their own work \
             (separation of duties; the approval may say `allow_self_approval: true`)",
            task.step, step.id
        ));
    }
    if approval.distinct_approvers && !as_delegate && state.deciders.iter().any(|d| d.eq_ignore_ascii_case(person)) {
        return Some(format!(
            "{person} has already decided a stage of round {} of `{}`; another person must decide this one \
             (separation of duties; the approval may say `distinct_approvers: false`)",
            state.round, step.id
        ));
    }
    None
}

/// A task of the run as its output records it: who completed it and when.
struct Completion<'a> {
    index: usize,
    step: &'a str,
    by: &'a str,
    at: Option<u64>,
}

/// The work the approval at `at` reviews: the task completed last (at the same millisecond,
/// the one nearest before the approval). Runs stored before completions carried their time
/// give every completed task.
fn reviewed_work<'a>(workflow: &'a Workflow, run: &'a Run, at: StepIndex) -> Vec<Completion<'a>> {
    let completed: Vec<Completion> = workflow
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.kind, StepKind::Task(_)))
        .filter_map(|(index, task)| {
            let output = run.outputs.get(&*task.id)?;
            let by = output.get("completed_by").and_then(Value::as_str)?;
            Some(Completion { index, step: &task.id, by, at: output.get("completed_at").and_then(Value::as_u64) })
        })
        .collect();
    if completed.iter().any(|c| c.at.is_none()) {
        return completed;
    }
    let before = usize::from(at.0);
    completed.into_iter().max_by_key(|c| (c.at, c.index < before, c.index)).into_iter().collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    ApproveWithChanges,
    RequestChanges,
    Reject,
}

impl Decision {
    pub fn approves(self) -> bool {
        matches!(self, Decision::Approve | Decision::ApproveWithChanges)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmedTimer {
    pub id: TimerId,
    pub token: u32,
    pub purpose: TimerPurpose,
    pub due_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerPurpose {
    /// Wake a sleeping token (a wait for time, or the end of quiet hours).
    Wake,
    /// Give up waiting for an event.
    EventTimeout,
    /// A task passed its due time.
    TaskDue,
    /// Remind approvers who have not decided.
    ApprovalReminder,
    /// Escalate an approval nobody decided in time.
    ApprovalEscalation,
}

/// An inbound fact about a subject (Segment shapes, or internal ones like `task.completed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `messageId`: deduplicates.
    pub id: String,
    /// The event's name (`track` events) or type (`identify`, `page`, …).
    pub name: String,
    pub at: Timestamp,
    /// The whole event as JSON, readable as `event` in conditions (`event.properties.x`).
    /// Shared: a run, the subject's recent events and a wait may all hold the same event.
    pub payload: Arc<Value>,
}

/// What can happen to a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// The run begins, optionally because of an event.
    Start {
        event: Option<Event>,
    },
    Event {
        event: Event,
    },
    TimerFired {
        timer: TimerId,
    },
    /// The outbox reports what became of an effect.
    EffectCompleted {
        key: String,
        ok: bool,
        detail: Option<String>,
    },
    TaskCompleted {
        step: String,
        by: String,
        fields: serde_json::Map<String, Value>,
        /// The service token `by` acted through, when one acted for them (a token bound to a
        /// person, or the web UI, acts as its person: `None`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    ApprovalDecided {
        step: String,
        role: String,
        by: String,
        decision: Decision,
        comment: Option<String>,
        /// As for `TaskCompleted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    SubflowEnded {
        step: String,
        status: RunStatus,
    },
    /// Work at a task or approval step was claimed, released (`to: None`) or reassigned.
    /// It changes who may act, not the run's state; it is recorded in the history.
    WorkAssigned {
        step: String,
        to: Option<String>,
        by: String,
    },
    /// Someone sends a completed task back: the run leaves what it waits on (its timers
    /// cancelled, its open work withdrawn) and enters the `task` step `step` again. Refused
    /// inside a `parallel` (more than one token) and while a subflow is awaited.
    Reopen {
        step: String,
        by: String,
        reason: Option<String>,
    },
    /// A new version of the item's deliverable: every approval the run waits on starts a new
    /// round, and the decisions already given on the old version no longer count.
    DeliverableUpdated {
        by: String,
        version: Option<String>,
    },
    Cancel {
        reason: String,
    },
}

impl Input {
    pub fn name(&self) -> &'static str {
        match self {
            Input::Start { .. } => "start",
            Input::Event { .. } => "event",
            Input::TimerFired { .. } => "timer_fired",
            Input::EffectCompleted { .. } => "effect_completed",
            Input::TaskCompleted { .. } => "task_completed",
            Input::ApprovalDecided { .. } => "approval_decided",
            Input::SubflowEnded { .. } => "subflow_ended",
            Input::WorkAssigned { .. } => "work_assigned",
            Input::Reopen { .. } => "reopen",
            Input::DeliverableUpdated { .. } => "deliverable_updated",
            Input::Cancel { .. } => "cancel",
        }
    }
}

/// A message sent to the subject, as the shell remembers it for frequency caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub channel: Channel,
    pub at: Timestamp,
}

/// Stored facts the shell loads before calling `handle`.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The contact's traits (with `scores`) or the item's fields.
    pub subject: &'a Value,
    /// The subject's own time zone, when known.
    pub timezone: Option<chrono_tz::Tz>,
    /// The subject's recent events, newest last, for the wait look-back.
    pub recent_events: &'a [Event],
    /// Messages recently sent to the subject, for frequency caps.
    pub sent: &'a [Sent],
    /// Workspace variables, readable as `env` in templates.
    pub env: &'a Value,
}

static NULL: Value = Value::Null;

impl Facts<'_> {
    pub fn empty() -> Facts<'static> {
        Facts { subject: &NULL, timezone: None, recent_events: &[], sent: &[], env: &NULL }
    }
}

/// The trait that records an unsubscribe (or a hard bounce, a complaint): `true` means no
/// marketing email, ever; `suppressed_reason` says why.
pub const UNSUBSCRIBED_TRAIT: &str = "unsubscribed";
pub const SUPPRESSED_REASON_TRAIT: &str = "suppressed_reason";
/// The trait that holds consent per channel: `{"email": false}` withdraws it for email.
pub const CONSENT_TRAIT: &str = "consent";

/// Why a marketing message on `channel` may not go to a subject with this data, if it may
/// not: an email to a suppressed contact, or any channel whose consent is `false`. Checked
/// when the step runs (the run's history says so) and again when the message is about to
/// go (it may have been queued before).
pub fn refusal(subject: &Value, channel: Channel) -> Option<String> {
    use crate::expr::field;
    if channel == Channel::Email && field(subject, UNSUBSCRIBED_TRAIT) == Some(&Value::Bool(true)) {
        let reason = field(subject, SUPPRESSED_REASON_TRAIT).and_then(Value::as_str).unwrap_or("unsubscribed");
        return Some(format!("suppressed: the contact is {reason}"));
    }
    if field(subject, CONSENT_TRAIT).and_then(|c| field(c, channel.as_str())) == Some(&Value::Bool(false)) {
        return Some(format!("no consent: `contact.consent.{}` is false", channel.as_str()));
    }
    None
}

/// What `handle` decided.
#[must_use]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub run: Run,
    pub history: Vec<HistoryEntry>,
    pub effects: Vec<Effect>,
    pub timers: Vec<TimerRequest>,
    pub timers_cancelled: Vec<TimerId>,
    pub decisions: Vec<DecisionRecord>,
    /// Whether `run` may differ from the state `handle` was given. `false` when the input only
    /// added to the history (an effect's result, an input an ended run ignores): a store then
    /// has no need to write the run again.
    #[serde(skip)]
    pub run_changed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimerRequest {
    pub timer: TimerId,
    pub due_at: Timestamp,
    pub purpose: TimerPurpose,
}

/// An outbound intent, performed by the runtime's dispatcher at least once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effect {
    /// Idempotency key: stable across retries and restarts (`<run>-<step>-<n>`).
    pub key: String,
    pub step: Arc<str>,
    pub kind: EffectKind,
}

/// Serialized with its kind as the `effect` tag (`{"effect": "send_message", …}`): the form
/// the outbox keeps, so a tag or field renamed here is a change of the stored format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum EffectKind {
    /// Perform the message action (email, webhook, notification) of the effect's step. The
    /// content is rendered when it is sent, by `render::render_message`, from the subject's
    /// data at that moment and this context: what the run knew when it decided to send.
    SendMessage {
        channel: Channel,
        transactional: bool,
        context: RenderContext,
    },
    Notify {
        to: String,
        message: String,
        reason: NotifyReason,
    },
    AdjustScore {
        model: String,
        change: ScoreChange,
    },
    UpdateSubject {
        set: serde_json::Map<String, Value>,
    },
    CreateTask {
        title: String,
        description: Option<String>,
        raci: Raci,
        due_at: Option<Timestamp>,
    },
    RequestApproval {
        round: u32,
        approvers: Vec<String>,
        due_at: Option<Timestamp>,
    },
    StartRun {
        workflow: String,
        wait: bool,
    },
    RecordConversion {
        goal: String,
        value: Option<f64>,
        currency: Option<String>,
    },
    /// Record an event about the run's subject (`emit`), applied inside Flowmark like one
    /// that arrived: `depth` is its place in a chain of emits (see [`emit_depth`]).
    EmitEvent {
        event: String,
        properties: Value,
        depth: u32,
    },
}

impl EffectKind {
    /// Every kind's `effect` tag, as serialized: what a reader knows how to read back.
    pub const TAGS: [&'static str; 9] = [
        "send_message",
        "notify",
        "adjust_score",
        "update_subject",
        "create_task",
        "request_approval",
        "start_run",
        "record_conversion",
        "emit_event",
    ];

    /// The name the run's history gives the effect (`effect_emitted`): messages by channel.
    pub fn name(&self) -> &'static str {
        match self {
            EffectKind::SendMessage { channel: Channel::Email, .. } => "send_email",
            EffectKind::SendMessage { channel: Channel::Webhook, .. } => "call_webhook",
            EffectKind::SendMessage { .. } => "notify",
            EffectKind::Notify { .. } => "notify",
            EffectKind::AdjustScore { .. } => "adjust_score",
            EffectKind::UpdateSubject { .. } => "update_subject",
            EffectKind::CreateTask { .. } => "create_task",
            EffectKind::RequestApproval { .. } => "request_approval",
            EffectKind::StartRun { .. } => "start_run",
            EffectKind::RecordConversion { .. } => "record_conversion",
            EffectKind::EmitEvent { .. } => "emit_event",
        }
    }
}

/// The run's variables a message reads besides the subject and `env`, captured when the
/// effect is decided; each is present only when the message's templates read it.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct RenderContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// The event that started the run, when the message reads `trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyReason {
    Message,
    TaskOverdue,
    TaskCompleted,
    ApprovalReminder,
    Escalation,
}

/// One line of a run's audit trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Arc<str>>,
    #[serde(flatten)]
    pub kind: HistoryKind,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum HistoryKind {
    RunStarted {
        trigger: Option<String>,
    },
    StepEntered {
        kind: &'static str,
    },
    EffectEmitted {
        key: String,
        effect: &'static str,
    },
    EffectResult {
        key: String,
        ok: bool,
        detail: Option<String>,
        /// When the attempt that gave this result started (the entry's `at` is when it
        /// ended); absent for effects applied inside Flowmark.
        #[serde(skip_serializing_if = "Option::is_none")]
        started: Option<Timestamp>,
        /// Which attempt gave it (1 for the first).
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    Waiting {
        until: Option<Timestamp>,
        reason: &'static str,
    },
    WaitResolved {
        by: &'static str,
    },
    QuietHoursHeld {
        until: Timestamp,
    },
    QuietHoursDropped,
    Capped {
        channel: Channel,
        sent_count: u32,
        max: u32,
    },
    /// A message over its cap, held until the window has room.
    CapHeld {
        channel: Channel,
        sent_count: u32,
        max: u32,
        until: Timestamp,
    },
    /// A marketing message not sent because the contact may not get it (see [`refusal`]).
    NotPermitted {
        channel: Channel,
        reason: String,
    },
    TaskCompleted {
        by: String,
        /// The service token that acted for `by`, if one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// Work at the step was claimed, released (`to: None`) or reassigned, by `by`.
    WorkAssigned {
        to: Option<String>,
        by: String,
    },
    TaskOverdue,
    /// A completed task was sent back to; `from` is where the run stood.
    TaskReopened {
        by: String,
        reason: Option<String>,
        from: String,
    },
    /// A new version of the deliverable voided this approval's decisions; a new round starts.
    ApprovalReset {
        by: String,
        version: Option<String>,
        decisions: usize,
    },
    ApprovalDecision {
        role: String,
        by: String,
        decision: Decision,
        comment: Option<String>,
        /// The service token that acted for `by`, if one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    ApprovalResolved {
        outcome: &'static str,
        round: u32,
    },
    ApprovalReminded,
    ApprovalEscalated {
        to: String,
        action: &'static str,
    },
    StepFailed {
        error: String,
    },
    GoalReached {
        goal: String,
        value: Option<f64>,
    },
    InputIgnored {
        input: &'static str,
        reason: String,
    },
    RunEnded {
        status: RunStatus,
        reason: Option<String>,
    },
}

/// Why a branch, split, wait or goal went the way it did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub at: Timestamp,
    pub step: Option<Arc<str>>,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// The values the expression read, by dotted path.
    pub inputs: BTreeMap<String, Value>,
    pub result: Value,
    /// Where control went: a step id, `end`, or an outcome.
    pub path: Option<String>,
    /// What a person should know about how the expression read its inputs (a number compared
    /// with a string, which is never equal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The step named by effects and history entries that belong to the whole run (a conversion
/// by a workflow-level goal): not a valid step id, so it never collides with one.
pub const RUN_LEVEL_STEP: &str = "_run";

/// The idempotency key of the `n`-th effect of a run, emitted at `step`: `<run>-<step>-<n>`.
pub fn effect_key(run: RunId, step: &str, n: u32) -> String {
    let (mut run_digits, mut n_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (run, n) = (run_digits.format(run.0), n_digits.format(n));
    let mut key = String::with_capacity(run.len() + step.len() + n.len() + 2);
    for part in [run, "-", step, "-", n] {
        key.push_str(part);
    }
    key
}

/// The steps `run` can execute when `timer` fires, marked by index: where the timer sends
/// its token and everything reachable from there (as `Machine::timer` moves it); none when
/// the timer moves no token (it is no longer armed, or it only reminds people). The runtime
/// loads only the facts these steps can read.
pub fn timer_reach(workflow: &Workflow, run: &Run, timer: TimerId) -> Vec<bool> {
    use crate::model::{StepKind, Target, Wait};
    let armed = run.timers.iter().find(|t| t.id == timer);
    let token = armed.and_then(|armed| run.tokens.iter().find(|t| t.id == armed.token).map(|t| (armed, t)));
    let Some((armed, token)) = token else { return vec![false; workflow.steps.len()] };
    let step = workflow.step(token.at);
    let from = match armed.purpose {
        TimerPurpose::Wake => match token.state {
            TokenState::Sleeping { quiet_hold: true, .. } | TokenState::Sleeping { cap_hold: true, .. } => {
                Some(Target::Step(token.at))
            }
            TokenState::Sleeping { .. } => Some(step.next.unwrap_or(Target::End)),
            _ => None,
        },
        TimerPurpose::EventTimeout => match &step.kind {
            StepKind::Wait(Wait::Event { on_timeout, .. }) => Some(on_timeout.or(step.next).unwrap_or(Target::End)),
            _ => None,
        },
        TimerPurpose::TaskDue | TimerPurpose::ApprovalReminder => None,
        TimerPurpose::ApprovalEscalation => Some(Target::Step(token.at)),
    };
    let start = match from {
        Some(Target::Step(step)) => Some(step),
        Some(Target::End) | None => None,
    };
    workflow.reachable_from(start)
}

/// Decides what `input` does to `run` at `now`. See the module docs.
pub fn handle(workflow: &Workflow, run: Run, input: &Input, facts: &Facts<'_>, now: Timestamp) -> Transition {
    assert_eq!(run.workflow_id, workflow.id, "a run is handled by its own workflow");
    machine::Machine::new(workflow, run, facts, now).handle(input)
}

/// The entry an effect's result adds to its run's history: `Input::EffectCompleted` gives
/// exactly this, and nothing else, whatever the run's state (no step waits for a result).
/// So the runtime may record a result without loading the run, from its id and workflow.
pub fn effect_result(
    workflow: &Workflow,
    run: RunId,
    key: &str,
    ok: bool,
    detail: Option<String>,
    now: Timestamp,
) -> HistoryEntry {
    result_entry(workflow, run, key, ok, detail, now, None)
}

/// The entry of an effect's result at `at`, with the attempt that gave it when a connector
/// performed it.
fn result_entry(
    workflow: &Workflow,
    run: RunId,
    key: &str,
    ok: bool,
    detail: Option<String>,
    at: Timestamp,
    timing: Option<EffectTiming>,
) -> HistoryEntry {
    // The key is `<run>-<step>-<n>` (`effect_key`); the step is named when it still exists.
    let mut digits = itoa::Buffer::new();
    let step = key
        .strip_prefix(digits.format(run.0))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.rsplit_once('-'))
        .and_then(|(step, _)| workflow.step_index(step))
        .map(|at| workflow.step(at).id.clone());
    let (started, attempt) = (timing.map(|t| t.started), timing.map(|t| t.attempt));
    HistoryEntry { at, step, kind: HistoryKind::EffectResult { key: key.to_owned(), ok, detail, started, attempt } }
}

/// When and on which attempt a performed effect's result came: a connector's attempt, timed
/// as it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectTiming {
    pub started: Timestamp,
    pub ended: Timestamp,
    pub attempt: u32,
}

/// `effect_result` for an attempt a connector performed: the entry is at the attempt's end
/// and says when it started and which attempt it was.
pub fn timed_effect_result(
    workflow: &Workflow,
    run: RunId,
    key: &str,
    ok: bool,
    detail: Option<String>,
    timing: EffectTiming,
) -> HistoryEntry {
    result_entry(workflow, run, key, ok, detail, timing.ended, Some(timing))
}

/// Applies a score change to a subject's data (`scores.<model>`): what the runtime's
/// dispatcher and the simulator both do with an `AdjustScore` effect.
pub fn apply_score(subject: &mut Value, model: &str, change: ScoreChange) {
    let data = object_mut(subject);
    let scores = object_mut(data.entry("scores").or_insert(Value::Null));
    let current = scores.get(model).and_then(Value::as_f64).unwrap_or(0.0);
    let next = match change {
        ScoreChange::Add(delta) => current + delta,
        ScoreChange::Set(value) => value,
    };
    scores.insert(model.to_owned(), json_number(next));
}

/// The id of the event an `emit` records: one per effect, so applying the effect again (a
/// unit retried, the dispatcher after a crash) records the event once.
pub fn emitted_event_id(effect_key: &str) -> String {
    format!("emitted:{effect_key}")
}

/// How deep in a chain of emits an event is: 0 for one that came from outside, and one more
/// than the event the emitting run was handling for one a run emitted.
pub fn emit_depth(event: &Event) -> u32 {
    event
        .payload
        .pointer("/context/flowmark/emit_depth")
        .and_then(Value::as_u64)
        .map_or(0, |depth| u32::try_from(depth).unwrap_or(u32::MAX))
}

/// The event an `EmitEvent` effect records for the subject of run `run_id` (of workflow
/// `workflow_id`): a `track` event whose `context.flowmark` says which run and step emitted
/// it and how deep in a chain of emits it is. `None` for any other kind of effect.
pub fn emitted_event(
    run_id: RunId,
    workflow_id: &str,
    subject_id: &str,
    effect: &Effect,
    at: Timestamp,
) -> Option<Event> {
    let EffectKind::EmitEvent { event, properties, depth } = &effect.kind else { return None };
    let id = emitted_event_id(&effect.key);
    let payload = serde_json::json!({
        "type": "track",
        "event": event,
        "userId": subject_id,
        "messageId": id,
        "timestamp": at.rfc3339(),
        "properties": properties,
        "context": {
            "flowmark": {
                "emitted_by": { "workflow": workflow_id, "run": run_id.0, "step": &*effect.step },
                "emit_depth": depth,
            },
        },
    });
    Some(Event { id, name: event.clone(), at, payload: Arc::new(payload) })
}

/// Sets fields of a subject's data: what an `UpdateSubject` effect does.
pub fn apply_update(subject: &mut Value, set: &serde_json::Map<String, Value>) {
    let data = object_mut(subject);
    for (field, value) in set {
        data.insert(field.clone(), value.clone());
    }
}

fn object_mut(value: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(serde_json::Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// A number as JSON: whole numbers stay integers, so `score >= 50` compares as ints.
pub fn json_number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

/// The deterministic bucket of a subject in a split: FNV-1a over (workflow, step, subject).
/// Written out here because it must never change between releases: a re-run lands on the
/// same side.
pub fn split_bucket(workflow_id: &str, step_id: &str, subject_id: &str, total: u32) -> u32 {
    assert!(total > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [workflow_id, step_id, subject_id] {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Final avalanche so nearby ids spread evenly.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    (hash % u64::from(total)) as u32
}

pub(crate) fn duration_ms_i64(d: Duration) -> i64 {
    i64::try_from(d.ms()).unwrap_or(i64::MAX)
}
