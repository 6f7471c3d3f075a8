//! Which database a command works on: the server's file (`--db`, its `default` workspace) and
//! one of its workspaces (`--workspace`, whose file lives beside it).

use std::path::PathBuf;

use anyhow::Context;
use flowmark_sqlite::SqliteStore;
use flowmark_store::WorkspaceName;

#[derive(clap::Args, Clone)]
pub struct Database {
    /// The SQLite database file the server uses (its `default` workspace; the others live in
    /// `<db>.workspaces/` beside it).
    #[arg(long, default_value = "flowmark.db")]
    pub db: PathBuf,
    /// The workspace to work in.
    #[arg(long, default_value = "default")]
    pub workspace: String,
}

impl Database {
    /// The workspace named, checked.
    pub fn workspace(&self) -> anyhow::Result<WorkspaceName> {
        Ok(WorkspaceName::parse(&self.workspace)?)
    }

    /// Opens the workspace's database; the `default` one is created when missing.
    pub fn open(&self) -> anyhow::Result<SqliteStore> {
        let name = self.workspace()?;
        let path = flowmark_sqlite::workspace_path(&self.db, &name);
        flowmark_sqlite::open_workspace(&self.db, &name)
            .with_context(|| format!("cannot open the database {}", path.display()))
    }

    /// Opens the workspace's database, which must exist.
    pub fn open_existing(&self) -> anyhow::Result<SqliteStore> {
        if !self.db.exists() {
            anyhow::bail!("there is no database at {}", self.db.display());
        }
        self.open()
    }
}
