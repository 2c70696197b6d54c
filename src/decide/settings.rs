//! The playbook's settings: `[winback]` and `[tasks]` (the other kinds and the contact cap).
//! `config::winback` and `config::tasks` read and check them.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroU64, NonZeroU8};

use serde::Serialize;

use super::budget::{ActionBudget, PooledBudget};
use super::targeting::WinbackPolicy;
use super::task::TaskKind;
use super::uplift::LearnSettings;
use crate::classify::Segment;

/// `[winback]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinbackSettings {
    pub enabled: bool,
    /// Stream that marketing automation consumes.
    pub stream: String,
    /// Stream for the control group's would-be tasks (nobody acts on them).
    pub control_stream: String,
    /// Approximate cap of each task stream (XADD MAXLEN ~).
    pub max_len: NonZeroU64,
    /// Churn probability at or above which a task is raised.
    pub threshold: f64,
    /// Per-segment overrides of `threshold`.
    pub segment_thresholds: HashMap<Segment, f64>,
    /// Playbook: the action for each segment.
    pub actions: HashMap<Segment, String>,
    /// The actions the learned policy chooses among for each segment, once win-back's lift
    /// is measured; a segment without a list has its playbook action alone.
    pub candidates: HashMap<Segment, Vec<String>>,
    /// No task while the last purchase is more recent than this: a fresh buyer is not
    /// drifting away yet, whatever their base churn rate.
    pub min_silence_days: u32,
    /// Least time between two tasks for one customer.
    pub cooldown_days: u32,
    /// Tasks per episode of silence (1 = one task until the customer buys again).
    pub max_tasks_per_episode: NonZeroU8,
    /// Share of customers held out as control group, by a stable hash of their ID.
    pub control_share: f64,
    /// Per action (of `actions`): spend per day and cost per task. Actions without one are
    /// not limited.
    pub budgets: BTreeMap<String, ActionBudget>,
    /// `[winback.budget]`: one spend per day every action draws on by its cost, the
    /// actions' own budgets then caps; unset: each action on its own budget.
    pub budget: PooledBudget,
    /// Where the chance in a candidate's priority (value at stake × chance) comes from.
    pub policy: WinbackPolicy,
    /// `[winback.learn]`: when measured lift replaces the stand-in, and how much keeps
    /// exploring.
    pub learn: LearnSettings,
    /// How long Redis remembers a task ID to drop duplicates.
    pub dedup_ttl_days: NonZeroU32,
    /// Reasons listed on a task.
    pub reasons: usize,
}

impl Default for WinbackSettings {
    fn default() -> Self {
        use Segment::*;
        let actions = [
            (ImportantValue, "personal_call"),
            (ImportantDevelopment, "personal_call"),
            (ImportantRetention, "personal_call"),
            (ImportantWinback, "personal_call"),
            (GeneralValue, "loyalty_offer"),
            (GeneralDevelopment, "email_reminder"),
            (GeneralRetention, "coupon"),
            (GeneralWinback, "coupon"),
        ];
        Self {
            enabled: true,
            stream: "churn:winback".into(),
            control_stream: "churn:winback:control".into(),
            max_len: NonZeroU64::new(1_000_000).expect("not zero"),
            // Who is a candidate at all; the budgets decide how many get a task.
            threshold: 0.5,
            segment_thresholds: HashMap::new(),
            actions: actions
                .into_iter()
                .map(|(s, a)| (s, a.to_string()))
                .collect(),
            candidates: default_candidates(),
            min_silence_days: 30,
            cooldown_days: 30,
            max_tasks_per_episode: NonZeroU8::MIN,
            control_share: 0.1,
            budgets: default_budgets(),
            budget: PooledBudget::default(),
            policy: WinbackPolicy::default(),
            learn: LearnSettings::default(),
            dedup_ttl_days: NonZeroU32::new(400).expect("not zero"),
            reasons: 3,
        }
    }
}

impl WinbackSettings {
    /// Lifts every win-back budget out of reach (a cap of 1e12 a day), so that each candidate
    /// gets its task: for runs that measure the path a task takes, or that compare with a
    /// run without pacing. Lifted rather than removed: a daemon binary reads
    /// config/default.toml too, and a file's budgets table merges into the shipped one.
    pub fn lift_budgets(&mut self) {
        for budget in self.budgets.values_mut() {
            budget.per_day = Some(1e12);
        }
    }
}

