//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way"), the
//! statistical baseline the logistic churn model is compared against.
//!
//! BG/NBD explains a customer's repeat purchases with two hidden quantities: while alive, a
//! customer buys as a Poisson process with rate λ ~ Gamma(r, α); after each repeat purchase
//! they drop out for good with probability p ~ Beta(a, b). Fitting needs only three numbers
//! per customer ([`RepeatSummary`]), and the fitted model says how likely a customer is still
//! alive and how likely they are to buy nothing within a horizon — the same question the
//! logistic model answers from richer features.
//!
//! The likelihood follows the Python `lifetimes` library's `BetaGeoFitter`, so parameters and
//! probabilities can be checked against it. Everything here is pure computation, in days.

use argmin::core::{CostFunction, Error as ArgminError};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::model::minimise::{fitted_params, minimise, Search, Stop};

/// One customer's purchase history as BG/NBD sees it, in days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RepeatSummary {
    /// Repeat purchases: purchase days after the first one (x).
    pub x: f64,
    /// Days from the first to the last purchase (t_x).
    pub t_x: f64,
    /// Days from the first purchase to the cutoff (T).
    pub t: f64,
}

/// Fitted BG/NBD parameters: purchase rates λ ~ Gamma(shape `r`, rate `alpha` per day),
/// dropout probabilities p ~ Beta(`a`, `b`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BgNbdError {
    #[error(
        "BG/NBD needs at least {MIN_CUSTOMERS} customers to fit, got {0}; \
         use a longer observation window or more customers"
    )]
    TooFewCustomers(usize),
    #[error(
        "no customer made a repeat purchase, so BG/NBD cannot estimate how customers drop out; \
         use a longer observation window or check that purchases are grouped by customer"
    )]
    NoRepeatBuyers,
    #[error(
        "customer summary #{index} {summary:?} is invalid: {problem} \
         ({invalid} of the summaries are invalid); fix or drop them before fitting"
    )]
    InvalidSummary {
        /// Position of the first invalid summary in the input.
        index: usize,
        summary: RepeatSummary,
        problem: &'static str,
        /// How many summaries are invalid in all.
        invalid: usize,
    },
    #[error(
        "BG/NBD maximum-likelihood fit failed: {0}; check that times are in days and that the \
         data covers enough repeat purchases and silences to identify the model"
    )]
    Diverged(String),
}

/// Fewer customers than this cannot say anything about four parameters.
const MIN_CUSTOMERS: usize = 10;

/// Nelder–Mead stops when the standard deviation of the simplex's costs falls below this. The
/// cost is the mean negative log-likelihood per customer, so the tolerance does not depend on
/// the size of the data set.
const SD_TOLERANCE: f64 = 1e-11;

/// Iteration cap per Nelder–Mead run; four parameters converge in a few hundred.
const MAX_ITERS: u64 = 2_000;

/// Fresh simplices started from the best point so far. Nelder–Mead can stall on a collapsed
/// simplex; a restart with a full-size simplex either confirms the optimum or moves on.
const MAX_RESTARTS: usize = 3;

/// A restart that improves the mean log-likelihood by less than this counts as confirmation.
const RESTART_GAIN: f64 = 1e-9;

const PARAM_NAMES: [&str; 4] = ["r", "alpha", "a", "b"];

impl BgNbd {
    /// Maximum-likelihood fit.
    ///
    /// Customers with identical (x, t_x, T) are grouped with a count weight (whole-day data
    /// repeats a lot), and Nelder–Mead searches the logs of the four parameters, which keeps
    /// them positive without constraints. The search restarts from its best point until a
    /// restart no longer helps.
    pub fn fit(data: &[RepeatSummary]) -> Result<Self, BgNbdError> {
        validate(data)?;
        let objective = Objective::new(data);

        let mean_t = data.iter().map(|s| s.t).sum::<f64>() / data.len() as f64;
        // α is the rate scale in days: the mean observation length is the right magnitude.
        let alpha0 = if mean_t >= 1.0 { mean_t } else { 1.0 };
        let search = Search {
            stop: Stop {
                sd_tolerance: SD_TOLERANCE,
                max_iters: MAX_ITERS,
            },
            max_restarts: MAX_RESTARTS,
            restart_gain: RESTART_GAIN,
        };
        let (best, _) = minimise(
            &objective,
            Array1::from(vec![0.0, alpha0.ln(), 0.0, 0.0]),
            search,
        )
        .map_err(BgNbdError::Diverged)?;
        let [r, alpha, a, b] = fitted_params(PARAM_NAMES, &best).map_err(BgNbdError::Diverged)?;
        Ok(BgNbd { r, alpha, a, b })
    }

