//! When to look at a silent customer again.
//!
//! Without events a customer's score still moves (recency grows, decayed sums shrink), and
//! with it their probability tenth and their win-back task; their stage and segment change
//! at known moments. Re-scoring everyone at a fixed interval would cost the same for a
//! customer whose classification cannot change for months as for one about to cross a
//! threshold. Instead each check computes when anything observable could next change, and
//! the customer sleeps until then:
//!
//! - exact moments, given by the caller: stage boundaries, segment flips, the end of the
//!   win-back policy's waiting times;
//! - for the churn probability, a moment it provably cannot reach a boundary before. Every
//!   model input moves in one direction only during silence, so over the next `s` seconds
//!   the log-odds can rise at most by the sum of the contributions that rise between now
//!   and `s`, and fall at most by the sum of those that fall (the caller's `reach`). The
//!   longest wait for which neither reaches the nearest boundary is found by doubling and
//!   then halving the wait, a few evaluations of the features.
//!
//! That wait is kept between `min_secs` and `max_secs`: a crossing is noticed at most
//! `min_secs` late (as with a fixed interval of `min_secs`), and nobody sleeps longer than
//! `max_secs`, so that segment thresholds refreshed from the population reach everyone.

use crate::time::UnixSeconds;

#[derive(Debug, Clone)]
pub(crate) struct Recheck {
    /// Log-odds of every probability at which something observable changes, ascending.
    boundaries: Vec<f64>,
    min_secs: u32,
    max_secs: u32,
}

impl Recheck {
    /// `probabilities`: where the probability tenth or the task decision changes.
    pub fn new(probabilities: impl IntoIterator<Item = f64>, min_secs: u32, max_secs: u32) -> Self {
        let mut boundaries: Vec<f64> = probabilities
            .into_iter()
            .map(|p| (p / (1.0 - p)).ln())
            .filter(|z| z.is_finite())
            .collect();
        boundaries.sort_by(f64::total_cmp);
        boundaries.dedup();
        let min_secs = min_secs.max(1);
        Self {
            boundaries,
            min_secs,
            max_secs: max_secs.max(min_secs),
        }
    }

    /// The next check of a customer scored at `now` with log-odds `logit`. `reach(s)` bounds
    /// how far the log-odds can rise and fall within `s` seconds of silence (both
    /// non-negative, growing with `s`); `exact` are the moments something else changes.
    pub fn next(
        &self,
        now: UnixSeconds,
        logit: f64,
        reach: impl Fn(u32) -> (f64, f64),
        exact: impl IntoIterator<Item = Option<UnixSeconds>>,
    ) -> UnixSeconds {
        let above = self.boundaries.iter().find(|&&b| b > logit).copied();
        let below = self.boundaries.iter().rev().find(|&&b| b <= logit).copied();
        let safe = |secs: u32| {
            let (up, down) = reach(secs);
            above.is_none_or(|b| logit + up < b) && below.is_none_or(|b| logit - down > b)
        };
        let exact = exact
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(UnixSeconds::MAX);
        // No need to look past the first exact moment: the customer is checked then anyway.
        let limit = self.max_secs.min(exact.saturating_sub(now));
        if limit <= self.min_secs {
            return now.saturating_add(self.min_secs).min(exact);
        }
        now.saturating_add(self.longest_safe_wait(limit, safe))
            .min(exact)
    }

    /// The longest wait up to `limit` that is `safe`, at least `min_secs`, to within a
    /// quarter: doubling from `min_secs`, then halving the gap twice.
    fn longest_safe_wait(&self, limit: u32, safe: impl Fn(u32) -> bool) -> u32 {
        if safe(limit) {
            return limit;
        }
        let (mut lo, mut hi) = (self.min_secs, limit);
        while lo.saturating_mul(2) < hi && safe(lo * 2) {
            lo *= 2;
        }
        hi = hi.min(lo.saturating_mul(2));
        for _ in 0..2 {
            let mid = lo + (hi - lo) / 2;
            if safe(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = 86_400;
    const NOW: u32 = 1_000_000_000;

    /// Boundaries at log-odds 0 (p = 0.5) and ln 3 (p = 0.75).
    fn recheck() -> Recheck {
        Recheck::new([0.5, 0.75, 0.75, 1.0, 0.0], DAY, 30 * DAY)
    }

    /// Log-odds rising `up` and falling `down` per day.
    fn linear(up: f64, down: f64) -> impl Fn(u32) -> (f64, f64) {
        move |secs| {
            let days = f64::from(secs) / f64::from(DAY);
            (up * days, down * days)
        }
    }

    #[test]
    fn sleeps_until_the_score_could_reach_the_nearest_boundary() {
        // 0.5 below p = 0.5, rising 0.05 per day: it cannot get there within 10 days.
        let wait = recheck().next(NOW, -0.5, linear(0.05, 0.0), []) - NOW;
        assert!(wait < 10 * DAY, "{wait}");
        assert!(
            wait >= 7 * DAY,
            "within a quarter of the longest safe wait: {wait}"
        );
    }

    #[test]
    fn falling_counts_against_the_boundary_below() {
        // Just above p = 0.5 and falling fast: the next day.
        assert_eq!(recheck().next(NOW, 0.01, linear(0.0, 1.0), []), NOW + DAY);
        // Far above p = 0.75 and falling slowly: the longest sleep.
        let far = recheck().next(NOW, 3f64.ln() + 5.0, linear(0.0, 0.1), []);
        assert_eq!(far, NOW + 30 * DAY);
    }

    #[test]
    fn never_sooner_than_the_resolution_nor_later_than_the_cap() {
        assert_eq!(recheck().next(NOW, -0.01, linear(1.0, 0.0), []), NOW + DAY);
        assert_eq!(
            recheck().next(NOW, -0.5, linear(0.0, 0.0), []),
            NOW + 30 * DAY
        );
    }

    #[test]
    fn exact_moments_come_first_and_past_ones_are_ignored() {
        let exact = [Some(NOW + 3600), None, Some(NOW - 5), Some(NOW)];
        assert_eq!(
            recheck().next(NOW, -5.0, linear(0.01, 0.0), exact),
            NOW + 3600
        );
    }

    #[test]
    fn the_wait_found_is_always_safe() {
        for up in [0.001, 0.01, 0.03, 0.1, 0.3] {
            for logit in [-3.0, -0.7, -0.2, 0.3, 0.9] {
                let next = recheck().next(NOW, logit, linear(up, 0.0), []);
                let reached = logit + up * f64::from(next - NOW) / f64::from(DAY);
                let nearest = [0.0, 3f64.ln()].into_iter().find(|b| *b > logit);
                let min_wait = next - NOW == DAY;
                assert!(
                    min_wait || nearest.is_none_or(|b| reached < b),
                    "logit {logit} at {up}/day reaches {reached} after {} s",
                    next - NOW
                );
            }
        }
    }
}