#[cfg(test)]
impl WinbackSettings {
    /// The defaults as they were before budgets (threshold 0.7, 0.6 for `important_value`
    /// and `important_retention`, no budget): what tests of other rules are written for.
    pub(crate) fn unbudgeted() -> Self {
        use Segment::*;
        Self {
            threshold: 0.7,
            segment_thresholds: HashMap::from([(ImportantValue, 0.6), (ImportantRetention, 0.6)]),
            budgets: BTreeMap::new(),
            candidates: HashMap::new(),
            ..Self::default()
        }
    }
}

/// The shipped candidate actions: a person's call or a loyalty offer for the important
/// segments (money off would give away margin on the customers who spend most), money off
/// or a loyalty offer for the general ones (a call costs more than most of them spend), and
/// the cheap reminder for all. Each segment's playbook action is among its candidates.
fn default_candidates() -> HashMap<Segment, Vec<String>> {
    use Segment::*;
    let important = ["personal_call", "loyalty_offer", "email_reminder"];
    let general = ["coupon", "loyalty_offer", "email_reminder"];
    Segment::ALL
        .into_iter()
        .map(|s| {
            let list = match s {
                ImportantValue | ImportantDevelopment | ImportantRetention | ImportantWinback => {
                    important
                }
                GeneralValue | GeneralDevelopment | GeneralRetention | GeneralWinback => general,
            };
            (s, list.map(String::from).to_vec())
        })
        .collect()
}

/// The shipped budgets, sized for a base of about 20,000 customers (CDNOW, `churnd
/// simulate`'s default): about 40 win-back tasks a day in all, control group included.
fn default_budgets() -> BTreeMap<String, ActionBudget> {
    [
        ("personal_call", 100.0, 10.0),
        ("loyalty_offer", 50.0, 5.0),
        ("email_reminder", 2.0, 0.2),
        ("coupon", 50.0, 5.0),
    ]
    .into_iter()
    .map(|(action, per_day, cost)| (action.to_string(), ActionBudget::new(per_day, cost)))
    .collect()
}

/// `[tasks]` settings: the kinds other than win-back (which has `[winback]`) and the cap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TasksSettings {
    /// Stream of the kinds below unless a kind names its own.
    pub stream: String,
    /// Approximate cap of that stream (XADD MAXLEN ~).
    pub max_len: NonZeroU64,
    /// The control group's tasks of every kind below (nobody acts on them).
    pub control_stream: String,
    /// Share of customers held out of each kind below, unless the kind sets its own.
    pub control_share: f64,
    /// At most one task of any kind, win-back included, per customer in this many days
    /// (0: no cap).
    pub contact_cap_days: u32,
    pub convert: ConvertSettings,
    pub welcome: WelcomeSettings,
    pub birthday: BirthdaySettings,
    pub anniversary: AnniversarySettings,
    pub revisit: RevisitSettings,
    pub service_recovery: ServiceRecoverySettings,
    /// Per action (of the kinds above): spend per day and cost per task, as
    /// `[winback.budgets]`. Actions without one are not limited.
    pub budgets: BTreeMap<String, ActionBudget>,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            stream: "crm:tasks".into(),
            max_len: NonZeroU64::new(1_000_000).expect("not zero"),
            control_stream: "crm:tasks:control".into(),
            control_share: 0.1,
            contact_cap_days: 7,
            convert: ConvertSettings::default(),
            welcome: WelcomeSettings::default(),
            birthday: BirthdaySettings::default(),
            anniversary: AnniversarySettings::default(),
            revisit: RevisitSettings::default(),
            service_recovery: ServiceRecoverySettings::default(),
            budgets: BTreeMap::new(),
        }
    }
}

/// `[tasks.convert]`: prospects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvertSettings {
    pub enabled: bool,
    /// Visits without a purchase that make a prospect worth an offer.
    pub min_visits: NonZeroU8,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
}

impl Default for ConvertSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_visits: NonZeroU8::new(3).expect("not zero"),
            action: "first_purchase_offer".into(),
            stream: String::new(),
            control_share: None,
        }
    }
}

