//! The owner thread: the one place that holds the `Engine` and writes the store.
//!
//! It takes commands from a bounded channel (a full channel is back-pressure: ingestion
//! answers `429`), and between commands, at most every `TICK`, fires due schedules and
//! timers, re-evaluates a page of segment membership when a sweep is due, and dispatches
//! ready effects. Stopping drains the commands already queued, then returns.
//!
//! A panic in the owner's work is a bug, but it must not leave a server that listens with no
//! one behind it. A command that panics is rolled back, answered with an error and logged,
//! and the owner goes on with the next. A panic in the background work (timers, schedules,
//! the dispatcher) stops the process with an error instead: going on would repeat it every
//! round, and a dispatcher that fails after its connectors performed would repeat their
//! effects every round; what was committed is durable, so a restart resumes from there.
//!
//! While syncs are slow, ingestion and start groups are committed with their sync deferred,
//! and answered by the [`Syncer`] once a sync of the log covers them: the owner goes on with
//! the next group while the disk flushes. Everything else that leaves the process waits for
//! durability on this thread first (`Store::make_durable`): a direct answer, a query (which
//! could show what a deferred commit wrote) and the dispatcher.
//!
//! Invariant: commands are applied one at a time, in arrival order; nothing a command wrote
//! is answered, shown or acted on before it is durable.

use std::sync::mpsc;
use std::thread;
use std::time::Duration as StdDuration;

use flowmark_core::Timestamp;
use flowmark_runtime::workers::Workers;
use flowmark_runtime::{
    Connectors, Engine, Error, Incoming, Ingested, SEGMENT_SWEEP_PAGE_COUNT, Slots, StartRequest, Started,
};
use flowmark_store::Store;
use tokio::sync::oneshot;

use crate::syncer::Syncer;

/// Commands waiting for the owner; more is back-pressure.
pub const QUEUE_COUNT_MAX: usize = 1024;
/// How often timers and the outbox are looked at when no command arrives.
pub const TICK: StdDuration = StdDuration::from_millis(200);
/// Timers fired per round; when a round is full, the next one starts at once instead of
/// after `TICK`.
const TIMERS_PER_ROUND_MAX: usize = 2000;
/// Outbox rows one claim round reads, and so applies, claims or holds in one commit.
const EFFECTS_PER_ROUND_MAX: usize = 256;
/// How often the owner looks for the workers' outcomes while effects are in flight and no
/// command arrives: an outcome waits this long at most to be committed.
const IN_FLIGHT_POLL: StdDuration = StdDuration::from_millis(2);
/// How long a stopping owner waits for the effects in flight to come back, so a restart does
/// not repeat them; what is still out then is claimed again once its lease passes.
const STOP_GRACE: StdDuration = StdDuration::from_secs(10);
/// Schedules worked on per round (each starts up to `SCHEDULE_PAGE_COUNT` runs).
const SCHEDULES_PER_TICK_MAX: usize = 4;
/// Events (or runs to start) one group commit takes from the queue: ingestion commands
/// waiting together are applied and committed as one transaction, so concurrent clients share
/// an fsync; the same for starts.
pub const GROUP_EVENTS_MAX: usize = 10_000;
/// A group smaller than this keeps gathering while a sync is under way (see `grouped`).
const GROUP_WHILE_SYNCING_EVENTS_MAX: usize = 1_000;
/// A group gathering for the next sync commits once it holds this many commands, and the
/// next group gathers the rest: commits then overlap the arrival of the last commands.
const GROUP_FOR_SYNC_COMMANDS_MAX: usize = 64;
/// How often a group gathering during a sync looks whether the sync has ended.
const GATHER_POLL: StdDuration = StdDuration::from_micros(50);
/// The longest a group gathers during a sync, should the sync never end.
const GATHER_WHILE_SYNCING_MAX: StdDuration = StdDuration::from_millis(100);
/// Timers and the outbox are looked at no more often than this while commands keep coming.
const HOUSEKEEPING_EVERY: StdDuration = StdDuration::from_millis(20);
/// Idempotency keys past their retention forgotten per minute (one statement each time).
const START_KEYS_FORGOTTEN_PER_MINUTE_MAX: usize = 10_000;
/// How often held notifications are checked for digests whose hour has come.
const DIGESTS_EVERY: StdDuration = StdDuration::from_secs(60);

