//! `flowmark erase contact ID`: erases a contact and everything held about it from a
//! database, as `DELETE /api/contacts/{id}` does on a running server.
//!
//! For a database no server has open: a running server learns of tombstones when it starts,
//! so while one runs, erase through its API.

use std::process::ExitCode;

use anyhow::Context;
use flowmark_runtime::Engine;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Erase a contact (by its id or an alias): its row, events, aliases, scores, runs with
    /// their histories and effects, notifications and work items; a tombstone keeps its old
    /// events from bringing it back.
    Contact(ContactArgs),
}

#[derive(clap::Args)]
pub struct ContactArgs {
    /// The contact's id (Segment's `userId` or `anonymousId`), or one of its aliases.
    id: String,
    /// The database and workspace (stop the server that uses it first, or use its API).
    #[command(flatten)]
    database: crate::database::Database,
    /// Print what was removed as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    let Command::Contact(args) = command;
    let store = args.database.open()?;
    let mut engine = Engine::new(store, serde_json::json!({})).context("cannot start the engine")?;
    let now = flowmark_core::Timestamp::from_chrono(&chrono::Utc::now());
    let erasure = engine.erase_contact(&args.id, now).with_context(|| format!("cannot erase `{}`", args.id))?;
    if args.json {
        let mut answer = serde_json::to_value(&erasure).context("the erasure is not JSON")?;
        answer["erased"] = serde_json::json!(args.id);
        println!("{answer}");
    } else {
        println!(
            "erased `{}` (known as {}): {} runs, {} events, {} effects, {} work items, {} score changes",
            args.id,
            erasure.ids.join(", "),
            erasure.runs.len(),
            erasure.events,
            erasure.effects,
            erasure.work_items,
            erasure.score_changes
        );
    }
    Ok(ExitCode::SUCCESS)
}
