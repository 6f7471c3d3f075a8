//! House rules as tests: the pure core depends on no async runtime, database or network crate.
//!
//! Reads the workspace's `Cargo.lock`, walks the dependency closure of `flowmark-core`, and
//! fails if a crate that does I/O on its own appears in it.

use std::collections::{BTreeMap, BTreeSet};

const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "mio",
    "hyper",
    "reqwest",
    "axum",
    "rusqlite",
    "libsqlite3-sys",
    "tokio-postgres",
    "sqlx",
    "lettre",
];

#[test]
fn the_core_depends_on_no_runtime_database_or_network_crate() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
    // name → dependency names, from the lock file's [[package]] tables.
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let name = package.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
        let deps: Vec<String> = package
            .split("dependencies = [")
            .nth(1)
            .map(|rest| {
                rest.split(']').next().unwrap().lines().filter_map(|l| {
                    let l = l.trim().trim_end_matches(',').trim_matches('"');
                    l.split(' ').next().filter(|n| !n.is_empty()).map(str::to_owned)
                })
            })
            .into_iter()
            .flatten()
            .collect();
        graph.entry(name).or_default().extend(deps);
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec!["flowmark-core".to_owned()];
    while let Some(name) = stack.pop() {
        if seen.insert(name.clone()) {
            stack.extend(graph.get(&name).cloned().unwrap_or_default());
        }
    }
    assert!(seen.contains("cel") && seen.contains("liquid"), "the walk found the core's real dependencies");
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| seen.contains(**f)).collect();
    assert!(found.is_empty(), "flowmark-core must stay pure, but depends on {found:?}");
}
