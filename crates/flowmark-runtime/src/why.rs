//! "Why?": a run explained step by step, from its stored history and decision records.
//!
//! Each history entry becomes a line a person can read ("held by quiet hours until …",
//! "skipped: the email cap is reached (3 of 3 in the window)"), and each decision record is
//! attached to the step it was made at: the condition, the values it read, what it gave and
//! where the run went. Works on the stored JSON, so it explains runs of any version.
//!
//! Invariant: every history entry and every decision record appears exactly once.

use flowmark_core::Timestamp;
use serde::Serialize;
use serde_json::Value;

/// One line of an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What happened, in words.
    pub text: String,
    /// The decision made here, when this line is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Value>,
}

/// Explains a run from its history entries and decision records, in order.
pub fn explain(history: &[Value], decisions: &[Value]) -> Vec<Line> {
    let mut lines: Vec<Line> = history.iter().map(describe).collect();
    // Each decision goes after the last entry of its step at or before its time.
    let mut placed: Vec<(usize, Line)> = Vec::new();
    for record in decisions {
        let at = Timestamp(record["at"].as_i64().unwrap_or_default());
        let step = record["step"].as_str().map(str::to_owned);
        let after = lines
            .iter()
            .rposition(|l| l.at <= at && (step.is_none() || l.step == step))
            .or_else(|| lines.iter().rposition(|l| l.at <= at));
        placed.push((after.map_or(0, |i| i + 1), decide(record, at, step)));
    }
    // Insert from the back so earlier positions stay valid; records for one spot keep order.
    placed.sort_by_key(|(position, _)| *position);
    for (position, line) in placed.into_iter().rev() {
        lines.insert(position.min(lines.len()), line);
    }
    lines
}

/// The explanation as text, one line each, times in UTC.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        let step = line.step.as_deref().map(|s| format!("[{s}] ")).unwrap_or_default();
        out.push_str(&format!("{}  {step}{}\n", line.at.rfc3339(), line.text));
    }
    out
}

fn time(value: &Value) -> String {
    value.as_i64().map_or_else(|| "?".to_owned(), |ms| Timestamp(ms).rfc3339())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "nothing".to_owned(),
        other => other.to_string(),
    }
}

fn describe(entry: &Value) -> Line {
    let field = |name: &str| &entry[name];
    let text = match field("what").as_str().unwrap_or_default() {
        "run_started" => match field("trigger").as_str() {
            Some(trigger) => format!("started by the event `{trigger}`"),
            None => "started by hand".to_owned(),
        },
        "step_entered" => format!("entered the {} step", text(field("kind"))),
        "effect_emitted" => {
            format!("queued {} as effect `{}`", text(field("effect")).replace('_', " "), text(field("key")))
        }
        "effect_result" if field("ok") == true => match field("detail").as_str() {
            Some(detail) => format!("effect `{}` done ({detail})", text(field("key"))),
            None => format!("effect `{}` done", text(field("key"))),
        },
        "effect_result" => format!("effect `{}` failed: {}", text(field("key")), text(field("detail"))),
        "waiting" => {
            let reason = match field("reason").as_str() {
                Some("event") => "an event".to_owned(),
                Some("time") => "its time".to_owned(),
                Some(other) => format!("a {other}"),
                None => "something".to_owned(),
            };
            match field("until") {
                Value::Null => format!("waits for {reason}"),
                until => format!("waits for {reason} until {}", time(until)),
            }
        }
        "wait_resolved" => format!("the wait ended: {}", text(field("by"))),
        "quiet_hours_held" => format!("held by quiet hours until {}", time(field("until"))),
        "quiet_hours_dropped" => "not sent: inside quiet hours, and the workflow drops such messages".to_owned(),
        "capped" => format!(
            "not sent: the {} frequency cap is reached ({} sent of {} allowed in the window)",
            text(field("channel")),
            text(field("sent_count")),
            text(field("max"))
        ),
        "not_permitted" => format!("not sent on {}: {}", text(field("channel")), text(field("reason"))),
        "cap_held" => format!(
            "held by the {} frequency cap ({} sent of {} allowed in the window) until {}",
            text(field("channel")),
            text(field("sent_count")),
            text(field("max")),
            time(field("until"))
        ),
        "task_completed" => format!("task completed by {}{}", text(field("by")), via(field("via"))),
        "task_overdue" => "task overdue".to_owned(),
        "approval_decision" => format!(
            "{} ({}){} decided: {}{}",
            text(field("by")),
            text(field("role")),
            via(field("via")),
            text(field("decision")).replace('_', " "),
            field("comment").as_str().map(|c| format!(" — \"{c}\"")).unwrap_or_default()
        ),
        "approval_resolved" => format!("approval round {} resolved: {}", text(field("round")), text(field("outcome"))),
        "approval_reminded" => "approvers reminded".to_owned(),
        "approval_escalated" => format!("escalated to {}: {}", text(field("to")), text(field("action"))),
        "step_failed" => format!("the step failed: {}", text(field("error"))),
        "goal_reached" => match field("value") {
            Value::Null => format!("goal `{}` reached: a conversion", text(field("goal"))),
            value => format!("goal `{}` reached: a conversion worth {}", text(field("goal")), text(value)),
        },
        "input_ignored" => format!("ignored {}: {}", text(field("input")).replace('_', " "), text(field("reason"))),
        "run_ended" => match field("reason").as_str() {
            Some(reason) => format!("the run ended {}: {reason}", text(field("status"))),
            None => format!("the run ended {}", text(field("status"))),
        },
        other => format!("{other}: {entry}"),
    };
    Line {
        at: Timestamp(field("at").as_i64().unwrap_or_default()),
        step: field("step").as_str().map(str::to_owned),
        text,
        decision: None,
    }
}

