//! The store's tests: the conformance suite on SQLite (a file and in memory), and what only a
//! file can show: a commit survives closing and reopening the database.

use flowmark_core::engine::{Facts, Input, Run, RunId, handle};
use flowmark_core::{Source, Timestamp, compile};
use flowmark_store::{SqliteStore, Store, conformance};

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

#[test]
fn a_commit_survives_reopening_the_database() {
    let path = temp_path("reopen");
    let workflow =
        compile(&Source::new("w.yaml", "id: w\nsubject: contact\nsteps:\n  - id: pause\n    wait: { duration: 1d }\n"))
            .workflow
            .unwrap();
    let now = Timestamp(1_767_610_800_000);
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
