//! The intervals of the lift report: Wilson's score interval for one conversion rate,
//! Newcombe's hybrid score interval for the difference of two, and Welch's interval for the
//! difference of two means (revenue per task). Pure functions.
//!
//! Why Newcombe and not Wald for the conversion lift: campaigns are cut per kind × action
//! × segment, so control groups of a few dozen are common, and conversion rates near 0 are
//! the rule. Wald's interval (p ± z·se) then collapses to a point when a group has no
//! conversion and overshoots [−1, 1]; Newcombe's (his method 10, built from the two Wilson
//! intervals) keeps its coverage near 95 % at small counts and never leaves [−1, 1]
//! (Newcombe 1998, "Interval estimation for the difference between independent
//! proportions", Statistics in Medicine 17: 873–890; the tests reproduce his Table II).

use crate::model::bgnbd::ln_gamma;

/// The standard normal's 97.5 % quantile: two-sided 95 % intervals.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// An estimate with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Every bound multiplied by `factor` (≥ 0): lift per task to lift over `factor` tasks.
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            estimate: self.estimate * factor,
            low: self.low * factor,
            high: self.high * factor,
        }
    }
}

/// Wilson's score interval for `successes` out of `trials` (> 0), at `z`.
pub fn wilson(successes: u64, trials: u64, z: f64) -> Interval {
    debug_assert!(trials > 0 && successes <= trials);
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let centre = 2.0 * n * p + z2;
    let spread = z * (z2 + 4.0 * n * p * (1.0 - p)).sqrt();
    let denominator = 2.0 * (n + z2);
    Interval {
        estimate: p,
        low: ((centre - spread) / denominator).max(0.0),
        high: ((centre + spread) / denominator).min(1.0),
    }
}

/// Newcombe's hybrid score interval (method 10) for p₁ − p₂, the first rate
/// `x1`/`n1`, the second `x2`/`n2` (both `n` > 0).
pub fn newcombe(x1: u64, n1: u64, x2: u64, n2: u64) -> Interval {
    let (a, b) = (wilson(x1, n1, Z_95), wilson(x2, n2, Z_95));
    let difference = a.estimate - b.estimate;
    let below = ((a.estimate - a.low).powi(2) + (b.high - b.estimate).powi(2)).sqrt();
    let above = ((a.high - a.estimate).powi(2) + (b.estimate - b.low).powi(2)).sqrt();
    Interval {
        estimate: difference,
        low: (difference - below).max(-1.0),
        high: (difference + above).min(1.0),
    }
}

/// A sample's size, mean and variance (with n − 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
}

/// Welch's 95 % interval for mean₁ − mean₂, with the Welch–Satterthwaite degrees of
/// freedom; `None` unless both samples have two or more values (no variance otherwise).
/// When both variances are 0 the interval is the difference itself: the samples show no
/// spread to be uncertain about.
pub fn welch(a: Sample, b: Sample) -> Option<Interval> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let difference = a.mean - b.mean;
    let (va, vb) = (
        a.variance.max(0.0) / a.n as f64,
        b.variance.max(0.0) / b.n as f64,
    );
    let se2 = va + vb;
    if se2 <= 0.0 {
        return Some(Interval {
            estimate: difference,
            low: difference,
            high: difference,
        });
    }
    let df = se2 * se2 / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64);
    let half = student_t_quantile(0.975, df) * se2.sqrt();
    Some(Interval {
        estimate: difference,
        low: difference - half,
        high: difference + half,
    })
}

