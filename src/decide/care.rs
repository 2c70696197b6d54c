//! The care kinds: tasks beyond win-back, each a small rule over state the engine already
//! keeps. A kind is due on an *occasion* (a window in time about a reference moment, which
//! makes its ID) and says when its next occasion begins, so that the silence scheduler wakes
//! the customer then.
//!
//! - `convert`: a prospect (visits, no purchase yet) reaches `min_visits` visits: a
//!   first-purchase offer, once per prospect.
//! - `welcome`: `after_days` after a customer's first purchase, if they have not bought again:
//!   a follow-up, once per first purchase, at most `max_late_days` late.
//! - `birthday`: `days_before` a customer's birthday (the profile's `birthday`), once a year.
//! - `anniversary`: `days_before` the yearly anniversary of a customer's first purchase, once
//!   a year.
//! - `revisit`: valuable customers (configured segments) get a call from their account
//!   manager every `every_days` since their last contact or purchase.
//! - `service_recovery`: a very low feedback score (at most `max_score`) from a valuable
//!   customer, at once: not an occasion in time but the answer to an event.
//!
//! Adding a kind is a variant of [`TaskKind`], its settings, a rule here and its [`Detail`];
//! the engine, the sink and the metrics need nothing new.

use std::sync::Arc;

use super::calendar::{anniversary_after, yearly_after};
use super::contact::{Contact, ContactCap};
use super::holdout::Holdout;
use super::settings::TasksSettings;
use super::task::{care_task_id, Detail, Task, TaskKind};
use super::Assessment;
use crate::classify::Segment;
use crate::time::{self, UnixSeconds};

/// `[tasks.convert]`, resolved.
#[derive(Debug, Clone)]
struct Convert {
    min_visits: u8,
    action: Arc<str>,
}

/// `[tasks.welcome]`, resolved.
#[derive(Debug, Clone)]
struct Welcome {
    /// Seconds after the first purchase.
    after: u32,
    /// Seconds it may be late: whole days and the rest of the last.
    max_late: u32,
    action: Arc<str>,
}

/// `[tasks.birthday]` or `[tasks.anniversary]`, resolved.
#[derive(Debug, Clone)]
struct Yearly {
    /// Seconds ahead of the date.
    before: u32,
    action: Arc<str>,
}

/// `[tasks.revisit]`, resolved.
#[derive(Debug, Clone)]
struct Revisit {
    /// By [`Segment::index`]: whether the segment is revisited.
    segments: [bool; Segment::ALL.len()],
    /// Seconds between contacts.
    every: u32,
    action: Arc<str>,
}

/// `[tasks.service_recovery]`, resolved.
#[derive(Debug, Clone)]
struct ServiceRecovery {
    max_score: u8,
    segments: [bool; Segment::ALL.len()],
    bypass_contact_cap: bool,
    /// Seconds a feedback may be old: whole days, and the rest of the day it came.
    max_late: u32,
    action: Arc<str>,
}

