//! `/metrics`: the engine's counters in Prometheus' text exposition format.
//!
//! Written by hand: a dozen lines of a stable, simple format do not need an exporter crate.
//!
//! Invariant: every metric has `# HELP` and `# TYPE` lines and a `flowmark_` prefix.

use std::fmt::Write;

use std::collections::BTreeMap;

use flowmark_runtime::{ATTEMPT_BUCKETS_MS, ConnectorStats, LATENESS_BUCKETS_MS, Stats};
use flowmark_store::Durability;

/// What the dispatcher has out at the workers: claims in flight, and each connector's
/// attempts so far.
pub struct Dispatch<'a> {
    pub in_flight: usize,
    pub connectors: &'a BTreeMap<String, ConnectorStats>,
}

pub fn render(stats: &Stats, outbox_depth: u64, dispatch: &Dispatch<'_>, wal: Option<&dyn Durability>) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP flowmark_{name} {help}\n# TYPE flowmark_{name} counter\nflowmark_{name} {value}");
    };
    counter("events_ingested_total", "Events stored and applied.", stats.events_ingested);
    counter("events_duplicate_total", "Events refused as duplicates of a stored messageId.", stats.events_duplicate);
    counter("events_erased_total", "Events dropped because they name an erased contact.", stats.events_erased);
    counter("runs_started_total", "Runs started by triggers.", stats.runs_started);
    counter("transitions_total", "Run transitions committed.", stats.transitions_committed);
    counter("timers_fired_total", "Timers fired.", stats.timers_fired);
    counter("schedules_fired_total", "Schedule occurrences whose runs were all started.", stats.schedules_fired);
    counter("effects_done_total", "Effects performed.", stats.effects_done);
    counter("effects_retried_total", "Effect attempts that failed and were scheduled again.", stats.effects_retried);
    counter("effects_failed_total", "Effects given up on.", stats.effects_failed);
    counter("effects_deferred_total", "Effects a connector's rate limit held back for later.", stats.effects_deferred);
    counter(
        "effects_quarantined_total",
        "Effects set aside because their attempts kept ending with no outcome (the process died performing them).",
        stats.effects_quarantined,
    );
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
    let _ = writeln!(
        out,
        "# HELP flowmark_effects_in_flight Effects claimed and being performed by workers.\n\
         # TYPE flowmark_effects_in_flight gauge\nflowmark_effects_in_flight {}",
        dispatch.in_flight
    );
    let name = "flowmark_effect_attempt_seconds";
    let _ = writeln!(out, "# HELP {name} How long connectors' attempts took, by connector.\n# TYPE {name} histogram");
    for (connector, counts) in dispatch.connectors {
        for (count, bound_ms) in counts.latency_buckets.iter().zip(ATTEMPT_BUCKETS_MS) {
            let le = bound_ms as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{connector=\"{connector}\",le=\"{le}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{connector=\"{connector}\",le=\"+Inf\"}} {}", counts.attempts);
        let _ = writeln!(out, "{name}_sum{{connector=\"{connector}\"}} {}", counts.latency_ms_sum as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count{{connector=\"{connector}\"}} {}", counts.attempts);
    }
    let name = "flowmark_effect_timeouts_total";
    let _ = writeln!(
        out,
        "# HELP {name} Attempts that got no answer within the connector's timeout.\n# TYPE {name} counter"
    );
    for (connector, counts) in dispatch.connectors {
        let _ = writeln!(out, "{name}{{connector=\"{connector}\"}} {}", counts.timeouts);
    }
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
        let mut connectors = BTreeMap::new();
        let smtp = ConnectorStats {
            attempts: 2,
            timeouts: 1,
            latency_buckets: [0, 0, 0, 1, 1, 1, 1, 1],
            latency_ms_sum: 61_200,
        };
        connectors.insert("smtp".to_owned(), smtp);
        let text = render(&stats, 4, &Dispatch { in_flight: 3, connectors: &connectors }, None);
        assert!(text.contains("flowmark_effects_in_flight 3\n"));
        assert!(text.contains("flowmark_effect_attempt_seconds_bucket{connector=\"smtp\",le=\"0.5\"} 1\n"));
        assert!(text.contains("flowmark_effect_attempt_seconds_bucket{connector=\"smtp\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("flowmark_effect_attempt_seconds_sum{connector=\"smtp\"} 61.2\n"));
        assert!(text.contains("flowmark_effect_timeouts_total{connector=\"smtp\"} 1\n"));
        assert!(text.contains("# TYPE flowmark_events_ingested_total counter\nflowmark_events_ingested_total 3\n"));
        assert!(text.contains("flowmark_outbox_depth 4\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_bucket{le=\"0.01\"} 1\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("flowmark_timer_lateness_seconds_sum 0.205\n"));
    }
}
