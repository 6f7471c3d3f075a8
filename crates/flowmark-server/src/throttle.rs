//! Sign-in throttling: failed sign-ins make the next ones wait, per account and per client
//! address, with exponential back-off.
//!
//! An account may fail `ACCOUNT_FREE_FAILURES` times in a row (an address
//! `ADDRESS_FREE_FAILURES`, so one office behind a NAT is not locked by one person's typos);
//! each failure after that locks it for twice as long as the one before, from `LOCK_BASE_MS`
//! up to `LOCK_MAX_MS`. While either the account or the address is locked, a sign-in is
//! refused before any password is checked, so guessing slows exponentially and a flood of
//! wrong passwords costs no Argon2 work. Sign-ins still being checked count as failures for
//! the threshold, so a burst of concurrent guesses is refused after the first few, not after
//! all of them ran. A success clears the account's record and the address's.
//!
//! The records live in memory (a restart forgets them) and are pure bookkeeping over the times
//! they are given, so the rules are tested without a clock. At most `TRACKED_MAX` keys of each
//! kind are kept: past that, records that no longer lock anything are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// Failures in a row an account may have before it is locked.
pub const ACCOUNT_FREE_FAILURES: u32 = 5;

/// Failures in a row one client address may have before it is locked.
pub const ADDRESS_FREE_FAILURES: u32 = 20;

/// The first lock (a second); each further failure doubles it.
pub const LOCK_BASE_MS: i64 = 1_000;

/// The longest lock (15 minutes).
pub const LOCK_MAX_MS: i64 = 15 * 60 * 1_000;

/// A record whose last failure is this old (an hour) starts again from zero.
pub const FORGET_AFTER_MS: i64 = 60 * 60 * 1_000;

/// Most accounts, and most addresses, tracked at once.
pub const TRACKED_MAX: usize = 100_000;

#[derive(Debug, Default, Clone, Copy)]
struct Record {
    failures: u32,
    in_flight: u32,
    last_failure: i64,
    locked_until: i64,
}

impl Record {
    /// How long a sign-in must wait, if it must.
    fn wait_ms(&self, free: u32, now: i64) -> Option<i64> {
        if self.locked_until > now {
            return Some(self.locked_until - now);
        }
        // Checks in flight would cross the threshold if they fail: wait for them.
        (self.in_flight > 0 && self.failures + self.in_flight >= free).then_some(LOCK_BASE_MS)
    }

    fn fail(&mut self, free: u32, now: i64) {
        if now - self.last_failure > FORGET_AFTER_MS {
            self.failures = 0;
        }
        self.failures += 1;
        self.last_failure = now;
        if self.failures >= free {
            let doublings = (self.failures - free).min(30);
            self.locked_until = now + (LOCK_BASE_MS << doublings).min(LOCK_MAX_MS);
        }
    }
}

/// Why a sign-in may not be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// How long until it may be tried (ms).
    pub retry_after_ms: i64,
    /// Failures in a row of the account, or of the address when that is what is locked.
    pub failures: u32,
}

/// Every account's and every address's record.
#[derive(Debug, Default)]
pub struct Throttle {
    accounts: HashMap<String, Record>,
    addresses: HashMap<IpAddr, Record>,
}

impl Throttle {
    /// Asks to check a password of `account` from `address` at `now`: refused while either is
    /// locked; otherwise the check counts as in flight until `finish`.
    pub fn begin(&mut self, account: &str, address: Option<IpAddr>, now: i64) -> Result<(), Locked> {
        let by_account = self.accounts.get(account).and_then(|r| {
            r.wait_ms(ACCOUNT_FREE_FAILURES, now).map(|wait| Locked { retry_after_ms: wait, failures: r.failures })
        });
        let by_address = address.and_then(|a| self.addresses.get(&a)).and_then(|r| {
            r.wait_ms(ADDRESS_FREE_FAILURES, now).map(|wait| Locked { retry_after_ms: wait, failures: r.failures })
        });
        if let Some(locked) = by_account.into_iter().chain(by_address).max_by_key(|l| l.retry_after_ms) {
            return Err(locked);
        }
        entry(&mut self.accounts, account.to_owned(), now).in_flight += 1;
        if let Some(address) = address {
            entry(&mut self.addresses, address, now).in_flight += 1;
        }
        Ok(())
    }

    /// Records how a check `begin` allowed came out.
    pub fn finish(&mut self, account: &str, address: Option<IpAddr>, succeeded: bool, now: i64) {
        if succeeded {
            self.accounts.remove(account);
            if let Some(address) = address {
                self.addresses.remove(&address);
            }
            return;
        }
        if let Some(record) = self.accounts.get_mut(account) {
            record.in_flight = record.in_flight.saturating_sub(1);
            record.fail(ACCOUNT_FREE_FAILURES, now);
        }
        if let Some(record) = address.and_then(|a| self.addresses.get_mut(&a)) {
            record.in_flight = record.in_flight.saturating_sub(1);
            record.fail(ADDRESS_FREE_FAILURES, now);
        }
    }
}