/// P(T ≤ t) for Student's t with `df` (> 0) degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile (0.5 < p < 1) of Student's t with `df` (> 0) degrees of freedom, by
/// bisection on the distribution function: to 1e-12, in about 60 steps.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    debug_assert!(p > 0.5 && p < 1.0 && df > 0.0);
    let mut high = 16.0;
    while student_t_cdf(high, df) < p && high < 1e12 {
        high *= 2.0;
    }
    let mut low = 0.0;
    while high - low > 1e-12 * high.max(1.0) {
        let mid = 0.5 * (low + high);
        if student_t_cdf(mid, df) < p {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The regularized incomplete beta function I_x(a, b), by its continued fraction
/// (Numerical Recipes, `betai`), for a, b > 0 and 0 ≤ x ≤ 1.
fn regularized_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast on this side of the mean; the symmetry I_x(a, b) =
    // 1 − I_{1−x}(b, a) covers the other.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPSILON: f64 = 1e-15;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    // One term of the fraction: the updated product's factor.
    let mut term = |aa: f64| {
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        d * c
    };
    for m in 1..=500 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        h *= term(m * (b - m) * x / ((qam + m2) * (a + m2)));
        let step = term(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)));
        h *= step;
        if (step - 1.0).abs() < EPSILON {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tolerance: f64) -> bool {
        (got - want).abs() <= tolerance
    }

    #[test]
    fn newcombe_reproduces_his_table_ii() {
        // Newcombe 1998, Table II, method 10 (the hybrid score interval), to 4 decimals.
        let cases = [
            ((56, 70, 48, 80), (0.0524, 0.3339)),
            ((9, 10, 3, 10), (0.1705, 0.8090)),
            ((6, 7, 2, 7), (0.0582, 0.8062)),
            ((5, 56, 0, 29), (-0.0381, 0.1926)),
            ((0, 10, 0, 20), (-0.1611, 0.2775)),
            ((0, 10, 0, 10), (-0.2775, 0.2775)),
            ((10, 10, 0, 20), (0.6791, 1.0000)),
            ((10, 10, 0, 10), (0.6075, 1.0000)),
        ];
        for ((x1, n1, x2, n2), (low, high)) in cases {
            let i = newcombe(x1, n1, x2, n2);
            assert!(
                close(i.low, low, 5e-5) && close(i.high, high, 5e-5),
                "{x1}/{n1} − {x2}/{n2}: {i:?}, Newcombe: {low} to {high}"
            );
            assert!(close(
                i.estimate,
                x1 as f64 / n1 as f64 - x2 as f64 / n2 as f64,
                1e-15
            ));
        }
    }

    #[test]
    fn wilson_matches_hand_computed_bounds_and_stays_in_0_1() {
        // 0 of 10: (0, z²/(n+z²)) = (0, 0.2775).
        let i = wilson(0, 10, Z_95);
        assert_eq!(i.low, 0.0);
        assert!(close(i.high, 0.277_532, 1e-6), "{i:?}");
        // 10 of 10: its mirror image.
        let i = wilson(10, 10, Z_95);
        assert!(close(i.low, 0.722_468, 1e-6) && i.high == 1.0, "{i:?}");
        // 1 of 2 is symmetric around one half.
        let i = wilson(1, 2, Z_95);
        assert!(close(i.low + i.high, 1.0, 1e-12), "{i:?}");
    }

    #[test]
    fn student_t_quantiles_match_the_tables() {
        for (df, t) in [
            (1.0, 12.706_204_736),
            (2.0, 4.302_652_730),
            (5.0, 2.570_581_836),
            (10.0, 2.228_138_852),
            (30.0, 2.042_272_456),
            (1000.0, 1.962_339_081),
        ] {
            let got = student_t_quantile(0.975, df);
            assert!(close(got, t, 1e-8), "df {df}: {got} vs {t}");
        }
        // Far out it is the normal quantile.
        assert!(close(student_t_quantile(0.975, 1e9), Z_95, 1e-6));
        assert!(close(student_t_cdf(0.0, 7.0), 0.5, 1e-15));
        assert!(close(
            student_t_cdf(-2.0, 4.0) + student_t_cdf(2.0, 4.0),
            1.0,
            1e-14
        ));
    }

    #[test]
    fn welch_with_equal_variances_and_sizes_has_2n_minus_2_degrees_of_freedom() {
        // n = 6 each, variance 100 each: df = 10, se = √(100/6 + 100/6) = 5.773 503, and
        // t(0.975, 10) = 2.228 139: half-width 12.864 18.
        let a = Sample {
            n: 6,
            mean: 15.0,
            variance: 100.0,
        };
        let b = Sample { mean: 10.0, ..a };
        let i = welch(a, b).expect("both samples have a variance");
        assert!(close(i.estimate, 5.0, 1e-12));
        assert!(close(i.low, 5.0 - 12.864_18, 1e-4), "{i:?}");
        assert!(close(i.high, 5.0 + 12.864_18, 1e-4), "{i:?}");
    }

    #[test]
    fn welch_with_unequal_variances_uses_satterthwaite() {
        // n₁ = 10, s₁² = 4 (v₁ = 0.4); n₂ = 20, s₂² = 20 (v₂ = 1.0): se² = 1.4,
        // df = 1.96 / (0.16/9 + 1/19) = 27.897 92; t(0.975, 27.9) ≈ 2.0485.
        let i = welch(
            Sample {
                n: 10,
                mean: 3.0,
                variance: 4.0,
            },
            Sample {
                n: 20,
                mean: 1.0,
                variance: 20.0,
            },
        )
        .unwrap();
        let df: f64 = 1.96 / (0.16 / 9.0 + 1.0 / 19.0);
        let half = student_t_quantile(0.975, df) * 1.4f64.sqrt();
        assert!(close(i.high - i.estimate, half, 1e-12));
        // Between the tabled t(0.975, 27) = 2.0518 and t(0.975, 28) = 2.0484.
        let t = half / 1.4f64.sqrt();
        assert!(t > 2.0484 && t < 2.0518, "t {t}");
    }

    #[test]
    fn welch_needs_two_values_per_sample_and_collapses_without_spread() {
        let one = Sample {
            n: 1,
            mean: 5.0,
            variance: 0.0,
        };
        let flat = Sample {
            n: 4,
            mean: 0.0,
            variance: 0.0,
        };
        assert_eq!(welch(one, flat), None);
        assert_eq!(welch(flat, one), None);
        let i = welch(Sample { mean: 2.0, ..flat }, flat).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (2.0, 2.0, 2.0));
    }
}
