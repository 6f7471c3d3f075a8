//! Flowmark's durable store, as a contract: where workflows, runs, histories, timers, the
//! outbox, events and contacts live, and what a backend must keep true of them.
//!
//! [`Store`] is the one interface the runtime talks to, and this crate names no database:
//! backends are sibling crates (`flowmark-sqlite`, the embedded default), each implementing
//! the trait and passing [`conformance::run_all`]. The row types the trait reads and writes
//! live here too.
//!
//! The heart is [`Store::commit`]: a batch of transitions, each with its run's next state,
//! history entries, decision records, armed timers and outbox effects, written in **one**
//! transaction (group commit). Either all of a batch is durable or none of it is.
//!
//! Invariant: after a commit, a run's rows in `timers` are exactly its `Run::timers`, and every
//! effect of a committed transition is in the outbox under its idempotency key, once.

mod boxed;
pub mod conformance;
mod effect;
mod work;
mod workspace;

use flowmark_core::Timestamp;
use flowmark_core::engine::{Event, HistoryEntry, Run, RunId, RunStatus, Sent, TimerId, TimerPurpose, Transition};
use serde_json::Value;

pub use effect::{DELIVERY_TAG, Delivery, EFFECT_VERSION, EffectError, OutboxEffect, run_effect_json};
pub use work::{Comment, Notification, Session, WorkChange, WorkItem, WorkKind};
pub use workspace::{BadWorkspaceName, DEFAULT_WORKSPACE, WORKSPACE_NAME_CHARS_MAX, WorkspaceName};

/// What a backend's failure is, whichever database it talks to.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database itself failed (a constraint, a full disk, a lost connection).
    #[error("the database failed: {0}")]
    Backend(BackendError),
    #[error("the database schema could not be brought up to date: {0}")]
    Schema(BackendError),
    #[error("a stored value could not be read back: {0}")]
    Corrupt(String),
    #[error("effect {key} is already in the outbox for another run")]
    DuplicateEffect { key: String },
    #[error("cannot {doing} {path}: {source}")]
    Io { doing: &'static str, path: std::path::PathBuf, source: std::io::Error },
    /// A workspace that does not exist was named.
    #[error("{0}")]
    NoWorkspace(String),
}

/// A timer whose time has come, as the timer service hands it to the partition owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub run: RunId,
    pub timer: TimerId,
    pub due_at: Timestamp,
    pub purpose: TimerPurpose,
}

/// An effect waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub key: String,
    pub run: RunId,
    pub step: String,
    /// What the effect does.
    pub effect: OutboxEffect,
    pub attempts: u32,
    /// Of `attempts`, how many ended with no outcome recorded (claimed, then nothing: the
    /// process stopped or died while performing it).
    pub lost: u32,
    pub next_attempt_at: Timestamp,
    /// The run the effect belongs to, as `ready_effects` reads it beside the effect: all the
    /// dispatcher needs of it, without reading the run's state. `None` when the run is gone,
    /// and on entries the engine makes itself.
    pub owner: Option<EffectOwner>,
}

/// What `Store::ready_effects` found: the effects to attempt, and those this version cannot
/// read (written by a newer Flowmark), which stay in the outbox untouched until the
/// dispatcher decides what to do with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadyEffects {
    pub entries: Vec<OutboxEntry>,
    pub unreadable: Vec<UnreadableEffect>,
}

impl ReadyEffects {
    /// How many rows were read, readable or not.
    pub fn len(&self) -> usize {
        self.entries.len() + self.unreadable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An outbox row whose effect this version cannot read.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadableEffect {
    pub key: String,
    pub run: RunId,
    pub attempts: u32,
    pub error: EffectError,
}

/// Which run an effect in the outbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectOwner {
    pub workflow_id: String,
    pub version: u32,
    pub subject_id: String,
}

/// A hand start's idempotency key, as stored: the run it started, and a fingerprint of the
/// request it came with, so a retry can be told from a different start under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedStart {
    pub run: RunId,
    /// Opaque to the store; `None` for keys stored before fingerprints were.
    pub request: Option<String>,
}

