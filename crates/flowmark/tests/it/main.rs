//! End-to-end tests of the `flowmark` binary: each test runs the real command.

mod attribution;
mod bench;
mod bombs;
mod clock;
mod contacts;
mod crash;
mod durability;
mod duties;
mod email;
mod erase;
mod graph;
mod nurture;
mod openapi;
mod outbox;
mod people;
mod quarantine;
mod schema;
mod segment_client;
mod serve;
mod simulate;
mod slow_peer;
mod tenancy;
mod ui;
mod validate;
mod webhooks;
mod webinar;

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

/// Installs a pinned npm package (`name@version`) into the build directory, once, and returns
/// its `node_modules` (for `NODE_PATH`). The browser tests and the Node client tests install
/// what they need themselves.
pub fn npm_install(package: &str) -> PathBuf {
    let (name, _) = package.rsplit_once('@').expect("a pinned package: name@version");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(package.replace(['/', '@'], "-"));
    let modules = dir.join("node_modules");
    if modules.join(name).join("package.json").exists() {
        return modules;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(package)
        .status()
        .expect("npm runs (the test needs Node.js and npm)");
    assert!(status.success(), "npm could not install {package}");
    modules
}

/// A Python peer a test talks to (an SMTP server, a webhook receiver): `script` runs as
/// `python3 -c script <port> <received.jsonl> [extra…]`, prints `ready` once it listens, and
/// appends one JSON line per thing it receives. Killed when dropped.
pub struct PythonPeer {
    child: std::process::Child,
    pub port: u16,
    received: PathBuf,
}

impl PythonPeer {
    pub fn start(script: &str, library: &std::path::Path, received: PathBuf, extra: &[&str]) -> PythonPeer {
        use std::io::BufRead as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(&received)
            .args(extra)
            .env("PYTHONPATH", library)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the Python peer started");
        PythonPeer { child, port, received }
    }

    /// What it received so far, one JSON value per line.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
