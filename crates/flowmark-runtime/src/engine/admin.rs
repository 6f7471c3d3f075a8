//! The writes the server's handlers ask for that are not a run's: web UI accounts and
//! sessions, contacts imported from CSV, a disabled webhook URL enabled again.
//!
//! They are here so a handler never writes through the store itself: handlers run on the
//! owner thread and may read `Engine::store()`, but every write goes through an `Engine`
//! method, which keeps what the engine holds in memory (segment sweep, gone URLs) in step
//! with what it stores. A tidy test in `flowmark-server` holds the server to this.

use flowmark_core::Timestamp;
use flowmark_store::{Error, Session, Store};

use serde_json::Value;

use super::Engine;
use crate::import::{Imported, Row};
use crate::suppressions::Suppressions;

impl<S: Store> Engine<S> {
    /// Sets a web UI account's password hash (the account is made if new).
    pub fn put_account(&mut self, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error> {
        self.store.put_account(email, password_hash, now)
    }

    /// Stores an API token under its hash (the catalogue: the `default` workspace's store).
    pub fn put_token(&mut self, hash: &str, token: &flowmark_store::Token) -> Result<(), Error> {
        self.store.put_token(hash, token)
    }

    /// Puts a quarantined effect back in the outbox, ready at `now` (`Store::requeue_effect`).
    pub fn requeue_effect(&mut self, key: &str, now: Timestamp) -> Result<bool, Error> {
        self.store.requeue_effect(key, now)
    }

    /// Stores a web UI session under the hash of its cookie.
    pub fn start_session(&mut self, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error> {
        self.store.put_session(hash, session, now)
    }

    /// Ends a web UI session (signing out); a session already gone is no error.
    pub fn end_session(&mut self, hash: &str) -> Result<(), Error> {
        self.store.end_session(hash)
    }

    /// Writes checked CSV rows as contacts (resumable under `checkpoint`), then restarts the
    /// segment sweep: the rows did not pass through ingestion, so a pass puts them in their
    /// segments now rather than at the next one.
    pub fn import_contacts(&mut self, rows: &[Row], checkpoint: &str, now: Timestamp) -> Result<Imported, Error> {
        let imported = crate::import::write_rows(&mut self.store, rows, checkpoint, now, |_| {})?;
        // Sends already handed to workers are checked against the suppressions it imported.
        for row in rows {
            let mut change = Value::Object(row.traits.clone());
            if let Some(dnc) = row.do_not_contact {
                change[crate::UNSUBSCRIBED_TRAIT] = Value::Bool(dnc);
            }
            if !Suppressions::concerns(&change) {
                continue;
            }
            let id = match (&row.id, &row.email) {
                (Some(id), _) => Some(id.clone()),
                (None, Some(email)) => self.store.contact_id_by_email(email)?,
                (None, None) => None,
            };
            if let Some(contact) = id.map(|id| self.store.contact(&id)).transpose()?.flatten() {
                self.suppressions.note(&contact.id, &contact.traits, now);
            }
        }
        self.restart_segment_sweep(now);
        Ok(imported)
    }

    /// Forgets a stored gone webhook URL; `true` when it was stored.
    pub fn forget_gone_endpoint(&mut self, url: &str) -> Result<bool, Error> {
        self.store.forget_gone_endpoint(url)
    }
}
