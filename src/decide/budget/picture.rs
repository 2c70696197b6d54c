//! A budget's running picture of the priorities its candidates had: a histogram of
//! log-priorities whose weights decay over the days, read by quantile.
//!
//! The pacer reads a quantile for every candidate it decides, and once budgets bind most
//! candidates are held back and come again, so the read is on the hot path. The picture
//! therefore keeps its total and the range of buckets in use beside the buckets, and reads a
//! quantile from the end of that range nearer to it: a bar near the top (a budget that
//! binds) walks a few buckets, not the 384 the scale spans.

/// Histogram buckets per doubling of `1 + priority`.
const PER_OCTAVE: f64 = 8.0;
/// Buckets: priorities up to 2^48 (anything beyond falls in the last).
pub const BUCKETS: usize = 48 * PER_OCTAVE as usize;

/// The bucket of a priority; NaN and anything below 0 fall in the first.
pub fn bucket(priority: f64) -> usize {
    let x = (priority.max(0.0) + 1.0).log2() * PER_OCTAVE;
    if x.is_finite() {
        (x as usize).min(BUCKETS - 1)
    } else {
        BUCKETS - 1
    }
}

/// The priority at a position on the scale: the inverse of [`bucket`], read between
/// bucket edges as if priorities were spread evenly on the log scale.
pub fn priority_at(position: f64) -> f64 {
    (position / PER_OCTAVE).exp2() - 1.0
}

/// Weights by bucket of log-priority, their sum and where they lie.
#[derive(Debug, Clone)]
pub struct Picture {
    weights: Box<[f64; BUCKETS]>,
    /// The sum of `weights`: summed afresh whenever a weight shrinks (a decay, a weight
    /// taken back), so it never drifts from them by more than the rounding of the
    /// additions since.
    total: f64,
    /// No bucket below `lowest` or above `highest` has weight (`lowest > highest`: none
    /// has).
    lowest: usize,
    highest: usize,
}

impl Default for Picture {
    fn default() -> Self {
        Self::from_weights(Box::new([0.0; BUCKETS]))
    }
}

/// Pictures are equal when their weights are: the total is only a cache of their sum.
impl PartialEq for Picture {
    fn eq(&self, other: &Self) -> bool {
        self.weights == other.weights
    }
}

impl Picture {
    /// A picture of these weights (a snapshot's).
    pub fn from_weights(weights: Box<[f64; BUCKETS]>) -> Self {
        let mut picture = Self {
            weights,
            total: 0.0,
            lowest: BUCKETS,
            highest: 0,
        };
        picture.recount();
        picture
    }

    /// Sums the weights afresh and finds the buckets in use.
    fn recount(&mut self) {
        let used = |&(_, &w): &(usize, &f64)| w != 0.0;
        let mut buckets = self.weights.iter().enumerate();
        self.lowest = buckets.clone().find(used).map_or(BUCKETS, |(b, _)| b);
        self.highest = buckets.rfind(used).map_or(0, |(b, _)| b);
        self.total = self.weights.iter().sum();
    }

    pub fn weights(&self) -> &[f64; BUCKETS] {
        &self.weights
    }

    /// The weight of every bucket together.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Adds `mass` to bucket `b`.
    pub fn add_to(&mut self, b: usize, mass: f64) {
        self.weights[b] += mass;
        self.total += mass;
        self.lowest = self.lowest.min(b);
        self.highest = self.highest.max(b);
    }

    /// Takes `mass` back from bucket `b`, leaving it at 0 at least.
    pub fn take_from(&mut self, b: usize, mass: f64) {
        let w = &mut self.weights[b];
        *w = (*w - mass).max(0.0);
        self.recount();
    }

    /// Scales every weight by `factor` (the decay of the days gone by).
    pub fn decay(&mut self, factor: f64) {
        self.weights.iter_mut().for_each(|w| *w *= factor);
        self.recount();
    }

    /// Where on the picture's scale a share `level` (0 to 1) of the weight lies below: its
    /// bucket, plus the share of that bucket's weight below it (buckets hold no order
    /// within: [`priority_at`] reads a position as if their weight were spread evenly across
    /// them, which makes it the quantile's priority); 0 for an empty picture.
    pub fn position(&self, level: f64) -> f64 {
        let total = self.total;
        if total <= 0.0 || level <= 0.0 {
            return 0.0;
        }
        let target = level.min(1.0) * total;
        // Both walks stop at the same bucket: the lowest with weight whose cumulative
        // reaches the target.
        let found = if level > 0.5 {
            self.walk_down(target)
        } else {
            self.walk_up(target)
        };
        let Some((b, below)) = found else {
            return BUCKETS as f64;
        };
        b as f64 + (target - below) / self.weights[b]
    }