/// The configured care kinds, resolved for fast decisions.
#[derive(Debug, Clone)]
pub(crate) struct CarePolicy {
    convert: Option<Convert>,
    welcome: Option<Welcome>,
    birthday: Option<Yearly>,
    anniversary: Option<Yearly>,
    revisit: Option<Revisit>,
    service_recovery: Option<ServiceRecovery>,
    /// By position in [`TaskKind::CARE`]: who is held out of each kind. Their tasks are
    /// raised and recorded as contacts like everyone's (so both groups see the same
    /// playbook), and go to the control stream.
    holdouts: [Holdout; TaskKind::CARE.len()],
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
        contact.since(self.from)
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

impl CarePolicy {
    pub fn new(settings: &TasksSettings) -> Self {
        let action = |a: &String| -> Arc<str> { a.as_str().into() };
        let segments = |list: &[Segment]| Segment::ALL.map(|s| list.contains(&s));
        let (convert, welcome) = (&settings.convert, &settings.welcome);
        let (birthday, anniversary) = (&settings.birthday, &settings.anniversary);
        let (revisit, recovery) = (&settings.revisit, &settings.service_recovery);
        Self {
            convert: convert.enabled.then(|| Convert {
                min_visits: convert.min_visits.get(),
                action: action(&convert.action),
            }),
            welcome: welcome.enabled.then(|| Welcome {
                after: time::days(welcome.after_days.get()),
                max_late: time::days_and_the_rest(welcome.max_late_days),
                action: action(&welcome.action),
            }),
            birthday: birthday.enabled.then(|| Yearly {
                before: time::days(birthday.days_before),
                action: action(&birthday.action),
            }),
            anniversary: anniversary.enabled.then(|| Yearly {
                before: time::days(anniversary.days_before),
                action: action(&anniversary.action),
            }),
            revisit: revisit.enabled.then(|| Revisit {
                segments: segments(&revisit.segments),
                every: time::days(revisit.every_days.get()),
                action: action(&revisit.action),
            }),
            service_recovery: recovery.enabled.then(|| ServiceRecovery {
                max_score: recovery.max_score,
                segments: segments(&recovery.segments),
                bypass_contact_cap: recovery.bypass_contact_cap,
                max_late: time::days_and_the_rest(recovery.max_late_days),
                action: action(&recovery.action),
            }),
            holdouts: TaskKind::CARE.map(|kind| Holdout::new(kind, settings.control_share(kind).1)),
        }
    }

    /// The action of an enabled kind's tasks.
    fn action(&self, kind: TaskKind) -> Arc<str> {
        let action = match kind {
            TaskKind::Convert => self.convert.as_ref().map(|c| &c.action),
            TaskKind::Welcome => self.welcome.as_ref().map(|w| &w.action),
            TaskKind::Birthday => self.birthday.as_ref().map(|b| &b.action),
            TaskKind::Anniversary => self.anniversary.as_ref().map(|a| &a.action),
            TaskKind::Revisit => self.revisit.as_ref().map(|r| &r.action),
            TaskKind::ServiceRecovery => self.service_recovery.as_ref().map(|s| &s.action),
            TaskKind::Winback => None,
        };
        action.cloned().unwrap_or_else(|| "review".into())
    }

