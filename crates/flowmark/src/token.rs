//! `flowmark token create`: makes an API token, stores its hash, prints it once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowmark_server::auth::{new_token, token_hash};
use flowmark_sqlite::SqliteStore;
use flowmark_store::{Scope, Store, Token};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a token with scopes; its text is printed once and stored only as a hash.
    Create(CreateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The SQLite database file the server uses.
    #[arg(long, default_value = "flowmark.db")]
    db: PathBuf,
    /// A name to recognise the token by (`ci`, `website`, …).
    #[arg(long)]
    name: String,
    /// What the token may do: `ingest` (send events), `admin` (everything else), `read`
    /// (every `GET` of the API, changing nothing); repeatable.
    #[arg(long = "scope", required = true, value_delimiter = ',')]
    scopes: Vec<String>,
    /// The workspace the token is for (it is accepted there only).
    #[arg(long, default_value = "default")]
    workspace: String,
    /// The person (an email) the token acts as: in the team's work (tasks, approvals, comments,
    /// attachments) it may act as that person only. Without it, a service token names who acts.
    #[arg(long)]
    person: Option<String>,
    /// Print the token with its name, workspace and scopes as one JSON object, for tools.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    let Command::Create(args) = command;
    let mut scopes = Vec::new();
    for scope in &args.scopes {
        let parsed =
            Scope::parse(scope).with_context(|| format!("`{scope}` is not a scope; use ingest, admin or read"))?;
        if !scopes.contains(&parsed) {
            scopes.push(parsed);
        }
    }
    let workspace = flowmark_store::WorkspaceName::parse(&args.workspace)?;
    if !flowmark_sqlite::workspace_exists(&args.db, &workspace) {
        anyhow::bail!(
            "there is no workspace `{workspace}` beside {}; create it with `flowmark workspace create {workspace}`",
            args.db.display()
        );
    }
    // Every token is stored in the catalogue, the `default` workspace's database.
    let mut store =
        SqliteStore::open(&args.db).with_context(|| format!("cannot open the database {}", args.db.display()))?;
    let text = new_token().map_err(|e| anyhow::anyhow!("the operating system gave no randomness: {e}"))?;
    let now = flowmark_core::Timestamp::from_chrono(&chrono::Utc::now());
    let person = match args.person.as_deref().map(str::trim) {
        Some(person) if !person.contains('@') => anyhow::bail!("`--person {person}` is not an email address"),
        other => other.map(str::to_lowercase),
    };
    let token = Token { workspace: args.workspace.clone(), name: args.name.clone(), scopes, created_at: now, person };
    store.put_token(&token_hash(&text), &token).context("cannot store the token")?;
    if args.json {
        let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
        let created = serde_json::json!({
            "token": text, "name": token.name, "workspace": token.workspace, "scopes": scopes,
            "created_at": token.created_at.rfc3339(), "person": token.person,
        });
        println!("{created}");
    } else {
        println!("{text}");
        eprintln!("flowmark: token `{}` created; it is shown only this once", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
