//! Yearly dates: birthdays and anniversaries of a first purchase, at midnight UTC, with
//! 29 February falling on the 28th in other years.

use chrono::{DateTime, Datelike, NaiveDate};

use crate::time::UnixSeconds;

/// The first anniversary (one year or more after `first`, on its calendar day) at or after
/// `after`, at midnight UTC.
pub(crate) fn anniversary_after(first: UnixSeconds, after: UnixSeconds) -> Option<UnixSeconds> {
    let first = DateTime::from_timestamp(i64::from(first), 0)?.date_naive();
    yearly_after(
        first.month() as u8,
        first.day() as u8,
        first.year() + 1,
        after,
    )
}

/// The first `month`-`day` of a year from `first_year` on at or after `after`, at midnight
/// UTC; a 29 February falls on the 28th in other years.
pub(crate) fn yearly_after(
    month: u8,
    day: u8,
    first_year: i32,
    after: UnixSeconds,
) -> Option<UnixSeconds> {
    let after_date = DateTime::from_timestamp(i64::from(after), 0)?.date_naive();
    let on = |year: i32| {
        NaiveDate::from_ymd_opt(year, month.into(), day.into())
            .or_else(|| NaiveDate::from_ymd_opt(year, 2, 28).filter(|_| (month, day) == (2, 29)))
    };
    // Two years always find one: the day exists every year (or is moved to the 28th).
    let first = after_date.year().max(first_year);
    for year in first..first + 2 {
        let date = on(year)?;
        let midnight = u32::try_from(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp()).ok()?;
        if midnight >= after {
            return Some(midnight);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY;

    #[test]
    fn a_29_february_is_celebrated_on_the_28th_in_other_years() {
        let leap = 951_782_400; // 2000-02-29
        assert_eq!(anniversary_after(leap, leap + DAY), Some(983_318_400)); // 2001-02-28
        assert_eq!(anniversary_after(leap, 1_009_843_200), Some(1_014_854_400)); // 2002-02-28
        assert_eq!(anniversary_after(leap, 1_046_476_800), Some(1_078_012_800));
        // 2004-02-29
    }

    #[test]
    fn a_birthday_this_year_or_next() {
        let t0 = 852_076_800; // 1997-01-01
        assert_eq!(yearly_after(3, 15, 0, t0), Some(858_384_000)); // 1997-03-15
                                                                   // The day itself counts until its midnight has passed.
        assert_eq!(yearly_after(1, 1, 0, t0), Some(t0));
        assert_eq!(yearly_after(1, 1, 0, t0 + 1), Some(883_612_800)); // 1998-01-01
    }
}