    /// The care task due for the customer now, if any (recording the contact), and the next
    /// moment after now at which one can fall due without an event.
    pub fn evaluate(
        &self,
        cap: ContactCap,
        contact: &mut Contact,
        a: &Assessment<'_>,
    ) -> (Option<Task>, Option<UnixSeconds>) {
        let now = a.now;
        let capped_until = cap.allowed_from(contact, now);
        let mut due = None;
        let mut next: Option<UnixSeconds> = None;
        for occasion in self.occasions(contact, a) {
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
        let reference = occasion.reference;
        let detail = match occasion.kind {
            TaskKind::Convert => Detail::Convert {
                visits: contact.prospect_visits,
            },
            TaskKind::Welcome => Detail::Welcome {
                first_purchase: reference,
            },
            TaskKind::Birthday => Detail::Birthday { date: reference },
            TaskKind::Anniversary => Detail::Anniversary { date: reference },
            TaskKind::Revisit => Detail::Revisit { due: reference },
            TaskKind::Winback | TaskKind::ServiceRecovery => {
                unreachable!("{:?} is no occasion", occasion.kind)
            }
        };
        let task = self.task(reference, a, detail);
        (Some(task), self.next_moment(cap, contact, a))
    }

    fn task(&self, reference: UnixSeconds, a: &Assessment<'_>, detail: Detail) -> Task {
        let kind = detail.kind();
        Task {
            task_id: care_task_id(kind, a.customer_id, reference),
            customer_id: a.customer_id.to_owned(),
            action: self.action(kind),
            lifecycle_stage: a.stage,
            segment: a.segment(),
            as_of: a.now,
            expires_at: 0,
            tags: Vec::new(),
            profile: None,
            detail,
            group: self.holdouts[TaskKind::CARE
                .iter()
                .position(|&k| k == kind)
                .expect("a care kind")]
            .group(a.customer_id),
            // The playbook fills it in for every task it raises.
            value: None,
        }
    }

    /// The answer to a feedback `score` given at `feedback_at`: a service-recovery task if
    /// the score is low enough, the customer valuable, the feedback recent (and the cap
    /// allows, unless it is bypassed), recording the contact. One per second of feedback: its
    /// ID is made from its time.
    pub fn service_recovery(
        &self,
        cap: ContactCap,
        contact: &mut Contact,
        a: &Assessment<'_>,
        (score, feedback_at): (u8, UnixSeconds),
    ) -> Option<Task> {
        let s = self.service_recovery.as_ref()?;
        let now = a.now;
        let valuable = a.segment().is_some_and(|seg| s.segments[seg.index()]);
        let allowed = s.bypass_contact_cap || cap.allowed_from(contact, now).is_none();
        let recent = now.saturating_sub(feedback_at) <= s.max_late;
        if score > s.max_score || !valuable || !allowed || !recent {
            return None;
        }
        contact.record(now);
        let detail = Detail::ServiceRecovery { score, feedback_at };
        Some(self.task(feedback_at, a, detail))
    }

    /// The next moment after now at which a care task can fall due without an event: the
    /// start of the next occasion, or the end of the cap holding a due one back.
    pub(crate) fn next_moment(
        &self,
        cap: ContactCap,
        contact: &Contact,
        a: &Assessment<'_>,
    ) -> Option<UnixSeconds> {
        let capped_until = cap.allowed_from(contact, a.now);
        self.occasions(contact, a)
            .filter_map(|o| o.next_moment(capped_until, a.now))
            .min()
    }

    /// Each enabled kind's current or next occasion not yet served, in priority order
    /// (after win-back, which the playbook asks first).
    fn occasions<'a>(
        &'a self,
        contact: &'a Contact,
        a: &'a Assessment<'_>,
    ) -> impl Iterator<Item = Occasion> + 'a {
        let now = a.now;
        let purchases = a.purchases();
        let convert = self.convert.as_ref().and_then(|c| {
            // Once per prospect: a prospect's only task is this one.
            (purchases == 0 && contact.prospect_visits >= c.min_visits).then_some(Occasion {
                kind: TaskKind::Convert,
                from: 0,
                until: UnixSeconds::MAX,
                reference: 0,
            })
        });
        let welcome = self
            .welcome
            .as_ref()
            .zip(a.first_purchase())
            .filter(|_| purchases == 1)
            .map(|(w, first)| {
                let from = first.saturating_add(w.after);
                Occasion {
                    kind: TaskKind::Welcome,
                    from,
                    until: from.saturating_add(w.max_late),
                    reference: first,
                }
            });
        let birthday = self
            .birthday
            .as_ref()
            .zip(a.birthday())
            .and_then(|(b, (month, day))| {
                yearly(TaskKind::Birthday, b.before, contact, now, |after| {
                    yearly_after(month, day, 0, after)
                })
            });
        let anniversary =
            self.anniversary
                .as_ref()
                .zip(a.first_purchase())
                .and_then(|(y, first)| {
                    yearly(TaskKind::Anniversary, y.before, contact, now, |after| {
                        anniversary_after(first, after)
                    })
                });
        let revisit = self
            .revisit
            .as_ref()
            .zip(a.segment())
            .filter(|(r, segment)| r.segments[segment.index()])
            .zip(a.last_purchase())
            .map(|((r, _), last_purchase)| {
                let from = last_purchase
                    .max(contact.last_day.start())
                    .saturating_add(r.every);
                Occasion {
                    kind: TaskKind::Revisit,
                    from,
                    until: UnixSeconds::MAX,
                    reference: from,
                }
            });
        [convert, welcome, birthday, anniversary, revisit]
            .into_iter()
            .flatten()
            .filter(|o| !o.served(contact))
    }
}

