//! `flowmark bench attribution --paths FILE`: the six attribution models over a path file
//! (read and parsed included), and, with `--reference`, ChannelAttribution's
//! `heuristic_models` and `markov_model(order=1)` on the same file in the same run, timed
//! inside its Python process (the file read by pandas is not counted for it).
//!
//! Make the file with `crates/flowmark-attribution/tests/fixtures/gen_paths.py --journeys
//! 1000000 --seed 20261208 --out target/bench-data/paths-1m.csv`; install the reference
//! with `python3 -m pip install --target DIR channelattribution==2.2.5 numpy pandas
//! matplotlib` and pass `--reference DIR`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use flowmark_attribution::{Model, Paths, attribute};
use serde_json::json;

use super::emit;

#[derive(clap::Args)]
pub struct AttributionArgs {
    /// A path file in ChannelAttribution's format.
    #[arg(long)]
    paths: PathBuf,
    /// Where ChannelAttribution is installed (a `pip install --target` directory), to time it
    /// on the same file.
    #[arg(long, value_name = "DIR")]
    reference: Option<PathBuf>,
    /// Runs of each; the best is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const REFERENCE: &str = r#"
import sys, time, json
import pandas as pd
import ChannelAttribution as ca
data = pd.read_csv(sys.argv[1])
best = {}
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    ca.heuristic_models(data, "path", "total_conversions", var_value="total_conversion_value", flg_pro=False)
    h = time.perf_counter() - t
    t = time.perf_counter()
    ca.markov_model(data, "path", "total_conversions", var_value="total_conversion_value", var_null="total_null", order=1, flg_pro=False)
    m = time.perf_counter() - t
    best = {"heuristic_models_s": min(h, best.get("heuristic_models_s", h)), "markov_model_s": min(m, best.get("markov_model_s", m))}
print("RESULT " + json.dumps(best))
"#;

pub fn run(args: &AttributionArgs) -> anyhow::Result<()> {
    let mut best = f64::INFINITY;
    let mut shape = (0, 0);
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let bytes = std::fs::read(&args.paths).with_context(|| format!("cannot read {}", args.paths.display()))?;
        let paths = Paths::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let result = attribute(&paths, &Model::ALL, 1)?;
        best = best.min(started.elapsed().as_secs_f64());
        shape = (paths.rows.len(), result.models.len());
    }
    let mut line = json!({
        "scenario": "attribution",
        "paths": shape.0,
        "models": shape.1,
        "flowmark_all_six_s": round3(best),
    });
    if let Some(dir) = &args.reference {
        let output = std::process::Command::new("python3")
            .arg("-c")
            .arg(REFERENCE)
            .arg(&args.paths)
            .arg(args.runs.max(1).to_string())
            .env("PYTHONPATH", dir)
            .output()
            .context("python3 runs")?;
        let printed = String::from_utf8_lossy(&output.stdout);
        let result = printed
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .ok_or_else(|| anyhow::anyhow!("ChannelAttribution failed: {}", String::from_utf8_lossy(&output.stderr)))?;
        let reference: serde_json::Value = serde_json::from_str(result)?;
        let theirs = reference["heuristic_models_s"].as_f64().unwrap_or(0.0)
            + reference["markov_model_s"].as_f64().unwrap_or(0.0);
        line["channelattribution"] = reference;
        line["channelattribution_heuristics_plus_markov_s"] = json!(round3(theirs));
        line["flowmark_share_of_reference"] = json!(round3(best / theirs));
    }
    emit(&line);
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
