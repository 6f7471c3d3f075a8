//! Flowmark's runtime: the shell that drives the pure run state machine for real.
//!
//! [`Engine`] owns a [`Store`](flowmark_store::Store) and the compiled workflows. It
//! - **deploys** workflow versions (validated with the same diagnostics as the CLI);
//! - **ingests** events: deduplicates them by `messageId`, routes each to the subject's
//!   active runs and to the workflows it triggers (entry rules applied), and commits every
//!   resulting transition in one batch;
//! - **fires timers** that are due, read from the store's index by due time;
//! - **dispatches** effects from the outbox through [`Connector`]s, with retries on a
//!   documented schedule ([`retry`]), and feeds each outcome back to its run;
//! - keeps **people's work**: inboxes projected from run states ([`work`]), the
//!   [`directory`] of people, teams and roles, actions on work items, comments, and
//!   notifications with per-person channels and digests.
//!
//! Time comes from the caller (`now`): a system clock in the server, a virtual one in tests
//! and simulations. The engine is the single writer of its store; partitioning subjects
//! across several engines is the server's concern.
//!
//! Invariant: every state change goes through `engine::handle` and is committed with its
//! history, timers and effects in one store transaction, before anything is dispatched.

mod connector;
pub mod directory;
mod engine;
pub mod ical;
pub mod import;
pub mod own_address;
pub mod retry;
pub mod scoring;
pub mod segments;
pub mod settings;
pub mod smtp;
pub mod suppressions;
pub mod tracking;
pub mod unsubscribe;
pub mod webhook;
pub mod why;
pub mod work;
pub mod workers;

pub use connector::{
    ATTEMPT_TIMEOUT_DEFAULT, ATTEMPT_TIMEOUT_MAX, Connector, Connectors, Guard, Job, Limits, LogConnector, Outbound,
    Outcome, RecordingConnector,
};
pub use engine::{
    ATTEMPT_BUCKETS_MS, Claim, Claimed, ConnectorStats, LEASE_MARGIN_MS, NO_WORKER_HOLD_MS, Performed, Slots,
};
pub use engine::{Attachment, WorkAction, WorkRefusal};
pub use engine::{
    CASCADE_DEPTH_MAX, DeployError, Engine, Error, Incoming, Ingested, LATENESS_BUCKETS_MS, SCHEDULE_PAGE_COUNT,
    SCHEDULED_EVENT, SEGMENT_SWEEP_EVERY_MS, SEGMENT_SWEEP_PAGE_COUNT, SEGMENTS_SETTING, START_KEY_RETENTION_MS,
    SUPPRESSED_REASON_TRAIT, StartRequest, Started, Stats, UNREADABLE_EFFECT_HOLD_MS, UNSUBSCRIBED_TRAIT,
};
pub use work::url_part;