/// The record for `key`, made room for if the map is full.
fn entry<K: Hash + Eq>(map: &mut HashMap<K, Record>, key: K, now: i64) -> &mut Record {
    if map.len() >= TRACKED_MAX && !map.contains_key(&key) {
        map.retain(|_, r| r.in_flight > 0 || r.locked_until > now);
        if map.len() >= TRACKED_MAX {
            // Every record still locks: forget those that lock the least longer.
            map.retain(|_, r| r.in_flight > 0 || r.locked_until > now + LOCK_MAX_MS / 2);
        }
    }
    map.entry(key).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const ELSEWHERE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    fn attempt(
        throttle: &mut Throttle,
        account: &str,
        address: Option<IpAddr>,
        ok: bool,
        now: i64,
    ) -> Result<(), Locked> {
        throttle.begin(account, address, now)?;
        throttle.finish(account, address, ok, now);
        Ok(())
    }

    #[test]
    fn an_account_is_locked_after_five_failures_for_twice_as_long_each_time() {
        let mut throttle = Throttle::default();
        for _ in 0..ACCOUNT_FREE_FAILURES {
            assert_eq!(attempt(&mut throttle, "sam", HOME, false, 0), Ok(()));
        }
        let locked = attempt(&mut throttle, "sam", ELSEWHERE, true, 10).unwrap_err();
        assert_eq!(locked, Locked { retry_after_ms: 990, failures: 5 }, "even the right password, from anywhere");
        assert_eq!(attempt(&mut throttle, "dana", HOME, false, 10), Ok(()), "other accounts are not locked");
        let mut now = 1_000;
        let mut lock = LOCK_BASE_MS;
        for _ in 0..12 {
            assert_eq!(attempt(&mut throttle, "sam", HOME, false, now), Ok(()), "tried after the lock passed");
            lock = (lock * 2).min(LOCK_MAX_MS);
            assert_eq!(throttle.begin("sam", HOME, now).unwrap_err().retry_after_ms, lock);
            now += lock;
        }
        assert_eq!(lock, LOCK_MAX_MS, "the lock stops growing at its maximum");
        assert_eq!(attempt(&mut throttle, "sam", HOME, true, now), Ok(()));
        assert_eq!(attempt(&mut throttle, "sam", HOME, false, now), Ok(()), "a success starts again from zero");
    }

    #[test]
    fn one_address_guessing_many_accounts_is_locked_too() {
        let mut throttle = Throttle::default();
        for i in 0..ADDRESS_FREE_FAILURES {
            assert_eq!(attempt(&mut throttle, &format!("user{i}"), HOME, false, 0), Ok(()));
        }
        assert!(attempt(&mut throttle, "new-victim", HOME, false, 0).is_err());
        assert_eq!(attempt(&mut throttle, "new-victim", ELSEWHERE, false, 0), Ok(()), "another address is not");
        assert_eq!(attempt(&mut throttle, "anyone", None, false, 0), Ok(()), "no address: the account alone counts");
    }

    #[test]
    fn concurrent_checks_count_before_they_finish() {
        let mut throttle = Throttle::default();
        let allowed = (0..128).filter(|_| throttle.begin("sam", HOME, 0).is_ok()).count();
        assert_eq!(allowed, ACCOUNT_FREE_FAILURES as usize, "a burst runs only as many checks as may fail");
        for _ in 0..allowed {
            throttle.finish("sam", HOME, false, 5);
        }
        assert_eq!(throttle.begin("sam", HOME, 6).unwrap_err().retry_after_ms, LOCK_BASE_MS - 1);
    }

    #[test]
    fn failures_an_hour_old_are_forgotten_and_the_maps_stay_bounded() {
        let mut throttle = Throttle::default();
        for _ in 0..ACCOUNT_FREE_FAILURES - 1 {
            attempt(&mut throttle, "sam", None, false, 0).unwrap();
        }
        attempt(&mut throttle, "sam", None, false, FORGET_AFTER_MS + 1).unwrap();
        assert_eq!(attempt(&mut throttle, "sam", None, false, FORGET_AFTER_MS + 2), Ok(()), "counted from one again");
        for i in 0..TRACKED_MAX + 10 {
            attempt(&mut throttle, &format!("u{i}"), None, false, 0).unwrap();
        }
        assert!(throttle.accounts.len() <= TRACKED_MAX);
    }
}
