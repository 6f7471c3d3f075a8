//! The work projection: what a transition of a run changes in people's inboxes.
//!
//! A `task` step's `create_task` effect opens one work item for its responsible roles; an
//! `approval` step's `request_approval` effect opens one per approver role asked. After every
//! transition, the run's open items that its state no longer waits on close — with the
//! outcome the history records (`completed`, the decision) or `withdrawn` / `cancelled`.
//!
//! Invariant: the changes are a pure function of the workflow, the transition, the subject's
//! data, the directory and `now`; the runtime writes them in the transition's own batch, so
//! an inbox never shows work a committed run no longer waits for, nor misses work it does.

use flowmark_core::Timestamp;
use flowmark_core::engine::{EffectKind, HistoryKind, TokenState, Transition};
use flowmark_core::model::{ApprovalMode, StepKind, Workflow};
use flowmark_store::{WorkChange, WorkItem, WorkKind};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::directory::Directory;

/// What a path segment keeps unescaped: RFC 3986's unreserved characters, and `:` and `@`
/// (work ids and emails stay readable in links).
const PATH_SEGMENT: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b':').remove(b'@');

/// A path segment with the characters URLs reserve escaped.
pub fn url_part(text: &str) -> String {
    utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

/// Does this workflow have steps that give people work?
pub fn gives_work(workflow: &Workflow) -> bool {
    workflow.steps.iter().any(|s| matches!(s.kind, StepKind::Task(_) | StepKind::Approval(_)))
}

/// The subject's display name: its `title`, `name` or `email`, else its id.
pub fn subject_title(subject: &Value, subject_id: &str) -> String {
    ["title", "name", "email"]
        .iter()
        .find_map(|k| subject.get(*k).and_then(Value::as_str))
        .unwrap_or(subject_id)
        .to_owned()
}

/// The work changes of one transition (see the module docs).
pub fn changes(
    workflow: &Workflow,
    t: &Transition,
    subject: &Value,
    directory: &Directory,
    now: Timestamp,
) -> Vec<WorkChange> {
    let run = &t.run;
    let resolve = |roles: &[String]| directory.resolve_all(roles, &workflow.roles, subject, now);
    let mut opened: Vec<WorkItem> = Vec::new();
    for effect in &t.effects {
        let Some(at) = workflow.step_index(&effect.step) else { continue };
        let step = workflow.step(at);
        let base = |id: String, kind, role: String, title: String, due_at, detail| WorkItem {
            id,
            run: run.id,
            workflow_id: run.workflow_id.clone(),
            subject_id: run.subject_id.clone(),
            step: step.id.to_string(),
            kind,
            role,
            title,
            description: None,
            due_at,
            created_at: now,
            status: "open".to_owned(),
            assignee: None,
            outcome: None,
            closed_by: None,
            closed_at: None,
            detail,
            people: Vec::new(),
        };
        match (&effect.kind, &step.kind) {
            (EffectKind::CreateTask { title, description, raci, due_at }, StepKind::Task(task)) => {
                let Some(role) = raci.responsible.first() else { continue };
                let detail = json!({ "raci": raci, "fields": task.fields });
                let mut item = base(effect.key.clone(), WorkKind::Task, role.clone(), title.clone(), *due_at, detail);
                item.description.clone_from(description);
                item.people = resolve(&raci.responsible);
                opened.push(item);
            }
            (EffectKind::RequestApproval { round, approvers, due_at }, StepKind::Approval(approval)) => {
                let what = step.name.clone().unwrap_or_else(|| step.id.to_string());
                let title = format!("Approve “{}” ({what})", subject_title(subject, &run.subject_id));
                for role in approvers {
                    let detail = json!({
                        "round": round,
                        "mode": approval.mode,
                        "approvers": approval.approvers,
                        "accountable": approval.accountable,
                    });
                    let id = format!("{}:{role}", effect.key);
                    let mut item = base(id, WorkKind::Approval, role.clone(), title.clone(), *due_at, detail);
                    item.people = resolve(std::slice::from_ref(role));
                    opened.push(item);
                }
            }
            _ => {}
        }
    }
    // What the run still waits on, by (step, role); a pair opened anew supersedes the old.
    let mut keep: Vec<(String, String)> = Vec::new();
    let mut joins: Vec<WorkChange> = Vec::new();
    for token in &run.tokens {
        let step = workflow.step(token.at);
        match (&token.state, &step.kind) {
            (TokenState::AwaitingTask { .. }, StepKind::Task(task)) => {
                if let Some(role) = task.raci.responsible.first() {
                    keep.push((step.id.to_string(), role.clone()));
                }
            }
            (TokenState::AwaitingApproval(state), StepKind::Approval(approval)) => {
                let pending: Vec<&String> = match approval.mode {
                    ApprovalMode::Sequential => approval.approvers.get(usize::from(state.stage)).into_iter().collect(),
                    _ => approval.approvers.iter().filter(|a| !state.decisions.iter().any(|(r, _)| r == *a)).collect(),
                };
                keep.extend(pending.into_iter().map(|role| (step.id.to_string(), role.clone())));
            }
            _ => {}
        }
    }
    keep.retain(|pair| !opened.iter().any(|item| item.step == pair.0 && item.role == pair.1));
    let mut outcomes: Vec<(String, String, String, Option<String>)> = Vec::new();
    let mut resolved: Vec<(String, String, String, Option<String>)> = Vec::new();
    for entry in &t.history {
        let Some(step) = entry.step.as_deref() else { continue };
        match &entry.kind {
            HistoryKind::TaskCompleted { by, .. } => {
                outcomes.push((step.to_owned(), "*".to_owned(), "completed".to_owned(), Some(by.clone())));
            }
            HistoryKind::ApprovalDecision { role, by, decision, .. } => {
                let name = serde_json::to_value(decision).ok().and_then(|v| v.as_str().map(str::to_owned));
                outcomes.push((step.to_owned(), role.clone(), name.unwrap_or_default(), Some(by.clone())));
            }
            HistoryKind::ApprovalReset { by, .. } => {
                outcomes.push((step.to_owned(), "*".to_owned(), "reset".to_owned(), Some(by.clone())));
            }
            HistoryKind::ApprovalResolved { outcome, .. } => {
                resolved.push((step.to_owned(), "*".to_owned(), (*outcome).to_owned(), None));
            }
            // Whoever an approval escalates to may decide it from their inbox (beside the
            // approvers, for `notify`; in their place, for `reassign`).
            HistoryKind::ApprovalEscalated { to, action: "reassign" | "notify" } => {
                let at = workflow.step_index(step).map(|at| workflow.step(at));
                let target = match at.map(|s| &s.kind) {
                    Some(StepKind::Approval(a)) if to == "accountable" => a.accountable.clone().unwrap_or(to.clone()),
                    _ => to.clone(),
                };
                joins.push(WorkChange::Join { run: run.id, step: step.to_owned(), people: resolve(&[target]) });
            }
            _ => {}
        }
    }
    // A role's own decision names it; the others at a resolved approval close with its outcome.
    outcomes.extend(resolved);
    let otherwise = if run.is_active() { "withdrawn" } else { "cancelled" };
    let mut changes = vec![WorkChange::Settle { run: run.id, keep, outcomes, otherwise: otherwise.to_owned() }];
    changes.extend(opened.into_iter().map(|item| WorkChange::Open(Box::new(item))));
    changes.extend(joins);
    changes
}
