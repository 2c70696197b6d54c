//! Tasks beyond win-back (the retention playbooks), and the rule every kind shares: one
//! contact cap per customer.
//!
//! A kind is a small policy over the state the engine already keeps: when it is due for a
//! customer, which moment to check next (so that the silence scheduler wakes the customer
//! then), its action and its stream. Adding a kind is a variant of [`TaskKind`], its settings
//! and its rule in [`CarePolicy`]; the engine, the sink and the metrics need nothing new.
//!
//! - `convert`: a prospect (visits, no purchase yet) reaches `min_visits` visits: a
//!   first-purchase offer, once per prospect.
//! - `welcome`: `after_days` after a customer's first purchase, if they have not bought again:
//!   a follow-up, once per first purchase.
//! - `anniversary`: `days_before` the yearly anniversary of a customer's first purchase, once
//!   a year.
//! - `revisit`: valuable customers (configured segments) get a call from their account
//!   manager every `every_days` since their last contact or purchase.
//!
//! The contact cap: at most one task of any kind per customer in `contact_cap_days`. When
//! several kinds are due at once, win-back goes first (the engine asks it first).

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::classify::{LifecycleStage, Segment};
use crate::time::{self, UnixSeconds};

/// What a task asks marketing or account managers to do, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Winback,
    Convert,
    Welcome,
    Anniversary,
    Revisit,
}

impl TaskKind {
    pub const ALL: [Self; 5] = [
        Self::Winback,
        Self::Convert,
        Self::Welcome,
        Self::Anniversary,
        Self::Revisit,
    ];

    /// The kinds of `[tasks]`: every one but win-back.
    pub const CARE: [Self; 4] = [
        Self::Convert,
        Self::Welcome,
        Self::Anniversary,
        Self::Revisit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Winback => "winback",
            Self::Convert => "convert",
            Self::Welcome => "welcome",
            Self::Anniversary => "anniversary",
            Self::Revisit => "revisit",
        }
    }
}

/// `[tasks]` settings: the kinds other than win-back (which has `[winback]`) and the cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSettings {
    /// Stream of the kinds below unless a kind names its own.
    pub stream: String,
    /// Approximate cap of that stream (XADD MAXLEN ~).
    pub max_len: u64,
    /// At most one task of any kind, win-back included, per customer in this many days
    /// (0: no cap).
    pub contact_cap_days: u32,
    pub convert: ConvertSettings,
    pub welcome: WelcomeSettings,
    pub anniversary: AnniversarySettings,
    pub revisit: RevisitSettings,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            stream: "crm:tasks".into(),
            max_len: 1_000_000,
            contact_cap_days: 7,
            convert: ConvertSettings::default(),
            welcome: WelcomeSettings::default(),
            anniversary: AnniversarySettings::default(),
            revisit: RevisitSettings::default(),
        }
    }
}

/// `[tasks.convert]`: prospects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvertSettings {
    pub enabled: bool,
    /// Visits without a purchase that make a prospect worth an offer.
    pub min_visits: u8,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for ConvertSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_visits: 3,
            action: "first_purchase_offer".into(),
            stream: String::new(),
        }
    }
}

/// `[tasks.welcome]`: new customers who have not bought again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WelcomeSettings {
    pub enabled: bool,
    /// Days after the first purchase.
    pub after_days: u32,
    /// Not sent more than this many days late (a backfill of old history, a long outage, the
    /// contact cap): a welcome weeks after the fact is no welcome.
    pub max_late_days: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for WelcomeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            after_days: 14,
            max_late_days: 7,
            action: "welcome_follow_up".into(),
            stream: String::new(),
        }
    }
}

/// `[tasks.anniversary]`: the yearly anniversary of the first purchase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnniversarySettings {
    pub enabled: bool,
    /// Days before the anniversary; not sent after it.
    pub days_before: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for AnniversarySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            days_before: 3,
            action: "anniversary_greeting".into(),
            stream: String::new(),
        }
    }
}

