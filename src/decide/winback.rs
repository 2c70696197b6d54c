//! Win-back: when a customer's churn probability warrants a task, which action, and
//! the bookkeeping that keeps tasks unique (episodes, cooldown, deterministic IDs) and
//! measurable (a stable control group).
//!
//! An *episode* is a stretch of silence that began with the customer's last purchase. Each
//! task belongs to one episode and carries an attempt number; its ID is a hash of customer,
//! episode start and attempt, so replaying history produces the same ID and the sink's
//! guard in Redis drops the copy. A purchase after a task closes the episode and counts as a
//! recovery, in the treatment or the control group.

use std::sync::Arc;

use super::budget::{candidate_draw, Budgets, Offer};
use super::holdout::{Group, Holdout};
use super::settings::WinbackSettings;
use super::targeting::{Candidate, Choice, Target, Targeting, WinbackPolicy};
use super::task::{self, winback_task_key, Detail, Task, TaskKind, WinbackDetail};
use super::uplift::Effect;
use super::Assessment;
use crate::classify::Segment;
use crate::time::{self, UnixSeconds};

/// Per-customer win-back bookkeeping, 8 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinbackState {
    /// When the last task was raised; 0 = never.
    pub last_task_at: UnixSeconds,
    /// Tasks raised in the current episode; 0 = no open episode.
    pub episode_tasks: u8,
    /// A task is out and no purchase has followed it yet: the next purchase after
    /// `last_task_at` is a recovery.
    pub awaiting_recovery: bool,
}

/// The configured policy, resolved for fast decisions.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    enabled: bool,
    thresholds: [f64; 8],
    /// By segment: the playbook's action (`[winback.actions]`), with its cost and budget.
    playbook: [Choice; 8],
    /// By segment: the actions the learned policy chooses among (`[winback.candidates]`;
    /// the playbook's action alone when the segment lists none).
    candidates: [Vec<Choice>; 8],
    min_silence: u32,
    cooldown: u32,
    max_tasks_per_episode: u8,
    /// Where the chance in a candidate's priority comes from.
    targeting: WinbackPolicy,
    holdout: Holdout,
    pub reasons: usize,
}

/// What the policy made of a customer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Nothing due.
    None,
    /// A task.
    Task(Box<Task>),
    /// Due, but not within today's budget of the action: a candidate again tomorrow.
    HeldBack,
    /// Due, but the action's measured lift for the customer's segment does not pay for it
    /// (`winback.policy = learned`): looked at again tomorrow, when the book may say otherwise.
    NoLift,
}

impl Policy {
    pub fn new(settings: &WinbackSettings) -> Self {
        let threshold = |s: Segment| {
            *settings
                .segment_thresholds
                .get(&s)
                .unwrap_or(&settings.threshold)
        };
        let choice = |action: &str| Choice {
            action: action.into(),
            cost: settings
                .budgets
                .get(action)
                .and_then(|b| b.cost)
                .unwrap_or(1.0),
            slot: Budgets::slot(&settings.budgets, action),
        };
        let playbook = |s: Segment| choice(settings.actions.get(&s).map_or("review", |a| a));
        let candidates = |s: Segment| match settings.candidates.get(&s) {
            Some(list) if !list.is_empty() => list.iter().map(|a| choice(a)).collect(),
            _ => vec![playbook(s)],
        };
        Self {
            enabled: settings.enabled,
            thresholds: Segment::ALL.map(threshold),
            playbook: Segment::ALL.map(playbook),
            candidates: Segment::ALL.map(candidates),
            min_silence: time::days(settings.min_silence_days),
            cooldown: time::days(settings.cooldown_days),
            max_tasks_per_episode: settings.max_tasks_per_episode.get(),
            targeting: settings.policy,
            holdout: Holdout::new(TaskKind::Winback, settings.control_share),
            reasons: settings.reasons,
        }
    }

