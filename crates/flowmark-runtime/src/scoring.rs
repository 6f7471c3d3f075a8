//! Score models: named scores per workspace that events move by rules, that fade with a
//! half-life, and that announce crossing a threshold with an event (`Lead Qualified`), which a
//! hand-off workflow can start on.
//!
//! A subject's scores live in its data: `scores.<model>` (the value when last changed) and
//! `scores_at.<model>` (when, in ms). Whoever reads a score reads it decayed to now
//! (`decay_scores`), so conditions see `contact.scores.engagement` as it stands.
//!
//! Invariant: decay and crossings are pure functions of the stored value, its time and now.

use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_core::expr::{Condition, Scope};
use flowmark_core::time::Duration;
use flowmark_store::ScoreRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Most models per workspace, rules per model, thresholds per model.
pub const MODELS_MAX: usize = 32;
pub const RULES_MAX: usize = 256;
pub const THRESHOLDS_MAX: usize = 16;

/// The score models as written (JSON), before checking.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelsSource {
    pub models: Vec<ModelSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    pub name: String,
    /// `30d`, `12h`: after this long a score counts half; none means no decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life: Option<String>,
    #[serde(default)]
    pub rules: Vec<RuleSource>,
    #[serde(default)]
    pub thresholds: Vec<ThresholdSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// The event that moves the score.
    pub event: String,
    /// A CEL condition over `contact` and `event`.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Points to add (negative to subtract).
    pub add: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSource {
    /// Crossing this value upwards…
    pub at: f64,
    /// …records this event for the subject.
    pub event: String,
}

/// Checked score models.
#[derive(Debug, Clone, Default)]
pub struct Models {
    pub source: Option<ModelsSource>,
    models: Vec<Model>,
}

#[derive(Debug, Clone)]
struct Model {
    name: String,
    half_life: Option<Duration>,
    rules: Vec<(String, Option<Condition>, f64)>,
    thresholds: Vec<ThresholdSource>,
}

impl Models {
    /// Checks the models: every problem, each with where it is.
    pub fn compile(source: ModelsSource) -> Result<Models, Vec<String>> {
        let mut errors = Vec::new();
        let mut models = Vec::new();
        if source.models.len() > MODELS_MAX {
            errors.push(format!("there are {} models; the limit is {MODELS_MAX}", source.models.len()));
        }
        for (index, model) in source.models.iter().enumerate() {
            let at = format!("models[{index}] (`{}`)", model.name);
            let valid_name =
                !model.name.is_empty() && model.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                errors.push(format!("{at}: a name is letters, digits, `_` and `-`"));
            }
            if source.models[..index].iter().any(|m| m.name == model.name) {
                errors.push(format!("{at}: another model has this name"));
            }
            let half_life = match model.half_life.as_deref().map(Duration::parse) {
                None => None,
                Some(Ok(d)) if d.ms() > 0 => Some(d),
                Some(_) => {
                    errors.push(format!("{at}: `half_life` must be a duration such as `30d`"));
                    None
                }
            };
            if model.rules.len() > RULES_MAX || model.thresholds.len() > THRESHOLDS_MAX {
                errors.push(format!("{at}: at most {RULES_MAX} rules and {THRESHOLDS_MAX} thresholds"));
            }
            let mut rules = Vec::new();
            for (r, rule) in model.rules.iter().enumerate() {
                if rule.event.is_empty() || !rule.add.is_finite() {
                    errors.push(format!("{at}, rules[{r}]: an `event` and a finite `add` are required"));
                    continue;
                }
                let filter = match rule.filter.as_deref().map(|f| Condition::compile(f, &["contact", "event"])) {
                    None => None,
                    Some(Ok(condition)) => Some(condition),
                    Some(Err(error)) => {
                        errors.push(format!("{at}, rules[{r}]: `where` does not compile: {error:?}"));
                        continue;
                    }
                };
                rules.push((rule.event.clone(), filter, rule.add));
            }
            for (t, threshold) in model.thresholds.iter().enumerate() {
                if !threshold.at.is_finite() || threshold.event.is_empty() {
                    errors.push(format!("{at}, thresholds[{t}]: a finite `at` and an `event` are required"));
                }
            }
            let mut thresholds = model.thresholds.clone();
            thresholds.sort_by(|a, b| a.at.total_cmp(&b.at));
            models.push(Model { name: model.name.clone(), half_life, rules, thresholds });
        }
        if errors.is_empty() { Ok(Models { source: Some(source), models }) } else { Err(errors) }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Does any model have a rule for this event?
    pub fn has_rule_for(&self, event: &str) -> bool {
        self.models.iter().any(|m| m.rules.iter().any(|(name, _, _)| name == event))
    }

