//! Decisions: what churnd asks marketing automation and account managers to do about a
//! customer, and when to look at them again.
//!
//! Every policy reads one [`Assessment`] of the customer at a moment (built by the engine at
//! each scoring). The [`Playbook`] owns the order in which they are asked:
//!
//! 1. service recovery: the answer to a very low feedback score, when that is what brings the
//!    customer here (it goes out whatever the contact cap, unless configured otherwise, and
//!    counts as a contact);
//! 2. win-back, for a buyer whose churn probability crossed its threshold, as many a day as
//!    the action's budget affords ([`budget`]), to the highest priorities;
//! 3. the care kinds, in their own order ([`care`]), as many a day as their action's budget
//!    (`[tasks.budgets]`) affords, to the customers with the most value at stake.
//!
//! The contact cap (`tasks.contact_cap_days`) holds back every kind once the customer has
//! heard from the business. The tasks raised carry the customer's tags and profile, and their
//! group: each kind holds out a share of customers as its control group ([`holdout`]).

mod assessment;
mod budget;
mod calendar;
mod care;
mod contact;
mod holdout;
mod settings;
mod tags;
mod targeting;
mod task;
pub mod uplift;
mod winback;

use std::sync::Arc;

pub use assessment::{Assessment, Recent, Scored};
pub use budget::{
    share_of, ActionBudget, BudgetReport, BudgetScope, Budgets, PacerState, Pacing, Picture,
    PoolState, PooledBudget, BUCKETS, HALF_LIFE_DAYS,
};
pub use contact::{Contact, ContactCap};
pub use holdout::Group;
pub use settings::{
    AnniversarySettings, BirthdaySettings, ConvertSettings, RevisitSettings,
    ServiceRecoverySettings, TasksSettings, WelcomeSettings, WinbackSettings,
};
pub use tags::{default_rules, TagRule, Tags};
pub use targeting::{Targeting, WinbackPolicy};
pub use task::{care_task_id, winback_task_id, Detail, Task, TaskKind, WinbackDetail};
pub use winback::WinbackState;

use crate::time::{UnixSeconds, DAY};

/// The configured policies, resolved for fast decisions.
#[derive(Debug, Clone)]
pub struct Playbook {
    winback: winback::Policy,
    care: care::CarePolicy,
    /// The care actions with a budget, and the slot of each in the engine's [`Budgets`].
    care_budgets: Vec<(Arc<str>, usize)>,
    tags: Tags,
    cap: ContactCap,
}

impl Playbook {
    pub fn new(winback: &WinbackSettings, tasks: &TasksSettings, tags: &[TagRule]) -> Self {
        Self {
            winback: winback::Policy::new(winback),
            care: care::CarePolicy::new(tasks),
            care_budgets: tasks
                .budgets
                .keys()
                .filter_map(|action| {
                    Budgets::care_slot(&winback.budgets, &tasks.budgets, action)
                        .map(|slot| (action.as_str().into(), slot))
                })
                .collect(),
            tags: Tags::new(tags),
            cap: ContactCap::days(tasks.contact_cap_days),
        }
    }