fn decide(record: &Value, at: Timestamp, step: Option<String>) -> Line {
    let mut text = format!("decided ({})", text(&record["kind"]).replace('_', " "));
    if let Some(expression) = record["expression"].as_str() {
        text.push_str(&format!(": `{expression}`"));
    }
    if let Some(inputs) = record["inputs"].as_object().filter(|i| !i.is_empty()) {
        let read: Vec<String> = inputs.iter().map(|(path, value)| format!("{path} = {value}")).collect();
        text.push_str(&format!(" with {}", read.join(", ")));
    }
    text.push_str(&format!(" gave {}", record["result"]));
    if let Some(path) = record["path"].as_str() {
        text.push_str(&format!(", so the run went to `{path}`"));
    }
    for note in record["notes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        text.push_str(&format!(" (note: {note})"));
    }
    Line { at, step, text, decision: Some(record.clone()) }
}

/// ` (through <token>)` for an action a service token took for a person.
fn via(value: &Value) -> String {
    value.as_str().map(|token| format!(" (through {token})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decisions_are_placed_at_their_step_and_every_entry_is_said() {
        let history = vec![
            json!({ "at": 1, "what": "run_started", "trigger": "Whitepaper Downloaded" }),
            json!({ "at": 1, "step": "route", "what": "step_entered", "kind": "branch" }),
            json!({ "at": 1, "step": "handoff", "what": "step_entered", "kind": "action" }),
            json!({ "at": 1, "step": "handoff", "what": "capped", "channel": "email", "sent_count": 3, "max": 3 }),
            json!({ "at": 2, "what": "run_ended", "status": "completed", "reason": null }),
        ];
        let decisions = vec![json!({
            "at": 1, "step": "route", "kind": "branch", "expression": "contact.scores.engagement >= 50",
            "inputs": { "contact.scores.engagement": 60 }, "result": true, "path": "handoff"
        })];
        let lines = explain(&history, &decisions);
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[2].step.as_deref(), Some("route"));
        assert_eq!(
            lines[2].text,
            "decided (branch): `contact.scores.engagement >= 50` with contact.scores.engagement = 60 gave true, so the run went to `handoff`"
        );
        assert_eq!(lines[4].text, "not sent: the email frequency cap is reached (3 sent of 3 allowed in the window)");
        assert!(render(&lines).contains("[handoff] entered the action step"));
    }
}
