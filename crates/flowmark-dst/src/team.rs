//! The team's side of the simulation: random people acting on random work items of the
//! review workflow — completing drafts, deciding stages, claiming, reassigning, attaching new
//! versions — and the invariant that no decision is recorded by someone who was not allowed
//! to make it at that moment.
//!
//! "Allowed" is said here apart from the engine, from what the store shows at the moment of
//! the attempt: the work item is open and in the person's inbox (its `people`), the person did
//! not complete the work under review (the round's last completed task before the approval),
//! and did not decide another stage of the same round. Every attempt to decide is recorded
//! with that verdict; afterwards every `approval_decision` in every history must match an
//! attempt judged allowed (same run, step, role, person and time).
//!
//! Invariant: the verdict is computed before the engine is asked, from the store alone.

use std::collections::BTreeSet;

use flowmark_core::engine::{Decision, RunId};
use flowmark_runtime::WorkAction;
use flowmark_store::{Store, WorkItem, WorkKind};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;

/// One attempt to decide: `(run, step, role, person, at, allowed)`.
pub type DecisionAttempt = (RunId, String, String, String, i64, bool);

/// May `person` decide `item` now, by the rules the team was promised?
pub fn allowed(work: &[WorkItem], item: &WorkItem, person: &str) -> bool {
    if item.status != "open" || item.kind != WorkKind::Approval || !item.people.iter().any(|p| p == person) {
        return false;
    }
    let author = work
        .iter()
        .filter(|w| w.run == item.run && w.kind == WorkKind::Task && w.outcome.as_deref() == Some("completed"))
        .filter(|w| w.closed_at.is_some_and(|at| at <= item.created_at))
        .max_by_key(|w| w.closed_at)
        .and_then(|w| w.closed_by.clone());
    if author.as_deref() == Some(person) {
        return false;
    }
    let decided_another_stage = work.iter().any(|w| {
        w.run == item.run
            && w.step == item.step
            && w.id != item.id
            && w.kind == WorkKind::Approval
            && w.detail["round"] == item.detail["round"]
            && w.closed_by.as_deref() == Some(person)
            && w.outcome.as_deref().is_some_and(|o| ["approve", "reject", "request_changes"].contains(&o))
    });
    !decided_another_stage
}

/// A random action on `item` by a random person of `people`.
pub fn action(rng: &mut ChaCha8Rng, item: &WorkItem, people: &[&str]) -> WorkAction {
    let roll = rng.next_u64() % 100;
    match (item.kind, roll) {
        (_, 0..8) => WorkAction::Claim,
        (_, 8..12) => WorkAction::Release,
        (_, 12..20) => WorkAction::Reassign { to: people[(rng.next_u64() % people.len() as u64) as usize].to_owned() },
        (WorkKind::Task, _) => WorkAction::Complete { fields: serde_json::Map::new() },
        (WorkKind::Approval, 20..65) => WorkAction::Decide { decision: Decision::Approve, comment: None },
        (WorkKind::Approval, 65..88) => {
            WorkAction::Decide { decision: Decision::RequestChanges, comment: Some("again".to_owned()) }
        }
        (WorkKind::Approval, _) => WorkAction::Decide { decision: Decision::Reject, comment: None },
    }
}

/// Every recorded decision was allowed when it was made; returns how many there were.
pub fn check_decisions(store: &impl Store, attempts: &[DecisionAttempt], runs: &[RunId]) -> Result<u64, String> {
    let allowed: BTreeSet<(RunId, &str, &str, &str, i64)> = attempts
        .iter()
        .filter(|a| a.5)
        .map(|(run, step, role, by, at, _)| (*run, step.as_str(), role.as_str(), by.as_str(), *at))
        .collect();
    let mut decisions = 0;
    for &run in runs {
        for entry in store.history(run).map_err(|e| e.to_string())? {
            if entry["what"] != "approval_decision" {
                continue;
            }
            decisions += 1;
            let text = |key: &str| entry[key].as_str().unwrap_or_default().to_owned();
            let (step, role, by) = (text("step"), text("role"), text("by"));
            let at = entry["at"].as_i64().unwrap_or_default();
            if !allowed.contains(&(run, step.as_str(), role.as_str(), by.as_str(), at)) {
                return Err(format!(
                    "run {}: {by} decided `{step}` as `{role}` at {at} without being allowed to then: {entry}",
                    run.0
                ));
            }
        }
    }
    Ok(decisions)
}
