//! House rules as tests: the pure core depends on no async runtime, database or network crate
//! (a walk of `Cargo.lock` from `flowmark-core` finds no crate that does I/O on its own); the
//! store is a contract that names no database, and only the binary, the simulation harness
//! and the SQLite backend itself name that backend; and the README names every blueprint.

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
    assert!(seen.contains("cel") && seen.contains("liquid-core"), "the walk found the core's real dependencies");
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

/// Each workspace crate's normal dependencies (its `[dependencies]` table, not dev- or build-),
/// by crate directory name.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let crates = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(crates).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let mut names = BTreeSet::new();
        let mut in_dependencies = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_dependencies = line == "[dependencies]";
            } else if in_dependencies && let Some((key, _)) = line.split_once('=') {
                // `name = …` or `name.workspace = true`.
                names.insert(key.trim().split('.').next().unwrap_or_default().to_owned());
            }
        }
        found.insert(dir.file_name().unwrap().to_string_lossy().into_owned(), names);
    }
    found
}

#[test]
fn only_the_binary_the_harness_and_the_sqlite_crate_name_sqlite() {
    let dependencies = normal_dependencies();
    assert!(dependencies.len() >= 8 && dependencies["flowmark-sqlite"].contains("rusqlite"), "{dependencies:?}");
    let on = |dependency: &str| -> Vec<&str> {
        dependencies.iter().filter(|(_, names)| names.contains(dependency)).map(|(name, _)| name.as_str()).collect()
    };
    assert_eq!(on("rusqlite"), ["flowmark", "flowmark-sqlite"], "who depends on rusqlite");
    assert_eq!(on("flowmark-sqlite"), ["flowmark", "flowmark-dst"], "who picks the SQLite backend");
    for contract in ["flowmark-store", "flowmark-runtime", "flowmark-server"] {
        let names = &dependencies[contract];
        assert!(!names.iter().any(|n| n.contains("sqlite") || n.contains("postgres")), "{contract} names a backend");
    }
}