    /// Total log-likelihood of `data` under these parameters.
    ///
    /// Summaries are not validated here: invalid ones give NaN or infinities.
    pub fn log_likelihood(&self, data: &[RepeatSummary]) -> f64 {
        let &BgNbd { r, alpha, a, b } = self;
        let (ln_alpha, ln_gamma_r) = (alpha.ln(), ln_gamma(r));
        let (ln_gamma_b, ln_gamma_ab) = (ln_gamma(b), ln_gamma(a + b));
        data.iter()
            .map(|s| {
                let x = s.x;
                let a1 = ln_gamma(r + x) - ln_gamma_r + r * ln_alpha;
                let a2 = ln_gamma_ab + ln_gamma(b + x) - ln_gamma_b - ln_gamma(a + b + x);
                let a3 = -(r + x) * (alpha + s.t).ln();
                let tail = if x > 0.0 {
                    let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + s.t_x).ln();
                    log_add_exp(a3, a4)
                } else {
                    a3
                };
                a1 + a2 + tail
            })
            .sum()
    }

    /// P(the customer is still alive at T), lifetimes' `conditional_probability_alive`.
    ///
    /// A customer without repeat purchases cannot have dropped out yet (dropout happens only
    /// right after a repeat purchase), so their probability is exactly 1. The summary is not
    /// validated: NaN in it gives NaN.
    pub fn p_alive(&self, s: &RepeatSummary) -> f64 {
        if s.x <= 0.0 {
            return 1.0;
        }
        // Odds of having dropped out, in log space: ((α+T)/(α+t_x))^(r+x) overflows easily.
        let log_odds = self.a.ln() - (self.b + s.x - 1.0).ln()
            + (self.r + s.x) * ((self.alpha + s.t).ln() - (self.alpha + s.t_x).ln());
        logistic(-log_odds)
    }

    /// P(no purchase in the `horizon_days` after T)
    /// = 1 − P(alive) + P(alive) · ((α+T)/(α+T+horizon))^(r+x).
    ///
    /// A customer alive at T stays alive until their next purchase, and their rate given the
    /// history is Gamma(r+x, α+T); the power is that posterior's chance of no purchase. A
    /// horizon of zero or less gives 1.
    pub(crate) fn p_no_purchase(&self, s: &RepeatSummary, horizon_days: f64) -> f64 {
        if horizon_days <= 0.0 {
            return 1.0;
        }
        // P(a purchase within the horizon | alive) = 1 − ((α+T)/(α+T+h))^(r+x), written with
        // expm1/ln1p so short horizons do not lose their digits to cancellation.
        let p_buy_if_alive =
            -(-(self.r + s.x) * (horizon_days / (self.alpha + s.t)).ln_1p()).exp_m1();
        (1.0 - self.p_alive(s) * p_buy_if_alive).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, n = 9 coefficients), accurate to ~1e-13
/// relative (absolute near the zeros at 1 and 2). Γ overflows f64 beyond x ≈ 171, which the
/// likelihood passes easily, so only the logarithm is ever formed.
///
/// Returns +∞ at 0 and at +∞, NaN for negative or NaN input.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x == f64::INFINITY {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Reflection: the series is accurate for x ≥ 0.5 only.
        // Γ(x)Γ(1−x) = π / sin(πx), and sin(πx) > 0 on (0, 0.5).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().ln()
            - ln_gamma(1.0 - x);
    }
    let z = x - 1.0;
    let series = COEFFICIENTS[1..]
        .iter()
        .zip(1..)
        .fold(COEFFICIENTS[0], |sum, (c, k)| sum + c / (z + f64::from(k)));
    let t = z + G + 0.5;
    HALF_LN_2PI + (z + 0.5) * t.ln() - t + series.ln()
}