    /// The customer's group: a stable function of the ID alone.
    pub fn group(&self, customer_id: &str) -> Group {
        self.holdout.group(customer_id)
    }

    /// The churn probabilities at which a task can be raised (for the scheduler of silence
    /// checks, which must not sleep through a crossing); none when tasks are off.
    pub fn thresholds(&self) -> &[f64] {
        if self.enabled {
            &self.thresholds
        } else {
            &[]
        }
    }

    /// The lowest and the highest task threshold when they differ by segment.
    pub(crate) fn thresholds_span(&self) -> Option<(f64, f64)> {
        let low = self
            .thresholds()
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let high = self
            .thresholds()
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (low < high).then_some((low, high))
    }

    /// Whether this episode can still raise a task.
    pub(crate) fn may_raise(&self, state: &WinbackState) -> bool {
        self.enabled && state.episode_tasks < self.max_tasks_per_episode
    }

    /// The first moment after `now` at which a waiting time of the policy ends (the silence
    /// required after the last purchase, the cooldown after the last task), so that a
    /// customer already over the threshold gets their task then.
    pub(crate) fn next_eligible(
        &self,
        state: &WinbackState,
        last_purchase: UnixSeconds,
        now: UnixSeconds,
    ) -> Option<UnixSeconds> {
        if !self.may_raise(state) {
            return None;
        }
        let cooldown_end =
            (state.last_task_at != 0).then(|| state.last_task_at.saturating_add(self.cooldown));
        [
            Some(last_purchase.saturating_add(self.min_silence)),
            cooldown_end,
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > now)
        .min()
    }

    /// A task for the customer now, if the policy calls for one and the action's budget
    /// affords it; updates `state` when one is raised. Only a buyer (with a score) can get
    /// one. Treatment and control candidates pass the same budget: the group is drawn after.
    /// `targeting` holds the measured lift the priority may be learned from.
    pub fn decide(
        &self,
        state: &mut WinbackState,
        a: &Assessment<'_>,
        model_version: &Arc<str>,
        (budgets, targeting): (&mut Budgets, &mut Targeting),
    ) -> Decision {
        let Some(scored) = a.scored else {
            return Decision::None;
        };
        let now = a.now;
        let last_purchase = a.last_purchase().unwrap_or(0);
        let s = scored.segment.index();
        let below_threshold =
            scored.probability.is_nan() || scored.probability < self.thresholds[s];
        if !self.enabled
            || below_threshold
            || now < last_purchase.saturating_add(self.min_silence)
            || state.episode_tasks >= self.max_tasks_per_episode
            || (state.last_task_at != 0 && now < state.last_task_at.saturating_add(self.cooldown))
        {
            return Decision::None;
        }
        // Worked out only now that a task may be raised: the value at stake (what the
        // customer is worth if they stay × the chance the action changes the outcome) orders
        // the tasks.
        let value = a.value_estimates();
        let attempt = state.episode_tasks + 1;
        let task_key = winback_task_key(a.customer_id, last_purchase, attempt);
        let candidate = Candidate {
            playbook: &self.playbook[s],
            choices: &self.candidates[s],
            segment: scored.segment,
            probability: scored.probability,
            value: value.map_or(scored.monetary_365d, |v| v.clv_365d),
            day: now / time::DAY,
            task_key,
        };
        let picks = match self.targeting.target(&candidate, targeting) {
            Target::Candidate(picks) => picks,
            Target::NoLift => return Decision::NoLift,
        };
        let pick = if budgets.is_pooled() {
            // One spend for all actions: ranked by value per cost against the pool's bar,
            // the action chosen by net value at that price (`budget::Pool`).
            let offers: Vec<Offer> = picks
                .iter()
                .map(|p| Offer {
                    slot: p.choice.slot,
                    value: p.priority,
                    cost: p.choice.cost,
                    key: match p.effect {
                        // A random order, whatever the cost: the baseline.
                        Effect::Random(_) => p.priority,
                        _ => p.priority / p.choice.cost,
                    },
                })
                .collect();
            match budgets.admit_pooled(&offers, candidate_draw(task_key, now), now) {
                Some(i) => picks[i],
                None => return Decision::HeldBack,
            }
        } else {
            // Each action on its own budget: the first, by margin over its bar, that admits
            // the candidate today.
            let offers: Vec<(Option<usize>, f64)> =
                picks.iter().map(|p| (p.choice.slot, p.priority)).collect();
            match budgets.admit_one_of(&offers, now) {
                Some(i) => picks[i],
                None => return Decision::HeldBack,
            }
        };
        let (action, priority, effect) = (pick.choice.action.clone(), pick.priority, pick.effect);
        state.episode_tasks = attempt;
        state.last_task_at = now.max(1);
        state.awaiting_recovery = true;
        Decision::Task(Box::new(Task {
            task_id: task::spelled(task_key),
            customer_id: a.customer_id.to_owned(),
            action,
            lifecycle_stage: a.stage,
            segment: Some(scored.segment),
            as_of: now,
            expires_at: 0,
            tags: Vec::new(),
            profile: None,
            detail: Detail::Winback(WinbackDetail {
                churn_probability: scored.probability,
                risk: scored.risk,
                priority,
                effect,
                reasons: scored.score.reasons(self.reasons),
                model_version: model_version.clone(),
                episode_start: last_purchase,
                attempt,
            }),
            group: self.group(a.customer_id),
            value,
        }))
    }

