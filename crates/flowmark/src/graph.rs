//! `flowmark graph FILE`: draws a workflow as SVG, Mermaid or Graphviz DOT, through
//! `flowmark_graph` (the same drawing the web UI shows).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The workflow definition to draw (YAML).
    file: PathBuf,
    /// The output format.
    #[arg(long, value_enum, default_value_t = Format::Svg)]
    format: Format,
    /// Write the diagram to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A standalone SVG image, laid out without any external program.
    Svg,
    /// A Mermaid flowchart, for Markdown that renders Mermaid.
    Mermaid,
    /// A Graphviz digraph, for `dot -Tsvg` and friends.
    Dot,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let workflow = match crate::load_workflow(&args.file)? {
        Ok(workflow) => workflow,
        Err(code) => return Ok(code),
    };
    let text = match args.format {
        Format::Svg => flowmark_graph::svg(&workflow, &flowmark_graph::Marks::default()),
        Format::Mermaid => flowmark_graph::mermaid(&workflow),
        Format::Dot => flowmark_graph::dot(&workflow),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
