//! The people's side of the SQLite store: the tables and statements of work items (tasks and
//! approval requests) with the people who may act on them, comments, notifications, and the
//! accounts and sessions of the web UI.
//!
//! Work items are a projection of run states, written by the runtime in the same batch as the
//! transition that opens or closes them: an open item exists exactly while its run waits at
//! the step for that role. `work_people` holds only open items' candidates, so an inbox is one
//! indexed range scan (`person`, then the items), never a scan of closed work.

use flowmark_core::Timestamp;
use flowmark_core::engine::RunId;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use flowmark_store::{Comment, Error, Notification, Session, WorkChange, WorkItem, WorkKind};

use crate::sqlite::Db as _;

/// The schema of this module, one migration (appended to the store's list).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE work (
    id TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    workflow_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT,
    due_at INTEGER,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    assignee TEXT,
    outcome TEXT,
    closed_by TEXT,
    closed_at INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX work_by_run ON work (run_id, status);
CREATE INDEX work_by_subject ON work (subject_id, created_at);
CREATE INDEX work_open_by_due ON work (status, due_at);
CREATE TABLE work_people (
    person TEXT NOT NULL,
    work_id TEXT NOT NULL,
    PRIMARY KEY (person, work_id)
) WITHOUT ROWID;
CREATE INDEX work_people_by_work ON work_people (work_id);
CREATE TABLE comments (
    subject_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    work_id TEXT,
    by TEXT NOT NULL,
    body TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (subject_id, seq)
) WITHOUT ROWID;
CREATE TABLE notifications (
    key TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    reason TEXT NOT NULL,
    text TEXT NOT NULL,
    link TEXT,
    at INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    digested_at INTEGER
) WITHOUT ROWID;
CREATE INDEX notifications_by_person ON notifications (person, at);
CREATE INDEX notifications_digest ON notifications (digest, digested_at, person);
CREATE TABLE accounts (
    email TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX contacts_by_publish_at ON contacts (json_extract(traits, '$.publish_at'))
    WHERE json_extract(traits, '$.publish_at') IS NOT NULL;
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// An inbox is read in its display order straight from an index: `work_people` carries each
/// item's kind and due time (`NO_DUE` when it has none, so those sort last).
pub(crate) const MIGRATION_INBOX: &str = r#"
ALTER TABLE work_people ADD COLUMN kind TEXT NOT NULL DEFAULT 'task';
ALTER TABLE work_people ADD COLUMN due INTEGER NOT NULL DEFAULT 9223372036854775807;
UPDATE work_people SET
    kind = (SELECT kind FROM work WHERE work.id = work_people.work_id),
    due = COALESCE((SELECT due_at FROM work WHERE work.id = work_people.work_id), 9223372036854775807);
CREATE INDEX work_people_inbox ON work_people (person, kind, due, work_id);
"#;

/// Attachments are comments that carry a link; a link marked as a new version of the item's
/// deliverable carries its version number.
pub(crate) const MIGRATION_ATTACHMENTS: &str = r#"
ALTER TABLE comments ADD COLUMN link TEXT;
ALTER TABLE comments ADD COLUMN version INTEGER;
"#;

/// The due time an inbox row sorts by when its item has none.
const NO_DUE: i64 = i64::MAX;

/// Applies work changes inside the caller's transaction.
pub(crate) fn apply(tx: &Connection, changes: &[&WorkChange], now: Timestamp) -> Result<(), Error> {
    for change in changes {
        match change {
            WorkChange::Open(item) => {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO work (id, run_id, workflow_id, subject_id, step, kind, role, title, description,
                             due_at, created_at, status, assignee, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'open', ?12, ?13)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .db()?
                    .execute(params![
                        item.id,
                        crate::sqlite::run_id(item.run),
                        item.workflow_id,
                        item.subject_id,
                        item.step,
                        item.kind.as_str(),
                        item.role,
                        item.title,
                        item.description,
                        item.due_at.map(Timestamp::ms),
                        item.created_at.ms(),
                        item.assignee,
                        crate::sqlite::to_json(&item.detail)?,
                    ])
                    .db()?;
                if inserted > 0 {
                    set_people(tx, &item.id, &item.people)?;
                }
            }
            WorkChange::Settle { run, keep, outcomes, otherwise } => {
                let open: Vec<(String, String, String)> = tx
                    .prepare_cached("SELECT id, step, role FROM work WHERE run_id = ?1 AND status = 'open'")
                    .db()?
                    .query_map([crate::sqlite::run_id(*run)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                for (id, step, role) in open {
                    if keep.iter().any(|(s, r)| *s == step && *r == role) {
                        continue;
                    }
                    let (outcome, by) = outcomes
                        .iter()
                        .find(|(s, r, _, _)| *s == step && (*r == role || r == "*"))
                        .map_or((otherwise.as_str(), None), |(_, _, outcome, by)| (outcome.as_str(), by.as_deref()));
                    tx.prepare_cached(
                        "UPDATE work SET status = 'closed', outcome = ?2, closed_by = ?3, closed_at = ?4 WHERE id = ?1",
                    )
                    .db()?
                    .execute(params![id, outcome, by, now.ms()])
                    .db()?;
                    set_people(tx, &id, &[])?;
                }
            }
            WorkChange::Join { run, step, people } => {
                let ids: Vec<String> = tx
                    .prepare_cached("SELECT id FROM work WHERE run_id = ?1 AND step = ?2 AND status = 'open'")
                    .db()?
                    .query_map(params![crate::sqlite::run_id(*run), step], |r| r.get(0))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                for id in &ids {
                    add_people(tx, id, people)?;
                }
            }
            WorkChange::People { id, assignee, people } => {
                let updated = tx
                    .prepare_cached("UPDATE work SET assignee = ?2 WHERE id = ?1 AND status = 'open'")
                    .db()?
                    .execute(params![id, assignee])
                    .db()?;
                if updated > 0 {
                    set_people(tx, id, people)?;
                }
            }
        }
    }
    Ok(())
}

fn set_people(tx: &Connection, id: &str, people: &[String]) -> Result<(), Error> {
    tx.prepare_cached("DELETE FROM work_people WHERE work_id = ?1").db()?.execute([id]).db()?;
    add_people(tx, id, people)
}

/// Adds inbox rows for `people` on item `id`, with the item's kind and due time.
fn add_people(tx: &Connection, id: &str, people: &[String]) -> Result<(), Error> {
    let mut insert = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO work_people (person, work_id, kind, due)
         SELECT ?1, id, kind, COALESCE(due_at, ?3) FROM work WHERE id = ?2",
        )
        .db()?;
    for person in people {
        insert.execute(params![person.to_lowercase(), id, NO_DUE]).db()?;
    }
    Ok(())
}

pub(crate) fn add_comments(tx: &Connection, comments: &[&Comment]) -> Result<(), Error> {
    for comment in comments {
        let seq: i64 = tx
            .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM comments WHERE subject_id = ?1")
            .db()?
            .query_row([&comment.subject_id], |r| r.get(0))
            .db()?;
        tx.prepare_cached(
            "INSERT INTO comments (subject_id, seq, work_id, by, body, at, link, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .db()?
        .execute(params![
            comment.subject_id,
            seq,
            comment.work_id,
            comment.by,
            comment.body,
            comment.at.ms(),
            comment.link,
            comment.version,
        ])
        .db()?;
    }
    Ok(())
}

pub(crate) fn add_notifications(tx: &Connection, notifications: &[&Notification]) -> Result<(), Error> {
    for n in notifications {
        tx.prepare_cached(
            "INSERT INTO notifications (key, person, reason, text, link, at, digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (key) DO NOTHING",
        ).db()?
        .execute(params![n.key, n.person.to_lowercase(), n.reason, n.text, n.link, n.at.ms(), n.digest]).db()?;
    }
    Ok(())
}

pub(crate) fn mark_digested(tx: &Connection, keys: &[&str], now: Timestamp) -> Result<(), Error> {
    for key in keys {
        tx.prepare_cached("UPDATE notifications SET digested_at = ?2 WHERE key = ?1")
            .db()?
            .execute(params![key, now.ms()])
            .db()?;
    }
    Ok(())
}

const WORK_COLUMNS: &str = "id, run_id, workflow_id, subject_id, step, kind, role, title, description, due_at,
    created_at, status, assignee, outcome, closed_by, closed_at, detail";

fn work_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(WorkItem, String)> {
    let kind: String = row.get(5)?;
    Ok((
        WorkItem {
            id: row.get(0)?,
            run: RunId(row.get::<_, i64>(1)? as u64),
            workflow_id: row.get(2)?,
            subject_id: row.get(3)?,
            step: row.get(4)?,
            kind: WorkKind::parse(&kind).unwrap_or(WorkKind::Task),
            role: row.get(6)?,
            title: row.get(7)?,
            description: row.get(8)?,
            due_at: row.get::<_, Option<i64>>(9)?.map(Timestamp),
            created_at: Timestamp(row.get(10)?),
            status: row.get(11)?,
            assignee: row.get(12)?,
            outcome: row.get(13)?,
            closed_by: row.get(14)?,
            closed_at: row.get::<_, Option<i64>>(15)?.map(Timestamp),
            detail: Value::Null,
            people: Vec::new(),
        },
        row.get(16)?,
    ))
}

fn finish_item(tx: &Connection, (mut item, detail): (WorkItem, String)) -> Result<WorkItem, Error> {
    item.detail = crate::sqlite::from_json(&detail)?;
    item.people = tx
        .prepare_cached("SELECT person FROM work_people WHERE work_id = ?1 ORDER BY person")
        .db()?
        .query_map([&item.id], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    Ok(item)
}

pub(crate) fn item(conn: &Connection, id: &str) -> Result<Option<WorkItem>, Error> {
    let row = conn
        .prepare_cached(&format!("SELECT {WORK_COLUMNS} FROM work WHERE id = ?1"))
        .db()?
        .query_row([id], work_row)
        .optional()
        .db()?;
    row.map(|row| finish_item(conn, row)).transpose()
}

/// A person's open work, soonest due first (no due date last), at most `limit`: a range of
/// the `work_people_inbox` index read in order, so the cost grows with `limit`, not with the
/// size of the inbox.
pub(crate) fn of_person(
    conn: &Connection,
    person: &str,
    kind: Option<WorkKind>,
    limit: usize,
) -> Result<Vec<WorkItem>, Error> {
    let Some(kind) = kind else {
        // Both kinds: merge the two ordered ranges.
        let mut all = of_person(conn, person, Some(WorkKind::Task), limit)?;
        all.extend(of_person(conn, person, Some(WorkKind::Approval), limit)?);
        all.sort_by(|a, b| (a.due_at.is_none(), a.due_at, &a.id).cmp(&(b.due_at.is_none(), b.due_at, &b.id)));
        all.truncate(limit);
        return Ok(all);
    };
    let columns: Vec<String> = WORK_COLUMNS.split(',').map(|c| format!("w.{}", c.trim())).collect();
    let columns = columns.join(", ");
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {columns} FROM work_people p JOIN work w ON w.id = p.work_id
         WHERE p.person = ?1 AND p.kind = ?2
         ORDER BY p.due, p.work_id LIMIT ?3"
        ))
        .db()?;
    let rows = statement.query_map(params![person.to_lowercase(), kind.as_str(), sql_limit(limit)], work_row).db()?;
    rows.map(|row| finish_item(conn, row.db()?)).collect()
}

/// Open work due in `[from, until)`, soonest first, at most `limit`.
pub(crate) fn open_due(
    conn: &Connection,
    from: Timestamp,
    until: Timestamp,
    limit: usize,
) -> Result<Vec<WorkItem>, Error> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {WORK_COLUMNS} FROM work WHERE status = 'open' AND due_at >= ?1 AND due_at < ?2
         ORDER BY due_at, id LIMIT ?3"
        ))
        .db()?;
    let rows = statement.query_map(params![from.ms(), until.ms(), sql_limit(limit)], work_row).db()?;
    rows.map(|row| finish_item(conn, row.db()?)).collect()
}