/// Where a grouped command's answers go, one per item it carried.
pub type Reply<T> = oneshot::Sender<Result<Vec<T>, String>>;

/// Work run on the owner thread with the engine and the time.
/// The store the server runs on: whichever backend the binary that starts it picks.
pub type ServerStore = Box<dyn Store + Send>;

pub type Work = Box<dyn FnOnce(&mut Engine<ServerStore>, Timestamp) + Send>;

pub enum Command {
    /// Events in order, each with its subject and the traits to merge first (`identify`);
    /// all of them are committed together.
    Ingest { messages: Vec<Incoming>, reply: Reply<Ingested> },
    /// Runs to start by hand, answered in order; committed together, like `Ingest`.
    Start { requests: Vec<StartRequest>, reply: Reply<Started> },
    /// Any other work, as a closure run on the owner thread with the engine and the time; it
    /// answers through a channel it captured. For reads and small writes the API needs.
    Query(Work),
}

#[derive(Clone)]
pub struct Owner {
    commands: mpsc::SyncSender<Command>,
}

/// The server's clock (`clock::now`): the one place the server reads the time.
pub(crate) fn now() -> Timestamp {
    crate::clock::now()
}

impl Owner {
    /// Starts the owner thread over `engine`; it runs until every `Owner` handle is dropped.
    pub fn start(mut engine: Engine<ServerStore>, mut connectors: Connectors) -> (Owner, thread::JoinHandle<()>) {
        let (commands, inbox) = mpsc::sync_channel::<Command>(QUEUE_COUNT_MAX);
        let handle = thread::Builder::new()
            .name("flowmark-owner".to_owned())
            .spawn(move || {
                // Answers deferred groups once durable; dropped (answering what it holds)
                // when the loop ends, before the engine and its store.
                let running_syncer = engine
                    .store()
                    .durability()
                    .map(|wal| Syncer::start(move || wal.sync().map_err(|e| e.to_string()), || std::process::exit(70)));
                let syncer = running_syncer.as_ref();
                let mut last_housekeeping = std::time::Instant::now();
                let mut last_digests: Option<std::time::Instant> = None;
                let mut dispatching = Dispatching { last: std::time::Instant::now(), full: false };
                // Effects leave through workers: the owner claims them, the workers perform
                // them on their own threads, and their outcomes come back here to be committed.
                let workers = Workers::new(&connectors, now);
                let mut busy = false;
                loop {
                    let wait = if busy {
                        StdDuration::ZERO
                    } else if engine.in_flight() > 0 {
                        IN_FLIGHT_POLL
                    } else {
                        TICK
                    };
                    match inbox.recv_timeout(wait) {
                        Ok(Command::Ingest { messages, reply }) => {
                            let _ = survive(&mut engine, "ingestion", |engine| {
                                let group = (messages, reply);
                                grouped(engine, &inbox, group, Group::<Incoming, Ingested>::INGEST, syncer);
                            });
                        }
                        Ok(Command::Start { requests, reply }) => {
                            let _ = survive(&mut engine, "starting runs", |engine| {
                                let group = (requests, reply);
                                grouped(engine, &inbox, group, Group::<StartRequest, Started>::START, syncer);
                            });
                        }
                        Ok(command) => {
                            let _ = survive(&mut engine, "a request", |engine| apply(engine, command));
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    let Some(freed) = survive(&mut engine, "recording effects", |engine| record(engine, &workers))
                    else {
                        tracing::error!("recording the workers' outcomes failed on a bug; stopping the server");
                        std::process::exit(70);
                    };
                    if freed {
                        // Workers came free: the next effects go to them now, not at the next tick.
                        let round = survive(&mut engine, "dispatching", |engine| {
                            dispatch_round(engine, &mut connectors, &workers, &mut dispatching)
                        });
                        if round.is_none() {
                            tracing::error!("dispatching effects failed on a bug; stopping the server");
                            std::process::exit(70);
                        }
                    }
                    if !busy && last_housekeeping.elapsed() < HOUSEKEEPING_EVERY {
                        continue;
                    }
                    last_housekeeping = std::time::Instant::now();
                    let round = survive(&mut engine, "housekeeping", |engine| {
                        housekeeping(engine, &mut connectors, &workers, &mut last_digests, &mut dispatching)
                    });
                    match round {
                        Some(full) => busy = full,
                        None => {
                            tracing::error!("the owner's background work failed on a bug; stopping the server");
                            std::process::exit(70);
                        }
                    }
                }
                // Stopping: what is in flight comes back first, so a restart need not repeat it.
                let stop_by = std::time::Instant::now() + STOP_GRACE;
                while engine.in_flight() > 0 && std::time::Instant::now() < stop_by {
                    thread::sleep(IN_FLIGHT_POLL);
                    if survive(&mut engine, "recording effects", |engine| record(engine, &workers)).is_none() {
                        break;
                    }
                }
                if engine.in_flight() > 0 {
                    tracing::warn!(
                        in_flight = engine.in_flight(),
                        "stopping with effects in flight; they are claimed again once their leases pass"
                    );
                }
            })
            .expect("the owner thread starts");
        (Owner { commands }, handle)
    }

    /// Queues a command; `false` when the queue is full (answer 429) or the owner is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// Runs one piece of the owner's work; `None` when it panicked (a bug). The panic is logged
/// and the store's open transaction rolled back: nothing the work did is committed, and the
/// replies it held are dropped, so its callers get an error.
fn survive<T>(
    engine: &mut Engine<ServerStore>,
    what: &str,
    work: impl FnOnce(&mut Engine<ServerStore>) -> T,
) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(engine))) {
        Ok(done) => Some(done),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(what, %message, "a bug panicked on the owner thread; its work is rolled back");
            engine.store_mut().finish();
            // A group that panicked while deferring leaves the connection deferring: end it,
            // so later commits sync again (what it committed is synced before it is shown).
            if let Err(error) = engine.store_mut().defer_durability(false) {
                tracing::error!(%error, "cannot end deferred durability after a panic; stopping the server");
                std::process::exit(70);
            }
            None
        }
    }
}

