//! Checks that need the whole graph: reachability, loops that never wait, parallel joins,
//! and an `emit` of the event that starts its own workflow.
//!
//! Runs after decoding succeeded, so every target is resolved. Finds each parallel step's
//! join and records it in the model.
//!
//! Invariant: after `check` reports no error, every step is reachable from the first, every
//! cycle passes through a step that waits, and every parallel branch reaches the same join.

use crate::diagnostic::{Diagnostic, Diagnostics, Span};
use crate::model::{Action, StepIndex, StepKind, Target, Trigger, Workflow};
use crate::parse::StepSpans;

pub(crate) fn check(workflow: &mut Workflow, spans: &[StepSpans], _roles_span: Span, diagnostics: &mut Diagnostics) {
    assert_eq!(workflow.steps.len(), spans.len());
    reachability(workflow, spans, diagnostics);
    loops_without_wait(workflow, spans, diagnostics);
    parallel_joins(workflow, spans, diagnostics);
    emits_own_trigger(workflow, spans, diagnostics);
}

/// An `emit` of the event that starts this workflow: each run may start the next, a chain
/// that only the entry rules or `EMIT_DEPTH_MAX` end. Legal (a reminder loop can mean it),
/// so a warning.
fn emits_own_trigger(workflow: &Workflow, spans: &[StepSpans], diagnostics: &mut Diagnostics) {
    for (index, step) in workflow.steps.iter().enumerate() {
        let StepKind::Action(Action::Emit(emit)) = &step.kind else { continue };
        let starts_here =
            workflow.triggers.iter().any(|t| matches!(t, Trigger::Event { name, .. } if *name == emit.event));
        if starts_here {
            diagnostics.push(
                Diagnostic::warning(
                    "flowmark::emit-own-trigger",
                    spans[index].id,
                    format!("step `{}` emits `{}`, the event that starts this workflow", step.id, emit.event),
                )
                .label("each run may start another")
                .help(format!(
                    "the entry rules decide whether the same contact enters again; a chain of emits stops after {} events",
                    crate::limits::EMIT_DEPTH_MAX
                )),
            );
        }
    }
}

fn successors(workflow: &Workflow, index: usize) -> impl Iterator<Item = usize> + '_ {
    workflow.steps[index].edges().into_iter().filter_map(|e| match e.target {
        Target::Step(s) => Some(s.index()),
        Target::End => None,
    })
}

fn reachability(workflow: &Workflow, spans: &[StepSpans], diagnostics: &mut Diagnostics) {
    let mut seen = vec![false; workflow.steps.len()];
    let mut stack = vec![0];
    seen[0] = true;
    while let Some(index) = stack.pop() {
        for next in successors(workflow, index) {
            if !seen[next] {
                seen[next] = true;
                stack.push(next);
            }
        }
    }
    for (index, reached) in seen.iter().enumerate() {
        if !reached {
            let step = &workflow.steps[index];
            diagnostics.push(
                Diagnostic::error(
                    "flowmark::unreachable-step",
                    spans[index].id,
                    format!("step `{}` can never be reached", step.id),
                )
                .label("no step leads here")
                .help("point a `next`, `goto` or `on_*` at it from a step before, or remove it"),
            );
        }
    }
}

/// A step that makes a token stop until time passes or someone acts.
fn waits(workflow: &Workflow, index: usize) -> bool {
    match &workflow.steps[index].kind {
        StepKind::Wait(_) | StepKind::Task(_) | StepKind::Approval(_) => true,
        StepKind::Subflow(s) => s.wait,
        _ => false,
    }
}

/// Tarjan's strongly connected components over the steps that do not wait: any component
/// with a cycle is a loop a run would spin in without ever stopping.
fn loops_without_wait(workflow: &Workflow, spans: &[StepSpans], diagnostics: &mut Diagnostics) {
    let n = workflow.steps.len();
    let adjacency: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            if waits(workflow, i) {
                Vec::new()
            } else {
                successors(workflow, i).filter(|&j| !waits(workflow, j)).collect()
            }
        })
        .collect();
    let mut index_of = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut counter = 0;
    let mut components = Vec::new();
    // Iterative Tarjan: (node, next child position).
    for root in 0..n {
        if index_of[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 && index_of[v] == usize::MAX {
                index_of[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = adjacency[v].get(*child) {
                *child += 1;
                if index_of[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index_of[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index_of[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                let cyclic = component.len() > 1 || adjacency[v].contains(&v);
                if cyclic {
                    component.sort_unstable();
                    components.push(component);
                }
            }
        }
    }
    components.sort();
    for component in components {
        let first = component[0];
        let names: Vec<&str> = component.iter().map(|&i| &*workflow.steps[i].id).collect();
        diagnostics.push(
            Diagnostic::error(
                "flowmark::loop-without-wait",
                spans[first].id,
                format!("steps {} form a loop with no wait in it", names.join(" → ")),
            )
            .label("the loop starts here")
            .help("a run would go round forever in one instant; add a `wait`, `task` or `approval` inside the loop"),
        );
    }
}

#[allow(clippy::needless_range_loop)] // `p` indexes steps and spans alike, and steps are mutated.
fn parallel_joins(workflow: &mut Workflow, spans: &[StepSpans], diagnostics: &mut Diagnostics) {
    for p in 0..workflow.steps.len() {
        let StepKind::Parallel(parallel) = &workflow.steps[p].kind else { continue };
        let mut join_found: Option<usize> = None;
        let mut ok = true;
        for &branch in &parallel.branches {
            let (joins, reaches_end) = joins_reached(workflow, branch.index(), p);
            let problem = if reaches_end {
                Some("reaches the end of the workflow without a `join`".to_owned())
            } else if joins.len() != 1 {
                Some(if joins.is_empty() {
                    "never reaches a `join`".to_owned()
                } else {
                    "reaches more than one `join`".to_owned()
                })
            } else if join_found.is_some_and(|j| j != joins[0]) {
                Some("reaches a different `join` than the first branch".to_owned())
            } else {
                join_found = Some(joins[0]);
                None
            };
            if let Some(problem) = problem {
                ok = false;
                let step = &workflow.steps[p];
                diagnostics.push(
                    Diagnostic::error("flowmark::parallel-join", spans[p].kind, format!("the branch of `{}` that starts at `{}` {problem}", step.id, workflow.steps[branch.index()].id))
                        .label("this parallel step")
                        .help("every branch of a parallel step must lead to the same `join` step (parallel steps do not nest; use a `subflow`)"),
                );
            }
        }
        if let (true, Some(join)) = (ok, join_found)
            && let StepKind::Parallel(parallel) = &mut workflow.steps[p].kind
        {
            parallel.join = StepIndex(join as u16);
        }
    }
}

/// The joins reachable from `start` without passing a join, and whether `end` is reachable so.
fn joins_reached(workflow: &Workflow, start: usize, parallel: usize) -> (Vec<usize>, bool) {
    let mut seen = vec![false; workflow.steps.len()];
    let mut stack = vec![start];
    let mut joins = Vec::new();
    let mut reaches_end = false;
    while let Some(i) = stack.pop() {
        if seen[i] || i == parallel {
            continue;
        }
        seen[i] = true;
        if matches!(workflow.steps[i].kind, StepKind::Join(_)) {
            joins.push(i);
            continue;
        }
        for edge in workflow.steps[i].edges() {
            match edge.target {
                Target::Step(s) => stack.push(s.index()),
                Target::End => reaches_end = true,
            }
        }
    }
    joins.sort_unstable();
    (joins, reaches_end)
}
