//! `flowmark attribution PATHS.csv`: the attribution models over a file of paths in
//! ChannelAttribution's format, as a table (channel × model) or, with `--json`, one object:
//! `{"total_conversions", "total_value", "models": {model: {channel: {"conversions",
//! "value"}}}, "removal_effects": {channel: r}}` (removal effects when `markov` runs).
//!
//! Exit code 1, with every problem located, for a file that cannot be read as paths or has no
//! conversions; 2 for an unknown model or order (clap's usage error).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowmark_attribution::{Attribution, Model, Paths};

#[derive(clap::Args)]
pub struct Args {
    /// The paths: a CSV (`,` or `;`) with the columns `path` (channels separated by `>`),
    /// `total_conversions`, and optionally `total_conversion_value` and `total_null`.
    file: PathBuf,
    /// The models to run, comma-separated: first_touch, last_touch, linear, position_based,
    /// markov, shapley (default: all).
    #[arg(long, value_delimiter = ',', value_parser = model)]
    models: Vec<Model>,
    /// The Markov chain's order: 1, 2 or 3.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    order: u8,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn model(text: &str) -> Result<Model, String> {
    Model::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
        format!("`{text}` is not a model; use {}", known.join(", "))
    })
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.file.display().to_string();
    let paths = match Paths::parse(&bytes) {
        Ok(paths) => paths,
        Err(error) => {
            for line in error.to_string().lines() {
                eprintln!("{name}: {line}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let models = if args.models.is_empty() { Model::ALL.to_vec() } else { args.models.clone() };
    let attribution = match flowmark_attribution::attribute(&paths, &models, usize::from(args.order)) {
        Ok(attribution) => attribution,
        Err(error) => {
            eprintln!("{name}: {error}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&attribution)?)?;
    } else {
        write!(out, "{}", table(&attribution))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Conversions (and value) per channel, a column per model.
fn table(attribution: &Attribution) -> String {
    let models: Vec<&str> = attribution.models.keys().copied().collect();
    let mut channels: Vec<&String> = attribution.models.values().flat_map(|m| m.keys()).collect();
    channels.sort();
    channels.dedup();
    let width = channels.iter().map(|c| c.len()).max().unwrap_or(7).max(7);
    let mut text = format!(
        "{} conversions, value {:.2}; credited conversions (value) per model\n\n{:width$}",
        attribution.total_conversions, attribution.total_value, "channel"
    );
    for model in &models {
        text.push_str(&format!("  {model:>24}"));
    }
    if attribution.removal_effects.is_some() {
        text.push_str(&format!("  {:>14}", "removal effect"));
    }
    text.push('\n');
    for channel in channels {
        text.push_str(&format!("{channel:width$}"));
        for model in &models {
            let credit = attribution.models[model].get(channel).copied().unwrap_or_default();
            text.push_str(&format!("  {:>24}", format!("{:.2} ({:.2})", credit.conversions, credit.value)));
        }
        if let Some(effects) = &attribution.removal_effects {
            text.push_str(&format!("  {:>14.4}", effects.get(channel).copied().unwrap_or_default()));
        }
        text.push('\n');
    }
    text
}
