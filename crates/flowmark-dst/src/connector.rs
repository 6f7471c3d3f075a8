//! A connector whose peer misbehaves on purpose: answers, transient failures (with and
//! without `Retry-After`), timeouts and permanent refusals, decided by a hash of the seed, the
//! effect's key and the attempt number — so the same attempt gets the same answer whatever
//! order the dispatcher performs in.
//!
//! It records every call: the key and the stored effect it was asked to perform, which the
//! invariants compare with what the store committed.
//!
//! Invariant: `perform` never blocks and never panics.

use std::sync::Mutex;

use flowmark_core::Duration;
use flowmark_runtime::{Connector, Job, Outcome};

pub struct SimConnector {
    pub seed: u64,
    /// Per mille of attempts that fail and may be retried, and that fail for good.
    pub transient: u32,
    pub permanent: u32,
    pub calls: Mutex<Vec<Call>>,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub key: String,
    pub effect: String,
    pub attempt: u32,
    pub subject_id: String,
}

/// SplitMix64's finaliser over a few words: a well-mixed, stable hash.
fn mix(words: &[u64]) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for w in words {
        x ^= w.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(x << 6).wrapping_add(x >> 2);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

fn hash_str(text: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the standard library's hasher.
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Connector for SimConnector {
    fn perform(&self, job: &Job<'_>) -> Outcome {
        let call = Call {
            key: job.key.to_owned(),
            effect: job.effect.to_json(),
            attempt: job.attempt,
            subject_id: job.subject_id.to_owned(),
        };
        self.calls.lock().expect("no panics while holding the lock").push(call);
        let roll = mix(&[self.seed, hash_str(job.key), u64::from(job.attempt)]) % 1000;
        let (transient, permanent) = (u64::from(self.transient), u64::from(self.permanent));
        if roll < permanent {
            Outcome::Permanent { error: "the peer refused it (simulated)".to_owned() }
        } else if roll < permanent + transient {
            // Half the transient failures name a time to come back, like a 429 or a 503.
            let retry_after = roll.is_multiple_of(2).then(|| Duration(1000 * (1 + roll % 90)));
            let error = if roll.is_multiple_of(3) { "timed out (simulated)" } else { "503 (simulated)" };
            Outcome::Retryable { error: error.to_owned(), retry_after }
        } else {
            Outcome::Done { detail: None }
        }
    }
}
