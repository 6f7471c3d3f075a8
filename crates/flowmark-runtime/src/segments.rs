//! Segments: named CEL conditions over a contact — its traits, its scores (decayed to now)
//! and counts of its events in a window (`events.count("Email Link Clicked", "30d") >= 2`).
//!
//! A contact's membership is kept in its data, as the sorted list `segments`, so journeys
//! branch on it (`"engaged" in contact.segments`) and the contact API shows it. When
//! membership changes, the runtime records `Segment Entered` / `Segment Exited` events for
//! the contact (property `segment`), in the same unit of work as the change that caused it:
//! workflows start on them (`trigger: { segment: engaged }`) and waits can take them.
//!
//! Membership is re-evaluated when something it reads changes — a trait, a score, an event
//! a segment counts — and by a periodic sweep over every contact, which catches what only
//! time changes (windows sliding, scores decaying). See `docs/segments.md`.
//!
//! Invariant: evaluation is a pure function of the contact's data, the counts handed in and
//! the definitions; a segment whose condition fails to evaluate keeps the membership it had.

use std::collections::BTreeMap;

use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_core::expr::{Condition, EVENTS_ROOT, Evaluation, Scope, event_count_key};
use flowmark_core::time::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most segments per workspace, and event counts one segment reads.
pub const SEGMENTS_MAX: usize = 64;
pub const COUNTS_PER_SEGMENT_MAX: usize = 8;
/// The longest window an event count looks back over.
pub const COUNT_WINDOW_MAX_DAYS: u64 = 366;
/// Where a contact's membership lives in its data.
pub const MEMBERSHIP_TRAIT: &str = "segments";
pub const SEGMENT_ENTERED_EVENT: &str = "Segment Entered";
pub const SEGMENT_EXITED_EVENT: &str = "Segment Exited";

/// The segments as written (JSON), before checking.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SegmentsSource {
    pub segments: Vec<SegmentSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A CEL condition over `contact` and `events`.
    #[serde(rename = "where")]
    pub condition: String,
}

/// Checked segments.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    pub source: Option<SegmentsSource>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
struct Segment {
    name: String,
    condition: Condition,
    /// `(event name, window as written, window)`.
    counts: Vec<(String, String, Duration)>,
}

impl Segment {
    /// Evaluates the condition for a contact, with the event counts it reads looked up by
    /// `count(event, since)`.
    fn eval<E>(
        &self,
        subject: &Value,
        now: Timestamp,
        count: &mut impl FnMut(&str, Timestamp) -> Result<u64, E>,
    ) -> Result<Evaluation, E> {
        let mut counts = serde_json::Map::new();
        for (event, window, duration) in &self.counts {
            let since = Timestamp(now.ms().saturating_sub(duration.ms() as i64));
            counts.insert(event_count_key(event, window), json!(count(event, since)?));
        }
        let counts = Value::Object(counts);
        Ok(self.condition.eval(&Scope::new().with("contact", subject).with(EVENTS_ROOT, &counts)))
    }
}

/// Which segments a change concerns.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// The contact's data changed (traits, scores), or time passed: every segment.
    Contact,
    /// Only an event was recorded: the segments that count it.
    Event(&'a str),
}

/// A contact's membership after an evaluation, and the edges crossed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Membership {
    pub segments: Vec<String>,
    /// Does `segments` differ from what the contact's data holds?
    pub write: bool,
    pub entered: Vec<String>,
    pub exited: Vec<String>,
}

impl Membership {
    pub fn changed(&self) -> bool {
        !self.entered.is_empty() || !self.exited.is_empty()
    }
}

