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
//!
//! The contact cap: at most one task of any kind per customer in `contact_cap_days`. When
//! several kinds are due at once, win-back goes first (the engine asks it first).

use std::sync::Arc;

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
}

impl TaskKind {
    pub const ALL: [Self; 3] = [Self::Winback, Self::Convert, Self::Welcome];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Winback => "winback",
            Self::Convert => "convert",
            Self::Welcome => "welcome",
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
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            stream: "crm:tasks".into(),
            max_len: 1_000_000,
            contact_cap_days: 7,
            convert: ConvertSettings::default(),
            welcome: WelcomeSettings::default(),
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
        for (kind, action) in [
            ("convert", &self.convert.action),
            ("welcome", &self.welcome.action),
        ] {
            if action.trim().is_empty() {
                problems.push(format!("{prefix}.{kind}.action must not be empty"));
            }
        }
        problems
    }

    /// The stream each kind's tasks go to (win-back's come from `[winback]`).
    pub fn stream(&self, kind: TaskKind) -> &str {
        let own = match kind {
            TaskKind::Winback => "",
            TaskKind::Convert => &self.convert.stream,
            TaskKind::Welcome => &self.welcome.stream,
        };
        if own.is_empty() {
            &self.stream
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
    /// The moment the task is about: the first purchase it welcomes; 0 for a prospect.
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
}

/// The configured care kinds and the contact cap, resolved for fast decisions.
#[derive(Debug, Clone)]
pub struct CarePolicy {
    contact_cap: u32,
    convert: Option<(u8, Arc<str>)>,
    /// Seconds after the first purchase, seconds it may be late, action.
    welcome: Option<(u32, u32, Arc<str>)>,
}

impl CarePolicy {
    pub fn new(settings: &TasksSettings) -> Self {
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
        }
    }

    /// When the cap lets the customer be contacted again (`None`: now).
    pub fn contact_allowed_from(&self, contact: &Contact, now: UnixSeconds) -> Option<UnixSeconds> {
        if contact.last_day == 0 || self.contact_cap == 0 {
            return None;
        }
        let from = u32::from(contact.last_day)
            .saturating_mul(86_400)
            .saturating_add(self.contact_cap);
        (from > now).then_some(from)
    }

    /// Counts a visit of a customer who has not bought yet.
    pub fn on_prospect_visit(&self, contact: &mut Contact) {
        contact.prospect_visits = contact.prospect_visits.saturating_add(1);
    }

    /// The care task due for this customer now, if any; records the contact.
    pub fn decide(
        &self,
        contact: &mut Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<CareTask> {
        if self.contact_allowed_from(contact, now).is_some() {
            return None;
        }
        let (kind, action, reference) = self.due(contact, candidate, now)?;
        contact.record(now);
        Some(CareTask {
            kind,
            task_id: task_id(kind, candidate.customer_id, reference),
            customer_id: candidate.customer_id.to_owned(),
            action,
            lifecycle_stage: candidate.lifecycle_stage,
            segment: candidate.segment,
            as_of: now,
            reference,
            visits: contact.prospect_visits,
        })
    }

    /// The kind due now, ignoring the cap: its action and reference moment.
    fn due(
        &self,
        contact: &Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<(TaskKind, Arc<str>, UnixSeconds)> {
        if let Some((min_visits, action)) = &self.convert {
            // A prospect's only possible task is this one: any contact on record is it.
            if candidate.purchases == 0
                && contact.prospect_visits >= *min_visits
                && contact.last_day == 0
            {
                return Some((TaskKind::Convert, action.clone(), 0));
            }
        }
        if let (Some((after, max_late, action)), Some(first)) =
            (&self.welcome, candidate.first_purchase)
        {
            let due = first.saturating_add(*after);
            // Once per first purchase: not if they bought again, not if any task went out
            // since it was due (that contact was the follow-up), not too late.
            if candidate.purchases == 1
                && (due..=due.saturating_add(*max_late)).contains(&now)
                && u32::from(contact.last_day) < due / 86_400
            {
                return Some((TaskKind::Welcome, action.clone(), first));
            }
        }
        None
    }

    /// The next moment after `now` at which a care task can fall due without an event: the
    /// welcome's day, or the end of the cap holding a due task back.
    pub fn next_moment(
        &self,
        contact: &Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        if self.due(contact, candidate, now).is_some() {
            return self.contact_allowed_from(contact, now);
        }
        let (after, _, _) = self.welcome.as_ref()?;
        let due = candidate.first_purchase?.saturating_add(*after);
        (candidate.purchases == 1 && due > now).then_some(due)
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

    fn policy() -> CarePolicy {
        CarePolicy::new(&TasksSettings::default())
    }

    fn prospect() -> CareCandidate<'static> {
        CareCandidate {
            customer_id: "p1",
            lifecycle_stage: LifecycleStage::Potential,
            segment: None,
            purchases: 0,
            first_purchase: None,
        }
    }

    fn new_buyer(first: UnixSeconds, purchases: u32) -> CareCandidate<'static> {
        CareCandidate {
            customer_id: "b1",
            lifecycle_stage: LifecycleStage::New,
            segment: None,
            purchases,
            first_purchase: Some(first),
        }
    }

    #[test]
    fn a_prospect_gets_one_convert_task_at_the_configured_visit() {
        let p = policy();
        let mut contact = Contact::default();
        for visit in 1..=5u32 {
            p.on_prospect_visit(&mut contact);
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
        // A contact before the due day only delays it.
        let mut early = Contact::default();
        early.record(T0 + 10 * DAY);
        assert!(p.decide(&mut early, &buyer, T0 + 14 * DAY).is_none());
        assert_eq!(
            p.next_moment(&early, &buyer, T0 + 14 * DAY),
            Some(T0 + 17 * DAY)
        );
        assert!(p.decide(&mut early, &buyer, T0 + 17 * DAY).is_some());
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
    fn ids_differ_by_kind_customer_and_reference() {
        let a = task_id(TaskKind::Welcome, "c", T0);
        assert_eq!(a, task_id(TaskKind::Welcome, "c", T0));
        assert_ne!(a, task_id(TaskKind::Convert, "c", T0));
        assert_ne!(a, task_id(TaskKind::Welcome, "d", T0));
        assert_ne!(a, task_id(TaskKind::Welcome, "c", T0 + 1));
    }
}
