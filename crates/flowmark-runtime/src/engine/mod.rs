//! The engine: one writer over one store, turning events, timers and effect outcomes into
//! committed transitions, and effects into connector calls.
//!
//! Each public operation loads the facts it needs, calls `engine::handle` for every run the
//! input concerns, and commits all resulting transitions in one batch. Dispatch happens only
//! from the outbox, after the commit that recorded the effect; an effect's result, which
//! only adds to its run's history, is recorded as the entry `engine::effect_result` makes,
//! without loading the run.
//!
//! Invariant: no transition is lost between `handle` and the store: either the whole batch
//! commits or the operation returns the store's error and nothing changed.
//!
//! The engine is one type with a room per capability, each an `impl` block in its own file
//! over the shared unit of work (`ingest::Unit`, `commit_unit`): `ingest` (events, identity,
//! segments' edges), `dispatch` (the outbox), `schedules` (schedule triggers), `people`
//! (work items, comments, notifications), `admin` (accounts, sessions, imports the server
//! asks for); this file keeps deployment, hand starts, timers, delivered inputs and the
//! follow-ups of runs that end.

use std::collections::HashMap;
use std::sync::Arc;

use flowmark_core::diagnostic::{Diagnostic, DiagnosticJson, Span};
use flowmark_core::engine::{
    Event, Facts, HistoryKind, Input, ParentRun, Run, RunId, RunStatus, Sent, TimerId, Transition, handle, timer_reach,
};
pub use flowmark_core::engine::{SUPPRESSED_REASON_TRAIT, UNSUBSCRIBED_TRAIT};
use flowmark_core::limits::{RECENT_EVENTS_COUNT_MAX, WAIT_LOOKBACK_MS};
use flowmark_core::model::RunOutcomeFilter;
use flowmark_core::model::ScoreChange;
use flowmark_core::model::{Action, Entry, StepKind, Trigger, Wait, Workflow};
use flowmark_core::{Severity, Source, Timestamp, compile};
use flowmark_store::{Batch, KeyedStart, RunFilter, ScoreRecord, Store, WorkChange, WorkflowStatus};

use crate::scoring::{Models, ModelsSource};
use serde_json::{Value, json};

use crate::directory::{DIRECTORY_SETTING, Directory};
use crate::own_address::OwnAddresses;
use crate::segments::Segments;
use crate::suppressions::Suppressions;

mod admin;
mod dispatch;
mod erase;
mod ingest;
mod people;
mod schedules;

pub use dispatch::{
    ATTEMPT_BUCKETS_MS, Claim, Claimed, ConnectorStats, LEASE_MARGIN_MS, NO_WORKER_HOLD_MS, Performed, Slots,
    UNREADABLE_EFFECT_HOLD_MS,
};
pub use ingest::{SEGMENT_SWEEP_EVERY_MS, SEGMENT_SWEEP_PAGE_COUNT, SEGMENTS_SETTING};
use ingest::{Sweep, Unit};
pub use people::{Attachment, WorkAction, WorkRefusal};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] flowmark_store::Error),
    #[error("there is no workflow `{0}`")]
    UnknownWorkflow(String),
    #[error("workflow `{id}` version {version} is stored but no longer compiles")]
    StoredWorkflowInvalid { id: String, version: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the workflow has {} error(s)", .0.iter().filter(|d| d.severity == Severity::Error).count())]
    Invalid(Vec<DiagnosticJson>),
    #[error(transparent)]
    Store(#[from] flowmark_store::Error),
}

/// One event to ingest, about a subject, with the traits to merge into the subject first
/// (an `identify` call's) and the time zone it gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub subject_id: String,
    pub event: Event,
    pub traits: Option<(Value, Option<String>)>,
    /// The subject is only an anonymous id: it is resolved through merged identities first.
    pub anonymous: bool,
    /// An identity to merge into the subject first (`alias`'s `previousId`, or the
    /// `anonymousId` of an `identify` that has both).
    pub merge_from: Option<String>,
}

impl Incoming {
    pub fn event(subject_id: &str, event: Event) -> Incoming {
        Incoming { subject_id: subject_id.to_owned(), event, traits: None, anonymous: false, merge_from: None }
    }

    /// An event with traits to merge into its subject first.
    pub fn with_traits(subject_id: &str, event: Event, traits: Value, timezone: Option<String>) -> Incoming {
        Incoming { traits: Some((traits, timezone)), ..Incoming::event(subject_id, event) }
    }
}

/// What ingesting one event did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingested {
    /// The `messageId` was seen before; nothing was applied.
    pub duplicate: bool,
    /// The event names a contact who was erased: it was dropped, nothing was applied.
    pub erased: bool,
    pub runs_started: Vec<RunId>,
    pub runs_advanced: Vec<RunId>,
}

/// A run to start by hand (the API), with the data it starts on: `event` is readable as
/// `event.name` / `event.properties` in the workflow, as if an event had triggered it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    pub workflow_id: String,
    pub subject_id: String,
    /// The event's name and properties.
    pub event: Option<(String, Value)>,
    /// A key the caller sends with every retry of the same start (`Idempotency-Key`): the
    /// first start with it starts the run, the others answer that run. Kept per workflow.
    pub idempotency_key: Option<String>,
}

