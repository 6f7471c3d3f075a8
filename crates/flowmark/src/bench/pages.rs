//! `flowmark bench pages`: how fast the web UI's pages come back from a `flowmark serve`
//! child process whose store holds many open tasks.
//!
//! The store is built first, in this process, through the real engine: a content-request
//! workflow (a `task` step for the `writer` role, a team of `--writers` people, so every task
//! is in every writer's inbox, then an approval), started for `--tasks` items by events
//! ingested 1 000 per commit, 5 minutes apart in virtual time, so due dates spread over the
//! year. Everything is dated from tomorrow on, so the server's clock finds no timer due and
//! no effect ready: the owner is idle while pages are measured.
//!
//! Then a writer signs in, and each page is requested `--requests` times in a row on one
//! keep-alive connection over loopback: the latency measured is the server's whole answer
//! (session lookup, queries, rendering) plus a loopback round trip, an upper bound on the
//! render time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_runtime::{Engine, Incoming};
use flowmark_sqlite::SqliteStore;
use serde_json::json;

use super::http::{API_TOKEN, Connection, start_server};
use super::{emit, fresh_db, percentile_ms, remove_db, round2};

#[derive(clap::Args)]
pub struct PagesArgs {
    /// Open tasks in the workspace.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Writers in the team every task goes to (each sees every task in their inbox).
    #[arg(long, default_value_t = 5)]
    writers: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 100)]
    requests: usize,
}

const WORKFLOW: &str = r#"
id: content-request
name: Content request
subject: item
trigger:
  event: Content Requested
roles:
  writer: { team: content }
  lead: { person: lead@example.com }
steps:
  - id: draft
    task:
      title: "Draft {{ item.title }}"
      description: "For {{ item.channel }}"
      responsible: writer
      accountable: lead
      due: 30d
      fields:
        - { name: draft_url, type: url, required: true }
  - id: review
    approval:
      approvers: [lead]
      accountable: lead
      due: 2d
      on_reject: draft
"#;

const PASSWORD: &str = "bench-password";
const SPACING_MS: i64 = 5 * 60_000;
const CHUNK: usize = 1000;

