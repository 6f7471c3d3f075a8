//! The embedded store: SQLite through rusqlite, in WAL mode, schema by migrations.
//!
//! One `SqliteStore` is one connection. Writes go through the owner's handle; a commit is one
//! SQLite transaction, so a batch of transitions shares one fsync (group commit).
//! `synchronous = FULL`: a commit that returned survives a crash of the process and of the
//! machine; throughput comes from batching, not from skipping the sync. The owner may defer a
//! group's sync (`defer_durability`) and have another thread make it durable before the
//! group is answered (`wal_sync`).
//!
//! Invariant: the schema is at the latest migration before any other statement runs.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::Path;

use flowmark_core::Timestamp;
use flowmark_core::engine::{
    ArmedTimer, DecisionRecord, Effect, EffectKind, Event, HistoryEntry, HistoryKind, ParentRun, Run, RunId, RunStatus,
    Sent, TimerId, TimerPurpose, Transition,
};
use flowmark_core::model::Channel;
use rusqlite::{CachedStatement, Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use serde_json::Value;

use crate::cache::ContactCache;
use crate::wal_sync::WalSync;
use flowmark_store::{
    Attempt, Batch, Contact, ContactChange, DeadLetter, DueTimer, EffectOwner, Erasure, Error, GoneEndpoint,
    KeyedStart, OutboxEffect, OutboxEntry, Position, ReadyEffects, RunFilter, Schedule, ScheduleChange, Scope,
    ScoreRecord, Store, Token, UnreadableEffect, WorkflowStatus, WorkflowSummary,
};
use flowmark_store::{Comment, Durability as _, Notification, Session, WorkItem, WorkKind};

/// rusqlite's and the migration library's errors as the store's: the contract names no
/// database, so this backend wraps its own.
pub(crate) trait Db<T> {
    fn db(self) -> Result<T, Error>;
}

impl<T> Db<T> for Result<T, rusqlite::Error> {
    fn db(self) -> Result<T, Error> {
        self.map_err(|e| Error::Backend(Box::new(e)))
    }
}

impl<T> Db<T> for Result<T, rusqlite_migration::Error> {
    fn db(self) -> Result<T, Error> {
        self.map_err(|e| Error::Schema(Box::new(e)))
    }
}

/// The schema, one migration per release that changes it; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE workflow_versions (
    workflow_id TEXT NOT NULL REFERENCES workflows(id),
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
) WITHOUT ROWID;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    subject_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX runs_by_subject ON runs (subject_id, status, id);
CREATE INDEX runs_by_workflow ON runs (workflow_id, subject_id, id);
CREATE TABLE history (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    step TEXT,
    entry TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE decisions (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    step TEXT,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE timers (
    run_id INTEGER NOT NULL,
    timer_id INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    PRIMARY KEY (run_id, timer_id)
) WITHOUT ROWID;
CREATE INDEX timers_by_due ON timers (due_at, run_id, timer_id);
CREATE TABLE outbox (
    key TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    step TEXT NOT NULL,
    effect TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    result TEXT
);
CREATE INDEX outbox_ready ON outbox (status, next_attempt_at, created_at);
CREATE TABLE events (
    message_id TEXT PRIMARY KEY,
    subject_id TEXT NOT NULL,
    name TEXT NOT NULL,
    at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX events_by_subject ON events (subject_id, at);
CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    traits TEXT NOT NULL,
    timezone TEXT,
    updated_at INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    // Frequency caps read a subject's sent messages through its runs' outbox rows.
    r#"
CREATE INDEX outbox_by_run ON outbox (run_id, created_at);
"#,
    r#"
CREATE TABLE schedules (
    workflow_id TEXT NOT NULL,
    trigger INTEGER NOT NULL,
    spec TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    cursor TEXT,
    PRIMARY KEY (workflow_id, trigger)
) WITHOUT ROWID;
CREATE INDEX schedules_by_due ON schedules (due_at);
"#,
    r#"
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#,
    // Identities merged by `alias` (and `identify` with both ids): an alias resolves to its
    // canonical id; chains are kept flat.
    r#"
CREATE TABLE aliases (
    alias TEXT PRIMARY KEY,
    canonical TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX aliases_by_canonical ON aliases (canonical);
"#,
    // Imports find contacts by email address.
    r#"
CREATE INDEX contacts_by_email ON contacts (lower(json_extract(traits, '$.email')));
"#,
    r#"
CREATE TABLE score_changes (
    subject_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    before REAL NOT NULL,
    delta REAL NOT NULL,
    after REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (subject_id, at, seq)
) WITHOUT ROWID;
"#,
    crate::work::MIGRATION,
    // Where each run stands (its tokens' step indices), so the run explorer counts and filters
    // by step from an index instead of reading every run's state. The index is ordered by id
    // within a workflow and status and covers `version` and `at`: a filtered list reads it
    // newest first and stops at its limit, reading only the matching runs' states.
    r#"
ALTER TABLE runs ADD COLUMN at TEXT NOT NULL DEFAULT '';
UPDATE runs SET at = COALESCE(
    (SELECT group_concat(json_extract(value, '$.at'), ' ') FROM json_each(runs.state, '$.tokens')), '');
CREATE INDEX runs_by_position ON runs (workflow_id, status, id, version, at);
"#,
    crate::work::MIGRATION_INBOX,
    crate::work::MIGRATION_ATTACHMENTS,
    // The dispatcher reads pending effects only: done and failed ones (most of the outbox,
    // and every effect applied in its own commit) stay out of the index it reads.
    r#"
DROP INDEX outbox_ready;
CREATE INDEX outbox_pending ON outbox (next_attempt_at, created_at, key) WHERE status = 'pending';
"#,
    // Hand starts sent with an `Idempotency-Key`: a retried call answers the run the first
    // one started instead of starting another.
    r#"
CREATE TABLE start_keys (
    workflow_id TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, key)
) WITHOUT ROWID;
"#,
    // Idempotency keys are forgotten after a retention window, oldest first.
    r#"
CREATE INDEX start_keys_by_age ON start_keys (created_at);
"#,
    // Frequency caps count a subject's marketing messages by channel: a column, and an index
    // of those messages only that answers the count by itself (it replaces the index of every
    // effect by run, which only the count read).
    r#"
ALTER TABLE outbox ADD COLUMN sent_channel TEXT;
UPDATE outbox SET sent_channel = json_extract(effect, '$.channel')
 WHERE json_extract(effect, '$.effect') = 'send_message' AND json_extract(effect, '$.transactional') = 0;
DROP INDEX outbox_by_run;
CREATE INDEX outbox_sent ON outbox (run_id, sent_channel, created_at) WHERE sent_channel IS NOT NULL;
"#,
    // Trail rows (`history`, `decisions`) take their sequence numbers from one counter, so an
    // append needs no look-up of the run's last row. It starts past every number in use (a
    // run's rows stay in order: its old rows have smaller numbers); finding that number reads
    // both tables once, at the first start after the upgrade.
    r#"
CREATE TABLE trail_seq (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    next INTEGER NOT NULL
);
INSERT INTO trail_seq (id, next)
    SELECT 0, COALESCE(MAX(m), -1) + 1 FROM (SELECT MAX(seq) AS m FROM history UNION ALL SELECT MAX(seq) FROM decisions);
"#,
    // Trail rows are keyed by the order they are written in (the rowid), not by run: a new row
    // goes at the end of its table instead of beside its run's older rows. Keyed by run, every
    // commit rewrote a page of the table for each run it touched, most of a busy table, and
    // that was most of what commits wrote to the write-ahead log. A run's rows read back in
    // the order they were written, through a small index of run ids (`*_by_run`). Old rows
    // are copied in the order of their numbers, which the counter above kept per run.
    r#"
CREATE TABLE history_log (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    step TEXT,
    entry TEXT NOT NULL
);
INSERT INTO history_log (run_id, at, step, entry) SELECT run_id, at, step, entry FROM history ORDER BY seq, run_id;
DROP TABLE history;
ALTER TABLE history_log RENAME TO history;
CREATE INDEX history_by_run ON history (run_id);
CREATE TABLE decisions_log (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    step TEXT,
    record TEXT NOT NULL
);
INSERT INTO decisions_log (run_id, at, step, record)
    SELECT run_id, at, step, record FROM decisions ORDER BY seq, run_id;
DROP TABLE decisions;
ALTER TABLE decisions_log RENAME TO decisions;
CREATE INDEX decisions_by_run ON decisions (run_id);
DROP TABLE trail_seq;
"#,
    // A hand start's key keeps a fingerprint of the request it came with: a retry sends the
    // same request, and a different one under the same key is refused. Keys stored before
    // have none, and are compared by subject only, as they were.
    r#"
ALTER TABLE start_keys ADD COLUMN request TEXT;
"#,
    // Webhook URLs that answered `410 Gone`: disabled until someone enables them again, and
    // kept across restarts (a receiver that said its endpoint is gone must not be called
    // again after the next deploy).
    r#"
CREATE TABLE gone_endpoints (
    url TEXT PRIMARY KEY,
    gone_at INTEGER NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX gone_endpoints_by_time ON gone_endpoints (gone_at);
"#,
    // The person a token acts as (NULL: a service token, which names who acts).
    r#"
ALTER TABLE tokens ADD COLUMN person TEXT;
"#,
    // Erased contacts: a one-way hash of each id, so their old events are not stored again.
    r#"
CREATE TABLE tombstones (
    hash TEXT PRIMARY KEY,
    erased_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // How many of an effect's attempts have an outcome: `attempts - settled` ended with none
    // (the process died performing them), which is what quarantines a crash-looping effect.
    // Effects stored before count every attempt as settled. Dead letters are listed by time.
    r#"
ALTER TABLE outbox ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET settled = attempts;
CREATE INDEX outbox_dead ON outbox (created_at) WHERE status IN ('failed', 'quarantined');
"#,
];

pub struct SqliteStore {
    conn: Connection,
    /// Copies the write-ahead log into the database file on its own connection and thread,
    /// so the writer does not (file databases only).
    checkpointer: Option<Checkpointer>,
    /// Contacts read or committed lately, parsed (see `cache`).
    contacts: RefCell<ContactCache>,
    /// `PRAGMA data_version` when the cache was last known to be current: it changes when
    /// another connection (an import run beside the server) commits, and the cache is dropped.
    data_version: Cell<i64>,
    /// Syncs the write-ahead log for commits made with durability deferred (file databases).
    wal: Option<WalSync>,
    /// Are commits deferring their sync now (`synchronous = NORMAL`)?
    deferring: bool,
}

/// The background checkpointer: every `CHECKPOINT_EVERY`, a passive checkpoint (it never
/// blocks the writer or readers). The writer's own automatic checkpoint stays on, at
/// `CHECKPOINT_BACKSTOP_PAGES`, in case this one falls behind.
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// WAL pages (4 KiB each) after which the writer checkpoints by itself.
const CHECKPOINT_BACKSTOP_PAGES: i64 = 16_384;

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, Error> {
        let conn = Connection::open(path).db()?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flowmark-checkpoint".to_owned())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(%error, "a background checkpoint failed; the writer's own will catch up");
                    }
                }
            })
            .map_err(|e| Error::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Prepared statements kept per connection: more than the store has.
///
/// No statement binds its `LIMIT`: SQLite treats a bound `LIMIT` as a constant of the plan
/// and re-prepares the statement at every rebinding; limits are applied while reading rows
/// (every such query reads in index order, so it stops early).
const STATEMENT_CACHE_COUNT: usize = 64;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, Error> {
        let mut store = SqliteStore::setup(Connection::open(path.as_ref()).db()?)?;
        store.conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP_PAGES).db()?;
        store.checkpointer = Some(Checkpointer::start(path.as_ref())?);
        store.wal = Some(WalSync::new(path.as_ref()));
        Ok(store)
    }

    /// Opens the database at `path` with no checkpoints at all, for measuring what commits
    /// write (`flowmark bench journey --keep-wal`): every frame stays in the write-ahead log,
    /// which grows without bound. Not for serving.
    pub fn open_without_checkpoints(path: impl AsRef<Path>) -> Result<SqliteStore, Error> {
        let mut store = SqliteStore::setup(Connection::open(path.as_ref()).db()?)?;
        store.conn.pragma_update(None, "wal_autocheckpoint", 0).db()?;
        store.wal = Some(WalSync::new(path.as_ref()));
        Ok(store)
    }

    /// A private database in memory, for tests and dry runs.
    pub fn open_in_memory() -> Result<SqliteStore, Error> {
        SqliteStore::setup(Connection::open_in_memory().db()?)
    }

    /// A subject's events at or after `since` whose name `keep` accepts, oldest first, at
    /// most `limit` (the newest ones). The subject's index gives them newest first; a name is
    /// compared before the payload is read or parsed.
    fn recent_events(
        &self,
        subject_id: &str,
        since: Timestamp,
        limit: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<Event>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT name, message_id, at, payload FROM events WHERE subject_id = ?1 AND at >= ?2
             ORDER BY at DESC, message_id DESC",
            )
            .db()?;
        let mut rows = statement.query(params![subject_id, since.ms()]).db()?;
        let mut events = Vec::new();
        while events.len() < limit {
            let Some(row) = rows.next().db()? else { break };
            let name = row.get_ref(0).db()?.as_str().map_err(|e| Error::Corrupt(e.to_string()))?;
            if !keep(name) {
                continue;
            }
            let name = name.to_owned();
            let payload: String = row.get(3).db()?;
            events.push(Event {
                id: row.get(1).db()?,
                name,
                at: Timestamp(row.get(2).db()?),
                payload: from_json::<Value>(&payload)?.into(),
            });
        }
        events.reverse();
        Ok(events)
    }

    /// `erase_subject`'s deletions, in one transaction.
    fn erase_in_transaction(
        &mut self,
        ids: &[String],
        tombstones: &[String],
        now: Timestamp,
    ) -> Result<Erasure, Error> {
        let tx = self.conn.unchecked_transaction().db()?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS erase_ids (id TEXT PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS erase_runs (id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS erase_work (id TEXT PRIMARY KEY);
             DELETE FROM erase_ids; DELETE FROM erase_runs; DELETE FROM erase_work;",
        )
        .db()?;
        for id in ids {
            tx.execute("INSERT OR IGNORE INTO erase_ids (id) VALUES (?1)", [id]).db()?;
        }
        tx.execute_batch(
            "INSERT INTO erase_runs (id) SELECT id FROM runs WHERE subject_id IN (SELECT id FROM erase_ids);
             INSERT INTO erase_work (id) SELECT id FROM work
               WHERE subject_id IN (SELECT id FROM erase_ids) OR run_id IN (SELECT id FROM erase_runs);",
        )
        .db()?;
        let mut runs: Vec<RunId> = Vec::new();
        {
            let mut statement = tx.prepare("SELECT id FROM erase_runs ORDER BY id").db()?;
            let rows = statement.query_map([], |row| row.get::<_, i64>(0)).db()?;
            for row in rows {
                runs.push(RunId(row.db()? as u64));
            }
        }
        let count = |sql: &str| -> Result<u64, Error> { Ok(tx.execute(sql, []).db()? as u64) };
        let effects = count("DELETE FROM outbox WHERE run_id IN (SELECT id FROM erase_runs)")?;
        count("DELETE FROM history WHERE run_id IN (SELECT id FROM erase_runs)")?;
        count("DELETE FROM decisions WHERE run_id IN (SELECT id FROM erase_runs)")?;
        count("DELETE FROM timers WHERE run_id IN (SELECT id FROM erase_runs)")?;
        count("DELETE FROM start_keys WHERE run_id IN (SELECT id FROM erase_runs)")?;
        // A notification's key starts with the key of the effect that made it: `{run}-…`.
        count(
            "DELETE FROM notifications WHERE EXISTS
               (SELECT 1 FROM erase_runs WHERE notifications.key LIKE erase_runs.id || '-%')",
        )?;
        count("DELETE FROM work_people WHERE work_id IN (SELECT id FROM erase_work)")?;
        let work_items = count("DELETE FROM work WHERE id IN (SELECT id FROM erase_work)")?;
        count("DELETE FROM comments WHERE subject_id IN (SELECT id FROM erase_ids)")?;
        count("DELETE FROM runs WHERE id IN (SELECT id FROM erase_runs)")?;
        let events = count("DELETE FROM events WHERE subject_id IN (SELECT id FROM erase_ids)")?;
        let score_changes = count("DELETE FROM score_changes WHERE subject_id IN (SELECT id FROM erase_ids)")?;
        count(
            "DELETE FROM aliases WHERE alias IN (SELECT id FROM erase_ids) OR canonical IN (SELECT id FROM erase_ids)",
        )?;
        let contact = count("DELETE FROM contacts WHERE id IN (SELECT id FROM erase_ids)")? > 0;
        for hash in tombstones {
            tx.execute("INSERT OR IGNORE INTO tombstones (hash, erased_at) VALUES (?1, ?2)", params![hash, now.ms()])
                .db()?;
        }
        tx.execute_batch("DELETE FROM erase_ids; DELETE FROM erase_runs; DELETE FROM erase_work;").db()?;
        tx.commit().db()?;
        Ok(Erasure { ids: ids.to_vec(), runs, events, effects, work_items, score_changes, contact })
    }

    /// Drops the contact cache if another connection committed since it was last checked.
    fn check_cache(&self) -> Result<(), Error> {
        let version: i64 =
            self.conn.prepare_cached("PRAGMA data_version").db()?.query_row([], |row| row.get(0)).db()?;
        if version != self.data_version.get() {
            *self.contacts.borrow_mut() = ContactCache::default();
            self.data_version.set(version);
        }
        Ok(())
    }

    fn setup(mut conn: Connection) -> Result<SqliteStore, Error> {
        conn.pragma_update(None, "journal_mode", "WAL").db()?;
        conn.pragma_update(None, "synchronous", "FULL").db()?;
        conn.pragma_update(None, "foreign_keys", "ON").db()?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).db()?;
        // Every statement the store runs stays prepared (rusqlite keeps 16 by default, fewer
        // than the store uses, and re-preparing them was a tenth of the journey benchmark).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_COUNT);
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        migrations.to_latest(&mut conn).db()?;
        Ok(SqliteStore {
            conn,
            checkpointer: None,
            contacts: RefCell::default(),
            data_version: Cell::new(0),
            wal: None,
            deferring: false,
        })
    }
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn run_id(id: RunId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn purpose_name(purpose: TimerPurpose) -> Result<String, Error> {
    match serde_json::to_value(purpose) {
        Ok(Value::String(s)) => Ok(s),
        _ => Err(Error::Corrupt(format!("timer purpose {purpose:?}"))),
    }
}

/// A contact's traits and time zone as stored, inside a transaction.
fn contact_row(tx: &Connection, id: &str) -> Result<Option<(Value, Option<String>)>, Error> {
    let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT traits, timezone FROM contacts WHERE id = ?1")
        .db()?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .db()?;
    row.map(|(traits, timezone)| Ok((from_json(&traits)?, timezone))).transpose()
}

/// Writes a contact whole (created or replaced), inside a transaction.
/// Returns the length of the stored traits.
fn put_contact_row(
    tx: &Connection,
    id: &str,
    traits: &Value,
    timezone: Option<&str>,
    now: Timestamp,
) -> Result<usize, Error> {
    let traits = to_json(traits)?;
    tx.prepare_cached(
        "INSERT INTO contacts (id, traits, timezone, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET traits = excluded.traits, timezone = excluded.timezone,
             updated_at = excluded.updated_at",
    )
    .db()?
    .execute(params![id, traits, timezone, now.ms()])
    .db()?;
    Ok(traits.len())
}

/// `over`'s top-level keys laid over `under`'s.
fn overlay(mut under: Value, over: &Value) -> Value {
    if let (Value::Object(into), Value::Object(from)) = (&mut under, over) {
        into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    under
}

/// Merges a contact change into the stored contact, inside a transaction, and returns the
/// contact as written and the length of its stored traits. The stored contact is the one this
/// batch wrote last, else the cached one, else the row.
fn merge_contact(
    tx: &Connection,
    cache: &mut ContactCache,
    written: &HashMap<&str, (Contact, usize)>,
    change: &ContactChange<'_>,
    now: Timestamp,
) -> Result<(Contact, usize), Error> {
    let known = match written.get(change.id).map(|(c, _)| c).or_else(|| cache.get(change.id)) {
        Some(contact) => Some((contact.traits.clone(), contact.timezone.clone())),
        None => contact_row(tx, change.id)?,
    };
    let (stored, old_timezone) = known.unwrap_or((Value::Object(serde_json::Map::new()), None));
    let timezone = change.timezone.map(str::to_owned).or(old_timezone);
    let traits = overlay(stored, change.traits);
    let bytes = put_contact_row(tx, change.id, &traits, timezone.as_deref(), now)?;
    Ok((Contact { id: change.id.to_owned(), traits, timezone, updated_at: now }, bytes))
}

/// The columns an attempt's outcome writes: status, when it is next ready, result. `None`
/// for what is not an outcome (a deferral, a claim).
fn outcome_columns(attempt: &Attempt, now: Timestamp) -> Option<(&'static str, Timestamp, Option<String>)> {
    match attempt {
        Attempt::Done { detail } => Some(("done", now, detail.clone())),
        Attempt::Retry { at, error } => Some(("pending", *at, Some(error.clone()))),
        Attempt::Failed { error } => Some(("failed", now, Some(error.clone()))),
        Attempt::Deferred { .. } | Attempt::Claimed { .. } | Attempt::Quarantined { .. } => None,
    }
}

/// The statements of `Store::write`, run inside the caller's transaction. Returns the contacts
/// as the batch wrote them, for the cache once the batch is committed.
fn write_batch<'b>(
    tx: &Connection,
    cache: &mut ContactCache,
    batch: &Batch<'b>,
    now: Timestamp,
) -> Result<HashMap<&'b str, (Contact, usize)>, Error> {
    let Batch {
        contacts,
        events,
        transitions,
        trail,
        attempts,
        outcomes: claimed,
        schedules,
        score_changes,
        settings,
        merges,
        work,
        comments,
        notifications,
        digested,
        outbox,
        start_keys,
    } = batch;
    let mut written: HashMap<&str, (Contact, usize)> = HashMap::new();
    for change in contacts {
        let contact = merge_contact(tx, cache, &written, change, now)?;
        written.insert(change.id, contact);
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (message_id, subject_id, name, at, received_at, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (message_id) DO NOTHING",
        )
        .db()?;
    for (subject_id, event) in events {
        insert
            .execute(params![event.id, subject_id, event.name, event.at.ms(), now.ms(), to_json(&*event.payload)?])
            .db()?;
    }
    drop(insert);
    // Outcomes recorded in this batch for effects it also adds: such a row is inserted with
    // its outcome (one write instead of an insert and an update). The first outcome for a key
    // counts, as with the updates below (which touch only a pending row).
    let mut outcomes: HashMap<&str, &Attempt> = HashMap::new();
    for (key, attempt) in attempts {
        if matches!(attempt, Attempt::Done { .. } | Attempt::Failed { .. }) {
            outcomes.entry(*key).or_insert(*attempt);
        }
    }
    let mut recorded: HashSet<&str> = HashSet::new();
    // Entries that only add to a run's trail go first in its history row of this batch.
    let mut trails: HashMap<RunId, Vec<&HistoryEntry>> = HashMap::new();
    for (run, entry) in trail {
        trails.entry(*run).or_default().push(*entry);
    }
    let mut statements = RunStatements::prepare(tx)?;
    // A run with several transitions in the batch is written once, in its latest state, with
    // its history entries and decision records gathered into one row each.
    for mut run in per_run(transitions) {
        let id = run_id(run.state.id);
        if let Some(mut first) = trails.remove(&run.state.id) {
            first.append(&mut run.history);
            run.history = first;
        }
        // A run whose transitions in the batch only added to its history (effect results) is
        // stored as it is: its row and its timers stay, its history grows.
        if run.changed {
            write_run(&mut statements, run.state, run.fresh, now)?;
            // The timers table mirrors the run's armed timers: fired and cancelled ones go (a
            // run the batch starts has none stored).
            if !run.fresh {
                statements.delete_timers.execute([id]).db()?;
            }
            for timer in &run.state.timers {
                let purpose = purpose_name(timer.purpose)?;
                statements.insert_timer.execute(params![id, timer.id.0, timer.due_at.ms(), purpose]).db()?;
            }
        }
        // Rows written as single objects by earlier versions read back the same.
        let history = &mut statements.insert_history;
        append_chunk(history, id, &run.history, |e| (e.at, e.step.as_deref()))?;
        let decisions = &mut statements.insert_decision;
        append_chunk(decisions, id, &run.decisions, |d| (d.at, d.step.as_deref()))?;
        let insert = &mut statements.insert_effect;
        for effect in run.effects {
            let outcome = outcomes.get(effect.key.as_str()).copied();
            let (tried, status, result) = match outcome {
                Some(Attempt::Done { detail }) => (1, "done", detail.as_deref()),
                Some(Attempt::Failed { error }) => (1, "failed", Some(error.as_str())),
                _ => (0, "pending", None),
            };
            let inserted = insert
                .execute(params![
                    effect.key,
                    id,
                    &*effect.step,
                    flowmark_store::run_effect_json(&effect.kind),
                    now.ms(),
                    tried,
                    status,
                    result,
                    sent_channel(&effect.kind),
                ])
                .db()?;
            if inserted == 1 && outcome.is_some() {
                outcomes.remove(effect.key.as_str());
                recorded.insert(effect.key.as_str());
            }
            if inserted == 0 {
                // The same key again: a retried commit of the same run is harmless; another
                // run's effect under this key is a bug, and the whole batch is refused.
                let owner: i64 = tx
                    .prepare_cached("SELECT run_id FROM outbox WHERE key = ?1")
                    .db()?
                    .query_row([&effect.key], |r| r.get(0))
                    .db()?;
                if owner != id {
                    return Err(Error::DuplicateEffect { key: effect.key.clone() });
                }
            }
        }
    }
    // Runs the batch only adds results to: their rows stay as they are.
    for (run, _) in trail {
        if let Some(entries) = trails.remove(run) {
            let history = &mut statements.insert_history;
            append_chunk(history, run_id(*run), &entries, |e| (e.at, e.step.as_deref()))?;
        }
    }
    drop(statements);
    for (workflow_id, key, run, request) in start_keys {
        tx.prepare_cached(
            "INSERT INTO start_keys (workflow_id, key, run_id, created_at, request) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db()?
        .execute(params![workflow_id, key, run_id(*run), now.ms(), request])
        .db()?;
    }
    let mut record = tx
        .prepare_cached(
            "UPDATE outbox SET status = ?2, next_attempt_at = ?3, result = ?4, attempts = attempts + 1,
                settled = attempts + 1
         WHERE key = ?1 AND status = 'pending'",
        )
        .db()?;
    for (key, attempt) in attempts {
        if recorded.contains(key) {
            continue;
        }
        if let Attempt::Deferred { at } = attempt {
            tx.prepare_cached("UPDATE outbox SET next_attempt_at = ?2 WHERE key = ?1 AND status = 'pending'")
                .db()?
                .execute(params![key, at.ms()])
                .db()?;
            continue;
        }
        if let Attempt::Quarantined { reason } = attempt {
            tx.prepare_cached(
                "UPDATE outbox SET status = 'quarantined', result = ?2 WHERE key = ?1 AND status = 'pending'",
            )
            .db()?
            .execute(params![key, reason])
            .db()?;
            continue;
        }
        if let Attempt::Claimed { until } = attempt {
            tx.prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2, attempts = attempts + 1 WHERE key = ?1 AND status = 'pending'",
            )
            .db()?
            .execute(params![key, until.ms()])
            .db()?;
            continue;
        }
        let Some((status, next, result)) = outcome_columns(attempt, now) else { continue };
        record.execute(params![key, status, next.ms(), result]).db()?;
    }
    drop(record);
    // A claimed attempt's outcome counts only while that attempt is the latest: a worker
    // that answers after its lease passed finds the effect claimed again, and changes nothing.
    let mut performed = tx
        .prepare_cached(
            "UPDATE outbox SET status = ?2, next_attempt_at = ?3, result = ?4, settled = ?5
         WHERE key = ?1 AND status = 'pending' AND attempts = ?5",
        )
        .db()?;
    for (key, number, attempt) in claimed {
        let Some((status, next, result)) = outcome_columns(attempt, now) else { continue };
        performed.execute(params![key, status, next.ms(), result, number]).db()?;
    }
    drop(performed);
    for (seq, record) in score_changes.iter().enumerate() {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO score_changes (subject_id, at, seq, model, before, delta, after, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .db()?
        .execute(params![
            record.subject_id,
            record.at.ms(),
            seq as i64,
            record.model,
            record.before,
            record.delta,
            record.after,
            record.reason
        ])
        .db()?;
    }
    for (key, value) in settings {
        tx.prepare_cached(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .db()?
        .execute([key, value])
        .db()?;
    }
    for (from, into) in merges {
        merge_identity(tx, from, into, now)?;
    }
    crate::work::apply(tx, work, now)?;
    crate::work::add_comments(tx, comments)?;
    crate::work::add_notifications(tx, notifications)?;
    crate::work::mark_digested(tx, digested, now)?;
    for entry in outbox {
        tx.prepare_cached(
            "INSERT INTO outbox (key, run_id, step, effect, created_at, attempts, next_attempt_at, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, 'pending') ON CONFLICT (key) DO NOTHING",
        )
        .db()?
        .execute(params![
            entry.key,
            run_id(entry.run),
            entry.step,
            entry.effect.to_json(),
            now.ms(),
            entry.next_attempt_at.ms()
        ])
        .db()?;
    }
    for change in schedules {
        match change {
            ScheduleChange::Put(schedule) => {
                tx.prepare_cached(
                    "INSERT INTO schedules (workflow_id, trigger, spec, due_at, cursor) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (workflow_id, trigger) DO UPDATE SET spec = excluded.spec, due_at = excluded.due_at,
                         cursor = excluded.cursor",
                )
                .db()?
                .execute(params![
                    schedule.workflow_id,
                    schedule.trigger,
                    schedule.spec,
                    schedule.due_at.ms(),
                    schedule.cursor
                ])
                .db()?;
            }
            ScheduleChange::RemoveWorkflow(id) => {
                tx.prepare_cached("DELETE FROM schedules WHERE workflow_id = ?1").db()?.execute([id]).db()?;
            }
        }
    }
    Ok(written)
}

/// Writes a run: inserted when the batch starts it (`fresh`), updated otherwise. Its columns
/// hold what lists filter on; `state` holds the rest (`StateOut`).
fn write_run(statements: &mut RunStatements<'_>, state: &Run, fresh: bool, now: Timestamp) -> Result<(), Error> {
    let state_json = to_json(&StateOut::of(state))?;
    let (status, ended_at, at) = (state.status.as_str(), state.ended_at.map(Timestamp::ms), position(state));
    // A run the batch starts is inserted; any other is stored already, and only what changes
    // is set (an insert that fails on the key first would look the row up twice). A run is
    // active from its start until it ends and never again, so an active run's stored status
    // and end are as they were: leaving them out of the update leaves `runs_by_subject`,
    // which holds the status, untouched.
    let written = if fresh {
        statements
            .insert_run
            .execute(params![
                run_id(state.id),
                state.workflow_id,
                state.version,
                state.subject_id,
                status,
                state.started_at.ms(),
                ended_at,
                state_json,
                now.ms(),
                at,
            ])
            .db()?
    } else if state.status == RunStatus::Active {
        statements.update_active_run.execute(params![run_id(state.id), state_json, now.ms(), at]).db()?
    } else {
        statements.update_run.execute(params![run_id(state.id), status, ended_at, state_json, now.ms(), at]).db()?
    };
    if written != 1 {
        return Err(Error::Corrupt(format!("run {} is not stored, yet the batch does not start it", state.id.0)));
    }
    Ok(())
}

/// The columns a run is read back from (`RunRow`), in order; a macro so that statements are
/// constant text (`concat!`), not formatted at each call.
macro_rules! run_columns {
    () => {
        "id, workflow_id, version, subject_id, status, started_at, ended_at, state"
    };
}

/// What `runs.state` holds: the part of a run that its row's columns do not. Rows written by
/// earlier versions hold the whole run as JSON; reading one ignores the fields the columns
/// hold, so no migration rewrites them.
#[derive(serde::Serialize)]
struct StateOut<'a> {
    tokens: &'a [flowmark_core::engine::Token],
    timers: &'a [ArmedTimer],
    outputs: &'a Value,
    event: &'a Option<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: &'a Option<Option<Event>>,
    last_event_at: Option<Timestamp>,
    sequence: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: &'a Option<ParentRun>,
}

impl<'a> StateOut<'a> {
    fn of(run: &'a Run) -> StateOut<'a> {
        StateOut {
            tokens: &run.tokens,
            timers: &run.timers,
            outputs: &run.outputs,
            event: &run.event,
            trigger: &run.trigger,
            last_event_at: run.last_event_at,
            sequence: run.sequence,
            parent: &run.parent,
        }
    }
}

/// `StateOut`, read back.
#[derive(serde::Deserialize)]
struct StateIn {
    tokens: Vec<flowmark_core::engine::Token>,
    timers: Vec<ArmedTimer>,
    outputs: Value,
    event: Option<Event>,
    #[serde(default, deserialize_with = "present")]
    trigger: Option<Option<Event>>,
    last_event_at: Option<Timestamp>,
    sequence: u32,
    #[serde(default)]
    parent: Option<ParentRun>,
}

/// A field that is present is `Some`, even when it is `null` (as `Run::trigger` is read).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Event>>, D::Error> {
    Ok(Some(serde::Deserialize::deserialize(deserializer)?))
}

/// A `runs` row as read (`run_columns!`), before its state is parsed.
struct RunRow {
    id: i64,
    workflow_id: String,
    version: u32,
    subject_id: String,
    status: String,
    started_at: i64,
    ended_at: Option<i64>,
    state: String,
}

impl RunRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            workflow_id: row.get(1)?,
            version: row.get(2)?,
            subject_id: row.get(3)?,
            status: row.get(4)?,
            started_at: row.get(5)?,
            ended_at: row.get(6)?,
            state: row.get(7)?,
        })
    }

    fn into_run(self) -> Result<Run, Error> {
        let state: StateIn = from_json(&self.state)?;
        let status = RunStatus::parse(&self.status)
            .ok_or_else(|| Error::Corrupt(format!("run {} has an unknown status {:?}", self.id, self.status)))?;
        Ok(Run {
            id: RunId(self.id as u64),
            workflow_id: self.workflow_id,
            version: self.version,
            subject_id: self.subject_id,
            status,
            started_at: Timestamp(self.started_at),
            ended_at: self.ended_at.map(Timestamp),
            tokens: state.tokens,
            timers: state.timers,
            outputs: state.outputs,
            event: state.event,
            trigger: state.trigger,
            last_event_at: state.last_event_at,
            sequence: state.sequence,
            parent: state.parent,
        })
    }
}

