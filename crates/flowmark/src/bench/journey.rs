//! `flowmark bench journey` and `flowmark bench timers`: the runtime's `Engine` on a durable
//! SQLite file (WAL, `synchronous = FULL`), driven in virtual time from this process, so the
//! figures are the engine and the store, without HTTP.
//!
//! `journey` puts contacts through the nurture blueprint (download, email, a click for some,
//! scoring, branch, hand-off or case study, timers on the way) and measures committed
//! transitions per second; in the same run it measures a raw batched insert of rows of the
//! same size into a fresh SQLite file with the same settings, the physical limit on this
//! disk, and prints the ratio. `timers` makes runs that all wait for the same instant, then
//! fires them as fast as the engine can, reporting how late each fired.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_runtime::{Connector, Connectors, Engine, Incoming, Job, Outcome};
use flowmark_sqlite::SqliteStore;
use flowmark_store::Store;
use serde_json::json;

use super::{Fsync, emit, fresh_db, remove_db, round2, rss_bytes, written_bytes};

#[derive(clap::Args)]
pub struct JourneyArgs {
    /// Contacts that download the whitepaper.
    #[arg(long, default_value_t = 100_000)]
    contacts: usize,
    /// Events per ingestion commit, and rows per commit of the raw insert.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Keep the journey's database afterwards (to inspect it), and say where it is.
    #[arg(long)]
    keep: bool,
    /// Run without checkpoints and keep a copy of the database with its whole write-ahead log
    /// (`NAME.frames.db` and `-wal`), for `bench/wal-frames.py` to say which tables and
    /// indexes the commits wrote. Slower, and the log grows with the run.
    #[arg(long)]
    keep_wal: bool,
    /// Send the emails for real, through the SMTP connector (8 connections) to an SMTP sink
    /// in this process, instead of taking every effect as done.
    #[arg(long)]
    smtp_sink: bool,
}

#[derive(clap::Args)]
pub struct TimerArgs {
    /// Runs waiting for the same instant.
    #[arg(long, default_value_t = 1_000_000)]
    timers: usize,
}

/// Takes every effect as done at once: the benchmark measures the engine, not a peer.
struct NullConnector;

impl Connector for NullConnector {
    fn perform(&self, _job: &Job<'_>) -> Outcome {
        Outcome::Done { detail: None }
    }
}

const T0: Timestamp = Timestamp(1_767_607_200_000); // 2026-01-05T10:00:00Z, a Monday
const ROUND: usize = 2000;

fn download(index: usize, at: Timestamp) -> Incoming {
    let subject = format!("c-{index}");
    let event = Event {
        id: format!("download-{index}"),
        name: "Whitepaper Downloaded".to_owned(),
        at,
        payload: json!({ "type": "track", "event": "Whitepaper Downloaded", "userId": subject,
                         "properties": { "topic": "automation" } })
        .into(),
    };
    let traits = json!({ "first_name": format!("Contact {index}"), "email": format!("c{index}@example.com"),
                         "scores": { "engagement": (index % 5) * 10 } });
    Incoming::with_traits(&subject, event, traits, Some("UTC".to_owned()))
}

/// Fires due timers and dispatches effects at `now` until neither has anything left.
fn settle(engine: &mut Engine<SqliteStore>, now: Timestamp, connector: &mut Connectors) -> anyhow::Result<()> {
    loop {
        let fired = engine.fire_due_timers(now, ROUND)?;
        let dispatched = engine.dispatch(now, ROUND, connector)?;
        if fired == 0 && dispatched == 0 {
            return Ok(());
        }
    }
}

/// `path` with `suffix` appended to its name (`-wal`).
fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

fn file_bytes(db: &Path) -> u64 {
    ["", "-wal"].iter().map(|suffix| std::fs::metadata(with_suffix(db, suffix)).map_or(0, |m| m.len())).sum()
}

