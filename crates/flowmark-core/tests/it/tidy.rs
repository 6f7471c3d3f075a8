//! House rules as tests: the pure core depends on no async runtime, database or network crate
//! (a walk of `Cargo.lock` from `flowmark-core` finds no crate that does I/O on its own), and
//! the README names every blueprint.

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

/// The README's list of blueprints names every file in `blueprints/`, so a new one is not
/// left out of what a newcomer reads.
#[test]
fn the_readme_names_every_blueprint() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let line = readme.lines().position(|l| l.starts_with("- Blueprints in")).expect("the README lists blueprints");
    let list: String = readme.lines().skip(line).take_while(|l| !l.is_empty()).take(6).collect();
    let mut names: Vec<String> = std::fs::read_dir(format!("{root}/blueprints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let missing: Vec<&String> = names.iter().filter(|name| !list.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "the README's blueprint list leaves out {missing:?}");
}
