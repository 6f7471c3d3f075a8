//! Instants and spans of the core: `Timestamp` (ms since the Unix epoch, UTC) and `Duration`.
//!
//! The core never reads a clock: every `now` arrives as an argument. Durations in the
//! workflow language (`3d`, `12h`, `1h30m`) parse here.
//!
//! Invariant: a parsed duration is positive and at most `limits::DURATION_MS_MAX`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::DURATION_MS_MAX;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// A span of time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Duration(pub u64);

impl Timestamp {
    pub const fn ms(self) -> i64 {
        self.0
    }

    #[must_use]
    pub fn plus(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(duration.0).unwrap_or(i64::MAX)))
    }

    /// The span from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    pub fn to_chrono(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    pub fn from_chrono<Tz: chrono::TimeZone>(at: &chrono::DateTime<Tz>) -> Timestamp {
        Timestamp(at.timestamp_millis())
    }

    /// RFC 3339 in UTC with millisecond precision, as histories and reports print it.
    pub fn rfc3339(self) -> String {
        self.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Duration {
    pub const SECOND: Duration = Duration(1000);
    pub const MINUTE: Duration = Duration(60 * 1000);
    pub const HOUR: Duration = Duration(60 * 60 * 1000);
    pub const DAY: Duration = Duration(24 * 60 * 60 * 1000);

    pub const fn ms(self) -> u64 {
        self.0
    }

    /// Parses the language's duration syntax: one or more `<integer><unit>` groups with unit
    /// `w`, `d`, `h`, `m`, `s` or `ms`, largest first, e.g. `3d`, `12h`, `1h30m`, `90s`.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        if text.contains(char::is_whitespace) {
            return Err(DurationError::Syntax);
        }
        let bytes = text.as_bytes();
        let mut index = 0;
        let mut total: u64 = 0;
        let mut last_unit_ms = u64::MAX;
        while index < bytes.len() {
            let digits_start = index;
            while index < bytes.len() && bytes[index].is_ascii_digit() {
                index += 1;
            }
            if digits_start == index {
                return Err(DurationError::Syntax);
            }
            let number: u64 = text[digits_start..index].parse().map_err(|_| DurationError::TooLong)?;
            let unit_start = index;
            while index < bytes.len() && bytes[index].is_ascii_alphabetic() {
                index += 1;
            }
            let unit_ms = match &text[unit_start..index] {
                "w" => 7 * Duration::DAY.0,
                "d" => Duration::DAY.0,
                "h" => Duration::HOUR.0,
                "m" => Duration::MINUTE.0,
                "s" => Duration::SECOND.0,
                "ms" => 1,
                "" => return Err(DurationError::MissingUnit),
                other => return Err(DurationError::UnknownUnit(other.to_owned())),
            };
            if unit_ms >= last_unit_ms {
                return Err(DurationError::UnitOrder);
            }
            last_unit_ms = unit_ms;
            total =
                number.checked_mul(unit_ms).and_then(|part| total.checked_add(part)).ok_or(DurationError::TooLong)?;
        }
        if total == 0 {
            return Err(DurationError::Zero);
        }
        if total > DURATION_MS_MAX {
            return Err(DurationError::TooLong);
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    /// The shortest spelling in the language's own syntax (`1d12h`, `90s` → `1m30s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, unit_ms) in
            [("d", Duration::DAY.0), ("h", Duration::HOUR.0), ("m", Duration::MINUTE.0), ("s", 1000), ("ms", 1)]
        {
            if rest >= unit_ms {
                write!(f, "{}{unit}", rest / unit_ms)?;
                rest %= unit_ms;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("the duration is empty")]
    Empty,
    #[error("a duration is a number followed by a unit, like `3d`, `12h` or `1h30m`")]
    Syntax,
    #[error("the number has no unit")]
    MissingUnit,
    #[error("`{0}` is not a unit; use w, d, h, m, s or ms")]
    UnknownUnit(String),
    #[error("units must go from largest to smallest, each at most once (`1h30m`, not `30m1h`)")]
    UnitOrder,
    #[error("a duration must be longer than zero")]
    Zero,
    #[error("the duration is longer than the limit of 3660 days")]
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(Duration::parse("3d"), Ok(Duration(3 * 86_400_000)));
        assert_eq!(Duration::parse("12h"), Ok(Duration(12 * 3_600_000)));
        assert_eq!(Duration::parse("30m"), Ok(Duration(30 * 60_000)));
        assert_eq!(Duration::parse("1h30m"), Ok(Duration(90 * 60_000)));
        assert_eq!(Duration::parse("2w"), Ok(Duration(14 * 86_400_000)));
        assert_eq!(Duration::parse("250ms"), Ok(Duration(250)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert_eq!(Duration::parse(""), Err(DurationError::Empty));
        assert_eq!(Duration::parse("3"), Err(DurationError::MissingUnit));
        assert_eq!(Duration::parse("3 days"), Err(DurationError::Syntax));
        assert_eq!(Duration::parse("3y"), Err(DurationError::UnknownUnit("y".into())));
        assert_eq!(Duration::parse("30m1h"), Err(DurationError::UnitOrder));
        assert_eq!(Duration::parse("0s"), Err(DurationError::Zero));
        assert_eq!(Duration::parse("99999999999999999999d"), Err(DurationError::TooLong));
        assert_eq!(Duration::parse("4000d"), Err(DurationError::TooLong));
    }

    #[test]
    fn display_round_trips() {
        for text in ["3d", "12h", "1h30m", "1d12h", "90ms", "1m30s"] {
            let parsed = Duration::parse(text).unwrap();
            assert_eq!(Duration::parse(&parsed.to_string()), Ok(parsed));
        }
    }
}
