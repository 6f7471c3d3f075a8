//! Erasing a contact (GDPR Art. 17, CCPA deletion): everything held about a person removed in
//! one transaction, and a tombstone so their old events are not stored again.
//!
//! The contact is erased under every id it is known by (its own and its aliases'), through
//! `Store::erase_subject`. A tombstone is a one-way hash of each id (SHA-256 with a fixed
//! prefix): the store keeps no id, yet an event that names one is recognised at ingestion and
//! dropped, whatever its `messageId`, so re-sent old events never bring the person back.
//! Effects of the erased runs still in flight at a worker are forgotten: their answers change
//! nothing.
//!
//! Invariant: after `erase_contact`, no table of the store holds the contact's ids, and no
//! event naming one of them is stored again.

use std::collections::HashSet;

use flowmark_core::Timestamp;
use flowmark_store::{Erasure, Store};
use sha2::{Digest, Sha256};

use super::{Engine, Error};

/// The tombstone of `id`: hex SHA-256 of a fixed prefix and the id.
pub fn tombstone(id: &str) -> String {
    let digest = Sha256::new().chain_update(b"flowmark-erased:").chain_update(id.as_bytes()).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tombstones an engine checks events against, loaded once at start.
#[derive(Debug, Default)]
pub(super) struct Tombstones(HashSet<String>);

impl Tombstones {
    pub(super) fn load(store: &impl Store) -> Result<Tombstones, Error> {
        Ok(Tombstones(store.tombstones()?.into_iter().collect()))
    }

    /// Was `id` erased? (Free while nobody has been.)
    pub(super) fn holds(&self, id: &str) -> bool {
        !self.0.is_empty() && self.0.contains(&tombstone(id))
    }
}

/// Most events, runs and score changes one export of a person lists (each).
pub const EXPORT_ROWS_MAX: usize = 100_000;

impl<S: Store> Engine<S> {
    /// Everything held about contact `id` (an alias finds its canonical contact), as one JSON
    /// document (GDPR Art. 15, CCPA access): the contact (traits, scores, segments, time
    /// zone), the ids it is known by, its events, its runs with their histories and decision
    /// records, and its score history, each at most `EXPORT_ROWS_MAX`. `None` when nothing is
    /// held.
    pub fn export_contact(&self, id: &str) -> Result<Option<serde_json::Value>, Error> {
        let canonical = self.store.canonical_id(id)?.unwrap_or_else(|| id.to_owned());
        let contact = self.store.contact(&canonical)?;
        let events = self.store.events_of_subject(&canonical, Timestamp(i64::MIN), EXPORT_ROWS_MAX)?;
        let filter = flowmark_store::RunFilter { subject_id: Some(canonical.clone()), ..Default::default() };
        let runs = self.store.runs(&filter, EXPORT_ROWS_MAX)?;
        if contact.is_none() && events.is_empty() && runs.is_empty() {
            return Ok(None);
        }
        let mut run_documents = Vec::with_capacity(runs.len());
        for run in &runs {
            run_documents.push(serde_json::json!({
                "run": run,
                "history": self.store.history(run.id)?,
                "decisions": self.store.decisions(run.id)?,
            }));
        }
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|e| serde_json::json!({ "messageId": e.id, "event": e.name, "at": e.at, "payload": e.payload }))
            .collect();
        Ok(Some(serde_json::json!({
            "id": canonical,
            "aliases": self.store.aliases_of(&canonical)?,
            "contact": contact.map(|c| serde_json::json!({
                "traits": c.traits, "timezone": c.timezone, "updated_at": c.updated_at,
            })),
            "events": events,
            "runs": run_documents,
            "score_history": self.store.score_history(&canonical, EXPORT_ROWS_MAX)?,
        })))
    }

    /// Was `id` erased (so nothing about it may be stored again)?
    pub fn is_erased(&self, id: &str) -> bool {
        self.tombstones.holds(id)
    }

    /// Erases contact `id` (an alias finds its canonical contact) and everything held about
    /// it; see the module header. Erasing an unknown or erased id succeeds and removes
    /// nothing.
    pub fn erase_contact(&mut self, id: &str, now: Timestamp) -> Result<Erasure, Error> {
        let canonical = self.store.canonical_id(id)?.unwrap_or_else(|| id.to_owned());
        let mut ids = vec![canonical.clone()];
        ids.extend(self.store.aliases_of(&canonical)?);
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
        let tombstones: Vec<String> = ids.iter().map(|id| tombstone(id)).collect();
        let erasure = self.store.erase_subject(&ids, &tombstones, now)?;
        self.tombstones.0.extend(tombstones);
        let runs: HashSet<_> = erasure.runs.iter().copied().collect();
        self.dispatching.forget_runs(&runs);
        tracing::info!(
            runs = erasure.runs.len(),
            events = erasure.events,
            effects = erasure.effects,
            "contact erased, with everything held about it"
        );
        Ok(erasure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_is_one_way_and_stable() {
        assert_eq!(tombstone("ada"), tombstone("ada"));
        assert_ne!(tombstone("ada"), tombstone("Ada"));
        assert_eq!(tombstone("ada").len(), 64);
        assert!(!tombstone("ada").contains("ada"));
        let none = Tombstones::default();
        assert!(!none.holds("ada"));
        let some = Tombstones([tombstone("ada")].into_iter().collect());
        assert!(some.holds("ada") && !some.holds("bo"));
    }
}
