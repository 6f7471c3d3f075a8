//! `flowmark validate FILE...`: every problem of every file, rendered like rustc, or as JSON.
//!
//! Exit code 1 when any file has an error; warnings alone keep 0.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use flowmark_core::{Compiled, Diagnostic, Severity, Source, compile, limits};

#[derive(clap::Args)]
pub struct Args {
    /// Workflow definition files (YAML).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print diagnostics as JSON (one array for all files) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn read_and_compile(path: &Path) -> anyhow::Result<(Source, Compiled)> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.len() > limits::DEFINITION_SIZE_BYTES_MAX as u64 {
        anyhow::bail!(
            "{} is {} bytes; a definition may be at most {} bytes",
            path.display(),
            metadata.len(),
            limits::DEFINITION_SIZE_BYTES_MAX
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let source = Source::new(path.display().to_string(), text);
    let compiled = compile(&source);
    Ok((source, compiled))
}

pub fn print_human(source: &Source, diagnostics: &[Diagnostic], out: &mut dyn Write) -> anyhow::Result<()> {
    let theme = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    for diagnostic in diagnostics {
        let report = diagnostic.report(source);
        let mut text = String::new();
        handler.render_report(&mut text, &report)?;
        writeln!(out, "{text}")?;
    }
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut json = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for path in &args.files {
        let (source, compiled) = read_and_compile(path)?;
        failed |= compiled.diagnostics.iter().any(|d| d.severity == Severity::Error);
        if args.json {
            json.extend(compiled.diagnostics.iter().map(|d| d.to_json(&source)));
        } else if compiled.diagnostics.is_empty() {
            writeln!(stdout, "{}: ok", source.name)?;
        } else {
            print_human(&source, &compiled.diagnostics, &mut stdout)?;
            let errors = compiled.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            let warnings = compiled.diagnostics.len() - errors;
            let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
            if errors == 0 {
                writeln!(stdout, "{}: ok, with {}", source.name, plural(warnings, "warning"))?;
            } else {
                writeln!(stdout, "{}: {}, {}", source.name, plural(errors, "error"), plural(warnings, "warning"))?;
            }
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &json)?;
        writeln!(stdout)?;
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
