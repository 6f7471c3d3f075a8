//! Acknowledged means synced, also when the owner defers its syncs to the syncer.
//!
//! The server runs under `bench/slow-disk.sh`, which makes every fsync of the process take
//! `SYNC_MS` longer. An acknowledgement that did not wait for a sync would come back in well
//! under that; every one must take at least that long, both while the owner still syncs its
//! own commits (before its first timing of a sync) and after it has started handing them to
//! the syncer (which `/metrics` then counts).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::repo_path;
use super::serve::Server;

const SYNC_MS: u64 = 40;

#[test]
fn every_acknowledgement_waits_for_a_sync_of_the_log() {
    let dir = super::validate::fresh_dir("durability");
    let mut wrapper = Command::new(repo_path("bench/slow-disk.sh"));
    wrapper.env("FLOWMARK_SLOW_FSYNC_MS", SYNC_MS.to_string()).arg(assert_cmd::cargo::cargo_bin("flowmark"));
    let server = Server::start_under(wrapper, &dir.join("flowmark.db"), &["--write-key", "wk", "--api-token", "tok"]);

    let started = Instant::now();
    let mut sent = 0;
    // Past the first probe (`PROBE_EVERY`, one second), after which groups are deferred.
    while started.elapsed() < Duration::from_millis(2_500) {
        let event = json!({ "userId": format!("u{sent}"), "event": "Page Viewed", "messageId": format!("m-{sent}") });
        let asked = Instant::now();
        let (status, _, body) = server.send("track", &event);
        let took = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(took >= Duration::from_millis(SYNC_MS), "acknowledged after {took:?}, before any sync could end");
        sent += 1;
    }
    let (status, _, metrics) =
        server.request_text("GET", "/metrics", &[("Authorization", "Bearer tok".to_owned())], b"");
    assert_eq!(status, 200, "{metrics}");
    let count = |name: &str| -> u64 {
        let line =
            metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    assert!(count("flowmark_commit_groups_deferred_total") > 0, "no group was deferred: {metrics}");
    assert!(count("flowmark_wal_syncs_total") > 0, "the syncer never synced: {metrics}");
    assert!(sent > 10, "{sent} acknowledgements");
    server.stop();
}