/// `[tasks.revisit]`: regular follow-ups of valuable customers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevisitSettings {
    pub enabled: bool,
    /// The segments whose customers get them.
    pub segments: Vec<Segment>,
    /// Days since the last contact or purchase, whichever is later.
    pub every_days: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for RevisitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            segments: vec![Segment::ImportantValue, Segment::ImportantDevelopment],
            every_days: 90,
            action: "account_manager_call".into(),
            stream: String::new(),
        }
    }
}

impl TasksSettings {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stream.is_empty() {
            problems.push(format!("{prefix}.stream must not be empty"));
        }
        if self.convert.min_visits == 0 {
            problems.push(format!("{prefix}.convert.min_visits must be at least 1"));
        }
        if self.welcome.after_days == 0 {
            problems.push(format!("{prefix}.welcome.after_days must be at least 1"));
        }
        if self.anniversary.days_before > 300 {
            problems.push(format!(
                "{prefix}.anniversary.days_before must be at most 300"
            ));
        }
        if self.revisit.every_days == 0 {
            problems.push(format!("{prefix}.revisit.every_days must be at least 1"));
        }
        for (kind, action) in [
            ("convert", &self.convert.action),
            ("welcome", &self.welcome.action),
            ("anniversary", &self.anniversary.action),
            ("revisit", &self.revisit.action),
        ] {
            if action.trim().is_empty() {
                problems.push(format!("{prefix}.{kind}.action must not be empty"));
            }
        }
        problems
    }

    /// The stream each kind's tasks go to (win-back's come from `[winback]`).
    pub fn stream(&self, kind: TaskKind) -> &str {
        self.stream_setting(kind).1
    }

    /// The stream a kind's tasks go to, with the key that set it (its own `stream`, or
    /// `tasks.stream` when that is empty), for messages naming the key.
    pub fn stream_setting(&self, kind: TaskKind) -> (&'static str, &str) {
        let own = match kind {
            TaskKind::Winback => ("", ""),
            TaskKind::Convert => ("tasks.convert.stream", self.convert.stream.as_str()),
            TaskKind::Welcome => ("tasks.welcome.stream", self.welcome.stream.as_str()),
            TaskKind::Anniversary => ("tasks.anniversary.stream", self.anniversary.stream.as_str()),
            TaskKind::Revisit => ("tasks.revisit.stream", self.revisit.stream.as_str()),
        };
        if own.1.is_empty() {
            ("tasks.stream", &self.stream)
        } else {
            own
        }
    }
}

/// Per-customer contact bookkeeping shared by every kind, 4 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contact {
    /// Day (since the Unix epoch) of the last task of any kind; 0 = never. Days are fine
    /// enough for a cap counted in days, and keep the record small.
    pub last_day: u16,
    /// Visits while the customer had not bought yet, saturating.
    pub prospect_visits: u8,
}

impl Contact {
    pub fn record(&mut self, now: UnixSeconds) {
        self.last_day = day(now).max(1);
    }

    /// Counts a visit of a customer who has not bought yet.
    pub fn count_prospect_visit(&mut self) {
        self.prospect_visits = self.prospect_visits.saturating_add(1);
    }
}

fn day(t: UnixSeconds) -> u16 {
    u16::try_from(t / 86_400).unwrap_or(u16::MAX)
}

/// A task of a kind other than win-back.
#[derive(Debug, Clone, PartialEq)]
pub struct CareTask {
    pub kind: TaskKind,
    pub task_id: String,
    pub customer_id: String,
    pub action: Arc<str>,
    pub lifecycle_stage: LifecycleStage,
    pub segment: Option<Segment>,
    pub as_of: UnixSeconds,
    /// The occasion: the first purchase a welcome follows, the anniversary, the day a revisit
    /// fell due; 0 for a prospect.
    pub reference: UnixSeconds,
    pub visits: u8,
}

