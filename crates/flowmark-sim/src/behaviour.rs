//! The behaviour model: how simulated subjects and team members respond.
//!
//! Read from a small YAML file (every key optional; unknown keys are errors) or taken from
//! defaults that resemble a B2B newsletter audience and a small content team.
//!
//! Invariant: probabilities are within [0, 1] and delays are positive after `validate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Subjects enter spread evenly over this many hours from the start.
    pub arrival_hours: f64,
    /// Chance an email is opened.
    pub email_open: f64,
    /// Chance an opened email is clicked.
    pub email_click: f64,
    /// Chance a click is followed by the workflow's goal event.
    pub convert_after_click: f64,
    /// Median hours from sending to opening, opening to clicking, clicking to converting.
    pub open_delay_hours: f64,
    pub click_delay_hours: f64,
    pub convert_delay_hours: f64,
    /// Task durations are log-normal: median and 90th percentile, in hours.
    pub task_hours_median: f64,
    pub task_hours_p90: f64,
    /// Approval decisions: chances of each outcome (they are normalised), and delay.
    pub approve: f64,
    pub approve_with_changes: f64,
    pub request_changes: f64,
    pub reject: f64,
    pub approval_hours_median: f64,
    pub approval_hours_p90: f64,
    /// Hours a child run takes, for `subflow` steps that wait.
    pub subflow_hours: f64,
    /// Time zones of the population, with weights.
    pub timezones: BTreeMap<String, f64>,
    /// Traits (contacts) or fields (items) of each subject: a constant, `{between: [a, b]}`
    /// (a whole number drawn evenly), or `{one_of: [...]}`.
    pub traits: BTreeMap<String, Value>,
    /// Properties of the trigger event every subject enters with.
    pub trigger_properties: Value,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            arrival_hours: 24.0,
            email_open: 0.35,
            email_click: 0.25,
            convert_after_click: 0.10,
            open_delay_hours: 6.0,
            click_delay_hours: 0.1,
            convert_delay_hours: 48.0,
            task_hours_median: 16.0,
            task_hours_p90: 60.0,
            approve: 0.70,
            approve_with_changes: 0.10,
            request_changes: 0.15,
            reject: 0.05,
            approval_hours_median: 8.0,
            approval_hours_p90: 40.0,
            subflow_hours: 24.0,
            timezones: [
                ("America/New_York".to_owned(), 0.35),
                ("America/Los_Angeles".to_owned(), 0.15),
                ("Europe/London".to_owned(), 0.2),
                ("Europe/Berlin".to_owned(), 0.2),
                ("Asia/Tokyo".to_owned(), 0.1),
            ]
            .into(),
            traits: BTreeMap::new(),
            trigger_properties: Value::Object(Default::default()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the behaviour file is not valid YAML: {0}")]
    Yaml(String),
    #[error("the behaviour file: {0}")]
    Shape(String),
    #[error("the behaviour file: `{key}` is {value}; it must be {rule}")]
    Invalid { key: &'static str, value: f64, rule: &'static str },
}

impl Behaviour {
    pub fn from_yaml(text: &str) -> Result<Behaviour, Error> {
        use saphyr::{LoadableYamlNode, Yaml};
        let documents = Yaml::load_from_str(text).map_err(|e| Error::Yaml(e.to_string()))?;
        let value = documents.first().map_or(Value::Object(Default::default()), yaml_to_json);
        let behaviour: Behaviour = serde_json::from_value(value).map_err(|e| Error::Shape(e.to_string()))?;
        behaviour.validate()?;
        Ok(behaviour)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let probabilities = [
            ("email_open", self.email_open),
            ("email_click", self.email_click),
            ("convert_after_click", self.convert_after_click),
            ("approve", self.approve),
            ("approve_with_changes", self.approve_with_changes),
            ("request_changes", self.request_changes),
            ("reject", self.reject),
        ];
        for (key, value) in probabilities {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::Invalid { key, value, rule: "a probability from 0 to 1" });
            }
        }
        let delays = [
            ("arrival_hours", self.arrival_hours),
            ("open_delay_hours", self.open_delay_hours),
            ("click_delay_hours", self.click_delay_hours),
            ("convert_delay_hours", self.convert_delay_hours),
            ("task_hours_median", self.task_hours_median),
            ("approval_hours_median", self.approval_hours_median),
            ("subflow_hours", self.subflow_hours),
        ];
        for (key, value) in delays {
            if !(value.is_finite() && value > 0.0 && value <= 24.0 * 3660.0) {
                return Err(Error::Invalid { key, value, rule: "a number of hours above 0" });
            }
        }
        if self.task_hours_p90 < self.task_hours_median {
            return Err(Error::Invalid {
                key: "task_hours_p90",
                value: self.task_hours_p90,
                rule: "at least task_hours_median",
            });
        }
        if self.approval_hours_p90 < self.approval_hours_median {
            return Err(Error::Invalid {
                key: "approval_hours_p90",
                value: self.approval_hours_p90,
                rule: "at least approval_hours_median",
            });
        }
        if self.approve + self.approve_with_changes + self.request_changes + self.reject <= 0.0 {
            return Err(Error::Invalid {
                key: "approve",
                value: self.approve,
                rule: "such that the decision chances add up to more than 0",
            });
        }
        for name in self.timezones.keys() {
            if name.parse::<chrono_tz::Tz>().is_err() {
                return Err(Error::Shape(format!("`{name}` is not an IANA time zone")));
            }
        }
        Ok(())
    }
}

fn yaml_to_json(yaml: &saphyr::Yaml<'_>) -> Value {
    use saphyr::{Scalar, Yaml};
    match yaml {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => Value::from(*i),
        Yaml::Value(Scalar::FloatingPoint(f)) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::Null, Value::Number)
        }
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::Value(Scalar::String(s)) => s.to_string(),
                        other => format!("{:?}", yaml_to_json(other)),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => yaml_to_json(inner),
        _ => Value::Null,
    }
}