/// The statements a batch runs for each run, taken from the connection's cache once per
/// batch: taking one hashes its SQL on the way out and on the way back, which cost as much as
/// some of the statements themselves.
struct RunStatements<'c> {
    insert_run: CachedStatement<'c>,
    update_run: CachedStatement<'c>,
    update_active_run: CachedStatement<'c>,
    delete_timers: CachedStatement<'c>,
    insert_timer: CachedStatement<'c>,
    insert_history: CachedStatement<'c>,
    insert_decision: CachedStatement<'c>,
    insert_effect: CachedStatement<'c>,
}

impl<'c> RunStatements<'c> {
    fn prepare(tx: &'c Connection) -> Result<RunStatements<'c>, Error> {
        Ok(RunStatements {
            insert_run: tx
                .prepare_cached(
                    "INSERT INTO runs (id, workflow_id, version, subject_id, status, started_at, ended_at, state,
                     updated_at, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .db()?,
            update_run: tx
                .prepare_cached(
                    "UPDATE runs SET status = ?2, ended_at = ?3, state = ?4, updated_at = ?5, at = ?6 WHERE id = ?1",
                )
                .db()?,
            update_active_run: tx
                .prepare_cached("UPDATE runs SET state = ?2, updated_at = ?3, at = ?4 WHERE id = ?1")
                .db()?,
            delete_timers: tx.prepare_cached("DELETE FROM timers WHERE run_id = ?1").db()?,
            insert_timer: tx
                .prepare_cached("INSERT INTO timers (run_id, timer_id, due_at, purpose) VALUES (?1, ?2, ?3, ?4)")
                .db()?,
            insert_history: tx
                .prepare_cached("INSERT INTO history (run_id, at, step, entry) VALUES (?1, ?2, ?3, ?4)")
                .db()?,
            insert_decision: tx
                .prepare_cached("INSERT INTO decisions (run_id, at, step, record) VALUES (?1, ?2, ?3, ?4)")
                .db()?,
            insert_effect: tx
                .prepare_cached(
                    "INSERT INTO outbox (key, run_id, step, effect, created_at, attempts, next_attempt_at, status,
                     result, sent_channel)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7, ?8, ?9) ON CONFLICT (key) DO NOTHING",
                )
                .db()?,
        })
    }
}

