//! When a schedule trigger fires: the next occurrence of a cron expression in a time zone.
//!
//! Pure: the caller passes the instant to count from. Occurrences are wall-clock times in the
//! trigger's zone, so `0 9 * * MON-FRI` in `Europe/Paris` is 09:00 in Paris all year, across
//! daylight-saving changes (croner resolves times that a change skips or repeats).
//!
//! Invariant: `next_occurrence` returns an instant strictly after the one it is given.

use chrono_tz::Tz;

use crate::Timestamp;

/// The first occurrence of `cron` in `timezone` strictly after `after`; `None` when the
/// expression does not parse (the validator refuses those) or never occurs again.
pub fn next_occurrence(cron: &str, timezone: Tz, after: Timestamp) -> Option<Timestamp> {
    let cron: croner::Cron = cron.parse().ok()?;
    let start = after.to_chrono().with_timezone(&timezone);
    let next = cron.find_next_occurrence(&start, false).ok()?;
    let next = Timestamp::from_chrono(&next);
    (next > after).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn weekday_mornings_in_paris_follow_the_wall_clock_across_dst() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let cron = "0 9 * * MON-FRI";
        // Friday 27 March 2026, 10:00 Paris (CET): next is Monday 30 March 09:00 CEST.
        assert_eq!(next_occurrence(cron, paris, at("2026-03-27T09:00:00Z")), Some(at("2026-03-30T07:00:00Z")));
        // Before the change the same wall time is an hour later in UTC.
        assert_eq!(next_occurrence(cron, paris, at("2026-03-26T12:00:00Z")), Some(at("2026-03-27T08:00:00Z")));
    }

    #[test]
    fn the_next_occurrence_is_strictly_later() {
        let utc: Tz = "UTC".parse().unwrap();
        let nine = at("2026-01-05T09:00:00Z");
        assert_eq!(next_occurrence("0 9 * * *", utc, nine), Some(at("2026-01-06T09:00:00Z")));
        assert_eq!(next_occurrence("*/15 * * * *", utc, nine), Some(at("2026-01-05T09:15:00Z")));
    }

    #[test]
    fn a_bad_expression_has_no_occurrence() {
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(next_occurrence("every monday", utc, Timestamp(0)), None);
    }
}
