//! An outbox row written by a newer Flowmark — a kind or a format version this one does not
//! know — is held by the dispatcher, loudly, and never performed, dropped or misread. The one
//! test here drives the engine directly: it must write such a row into the database itself.

use std::sync::Arc;

use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_runtime::{Connectors, Engine, RecordingConnector, UNREADABLE_EFFECT_HOLD_MS};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{EffectError, Store};
use serde_json::json;

const NOON: Timestamp = Timestamp(1_767_614_400_000); // 2026-01-05T12:00:00Z

fn download(id: &str) -> Event {
    let payload = json!({ "type": "track", "event": "Whitepaper Downloaded", "messageId": id,
        "properties": { "topic": "automation" } });
    Event { id: id.to_owned(), name: "Whitepaper Downloaded".to_owned(), at: NOON, payload: payload.into() }
}

#[test]
fn an_effect_written_by_a_newer_version_is_held_not_performed_or_dropped() {
    let dir = std::env::temp_dir().join(format!("flowmark-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("flowmark.db");
    {
        let mut engine = Engine::new(SqliteStore::open(&db).unwrap(), json!({})).unwrap();
        let blueprint = std::fs::read_to_string(super::repo_path("blueprints/whitepaper-nurture.yaml")).unwrap();
        engine.deploy("whitepaper-nurture.yaml", &blueprint, NOON).unwrap();
        for (contact, id) in [("ada", "m-1"), ("bob", "m-2"), ("cy", "m-3")] {
            engine
                .store_mut()
                .upsert_contact(contact, &json!({ "email": format!("{contact}@example.com") }), None, NOON)
                .unwrap();
            assert_eq!(engine.ingest(contact, download(id), NOON).unwrap().runs_started.len(), 1);
        }
        assert_eq!(engine.store().outbox_depth().unwrap(), 3, "each run queued its email");
    }
    // What a newer version could have written: a kind this one does not know, and a known
    // kind in a newer format.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let keys: Vec<String> = {
        let mut statement = conn.prepare("SELECT key FROM outbox ORDER BY key").unwrap();
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
    };
    conn.execute(
        "UPDATE outbox SET effect = ?2 WHERE key = ?1",
        [&keys[0], r#"{"v":1,"effect":"send_sms_v2","to":"+1"}"#],
    )
    .unwrap();
    conn.execute(
        "UPDATE outbox SET effect = ?2 WHERE key = ?1",
        [&keys[1], r#"{"v":2,"effect":"send_message","channel":"email","transactional":false,"context":{}}"#],
    )
    .unwrap();
    drop(conn);

    let mut engine = Engine::new(SqliteStore::open(&db).unwrap(), json!({})).unwrap();
    let ready = engine.store().ready_effects(NOON, 10).unwrap();
    let errors: Vec<&EffectError> = ready.unreadable.iter().map(|u| &u.error).collect();
    assert_eq!(
        errors,
        [
            &EffectError::UnknownKind { kind: "send_sms_v2".to_owned() },
            &EffectError::NewerVersion { kind: "send_message".to_owned(), version: 2 }
        ]
    );
    assert_eq!(ready.entries.len(), 1, "the readable row still comes");

    let recorder = Arc::new(RecordingConnector::default());
    let mut connectors = Connectors::new(recorder.clone());
    assert_eq!(engine.dispatch(NOON, 10, &mut connectors).unwrap(), 3);
    let performed: Vec<String> = recorder.performed().into_iter().map(|(key, _, _)| key).collect();
    assert_eq!(performed, [keys[2].clone()], "only the readable effect was performed");
    assert_eq!(engine.stats().effects_unreadable, 2, "each held row is counted");
    assert_eq!(engine.store().outbox_depth().unwrap(), 2, "the unreadable rows stay in the outbox");
    let soon = Timestamp(NOON.ms() + UNREADABLE_EFFECT_HOLD_MS - 1);
    assert!(engine.store().ready_effects(soon, 10).unwrap().is_empty(), "they are held back for a while");
    let later = Timestamp(NOON.ms() + UNREADABLE_EFFECT_HOLD_MS);
    let again = engine.store().ready_effects(later, 10).unwrap();
    assert_eq!((again.entries.len(), again.unreadable.len()), (0, 2), "and looked at again, attempts uncounted");
    assert!(again.unreadable.iter().all(|u| u.attempts == 0));
    let _ = std::fs::remove_dir_all(&dir);
}