/// The channel of a marketing message, which frequency caps count (`sent_messages`); none for
/// transactional messages and every other effect.
fn sent_channel(kind: &EffectKind) -> Option<&'static str> {
    match kind {
        EffectKind::SendMessage { channel, transactional: false, .. } => Some(channel.as_str()),
        _ => None,
    }
}

/// What a batch writes for one run: its latest state, and what all its transitions in the
/// batch added, in order.
struct RunWrite<'a> {
    state: &'a Run,
    history: Vec<&'a HistoryEntry>,
    decisions: Vec<&'a DecisionRecord>,
    effects: Vec<&'a Effect>,
    /// Whether the batch starts the run: nothing of it is stored yet.
    fresh: bool,
    /// Whether any of its transitions in the batch changed its state (a start does).
    changed: bool,
}

/// Gathers a batch's transitions by run, in the order runs first appear.
fn per_run<'a>(transitions: &[&'a Transition]) -> Vec<RunWrite<'a>> {
    let mut index: HashMap<RunId, usize> = HashMap::with_capacity(transitions.len());
    let mut runs: Vec<RunWrite<'a>> = Vec::with_capacity(transitions.len());
    for transition in transitions {
        let at = *index.entry(transition.run.id).or_insert_with(|| {
            runs.push(RunWrite {
                state: &transition.run,
                history: Vec::new(),
                decisions: Vec::new(),
                effects: Vec::new(),
                fresh: transition.history.iter().any(|h| matches!(h.kind, HistoryKind::RunStarted { .. })),
                changed: false,
            });
            runs.len() - 1
        });
        let run = &mut runs[at];
        run.state = &transition.run;
        run.changed |= transition.run_changed;
        run.history.extend(&transition.history);
        run.decisions.extend(&transition.decisions);
        run.effects.extend(&transition.effects);
    }
    runs
}

