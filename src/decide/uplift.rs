//! Learning where actions work: Thompson sampling over the lift each action has shown, each
//! arm's lift shrunk towards what the whole kind has shown.
//!
//! A task's priority is the value at stake × the chance that the action changes the outcome.
//! Before anything is measured that chance has only a stand-in, the churn probability (a
//! customer who will come back anyway gains nothing from a coupon, but which ones those are
//! is unknown). Outcomes measure the lift of an *arm* (task kind × action × segment): the
//! conversion rate of the treated minus that of the held-out. They do not measure how lift
//! varies between the customers of one arm, so the stand-in keeps ordering those; what the
//! outcomes change is the weight of each arm: the stand-in × the arm's lift relative to the
//! kind's pooled lift. An arm whose lift is twice the kind's gets its candidates' priorities
//! doubled, one that does nothing sees them fall to nothing. Keeping the stand-in's scale
//! (the multiplier is 1 on average) lets measured and unmeasured arms compete for one budget
//! on the same footing, and keeps the budget pacer's picture of priorities steady when
//! learning starts.
//!
//! Each arm's lift has a normal posterior whose prior is the kind's (empirical Bayes, as in
//! a random-effects meta-analysis): centred on the pooled lift, spread as much as the arms'
//! measured lifts differ beyond their noise (DerSimonian and Laird's moment estimate). An arm
//! with few outcomes stays near the pooled lift, one with many follows its own; no arm needs
//! a minimum of outcomes of its own, and an arm never measured draws from the prior. Only the
//! kind as a whole needs [`LearnSettings::min_outcomes`] in each group before its lift is
//! trusted at all: until then the stand-in alone decides, as the playbook does.
//!
//! Drawing rather than taking the mean is Thompson sampling (Russo et al., "A Tutorial on
//! Thompson Sampling", 2018): an arm whose lift is still uncertain is sometimes drawn high
//! and keeps being tried, one that surely does nothing is drawn near or below zero and loses
//! its budget to the arms that work. The draw is one per arm and day, so that the
//! candidates of one arm keep the stand-in's order among themselves (a draw per candidate
//! would shuffle them at random). The exploration floor keeps a share of every arm's
//! candidates on the stand-in alone whatever the posterior says, so that the measurement
//! never stops: an action that stopped working, or started to, is seen.
//!
//! Draws are seeded by the arm and the day, the exploration share by the task's
//! deterministic ID, so a replay after a restart decides as the first run did, given the
//! same book.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

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
    /// The posterior mean of the lift (each rate a Beta posterior from a uniform prior).
    pub fn mean_lift(&self) -> f64 {
        beta_mean(self.treated_converted, self.treated)
            - beta_mean(self.control_converted, self.control)
    }

    /// The variance of that lift: the two groups' posterior variances.
    fn lift_variance(&self) -> f64 {
        beta_variance(self.treated_converted, self.treated)
            + beta_variance(self.control_converted, self.control)
    }

    fn add(&mut self, o: &ArmOutcomes) {
        self.treated += o.treated;
        self.treated_converted += o.treated_converted;
        self.control += o.control;
        self.control_converted += o.control_converted;
    }
}

fn beta_mean(converted: u64, n: u64) -> f64 {
    (converted as f64 + 1.0) / (n as f64 + 2.0)
}

/// The variance of Beta(1 + converted, 1 + n − converted).
fn beta_variance(converted: u64, n: u64) -> f64 {
    let a = converted as f64 + 1.0;
    let b = n.saturating_sub(converted) as f64 + 1.0;
    a * b / ((a + b).powi(2) * (a + b + 1.0))
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
    /// Outcomes the kind needs in each group, all its arms together, before measured lift
    /// steers its tasks at all.
    pub min_outcomes: u64,
    /// The share of candidates that keep the stand-in alone, whatever was measured (0 to 1).
    pub exploration: f64,
}

