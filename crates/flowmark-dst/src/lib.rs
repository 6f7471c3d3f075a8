//! Deterministic simulation testing: the real runtime — engine, SQLite store, timers,
//! dispatcher, segments, scoring — driven by one seeded random source on a virtual clock,
//! with faults injected, then checked against the invariants Flowmark promises.
//!
//! One seed decides everything: the workload (events, identities, duplicates, late and
//! out-of-order arrivals), the order of operations, clock steps and jumps (backwards too),
//! crashes and restarts (the engine is dropped and reopened on the same file), store faults
//! (a write failing before its commit, or after it — the commit durable but unacknowledged;
//! a unit of work failing to start; an event insert failing) and the peer's answers (done,
//! retry, retry after, timeout, refused). The same seed replays the same run: [`Report`]
//! carries a digest of the final state, and the tests check two runs of a seed agree.
//!
//! After the workload, faults stop, the client resends what was never acknowledged, and time
//! runs on until every timer and effect has settled. Then [`check`] holds the run to:
//! - no acknowledged event lost, none applied twice (a resent one is a no-op);
//! - no acknowledged run lost; every run's history agrees with its state (one start, one end
//!   exactly when it ended, with its status);
//! - no run stuck: an active run waits only for what may never come (an event without a
//!   timeout, a person, a child run, a sibling branch), never on a timer that will not fire;
//! - every effect reached a final outcome; everything the peer was asked to do was committed
//!   first; one key always carried one effect; every effect that succeeded reached the peer.
//!
//! Effects go to the peer two ways, as the CLI and the server send them: performed on the
//! spot (`Engine::dispatch`), or claimed for simulated workers (`Engine::claim`), which
//! answer after a latency the seed picks: fast, after their deadline and lease (so the effect
//! was claimed again meanwhile), never (a hang, timed out by the engine), or not at all (the
//! worker died); claims from before a restart answer an engine that no longer has them.

mod check;
pub mod connector;
pub mod store;
mod team;
mod workload;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use flowmark_core::Timestamp;
use flowmark_core::engine::RunId;
use flowmark_runtime::{Claim, Connectors, Engine, Incoming, Limits, Performed, Slots};
use flowmark_sqlite::SqliteStore;
use flowmark_store::Store;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::json;

use crate::connector::SimConnector;
use crate::store::{Faults, FaultyStore};

pub type SimEngine = Engine<FaultyStore<SqliteStore>>;

/// How much one seed does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operations in the faulty phase.
    pub steps: usize,
    /// Contacts the workload is about.
    pub contacts: usize,
    /// Where the seed's database lives (a fresh folder per seed under it).
    pub dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options { steps: 400, contacts: 12, dir: std::env::temp_dir() }
    }
}

/// What one seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub events_sent: u64,
    pub events_acknowledged: u64,
    pub runs: u64,
    pub peer_calls: u64,
    pub restarts: u64,
    /// Faults injected: writes failed before their commit, after it, units that failed to
    /// start, event inserts that failed.
    pub faults: [u64; 4],
    /// Claims handed to simulated workers; of those, workers that died before answering,
    /// hung (never answered), and answered only after their lease had passed.
    pub workers: [u64; 4],
    /// Approval decisions recorded by the team's random actions (each checked as allowed).
    pub decisions: u64,
    /// A digest of the final state (runs, histories, what the peer was asked): equal for two
    /// runs of one seed.
    pub digest: u64,
}

/// A broken invariant, with the seed that replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {}: {} (replay: flowmark-dst --seed {})", self.seed, self.message, self.seed)
    }
}

/// 2026-01-05T12:00:00Z, a Monday.
const START: Timestamp = Timestamp(1_767_614_400_000);
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The client's side: what it sent, what was acknowledged, what it must resend.
#[derive(Default)]
struct Client {
    pending: Vec<Incoming>,
    /// Acknowledged events, kept to send again (a client that lost the answer).
    delivered: Vec<Incoming>,
    acknowledged: BTreeSet<String>,
    sent: u64,
    runs_started: BTreeSet<RunId>,
}