impl Segments {
    /// Checks the segments: every problem, each with where it is.
    pub fn compile(source: SegmentsSource) -> Result<Segments, Vec<String>> {
        let mut errors = Vec::new();
        if source.segments.len() > SEGMENTS_MAX {
            errors.push(format!("there are {} segments; the limit is {SEGMENTS_MAX}", source.segments.len()));
        }
        let mut segments = Vec::new();
        for (index, segment) in source.segments.iter().enumerate() {
            let at = format!("segments[{index}] (`{}`)", segment.name);
            let valid_name = !segment.name.is_empty()
                && segment.name.len() <= 64
                && segment.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                errors.push(format!("{at}: a name is 1 to 64 letters, digits, `_` and `-`"));
            }
            if source.segments[..index].iter().any(|s| s.name == segment.name) {
                errors.push(format!("{at}: another segment has this name"));
            }
            let condition = match Condition::compile(&segment.condition, &["contact", EVENTS_ROOT]) {
                Ok(condition) => condition,
                Err(error) => {
                    errors.push(format!("{at}: `where` does not compile: {}", describe(&error)));
                    continue;
                }
            };
            let pairs = match condition.event_counts() {
                Ok(pairs) => pairs,
                Err(error) => {
                    errors.push(format!("{at}: {error}"));
                    continue;
                }
            };
            if pairs.len() > COUNTS_PER_SEGMENT_MAX {
                errors.push(format!(
                    "{at}: it counts {} kinds of event; the limit is {COUNTS_PER_SEGMENT_MAX}",
                    pairs.len()
                ));
            }
            let mut counts = Vec::new();
            for (event, window) in pairs {
                match Duration::parse(&window) {
                    Ok(d) if d.ms() > 0 && d.ms() <= COUNT_WINDOW_MAX_DAYS * Duration::DAY.ms() => {
                        counts.push((event, window, d))
                    }
                    _ => errors.push(format!(
                        "{at}: `events.count(\"{event}\", \"{window}\")`: the window must be a duration such as \
                         `30d`, at most 366d"
                    )),
                }
            }
            segments.push(Segment { name: segment.name.clone(), condition, counts });
        }
        if errors.is_empty() { Ok(Segments { source: Some(source), segments }) } else { Err(errors) }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.segments.iter().any(|s| s.name == name)
    }

    /// Does any segment count this event?
    pub fn counts_event(&self, event: &str) -> bool {
        self.segments.iter().any(|s| s.counts.iter().any(|(name, _, _)| name == event))
    }

    /// Re-evaluates the segments `change` concerns for a contact whose data (scores decayed to
    /// now) is `subject`; `count(event, since)` answers how many such events it has had since
    /// then. Segments not concerned, and ones whose condition fails, keep their membership;
    /// names no longer defined are dropped.
    pub fn evaluate<E>(
        &self,
        subject: &Value,
        change: Change<'_>,
        now: Timestamp,
        mut count: impl FnMut(&str, Timestamp) -> Result<u64, E>,
    ) -> Result<Membership, E> {
        let before = members(subject);
        let mut after: Vec<String> = before.iter().filter(|name| self.contains(name)).cloned().collect();
        let mut membership = Membership::default();
        for segment in &self.segments {
            let concerned = match change {
                Change::Contact => true,
                Change::Event(event) => segment.counts.iter().any(|(name, _, _)| name == event),
            };
            if !concerned {
                continue;
            }
            let Ok(is_member) = segment.eval(subject, now, &mut count)?.result else { continue };
            let was_member = after.contains(&segment.name);
            if is_member && !was_member {
                after.push(segment.name.clone());
                membership.entered.push(segment.name.clone());
            } else if !is_member && was_member {
                after.retain(|name| *name != segment.name);
                membership.exited.push(segment.name.clone());
            }
        }
        after.sort();
        let mut before = before;
        before.sort();
        // Dropping an undefined name is a change to write, though not an edge to announce.
        membership.write = after != before;
        membership.segments = after;
        Ok(membership)
    }

    /// The decision a segment's condition makes for a contact now, with the values it read,
    /// for `GET /api/contacts/{id}/segments`.
    pub fn explain<E>(
        &self,
        subject: &Value,
        now: Timestamp,
        mut count: impl FnMut(&str, Timestamp) -> Result<u64, E>,
    ) -> Result<Vec<Value>, E> {
        let mut out = Vec::new();
        for segment in &self.segments {
            let evaluation = segment.eval(subject, now, &mut count)?;
            let inputs: BTreeMap<String, Value> = evaluation.inputs;
            out.push(json!({
                "segment": segment.name,
                "where": segment.condition.source(),
                "member": members(subject).contains(&segment.name),
                "now": match evaluation.result {
                    Ok(b) => json!(b),
                    Err(error) => json!({ "error": error.to_string() }),
                },
                "inputs": inputs,
            }));
        }
        Ok(out)
    }
}