/// When the dispatcher last ran, and whether its round was full.
struct Dispatching {
    last: std::time::Instant,
    full: bool,
}

/// How often the dispatcher runs at most while deferred commits wait for their sync (and its
/// last round was not full): before it performs anything it must sync them itself, on the
/// owner thread, one more sync of the disk beside the syncer's.
const DISPATCH_WHILE_DEFERRED_EVERY: StdDuration = StdDuration::from_millis(100);

/// Fires due schedules and timers, sends digests, sweeps segments and dispatches the outbox;
/// `true` when a round was full and the next should start at once.
fn housekeeping(
    engine: &mut Engine<ServerStore>,
    connectors: &mut Connectors,
    workers: &Workers,
    last_digests: &mut Option<std::time::Instant>,
    dispatching: &mut Dispatching,
) -> bool {
    let now = now();
    if let Err(error) = engine.fire_due_schedules(now, SCHEDULES_PER_TICK_MAX) {
        tracing::error!(%error, "firing schedules failed");
    }
    if last_digests.is_none_or(|at| at.elapsed() >= DIGESTS_EVERY) {
        *last_digests = Some(std::time::Instant::now());
        if let Err(error) = engine.send_digests(now) {
            tracing::error!(%error, "sending digests failed");
        }
        if let Err(error) = engine.forget_old_start_keys(now, START_KEYS_FORGOTTEN_PER_MINUTE_MAX) {
            tracing::error!(%error, "forgetting old idempotency keys failed");
        }
    }
    let swept = engine.sweep_segments(now, SEGMENT_SWEEP_PAGE_COUNT).unwrap_or_else(|error| {
        tracing::error!(%error, "re-evaluating segments failed");
        0
    });
    let fired = engine.fire_due_timers(now, TIMERS_PER_ROUND_MAX).unwrap_or_else(|error| {
        tracing::error!(%error, "firing timers failed");
        0
    });
    let deferred = engine.store().durability().is_some_and(|wal| wal.pending());
    if deferred && !dispatching.full && dispatching.last.elapsed() < DISPATCH_WHILE_DEFERRED_EVERY {
        return fired == TIMERS_PER_ROUND_MAX || swept == SEGMENT_SWEEP_PAGE_COUNT;
    }
    dispatch_round(engine, connectors, workers, dispatching);
    fired == TIMERS_PER_ROUND_MAX || dispatching.full || swept == SEGMENT_SWEEP_PAGE_COUNT
}

