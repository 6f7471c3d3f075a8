//! The suppressions the writer has committed lately, readable by the workers that perform
//! effects: the last check before a message leaves.
//!
//! A send is checked against its contact when it is claimed (the dispatcher reads the
//! contact as committed). An unsubscribe, bounce, complaint or consent withdrawal committed
//! after that would miss a send already handed to a worker: the engine notes each such
//! change here as it commits it (before the change is answered), and the worker asks just
//! before the message goes out.
//!
//! Invariants: a note is made before the commit that caused it is answered; a note lives at
//! least `SUPPRESSION_MEMORY_MS`, longer than any claim can be in flight, so every send
//! claimed before the change is checked against it; the check is one map lookup under a
//! read lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use flowmark_core::Timestamp;
use flowmark_core::engine::{CONSENT_TRAIT, SUPPRESSED_REASON_TRAIT, UNSUBSCRIBED_TRAIT, refusal};
use flowmark_core::model::Channel;
use serde_json::{Map, Value};

/// How long a note is kept (an hour): longer than the longest claim (`ATTEMPT_TIMEOUT_MAX`
/// plus its lease margin).
pub const SUPPRESSION_MEMORY_MS: i64 = 3_600_000;

/// Notes past this count are pruned of the expired ones when the next is made.
const NOTES_BEFORE_PRUNING: usize = 1024;

/// The traits that decide whether a contact may be sent to (`engine::refusal` reads them).
const SUPPRESSION_TRAITS: [&str; 3] = [UNSUBSCRIBED_TRAIT, SUPPRESSED_REASON_TRAIT, CONSENT_TRAIT];

/// Contacts whose suppression changed lately, with the traits that decide it. Cheap to
/// clone: every clone is the same set.
#[derive(Debug, Clone, Default)]
pub struct Suppressions(Arc<RwLock<HashMap<String, Noted>>>);

#[derive(Debug)]
struct Noted {
    traits: Value,
    at: Timestamp,
}

impl Suppressions {
    /// Whether a change of a contact's traits can change whether it may be sent to.
    pub fn concerns(change: &Value) -> bool {
        change.as_object().is_some_and(|fields| SUPPRESSION_TRAITS.iter().any(|t| fields.contains_key(*t)))
    }

    /// Notes a contact's data as just committed: what decides its suppression from now on.
    pub fn note(&self, subject_id: &str, subject: &Value, now: Timestamp) {
        let traits: Map<String, Value> = SUPPRESSION_TRAITS
            .iter()
            .filter_map(|name| subject.get(*name).map(|value| ((*name).to_owned(), value.clone())))
            .collect();
        let Ok(mut notes) = self.0.write() else { return };
        if notes.len() >= NOTES_BEFORE_PRUNING {
            let oldest = now.ms().saturating_sub(SUPPRESSION_MEMORY_MS);
            notes.retain(|_, noted| noted.at.ms() >= oldest);
        }
        notes.insert(subject_id.to_owned(), Noted { traits: Value::Object(traits), at: now });
    }

    /// Why a message on `channel` to `subject_id` must not go now, by what was committed since
    /// it was claimed; `None` when nothing was, or it may go.
    pub fn refusal(&self, subject_id: &str, channel: Channel) -> Option<String> {
        let notes = self.0.read().ok()?;
        let noted = notes.get(subject_id)?;
        refusal(&noted.traits, channel).map(|reason| format!("{reason} (since the send was queued)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_noted_unsubscribe_refuses_email_and_a_resubscribe_lifts_it() {
        let suppressions = Suppressions::default();
        assert_eq!(suppressions.refusal("c-1", Channel::Email), None);
        suppressions.note("c-1", &json!({"email": "a@example.com", "unsubscribed": true}), Timestamp(1));
        let refused = suppressions.refusal("c-1", Channel::Email).expect("refused");
        assert!(refused.starts_with("suppressed: the contact is unsubscribed"), "{refused}");
        assert_eq!(suppressions.refusal("c-1", Channel::Webhook), None, "unsubscribing concerns email");
        suppressions.note("c-1", &json!({"unsubscribed": false}), Timestamp(2));
        assert_eq!(suppressions.refusal("c-1", Channel::Email), None);
        suppressions.note("c-2", &json!({"consent": {"sms": false}}), Timestamp(3));
        assert!(suppressions.refusal("c-2", Channel::Sms).is_some());
        assert!(Suppressions::concerns(&json!({"unsubscribed": true})));
        assert!(!Suppressions::concerns(&json!({"plan": "pro"})));
    }

    #[test]
    fn old_notes_are_pruned_once_there_are_many() {
        let suppressions = Suppressions::default();
        for i in 0..NOTES_BEFORE_PRUNING {
            suppressions.note(&format!("c-{i}"), &json!({"unsubscribed": true}), Timestamp(0));
        }
        let later = Timestamp(SUPPRESSION_MEMORY_MS + 1);
        suppressions.note("fresh", &json!({"unsubscribed": true}), later);
        assert!(suppressions.refusal("c-0", Channel::Email).is_none(), "older than the memory: pruned");
        assert!(suppressions.refusal("fresh", Channel::Email).is_some());
    }
}
