//! CPU time used by a process and by each of its threads, read from Linux's `/proc`: what
//! `bench ingest` divides by the requests it sent, to state what one request costs the
//! machine's cores (the server's threads by name, and this client), and from that the most
//! any schedule of syncs could get out of those cores (`ratio_bound`).
//!
//! Read-only. Where `/proc` cannot be read (another system, a process already gone) a
//! sample is `None` and the figures are left out: never a guessed zero.

use std::collections::BTreeMap;
use std::path::Path;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux architecture
/// Flowmark builds for (it is part of the kernel's user-space ABI, whatever `HZ` is).
const USER_HZ: f64 = 100.0;

/// CPU seconds of one process, and by thread name for the threads alive when sampled
/// (threads of one name, such as a runtime's workers, are summed).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct CpuTimes {
    pub(super) process: Spent,
    pub(super) by_thread: BTreeMap<String, Spent>,
}

impl CpuTimes {
    /// The process `pid` (`None` for this process) now.
    pub(super) fn sample(pid: Option<u32>) -> Option<CpuTimes> {
        let dir = match pid {
            Some(pid) => format!("/proc/{pid}"),
            None => "/proc/self".to_owned(),
        };
        let (_, process) = read_stat(&Path::new(&dir).join("stat"))?;
        let mut by_thread = BTreeMap::new();
        for task in std::fs::read_dir(Path::new(&dir).join("task")).ok()?.flatten() {
            if let Some((name, thread)) = read_stat(&task.path().join("stat")) {
                let sum: &mut Spent = by_thread.entry(name).or_default();
                sum.user += thread.user;
                sum.system += thread.system;
            }
        }
        Some(CpuTimes { process, by_thread })
    }

    /// The server process `pid` and this process (the client) now, or neither.
    pub(super) fn sample_both(pid: u32) -> Option<(CpuTimes, CpuTimes)> {
        Some((CpuTimes::sample(Some(pid))?, CpuTimes::sample(None)?))
    }

    /// What was used between `before` and `self`. A thread born in between counts from zero;
    /// one that ended in between drops out of its name's sum, so a name's figure is clamped at
    /// zero rather than shown negative (the process's own figure keeps every thread's time).
    pub(super) fn since(&self, before: &CpuTimes) -> CpuTimes {
        let by_thread = self
            .by_thread
            .iter()
            .map(|(name, spent)| (name.clone(), spent.since(before.by_thread.get(name).copied().unwrap_or_default())))
            .collect();
        CpuTimes { process: self.process.since(before.process), by_thread }
    }
}

/// User and system (kernel) seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Spent {
    pub(super) user: f64,
    pub(super) system: f64,
}

impl Spent {
    pub(super) fn total(self) -> f64 {
        self.user + self.system
    }

    fn since(self, before: Spent) -> Spent {
        Spent { user: (self.user - before.user).max(0.0), system: (self.system - before.system).max(0.0) }
    }
}

/// A `stat` file's command name and the time it shows.
fn read_stat(path: &Path) -> Option<(String, Spent)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// `pid (comm) state ppid …`: the name may hold spaces and parentheses, so the fields are
/// counted from the last `)`. `utime` and `stime` are fields 14 and 15 of the line.
fn parse_stat(line: &str) -> Option<(String, Spent)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, Spent { user: utime as f64 / USER_HZ, system: stime as f64 / USER_HZ }))
}

/// The most of the fsync ceiling (`connections ÷ fsync`) that closed-loop clients sending one
/// request at a time can reach, whatever the server's schedule of syncs, given:
/// `fsync` the probe's synced write (the ceiling's), `sync` what one sync of the log takes in
/// the server, `cpu_per_request` the CPU (all cores, client included) a request needs between
/// its answer and the sync that covers its next request, and `cores`.
///
/// A request is durable only by a sync that starts after it was committed, and syncs go one
/// at a time. With syncs every `T ≥ sync`, a client either comes back and is committed in the
/// gap after the sync that answered it (so that gap holds the CPU of every such client:
/// `T ≥ sync + f·N·c/P` for a share `f` of the `N` clients), or it waits at least two
/// periods. So `X ≤ N·(1 + f) / (2T)`, whose largest value over `f` is at an end:
/// `ratio ≤ max(fsync / (2·sync), fsync / (sync + N·c/P))`; and the cores alone allow
/// `ratio ≤ fsync·P / (N·c)`.
pub(super) fn ratio_bound(connections: usize, fsync_s: f64, sync_s: f64, cpu_per_request_s: f64, cores: usize) -> f64 {
    let work = connections as f64 * cpu_per_request_s / cores.max(1) as f64;
    let by_schedule = (fsync_s / (2.0 * sync_s)).max(fsync_s / (sync_s + work));
    let by_cores = if work > 0.0 { fsync_s / work } else { f64::INFINITY };
    by_schedule.min(by_cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_from_the_last_parenthesis() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194368 100 0 0 0 250 75 0 0 20 0 9 0 1 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) worker".to_owned(), Spent { user: 2.5, system: 0.75 })));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn this_process_reads_the_time_its_threads_spent() {
        let before = CpuTimes::sample(None).expect("/proc/self is readable");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let spent = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let spent = CpuTimes::sample(None).unwrap().since(&before);
            // The process's and its threads' times move in clock ticks, not together: wait
            // for both to show the spinning.
            let by_threads: f64 = spent.by_thread.values().map(|thread| thread.total()).sum();
            if (spent.process.total() > 0.0 && by_threads > 0.0) || started.elapsed().as_secs() >= 10 {
                break spent;
            }
        };
        assert!(spent.process.total() > 0.0, "ten seconds of spinning show no CPU time: {spent:?}");
        assert!(spent.by_thread.values().map(|thread| thread.total()).sum::<f64>() > 0.0, "{spent:?}");
    }

    #[test]
    fn the_bound_takes_the_better_schedule_and_the_cores() {
        // Free CPU: one period of one sync per request, the whole ceiling.
        assert!((ratio_bound(64, 0.007, 0.007, 0.0, 2) - 1.0).abs() < 1e-9);
        // 64 clients at 68 µs on two cores add 2.2 ms to each 7 ms period.
        let at_64 = ratio_bound(64, 0.007, 0.007, 68e-6, 2);
        assert!((at_64 - 0.007 / (0.007 + 64.0 * 68e-6 / 2.0)).abs() < 1e-9, "{at_64}");
        // At 256 the gap would be longer than a sync: waiting two syncs is better, at 0.5.
        assert!((ratio_bound(256, 0.007, 0.007, 68e-6, 2) - 0.5).abs() < 1e-9);
        // Syncs slower than the probe lower both schedules.
        assert!((ratio_bound(256, 0.007, 0.0077, 68e-6, 2) - 0.007 / 0.0154).abs() < 1e-9);
        // A fast disk: the cores are the limit.
        let fast = ratio_bound(64, 0.000_15, 0.000_15, 60e-6, 2);
        assert!((fast - 0.000_15 / (64.0 * 60e-6 / 2.0)).abs() < 1e-9, "{fast}");
    }
}
