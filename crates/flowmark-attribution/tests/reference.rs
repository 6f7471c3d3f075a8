//! Flowmark's models against the reference implementations of the field, on the same files.
//!
//! `fixtures/gen_paths.py` makes the paths (deterministic, integer arithmetic only); the test
//! runs it and checks the file is byte for byte the one the references were computed on (its
//! SHA-256). `fixtures/reference.json` holds what ChannelAttribution 2.2.5 answered on those
//! files (`fixtures/reference.py` regenerates it); `fixtures/exact_markov.py` is an exact
//! first-order Markov attribution written apart from ours, in Python, run here.
//!
//! - heuristics (first touch, last touch, linear) equal ChannelAttribution's to 1e-9 relative;
//! - Markov order 1 equals the independent exact solution to 1e-9, and lies within 1 % of the
//!   total conversions of ChannelAttribution's Monte Carlo estimate per channel on 1 000 000
//!   journeys;
//! - every model credits exactly the totals.

use std::path::PathBuf;
use std::process::Command;

use flowmark_attribution::{Model, Paths, attribute};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

/// The generated file `name` of `reference.json`, made here for the test `by` (each test its
/// own copy: tests run at the same time); its path.
fn generated(name: &str, by: &str) -> PathBuf {
    let entry = &reference()["files"][name];
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("attribution-{name}-{by}.csv"));
    let printed = Command::new("python3")
        .arg(fixtures().join("gen_paths.py"))
        .args(["--journeys", &entry["journeys"].to_string(), "--seed", &entry["seed"].to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("python3 runs (the reference tests need Python 3)");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = String::from_utf8(printed.stdout).unwrap();
    let digest = printed.trim().rsplit("sha256=").next().unwrap();
    assert_eq!(digest, entry["sha256"].as_str().unwrap(), "the generator changed: regenerate reference.json");
    out
}

fn close(ours: f64, theirs: f64, relative: f64) -> bool {
    (ours - theirs).abs() <= relative * theirs.abs().max(1.0)
}

fn heuristics_equal_channel_attribution(name: &str, file: &std::path::Path) {
    let reference = reference();
    let expected = &reference["files"][name]["heuristics"];
    let paths = Paths::parse(&std::fs::read(file).unwrap()).unwrap();
    let models = [Model::FirstTouch, Model::LastTouch, Model::Linear];
    let result = attribute(&paths, &models, 1).unwrap();
    for (model, theirs) in [("first_touch", "first_touch"), ("last_touch", "last_touch"), ("linear", "linear_touch")] {
        for (channel, want) in expected.as_object().unwrap() {
            let credit = result.models[model][channel.as_str()];
            let (conversions, value) = (
                want[format!("{theirs}_conversions")].as_f64().unwrap(),
                want[format!("{theirs}_value")].as_f64().unwrap(),
            );
            assert!(
                close(credit.conversions, conversions, 1e-9),
                "{name} {model} {channel}: {credit:?} vs {conversions}"
            );
            assert!(close(credit.value, value, 1e-9), "{name} {model} {channel}: {credit:?} vs value {value}");
        }
    }
}

#[test]
fn heuristics_equal_channel_attribution_on_20_000_journeys() {
    heuristics_equal_channel_attribution("small", &generated("small", "heuristics"));
}

#[test]
fn on_1_000_000_journeys_heuristics_equal_and_markov_is_within_channel_attributions_estimate() {
    let file = generated("large", "all");
    heuristics_equal_channel_attribution("large", &file);
    let reference = reference();
    let large = &reference["files"]["large"];
    let paths = Paths::parse(&std::fs::read(&file).unwrap()).unwrap();
    let result = attribute(&paths, &Model::ALL, 1).unwrap();
    let total = large["total_conversions"].as_f64().unwrap();
    assert_eq!(result.total_conversions, total);
    // Their Monte Carlo estimate, per channel, within 1 % of all conversions.
    for (channel, theirs) in large["markov"].as_object().unwrap() {
        let ours = result.models["markov"][channel.as_str()].conversions;
        let theirs = theirs["total_conversions"].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 0.01 * total, "{channel}: ours {ours}, ChannelAttribution {theirs}");
    }
    // The independent exact solution, to 1e-9.
    exact_markov_agrees(&file, &result.removal_effects.unwrap());
    // Every model credits the totals.
    for (model, credit) in &result.models {
        let conversions: f64 = credit.values().map(|c| c.conversions).sum();
        let value: f64 = credit.values().map(|c| c.value).sum();
        assert!(close(conversions, total, 1e-9), "{model}: {conversions}");
        assert!(close(value, result.total_value, 1e-9), "{model}: value {value}");
    }
}

fn exact_markov_agrees(file: &std::path::Path, ours: &std::collections::BTreeMap<String, f64>) {
    let output = Command::new("python3").arg(fixtures().join("exact_markov.py")).arg(file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let exact: Value = serde_json::from_slice(&output.stdout).unwrap();
    for (channel, effect) in exact["removal_effects"].as_object().unwrap() {
        let (ours, theirs) = (ours[channel.as_str()], effect.as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-9, "{channel}: removal effect {ours} vs exact {theirs}");
    }
}

#[test]
fn markov_equals_an_independent_exact_solution_on_20_000_journeys() {
    let file = generated("small", "markov");
    let paths = Paths::parse(&std::fs::read(&file).unwrap()).unwrap();
    let result = attribute(&paths, &[Model::Markov], 1).unwrap();
    exact_markov_agrees(&file, &result.removal_effects.unwrap());
}
