//! `flowmark-dst`: runs simulation seeds; the first failure prints its seed and stops.
//!
//! `flowmark-dst --seeds 10000` is the long soak; `flowmark-dst --seed 1234` replays one.

use std::process::ExitCode;

use clap::Parser;
use flowmark_dst::{Options, run_seed, totals};

#[derive(Parser)]
#[command(about = "Deterministic simulation testing of the Flowmark runtime")]
struct Args {
    /// Replay this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "from"])]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Operations per seed in the faulty phase.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    /// Contacts per seed.
    #[arg(long, default_value_t = 12)]
    contacts: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options { steps: args.steps, contacts: args.contacts, ..Options::default() };
    let (from, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.from, args.seeds),
    };
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for seed in from..from + count {
        match run_seed(seed, &options) {
            Ok(report) => {
                if args.seed.is_some() {
                    println!("{report:?}");
                }
                reports.push(report);
            }
            Err(failure) => {
                eprintln!("FAILED {failure}");
                return ExitCode::FAILURE;
            }
        }
        if (seed - from + 1) % 100 == 0 {
            eprintln!("{} seeds passed ({:.0?})", seed - from + 1, started.elapsed());
        }
    }
    let totals = serde_json::to_string(&totals(&reports)).unwrap_or_default();
    println!("{{\"from\": {from}, \"seconds\": {:.1}, \"totals\": {totals}}}", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
