//! A bounded cache of recently used contacts, parsed, in front of the `contacts` table.
//!
//! A journey reads a contact's traits several times in quick succession (a timer fires, the
//! email it sends is rendered, the result is fed back), and each read parsed the same JSON
//! again. The cache keeps the contacts read or committed lately, in two generations: entries
//! go into the young one; when it is full, it becomes the old one and the former old one is
//! dropped; a hit in the old generation moves the entry back to the young one. Both steps are
//! O(1), and the cache never holds more than two generations' worth.
//!
//! Invariant: an entry equals the contact's committed row. The store puts an entry only after
//! reading the row or after committing the batch that wrote it, and drops every entry a merge
//! of identities touches; nothing else writes contacts.

use std::collections::HashMap;

use flowmark_store::Contact;

/// Contacts per generation.
const GENERATION_ENTRIES: usize = 4096;
/// Bytes of stored JSON per generation: contacts with large traits rotate sooner, so the
/// cache stays within a few megabytes whatever the contacts hold.
const GENERATION_BYTES: usize = 2 << 20;

#[derive(Default)]
pub(crate) struct ContactCache {
    young: Generation,
    old: Generation,
}

#[derive(Default)]
struct Generation {
    entries: HashMap<String, (Contact, usize)>,
    bytes: usize,
}

impl ContactCache {
    /// The cached contact, if any.
    pub(crate) fn get(&mut self, id: &str) -> Option<&Contact> {
        if !self.young.entries.contains_key(id) {
            let (contact, bytes) = self.old.entries.remove(id)?;
            self.old.bytes -= bytes;
            self.insert(contact, bytes);
        }
        self.young.entries.get(id).map(|(contact, _)| contact)
    }

    /// Keeps `contact`, whose stored JSON is about `bytes` long, replacing any older entry.
    pub(crate) fn insert(&mut self, contact: Contact, bytes: usize) {
        self.remove(&contact.id);
        if self.young.entries.len() >= GENERATION_ENTRIES || self.young.bytes + bytes > GENERATION_BYTES {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.bytes += bytes;
        self.young.entries.insert(contact.id.clone(), (contact, bytes));
    }

    /// Forgets a contact (a merge of identities rewrote or deleted it).
    pub(crate) fn remove(&mut self, id: &str) {
        for generation in [&mut self.young, &mut self.old] {
            if let Some((_, bytes)) = generation.entries.remove(id) {
                generation.bytes -= bytes;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.entries.len() + self.old.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmark_core::Timestamp;
    use serde_json::json;

    fn contact(id: &str, n: i64) -> Contact {
        Contact { id: id.to_owned(), traits: json!({ "n": n }), timezone: None, updated_at: Timestamp(n) }
    }

    #[test]
    fn an_entry_is_replaced_moved_and_removed() {
        let mut cache = ContactCache::default();
        cache.insert(contact("a", 1), 10);
        cache.insert(contact("a", 2), 10);
        assert_eq!(cache.get("a").map(|c| c.updated_at), Some(Timestamp(2)));
        assert_eq!(cache.len(), 1);
        cache.remove("a");
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn the_cache_holds_at_most_two_generations_and_keeps_what_is_used() {
        let mut cache = ContactCache::default();
        cache.insert(contact("kept", 0), 10);
        for i in 0..(3 * GENERATION_ENTRIES) {
            cache.insert(contact(&format!("c-{i}"), i as i64), 10);
            // Read once per generation, the entry keeps moving back to the young one.
            if i % (GENERATION_ENTRIES / 2) == 0 {
                assert!(cache.get("kept").is_some(), "lost after {i} inserts");
            }
            assert!(cache.len() <= 2 * GENERATION_ENTRIES);
        }
        assert!(cache.get("c-0").is_none(), "the oldest generation was dropped");
        assert!(cache.get(&format!("c-{}", 3 * GENERATION_ENTRIES - 1)).is_some());
    }

    #[test]
    fn large_contacts_rotate_generations_by_bytes() {
        let mut cache = ContactCache::default();
        for i in 0..10 {
            cache.insert(contact(&format!("big-{i}"), i), GENERATION_BYTES / 2);
        }
        assert!(cache.young.bytes <= GENERATION_BYTES && cache.old.bytes <= GENERATION_BYTES);
        assert!(cache.len() <= 4);
    }
}