    /// A purchase at `time`, after the customer's previous last purchase: it starts a new
    /// episode (even when it arrives late, dated before the last task) and, if it follows an
    /// outstanding task, is a recovery. Returns the group to credit with the recovery.
    pub(crate) fn on_new_purchase(
        &self,
        state: &mut WinbackState,
        customer_id: &str,
        time: UnixSeconds,
    ) -> Option<Group> {
        state.episode_tasks = 0;
        if !state.awaiting_recovery || time < state.last_task_at {
            return None;
        }
        state.awaiting_recovery = false;
        Some(self.group(customer_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{LifecycleStage, Risk};
    use crate::decide::Scored;
    use crate::event::{Event, EventKind};
    use crate::features::CustomerFeatures;
    use crate::model::Score;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800;

    static SCORE: std::sync::LazyLock<Score> = std::sync::LazyLock::new(|| {
        let model = crate::model::Model::from_file(&crate::model::tests::recency_only_model_file())
            .expect("valid test model");
        model.score(&[0.0; crate::features::FEATURE_COUNT])
    });

    static FEATURES: std::sync::LazyLock<CustomerFeatures> = std::sync::LazyLock::new(|| {
        let mut features = CustomerFeatures::default();
        features.apply(&Event::new("c-1", EventKind::Purchase, 20.0, T0));
        features
    });

    /// A silent buyer (last purchase at T0, 200 spent over the year) with churn
    /// probability `p`, assessed at `now`.
    fn at(p: f64, segment: Segment, now: UnixSeconds) -> Assessment<'static> {
        Assessment {
            customer_id: "c-1",
            now,
            stage: LifecycleStage::Silent,
            features: &FEATURES,
            scored: Some(Scored {
                probability: p,
                risk: Risk::High,
                segment,
                monetary_365d: 200.0,
                score: &SCORE,
            }),
            profile: None,
            feedback: None,
            coupons: None,
            value: None,
        }
    }

    fn version() -> Arc<str> {
        "m1".into()
    }

    /// [`Policy::decide`] with no budget to pass: the task, if one is raised.
    trait Unbudgeted {
        fn decide_free(
            &self,
            st: &mut WinbackState,
            a: &Assessment<'_>,
            version: &Arc<str>,
        ) -> Option<Task>;
    }

    impl Unbudgeted for Policy {
        fn decide_free(
            &self,
            st: &mut WinbackState,
            a: &Assessment<'_>,
            version: &Arc<str>,
        ) -> Option<Task> {
            match self.decide(
                st,
                a,
                version,
                (&mut Budgets::default(), &mut Targeting::default()),
            ) {
                Decision::Task(task) => Some(*task),
                Decision::None | Decision::HeldBack | Decision::NoLift => None,
            }
        }
    }

    #[test]
    fn waiting_times_end_at_the_next_eligible_moment() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let mut st = WinbackState::default();
        // The silence required after the last purchase (30 days by default).
        assert_eq!(policy.next_eligible(&st, T0, T0), Some(T0 + 30 * DAY));
        assert_eq!(policy.next_eligible(&st, T0, T0 + 31 * DAY), None);
        // A task's cooldown (30 days) ends later; once the episode's tasks are used up,
        // nothing more until the next purchase.
        st.last_task_at = T0 + 40 * DAY;
        assert_eq!(
            policy.next_eligible(&st, T0, T0 + 41 * DAY),
            Some(T0 + 70 * DAY)
        );
        st.episode_tasks = 1;
        assert_eq!(policy.next_eligible(&st, T0, T0 + 41 * DAY), None);
        let off = Policy::new(&WinbackSettings {
            enabled: false,
            ..WinbackSettings::unbudgeted()
        });
        assert_eq!(off.next_eligible(&WinbackState::default(), T0, T0), None);
        assert!(off.thresholds().is_empty());
    }

    #[test]
    fn a_task_is_raised_once_per_episode_at_the_threshold() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let mut st = WinbackState::default();
        let now = T0 + 100 * DAY;
        assert!(policy
            .decide_free(&mut st, &at(0.69, Segment::GeneralWinback, now), &version())
            .is_none());
        let task = policy
            .decide_free(&mut st, &at(0.7, Segment::GeneralWinback, now), &version())
            .unwrap();
        assert_eq!(&*task.action, "coupon");
        assert_eq!(task.winback().unwrap().attempt, 1);
        assert!((task.winback().unwrap().priority - 140.0).abs() < 1e-9);
        assert!(policy
            .decide_free(
                &mut st,
                &at(0.9, Segment::GeneralWinback, now + 60 * DAY),
                &version()
            )
            .is_none());
    }

