//! A workspace's own settings (stored in its store, so each workspace has its own): the
//! sender of its email when a step names none, and its variables, readable as `env` in every
//! template and condition of its workflows.
//!
//! Invariant: a compiled `Settings` has a sender that parses as an address (`Name <a@b>` or
//! `a@b`) and at most `VARIABLES_BYTES_MAX` of variables, so neither can fail later, at send
//! time.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The setting the workspace's settings are stored under (JSON).
pub const WORKSPACE_SETTING: &str = "workspace";

/// The most the variables may take, as JSON.
pub const VARIABLES_BYTES_MAX: usize = 64 * 1024;

/// The settings as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SettingsSource {
    /// The sender of the workspace's email whose step names none (default: the server's
    /// `--email-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_from: Option<String>,
    /// Readable as `env.<name>` in templates and conditions.
    #[serde(default)]
    pub variables: Map<String, Value>,
}

/// The settings, checked.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub source: Option<SettingsSource>,
}

impl Settings {
    /// Checks the settings; every problem is returned.
    pub fn compile(source: SettingsSource) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        if let Some(from) = &source.email_from
            && from.parse::<lettre::message::Mailbox>().is_err()
        {
            problems.push(format!("`email_from`: `{from}` is not an address like `Acme <news@acme.example>`"));
        }
        let size = serde_json::to_string(&source.variables).map_or(0, |text| text.len());
        if size > VARIABLES_BYTES_MAX {
            problems.push(format!("`variables` take {size} bytes as JSON; the limit is {VARIABLES_BYTES_MAX}"));
        }
        if problems.is_empty() { Ok(Settings { source: Some(source) }) } else { Err(problems) }
    }

    pub fn email_from(&self) -> Option<&str> {
        self.source.as_ref().and_then(|s| s.email_from.as_deref())
    }

    /// `env` for templates: `base` (what the engine was started with) with the workspace's
    /// variables over it.
    pub fn env(&self, base: &Value) -> Value {
        let mut env = match base {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        if let Some(source) = &self.source {
            env.extend(source.variables.clone());
        }
        Value::Object(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_sender_and_oversized_variables_are_refused_with_each_problem() {
        let source = SettingsSource {
            email_from: Some("not an address".into()),
            variables: [("blob".to_owned(), Value::String("x".repeat(VARIABLES_BYTES_MAX)))].into_iter().collect(),
        };
        let problems = Settings::compile(source).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let good = SettingsSource {
            email_from: Some("Acme <news@acme.example>".into()),
            variables: [("brand".to_owned(), Value::String("Acme".into()))].into_iter().collect(),
        };
        let settings = Settings::compile(good).unwrap();
        assert_eq!(settings.email_from(), Some("Acme <news@acme.example>"));
        let env = settings.env(&serde_json::json!({ "brand": "old", "region": "eu" }));
        assert_eq!(env, serde_json::json!({ "brand": "Acme", "region": "eu" }));
    }
}
