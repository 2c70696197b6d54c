//! Win-back targeting: the chance in a candidate's priority (value at stake × chance), by
//! `winback.policy`.
//!
//! - `learned` (the default): the chance is the arm's [`Effect`] from the [`UpliftBook`]:
//!   the churn probability (the stand-in) until win-back as a whole has
//!   `winback.learn.min_outcomes` outcomes in each group, then the stand-in × the lift drawn
//!   for the arm (win-back × action × segment) that day relative to win-back's pooled lift,
//!   except for the exploration floor. An arm whose lift is drawn at or below zero raises no
//!   task that day: the budget goes to candidates whose action works for them.
//! - `playbook`: the churn probability, always (churnd before learning).
//! - `random`: candidates are admitted in a random order, the benchmark's baseline: the
//!   priority is a pseudo-random number drawn from the task ID, whatever the value.
//!
//! Every draw is seeded by the arm and day or by the task's deterministic ID, so a replay
//! decides as the first run did, given the same book. Pure: the engine owns the book and
//! swaps in a newer one at a snapshot's capture ([`Targeting::offer`], [`Targeting::adopt`]).

use std::sync::Arc;

use serde::Serialize;

use super::task::TaskKind;
use super::uplift::{Arm, Draw, Effect, UpliftBook};
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

/// What targeting made of a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// A candidate at `priority`, the chance from `effect`.
    Candidate { priority: f64, effect: Effect },
    /// The action's lift was drawn at or below zero for the candidate's segment: no task.
    NoLift,
}

/// One win-back candidate, as targeting sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub action: &'a Arc<str>,
    pub segment: Segment,
    /// The churn probability: the chance's stand-in.
    pub probability: f64,
    /// What the customer is worth if they stay (`clv_365d`, or spend over the last year).
    pub value: f64,
    /// Days since the epoch by churnd's clock: the day an arm's lift is drawn for.
    pub day: u32,
    /// The task's deterministic ID (32 hex digits): the seed of every draw.
    pub task_id: &'a str,
}

impl WinbackPolicy {
    /// The candidate's priority under this policy, counting a skip in `targeting`.
    pub(crate) fn target(self, c: &Candidate<'_>, targeting: &mut Targeting) -> Target {
        let (high, low) = seeds(c.task_id);
        let effect = match self {
            Self::Playbook => Effect::StandIn(c.probability),
            Self::Random => {
                // Uniform on the budget pacer's log scale (its histogram has even buckets of
                // log2(1 + priority)), so that its quantiles stay sharp: 0 to 2^32 − 1.
                let draw = (low >> 11) as f64 / (1u64 << 53) as f64;
                return Target::Candidate {
                    priority: (draw * 32.0).exp2() - 1.0,
                    effect: Effect::Random(draw),
                };
            }
            Self::Learned => {
                let arm = Arm {
                    kind: TaskKind::Winback,
                    action: c.action.clone(),
                    segment: c.segment,
                };
                match targeting.book.effect(&arm, c.probability, c.day, high) {
                    Draw::Chance(effect) => effect,
                    Draw::NoLift(_) => {
                        targeting.no_lift += 1;
                        return Target::NoLift;
                    }
                }
            }
        };
        Target::Candidate {
            priority: c.value * effect.chance(),
            effect,
        }
    }
}