/// `[tasks.welcome]`: new customers who have not bought again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WelcomeSettings {
    pub enabled: bool,
    /// Days after the first purchase.
    pub after_days: NonZeroU32,
    /// Not sent more than this many days late (a backfill of old history, a long outage, the
    /// contact cap): a welcome weeks after the fact is no welcome.
    pub max_late_days: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
}

impl Default for WelcomeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            after_days: NonZeroU32::new(14).expect("not zero"),
            max_late_days: 7,
            action: "welcome_follow_up".into(),
            stream: String::new(),
            control_share: None,
        }
    }
}

/// `[tasks.birthday]`: the customer's birthday, from their profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BirthdaySettings {
    pub enabled: bool,
    /// Days before the birthday; not sent after it.
    pub days_before: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
}

impl Default for BirthdaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            days_before: 3,
            action: "birthday_greeting".into(),
            stream: String::new(),
            control_share: None,
        }
    }
}

/// `[tasks.service_recovery]`: a very low feedback score from a valuable customer.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
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
            control_share: None,
        }
    }
}

/// `[tasks.anniversary]`: the yearly anniversary of the first purchase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnniversarySettings {
    pub enabled: bool,
    /// Days before the anniversary; not sent after it.
    pub days_before: u32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
}

impl Default for AnniversarySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            days_before: 3,
            action: "anniversary_greeting".into(),
            stream: String::new(),
            control_share: None,
        }
    }
}

/// `[tasks.revisit]`: regular follow-ups of valuable customers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevisitSettings {
    pub enabled: bool,
    /// The segments whose customers get them.
    pub segments: Vec<Segment>,
    /// Days since the last contact or purchase, whichever is later.
    pub every_days: NonZeroU32,
    pub action: String,
    /// Stream of these tasks; empty: `tasks.stream`.
    pub stream: String,
    /// Share held out; `None`: `tasks.control_share`.
    pub control_share: Option<f64>,
}

impl Default for RevisitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            segments: vec![Segment::ImportantValue, Segment::ImportantDevelopment],
            every_days: NonZeroU32::new(90).expect("not zero"),
            action: "account_manager_call".into(),
            stream: String::new(),
            control_share: None,
        }
    }
}

impl TasksSettings {
    /// The share of customers held out of a care kind, with the key that set it (its own
    /// `control_share`, or `tasks.control_share`).
    pub(crate) fn control_share(&self, kind: TaskKind) -> (&'static str, f64) {
        let own = match kind {
            TaskKind::Winback => None,
            TaskKind::Convert => Some(("tasks.convert.control_share", self.convert.control_share)),
            TaskKind::Welcome => Some(("tasks.welcome.control_share", self.welcome.control_share)),
            TaskKind::Birthday => {
                Some(("tasks.birthday.control_share", self.birthday.control_share))
            }
            TaskKind::Anniversary => Some((
                "tasks.anniversary.control_share",
                self.anniversary.control_share,
            )),
            TaskKind::Revisit => Some(("tasks.revisit.control_share", self.revisit.control_share)),
            TaskKind::ServiceRecovery => Some((
                "tasks.service_recovery.control_share",
                self.service_recovery.control_share,
            )),
        };
        match own {
            Some((key, Some(share))) => (key, share),
            _ => ("tasks.control_share", self.control_share),
        }
    }

    /// The stream each kind's tasks go to (win-back's come from `[winback]`).
    pub fn stream(&self, kind: TaskKind) -> &str {
        self.stream_setting(kind).1
    }

    /// The stream a kind's tasks go to, with the key that set it (its own `stream`, or
    /// `tasks.stream` when that is empty), for messages naming the key.
    pub(crate) fn stream_setting(&self, kind: TaskKind) -> (&'static str, &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_without_a_stream_of_its_own_uses_the_shared_one() {
        let mut settings = TasksSettings::default();
        settings.welcome.stream = "crm:welcome".into();
        assert_eq!(settings.stream(TaskKind::Convert), "crm:tasks");
        assert_eq!(settings.stream(TaskKind::Welcome), "crm:welcome");
        assert_eq!(
            settings.stream_setting(TaskKind::Welcome).0,
            "tasks.welcome.stream"
        );
        assert_eq!(settings.stream_setting(TaskKind::Convert).0, "tasks.stream");
    }
}
