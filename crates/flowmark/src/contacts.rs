//! `flowmark import contacts FILE.csv` and `flowmark export contacts`.
//!
//! Export writes contacts only: the items that item workflows run over (blog posts,
//! campaigns) share the subjects' table but are not people, and stay out.
//!
//! Import checks every row first (errors are printed with their row numbers and nothing is
//! written), then writes 1 000 rows per commit with a checkpoint keyed by the file's SHA-256,
//! so an interrupted import of a large file resumes where it stopped when run again.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowmark_runtime::import;
use flowmark_sqlite::SqliteStore;
use flowmark_store::{RunFilter, Store};
use serde_json::Value;
use sha2::Digest;

#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// Contacts from a CSV file with a header row (`id` and/or `email`, then any fields).
    Contacts(ImportArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The CSV file: a header row naming `id` and/or `email` (common aliases such as `E-mail
    /// Address` are understood), then any trait columns.
    file: PathBuf,
    #[command(flatten)]
    database: crate::database::Database,
    /// Import the file again even if it was imported to the end before.
    #[arg(long)]
    again: bool,
    /// Print the outcome (or the rows' errors) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// Every contact, as CSV (a column per trait) or JSON lines.
    Contacts(ExportArgs),
    /// Everything held about one contact, as one JSON document (GDPR Art. 15, CCPA access),
    /// as `GET /api/contacts/{id}/export` gives it.
    Contact(ContactExportArgs),
}

#[derive(clap::Args)]
pub struct ContactExportArgs {
    /// The contact's id (Segment's `userId` or `anonymousId`), or one of its aliases.
    id: String,
    #[command(flatten)]
    database: crate::database::Database,
    /// Write here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// `flowmark export contact ID`: the contact's document, or exit code 1 when there is none.
fn export_contact(args: &ContactExportArgs) -> anyhow::Result<ExitCode> {
    let store = args.database.open_existing()?;
    let engine = flowmark_runtime::Engine::new(store, serde_json::json!({})).context("cannot start the engine")?;
    let Some(document) = engine.export_contact(&args.id).with_context(|| format!("cannot export `{}`", args.id))?
    else {
        eprintln!("flowmark: no contact `{}` in workspace `{}`", args.id, args.database.workspace);
        return Ok(ExitCode::from(1));
    };
    let text = serde_json::to_string_pretty(&document).context("the export is not JSON")?;
    match &args.output {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    database: crate::database::Database,
    /// `csv`: a header row, then one row per contact with a column per trait; `json`: one
    /// JSON object per line (`id`, `timezone`, `traits`, `updated_at`).
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// JSON lines.
    Json,
}

pub fn import(command: &ImportCommand) -> anyhow::Result<ExitCode> {
    let ImportCommand::Contacts(args) = command;
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.file.display().to_string();
    let rows = match import::read(bytes.as_slice()) {
        Ok(rows) => rows,
        Err(rejected) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "imported": false, "errors": rejected.errors, "total": rejected.total })
                );
            } else {
                for error in &rejected.errors {
                    eprintln!("{name}: {error}");
                }
                eprintln!("{name}: {} problem(s); nothing was imported", rejected.total);
            }
            return Ok(ExitCode::from(1));
        }
    };
    let mut store = args.database.open()?;
    let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let checkpoint = format!("import:contacts:{digest}");
    if args.again {
        let batch = flowmark_store::Batch { settings: vec![(checkpoint.as_str(), "0")], ..Default::default() };
        store.write(&batch, now())?;
    }
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {eta}").expect("the template is valid"),
    );
    let imported = import::write_rows(&mut store, &rows, &checkpoint, now(), |done| bar.set_position(done as u64))
        .context("cannot write the contacts")?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::json!({ "imported": true, "rows": rows.len(), "outcome": imported }));
    } else if imported.resumed_after == rows.len() && imported.created + imported.updated == 0 {
        println!("{name}: already imported ({} rows); --again imports it again", rows.len());
    } else {
        if imported.resumed_after > 0 {
            println!("{name}: resumed after row {}", imported.resumed_after + 1);
        }
        println!("{name}: {} created, {} updated", imported.created, imported.updated);
    }
    Ok(ExitCode::SUCCESS)
}

fn now() -> flowmark_core::Timestamp {
    flowmark_core::Timestamp::from_chrono(&chrono::Utc::now())
}

pub fn export(command: &ExportCommand) -> anyhow::Result<ExitCode> {
    let args = match command {
        ExportCommand::Contacts(args) => args,
        ExportCommand::Contact(args) => return export_contact(args),
    };
    let store = args.database.open_existing()?;
    let items = item_subjects(&store)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // CSV needs its columns first: one pass for the trait names, one for the rows.
    let mut columns: Vec<String> = Vec::new();
    if args.format == Format::Csv {
        each_contact(&store, &items, |contact| {
            if let Value::Object(traits) = &contact.traits {
                for key in traits.keys() {
                    if !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
        })?;
        columns.sort();
    }
    let mut failure: Option<anyhow::Error> = None;
    match args.format {
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(&mut out);
            let mut header = vec!["id".to_owned(), "timezone".to_owned()];
            header.extend(columns.iter().cloned());
            csv.write_record(&header)?;
            each_contact(&store, &items, |contact| {
                let mut record = vec![contact.id.clone(), contact.timezone.clone().unwrap_or_default()];
                record.extend(columns.iter().map(|key| match contact.traits.get(key) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }));
                if let Err(error) = csv.write_record(&record) {
                    failure.get_or_insert(error.into());
                }
            })?;
            csv.flush()?;
        }
        Format::Json => each_contact(&store, &items, |contact| {
            let line = serde_json::json!({ "id": contact.id, "timezone": contact.timezone, "traits": contact.traits, "updated_at": contact.updated_at });
            if let Err(error) = writeln!(out, "{line}") {
                failure.get_or_insert(error.into());
            }
        })?,
    }
    if let Some(error) = failure {
        return Err(error.context("cannot write the export"));
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The subjects of item workflows' runs (`subject: item`, in any version): items, not
/// contacts.
fn item_subjects(store: &SqliteStore) -> anyhow::Result<HashSet<String>> {
    let mut items = HashSet::new();
    for summary in store.workflows()? {
        for version in 1..=summary.latest_version {
            let Some((_, source)) = store.workflow_source(&summary.id, Some(version))? else { continue };
            let compiled = flowmark_core::compile(&flowmark_core::Source::new(summary.id.as_str(), source.as_str()));
            if compiled.workflow.is_none_or(|w| w.subject != flowmark_core::model::SubjectKind::Item) {
                continue;
            }
            let filter =
                RunFilter { workflow_id: Some(summary.id.clone()), version: Some(version), ..Default::default() };
            items.extend(store.runs(&filter, usize::MAX)?.into_iter().map(|run| run.subject_id));
        }
    }
    Ok(items)
}

/// Calls `visit` with every contact (every subject but `items`), in id order, a page at a time.
fn each_contact(
    store: &SqliteStore,
    items: &HashSet<String>,
    mut visit: impl FnMut(&flowmark_store::Contact),
) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = store.contact_ids_after(after.as_deref(), 1000)?;
        for id in page.iter().filter(|id| !items.contains(*id)) {
            if let Some(contact) = store.contact(id)? {
                visit(&contact);
            }
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}