struct Sim {
    rng: ChaCha8Rng,
    now: Timestamp,
    path: PathBuf,
    faults: Rc<RefCell<Faults>>,
    peer: Arc<SimConnector>,
    connectors: Connectors,
    engine: Option<SimEngine>,
    client: Client,
    restarts: u64,
    /// Claims at simulated workers, each with when its worker answers (`None`: it hangs).
    at_workers: Vec<(Arc<Claim>, Option<Timestamp>)>,
    /// Claims, deaths, hangs and answers past the lease (`Report::workers`).
    workers: [u64; 4],
    /// Every attempt to decide an approval, with whether it was allowed then (`team`).
    decisions: Vec<team::DecisionAttempt>,
    /// The review workflow's runs, one per item.
    item_runs: Vec<RunId>,
}

/// Runs one seed; `Err` names the first broken invariant.
pub fn run_seed(seed: u64, options: &Options) -> Result<Report, Failure> {
    let fail = |message: String| Failure { seed, message };
    let dir = options.dir.join(format!("flowmark-dst-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot make {}: {e}", dir.display())))?;
    let result = run_in(seed, options, dir.join("flowmark.db"));
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(fail)
}

fn run_in(seed: u64, options: &Options, path: PathBuf) -> Result<Report, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Each seed picks its own weather: some calm, some stormy.
    let storm = rng.next_u64() % 4;
    let faults = Faults {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_FA17),
        write_before: [0, 20, 60, 120][storm as usize],
        write_after: [0, 10, 30, 60][storm as usize],
        begin: [0, 5, 10, 30][storm as usize],
        insert_event: [0, 2, 5, 15][storm as usize],
        injected: [0; 4],
    };
    let peer = Arc::new(SimConnector {
        seed,
        transient: (rng.next_u64() % 300) as u32,
        permanent: (rng.next_u64() % 30) as u32,
        calls: Mutex::new(Vec::new()),
    });
    let limits = if rng.next_u64().is_multiple_of(3) {
        Limits { concurrency: 1, per_second: Some(2.0), burst: 3, ..Limits::default() }
    } else {
        Limits::default()
    };
    let connectors = Connectors::with_limits(peer.clone(), limits);
    let faults = Rc::new(RefCell::new(faults));
    let mut sim = Sim {
        rng,
        now: START,
        path,
        faults,
        peer,
        connectors,
        engine: None,
        client: Client::default(),
        restarts: 0,
        at_workers: Vec::new(),
        workers: [0; 4],
        decisions: Vec::new(),
        item_runs: Vec::new(),
    };
    sim.open()?;
    sim.setup()?;
    for _ in 0..options.steps {
        sim.step(options)?;
    }
    sim.settle()?;
    let engine = sim.engine.as_ref().expect("open");
    let calls = sim.peer.calls.lock().expect("no panics").clone();
    let summary = check::check(engine.store(), &sim.client.acknowledged, &sim.client.runs_started, &calls)?;
    let decisions = team::check_decisions(engine.store(), &sim.decisions, &sim.item_runs)?;
    let faults = sim.faults.borrow().injected;
    Ok(Report {
        seed,
        events_sent: sim.client.sent,
        events_acknowledged: sim.client.acknowledged.len() as u64,
        runs: summary.runs,
        peer_calls: calls.len() as u64,
        restarts: sim.restarts,
        faults,
        workers: sim.workers,
        decisions,
        digest: summary.digest,
    })
}

impl Sim {
    fn engine(&mut self) -> &mut SimEngine {
        self.engine.as_mut().expect("the engine is open between operations")
    }

    /// Opens the store and the engine on it, as a process start does.
    fn open(&mut self) -> Result<(), String> {
        let store = SqliteStore::open(&self.path).map_err(|e| format!("the store does not open: {e}"))?;
        let store = FaultyStore { inner: store, faults: self.faults.clone() };
        self.engine = Some(Engine::new(store, json!({})).map_err(|e| format!("the engine does not start: {e}"))?);
        Ok(())
    }

