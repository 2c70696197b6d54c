//! Learning where actions work: Thompson sampling over the lift each action has shown.
//!
//! A task's priority is the value at stake × the chance that the action changes the outcome.
//! Until an action has been measured, that chance has only a stand-in (the churn
//! probability: a customer who will come back anyway gains nothing from a coupon, but which
//! ones those are is unknown). Once an *arm* (task kind × action × segment) has enough
//! outcomes in both its treatment and its control group, the chance is drawn instead from
//! the posterior of its lift: the conversion rate of the treated minus that of the held-out,
//! each a Beta posterior from a uniform prior.
//!
//! Drawing rather than taking the mean is Thompson sampling (Russo et al., "A Tutorial on
//! Thompson Sampling", 2018): an arm whose lift is still uncertain is sometimes drawn high
//! and keeps being tried, one that surely does nothing is drawn near or below zero and loses
//! its budget to the arms that work. Because budget pacing ranks candidates by priority, an
//! arm's share of the budget follows its posterior without any allocation step of its own.
//! The exploration floor keeps a share of every arm's candidates on the stand-in whatever the
//! posterior says, so that the measurement never stops: an action that stopped working, or
//! started to, is seen.
//!
//! The draw is seeded by the caller (from the task's deterministic ID), so a replay after a
//! restart decides as the first run did, given the same outcomes.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution};

use super::task::TaskKind;
use crate::classify::Segment;

/// What the holdout measured for one arm: tasks whose conversion window closed, and how
/// many of them converted, per group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArmOutcomes {
    pub treated: u64,
    pub treated_converted: u64,
    pub control: u64,
    pub control_converted: u64,
}

impl ArmOutcomes {
    /// Outcomes of the smaller group: what limits how well the lift is known.
    fn fewest(&self) -> u64 {
        self.treated.min(self.control)
    }

    /// The posterior mean of the lift, for reports.
    pub fn mean_lift(&self) -> f64 {
        beta_mean(self.treated_converted, self.treated)
            - beta_mean(self.control_converted, self.control)
    }
}

fn beta_mean(converted: u64, n: u64) -> f64 {
    (converted as f64 + 1.0) / (n as f64 + 2.0)
}

/// One arm: what the lift is measured for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arm {
    pub kind: TaskKind,
    pub action: Arc<str>,
    pub segment: Segment,
}

/// How the chance of an effect is learned (`[winback.learn]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LearnSettings {
    /// Outcomes each group of an arm needs before its posterior replaces the stand-in.
    pub min_outcomes: u64,
    /// The share of a learned arm's candidates that keep the stand-in (0 to 1).
    pub exploration: f64,
}

impl Default for LearnSettings {
    fn default() -> Self {
        Self {
            min_outcomes: 200,
            exploration: 0.1,
        }
    }
}

/// Where the chance of an effect came from: the task says so, and the lift report can tell
/// learned decisions from explored ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Not enough outcomes yet: the stand-in.
    StandIn(f64),
    /// A draw from the arm's lift posterior (may be zero or below: no budget then).
    Learned(f64),
    /// The arm is learned, but this candidate fell in the exploration floor: the stand-in.
    Explored(f64),
    /// `winback.policy = random`: a uniform draw from the task ID (0 to 1) that orders the
    /// candidates, whatever their value.
    Random(f64),
}

impl Effect {
    /// The chance that the action changes the outcome, as priorities use it.
    pub fn chance(self) -> f64 {
        match self {
            Self::StandIn(p) | Self::Learned(p) | Self::Explored(p) | Self::Random(p) => p,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandIn(_) => "stand_in",
            Self::Learned(_) => "learned",
            Self::Explored(_) => "explored",
            Self::Random(_) => "random",
        }
    }
}

/// The outcomes measured so far, per arm.
#[derive(Debug, Clone, Default)]
pub struct UpliftBook {
    settings: LearnSettings,
    arms: HashMap<Arm, ArmOutcomes>,
}

impl UpliftBook {
    pub fn new(settings: LearnSettings) -> Self {
        Self {
            settings,
            arms: HashMap::new(),
        }
    }

    /// Replaces an arm's outcomes (the lift aggregates are rebuilt from the outcome stream).
    pub fn set(&mut self, arm: Arm, outcomes: ArmOutcomes) {
        self.arms.insert(arm, outcomes);
    }

    /// Arms with outcomes.
    pub fn arms(&self) -> usize {
        self.arms.len()
    }

    pub fn outcomes(&self, arm: &Arm) -> ArmOutcomes {
        self.arms.get(arm).copied().unwrap_or_default()
    }

    /// The chance that `arm`'s action changes this candidate's outcome: `stand_in` until the
    /// arm is measured, then a draw from its lift posterior seeded by `seed`.
    pub fn effect(&self, arm: &Arm, stand_in: f64, seed: u64) -> Effect {
        let o = self.outcomes(arm);
        if o.fewest() < self.settings.min_outcomes {
            return Effect::StandIn(stand_in);
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        if rng.random::<f64>() < self.settings.exploration {
            return Effect::Explored(stand_in);
        }
        Effect::Learned(
            draw(o.treated_converted, o.treated, &mut rng)
                - draw(o.control_converted, o.control, &mut rng),
        )
    }

    /// Of several actions open to a candidate, the one whose drawn value (chance × value at
    /// stake − cost) is highest, with its effect; `None` when there is no action to choose.
    pub fn choose<'a>(
        &self,
        kind: TaskKind,
        segment: Segment,
        actions: &'a [(Arc<str>, f64)],
        stand_in: f64,
        value_at_stake: f64,
        seed: u64,
    ) -> Option<(&'a Arc<str>, Effect)> {
        actions
            .iter()
            .enumerate()
            .map(|(i, (action, cost))| {
                let arm = Arm {
                    kind,
                    action: action.clone(),
                    segment,
                };
                // Each action its own draw: the same seed would correlate them.
                let effect = self.effect(&arm, stand_in, seed.wrapping_add(i as u64));
                (action, effect, effect.chance() * value_at_stake - cost)
            })
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(action, effect, _)| (action, effect))
    }
}