/// ln(e^u + e^v) without overflow or underflow.
pub(crate) fn log_add_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// 1 / (1 + e^−z), without overflow for large |z|.
fn logistic(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Reports the first invalid summary (and how many there are), then the data set's problems.
/// The checks are those of lifetimes' `_check_inputs`.
fn validate(data: &[RepeatSummary]) -> Result<(), BgNbdError> {
    let mut first = None;
    let mut invalid = 0;
    for (index, s) in data.iter().enumerate() {
        if let Some(problem) = summary_problem(s) {
            invalid += 1;
            first.get_or_insert((index, *s, problem));
        }
    }
    if let Some((index, summary, problem)) = first {
        return Err(BgNbdError::InvalidSummary {
            index,
            summary,
            problem,
            invalid,
        });
    }
    if data.len() < MIN_CUSTOMERS {
        return Err(BgNbdError::TooFewCustomers(data.len()));
    }
    if !data.iter().any(|s| s.x > 0.0) {
        return Err(BgNbdError::NoRepeatBuyers);
    }
    Ok(())
}

fn summary_problem(s: &RepeatSummary) -> Option<&'static str> {
    if !(s.x.is_finite() && s.t_x.is_finite() && s.t.is_finite()) {
        Some("x, t_x and T must be finite numbers")
    } else if s.x < 0.0 || s.t_x < 0.0 || s.t < 0.0 {
        Some("x, t_x and T must not be negative")
    } else if s.x.fract() != 0.0 {
        Some("x counts repeat purchases and must be a whole number")
    } else if s.t_x > s.t {
        Some("the last purchase (t_x) is after the cutoff (T)")
    } else if s.x == 0.0 && s.t_x != 0.0 {
        Some("t_x must be 0 when there are no repeat purchases (x = 0)")
    } else {
        None
    }
}

/// Repeat counts up to this use exact running sums for the gamma ratios; beyond it (bots,
/// bad data) log-gamma differences keep each evaluation's cost bounded.
const MAX_RUNNING_SUM: f64 = 10_000.0;

/// Customers sharing (x, t_x, T), with indices into the objective's distinct values.
#[derive(Debug)]
struct Group {
    x: usize,
    t: usize,
    /// Index into the distinct t_x of repeat buyers; unused when x = 0.
    t_x: usize,
    weight: f64,
}

/// The negative log-likelihood prepared for repeated evaluation: grouped customers and the
/// distinct x, T and t_x values, so each evaluation computes the log-gammas once per distinct
/// x and the logarithms once per distinct time.
#[derive(Debug)]
struct Objective {
    xs: Vec<f64>,
    /// Number of customers per distinct x, so the terms that depend on x alone are weighted
    /// once per x instead of once per group.
    x_weights: Vec<f64>,
    ts: Vec<f64>,
    t_xs: Vec<f64>,
    groups: Vec<Group>,
    customers: f64,
}

/// Sorted distinct values, for index look-ups by binary search.
fn distinct(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.dedup_by(|p, q| p.total_cmp(q).is_eq());
    v
}

fn index_of(values: &[f64], value: f64) -> usize {
    // Every value looked up was collected into `values`, so the search always hits; the
    // fallback index keeps this panic-free regardless.
    values
        .binary_search_by(|probe| probe.total_cmp(&value))
        .unwrap_or_else(|i| i)
}

impl Objective {
    /// `data` must have passed [`validate`].
    fn new(data: &[RepeatSummary]) -> Self {
        let key = |s: &RepeatSummary| (s.x, if s.x > 0.0 { s.t_x } else { 0.0 }, s.t);
        let mut rows: Vec<(f64, f64, f64)> = data.iter().map(key).collect();
        rows.sort_by(|p, q| {
            p.0.total_cmp(&q.0)
                .then(p.1.total_cmp(&q.1))
                .then(p.2.total_cmp(&q.2))
        });

        let xs = distinct(rows.iter().map(|r| r.0));
        let ts = distinct(rows.iter().map(|r| r.2));
        let t_xs = distinct(rows.iter().filter(|r| r.0 > 0.0).map(|r| r.1));
        let mut x_weights = vec![0.0; xs.len()];
        let mut groups: Vec<Group> = Vec::new();
        let mut previous = None;
        for row in rows {
            if previous == Some(row) {
                if let Some(last) = groups.last_mut() {
                    last.weight += 1.0;
                }
            } else {
                groups.push(Group {
                    x: index_of(&xs, row.0),
                    t: index_of(&ts, row.2),
                    t_x: if row.0 > 0.0 {
                        index_of(&t_xs, row.1)
                    } else {
                        0
                    },
                    weight: 1.0,
                });
                previous = Some(row);
            }
            if let Some(last) = groups.last() {
                x_weights[last.x] += 1.0;
            }
        }
        Objective {
            xs,
            x_weights,
            ts,
            t_xs,
            groups,
            customers: data.len() as f64,
        }
    }