/// The segments a contact's data says it is in.
pub fn members(subject: &Value) -> Vec<String> {
    subject
        .get(MEMBERSHIP_TRAIT)
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The event recorded when a contact enters or leaves a segment; `cause` (the id of the
/// event, effect or sweep that caused it) makes its id unique and stable on replay.
pub fn edge_event(subject_id: &str, segment: &str, entered: bool, cause: &str, now: Timestamp) -> Event {
    let (name, edge) = if entered { (SEGMENT_ENTERED_EVENT, "enter") } else { (SEGMENT_EXITED_EVENT, "exit") };
    Event {
        id: format!("segment:{edge}:{segment}:{subject_id}:{cause}"),
        name: name.to_owned(),
        at: now,
        payload: json!({
            "type": "track",
            "event": name,
            "userId": subject_id,
            "properties": { "segment": segment },
        })
        .into(),
    }
}

fn describe(error: &flowmark_core::expr::CompileError) -> String {
    use flowmark_core::expr::CompileError;
    match error {
        CompileError::TooLong { length } => format!("it is {length} bytes long"),
        CompileError::Syntax { message, line, column } => format!("{message} (line {line}, column {column})"),
        CompileError::UnknownVariable { name } => {
            format!("unknown variable `{name}`; a segment reads `contact` and `events`")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(list: &[(&str, &str)]) -> Segments {
        let source = SegmentsSource {
            segments: list
                .iter()
                .map(|(name, condition)| SegmentSource {
                    name: (*name).to_owned(),
                    description: None,
                    condition: (*condition).to_owned(),
                })
                .collect(),
        };
        Segments::compile(source).unwrap()
    }

    const DAY: i64 = 24 * 60 * 60 * 1000;

    #[test]
    fn entering_and_leaving_by_traits_and_counts() {
        let s = segments(&[
            ("engaged", "events.count('Email Link Clicked', '30d') >= 2"),
            ("pro", "contact.plan == 'pro'"),
        ]);
        let now = Timestamp(100 * DAY);
        let clicks = [now.ms() - 40 * DAY, now.ms() - 3 * DAY, now.ms() - DAY];
        let count = |event: &str, since: Timestamp| -> Result<u64, ()> {
            assert_eq!(event, "Email Link Clicked");
            Ok(clicks.iter().filter(|at| **at >= since.ms()).count() as u64)
        };
        let contact = json!({ "plan": "pro" });
        let m = s.evaluate(&contact, Change::Contact, now, count).unwrap();
        assert_eq!(m.segments, ["engaged", "pro"]);
        assert_eq!(m.entered, ["engaged", "pro"]);
        // Later the clicks age out of the window: the contact leaves `engaged`.
        let contact = json!({ "plan": "pro", "segments": ["engaged", "pro"] });
        let later = Timestamp(now.ms() + 29 * DAY);
        let m = s.evaluate(&contact, Change::Contact, later, count).unwrap();
        assert_eq!(
            (m.segments.as_slice(), m.exited.as_slice()),
            (&["pro".to_owned()][..], &["engaged".to_owned()][..])
        );
    }

    #[test]
    fn an_event_concerns_only_the_segments_counting_it() {
        let s = segments(&[("buyers", "events.count('Order Completed', '7d') > 0"), ("pro", "contact.plan == 'pro'")]);
        let contact = json!({ "plan": "pro" });
        let m = s.evaluate(&contact, Change::Event("Order Completed"), Timestamp(DAY), |_, _| Ok::<_, ()>(1)).unwrap();
        assert_eq!(m.entered, ["buyers"], "`pro` was not looked at");
        let m = s.evaluate(&contact, Change::Event("Page Viewed"), Timestamp(DAY), |_, _| Ok::<_, ()>(1)).unwrap();
        assert!(!m.changed());
    }

    #[test]
    fn a_failing_condition_keeps_membership_and_undefined_names_go() {
        let s = segments(&[("odd", "contact.n + 1 > 2")]);
        let contact = json!({ "n": "text", "segments": ["gone", "odd"] });
        let m = s.evaluate(&contact, Change::Contact, Timestamp(0), |_, _| Ok::<_, ()>(0)).unwrap();
        assert_eq!(m.segments, ["odd"], "`odd` kept (its condition failed); `gone` dropped");
        assert!(!m.changed() && m.write, "dropping an undefined name is a write, not an edge");
    }

    #[test]
    fn bad_definitions_are_refused_with_every_problem() {
        let source: SegmentsSource = serde_json::from_value(json!({ "segments": [
            { "name": "a b", "where": "contact.x == 1" },
            { "name": "dup", "where": "events.count('X', 'soon') > 1" },
            { "name": "dup", "where": "contcat.x == 1" },
            { "name": "w", "where": "events.count('X', '400d') > 1" },
        ]}))
        .unwrap();
        let errors = Segments::compile(source).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].contains("segments[0]") && errors[0].contains("a name is"));
        assert!(errors.iter().any(|e| e.contains("another segment has this name")));
        assert!(errors.iter().any(|e| e.contains("unknown variable `contcat`")));
        assert!(errors.iter().filter(|e| e.contains("the window must be")).count() == 2);
    }
}
