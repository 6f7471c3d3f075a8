//! `flowmark why RUN`: a run explained step by step from the database, like
//! `GET /api/runs/{id}/why`.

use std::process::ExitCode;

use anyhow::Context;
use flowmark_core::engine::RunId;
use flowmark_store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The run's id.
    run: u64,
    #[command(flatten)]
    database: crate::database::Database,
    /// Print the explanation as JSON (one object with the run and its lines).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let store = args.database.open_existing()?;
    let id = RunId(args.run);
    let Some(run) = store.run(id).context("cannot read the run")? else {
        eprintln!("error: there is no run {}", args.run);
        return Ok(ExitCode::from(1));
    };
    let lines = flowmark_runtime::why::explain(&store.history(id)?, &store.decisions(id)?);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "run": run.id, "workflow": run.workflow_id, "version": run.version, "subject": run.subject_id, "status": run.status, "lines": lines })
        );
    } else {
        println!(
            "Run {} of `{}` v{} for `{}`: {}",
            run.id.0,
            run.workflow_id,
            run.version,
            run.subject_id,
            run.status.as_str()
        );
        print!("{}", flowmark_runtime::why::render(&lines));
    }
    Ok(ExitCode::SUCCESS)
}
