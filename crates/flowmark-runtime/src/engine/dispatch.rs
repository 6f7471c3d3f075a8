//! The dispatcher: effects from the outbox performed through the connectors, after the
//! commit that queued them, by workers apart from the writer.
//!
//! A dispatch is two units of work with the network between them. **Claiming** reads the
//! ready effects, applies the internal ones (score changes, subject updates, subflow starts)
//! and the notifications of people's work, renders messages from the subject's data at that
//! moment, and marks each effect that leaves Flowmark claimed, with a lease, within its
//! connector's concurrency and rate: all committed in one transaction. The claims then go to
//! workers, which perform them off the writer (the server's), or on the spot (`dispatch`,
//! for the CLI, tests and simulations). **Recording** commits what the attempts gave, as they
//! come back, with the results fed back to their runs, timed as they happened.
//!
//! Invariants: nothing is performed on the strength of a commit that is not durable yet
//! (`Store::make_durable` first); an effect this version cannot read is held, never
//! performed or dropped; an effect is performed by at most one claim at a time while its
//! lease holds, and one whose worker never answered (it hung, died, or the process stopped)
//! is claimed again once its lease passes, under the same key; an outcome counts only for the
//! attempt that is in flight (a late answer after a timeout or a new claim changes nothing);
//! a marketing message is checked against the suppressions committed since its claim just
//! before it leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use flowmark_core::Timestamp;
use flowmark_core::engine::{
    Effect, EffectKind, EffectTiming, Event, Facts, Input, NotifyReason, ParentRun, RenderContext, Run, RunId,
    RunStatus, apply_update, effect_result, emitted_event, handle, timed_effect_result,
};
use flowmark_core::model::Channel;
use flowmark_core::render::{Message, render_step_message};
use flowmark_store::{Attempt, OutboxEffect, OutboxEntry, ReadyEffects, Store};
use serde_json::Value;

use super::ingest::Unit;
use super::{Engine, Error, Incoming, Needs, RunRef, people, version_of};
use crate::connector::{Connector, Connectors, Guard, Job, Outbound, Outcome};
use crate::retry;
use crate::segments::Change;

/// How long an effect this version cannot read is held before it is looked at again (an
/// hour): long enough not to fill the log, short enough for a rolled-back upgrade.
pub const UNREADABLE_EFFECT_HOLD_MS: i64 = 3_600_000;

/// How long a claim's lease outlasts its attempt's deadline (5 s): the writer records a
/// timeout within milliseconds of the deadline, so a lease passes only when the writer itself
/// stopped (a crash, a restart) or stalled; then the effect is claimed again, under its key.
pub const LEASE_MARGIN_MS: i64 = 5_000;

/// What each claim ahead of one in its batch adds to its deadline (half a second): batches
/// are sized to about `WORKER_BATCH_MS` of work, so this is generous, and a hanging claim
/// holds those behind it at most this much longer each.
const TURN_ALLOWANCE_MS: u64 = 500;

/// Attempts in a row that may end with no outcome at all (claimed, then the process stopped
/// or died while a worker performed it) before the effect is quarantined: set aside, listed
/// among the dead letters, and not attempted again until a person requeues it. So an effect
/// that crashes the server cannot do so at every restart. An outcome (even a retry) starts
/// the count again.
pub const LOST_ATTEMPTS_MAX: u32 = 3;

/// How long an effect whose connector has no free worker waits at least before it is read
/// again (a second): it goes behind the effects of other connectors, so a long queue of
/// emails cannot hold up a webhook. Further back in the line it waits for about its turn
/// (`no_worker_hold_ms`), so a backlog behind a slow peer is not read and rewritten every
/// second while its connector gets through a few effects.
pub const NO_WORKER_HOLD_MS: i64 = 1_000;

/// The longest an effect waits for a free worker before it is read again (a minute), however
/// long the line ahead of it: a peer that speeds up is not kept waiting on a stale estimate.
pub const NO_WORKER_HOLD_MAX_MS: i64 = 60_000;

/// How long the effect at `place` (0 first) in the line for a connector's `workers` waits for
/// its turn, when an attempt takes `latency_ms` (unknown: the minimum): the line moves
/// `workers` effects per attempt's time.
fn no_worker_hold_ms(place: usize, workers: usize, latency_ms: Option<f64>) -> i64 {
    let Some(latency_ms) = latency_ms else { return NO_WORKER_HOLD_MS };
    let turns = (place / workers.max(1)) as f64 + 1.0;
    ((latency_ms * turns) as i64).clamp(NO_WORKER_HOLD_MS, NO_WORKER_HOLD_MAX_MS)
}

/// How many effects a claim may hand to each connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    /// As many as the rate admits: they are performed on the spot, `concurrency` at a time.
    All,
    /// As many as the connector has workers free (its concurrency less what is in flight).
    Free,
}