/// Appends `items` to a run's `history` or `decisions` (`insert` says which) as one row, after
/// every row written before it: the first item's time, the step when all items share one, and
/// the items as a JSON array.
fn append_chunk<T: serde::Serialize>(
    insert: &mut CachedStatement<'_>,
    run: i64,
    items: &[&T],
    key: impl Fn(&T) -> (Timestamp, Option<&str>),
) -> Result<(), Error> {
    let Some(first) = items.first() else { return Ok(()) };
    let (at, step) = key(first);
    let step = step.filter(|step| items.iter().all(|item| key(item).1 == Some(*step)));
    insert.execute(params![run, at.ms(), step, to_json(items)?]).db()?;
    Ok(())
}

/// Reads `history` or `decisions` rows back as one list: arrays are spread, single objects
/// (rows of earlier versions) kept.
fn spread_chunks(rows: impl Iterator<Item = rusqlite::Result<String>>) -> Result<Vec<Value>, Error> {
    let mut items = Vec::new();
    for row in rows {
        match from_json::<Value>(&row.db()?)? {
            Value::Array(chunk) => items.extend(chunk),
            single => items.push(single),
        }
    }
    Ok(items)
}

/// Merges identity `from` into `into`: `from` becomes an alias of `into` (and so does every
/// alias of `from`), its traits fill the gaps in `into`'s (the known identity's values win),
/// and its events and runs move to `into`, history and all.
fn merge_identity(tx: &Connection, from: &str, into: &str, now: Timestamp) -> Result<(), Error> {
    if from == into {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO aliases (alias, canonical) VALUES (?1, ?2) ON CONFLICT (alias) DO UPDATE SET canonical = excluded.canonical",
    ).db()?
    .execute([from, into]).db()?;
    tx.prepare_cached("UPDATE aliases SET canonical = ?2 WHERE canonical = ?1").db()?.execute([from, into]).db()?;
    if let Some((old_traits, old_timezone)) = contact_row(tx, from)? {
        // The anonymous identity fills the known one's gaps; the known values win.
        let (traits, timezone) = match contact_row(tx, into)? {
            Some((known, known_timezone)) => (overlay(old_traits, &known), known_timezone.or(old_timezone)),
            None => (old_traits, old_timezone),
        };
        let _ = put_contact_row(tx, into, &traits, timezone.as_deref(), now)?;
        tx.prepare_cached("DELETE FROM contacts WHERE id = ?1").db()?.execute([from]).db()?;
    }
    tx.prepare_cached("UPDATE events SET subject_id = ?2 WHERE subject_id = ?1").db()?.execute([from, into]).db()?;
    tx.prepare_cached("UPDATE runs SET subject_id = ?2 WHERE subject_id = ?1").db()?.execute([from, into]).db()?;
    Ok(())
}

