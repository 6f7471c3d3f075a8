//! Connectors: how an effect leaves Flowmark (SMTP, webhooks, chat, a log).
//!
//! A connector gets the effect's key (the idempotency key to pass on, e.g. as `webhook-id`
//! or `Message-ID`), its kind as JSON, and for messages the rendered [`Message`]; it answers
//! with an [`Outcome`]. Adding a connector is implementing this trait and registering it
//! for the effect kinds it performs.
//!
//! Invariant: a connector never panics on any input; failures are outcomes.

use flowmark_core::Duration;
use flowmark_core::render::Message;
use serde_json::Value;

/// What one attempt gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        detail: Option<String>,
    },
    /// Worth trying again (a timeout, a 4xx from SMTP, HTTP 429/503); `retry_after` when the
    /// peer said how long to wait.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (a rejected address, HTTP 400, a template that does not render).
    Permanent {
        error: String,
    },
}

pub trait Connector {
    /// Performs one effect. `message` is the rendered message for `send_message` effects.
    fn perform(&mut self, key: &str, effect: &Value, message: Option<&Message>) -> Outcome;
}

/// Records each effect as one JSON line (`{"effect": key, "kind": …, "message": …}`) and
/// reports it done: the connector a fresh deployment uses until real ones are configured.
/// Lines go to the structured log, or, with [`LogConnector::to_file`], are appended to a file
/// with one `write` each, so a line is in the file before the effect is reported done.
#[derive(Debug, Default)]
pub struct LogConnector {
    file: Option<std::fs::File>,
}

impl LogConnector {
    pub fn to_file(path: &std::path::Path) -> std::io::Result<LogConnector> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogConnector { file: Some(file) })
    }
}

impl Connector for LogConnector {
    fn perform(&mut self, key: &str, effect: &Value, message: Option<&Message>) -> Outcome {
        let line = serde_json::json!({ "effect": key, "kind": effect, "message": message });
        match &mut self.file {
            None => tracing::info!(target: "flowmark::effects", effect = key, "{line}"),
            Some(file) => {
                use std::io::Write as _;
                let mut bytes = line.to_string().into_bytes();
                bytes.push(b'\n');
                if let Err(error) = file.write_all(&bytes) {
                    return Outcome::Retryable {
                        error: format!("the effect log is not writable: {error}"),
                        retry_after: None,
                    };
                }
            }
        }
        Outcome::Done { detail: Some("logged".to_owned()) }
    }
}

/// Keeps what it was asked to perform and answers from a script: for tests and simulations.
#[derive(Debug, Default)]
pub struct RecordingConnector {
    pub performed: Vec<(String, Value, Option<Message>)>,
    /// Outcomes to give, in order; `Done` once they run out.
    pub script: std::collections::VecDeque<Outcome>,
}

impl Connector for RecordingConnector {
    fn perform(&mut self, key: &str, effect: &Value, message: Option<&Message>) -> Outcome {
        self.performed.push((key.to_owned(), effect.clone(), message.cloned()));
        self.script.pop_front().unwrap_or(Outcome::Done { detail: None })
    }
}
