//! Time as churnd keeps it: whole seconds since the Unix epoch in a `u32`.
//!
//! Per-customer state holds several timestamps; four bytes each (valid until 2106) keep the
//! record small, and second resolution is far finer than any churn horizon. Zero means "never".

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, SecondsFormat};

/// Seconds since the Unix epoch; 0 stands for "never".
pub type UnixSeconds = u32;

pub(crate) const SECONDS_PER_DAY: f64 = 86_400.0;

/// Largest event time churnd accepts, in milliseconds (the last second a `u32` can hold).
pub(crate) const MAX_MILLIS: u64 = u32::MAX as u64 * 1000;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds to churnd seconds, saturating (callers validate the range first).
pub fn from_millis(ms: u64) -> UnixSeconds {
    (ms / 1000).min(u32::MAX as u64) as UnixSeconds
}

/// Days elapsed from `from` to `to`, never negative (an event slightly ahead of the clock
/// counts as "just now").
pub(crate) fn days_between(from: UnixSeconds, to: UnixSeconds) -> f64 {
    to.saturating_sub(from) as f64 / SECONDS_PER_DAY
}

/// Seconds in a day (UTC has no leap seconds in Unix time).
pub const DAY: u32 = 86_400;

/// A whole number of days as seconds, saturating.
pub fn days(n: u32) -> u32 {
    n.saturating_mul(DAY)
}

/// A whole number of days and the rest of the last one: `n` days late is anything up to the
/// end of the `n`th day after.
pub(crate) fn days_and_the_rest(n: u32) -> u32 {
    days(n).saturating_add(DAY - 1)
}

/// A UTC day since the Unix epoch, in two bytes (until 2149): per-customer bookkeeping
/// counted in whole days keeps the record small. Day 0 stands for "never".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(u16);

impl Day {
    pub const NEVER: Day = Day(0);

    /// The day `t` falls on (the last representable day for later times).
    pub fn of(t: UnixSeconds) -> Self {
        Day(u16::try_from(t / DAY).unwrap_or(u16::MAX))
    }

    /// The day numbered `n` since the epoch (as stored).
    pub(crate) fn from_number(n: u16) -> Self {
        Day(n)
    }

    /// Its number since the epoch (as stored).
    pub fn number(self) -> u16 {
        self.0
    }

    pub(crate) fn is_never(self) -> bool {
        self.0 == 0
    }

    /// Its first second.
    pub fn start(self) -> UnixSeconds {
        u32::from(self.0).saturating_mul(DAY)
    }

    /// The first second of the day after.
    pub fn end(self) -> UnixSeconds {
        (u32::from(self.0) + 1).saturating_mul(DAY)
    }
}

/// RFC 3339 in UTC with second precision, e.g. `1997-09-30T00:00:00Z`.
pub fn rfc3339(t: UnixSeconds) -> String {
    DateTime::from_timestamp(t as i64, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
pub fn parse_date_or_datetime(s: &str) -> Option<UnixSeconds> {
    let s = s.trim();
    let secs = if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        date.and_hms_opt(0, 0, 0)?.and_utc().timestamp()
    } else {
        DateTime::parse_from_rfc3339(s).ok()?.timestamp()
    };
    u32::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_datetimes_parse_to_utc_seconds() {
        assert_eq!(parse_date_or_datetime("1970-01-02"), Some(86_400));
        assert_eq!(parse_date_or_datetime("1997-01-01"), Some(852_076_800));
        assert_eq!(
            parse_date_or_datetime("1997-01-01T02:00:00+02:00"),
            Some(852_076_800)
        );
        assert_eq!(parse_date_or_datetime("1969-12-31"), None);
        assert_eq!(parse_date_or_datetime("01/02/1997"), None);
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(rfc3339(852_076_800), "1997-01-01T00:00:00Z");
        assert_eq!(
            parse_date_or_datetime(&rfc3339(875_577_600)),
            Some(875_577_600)
        );
    }

    #[test]
    fn a_day_spans_from_its_first_second_to_the_next_day() {
        let t = 852_076_800 + 5 * 3600; // 1997-01-01T05:00:00Z
        let day = Day::of(t);
        assert_eq!(day.start(), 852_076_800);
        assert_eq!(day.end(), 852_076_800 + DAY);
        assert_eq!(Day::of(day.end()), Day::from_number(day.number() + 1));
        assert!(Day::of(0).is_never() && !day.is_never());
        assert_eq!(Day::of(u32::MAX).number(), (u32::MAX / DAY) as u16);
        assert_eq!(days_and_the_rest(2), 3 * DAY - 1);
    }

    #[test]
    fn days_between_never_goes_negative() {
        assert_eq!(days_between(100, 50), 0.0);
        assert_eq!(days_between(0, 86_400 * 3), 3.0);
    }
}
