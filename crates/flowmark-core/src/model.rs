//! The compiled workflow: what a definition means once it has parsed and validated.
//!
//! Steps live in one `Vec`, addressed by `StepIndex`; every target is resolved to an index,
//! every condition compiled, every template parsed. The run state machine reads only this.
//!
//! Invariant: a `Workflow` is only built by `parse::compile` from a definition without errors,
//! so every `StepIndex` in it is in bounds and every `Target::Step` names a step.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::expr::Condition;
use crate::template::Template;
use crate::time::Duration;

/// Position of a step in `Workflow::steps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StepIndex(pub u16);

impl StepIndex {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Contact,
    Item,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Contact => "contact",
            SubjectKind::Item => "item",
        }
    }
}

/// Where control goes after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Step(StepIndex),
    /// The run completes (no conversion).
    End,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub subject: SubjectKind,
    pub triggers: Vec<Trigger>,
    pub entry: Entry,
    pub goals: Vec<Goal>,
    pub exits: Vec<ExitRule>,
    pub quiet_hours: Option<QuietHours>,
    pub caps: Vec<Cap>,
    /// The workspace's time zone as this workflow sees it (IANA); `UTC` when not set.
    pub timezone: chrono_tz::Tz,
    /// The days that count for `business_days` deadlines, in `timezone`.
    pub working_days: WorkingDays,
    pub roles: BTreeMap<String, RoleBinding>,
    pub steps: Vec<Step>,
}

/// The working calendar business-day deadlines count in: which weekdays are worked and which
/// dates are holidays. Weekdays are never empty (validation refuses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingDays {
    pub weekdays: Vec<chrono::Weekday>,
    /// Sorted, without duplicates.
    pub holidays: Vec<chrono::NaiveDate>,
}

impl Default for WorkingDays {
    /// Monday to Friday, no holidays.
    fn default() -> Self {
        use chrono::Weekday::{Fri, Mon, Thu, Tue, Wed};
        WorkingDays { weekdays: vec![Mon, Tue, Wed, Thu, Fri], holidays: Vec::new() }
    }
}

impl WorkingDays {
    pub fn is_working(&self, date: chrono::NaiveDate) -> bool {
        use chrono::Datelike;
        self.weekdays.contains(&date.weekday()) && self.holidays.binary_search(&date).is_err()
    }
}

impl Workflow {
    pub fn step(&self, index: StepIndex) -> &Step {
        &self.steps[index.index()]
    }

    /// Does running this workflow read the subject's recent events (`Facts::recent_events`:
    /// an event wait looks back over them)? The runtime loads them only then.
    pub fn reads_recent_events(&self) -> bool {
        self.waited_events().next().is_some()
    }