/// An effect claimed for a worker: all it takes to perform it, owned.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The idempotency key, the same on every attempt.
    pub key: String,
    /// Which attempt this claim is (1 for the first).
    pub attempt: u32,
    /// The connector's route in the registry, and its name.
    pub route: usize,
    /// The batch it is performed in: one worker performs a batch's claims in turn.
    pub batch: u64,
    pub connector: String,
    pub effect: OutboxEffect,
    pub message: Option<Message>,
    pub subject_id: String,
    /// For a marketing message to a contact: checked again just before it leaves.
    pub guard: Option<Guard>,
    pub claimed_at: Timestamp,
    /// When the attempt counts as failed (its connector's timeout).
    pub deadline: Timestamp,
    /// The run its result goes back to; `None` for a person's notification.
    run: Option<ClaimedRun>,
    retry_delays: Option<&'static [u64]>,
}

#[derive(Debug, Clone)]
struct ClaimedRun {
    id: RunId,
    workflow_id: String,
    version: u32,
}

impl Claim {
    /// The job a connector performs for this claim, starting at `now`.
    pub fn job(&self, now: Timestamp) -> Job<'_> {
        Job {
            key: &self.key,
            effect: &self.effect,
            message: self.message.as_ref(),
            subject_id: &self.subject_id,
            attempt: self.attempt,
            now,
            guard: self.guard.as_ref(),
        }
    }

    /// Performs the claim through `connector`: refused without calling it when its contact
    /// was suppressed since the claim.
    pub fn perform(&self, connector: &dyn Connector, now: Timestamp) -> Outcome {
        let job = self.job(now);
        if let Some(error) = job.refusal() {
            return Outcome::Permanent { error };
        }
        connector.perform(&job)
    }
}

/// An effect bound for a connector, before it is claimed: its index among the ready
/// entries, its rendered message, its subject, and the channel to check before it leaves.
type Outgoing = (usize, Option<Message>, String, Option<Channel>);

/// What one claimed attempt gave, timed as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Performed {
    pub key: String,
    pub attempt: u32,
    pub started: Timestamp,
    pub ended: Timestamp,
    pub outcome: Outcome,
    /// No answer came within the connector's timeout (`Engine::timed_out`).
    pub timed_out: bool,
}

/// What a claim took from the outbox.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The effects to perform, handed to workers.
    pub claims: Vec<Arc<Claim>>,
    /// How many outbox rows the claim read (applied, deferred, held or claimed).
    pub read: usize,
    /// How many of them found no free worker (`NO_WORKER_HOLD_MS`).
    pub held: usize,
}

impl Claimed {
    /// The claims by batch, each in the order its worker performs them.
    pub fn batches(self) -> Vec<Vec<Arc<Claim>>> {
        let mut batches: BTreeMap<u64, Vec<Arc<Claim>>> = BTreeMap::new();
        for claim in self.claims {
            batches.entry(claim.batch).or_default().push(claim);
        }
        batches.into_values().collect()
    }
}

/// What each connector's attempts did, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorStats {
    /// Attempts that came back (timeouts included).
    pub attempts: u64,
    /// Attempts that took longer than the connector's timeout.
    pub timeouts: u64,
    /// How long attempts took, cumulative counts per `ATTEMPT_BUCKETS_MS` bound, and the sum.
    pub latency_buckets: [u64; ATTEMPT_BUCKETS_MS.len()],
    pub latency_ms_sum: u64,
}

/// The upper bounds (ms) of the attempt latency histogram.
pub const ATTEMPT_BUCKETS_MS: [u64; 8] = [10, 50, 100, 500, 1_000, 5_000, 15_000, 60_000];

/// The effects in flight at the workers, by key, and what their attempts did.
#[derive(Debug, Default)]
pub(super) struct Dispatching {
    in_flight: HashMap<String, Arc<Claim>>,
    connectors: BTreeMap<String, ConnectorStats>,
    /// How long each route's attempts took lately (ms, a moving average), by route.
    latency_ms: HashMap<usize, f64>,
    next_batch: u64,
}

impl Dispatching {
    /// Forgets the claims of `runs` (erased): a worker's late answer for one changes nothing.
    pub(super) fn forget_runs(&mut self, runs: &HashSet<RunId>) {
        self.in_flight.retain(|_, claim| claim.run.as_ref().is_none_or(|run| !runs.contains(&run.id)));
    }
}

/// The most claims one worker takes in a batch.
pub const WORKER_BATCH_MAX: usize = 32;
/// About how long one batch should keep a worker busy (ms): a connector that answers in a
/// millisecond takes batches of `WORKER_BATCH_MAX`, one that takes a second one at a time.
const WORKER_BATCH_MS: f64 = 250.0;

