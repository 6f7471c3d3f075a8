//! The simulation in CI: a fixed set of seeds, each checked against every invariant, and a
//! replay of one seed giving the same final state.

use flowmark_dst::{Options, run_seed, run_seeds};

/// Seeds CI runs on every change; `flowmark-dst --seeds 10000` is the soak.
const CI_SEEDS: u64 = 48;

#[test]
fn every_ci_seed_holds_every_invariant() {
    let reports = run_seeds(0, CI_SEEDS, &Options::default()).unwrap_or_else(|failure| panic!("{failure}"));
    // The seeds do what they are for: faults, restarts and retries happen.
    let totals = flowmark_dst::totals(&reports);
    assert!(totals["faults_write_before"] > 0 && totals["faults_write_after"] > 0, "{totals:?}");
    assert!(totals["restarts"] > 0 && totals["peer_calls"] > 0 && totals["runs"] > 0, "{totals:?}");
    assert!(totals["events_acknowledged"] < totals["events_sent"] + 1, "{totals:?}");
    // Workers die, hang and answer after their lease.
    for kind in ["worker_claims", "worker_deaths", "worker_hangs", "worker_answers_after_lease"] {
        assert!(totals[kind] > 0, "{kind}: {totals:?}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let options = Options::default();
    let first = run_seed(7, &options).unwrap_or_else(|failure| panic!("{failure}"));
    let second = run_seed(7, &options).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first, second, "the same seed, the same run");
    let other = run_seed(8, &options).unwrap_or_else(|failure| panic!("{failure}"));
    assert_ne!(first.digest, other.digest, "the digest tells runs apart");
}