    /// Every task due for the customer now, in the playbook's order, each with the
    /// customer's tags and profile, appended to `tasks`; updates the customer's bookkeeping
    /// and takes win-back tasks from `budgets`, their priorities learned from `targeting`'s
    /// book under `winback.policy = learned`. `feedback` is the score and time of the
    /// feedback being applied, if that is what brings the customer here. Returns the next
    /// moment after now at which a decision can change without an event (a waiting time
    /// ending, an occasion beginning, the cap lifting, the next day's budget for a candidate
    /// held back).
    pub fn decide(
        &self,
        a: &Assessment<'_>,
        (winback, contact): (&mut WinbackState, &mut Contact),
        feedback: Option<(u8, UnixSeconds)>,
        model_version: &Arc<str>,
        (budgets, targeting, tasks): (&mut Budgets, &mut Targeting, &mut Vec<Task>),
    ) -> Option<UnixSeconds> {
        let first = tasks.len();
        let now = a.now;
        let mut next = Vec::with_capacity(3);
        if a.scored.is_some() {
            if let Some(feedback) = feedback {
                let before = *contact;
                let task = self.care.service_recovery(self.cap, contact, a, feedback);
                tasks.extend(self.pace_care(task, a, budgets, (contact, before), &mut next));
            }
            let capped_until = self.cap.allowed_from(contact, now);
            if capped_until.is_none() {
                match self
                    .winback
                    .decide(winback, a, model_version, (budgets, targeting))
                {
                    winback::Decision::Task(task) => {
                        contact.record(now);
                        tasks.push(*task);
                    }
                    // A candidate again tomorrow, at the same time of day (by then the
                    // budget, or the lift measured, may say otherwise).
                    winback::Decision::HeldBack | winback::Decision::NoLift => {
                        next.push(Some(now.saturating_add(DAY)));
                    }
                    winback::Decision::None => {}
                }
            }
            next.push(
                a.last_purchase()
                    .and_then(|last| self.winback.next_eligible(winback, last, now)),
            );
            // A crossing while capped is acted on when the cap ends.
            next.push(capped_until.filter(|_| self.winback.may_raise(winback)));
        }
        let before = *contact;
        let (task, care_next) = self.care.evaluate(self.cap, contact, a);
        tasks.extend(self.pace_care(task, a, budgets, (contact, before), &mut next));
        next.push(care_next);
        let raised = &mut tasks[first..];
        if !raised.is_empty() {
            let tags = self.tags.of(a);
            let profile = a.profile.cloned();
            // The value estimates, once for all the tasks raised (win-back has them already).
            let value = raised
                .iter()
                .find_map(|t| t.value)
                .or_else(|| a.value_estimates());
            for task in raised {
                task.tags.clone_from(&tags);
                task.profile.clone_from(&profile);
                task.value = value;
            }
        }
        next.into_iter().flatten().filter(|&t| t > now).min()
    }

    /// A care task raised, if its action's budget affords it today; one held back is not
    /// a contact (`contact` goes back to `before`) and is looked at again tomorrow, at the
    /// same time of day. The priority of a care candidate is the value at stake: the
    /// customer's CLV over the next year when the model has a value part, else their spend
    /// over the last year (0 for a prospect).
    fn pace_care(
        &self,
        task: Option<Task>,
        a: &Assessment<'_>,
        budgets: &mut Budgets,
        (contact, before): (&mut Contact, Contact),
        next: &mut Vec<Option<UnixSeconds>>,
    ) -> Option<Task> {
        let task = task?;
        let Some(&(_, slot)) = self
            .care_budgets
            .iter()
            .find(|(action, _)| *action == task.action)
        else {
            return Some(task);
        };
        let priority = a
            .value_estimates()
            .map_or_else(|| a.scored.map_or(0.0, |s| s.monetary_365d), |v| v.clv_365d);
        match budgets.admit(slot, priority, a.now) {
            budget::Admission::Admitted => Some(task),
            budget::Admission::HeldBack => {
                *contact = before;
                next.push(Some(a.now.saturating_add(DAY)));
                None
            }
        }
    }

    /// A purchase at `time`, after the customer's previous last purchase: it starts a new
    /// win-back episode and, if it follows an outstanding task, is a recovery. Returns the
    /// group to credit with the recovery.
    pub(crate) fn on_new_purchase(
        &self,
        winback: &mut WinbackState,
        customer_id: &str,
        time: UnixSeconds,
    ) -> Option<Group> {
        self.winback.on_new_purchase(winback, customer_id, time)
    }

    /// The customer's tags now.
    pub fn tags(&self, a: &Assessment<'_>) -> Vec<Arc<str>> {
        self.tags.of(a)
    }

    /// The customer's win-back group: a stable function of the ID alone.
    pub fn group(&self, customer_id: &str) -> Group {
        self.winback.group(customer_id)
    }

    /// Reasons listed on a win-back task (and in the API).
    pub fn reasons(&self) -> usize {
        self.winback.reasons
    }

    /// The churn probabilities at which a win-back task can be raised (for the scheduler of
    /// silence checks, which must not sleep through a crossing); none when win-back is off.
    pub fn thresholds(&self) -> &[f64] {
        self.winback.thresholds()
    }