    /// The lowest bucket with weight whose cumulative reaches `target`, and the weight below
    /// it, walking up from the lowest bucket in use.
    fn walk_up(&self, target: f64) -> Option<(usize, f64)> {
        let mut below = 0.0;
        for b in self.lowest..=self.highest {
            let w = self.weights[b];
            if w > 0.0 && below + w >= target {
                return Some((b, below));
            }
            below += w;
        }
        None
    }

    /// The same bucket walking down from the highest in use: the cumulative through a bucket
    /// is the total less the weight above it.
    fn walk_down(&self, target: f64) -> Option<(usize, f64)> {
        let mut above = 0.0;
        let mut found = None;
        for b in (self.lowest..=self.highest).rev() {
            let w = self.weights[b];
            let through = self.total - above;
            if through < target {
                break;
            }
            if w > 0.0 {
                found = Some((b, through - w));
            }
            above += w;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantile as the pacer read it before the picture kept its total: summed, then
    /// walked from the bottom.
    fn walked_walk_up(weights: &[f64; BUCKETS], level: f64) -> f64 {
        let total: f64 = weights.iter().sum();
        if total <= 0.0 || level <= 0.0 {
            return 0.0;
        }
        let target = level.min(1.0) * total;
        let mut below = 0.0;
        for (b, &w) in weights.iter().enumerate() {
            if w > 0.0 && below + w >= target {
                let x = (b as f64 + (target - below) / w) / PER_OCTAVE;
                return x.exp2() - 1.0;
            }
            below += w;
        }
        (BUCKETS as f64 / PER_OCTAVE).exp2() - 1.0
    }

    #[test]
    fn quantiles_read_the_picture() {
        let mut p = Picture::default();
        for priority in 1..=1000 {
            p.add_to(bucket(f64::from(priority)), 1.0);
        }
        for (level, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = priority_at(p.position(level));
            assert!((got / want - 1.0).abs() < 0.1, "{level}: {got} for {want}");
        }
        assert_eq!(priority_at(Picture::default().position(0.9)), 0.0);
        assert_eq!(bucket(f64::INFINITY), BUCKETS - 1);
        assert_eq!(bucket(-5.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
    }

    /// Either end gives the quantile the plain walk gives, to rounding, on pictures with
    /// gaps, decayed weights, weights taken back and every level from 0 to beyond 1.
    #[test]
    fn both_ends_agree_with_the_plain_walk() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..200 {
            let mut p = Picture::default();
            for _ in 0..rng.random_range(1..60) {
                let b = rng.random_range(0..BUCKETS);
                p.add_to(b, rng.random_range(0.01..5.0));
                if round % 3 == 0 {
                    p.take_from(rng.random_range(0..BUCKETS), 1.0);
                }
            }
            if round % 2 == 0 {
                p.decay(0.5f64.powf(rng.random_range(0.0..3.0)));
            }
            let sum: f64 = p.weights().iter().sum();
            assert!((p.total() - sum).abs() <= 1e-9 * sum.max(1.0));
            for level in [0.0, 0.01, 0.3, 0.5, 0.51, 0.75, 0.9, 0.999, 1.0, 1.5] {
                let (got, want) = (
                    priority_at(p.position(level)),
                    walked_walk_up(p.weights(), level),
                );
                assert!(
                    (got - want).abs() <= 1e-9 * want.max(1.0),
                    "round {round}, level {level}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn a_picture_emptied_reads_zero() {
        let mut p = Picture::default();
        p.add_to(10, 1.0);
        p.add_to(20, 2.0);
        p.take_from(10, 1.0);
        p.take_from(20, 5.0);
        assert_eq!(p.total(), 0.0);
        assert_eq!(priority_at(p.position(0.9)), 0.0);
        assert_eq!(p, Picture::default());
    }

    #[test]
    fn equal_weights_are_equal_pictures_whatever_the_order_of_additions() {
        let mut a = Picture::default();
        for (bucket, mass) in [(3, 0.1), (3, 0.2), (9, 1e-17)] {
            a.add_to(bucket, mass);
        }
        let mut weights = Box::new([0.0; BUCKETS]);
        weights[3] = 0.1 + 0.2;
        weights[9] = 1e-17;
        assert_eq!(a, Picture::from_weights(weights));
    }
}