    /// The names of the events this workflow's waits listen for: the only recent events a
    /// wait's look-back can match, so the only ones the runtime needs to load.
    pub fn waited_events(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|s| match &s.kind {
            StepKind::Wait(Wait::Event { name, .. }) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Does running this workflow read the messages sent to the subject (`Facts::sent`: a
    /// frequency cap counts them)? The runtime loads them only then.
    pub fn reads_sent_messages(&self) -> bool {
        !self.caps.is_empty()
    }

    /// Every step control can reach from `from` (those steps included) along any edge,
    /// marked by index: all a run standing there may still execute.
    pub fn reachable_from(&self, from: impl IntoIterator<Item = StepIndex>) -> Vec<bool> {
        let mut seen = vec![false; self.steps.len()];
        let mut stack: Vec<usize> = Vec::new();
        for step in from {
            if let Some(mark) = seen.get_mut(step.index())
                && !*mark
            {
                *mark = true;
                stack.push(step.index());
            }
        }
        while let Some(index) = stack.pop() {
            for edge in self.steps[index].edges() {
                if let Target::Step(next) = edge.target
                    && !seen[next.index()]
                {
                    seen[next.index()] = true;
                    stack.push(next.index());
                }
            }
        }
        seen
    }

    pub fn step_index(&self, id: &str) -> Option<StepIndex> {
        self.steps.iter().position(|s| &*s.id == id).map(|i| StepIndex(i as u16))
    }
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Event {
        name: String,
        filter: Option<Condition>,
    },
    Schedule {
        cron: String,
        timezone: chrono_tz::Tz,
    },
    Manual,
    /// Starts when a run of another workflow ends with the given outcome.
    Workflow {
        id: String,
        outcome: RunOutcomeFilter,
    },
    /// Starts when the subject enters (or leaves) a named segment.
    Segment {
        name: String,
        on: SegmentEdge,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcomeFilter {
    Completed,
    Converted,
    Exited,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentEdge {
    Enter,
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A subject runs through this workflow at most once, ever.
    Never,
    /// A subject may start again whenever a trigger fires, even while a run is active.
    Always,
    /// A subject may start again once its last run ended at least this long ago.
    After(Duration),
}

/// A conversion: reaching it ends the run from any step and records the value.
#[derive(Debug, Clone)]
pub struct Goal {
    pub name: String,
    pub event: String,
    pub filter: Option<Condition>,
    pub value: Option<f64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExitRule {
    pub event: String,
    pub filter: Option<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimezoneSource {
    /// The contact's own time zone, or the workflow's when the contact has none.
    Subject,
    /// The workflow's (workspace's) time zone.
    Workspace,
    Fixed(chrono_tz::Tz),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuietAction {
    /// Hold the message until the window opens.
    Delay,
    /// Skip the message and go on.
    Drop,
}

/// A daily window in which messages to people are held back; `from > to` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from_minute: u16,
    pub to_minute: u16,
    pub timezone: TimezoneSource,
    pub action: QuietAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Webhook,
    Notify,
}

impl Channel {
    pub const ALL: [Channel; 5] = [Channel::Email, Channel::Sms, Channel::Push, Channel::Webhook, Channel::Notify];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
            Channel::Notify => "notify",
        }
    }
}

/// At most `max` messages on `channel` to one subject within any `per` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub channel: Channel,
    pub max: u32,
    pub per: Duration,
    pub action: CapAction,
}

/// What happens to a message over its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapAction {
    /// Skip it and go on (the default).
    Skip,
    /// Hold the run at the step until the window has room, then try again.
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleBinding {
    Person(String),
    Team(String),
}

#[derive(Debug, Clone)]
pub struct Step {
    /// Shared: histories, decisions and effects all name the step, and cloning is a count.
    pub id: std::sync::Arc<str>,
    pub name: Option<String>,
    pub kind: StepKind,
    /// Where control goes when the step is done; `None` for steps that route themselves.
    pub next: Option<Target>,
}

impl Step {
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Does a token stop at this step until something from outside happens?
    pub fn blocks(&self) -> bool {
        match &self.kind {
            StepKind::Wait(_) | StepKind::Task(_) | StepKind::Approval(_) | StepKind::Join(_) => true,
            StepKind::Subflow(s) => s.wait,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Action(Action),
    Task(Task),
    Approval(Approval),
    Wait(Wait),
    Branch(Branch),
    Split(Split),
    Parallel(Parallel),
    Join(JoinMode),
    Goal(GoalStep),
    Exit(ExitStep),
    Subflow(Subflow),
}

impl StepKind {
    pub const NAMES: [&'static str; 11] =
        ["action", "task", "approval", "wait", "branch", "split", "parallel", "join", "goal", "exit", "subflow"];

    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Action(_) => "action",
            StepKind::Task(_) => "task",
            StepKind::Approval(_) => "approval",
            StepKind::Wait(_) => "wait",
            StepKind::Branch(_) => "branch",
            StepKind::Split(_) => "split",
            StepKind::Parallel(_) => "parallel",
            StepKind::Join(_) => "join",
            StepKind::Goal(_) => "goal",
            StepKind::Exit(_) => "exit",
            StepKind::Subflow(_) => "subflow",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Email(Email),
    Webhook(Webhook),
    Notify(Notify),
    Score(Score),
    Update(Update),
    Emit(Emit),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Email(_) => "email",
            Action::Webhook(_) => "webhook",
            Action::Notify(_) => "notify",
            Action::Score(_) => "score",
            Action::Update(_) => "update",
            Action::Emit(_) => "emit",
        }
    }

    /// Every template of this action, to know which variables rendering it reads.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.each_template(&mut |t| {
            out.push(t);
            false
        });
        out
    }

    /// Whether any of the action's templates satisfies `test`; stops at the first that does.
    pub fn any_template(&self, mut test: impl FnMut(&Template) -> bool) -> bool {
        self.each_template(&mut test)
    }

    /// Calls `visit` on each template until it returns `true`; says whether one did.
    fn each_template<'t>(&'t self, visit: &mut dyn FnMut(&'t Template) -> bool) -> bool {
        fn walk<'t>(value: &'t TemplateValue, visit: &mut dyn FnMut(&'t Template) -> bool) -> bool {
            match value {
                TemplateValue::Literal(_) => false,
                TemplateValue::Text(t) => visit(t),
                TemplateValue::List(items) => items.iter().any(|i| walk(i, visit)),
                TemplateValue::Map(entries) => entries.iter().any(|(_, v)| walk(v, visit)),
            }
        }
        match self {
            Action::Email(e) => [&e.subject, &e.html, &e.text].into_iter().flatten().any(&mut *visit),
            Action::Webhook(w) => {
                visit(&w.url)
                    || w.headers.iter().any(|(_, t)| visit(t))
                    || w.body.as_ref().is_some_and(|body| walk(body, visit))
            }
            Action::Notify(n) => visit(&n.message),
            Action::Update(u) => u.set.iter().any(|(_, v)| walk(v, visit)),
            Action::Emit(e) => e.properties.as_ref().is_some_and(|p| walk(p, visit)),
            Action::Score(_) => false,
        }
    }

    /// The channel a message of this action goes out on, for caps and quiet hours.
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Action::Email(_) => Some(Channel::Email),
            Action::Webhook(_) => Some(Channel::Webhook),
            Action::Notify(_) => Some(Channel::Notify),
            Action::Score(_) | Action::Update(_) | Action::Emit(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Email {
    /// A stored template's id; the subject and bodies below override its parts.
    pub template: Option<String>,
    pub subject: Option<Template>,
    pub html: Option<Template>,
    pub text: Option<Template>,
    pub from: Option<String>,
    /// Transactional mail ignores quiet hours and caps (receipts, password resets).
    pub transactional: bool,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Template,
    pub method: String,
    pub headers: Vec<(String, Template)>,
    /// JSON body whose string leaves are Liquid templates.
    pub body: Option<TemplateValue>,
}

/// A JSON value whose strings are templates, rendered leaf by leaf.
#[derive(Debug, Clone)]
pub enum TemplateValue {
    Literal(serde_json::Value),
    Text(Template),
    List(Vec<TemplateValue>),
    Map(Vec<(String, TemplateValue)>),
}

#[derive(Debug, Clone)]
pub struct Notify {
    /// A role name or a person's email.
    pub to: String,
    pub message: Template,
}

#[derive(Debug, Clone)]
pub struct Score {
    pub model: String,
    pub change: ScoreChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreChange {
    Add(f64),
    Set(f64),
}

#[derive(Debug, Clone)]
pub struct Update {
    pub set: Vec<(String, TemplateValue)>,
}

/// Record an event about the subject, as if it had arrived: it starts workflows, satisfies
/// waits and moves scores and segments, in the same unit of work as the step.
#[derive(Debug, Clone)]
pub struct Emit {
    /// The event's name (`Lead Qualified`).
    pub event: String,
    /// Its properties, a mapping whose string leaves are Liquid templates.
    pub properties: Option<TemplateValue>,
}

/// RACI on a task or approval. Exactly one accountable role; at least one responsible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Raci {
    pub responsible: Vec<String>,
    pub accountable: String,
    pub consulted: Vec<String>,
    pub informed: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub title: Template,
    pub description: Option<Template>,
    pub raci: Raci,
    pub due: Option<Duration>,
    /// `due` counts only working days (`Workflow::working_days`) in the workflow's zone.
    pub business_days: bool,
    pub fields: Vec<FormField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormField {
    pub name: String,
    pub kind: FieldKind,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    Text,
    Number,
    Bool,
    Url,
    Date,
    Checkbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    /// The first decision decides.
    Single,
    /// Everyone at once; the quorum decides.
    Parallel,
    /// One approver after another, in order; any rejection ends the round.
    Sequential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    All,
    Any,
    Count(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationAction {
    /// Tell the escalation target; the approval stays open.
    Notify,
    /// Hand the open decisions to the escalation target.
    Reassign,
    AutoApprove,
    AutoReject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub after: Duration,
    /// Escalate again this often while the request is still undecided (`notify` and
    /// `reassign`; `auto_approve` and `auto_reject` end the round the first time).
    pub every: Option<Duration>,
    /// Who each escalation goes to, in turn: role names, `accountable` for the step's
    /// accountable role, or people's emails. The first escalation goes to the first, each
    /// repeat (`every`) one further up the chain, staying with the last.
    pub to: Vec<String>,
    pub action: EscalationAction,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub mode: ApprovalMode,
    pub quorum: Quorum,
    /// Roles whose decision is asked for, in order (the order matters for `sequential`).
    pub approvers: Vec<String>,
    pub accountable: Option<String>,
    pub due: Option<Duration>,
    /// Reminders, each this long after the request while no decision has come.
    pub remind: Vec<Duration>,
    /// A reminder this often while no decision has come (`remind: { every: 1d }`), from the
    /// request on, until the request is decided (or its stage is, in a sequential approval).
    pub remind_every: Option<Duration>,
    pub escalate: Option<Escalation>,
    /// `due`, `remind` and `escalate.after` count only working days in the workflow's zone.
    pub business_days: bool,
    /// Where a rejection goes; `None` ends the run as exited.
    pub on_reject: Option<Target>,
    /// Where a request for changes goes; defaults to `on_reject`.
    pub on_changes: Option<Target>,
    /// Whoever completed the work under review (the task completed last before the approval)
    /// may decide it too.
    /// Off by default: an author never approves their own work.
    pub allow_self_approval: bool,
    /// One person may decide only one stage (or one approver role) of a round. On by default.
    pub distinct_approvers: bool,
}

impl Approval {
    /// Approvals needed for the approval to pass.
    pub fn approvals_needed(&self) -> usize {
        match (self.mode, self.quorum) {
            (ApprovalMode::Single, _) => 1,
            (ApprovalMode::Sequential, _) | (_, Quorum::All) => self.approvers.len(),
            (_, Quorum::Any) => 1,
            (_, Quorum::Count(n)) => usize::from(n),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Wait {
    /// A fixed span of elapsed time.
    Duration(Duration),
    /// The next time of day (minute of day) in a time zone, optionally on given weekdays.
    TimeOfDay { minute: u16, timezone: TimezoneSource, weekdays: Vec<chrono::Weekday> },
    /// A fixed instant.
    Until(crate::time::Timestamp),
    /// An event for the subject matching a filter, with an optional timeout.
    Event { name: String, filter: Option<Condition>, timeout: Option<Duration>, on_timeout: Option<Target> },
}

#[derive(Debug, Clone)]
pub struct Branch {
    pub arms: Vec<BranchArm>,
    pub otherwise: Target,
}

#[derive(Debug, Clone)]
pub struct BranchArm {
    pub when: Condition,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub arms: Vec<SplitArm>,
}

#[derive(Debug, Clone)]
pub struct SplitArm {
    pub name: String,
    pub weight: u32,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub struct Parallel {
    pub branches: Vec<StepIndex>,
    /// The join every branch reaches; found by validation.
    pub join: StepIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// Continue once every branch has arrived.
    All,
    /// Continue with the first branch to arrive; cancel the others.
    Any,
}

#[derive(Debug, Clone)]
pub struct GoalStep {
    pub name: String,
    pub value: Option<f64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExitStep {
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Subflow {
    pub workflow: String,
    /// Wait for the child run to end before going on.
    pub wait: bool,
}

/// One arrow of the workflow graph, as validation, rendering and the simulator see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub target: Target,
    /// Shown on the arrow: a condition, an outcome, a split arm.
    pub label: Option<String>,
}

impl Step {
    /// Every place control can go from this step.
    pub fn edges(&self) -> Vec<Edge> {
        let plain = |target: Target| Edge { target, label: None };
        let labeled = |target: Target, label: String| Edge { target, label: Some(label) };
        let mut edges = Vec::new();
        match &self.kind {
            StepKind::Branch(b) => {
                edges.extend(b.arms.iter().map(|a| labeled(a.target, a.when.source().to_owned())));
                edges.push(labeled(b.otherwise, "otherwise".to_owned()));
            }
            StepKind::Split(s) => {
                let total: u32 = s.arms.iter().map(|a| a.weight).sum();
                edges.extend(s.arms.iter().map(|a| {
                    let percent = f64::from(a.weight) * 100.0 / f64::from(total.max(1));
                    labeled(a.target, format!("{} {percent:.0}%", a.name))
                }));
            }
            StepKind::Parallel(p) => edges.extend(p.branches.iter().map(|b| plain(Target::Step(*b)))),
            StepKind::Goal(_) | StepKind::Exit(_) => {}
            StepKind::Wait(Wait::Event { timeout: Some(_), on_timeout: Some(t), .. }) => {
                edges.extend(self.next.map(|n| labeled(n, "event".to_owned())));
                edges.push(labeled(*t, "timeout".to_owned()));
            }
            StepKind::Approval(a) => {
                edges.extend(self.next.map(|n| labeled(n, "approved".to_owned())));
                if let Some(t) = a.on_reject {
                    edges.push(labeled(t, "rejected".to_owned()));
                }
                if let Some(t) = a.on_changes {
                    edges.push(labeled(t, "changes requested".to_owned()));
                }
            }
            _ => edges.extend(self.next.map(plain)),
        }
        edges
    }
}