/// A draw from Beta(1 + converted, 1 + n − converted), the conversion rate's posterior.
fn draw(converted: u64, n: u64, rng: &mut SmallRng) -> f64 {
    let a = converted as f64 + 1.0;
    let b = n.saturating_sub(converted) as f64 + 1.0;
    // Both parameters are at least 1 and finite: the distribution always exists.
    Beta::new(a, b).map_or(a / (a + b), |beta| beta.sample(rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(action: &str) -> Arm {
        Arm {
            kind: TaskKind::Winback,
            action: action.into(),
            segment: Segment::ImportantWinback,
        }
    }

    fn outcomes(treated: u64, rate_t: f64, control: u64, rate_c: f64) -> ArmOutcomes {
        ArmOutcomes {
            treated,
            treated_converted: (treated as f64 * rate_t).round() as u64,
            control,
            control_converted: (control as f64 * rate_c).round() as u64,
        }
    }

    fn book(exploration: f64) -> UpliftBook {
        UpliftBook::new(LearnSettings {
            min_outcomes: 100,
            exploration,
        })
    }

    #[test]
    fn an_unmeasured_arm_keeps_the_stand_in() {
        let mut b = book(0.1);
        assert_eq!(b.effect(&arm("coupon"), 0.8, 1), Effect::StandIn(0.8));
        // Enough treated, too few held out: still not measured.
        b.set(arm("coupon"), outcomes(10_000, 0.2, 99, 0.1));
        assert_eq!(b.effect(&arm("coupon"), 0.8, 1), Effect::StandIn(0.8));
    }

    #[test]
    fn draws_centre_on_the_measured_lift_and_narrow_with_outcomes() {
        for (n, tolerance) in [(400, 0.1), (40_000, 0.01)] {
            let mut b = book(0.0);
            b.set(arm("coupon"), outcomes(n, 0.25, n, 0.10));
            let draws: Vec<f64> = (0..4_000)
                .map(|seed| b.effect(&arm("coupon"), 0.9, seed).chance())
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let sd =
                (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64).sqrt();
            // The lift's posterior sd is sqrt(pt(1-pt)/n + pc(1-pc)/n).
            let expected_sd = ((0.25 * 0.75 + 0.1 * 0.9) / n as f64).sqrt();
            assert!((mean - 0.15).abs() < tolerance, "n {n}: mean {mean}");
            assert!(
                (sd / expected_sd - 1.0).abs() < 0.1,
                "n {n}: sd {sd} against {expected_sd}"
            );
        }
    }

    #[test]
    fn the_exploration_floor_keeps_its_share_on_the_stand_in() {
        let mut b = book(0.1);
        b.set(arm("coupon"), outcomes(1_000, 0.1, 1_000, 0.1));
        let explored = (0..20_000)
            .filter(|&seed| matches!(b.effect(&arm("coupon"), 0.7, seed), Effect::Explored(p) if p == 0.7))
            .count();
        let share = explored as f64 / 20_000.0;
        assert!((share - 0.1).abs() < 0.01, "explored share {share}");
    }

    #[test]
    fn the_same_seed_decides_the_same_way() {
        let mut b = book(0.1);
        b.set(arm("coupon"), outcomes(500, 0.3, 500, 0.2));
        for seed in 0..100 {
            assert_eq!(
                b.effect(&arm("coupon"), 0.5, seed),
                b.effect(&arm("coupon"), 0.5, seed)
            );
        }
    }

    #[test]
    fn budget_moves_to_the_action_that_works() {
        let mut b = book(0.05);
        // The call does nothing in this segment; the coupon lifts conversion by 10 points.
        b.set(arm("call"), outcomes(2_000, 0.12, 2_000, 0.12));
        b.set(arm("coupon"), outcomes(2_000, 0.22, 2_000, 0.12));
        let actions: Vec<(Arc<str>, f64)> = vec![("call".into(), 1.0), ("coupon".into(), 1.0)];
        let coupon = (0..2_000u64)
            .filter(|&seed| {
                let (action, _) = b
                    .choose(
                        TaskKind::Winback,
                        Segment::ImportantWinback,
                        &actions,
                        0.8,
                        100.0,
                        seed * 2,
                    )
                    .expect("two actions");
                &**action == "coupon"
            })
            .count();
        assert!(
            coupon > 1_900,
            "the coupon was chosen {coupon} times of 2,000"
        );
    }

    #[test]
    fn an_arm_that_does_nothing_mostly_draws_no_value() {
        let mut b = book(0.1);
        b.set(arm("call"), outcomes(5_000, 0.12, 5_000, 0.12));
        let worth_a_cost = (0..10_000)
            .filter(|&seed| b.effect(&arm("call"), 0.8, seed).chance() * 100.0 > 2.0)
            .count();
        // Only the exploration floor (10 %) and the posterior's tail above a 2 % lift (about
        // 0.1 % at this many outcomes) are worth a cost of 2 at a value of 100.
        let share = worth_a_cost as f64 / 10_000.0;
        assert!(
            (0.08..0.12).contains(&share),
            "share worth the cost {share}"
        );
    }

    #[test]
    fn the_posterior_mean_lift_is_reported() {
        let o = outcomes(98, 0.5, 98, 0.0);
        // (49 + 1)/(98 + 2) − (0 + 1)/(98 + 2)
        assert!((o.mean_lift() - 0.49).abs() < 1e-12);
    }
}
