//! Calendar time for the run state machine: the next time of day in a zone, quiet hours.
//!
//! Invariant: every answer is a pure function of its arguments, and times that do not exist
//! in a zone (a daylight-saving gap) move forward to the first instant that does.

use chrono::{Datelike, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;

use crate::time::Timestamp;

/// The first instant strictly after `now` that is `minute` past midnight in `tz`, on one of
/// `weekdays` (any day when empty).
pub fn next_time_of_day(now: Timestamp, minute: u16, tz: Tz, weekdays: &[Weekday]) -> Timestamp {
    assert!(minute < 24 * 60);
    let local = now.to_chrono().with_timezone(&tz);
    let time = NaiveTime::from_hms_opt(u32::from(minute / 60), u32::from(minute % 60), 0).expect("minute < 1440");
    let mut date = local.date_naive();
    // Eight days always contain a wanted weekday; a ninth covers a DST gap on the last one.
    for _ in 0..9 {
        if weekdays.is_empty() || weekdays.contains(&date.weekday()) {
            let candidate = resolve(tz, date, time);
            if candidate > now {
                return candidate;
            }
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now
}

fn resolve(tz: Tz, date: NaiveDate, time: NaiveTime) -> Timestamp {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(at) => Timestamp::from_chrono(&at),
        LocalResult::Ambiguous(earliest, _) => Timestamp::from_chrono(&earliest),
        LocalResult::None => {
            // In a gap: an hour later always exists.
            let later = naive + chrono::Duration::hours(1);
            tz.from_local_datetime(&later).earliest().map_or(Timestamp(0), |at| Timestamp::from_chrono(&at))
        }
    }
}

/// When `now` falls inside the daily window `[from, to)` (minutes of day, wrapping midnight
/// when `from > to`), the instant the window ends; otherwise `None`.
pub fn in_quiet_hours(now: Timestamp, from_minute: u16, to_minute: u16, tz: Tz) -> Option<Timestamp> {
    let local = now.to_chrono().with_timezone(&tz);
    let minute = (local.hour() * 60 + local.minute()) as u16;
    let inside = if from_minute < to_minute {
        (from_minute..to_minute).contains(&minute)
    } else {
        minute >= from_minute || minute < to_minute
    };
    inside.then(|| next_time_of_day(now, to_minute, tz, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::from_chrono(&chrono::DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn next_nine_am_in_paris() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // 2026-11-24 is a Tuesday; Paris is UTC+1 in November.
        assert_eq!(next_time_of_day(at("2026-11-24T07:00:00Z"), 9 * 60, tz, &[]), at("2026-11-24T08:00:00Z"));
        assert_eq!(next_time_of_day(at("2026-11-24T09:00:00Z"), 9 * 60, tz, &[]), at("2026-11-25T08:00:00Z"));
        assert_eq!(
            next_time_of_day(at("2026-11-24T09:00:00Z"), 9 * 60, tz, &[Weekday::Mon]),
            at("2026-11-30T08:00:00Z")
        );
    }

    #[test]
    fn a_time_in_a_daylight_saving_gap_moves_forward() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // 2027-03-28 02:30 does not exist in Paris.
        assert_eq!(next_time_of_day(at("2027-03-27T12:00:00Z"), 150, tz, &[]), at("2027-03-28T01:30:00Z"));
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 23:00 in New York (UTC-5) is inside 21:00–08:00; it ends at 08:00 local, 13:00Z.
        assert_eq!(in_quiet_hours(at("2026-11-25T04:00:00Z"), 21 * 60, 8 * 60, tz), Some(at("2026-11-25T13:00:00Z")));
        assert_eq!(in_quiet_hours(at("2026-11-25T15:00:00Z"), 21 * 60, 8 * 60, tz), None);
    }
}