impl Dispatching {
    /// How many claims a worker of `route` takes at once, by how fast it answered lately:
    /// one until it has answered.
    fn batch_size(&self, route: usize) -> usize {
        match self.latency_ms.get(&route) {
            None => 1,
            Some(ms) => ((WORKER_BATCH_MS / ms.max(1.0)) as usize).clamp(1, WORKER_BATCH_MAX),
        }
    }

    fn observe(&mut self, route: usize, took_ms: u64) {
        let took = took_ms as f64;
        let average = self.latency_ms.entry(route).or_insert(took);
        *average = 0.8 * *average + 0.2 * took;
    }
}

impl<S: Store> Engine<S> {
    /// Claims up to `limit` ready effects and performs them on the spot through
    /// `connectors`, `concurrency` at a time; returns how many it took from the outbox. The
    /// claims and what the attempts gave are committed in two units of work (`claim`,
    /// `record_performed`): a crash between them repeats the attempts once their leases pass,
    /// under the same keys.
    pub fn dispatch(&mut self, now: Timestamp, limit: usize, connectors: &mut Connectors) -> Result<usize, Error> {
        let claimed = self.claim(now, limit, connectors, Slots::All)?;
        if claimed.claims.is_empty() {
            return Ok(claimed.read);
        }
        let mut by_route: Vec<Vec<&Claim>> = vec![Vec::new(); connectors.count()];
        for claim in &claimed.claims {
            by_route[claim.route].push(claim);
        }
        let mut performed = Vec::with_capacity(claimed.claims.len());
        for (route, claims) in by_route.into_iter().enumerate() {
            if claims.is_empty() {
                continue;
            }
            let connector = connectors.connector(route).clone();
            performed.extend(perform_all(&*connector, connectors.concurrency(route), now, &claims));
            tracing::trace!(connector = connectors.name(route), performed = claims.len(), "dispatched");
        }
        self.record_performed(performed, now)?;
        self.store_gone_endpoints(connectors);
        Ok(claimed.read)
    }

    /// Claims up to `limit` ready effects: applies the internal ones and notifications,
    /// renders messages, and marks each effect that leaves Flowmark claimed until its
    /// deadline (its connector's timeout, plus `TURN_ALLOWANCE_MS` for each claim ahead of it
    /// in its batch) plus `LEASE_MARGIN_MS`, within its rate and `slots`; commits all of
    /// it in one transaction and returns the claims, which are now in flight. What a
    /// connector's rate holds back is deferred; what finds no free worker waits
    /// `NO_WORKER_HOLD_MS`.
    pub fn claim(
        &mut self,
        now: Timestamp,
        limit: usize,
        connectors: &mut Connectors,
        slots: Slots,
    ) -> Result<Claimed, Error> {
        self.store_gone_endpoints(connectors);
        self.store.begin()?;
        let result = self.claim_unit(now, limit, connectors, slots);
        self.store.finish();
        result
    }

    /// Stores the webhook URLs that answered `410 Gone` since the last round, so they stay
    /// disabled after a restart. A failure keeps them for the next round: in memory they are
    /// refused already, and a crash before they are stored costs at most one more `410` each.
    fn store_gone_endpoints(&mut self, connectors: &Connectors) {
        let Some(gone) = connectors.gone_endpoints() else { return };
        let new = gone.take_new();
        if new.is_empty() {
            return;
        }
        if let Err(error) = self.store.put_gone_endpoints(&new) {
            tracing::warn!(%error, endpoints = new.len(), "cannot store gone webhook endpoints; trying again next round");
            gone.keep(new);
        }
    }

    /// How many claims are in flight, in all and for one connector's route.
    pub fn in_flight(&self) -> usize {
        self.dispatching.in_flight.len()
    }

    /// How many of a route's workers are busy: the batches with a claim in flight.
    fn busy_workers(&self, route: usize) -> usize {
        let batches: HashSet<u64> =
            self.dispatching.in_flight.values().filter(|claim| claim.route == route).map(|claim| claim.batch).collect();
        batches.len()
    }

    /// What each connector's attempts did since the engine started, by connector name.
    pub fn connector_stats(&self) -> &BTreeMap<String, ConnectorStats> {
        &self.dispatching.connectors
    }

    /// The claims in flight whose deadline has passed at `now`, as failed attempts to record
    /// (`record_performed`): a worker that answers later is not listened to.
    pub fn timed_out(&self, now: Timestamp) -> Vec<Performed> {
        let mut late: Vec<Performed> = self
            .dispatching
            .in_flight
            .values()
            .filter(|claim| claim.deadline <= now)
            .map(|claim| Performed {
                key: claim.key.clone(),
                attempt: claim.attempt,
                started: claim.claimed_at,
                ended: now,
                outcome: Outcome::Retryable {
                    error: format!(
                        "no answer from the connector `{}` within {} s",
                        claim.connector,
                        claim.deadline.since(claim.claimed_at).ms() / 1000
                    ),
                    retry_after: None,
                },
                timed_out: true,
            })
            .collect();
        late.sort_by(|a, b| a.key.cmp(&b.key));
        late
    }

