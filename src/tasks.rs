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
//! - `birthday`: `days_before` a customer's birthday (the profile's `birthday`), once a year.
//! - `anniversary`: `days_before` the yearly anniversary of a customer's first purchase, once
//!   a year.
//! - `revisit`: valuable customers (configured segments) get a call from their account
//!   manager every `every_days` since their last contact or purchase.
//! - `service_recovery`: a very low feedback score (at most `max_score`) from a valuable
//!   customer, at once: not an occasion in time but the answer to an event.
//!
//! Every kind's task is one [`Task`]: what all kinds share, and a [`Detail`] of its own.
//!
//! The contact cap: at most one task of any kind per customer in `contact_cap_days`. When
//! several kinds are due at once, win-back goes first (the engine asks it first); a service
//! recovery goes out whatever the cap (unless configured otherwise) and counts as a contact.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::classify::{LifecycleStage, Risk, Segment};
use crate::model::ScoreReason;
use crate::profiles::Profile;
use crate::time::{self, UnixSeconds};
use crate::winback::Group;

/// What a task asks marketing or account managers to do, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Winback,
    Convert,
    Welcome,
    Birthday,
    Anniversary,
    Revisit,
    ServiceRecovery,
}

impl TaskKind {
    pub const ALL: [Self; 7] = [
        Self::Winback,
        Self::Convert,
        Self::Welcome,
        Self::Birthday,
        Self::Anniversary,
        Self::Revisit,
        Self::ServiceRecovery,
    ];

    /// The kinds of `[tasks]`: every one but win-back.
    pub const CARE: [Self; 6] = [
        Self::Convert,
        Self::Welcome,
        Self::Birthday,
        Self::Anniversary,
        Self::Revisit,
        Self::ServiceRecovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Winback => "winback",
            Self::Convert => "convert",
            Self::Welcome => "welcome",
            Self::Birthday => "birthday",
            Self::Anniversary => "anniversary",
            Self::Revisit => "revisit",
            Self::ServiceRecovery => "service_recovery",
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
    pub birthday: BirthdaySettings,
    pub anniversary: AnniversarySettings,
    pub revisit: RevisitSettings,
    pub service_recovery: ServiceRecoverySettings,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            stream: "crm:tasks".into(),
            max_len: 1_000_000,
            contact_cap_days: 7,
            convert: ConvertSettings::default(),
            welcome: WelcomeSettings::default(),
            birthday: BirthdaySettings::default(),
            anniversary: AnniversarySettings::default(),
            revisit: RevisitSettings::default(),
            service_recovery: ServiceRecoverySettings::default(),
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

/// `[tasks.birthday]`: the customer's birthday, from their profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BirthdaySettings {
    pub enabled: bool,
    /// Days before the birthday; not sent after it.
    pub days_before: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for BirthdaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            days_before: 3,
            action: "birthday_greeting".into(),
            stream: String::new(),
        }
    }
}

/// `[tasks.service_recovery]`: a very low feedback score from a valuable customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceRecoverySettings {
    pub enabled: bool,
    /// Scores at or below this raise the task (1 to 5).
    pub max_score: u8,
    /// The segments whose customers get it.
    pub segments: Vec<Segment>,
    /// Sent even when the contact cap would hold another task back (it still counts as a
    /// contact): a customer who just reported a bad experience is answered.
    pub bypass_contact_cap: bool,
    /// Not sent for feedback more than this many whole days old when it is applied (a
    /// backfill of old surveys, a delayed producer): a call "at once" a month later is none.
    pub max_late_days: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
}

