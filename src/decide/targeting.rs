//! Win-back targeting: which action a candidate gets, and the chance in its priority (value
//! at stake × chance), by `winback.policy`.
//!
//! - `learned` (the default): the chance is the arm's [`Effect`] from the [`UpliftBook`]:
//!   the churn probability (the stand-in), with the playbook's action, until win-back as a
//!   whole has `winback.learn.min_outcomes` outcomes in each group; then, for each of the
//!   segment's candidate actions (`[winback.candidates]`), the stand-in × the lift drawn for
//!   the arm (win-back × action × segment) that day relative to win-back's pooled lift
//!   (Thompson sampling). The picks come best first by expected incremental value per cost
//!   (value × chance ÷ the action's cost), but that order only breaks ties: on budgets per
//!   action they are tried by how far each priority clears its action's bar
//!   (`Budgets::admit_one_of`), under a pooled budget (`[winback.budget]`) the pool admits by
//!   value per cost and picks the action with the most value net of its cost at the pool's
//!   price (`budget::Pool`). An action drawn at or below zero is not tried that
//!   day; when none is left, no task (the budget goes to candidates whose actions work for
//!   them). A share `exploration` of candidates tries one candidate action, picked by the
//!   task ID, on the stand-in: every action stays measured in every segment.
//! - `playbook`: the playbook's action (`[winback.actions]`), the churn probability, always
//!   (churnd before learning).
//! - `random`: the playbook's action, candidates admitted in a random order, the benchmark's
//!   baseline: the priority is a pseudo-random number drawn from the task ID, whatever the
//!   value.
//!
//! So, once measured, budget moves between actions: an action that works in a segment draws
//! that segment's candidates first and spends its budget on them, one that does not loses
//! them to the segment's other actions. Treatment and control candidates are decided alike
//! (the group is drawn after), so the holdout stays the control of every action × segment.
//!
//! Every draw is seeded by the arm and day or by the task's deterministic ID, so a replay
//! decides as the first run did, given the same book. Pure: the engine owns the book and
//! swaps in a newer one at a snapshot's capture ([`Targeting::offer`], [`Targeting::adopt`]).

use std::sync::Arc;

use serde::Serialize;

use super::task::TaskKind;
use super::uplift::{Arm, Effect, Stage, UpliftBook};
use crate::classify::Segment;

/// `winback.policy`: where the chance in a win-back candidate's priority comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WinbackPolicy {
    /// The measured lift per action × segment once there are enough outcomes; the churn
    /// probability until then.
    #[default]
    Learned,
    /// The churn probability, always.
    Playbook,
    /// A random order (same budgets): the baseline of the closed-loop benchmark.
    Random,
}

impl WinbackPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Learned => "learned",
            Self::Playbook => "playbook",
            Self::Random => "random",
        }
    }
}

/// The book the engine decides with, a newer one waiting to be taken, and what it skipped
/// for want of lift since the last [`Targeting::take_skipped`].
#[derive(Debug, Clone, Default)]
pub struct Targeting {
    book: Arc<UpliftBook>,
    offered: Option<Arc<UpliftBook>>,
    no_lift: u64,
}

impl Targeting {
    /// Decides with `book` from now on (the lift task rebuilt it from the outcome stream).
    pub fn set_book(&mut self, book: Arc<UpliftBook>) {
        self.book = book;
        self.offered = None;
    }

    /// Keeps `book` until [`Self::adopt`]: the engine takes a new book only where a snapshot
    /// records it, so that a replay from that snapshot decides with the same one.
    pub fn offer(&mut self, book: Arc<UpliftBook>) {
        self.offered = Some(book);
    }

    /// Decides with the book last offered, if any, from now on.
    pub fn adopt(&mut self) {
        if let Some(book) = self.offered.take() {
            self.book = book;
        }
    }

    /// Whether a book waits for [`Self::adopt`].
    pub fn offered(&self) -> bool {
        self.offered.is_some()
    }

    /// The book decisions are made with.
    pub fn book(&self) -> &Arc<UpliftBook> {
        &self.book
    }

    /// Candidates skipped because their learned lift did not cover the action's cost, since
    /// the last call.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.no_lift)
    }
}