    /// Mean negative log-likelihood per customer at log-parameters `p` (ln r, ln α, ln a,
    /// ln b); +∞ where it is not finite, so Nelder–Mead moves away from such points.
    fn mean_nll(&self, p: &Array1<f64>) -> f64 {
        let (r, alpha, a, b) = (p[0].exp(), p[1].exp(), p[2].exp(), p[3].exp());
        let (ln_alpha, ln_a) = (alpha.ln(), a.ln());

        // Per distinct x: A1 + A2, and A4's part that does not depend on t_x. The x are whole
        // numbers in ascending order, so the gamma ratios are running sums:
        // lnΓ(r+x) − lnΓ(r) = Σ_{k<x} ln(r+k), and
        // lnΓ(b+x) − lnΓ(b) − lnΓ(a+b+x) + lnΓ(a+b) = −Σ_{k<x} ln(1 + a/(b+k)).
        // Unlike differences of log-gammas these do not cancel catastrophically when a and b
        // grow large (a data set with little variation in dropout drives them there).
        let (mut k, mut ln_rising_r, mut ln_ratio_b) = (0.0, 0.0, 0.0);
        let mut total = 0.0;
        let mut c4 = Vec::with_capacity(self.xs.len());
        for (&x, &weight) in self.xs.iter().zip(&self.x_weights) {
            let (a1, a2) = if x <= MAX_RUNNING_SUM {
                while k < x {
                    ln_rising_r += (r + k).ln();
                    ln_ratio_b -= (a / (b + k)).ln_1p();
                    k += 1.0;
                }
                (ln_rising_r + r * ln_alpha, ln_ratio_b)
            } else {
                (
                    ln_gamma(r + x) - ln_gamma(r) + r * ln_alpha,
                    ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x),
                )
            };
            total += weight * (a1 + a2);
            c4.push(if x > 0.0 {
                ln_a - (b + x - 1.0).ln()
            } else {
                0.0
            });
        }
        let ln_alpha_t: Vec<f64> = self.ts.iter().map(|t| (alpha + t).ln()).collect();
        let ln_alpha_tx: Vec<f64> = self.t_xs.iter().map(|t| (alpha + t).ln()).collect();

        for g in &self.groups {
            let x = self.xs[g.x];
            let a3 = -(r + x) * ln_alpha_t[g.t];
            let tail = if x > 0.0 {
                log_add_exp(a3, c4[g.x] - (r + x) * ln_alpha_tx[g.t_x])
            } else {
                a3
            };
            total += g.weight * tail;
        }
        let cost = -total / self.customers;
        if cost.is_finite() {
            cost
        } else {
            f64::INFINITY
        }
    }
}