impl Default for ServiceRecoverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_score: 1,
            segments: vec![
                Segment::ImportantValue,
                Segment::ImportantDevelopment,
                Segment::ImportantRetention,
                Segment::ImportantWinback,
            ],
            bypass_contact_cap: true,
            max_late_days: 2,
            action: "service_recovery_call".into(),
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
        if self.birthday.days_before > 300 {
            problems.push(format!("{prefix}.birthday.days_before must be at most 300"));
        }
        if !(1..=5).contains(&self.service_recovery.max_score) {
            problems.push(format!(
                "{prefix}.service_recovery.max_score must be between 1 and 5"
            ));
        }
        if self.revisit.every_days == 0 {
            problems.push(format!("{prefix}.revisit.every_days must be at least 1"));
        }
        for (kind, action) in [
            ("convert", &self.convert.action),
            ("welcome", &self.welcome.action),
            ("birthday", &self.birthday.action),
            ("anniversary", &self.anniversary.action),
            ("revisit", &self.revisit.action),
            ("service_recovery", &self.service_recovery.action),
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
            TaskKind::Birthday => ("tasks.birthday.stream", self.birthday.stream.as_str()),
            TaskKind::Anniversary => ("tasks.anniversary.stream", self.anniversary.stream.as_str()),
            TaskKind::Revisit => ("tasks.revisit.stream", self.revisit.stream.as_str()),
            TaskKind::ServiceRecovery => (
                "tasks.service_recovery.stream",
                self.service_recovery.stream.as_str(),
            ),
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

/// A task for marketing automation or account managers, of any kind: what every kind
/// carries, and a [`Detail`] of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// 32 hex digits, deterministic: a replay raises the same ID, and the sink writes it once.
    pub task_id: String,
    pub customer_id: String,
    pub action: Arc<str>,
    pub lifecycle_stage: LifecycleStage,
    /// RFM segment, when the customer has bought.
    pub segment: Option<Segment>,
    /// When the decision was made (clock time).
    pub as_of: UnixSeconds,
    /// The customer's tags at the decision.
    pub tags: Vec<Arc<str>>,
    /// The customer's profile, copied onto the task.
    pub profile: Option<Arc<Profile>>,
    pub detail: Detail,
}

/// What only one kind of task carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Winback(WinbackDetail),
    /// Visits counted without a purchase.
    Convert {
        visits: u8,
    },
    /// The first purchase being followed up.
    Welcome {
        first_purchase: UnixSeconds,
    },
    /// This year's birthday, midnight UTC.
    Birthday {
        date: UnixSeconds,
    },
    /// The anniversary of the first purchase, midnight UTC.
    Anniversary {
        date: UnixSeconds,
    },
    /// When the revisit fell due.
    Revisit {
        due: UnixSeconds,
    },
    /// The score and when it was given.
    ServiceRecovery {
        score: u8,
        feedback_at: UnixSeconds,
    },
}

/// A win-back task's own part.
#[derive(Debug, Clone, PartialEq)]
pub struct WinbackDetail {
    pub churn_probability: f64,
    pub risk: Risk,
    /// Value at risk: churn probability × spend over the last year (365-day decay).
    pub priority: f64,
    pub reasons: Vec<ScoreReason>,
    pub model_version: Arc<str>,
    pub group: Group,
    /// The last purchase, which began this episode of silence.
    pub episode_start: UnixSeconds,
    pub attempt: u8,
}

impl Detail {
    /// The kind of task this detail belongs to: each kind has one.
    pub fn kind(&self) -> TaskKind {
        match self {
            Detail::Winback(_) => TaskKind::Winback,
            Detail::Convert { .. } => TaskKind::Convert,
            Detail::Welcome { .. } => TaskKind::Welcome,
            Detail::Birthday { .. } => TaskKind::Birthday,
            Detail::Anniversary { .. } => TaskKind::Anniversary,
            Detail::Revisit { .. } => TaskKind::Revisit,
            Detail::ServiceRecovery { .. } => TaskKind::ServiceRecovery,
        }
    }
}

impl Task {
    pub fn kind(&self) -> TaskKind {
        self.detail.kind()
    }

    /// The win-back part, for a win-back task.
    pub fn winback(&self) -> Option<&WinbackDetail> {
        match &self.detail {
            Detail::Winback(w) => Some(w),
            _ => None,
        }
    }