impl CareTask {
    /// Stream fields, in a stable order; the first four are those of every kind.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("task_id", self.task_id.clone()),
            ("kind", self.kind.as_str().into()),
            ("customer_id", self.customer_id.clone()),
            ("action", self.action.to_string()),
            ("lifecycle_stage", self.lifecycle_stage.as_str().into()),
            ("as_of", time::rfc3339(self.as_of)),
        ];
        if let Some(segment) = self.segment {
            fields.push(("segment", segment.as_str().into()));
        }
        match self.kind {
            TaskKind::Convert => fields.push(("visits", self.visits.to_string())),
            TaskKind::Welcome => fields.push(("first_purchase", time::rfc3339(self.reference))),
            TaskKind::Anniversary => fields.push(("anniversary", time::rfc3339(self.reference))),
            TaskKind::Revisit => fields.push(("due", time::rfc3339(self.reference))),
            TaskKind::Winback => {}
        }
        fields
    }
}

/// What the care kinds need to know about a customer at decision time.
pub struct CareCandidate<'a> {
    pub customer_id: &'a str,
    pub lifecycle_stage: LifecycleStage,
    pub segment: Option<Segment>,
    pub purchases: u32,
    /// First and last purchase, when there is one.
    pub first_purchase: Option<UnixSeconds>,
    pub last_purchase: Option<UnixSeconds>,
}

/// When one kind's task for one customer is due: from `from` to `until` (inclusive), about
/// `reference` (which makes its ID).
#[derive(Debug, Clone, PartialEq)]
struct Occasion {
    kind: TaskKind,
    from: UnixSeconds,
    until: UnixSeconds,
    reference: UnixSeconds,
}

impl Occasion {
    /// Whether a contact on record falls in or after the occasion: it was served (by this
    /// kind or another; either way the customer heard from the business then).
    fn served(&self, contact: &Contact) -> bool {
        contact.last_day != 0 && u32::from(contact.last_day) >= self.from / 86_400
    }

    fn covers(&self, now: UnixSeconds) -> bool {
        (self.from..=self.until).contains(&now)
    }

    /// When, after `now`, this occasion can be acted on: its start, or the end of the cap
    /// holding it back (`capped_until`) if that comes before the occasion is over.
    fn next_moment(
        &self,
        capped_until: Option<UnixSeconds>,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        if self.from > now {
            Some(self.from)
        } else if now <= self.until {
            capped_until.filter(|&end| end <= self.until)
        } else {
            None
        }
    }
}

/// The configured care kinds and the contact cap, resolved for fast decisions.
#[derive(Debug, Clone)]
pub struct CarePolicy {
    contact_cap: u32,
    convert: Option<(u8, Arc<str>)>,
    /// Seconds after the first purchase, seconds it may be late, action.
    welcome: Option<(u32, u32, Arc<str>)>,
    /// Seconds before the anniversary, action.
    anniversary: Option<(u32, Arc<str>)>,
    /// Segments, seconds between contacts, action.
    revisit: Option<([bool; 8], u32, Arc<str>)>,
}

impl CarePolicy {
    pub fn new(settings: &TasksSettings) -> Self {
        let revisit = &settings.revisit;
        Self {
            contact_cap: time::days(settings.contact_cap_days),
            convert: settings.convert.enabled.then(|| {
                (
                    settings.convert.min_visits,
                    settings.convert.action.as_str().into(),
                )
            }),
            welcome: settings.welcome.enabled.then(|| {
                (
                    time::days(settings.welcome.after_days),
                    time::days(settings.welcome.max_late_days),
                    settings.welcome.action.as_str().into(),
                )
            }),
            anniversary: settings.anniversary.enabled.then(|| {
                (
                    time::days(settings.anniversary.days_before),
                    settings.anniversary.action.as_str().into(),
                )
            }),
            revisit: revisit.enabled.then(|| {
                (
                    Segment::ALL.map(|s| revisit.segments.contains(&s)),
                    time::days(revisit.every_days),
                    revisit.action.as_str().into(),
                )
            }),
        }
    }

    /// When the cap lets the customer be contacted again (`None`: now).
    pub fn contact_allowed_from(&self, contact: &Contact, now: UnixSeconds) -> Option<UnixSeconds> {
        if contact.last_day == 0 || self.contact_cap == 0 {
            return None;
        }
        // From the end of the contact's day: at least `contact_cap_days` whole days apart.
        let from = (u32::from(contact.last_day) + 1)
            .saturating_mul(86_400)
            .saturating_add(self.contact_cap);
        (from > now).then_some(from)
    }

