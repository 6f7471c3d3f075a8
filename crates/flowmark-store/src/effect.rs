//! The outbox's effect: what one outbox row asks the dispatcher to do, as a typed value.
//!
//! Two sources fill the outbox: runs, with the core's [`EffectKind`], and the runtime itself,
//! with a [`Delivery`] of a notification to a person (a task assigned, a digest). Both are
//! stored as one JSON object tagged by `effect` and versioned by `v`
//! (`{"v": 1, "effect": "send_message", …}`); rows written before the version field read as
//! version 1.
//!
//! Invariants: every [`OutboxEffect`] reads back equal to what was written
//! ([`OutboxEffect::to_json`] then [`OutboxEffect::from_json`]); a row this version cannot
//! read — a kind it does not know, or a newer `v`, both written by a newer Flowmark — is
//! refused with [`EffectError`], never read as something else or skipped in silence.

use std::borrow::Cow;

use flowmark_core::engine::EffectKind;
use serde::{Deserialize, Serialize};

/// The version of the stored form this build writes, and the newest it reads.
pub const EFFECT_VERSION: u32 = 1;

/// The `effect` tag of a [`Delivery`].
pub const DELIVERY_TAG: &str = "deliver_notification";

/// What one outbox row asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum OutboxEffect {
    /// An effect a run decided.
    Run(EffectKind),
    /// A notification to a person, which Flowmark sends whatever became of the run it is about.
    Deliver(Delivery),
}

/// A notification's delivery to one person on one channel, with its text already written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Delivery {
    Email {
        to: String,
        subject: String,
        text: String,
        link: String,
    },
    /// A post to a Slack-compatible incoming webhook.
    Chat {
        url: String,
        text: String,
        link: String,
    },
}

/// Why a stored effect cannot be read by this version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    #[error("stored effect kind `{kind}` is unknown to this version of Flowmark (written by a newer one?)")]
    UnknownKind { kind: String },
    #[error(
        "stored effect `{kind}` is of format version {version}; this version of Flowmark reads up to {EFFECT_VERSION}"
    )]
    NewerVersion { kind: String, version: u32 },
    #[error("stored effect `{kind}` is unreadable: {message}")]
    Malformed { kind: String, message: String },
}

/// What a reader looks at before it reads the rest: the kind and the version.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    effect: Cow<'a, str>,
    #[serde(default)]
    v: Option<u32>,
}

impl OutboxEffect {
    /// The stored form (`{"v": 1, "effect": …, …}`).
    pub fn to_json(&self) -> String {
        match self {
            OutboxEffect::Run(kind) => run_effect_json(kind),
            OutboxEffect::Deliver(delivery) => versioned(&format!("\"effect\":\"{DELIVERY_TAG}\","), delivery),
        }
    }

    /// Reads a stored effect back; refuses what this version does not know.
    pub fn from_json(text: &str) -> Result<OutboxEffect, EffectError> {
        let header: Header<'_> = serde_json::from_str(text)
            .map_err(|e| EffectError::Malformed { kind: "?".to_owned(), message: e.to_string() })?;
        let kind = header.effect.as_ref();
        let version = header.v.unwrap_or(1);
        if version > EFFECT_VERSION {
            return Err(EffectError::NewerVersion { kind: kind.to_owned(), version });
        }
        let malformed = |e: serde_json::Error| EffectError::Malformed { kind: kind.to_owned(), message: e.to_string() };
        if kind == DELIVERY_TAG {
            return serde_json::from_str(text).map(OutboxEffect::Deliver).map_err(malformed);
        }
        if !EffectKind::TAGS.contains(&kind) {
            return Err(EffectError::UnknownKind { kind: kind.to_owned() });
        }
        serde_json::from_str(text).map(OutboxEffect::Run).map_err(malformed)
    }
}

/// The stored form of a run's effect, written without a copy of it.
pub fn run_effect_json(kind: &EffectKind) -> String {
    versioned("", kind)
}

/// `{"v": <version>, <prefix><the fields of value>}`: `value` serializes as a JSON object
/// (both enums are tagged, so never an empty one), whose opening brace this replaces.
fn versioned<T: Serialize>(prefix: &str, value: &T) -> String {
    // Strings, numbers, bools and JSON values with string keys: serializing cannot fail.
    let body = serde_json::to_string(value).unwrap_or_else(|e| unreachable!("an outbox effect serializes: {e}"));
    let fields = body.strip_prefix('{').unwrap_or_else(|| unreachable!("a tagged enum serializes as an object"));
    format!("{{\"v\":{EFFECT_VERSION},{prefix}{fields}")
}