/// Two independent seeds from a task ID of 32 hex digits (any other text is hashed).
fn seeds(task_id: &str) -> (u64, u64) {
    let half = |range: std::ops::Range<usize>| {
        task_id
            .get(range)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    };
    match (half(0..16), half(16..32)) {
        (Some(high), Some(low)) => (high, low),
        _ => {
            let h = xxhash_rust::xxh3::xxh3_128(task_id.as_bytes());
            ((h >> 64) as u64, h as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::task::winback_task_id;
    use crate::decide::uplift::{ArmOutcomes, LearnSettings};

    fn coupon() -> Arc<str> {
        "coupon".into()
    }

    fn candidate<'a>(action: &'a Arc<str>, segment: Segment, task_id: &'a str) -> Candidate<'a> {
        Candidate {
            action,
            segment,
            probability: 0.8,
            value: 100.0,
            day: 9_862,
            task_id,
        }
    }

    fn ids(n: u32) -> Vec<String> {
        (0..n)
            .map(|i| winback_task_id(&format!("c{i}"), 852_076_800, 1))
            .collect()
    }

    /// A book where coupons lift general_winback by 20 points and do nothing for
    /// important_winback, 2,000 outcomes per group each: win-back's pooled lift is 10 points.
    fn book(min_outcomes: u64) -> UpliftBook {
        let mut book = UpliftBook::new(LearnSettings {
            min_outcomes,
            exploration: 0.1,
        });
        let arm = |segment| Arm {
            kind: TaskKind::Winback,
            action: coupon(),
            segment,
        };
        book.set(
            arm(Segment::GeneralWinback),
            ArmOutcomes {
                treated: 2_000,
                treated_converted: 600,
                control: 2_000,
                control_converted: 200,
            },
        );
        book.set(
            arm(Segment::ImportantWinback),
            ArmOutcomes {
                treated: 2_000,
                treated_converted: 200,
                control: 2_000,
                control_converted: 200,
            },
        );
        book
    }

    fn measured() -> Targeting {
        let mut t = Targeting::default();
        t.set_book(Arc::new(book(200)));
        t
    }

    #[test]
    fn the_playbook_ranks_by_value_times_churn_probability_whatever_the_book() {
        let mut t = measured();
        let action = coupon();
        for id in ids(50) {
            let got = WinbackPolicy::Playbook
                .target(&candidate(&action, Segment::ImportantWinback, &id), &mut t);
            assert_eq!(
                got,
                Target::Candidate {
                    priority: 80.0,
                    effect: Effect::StandIn(0.8)
                }
            );
        }
        assert_eq!(t.take_skipped(), 0);
    }

    #[test]
    fn learned_equals_the_playbook_until_win_back_is_measured() {
        let action = coupon();
        let id = &ids(1)[0];
        let playbook = WinbackPolicy::Playbook.target(
            &candidate(&action, Segment::GeneralWinback, id),
            &mut Targeting::default(),
        );
        assert_eq!(
            playbook,
            Target::Candidate {
                priority: 80.0,
                effect: Effect::StandIn(0.8)
            }
        );
        // An empty book, and one with fewer than min_outcomes in each group in all.
        for book in [UpliftBook::default(), book(4_001)] {
            let mut t = Targeting::default();
            t.set_book(Arc::new(book));
            for segment in [Segment::GeneralWinback, Segment::GeneralRetention] {
                let got = WinbackPolicy::Learned.target(&candidate(&action, segment, id), &mut t);
                assert_eq!(got, playbook);
            }
        }
    }

    #[test]
    fn learned_priorities_follow_the_lift_and_skip_days_drawn_without_it() {
        let mut t = measured();
        let action = coupon();
        let id = &ids(4)[3];
        let (mut works, mut useless) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        for day in 9_000..9_400 {
            for (segment, seen) in [
                (Segment::GeneralWinback, &mut works),
                (Segment::ImportantWinback, &mut useless),
            ] {
                let c = Candidate {
                    day,
                    ..candidate(&action, segment, id)
                };
                match WinbackPolicy::Learned.target(&c, &mut t) {
                    Target::Candidate {
                        priority,
                        effect: Effect::Learned(chance),
                    } => {
                        assert!((priority - 100.0 * chance).abs() < 1e-9);
                        seen.push(priority);
                    }
                    Target::NoLift => {
                        skipped += 1;
                        seen.push(0.0);
                    }
                    other => panic!("this task is not in the exploration share: {other:?}"),
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
        let action = coupon();
        let ids = ids(4_000);
        let draws: Vec<f64> = ids
            .iter()
            .map(|id| {
                let c = candidate(&action, Segment::ImportantWinback, id);
                let cheap = Candidate { value: 1.0, ..c };
                let a = WinbackPolicy::Random.target(&c, &mut t);
                assert_eq!(a, WinbackPolicy::Random.target(&cheap, &mut t));
                match a {
                    Target::Candidate {
                        priority,
                        effect: Effect::Random(draw),
                    } => {
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

    #[test]
    fn seeds_come_from_both_halves_of_the_id() {
        let id = "00000000000000ff0000000000000001";
        assert_eq!(seeds(id), (255, 1));
        assert_ne!(seeds("not hex"), seeds("not hex either"));
    }
}
