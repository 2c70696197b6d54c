//! The Pareto/NBD model (Schmittlein, Morrison & Colombo 1987), the second buy-till-you-die
//! baseline `churnd evaluate --baseline` compares the churn model with.
//!
//! While alive a customer buys as a Poisson process with rate λ ~ Gamma(r, α); their lifetime
//! is exponential with rate μ ~ Gamma(s, β), so unlike BG/NBD they can drop out at any moment,
//! not only right after a purchase. The likelihood is Fader & Hardie's "A note on deriving the
//! Pareto/NBD model and related expressions" (2005), eqs. (18)–(20), as in lifetimes'
//! `ParetoNBDFitter`. Everything is in days and pure computation.

use argmin::core::{CostFunction, Error as ArgminError};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

use super::bgnbd::{ln_gamma, RepeatSummary};
use super::minimise::{fitted_params, minimise, Search, Stop};

/// Fitted Pareto/NBD parameters: purchase rates λ ~ Gamma(shape `r`, rate `alpha` per day),
/// dropout rates μ ~ Gamma(shape `s`, rate `beta` per day).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParetoNbd {
    pub r: f64,
    pub alpha: f64,
    pub s: f64,
    pub beta: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ParetoNbdError {
    #[error("Pareto/NBD needs at least {MIN_CUSTOMERS} customers to fit, got {0}")]
    TooFewCustomers(usize),
    #[error("customer summary #{index} {summary:?} is invalid: need 0 <= t_x <= T, x >= 0, x = 0 where t_x = 0, all finite")]
    InvalidSummary {
        index: usize,
        summary: RepeatSummary,
    },
    #[error("Pareto/NBD maximum-likelihood fit failed: {0}")]
    Diverged(String),
}

const MIN_CUSTOMERS: usize = 10;
/// Terms of the hypergeometric series before it is declared non-convergent.
const MAX_SERIES_TERMS: usize = 5_000;

impl ParetoNbd {
    /// Maximum-likelihood fit: Nelder–Mead on the logs of (r, α, s, β), the shared search of
    /// [`super::minimise`], started at r = s = 1 and α = β = the mean observation length.
    pub fn fit(data: &[RepeatSummary]) -> Result<Self, ParetoNbdError> {
        if let Some((index, summary)) = data.iter().enumerate().find(|(_, s)| !summary_is_valid(s))
        {
            return Err(ParetoNbdError::InvalidSummary {
                index,
                summary: *summary,
            });
        }
        if data.len() < MIN_CUSTOMERS {
            return Err(ParetoNbdError::TooFewCustomers(data.len()));
        }
        let objective = Objective::new(data);
        let mean_t = (data.iter().map(|s| s.t).sum::<f64>() / data.len() as f64).max(1.0);
        let search = Search {
            stop: Stop {
                sd_tolerance: 1e-11,
                max_iters: 2_000,
            },
            max_restarts: 3,
            restart_gain: 1e-9,
        };
        let start = Array1::from(vec![0.0, mean_t.ln(), 0.0, mean_t.ln()]);
        let (best, _) = minimise(&objective, start, search).map_err(ParetoNbdError::Diverged)?;
        let [r, alpha, s, beta] =
            fitted_params(["r", "alpha", "s", "beta"], &best).map_err(ParetoNbdError::Diverged)?;
        Ok(Self { r, alpha, s, beta })
    }

    /// Log-likelihood of one customer's (x, t_x, T), eq. (18) of Fader & Hardie's note:
    /// ln[Γ(r+x) α^r β^s / Γ(r)] + ln[1/((α+T)^(r+x) (β+T)^s) + s/(r+s+x) · A₀].
    pub fn log_likelihood(&self, s: &RepeatSummary) -> f64 {
        let &ParetoNbd {
            r,
            alpha,
            s: shape_s,
            beta,
        } = self;
        let x = s.x;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln() + shape_s * beta.ln();
        a1 + self.ln_tail(s, s.t)
    }

    /// The part of the log-likelihood that depends on T (the end of observation), for
    /// T = `end`: ln[1/((α+T)^(r+x) (β+T)^s) + s/(r+s+x) · A₀(T)].
    fn ln_tail(&self, s: &RepeatSummary, end: f64) -> f64 {
        let &ParetoNbd {
            r,
            alpha,
            s: shape_s,
            beta,
        } = self;
        let x = s.x;
        let alive = -(r + x) * (alpha + end).ln() - shape_s * (beta + end).ln();
        let died = shape_s.ln() - (r + shape_s + x).ln() + self.ln_a0(x, s.t_x, end);
        log_add_exp(alive, died)
    }