impl CostFunction for &Objective {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<Self::Output, ArgminError> {
        Ok(self.mean_nll(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs().max(1e-300)
    }

    /// ln Γ(z) by Stirling's series with eight Bernoulli terms: for z ≥ 10 its truncation
    /// error is below 1e-20, so it is an independent reference for the Lanczos form.
    fn stirling_ln_gamma(z: f64) -> f64 {
        // B_2k / (2k (2k − 1)) for k = 1..8.
        const TERMS: [f64; 8] = [
            1.0 / 12.0,
            -1.0 / 360.0,
            1.0 / 1260.0,
            -1.0 / 1680.0,
            1.0 / 1188.0,
            -691.0 / 360_360.0,
            1.0 / 156.0,
            -3617.0 / 122_400.0,
        ];
        let inv_z2 = 1.0 / (z * z);
        let mut power = 1.0 / z;
        let mut series = 0.0;
        for c in TERMS {
            series += c * power;
            power *= inv_z2;
        }
        (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-15, "{}", ln_gamma(1.0));
        assert!(ln_gamma(2.0).abs() < 1e-15, "{}", ln_gamma(2.0));
        let ln_sqrt_pi = 0.5 * std::f64::consts::PI.ln();
        assert!(close(ln_gamma(0.5), ln_sqrt_pi, 1e-14), "{}", ln_gamma(0.5));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-14));
        for z in [10.5, 30.0, 100.5, 1234.25, 1e6] {
            let (got, want) = (ln_gamma(z), stirling_ln_gamma(z));
            assert!(
                close(got, want, 1e-13),
                "ln_gamma({z}) = {got}, Stirling {want}"
            );
        }
        // The recurrence Γ(x+1) = xΓ(x) across the reflection branch (x < 0.5) and the
        // series branch.
        for x in [1e-8, 0.01, 0.3, 0.49, 0.5, 0.77, 1.5, 3.25, 42.0] {
            let (lhs, rhs) = (ln_gamma(x + 1.0), ln_gamma(x) + x.ln());
            assert!(
                (lhs - rhs).abs() < 1e-13 * rhs.abs().max(1.0),
                "x = {x}: {lhs} vs {rhs}"
            );
        }
        assert_eq!(ln_gamma(0.0), f64::INFINITY);
        assert!(ln_gamma(-1.5).is_nan());
    }

    fn params() -> BgNbd {
        BgNbd {
            r: 0.25,
            alpha: 30.0,
            a: 0.8,
            b: 2.5,
        }
    }

    fn summary(x: f64, t_x: f64, t: f64) -> RepeatSummary {
        RepeatSummary { x, t_x, t }
    }

    #[test]
    fn p_alive_and_p_no_purchase_behave() {
        let m = params();
        assert_eq!(m.p_alive(&summary(0.0, 0.0, 200.0)), 1.0);
        // Bought on the cutoff day: only the chance of dropping out right then remains.
        let at_cutoff = m.p_alive(&summary(3.0, 200.0, 200.0));
        let expected = 1.0 / (1.0 + m.a / (m.b + 2.0));
        assert!(
            close(at_cutoff, expected, 1e-14),
            "{at_cutoff} vs {expected}"
        );

        let mut previous_alive = f64::INFINITY;
        let mut previous_none = f64::NEG_INFINITY;
        for t_x in [200.0, 180.0, 150.0, 100.0, 50.0, 10.0] {
            let s = summary(3.0, t_x, 200.0);
            let alive = m.p_alive(&s);
            let none = m.p_no_purchase(&s, 90.0);
            assert!(
                alive < previous_alive,
                "p_alive must fall with silence, t_x = {t_x}"
            );
            assert!((0.0..=1.0).contains(&none), "{none}");
            assert!(
                none > previous_none,
                "p_no_purchase must grow with silence, t_x = {t_x}"
            );
            (previous_alive, previous_none) = (alive, none);
        }
        // Long silence of a frequent buyer: very likely gone, without overflow.
        let gone = summary(200.0, 10.0, 400.0);
        assert!(m.p_alive(&gone) < 1e-12 && m.p_alive(&gone) >= 0.0);
        assert!(close(m.p_no_purchase(&gone, 90.0), 1.0, 1e-9));

        // Longer horizons leave less room for "no purchase"; no horizon, no purchase.
        let s = summary(2.0, 100.0, 200.0);
        assert!(m.p_no_purchase(&s, 30.0) > m.p_no_purchase(&s, 90.0));
        assert_eq!(m.p_no_purchase(&s, 0.0), 1.0);
        // x = 0: alive for sure, so only the posterior purchase rate matters.
        let new = summary(0.0, 0.0, 50.0);
        let expected = ((m.alpha + 50.0) / (m.alpha + 50.0 + 90.0)).powf(m.r);
        assert!(close(m.p_no_purchase(&new, 90.0), expected, 1e-13));
    }

