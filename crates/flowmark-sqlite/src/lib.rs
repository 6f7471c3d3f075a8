//! Flowmark's embedded store: [`SqliteStore`], the `flowmark_store::Store` contract on one
//! SQLite file (WAL mode, schema by migrations, a cache of parsed contacts) or in memory; its
//! `Store::durability` handle (`WalSync`) makes deferred commits durable from another thread.
//!
//! Only this crate and the binary that picks it depend on rusqlite (a tidy test in
//! `flowmark-core` checks it): everything else talks to the trait. The conformance suite runs
//! against it through the trait only (`tests/it`).

mod cache;
mod sqlite;
mod wal_sync;
mod work;
pub mod workspaces;

pub use sqlite::SqliteStore;
pub use workspaces::{create_workspace, open_workspace, workspace_exists, workspace_names, workspace_path};