    /// ln A₀, eqs. (19)–(20): with m = max(α, β) and F(t) = ₂F₁(r+s+x, b; r+s+x+1; |α−β|/(m+t))
    /// (b = s+1 when α ≥ β, r+x otherwise), A₀ = F(t_x)/(m+t_x)^(r+s+x) − F(T)/(m+T)^(r+s+x).
    fn ln_a0(&self, x: f64, t_x: f64, t: f64) -> f64 {
        let &ParetoNbd {
            r,
            alpha,
            s: shape_s,
            beta,
        } = self;
        let (max, second) = if alpha >= beta {
            (alpha, shape_s + 1.0)
        } else {
            (beta, r + x)
        };
        let diff = (alpha - beta).abs();
        let rsx = r + shape_s + x;
        let term = |at: f64| {
            hyp2f1_c_is_a_plus_1(rsx, second, diff / (max + at)).ln() - rsx * (max + at).ln()
        };
        let (hi, lo) = (term(t_x), term(t));
        // A₀ > 0 since the integrand is positive; rounding may say otherwise when T ≈ t_x.
        hi + (-(lo - hi).exp()).ln_1p()
    }

    /// P(the customer is alive at T), eq. (36): 1 / (1 + s/(r+s+x) (α+T)^(r+x) (β+T)^s A₀).
    pub fn p_alive(&self, s: &RepeatSummary) -> f64 {
        let log_odds = self.s.ln() - (self.r + self.s + s.x).ln()
            + (self.r + s.x) * (self.alpha + s.t).ln()
            + self.s * (self.beta + s.t).ln()
            + self.ln_a0(s.x, s.t_x, s.t);
        1.0 / (1.0 + log_odds.exp())
    }

    /// P(no purchase in the `horizon_days` after T). "x purchases up to T, the last at t_x, and
    /// none in (T, T+h]" is the event "x purchases up to T+h, the last at t_x", so the
    /// probability is the ratio of the two likelihoods, L(x, t_x, T+h) / L(x, t_x, T), in
    /// closed form; the terms that do not depend on T cancel.
    pub fn p_no_purchase(&self, s: &RepeatSummary, horizon_days: f64) -> f64 {
        if horizon_days <= 0.0 {
            return 1.0;
        }
        (self.ln_tail(s, s.t + horizon_days) - self.ln_tail(s, s.t))
            .exp()
            .clamp(0.0, 1.0)
    }
}

fn summary_is_valid(s: &RepeatSummary) -> bool {
    s.x.is_finite()
        && s.t_x.is_finite()
        && s.t.is_finite()
        && s.x >= 0.0
        && s.t_x >= 0.0
        && s.t_x <= s.t
        && !(s.x == 0.0 && s.t_x > 0.0)
}

/// ₂F₁(a, b; a+1; z) for 0 ≤ z < 1 by its series: Σ a/(a+k) · (b)_k/k! · z^k. The only form
/// the Pareto/NBD likelihood needs. NaN when it does not converge (z too close to 1), which
/// the fit treats as an infinite cost.
fn hyp2f1_c_is_a_plus_1(a: f64, b: f64, z: f64) -> f64 {
    if z == 0.0 {
        return 1.0;
    }
    // term_k = (b)_k z^k / k!, the series adds a/(a+k) · term_k.
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 0..MAX_SERIES_TERMS {
        let k = k as f64;
        term *= (b + k) * z / (k + 1.0);
        let add = term * a / (a + k + 1.0);
        sum += add;
        if add.abs() <= 1e-16 * sum.abs() && (b + k) * z / (k + 1.0) < 1.0 {
            return sum;
        }
    }
    f64::NAN
}

fn log_add_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// The mean negative log-likelihood over customers grouped by (x, t_x, T).
struct Objective {
    groups: Vec<(RepeatSummary, f64)>,
    customers: f64,
}

impl Objective {
    fn new(data: &[RepeatSummary]) -> Self {
        let mut rows: Vec<RepeatSummary> = data.to_vec();
        let key = |s: &RepeatSummary| (s.x, s.t_x, s.t);
        rows.sort_by(|p, q| {
            let (p, q) = (key(p), key(q));
            p.0.total_cmp(&q.0)
                .then(p.1.total_cmp(&q.1))
                .then(p.2.total_cmp(&q.2))
        });
        let mut groups: Vec<(RepeatSummary, f64)> = Vec::new();
        for s in rows {
            match groups.last_mut() {
                Some((g, w)) if *g == s => *w += 1.0,
                _ => groups.push((s, 1.0)),
            }
        }
        Self {
            groups,
            customers: data.len() as f64,
        }
    }
}