/// What became of one attempt to perform an effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Done {
        detail: Option<String>,
    },
    /// Try again at `at`.
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Give up: the error is final or the retries are spent.
    Failed {
        error: String,
    },
    /// Not attempted: held back until `at` (a connector's rate limit); not counted as an
    /// attempt.
    Deferred {
        at: Timestamp,
    },
    /// Handed to a worker, which performs it apart from the writer: counted as an attempt
    /// (the entry's `attempts` becomes this attempt's number), and not ready again before
    /// `until` (the lease). The worker's outcome is recorded with `Batch::outcomes`; should
    /// none come (the worker died, the process stopped), the effect is ready again once the
    /// lease has passed, under the same key.
    Claimed {
        until: Timestamp,
    },
    /// Not attempted again: set aside (dead-lettered) because attempts kept ending with no
    /// outcome at all (the process died while performing it), so it cannot crash-loop the
    /// server. It stays in the outbox as `quarantined` until a person requeues it
    /// (`Store::requeue_effect`); not counted as an attempt.
    Quarantined {
        reason: String,
    },
}

/// An effect that will not be attempted again by itself: failed for good, or quarantined.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub key: String,
    pub run: RunId,
    pub step: String,
    /// `failed` or `quarantined`.
    pub status: String,
    /// The effect as stored (JSON).
    pub effect: Value,
    pub attempts: u32,
    /// The last error, or why it was quarantined.
    pub result: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowStatus {
    Active,
    Paused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowSummary {
    pub id: String,
    pub latest_version: u32,
    pub status: WorkflowStatus,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub id: String,
    pub traits: Value,
    pub timezone: Option<String>,
    pub updated_at: Timestamp,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Send events (`/v1/*`).
    Ingest,
    /// Everything else: deploy workflows, read runs, metrics.
    Admin,
    /// Read what `admin` may read (every `GET` of the API), and change nothing: dashboards,
    /// exports, a reporting tool.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
            Scope::Read => "read",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "ingest" => Some(Scope::Ingest),
            "admin" => Some(Scope::Admin),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }
}

/// What erasing a contact removed (`Store::erase_subject`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    /// The ids erased: the contact's and its aliases'.
    pub ids: Vec<String>,
    /// Its runs, with their histories, decision records, timers and effects.
    pub runs: Vec<RunId>,
    pub events: u64,
    pub effects: u64,
    pub work_items: u64,
    pub score_changes: u64,
    /// Was there a contact row?
    pub contact: bool,
}

/// A stored API token: only its SHA-256 is kept, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub workspace: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
    /// The person (an email, lower case) the token acts as: its holder may act in the team's
    /// work as that person only. `None` is a service token, which names who acts (`by`).
    pub person: Option<String>,
}

/// A webhook URL that answered `410 Gone`, and so is not called again until it is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneEndpoint {
    pub url: String,
    /// When it first answered `410`.
    pub gone_at: Timestamp,
    /// What the connector recorded (the answer).
    pub reason: String,
}

/// A change to a contact: `traits` merged into the stored ones (top-level keys replace), the
/// time zone replaced when given. Creates the contact when it does not exist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContactChange<'a> {
    pub id: &'a str,
    pub traits: &'a Value,
    pub timezone: Option<&'a str>,
}

/// Where a schedule trigger stands: when it fires next and, while a firing that starts a
/// run for every contact is under way, the last contact id it has reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub workflow_id: String,
    /// The trigger's position among the workflow's triggers.
    pub trigger: u32,
    /// What the trigger said (cron and time zone), to tell whether a new version changed it.
    pub spec: String,
    pub due_at: Timestamp,
    pub cursor: Option<String>,
}

/// A change to the schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleChange<'a> {
    /// Creates or replaces the schedule of (workflow, trigger).
    Put(&'a Schedule),
    /// Removes every schedule of a workflow (it was paused, or lost its schedule triggers).
    RemoveWorkflow(&'a str),
}

/// One change of a score, for the score history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoreRecord {
    pub subject_id: String,
    pub model: String,
    pub at: Timestamp,
    pub before: f64,
    pub delta: f64,
    pub after: f64,
    pub reason: String,
}