/// One action a candidate may get, as targeting sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choice {
    pub action: Arc<str>,
    /// What one task of the action costs (`[winback.budgets]`); 1 for an action without a
    /// budget (only ever a segment's one action).
    pub cost: f64,
    /// The slot of the action's budget in the engine's [`super::Budgets`]; `None`: not
    /// budgeted, no limit.
    pub slot: Option<usize>,
}

/// An action to try for a candidate, at the priority its budget sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick<'a> {
    pub choice: &'a Choice,
    pub priority: f64,
    pub effect: Effect,
}

/// What targeting made of a candidate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target<'a> {
    /// The actions to try, best first: the first whose budget admits the candidate is
    /// the task's.
    Candidate(Vec<Pick<'a>>),
    /// Every action's lift was drawn at or below zero for the candidate's segment: no task.
    NoLift,
}

/// One win-back candidate, as targeting sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// The playbook's action for the segment (`[winback.actions]`).
    pub playbook: &'a Choice,
    /// The actions the learned policy chooses among (`[winback.candidates]`; at least one).
    pub choices: &'a [Choice],
    pub segment: Segment,
    /// The churn probability: the chance's stand-in.
    pub probability: f64,
    /// What the customer is worth if they stay (`clv_365d`, or spend over the last year).
    pub value: f64,
    /// Days since the epoch by churnd's clock: the day an arm's lift is drawn for.
    pub day: u32,
    /// The number behind the task's deterministic ID
    /// ([`super::task::winback_task_key`]): the seed of every draw.
    pub task_key: u128,
}

impl WinbackPolicy {
    /// The actions to try for the candidate under this policy, best first, counting a skip
    /// in `targeting`. `playbook` and `random` try the playbook's action alone, and so does
    /// `learned` until win-back is measured; then each of the segment's candidate actions
    /// gets the stand-in × its lift drawn for the day (relative to win-back's), actions
    /// drawn at or below zero are left out, and the others come in the order of the
    /// expected incremental value per cost (value × chance ÷ cost), which the budgets use to
    /// break ties (`Budgets::admit_one_of`, `Budgets::admit_pooled`). A candidate in the
    /// exploration share tries one of them, picked by the task ID, on the stand-in.
    pub(crate) fn target<'a>(self, c: &Candidate<'a>, targeting: &mut Targeting) -> Target<'a> {
        let (high, low) = ((c.task_key >> 64) as u64, c.task_key as u64);
        let one = |choice, effect: Effect| {
            Target::Candidate(vec![Pick {
                choice,
                priority: c.value * effect.chance(),
                effect,
            }])
        };
        match self {
            Self::Playbook => one(c.playbook, Effect::StandIn(c.probability)),
            Self::Random => {
                // Uniform on the budget pacer's log scale (its histogram has even buckets of
                // log2(1 + priority)), so that its quantiles stay sharp: 0 to 2^32 − 1.
                let draw = (low >> 11) as f64 / (1u64 << 53) as f64;
                Target::Candidate(vec![Pick {
                    choice: c.playbook,
                    priority: (draw * 32.0).exp2() - 1.0,
                    effect: Effect::Random(draw),
                }])
            }
            Self::Learned => match targeting.book.stage(TaskKind::Winback, high) {
                Stage::StandIn => one(c.playbook, Effect::StandIn(c.probability)),
                Stage::Explored => {
                    let i = (low % c.choices.len().max(1) as u64) as usize;
                    let choice = c.choices.get(i).unwrap_or(c.playbook);
                    one(choice, Effect::Explored(c.probability))
                }
                Stage::Learned => {
                    let picks = learned_picks(c, targeting.book());
                    if picks.is_empty() {
                        targeting.no_lift += 1;
                        Target::NoLift
                    } else {
                        Target::Candidate(picks)
                    }
                }
            },
        }
    }
}

