//! The syncer: answers grouped commands once what they committed is durable.
//!
//! The owner commits ingestion and start groups with their sync deferred and hands their
//! answers here; this thread syncs the write-ahead log, then answers, while the owner goes on
//! with the next group. One sync covers every group committed before it began, so the disk's
//! flush overlaps the writer's work, and clients waiting together share a flush.
//!
//! When syncs are slow and shared by many clients, the clients one sync answers send again at
//! once. A sync that started right away would miss them; they would wait for the one after,
//! and the clients would split into two halves taking turns, each served by every other sync.
//! So, when the last sync answered more than one reply, the next one waits until as many
//! replies have come back since it ended, until as long after its end as it took (measured
//! on a disk that syncs in 6.9 ms: 64 clients then share one sync, and `/v1/track` answers half
//! again as many requests).
//!
//! The owner gathers for the same sync: while its next group would only wait for the next sync
//! anyway (a sync is under way, `syncing`), and while that sync waits for more replies than the
//! group holds (`replies_wanted`), it keeps gathering commands instead of committing a few at a
//! time. So one commit usually feeds one sync (measured at 64 connections on a 7 ms disk: 6.5
//! commits per sync before, 1 after; `/v1/track`'s p99 went from 33–35 ms to 28–30 ms, its
//! throughput unchanged).
//!
//! On a disk that syncs in a fraction of a millisecond, waiting for the sync on the writer's
//! thread costs less than handing answers over to another one (measured: `/v1/track` from 64
//! connections ran 15 % slower deferred). So the owner defers only while syncs are slow
//! ([`Syncer::should_defer`]): when their average is at least `SLOW_SYNC`, and once every
//! `PROBE_EVERY` otherwise, to measure them again.
//!
//! Invariant: an answer is given only after a sync that began after it was handed over, and so
//! after its commit returned. If a sync fails, every answer waiting is given the error and the
//! syncer stops taking more (`on_failure` then stops the process: after a failed fsync what is
//! on disk is unknown, and a restart recovers from what is).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Gives a group's answers: `Ok` once it is durable, or the error that kept it from being.
pub type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Syncs at least this slow, on average, are worth overlapping with the writer's work.
pub const SLOW_SYNC: Duration = Duration::from_millis(1);
/// While syncs are fast, one group in this long is deferred all the same, to time a sync.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The latest sync: how long it took, how many replies it gave, and when it ended.
struct LastSync {
    took: Duration,
    replies: usize,
    ended: Instant,
}

/// What the next sync waits for before it begins: `wanted` replies handed over since the last
/// one ended (`handed` so far), until `until` (nanoseconds since the syncer started).
#[derive(Default)]
struct NextSync {
    wanted: AtomicUsize,
    handed: AtomicUsize,
    until: AtomicU64,
}

/// One group's answers, how many replies they are, and when they were handed over.
struct Waiting {
    replies: usize,
    answer: Answer,
    handed_at: Instant,
}

pub struct Syncer {
    waiting: Option<mpsc::Sender<Waiting>>,
    thread: Option<thread::JoinHandle<()>>,
    /// Is a sync under way (not merely gathering)?
    syncing: Arc<AtomicBool>,
    /// What the next sync waits for, as the owner sees it.
    next: Arc<NextSync>,
    /// How long syncs take: a moving average, in nanoseconds (0 before the first).
    latency: Arc<AtomicU64>,
    /// When a group was last deferred, in nanoseconds since `started`.
    last_deferred: AtomicU64,
    started: Instant,
}

