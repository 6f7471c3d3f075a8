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

/// Installs a pinned Python package (`name==version`) into the build directory, once, and
/// returns the folder to put on `PYTHONPATH`. `probe` is a path inside the installed package
/// that tells it is there. The tests that talk to real peers (Segment's library, an SMTP
/// server, the Standard Webhooks library) install what they need themselves.
pub fn pip_install(package: &str, probe: &str) -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(package.replace("==", "-"));
    if target.join(probe).exists() {
        return target;
    }
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&target)
        .arg(package)
        .status()
        .expect("python3 runs (the test needs Python 3 with pip)");
    assert!(status.success(), "pip could not install {package}");
    target
}
