//! The `flowmark` command: validate, graph and simulate workflow definitions.
//!
//! This is the imperative shell around `flowmark-core` and `flowmark-sim`: it reads files,
//! prints, and turns outcomes into exit codes (0 fine, 1 a finding in the input, 2 a usage or
//! operating error). All decisions live in the libraries.

mod attribution;
mod bench;
mod contacts;
mod database;
mod erase;
mod graph;
mod serve;
mod simulate;
mod token;
mod validate;
mod why;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flowmark",
    version,
    about = "Smart marketing workflows: one durable engine for the team's work and the customer journeys."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow definitions and report every problem with file:line:col and a hint.
    Validate(validate::Args),
    /// Draw a workflow as SVG, Mermaid or Graphviz DOT.
    Graph(graph::Args),
    /// Dry-run a workflow over a synthetic population in virtual time and report per step.
    Simulate(simulate::Args),
    /// Run the server: Segment-compatible ingestion, the HTTP API, timers and effects, on SQLite.
    Serve(Box<serve::Args>),
    /// Measure: ingestion over HTTP, durable journeys, timer storms, fsync (JSON lines out).
    Bench(bench::Args),
    /// Explain a run step by step: conditions, the values they read, paths taken, holds and skips.
    Why(why::Args),
    /// Import data: `flowmark import contacts FILE.csv`.
    #[command(subcommand)]
    Import(contacts::ImportCommand),
    /// Export data: `flowmark export contacts --format csv|json`, `flowmark export contact ID`.
    #[command(subcommand)]
    Export(contacts::ExportCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(token::Command),
    /// Erase a person's data: `flowmark erase contact ID` (GDPR Art. 17, CCPA deletion).
    #[command(subcommand)]
    Erase(erase::Command),
    /// Credit conversions to channels: first and last touch, linear, position-based, Markov and
    /// Shapley, over a file of paths in ChannelAttribution's format.
    Attribution(attribution::Args),
    /// Manage workspaces: `flowmark workspace create NAME`, `flowmark workspace list`.
    #[command(subcommand)]
    Workspace(workspace::Command),
}

/// mimalloc instead of the C library's allocator: the engine makes and drops many small
/// values per transition, often on another thread than the one that made them (a request
/// parsed on an HTTP worker, freed by the owner), which glibc's malloc serves slowly
/// (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Token(command) => token::run(&command),
        Command::Bench(args) => bench::run(&args),
        Command::Why(args) => why::run(&args),
        Command::Import(command) => contacts::import(&command),
        Command::Export(command) => contacts::export(&command),
        Command::Erase(command) => erase::run(&command),
        Command::Workspace(command) => workspace::run(&command),
        Command::Attribution(args) => attribution::run(&args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`flowmark simulate … | head`): nothing is wrong, stop quietly.
        Err(error) if broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads and compiles one definition, printing its diagnostics to stderr when it fails.
/// Shared by `graph` and `simulate`, which need a valid workflow to work on.
pub(crate) fn load_workflow(path: &std::path::Path) -> anyhow::Result<Result<flowmark_core::Workflow, ExitCode>> {
    let (source, compiled) = validate::read_and_compile(path)?;
    match compiled.workflow {
        Some(workflow) => Ok(Ok(workflow)),
        None => {
            validate::print_human(&source, &compiled.diagnostics, &mut std::io::stderr())?;
            Ok(Err(ExitCode::from(1)))
        }
    }
}

/// Is this the error of writing to a pipe whose reader has closed it?
fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => Some(io.kind()),
            None => cause.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind),
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