/// A fingerprint of what a hand start asks for besides its subject, which is compared on its
/// own (through merged identities): the event's name and properties, hashed from JSON with
/// every object's keys in order, so a retry that sends them in another order is the same
/// start. Stored with the start's idempotency key.
fn start_fingerprint(event: Option<&(String, Value)>) -> String {
    use sha2::Digest;
    let mut request = json!(event);
    request.sort_all_objects();
    let digest = sha2::Sha256::digest(request.to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What asking for a run to start did.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// The run started; where it stands once the commit that started it is durable (it may
    /// have ended already: a workflow without waits runs to its end in that commit).
    Run {
        id: RunId,
        status: RunStatus,
        outputs: Value,
        /// An earlier start with the same idempotency key started this run; this one started
        /// nothing, and `status` and `outputs` are where that run stands now.
        replayed: bool,
    },
    UnknownWorkflow,
    Paused,
    /// The workflow's entry rule does not let this subject start again now.
    EntryRefused,
    /// The idempotency key started `run` for another subject, or with another event: a key
    /// names one start, and a retry repeats it as it was.
    KeyReused {
        run: RunId,
    },
}

/// Counters of what the engine did since it started, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events_ingested: u64,
    pub events_duplicate: u64,
    /// Events dropped because they name an erased contact.
    pub events_erased: u64,
    pub runs_started: u64,
    pub schedules_fired: u64,
    pub transitions_committed: u64,
    pub timers_fired: u64,
    /// How late timers fired (now − due time), cumulative counts per `LATENESS_BUCKETS_MS`
    /// upper bound, then the total count and sum.
    pub timer_lateness_buckets: [u64; LATENESS_BUCKETS_MS.len()],
    pub timer_lateness_ms_sum: u64,
    pub effects_done: u64,
    pub effects_retried: u64,
    pub effects_failed: u64,
    /// Effects a connector's rate limit held back for later (not attempts).
    pub effects_deferred: u64,
    /// Times an effect this version cannot read (a row written by a newer Flowmark) was held
    /// back; a held effect counts once per hold.
    pub effects_unreadable: u64,
    /// Effects set aside because their attempts kept ending with no outcome
    /// (`LOST_ATTEMPTS_MAX`).
    pub effects_quarantined: u64,
}

/// Contacts a schedule trigger starts runs for per round (and so per commit) when its
/// workflow's subject is a contact: a firing reaches every contact a page at a time.
pub const SCHEDULE_PAGE_COUNT: usize = 1000;

/// Rounds of follow-ups one unit of work runs: a run that ends resumes its parent (subflows)
/// and starts the workflows its end triggers, which may end and go on in turn. A chain of
/// workflows that trigger each other is cut after this many rounds, with a warning.
pub const CASCADE_DEPTH_MAX: usize = 8;

/// The name of the event a schedule trigger starts its runs with.
pub const SCHEDULED_EVENT: &str = "Scheduled";

/// Upper bounds of the timer-lateness histogram, in ms.
pub const LATENESS_BUCKETS_MS: [u64; 6] = [10, 100, 250, 1_000, 10_000, 60_000];

pub struct Engine<S: Store> {
    store: S,
    stats: Stats,
    /// Compiled versions, by (workflow id, version): versions are immutable, so never stale.
    compiled: HashMap<(String, u32), Arc<Workflow>>,
    /// Workspace variables, readable as `env` in templates: `base_env` with the settings'
    /// variables over it.
    env: Value,
    /// What the engine was started with, under the settings' variables.
    base_env: Value,
    /// The workspace's settings (sender, variables).
    settings: crate::settings::Settings,
    next_run_id: u64,
    /// The workspace's score models (the `score_models` setting).
    scoring: Models,
    /// The workspace's segments (the `segments` setting).
    segments: Segments,
    sweep: Sweep,
    /// The workspace's people, teams and role bindings (the `directory` setting).
    directory: Directory,
    /// Where links in notifications point (no trailing slash); empty for relative links.
    public_url: String,
    /// The effects in flight at the workers, and what their connectors' attempts did.
    dispatching: dispatch::Dispatching,
    /// Suppressions committed lately, which the workers check before a message leaves.
    suppressions: Suppressions,
    /// Where this server takes events in (none known by default): webhooks there are refused.
    own_addresses: OwnAddresses,
    /// Contacts erased: events naming them are dropped.
    tombstones: erase::Tombstones,
}

/// The parts of a run that performing its effects reads: never its state, so the dispatcher
/// takes them from the outbox row (`OutboxEntry::owner`) instead of loading the run.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunRef<'a> {
    pub id: RunId,
    pub workflow_id: &'a str,
    pub version: u32,
    pub subject_id: &'a str,
}