/// A `usize` limit as SQLite's `LIMIT` takes it.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A subject's work, open and closed, oldest first, at most `limit`.
pub(crate) fn of_subject(conn: &Connection, subject_id: &str, limit: usize) -> Result<Vec<WorkItem>, Error> {
    let mut statement = conn
        .prepare_cached(&format!("SELECT {WORK_COLUMNS} FROM work WHERE subject_id = ?1 ORDER BY created_at, rowid"))
        .db()?;
    let rows = statement.query_map([subject_id], work_row).db()?;
    rows.take(limit).map(|row| finish_item(conn, row.db()?)).collect()
}

/// Open work after `after` (by id), at most `limit`: for re-resolving people and feeds.
pub(crate) fn open_after(conn: &Connection, after: Option<&str>, limit: usize) -> Result<Vec<WorkItem>, Error> {
    let mut statement = conn
        .prepare_cached(&format!("SELECT {WORK_COLUMNS} FROM work WHERE status = 'open' AND id > ?1 ORDER BY id"))
        .db()?;
    let rows = statement.query_map([after.unwrap_or("")], work_row).db()?;
    rows.take(limit).map(|row| finish_item(conn, row.db()?)).collect()
}

/// The latest deliverable version of an item (0 when none was attached).
pub(crate) fn deliverable_version(conn: &Connection, subject_id: &str) -> Result<u32, Error> {
    conn.prepare_cached("SELECT COALESCE(MAX(version), 0) FROM comments WHERE subject_id = ?1")
        .db()?
        .query_row([subject_id], |r| r.get(0))
        .db()
}