/// What one `Store::write` commits together.
#[derive(Debug, Clone, Default)]
pub struct Batch<'a> {
    pub contacts: Vec<ContactChange<'a>>,
    /// Events by subject; one whose `messageId` is stored already is skipped.
    pub events: Vec<(&'a str, &'a Event)>,
    /// In order; a run's later transition carries its latest state.
    pub transitions: Vec<&'a Transition>,
    /// Entries added to a run's history that do not change the run: effect results the
    /// dispatcher records without loading their runs (`engine::effect_result`). In order, and
    /// before the history of the batch's transitions of the same run.
    pub trail: Vec<(RunId, &'a HistoryEntry)>,
    /// Outcomes of effect attempts, by effect key; only a pending effect is updated.
    pub attempts: Vec<(&'a str, &'a Attempt)>,
    /// Outcomes of claimed attempts (`Attempt::Claimed`), as `(key, attempt number,
    /// outcome)`, applied after `attempts`: one is recorded only while the effect is pending
    /// and its latest attempt is that number, so a worker that answers after its lease passed
    /// and the effect was claimed again changes nothing. Not counted again as an attempt.
    pub outcomes: Vec<(&'a str, u32, &'a Attempt)>,
    /// Applied after the attempts, in order.
    pub schedules: Vec<ScheduleChange<'a>>,
    /// Score changes appended to the score history.
    pub score_changes: Vec<&'a ScoreRecord>,
    /// Settings written (created or replaced), after the attempts: an import's checkpoint.
    pub settings: Vec<(&'a str, &'a str)>,
    /// Identities merged, `(from, into)`, applied last: `from` becomes an alias of `into`,
    /// its traits fill `into`'s gaps, and its events and runs move to `into`.
    pub merges: Vec<(&'a str, &'a str)>,
    /// The work projection's changes, applied after the transitions that caused them.
    pub work: Vec<&'a WorkChange>,
    pub comments: Vec<&'a Comment>,
    /// Notifications recorded; one whose key is stored already is skipped.
    pub notifications: Vec<&'a Notification>,
    /// Keys of notifications a digest has just sent.
    pub digested: Vec<&'a str>,
    /// Effects added to the outbox that no transition emitted (a notification's deliveries),
    /// pending from `next_attempt_at`; one whose key is there already is skipped.
    pub outbox: Vec<&'a OutboxEntry>,
    /// Idempotency keys of hand starts, `(workflow, key, run, request)`: the run a key
    /// started, and a fingerprint of the start it was sent with (`KeyedStart::request`).
    pub start_keys: Vec<(&'a str, &'a str, RunId, &'a str)>,
}

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
            && self.events.is_empty()
            && self.transitions.is_empty()
            && self.trail.is_empty()
            && self.attempts.is_empty()
            && self.outcomes.is_empty()
            && self.schedules.is_empty()
            && self.merges.is_empty()
            && self.settings.is_empty()
            && self.score_changes.is_empty()
            && self.work.is_empty()
            && self.comments.is_empty()
            && self.notifications.is_empty()
            && self.digested.is_empty()
            && self.outbox.is_empty()
            && self.start_keys.is_empty()
    }
}

/// Which runs `Store::runs` lists; every field left `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub workflow_id: Option<String>,
    pub version: Option<u32>,
    pub status: Option<RunStatus>,
    pub subject_id: Option<String>,
    /// Runs standing at one of these `(version, step index)` positions (a step's index differs
    /// between versions, so the caller resolves a step id per version).
    pub at: Option<Vec<(u32, u16)>>,
}

/// How many active runs of a workflow stand at one combination of steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub version: u32,
    /// The step indices the runs' tokens stand at (several inside a `parallel`).
    pub steps: Vec<u16>,
    pub runs: u64,
}

/// Makes a backend's deferred commits durable, from any thread (see
/// `Store::defer_durability`).
pub trait Durability: Send + Sync {
    /// Makes every commit that returned before this call durable. Once a sync has failed,
    /// every later one fails too.
    fn sync(&self) -> Result<(), Error>;

    /// Has a deferral ended since the latest sync began (so commits may wait for one)?
    fn pending(&self) -> bool;

    /// What this handle did so far: deferrals ended, syncs made, and the time they took.
    fn counts(&self) -> (u64, u64, std::time::Duration);
}

/// The durable state of a deployment. Methods take `&mut self` where they write: one owner
/// writes through one handle (the partition owner, the ingestion path), readers open their own.
pub trait Store {
    /// Starts a unit of work: a transaction that the next `write` commits (with what it
    /// writes) and `finish` rolls back if `write` has not run. Reads and `insert_event`s in
    /// between belong to it: they see one snapshot, and an event inserted in a unit that fails
    /// is not stored. Nested calls are no-ops.
    fn begin(&mut self) -> Result<(), Error>;

    /// Ends the unit of work `begin` started, if `write` has not: rolls it back.
    fn finish(&mut self);

