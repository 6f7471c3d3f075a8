//! Calls into third-party parsers and interpreters (Liquid, CEL, YAML) that may panic on
//! some inputs, turned into `None` instead.
//!
//! Each of them asserts internal invariants that an input can break (fuzzing found two in
//! Liquid). Bad input must be an error, never a crash: of `flowmark validate`, of an HTTP
//! request, or of the server's owner thread, where a panic in background work (a timer firing
//! a branch) stops the process and would stop it again after every restart.
//!
//! Invariant: a panic inside `guarded` is caught, not printed (the panic hook is told to keep
//! quiet on this thread for the duration), and every other panic is printed as before.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    /// Set while guarded work runs on this thread: a panic then is caught and reported by the
    /// caller as an error, so the hook does not print it.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, giving `None` if it panics.
pub(crate) fn guarded<T>(work: impl FnOnce() -> T) -> Option<T> {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|flag| flag.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    GUARDED.with(|flag| flag.set(outer));
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_none_and_a_value_is_kept() {
        assert_eq!(guarded(|| 7), Some(7));
        assert_eq!(guarded(|| -> u8 { panic!("inside a parser") }), None);
        // Nested: the inner panic is caught by the inner guard; the outer goes on.
        assert_eq!(guarded(|| guarded(|| -> u8 { panic!("deeper") }).unwrap_or(3)), Some(3));
        assert!(!GUARDED.with(Cell::get), "the flag is back to what it was");
    }
}