    /// The subject's data with every score decayed to `now`.
    pub fn decay_scores(&self, subject: &mut Value, now: Timestamp) {
        for model in self.models.iter().filter(|m| m.half_life.is_some()) {
            let (value, at) = stored(subject, &model.name);
            if let (Some(value), Some(at)) = (value, at) {
                set(subject, "scores", &model.name, json_number(decayed(value, now.since(at), model.half_life)));
            }
        }
    }

    /// Applies `delta` to a model's score at `now`, decaying first; writes value and time into
    /// the data of `subject_id` and says what changed, as the score history keeps it.
    /// `reason` is `event:<name>` or `step:<workflow>/<step>`.
    pub fn change(
        &self,
        subject_id: &str,
        subject: &mut Value,
        model: &str,
        delta: f64,
        now: Timestamp,
        reason: String,
    ) -> ScoreRecord {
        let half_life = self.models.iter().find(|m| m.name == model).and_then(|m| m.half_life);
        let (value, at) = stored(subject, model);
        let before = match (value, at) {
            (Some(value), Some(at)) => decayed(value, now.since(at), half_life),
            (Some(value), None) => value,
            _ => 0.0,
        };
        let after = before + delta;
        set(subject, "scores", model, json_number(after));
        set(subject, "scores_at", model, json!(now.ms()));
        ScoreRecord {
            subject_id: subject_id.to_owned(),
            model: model.to_owned(),
            at: now,
            before,
            delta,
            after,
            reason,
        }
    }

    /// The score changes an event causes, by every model's matching rules, applied to
    /// `subject` (whose scores are decayed to `now` as they are read).
    pub fn apply_event(
        &self,
        subject_id: &str,
        subject: &mut Value,
        event: &Event,
        now: Timestamp,
    ) -> Vec<ScoreRecord> {
        let mut changes = Vec::new();
        for model in &self.models {
            let mut delta = 0.0;
            for (name, filter, add) in &model.rules {
                if *name != event.name {
                    continue;
                }
                let matched = filter.as_ref().is_none_or(|f| {
                    let scope = Scope::new().with("contact", subject).with("event", event.payload.as_ref());
                    f.eval(&scope).result == Ok(true)
                });
                if matched {
                    delta += add;
                }
            }
            if delta != 0.0 {
                let reason = format!("event:{}", event.name);
                changes.push(self.change(subject_id, subject, &model.name, delta, now, reason));
            }
        }
        changes
    }

    /// The threshold events a change crossed upwards, lowest first.
    pub fn crossed(&self, change: &ScoreRecord) -> Vec<String> {
        let Some(model) = self.models.iter().find(|m| m.name == change.model) else { return Vec::new() };
        model
            .thresholds
            .iter()
            .filter(|t| change.before < t.at && change.after >= t.at)
            .map(|t| t.event.clone())
            .collect()
    }

    /// The event recorded for the change's subject when `change` crosses the threshold that
    /// names `name`.
    pub fn threshold_event(change: &ScoreRecord, name: &str) -> Event {
        let subject_id = &change.subject_id;
        Event {
            id: format!("threshold:{}:{}:{}:{}", change.model, name, subject_id, change.at.ms()),
            name: name.to_owned(),
            at: change.at,
            payload: json!({
                "type": "track",
                "event": name,
                "userId": subject_id,
                "properties": { "model": change.model, "score": change.after, "before": change.before, "reason": change.reason },
            })
            .into(),
        }
    }
}