    fn claim_unit(
        &mut self,
        now: Timestamp,
        limit: usize,
        connectors: &mut Connectors,
        slots: Slots,
    ) -> Result<Claimed, Error> {
        let ReadyEffects { entries: ready, unreadable } = self.store.ready_effects(now, limit)?;
        if ready.is_empty() && unreadable.is_empty() {
            return Ok(Claimed::default());
        }
        // What an effect does outside cannot be taken back: the commit that queued it must
        // survive a crash first, or a restart could queue something else in its place.
        self.store.make_durable()?;
        // Everything this dispatch changes — contacts, scores, runs, the events it causes.
        let mut unit = Unit::default();
        let mut thresholds: Vec<Incoming> = Vec::new();
        // Subjects an internal effect changed, with the effect: segments are re-evaluated.
        let mut touched: Vec<(String, String)> = Vec::new();
        // Phase 1, in outbox order: internal effects are applied, messages rendered; what
        // leaves Flowmark becomes a job for its connector.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; ready.len()];
        let mut jobs: Vec<Vec<Outgoing>> = vec![Vec::new(); connectors.count()];
        // The run each effect's result goes back to (none for deliveries and gone runs).
        let mut owners: Vec<Option<RunRef<'_>>> = Vec::with_capacity(ready.len());
        let mut quarantined: Vec<(String, Attempt, u32)> = Vec::new();
        for (index, entry) in ready.iter().enumerate() {
            if entry.lost >= LOST_ATTEMPTS_MAX {
                let reason = format!(
                    "quarantined: {} attempts in a row ended with no outcome (the server stopped or died while \
                     performing it); once the cause is fixed, requeue it (POST /api/outbox/requeue)",
                    entry.lost
                );
                tracing::error!(effect = %entry.key, run = entry.run.0, lost = entry.lost,
                    "effect quarantined: its attempts keep ending with no outcome");
                self.stats.effects_quarantined += 1;
                quarantined.push((entry.key.clone(), Attempt::Quarantined { reason }, entry.attempts));
                owners.push(None);
                continue;
            }
            let kind = match &entry.effect {
                OutboxEffect::Deliver(delivery) => {
                    // A notification's delivery: to its person, whatever became of the run.
                    let (route, message, to) = people::delivery_message(delivery);
                    jobs[connectors.route_of(route)].push((index, Some(message), to, None));
                    owners.push(None);
                    continue;
                }
                OutboxEffect::Run(kind) => kind,
            };
            let Some(run) = RunRef::owning(entry) else {
                outcomes[index] = Some(Outcome::Permanent { error: format!("run {} is gone", entry.run.0) });
                owners.push(None);
                continue;
            };
            let mut subject = self.subject_in(&mut unit, run.subject_id)?.0.clone();
            let asks = match kind {
                EffectKind::CreateTask { .. } | EffectKind::RequestApproval { .. } | EffectKind::Notify { .. } => {
                    self.recipients(run, &entry.key, &entry.step, kind, &subject, now)?
                }
                // A workflow's own `notify` step: rendered now, then told to its people by their
                // channels and digests, as the engine's own notices are.
                EffectKind::SendMessage { channel: Channel::Notify, context, .. } => {
                    let asked = match self.render(run, &entry.key, &entry.step, context, &subject)? {
                        Ok(Message::Notify { to, message }) => {
                            let notice = EffectKind::Notify { to, message, reason: NotifyReason::Message };
                            let asks = self.recipients(run, &entry.key, &entry.step, &notice, &subject, now)?;
                            if asks.is_empty() {
                                Err("notify: its `to` names no one in the directory".to_owned())
                            } else {
                                Ok(asks)
                            }
                        }
                        Ok(_) => Err(format!("step `{}` is not a notify step", entry.step)),
                        Err(error) => Err(error),
                    };
                    match asked {
                        Ok(asks) => asks,
                        Err(error) => {
                            outcomes[index] = Some(Outcome::Permanent { error });
                            owners.push(Some(run));
                            continue;
                        }
                    }
                }
                _ => Vec::new(),
            };
            if !asks.is_empty() {
                // One notification per person and effect: the first ask that names them (a
                // person both responsible and consulted hears of the task once, as assigned).
                let mut notified: Vec<&str> = Vec::new();
                for ask in &asks {
                    for person in &ask.people {
                        if notified.contains(&person.as_str()) {
                            continue;
                        }
                        self.notify_person(&mut unit, (&entry.key, run.id, &entry.step), person, ask, now);
                        notified.push(person.as_str());
                    }
                }
                let detail = format!("notified {}", notified.join(", "));
                outcomes[index] = Some(Outcome::Done { detail: Some(detail) });
                owners.push(Some(run));
                continue;
            }
            match kind {
                EffectKind::AdjustScore { model, change } => {
                    let (change, record, crossings) =
                        self.apply_score(run, &entry.step, model, *change, &mut subject, now);
                    unit.contact_changes.push((run.subject_id.to_owned(), change, None));
                    self.subject_in(&mut unit, run.subject_id)?.0 = subject;
                    touched.push((run.subject_id.to_owned(), entry.key.clone()));
                    unit.score_records.push(record);
                    thresholds.extend(crossings);
                    outcomes[index] = Some(Outcome::Done { detail: None });
                }
                EffectKind::UpdateSubject { set } => {
                    apply_update(&mut subject, set);
                    unit.contact_changes.push((run.subject_id.to_owned(), Value::Object(set.clone()), None));
                    self.subject_in(&mut unit, run.subject_id)?.0 = subject;
                    touched.push((run.subject_id.to_owned(), entry.key.clone()));
                    outcomes[index] = Some(Outcome::Done { detail: None });
                }
                EffectKind::StartRun { workflow, wait } => {
                    outcomes[index] = Some(self.start_subflow(run, entry, workflow, *wait, now, &mut unit)?);
                }
                EffectKind::EmitEvent { .. } => {
                    // Left over from a unit whose cascade went too deep: recorded here, in this
                    // dispatch's unit, with what it causes.
                    let effect =
                        Effect { key: entry.key.clone(), step: entry.step.as_str().into(), kind: kind.clone() };
                    let event = emitted_event(run.id, run.workflow_id, run.subject_id, &effect, now)
                        .expect("an EmitEvent effect makes an event");
                    let detail = super::ingest::emitted_detail(&event);
                    thresholds.push(Incoming::event(run.subject_id, event));
                    outcomes[index] = Some(Outcome::Done { detail: Some(detail) });
                }
                EffectKind::SendMessage { channel, transactional, context } => {
                    let refusal =
                        if *transactional { None } else { flowmark_core::engine::refusal(&subject, *channel) };
                    if let Some(error) = refusal {
                        outcomes[index] = Some(Outcome::Permanent { error });
                    } else {
                        match self.render(run, &entry.key, &entry.step, context, &subject)? {
                            Ok(message) => {
                                let guarded = (!*transactional).then_some(*channel);
                                jobs[connectors.route_of(Outbound::of_message(&message))].push((
                                    index,
                                    Some(message),
                                    run.subject_id.to_owned(),
                                    guarded,
                                ))
                            }
                            Err(error) => outcomes[index] = Some(Outcome::Permanent { error }),
                        }
                    }
                }
                EffectKind::CreateTask { .. }
                | EffectKind::RequestApproval { .. }
                | EffectKind::Notify { .. }
                | EffectKind::RecordConversion { .. } => {
                    jobs[connectors.route_of(Outbound::Other)].push((index, None, run.subject_id.to_owned(), None))
                }
            }
            owners.push(Some(run));
        }
        // Phase 2: each connector takes what its free workers and its rate admit.
        let mut attempts: Vec<(String, Attempt, u32)> = quarantined;
        let mut claims: Vec<Arc<Claim>> = Vec::new();
        let mut no_worker = 0;
        for (route, mut route_jobs) in jobs.into_iter().enumerate() {
            if route_jobs.is_empty() {
                continue;
            }
            // With workers, each free one takes a batch, performed in turn: one claim when
            // the peer is slow, more when it answers fast (`batch_size`), so a fast connector
            // is not held to one commit per effect.
            let per_worker = match slots {
                Slots::All => route_jobs.len(),
                Slots::Free => self.dispatching.batch_size(route),
            };
            if slots == Slots::Free {
                let workers = connectors.concurrency(route);
                let free = workers.saturating_sub(self.busy_workers(route));
                let latency_ms = self.dispatching.latency_ms.get(&route).copied();
                let held = route_jobs.drain((free * per_worker).min(route_jobs.len())..);
                for (place, (index, ..)) in held.enumerate() {
                    let hold_ms = no_worker_hold_ms(place, workers, latency_ms);
                    let hold = Attempt::Deferred { at: Timestamp(now.ms().saturating_add(hold_ms)) };
                    attempts.push((ready[index].key.clone(), hold, ready[index].attempts));
                    no_worker += 1;
                }
            }
            let admitted = connectors.admit(route, route_jobs.len(), now);
            for (job, at) in admitted.later {
                let entry = &ready[route_jobs[job].0];
                attempts.push((entry.key.clone(), Attempt::Deferred { at }, entry.attempts));
                self.stats.effects_deferred += 1;
                tracing::debug!(effect = %entry.key, until = %at, "effect held back by its connector's rate");
            }
            let taken = admitted.now.len();
            let workers = taken.div_ceil(per_worker.max(1)).max(1);
            let first_batch = self.dispatching.next_batch;
            self.dispatching.next_batch += workers as u64;
            let timeout = connectors.timeout(route);
            let retry_delays = connectors.connector(route).retry_delays_ms();
            for (job, (index, message, subject_id, guarded)) in route_jobs.drain(..taken).enumerate() {
                let entry = &ready[index];
                // Claims are dealt to the batches in turn; one waits for those before it in
                // its batch, and its deadline and lease say so.
                let ahead = (job / workers) as u64;
                let deadline = now.plus(flowmark_core::Duration(timeout.0 + ahead * TURN_ALLOWANCE_MS));
                let lease = Attempt::Claimed { until: Timestamp(deadline.ms().saturating_add(LEASE_MARGIN_MS)) };
                let guard = guarded.map(|channel| Guard {
                    suppressions: self.suppressions.clone(),
                    subject_id: subject_id.clone(),
                    channel,
                });
                let run = owners[index].map(|run| ClaimedRun {
                    id: run.id,
                    workflow_id: run.workflow_id.to_owned(),
                    version: run.version,
                });
                attempts.push((entry.key.clone(), lease, entry.attempts + 1));
                claims.push(Arc::new(Claim {
                    key: entry.key.clone(),
                    attempt: entry.attempts + 1,
                    route,
                    batch: first_batch + (job % workers) as u64,
                    connector: connectors.name(route).to_owned(),
                    effect: entry.effect.clone(),
                    message,
                    subject_id,
                    guard,
                    claimed_at: now,
                    deadline,
                    run,
                    retry_delays,
                }));
            }
        }
        // Phase 3, in outbox order: what was applied here is recorded, its results fed back
        // to the runs. A run this phase moved (a parent whose subflow could not start) takes
        // its later results as transitions too, so its history keeps outbox order.
        let mut moved: HashSet<RunId> = HashSet::new();
        // What this version cannot read stays in the outbox for the version that wrote it:
        // held back, loudly, never dropped or read as something else.
        let hold = Attempt::Deferred { at: Timestamp(now.ms().saturating_add(UNREADABLE_EFFECT_HOLD_MS)) };
        for effect in &unreadable {
            tracing::error!(effect = %effect.key, run = effect.run.0, error = %effect.error, attempts = effect.attempts,
                "an effect in the outbox cannot be read by this version; it is held, not performed");
            self.stats.effects_unreadable += 1;
        }
        for ((entry, outcome), owner) in ready.iter().zip(outcomes).zip(&owners) {
            let Some(outcome) = outcome else { continue };
            let attempt_number = entry.attempts + 1;
            let (attempt, final_result) = settle(outcome, None, &entry.key, attempt_number, now);
            self.count_attempt(&entry.key, &attempt, attempt_number);
            attempts.push((entry.key.clone(), attempt, attempt_number));
            let (Some((ok, detail)), Some(owner)) = (final_result, owner) else { continue };
            // The result goes back to the run, committed with the attempt. It only adds to the
            // run's history (`engine::effect_result`), so neither the run nor facts are read.
            let workflow = self.workflow(owner.workflow_id, Some(owner.version))?;
            if moved.contains(&owner.id) {
                let Some(run) = self.run_in(&unit, owner.id)? else { continue };
                let input = Input::EffectCompleted { key: entry.key.clone(), ok, detail };
                unit.push(handle(&workflow, run, &input, &Facts::empty(), now));
                continue;
            }
            unit.results.push((owner.id, effect_result(&workflow, owner.id, &entry.key, ok, detail, now)));
            // A subflow that could not start ends, for a parent waiting on it, as failed: the
            // parent moves on, so it reads its state and facts (its results come first in the
            // history this commit writes for it).
            let waited = matches!(entry.effect, OutboxEffect::Run(EffectKind::StartRun { wait: true, .. }));
            if waited && !ok {
                let Some(run) = self.run_in(&unit, owner.id)? else { continue };
                let known = unit.subjects.get(owner.subject_id);
                let facts = self.load_facts(owner.subject_id, known, now, &Needs::of(&workflow))?;
                let input = Input::SubflowEnded { step: entry.step.clone(), status: RunStatus::Failed };
                unit.push(handle(&workflow, run, &input, &facts.facts(&self.env), now));
                moved.insert(owner.id);
            }
        }
        // What the internal effects caused — thresholds crossed, segments entered or left —
        // is applied in this same unit, so it commits with the scores and traits that caused
        // it, or not at all.
        let mut caused = Vec::new();
        for threshold in thresholds {
            if unit.generate(&threshold.event) {
                caused.push(threshold);
            }
        }
        if !self.segments.is_empty() {
            for (subject_id, key) in touched {
                caused.extend(self.segment_edges(&mut unit, &subject_id, Change::Contact, &key, now)?);
            }
        }
        let held = unreadable.iter().map(|effect| (effect.key.as_str(), &hold));
        let recorded: Vec<(&str, &Attempt)> =
            attempts.iter().map(|(key, attempt, _)| (key.as_str(), attempt)).chain(held).collect();
        self.commit_unit(&mut unit, caused, &recorded, now)?;
        for claim in &claims {
            self.dispatching.in_flight.insert(claim.key.clone(), claim.clone());
        }
        Ok(Claimed { claims, read: ready.len() + unreadable.len(), held: no_worker })
    }

