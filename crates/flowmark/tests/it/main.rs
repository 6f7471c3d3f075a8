//! End-to-end tests of the `flowmark` binary: each test runs the real command.

mod contacts;
mod crash;
mod email;
mod graph;
mod nurture;
mod segment_client;
mod serve;
mod simulate;
mod validate;
mod webhooks;

use std::path::PathBuf;

pub fn flowmark() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::cargo_bin("flowmark").unwrap();
    command.env("NO_COLOR", "1");
    command
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative)
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
