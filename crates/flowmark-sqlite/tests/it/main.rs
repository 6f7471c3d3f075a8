//! The store's tests: the conformance suite on SQLite (a file and in memory), and what only a
//! file can show: a commit survives closing and reopening the database.

use flowmark_core::engine::{Facts, Input, Run, RunId, handle};
use flowmark_core::{Source, Timestamp, compile};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{Store, conformance};

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmark-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("flowmark.db")
}

#[test]
fn sqlite_in_memory_passes_the_conformance_suite() {
    conformance::run_all(&mut || Box::new(SqliteStore::open_in_memory().unwrap()));
}

#[test]
fn sqlite_file_passes_the_conformance_suite() {
    let mut n = 0;
    conformance::run_all(&mut || {
        n += 1;
        Box::new(SqliteStore::open(temp_path(&format!("suite-{n}"))).unwrap())
    });
}

/// A workflow whose runs wait a day, and a time to start them at.
fn waiting_workflow() -> (flowmark_core::Workflow, Timestamp) {
    let source = "id: w\nsubject: contact\nsteps:\n  - id: pause\n    wait: { duration: 1d }\n";
    (compile(&Source::new("w.yaml", source)).workflow.unwrap(), Timestamp(1_767_610_800_000))
}

#[test]
fn a_commit_survives_reopening_the_database() {
    let path = temp_path("reopen");
    let (workflow, now) = waiting_workflow();
    let t = handle(
        &workflow,
        Run::new(RunId(7), &workflow, 1, "c", now),
        &Input::Start { event: None },
        &Facts::empty(),
        now,
    );
    {
        let mut store = SqliteStore::open(&path).unwrap();
        store.commit(&[&t], now).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.run(RunId(7)).unwrap(), Some(t.run.clone()));
    assert_eq!(store.due_timers(Timestamp(i64::MAX), 10).unwrap().len(), 1);
}

/// A deferred commit is visible at once and waits for a sync of the log: the handle says so
/// until `make_durable` (or a sync from another thread) covers it.
#[test]
fn deferred_commits_wait_for_a_sync_and_then_are_covered() {
    let path = temp_path("deferred");
    let (workflow, now) = waiting_workflow();
    let start = |id: u64| {
        handle(
            &workflow,
            Run::new(RunId(id), &workflow, 1, "c", now),
            &Input::Start { event: None },
            &Facts::empty(),
            now,
        )
    };
    let mut store = SqliteStore::open(&path).unwrap();
    let wal = store.durability().expect("a file database has a log to sync");

    store.defer_durability(true).unwrap();
    store.commit(&[&start(1)], now).unwrap();
    store.defer_durability(false).unwrap();
    assert!(store.run(RunId(1)).unwrap().is_some(), "a deferred commit is visible at once");
    assert!(wal.pending());
    store.make_durable().unwrap();
    assert!(!wal.pending());
    assert_eq!(wal.counts(), (1, 1, wal.counts().2));

    // From another thread, as the server's syncer does it.
    store.defer_durability(true).unwrap();
    store.commit(&[&start(2)], now).unwrap();
    store.defer_durability(false).unwrap();
    let syncer = wal.clone();
    std::thread::spawn(move || syncer.sync().unwrap()).join().unwrap();
    assert!(!wal.pending());

    // A later commit does not count as a sync of the deferred ones, not even an empty one
    // (it writes no frame, so SQLite syncs nothing), as housekeeping's rounds commit.
    store.defer_durability(true).unwrap();
    store.commit(&[&start(3)], now).unwrap();
    store.defer_durability(false).unwrap();
    assert!(wal.pending());
    store.begin().unwrap();
    store.commit(&[], now).unwrap();
    store.commit(&[&start(4)], now).unwrap();
    assert!(wal.pending(), "only a sync of the log covers a deferred commit");
    store.make_durable().unwrap();
    assert!(!wal.pending());
    assert_eq!(wal.counts().1, 3);

    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!((1..=4).filter(|id| store.run(RunId(*id)).unwrap().is_some()).count(), 4);
    // In memory there is nothing to sync, and deferring changes nothing.
    let mut memory = SqliteStore::open_in_memory().unwrap();
    memory.defer_durability(true).unwrap();
    assert!(memory.durability().is_none());
    memory.make_durable().unwrap();
}