pub fn run_journey(args: &JourneyArgs, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    let db = fresh_db(dir, "journey");
    let store = if args.keep_wal { SqliteStore::open_without_checkpoints(&db)? } else { SqliteStore::open(&db)? };
    let mut engine = Engine::new(store, json!({}))?;
    let blueprint = include_str!("../../../../blueprints/whitepaper-nurture.yaml");
    engine.deploy("whitepaper-nurture.yaml", blueprint, T0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut connector = Connectors::new(std::sync::Arc::new(NullConnector));
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if args.smtp_sink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counter = delivered.clone();
        std::thread::spawn(move || super::smtp::sink(listener, counter));
        let smtp = super::smtp::connector(port)?;
        let limits = flowmark_runtime::Limits { concurrency: 8, per_second: None, burst: 1, ..Default::default() };
        connector = connector.route("smtp", &[flowmark_runtime::Outbound::Email], std::sync::Arc::new(smtp), limits);
    }
    let started = Instant::now();
    let written_before = written_bytes();
    // Everyone downloads; each run sends its email and waits for a click.
    let mut runs = Vec::with_capacity(args.contacts);
    for chunk in (0..args.contacts).collect::<Vec<_>>().chunks(args.batch) {
        let results = engine.ingest_many(chunk.iter().map(|&i| download(i, T0)).collect(), T0)?;
        runs.extend(results.iter().map(|r| r.runs_started.first().copied()));
    }
    let rss_waiting = rss_bytes();
    settle(&mut engine, T0, &mut connector)?;
    // Three in ten click the email an hour later.
    let click_at = Timestamp(T0.ms() + 3_600_000);
    let clicks: Vec<Incoming> = runs
        .iter()
        .enumerate()
        .filter(|(i, run)| i % 10 < 3 && run.is_some())
        .map(|(i, run)| {
            let key = format!("{}-thanks-2", run.expect("filtered").0);
            let event = Event {
                id: format!("click-{i}"),
                name: "Email Link Clicked".to_owned(),
                at: click_at,
                payload: json!({ "type": "track", "event": "Email Link Clicked", "properties": { "email_id": key } })
                    .into(),
            };
            Incoming::event(&format!("c-{i}"), event)
        })
        .collect();
    for chunk in clicks.chunks(args.batch) {
        engine.ingest_many(chunk.to_vec(), click_at)?;
    }
    settle(&mut engine, click_at, &mut connector)?;
    // Days pass: timeouts, reminders, case studies.
    for hour in 2..=(10 * 24) {
        settle(&mut engine, Timestamp(T0.ms() + hour * 3_600_000), &mut connector)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let written = written_before.zip(written_bytes()).map(|(before, after)| after - before);
    let stats = engine.stats().clone();
    let still_active = flowmark_store::RunFilter {
        status: Some(flowmark_core::engine::RunStatus::Active),
        ..flowmark_store::RunFilter::default()
    };
    let active = engine.store().runs(&still_active, usize::MAX)?.len();
    if args.keep_wal {
        // Copied while the store is open and idle: closing it would checkpoint the log away.
        let frames = db.with_extension("frames.db");
        std::fs::copy(&db, &frames)?;
        std::fs::copy(with_suffix(&db, "-wal"), with_suffix(&frames, "-wal"))?;
        eprintln!("journey: the database and its whole log are kept at {}[-wal]", frames.display());
    }
    drop(engine);
    let bytes = file_bytes(&db);
    if args.keep {
        eprintln!("journey: the database is kept at {}", db.display());
    } else {
        remove_db(&db);
    }
    let transitions = stats.transitions_committed;
    let per_s = transitions as f64 / elapsed;
    // The physical limit: rows of the same size, batched the same, same settings.
    let row_bytes = (bytes / transitions.max(1)) as usize;
    let raw_per_s = raw_inserts(dir, transitions as usize, row_bytes, args.batch)?;
    emit(&json!({
        "scenario": "journey",
        "contacts": args.contacts,
        "seconds": round2(elapsed),
        "transitions": transitions,
        "transitions_per_s": per_s.round(),
        "effects": stats.effects_done,
        "timers_fired": stats.timers_fired,
        "runs_still_active": active,
        "database_bytes": bytes,
        "bytes_per_transition": row_bytes,
        // Written through the log and checkpoints while the journey ran: what the disk took.
        "written_bytes_per_transition": written.map(|bytes| bytes / transitions.max(1)),
        "raw_insert_rows_per_s": raw_per_s.round(),
        "ratio_to_raw_insert": round2(per_s / raw_per_s),
        "rss_bytes_with_all_runs_waiting": rss_waiting,
        "emails_delivered_to_sink": args.smtp_sink.then(|| delivered.load(std::sync::atomic::Ordering::Relaxed)),
        "fsync": fsync.json(),
    }));
    Ok(())
}

/// Inserts `rows` rows of `row_bytes` bytes, `batch` per transaction, into a fresh SQLite
/// file with Flowmark's settings; returns rows per second.
fn raw_inserts(dir: &Path, rows: usize, row_bytes: usize, batch: usize) -> anyhow::Result<f64> {
    let db = fresh_db(dir, "raw");
    let mut conn = rusqlite::Connection::open(&db)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)", [])?;
    let body: Vec<u8> = (0..row_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO rows (body) VALUES (?1)")?;
            for _ in 0..batch.min(rows - written) {
                insert.execute([&body])?;
                written += 1;
            }
        }
        tx.commit()?;
    }
    let per_s = rows as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    remove_db(&db);
    Ok(per_s)
}