/// The candidate's actions with a lift drawn above zero, by expected incremental value per
/// cost, best first (in the order of `choices` where equal).
fn learned_picks<'a>(c: &Candidate<'a>, book: &UpliftBook) -> Vec<Pick<'a>> {
    let mut picks: Vec<Pick<'a>> = c
        .choices
        .iter()
        .filter_map(|choice| {
            let arm = Arm {
                kind: TaskKind::Winback,
                action: choice.action.clone(),
                segment: c.segment,
            };
            let m = book.relative_lift(&arm, c.day)?;
            (m > 0.0).then(|| {
                let effect = Effect::Learned(c.probability * m);
                Pick {
                    choice,
                    priority: c.value * effect.chance(),
                    effect,
                }
            })
        })
        .collect();
    picks.sort_by(|a, b| (b.priority / b.choice.cost).total_cmp(&(a.priority / a.choice.cost)));
    picks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::task::winback_task_key;
    use crate::decide::uplift::{ArmOutcomes, LearnSettings};

    fn choice(action: &str, cost: f64) -> Choice {
        Choice {
            action: action.into(),
            cost,
            slot: None,
        }
    }

    fn coupon() -> Choice {
        choice("coupon", 5.0)
    }

    fn candidate<'a>(
        playbook: &'a Choice,
        choices: &'a [Choice],
        segment: Segment,
        task_key: u128,
    ) -> Candidate<'a> {
        Candidate {
            playbook,
            choices,
            segment,
            probability: 0.8,
            value: 100.0,
            day: 9_862,
            task_key,
        }
    }

    fn ids(n: u32) -> Vec<u128> {
        (0..n)
            .map(|i| winback_task_key(&format!("c{i}"), 852_076_800, 1))
            .collect()
    }

    fn outcomes(treated_converted: u64, control_converted: u64) -> ArmOutcomes {
        ArmOutcomes {
            treated: 2_000,
            treated_converted,
            control: 2_000,
            control_converted,
        }
    }

    fn arm(action: &str, segment: Segment) -> Arm {
        Arm {
            kind: TaskKind::Winback,
            action: action.into(),
            segment,
        }
    }

    /// A book where coupons lift general_winback by 20 points and do nothing for
    /// important_winback, 2,000 outcomes per group each: win-back's pooled lift is 10 points.
    fn book(min_outcomes: u64) -> UpliftBook {
        let mut book = UpliftBook::new(LearnSettings {
            min_outcomes,
            exploration: 0.1,
        });
        book.set(arm("coupon", Segment::GeneralWinback), outcomes(600, 200));
        book.set(arm("coupon", Segment::ImportantWinback), outcomes(200, 200));
        book
    }

    fn targeting(book: UpliftBook) -> Targeting {
        let mut t = Targeting::default();
        t.set_book(Arc::new(book));
        t
    }

    fn measured() -> Targeting {
        targeting(book(200))
    }

    /// The one action a policy tries, with its priority and effect.
    fn only(target: Target<'_>) -> (Arc<str>, f64, Effect) {
        match target {
            Target::Candidate(picks) if picks.len() == 1 => (
                picks[0].choice.action.clone(),
                picks[0].priority,
                picks[0].effect,
            ),
            other => panic!("not one action: {other:?}"),
        }
    }

    #[test]
    fn the_playbook_ranks_by_value_times_churn_probability_whatever_the_book() {
        let mut t = measured();
        let (playbook, choices) = (coupon(), [choice("email_reminder", 0.2), coupon()]);
        for id in ids(50) {
            let c = candidate(&playbook, &choices, Segment::ImportantWinback, id);
            let got = only(WinbackPolicy::Playbook.target(&c, &mut t));
            assert_eq!(got, ("coupon".into(), 80.0, Effect::StandIn(0.8)));
        }
        assert_eq!(t.take_skipped(), 0);
    }

    #[test]
    fn learned_equals_the_playbook_until_win_back_is_measured() {
        let (playbook, choices) = (coupon(), [choice("email_reminder", 0.2), coupon()]);
        let id = ids(1)[0];
        let want = ("coupon".into(), 80.0, Effect::StandIn(0.8));
        // An empty book, and one with fewer than min_outcomes in each group in all.
        for book in [UpliftBook::default(), book(4_001)] {
            let mut t = targeting(book);
            for segment in [Segment::GeneralWinback, Segment::GeneralRetention] {
                let c = candidate(&playbook, &choices, segment, id);
                assert_eq!(only(WinbackPolicy::Learned.target(&c, &mut t)), want);
            }
        }
    }

    #[test]
    fn learned_priorities_follow_the_lift_and_skip_days_drawn_without_it() {
        let mut t = measured();
        let (playbook, choices) = (coupon(), [coupon()]);
        let id = ids(4)[3];
        let (mut works, mut useless) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        for day in 9_000..9_400 {
            for (segment, seen) in [
                (Segment::GeneralWinback, &mut works),
                (Segment::ImportantWinback, &mut useless),
            ] {
                let c = Candidate {
                    day,
                    ..candidate(&playbook, &choices, segment, id)
                };
                match WinbackPolicy::Learned.target(&c, &mut t) {
                    Target::NoLift => {
                        skipped += 1;
                        seen.push(0.0);
                    }
                    target => match only(target) {
                        (_, priority, Effect::Learned(chance)) => {
                            assert!((priority - 100.0 * chance).abs() < 1e-9);
                            seen.push(priority);
                        }
                        other => panic!("this task is not in the exploration share: {other:?}"),
                    },
                }
            }
        }
        assert_eq!(t.take_skipped(), skipped);
        assert_eq!(t.take_skipped(), 0, "taken");
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        // Twice win-back's pooled lift: twice the playbook's priority of 80.
        assert!((mean(&works) - 160.0).abs() < 8.0, "{}", mean(&works));
        assert!(mean(&useless) < 10.0, "{}", mean(&useless));
        assert!(works.iter().all(|p| *p > 80.0));
    }

    /// Coupons (cost 5) lift general_winback by 20 points, loyalty offers (cost 5) by 5,
    /// email reminders (cost 0.2) by `email` points; 2,000 outcomes per group each. The
    /// actions the learned policy tries, over 200 days (task IDs outside the exploration
    /// share).
    fn orders(email: u64) -> Vec<Vec<String>> {
        let mut b = UpliftBook::new(LearnSettings {
            min_outcomes: 100,
            exploration: 0.0,
        });
        let s = Segment::GeneralWinback;
        b.set(arm("coupon", s), outcomes(600, 200));
        b.set(arm("loyalty_offer", s), outcomes(300, 200));
        b.set(arm("email_reminder", s), outcomes(200 + 20 * email, 200));
        let mut t = targeting(b);
        let playbook = choice("loyalty_offer", 5.0);
        let choices = [
            choice("loyalty_offer", 5.0),
            choice("email_reminder", 0.2),
            coupon(),
        ];
        let id = ids(1)[0];
        (0..200)
            .map(|day| {
                let c = Candidate {
                    day,
                    ..candidate(&playbook, &choices, s, id)
                };
                match WinbackPolicy::Learned.target(&c, &mut t) {
                    Target::Candidate(picks) => {
                        for p in &picks {
                            let Effect::Learned(chance) = p.effect else {
                                panic!("{p:?}");
                            };
                            assert!((p.priority - 100.0 * chance).abs() < 1e-9);
                        }
                        let per_cost: Vec<f64> =
                            picks.iter().map(|p| p.priority / p.choice.cost).collect();
                        assert!(per_cost.windows(2).all(|w| w[0] >= w[1]), "{per_cost:?}");
                        picks.iter().map(|p| p.choice.action.to_string()).collect()
                    }
                    Target::NoLift => Vec::new(),
                }
            })
            .collect()
    }

    #[test]
    fn learned_tries_the_segment_s_actions_by_value_per_cost() {
        let count = |orders: &[Vec<String>], first: &str| {
            orders
                .iter()
                .filter(|o| o.first().map(String::as_str) == Some(first))
                .count()
        };
        let before = |o: &[String], a: &str, b: &str| {
            let at = |x: &str| o.iter().position(|y| y == x);
            at(a).is_some() && (at(b).is_none() || at(a) < at(b))
        };
        // The reminder does nothing: its lift is drawn around zero, so about half the days
        // it is left out; on the others it is drawn a point or so, and at a 25th of the
        // price that can be worth more per cost than a coupon. Coupons (20 points) always
        // go before loyalty offers (5 points), at the same cost.
        let useless = orders(0);
        let without_email = useless.iter().filter(|o| o.len() == 2).count();
        assert!((60..140).contains(&without_email), "{useless:?}");
        assert!(useless.iter().all(|o| before(o, "coupon", "loyalty_offer")));
        assert!(count(&useless, "loyalty_offer") == 0);
        // Two points for a 25th of the price: the reminder first on most days.
        let cheap = orders(2);
        assert!(count(&cheap, "email_reminder") >= 170, "{cheap:?}");
        assert!(cheap.iter().all(|o| before(o, "coupon", "loyalty_offer")));
    }

    #[test]
    fn every_action_drawn_without_lift_raises_no_task_and_is_counted() {
        let mut b = UpliftBook::new(LearnSettings {
            min_outcomes: 100,
            exploration: 0.0,
        });
        b.set(arm("coupon", Segment::GeneralValue), outcomes(600, 200));
        for action in ["coupon", "email_reminder"] {
            b.set(arm(action, Segment::GeneralWinback), outcomes(100, 200));
        }
        let mut t = targeting(b);
        let (playbook, choices) = (coupon(), [coupon(), choice("email_reminder", 0.2)]);
        let id = ids(1)[0];
        let none = (0..50)
            .filter(|&day| {
                let c = Candidate {
                    day,
                    ..candidate(&playbook, &choices, Segment::GeneralWinback, id)
                };
                WinbackPolicy::Learned.target(&c, &mut t) == Target::NoLift
            })
            .count();
        assert!(none >= 45, "{none} of 50 days");
        assert_eq!(t.take_skipped(), none as u64);
    }

    #[test]
    fn the_exploration_share_tries_each_candidate_action_alike() {
        let mut t = measured();
        let playbook = coupon();
        let choices = [
            coupon(),
            choice("email_reminder", 0.2),
            choice("call", 10.0),
        ];
        let mut counts = std::collections::BTreeMap::new();
        for id in ids(20_000) {
            let c = candidate(&playbook, &choices, Segment::GeneralWinback, id);
            if let Target::Candidate(picks) = WinbackPolicy::Learned.target(&c, &mut t) {
                if let [Pick {
                    choice,
                    priority,
                    effect: Effect::Explored(p),
                }] = picks.as_slice()
                {
                    assert_eq!((*priority, *p), (80.0, 0.8));
                    *counts.entry(choice.action.to_string()).or_insert(0) += 1;
                }
            }
        }
        // 10 % of 20,000, a third each: about 667 (binomial sd 25).
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            counts.values().all(|n| (560..780).contains(n)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_book_offered_is_decided_with_once_adopted() {
        let mut t = Targeting::default();
        t.offer(Arc::new(book(200)));
        assert_eq!(t.book().arms(), 0, "not before adopt");
        t.adopt();
        assert_eq!(t.book().arms(), 2);
        t.adopt();
        assert_eq!(t.book().arms(), 2, "nothing new offered");
    }

    #[test]
    fn random_priorities_ignore_value_and_book_and_repeat_for_a_task() {
        let mut t = measured();
        let (playbook, choices) = (coupon(), [choice("email_reminder", 0.2), coupon()]);
        let ids = ids(4_000);
        let draws: Vec<f64> = ids
            .iter()
            .map(|id| {
                let c = candidate(&playbook, &choices, Segment::ImportantWinback, *id);
                let cheap = Candidate { value: 1.0, ..c };
                let a = only(WinbackPolicy::Random.target(&c, &mut t));
                assert_eq!(a, only(WinbackPolicy::Random.target(&cheap, &mut t)));
                match a {
                    (action, priority, Effect::Random(draw)) => {
                        assert_eq!(&*action, "coupon", "the playbook's action");
                        assert!((priority - ((draw * 32.0).exp2() - 1.0)).abs() < 1e-6);
                        draw
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(t.take_skipped(), 0);
        // Uniform on [0, 1): each tenth holds about a tenth (binomial sd 19 of 400).
        for tenth in 0..10 {
            let n = draws
                .iter()
                .filter(|d| (**d * 10.0) as usize == tenth)
                .count();
            assert!((300..500).contains(&n), "tenth {tenth}: {n}");
        }
    }
}
