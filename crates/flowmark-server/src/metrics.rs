//! `/metrics`: the engine's counters in Prometheus' text exposition format.
//!
//! Written by hand: a dozen lines of a stable, simple format do not need an exporter crate.
//!
//! Invariant: every metric has `# HELP` and `# TYPE` lines and a `flowmark_` prefix.

use std::fmt::Write;

use flowmark_runtime::{LATENESS_BUCKETS_MS, Stats};
use flowmark_store::Durability;

pub fn render(stats: &Stats, outbox_depth: u64, wal: Option<&dyn Durability>) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP flowmark_{name} {help}\n# TYPE flowmark_{name} counter\nflowmark_{name} {value}");
    };
    counter("events_ingested_total", "Events stored and applied.", stats.events_ingested);
    counter("events_duplicate_total", "Events refused as duplicates of a stored messageId.", stats.events_duplicate);
    counter("runs_started_total", "Runs started by triggers.", stats.runs_started);
    counter("transitions_total", "Run transitions committed.", stats.transitions_committed);
    counter("timers_fired_total", "Timers fired.", stats.timers_fired);
    counter("schedules_fired_total", "Schedule occurrences whose runs were all started.", stats.schedules_fired);
    counter("effects_done_total", "Effects performed.", stats.effects_done);
    counter("effects_retried_total", "Effect attempts that failed and were scheduled again.", stats.effects_retried);
    counter("effects_failed_total", "Effects given up on.", stats.effects_failed);
    counter("effects_deferred_total", "Effects a connector's rate limit held back for later.", stats.effects_deferred);
    counter(
        "effects_unreadable_total",
        "Times an effect this version cannot read (written by a newer one) was held back.",
        stats.effects_unreadable,
    );
    if let Some(wal) = wal {
        let (deferred, syncs, took) = wal.counts();
        counter("commit_groups_deferred_total", "Groups committed with their sync deferred to the syncer.", deferred);
        counter("wal_syncs_total", "Syncs of the write-ahead log made for deferred commits.", syncs);
        let name = "flowmark_wal_sync_seconds_total";
        let _ =
            writeln!(out, "# HELP {name} Time those syncs took.\n# TYPE {name} counter\n{name} {}", took.as_secs_f64());
    }
    let _ = writeln!(
        out,
        "# HELP flowmark_outbox_depth Effects waiting to be performed.\n# TYPE flowmark_outbox_depth gauge"
    );
    let _ = writeln!(out, "flowmark_outbox_depth {outbox_depth}");
    let name = "flowmark_timer_lateness_seconds";
    let _ = writeln!(out, "# HELP {name} How long after their due time timers fired.\n# TYPE {name} histogram");
    for (count, bound_ms) in stats.timer_lateness_buckets.iter().zip(LATENESS_BUCKETS_MS) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", bound_ms as f64 / 1000.0);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", stats.timers_fired);
    let _ = writeln!(out, "{name}_sum {}", stats.timer_lateness_ms_sum as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {}", stats.timers_fired);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_a_cumulative_histogram() {
        let stats = Stats {
            events_ingested: 3,
            timers_fired: 2,
            timer_lateness_buckets: [1, 1, 2, 2, 2, 2],
            timer_lateness_ms_sum: 205,
            ..Stats::default()
        };
        let text = render(&stats, 4, None);
        assert!(text.contains("# TYPE flowmark_events_ingested_total counter\nflowmark_events_ingested_total 3\n"));
        assert!(text.contains("flowmark_outbox_depth 4\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_sum 0.205\n"));
    }
}