/// Claims what the connectors' free workers can take and hands it to them; the owner does
/// not wait for them. A round is full when it read as many rows as it may and found workers
/// for them: the next starts at once.
fn dispatch_round(
    engine: &mut Engine<ServerStore>,
    connectors: &mut Connectors,
    workers: &Workers,
    dispatching: &mut Dispatching,
) {
    dispatching.last = std::time::Instant::now();
    match engine.claim(now(), EFFECTS_PER_ROUND_MAX, connectors, Slots::Free) {
        Ok(claimed) => {
            dispatching.full = claimed.read == EFFECTS_PER_ROUND_MAX && claimed.held == 0;
            workers.start(claimed.batches());
        }
        Err(error) => {
            tracing::error!(%error, "claiming effects failed");
            dispatching.full = false;
        }
    }
}

/// Commits what the workers gave since the last look, and the attempts past their deadline
/// as failed; `true` when something was recorded (workers came free).
fn record(engine: &mut Engine<ServerStore>, workers: &Workers) -> bool {
    let now = now();
    let mut performed = workers.collect();
    performed.extend(engine.timed_out(now));
    if performed.is_empty() {
        return false;
    }
    if let Err(error) = engine.record_performed(performed, now) {
        // The effects stay claimed; once their leases pass they are claimed again.
        tracing::error!(%error, "recording the outcomes of effects failed");
    }
    true
}

/// A kind of command that is committed in groups: how to take one from the queue, and how
/// the engine applies many in one commit.
struct Group<T, R> {
    take: fn(Command) -> Result<Grouped<T, R>, Command>,
    apply: fn(&mut Engine<ServerStore>, Vec<T>, Timestamp) -> Applied<R>,
}

/// A grouped command's items and where their answers go.
type Grouped<T, R> = (Vec<T>, Reply<R>);
/// The engine's answers for a group's items, in order.
type Applied<R> = Result<Vec<R>, Error>;

impl Group<Incoming, Ingested> {
    const INGEST: Self = Group {
        take: |command| match command {
            Command::Ingest { messages, reply } => Ok((messages, reply)),
            other => Err(other),
        },
        apply: Engine::ingest_many,
    };
}

impl Group<StartRequest, Started> {
    const START: Self = Group {
        take: |command| match command {
            Command::Start { requests, reply } => Ok((requests, reply)),
            other => Err(other),
        },
        apply: Engine::start_many,
    };
}