/// Where a run stands, as stored in `runs.at`: its tokens' step indices, ascending, once each.
fn position(run: &Run) -> String {
    let mut steps: Vec<u16> = run.current_steps().map(|at| at.0).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut at = String::with_capacity(steps.len() * 4);
    for step in steps {
        if !at.is_empty() {
            at.push(' ');
        }
        at.push_str(&step.to_string());
    }
    at
}

fn schedule_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Schedule> {
    Ok(Schedule {
        workflow_id: row.get(0)?,
        trigger: row.get(1)?,
        spec: row.get(2)?,
        due_at: Timestamp(row.get(3)?),
        cursor: row.get(4)?,
    })
}

impl Store for SqliteStore {
    /// A deferred transaction: one snapshot and one lock for the reads of a unit of work
    /// (each read outside a transaction takes and drops file locks, a tenth of the journey
    /// benchmark). The owner is the only writer, so upgrading it at `write` succeeds; should
    /// another process have written in between, `write` fails with SQLite's busy-snapshot
    /// error and the caller retries the unit.
    fn begin(&mut self) -> Result<(), Error> {
        if self.conn.is_autocommit() {
            self.conn.prepare_cached("BEGIN DEFERRED").db()?.execute([]).db()?;
            // The unit's snapshot starts here: what the cache holds is checked against it.
            self.check_cache()?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn write(&mut self, batch: &Batch<'_>, now: Timestamp) -> Result<(), Error> {
        if batch.is_empty() && self.conn.is_autocommit() {
            return Ok(());
        }
        if self.conn.is_autocommit() {
            self.conn.prepare_cached("BEGIN IMMEDIATE").db()?.execute([]).db()?;
        }
        let cache = self.contacts.get_mut();
        let result = write_batch(&self.conn, cache, batch, now)
            .and_then(|written| self.conn.prepare_cached("COMMIT").db()?.execute([]).map(|_| written).db());
        match result {
            Ok(written) => {
                let cache = self.contacts.get_mut();
                for (_, (contact, bytes)) in written {
                    cache.insert(contact, bytes);
                }
                // A merge rewrites both identities' rows in SQL, after the changes above.
                for (from, into) in &batch.merges {
                    cache.remove(from);
                    cache.remove(into);
                }
                Ok(())
            }
            Err(error) => {
                self.finish();
                Err(error)
            }
        }
    }

    /// While deferring, a commit returns once its frames are in the write-ahead log
    /// (`synchronous = NORMAL`), before they are synced; [`WalSync::sync`] or `make_durable`
    /// syncs them. A database in memory is never durable, and ignores this.
    fn defer_durability(&mut self, defer: bool) -> Result<(), Error> {
        let Some(wal) = &self.wal else { return Ok(()) };
        if defer == self.deferring {
            return Ok(());
        }
        self.conn.pragma_update(None, "synchronous", if defer { "NORMAL" } else { "FULL" }).db()?;
        self.deferring = defer;
        if !defer {
            wal.deferral_ended();
        }
        Ok(())
    }

    fn durability(&self) -> Option<std::sync::Arc<dyn flowmark_store::Durability>> {
        self.wal.clone().map(|wal| std::sync::Arc::new(wal) as std::sync::Arc<dyn flowmark_store::Durability>)
    }

    fn make_durable(&mut self) -> Result<(), Error> {
        match &self.wal {
            Some(wal) if self.deferring || wal.pending() => wal.sync(),
            _ => Ok(()),
        }
    }

    fn run(&self, id: RunId) -> Result<Option<Run>, Error> {
        let row = self
            .conn
            .prepare_cached(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1"))
            .db()?
            .query_row([run_id(id)], RunRow::read)
            .optional()
            .db()?;
        row.map(RunRow::into_run).transpose()
    }

    fn next_run_id(&self) -> Result<RunId, Error> {
        let next: i64 = self.conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM runs", [], |row| row.get(0)).db()?;
        Ok(RunId(next as u64))
    }

    fn active_runs_of_subject(&self, subject_id: &str) -> Result<Vec<Run>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE subject_id = ?1 AND status = 'active' ORDER BY id"
            ))
            .db()?;
        let rows = statement.query_map([subject_id], RunRow::read).db()?;
        rows.map(|row| row.db()?.into_run()).collect()
    }

    fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Run>, Error> {
        // Only the filters given go into the SQL, so the planner can use an index for them
        // (`?1 IS NULL OR column = ?1` would hide every index).
        let mut conditions = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut bind = |condition: &str, value: rusqlite::types::Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("?{}", values.len())));
        };
        if let Some(workflow) = &filter.workflow_id {
            bind("workflow_id = ?", workflow.clone().into());
        }
        if let Some(version) = filter.version {
            bind("version = ?", i64::from(version).into());
        }
        if let Some(status) = filter.status {
            bind("status = ?", status.as_str().to_owned().into());
        }
        if let Some(subject) = &filter.subject_id {
            bind("subject_id = ?", subject.clone().into());
        }
        if let Some(at) = &filter.at {
            // A position is stored as step indices separated by single spaces.
            let mut any = Vec::new();
            for &(version, step) in at {
                values.push(i64::from(version).into());
                values.push(format!("% {step} %").into());
                any.push(format!("(version = ?{} AND ' ' || at || ' ' LIKE ?{})", values.len() - 1, values.len()));
            }
            if any.is_empty() {
                return Ok(Vec::new());
            }
            conditions.push(format!("({})", any.join(" OR ")));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let limit = limit.min(i64::MAX as usize);
        let sql = format!("SELECT {} FROM runs {filter} ORDER BY id DESC LIMIT {limit}", run_columns!());
        let mut statement = self.conn.prepare_cached(&sql).db()?;
        let rows = statement.query_map(rusqlite::params_from_iter(values), RunRow::read).db()?;
        rows.map(|row| row.db()?.into_run()).collect()
    }

    fn positions(&self, workflow_id: &str) -> Result<Vec<Position>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT version, at, count(*) FROM runs WHERE workflow_id = ?1 AND status = 'active'
             GROUP BY version, at ORDER BY version, at",
            )
            .db()?;
        let rows = statement
            .query_map([workflow_id], |row| {
                Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })
            .db()?;
        rows.map(|row| {
            let (version, at, runs) = row.db()?;
            let steps = at.split(' ').filter_map(|s| s.parse().ok()).collect();
            Ok(Position { version, steps, runs: runs as u64 })
        })
        .collect()
    }

    fn start_key(&self, workflow_id: &str, key: &str) -> Result<Option<KeyedStart>, Error> {
        let keyed = self
            .conn
            .prepare_cached("SELECT run_id, request FROM start_keys WHERE workflow_id = ?1 AND key = ?2")
            .db()?
            .query_row([workflow_id, key], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<String>>(1)?)))
            .optional()
            .db()?;
        Ok(keyed.map(|(run, request)| KeyedStart { run: RunId(run as u64), request }))
    }

    fn forget_start_keys(&mut self, before: Timestamp, limit: usize) -> Result<usize, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `LIMIT` is in the text, not bound: a bound `LIMIT` re-prepares the statement.
        let sql = format!(
            "DELETE FROM start_keys WHERE (workflow_id, key) IN
             (SELECT workflow_id, key FROM start_keys WHERE created_at < ?1 ORDER BY created_at LIMIT {limit})"
        );
        self.conn.execute(&sql, [before.ms()]).db()
    }

    fn latest_run(&self, workflow_id: &str, subject_id: &str) -> Result<Option<Run>, Error> {
        let row = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE workflow_id = ?1 AND subject_id = ?2 ORDER BY id DESC LIMIT 1"
            ))
            .db()?
            .query_row([workflow_id, subject_id], RunRow::read)
            .optional()
            .db()?;
        row.map(RunRow::into_run).transpose()
    }

    fn history(&self, id: RunId) -> Result<Vec<Value>, Error> {
        let mut statement = self.conn.prepare_cached("SELECT entry FROM history WHERE run_id = ?1 ORDER BY id").db()?;
        let entries = statement.query_map([run_id(id)], |row| row.get::<_, String>(0)).db()?;
        spread_chunks(entries)
    }

    fn decisions(&self, id: RunId) -> Result<Vec<Value>, Error> {
        let mut statement =
            self.conn.prepare_cached("SELECT record FROM decisions WHERE run_id = ?1 ORDER BY id").db()?;
        let records = statement.query_map([run_id(id)], |row| row.get::<_, String>(0)).db()?;
        spread_chunks(records)
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<DueTimer>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT run_id, timer_id, due_at, purpose FROM timers WHERE due_at <= ?1
             ORDER BY due_at, run_id, timer_id",
            )
            .db()?;
        let rows = statement
            .query_map(params![now.ms()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, u32>(1)?, row.get::<_, i64>(2)?, row.get::<_, String>(3)?))
            })
            .db()?;
        rows.take(limit)
            .map(|row| {
                let (run, timer, due_at, purpose) = row.db()?;
                Ok(DueTimer {
                    run: RunId(run as u64),
                    timer: TimerId(timer),
                    due_at: Timestamp(due_at),
                    purpose: serde_json::from_value(Value::String(purpose))
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    fn ready_effects(&self, now: Timestamp, limit: usize) -> Result<ReadyEffects, Error> {
        // The run's columns come with the effect (a lookup by its key), never its state.
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT o.key, o.run_id, o.step, o.effect, o.attempts, o.next_attempt_at,
                    r.workflow_id, r.version, r.subject_id, o.attempts - o.settled
             FROM outbox o LEFT JOIN runs r ON r.id = o.run_id
             WHERE o.status = 'pending' AND o.next_attempt_at <= ?1 ORDER BY o.next_attempt_at, o.created_at, o.key",
            )
            .db()?;
        let rows = statement
            .query_map(params![now.ms()], |row| {
                let owner = match (row.get::<_, Option<String>>(6)?, row.get::<_, Option<u32>>(7)?, row.get(8)?) {
                    (Some(workflow_id), Some(version), Some(subject_id)) => {
                        Some(EffectOwner { workflow_id, version, subject_id })
                    }
                    _ => None,
                };
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    (row.get::<_, u32>(4)?, row.get::<_, i64>(9)?.max(0) as u32),
                    row.get::<_, i64>(5)?,
                    owner,
                ))
            })
            .db()?;
        let mut ready = ReadyEffects::default();
        for row in rows.take(limit) {
            let (key, run, step, effect, (attempts, lost), next_attempt_at, owner) = row.db()?;
            let run = RunId(run as u64);
            match OutboxEffect::from_json(&effect) {
                Ok(effect) => ready.entries.push(OutboxEntry {
                    key,
                    run,
                    step,
                    effect,
                    attempts,
                    lost,
                    next_attempt_at: Timestamp(next_attempt_at),
                    owner,
                }),
                Err(error) => ready.unreadable.push(UnreadableEffect { key, run, attempts, error }),
            }
        }
        Ok(ready)
    }

    fn outbox_depth(&self) -> Result<u64, Error> {
        let depth: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM outbox WHERE status = 'pending'", [], |row| row.get(0)).db()?;
        Ok(depth as u64)
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT key, run_id, step, status, effect, attempts, result, created_at FROM outbox
             WHERE status IN ('failed', 'quarantined') ORDER BY created_at DESC, key",
            )
            .db()?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, u32>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, i64>(7)?,
                ))
            })
            .db()?;
        let mut letters = Vec::new();
        for row in rows.take(limit) {
            let (key, run, step, status, effect, attempts, result, created_at) = row.db()?;
            let effect = serde_json::from_str(&effect).unwrap_or(Value::String(effect));
            letters.push(DeadLetter {
                key,
                run: RunId(run as u64),
                step,
                status,
                effect,
                attempts,
                result,
                created_at: Timestamp(created_at),
            });
        }
        Ok(letters)
    }

    fn requeue_effect(&mut self, key: &str, now: Timestamp) -> Result<bool, Error> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', next_attempt_at = ?2, settled = attempts
             WHERE key = ?1 AND status = 'quarantined'",
            )
            .db()?
            .execute(params![key, now.ms()])
            .db()?;
        Ok(changed == 1)
    }

    fn sent_messages(&self, subject_id: &str, since: Timestamp) -> Result<Vec<Sent>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT o.created_at FROM outbox o JOIN runs r ON r.id = o.run_id
             WHERE r.subject_id = ?1 AND o.created_at >= ?2 AND o.sent_channel = 'email'
             ORDER BY o.created_at",
            )
            .db()?;
        let rows = statement.query_map(params![subject_id, since.ms()], |row| row.get::<_, i64>(0)).db()?;
        rows.map(|at| Ok(Sent { channel: Channel::Email, at: Timestamp(at.db()?) })).collect()
    }

    fn has_event(&self, message_id: &str) -> Result<bool, Error> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM events WHERE message_id = ?1")
            .db()?
            .query_row([message_id], |row| row.get(0))
            .optional()
            .db()?;
        Ok(found.is_some())
    }

    fn insert_event(&mut self, subject_id: &str, event: &Event, received_at: Timestamp) -> Result<bool, Error> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO events (message_id, subject_id, name, at, received_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (message_id) DO NOTHING",
            )
            .db()?
            .execute(params![
                event.id,
                subject_id,
                event.name,
                event.at.ms(),
                received_at.ms(),
                to_json(&*event.payload)?
            ])
            .db()?;
        Ok(inserted == 1)
    }

    fn events_of_subject(&self, subject_id: &str, since: Timestamp, limit: usize) -> Result<Vec<Event>, Error> {
        self.recent_events(subject_id, since, limit, |_| true)
    }

    fn events_named(
        &self,
        subject_id: &str,
        names: &[String],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.recent_events(subject_id, since, limit, |name| names.iter().any(|n| n == name))
    }

    fn count_events(&self, subject_id: &str, name: &str, since: Timestamp) -> Result<u64, Error> {
        let count: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM events WHERE subject_id = ?1 AND at >= ?2 AND name = ?3")
            .db()?
            .query_row(params![subject_id, since.ms(), name], |row| row.get(0))
            .db()?;
        Ok(count.max(0) as u64)
    }

    fn put_workflow(&mut self, id: &str, source: &str, now: Timestamp) -> Result<u32, Error> {
        let tx = self.conn.transaction().db()?;
        let latest: Option<u32> = tx
            .query_row("SELECT latest_version FROM workflows WHERE id = ?1", [id], |row| row.get(0))
            .optional()
            .db()?;
        let version = latest.map_or(1, |v| v + 1);
        tx.execute(
            "INSERT INTO workflows (id, status, latest_version, updated_at) VALUES (?1, 'active', ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET latest_version = excluded.latest_version, updated_at = excluded.updated_at",
            params![id, version, now.ms()],
        )
        .db()?;
        tx.execute(
            "INSERT INTO workflow_versions (workflow_id, version, source, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, version, source, now.ms()],
        )
        .db()?;
        tx.commit().db()?;
        Ok(version)
    }

    fn workflow_source(&self, id: &str, version: Option<u32>) -> Result<Option<(u32, String)>, Error> {
        let row = match version {
            Some(v) => self
                .conn
                .query_row(
                    "SELECT version, source FROM workflow_versions WHERE workflow_id = ?1 AND version = ?2",
                    params![id, v],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional().db()?,
            None => self
                .conn
                .query_row(
                    "SELECT version, source FROM workflow_versions WHERE workflow_id = ?1 ORDER BY version DESC LIMIT 1",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional().db()?,
        };
        Ok(row)
    }

    fn workflows(&self) -> Result<Vec<WorkflowSummary>, Error> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, latest_version, status, updated_at FROM workflows ORDER BY id")
            .db()?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?))
            })
            .db()?;
        rows.map(|row| {
            let (id, latest_version, status, updated_at) = row.db()?;
            let status = match status.as_str() {
                "active" => WorkflowStatus::Active,
                "paused" => WorkflowStatus::Paused,
                other => return Err(Error::Corrupt(format!("workflow status `{other}`"))),
            };
            Ok(WorkflowSummary { id, latest_version, status, updated_at: Timestamp(updated_at) })
        })
        .collect()
    }

    fn set_workflow_status(&mut self, id: &str, status: WorkflowStatus, now: Timestamp) -> Result<bool, Error> {
        let name = match status {
            WorkflowStatus::Active => "active",
            WorkflowStatus::Paused => "paused",
        };
        let changed = self
            .conn
            .execute("UPDATE workflows SET status = ?2, updated_at = ?3 WHERE id = ?1", params![id, name, now.ms()])
            .db()?;
        Ok(changed == 1)
    }

    fn contact_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        let mut statement = self.conn.prepare_cached("SELECT id FROM contacts WHERE id > ?1 ORDER BY id").db()?;
        let rows = statement.query_map([after.unwrap_or("")], |row| row.get::<_, String>(0)).db()?;
        rows.take(limit).collect::<Result<Vec<String>, _>>().db()
    }

    fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT workflow_id, trigger, spec, due_at, cursor FROM schedules WHERE due_at <= ?1 ORDER BY due_at",
            )
            .db()?;
        let rows = statement.query_map([now.ms()], schedule_row).db()?;
        rows.take(limit).collect::<Result<Vec<Schedule>, _>>().db()
    }

    fn schedules(&self, workflow_id: &str) -> Result<Vec<Schedule>, Error> {
        let mut statement = self.conn.prepare_cached(
            "SELECT workflow_id, trigger, spec, due_at, cursor FROM schedules WHERE workflow_id = ?1 ORDER BY trigger",
        ).db()?;
        let rows = statement.query_map([workflow_id], schedule_row).db()?;
        rows.collect::<Result<Vec<Schedule>, _>>().db()
    }

    fn contact_id_by_email(&self, email: &str) -> Result<Option<String>, Error> {
        self.conn
            .prepare_cached(
                "SELECT id FROM contacts WHERE lower(json_extract(traits, '$.email')) = lower(?1) ORDER BY id LIMIT 1",
            )
            .db()?
            .query_row([email], |row| row.get(0))
            .optional()
            .db()
    }

    fn score_history(&self, subject_id: &str, limit: usize) -> Result<Vec<ScoreRecord>, Error> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT model, at, before, delta, after, reason FROM score_changes WHERE subject_id = ?1
             ORDER BY at DESC, seq DESC",
            )
            .db()?;
        let rows = statement
            .query_map([subject_id], |row| {
                Ok(ScoreRecord {
                    subject_id: subject_id.to_owned(),
                    model: row.get(0)?,
                    at: Timestamp(row.get(1)?),
                    before: row.get(2)?,
                    delta: row.get(3)?,
                    after: row.get(4)?,
                    reason: row.get(5)?,
                })
            })
            .db()?;
        rows.take(limit).collect::<Result<Vec<_>, _>>().db()
    }

    fn aliases_of(&self, canonical: &str) -> Result<Vec<String>, Error> {
        let mut statement =
            self.conn.prepare_cached("SELECT alias FROM aliases WHERE canonical = ?1 ORDER BY alias").db()?;
        let rows = statement.query_map([canonical], |row| row.get(0)).db()?;
        rows.collect::<Result<_, _>>().db()
    }

    fn erase_subject(&mut self, ids: &[String], tombstones: &[String], now: Timestamp) -> Result<Erasure, Error> {
        // Deleted content is overwritten, not left in free pages (the setting is this
        // connection's, for this erasure only).
        self.conn.pragma_update(None, "secure_delete", "ON").db()?;
        let erased = self.erase_in_transaction(ids, tombstones, now);
        let restored = self.conn.pragma_update(None, "secure_delete", "OFF").db();
        *self.contacts.borrow_mut() = ContactCache::default();
        let erased = erased?;
        restored?;
        Ok(erased)
    }

    fn tombstones(&self) -> Result<Vec<String>, Error> {
        let mut statement = self.conn.prepare_cached("SELECT hash FROM tombstones").db()?;
        let rows = statement.query_map([], |row| row.get(0)).db()?;
        rows.collect::<Result<_, _>>().db()
    }

    fn canonical_id(&self, id: &str) -> Result<Option<String>, Error> {
        self.conn
            .prepare_cached("SELECT canonical FROM aliases WHERE alias = ?1")
            .db()?
            .query_row([id], |row| row.get(0))
            .optional()
            .db()
    }

    fn setting(&self, key: &str) -> Result<Option<String>, Error> {
        self.conn
            .prepare_cached("SELECT value FROM settings WHERE key = ?1")
            .db()?
            .query_row([key], |row| row.get(0))
            .optional()
            .db()
    }

    fn put_setting_once(&mut self, key: &str, value: &str) -> Result<String, Error> {
        self.conn
            .prepare_cached("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING")
            .db()?
            .execute([key, value])
            .db()?;
        self.setting(key)?.ok_or_else(|| Error::Corrupt(format!("setting {key} is missing right after it was written")))
    }

    fn put_token(&mut self, hash: &str, token: &Token) -> Result<(), Error> {
        let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
        self.conn
            .execute(
                "INSERT INTO tokens (hash, workspace, name, scopes, created_at, person) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hash, token.workspace, token.name, scopes.join(","), token.created_at.ms(), token.person],
            )
            .db()?;
        Ok(())
    }

    fn gone_endpoints(&self, limit: usize) -> Result<Vec<GoneEndpoint>, Error> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT url, gone_at, reason FROM gone_endpoints ORDER BY gone_at DESC, url LIMIT ?1")
            .db()?;
        let rows = statement
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok(GoneEndpoint { url: row.get(0)?, gone_at: Timestamp(row.get(1)?), reason: row.get(2)? })
            })
            .db()?;
        rows.collect::<Result<_, _>>().db()
    }

    fn put_gone_endpoints(&mut self, endpoints: &[GoneEndpoint]) -> Result<(), Error> {
        let tx = self.conn.unchecked_transaction().db()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO gone_endpoints (url, gone_at, reason) VALUES (?1, ?2, ?3) ON CONFLICT (url) DO NOTHING",
            ).db()?;
            for endpoint in endpoints {
                insert.execute(params![endpoint.url, endpoint.gone_at.ms(), endpoint.reason]).db()?;
            }
        }
        tx.commit().db()?;
        Ok(())
    }

    fn forget_gone_endpoint(&mut self, url: &str) -> Result<bool, Error> {
        Ok(self.conn.prepare_cached("DELETE FROM gone_endpoints WHERE url = ?1").db()?.execute([url]).db()? > 0)
    }

    fn token(&self, hash: &str) -> Result<Option<Token>, Error> {
        let row: Option<(String, String, String, i64, Option<String>)> = self
            .conn
            .prepare_cached("SELECT workspace, name, scopes, created_at, person FROM tokens WHERE hash = ?1")
            .db()?
            .query_row([hash], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
            .optional()
            .db()?;
        row.map(|(workspace, name, scopes, created_at, person)| {
            let scopes = scopes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| Scope::parse(s).ok_or_else(|| Error::Corrupt(format!("token scope `{s}`"))))
                .collect::<Result<_, Error>>()?;
            Ok(Token { workspace, name, scopes, created_at: Timestamp(created_at), person })
        })
        .transpose()
    }

    fn contact(&self, id: &str) -> Result<Option<Contact>, Error> {
        if self.conn.is_autocommit() {
            // Outside a unit of work every read is its own snapshot.
            self.check_cache()?;
        }
        if let Some(contact) = self.contacts.borrow_mut().get(id) {
            return Ok(Some(contact.clone()));
        }
        let row: Option<(String, Option<String>, i64)> = self
            .conn
            .prepare_cached("SELECT traits, timezone, updated_at FROM contacts WHERE id = ?1")
            .db()?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()
            .db()?;
        let Some((traits, timezone, updated_at)) = row else { return Ok(None) };
        let contact =
            Contact { id: id.to_owned(), traits: from_json(&traits)?, timezone, updated_at: Timestamp(updated_at) };
        self.contacts.borrow_mut().insert(contact.clone(), traits.len());
        Ok(Some(contact))
    }

    fn work_item(&self, id: &str) -> Result<Option<WorkItem>, Error> {
        crate::work::item(&self.conn, id)
    }

    fn work_of_person(&self, person: &str, kind: Option<WorkKind>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        crate::work::of_person(&self.conn, person, kind, limit)
    }

    fn work_of_subject(&self, subject_id: &str, limit: usize) -> Result<Vec<WorkItem>, Error> {
        crate::work::of_subject(&self.conn, subject_id, limit)
    }

    fn open_work_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkItem>, Error> {
        crate::work::open_after(&self.conn, after, limit)
    }

    fn comments(&self, subject_id: &str, limit: usize) -> Result<Vec<Comment>, Error> {
        crate::work::comments(&self.conn, subject_id, limit)
    }

    fn deliverable_version(&self, subject_id: &str) -> Result<u32, Error> {
        crate::work::deliverable_version(&self.conn, subject_id)
    }

    fn notifications(&self, person: &str, limit: usize) -> Result<Vec<Notification>, Error> {
        crate::work::notifications(&self.conn, person, limit)
    }

    fn undigested(&self, limit: usize) -> Result<Vec<Notification>, Error> {
        crate::work::undigested(&self.conn, limit)
    }

    fn scheduled_items(&self, from: &str, until: Option<&str>, limit: usize) -> Result<Vec<(String, Value)>, Error> {
        crate::work::scheduled(&self.conn, from, until, limit)
    }

    fn open_work_due(&self, from: Timestamp, until: Timestamp, limit: usize) -> Result<Vec<WorkItem>, Error> {
        crate::work::open_due(&self.conn, from, until, limit)
    }

    fn put_account(&mut self, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error> {
        crate::work::put_account(&self.conn, email, password_hash, now)
    }

    fn account(&self, email: &str) -> Result<Option<String>, Error> {
        crate::work::account(&self.conn, email)
    }

    fn put_session(&mut self, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error> {
        crate::work::put_session(&self.conn, hash, session, now)
    }

    fn session(&self, hash: &str, now: Timestamp) -> Result<Option<Session>, Error> {
        crate::work::session(&self.conn, hash, now)
    }

    fn end_session(&mut self, hash: &str) -> Result<(), Error> {
        crate::work::end_session(&self.conn, hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmark_store::Store;

    /// A database migrated up to, not including, the first migration whose SQL holds `marker`.
    fn migrated_to_before(marker: &str) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        let before = MIGRATIONS.iter().position(|sql| sql.contains(marker)).unwrap();
        migrations.to_version(&mut conn, before).unwrap();
        conn
    }

    /// Marketing email written to the outbox before `sent_channel` existed still counts for
    /// frequency caps after the migration; transactional email and other effects do not.
    #[test]
    fn the_sent_channel_migration_counts_what_was_sent_before_it() {
        let conn = migrated_to_before("ADD COLUMN sent_channel");
        conn.execute(
            "INSERT INTO runs (id, workflow_id, version, subject_id, status, started_at, state, updated_at, at)
             VALUES (1, 'w', 1, 'c-1', 'active', 10, '{}', 10, '')",
            [],
        )
        .unwrap();
        let effects = [
            ("1-a-1", r#"{"effect":"send_message","channel":"email","transactional":false,"context":{}}"#, 20),
            ("1-b-2", r#"{"effect":"send_message","channel":"email","transactional":true,"context":{}}"#, 30),
            ("1-c-3", r#"{"effect":"adjust_score","model":"m","change":{"add":1}}"#, 40),
            ("1-d-4", r#"{"effect":"send_message","channel":"email","transactional":false,"context":{}}"#, 50),
        ];
        for (key, effect, at) in effects {
            conn.execute(
                "INSERT INTO outbox (key, run_id, step, effect, created_at, attempts, next_attempt_at, status)
                 VALUES (?1, 1, 's', ?2, ?3, 1, ?3, 'done')",
                params![key, effect, at],
            )
            .unwrap();
        }
        let store = SqliteStore::setup(conn).unwrap();
        let sent: Vec<i64> = store.sent_messages("c-1", Timestamp(0)).unwrap().iter().map(|s| s.at.ms()).collect();
        assert_eq!(sent, [20, 50]);
        assert_eq!(store.sent_messages("c-1", Timestamp(21)).unwrap().len(), 1, "since a time");
    }

    /// Trail rows from every earlier layout read back in the order they were written, and
    /// rows written after the upgrade follow them: rows numbered per run (the first layout),
    /// then rows numbered by the store-wide counter, then the log keyed by write order.
    #[test]
    fn trail_rows_keep_their_order_through_every_upgrade() {
        let conn = migrated_to_before("CREATE TABLE trail_seq");
        // Per-run numbers, inserted out of order: run 1's rows must read back 0, 1.
        for (run, seq, what) in [(1, 1, "step_entered"), (2, 0, "run_started"), (1, 0, "run_started")] {
            conn.execute(
                "INSERT INTO history (run_id, seq, at, step, entry) VALUES (?1, ?2, 10, NULL, ?3)",
                params![run, seq, format!(r#"[{{"what":"{what}"}}]"#)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO decisions (run_id, seq, at, step, record) VALUES (2, 7, 10, NULL, '[{\"n\":1}]')",
            [],
        )
        .unwrap();
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        let mut conn = conn;
        let log = MIGRATIONS.iter().position(|sql| sql.contains("CREATE TABLE history_log")).unwrap();
        migrations.to_version(&mut conn, log).unwrap();
        // A row numbered by the store-wide counter, which starts past every number in use.
        let next: i64 = conn.query_row("SELECT next FROM trail_seq", [], |row| row.get(0)).unwrap();
        assert_eq!(next, 8, "past the largest number of either trail");
        conn.execute(
            "INSERT INTO history (run_id, seq, at, step, entry) VALUES (1, 8, 15, NULL, '[{\"what\":\"waiting\"}]')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO decisions (run_id, seq, at, step, record) VALUES (2, 9, 15, NULL, '[{\"n\":2}]')",
            [],
        )
        .unwrap();
        let mut store = SqliteStore::setup(conn).unwrap();
        let result = HistoryEntry {
            at: Timestamp(20),
            step: None,
            kind: HistoryKind::EffectResult {
                key: "1-s-1".into(),
                ok: true,
                detail: None,
                started: None,
                attempt: None,
            },
        };
        store.write(&Batch { trail: vec![(RunId(1), &result)], ..Batch::default() }, Timestamp(20)).unwrap();
        let whats: Vec<Value> = store.history(RunId(1)).unwrap().iter().map(|h| h["what"].clone()).collect();
        assert_eq!(whats, ["run_started", "step_entered", "waiting", "effect_result"]);
        let whats: Vec<Value> = store.history(RunId(2)).unwrap().iter().map(|h| h["what"].clone()).collect();
        assert_eq!(whats, ["run_started"]);
        let ns: Vec<Value> = store.decisions(RunId(2)).unwrap().iter().map(|d| d["n"].clone()).collect();
        assert_eq!(ns, [1, 2]);
        let tables: i64 = store
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'trail_seq'", [], |row| row.get(0))
            .unwrap();
        assert_eq!(tables, 0, "the counter is gone with the numbers it kept");
    }

    /// Deferring a commit's sync is SQLite's `synchronous = NORMAL` on the owner's connection,
    /// and ending it goes back to `FULL`.
    #[test]
    fn deferring_switches_the_connection_to_normal_and_back() {
        let dir = std::env::temp_dir().join(format!("flowmark-defer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = SqliteStore::open(dir.join("flowmark.db")).unwrap();
        let synchronous = |store: &SqliteStore| -> i64 {
            store.conn.pragma_query_value(None, "synchronous", |row| row.get(0)).unwrap()
        };
        assert_eq!(synchronous(&store), 2);
        store.defer_durability(true).unwrap();
        assert_eq!(synchronous(&store), 1);
        store.defer_durability(false).unwrap();
        assert_eq!(synchronous(&store), 2);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A run stored whole (`state` the full run's JSON, as earlier versions wrote it) reads
    /// back the same, columns first; written again, its state holds only what the columns do
    /// not.
    #[test]
    fn a_run_stored_whole_reads_back_and_is_rewritten_compact() {
        let workflow = flowmark_store::conformance::workflow();
        let started = flowmark_store::conformance::start(&workflow, 1, "c-1");
        let mut store = SqliteStore::open_in_memory().unwrap();
        let run = &started.run;
        store
            .conn
            .execute(
                "INSERT INTO runs (id, workflow_id, version, subject_id, status, started_at, ended_at, state,
                     updated_at, at)
                 VALUES (1, ?1, 1, 'c-1', 'active', ?2, NULL, ?3, ?2, ?4)",
                params![run.workflow_id, run.started_at.ms(), to_json(run).unwrap(), position(run)],
            )
            .unwrap();
        assert_eq!(store.run(RunId(1)).unwrap().as_ref(), Some(run));
        // An identity merge moves the run by its column; the subject inside the old state is
        // not read.
        store.write(&Batch { merges: vec![("c-1", "c-9")], ..Batch::default() }, Timestamp(5)).unwrap();
        let moved = store.run(RunId(1)).unwrap().unwrap();
        assert_eq!(moved.subject_id, "c-9");
        assert_eq!(Run { subject_id: "c-1".into(), ..moved.clone() }, *run);
        let timer = run.timers[0].clone();
        let fired = flowmark_core::engine::handle(
            &workflow,
            moved,
            &flowmark_core::engine::Input::TimerFired { timer: timer.id },
            &flowmark_core::engine::Facts::empty(),
            timer.due_at,
        );
        store.commit(&[&fired], timer.due_at).unwrap();
        assert_eq!(store.run(RunId(1)).unwrap(), Some(fired.run.clone()));
        let state: Value = store
            .conn
            .query_row("SELECT state FROM runs WHERE id = 1", [], |row| row.get::<_, String>(0))
            .map(|text| serde_json::from_str(&text).unwrap())
            .unwrap();
        for column in ["id", "workflow_id", "version", "subject_id", "status", "started_at", "ended_at"] {
            assert!(state.get(column).is_none(), "{column} is a column, not in the state: {state}");
        }
        assert!(state.get("tokens").is_some() && state.get("sequence").is_some());
    }

    /// Idempotency keys stored before fingerprints were still find their run, with no
    /// fingerprint (the runtime then compares the subject only, as before).
    #[test]
    fn start_keys_stored_before_fingerprints_have_none() {
        let conn = migrated_to_before("ADD COLUMN request");
        conn.execute("INSERT INTO start_keys (workflow_id, key, run_id, created_at) VALUES ('w', 'k', 4, 10)", [])
            .unwrap();
        let store = SqliteStore::setup(conn).unwrap();
        assert_eq!(store.start_key("w", "k").unwrap(), Some(KeyedStart { run: RunId(4), request: None }));
    }

    fn traits(store: &SqliteStore, id: &str) -> Option<Value> {
        store.contact(id).unwrap().map(|c| c.traits)
    }

    /// The contact cache never answers with a contact older than the committed row: another
    /// connection's commit (an import run beside the server) is seen by the next read outside
    /// a unit and by the next unit.
    #[test]
    fn a_contact_another_connection_writes_is_read_fresh() {
        let dir = std::env::temp_dir().join(format!("flowmark-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cache.db");
        let mut server = SqliteStore::open(&path).unwrap();
        let mut import = SqliteStore::open(&path).unwrap();
        server.upsert_contact("c-1", &serde_json::json!({ "plan": "free" }), None, Timestamp(1)).unwrap();
        assert_eq!(traits(&server, "c-1"), Some(serde_json::json!({ "plan": "free" })));
        import.upsert_contact("c-1", &serde_json::json!({ "plan": "pro" }), None, Timestamp(2)).unwrap();
        assert_eq!(traits(&server, "c-1"), Some(serde_json::json!({ "plan": "pro" })), "outside a unit");
        server.begin().unwrap();
        assert_eq!(traits(&server, "c-1"), Some(serde_json::json!({ "plan": "pro" })));
        server.finish();
        import.upsert_contact("c-1", &serde_json::json!({ "plan": "team" }), None, Timestamp(3)).unwrap();
        server.begin().unwrap();
        assert_eq!(traits(&server, "c-1"), Some(serde_json::json!({ "plan": "team" })), "in the next unit");
        server.finish();
        drop((server, import));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A merge of identities and a refused batch leave nothing stale in the cache.
    #[test]
    fn merges_and_refused_batches_leave_the_cache_as_committed() {
        let mut store = SqliteStore::open_in_memory().unwrap();
        store.upsert_contact("anon-1", &serde_json::json!({ "seen": "pricing" }), None, Timestamp(1)).unwrap();
        store.upsert_contact("c-1", &serde_json::json!({ "email": "a@example.com" }), None, Timestamp(1)).unwrap();
        assert!(traits(&store, "anon-1").is_some() && traits(&store, "c-1").is_some());
        store.write(&Batch { merges: vec![("anon-1", "c-1")], ..Batch::default() }, Timestamp(2)).unwrap();
        assert_eq!(traits(&store, "anon-1"), None);
        assert_eq!(traits(&store, "c-1"), Some(serde_json::json!({ "seen": "pricing", "email": "a@example.com" })));

        // The second start key collides with the first: the batch, contact change and all, is refused.
        let change = serde_json::json!({ "email": "b@example.com" });
        let refused = Batch {
            contacts: vec![ContactChange { id: "c-1", traits: &change, timezone: None }],
            start_keys: vec![("w", "k", RunId(1), "r"), ("w", "k", RunId(2), "r")],
            ..Batch::default()
        };
        assert!(store.write(&refused, Timestamp(3)).is_err());
        assert_eq!(traits(&store, "c-1"), Some(serde_json::json!({ "seen": "pricing", "email": "a@example.com" })));

        // Two changes to one contact in a batch: the second builds on the first.
        let (first, second) = (serde_json::json!({ "a": 1 }), serde_json::json!({ "b": 2 }));
        let batch = Batch {
            contacts: vec![
                ContactChange { id: "c-2", traits: &first, timezone: Some("UTC") },
                ContactChange { id: "c-2", traits: &second, timezone: None },
            ],
            ..Batch::default()
        };
        store.write(&batch, Timestamp(4)).unwrap();
        let cached = store.contact("c-2").unwrap().unwrap();
        assert_eq!((cached.traits, cached.timezone.as_deref()), (serde_json::json!({ "a": 1, "b": 2 }), Some("UTC")));
        *store.contacts.borrow_mut() = ContactCache::default();
        let stored = store.contact("c-2").unwrap().unwrap();
        assert_eq!((stored.traits, stored.timezone.as_deref()), (serde_json::json!({ "a": 1, "b": 2 }), Some("UTC")));
    }
}