pub fn run(args: &PagesArgs, dir: &Path) -> anyhow::Result<()> {
    let db = fresh_db(dir, "pages");
    let now = Timestamp(chrono::Utc::now().timestamp_millis());
    let t0 = Timestamp((now.ms() / 3_600_000 + 24) * 3_600_000);
    let writers: Vec<String> = (1..=args.writers.max(1)).map(|i| format!("writer{i}@example.com")).collect();

    let started = Instant::now();
    {
        let mut engine = Engine::new(SqliteStore::open(&db)?, json!({}))?;
        engine.deploy("content-request.yaml", WORKFLOW, now).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut people: Vec<serde_json::Value> = writers.iter().map(|w| json!({ "email": w })).collect();
        people.push(json!({ "email": "lead@example.com" }));
        let directory = serde_json::from_value(json!({ "people": people, "teams": { "content": writers } }))?;
        if let Err(errors) = engine.set_directory(directory, now)? {
            bail!("the directory was refused: {errors:?}");
        }
        let indices: Vec<usize> = (0..args.tasks).collect();
        for chunk in indices.chunks(CHUNK) {
            let at = Timestamp(t0.ms() + chunk[0] as i64 * SPACING_MS);
            let incoming = chunk.iter().map(|&i| request(i, at)).collect();
            engine.ingest_many(incoming, at)?;
        }
    }
    let build_s = started.elapsed().as_secs_f64();
    eprintln!("pages: {} tasks for {} writers built in {build_s:.1} s", args.tasks, writers.len());

    let server = start_server(&db)?;
    let mut api = Connection::open(&server.address)?;
    let bearer = format!("Bearer {API_TOKEN}");
    let body = json!({ "password": PASSWORD }).to_string();
    let (status, _) = api.request("PUT", &format!("/api/accounts/{}", writers[0]), &bearer, body.as_bytes())?;
    anyhow::ensure!(status == 200, "the account was not created: {status}");
    let form = format!("email={}&password={PASSWORD}&next=%2Fui", writers[0].replace('@', "%40"));
    let (status, headers, _) =
        api.send("POST", "/ui/login", &[("Content-Type", "application/x-www-form-urlencoded")], form.as_bytes())?;
    let cookie = headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .and_then(|(_, value)| value.split(';').next())
        .map(str::to_owned)
        .with_context(|| format!("signing in gave no session ({status})"))?;

    // Pages of one of the newest and one of the oldest items, and of the month most tasks are due in.
    let (_, listing) = api.request("GET", "/api/runs?limit=1", &bearer, b"")?;
    let listing: serde_json::Value = serde_json::from_slice(&listing)?;
    let newest_run = listing[0]["id"].as_u64().context("no run was started")?;
    let (_, work) = api.request("GET", &format!("/api/items/{}/work", item_id(0)), &bearer, b"")?;
    let work: serde_json::Value = serde_json::from_slice(&work)?;
    let work_id = work["work"][0]["id"].as_str().context("the first item has no work")?.to_owned();
    let busy_day = Timestamp(t0.ms() + 30 * 24 * 3_600_000).to_chrono().format("%Y-%m-%d").to_string();
    let pages = [
        ("my_work", "/ui".to_owned()),
        ("work_item", format!("/ui/work/{}", flowmark_runtime::url_part(&work_id))),
        ("item", format!("/ui/items/{}", item_id(0))),
        ("calendar_month", format!("/ui/calendar?date={busy_day}")),
        ("calendar_week", format!("/ui/calendar?view=week&date={busy_day}")),
        ("workflows", "/ui/workflows".to_owned()),
        ("workflow", "/ui/workflows/content-request".to_owned()),
        ("workflow_graph", "/ui/workflows/content-request/graph.svg?counts=1".to_owned()),
        ("runs", "/ui/runs".to_owned()),
        ("runs_at_step", "/ui/runs?workflow=content-request&status=active&step=draft".to_owned()),
        ("run", format!("/ui/runs/{newest_run}")),
    ];
    let mut browser = Connection::open(&server.address)?;
    for (name, path) in pages {
        let mut samples = Vec::with_capacity(args.requests);
        let mut bytes = 0;
        for _ in 0..args.requests.max(1) {
            let begun = Instant::now();
            let (status, _, body) = browser.send("GET", &path, &[("Cookie", &cookie)], b"")?;
            samples.push(begun.elapsed());
            anyhow::ensure!(status == 200, "{path} answered {status}");
            bytes = body.len();
        }
        let p50 = percentile_ms(&mut samples, 50.0);
        let p99 = percentile_ms(&mut samples, 99.0);
        let max = samples.iter().max().copied().unwrap_or(Duration::ZERO).as_secs_f64() * 1000.0;
        eprintln!("pages: {name:<15} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  ({bytes} bytes)  {path}");
        emit(&json!({
            "scenario": "pages", "page": name, "path": path, "tasks": args.tasks, "writers": writers.len(),
            "inbox": args.tasks, "requests": args.requests, "bytes": bytes,
            "p50_ms": round2(p50), "p99_ms": round2(p99), "max_ms": round2(max), "build_s": round2(build_s),
        }));
    }
    drop(server);
    remove_db(&db);
    Ok(())
}

fn item_id(index: usize) -> String {
    format!("post-{index}")
}

fn request(index: usize, at: Timestamp) -> Incoming {
    let subject = item_id(index);
    let event = Event {
        id: format!("request-{index}"),
        name: "Content Requested".to_owned(),
        at,
        payload: json!({ "type": "track", "event": "Content Requested", "userId": subject }).into(),
    };
    let channel = ["blog", "newsletter", "linkedin", "webinar"][index % 4];
    let traits = json!({ "title": format!("Post {index}"), "channel": channel });
    Incoming::with_traits(&subject, event, traits, None)
}