impl Default for LearnSettings {
    fn default() -> Self {
        Self {
            min_outcomes: 100,
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
    /// The stand-in × the arm's drawn lift relative to the kind's (positive: a draw at or
    /// below zero raises no task, see [`Draw::NoLift`]).
    Learned(f64),
    /// Measured, but this candidate fell in the exploration floor: the stand-in.
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

/// What the book makes of a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    /// The chance to rank the candidate by.
    Chance(Effect),
    /// The arm's lift was drawn at or below zero today: the action is taken to do nothing
    /// for this candidate (the value of the draw).
    NoLift(f64),
}

/// How the book decides a candidate ([`UpliftBook::stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The kind is not measured yet: the stand-in.
    StandIn,
    /// Measured, but the candidate falls in the exploration floor: the stand-in.
    Explored,
    /// Measured: the arms' drawn lifts.
    Learned,
}

/// A kind's prior on its arms' lifts: what all its outcomes together say.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prior {
    /// The pooled lift.
    mean: f64,
    /// How far an arm's true lift may lie from it: the spread between arms plus the pooled
    /// lift's own uncertainty.
    variance: f64,
    /// What a lift is measured against for the multiplier: the pooled lift, or its standard
    /// error when the pooled lift is not clearly above zero.
    scale: f64,
    /// The kind has `min_outcomes` in each group.
    trusted: bool,
}

/// The outcomes measured so far, per arm.
#[derive(Debug, Clone, Default)]
pub struct UpliftBook {
    settings: LearnSettings,
    arms: HashMap<Arm, ArmOutcomes>,
    /// Each kind's prior, worked out at the first decision after a change.
    priors: OnceLock<HashMap<TaskKind, Prior>>,
}

impl PartialEq for UpliftBook {
    /// Same settings and outcomes (the priors follow from them).
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && self.arms == other.arms
    }
}

impl UpliftBook {
    pub fn new(settings: LearnSettings) -> Self {
        Self {
            settings,
            arms: HashMap::new(),
            priors: OnceLock::new(),
        }
    }

    /// Replaces an arm's outcomes (the lift aggregates are rebuilt from the outcome stream).
    pub fn set(&mut self, arm: Arm, outcomes: ArmOutcomes) {
        self.arms.insert(arm, outcomes);
        self.priors = OnceLock::new();
    }

    /// Arms with outcomes.
    pub fn arms(&self) -> usize {
        self.arms.len()
    }

    /// Every arm with its outcomes, in a stable order (for a snapshot).
    pub fn entries(&self) -> Vec<(Arm, ArmOutcomes)> {
        let mut all: Vec<_> = self.arms.iter().map(|(a, o)| (a.clone(), *o)).collect();
        all.sort_by(|(a, _), (b, _)| {
            (a.kind.as_str(), &a.action, a.segment.index()).cmp(&(
                b.kind.as_str(),
                &b.action,
                b.segment.index(),
            ))
        });
        all
    }

    /// The same outcomes decided on under other settings (a restore under new settings).
    pub fn with_settings(&self, settings: LearnSettings) -> Self {
        Self {
            settings,
            arms: self.arms.clone(),
            priors: OnceLock::new(),
        }
    }

    pub fn outcomes(&self, arm: &Arm) -> ArmOutcomes {
        self.arms.get(arm).copied().unwrap_or_default()
    }

    fn prior(&self, kind: TaskKind) -> Option<Prior> {
        self.priors
            .get_or_init(|| priors(&self.arms, self.settings.min_outcomes))
            .get(&kind)
            .copied()
    }

    /// The chance that `arm`'s action changes this candidate's outcome on `day` (days since
    /// the epoch): `stand_in` until the kind is measured, then `stand_in` × the arm's lift
    /// drawn for the day relative to the kind's; `seed` (the task's) picks the exploration
    /// share.
    pub fn effect(&self, arm: &Arm, stand_in: f64, day: u32, seed: u64) -> Draw {
        match self.stage(arm.kind, seed) {
            Stage::StandIn => Draw::Chance(Effect::StandIn(stand_in)),
            Stage::Explored => Draw::Chance(Effect::Explored(stand_in)),
            Stage::Learned => match self.relative_lift(arm, day) {
                Some(m) if m > 0.0 => Draw::Chance(Effect::Learned(stand_in * m)),
                Some(m) => Draw::NoLift(m),
                None => Draw::Chance(Effect::StandIn(stand_in)),
            },
        }
    }

