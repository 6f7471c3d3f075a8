//! Connectors: how an effect leaves Flowmark (SMTP, webhooks, chat, a log), and the
//! registry that routes effects to them within each connector's limits.
//!
//! A connector gets the effect's key (the idempotency key to pass on, e.g. as `webhook-id`
//! or `Message-ID`), the typed effect, and for messages the rendered [`Message`]; it answers
//! with an [`Outcome`]. Adding a connector is implementing [`Connector`] and registering it
//! in [`Connectors`] for the kinds of outbound work it performs ([`Outbound`]), with its
//! [`Limits`].
//!
//! Invariant: a connector never panics on any input; failures are outcomes. A connector is
//! called from several threads at once when its `concurrency` is above 1.

use std::sync::{Arc, Mutex};

use flowmark_core::render::Message;
use flowmark_core::{Duration, Timestamp};
use flowmark_store::OutboxEffect;
use serde_json::Value;

use crate::suppressions::Suppressions;
use crate::webhook::GoneEndpoints;
use flowmark_core::model::Channel;

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

/// The last check before a message leaves: whether its contact was suppressed (an
/// unsubscribe, a bounce, a complaint, consent withdrawn) since the send was claimed. A
/// connector asks it as late as it can, just before the message is handed over.
#[derive(Debug, Clone)]
pub struct Guard {
    pub(crate) suppressions: Suppressions,
    pub(crate) subject_id: String,
    pub(crate) channel: Channel,
}

impl Guard {
    /// Why the message must not go now; `None` when it may.
    pub fn refusal(&self) -> Option<String> {
        self.suppressions.refusal(&self.subject_id, self.channel)
    }
}

/// One effect to perform.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The effect's idempotency key: the same across retries and restarts.
    pub key: &'a str,
    /// The effect, as the outbox holds it.
    pub effect: &'a OutboxEffect,
    /// The rendered message, for message effects.
    pub message: Option<&'a Message>,
    /// The contact or item the effect is about.
    pub subject_id: &'a str,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The time the attempt starts at (what a signature's timestamp says).
    pub now: Timestamp,
    /// For a marketing message to a contact: the check to make just before it leaves.
    pub guard: Option<&'a Guard>,
}

impl Job<'_> {
    /// Why the message must not go now (its contact was suppressed since it was claimed);
    /// `None` when it may, or when nothing is to be checked.
    pub fn refusal(&self) -> Option<String> {
        self.guard.and_then(Guard::refusal)
    }
}

pub trait Connector: Send + Sync {
    /// Performs one effect.
    fn perform(&self, job: &Job<'_>) -> Outcome;

    /// Delays in ms after each failed attempt, when the peer's protocol prescribes its own
    /// (Standard Webhooks does); `None` keeps `retry`'s schedule.
    fn retry_delays_ms(&self) -> Option<&'static [u64]> {
        None
    }
}

/// How much of a peer one connector may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Effects performed at the same time (at least 1).
    pub concurrency: usize,
    /// Effects started per second, on average; `None` for no limit.
    pub per_second: Option<f64>,
    /// Effects that may start at once after a quiet spell (the token bucket's size).
    pub burst: u32,
    /// How long one attempt may take before it counts as failed and is retried (at most
    /// `ATTEMPT_TIMEOUT_MAX`): a peer that hangs holds one worker slot this long at most.
    pub timeout: Duration,
}

/// The default per-attempt timeout (a minute): above SMTP's and webhooks' own timeouts per
/// request, so they answer first.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration(60_000);
/// The longest per-attempt timeout (ten minutes): a claim lives no longer than this plus its
/// batch allowance and lease margin (`LEASE_MARGIN_MS`).
pub const ATTEMPT_TIMEOUT_MAX: Duration = Duration(600_000);

impl Default for Limits {
    fn default() -> Limits {
        Limits { concurrency: 1, per_second: None, burst: 1, timeout: ATTEMPT_TIMEOUT_DEFAULT }
    }
}

/// What kind of work leaves Flowmark, as connectors are registered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// An email: a run's message, or a notification or digest to a person.
    Email,
    /// A run's webhook call.
    Webhook,
    /// A notification posted to a person's chat (a Slack-compatible incoming webhook).
    Chat,
    /// A run's message on a channel no connector is registered for by kind (`notify`, `sms`,
    /// `push`).
    Notify,
    /// A run's effect that asks nobody inside Flowmark (a task or approval without anyone in
    /// its roles, a conversion): the fallback records it.
    Other,
}

