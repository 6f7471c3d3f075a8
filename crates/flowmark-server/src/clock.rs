//! The server's clock: the system clock, or, for tests and demos (`serve --clock virtual`), a
//! virtual one that stands still until it is moved forward (`POST /api/clock/advance`).
//!
//! Every time the server reads (when an event was received, when timers and schedules are
//! due, when effects are claimed and their leases pass) comes from `now`, so on the virtual
//! clock a journey of days runs through the real server, its store and its connectors in the
//! time it takes to ask for it. Events keep their own `timestamp`s (Segment's rule corrects
//! them against `receivedAt`, which is the clock's); timers count from the clock.
//!
//! Invariant: the virtual clock never moves backwards, and the system clock is never
//! replaced once the server runs on it (the choice is made once, at start).

use std::sync::atomic::{AtomicI64, Ordering};

use flowmark_core::Timestamp;

/// `VIRTUAL_MS` while the server runs on the system clock.
const SYSTEM: i64 = i64::MIN;

/// The virtual clock's time (ms since the Unix epoch), or `SYSTEM`.
static VIRTUAL_MS: AtomicI64 = AtomicI64::new(SYSTEM);

/// The time now: the virtual clock's, when the server runs on one.
pub fn now() -> Timestamp {
    match VIRTUAL_MS.load(Ordering::Acquire) {
        SYSTEM => {
            let ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            Timestamp(ms)
        }
        ms => Timestamp(ms),
    }
}

/// Puts the server on a virtual clock standing at `start` (`serve --clock virtual`, before
/// anything reads the time).
pub fn use_virtual(start: Timestamp) {
    VIRTUAL_MS.store(start.ms().max(SYSTEM + 1), Ordering::Release);
}

/// Does the server run on a virtual clock?
pub fn is_virtual() -> bool {
    VIRTUAL_MS.load(Ordering::Acquire) != SYSTEM
}

/// Why the clock cannot be moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("the server runs on the system clock; start it with `--clock virtual` to move time by hand")]
    SystemClock,
    #[error("the clock stands at {now}; it never moves backwards (to {to})")]
    Backwards { now: String, to: String },
}

/// Could the clock move to `to` now (a virtual clock, `to` not in its past)?
pub fn check_move(to: Timestamp) -> Result<(), MoveError> {
    match VIRTUAL_MS.load(Ordering::Acquire) {
        SYSTEM => Err(MoveError::SystemClock),
        now if to.ms() < now => Err(MoveError::Backwards { now: Timestamp(now).rfc3339(), to: to.rfc3339() }),
        _ => Ok(()),
    }
}

/// Moves the virtual clock forward to `to` (a time before now is refused); gives the time
/// it then stands at.
pub fn advance_to(to: Timestamp) -> Result<Timestamp, MoveError> {
    let mut current = VIRTUAL_MS.load(Ordering::Acquire);
    loop {
        if current == SYSTEM {
            return Err(MoveError::SystemClock);
        }
        if to.ms() < current {
            return Err(MoveError::Backwards { now: Timestamp(current).rfc3339(), to: to.rfc3339() });
        }
        match VIRTUAL_MS.compare_exchange(current, to.ms(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(to),
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_cannot_be_moved_and_a_virtual_one_moves_forward_only() {
        assert!(!is_virtual());
        assert_eq!(advance_to(Timestamp(0)), Err(MoveError::SystemClock));
        assert!(now().ms() > 1_700_000_000_000, "the system clock");
        use_virtual(Timestamp(1_000));
        assert_eq!(now(), Timestamp(1_000));
        assert_eq!(now(), Timestamp(1_000), "it stands still");
        assert_eq!(advance_to(Timestamp(5_000)), Ok(Timestamp(5_000)));
        assert_eq!(now(), Timestamp(5_000));
        assert!(matches!(advance_to(Timestamp(4_999)), Err(MoveError::Backwards { .. })));
        assert_eq!(now(), Timestamp(5_000));
        VIRTUAL_MS.store(SYSTEM, Ordering::Release);
    }
}