    #[test]
    fn with_a_value_model_the_priority_is_the_value_at_stake() {
        let value = crate::model::value::ValueModel::new(crate::model::value::tests::cdnow_like())
            .expect("valid parameters");
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let now = T0 + 100 * DAY;
        let a = Assessment {
            value: Some(&value),
            ..at(0.8, Segment::GeneralWinback, now)
        };
        let want = a.value_estimates().expect("a buyer, a value model");
        let task = policy
            .decide_free(&mut WinbackState::default(), &a, &version())
            .unwrap();
        assert_eq!(task.value, Some(want));
        let priority = task.winback().unwrap().priority;
        assert!(want.clv_365d > 0.0, "{want:?}");
        assert!((priority - 0.8 * want.clv_365d).abs() < 1e-12, "{priority}");
        // Without a value part (a format 1 model): p × spend over the last year, no values.
        let task = policy
            .decide_free(
                &mut WinbackState::default(),
                &at(0.8, Segment::GeneralWinback, now),
                &version(),
            )
            .unwrap();
        assert_eq!(task.value, None);
        assert!((task.winback().unwrap().priority - 160.0).abs() < 1e-9);
    }

    #[test]
    fn segment_thresholds_and_actions_override_the_default() {
        let mut settings = WinbackSettings::unbudgeted();
        settings
            .segment_thresholds
            .insert(Segment::ImportantValue, 0.5);
        let policy = Policy::new(&settings);
        let mut st = WinbackState::default();
        let now = T0 + 40 * DAY;
        let task = policy
            .decide_free(&mut st, &at(0.55, Segment::ImportantValue, now), &version())
            .unwrap();
        assert_eq!(&*task.action, "personal_call");
    }