    /// The action of an enabled kind's tasks.
    fn action(&self, kind: TaskKind) -> Arc<str> {
        let action = match kind {
            TaskKind::Convert => self.convert.as_ref().map(|c| &c.1),
            TaskKind::Welcome => self.welcome.as_ref().map(|w| &w.2),
            TaskKind::Anniversary => self.anniversary.as_ref().map(|a| &a.1),
            TaskKind::Revisit => self.revisit.as_ref().map(|r| &r.2),
            TaskKind::Winback => None,
        };
        action.cloned().unwrap_or_else(|| "review".into())
    }

    /// The care task due for this customer now, if any (recording the contact), and the next
    /// moment after `now` at which one can fall due without an event. The occasions are
    /// worked out once, unless a task changes them.
    pub fn evaluate(
        &self,
        contact: &mut Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> (Option<CareTask>, Option<UnixSeconds>) {
        let capped_until = self.contact_allowed_from(contact, now);
        let mut due = None;
        let mut next: Option<UnixSeconds> = None;
        for occasion in self.occasions(contact, candidate, now) {
            if due.is_none() && capped_until.is_none() && occasion.covers(now) {
                due = Some(occasion);
            } else if let Some(moment) = occasion.next_moment(capped_until, now) {
                next = Some(next.map_or(moment, |n| n.min(moment)));
            }
        }
        let Some(occasion) = due else {
            return (None, next);
        };
        contact.record(now);
        let task = CareTask {
            kind: occasion.kind,
            task_id: task_id(occasion.kind, candidate.customer_id, occasion.reference),
            customer_id: candidate.customer_id.to_owned(),
            action: self.action(occasion.kind),
            lifecycle_stage: candidate.lifecycle_stage,
            segment: candidate.segment,
            as_of: now,
            reference: occasion.reference,
            visits: contact.prospect_visits,
        };
        (Some(task), self.next_moment(contact, candidate, now))
    }

    /// [`Self::evaluate`]'s task alone.
    pub fn decide(
        &self,
        contact: &mut Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<CareTask> {
        self.evaluate(contact, candidate, now).0
    }

    /// The next moment after `now` at which a care task can fall due without an event: the
    /// start of the next occasion, or the end of the cap holding a due one back.
    pub fn next_moment(
        &self,
        contact: &Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        let capped_until = self.contact_allowed_from(contact, now);
        self.occasions(contact, candidate, now)
            .filter_map(|o| o.next_moment(capped_until, now))
            .min()
    }

    /// Each enabled kind's current or next occasion not yet served, in priority order
    /// (after win-back, which the engine asks first).
    fn occasions<'a>(
        &'a self,
        contact: &'a Contact,
        candidate: &'a CareCandidate<'_>,
        now: UnixSeconds,
    ) -> impl Iterator<Item = Occasion> + 'a {
        let convert = self.convert.as_ref().and_then(|(min_visits, _)| {
            // Once per prospect: a prospect's only task is this one.
            (candidate.purchases == 0 && contact.prospect_visits >= *min_visits).then_some(
                Occasion {
                    kind: TaskKind::Convert,
                    from: 0,
                    until: UnixSeconds::MAX,
                    reference: 0,
                },
            )
        });
        let welcome = self
            .welcome
            .as_ref()
            .zip(candidate.first_purchase)
            .filter(|_| candidate.purchases == 1)
            .map(|((after, max_late, _), first)| {
                let from = first.saturating_add(*after);
                Occasion {
                    kind: TaskKind::Welcome,
                    from,
                    // Late by whole days: 0 is "on the day".
                    until: from.saturating_add(*max_late).saturating_add(86_399),
                    reference: first,
                }
            });
        let anniversary = self
            .anniversary
            .as_ref()
            .zip(candidate.first_purchase)
            .and_then(|((before, _), first)| {
                // This year's, or next year's once this one is served or past.
                let mut after = now;
                for _ in 0..2 {
                    let date = anniversary_after(first, after)?;
                    let occasion = Occasion {
                        kind: TaskKind::Anniversary,
                        from: date.saturating_sub(*before),
                        until: date,
                        reference: date,
                    };
                    if !occasion.served(contact) {
                        return Some(occasion);
                    }
                    after = date.saturating_add(1);
                }
                None
            });
        let revisit = self
            .revisit
            .as_ref()
            .zip(candidate.segment)
            .filter(|((segments, _, _), segment)| segments[segment.index()])
            .zip(candidate.last_purchase)
            .map(|(((_, every, _), _), last_purchase)| {
                let last_contact = u32::from(contact.last_day).saturating_mul(86_400);
                let from = last_purchase.max(last_contact).saturating_add(*every);
                Occasion {
                    kind: TaskKind::Revisit,
                    from,
                    until: UnixSeconds::MAX,
                    reference: from,
                }
            });
        [convert, welcome, anniversary, revisit]
            .into_iter()
            .flatten()
            .filter(|o| !o.served(contact))
    }
}