impl CostFunction for &Objective {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<Self::Output, ArgminError> {
        let model = ParetoNbd {
            r: p[0].exp(),
            alpha: p[1].exp(),
            s: p[2].exp(),
            beta: p[3].exp(),
        };
        let ll: f64 = self
            .groups
            .iter()
            .map(|(s, w)| w * model.log_likelihood(s))
            .sum();
        let nll = -ll / self.customers;
        Ok(if nll.is_finite() { nll } else { f64::INFINITY })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fader, Hardie & Lee's Pareto/NBD estimates on the CDNOW sample, in weeks.
    pub(crate) const FHL_WEEKS: ParetoNbd = ParetoNbd {
        r: 0.553,
        alpha: 10.578,
        s: 0.606,
        beta: 11.669,
    };

    fn summary(x: f64, t_x: f64, t: f64) -> RepeatSummary {
        RepeatSummary { x, t_x, t }
    }

    #[test]
    fn the_series_matches_a_closed_form() {
        // ₂F₁(1, 1; 2; z) = −ln(1−z)/z.
        for z in [0.01f64, 0.3, 0.9] {
            let want = -(-z).ln_1p() / z;
            let got = hyp2f1_c_is_a_plus_1(1.0, 1.0, z);
            assert!((got - want).abs() < 1e-13 * want, "z {z}: {got} vs {want}");
        }
        assert!(hyp2f1_c_is_a_plus_1(2.0, 3.0, 1.0 - 1e-12).is_nan());
    }

    #[test]
    fn p_alive_and_the_no_purchase_probability_match_numerical_integration() {
        // P(alive | x, t_x, T) and P(no purchase in h) by integrating over (λ, μ) directly:
        // the likelihood of (x, t_x, T) given λ, μ is λ^x e^{−(λ+μ)T} + λ^x μ/(λ+μ) ·
        // (e^{−(λ+μ)t_x} − e^{−(λ+μ)T}) (Fader & Hardie, eq. 3), the "alive" part the first.
        let m = ParetoNbd {
            r: 0.8,
            alpha: 20.0,
            s: 0.7,
            beta: 30.0,
        };
        let gamma_pdf = |v: f64, shape: f64, rate: f64| {
            (shape * rate.ln() + (shape - 1.0) * v.ln() - rate * v - ln_gamma(shape)).exp()
        };
        for s in [
            summary(0.0, 0.0, 40.0),
            summary(3.0, 50.0, 120.0),
            summary(2.0, 10.0, 90.0),
        ] {
            let h = 60.0;
            let (mut total, mut alive, mut total_h) = (0.0, 0.0, 0.0);
            // Integrate on u = ln v over a wide grid.
            let n = 800;
            let (lo, hi) = (-14.0f64, 3.0f64);
            let du = (hi - lo) / n as f64;
            for i in 0..n {
                let lambda = (lo + (i as f64 + 0.5) * du).exp();
                for j in 0..n {
                    let mu = (lo + (j as f64 + 0.5) * du).exp();
                    let w = gamma_pdf(lambda, m.r, m.alpha)
                        * lambda
                        * gamma_pdf(mu, m.s, m.beta)
                        * mu
                        * du
                        * du;
                    let l = |end: f64| {
                        let k = lambda + mu;
                        let a = lambda.powf(s.x) * (-k * end).exp();
                        let d = lambda.powf(s.x) * mu / k * ((-k * s.t_x).exp() - (-k * end).exp());
                        (a, d)
                    };
                    let (a, d) = l(s.t);
                    total += w * (a + d);
                    alive += w * a;
                    let (a, d) = l(s.t + h);
                    total_h += w * (a + d);
                }
            }
            let p_alive = alive / total;
            let p_none = total_h / total;
            assert!(
                (m.p_alive(&s) - p_alive).abs() < 2e-3,
                "{s:?}: {} vs {p_alive}",
                m.p_alive(&s)
            );
            assert!(
                (m.p_no_purchase(&s, h) - p_none).abs() < 2e-3,
                "{s:?}: {} vs {p_none}",
                m.p_no_purchase(&s, h)
            );
        }
    }

    #[test]
    fn a_longer_horizon_or_silence_makes_a_purchase_less_likely_to_be_missed() {
        let m = FHL_WEEKS;
        let s = summary(2.0, 30.0, 38.0);
        assert!(m.p_no_purchase(&s, 13.0) > m.p_no_purchase(&s, 26.0));
        assert_eq!(m.p_no_purchase(&s, 0.0), 1.0);
        // The longer the silence since the last purchase, the less likely alive.
        assert!(m.p_alive(&summary(2.0, 37.0, 38.0)) > m.p_alive(&summary(2.0, 5.0, 38.0)));
    }

    #[test]
    fn invalid_summaries_are_refused() {
        let err = ParetoNbd::fit(&[summary(1.0, 5.0, 3.0)]).unwrap_err();
        assert!(err.to_string().contains("#0"), "{err}");
    }
}