    /// Commits what claimed attempts gave, in one transaction: each attempt's outcome, and
    /// for a final one its result in its run's history, at the time the attempt ended. An
    /// outcome for an attempt no longer in flight (it timed out, or was claimed again) is
    /// dropped: its effect's fate was decided without it.
    pub fn record_performed(&mut self, performed: Vec<Performed>, now: Timestamp) -> Result<(), Error> {
        let mut unit = Unit::default();
        let mut outcomes: Vec<(String, u32, Attempt)> = Vec::with_capacity(performed.len());
        for done in performed {
            let current = self.dispatching.in_flight.get(&done.key).filter(|claim| claim.attempt == done.attempt);
            let Some(claim) = current.cloned() else {
                tracing::debug!(effect = %done.key, attempt = done.attempt, "an answer for an attempt no longer in flight is dropped");
                continue;
            };
            self.dispatching.in_flight.remove(&done.key);
            let took = done.ended.since(done.started).0;
            self.dispatching.observe(claim.route, took);
            let connectors = &mut self.dispatching.connectors;
            if !connectors.contains_key(&claim.connector) {
                connectors.insert(claim.connector.clone(), ConnectorStats::default());
            }
            let Some(stats) = connectors.get_mut(&claim.connector) else { continue };
            stats.attempts += 1;
            stats.timeouts += u64::from(done.timed_out);
            stats.latency_ms_sum += took;
            for (count, bound) in stats.latency_buckets.iter_mut().zip(ATTEMPT_BUCKETS_MS) {
                *count += u64::from(took <= bound);
            }
            let (attempt, final_result) =
                settle(done.outcome, claim.retry_delays, &claim.key, claim.attempt, done.ended);
            self.count_attempt(&claim.key, &attempt, claim.attempt);
            outcomes.push((claim.key.clone(), claim.attempt, attempt));
            let (Some((ok, detail)), Some(run)) = (final_result, &claim.run) else { continue };
            let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
            let timing = EffectTiming { started: done.started, ended: done.ended, attempt: claim.attempt };
            unit.results.push((run.id, timed_effect_result(&workflow, run.id, &claim.key, ok, detail, timing)));
        }
        if outcomes.is_empty() {
            return Ok(());
        }
        unit.outcomes = outcomes;
        self.store.begin()?;
        let committed = self.commit_unit(&mut unit, Vec::new(), &[], now);
        self.store.finish();
        committed
    }