    /// A crash: everything in memory is gone; what was committed stays.
    fn restart(&mut self) -> Result<(), String> {
        self.engine = None;
        self.restarts += 1;
        self.open()
    }

    /// Workflows, score models and segments, deployed without faults.
    fn setup(&mut self) -> Result<(), String> {
        let now = self.now;
        let saved = {
            let mut faults = self.faults.borrow_mut();
            let saved = (faults.write_before, faults.write_after, faults.begin, faults.insert_event);
            faults.off();
            saved
        };
        let engine = self.engine();
        for (name, source) in workload::WORKFLOWS {
            engine.deploy(name, source, now).map_err(|e| format!("{name} does not deploy: {e:?}"))?;
        }
        let models = serde_json::from_value(workload::score_models()).map_err(|e| e.to_string())?;
        engine.set_score_models(models, now).map_err(|e| e.to_string())?.map_err(|e| e.join("; "))?;
        let segments = serde_json::from_value(workload::segments()).map_err(|e| e.to_string())?;
        engine.set_segments(segments, now).map_err(|e| e.to_string())?.map_err(|e| e.join("; "))?;
        let directory = serde_json::from_value(workload::directory()).map_err(|e| e.to_string())?;
        engine.set_directory(directory, now).map_err(|e| e.to_string())?.map_err(|e| e.join("; "))?;
        let mut item_runs = Vec::new();
        for item in workload::ITEMS {
            let title = serde_json::json!({ "title": format!("Post {item}") });
            engine.store_mut().upsert_contact(item, &title, None, now).map_err(|e| e.to_string())?;
            let run = engine.start("dst-review", item, now).map_err(|e| e.to_string())?;
            item_runs.extend(run);
        }
        self.client.runs_started.extend(item_runs.iter().copied());
        self.item_runs = item_runs;
        let mut faults = self.faults.borrow_mut();
        (faults.write_before, faults.write_after, faults.begin, faults.insert_event) = saved;
        Ok(())
    }