/// Applies a command together with the ones of its kind queued behind it (up to
/// `GROUP_EVENTS_MAX` items) in one commit, then answers each: with a syncer, the commit
/// defers its sync and the syncer answers once it is durable. Should the group fail, each
/// command is tried alone, so one bad request cannot fail the others. A command of another
/// kind ends the group and is applied right after it, keeping arrival order.
fn grouped<T: Clone, R: Send + 'static>(
    engine: &mut Engine<ServerStore>,
    inbox: &mpsc::Receiver<Command>,
    (items, reply): Grouped<T, R>,
    kind: Group<T, R>,
    syncer: Option<&Syncer>,
) {
    let mut group: Vec<(usize, Reply<R>)> = vec![(items.len(), reply)];
    let mut all = items;
    let mut after = None;
    let gather_until = std::time::Instant::now() + GATHER_WHILE_SYNCING_MAX;
    while all.len() < GROUP_EVENTS_MAX {
        // While a sync is under way, a commit now would wait for the next one anyway: a small
        // group keeps gathering until the sync ends. After it, the next sync waits for about
        // as many replies as it gave: the group gathers those, so one commit feeds one sync.
        let gathering = all.len() < GROUP_WHILE_SYNCING_EVENTS_MAX
            && group.len() < GROUP_FOR_SYNC_COMMANDS_MAX
            && syncer.is_some_and(|s| s.syncing() || group.len() < s.replies_wanted())
            && std::time::Instant::now() < gather_until;
        let next = if gathering {
            match inbox.recv_timeout(GATHER_POLL) {
                Ok(command) => Some(command),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            inbox.try_recv().ok()
        };
        match next.map(kind.take) {
            Some(Ok((items, reply))) => {
                group.push((items.len(), reply));
                all.extend(items);
            }
            Some(Err(other)) => {
                after = Some(other);
                break;
            }
            None if gathering => {}
            None => break,
        }
    }
    let now = now();
    let deferred = syncer.is_some_and(Syncer::should_defer) && defer_durability(engine, true);
    let mut answers: Vec<(Reply<R>, Applied<R>)> = Vec::with_capacity(group.len());
    if group.len() == 1 {
        let (_, reply) = group.pop().expect("one command");
        answers.push((reply, (kind.apply)(engine, all, now)));
    } else {
        let retry_alone = all.clone();
        match (kind.apply)(engine, all, now) {
            Ok(mut results) => {
                for (count, reply) in group.into_iter().rev() {
                    let mine = results.split_off(results.len() - count);
                    answers.push((reply, Ok(mine)));
                }
            }
            Err(error) => {
                tracing::warn!(%error, commands = group.len(), "a group commit failed; applying its commands one by one");
                let mut rest = retry_alone;
                for (count, reply) in group {
                    let mine: Vec<T> = rest.drain(..count).collect();
                    answers.push((reply, (kind.apply)(engine, mine, now)));
                }
            }
        }
    }
    if deferred {
        defer_durability(engine, false);
    }
    // Every answer waits for durability, a failed one too: even an answer that committed
    // nothing (a duplicate `messageId`, a reused idempotency key) can rest on what a
    // deferred commit before it wrote.
    match syncer {
        Some(syncer) if deferred => {
            syncer.answer_when_durable(
                answers.len(),
                Box::new(move |synced| {
                    for (reply, applied) in answers {
                        let _ = reply.send(synced.clone().and(applied.map_err(|e| e.to_string())));
                    }
                }),
            );
        }
        _ => {
            durable_now(engine);
            for (reply, applied) in answers {
                let _ = reply.send(applied.map_err(|e| e.to_string()));
            }
        }
    }
    if let Some(command) = after {
        apply(engine, command);
    }
}

/// Makes every deferred commit durable before something that depends on it leaves the
/// process (a no-op when none waits). A failed sync stops the process: after it, what is on
/// disk is unknown, and a restart recovers from what is.
fn durable_now(engine: &mut Engine<ServerStore>) {
    if let Err(error) = engine.store_mut().make_durable() {
        tracing::error!(%error, "syncing the write-ahead log failed; stopping the server");
        std::process::exit(70);
    }
}

/// Starts or ends deferred durability; `false` when it could not start one (commits then
/// sync as usual). Failing to end one stops the process: commits would go on without their
/// syncs, and answers with them.
fn defer_durability(engine: &mut Engine<ServerStore>, defer: bool) -> bool {
    match engine.store_mut().defer_durability(defer) {
        Ok(()) => true,
        Err(error) if defer => {
            tracing::warn!(%error, "cannot defer the sync of a commit; syncing it");
            false
        }
        Err(error) => {
            tracing::error!(%error, "cannot end deferred durability; stopping the server");
            std::process::exit(70);
        }
    }
}

/// Applies one command with its commits synced (a group's kind outside a group: a start
/// behind an ingestion); a query first waits until what deferred commits wrote is durable,
/// so it can neither show nor act on what a crash could still take back.
fn apply(engine: &mut Engine<ServerStore>, command: Command) {
    let now = now();
    match command {
        Command::Ingest { messages, reply } => {
            let ingested = engine.ingest_many(messages, now);
            durable_now(engine);
            let _ = reply.send(ingested.map_err(|e| e.to_string()));
        }
        Command::Start { requests, reply } => {
            let started = engine.start_many(requests, now);
            durable_now(engine);
            let _ = reply.send(started.map_err(|e| e.to_string()));
        }
        Command::Query(work) => {
            durable_now(engine);
            work(engine, now);
        }
    }
}
