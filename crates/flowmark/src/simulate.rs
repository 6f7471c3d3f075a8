//! `flowmark simulate FILE`: the population dry run, with a progress bar and text or JSON.
//!
//! Reads the workflow, the optional behaviour file and the optional recorded events, calls
//! `flowmark_sim::simulate`, prints the report. Same seed ⇒ byte-identical output.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowmark_core::Timestamp;
use flowmark_core::engine::Event;
use flowmark_sim::{Behaviour, Config, RecordedEvent};

#[derive(clap::Args)]
pub struct Args {
    /// The workflow definition (YAML).
    file: PathBuf,
    /// How many synthetic contacts (or items) go through the workflow.
    #[arg(long, visible_alias = "items", default_value_t = 1000)]
    contacts: u32,
    /// How many days of virtual time to simulate.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Seed of the random behaviour: the same seed gives the same report, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// When virtual time starts (RFC 3339).
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    /// A YAML file of behaviour probabilities and delays (see docs/simulation.md).
    #[arg(long)]
    behaviour: Option<PathBuf>,
    /// Replay recorded events (JSON Lines, Segment shapes) instead of synthetic behaviour.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let workflow = match crate::load_workflow(&args.file)? {
        Ok(workflow) => workflow,
        Err(code) => return Ok(code),
    };
    let start = chrono::DateTime::parse_from_rfc3339(&args.start)
        .with_context(|| format!("--start `{}` is not an RFC 3339 instant like 2026-01-05T00:00:00Z", args.start))?;
    let behaviour = match &args.behaviour {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Behaviour::from_yaml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Behaviour::default(),
    };
    let events = args.events.as_ref().map(read_events).transpose()?;
    let config = Config {
        subjects: args.contacts,
        days: args.days,
        seed: args.seed,
        start: Timestamp::from_chrono(&start),
        behaviour,
        events,
    };
    let bar = if args.quiet || args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulating [{bar:40}] {percent}% of the subjects ({elapsed})",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar
    };
    let report = flowmark_sim::simulate(&workflow, &config, |done, total| {
        bar.set_position(done.saturating_mul(1000) / total.max(1));
    })?;
    bar.finish_and_clear();
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", report.to_text())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads Segment-shaped events, one JSON object per line: `userId` (or `anonymousId`) names
/// the subject, `event` (track) or `type` names the event, `timestamp` is RFC 3339.
fn read_events(path: &PathBuf) -> anyhow::Result<Vec<RecordedEvent>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_number = index + 1;
        let line = line.with_context(|| format!("{}:{line_number}: cannot read the line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{line_number}", path.display());
        let payload: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not a JSON object", where_()))?;
        let subject_id = payload
            .get("userId")
            .or_else(|| payload.get("anonymousId"))
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{}: the event has no `userId` or `anonymousId`", where_()))?
            .to_owned();
        let name = payload
            .get("event")
            .or_else(|| payload.get("type"))
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{}: the event has no `event` or `type`", where_()))?
            .to_owned();
        let timestamp = payload
            .get("timestamp")
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{}: the event has no `timestamp`", where_()))?;
        let at = chrono::DateTime::parse_from_rfc3339(timestamp)
            .with_context(|| format!("{}: `{timestamp}` is not an RFC 3339 timestamp", where_()))?;
        let id = payload
            .get("messageId")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("line-{line_number}"), str::to_owned);
        events.push(RecordedEvent {
            subject_id,
            event: Event { id, name, at: Timestamp::from_chrono(&at), payload: payload.into() },
        });
    }
    Ok(events)
}