pub(crate) fn comments(conn: &Connection, subject_id: &str, limit: usize) -> Result<Vec<Comment>, Error> {
    let mut statement = conn
        .prepare_cached(
            "SELECT work_id, by, body, at, link, version FROM comments WHERE subject_id = ?1 ORDER BY seq DESC",
        )
        .db()?;
    let rows = statement
        .query_map([subject_id], |r| {
            Ok(Comment {
                subject_id: subject_id.to_owned(),
                work_id: r.get(0)?,
                by: r.get(1)?,
                body: r.get(2)?,
                at: Timestamp(r.get(3)?),
                link: r.get(4)?,
                version: r.get(5)?,
            })
        })
        .db()?;
    let mut comments: Vec<Comment> = rows.take(limit).collect::<rusqlite::Result<_>>().db()?;
    comments.reverse();
    Ok(comments)
}

fn notification_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Notification> {
    Ok(Notification {
        key: r.get(0)?,
        person: r.get(1)?,
        reason: r.get(2)?,
        text: r.get(3)?,
        link: r.get(4)?,
        at: Timestamp(r.get(5)?),
        digest: r.get(6)?,
    })
}

/// A person's notifications, newest first, at most `limit`.
pub(crate) fn notifications(conn: &Connection, person: &str, limit: usize) -> Result<Vec<Notification>, Error> {
    let mut statement = conn.prepare_cached(
        "SELECT key, person, reason, text, link, at, digest FROM notifications WHERE person = ?1 ORDER BY at DESC, key",
    ).db()?;
    let rows = statement.query_map([person.to_lowercase()], notification_row).db()?;
    rows.take(limit).collect::<rusqlite::Result<_>>().db()
}