    fn count_attempt(&mut self, key: &str, attempt: &Attempt, number: u32) {
        match attempt {
            Attempt::Done { .. } => {
                self.stats.effects_done += 1;
                tracing::debug!(effect = %key, "effect done");
            }
            Attempt::Retry { at, error } => {
                self.stats.effects_retried += 1;
                tracing::warn!(effect = %key, attempt = number, %error, retry_at = %at, "effect failed; will retry");
            }
            Attempt::Failed { error } => {
                self.stats.effects_failed += 1;
                tracing::error!(effect = %key, attempt = number, %error, "effect failed for good");
            }
            Attempt::Deferred { .. } | Attempt::Claimed { .. } | Attempt::Quarantined { .. } => {}
        }
    }

    /// Performs a `start_run` effect: a run of the named workflow (its latest version) for the
    /// same subject, started in this unit of work, so exactly once. Entry rules and pauses do
    /// not apply: a subflow is an explicit call. A waiting parent is recorded in the child,
    /// which reports its end to it.
    fn start_subflow(
        &mut self,
        parent: RunRef<'_>,
        entry: &OutboxEntry,
        name: &str,
        wait: bool,
        now: Timestamp,
        unit: &mut Unit,
    ) -> Result<Outcome, Error> {
        let workflow = match self.workflow(name, None) {
            Ok(workflow) => workflow,
            Err(Error::UnknownWorkflow(_)) => {
                return Ok(Outcome::Permanent { error: format!("there is no workflow `{name}` to start") });
            }
            Err(error) => return Err(error),
        };
        let id = self.allocate_run_id();
        let mut child = Run::new(id, &workflow, version_of(&self.compiled, &workflow), parent.subject_id, now);
        if wait {
            child.parent = Some(ParentRun { run: parent.id, step: entry.step.clone() });
        }
        let event = Event {
            id: format!("subflow:{}", entry.key),
            name: "Subflow Started".to_owned(),
            at: now,
            payload: serde_json::json!({
                "type": "subflow",
                "event": "Subflow Started",
                "parent": { "run": parent.id, "workflow": parent.workflow_id, "step": entry.step },
            })
            .into(),
        };
        let facts = self.load_facts(parent.subject_id, None, now, &Needs::of(&workflow))?;
        unit.push(handle(&workflow, child, &Input::Start { event: Some(event) }, &facts.facts(&self.env), now));
        self.stats.runs_started += 1;
        Ok(Outcome::Done { detail: Some(format!("run {}", id.0)) })
    }