/// A value after `since` with a half-life; unchanged without one.
pub fn decayed(value: f64, since: Duration, half_life: Option<Duration>) -> f64 {
    match half_life {
        Some(half_life) if half_life.ms() > 0 => value * 0.5_f64.powf(since.ms() as f64 / half_life.ms() as f64),
        _ => value,
    }
}

fn stored(subject: &Value, model: &str) -> (Option<f64>, Option<Timestamp>) {
    (
        subject.get("scores").and_then(|s| s.get(model)).and_then(Value::as_f64),
        subject.get("scores_at").and_then(|s| s.get(model)).and_then(Value::as_i64).map(Timestamp),
    )
}

fn set(subject: &mut Value, group: &str, model: &str, value: Value) {
    if !subject.is_object() {
        *subject = Value::Object(Map::new());
    }
    let data = subject.as_object_mut().expect("an object");
    let entry = data.entry(group).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("an object").insert(model.to_owned(), value);
}

/// Scores are kept to 4 decimals: enough for decay, readable in the API.
fn json_number(value: f64) -> Value {
    let rounded = (value * 10_000.0).round() / 10_000.0;
    if rounded.fract() == 0.0 && rounded.abs() < 9.0e15 {
        return Value::from(rounded as i64);
    }
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Models {
        Models::compile(
            serde_json::from_value(json!({ "models": [{
                "name": "engagement", "half_life": "10d",
                "rules": [
                    { "event": "Email Link Clicked", "add": 30 },
                    { "event": "Webinar Attended", "where": "event.properties.minutes > 20", "add": 25 },
                ],
                "thresholds": [{ "at": 50, "event": "Lead Qualified" }]
            }]}))
            .unwrap(),
        )
        .unwrap()
    }

    fn event(name: &str, properties: Value) -> Event {
        Event {
            id: "e".into(),
            name: name.into(),
            at: Timestamp(0),
            payload: json!({ "properties": properties }).into(),
        }
    }

    #[test]
    fn scores_move_by_rules_fade_by_half_life_and_announce_thresholds() {
        let models = models();
        let mut subject = json!({ "first_name": "Ada" });
        let day = Duration::parse("1d").unwrap().ms() as i64;
        let first = models.apply_event("ada", &mut subject, &event("Email Link Clicked", json!({})), Timestamp(0));
        assert_eq!((first[0].before, first[0].after), (0.0, 30.0));
        assert!(models.crossed(&first[0]).is_empty());
        let short = models.apply_event(
            "ada",
            &mut subject,
            &event("Webinar Attended", json!({ "minutes": 5 })),
            Timestamp(day),
        );
        assert!(short.is_empty(), "the rule's condition decides");
        // Ten days later the 30 counts 15; a 25-minute webinar brings it to 40: no threshold.
        let later = models.apply_event(
            "ada",
            &mut subject,
            &event("Webinar Attended", json!({ "minutes": 25 })),
            Timestamp(10 * day),
        );
        assert_eq!((later[0].before, later[0].after), (15.0, 40.0));
        let crossing =
            models.apply_event("ada", &mut subject, &event("Email Link Clicked", json!({})), Timestamp(10 * day));
        assert_eq!(crossing[0].after, 70.0);
        assert_eq!(models.crossed(&crossing[0]), ["Lead Qualified"]);
        let mut read = subject.clone();
        models.decay_scores(&mut read, Timestamp(20 * day));
        assert_eq!(read["scores"]["engagement"], 35, "readers see the score as it stands");
    }

    #[test]
    fn bad_models_are_refused_with_every_reason() {
        let source: ModelsSource = serde_json::from_value(json!({ "models": [
            { "name": "a b", "half_life": "soon", "rules": [{ "event": "X", "where": "nope.x > 1", "add": 1 }] },
            { "name": "a b" },
        ]}))
        .unwrap();
        let errors = Models::compile(source).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[2].contains("`where` does not compile"), "{errors:?}");
    }
}