impl Syncer {
    /// Starts the syncer thread; `sync` makes every commit that returned before it was called
    /// durable, and `on_failure` runs after a failed sync has been reported to its waiters.
    pub fn start(
        mut sync: impl FnMut() -> Result<(), String> + Send + 'static,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Syncer {
        let (sender, waiting) = mpsc::channel::<Waiting>();
        let syncing = Arc::new(AtomicBool::new(false));
        let flag = syncing.clone();
        let latency = Arc::new(AtomicU64::new(0));
        let average = latency.clone();
        let next = Arc::new(NextSync::default());
        let expecting = next.clone();
        let born = Instant::now();
        let thread = thread::Builder::new()
            .name("flowmark-sync".to_owned())
            .spawn(move || {
                let mut last = LastSync { took: Duration::ZERO, replies: 0, ended: Instant::now() };
                while let Ok(first) = waiting.recv() {
                    let mut group = vec![first];
                    group.extend(waiting.try_iter());
                    if last.replies > 1 {
                        gather(&waiting, &mut group, &last, last.ended + last.took);
                    }
                    let started = Instant::now();
                    let synced = {
                        let _syncing = Syncing::start(&flag);
                        sync()
                    };
                    last = LastSync {
                        took: started.elapsed(),
                        replies: group.iter().map(|w| w.replies).sum(),
                        ended: Instant::now(),
                    };
                    let until = last.ended.duration_since(born) + last.took;
                    expecting.until.store(u64::try_from(until.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
                    expecting.handed.store(0, Ordering::Relaxed);
                    let wanted = if last.replies > 1 { last.replies } else { 0 };
                    expecting.wanted.store(wanted, Ordering::Relaxed);
                    let took = u64::try_from(last.took.as_nanos()).unwrap_or(u64::MAX);
                    let before = average.load(Ordering::Relaxed);
                    average.store(if before == 0 { took } else { before - before / 8 + took / 8 }, Ordering::Relaxed);
                    if let Err(error) = synced {
                        tracing::error!(%error, "syncing the write-ahead log failed; stopping the server");
                        let error = format!("the commit could not be made durable: {error}");
                        for w in group.into_iter().chain(waiting.try_iter()) {
                            (w.answer)(Err(error.clone()));
                        }
                        on_failure();
                        return;
                    }
                    for w in group {
                        (w.answer)(Ok(()));
                    }
                }
            })
            .expect("the syncer thread starts");
        Syncer {
            waiting: Some(sender),
            thread: Some(thread),
            syncing,
            next,
            latency,
            last_deferred: AtomicU64::new(0),
            started: born,
        }
    }

    /// Should the next group defer its sync to this syncer? While syncs are slow, yes; while
    /// they are fast, once every `PROBE_EVERY`, to time them.
    pub fn should_defer(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let slow = self.sync_latency() >= SLOW_SYNC;
        let probe = now.saturating_sub(self.last_deferred.load(Ordering::Relaxed)) >= PROBE_EVERY.as_nanos() as u64;
        if slow || probe {
            self.last_deferred.store(now, Ordering::Relaxed);
        }
        slow || probe
    }

    /// How long a sync takes, on average lately (zero before the first).
    pub fn sync_latency(&self) -> Duration {
        Duration::from_nanos(self.latency.load(Ordering::Relaxed))
    }

    /// Is a sync under way? What is committed now waits for the one after it, so a writer
    /// may as well gather more into its next commit until this one ends.
    pub fn syncing(&self) -> bool {
        self.syncing.load(Ordering::Acquire)
    }

    /// How many more replies the next sync waits for before it begins (zero when it waits for
    /// none, or when syncs are fast and groups are not deferred): a writer may gather that
    /// many commands into one commit rather than commit them a few at a time.
    pub fn replies_wanted(&self) -> usize {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.sync_latency() < SLOW_SYNC || now >= self.next.until.load(Ordering::Relaxed) {
            return 0;
        }
        self.next.wanted.load(Ordering::Relaxed).saturating_sub(self.next.handed.load(Ordering::Relaxed))
    }

    /// Hands over a group of `replies` answers whose commit has returned: `answer` is called
    /// after the next sync that begins from now.
    pub fn answer_when_durable(&self, replies: usize, answer: Answer) {
        self.next.handed.fetch_add(replies, Ordering::Relaxed);
        let waiting = Waiting { replies, answer, handed_at: Instant::now() };
        if let Err(mpsc::SendError(Waiting { answer, .. })) =
            self.waiting.as_ref().expect("the syncer runs until dropped").send(waiting)
        {
            answer(Err("the commit could not be made durable: the syncer stopped".to_owned()));
        }
    }
}

/// Marks a sync under way for as long as it lives, also when the sync panics.
struct Syncing<'a>(&'a AtomicBool);

impl<'a> Syncing<'a> {
    fn start(flag: &'a AtomicBool) -> Syncing<'a> {
        flag.store(true, Ordering::Release);
        Syncing(flag)
    }
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Takes answers into `group` until as many replies were handed over since the `last` sync
/// ended as it gave, or until `deadline`.
fn gather(waiting: &mpsc::Receiver<Waiting>, group: &mut Vec<Waiting>, last: &LastSync, deadline: Instant) {
    let mut back: usize = group.iter().filter(|w| w.handed_at >= last.ended).map(|w| w.replies).sum();
    while back < last.replies {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match waiting.recv_timeout(left) {
            Ok(next) => {
                back += next.replies;
                group.push(next);
            }
            Err(_) => return,
        }
    }
}

/// Dropping the syncer answers what was handed over (after a last sync) and joins its thread.
impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.waiting.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Syncs numbered as they begin (`begun`, under the `order` lock, which a test holds
    /// while it hands an answer over, so each sync began either before a hand-over or after
    /// it), that say which one ended last (`ended`) and take `took`.
    struct Counted {
        begun: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
        order: Arc<std::sync::Mutex<()>>,
    }

    fn counted(took: Duration) -> (Counted, impl FnMut() -> Result<(), String> + Send) {
        let counted = Counted {
            begun: Arc::new(AtomicUsize::new(0)),
            ended: Arc::new(AtomicUsize::new(0)),
            order: Arc::new(std::sync::Mutex::new(())),
        };
        let (b, e, o) = (counted.begun.clone(), counted.ended.clone(), counted.order.clone());
        let sync = move || {
            let number = {
                let _order = o.lock().unwrap();
                b.fetch_add(1, Ordering::SeqCst) + 1
            };
            thread::sleep(took);
            e.store(number, Ordering::SeqCst);
            Ok(())
        };
        (counted, sync)
    }

    #[test]
    fn an_answer_waits_for_a_sync_that_began_after_it_was_handed_over() {
        let (counted, sync) = counted(Duration::from_millis(3));
        let Counted { begun, ended, order } = counted;
        let syncer = Arc::new(Syncer::start(sync, || panic!("no sync fails")));
        let answered = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let (syncer, begun, ended, answered) = (syncer.clone(), begun.clone(), ended.clone(), answered.clone());
                let order = order.clone();
                thread::spawn(move || {
                    for round in 0..20 {
                        thread::sleep(Duration::from_micros(((client * 7 + round * 13) % 5) as u64 * 400));
                        let (tx, rx) = mpsc::channel();
                        let ended = ended.clone();
                        let held = order.lock().unwrap();
                        // Syncs numbered up to `before` began before this hand-over.
                        let before = begun.load(Ordering::SeqCst);
                        syncer.answer_when_durable(
                            1,
                            Box::new(move |synced| {
                                // The sync that just ended is one that began after the hand-over.
                                let _ = tx.send((synced, ended.load(Ordering::SeqCst) > before));
                            }),
                        );
                        drop(held);
                        let (synced, after) = rx.recv().expect("answered");
                        assert_eq!(synced, Ok(()));
                        assert!(after, "answered by a sync that began before the hand-over");
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        assert_eq!(answered.load(Ordering::SeqCst), 160);
        // Clients waiting together shared syncs.
        assert!(begun.load(Ordering::SeqCst) < 160, "{} syncs for 160 answers", begun.load(Ordering::SeqCst));
    }

    #[test]
    fn the_next_sync_wants_as_many_replies_as_the_last_gave_until_as_long_as_it_took() {
        let took = Duration::from_millis(200);
        let (_, sync) = counted(took);
        let syncer = Syncer::start(sync, || panic!("no sync fails"));
        assert_eq!(syncer.replies_wanted(), 0, "nothing is wanted before a first sync");
        let (tx, rx) = mpsc::channel();
        let answered = |tx: &mpsc::Sender<Result<(), String>>| {
            let tx = tx.clone();
            Box::new(move |synced| tx.send(synced).unwrap()) as Answer
        };
        // Three replies in one group: the first sync gives them all.
        syncer.answer_when_durable(3, answered(&tx));
        rx.recv().unwrap().unwrap();
        assert_eq!(syncer.replies_wanted(), 3);
        syncer.answer_when_durable(1, answered(&tx));
        assert_eq!(syncer.replies_wanted(), 2, "one of the three came back");
        // As long after the sync as it took, the next one begins with what it has.
        thread::sleep(took + Duration::from_millis(50));
        assert_eq!(syncer.replies_wanted(), 0);
        rx.recv().unwrap().unwrap();
        let (_, fast) = counted(Duration::ZERO);
        let fast = Syncer::start(fast, || panic!("no sync fails"));
        fast.answer_when_durable(3, answered(&tx));
        rx.recv().unwrap().unwrap();
        assert_eq!(fast.replies_wanted(), 0, "fast syncs are not waited for");
    }

    #[test]
    fn a_failed_sync_answers_every_waiter_with_its_error_and_stops() {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let syncer = Syncer::start(|| Err("disk gone".to_owned()), move || flag.store(true, Ordering::SeqCst));
        let (tx, rx) = mpsc::channel();
        let first = tx.clone();
        syncer.answer_when_durable(1, Box::new(move |synced| first.send(synced).unwrap()));
        let answer = rx.recv().unwrap();
        assert!(answer.as_ref().is_err_and(|e| e.contains("disk gone")), "{answer:?}");
        // The syncer has stopped: a later hand-over is refused at once, never answered `Ok`.
        while !stopped.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        syncer.answer_when_durable(1, Box::new(move |synced| tx.send(synced).unwrap()));
        assert!(!matches!(rx.recv(), Ok(Ok(()))));
    }

    #[test]
    fn dropping_the_syncer_answers_what_it_was_handed() {
        let (Counted { ended, .. }, sync) = counted(Duration::from_millis(20));
        let syncer = Syncer::start(sync, || panic!("no sync fails"));
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let tx = tx.clone();
            syncer.answer_when_durable(1, Box::new(move |synced| tx.send(synced).unwrap()));
        }
        drop(syncer);
        assert!(ended.load(Ordering::SeqCst) >= 1);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![Ok(()), Ok(()), Ok(())]);
    }
}