impl Serialize for OutboxEffect {
    /// As stored, for logs and recorders.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value: serde_json::Value = serde_json::from_str(&self.to_json()).map_err(serde::ser::Error::custom)?;
        value.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmark_core::Timestamp;
    use flowmark_core::engine::{NotifyReason, RenderContext};
    use flowmark_core::model::{Channel, Raci, ScoreChange};
    use proptest::prelude::*;
    use serde_json::json;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _\\-\"\\\\é“”]{0,12}"
    }

    fn roles() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(text(), 0..3)
    }

    fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
        prop::option::of(any::<i64>().prop_map(Timestamp))
    }

    fn channel() -> impl Strategy<Value = Channel> {
        prop::sample::select(Channel::ALL.to_vec())
    }

    /// Scores and values in eighths: exact in binary, so equality after a round trip
    /// tests the format, not float parsing.
    fn finite() -> impl Strategy<Value = f64> {
        (-8_000_000i64..8_000_000).prop_map(|n| n as f64 / 8.0)
    }

    fn kind() -> impl Strategy<Value = EffectKind> {
        let json_value = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|n| json!(n)),
            text().prop_map(|s| json!(s)),
            text().prop_map(|s| json!({ "nested": [s, 1, true] })),
        ];
        // A context's `null` reads back as absent, which renders the same: not generated.
        let present = json_value.clone().prop_filter("not null", |v| !v.is_null());
        let context = (prop::option::of(present.clone()), prop::option::of(present.clone()), prop::option::of(present))
            .prop_map(|(event, steps, run)| RenderContext { event, trigger: None, steps, run });
        let reason = prop::sample::select(vec![
            NotifyReason::Message,
            NotifyReason::TaskOverdue,
            NotifyReason::TaskCompleted,
            NotifyReason::ApprovalReminder,
            NotifyReason::Escalation,
        ]);
        prop_oneof![
            (channel(), any::<bool>(), context).prop_map(|(channel, transactional, context)| {
                EffectKind::SendMessage { channel, transactional, context }
            }),
            (text(), text(), reason).prop_map(|(to, message, reason)| EffectKind::Notify { to, message, reason }),
            (text(), any::<bool>(), finite()).prop_map(|(model, add, n)| EffectKind::AdjustScore {
                model,
                change: if add { ScoreChange::Add(n) } else { ScoreChange::Set(n) },
            }),
            prop::collection::vec((text(), json_value.clone()), 0..4)
                .prop_map(|set| EffectKind::UpdateSubject { set: set.into_iter().collect() }),
            (text(), prop::collection::vec((text(), json_value), 0..4), any::<u32>()).prop_map(
                |(event, properties, depth)| EffectKind::EmitEvent {
                    event,
                    properties: serde_json::Value::Object(properties.into_iter().collect()),
                    depth,
                }
            ),
            (text(), prop::option::of(text()), roles(), text(), roles(), roles(), timestamp()).prop_map(
                |(title, description, responsible, accountable, consulted, informed, due_at)| EffectKind::CreateTask {
                    title,
                    description,
                    raci: Raci { responsible, accountable, consulted, informed },
                    due_at,
                }
            ),
            (any::<u32>(), roles(), timestamp()).prop_map(|(round, approvers, due_at)| EffectKind::RequestApproval {
                round,
                approvers,
                due_at
            }),
            (text(), any::<bool>()).prop_map(|(workflow, wait)| EffectKind::StartRun { workflow, wait }),
            (text(), prop::option::of(finite()), prop::option::of(text()))
                .prop_map(|(goal, value, currency)| EffectKind::RecordConversion { goal, value, currency }),
        ]
    }

    fn effect() -> impl Strategy<Value = OutboxEffect> {
        prop_oneof![
            kind().prop_map(OutboxEffect::Run),
            (text(), text(), text(), text()).prop_map(|(to, subject, text, link)| OutboxEffect::Deliver(
                Delivery::Email { to, subject, text, link }
            )),
            (text(), text(), text()).prop_map(|(url, text, link)| OutboxEffect::Deliver(Delivery::Chat {
                url,
                text,
                link
            })),
        ]
    }

    proptest! {
        #[test]
        fn every_effect_reads_back_as_it_was_written(effect in effect()) {
            let stored = effect.to_json();
            let read = OutboxEffect::from_json(&stored);
            prop_assert_eq!(read, Ok(effect), "stored as {}", stored);
        }

        #[test]
        fn every_run_effect_is_tagged_with_a_known_kind(kind in kind()) {
            let value: serde_json::Value = serde_json::from_str(&OutboxEffect::Run(kind).to_json()).unwrap();
            prop_assert_eq!(&value["v"], &json!(EFFECT_VERSION));
            let tag = value["effect"].as_str().unwrap().to_owned();
            prop_assert!(EffectKind::TAGS.contains(&tag.as_str()), "{} is not in EffectKind::TAGS", tag);
        }
    }

    #[test]
    fn rows_written_before_the_version_field_read_as_version_1() {
        let old = r#"{"effect":"send_message","channel":"email","transactional":false,"context":{}}"#;
        let read = OutboxEffect::from_json(old).unwrap();
        assert!(matches!(read, OutboxEffect::Run(EffectKind::SendMessage { channel: Channel::Email, .. })));
        let delivery = r#"{"effect":"deliver_notification","channel":"chat","url":"u","text":"t","link":"l"}"#;
        assert_eq!(
            OutboxEffect::from_json(delivery).unwrap(),
            OutboxEffect::Deliver(Delivery::Chat { url: "u".into(), text: "t".into(), link: "l".into() })
        );
    }

    #[test]
    fn a_kind_or_version_from_a_newer_flowmark_is_refused_not_misread() {
        assert_eq!(
            OutboxEffect::from_json(r#"{"v":1,"effect":"send_sms_v2","to":"+1"}"#),
            Err(EffectError::UnknownKind { kind: "send_sms_v2".to_owned() })
        );
        assert_eq!(
            OutboxEffect::from_json(r#"{"v":2,"effect":"send_message","channel":"email"}"#),
            Err(EffectError::NewerVersion { kind: "send_message".to_owned(), version: 2 })
        );
        let error = OutboxEffect::from_json(r#"{"v":1,"effect":"start_run"}"#).unwrap_err();
        assert!(matches!(&error, EffectError::Malformed { kind, .. } if kind == "start_run"), "{error}");
        assert!(matches!(OutboxEffect::from_json("[]"), Err(EffectError::Malformed { .. })));
    }
}