    #[test]
    fn log_likelihood_matches_a_hand_computation() {
        let m = BgNbd {
            r: 0.5,
            alpha: 10.0,
            a: 0.7,
            b: 3.0,
        };
        // x = 0, T = 30: the gamma terms cancel, leaving r ln(α / (α + T)) = 0.5 ln(1/4).
        let ll_new = -(2f64.ln());
        // x = 2, t_x = 20, T = 30, with the gamma ratios written out:
        // Γ(r+2)/Γ(r) = r(r+1) = 0.75; Γ(a+b)Γ(b+2)/(Γ(b)Γ(a+b+2)) = b(b+1)/((a+b)(a+b+1)).
        let a1 = 0.75f64.ln() + 0.5 * 10f64.ln();
        let a2 = (3.0 * 4.0 / (3.7 * 4.7f64)).ln();
        let tail = 40f64.powf(-2.5) + 0.7 / 4.0 * 30f64.powf(-2.5);
        let ll_repeat = a1 + a2 + tail.ln();
        let data = [summary(0.0, 0.0, 30.0), summary(2.0, 20.0, 30.0)];
        let got = m.log_likelihood(&data);
        let want = ll_new + ll_repeat;
        assert!(close(got, want, 1e-13), "{got} vs {want}");
    }

    #[test]
    fn grouped_objective_equals_the_plain_log_likelihood() {
        let mut data: Vec<RepeatSummary> = (0..60)
            .map(|i| {
                let x = f64::from(i % 4);
                let t = 100.0 + f64::from(i % 7) * 10.0;
                let t_x = if x > 0.0 {
                    t - f64::from(i % 5) * 9.0
                } else {
                    0.0
                };
                summary(x, t_x, t)
            })
            .collect();
        // Past the running sums, the log-gamma fallback.
        data.push(summary(25_000.0, 150.0, 160.0));
        let objective = Objective::new(&data);
        assert!(
            objective.groups.len() < data.len(),
            "duplicates must be grouped"
        );
        let m = BgNbd {
            r: 0.7,
            alpha: 12.0,
            a: 1.3,
            b: 0.6,
        };
        let p = Array1::from(vec![m.r.ln(), m.alpha.ln(), m.a.ln(), m.b.ln()]);
        let grouped = -objective.mean_nll(&p) * data.len() as f64;
        let plain = m.log_likelihood(&data);
        assert!(close(grouped, plain, 1e-12), "{grouped} vs {plain}");
    }