/// The first anniversary (one year or more after `first`, on its calendar day; 28 February
/// for a 29 February in other years) at or after `after`, at midnight UTC.
fn anniversary_after(first: UnixSeconds, after: UnixSeconds) -> Option<UnixSeconds> {
    let first = DateTime::from_timestamp(i64::from(first), 0)?.date_naive();
    let after_date = DateTime::from_timestamp(i64::from(after), 0)?.date_naive();
    let on = |year: i32| {
        first
            .with_year(year)
            .or_else(|| NaiveDate::from_ymd_opt(year, 2, 28))
    };
    let mut year = after_date.year().max(first.year() + 1);
    loop {
        let date = on(year)?;
        let midnight = u32::try_from(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp()).ok()?;
        if midnight >= after {
            return Some(midnight);
        }
        year += 1;
    }
}

/// Deterministic task ID: 128 bits of xxh3 over kind, customer and reference moment.
pub fn task_id(kind: TaskKind, customer_id: &str, reference: UnixSeconds) -> String {
    let mut key = Vec::with_capacity(customer_id.len() + 16);
    key.extend_from_slice(kind.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(customer_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&reference.to_le_bytes());
    format!("{:032x}", xxh3_128(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800; // 1997-01-01

    /// Convert and welcome only.
    fn policy() -> CarePolicy {
        let mut settings = TasksSettings::default();
        settings.anniversary.enabled = false;
        settings.revisit.enabled = false;
        CarePolicy::new(&settings)
    }

    fn valued(segment: Segment, first: UnixSeconds, last: UnixSeconds) -> CareCandidate<'static> {
        CareCandidate {
            customer_id: "v1",
            lifecycle_stage: LifecycleStage::Active,
            segment: Some(segment),
            purchases: 5,
            first_purchase: Some(first),
            last_purchase: Some(last),
        }
    }

    fn prospect() -> CareCandidate<'static> {
        CareCandidate {
            customer_id: "p1",
            lifecycle_stage: LifecycleStage::Potential,
            segment: None,
            purchases: 0,
            first_purchase: None,
            last_purchase: None,
        }
    }

    fn new_buyer(first: UnixSeconds, purchases: u32) -> CareCandidate<'static> {
        CareCandidate {
            customer_id: "b1",
            lifecycle_stage: LifecycleStage::New,
            segment: None,
            purchases,
            first_purchase: Some(first),
            last_purchase: Some(first),
        }
    }

    #[test]
    fn a_prospect_gets_one_convert_task_at_the_configured_visit() {
        let p = policy();
        let mut contact = Contact::default();
        for visit in 1..=5u32 {
            contact.count_prospect_visit();
            let task = p.decide(&mut contact, &prospect(), T0 + visit * DAY * 10);
            match visit {
                3 => {
                    let task = task.expect("the third visit raises the offer");
                    assert_eq!(task.kind, TaskKind::Convert);
                    assert_eq!(&*task.action, "first_purchase_offer");
                    assert_eq!(task.visits, 3);
                    assert_eq!(task.task_id, task_id(TaskKind::Convert, "p1", 0));
                }
                _ => assert!(task.is_none(), "visit {visit}: {task:?}"),
            }
        }
    }

    #[test]
    fn welcome_comes_after_the_configured_days_once_and_not_after_a_second_purchase() {
        let p = policy();
        let mut contact = Contact::default();
        let buyer = new_buyer(T0, 1);
        assert!(p.decide(&mut contact, &buyer, T0 + 13 * DAY).is_none());
        assert_eq!(
            p.next_moment(&contact, &buyer, T0 + DAY),
            Some(T0 + 14 * DAY)
        );
        let task = p.decide(&mut contact, &buyer, T0 + 14 * DAY).expect("due");
        assert_eq!(task.kind, TaskKind::Welcome);
        assert_eq!(task.reference, T0);
        assert!(task
            .fields()
            .contains(&("first_purchase", time::rfc3339(T0))));
        // Once: not again a month later, nor anything scheduled for it.
        assert!(p.decide(&mut contact, &buyer, T0 + 45 * DAY).is_none());
        assert_eq!(p.next_moment(&contact, &buyer, T0 + 45 * DAY), None);
        // A customer who bought again is not welcomed.
        let mut other = Contact::default();
        assert!(p
            .decide(&mut other, &new_buyer(T0, 2), T0 + 20 * DAY)
            .is_none());
    }

    #[test]
    fn a_welcome_more_than_a_week_late_is_not_sent() {
        let p = policy();
        let mut contact = Contact::default();
        // Learnt about in a backfill, 50 days after the only purchase.
        assert!(p
            .decide(&mut contact, &new_buyer(T0, 1), T0 + 50 * DAY)
            .is_none());
        assert!(p
            .decide(&mut contact, &new_buyer(T0, 1), T0 + 21 * DAY)
            .is_some());
    }

    #[test]
    fn the_contact_cap_holds_a_due_task_back_until_it_ends() {
        let p = policy();
        let buyer = new_buyer(T0, 1);
        let mut contact = Contact::default();
        // Another task (a win-back, say) went out on the day the welcome fell due.
        contact.record(T0 + 14 * DAY);
        assert!(p.decide(&mut contact, &buyer, T0 + 14 * DAY).is_none());
        assert_eq!(
            p.next_moment(&contact, &buyer, T0 + 14 * DAY),
            None,
            "a contact on or after the due day counts as the follow-up"
        );
        // A contact before the due day only delays it: 7 whole days after the contact's day,
        // however late in that day it came.
        let mut early = Contact::default();
        early.record(T0 + 10 * DAY + 23 * 3600);
        assert!(p.decide(&mut early, &buyer, T0 + 14 * DAY).is_none());
        assert_eq!(
            p.next_moment(&early, &buyer, T0 + 14 * DAY),
            Some(T0 + 18 * DAY)
        );
        assert!(p.decide(&mut early, &buyer, T0 + 18 * DAY - 1).is_none());
        assert!(p.decide(&mut early, &buyer, T0 + 18 * DAY).is_some());
    }

    #[test]
    fn a_welcome_with_no_lateness_allowed_is_still_sent_on_its_day() {
        let mut settings = TasksSettings::default();
        settings.welcome.max_late_days = 0;
        let p = CarePolicy::new(&settings);
        // A wall-clock sweep comes a little after the due second.
        let late = T0 + 14 * DAY + 7;
        assert!(p
            .decide(&mut Contact::default(), &new_buyer(T0, 1), late)
            .is_some());
        assert!(p
            .decide(&mut Contact::default(), &new_buyer(T0, 1), T0 + 15 * DAY)
            .is_none());
    }

    #[test]
    fn kinds_switched_off_raise_nothing_and_streams_fall_back_to_the_shared_one() {
        let mut settings = TasksSettings::default();
        settings.convert.enabled = false;
        settings.welcome.enabled = false;
        settings.welcome.stream = "crm:welcome".into();
        let p = CarePolicy::new(&settings);
        let mut contact = Contact {
            prospect_visits: 9,
            ..Contact::default()
        };
        assert!(p.decide(&mut contact, &prospect(), T0).is_none());
        assert!(p
            .decide(&mut contact, &new_buyer(T0, 1), T0 + 30 * DAY)
            .is_none());
        assert_eq!(settings.stream(TaskKind::Convert), "crm:tasks");
        assert_eq!(settings.stream(TaskKind::Welcome), "crm:welcome");
    }

    #[test]
    fn settings_problems_name_their_keys() {
        let mut settings = TasksSettings::default();
        settings.convert.min_visits = 0;
        settings.welcome.action = " ".into();
        settings.stream.clear();
        let problems = settings.problems("tasks");
        for key in [
            "tasks.stream",
            "tasks.convert.min_visits",
            "tasks.welcome.action",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_anniversary_comes_days_before_once_a_year_and_not_after_the_day() {
        let mut settings = TasksSettings::default();
        settings.revisit.enabled = false;
        let p = CarePolicy::new(&settings);
        let first = T0 + 40 * DAY; // 1997-02-10
        let buyer = valued(Segment::GeneralValue, first, first + 100 * DAY);
        let mut contact = Contact::default();
        let day_1998 = 887_068_800; // 1998-02-10
        assert_eq!(
            p.next_moment(&contact, &buyer, first + 200 * DAY),
            Some(day_1998 - 3 * DAY)
        );
        let task = p
            .decide(&mut contact, &buyer, day_1998 - 3 * DAY)
            .expect("due");
        assert_eq!(
            (task.kind, task.reference),
            (TaskKind::Anniversary, day_1998)
        );
        assert!(task
            .fields()
            .contains(&("anniversary", "1998-02-10T00:00:00Z".into())));
        // Once: the next is a year later.
        assert!(p.decide(&mut contact, &buyer, day_1998).is_none());
        assert_eq!(
            p.next_moment(&contact, &buyer, day_1998),
            Some(day_1998 + 365 * DAY - 3 * DAY)
        );
        // Held back past the day by other contacts: skipped that year.
        let mut busy = Contact::default();
        busy.record(day_1998 - 5 * DAY);
        assert!(p.decide(&mut busy, &buyer, day_1998 + DAY).is_none());
    }

    #[test]
    fn a_29_february_is_celebrated_on_the_28th_in_other_years() {
        let leap = 951_782_400; // 2000-02-29
        assert_eq!(anniversary_after(leap, leap + DAY), Some(983_318_400)); // 2001-02-28
        assert_eq!(anniversary_after(leap, 1_009_843_200), Some(1_014_854_400)); // 2002-02-28
        assert_eq!(anniversary_after(leap, 1_046_476_800), Some(1_078_012_800));
        // 2004-02-29
    }

    #[test]
    fn valuable_customers_are_revisited_every_so_many_days_since_the_last_contact() {
        let mut settings = TasksSettings::default();
        settings.anniversary.enabled = false;
        settings.welcome.enabled = false;
        let p = CarePolicy::new(&settings);
        let last = T0 + 10 * DAY;
        let vip = valued(Segment::ImportantValue, T0, last);
        let mut contact = Contact::default();
        assert_eq!(p.next_moment(&contact, &vip, last), Some(last + 90 * DAY));
        let task = p.decide(&mut contact, &vip, last + 90 * DAY).expect("due");
        assert_eq!(task.kind, TaskKind::Revisit);
        assert_eq!(&*task.action, "account_manager_call");
        // The next counts from this contact.
        assert_eq!(
            p.next_moment(&contact, &vip, last + 91 * DAY),
            Some(last + 180 * DAY)
        );
        // Other segments are not revisited.
        let general = valued(Segment::GeneralRetention, T0, last);
        assert!(p
            .decide(&mut Contact::default(), &general, last + 200 * DAY)
            .is_none());
        assert_eq!(p.next_moment(&Contact::default(), &general, last), None);
    }

    #[test]
    fn ids_differ_by_kind_customer_and_reference() {
        let a = task_id(TaskKind::Welcome, "c", T0);
        assert_eq!(a, task_id(TaskKind::Welcome, "c", T0));
        assert_ne!(a, task_id(TaskKind::Convert, "c", T0));
        assert_ne!(a, task_id(TaskKind::Welcome, "d", T0));
        assert_ne!(a, task_id(TaskKind::Welcome, "c", T0 + 1));
    }
}
