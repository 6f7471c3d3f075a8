//! `flowmark bench SCENARIO`: the benchmark suite, one command per scenario, one JSON object
//! per measurement on standard output (progress on standard error).
//!
//! - `fsync`: how long one synced write takes on the disk under `--dir` (the physical limit
//!   of every durable figure; the other scenarios measure it too, in the same run).
//! - `ingest`: `/v1/track` or `/v1/batch` over HTTP against a `flowmark serve` child process,
//!   from this process's client threads (keep-alive connections), at several concurrencies.
//! - `journey`: contacts through the nurture blueprint on the durable SQLite store, with a
//!   raw batched SQLite insert of rows of the same size measured in the same run.
//! - `timers`: a storm of timers due at the same instant: time to fire them all, lateness.
//! - `render`: personalised email rendered as the dispatcher does it, on one thread.
//! - `smtp`: the SMTP connector's pool pushing messages into a local SMTP sink.
//! - `respond`: the n8n-equivalent workload: an HTTP call runs a workflow that branches on
//!   the body, sets a value and answers with it; or the same requests to another tool's URL.
//! - `attribution`: the six attribution models over a path file, beside ChannelAttribution.
//! - `pages`: the web UI's pages from a `flowmark serve` child over a store with 100 000
//!   open tasks.
//!
//! Figures and the commands that produced them are recorded in `docs/BENCHMARKS.md`.
//! Invariant: a benchmark never touches a database it did not create (`--dir` gets fresh
//! files, removed afterwards).

mod attribution;
mod cpu;
mod http;
mod journey;
mod pages;
mod render;
mod respond;
pub(crate) mod smtp;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Where the benchmark's databases go (fresh files, removed afterwards); the disk under
    /// it is the one measured.
    #[arg(long, global = true, default_value = "target/bench")]
    dir: PathBuf,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// The latency of one synced 4 KiB write.
    Fsync,
    /// HTTP ingestion against a `flowmark serve` child process.
    Ingest(http::Args),
    /// Contacts through the nurture blueprint, durable, against raw SQLite inserts.
    Journey(journey::JourneyArgs),
    /// Timers all due at the same instant.
    Timers(journey::TimerArgs),
    /// Rendering personalised email (Liquid, HTML escaped) on one core.
    Render(render::RenderArgs),
    /// The SMTP connector sending to a local SMTP sink.
    Smtp(smtp::SmtpArgs),
    /// Web UI pages over a store with many open tasks.
    Pages(pages::PagesArgs),
    /// An HTTP call that runs a workflow and answers with its result (n8n's workload).
    Respond(respond::RespondArgs),
    /// The attribution models over a path file, beside ChannelAttribution on the same file.
    Attribution(attribution::AttributionArgs),
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let fsync = measure_fsync(&args.dir)?;
    eprintln!("fsync: p50 {:.2} ms, p99 {:.2} ms", fsync.p50_ms, fsync.p99_ms);
    match &args.scenario {
        Scenario::Fsync => emit(&serde_json::json!({ "scenario": "fsync", "fsync": fsync.json() })),
        Scenario::Ingest(ingest) => http::run(ingest, &args.dir, &fsync)?,
        Scenario::Journey(journey) => journey::run_journey(journey, &args.dir, &fsync)?,
        Scenario::Timers(timers) => journey::run_timers(timers, &args.dir, &fsync)?,
        Scenario::Render(render) => render::run(render)?,
        Scenario::Smtp(smtp) => smtp::run(smtp)?,
        Scenario::Pages(pages) => pages::run(pages, &args.dir)?,
        Scenario::Respond(respond) => respond::run(respond, &args.dir, &fsync)?,
        Scenario::Attribution(attribution) => attribution::run(attribution)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one result line.
fn emit(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
}

#[derive(Debug, Clone, Copy)]
pub struct Fsync {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Fsync {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "p50_ms": round2(self.p50_ms), "p99_ms": round2(self.p99_ms) })
    }
}

/// Times 200 synced 4 KiB appends to a file under `dir`, as a WAL commit does.
fn measure_fsync(dir: &Path) -> anyhow::Result<Fsync> {
    let path = dir.join(format!("fsync-{}.probe", std::process::id()));
    let mut file = std::fs::File::create(&path).context("cannot create the fsync probe file")?;
    let block = [7u8; 4096];
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Fsync { p50_ms: percentile_ms(&mut samples, 50.0), p99_ms: percentile_ms(&mut samples, 99.0) })
}

/// Runs `connections` client threads for `seconds`: each calls `client(thread)` with its own
/// number (unique across `round`s) and a flag that says when to stop, and gives back what it
/// measured. Returns every thread's result and the seconds they ran.
pub fn run_clients<T: Send + 'static>(
    connections: usize,
    round: usize,
    seconds: u64,
    client: impl Fn(usize, &std::sync::atomic::AtomicBool) -> anyhow::Result<T> + Send + Sync + 'static,
) -> anyhow::Result<(Vec<T>, f64)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let client = Arc::new(client);
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|index| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || client(round * 100_000 + index, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let results = threads
        .into_iter()
        .map(|thread| thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?)
        .collect::<anyhow::Result<Vec<T>>>()?;
    Ok((results, started.elapsed().as_secs_f64()))
}

/// The `p`th percentile of `samples` in ms (nearest rank); sorts them.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
}

/// Latency percentiles (p50, p90, p99, max) of `samples` in ms, as benchmarks report them.
pub fn latency_json(samples: &mut [Duration]) -> serde_json::Value {
    serde_json::json!({
        "p50": round2(percentile_ms(samples, 50.0)),
        "p90": round2(percentile_ms(samples, 90.0)),
        "p99": round2(percentile_ms(samples, 99.0)),
        "max": round2(percentile_ms(samples, 100.0)),
    })
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The resident set size of this process, in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:").and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes this process has handed to `write` and `pwrite` so far (`wchar` in `/proc/self/io`):
/// the write-ahead log's frames, checkpoints into the database file, everything. `None` where
/// the kernel does not say (not Linux).
pub fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("wchar:").and_then(|n| n.trim().parse().ok()))
}

/// A fresh database path under `dir`, with any leftovers of an earlier run removed.
fn fresh_db(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    remove_db(&path);
    path
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
}
