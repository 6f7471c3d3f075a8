//! `flowmark bench journey`, small: the figures come out as JSON, and `--keep-wal` leaves a
//! log that `bench/wal-frames.py` attributes to the store's tables.

use super::{flowmark, repo_path};

#[test]
fn a_small_journey_reports_its_figures_and_keeps_its_log() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = flowmark()
        .args(["bench", "journey", "--contacts", "30", "--batch", "10", "--keep-wal", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let figures: serde_json::Value = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .find(|line| line.contains("\"journey\""))
        .map(|line| serde_json::from_str(line).unwrap())
        .expect("a journey line");
    // 30 runs, each started, sent, waited on and ended: more than one transition per run.
    assert!(figures["transitions"].as_u64().unwrap() > 60, "{figures}");
    assert_eq!(figures["runs_still_active"], 0, "{figures}");
    assert!(figures["written_bytes_per_transition"].as_u64().unwrap() > 0, "{figures}");
    let frames = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with(".frames.db"))
        .expect("the kept database");
    let report = std::process::Command::new("python3")
        .arg(repo_path("bench/wal-frames.py"))
        .arg(&frames)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}{}", String::from_utf8_lossy(&report.stderr));
    let named: Vec<&str> = text.lines().skip(1).filter_map(|line| line.split_whitespace().nth(3)).collect();
    for table in ["runs", "history", "outbox", "events"] {
        assert!(named.contains(&table), "{table} is among the tables written: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flowmark bench ingest`, one second per mode: every request is answered `200`, the
/// syncer's figures come from the server's `/metrics`, and the CPU a request cost from `/proc`.
#[test]
fn a_short_ingestion_is_answered_and_reports_its_figures() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for mode in ["track", "batch"] {
        let output = flowmark()
            .args(["bench", "ingest", "--mode", mode, "--connections", "4", "--seconds", "1", "--batch-size", "10"])
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let figures: serde_json::Value = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .find(|line| line.contains("\"ingest\""))
            .map(|line| serde_json::from_str(line).unwrap())
            .expect("an ingest line");
        let requests = figures["requests"].as_u64().unwrap();
        assert!(requests > 0, "{figures}");
        assert_eq!(figures["errors"], 0, "{figures}");
        assert_eq!(figures["rejected_429"], 0, "{figures}");
        let per_request = if mode == "batch" { 10 } else { 1 };
        assert_eq!(figures["events"].as_u64().unwrap(), requests * per_request, "{figures}");
        assert!(figures["deferred"]["groups"].is_u64(), "{figures}");
        assert!(figures["deferred"]["syncs"].is_u64(), "{figures}");
        // What a request cost both processes, by the server's threads, and the bound it sets.
        let cpu = &figures["cpu_per_request_us"];
        assert!(cpu["on_path"].as_f64().unwrap() > 0.0, "{figures}");
        let owner = &cpu["server_threads"]["flowmark-owner"];
        assert!(owner["all"].as_f64().unwrap() >= owner["kernel"].as_f64().unwrap(), "{figures}");
        assert!(cpu["client"]["kernel"].as_f64().is_some(), "{figures}");
        // At most fsync ÷ sync, which is over 1 when the server's syncs beat the probe's.
        assert!(figures["ratio_bound"].as_f64().unwrap() > 0.0, "{figures}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