    /// How a candidate of `kind` is decided: on the stand-in until the kind is measured,
    /// then on the stand-in for the exploration share (picked by `seed`, the task's), on
    /// drawn lifts for the others.
    pub fn stage(&self, kind: TaskKind, seed: u64) -> Stage {
        if !self.prior(kind).is_some_and(|p| p.trusted) {
            return Stage::StandIn;
        }
        if SmallRng::seed_from_u64(seed).random::<f64>() < self.settings.exploration {
            return Stage::Explored;
        }
        Stage::Learned
    }

    /// `arm`'s lift drawn for `day` relative to its kind's (the multiplier of the stand-in;
    /// at or below zero: no lift that day); `None` until the kind is measured.
    pub fn relative_lift(&self, arm: &Arm, day: u32) -> Option<f64> {
        let prior = self.prior(arm.kind).filter(|p| p.trusted)?;
        Some(self.draw(arm, &prior, day) / prior.scale)
    }

    /// The arm's lift drawn for `day` from its posterior: the kind's prior updated with the
    /// arm's own measured lift.
    fn draw(&self, arm: &Arm, prior: &Prior, day: u32) -> f64 {
        let o = self.outcomes(arm);
        let (mean, variance) = if o.treated == 0 && o.control == 0 {
            (prior.mean, prior.variance)
        } else {
            let v = o.lift_variance();
            let precision = 1.0 / prior.variance + 1.0 / v;
            (
                (prior.mean / prior.variance + o.mean_lift() / v) / precision,
                1.0 / precision,
            )
        };
        let seed = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{}|{}|{}|{day}",
                arm.kind.as_str(),
                arm.action,
                arm.segment.as_str()
            )
            .as_bytes(),
        );
        let mut rng = SmallRng::seed_from_u64(seed);
        // A finite mean and a positive, finite sd always make a distribution.
        Normal::new(mean, variance.sqrt()).map_or(mean, |n| n.sample(&mut rng))
    }
}

/// Each kind's prior, from its arms' outcomes.
fn priors(arms: &HashMap<Arm, ArmOutcomes>, min_outcomes: u64) -> HashMap<TaskKind, Prior> {
    let mut by_kind: HashMap<TaskKind, Vec<ArmOutcomes>> = HashMap::new();
    for (arm, o) in arms {
        by_kind.entry(arm.kind).or_default().push(*o);
    }
    by_kind
        .into_iter()
        .map(|(kind, outcomes)| {
            let mut pooled = ArmOutcomes::default();
            outcomes.iter().for_each(|o| pooled.add(o));
            let mean = pooled.mean_lift();
            let pooled_variance = pooled.lift_variance();
            let prior = Prior {
                mean,
                variance: between_arms(&outcomes) + pooled_variance,
                scale: mean.max(pooled_variance.sqrt()),
                trusted: pooled.treated.min(pooled.control) >= min_outcomes,
            };
            (kind, prior)
        })
        .collect()
}

