//! Checks that need the whole graph: reachability, loops that never wait, parallel joins,
//! an `emit` of the event that starts its own workflow, and conditions that compare a number
//! with a string where the steps say what kinds the values are.
//!
//! Runs after decoding succeeded, so every target is resolved. Finds each parallel step's
//! join and records it in the model.
//!
//! Invariant: after `check` reports no error, every step is reachable from the first, every
//! cycle passes through a step that waits, and every parallel branch reaches the same join.

use crate::diagnostic::{Diagnostic, Diagnostics, Span};
use crate::expr::{Condition, Kind};
use crate::model::{Action, FieldKind, StepIndex, StepKind, Target, TemplateValue, Trigger, Workflow};
use crate::parse::StepSpans;

pub(crate) fn check(
    workflow: &mut Workflow,
    spans: &[StepSpans],
    _roles_span: Span,
    conditions: &[(Condition, Span, Option<usize>)],
    diagnostics: &mut Diagnostics,
) {
    assert_eq!(workflow.steps.len(), spans.len());
    reachability(workflow, spans, diagnostics);
    loops_without_wait(workflow, spans, diagnostics);
    parallel_joins(workflow, spans, diagnostics);
    emits_own_trigger(workflow, spans, diagnostics);
    numbers_compared_with_strings(workflow, conditions, diagnostics);
    unguarded_scores(workflow, conditions, diagnostics);
}

/// An ordering of a score without `has()`: a contact has no score of a model until the model
/// first moves it, and ordering what is missing fails the step for every such contact. Not
/// said where every way to the condition's step goes through a `score` step of that model
/// (the run has the score by then).
fn unguarded_scores(
    workflow: &Workflow,
    conditions: &[(Condition, Span, Option<usize>)],
    diagnostics: &mut Diagnostics,
) {
    for (condition, span, step) in conditions {
        for path in condition.unguarded_orderings() {
            let Some(model) = path.strip_prefix("contact.scores.").filter(|m| !m.contains('.')) else { continue };
            if step.is_some_and(|step| always_scored_before(workflow, step, model)) {
                continue;
            }
            diagnostics.push(
                Diagnostic::warning(
                    "flowmark::unguarded-score",
                    *span,
                    format!("for a contact with no `{model}` score yet, ordering `{path}` fails, and the step with it"),
                )
                .label("fails while the score is missing")
                .help(format!("guard it, so a missing score reads as not matching: `has({path}) && {path} >= …`")),
            );
        }
    }
}

/// A comparison of a number with a string, where both kinds are known before the run: `==`
/// is never true (so a branch or a wait silently goes the other way), and `<`, `>`, … fail
/// at run time. Warnings: the value may be meant to be one kind and stored as the other.
fn numbers_compared_with_strings(
    workflow: &Workflow,
    conditions: &[(Condition, Span, Option<usize>)],
    diagnostics: &mut Diagnostics,
) {
    let kind_of = |path: &str| kind_of(workflow, path, 0);
    for (condition, span, _) in conditions {
        for mixed in condition.mixed_comparisons(&kind_of) {
            let say = |(text, kind): &(String, Kind)| {
                format!("`{text}` is a {}", if *kind == Kind::Number { "number" } else { "string" })
            };
            let (left, right) = (say(&mixed.left), say(&mixed.right));
            let (message, label) = if mixed.ordering {
                (format!("{left} and {right}: ordering them fails at run time"), "the step fails here")
            } else {
                (format!("{left} and {right}: a number never equals a string"), "never true")
            };
            diagnostics.push(
                Diagnostic::warning("flowmark::number-compared-with-string", *span, message).label(label).help(
                    "compare like with like: a number literal with a number, or keep the value's type where it is \
                     stored (an `update` value that is one variable, `\"{{ trigger.properties.id }}\"`, stays a number)",
                ),
            );
        }
    }
}

/// Does every way from the first step to `target` pass a `score` step of `model`? (Searches
/// from the first step without entering such steps: `target` must then be out of reach.)
fn always_scored_before(workflow: &Workflow, target: usize, model: &str) -> bool {
    let scores = |index: usize| matches!(&workflow.steps[index].kind, StepKind::Action(Action::Score(score)) if score.model == model);
    let mut seen = vec![false; workflow.steps.len()];
    let mut stack = vec![0];
    while let Some(index) = stack.pop() {
        if seen[index] || scores(index) {
            continue;
        }
        if index == target {
            return false;
        }
        seen[index] = true;
        stack.extend(successors(workflow, index));
    }
    true
}

/// The kind of value a path reads, where the workflow says: scores are numbers; a task's
/// fields have the kind declared; an `update`'s values the kind of what they set; effect ids
/// and event names are strings. `None` when it depends on the data.
fn kind_of(workflow: &Workflow, path: &str, depth: usize) -> Option<Kind> {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["contact", "scores", _] => Some(Kind::Number),
        ["event", "event" | "type" | "messageId"] | ["trigger", "name"] => Some(Kind::String),
        ["steps", _, "effect_id"] => Some(Kind::String),
        ["steps", step, "fields", field] => {
            let step = workflow.steps.iter().find(|s| &*s.id == *step)?;
            let StepKind::Task(task) = &step.kind else { return None };
            match task.fields.iter().find(|f| f.name == *field)?.kind {
                FieldKind::Number => Some(Kind::Number),
                FieldKind::Text | FieldKind::Url | FieldKind::Date => Some(Kind::String),
                FieldKind::Bool | FieldKind::Checkbox => None,
            }
        }
        ["steps", step, "set", key] => {
            let step = workflow.steps.iter().find(|s| &*s.id == *step)?;
            let StepKind::Action(Action::Update(update)) = &step.kind else { return None };
            match &update.set.iter().find(|(k, _)| k == key)?.1 {
                TemplateValue::Literal(serde_json::Value::Number(_)) => Some(Kind::Number),
                TemplateValue::Literal(serde_json::Value::String(_)) => Some(Kind::String),
                // A value that is one variable keeps the variable's type; any other text is a string.
                TemplateValue::Text(template) => match template.sole_variable() {
                    Some(variable) if depth < 8 => kind_of(workflow, variable, depth + 1),
                    Some(_) => None,
                    None => Some(Kind::String),
                },
                _ => None,
            }
        }
        _ => None,
    }
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