impl<'a> RunRef<'a> {
    pub fn of(run: &'a Run) -> RunRef<'a> {
        RunRef { id: run.id, workflow_id: &run.workflow_id, version: run.version, subject_id: &run.subject_id }
    }

    /// The run of an outbox entry, when it still exists.
    fn owning(entry: &'a flowmark_store::OutboxEntry) -> Option<RunRef<'a>> {
        entry.owner.as_ref().map(|owner| RunRef {
            id: entry.run,
            workflow_id: &owner.workflow_id,
            version: owner.version,
            subject_id: &owner.subject_id,
        })
    }
}

/// The facts about one subject, owned, for one input.
struct LoadedFacts {
    subject: Value,
    timezone: Option<chrono_tz::Tz>,
    recent: Vec<Event>,
    sent: Vec<Sent>,
}

impl LoadedFacts {
    fn facts<'a>(&'a self, env: &'a Value) -> Facts<'a> {
        Facts { subject: &self.subject, timezone: self.timezone, recent_events: &self.recent, sent: &self.sent, env }
    }
}

/// Which of the costlier facts the workflows an input concerns read.
#[derive(Debug, Clone, Default)]
struct Needs {
    /// The events their waits listen for: the recent events loaded are those alone.
    recent_events: Vec<String>,
    sent_messages: bool,
}

impl Needs {
    fn of(workflow: &Workflow) -> Needs {
        Needs {
            recent_events: workflow.waited_events().map(str::to_owned).collect(),
            sent_messages: workflow.reads_sent_messages(),
        }
    }

    /// What `run` can read when `timer` fires: the events of the waits the timer can lead to,
    /// and sent messages if it can lead to a message its workflow caps (a timeout that ends
    /// the run needs neither).
    fn after_timer(workflow: &Workflow, run: &Run, timer: TimerId) -> Needs {
        let reach = timer_reach(workflow, run, timer);
        let mut needs = Needs::default();
        for (step, _) in workflow.steps.iter().zip(&reach).filter(|(_, reached)| **reached) {
            match &step.kind {
                StepKind::Wait(Wait::Event { name, .. }) if !needs.recent_events.contains(name) => {
                    needs.recent_events.push(name.clone());
                }
                StepKind::Action(action) => {
                    let channel = action.channel();
                    needs.sent_messages |= workflow.caps.iter().any(|cap| Some(cap.channel) == channel);
                }
                _ => {}
            }
        }
        needs
    }

    fn or(mut self, other: Needs) -> Needs {
        for name in other.recent_events {
            if !self.recent_events.contains(&name) {
                self.recent_events.push(name);
            }
        }
        self.sent_messages |= other.sent_messages;
        self
    }
}

/// How long a hand start's idempotency key is kept: a retry within it answers the run the key
/// started; after it, the same key starts a new run.
pub const START_KEY_RETENTION_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// How far back sent messages are loaded for frequency caps: the longest cap window allowed.
const CAP_WINDOW_MS_MAX: u64 = 90 * 24 * 60 * 60 * 1000;

impl<S: Store> Engine<S> {
    pub fn new(store: S, env: Value) -> Result<Engine<S>, Error> {
        let next_run_id = store.next_run_id()?.0;
        let scoring = load_document(&store, SCORE_MODELS_SETTING, Models::compile)?;
        let segments = load_document(&store, SEGMENTS_SETTING, Segments::compile)?;
        let directory = load_document(&store, DIRECTORY_SETTING, Directory::compile)?;
        let tombstones = erase::Tombstones::load(&store)?;
        let settings = load_document(&store, crate::settings::WORKSPACE_SETTING, crate::settings::Settings::compile)?;
        Ok(Engine {
            store,
            stats: Stats::default(),
            compiled: HashMap::new(),
            env: settings.env(&env),
            base_env: env,
            settings,
            next_run_id,
            scoring,
            segments,
            sweep: Sweep::default(),
            directory,
            public_url: String::new(),
            dispatching: dispatch::Dispatching::default(),
            suppressions: Suppressions::default(),
            own_addresses: OwnAddresses::default(),
            tombstones,
        })
    }

    /// Decays the scores in a subject's data to `now`, by the workspace's models.
    pub fn decay_scores(&self, subject: &mut Value, now: Timestamp) {
        self.scoring.decay_scores(subject, now);
    }

    /// The workspace's score models, as written.
    pub fn score_models(&self) -> Option<&ModelsSource> {
        self.scoring.source.as_ref()
    }

    /// Replaces the workspace's score models, after checking them (every problem is
    /// returned). They apply to events ingested from now on.
    pub fn set_score_models(&mut self, source: ModelsSource, now: Timestamp) -> Result<Result<(), Vec<String>>, Error> {
        Ok(self.store_document(SCORE_MODELS_SETTING, source, Models::compile, now)?.map(|models| self.scoring = models))
    }

    /// The workspace's settings, as written.
    pub fn settings(&self) -> Option<&crate::settings::SettingsSource> {
        self.settings.source.as_ref()
    }

    /// Replaces the workspace's settings, after checking them (every problem is returned):
    /// the sender and variables apply to what is rendered from now on.
    pub fn set_settings(
        &mut self,
        source: crate::settings::SettingsSource,
        now: Timestamp,
    ) -> Result<Result<(), Vec<String>>, Error> {
        let stored =
            self.store_document(crate::settings::WORKSPACE_SETTING, source, crate::settings::Settings::compile, now)?;
        Ok(stored.map(|settings| {
            self.env = settings.env(&self.base_env);
            self.settings = settings;
        }))
    }

    /// Checks a workspace document with `compile` and, when it has no problem, stores it as
    /// setting `key`; returns it compiled, or every problem (then nothing is stored).
    fn store_document<Src: serde::Serialize, T>(
        &mut self,
        key: &str,
        source: Src,
        compile: fn(Src) -> Result<T, Vec<String>>,
        now: Timestamp,
    ) -> Result<Result<T, Vec<String>>, Error> {
        let text = serde_json::to_string(&source).map_err(|e| flowmark_store::Error::Corrupt(e.to_string()))?;
        let compiled = match compile(source) {
            Ok(compiled) => compiled,
            Err(errors) => return Ok(Err(errors)),
        };
        self.store.write(&Batch { settings: vec![(key, text.as_str())], ..Batch::default() }, now)?;
        Ok(Ok(compiled))
    }

    /// The suppressions this engine commits, as the workers that perform its effects read
    /// them (every clone is the same set).
    pub fn suppressions(&self) -> Suppressions {
        self.suppressions.clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back (what a restart on the same store starts from).
    pub fn into_store(self) -> S {
        self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Validates `source` and stores it as the workflow's next version, unless it is the same
    /// as the latest (then that version is returned). `name` is what the diagnostics call the
    /// file.
    pub fn deploy(&mut self, name: &str, source: &str, now: Timestamp) -> Result<(String, u32), DeployError> {
        let source_file = Source::new(name, source);
        let compiled = compile(&source_file);
        let Some(workflow) = compiled.workflow else {
            return Err(DeployError::Invalid(compiled.diagnostics.iter().map(|d| d.to_json(&source_file)).collect()));
        };
        let calls_itself = self.calls_to_self(&workflow, source);
        if !calls_itself.is_empty() {
            return Err(DeployError::Invalid(
                compiled.diagnostics.iter().chain(&calls_itself).map(|d| d.to_json(&source_file)).collect(),
            ));
        }
        // Uploading the same source again is not a new version.
        if let Some((latest, stored)) = self.store.workflow_source(&workflow.id, None)?
            && stored == source
        {
            return Ok((workflow.id.clone(), latest));
        }
        let version = self.store.put_workflow(&workflow.id, source, now)?;
        let id = workflow.id.clone();
        self.compiled.insert((id.clone(), version), Arc::new(workflow));
        self.sync_schedules(&id, now).map_err(|e| match e {
            Error::Store(e) => DeployError::Store(e),
            other => DeployError::Store(flowmark_store::Error::Corrupt(other.to_string())),
        })?;
        Ok((id, version))
    }

    /// Where this server takes events in, so no workflow is deployed that calls it over HTTP.
    pub fn set_own_addresses(&mut self, own: OwnAddresses) {
        self.own_addresses = own;
    }

    /// An error for each webhook of `workflow` to this server's own ingestion, located at its
    /// URL in `source`.
    fn calls_to_self(&self, workflow: &Workflow, source: &str) -> Vec<Diagnostic> {
        let mut found = Vec::new();
        for step in &workflow.steps {
            let StepKind::Action(Action::Webhook(webhook)) = &step.kind else { continue };
            let url = webhook.url.source();
            if !self.own_addresses.is_own_ingestion(url) {
                continue;
            }
            let span = source.find(url).map_or(Span { offset: 0, len: 0 }, |offset| Span { offset, len: url.len() });
            found.push(
                Diagnostic::error(
                    "flowmark::webhook-to-self",
                    span,
                    format!("step `{}` calls this Flowmark's own ingestion over HTTP", step.id),
                )
                .label("this is Flowmark itself")
                .help(
                    "record the event with `emit: { event: \"…\", properties: { … } }` instead: it starts \
                     workflows, satisfies waits and moves scores in the same unit of work, with no request \
                     to time out or retry",
                ),
            );
        }
        found
    }

    /// A stored version, compiled (cached).
    pub fn workflow(&mut self, id: &str, version: Option<u32>) -> Result<Arc<Workflow>, Error> {
        if let Some(v) = version
            && let Some(w) = self.compiled.get(&(id.to_owned(), v))
        {
            return Ok(w.clone());
        }
        let (version, source) =
            self.store.workflow_source(id, version)?.ok_or_else(|| Error::UnknownWorkflow(id.to_owned()))?;
        if let Some(w) = self.compiled.get(&(id.to_owned(), version)) {
            return Ok(w.clone());
        }
        let workflow = compile(&Source::new(id, source))
            .workflow
            .ok_or_else(|| Error::StoredWorkflowInvalid { id: id.to_owned(), version })?;
        let workflow = Arc::new(workflow);
        self.compiled.insert((id.to_owned(), version), workflow.clone());
        Ok(workflow)
    }

    fn active_workflows(&mut self) -> Result<Vec<Arc<Workflow>>, Error> {
        let summaries = self.store.workflows()?;
        let mut active = Vec::new();
        for summary in summaries.into_iter().filter(|s| s.status == WorkflowStatus::Active) {
            active.push(self.workflow(&summary.id, Some(summary.latest_version))?);
        }
        Ok(active)
    }

    /// Loads what `handle` may read about a subject; recent events and sent messages only
    /// when `needs` says a workflow involved reads them (most inputs need neither). `known`
    /// is the subject's data and time zone as a unit of work has them, newer than the store's
    /// (then the contact is not read).
    fn load_facts(
        &self,
        subject_id: &str,
        known: Option<&(Value, Option<String>)>,
        now: Timestamp,
        needs: &Needs,
    ) -> Result<LoadedFacts, Error> {
        let (mut subject, timezone) = match known {
            Some((data, zone)) => (data.clone(), zone.as_deref().and_then(|tz| tz.parse().ok())),
            None => {
                let contact = self.store.contact(subject_id)?;
                let timezone = contact.as_ref().and_then(|c| c.timezone.as_deref()).and_then(|tz| tz.parse().ok());
                (contact.map_or(Value::Object(Default::default()), |c| c.traits), timezone)
            }
        };
        self.scoring.decay_scores(&mut subject, now);
        let recent = if !needs.recent_events.is_empty() {
            let since = Timestamp(now.ms() - WAIT_LOOKBACK_MS as i64);
            self.store.events_named(subject_id, &needs.recent_events, since, RECENT_EVENTS_COUNT_MAX)?
        } else {
            Vec::new()
        };
        let sent = if needs.sent_messages {
            self.store.sent_messages(subject_id, Timestamp(now.ms() - CAP_WINDOW_MS_MAX as i64))?
        } else {
            Vec::new()
        };
        Ok(LoadedFacts { subject, timezone, recent, sent })
    }

    fn allocate_run_id(&mut self) -> RunId {
        let id = RunId(self.next_run_id);
        self.next_run_id += 1;
        id
    }

    /// May `subject_id` start `workflow` now, by its entry rule? `batch` holds runs this same
    /// batch already started or changed, newer than the store's; it is only read when the
    /// rule needs the subject's latest run.
    fn may_enter<'r>(
        &self,
        workflow: &Workflow,
        subject_id: &str,
        now: Timestamp,
        batch: impl IntoIterator<Item = &'r Run>,
    ) -> Result<bool, Error> {
        if workflow.entry == Entry::Always {
            // Nothing to look up: every start is let in.
            return Ok(true);
        }
        let in_batch = batch
            .into_iter()
            .filter(|r| r.workflow_id == workflow.id && r.subject_id == subject_id)
            .max_by_key(|r| r.id);
        let latest = match in_batch {
            Some(run) => Some(run.clone()),
            None => self.store.latest_run(&workflow.id, subject_id)?,
        };
        Ok(match (workflow.entry, latest) {
            (_, None) | (Entry::Always, _) => true,
            (Entry::Never, Some(_)) => false,
            (Entry::After(_), Some(run)) if run.is_active() => false,
            (Entry::After(cooldown), Some(run)) => run.ended_at.is_some_and(|ended| now.since(ended) >= cooldown),
        })
    }

    /// Starts a run of a workflow for a subject by hand (API, UI, another workflow), subject
    /// to the entry rule. `None` when the entry rule refuses or the workflow is paused.
    pub fn start(&mut self, workflow_id: &str, subject_id: &str, now: Timestamp) -> Result<Option<RunId>, Error> {
        let request = StartRequest {
            workflow_id: workflow_id.to_owned(),
            subject_id: subject_id.to_owned(),
            event: None,
            idempotency_key: None,
        };
        match self.start_many(vec![request], now)?.pop() {
            Some(Started::Run { id, .. }) => Ok(Some(id)),
            Some(Started::UnknownWorkflow) => Err(Error::UnknownWorkflow(workflow_id.to_owned())),
            _ => Ok(None),
        }
    }

    /// Starts runs by hand, all in one commit (concurrent API calls share an fsync), and
    /// answers for each in order. Each run goes as far as it can before the commit: to its
    /// first wait, task or approval, or to its end.
    pub fn start_many(&mut self, requests: Vec<StartRequest>, now: Timestamp) -> Result<Vec<Started>, Error> {
        self.store.begin()?;
        let result = self.start_unit(requests, now);
        self.store.finish();
        result
    }

    fn start_unit(&mut self, requests: Vec<StartRequest>, now: Timestamp) -> Result<Vec<Started>, Error> {
        let mut unit = Unit::default();
        let summaries = self.store.workflows()?;
        let mut answers = Vec::with_capacity(requests.len());
        // Idempotency keys started in this unit, not yet in the store.
        let mut keyed: HashMap<(String, String), KeyedStart> = HashMap::new();
        for StartRequest { workflow_id, subject_id, event, idempotency_key } in requests {
            let Some(summary) = summaries.iter().find(|s| s.id == workflow_id) else {
                answers.push(Started::UnknownWorkflow);
                continue;
            };
            let fingerprint = idempotency_key.as_ref().map(|_| start_fingerprint(event.as_ref()));
            if let Some(key) = &idempotency_key {
                let earlier = match keyed.get(&(workflow_id.clone(), key.clone())) {
                    Some(keyed) => Some(keyed.clone()),
                    None => self.store.start_key(&workflow_id, key)?,
                };
                if let Some(KeyedStart { run: id, request }) = earlier {
                    let subject_of = self.run_in(&unit, id)?.map(|run| run.subject_id);
                    // The run's subject may have been merged into another id since (`alias`).
                    let canonical = self.store.canonical_id(&subject_id)?;
                    let same = |of: &str| of == subject_id || canonical.as_deref() == Some(of);
                    // Keys stored before fingerprints were are compared by subject only.
                    let same_request = request.is_none() || request == fingerprint;
                    answers.push(if subject_of.as_deref().is_some_and(same) && same_request {
                        // Answered below, from the run's latest state.
                        Started::Run { id, status: RunStatus::Active, outputs: Value::Null, replayed: true }
                    } else {
                        Started::KeyReused { run: id }
                    });
                    continue;
                }
            }
            if summary.status != WorkflowStatus::Active {
                answers.push(Started::Paused);
                continue;
            }
            let workflow = self.workflow(&workflow_id, Some(summary.latest_version))?;
            if !self.may_enter(&workflow, &subject_id, now, unit.runs_of(&subject_id))? {
                answers.push(Started::EntryRefused);
                continue;
            }
            let facts = self.load_facts(&subject_id, unit.subjects.get(&subject_id), now, &Needs::of(&workflow))?;
            let id = self.allocate_run_id();
            let event = event.map(|(name, properties)| Event {
                id: format!("start-{}", id.0),
                payload: Arc::new(json!({ "type": "track", "event": name, "properties": properties })),
                name,
                at: now,
            });
            let run = Run::new(id, &workflow, version_of(&self.compiled, &workflow), &subject_id, now);
            unit.push(handle(&workflow, run, &Input::Start { event }, &facts.facts(&self.env), now));
            if let (Some(key), Some(fingerprint)) = (idempotency_key, fingerprint) {
                keyed.insert(
                    (workflow_id.clone(), key.clone()),
                    KeyedStart { run: id, request: Some(fingerprint.clone()) },
                );
                unit.start_keys.push((workflow_id, key, id, fingerprint));
            }
            answers.push(Started::Run { id, status: RunStatus::Active, outputs: Value::Null, replayed: false });
        }
        self.commit_unit(&mut unit, Vec::new(), &[], now)?;
        self.stats.runs_started +=
            answers.iter().filter(|a| matches!(a, Started::Run { replayed: false, .. })).count() as u64;
        // Where each run stands after everything the commit carried (its end's follow-ups too).
        for answer in &mut answers {
            let Started::Run { id, status, outputs, .. } = answer else { continue };
            let latest = match unit.transitions.iter().rev().find(|t| t.run.id == *id) {
                Some(t) => Some(std::borrow::Cow::Borrowed(&t.run)),
                None => self.store.run(*id)?.map(std::borrow::Cow::Owned),
            };
            if let Some(run) = latest {
                *status = run.status;
                outputs.clone_from(&run.outputs);
            }
        }
        Ok(answers)
    }

    /// Forgets the idempotency keys of hand starts older than `START_KEY_RETENTION_MS`, up to
    /// `limit` of them; returns how many went.
    pub fn forget_old_start_keys(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        let before = Timestamp(now.ms() - START_KEY_RETENTION_MS as i64);
        Ok(self.store.forget_start_keys(before, limit)?)
    }

    /// Delivers an input to one run (a task completed, an approval decided, a cancel).
    pub fn deliver(&mut self, run_id: RunId, input: &Input, now: Timestamp) -> Result<Option<Transition>, Error> {
        let Some(t) = self.decide(run_id, input, now)? else { return Ok(None) };
        self.commit_with_follow_ups(t.clone(), Vec::new(), now)?;
        Ok(Some(t))
    }

    /// What `input` does to a run, decided but not committed.
    fn decide(&mut self, run_id: RunId, input: &Input, now: Timestamp) -> Result<Option<Transition>, Error> {
        let Some(run) = self.store.run(run_id)? else { return Ok(None) };
        let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
        let facts = self.load_facts(&run.subject_id, None, now, &Needs::of(&workflow))?;
        Ok(Some(handle(&workflow, run, input, &facts.facts(&self.env), now)))
    }

    /// Commits a transition with what it causes, and `work` besides its own inbox changes.
    fn commit_with_follow_ups(&mut self, t: Transition, work: Vec<WorkChange>, now: Timestamp) -> Result<(), Error> {
        let mut unit = Unit::default();
        unit.work = work;
        unit.push(t);
        self.commit_unit(&mut unit, Vec::new(), &[], now)
    }

    /// Fires up to `limit` timers due at `now`, earliest first; returns how many fired.
    pub fn fire_due_timers(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        self.store.begin()?;
        let result = self.fire_unit(now, limit);
        self.store.finish();
        result
    }

    fn fire_unit(&mut self, now: Timestamp, limit: usize) -> Result<usize, Error> {
        let due = self.store.due_timers(now, limit)?;
        // Each transition is committed in order; a run's later transition carries its latest
        // state, so committing all of them leaves the last one in place. A run with several
        // timers due takes the next one from its state in the unit.
        let mut unit = Unit::default();
        for timer in &due {
            let Some(run) = self.run_in(&unit, timer.run)? else { continue };
            let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
            let facts =
                self.load_facts(&run.subject_id, None, now, &Needs::after_timer(&workflow, &run, timer.timer))?;
            unit.push(handle(&workflow, run, &Input::TimerFired { timer: timer.timer }, &facts.facts(&self.env), now));
        }
        self.commit_unit(&mut unit, Vec::new(), &[], now)?;
        for timer in &due {
            let late_ms = now.since(timer.due_at).ms();
            self.stats.timers_fired += 1;
            self.stats.timer_lateness_ms_sum += late_ms;
            for (bucket, bound) in self.stats.timer_lateness_buckets.iter_mut().zip(LATENESS_BUCKETS_MS) {
                *bucket += u64::from(late_ms <= bound);
            }
        }
        Ok(due.len())
    }

    /// Applies a score step's change to `subject` (the model's decay first); returns the
    /// traits to merge, the history record and the threshold events it crossed.
    pub(super) fn apply_score(
        &self,
        run: RunRef<'_>,
        step: &str,
        model: &str,
        change: ScoreChange,
        subject: &mut Value,
        now: Timestamp,
    ) -> (Value, ScoreRecord, Vec<Incoming>) {
        let mut current = subject.clone();
        self.scoring.decay_scores(&mut current, now);
        let before = current.get("scores").and_then(|s| s.get(model)).and_then(Value::as_f64).unwrap_or(0.0);
        let delta = match change {
            ScoreChange::Add(delta) => delta,
            ScoreChange::Set(value) => value - before,
        };
        let reason = format!("step:{}/{step}", run.workflow_id);
        let applied = self.scoring.change(run.subject_id, subject, model, delta, now, reason);
        let crossings = self
            .scoring
            .crossed(&applied)
            .iter()
            .map(|name| Incoming::event(run.subject_id, Models::threshold_event(&applied, name)))
            .collect();
        let traits = serde_json::json!({ "scores": subject["scores"], "scores_at": subject["scores_at"] });
        (traits, applied, crossings)
    }

    /// Applies what the runs that ended in `transitions` cause, appending the transitions it
    /// makes: a child run's end resumes its waiting parent (`subflow`), and a run's end starts
    /// the active workflows it triggers (`trigger: { workflow: … }`, entry rules applied).
    /// Those may end runs in turn, up to `CASCADE_DEPTH_MAX` rounds.
    fn follow_ups(&mut self, transitions: &mut Vec<Transition>, now: Timestamp) -> Result<(), Error> {
        self.follow_ups_from(transitions, 0, now)
    }

    /// `follow_ups` for the transitions from index `from` on (the earlier ones were seen).
    fn follow_ups_from(&mut self, transitions: &mut Vec<Transition>, from: usize, now: Timestamp) -> Result<(), Error> {
        let mut from = from;
        // The workflows a run's end can start, read once per unit of work.
        let mut listeners: Option<Vec<Arc<Workflow>>> = None;
        for _ in 0..CASCADE_DEPTH_MAX {
            let to = transitions.len();
            if from == to {
                return Ok(());
            }
            let ended: Vec<Run> = transitions[from..to]
                .iter()
                .filter(|t| t.history.iter().any(|h| matches!(h.kind, HistoryKind::RunEnded { .. })))
                .map(|t| t.run.clone())
                .collect();
            for run in ended {
                if let Some(parent) = &run.parent {
                    self.resume_parent(transitions, parent, run.status, now)?;
                }
                if listeners.is_none() {
                    let active = self.active_workflows()?;
                    listeners = Some(
                        active
                            .into_iter()
                            .filter(|w| w.triggers.iter().any(|t| matches!(t, Trigger::Workflow { .. })))
                            .collect(),
                    );
                }
                let listening = listeners.as_deref().unwrap_or_default();
                if !listening.is_empty() {
                    self.start_triggered(transitions, listening, &run, now)?;
                }
            }
            from = to;
        }
        if transitions.len() > from {
            tracing::warn!(depth = CASCADE_DEPTH_MAX, "runs ending and starting one another were cut short");
        }
        Ok(())
    }

    /// A run's latest state: this unit's, else the store's.
    fn run_in(&self, unit: &Unit, id: RunId) -> Result<Option<Run>, Error> {
        self.latest_or_stored(unit.run(id), id)
    }

    /// Run `id` in its `latest` uncommitted state if there is one, else as stored.
    fn latest_or_stored(&self, latest: Option<&Run>, id: RunId) -> Result<Option<Run>, Error> {
        match latest {
            Some(run) => Ok(Some(run.clone())),
            None => Ok(self.store.run(id)?),
        }
    }

    fn resume_parent(
        &mut self,
        transitions: &mut Vec<Transition>,
        parent: &ParentRun,
        status: RunStatus,
        now: Timestamp,
    ) -> Result<(), Error> {
        // The follow-ups work on a list of transitions, not a unit: the newest is the latest.
        let latest = transitions.iter().rev().find(|t| t.run.id == parent.run).map(|t| &t.run);
        let Some(run) = self.latest_or_stored(latest, parent.run)? else { return Ok(()) };
        let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
        let facts = self.load_facts(&run.subject_id, None, now, &Needs::of(&workflow))?;
        let input = Input::SubflowEnded { step: parent.step.clone(), status };
        transitions.push(handle(&workflow, run, &input, &facts.facts(&self.env), now));
        Ok(())
    }

    fn start_triggered(
        &mut self,
        transitions: &mut Vec<Transition>,
        listening: &[Arc<Workflow>],
        ended: &Run,
        now: Timestamp,
    ) -> Result<(), Error> {
        for workflow in listening {
            let triggered = workflow.triggers.iter().any(|t| match t {
                Trigger::Workflow { id, outcome } => {
                    *id == ended.workflow_id
                        && match outcome {
                            RunOutcomeFilter::Any => true,
                            RunOutcomeFilter::Completed => ended.status == RunStatus::Completed,
                            RunOutcomeFilter::Converted => ended.status == RunStatus::Converted,
                            RunOutcomeFilter::Exited => ended.status == RunStatus::Exited,
                        }
                }
                _ => false,
            });
            if !triggered {
                continue;
            }
            if !self.may_enter(workflow, &ended.subject_id, now, transitions.iter().map(|t| &t.run))? {
                continue;
            }
            let event = Event {
                id: format!("run-ended:{}", ended.id.0),
                name: "Workflow Ended".to_owned(),
                at: now,
                payload: serde_json::json!({
                    "type": "workflow",
                    "event": "Workflow Ended",
                    "workflow": ended.workflow_id,
                    "run": ended.id,
                    "status": ended.status,
                })
                .into(),
            };
            let facts = self.load_facts(&ended.subject_id, None, now, &Needs::of(workflow))?;
            let id = self.allocate_run_id();
            let run = Run::new(id, workflow, version_of(&self.compiled, workflow), ended.subject_id.as_str(), now);
            transitions.push(handle(workflow, run, &Input::Start { event: Some(event) }, &facts.facts(&self.env), now));
            self.stats.runs_started += 1;
        }
        Ok(())
    }

    /// Runs matching `filter`, newest first; `step` keeps those with a token at that step.
    pub fn runs(&mut self, filter: &RunFilter, step: Option<&str>, limit: usize) -> Result<Vec<Run>, Error> {
        let Some(step) = step else { return Ok(self.store.runs(filter, limit)?) };
        // A step's index depends on the version: with the workflow known, resolve it in each
        // version and let the store's position index find the runs.
        if let Some(workflow_id) = filter.workflow_id.clone() {
            let latest = self.store.workflow_source(&workflow_id, None)?.map_or(0, |(v, _)| v);
            let mut at = Vec::new();
            for version in 1..=latest {
                if filter.version.is_some_and(|v| v != version) {
                    continue;
                }
                let workflow = self.workflow(&workflow_id, Some(version))?;
                if let Some(index) = workflow.step_index(step) {
                    at.push((version, index.0));
                }
            }
            return Ok(self.store.runs(&RunFilter { at: Some(at), ..filter.clone() }, limit)?);
        }
        // Without it, check each run against its own version.
        let mut found = Vec::new();
        for run in self.store.runs(filter, usize::MAX)? {
            let workflow = self.workflow(&run.workflow_id, Some(run.version))?;
            if run.current_steps().any(|at| &*workflow.step(at).id == step) {
                found.push(run);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Changes whether a workflow starts new runs; `false` when there is no such workflow.
    /// Pausing removes its schedules; activating arms them again from `now`.
    pub fn set_status(&mut self, id: &str, status: WorkflowStatus, now: Timestamp) -> Result<bool, Error> {
        if !self.store.set_workflow_status(id, status, now)? {
            return Ok(false);
        }
        self.sync_schedules(id, now)?;
        Ok(true)
    }

    /// What `transitions` change in people's inboxes (see `crate::work`); `subjects` has the
    /// unit's newer subject data, where there is a unit.
    pub(super) fn work_changes(
        &mut self,
        transitions: &[&Transition],
        subjects: Option<&HashMap<String, (Value, Option<String>)>>,
        now: Timestamp,
    ) -> Result<Vec<WorkChange>, Error> {
        let mut changes = Vec::new();
        let mut last: Option<(u32, Arc<Workflow>)> = None;
        for t in transitions {
            let workflow = match &last {
                Some((version, w)) if w.id == t.run.workflow_id && *version == t.run.version => w.clone(),
                _ => {
                    let w = self.workflow(&t.run.workflow_id, Some(t.run.version))?;
                    last = Some((t.run.version, w.clone()));
                    w
                }
            };
            if !crate::work::gives_work(&workflow) {
                continue;
            }
            let stored;
            let subject = match subjects.and_then(|s| s.get(&t.run.subject_id)) {
                Some((subject, _)) => subject,
                None => {
                    stored = self.store.contact(&t.run.subject_id)?.map(|c| c.traits).unwrap_or(Value::Null);
                    &stored
                }
            };
            changes.extend(crate::work::changes(&workflow, t, subject, &self.directory, now));
        }
        Ok(changes)
    }

    /// Runs of a status, for tests and status pages.
    pub fn run(&self, id: RunId) -> Result<Option<Run>, Error> {
        Ok(self.store.run(id)?)
    }

    pub fn is_ended(&self, id: RunId) -> Result<bool, Error> {
        Ok(self.store.run(id)?.is_some_and(|r| r.status != RunStatus::Active))
    }
}

/// Applies a subject update to `subject`; returns the traits to merge into the stored contact
/// (the fields it set).
/// A workspace document stored as setting `key` (JSON), compiled; the default when none was
/// ever stored. One that no longer compiles is a corrupt store: it was checked when written.
fn load_document<S: Store, Src: serde::de::DeserializeOwned, T: Default>(
    store: &S,
    key: &str,
    compile: fn(Src) -> Result<T, Vec<String>>,
) -> Result<T, Error> {
    let Some(text) = store.setting(key)? else { return Ok(T::default()) };
    let compiled = serde_json::from_str::<Src>(&text).map_err(|e| vec![e.to_string()]).and_then(compile);
    Ok(compiled.map_err(|errors| flowmark_store::Error::Corrupt(format!("the stored {key}: {}", errors.join("; "))))?)
}

/// The setting the workspace's score models are stored under (JSON).
pub const SCORE_MODELS_SETTING: &str = "score_models";

/// Events one ingestion batch may add by itself (threshold crossings), so rules that feed
/// each other cannot grow a batch without bound.
pub const GENERATED_EVENTS_MAX: usize = 10_000;

/// Does this event suppress its contact, and why? `Unsubscribed`, `Email Marked as Spam`, and
/// `Email Bounced` unless it says the bounce was soft (`properties.bounce_type` or `type` of
/// `soft`, `transient` or `temporary`), as ESPs' webhooks and Segment's email spec name them.
fn suppression_of(event: &Event) -> Option<&'static str> {
    match event.name.as_str() {
        "Unsubscribed" => Some("unsubscribed"),
        "Email Marked as Spam" => Some("complained"),
        "Email Bounced" => {
            let properties = event.payload.get("properties");
            let kind = properties
                .and_then(|p| p.get("bounce_type").or_else(|| p.get("type")))
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase);
            match kind.as_deref() {
                Some("soft" | "transient" | "temporary") => None,
                _ => Some("bounced"),
            }
        }
        _ => None,
    }
}

fn version_of(compiled: &HashMap<(String, u32), Arc<Workflow>>, workflow: &Arc<Workflow>) -> u32 {
    compiled.iter().find(|(_, w)| Arc::ptr_eq(w, workflow)).map_or(1, |((_, v), _)| *v)
}

/// Did the transition do anything worth storing? An event no run waits for changes nothing.
fn changed(t: &Transition) -> bool {
    !t.history.is_empty() || !t.effects.is_empty() || !t.timers.is_empty() || !t.decisions.is_empty()
}

#[cfg(test)]
mod tests {
    use flowmark_core::engine::{ArmedTimer, TimerPurpose, Token, TokenState};

    use super::*;

    /// A timer loads only the facts the steps it leads to can read: in the nurture blueprint,
    /// the click wait's timeout leads to a capped email and another click wait, the case-study
    /// wait to a capped email, a message held by quiet hours to that message, and the second
    /// chance's timeout to the end of the run.
    #[test]
    fn a_timer_needs_what_the_steps_it_leads_to_read() {
        let source = include_str!("../../../../blueprints/whitepaper-nurture.yaml");
        let workflow = compile(&Source::new("whitepaper-nurture.yaml", source.to_owned())).workflow.unwrap();
        let needs = |step: &str, state: TokenState, purpose: TimerPurpose| {
            let mut run = Run::new(RunId(1), &workflow, 1, "c-1", Timestamp(0));
            let at = workflow.step_index(step).unwrap();
            run.tokens.push(Token { id: 0, at, state, entered_at: Timestamp(0) });
            run.timers.push(ArmedTimer { id: TimerId(7), token: 0, purpose, due_at: Timestamp(1) });
            let needs = Needs::after_timer(&workflow, &run, TimerId(7));
            let unarmed = Needs::after_timer(&workflow, &run, TimerId(8));
            assert!(
                unarmed.recent_events.is_empty() && !unarmed.sent_messages,
                "a timer no longer armed moves nothing"
            );
            (needs.recent_events, needs.sent_messages)
        };
        let awaiting = || TokenState::AwaitingEvent { timeout: Some(TimerId(7)) };
        let sleeping = |quiet_hold| TokenState::Sleeping { timer: TimerId(7), quiet_hold, cap_hold: false };
        let clicked = vec!["Email Link Clicked".to_owned()];
        assert_eq!(needs("engaged", awaiting(), TimerPurpose::EventTimeout), (clicked, true));
        assert_eq!(needs("second-chance", awaiting(), TimerPurpose::EventTimeout), (vec![], false));
        assert_eq!(needs("case-study", sleeping(false), TimerPurpose::Wake), (vec![], true));
        assert_eq!(needs("send-case-study", sleeping(true), TimerPurpose::Wake), (vec![], true));
    }
}