    /// Writes everything in `batch` in one transaction, in this order: contact changes,
    /// events, transitions (each run's state inserted or updated, its history — after the
    /// batch's `trail` entries for it — and decision records appended, its timers replaced by
    /// the armed ones, its effects added to the outbox), the trail entries of runs the batch
    /// does not otherwise change, then effect attempts. All or nothing: this is the group commit, and what makes
    /// an event, the transitions it causes, an effect's outcome and the result fed back to its
    /// run durable together or not at all.
    fn write(&mut self, batch: &Batch<'_>, now: Timestamp) -> Result<(), Error>;

    /// Makes durable every commit that returned without its own sync, when the backend was
    /// told to defer syncs (`defer_durability`); a no-op otherwise. Called
    /// before anything leaves the process on the strength of what is stored: effects
    /// performed, answers given.
    fn make_durable(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Starts or ends deferred durability: while on, a commit may return before what it wrote
    /// is durable. Whoever defers must not act on what such commits hold (answer, perform an
    /// effect) before a [`Durability::sync`] that began after they returned, or
    /// `make_durable`. A backend that cannot defer keeps the default: it ignores this, and
    /// every commit is durable when it returns.
    fn defer_durability(&mut self, defer: bool) -> Result<(), Error> {
        let _ = defer;
        Ok(())
    }

    /// The handle that makes deferred commits durable from another thread than the writer's
    /// (`None` for a backend that never defers, or a database in memory).
    fn durability(&self) -> Option<std::sync::Arc<dyn Durability>> {
        None
    }

    /// Writes a batch of transitions in one transaction (see `write`).
    fn commit(&mut self, transitions: &[&Transition], now: Timestamp) -> Result<(), Error> {
        self.write(&Batch { transitions: transitions.to_vec(), ..Batch::default() }, now)
    }

    /// `commit`, with the events that caused the transitions stored in the same transaction
    /// (by subject): an event is recorded as seen exactly when its effects on runs are, so a
    /// crash between the two can neither lose the event's effects nor apply it twice.
    fn commit_with_events(
        &mut self,
        transitions: &[&Transition],
        events: &[(&str, &Event)],
        now: Timestamp,
    ) -> Result<(), Error> {
        self.write(&Batch { transitions: transitions.to_vec(), events: events.to_vec(), ..Batch::default() }, now)
    }

    /// Has an event with this `messageId` been stored?
    fn has_event(&self, message_id: &str) -> Result<bool, Error>;

    fn run(&self, id: RunId) -> Result<Option<Run>, Error>;

    /// One more than the highest run id ever stored (1 for an empty store).
    fn next_run_id(&self) -> Result<RunId, Error>;

    /// Active runs of a subject, oldest first: where the router sends the subject's events.
    fn active_runs_of_subject(&self, subject_id: &str) -> Result<Vec<Run>, Error>;

    /// Runs matching a filter, newest first, at most `limit`.
    fn runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Run>, Error>;

    /// The run a hand start with this idempotency key started for this workflow, if one did,
    /// with the fingerprint of that start.
    fn start_key(&self, workflow_id: &str, key: &str) -> Result<Option<KeyedStart>, Error>;

    /// Forgets up to `limit` idempotency keys stored before `before`, oldest first; returns
    /// how many went. A retry with a forgotten key starts a new run.
    fn forget_start_keys(&mut self, before: Timestamp, limit: usize) -> Result<usize, Error>;

    /// The latest run of a workflow for a subject, active or not, for entry rules.
    fn latest_run(&self, workflow_id: &str, subject_id: &str) -> Result<Option<Run>, Error>;

    /// The history entries of a run, in order, as JSON.
    fn history(&self, id: RunId) -> Result<Vec<Value>, Error>;

    /// The decision records of a run, in order, as JSON.
    fn decisions(&self, id: RunId) -> Result<Vec<Value>, Error>;

    /// Timers due at or before `now`, earliest first, at most `limit`. Read from the index by
    /// due time: never a scan over runs.
    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<DueTimer>, Error>;

    /// Effects ready to be attempted at `now`, oldest first, at most `limit` rows in all.
    /// A row whose effect this version cannot read comes back in `unreadable`, not as an
    /// error of the whole call: the others still go.
    fn ready_effects(&self, now: Timestamp, limit: usize) -> Result<ReadyEffects, Error>;

    /// Records what an attempt at an effect gave (see `write` to record it together with
    /// what it caused).
    fn record_attempt(&mut self, key: &str, attempt: &Attempt, now: Timestamp) -> Result<(), Error> {
        self.write(&Batch { attempts: vec![(key, attempt)], ..Batch::default() }, now)
    }

    /// Effects not yet done or failed.
    fn outbox_depth(&self) -> Result<u64, Error>;

    /// Effects that will not be attempted again by themselves (`failed`, `quarantined`),
    /// newest first, at most `limit`.
    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error>;

    /// Puts a quarantined effect back in the outbox, ready at `now`, its lost attempts
    /// forgiven; `false` when `key` is not a quarantined effect.
    fn requeue_effect(&mut self, key: &str, now: Timestamp) -> Result<bool, Error>;

    /// Messages sent to a subject at or after `since` (non-transactional email effects of its
    /// runs, by the time they entered the outbox), for frequency caps.
    fn sent_messages(&self, subject_id: &str, since: Timestamp) -> Result<Vec<Sent>, Error>;

    /// Stores an event for a subject; `false` when its `messageId` was already stored (the
    /// event is a duplicate and must not be applied again). Inside a unit of work (`begin`),
    /// the event is committed or rolled back with the unit.
    fn insert_event(&mut self, subject_id: &str, event: &Event, received_at: Timestamp) -> Result<bool, Error>;

    /// A subject's events at or after `since`, oldest first, at most `limit` (the newest ones).
    fn events_of_subject(&self, subject_id: &str, since: Timestamp, limit: usize) -> Result<Vec<Event>, Error>;

    /// `events_of_subject`, only the events with one of `names`: `limit` counts those alone,
    /// so a stream of other events cannot push them out (what a wait's look-back reads).
    fn events_named(
        &self,
        subject_id: &str,
        names: &[String],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, Error>;

    /// How many events named `name` a subject has at or after `since` (segments' counts).
    fn count_events(&self, subject_id: &str, name: &str, since: Timestamp) -> Result<u64, Error>;

    /// Stores a new version of a workflow's source and returns its number (1, 2, …).
    /// Versions are immutable; a new workflow starts active.
    fn put_workflow(&mut self, id: &str, source: &str, now: Timestamp) -> Result<u32, Error>;

    /// A version's source; the latest when `version` is `None`.
    fn workflow_source(&self, id: &str, version: Option<u32>) -> Result<Option<(u32, String)>, Error>;

    fn workflows(&self) -> Result<Vec<WorkflowSummary>, Error>;

    /// `false` when there is no such workflow.
    fn set_workflow_status(&mut self, id: &str, status: WorkflowStatus, now: Timestamp) -> Result<bool, Error>;

    /// Creates a contact or merges `traits` into its traits (top-level keys replace); a
    /// `None` time zone keeps the stored one.
    fn upsert_contact(
        &mut self,
        id: &str,
        traits: &Value,
        timezone: Option<&str>,
        now: Timestamp,
    ) -> Result<Contact, Error> {
        self.write(&Batch { contacts: vec![ContactChange { id, traits, timezone }], ..Batch::default() }, now)?;
        self.contact(id)?.ok_or_else(|| Error::Corrupt(format!("contact {id} is missing right after it was written")))
    }

    fn contact(&self, id: &str) -> Result<Option<Contact>, Error>;

    /// The ids merged into `canonical` (`alias` calls, `identify` with both ids).
    fn aliases_of(&self, canonical: &str) -> Result<Vec<String>, Error>;

    /// Erases the contacts `ids` (a contact and its aliases) and everything held about them,
    /// in one transaction: the contact rows, their events, aliases, score history, runs with
    /// their histories, decision records, timers, effects (pending ones are never sent),
    /// notifications, hand-start keys, and the team's work about them with its comments.
    /// Deleted pages are overwritten, not only unlinked. Keeps `tombstones` (the caller's
    /// one-way hashes of the ids), so events sent for them later are recognised. Erasing what
    /// is gone already removes nothing and succeeds.
    fn erase_subject(&mut self, ids: &[String], tombstones: &[String], now: Timestamp) -> Result<Erasure, Error>;

    /// Every tombstone kept by `erase_subject`.
    fn tombstones(&self) -> Result<Vec<String>, Error>;

    /// Contact ids in order, the first `limit` after `after` (from the start when `None`):
    /// how a schedule reaches every contact, a page at a time.
    fn contact_ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error>;

    /// Schedules due at or before `now`, earliest first, at most `limit` (from an index on
    /// the due time).
    fn due_schedules(&self, now: Timestamp, limit: usize) -> Result<Vec<Schedule>, Error>;

    /// A workflow's schedules, by trigger.
    fn schedules(&self, workflow_id: &str) -> Result<Vec<Schedule>, Error>;

    /// The contact whose `email` trait is this address (compared in lower case), if any; the
    /// lowest id when several share it.
    fn contact_id_by_email(&self, email: &str) -> Result<Option<String>, Error>;

    /// A subject's score changes, newest first, at most `limit`.
    fn score_history(&self, subject_id: &str, limit: usize) -> Result<Vec<ScoreRecord>, Error>;

    /// The identity `id` was merged into, if it was (`alias`).
    fn canonical_id(&self, id: &str) -> Result<Option<String>, Error>;

    /// A deployment-wide setting (a secret, a generated id).
    fn setting(&self, key: &str) -> Result<Option<String>, Error>;

    /// Stores `value` under `key` unless the key has a value already; returns the value
    /// stored, so concurrent first starts agree on one.
    fn put_setting_once(&mut self, key: &str, value: &str) -> Result<String, Error>;

    /// Stores a token by the hex SHA-256 of its text. A token's text is high-entropy, so a
    /// plain hash is enough to make a stolen database useless for calling the API.
    fn put_token(&mut self, hash: &str, token: &Token) -> Result<(), Error>;

    /// The token with this hash, if any.
    fn token(&self, hash: &str) -> Result<Option<Token>, Error>;

    /// Webhook URLs that answered `410 Gone`, newest first, at most `limit`.
    fn gone_endpoints(&self, limit: usize) -> Result<Vec<GoneEndpoint>, Error>;

    /// Records these URLs as gone, in one commit; a URL recorded already keeps its first time.
    fn put_gone_endpoints(&mut self, endpoints: &[GoneEndpoint]) -> Result<(), Error>;

    /// Enables a URL again; `false` when it was not recorded as gone.
    fn forget_gone_endpoint(&mut self, url: &str) -> Result<bool, Error>;

    /// A work item by id, with the people who may act on it.
    fn work_item(&self, id: &str) -> Result<Option<WorkItem>, Error>;

    /// A person's open work (by lower-cased email), soonest due first, at most `limit`.
    fn work_of_person(&self, person: &str, kind: Option<WorkKind>, limit: usize) -> Result<Vec<WorkItem>, Error>;

    /// A subject's work, open and closed, oldest first, at most `limit`.
    fn work_of_subject(&self, subject_id: &str, limit: usize) -> Result<Vec<WorkItem>, Error>;

    /// Open work with an id after `after`, in id order, at most `limit`.
    fn open_work_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkItem>, Error>;

    /// A subject's comments, oldest first: the latest `limit`.
    fn comments(&self, subject_id: &str, limit: usize) -> Result<Vec<Comment>, Error>;

    /// The latest deliverable version attached to an item (0 when none).
    fn deliverable_version(&self, subject_id: &str) -> Result<u32, Error>;

    /// A person's notifications, newest first, at most `limit`.
    fn notifications(&self, person: &str, limit: usize) -> Result<Vec<Notification>, Error>;

    /// Notifications held for a digest and not sent yet, by person, at most `limit`.
    fn undigested(&self, limit: usize) -> Result<Vec<Notification>, Error>;

    /// Items with a `publish_at` (RFC 3339) at or after `from` and, with `until`, before it,
    /// soonest first: `(id, data)`.
    fn scheduled_items(&self, from: &str, until: Option<&str>, limit: usize) -> Result<Vec<(String, Value)>, Error>;

    /// Open work due in `[from, until)`, soonest first, at most `limit` (the content calendar).
    fn open_work_due(&self, from: Timestamp, until: Timestamp, limit: usize) -> Result<Vec<WorkItem>, Error>;

    /// Where the active runs of a workflow stand: one row per version and set of steps.
    fn positions(&self, workflow_id: &str) -> Result<Vec<Position>, Error>;

    /// Creates or replaces a web UI account's password hash; ends the account's sessions.
    fn put_account(&mut self, email: &str, password_hash: &str, now: Timestamp) -> Result<(), Error>;

    /// The password hash of an account, if it exists.
    fn account(&self, email: &str) -> Result<Option<String>, Error>;

    /// Stores a session under the hash of its cookie; expired sessions are removed.
    fn put_session(&mut self, hash: &str, session: &Session, now: Timestamp) -> Result<(), Error>;

    /// The live session with this hash.
    fn session(&self, hash: &str, now: Timestamp) -> Result<Option<Session>, Error>;

    /// Ends a session (sign-out).
    fn end_session(&mut self, hash: &str) -> Result<(), Error>;
}