    fn render(
        &mut self,
        run: RunRef<'_>,
        key: &str,
        step: &str,
        context: &RenderContext,
        subject: &Value,
    ) -> Result<Result<Message, String>, Error> {
        let workflow = self.workflow(run.workflow_id, Some(run.version))?;
        let mut message = render_step_message(&workflow, key, step, context, subject, &self.env);
        // Email whose step names no sender goes from the workspace's, when it has one.
        if let (Ok(Message::Email { from: from @ None, .. }), Some(sender)) = (&mut message, self.settings.email_from())
        {
            *from = Some(sender.to_owned());
        }
        Ok(message.map_err(|e| e.to_string()))
    }
}

/// What an attempt's outcome means for its effect: the attempt to record, and the result
/// to give its run when the outcome is final (`(ok, detail)`). A retryable failure is tried
/// again on the connector's schedule, or `retry`'s, until it is spent.
fn settle(
    outcome: Outcome,
    schedule: Option<&'static [u64]>,
    key: &str,
    attempt_number: u32,
    now: Timestamp,
) -> (Attempt, Option<(bool, Option<String>)>) {
    match outcome {
        Outcome::Done { detail } => (Attempt::Done { detail: detail.clone() }, Some((true, detail))),
        Outcome::Permanent { error } => (Attempt::Failed { error: error.clone() }, Some((false, Some(error)))),
        Outcome::Retryable { error, retry_after } => {
            let next = match schedule {
                Some(delays) => retry::next_attempt_on(delays, key, attempt_number, now, retry_after),
                None => retry::next_attempt_at(key, attempt_number, now, retry_after),
            };
            match next {
                Some(at) => (Attempt::Retry { at, error }, None),
                None => {
                    let error = format!("gave up after {attempt_number} attempts: {error}");
                    (Attempt::Failed { error: error.clone() }, Some((false, Some(error))))
                }
            }
        }
    }
}

