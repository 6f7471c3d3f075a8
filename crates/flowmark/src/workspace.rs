//! `flowmark workspace create NAME` and `flowmark workspace list`: the workspaces beside a
//! server's database. A server picks up the workspaces it finds when it starts; while one
//! runs, create workspaces through its API (`POST /api/workspaces`), which starts them at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowmark_store::WorkspaceName;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a workspace: a database of its own beside the server's. Make its first token
    /// with `flowmark token create --workspace NAME`.
    Create(CreateArgs),
    /// List the workspaces, `default` first.
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The new workspace's name: 1 to 40 lower-case letters, digits and `-`.
    name: String,
    /// The SQLite database file the server uses.
    #[arg(long, default_value = "flowmark.db")]
    db: PathBuf,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// The SQLite database file the server uses.
    #[arg(long, default_value = "flowmark.db")]
    db: PathBuf,
    /// One JSON object: `{"workspaces": [...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create(args) => {
            let name = WorkspaceName::parse(&args.name)?;
            let path = flowmark_sqlite::workspace_path(&args.db, &name);
            match flowmark_sqlite::create_workspace(&args.db, &name)
                .with_context(|| format!("cannot create {}", path.display()))?
            {
                Some(_) => {
                    println!("workspace `{name}` created at {}", path.display());
                    eprintln!(
                        "flowmark: next, a token for it: flowmark token create --db {} --workspace {name} --name admin --scope admin",
                        args.db.display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("the workspace `{name}` exists already ({})", path.display()),
            }
        }
        Command::List(args) => {
            let names = flowmark_sqlite::workspace_names(&args.db)?;
            if args.json {
                let names: Vec<&str> = names.iter().map(WorkspaceName::as_str).collect();
                println!("{}", serde_json::json!({ "workspaces": names }));
            } else {
                for name in names {
                    println!("{name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
