//! Calendar time for the run state machine: the next time of day in a zone, quiet hours,
//! deadlines counted in working days.
//!
//! Invariant: every answer is a pure function of its arguments, and times that do not exist
//! in a zone (a daylight-saving gap) move forward to the first instant that does.

use chrono::{Datelike, LocalResult, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;

use crate::model::WorkingDays;
use crate::time::{Duration, Timestamp};

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
    let minute = local_minute_of_day(now, tz);
    let inside = if from_minute < to_minute {
        (from_minute..to_minute).contains(&minute)
    } else {
        minute >= from_minute || minute < to_minute
    };
    inside.then(|| next_time_of_day(now, to_minute, tz, &[]))
}

/// The minute of the local day in `tz` at `now`: the zone's offset at that instant added to
/// UTC, without building a local date (a message checks quiet hours on every send).
fn local_minute_of_day(now: Timestamp, tz: Tz) -> u16 {
    use chrono::Offset;
    let offset_s = tz.offset_from_utc_datetime(&now.to_chrono().naive_utc()).fix().local_minus_utc();
    let local_s = now.ms().div_euclid(1000) + i64::from(offset_s);
    (local_s.rem_euclid(86_400) / 60) as u16
}

/// `now` plus `duration`, where only time on working days (local dates in `tz`) counts:
/// a deadline of `2d` set on a Friday afternoon falls on Tuesday afternoon, and one set on a
/// Saturday counts from Monday 00:00. A zero duration is `now`, even on a day off.
///
/// Walks day by day, so the cost is one step per calendar day spanned (a few thousand at
/// most: durations are capped by `limits::DURATION_MS_MAX`).
pub fn add_working_time(now: Timestamp, duration: Duration, tz: Tz, days: &WorkingDays) -> Timestamp {
    if duration.0 == 0 {
        return now;
    }
    let mut left = i64::try_from(duration.0).unwrap_or(i64::MAX);
    let mut at = now;
    let mut date = now.to_chrono().with_timezone(&tz).date_naive();
    // Enough for the longest duration with every holiday in its way; never reached in practice.
    let bound = 7 * (left / (24 * 60 * 60 * 1000) + 1) + days.holidays.len() as i64 + 14;
    for _ in 0..bound {
        let Some(next) = date.succ_opt() else { break };
        let day_end = resolve(tz, next, NaiveTime::MIN);
        if days.is_working(date) {
            let in_day = day_end.0 - at.0;
            if left <= in_day {
                return Timestamp(at.0 + left);
            }
            left -= in_day;
        }
        at = day_end;
        date = next;
    }
    now.plus(duration)
}

#[cfg(test)]
mod tests {
    use chrono::Timelike;

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

    proptest::proptest! {
        /// The offset arithmetic agrees with chrono's local time, in every zone, on either
        /// side of 1970 and across daylight-saving changes.
        #[test]
        fn the_local_minute_is_chronos(ms in -2_000_000_000_000i64..4_000_000_000_000, zone in 0..chrono_tz::TZ_VARIANTS.len()) {
            let tz = chrono_tz::TZ_VARIANTS[zone];
            let local = Timestamp(ms).to_chrono().with_timezone(&tz);
            proptest::prop_assert_eq!(u32::from(local_minute_of_day(Timestamp(ms), tz)), local.hour() * 60 + local.minute());
        }
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 23:00 in New York (UTC-5) is inside 21:00–08:00; it ends at 08:00 local, 13:00Z.
        assert_eq!(in_quiet_hours(at("2026-11-25T04:00:00Z"), 21 * 60, 8 * 60, tz), Some(at("2026-11-25T13:00:00Z")));
        assert_eq!(in_quiet_hours(at("2026-11-25T15:00:00Z"), 21 * 60, 8 * 60, tz), None);
    }

    fn paris_week() -> (Tz, WorkingDays) {
        ("Europe/Paris".parse().unwrap(), WorkingDays::default())
    }

    const HOUR: u64 = 60 * 60 * 1000;

    #[test]
    fn working_days_skip_the_weekend() {
        let (tz, days) = paris_week();
        // Friday 2026-11-27 15:00 Paris (14:00Z) + 2d → Tuesday 2026-12-01 15:00 Paris.
        assert_eq!(
            add_working_time(at("2026-11-27T14:00:00Z"), Duration(48 * HOUR), tz, &days),
            at("2026-12-01T14:00:00Z")
        );
        // Within one working day, it is plain addition.
        assert_eq!(
            add_working_time(at("2026-11-24T08:00:00Z"), Duration(4 * HOUR), tz, &days),
            at("2026-11-24T12:00:00Z")
        );
        // Set on a Saturday, the clock starts on Monday at midnight: 1d → Tuesday 00:00 Paris.
        assert_eq!(
            add_working_time(at("2026-11-28T10:00:00Z"), Duration(24 * HOUR), tz, &days),
            at("2026-11-30T23:00:00Z")
        );
        // Zero is now, even on a Sunday.
        assert_eq!(add_working_time(at("2026-11-29T10:00:00Z"), Duration(0), tz, &days), at("2026-11-29T10:00:00Z"));
    }

    #[test]
    fn holidays_do_not_count() {
        let (tz, mut days) = paris_week();
        days.holidays = vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()];
        // Thursday 2026-12-24 09:00 Paris + 1d: Friday the 25th is a holiday → Monday the 28th 09:00.
        assert_eq!(
            add_working_time(at("2026-12-24T08:00:00Z"), Duration(24 * HOUR), tz, &days),
            at("2026-12-28T08:00:00Z")
        );
    }

    #[test]
    fn a_daylight_saving_change_on_a_working_day_is_elapsed_time() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let every_day = WorkingDays {
            weekdays: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
                Weekday::Sat,
                Weekday::Sun,
            ],
            holidays: Vec::new(),
        };
        // Every day worked: the same as adding elapsed time, across the 2027-03-28 change.
        let from = at("2027-03-27T12:00:00Z");
        assert_eq!(add_working_time(from, Duration(48 * HOUR), tz, &every_day), from.plus(Duration(48 * HOUR)));
    }
}