    #[test]
    fn a_recent_buyer_gets_no_task_however_likely_to_churn() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let mut st = WinbackState::default();
        let fresh = T0 + 29 * DAY;
        assert!(policy
            .decide_free(
                &mut st,
                &at(0.99, Segment::GeneralWinback, fresh),
                &version()
            )
            .is_none());
        assert!(policy
            .decide_free(
                &mut st,
                &at(0.99, Segment::GeneralWinback, T0 + 30 * DAY),
                &version()
            )
            .is_some());
    }

    #[test]
    fn the_cooldown_holds_even_across_episodes() {
        let settings = WinbackSettings {
            max_tasks_per_episode: std::num::NonZeroU8::new(3).unwrap(),
            ..WinbackSettings::unbudgeted()
        };
        let policy = Policy::new(&settings);
        let mut st = WinbackState::default();
        let now = T0 + 100 * DAY;
        let first = policy
            .decide_free(&mut st, &at(0.9, Segment::GeneralWinback, now), &version())
            .unwrap();
        assert!(policy
            .decide_free(
                &mut st,
                &at(0.9, Segment::GeneralWinback, now + 29 * DAY),
                &version()
            )
            .is_none());
        let second = policy
            .decide_free(
                &mut st,
                &at(0.9, Segment::GeneralWinback, now + 30 * DAY),
                &version(),
            )
            .unwrap();
        assert_eq!(second.winback().unwrap().attempt, 2);
        assert_ne!(first.task_id, second.task_id);
        // The customer buys: the episode closes, yet the cooldown still applies.
        assert!(policy
            .on_new_purchase(&mut st, "c-1", now + 31 * DAY)
            .is_some());
        assert!(policy
            .decide_free(
                &mut st,
                &at(0.9, Segment::GeneralWinback, now + 40 * DAY),
                &version()
            )
            .is_none());
    }

    /// Coupons for general_winback (cost 5, no limit on volume) under `policy`, decided for
    /// 400 customers like `at(0.8, general_winback)` with `book`: the coupon's conversions
    /// in general_winback of 1,000 per group, beside general_retention's 300 of 1,000
    /// treated and 100 of 1,000 held out. The decisions.
    fn decisions(policy: WinbackPolicy, book: Option<(u64, u64)>) -> Vec<(Decision, WinbackState)> {
        let mut settings = WinbackSettings::unbudgeted();
        settings
            .budgets
            .insert("coupon".into(), super::super::ActionBudget::new(1e12, 5.0));
        settings.policy = policy;
        let p = Policy::new(&settings);
        let mut budgets = Budgets::new(&settings.budgets);
        let mut targeting = Targeting::default();
        if let Some((treated_converted, control_converted)) = book {
            use crate::decide::uplift::{Arm, ArmOutcomes, UpliftBook};
            let mut b = UpliftBook::new(settings.learn);
            let coupon = |segment| Arm {
                kind: TaskKind::Winback,
                action: "coupon".into(),
                segment,
            };
            let outcomes = |treated_converted, control_converted| ArmOutcomes {
                treated: 1_000,
                treated_converted,
                control: 1_000,
                control_converted,
            };
            b.set(
                coupon(Segment::GeneralWinback),
                outcomes(treated_converted, control_converted),
            );
            b.set(coupon(Segment::GeneralRetention), outcomes(300, 100));
            targeting.set_book(Arc::new(b));
        }
        let ids: Vec<String> = (0..400).map(|i| format!("c-{i}")).collect();
        ids.iter()
            .map(|id| {
                let a = Assessment {
                    customer_id: id,
                    ..at(0.8, Segment::GeneralWinback, T0 + 100 * DAY)
                };
                let mut st = WinbackState::default();
                let d = p.decide(&mut st, &a, &version(), (&mut budgets, &mut targeting));
                (d, st)
            })
            .collect()
    }

    fn effects(decisions: &[(Decision, WinbackState)]) -> Vec<(&'static str, f64)> {
        decisions
            .iter()
            .filter_map(|(d, _)| match d {
                Decision::Task(t) => t.winback().map(|w| (w.effect.as_str(), w.priority)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_playbook_ranks_by_churn_probability_whatever_was_measured() {
        let d = decisions(WinbackPolicy::Playbook, Some((200, 200)));
        let e = effects(&d);
        assert_eq!(e.len(), 400);
        // 0.8 × 200 spent over the last year.
        assert!(e
            .iter()
            .all(|&(effect, p)| effect == "stand_in" && (p - 160.0).abs() < 1e-9));
    }

    #[test]
    fn learned_is_the_playbook_until_measured_then_skips_an_action_that_does_nothing() {
        assert_eq!(
            effects(&decisions(WinbackPolicy::Learned, None)),
            effects(&decisions(WinbackPolicy::Playbook, None))
        );
        // +20 points, as much as in general_retention: the playbook's priorities (0.8 × 200
        // spent), each scaled by the day's draw around 1 (one draw for all: the same day).
        let works = decisions(WinbackPolicy::Learned, Some((300, 100)));
        let e = effects(&works);
        assert_eq!(e.len(), 400);
        let learned: Vec<f64> = e
            .iter()
            .filter(|(effect, _)| *effect == "learned")
            .map(|(_, p)| p / 160.0)
            .collect();
        assert!(
            (300..390).contains(&learned.len()),
            "{} learned",
            learned.len()
        );
        assert!(learned.iter().all(|m| *m == learned[0]), "one draw a day");
        assert!((learned[0] - 1.0).abs() < 0.3, "multiplier {}", learned[0]);
        // Nothing, where general_retention gains 20 points: only the exploration floor gets
        // the playbook's priority; the others get none that day, or a sliver of it. Those
        // not tasked are not touched.
        let useless = decisions(WinbackPolicy::Learned, Some((200, 200)));
        for (effect, p) in effects(&useless) {
            match effect {
                "explored" => assert_eq!(p, 160.0),
                _ => assert!(p < 160.0 * 0.3, "{effect} {p}"),
            }
        }
        let skipped = useless
            .iter()
            .filter(|(d, _)| *d == Decision::NoLift)
            .inspect(|(_, st)| assert_eq!(*st, WinbackState::default()))
            .count();
        assert_eq!(skipped + effects(&useless).len(), 400);
    }

    /// general_winback chooses between email reminders (2 a day) and coupons (unlimited),
    /// both measured to lift it (email 20 points, coupons 10, 1,000 outcomes per group):
    /// once measured, the reminder (better and cheaper) is tried first, and when its day's
    /// budget is spent the next candidates get coupons instead of waiting; the playbook
    /// gives every candidate its one action, the coupon.
    #[test]
    fn learned_falls_back_to_the_next_action_when_the_best_one_s_budget_is_spent() {
        use crate::decide::uplift::{Arm, ArmOutcomes, UpliftBook};
        let mut settings = WinbackSettings::unbudgeted();
        settings.learn.exploration = 0.0;
        settings
            .actions
            .insert(Segment::GeneralWinback, "coupon".into());
        settings.candidates.insert(
            Segment::GeneralWinback,
            vec!["coupon".into(), "email_reminder".into()],
        );
        settings.budgets.extend([
            ("coupon".into(), super::super::ActionBudget::new(1e12, 5.0)),
            (
                "email_reminder".into(),
                super::super::ActionBudget::new(0.4, 0.2),
            ),
        ]);
        let mut book = UpliftBook::new(settings.learn);
        for (action, converted) in [("coupon", 200), ("email_reminder", 300)] {
            book.set(
                Arm {
                    kind: TaskKind::Winback,
                    action: action.into(),
                    segment: Segment::GeneralWinback,
                },
                ArmOutcomes {
                    treated: 1_000,
                    treated_converted: converted,
                    control: 1_000,
                    control_converted: 100,
                },
            );
        }
        let actions = |policy| {
            let p = Policy::new(&WinbackSettings {
                policy,
                ..settings.clone()
            });
            let mut budgets = Budgets::new(&settings.budgets);
            let mut targeting = Targeting::default();
            targeting.set_book(Arc::new(book.clone()));
            // Late in the day: the reminders' budget goes to the first who come.
            let now = T0 + 100 * DAY + DAY - 100;
            (0..10)
                .map(|i| {
                    let a = Assessment {
                        customer_id: &format!("c-{i}"),
                        ..at(0.8, Segment::GeneralWinback, now)
                    };
                    let mut st = WinbackState::default();
                    match p.decide(&mut st, &a, &version(), (&mut budgets, &mut targeting)) {
                        Decision::Task(t) => {
                            budgets.settle(false, false);
                            t.action.to_string()
                        }
                        other => panic!("{other:?}"),
                    }
                })
                .collect::<Vec<_>>()
        };
        let learned = actions(WinbackPolicy::Learned);
        assert_eq!(learned[..2], ["email_reminder", "email_reminder"]);
        assert!(learned[2..].iter().all(|a| a == "coupon"), "{learned:?}");
        let playbook = actions(WinbackPolicy::Playbook);
        assert!(playbook.iter().all(|a| a == "coupon"), "{playbook:?}");
    }

    #[test]
    fn random_orders_candidates_whatever_their_value_and_repeats_on_replay() {
        let first = effects(&decisions(WinbackPolicy::Random, Some((400, 100))));
        assert_eq!(first, effects(&decisions(WinbackPolicy::Random, None)));
        assert_eq!(first.len(), 400);
        assert!(first.iter().all(|(effect, _)| *effect == "random"));
        let mut priorities: Vec<f64> = first.iter().map(|(_, p)| *p).collect();
        priorities.sort_by(f64::total_cmp);
        priorities.dedup();
        assert_eq!(priorities.len(), 400, "a priority of its own for each");
    }

    #[test]
    fn a_purchase_only_closes_an_open_episode() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let mut st = WinbackState::default();
        assert_eq!(policy.on_new_purchase(&mut st, "c-1", T0), None);
        policy.decide_free(
            &mut st,
            &at(0.9, Segment::GeneralWinback, T0 + 100 * DAY),
            &version(),
        );
        // A late purchase from before the task is not a recovery, but it does start a new
        // episode: the customer can get a task for the silence after it.
        assert_eq!(policy.on_new_purchase(&mut st, "c-1", T0 + 50 * DAY), None);
        assert_eq!(st.episode_tasks, 0);
        assert!(policy
            .on_new_purchase(&mut st, "c-1", T0 + 101 * DAY)
            .is_some());
        // Only the first purchase after a task is a recovery.
        assert_eq!(policy.on_new_purchase(&mut st, "c-1", T0 + 102 * DAY), None);
    }

    #[test]
    fn a_nan_probability_raises_no_task() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let mut st = WinbackState::default();
        let task = policy.decide_free(
            &mut st,
            &at(f64::NAN, Segment::GeneralWinback, T0 + 100 * DAY),
            &version(),
        );
        assert_eq!(task, None);
    }

    #[test]
    fn the_control_group_is_stable_and_near_its_share() {
        let policy = Policy::new(&WinbackSettings::unbudgeted());
        let control = (0..100_000)
            .filter(|i| policy.group(&format!("customer-{i}")) == Group::Control)
            .count();
        assert!((9_000..11_000).contains(&control), "{control}");
        assert_eq!(policy.group("customer-7"), policy.group("customer-7"));
        let nobody = Policy::new(&WinbackSettings {
            control_share: 0.0,
            ..WinbackSettings::unbudgeted()
        });
        assert_eq!(nobody.group("customer-7"), Group::Treatment);
    }
}
