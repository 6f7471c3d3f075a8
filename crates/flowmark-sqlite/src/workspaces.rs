//! Where each workspace's database lives: the `default` workspace in the file the server is
//! given (`--db`), every other workspace in a file of its own beside it, in the directory
//! `<db>.workspaces/` (`flowmark.db.workspaces/acme.db`). The catalogue of workspaces is
//! that directory: a workspace exists when its file does.
//!
//! Invariant: a path is only ever made from a checked `WorkspaceName` (letters, digits and
//! `-`), so no name reaches outside the directory.

use std::path::{Path, PathBuf};

use flowmark_store::{Error, WorkspaceName};

use crate::SqliteStore;

/// The directory holding the workspaces other than `default`, for the database at `db`.
pub fn workspaces_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".workspaces");
    db.with_file_name(name)
}

/// The database file of workspace `name`, for the server whose `default` database is `db`.
pub fn workspace_path(db: &Path, name: &WorkspaceName) -> PathBuf {
    if name.is_default() { db.to_path_buf() } else { workspaces_dir(db).join(format!("{name}.db")) }
}

/// Every workspace of the server whose `default` database is `db`: `default` first, then the
/// others by name.
pub fn workspace_names(db: &Path) -> Result<Vec<WorkspaceName>, Error> {
    let dir = workspaces_dir(db);
    let mut names = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry =
                    entry.map_err(|source| Error::Io { doing: "list the workspaces", path: dir.clone(), source })?;
                let file = entry.file_name();
                let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".db")) else { continue };
                if let Ok(name) = WorkspaceName::parse(stem)
                    && !name.is_default()
                {
                    names.push(name);
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { doing: "list the workspaces", path: dir, source }),
    }
    names.sort();
    names.insert(0, WorkspaceName::default_workspace());
    Ok(names)
}

/// Does workspace `name` exist beside `db`? (`default` always does.)
pub fn workspace_exists(db: &Path, name: &WorkspaceName) -> bool {
    name.is_default() || workspace_path(db, name).exists()
}

/// Creates workspace `name`'s database (and the directory for it); `Ok(None)` when it exists
/// already.
pub fn create_workspace(db: &Path, name: &WorkspaceName) -> Result<Option<SqliteStore>, Error> {
    if workspace_exists(db, name) {
        return Ok(None);
    }
    let dir = workspaces_dir(db);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        doing: "create the workspaces directory",
        path: dir,
        source,
    })?;
    SqliteStore::open(workspace_path(db, name)).map(Some)
}

/// Opens workspace `name`'s database, which must exist (`create_workspace` makes it).
pub fn open_workspace(db: &Path, name: &WorkspaceName) -> Result<SqliteStore, Error> {
    if !workspace_exists(db, name) {
        return Err(Error::NoWorkspace(format!(
            "no workspace `{name}` beside {}; create it with `flowmark workspace create {name}`",
            db.display()
        )));
    }
    SqliteStore::open(workspace_path(db, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_live_beside_the_default_database() {
        let dir = std::env::temp_dir().join(format!("flowmark-workspaces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("flowmark.db");
        let acme = WorkspaceName::parse("acme").unwrap();
        assert_eq!(workspace_path(&db, &WorkspaceName::default_workspace()), db);
        assert_eq!(workspace_path(&db, &acme), dir.join("flowmark.db.workspaces/acme.db"));
        assert_eq!(workspace_names(&db).unwrap(), vec![WorkspaceName::default_workspace()]);
        assert!(open_workspace(&db, &acme).is_err(), "not created yet");
        assert!(create_workspace(&db, &acme).unwrap().is_some());
        assert!(create_workspace(&db, &acme).unwrap().is_none(), "once");
        let beta = WorkspaceName::parse("beta").unwrap();
        create_workspace(&db, &beta).unwrap();
        std::fs::write(workspaces_dir(&db).join("Not A Name.db"), b"").unwrap();
        let names: Vec<String> = workspace_names(&db).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["default", "acme", "beta"]);
        assert!(open_workspace(&db, &acme).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