/// Performs `claims` through `connector` at `now`, at most `concurrency` at a time, on
/// scoped threads when that is more than one (the dispatcher's on-the-spot mode).
fn perform_all(connector: &dyn Connector, concurrency: usize, now: Timestamp, claims: &[&Claim]) -> Vec<Performed> {
    let perform = |claim: &Claim| Performed {
        key: claim.key.clone(),
        attempt: claim.attempt,
        started: now,
        ended: now,
        outcome: claim.perform(connector, now),
        timed_out: false,
    };
    let workers = concurrency.min(claims.len());
    if workers <= 1 {
        return claims.iter().map(|claim| perform(claim)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Performed)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(claim) = claims.get(at) else { return done };
                        done.push((at, perform(claim)));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    done.sort_by_key(|(at, _)| *at);
    done.into_iter().map(|(_, performed)| performed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_waits_for_about_its_turn_in_a_slow_connectors_line() {
        // Unknown latency: the minimum hold, whatever the place.
        assert_eq!(no_worker_hold_ms(500, 8, None), NO_WORKER_HOLD_MS);
        // A fast peer: the minimum too.
        assert_eq!(no_worker_hold_ms(100, 8, Some(2.0)), NO_WORKER_HOLD_MS);
        // 8 workers, 1 s per attempt: the first 8 wait a second, the next 8 two, …
        assert_eq!(no_worker_hold_ms(0, 8, Some(1000.0)), 1_000);
        assert_eq!(no_worker_hold_ms(7, 8, Some(1000.0)), 1_000);
        assert_eq!(no_worker_hold_ms(8, 8, Some(1000.0)), 2_000);
        assert_eq!(no_worker_hold_ms(80, 8, Some(1000.0)), 11_000);
        // However long the line, at most a minute; no workers at all counts as one.
        assert_eq!(no_worker_hold_ms(100_000, 8, Some(1000.0)), NO_WORKER_HOLD_MAX_MS);
        assert_eq!(no_worker_hold_ms(3, 0, Some(1000.0)), 4_000);
    }
}