/// Notifications held for digests and not yet sent, by person then time, at most `limit`.
pub(crate) fn undigested(conn: &Connection, limit: usize) -> Result<Vec<Notification>, Error> {
    let mut statement = conn
        .prepare_cached(
            "SELECT key, person, reason, text, link, at, digest FROM notifications
         WHERE digest = 1 AND digested_at IS NULL ORDER BY person, at, key",
        )
        .db()?;
    let rows = statement.query_map([], notification_row).db()?;
    rows.take(limit).collect::<rusqlite::Result<_>>().db()
}

/// Items with a `publish_at` at or after `from`, soonest first, at most `limit`:
/// `(id, data)`.
pub(crate) fn scheduled(
    conn: &Connection,
    from: &str,
    until: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, Value)>, Error> {
    let mut statement = conn
        .prepare_cached(
            "SELECT id, traits FROM contacts
         WHERE json_extract(traits, '$.publish_at') IS NOT NULL AND json_extract(traits, '$.publish_at') >= ?1
           AND (?2 IS NULL OR json_extract(traits, '$.publish_at') < ?2)
         ORDER BY json_extract(traits, '$.publish_at'), id LIMIT ?3",
        )
        .db()?;
    let rows = statement
        .query_map(params![from, until, sql_limit(limit)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .db()?;
    rows.map(|row| {
        let (id, traits) = row.db()?;
        Ok((id, crate::sqlite::from_json(&traits)?))
    })
    .collect()
}

pub(crate) fn put_account(conn: &Connection, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO accounts (email, password_hash, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (email) DO UPDATE SET password_hash = excluded.password_hash",
    )
    .db()?
    .execute(params![email.to_lowercase(), password_hash, now.ms()])
    .db()?;
    // A new password ends every session of the account.
    conn.prepare_cached("DELETE FROM sessions WHERE email = ?1").db()?.execute([email.to_lowercase()]).db()?;
    Ok(())
}

pub(crate) fn account(conn: &Connection, email: &str) -> Result<Option<String>, Error> {
    conn.prepare_cached("SELECT password_hash FROM accounts WHERE email = ?1")
        .db()?
        .query_row([email.to_lowercase()], |r| r.get(0))
        .optional()
        .db()
}

pub(crate) fn put_session(conn: &Connection, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1").db()?.execute([now.ms()]).db()?;
    conn.prepare_cached("INSERT INTO sessions (hash, email, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)")
        .db()?
        .execute(params![hash, session.email, session.csrf, session.expires_at.ms()])
        .db()?;
    Ok(())
}

pub(crate) fn session(conn: &Connection, hash: &str, now: Timestamp) -> Result<Option<Session>, Error> {
    conn.prepare_cached("SELECT email, csrf, expires_at FROM sessions WHERE hash = ?1 AND expires_at > ?2")
        .db()?
        .query_row(params![hash, now.ms()], |r| {
            Ok(Session { email: r.get(0)?, csrf: r.get(1)?, expires_at: Timestamp(r.get(2)?) })
        })
        .optional()
        .db()
}

pub(crate) fn end_session(conn: &Connection, hash: &str) -> Result<(), Error> {
    conn.prepare_cached("DELETE FROM sessions WHERE hash = ?1").db()?.execute([hash]).db()?;
    Ok(())
}