const STORM: &str = r#"
id: storm
subject: contact
trigger: { event: Go }
steps:
  - id: hold
    wait: { duration: 1h }
  - id: done
    exit: { reason: storm over }
"#;

pub fn run_timers(args: &TimerArgs, dir: &Path, fsync: &Fsync) -> anyhow::Result<()> {
    let db = fresh_db(dir, "timers");
    let mut engine = Engine::new(SqliteStore::open(&db)?, json!({}))?;
    engine.deploy("storm.yaml", STORM, T0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let setup = Instant::now();
    // Resident memory each time the waiting runs grow tenfold (from 10 000): flat means the
    // engine holds none of them.
    let mut rss_by_waiting = serde_json::Map::new();
    for start in (0..args.timers).step_by(10_000) {
        let events = (start..(start + 10_000).min(args.timers))
            .map(|i| {
                let event = Event {
                    id: format!("go-{i}"),
                    name: "Go".to_owned(),
                    at: T0,
                    payload: json!({ "type": "track", "event": "Go" }).into(),
                };
                Incoming::event(&format!("s-{i}"), event)
            })
            .collect();
        engine.ingest_many(events, T0)?;
        let waiting = (start + 10_000).min(args.timers);
        if waiting >= 10_000 && (waiting == args.timers || is_power_of_ten(waiting)) {
            rss_by_waiting.insert(waiting.to_string(), json!(rss_bytes()));
        }
        if start.is_multiple_of(100_000) {
            eprintln!("timers: {start} runs waiting …");
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let rss_waiting = rss_bytes();
    // The storm: every timer is due at `due`; time runs from there at the wall clock's pace.
    let due = T0.ms() + 3_600_000;
    let storm = Instant::now();
    let mut lateness: Vec<(u64, usize)> = Vec::new();
    loop {
        let now = Timestamp(due + storm.elapsed().as_millis() as i64);
        let fired = engine.fire_due_timers(now, 5000).context("firing timers")?;
        if fired == 0 {
            break;
        }
        lateness.push((storm.elapsed().as_millis() as u64, fired));
    }
    let storm_s = storm.elapsed().as_secs_f64();
    let fired: usize = lateness.iter().map(|(_, n)| n).sum();
    let percentile = |p: f64| {
        let rank = ((p / 100.0) * fired as f64).ceil() as usize;
        let mut seen = 0;
        lateness
            .iter()
            .find(|(_, n)| {
                seen += n;
                seen >= rank
            })
            .map_or(0, |(ms, _)| *ms)
    };
    drop(engine);
    remove_db(&db);
    emit(&json!({
        "scenario": "timers",
        "timers": args.timers,
        "fired": fired,
        "setup_seconds": round2(setup_s),
        "seconds_to_fire_all": round2(storm_s),
        "timers_per_s": (fired as f64 / storm_s).round(),
        "lateness_ms": { "p50": percentile(50.0), "p99": percentile(99.0), "max": percentile(100.0) },
        "rss_bytes_with_all_runs_waiting": rss_waiting,
        "rss_bytes_by_runs_waiting": rss_by_waiting,
        "fsync": fsync.json(),
    }));
    Ok(())
}

fn is_power_of_ten(mut n: usize) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}
