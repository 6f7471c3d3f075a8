//! The retry schedule for effects: exponential backoff with deterministic jitter.
//!
//! Attempt n (1-based) that fails with a retryable error is tried again after
//! `RETRY_DELAY_MS_MIN · 2^(n-1)`, capped at `RETRY_DELAY_MS_MAX`, plus up to 20 % jitter.
//! The jitter is a hash of the effect's key and the attempt number, not a random draw, so a
//! replay or a simulation retries at the same instants. After `ATTEMPTS_MAX` attempts the
//! effect fails for good.
//!
//! With the defaults: 30 s, 1 min, 2 min, 4 min, 8 min, 16 min, 32 min, then it fails: about
//! an hour of trying, enough to ride out a provider's incident without holding a journey for
//! a day.

use flowmark_core::{Duration, Timestamp};

/// Most attempts at one effect, the first included.
pub const ATTEMPTS_MAX: u32 = 8;
/// The first retry's delay.
pub const RETRY_DELAY_MS_MIN: u64 = 30_000;
/// No retry waits longer than this (before jitter).
pub const RETRY_DELAY_MS_MAX: u64 = 60 * 60 * 1000;

const _: () = assert!(RETRY_DELAY_MS_MIN <= RETRY_DELAY_MS_MAX);

/// When to try again after failed attempt number `attempt` (1-based), or `None` when the
/// attempts are spent. A `retry_after` from the peer (e.g. HTTP `Retry-After`) wins when later.
pub fn next_attempt_at(key: &str, attempt: u32, now: Timestamp, retry_after: Option<Duration>) -> Option<Timestamp> {
    assert!(attempt >= 1);
    if attempt >= ATTEMPTS_MAX {
        return None;
    }
    let base = RETRY_DELAY_MS_MIN.saturating_mul(1u64 << (attempt - 1).min(32)).min(RETRY_DELAY_MS_MAX);
    Some(jittered(base, key, attempt, now, retry_after))
}

/// `next_attempt_at` on a connector's own schedule: `delays_ms[n - 1]` after failed attempt
/// n, with the same jitter; `None` once the delays are spent. A later `retry_after` wins.
pub fn next_attempt_on(
    delays_ms: &[u64],
    key: &str,
    attempt: u32,
    now: Timestamp,
    retry_after: Option<Duration>,
) -> Option<Timestamp> {
    assert!(attempt >= 1);
    let base = *delays_ms.get(attempt as usize - 1)?;
    Some(jittered(base, key, attempt, now, retry_after))
}

/// `now` plus `base` and up to 20 % of it, hashed from the key and the attempt, or plus
/// `retry_after` when that is later.
fn jittered(base: u64, key: &str, attempt: u32, now: Timestamp, retry_after: Option<Duration>) -> Timestamp {
    let jitter = base / 5 * (fnv1a(key, attempt) % 1000) / 1000;
    now.plus(Duration(base + jitter).max(retry_after.unwrap_or_default()))
}

fn fnv1a(key: &str, attempt: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_doubles_with_bounded_jitter_and_ends() {
        let now = Timestamp(0);
        let mut previous = 0;
        for attempt in 1..ATTEMPTS_MAX {
            let at = next_attempt_at("k", attempt, now, None).unwrap().ms() as u64;
            let base = RETRY_DELAY_MS_MIN << (attempt - 1);
            assert!(at >= base && at <= base + base / 5, "attempt {attempt}: {at}");
            assert!(at > previous);
            previous = at;
        }
        assert_eq!(next_attempt_at("k", ATTEMPTS_MAX, now, None), None);
    }

    #[test]
    fn a_connectors_own_schedule_is_followed_with_the_same_jitter_then_ends() {
        let delays = [5_000, 300_000];
        for (attempt, base) in [(1, 5_000), (2, 300_000)] {
            let at = next_attempt_on(&delays, "k", attempt, Timestamp(0), None).unwrap().ms() as u64;
            assert!(at >= base && at <= base + base / 5, "attempt {attempt}: {at}");
        }
        assert_eq!(next_attempt_on(&delays, "k", 3, Timestamp(0), None), None, "the delays are spent");
        let later = next_attempt_on(&delays, "k", 1, Timestamp(0), Some(Duration(60_000))).unwrap();
        assert_eq!(later, Timestamp(60_000), "a later Retry-After wins");
    }

    #[test]
    fn the_same_key_retries_at_the_same_instant_and_retry_after_wins() {
        let now = Timestamp(1000);
        assert_eq!(next_attempt_at("a", 2, now, None), next_attempt_at("a", 2, now, None));
        let later = next_attempt_at("a", 1, now, Some(Duration(600_000))).unwrap();
        assert_eq!(later, Timestamp(601_000));
    }
}
