//! Workers: claimed effects performed on threads of their own, apart from the writer.
//!
//! The writer (the server's owner thread) claims effects (`Engine::claim`, with
//! `Slots::Free`), hands them here in batches, and goes on with the next command; each batch
//! is performed on a thread of its own, its claims in turn, and what it gave comes back through `collect`, for the
//! writer to commit (`Engine::record_performed`). How many run at once per connector is the
//! writer's to keep (it claims no more than a connector's concurrency); how long one may take
//! is too (`Engine::timed_out`): a thread whose peer hangs is left to its connector's own
//! timeouts, and what it answers after its deadline is dropped.
//!
//! Invariants: the writer never waits here; every claim handed over gives exactly one
//! `Performed`, a thread that cannot be started included (as a retryable failure).

use std::sync::Arc;
use std::sync::mpsc;

use flowmark_core::Timestamp;

use crate::connector::{Connector, Connectors, Outcome};
use crate::engine::{Claim, Performed};

pub struct Workers {
    /// Each route's connector, by the route's index in the registry.
    connectors: Vec<Arc<dyn Connector>>,
    sender: mpsc::Sender<Performed>,
    outcomes: mpsc::Receiver<Performed>,
    /// The time attempts start and end at.
    clock: fn() -> Timestamp,
}

impl Workers {
    /// Workers for the connectors of `registry`, timing attempts by `clock`.
    pub fn new(registry: &Connectors, clock: fn() -> Timestamp) -> Workers {
        let connectors = (0..registry.count()).map(|route| registry.connector(route).clone()).collect();
        let (sender, outcomes) = mpsc::channel();
        Workers { connectors, sender, outcomes, clock }
    }

    /// Starts performing each batch on a thread of its own, its claims in turn; each
    /// outcome comes back as soon as it is known.
    pub fn start(&self, batches: Vec<Vec<Arc<Claim>>>) {
        for batch in batches {
            let Some(first) = batch.first() else { continue };
            let Some(connector) = self.connectors.get(first.route).cloned() else {
                let now = (self.clock)();
                for claim in &batch {
                    let _ = self.sender.send(failed(claim, now, format!("no connector for route {}", claim.route)));
                }
                continue;
            };
            let name = format!("flowmark-{}", first.connector);
            let sender = self.sender.clone();
            let clock = self.clock;
            let work = batch.clone();
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                for claim in work {
                    let started = clock();
                    let outcome = claim.perform(&*connector, started);
                    let performed = Performed {
                        key: claim.key.clone(),
                        attempt: claim.attempt,
                        started,
                        ended: clock(),
                        outcome,
                        timed_out: false,
                    };
                    // The writer may have stopped: then the outcome is lost, and the lease
                    // brings the effect back after a restart.
                    if sender.send(performed).is_err() {
                        return;
                    }
                }
            });
            if let Err(error) = spawned {
                let now = (self.clock)();
                for claim in &batch {
                    let _ = self.sender.send(failed(claim, now, format!("cannot start a worker thread: {error}")));
                }
            }
        }
    }

    /// What the workers gave since the last call, as it came.
    pub fn collect(&self) -> Vec<Performed> {
        self.outcomes.try_iter().collect()
    }
}

fn failed(claim: &Claim, now: Timestamp, error: String) -> Performed {
    Performed {
        key: claim.key.clone(),
        attempt: claim.attempt,
        started: now,
        ended: now,
        outcome: Outcome::Retryable { error, retry_after: None },
        timed_out: false,
    }
}