    fn roll(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    fn step(&mut self, options: &Options) -> Result<(), String> {
        match self.roll(110) {
            0..40 => {
                let mut batch = Vec::new();
                for _ in 0..1 + self.roll(6) {
                    let contact = self.roll(options.contacts as u64);
                    let incoming = workload::event(&mut self.rng, contact, self.now, self.client.sent);
                    self.client.sent += 1;
                    batch.push(incoming);
                }
                // Resend some of what was never acknowledged, and some of what was (a client
                // that lost the answer): both are safe.
                if !self.client.pending.is_empty() && self.roll(2) == 0 {
                    let take = (1 + self.roll(4) as usize).min(self.client.pending.len());
                    batch.extend(self.client.pending.drain(..take));
                }
                if !self.client.delivered.is_empty() && self.roll(4) == 0 {
                    let again = self.roll(self.client.delivered.len() as u64) as usize;
                    batch.push(self.client.delivered[again].clone());
                }
                self.ingest(batch)
            }
            40..55 => {
                let now = self.now;
                let _ = self.engine().fire_due_timers(now, 100);
                Ok(())
            }
            55..65 => {
                let engine = self.engine.as_mut().expect("open");
                let _ = engine.dispatch(self.now, 50, &mut self.connectors);
                Ok(())
            }
            65..70 => self.claim_for_workers(),
            70..75 => self.workers_answer(),
            75..80 => {
                let now = self.now;
                let _ = self.engine().sweep_segments(now, 50);
                Ok(())
            }
            80..96 => {
                let step = match self.roll(100) {
                    0..2 => 3 * DAY,
                    2..3 => -(1 + self.roll(10) as i64) * MINUTE,
                    _ => 1000 + (self.roll(6 * HOUR as u64)) as i64,
                };
                self.now = Timestamp(self.now.ms() + step);
                Ok(())
            }
            100..110 => self.team_acts(),
            _ => self.restart(),
        }
    }

    /// The team finishes its work so the review runs end (escalations repeat daily while a
    /// stage waits): whoever is allowed completes each task and approves each stage; a run
    /// nobody may finish is cancelled.
    fn team_finishes(&mut self) -> Result<(), String> {
        let now = self.now;
        for _ in 0..50 {
            let mut acted = false;
            for item in workload::ITEMS {
                let work = self.engine().store().work_of_subject(item, 500).map_err(|e| e.to_string())?;
                for open in work.iter().filter(|w| w.status == "open") {
                    let action = match open.kind {
                        flowmark_store::WorkKind::Task => {
                            flowmark_runtime::WorkAction::Complete { fields: serde_json::Map::new() }
                        }
                        flowmark_store::WorkKind::Approval => flowmark_runtime::WorkAction::Decide {
                            decision: flowmark_core::engine::Decision::Approve,
                            comment: None,
                        },
                    };
                    let Some(person) = open
                        .people
                        .iter()
                        .find(|p| open.kind == flowmark_store::WorkKind::Task || team::allowed(&work, open, p))
                    else {
                        continue;
                    };
                    if open.kind == flowmark_store::WorkKind::Approval {
                        let attempt = (open.run, open.step.clone(), open.role.clone(), person.clone(), now.ms(), true);
                        self.decisions.push(attempt);
                    }
                    let person = person.clone();
                    if let Ok(Ok(_)) = self.engine().act_on_work(&open.id, &person, action, now) {
                        acted = true;
                    }
                    break;
                }
            }
            if !acted {
                break;
            }
        }
        for run in self.item_runs.clone() {
            let active = self.engine().store().run(run).map_err(|e| e.to_string())?.is_some_and(|r| r.is_active());
            if active {
                let cancel = flowmark_core::engine::Input::Cancel { reason: "the simulation ends".to_owned() };
                self.engine().deliver(run, &cancel, now).map_err(|e| format!("cancel: {e}"))?;
            }
        }
        Ok(())
    }

    /// A random person acts on a random open work item of a random item (or attaches a new
    /// version of its deliverable); an attempt to decide is recorded with whether it was
    /// allowed at that moment (`team::allowed`).
    fn team_acts(&mut self) -> Result<(), String> {
        let now = self.now;
        let item = workload::ITEMS[self.roll(workload::ITEMS.len() as u64) as usize];
        let person = workload::PEOPLE[self.roll(workload::PEOPLE.len() as u64) as usize];
        let new_version = self.roll(12) == 0;
        let Ok(work) = self.engine().store().work_of_subject(item, 500) else { return Ok(()) };
        if new_version {
            let attachment = flowmark_runtime::Attachment {
                subject_id: item,
                work_id: None,
                by: person,
                title: "Next version",
                url: "https://docs.dst.test/next",
                new_version: true,
            };
            let _ = self.engine().attach(attachment, now);
            return Ok(());
        }
        let open: Vec<&flowmark_store::WorkItem> = work.iter().filter(|w| w.status == "open").collect();
        if open.is_empty() {
            return Ok(());
        }
        let chosen = open[self.roll(open.len() as u64) as usize].clone();
        let action = team::action(&mut self.rng, &chosen, &workload::PEOPLE);
        if matches!(action, flowmark_runtime::WorkAction::Decide { .. }) {
            let allowed = team::allowed(&work, &chosen, person);
            self.decisions.push((
                chosen.run,
                chosen.step.clone(),
                chosen.role.clone(),
                person.to_owned(),
                now.ms(),
                allowed,
            ));
        }
        let _ = self.engine().act_on_work(&chosen.id, person, action, now);
        Ok(())
    }

    /// Claims effects for simulated workers, as the server does: each answers after a
    /// latency from milliseconds to past its lease (a slow peer), or never (a hang).
    fn claim_for_workers(&mut self) -> Result<(), String> {
        let now = self.now;
        let engine = self.engine.as_mut().expect("open");
        let Ok(claimed) = engine.claim(now, 50, &mut self.connectors, Slots::Free) else { return Ok(()) };
        for claim in claimed.claims {
            self.workers[0] += 1;
            let answer = match self.rng.next_u64() % 10 {
                0 => {
                    self.workers[2] += 1;
                    None
                }
                1 => {
                    self.workers[3] += 1;
                    Some(Timestamp(claim.deadline.ms() + 120_000 + (self.rng.next_u64() % 3_600_000) as i64))
                }
                _ => Some(Timestamp(now.ms() + (self.rng.next_u64() % 5_000) as i64)),
            };
            self.at_workers.push((claim, answer));
        }
        Ok(())
    }

    /// Workers whose answer is due give it (some die first, and their answer is lost), and
    /// attempts past their deadline are recorded as timeouts. Claims made before a restart
    /// answer an engine that no longer has them in flight: their answers change nothing.
    fn workers_answer(&mut self) -> Result<(), String> {
        self.answer_due().map(|_| ())
    }

    /// `workers_answer`; returns how many answers and timeouts were recorded.
    fn answer_due(&mut self) -> Result<usize, String> {
        let now = self.now;
        let mut performed = Vec::new();
        let mut waiting = Vec::new();
        for (claim, answer) in std::mem::take(&mut self.at_workers) {
            match answer {
                Some(at) if at <= now => {
                    if self.rng.next_u64().is_multiple_of(8) {
                        self.workers[1] += 1;
                        continue; // the worker died mid-attempt
                    }
                    let started = claim.claimed_at;
                    let outcome = claim.perform(&*self.peer, started);
                    let (key, attempt) = (claim.key.clone(), claim.attempt);
                    performed.push(Performed { key, attempt, started, ended: at, outcome, timed_out: false });
                }
                _ => waiting.push((claim, answer)),
            }
        }
        self.at_workers = waiting;
        let engine = self.engine.as_mut().expect("open");
        performed.extend(engine.timed_out(now));
        let recorded = performed.len();
        let _ = engine.record_performed(performed, now);
        Ok(recorded)
    }

    /// Sends a batch as a client would; on an error nothing is acknowledged and every event
    /// in it will be sent again.
    fn ingest(&mut self, batch: Vec<Incoming>) -> Result<(), String> {
        let now = self.now;
        // What the store already holds must come back as a duplicate, acknowledged or not
        // (a commit whose answer was lost).
        let mut stored = BTreeSet::new();
        for incoming in &batch {
            if self.engine().store().has_event(&incoming.event.id).map_err(|e| e.to_string())? {
                stored.insert(incoming.event.id.clone());
            }
        }
        let result = self.engine().ingest_many(batch.clone(), now);
        match result {
            Ok(results) => {
                if results.len() != batch.len() {
                    return Err(format!("{} events sent, {} answered", batch.len(), results.len()));
                }
                let mut seen_here = BTreeSet::new();
                for (incoming, result) in batch.iter().zip(results) {
                    let id = &incoming.event.id;
                    let again = stored.contains(id) || !seen_here.insert(id.clone());
                    if again
                        && (!result.duplicate || !result.runs_started.is_empty() || !result.runs_advanced.is_empty())
                    {
                        return Err(format!("event {id} was acknowledged before and was applied again: {result:?}"));
                    }
                    self.client.runs_started.extend(result.runs_started);
                    if self.client.acknowledged.insert(id.clone()) && incoming.merge_from.is_none() {
                        self.client.delivered.push(incoming.clone());
                    }
                }
                Ok(())
            }
            Err(_) => {
                // Resend later, once each (an event sent twice in one batch counts once).
                let mut ids: BTreeSet<String> = self.client.pending.iter().map(|i| i.event.id.clone()).collect();
                for incoming in batch {
                    if !self.client.acknowledged.contains(&incoming.event.id) && ids.insert(incoming.event.id.clone()) {
                        self.client.pending.push(incoming);
                    }
                }
                Ok(())
            }
        }
    }

    /// Faults stop; the client resends what was never acknowledged; time runs on until every
    /// timer and effect has settled.
    fn settle(&mut self) -> Result<(), String> {
        self.faults.borrow_mut().off();
        self.restart()?;
        self.team_finishes()?;
        let pending = std::mem::take(&mut self.client.pending);
        for chunk in pending.chunks(50) {
            let before = self.client.acknowledged.len();
            self.ingest(chunk.to_vec())?;
            if self.client.acknowledged.len() == before && !chunk.is_empty() {
                return Err("without faults, a resent batch was still refused".to_owned());
            }
        }
        if !self.client.pending.is_empty() {
            return Err(format!("{} events could not be delivered without faults", self.client.pending.len()));
        }
        let mut quiet_rounds = 0;
        for _ in 0..400 {
            let now = self.now;
            let engine = self.engine.as_mut().expect("open");
            let mut worked = 0;
            worked += engine.fire_due_timers(now, 10_000).map_err(|e| format!("timers: {e}"))?;
            // Workers still out answer now or never (a hung one is left to time out).
            self.at_workers.retain(|(_, answer)| answer.is_some());
            for (_, answer) in &mut self.at_workers {
                *answer = answer.map(|at| at.min(now));
            }
            worked += self.answer_due()?;
            let engine = self.engine.as_mut().expect("open");
            worked += engine.dispatch(now, 1_000, &mut self.connectors).map_err(|e| format!("dispatch: {e}"))?;
            worked += engine.sweep_segments(now, 1_000).map_err(|e| format!("sweep: {e}"))?;
            let depth = self.engine().store().outbox_depth().map_err(|e| e.to_string())?;
            quiet_rounds = if worked == 0 && depth == 0 { quiet_rounds + 1 } else { 0 };
            // Two hours a round: past every retry and rate limit, and 400 rounds pass every
            // wait the workload's workflows have.
            if quiet_rounds >= 100 {
                break;
            }
            self.now = Timestamp(self.now.ms() + 2 * HOUR);
        }
        let depth = self.engine().store().outbox_depth().map_err(|e| e.to_string())?;
        if depth > 0 {
            return Err(format!("{depth} effects never reached a final outcome"));
        }
        Ok(())
    }
}

/// Runs seeds `from..from + count`, stopping at the first failure.
pub fn run_seeds(from: u64, count: u64, options: &Options) -> Result<Vec<Report>, Failure> {
    (from..from + count).map(|seed| run_seed(seed, options)).collect()
}

/// Totals over reports, for the soak's summary line.
pub fn totals(reports: &[Report]) -> BTreeMap<&'static str, u64> {
    let mut totals = BTreeMap::new();
    for r in reports {
        *totals.entry("seeds").or_default() += 1;
        *totals.entry("events_sent").or_default() += r.events_sent;
        *totals.entry("events_acknowledged").or_default() += r.events_acknowledged;
        *totals.entry("runs").or_default() += r.runs;
        *totals.entry("peer_calls").or_default() += r.peer_calls;
        *totals.entry("restarts").or_default() += r.restarts;
        *totals.entry("faults_write_before").or_default() += r.faults[0];
        *totals.entry("faults_write_after").or_default() += r.faults[1];
        *totals.entry("faults_begin").or_default() += r.faults[2];
        *totals.entry("faults_insert_event").or_default() += r.faults[3];
        *totals.entry("worker_claims").or_default() += r.workers[0];
        *totals.entry("worker_deaths").or_default() += r.workers[1];
        *totals.entry("worker_hangs").or_default() += r.workers[2];
        *totals.entry("worker_answers_after_lease").or_default() += r.workers[3];
        *totals.entry("approval_decisions").or_default() += r.decisions;
    }
    totals
}
