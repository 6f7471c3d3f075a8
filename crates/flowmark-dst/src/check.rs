//! The invariants a settled simulation must hold, read from the store and the peer's log.
//!
//! Invariant: checking only reads; the first broken invariant is returned as text naming
//! the event, run or effect concerned.

use std::collections::{BTreeMap, BTreeSet};

use flowmark_core::Timestamp;
use flowmark_core::engine::{RunId, RunStatus, TokenState};
use flowmark_store::{RunFilter, Store};
use serde_json::Value;

use crate::connector::Call;

/// Effects the engine performs itself rather than through a connector (the team's effects
/// become notifications to people, whose deliveries reach the peer under their own keys).
const INTERNAL_EFFECTS: [&str; 6] =
    ["adjust_score", "update_subject", "start_run", "create_task", "request_approval", "notify"];

pub struct Summary {
    pub runs: u64,
    pub digest: u64,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash = (*hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
}

pub fn check(
    store: &impl Store,
    acknowledged: &BTreeSet<String>,
    runs_started: &BTreeSet<RunId>,
    calls: &[Call],
) -> Result<Summary, String> {
    let e = |error: flowmark_store::Error| format!("the store failed while checking: {error}");
    // No acknowledged event lost.
    for id in acknowledged {
        if !store.has_event(id).map_err(e)? {
            return Err(format!("event {id} was acknowledged but is not stored"));
        }
    }
    // No acknowledged run lost.
    for id in runs_started {
        if store.run(*id).map_err(e)?.is_none() {
            return Err(format!("run {} was reported started but is not stored", id.0));
        }
    }
    let runs = store.runs(&RunFilter::default(), usize::MAX >> 1).map_err(e)?;
    let by_id: BTreeMap<RunId, &flowmark_core::engine::Run> = runs.iter().map(|r| (r.id, r)).collect();
    let far = Timestamp(i64::MAX / 2);
    let armed: BTreeSet<(RunId, u32)> =
        store.due_timers(far, usize::MAX >> 1).map_err(e)?.into_iter().map(|t| (t.run, t.timer.0)).collect();
    let mut emitted: BTreeMap<String, (RunId, String)> = BTreeMap::new();
    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for run in &runs {
        let history = store.history(run.id).map_err(e)?;
        let what = |h: &Value| h.get("what").and_then(Value::as_str).unwrap_or_default().to_owned();
        // The history agrees with the state.
        if history.first().map(what).as_deref() != Some("run_started") {
            return Err(format!("run {} has a history that does not begin with its start", run.id.0));
        }
        let ends: Vec<&Value> = history.iter().filter(|h| what(h) == "run_ended").collect();
        match (run.status, ends.as_slice()) {
            (RunStatus::Active, []) if run.ended_at.is_none() => {}
            (RunStatus::Active, _) => return Err(format!("run {} is active but its history ended it", run.id.0)),
            (status, [end]) => {
                if end.get("status").and_then(Value::as_str) != Some(status.as_str()) || run.ended_at.is_none() {
                    return Err(format!("run {} is {status:?} but its history says {end}", run.id.0));
                }
                // After its end, a run's history only records what became of the effects it
                // emitted before, and inputs it ignored.
                if let Some(end) = history.iter().position(|h| what(h) == "run_ended")
                    && history[end + 1..]
                        .iter()
                        .any(|h| !["effect_result", "input_ignored"].contains(&what(h).as_str()))
                {
                    let after: Vec<String> = history[end..].iter().map(Value::to_string).collect();
                    return Err(format!("run {}'s history goes on after its end: {}", run.id.0, after.join(", ")));
                }
            }
            (status, ends) => {
                return Err(format!("run {} is {status:?} with {} ends in its history", run.id.0, ends.len()));
            }
        }
        for h in &history {
            let key = h.get("key").and_then(Value::as_str).unwrap_or_default();
            match what(h).as_str() {
                "effect_emitted" => {
                    let kind = h.get("effect").and_then(Value::as_str).unwrap_or_default().to_owned();
                    if emitted.insert(key.to_owned(), (run.id, kind)).is_some() {
                        return Err(format!("effect {key} was emitted twice"));
                    }
                }
                "effect_result" if h.get("ok") == Some(&Value::Bool(true)) => {
                    succeeded.insert(key.to_owned());
                }
                _ => {}
            }
        }
        // No run stuck: after settling, an active run waits only for what may never come.
        if run.status == RunStatus::Active {
            for token in &run.tokens {
                let waiting = match &token.state {
                    TokenState::AwaitingEvent { timeout: None }
                    | TokenState::AwaitingTask { .. }
                    | TokenState::AwaitingApproval(_) => true,
                    TokenState::AwaitingSubflow => by_id.values().any(|child| {
                        child.status == RunStatus::Active && child.parent.as_ref().is_some_and(|p| p.run == run.id)
                    }),
                    TokenState::Joined => run.tokens.iter().any(|t| t.id != token.id),
                    // Every wait on a timer in the workload is shorter than the settling: a
                    // timer left is one that never fired (armed) or was lost (not armed).
                    TokenState::Sleeping { .. } | TokenState::AwaitingEvent { timeout: Some(_) } => false,
                };
                if !waiting {
                    let armed: Vec<u32> =
                        run.timers.iter().filter(|t| armed.contains(&(run.id, t.id.0))).map(|t| t.id.0).collect();
                    return Err(format!(
                        "run {} ({}) is stuck at step {} in state {:?}; its timers {:?}, armed in the store {armed:?}",
                        run.id.0, run.workflow_id, token.at.0, token.state, run.timers
                    ));
                }
            }
            if run.tokens.is_empty() {
                return Err(format!("run {} is active with nothing to do", run.id.0));
            }
        }
        fnv(&mut digest, serde_json::to_string(run).unwrap_or_default().as_bytes());
        fnv(&mut digest, Value::Array(history).to_string().as_bytes());
    }
    // What the peer was asked was committed first, one key always carried one effect, and
    // every effect that succeeded reached the peer.
    let mut contents: BTreeMap<&str, &str> = BTreeMap::new();
    let mut called: BTreeSet<&str> = BTreeSet::new();
    let mut sorted: Vec<&Call> = calls.iter().collect();
    sorted.sort_by(|a, b| (&a.key, a.attempt).cmp(&(&b.key, b.attempt)));
    for call in sorted {
        // A notification's delivery (`<effect>[:<role>]/…/<person>/<channel>`) is queued by the
        // dispatcher for an effect a committed transition emitted.
        let parent = call.key.split(['/', ':']).next().unwrap_or_default();
        let delivery_of_emitted = call.key.contains('/') && emitted.contains_key(parent);
        if !emitted.contains_key(&call.key) && !delivery_of_emitted {
            return Err(format!("the peer was asked to perform {}, which no committed transition emitted", call.key));
        }
        if let Some(before) = contents.insert(&call.key, &call.effect)
            && before != call.effect
        {
            return Err(format!("effect {} was performed with two contents: {before} and {}", call.key, call.effect));
        }
        called.insert(&call.key);
        fnv(&mut digest, call.key.as_bytes());
        fnv(&mut digest, &call.attempt.to_le_bytes());
    }
    for key in &succeeded {
        let Some((run, kind)) = emitted.get(key) else {
            return Err(format!("effect {key} has a result but was never emitted"));
        };
        if !INTERNAL_EFFECTS.contains(&kind.as_str()) && !called.contains(key.as_str()) {
            return Err(format!("effect {key} ({kind}) of run {} succeeded without reaching the peer", run.0));
        }
    }
    Ok(Summary { runs: runs.len() as u64, digest })
}