    /// Stream fields, in a stable order: those of every kind, the kind's own, then the tags
    /// and the profile's attributes (`profile_<key>`).
    pub fn fields(&self) -> Vec<(Cow<'static, str>, String)> {
        let mut fields: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(20);
        let mut push = |name: &'static str, value: String| fields.push((name.into(), value));
        push("task_id", self.task_id.clone());
        push("kind", self.kind().as_str().into());
        push("customer_id", self.customer_id.clone());
        push("action", self.action.to_string());
        push("lifecycle_stage", self.lifecycle_stage.as_str().into());
        if let Some(segment) = self.segment {
            push("segment", segment.as_str().into());
        }
        push("as_of", time::rfc3339(self.as_of));
        match &self.detail {
            Detail::Winback(w) => {
                let reasons: Vec<String> = w.reasons.iter().map(ToString::to_string).collect();
                push("churn_probability", format!("{:.6}", w.churn_probability));
                push("risk", w.risk.as_str().into());
                push("priority", format!("{:.2}", w.priority));
                push("reasons", reasons.join(","));
                push("model_version", w.model_version.to_string());
                push("group", w.group.as_str().into());
                push("episode_start", time::rfc3339(w.episode_start));
                push("attempt", w.attempt.to_string());
            }
            Detail::Convert { visits } => push("visits", visits.to_string()),
            Detail::Welcome { first_purchase } => {
                push("first_purchase", time::rfc3339(*first_purchase));
            }
            Detail::Birthday { date } => push("birthday", time::rfc3339(*date)),
            Detail::Anniversary { date } => push("anniversary", time::rfc3339(*date)),
            Detail::Revisit { due } => push("due", time::rfc3339(*due)),
            Detail::ServiceRecovery { score, feedback_at } => {
                push("score", score.to_string());
                push("feedback_at", time::rfc3339(*feedback_at));
            }
        }
        let tags: Vec<&str> = self.tags.iter().map(|t| &**t).collect();
        push("tags", tags.join(","));
        for (key, value) in self.profile.iter().flat_map(|p| p.iter()) {
            fields.push((format!("profile_{key}").into(), value.to_string()));
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
    /// Month and day, from the profile.
    pub birthday: Option<(u8, u8)>,
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
    /// Seconds before the birthday, action.
    birthday: Option<(u32, Arc<str>)>,
    /// Seconds before the anniversary, action.
    anniversary: Option<(u32, Arc<str>)>,
    /// Segments, seconds between contacts, action.
    revisit: Option<([bool; 8], u32, Arc<str>)>,
    service_recovery: Option<ServiceRecovery>,
}

/// `[tasks.service_recovery]`, resolved.
#[derive(Debug, Clone)]
struct ServiceRecovery {
    max_score: u8,
    segments: [bool; 8],
    bypass_contact_cap: bool,
    /// Seconds a feedback may be old: whole days, and the rest of the day it came.
    max_late: u32,
    action: Arc<str>,
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
            birthday: settings.birthday.enabled.then(|| {
                (
                    time::days(settings.birthday.days_before),
                    settings.birthday.action.as_str().into(),
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
            service_recovery: settings.service_recovery.enabled.then(|| {
                let s = &settings.service_recovery;
                ServiceRecovery {
                    max_score: s.max_score,
                    segments: Segment::ALL.map(|segment| s.segments.contains(&segment)),
                    bypass_contact_cap: s.bypass_contact_cap,
                    max_late: time::days(s.max_late_days).saturating_add(86_399),
                    action: s.action.as_str().into(),
                }
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
            TaskKind::Birthday => self.birthday.as_ref().map(|b| &b.1),
            TaskKind::Anniversary => self.anniversary.as_ref().map(|a| &a.1),
            TaskKind::Revisit => self.revisit.as_ref().map(|r| &r.2),
            TaskKind::ServiceRecovery => self.service_recovery.as_ref().map(|s| &s.action),
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
    ) -> (Option<Task>, Option<UnixSeconds>) {
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
        let task = self.task(reference, candidate, now, detail);
        (Some(task), self.next_moment(contact, candidate, now))
    }

    fn task(
        &self,
        reference: UnixSeconds,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
        detail: Detail,
    ) -> Task {
        let kind = detail.kind();
        Task {
            task_id: task_id(kind, candidate.customer_id, reference),
            customer_id: candidate.customer_id.to_owned(),
            action: self.action(kind),
            lifecycle_stage: candidate.lifecycle_stage,
            segment: candidate.segment,
            as_of: now,
            tags: Vec::new(),
            profile: None,
            detail,
        }
    }

    /// [`Self::evaluate`]'s task alone.
    pub fn decide(
        &self,
        contact: &mut Contact,
        candidate: &CareCandidate<'_>,
        now: UnixSeconds,
    ) -> Option<Task> {
        self.evaluate(contact, candidate, now).0
    }

    /// The answer to a feedback `score` given at `feedback_at`: a service-recovery task if
    /// the score is low enough, the customer valuable, the feedback recent (and the cap
    /// allows, unless it is bypassed), recording the contact. One per second of feedback: its
    /// ID is made from its time.
    pub fn service_recovery(
        &self,
        contact: &mut Contact,
        candidate: &CareCandidate<'_>,
        score: u8,
        feedback_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Option<Task> {
        let s = self.service_recovery.as_ref()?;
        let valuable = candidate.segment.is_some_and(|seg| s.segments[seg.index()]);
        let allowed = s.bypass_contact_cap || self.contact_allowed_from(contact, now).is_none();
        let recent = now.saturating_sub(feedback_at) <= s.max_late;
        if score > s.max_score || !valuable || !allowed || !recent {
            return None;
        }
        contact.record(now);
        let detail = Detail::ServiceRecovery { score, feedback_at };
        Some(self.task(feedback_at, candidate, now, detail))
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
        let birthday = self.birthday.as_ref().zip(candidate.birthday).and_then(
            |((before, _), (month, day))| {
                yearly(TaskKind::Birthday, *before, contact, now, |after| {
                    yearly_after(month, day, 0, after)
                })
            },
        );
        let anniversary = self
            .anniversary
            .as_ref()
            .zip(candidate.first_purchase)
            .and_then(|((before, _), first)| {
                yearly(TaskKind::Anniversary, *before, contact, now, |after| {
                    anniversary_after(first, after)
                })
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

/// The first anniversary (one year or more after `first`, on its calendar day) at or after
/// `after`, at midnight UTC.
fn anniversary_after(first: UnixSeconds, after: UnixSeconds) -> Option<UnixSeconds> {
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
fn yearly_after(month: u8, day: u8, first_year: i32, after: UnixSeconds) -> Option<UnixSeconds> {
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
            birthday: None,
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
            birthday: None,
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
            birthday: None,
        }
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
        let mut contact = Contact::default();
        for visit in 1..=5u32 {
            contact.count_prospect_visit();
            let task = p.decide(&mut contact, &prospect(), T0 + visit * DAY * 10);
            match visit {
                3 => {
                    let task = task.expect("the third visit raises the offer");
                    assert_eq!(task.kind(), TaskKind::Convert);
                    assert_eq!(&*task.action, "first_purchase_offer");
                    assert_eq!(task.detail, Detail::Convert { visits: 3 });
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
        assert_eq!(task.kind(), TaskKind::Welcome);
        assert_eq!(task.detail, Detail::Welcome { first_purchase: T0 });
        assert_eq!(field(&task, "first_purchase"), Some(time::rfc3339(T0)));
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
        assert_eq!(task.detail, Detail::Anniversary { date: day_1998 });
        assert_eq!(
            field(&task, "anniversary").as_deref(),
            Some("1998-02-10T00:00:00Z")
        );
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
        assert_eq!(task.kind(), TaskKind::Revisit);
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
    fn service_recovery_answers_recent_low_scores_of_valuable_customers_only() {
        let p = CarePolicy::new(&TasksSettings::default());
        let vip = valued(Segment::ImportantValue, T0, T0);
        let now = T0 + 100 * DAY;
        let mut contact = Contact::default();
        // Even under the cap of a contact yesterday.
        contact.record(now - DAY);
        let task = p
            .service_recovery(&mut contact, &vip, 1, now - 3600, now)
            .expect("a very low score from a valuable customer");
        assert_eq!(
            task.detail,
            Detail::ServiceRecovery {
                score: 1,
                feedback_at: now - 3600
            }
        );
        assert_eq!(contact.last_day, (now / DAY) as u16, "counts as a contact");
        let mut fresh = Contact::default();
        assert!(
            p.service_recovery(&mut fresh, &vip, 2, now, now).is_none(),
            "score 2"
        );
        let general = valued(Segment::GeneralValue, T0, T0);
        assert!(p
            .service_recovery(&mut fresh, &general, 1, now, now)
            .is_none());
        // Two whole days late (and the rest of the feedback's day) at most.
        assert!(p
            .service_recovery(&mut fresh, &vip, 1, now - 2 * DAY - 3600, now)
            .is_some());
        assert!(p
            .service_recovery(&mut Contact::default(), &vip, 1, now - 3 * DAY, now)
            .is_none());
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