/// The variance of the arms' true lifts around their common mean, beyond what their own
/// noise explains: DerSimonian and Laird's moment estimate (0 when the arms differ no more
/// than noise would make them).
fn between_arms(outcomes: &[ArmOutcomes]) -> f64 {
    let measured: Vec<(f64, f64)> = outcomes
        .iter()
        .filter(|o| o.treated > 0 && o.control > 0)
        .map(|o| (o.mean_lift(), 1.0 / o.lift_variance()))
        .collect();
    if measured.len() < 2 {
        return 0.0;
    }
    let weights: f64 = measured.iter().map(|(_, w)| w).sum();
    let squares: f64 = measured.iter().map(|(_, w)| w * w).sum();
    let centre = measured.iter().map(|(d, w)| d * w).sum::<f64>() / weights;
    let q: f64 = measured.iter().map(|(d, w)| w * (d - centre).powi(2)).sum();
    let excess = q - (measured.len() - 1) as f64;
    (excess / (weights - squares / weights)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(action: &str, segment: Segment) -> Arm {
        Arm {
            kind: TaskKind::Winback,
            action: action.into(),
            segment,
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

    fn book(min_outcomes: u64, exploration: f64) -> UpliftBook {
        UpliftBook::new(LearnSettings {
            min_outcomes,
            exploration,
        })
    }

    /// The multiplier of the stand-in an arm gets over `days` days (0 for a day drawn at or
    /// below zero).
    fn multipliers(b: &UpliftBook, a: &Arm, days: u32) -> Vec<f64> {
        (0..days)
            .map(|day| match b.effect(a, 0.5, day, u64::MAX) {
                Draw::Chance(Effect::Learned(chance)) => chance / 0.5,
                Draw::NoLift(_) => 0.0,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn the_stand_in_decides_until_the_kind_has_enough_outcomes_in_each_group() {
        let mut b = book(100, 0.0);
        let coupon = arm("coupon", Segment::GeneralWinback);
        assert_eq!(
            b.effect(&coupon, 0.8, 1, 1),
            Draw::Chance(Effect::StandIn(0.8))
        );
        // Plenty treated, too few held out in all arms together.
        b.set(coupon.clone(), outcomes(10_000, 0.2, 60, 0.1));
        b.set(
            arm("call", Segment::ImportantWinback),
            outcomes(500, 0.2, 39, 0.1),
        );
        assert_eq!(
            b.effect(&coupon, 0.8, 1, 1),
            Draw::Chance(Effect::StandIn(0.8))
        );
        // One more control outcome: the kind is measured, every arm learns.
        b.set(
            arm("call", Segment::ImportantWinback),
            outcomes(500, 0.2, 40, 0.1),
        );
        assert!(matches!(
            b.effect(&coupon, 0.8, 1, 1),
            Draw::Chance(Effect::Learned(_)) | Draw::NoLift(_)
        ));
    }

    #[test]
    fn budget_moves_to_the_arm_that_works_and_away_from_the_one_that_does_not() {
        let mut b = book(100, 0.0);
        let works = arm("coupon", Segment::GeneralDevelopment);
        let useless = arm("coupon", Segment::GeneralWinback);
        // The coupon lifts general_development by 20 points and does nothing in
        // general_winback: the kind's pooled lift is 10 points.
        b.set(works.clone(), outcomes(2_000, 0.3, 2_000, 0.1));
        b.set(useless.clone(), outcomes(2_000, 0.1, 2_000, 0.1));
        let good = multipliers(&b, &works, 400);
        let bad = multipliers(&b, &useless, 400);
        assert!((mean(&good) - 2.0).abs() < 0.1, "works: {}", mean(&good));
        assert!(mean(&bad) < 0.15, "useless: {}", mean(&bad));
        // About half the days the useless arm's lift is drawn at or below zero.
        let none = bad.iter().filter(|m| **m == 0.0).count();
        assert!(
            (120..280).contains(&none),
            "{none} of 400 days without lift"
        );
        assert!(
            good.iter().all(|m| *m > 1.0),
            "the working arm always beats the pooled lift here"
        );
    }

    #[test]
    fn an_arm_with_few_outcomes_stays_near_the_pooled_lift_one_with_many_follows_its_own() {
        let mut b = book(100, 0.0);
        // Two large arms that differ (20 and 0 points), so that arms do differ, and two
        // small ones measured at 40 points: one of 30 outcomes a group, one of 3,000.
        b.set(
            arm("coupon", Segment::GeneralValue),
            outcomes(3_000, 0.3, 3_000, 0.1),
        );
        b.set(
            arm("coupon", Segment::GeneralWinback),
            outcomes(3_000, 0.1, 3_000, 0.1),
        );
        let small = arm("call", Segment::ImportantValue);
        let large = arm("call", Segment::ImportantWinback);
        b.set(small.clone(), outcomes(30, 0.5, 30, 0.1));
        b.set(large.clone(), outcomes(3_000, 0.5, 3_000, 0.1));
        let scale = b.prior(TaskKind::Winback).expect("measured").scale;
        let lift = |a: &Arm| mean(&multipliers(&b, a, 2_000)) * scale;
        let (small, large) = (lift(&small), lift(&large));
        assert!((large - 0.4).abs() < 0.01, "many outcomes: {large}");
        assert!(small < large - 0.03 && small > 0.1, "few outcomes: {small}");
        // An arm never measured draws from the prior: the pooled lift on average.
        let never = lift(&arm("email_reminder", Segment::GeneralValue));
        let pooled = b.prior(TaskKind::Winback).expect("measured").mean;
        assert!(
            (never - pooled).abs() < 0.03,
            "unmeasured {never} against pooled {pooled}"
        );
    }

    #[test]
    fn arms_that_differ_no_more_than_noise_share_the_pooled_lift() {
        let same: Vec<ArmOutcomes> = (0..6).map(|_| outcomes(500, 0.2, 500, 0.1)).collect();
        assert_eq!(between_arms(&same), 0.0);
        let apart = [
            outcomes(5_000, 0.3, 5_000, 0.1),
            outcomes(5_000, 0.1, 5_000, 0.1),
        ];
        // Lifts of 20 and 0 points: a spread of about 10 points each side.
        let spread = between_arms(&apart).sqrt();
        assert!((spread - 0.14).abs() < 0.02, "{spread}");
    }

    #[test]
    fn one_arm_draws_once_a_day_so_its_candidates_keep_the_stand_in_order() {
        let mut b = book(100, 0.0);
        let coupon = arm("coupon", Segment::GeneralValue);
        b.set(coupon.clone(), outcomes(400, 0.25, 400, 0.1));
        b.set(
            arm("call", Segment::ImportantValue),
            outcomes(400, 0.15, 400, 0.1),
        );
        let chance = |p: f64, day, seed| match b.effect(&coupon, p, day, seed) {
            Draw::Chance(e) => e.chance(),
            Draw::NoLift(_) => 0.0,
        };
        for day in 0..50 {
            let (low, high) = (chance(0.6, day, 1), chance(0.9, day, 2));
            assert!((high - low * 1.5).abs() < 1e-12, "day {day}: {low} {high}");
        }
        assert_ne!(
            chance(0.6, 1, 1),
            chance(0.6, 2, 1),
            "another day, another draw"
        );
        assert_eq!(
            chance(0.6, 7, 1),
            chance(0.6, 7, 1),
            "the same day, the same draw"
        );
    }

    #[test]
    fn the_exploration_floor_keeps_its_share_on_the_stand_in() {
        let mut b = book(100, 0.1);
        b.set(
            arm("coupon", Segment::GeneralValue),
            outcomes(1_000, 0.1, 1_000, 0.1),
        );
        let explored = (0..20_000)
            .filter(|&seed| {
                b.effect(&arm("coupon", Segment::GeneralValue), 0.7, 3, seed)
                    == Draw::Chance(Effect::Explored(0.7))
            })
            .count();
        let share = explored as f64 / 20_000.0;
        assert!((share - 0.1).abs() < 0.01, "explored share {share}");
    }

    #[test]
    fn entries_come_out_in_a_stable_order_and_rebuild_the_same_book() {
        let mut b = book(100, 0.1);
        b.set(
            arm("coupon", Segment::GeneralValue),
            outcomes(10, 0.1, 10, 0.1),
        );
        b.set(
            arm("call", Segment::ImportantValue),
            outcomes(20, 0.1, 10, 0.1),
        );
        b.set(
            arm("call", Segment::GeneralValue),
            outcomes(30, 0.1, 10, 0.1),
        );
        let entries = b.entries();
        let names: Vec<_> = entries
            .iter()
            .map(|(a, _)| format!("{}/{}", a.action, a.segment.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                "call/important_value",
                "call/general_value",
                "coupon/general_value"
            ]
        );
        let mut again = book(100, 0.1);
        entries.into_iter().for_each(|(a, o)| again.set(a, o));
        assert_eq!(again, b);
        let other = LearnSettings {
            min_outcomes: 100,
            exploration: 0.2,
        };
        assert_ne!(b.with_settings(other), b);
    }

    #[test]
    fn the_posterior_mean_lift_is_reported() {
        let o = outcomes(98, 0.5, 98, 0.0);
        // (49 + 1)/(98 + 2) − (0 + 1)/(98 + 2)
        assert!((o.mean_lift() - 0.49).abs() < 1e-12);
    }
}