    /// The lowest and the highest win-back threshold when they differ by segment.
    pub(crate) fn thresholds_span(&self) -> Option<(f64, f64)> {
        self.winback.thresholds_span()
    }

    /// Whether the customer's current episode of silence can still raise a win-back task.
    pub(crate) fn may_raise(&self, winback: &WinbackState) -> bool {
        self.winback.may_raise(winback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{LifecycleStage, Risk, Segment};
    use crate::event::{Event, EventKind};
    use crate::features::CustomerFeatures;
    use crate::model::Score;
    use crate::time::DAY;

    const T0: u32 = 852_076_800;

    static SCORE: std::sync::LazyLock<Score> = std::sync::LazyLock::new(|| {
        let model = crate::model::Model::from_file(&crate::model::tests::recency_only_model_file())
            .expect("valid test model");
        model.score(&[0.0; crate::features::FEATURE_COUNT])
    });

    /// A valuable buyer silent since T0, likely to churn, at `now`.
    fn silent_vip(features: &CustomerFeatures, now: UnixSeconds) -> Assessment<'_> {
        Assessment {
            customer_id: "vip",
            now,
            stage: LifecycleStage::Silent,
            features,
            scored: Some(Scored {
                probability: 0.9,
                risk: Risk::High,
                segment: Segment::ImportantValue,
                monetary_365d: 500.0,
                score: &SCORE,
            }),
            profile: None,
            feedback: None,
            coupons: None,
            value: None,
        }
    }

    fn bought_at_t0() -> CustomerFeatures {
        let mut f = CustomerFeatures::default();
        for _ in 0..5 {
            f.apply(&Event::new("vip", EventKind::Purchase, 100.0, T0));
        }
        f
    }

    fn playbook() -> Playbook {
        Playbook::new(
            &WinbackSettings::unbudgeted(),
            &TasksSettings {
                control_share: 0.0,
                ..TasksSettings::default()
            },
            &default_rules(),
        )
    }

    #[test]
    fn win_back_goes_before_care_and_the_cap_holds_the_rest() {
        let features = bought_at_t0();
        // 100 days of silence: win-back is due, and so is the 90-day revisit.
        let now = T0 + 100 * DAY;
        let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
        let mut tasks = Vec::new();
        let next = playbook().decide(
            &silent_vip(&features, now),
            (&mut winback, &mut contact),
            None,
            &"m".into(),
            (
                &mut Budgets::default(),
                &mut Targeting::default(),
                &mut tasks,
            ),
        );
        let kinds: Vec<TaskKind> = tasks.iter().map(Task::kind).collect();
        assert_eq!(kinds, [TaskKind::Winback]);
        assert_eq!(
            tasks[0].tags.iter().map(|t| &**t).collect::<Vec<_>>(),
            ["vip", "at_risk"]
        );
        // The win-back was a contact: the next revisit counts 90 days from its day.
        assert_eq!(next, Some(crate::time::Day::of(now).start() + 90 * DAY));
    }

    #[test]
    fn a_low_score_is_answered_first_and_holds_the_win_back() {
        let features = bought_at_t0();
        let now = T0 + 100 * DAY;
        let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
        let mut tasks = Vec::new();
        let next = playbook().decide(
            &silent_vip(&features, now),
            (&mut winback, &mut contact),
            Some((1, now)),
            &"m".into(),
            (
                &mut Budgets::default(),
                &mut Targeting::default(),
                &mut tasks,
            ),
        );
        let kinds: Vec<TaskKind> = tasks.iter().map(Task::kind).collect();
        assert_eq!(kinds, [TaskKind::ServiceRecovery]);
        assert_eq!(winback, WinbackState::default(), "no win-back raised");
        // The win-back comes when the cap lifts.
        assert_eq!(next, Some(crate::time::Day::of(now).end() + 7 * DAY));
    }

    #[test]
    fn every_task_raised_carries_the_value_estimates() {
        let value = crate::model::value::ValueModel::new(crate::model::value::tests::cdnow_like())
            .expect("valid parameters");
        let features = bought_at_t0();
        let now = T0 + 100 * DAY;
        let a = Assessment {
            value: Some(&value),
            ..silent_vip(&features, now)
        };
        let want = a.value_estimates().expect("a buyer");
        let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
        let mut tasks = Vec::new();
        playbook().decide(
            &a,
            (&mut winback, &mut contact),
            Some((1, now)),
            &"m".into(),
            (
                &mut Budgets::default(),
                &mut Targeting::default(),
                &mut tasks,
            ),
        );
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0].kind(), TaskKind::ServiceRecovery);
        assert_eq!(tasks[0].value, Some(want));
        let fields = tasks[0].fields();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(field("p_alive"), Some(&*format!("{:.6}", want.p_alive)));
        assert_eq!(field("clv_365d"), Some(&*format!("{:.2}", want.clv_365d)));
        assert_eq!(
            field("next_purchase_at"),
            want.next_purchase_at.map(crate::time::rfc3339).as_deref()
        );
        // The value fields come before the tags.
        let position = |name: &str| fields.iter().position(|(k, _)| k == name);
        assert!(position("expected_spend_90d") < position("tags"));
    }

    #[test]
    fn a_prospect_gets_care_only() {
        let mut features = CustomerFeatures::default();
        features.apply(&Event::new("p", EventKind::Visit, 0.0, T0));
        let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
        contact.prospect_visits = 3;
        let prospect = Assessment {
            customer_id: "p",
            scored: None,
            stage: LifecycleStage::Potential,
            ..silent_vip(&features, T0)
        };
        let mut tasks = Vec::new();
        let next = playbook().decide(
            &prospect,
            (&mut winback, &mut contact),
            Some((1, T0)),
            &"m".into(),
            (
                &mut Budgets::default(),
                &mut Targeting::default(),
                &mut tasks,
            ),
        );
        let kinds: Vec<TaskKind> = tasks.iter().map(Task::kind).collect();
        assert_eq!(kinds, [TaskKind::Convert]);
        assert_eq!(next, None, "nothing more for a prospect once offered");
    }

    /// `[tasks.budgets]`: a care action's day affords one task; the second prospect of the
    /// day is held back (no task, no contact) and looked at again the next day.
    #[test]
    fn a_care_action_s_budget_holds_back_the_candidates_beyond_it() {
        let tasks = TasksSettings {
            control_share: 0.0,
            budgets: std::collections::BTreeMap::from([(
                "first_purchase_offer".to_string(),
                ActionBudget::new(5.0, 5.0),
            )]),
            ..TasksSettings::default()
        };
        let winback = WinbackSettings::unbudgeted();
        let playbook = Playbook::new(&winback, &tasks, &default_rules());
        let mut budgets = Budgets::with_care(&winback.budgets, &tasks.budgets);
        let mut features = CustomerFeatures::default();
        features.apply(&Event::new("p", EventKind::Visit, 0.0, T0));
        // Late in the day: little more is expected before midnight.
        let now = T0 + DAY - 60;
        let mut offer = |id: &'static str| {
            let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
            contact.prospect_visits = 3;
            let prospect = Assessment {
                customer_id: id,
                scored: None,
                stage: LifecycleStage::Potential,
                ..silent_vip(&features, now)
            };
            let mut raised = Vec::new();
            let next = playbook.decide(
                &prospect,
                (&mut winback, &mut contact),
                None,
                &"m".into(),
                (&mut budgets, &mut Targeting::default(), &mut raised),
            );
            budgets.settle(false, false);
            (raised.len(), contact.last_day, next)
        };
        let (n, last_day, next) = offer("p1");
        assert_eq!((n, next), (1, None));
        assert_eq!(last_day, crate::time::Day::of(now), "a contact");
        let (n, last_day, next) = offer("p2");
        assert_eq!(n, 0, "the day's budget is spent");
        assert_eq!(last_day, Contact::default().last_day, "no contact");
        assert_eq!(next, Some(now + DAY), "again tomorrow");
        let report = budgets.take_report(now);
        assert_eq!(report.len(), 1);
        assert_eq!(
            (report[0].scope, report[0].spent_today, report[0].held_back),
            (BudgetScope::Care, 5.0, 1)
        );
    }
}
