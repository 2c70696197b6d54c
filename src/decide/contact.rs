//! How often a customer hears from the business: the last contact of any kind, kept per
//! customer, and the cap every kind shares (`tasks.contact_cap_days`).

use crate::time::{self, Day, UnixSeconds};

/// Per-customer contact bookkeeping shared by every kind, 4 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contact {
    /// The day of the last task of any kind; never for none. Days are fine enough for a
    /// cap counted in days, and keep the record small.
    pub last_day: Day,
    /// Visits while the customer had not bought yet, saturating.
    pub prospect_visits: u8,
}

impl Contact {
    /// Records a task sent at `now`.
    pub fn record(&mut self, now: UnixSeconds) {
        // Day 0 stands for never: a task on 1970-01-01 counts as on the day after.
        self.last_day = Day::of(now).max(Day::from_number(1));
    }

    /// Counts a visit of a customer who has not bought yet.
    pub(crate) fn count_prospect_visit(&mut self) {
        self.prospect_visits = self.prospect_visits.saturating_add(1);
    }

    /// Whether the customer was contacted on or after `t`'s day.
    pub fn since(&self, t: UnixSeconds) -> bool {
        !self.last_day.is_never() && self.last_day >= Day::of(t)
    }
}

/// At most one task of any kind per customer in so many whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactCap {
    /// Seconds after the end of the contact's day; 0: no cap.
    wait: u32,
}

impl ContactCap {
    pub fn days(n: u32) -> Self {
        Self {
            wait: time::days(n),
        }
    }

    /// When the cap lets the customer be contacted again (`None`: now). It counts from the
    /// end of the last contact's day: at least the cap's days apart, whatever the hour.
    pub(crate) fn allowed_from(&self, contact: &Contact, now: UnixSeconds) -> Option<UnixSeconds> {
        if contact.last_day.is_never() || self.wait == 0 {
            return None;
        }
        let from = contact.last_day.end().saturating_add(self.wait);
        (from > now).then_some(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY;

    const T0: u32 = 852_076_800;

    #[test]
    fn the_cap_counts_whole_days_from_the_end_of_the_contact_s_day() {
        let cap = ContactCap::days(7);
        let mut contact = Contact::default();
        assert_eq!(cap.allowed_from(&contact, T0), None, "never contacted");
        contact.record(T0 + 10 * DAY + 23 * 3600);
        assert_eq!(
            cap.allowed_from(&contact, T0 + 14 * DAY),
            Some(T0 + 18 * DAY)
        );
        assert_eq!(cap.allowed_from(&contact, T0 + 18 * DAY), None);
        assert_eq!(
            ContactCap::days(0).allowed_from(&contact, T0 + 11 * DAY),
            None
        );
    }

    #[test]
    fn a_contact_counts_for_its_whole_day_and_after() {
        let mut contact = Contact::default();
        assert!(!contact.since(0));
        contact.record(T0 + 3600);
        assert!(contact.since(T0 + 20 * 3600), "later the same day");
        assert!(contact.since(T0 - DAY));
        assert!(!contact.since(T0 + DAY));
    }
}