impl Outbound {
    /// The kind of outbound work a rendered message is.
    pub fn of_message(message: &Message) -> Outbound {
        match message {
            Message::Email { .. } => Outbound::Email,
            Message::Webhook { .. } => Outbound::Webhook,
            Message::Notify { .. } => Outbound::Notify,
        }
    }
}

/// Connectors by the kinds of outbound work they perform, each with its limits; a fallback
/// takes the rest. Rate limits are token buckets refilled by the `now` the dispatcher is given, so a
/// virtual clock drives them as the system clock does.
pub struct Connectors {
    routes: Vec<Route>,
    /// Webhook URLs that answered `410 Gone`, when the webhook connectors share a record of
    /// them: the dispatcher stores what is new after each round.
    gone: Option<GoneEndpoints>,
}

struct Route {
    name: String,
    /// What it performs; empty for the fallback.
    kinds: Vec<Outbound>,
    connector: Arc<dyn Connector>,
    limits: Limits,
    tokens: f64,
    refilled_at: Option<Timestamp>,
}

/// Effects one route was given in one dispatch round: those to perform now, and those the
/// rate limit holds back, with when each may go.
pub(crate) struct Admitted {
    pub now: Vec<usize>,
    pub later: Vec<(usize, Timestamp)>,
}

impl Connectors {
    /// Every effect goes to `fallback`, one at a time, unlimited in rate.
    pub fn new(fallback: Arc<dyn Connector>) -> Connectors {
        Connectors::with_limits(fallback, Limits::default())
    }

    /// Every effect goes to `fallback`, within `limits`.
    pub fn with_limits(fallback: Arc<dyn Connector>, limits: Limits) -> Connectors {
        Connectors { routes: vec![Route::new("fallback", Vec::new(), fallback, limits)], gone: None }
    }

    /// The record of gone webhook URLs that this registry's webhook connectors share
    /// (`WebhookConnector::with_gone_endpoints`): what they add, the dispatcher stores.
    pub fn with_gone_endpoints(mut self, gone: GoneEndpoints) -> Connectors {
        self.gone = Some(gone);
        self
    }

    /// The shared record of gone webhook URLs, if there is one.
    pub fn gone_endpoints(&self) -> Option<&GoneEndpoints> {
        self.gone.as_ref()
    }

    /// Sends the outbound work `kinds` to `connector`, within `limits`.
    pub fn route(
        mut self,
        name: &str,
        kinds: &[Outbound],
        connector: Arc<dyn Connector>,
        limits: Limits,
    ) -> Connectors {
        self.routes.insert(self.routes.len() - 1, Route::new(name, kinds.to_vec(), connector, limits));
        self
    }

    /// The route for a kind of outbound work: the first registered for it, or the fallback.
    pub(crate) fn route_of(&self, kind: Outbound) -> usize {
        self.routes.iter().position(|r| r.kinds.contains(&kind)).unwrap_or(self.routes.len() - 1)
    }

    pub(crate) fn name(&self, route: usize) -> &str {
        &self.routes[route].name
    }

    pub fn connector(&self, route: usize) -> &Arc<dyn Connector> {
        &self.routes[route].connector
    }

    pub(crate) fn concurrency(&self, route: usize) -> usize {
        self.routes[route].limits.concurrency.max(1)
    }

    /// How long one attempt of a route may take (`Limits::timeout`, at most
    /// `ATTEMPT_TIMEOUT_MAX`, at least a second).
    pub(crate) fn timeout(&self, route: usize) -> Duration {
        Duration(self.routes[route].limits.timeout.0.clamp(1_000, ATTEMPT_TIMEOUT_MAX.0))
    }

    /// How many routes the registry has (the fallback included).
    pub fn count(&self) -> usize {
        self.routes.len()
    }

    /// Takes tokens for `jobs` effects of a route at `now`: as many as the bucket holds go
    /// now, the others are spaced out at the route's rate from when the bucket has the next
    /// token.
    pub(crate) fn admit(&mut self, route: usize, jobs: usize, now: Timestamp) -> Admitted {
        let route = &mut self.routes[route];
        let Some(rate) = route.limits.per_second.filter(|r| *r > 0.0) else {
            return Admitted { now: (0..jobs).collect(), later: Vec::new() };
        };
        let burst = f64::from(route.limits.burst.max(1));
        let elapsed_s = route.refilled_at.map_or(f64::INFINITY, |at| now.since(at).ms() as f64 / 1000.0);
        route.tokens = (route.tokens + elapsed_s * rate).min(burst);
        route.refilled_at = Some(now);
        let allowed = (route.tokens.floor() as usize).min(jobs);
        route.tokens -= allowed as f64;
        let later = (allowed..jobs)
            .map(|job| {
                // The k-th held-back effect waits for k tokens beyond what is left.
                let wait_s = ((job - allowed + 1) as f64 - route.tokens) / rate;
                (job, Timestamp(now.ms() + (wait_s * 1000.0).ceil() as i64))
            })
            .collect();
        Admitted { now: (0..allowed).collect(), later }
    }
}