/// A yearly occasion `before` seconds ahead of its date: this year's, or next year's once
/// this one is served or past. `after(t)` is the first date at or after `t`.
fn yearly(
    kind: TaskKind,
    before: u32,
    contact: &Contact,
    now: UnixSeconds,
    after: impl Fn(UnixSeconds) -> Option<UnixSeconds>,
) -> Option<Occasion> {
    let mut from = now;
    for _ in 0..2 {
        let date = after(from)?;
        let occasion = Occasion {
            kind,
            from: date.saturating_sub(before),
            until: date,
            reference: date,
        };
        if !occasion.served(contact) {
            return Some(occasion);
        }
        from = date.saturating_add(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{LifecycleStage, Risk};
    use crate::decide::Scored;
    use crate::event::{Event, EventKind};
    use crate::features::CustomerFeatures;
    use crate::model::Score;
    use crate::time::{Day, DAY};

    const T0: u32 = 852_076_800; // 1997-01-01

    static SCORE: std::sync::LazyLock<Score> = std::sync::LazyLock::new(|| {
        let model = crate::model::Model::from_file(&crate::model::tests::recency_only_model_file())
            .expect("valid test model");
        model.score(&[0.0; crate::features::FEATURE_COUNT])
    });

    const CAP: u32 = 7;

    /// Convert and welcome only.
    fn policy() -> CarePolicy {
        let mut settings = TasksSettings::default();
        settings.anniversary.enabled = false;
        settings.revisit.enabled = false;
        CarePolicy::new(&settings)
    }

    fn cap() -> ContactCap {
        ContactCap::days(CAP)
    }

    /// A customer's history: `purchases` purchases, the first at `first`, the others at
    /// `last` (or visits only, for a prospect).
    fn history(purchases: u32, first: UnixSeconds, last: UnixSeconds) -> CustomerFeatures {
        let mut f = CustomerFeatures::default();
        for i in 0..purchases {
            let at = if i == 0 { first } else { last };
            f.apply(&Event::new("c", EventKind::Purchase, 30.0, at));
        }
        if purchases == 0 {
            f.apply(&Event::new("c", EventKind::Visit, 0.0, first));
        }
        f
    }

    /// `features` assessed at `now`, in `segment` (a buyer) or none (a prospect or new buyer).
    fn at<'a>(
        id: &'a str,
        features: &'a CustomerFeatures,
        segment: Option<Segment>,
        now: UnixSeconds,
    ) -> Assessment<'a> {
        Assessment {
            customer_id: id,
            now,
            stage: LifecycleStage::Active,
            features,
            scored: segment.map(|segment| Scored {
                probability: 0.5,
                risk: Risk::Medium,
                segment,
                monetary_365d: 100.0,
                score: &SCORE,
            }),
            profile: None,
            feedback: None,
            coupons: None,
            value: None,
        }
    }

    fn decide(
        p: &CarePolicy,
        contact: &mut Contact,
        features: &CustomerFeatures,
        segment: Option<Segment>,
        now: UnixSeconds,
    ) -> Option<Task> {
        p.evaluate(cap(), contact, &at("c", features, segment, now))
            .0
    }

    fn next(
        p: &CarePolicy,
        contact: &Contact,
        features: &CustomerFeatures,
        segment: Option<Segment>,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        p.next_moment(cap(), contact, &at("c", features, segment, now))
    }

    /// The value of one of the task's stream fields.
    fn field(task: &Task, name: &str) -> Option<String> {
        task.fields()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn a_prospect_gets_one_convert_task_at_the_configured_visit() {
        let p = policy();
        let prospect = history(0, T0, T0);
        let mut contact = Contact::default();
        for visit in 1..=5u32 {
            contact.count_prospect_visit();
            let task = decide(&p, &mut contact, &prospect, None, T0 + visit * DAY * 10);
            match visit {
                3 => {
                    let task = task.expect("the third visit raises the offer");
                    assert_eq!(task.kind(), TaskKind::Convert);
                    assert_eq!(&*task.action, "first_purchase_offer");
                    assert_eq!(task.detail, Detail::Convert { visits: 3 });
                    assert_eq!(task.task_id, care_task_id(TaskKind::Convert, "c", 0));
                }
                _ => assert!(task.is_none(), "visit {visit}: {task:?}"),
            }
        }
    }

    #[test]
    fn welcome_comes_after_the_configured_days_once_and_not_after_a_second_purchase() {
        let p = policy();
        let mut contact = Contact::default();
        let buyer = history(1, T0, T0);
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 13 * DAY).is_none());
        assert_eq!(
            next(&p, &contact, &buyer, None, T0 + DAY),
            Some(T0 + 14 * DAY)
        );
        let task = decide(&p, &mut contact, &buyer, None, T0 + 14 * DAY).expect("due");
        assert_eq!(task.kind(), TaskKind::Welcome);
        assert_eq!(task.detail, Detail::Welcome { first_purchase: T0 });
        assert_eq!(field(&task, "first_purchase"), Some(time::rfc3339(T0)));
        // Once: not again a month later, nor anything scheduled for it.
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 45 * DAY).is_none());
        assert_eq!(next(&p, &contact, &buyer, None, T0 + 45 * DAY), None);
        // A customer who bought again is not welcomed.
        let again = history(2, T0, T0 + DAY);
        assert!(decide(&p, &mut Contact::default(), &again, None, T0 + 20 * DAY).is_none());
    }

    #[test]
    fn a_welcome_more_than_a_week_late_is_not_sent() {
        let p = policy();
        let buyer = history(1, T0, T0);
        let mut contact = Contact::default();
        // Learnt about in a backfill, 50 days after the only purchase.
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 50 * DAY).is_none());
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 21 * DAY).is_some());
    }

    #[test]
    fn the_contact_cap_holds_a_due_task_back_until_it_ends() {
        let p = policy();
        let buyer = history(1, T0, T0);
        let mut contact = Contact::default();
        // Another task (a win-back, say) went out on the day the welcome fell due.
        contact.record(T0 + 14 * DAY);
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 14 * DAY).is_none());
        assert_eq!(
            next(&p, &contact, &buyer, None, T0 + 14 * DAY),
            None,
            "a contact on or after the due day counts as the follow-up"
        );
        // A contact before the due day only delays it: 7 whole days after the contact's day,
        // however late in that day it came.
        let mut early = Contact::default();
        early.record(T0 + 10 * DAY + 23 * 3600);
        assert!(decide(&p, &mut early, &buyer, None, T0 + 14 * DAY).is_none());
        assert_eq!(
            next(&p, &early, &buyer, None, T0 + 14 * DAY),
            Some(T0 + 18 * DAY)
        );
        assert!(decide(&p, &mut early, &buyer, None, T0 + 18 * DAY - 1).is_none());
        assert!(decide(&p, &mut early, &buyer, None, T0 + 18 * DAY).is_some());
    }

    #[test]
    fn a_welcome_with_no_lateness_allowed_is_still_sent_on_its_day() {
        let mut settings = TasksSettings::default();
        settings.welcome.max_late_days = 0;
        let p = CarePolicy::new(&settings);
        let buyer = history(1, T0, T0);
        // A wall-clock sweep comes a little after the due second.
        let late = T0 + 14 * DAY + 7;
        assert!(decide(&p, &mut Contact::default(), &buyer, None, late).is_some());
        assert!(decide(&p, &mut Contact::default(), &buyer, None, T0 + 15 * DAY).is_none());
    }

    #[test]
    fn kinds_switched_off_raise_nothing() {
        let mut settings = TasksSettings::default();
        settings.convert.enabled = false;
        settings.welcome.enabled = false;
        let p = CarePolicy::new(&settings);
        let mut contact = Contact {
            prospect_visits: 9,
            ..Contact::default()
        };
        let prospect = history(0, T0, T0);
        assert!(decide(&p, &mut contact, &prospect, None, T0).is_none());
        let buyer = history(1, T0, T0);
        assert!(decide(&p, &mut contact, &buyer, None, T0 + 30 * DAY).is_none());
    }

    #[test]
    fn the_anniversary_comes_days_before_once_a_year_and_not_after_the_day() {
        let mut settings = TasksSettings::default();
        settings.revisit.enabled = false;
        let p = CarePolicy::new(&settings);
        let first = T0 + 40 * DAY; // 1997-02-10
        let buyer = history(5, first, first + 100 * DAY);
        let general = Some(Segment::GeneralValue);
        let mut contact = Contact::default();
        let day_1998 = 887_068_800; // 1998-02-10
        assert_eq!(
            next(&p, &contact, &buyer, general, first + 200 * DAY),
            Some(day_1998 - 3 * DAY)
        );
        let task = decide(&p, &mut contact, &buyer, general, day_1998 - 3 * DAY).expect("due");
        assert_eq!(task.detail, Detail::Anniversary { date: day_1998 });
        assert_eq!(
            field(&task, "anniversary").as_deref(),
            Some("1998-02-10T00:00:00Z")
        );
        // Once: the next is a year later.
        assert!(decide(&p, &mut contact, &buyer, general, day_1998).is_none());
        assert_eq!(
            next(&p, &contact, &buyer, general, day_1998),
            Some(day_1998 + 365 * DAY - 3 * DAY)
        );
        // Held back past the day by other contacts: skipped that year.
        let mut busy = Contact::default();
        busy.record(day_1998 - 5 * DAY);
        assert!(decide(&p, &mut busy, &buyer, general, day_1998 + DAY).is_none());
    }

    #[test]
    fn valuable_customers_are_revisited_every_so_many_days_since_the_last_contact() {
        let mut settings = TasksSettings::default();
        settings.anniversary.enabled = false;
        settings.welcome.enabled = false;
        let p = CarePolicy::new(&settings);
        let last = T0 + 10 * DAY;
        let vip = history(5, T0, last);
        let important = Some(Segment::ImportantValue);
        let mut contact = Contact::default();
        assert_eq!(
            next(&p, &contact, &vip, important, last),
            Some(last + 90 * DAY)
        );
        let task = decide(&p, &mut contact, &vip, important, last + 90 * DAY).expect("due");
        assert_eq!(task.kind(), TaskKind::Revisit);
        assert_eq!(&*task.action, "account_manager_call");
        // The next counts from this contact.
        assert_eq!(
            next(&p, &contact, &vip, important, last + 91 * DAY),
            Some(last + 180 * DAY)
        );
        // Other segments are not revisited.
        let general = Some(Segment::GeneralRetention);
        assert!(decide(&p, &mut Contact::default(), &vip, general, last + 200 * DAY).is_none());
        assert_eq!(next(&p, &Contact::default(), &vip, general, last), None);
    }

    #[test]
    fn service_recovery_answers_recent_low_scores_of_valuable_customers_only() {
        let p = CarePolicy::new(&TasksSettings::default());
        let buyer = history(5, T0, T0);
        let now = T0 + 100 * DAY;
        let vip = at("c", &buyer, Some(Segment::ImportantValue), now);
        let mut contact = Contact::default();
        // Even under the cap of a contact yesterday.
        contact.record(now - DAY);
        let task = p
            .service_recovery(cap(), &mut contact, &vip, (1, now - 3600))
            .expect("a very low score from a valuable customer");
        assert_eq!(
            task.detail,
            Detail::ServiceRecovery {
                score: 1,
                feedback_at: now - 3600
            }
        );
        assert_eq!(contact.last_day, Day::of(now), "counts as a contact");
        let mut fresh = Contact::default();
        assert!(
            p.service_recovery(cap(), &mut fresh, &vip, (2, now))
                .is_none(),
            "score 2"
        );
        let general = at("c", &buyer, Some(Segment::GeneralValue), now);
        assert!(p
            .service_recovery(cap(), &mut fresh, &general, (1, now))
            .is_none());
        // Two whole days late (and the rest of the feedback's day) at most.
        assert!(p
            .service_recovery(cap(), &mut fresh, &vip, (1, now - 2 * DAY - 3600))
            .is_some());
        assert!(p
            .service_recovery(cap(), &mut Contact::default(), &vip, (1, now - 3 * DAY))
            .is_none());
    }
}