    /// SplitMix64 with the samplers the simulation needs; deterministic across platforms.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform on (0, 1): never 0, so its logarithm is finite.
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }

        fn exponential(&mut self, rate: f64) -> f64 {
            -self.uniform().ln() / rate
        }

        /// Gamma(shape, scale 1) by Marsaglia & Tsang; shapes below 1 by the boost
        /// Gamma(k) = Gamma(k + 1) · U^(1/k).
        fn gamma(&mut self, shape: f64) -> f64 {
            if shape < 1.0 {
                let u = self.uniform();
                return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
            }
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let z = self.normal();
                let v = 1.0 + c * z;
                if v <= 0.0 {
                    continue;
                }
                let v = v * v * v;
                if self.uniform().ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }

        fn beta(&mut self, a: f64, b: f64) -> f64 {
            let (x, y) = (self.gamma(a), self.gamma(b));
            x / (x + y)
        }
    }

    /// One customer from the BG/NBD process, observed for `t` whole days: purchases at
    /// exponential gaps, a dropout chance p after each repeat purchase, and purchase times
    /// rounded up to whole days (a repeat purchase on an already counted day adds nothing).
    fn simulate(rng: &mut Rng, m: &BgNbd, t: f64) -> RepeatSummary {
        let lambda = rng.gamma(m.r) / m.alpha;
        let p = rng.beta(m.a, m.b);
        let (mut now, mut x, mut last_day) = (0.0, 0.0, 0.0);
        loop {
            now += rng.exponential(lambda);
            if now >= t {
                break;
            }
            let day = now.ceil();
            if day > last_day {
                x += 1.0;
                last_day = day;
            }
            if rng.uniform() < p {
                break;
            }
        }
        summary(x, last_day, t)
    }

    #[test]
    fn fit_recovers_simulated_parameters() {
        let truth = params();
        let mut rng = Rng(20_050_101);
        let data: Vec<RepeatSummary> = (0..20_000)
            .map(|_| {
                // First purchases spread over three months before a 273-day-old cutoff.
                let t = 183.0 + (rng.next_u64() % 91) as f64;
                simulate(&mut rng, &truth, t)
            })
            .collect();
        let repeaters = data.iter().filter(|s| s.x > 0.0).count();
        assert!(
            repeaters > 2_000,
            "simulation produced {repeaters} repeat buyers"
        );

        let started = std::time::Instant::now();
        let fitted = BgNbd::fit(&data).expect("fit");
        let elapsed = started.elapsed();
        println!(
            "BG/NBD fit of {} customers ({} groups) took {elapsed:?}: {fitted:?}",
            data.len(),
            Objective::new(&data).groups.len()
        );

        for (name, got, want) in [
            ("r", fitted.r, truth.r),
            ("alpha", fitted.alpha, truth.alpha),
            ("a", fitted.a, truth.a),
            ("b", fitted.b, truth.b),
        ] {
            assert!(close(got, want, 0.25), "{name}: fitted {got}, true {want}");
        }
        let (ll_fit, ll_true) = (fitted.log_likelihood(&data), truth.log_likelihood(&data));
        assert!(
            ll_fit >= ll_true - 1e-3,
            "fitted log-likelihood {ll_fit} is below the true parameters' {ll_true}"
        );
        assert_local_maximum(&fitted, &data);
    }

    fn valid_data() -> Vec<RepeatSummary> {
        (0..12)
            .map(|i| {
                let x = f64::from(i % 3);
                summary(x, if x > 0.0 { 20.0 * x } else { 0.0 }, 100.0)
            })
            .collect()
    }

    #[test]
    fn fit_rejects_bad_input_with_a_reason() {
        assert!(matches!(
            BgNbd::fit(&[]),
            Err(BgNbdError::TooFewCustomers(0))
        ));
        let err = BgNbd::fit(&valid_data()[..5]).unwrap_err();
        assert!(matches!(err, BgNbdError::TooFewCustomers(5)), "{err}");
        assert!(err.to_string().contains("at least 10 customers"), "{err}");
        let no_repeats = vec![summary(0.0, 0.0, 100.0); 20];
        let err = BgNbd::fit(&no_repeats).unwrap_err();
        assert!(matches!(err, BgNbdError::NoRepeatBuyers), "{err}");

        let cases = [
            (summary(f64::NAN, 0.0, 10.0), "finite"),
            (summary(1.0, 5.0, f64::INFINITY), "finite"),
            (summary(1.0, 5.0, -1.0), "negative"),
            (summary(1.5, 5.0, 10.0), "whole number"),
            (summary(2.0, 11.0, 10.0), "after the cutoff"),
            (summary(0.0, 3.0, 10.0), "x = 0"),
        ];
        for (bad, needle) in cases {
            let mut data = valid_data();
            data[7] = bad;
            data[9] = bad;
            let err = BgNbd::fit(&data).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    BgNbdError::InvalidSummary {
                        index: 7,
                        invalid: 2,
                        ..
                    }
                ),
                "{text}"
            );
            assert!(text.contains(needle) && text.contains("#7"), "{text}");
        }
    }

    /// No step of ±1e-3 in any log-parameter may raise the log-likelihood noticeably: the
    /// search really stopped at a maximum, not just somewhere better than the truth.
    fn assert_local_maximum(fitted: &BgNbd, data: &[RepeatSummary]) {
        let ll = fitted.log_likelihood(data);
        for i in 0..4 {
            for step in [-1e-3, 1e-3] {
                let mut logs = [fitted.r, fitted.alpha, fitted.a, fitted.b].map(f64::ln);
                logs[i] += step;
                let [r, alpha, a, b] = logs.map(f64::exp);
                let moved = BgNbd { r, alpha, a, b }.log_likelihood(data);
                assert!(
                    moved <= ll + 1e-6,
                    "moving {} by {step} raises the log-likelihood from {ll} to {moved}",
                    PARAM_NAMES[i]
                );
            }
        }
    }

    #[test]
    fn fit_reaches_the_maximum_on_a_small_sample() {
        let truth = params();
        let mut rng = Rng(7);
        let data: Vec<RepeatSummary> = (0..500)
            .map(|_| simulate(&mut rng, &truth, 273.0))
            .collect();
        let fitted = BgNbd::fit(&data).expect("fit");
        assert!(fitted.log_likelihood(&data) >= truth.log_likelihood(&data) - 1e-6);
        assert_local_maximum(&fitted, &data);
    }
}
