//! The server's house rule on the store: handlers run on the owner thread (inside `query`)
//! and may read through `Engine::store()`, but never write through the store; every write is
//! an `Engine` method. Only the owner itself touches the store mutably, for durability.

#[test]
fn handlers_write_only_through_the_engine() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = vec![std::path::PathBuf::from(src)];
    let mut offenders = Vec::new();
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("owner.rs") {
            continue;
        }
        read += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.contains("store_mut()") {
                offenders.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(read >= 8, "read the server's sources ({read} files)");
    assert!(offenders.is_empty(), "handlers write through the store:\n{}", offenders.join("\n"));
}

/// The shared plumbing lives in `api`: route modules import from it, never from `http`.
/// (The UI still borrows three helpers of `people`: calendar feeds, publications, actions.)
#[test]
fn route_modules_do_not_import_from_each_other() {
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut offenders = Vec::new();
    for file in ["people.rs", "ui/mod.rs", "ui/explore.rs", "ui/calendar.rs", "api.rs"] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        if text.contains("crate::http::") {
            offenders.push(file);
        }
    }
    assert!(offenders.is_empty(), "route modules reaching into each other: {offenders:?}");
}