impl Route {
    fn new(name: &str, kinds: Vec<Outbound>, connector: Arc<dyn Connector>, limits: Limits) -> Route {
        Route {
            name: name.to_owned(),
            kinds,
            connector,
            limits,
            tokens: f64::from(limits.burst.max(1)),
            refilled_at: None,
        }
    }
}

/// Records each effect as one JSON line (`{"effect": key, "kind": …, "message": …}`) and
/// reports it done: the connector a fresh deployment uses until real ones are configured.
/// Lines go to the structured log, or, with [`LogConnector::to_file`], are appended to a file
/// with one `write` each, so a line is in the file before the effect is reported done.
#[derive(Debug, Default)]
pub struct LogConnector {
    file: Option<Mutex<std::fs::File>>,
}

impl LogConnector {
    pub fn to_file(path: &std::path::Path) -> std::io::Result<LogConnector> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogConnector { file: Some(Mutex::new(file)) })
    }
}

impl Connector for LogConnector {
    fn perform(&self, job: &Job<'_>) -> Outcome {
        let line = serde_json::json!({ "effect": job.key, "kind": job.effect, "message": job.message, "subject": job.subject_id });
        match &self.file {
            None => tracing::info!(target: "flowmark::effects", effect = job.key, "{line}"),
            Some(file) => {
                use std::io::Write as _;
                let mut bytes = line.to_string().into_bytes();
                bytes.push(b'\n');
                let written = match file.lock() {
                    Ok(mut file) => file.write_all(&bytes),
                    Err(_) => Err(std::io::Error::other("a writer panicked")),
                };
                if let Err(error) = written {
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

/// Keeps what it was asked to perform (each effect in its stored JSON form) and answers from
/// a script: for tests and simulations.
#[derive(Debug, Default)]
pub struct RecordingConnector {
    performed: Mutex<Vec<(String, Value, Option<Message>)>>,
    /// Outcomes to give, in order; `Done` once they run out.
    script: Mutex<std::collections::VecDeque<Outcome>>,
}

impl RecordingConnector {
    /// What it was asked to perform, in order: (key, effect, message).
    pub fn performed(&self) -> Vec<(String, Value, Option<Message>)> {
        self.performed.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Gives `outcome` for the next effect not yet answered by the script.
    pub fn then(&self, outcome: Outcome) {
        if let Ok(mut script) = self.script.lock() {
            script.push_back(outcome);
        }
    }
}

impl Connector for RecordingConnector {
    fn perform(&self, job: &Job<'_>) -> Outcome {
        if let Ok(mut performed) = self.performed.lock() {
            let effect = serde_json::to_value(job.effect).unwrap_or(Value::Null);
            performed.push((job.key.to_owned(), effect, job.message.cloned()));
        }
        self.script.lock().ok().and_then(|mut s| s.pop_front()).unwrap_or(Outcome::Done { detail: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_spaces_the_rest_at_the_rate() {
        let mut connectors = Connectors::with_limits(
            Arc::new(LogConnector::default()),
            Limits { concurrency: 1, per_second: Some(2.0), burst: 3, ..Limits::default() },
        );
        let t0 = Timestamp(1_000_000);
        let first = connectors.admit(0, 5, t0);
        assert_eq!(first.now, [0, 1, 2], "a full bucket: the burst");
        assert_eq!(first.later, [(3, Timestamp(t0.ms() + 500)), (4, Timestamp(t0.ms() + 1000))], "then 2 per second");
        let soon = connectors.admit(0, 2, Timestamp(t0.ms() + 500));
        assert_eq!(soon.now, [0], "half a second refills one token");
        let unlimited = Connectors::new(Arc::new(LogConnector::default())).admit(0, 4, t0);
        assert_eq!((unlimited.now.len(), unlimited.later.len()), (4, 0));
    }

    #[test]
    fn effects_go_to_the_connector_registered_for_their_kind() {
        let log: Arc<dyn Connector> = Arc::new(LogConnector::default());
        let connectors = Connectors::new(log.clone()).route("webhooks", &[Outbound::Webhook], log, Limits::default());
        assert_eq!(connectors.name(connectors.route_of(Outbound::Webhook)), "webhooks");
        assert_eq!(connectors.name(connectors.route_of(Outbound::Email)), "fallback");
    }
}
