//! The Gamma-Gamma model of spend per order (Fader, Hardie & Lee 2005, "RFM and CLV: Using
//! Iso-Value Curves for Customer Base Analysis"; Hardie's note 025), as in lifetimes'
//! `GammaGammaFitter`.
//!
//! Each order of a customer is worth z ~ Gamma(shape p, rate ν), and the customers' ν vary as
//! ν ~ Gamma(shape q, rate γ). The mean order value is then p/ν, the population's mean order
//! value pγ/(q−1) (finite only for q > 1), and a customer whose n orders averaged m is expected
//! to spend, per future order, a weighted mean of the two:
//!
//! ```text
//! E[order value | n, m] = (q−1)/(pn+q−1) · pγ/(q−1) + pn/(pn+q−1) · m = p(γ + n·m) / (pn + q − 1).
//! ```
//!
//! The model assumes spend per order is independent of how often a customer buys, and that a
//! customer's order values vary around their own mean. Pure computation.

use argmin::core::{CostFunction, Error as ArgminError};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::model::minimise::{
    fit_range_problem, fitted_params, in_fit_range, minimise, Search, Stop,
};

use crate::model::bgnbd::ln_gamma;

/// Fitted Gamma-Gamma parameters: order values z ~ Gamma(`p`, ν), ν ~ Gamma(`q`, `gamma`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
}

/// One customer's orders as the spend model sees them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpendSummary {
    /// Orders the mean is taken over (n ≥ 1, a whole number).
    pub orders: f64,
    /// Mean value of those orders (m > 0 to fit; any m ≥ 0 to predict).
    pub mean: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GammaGammaError {
    #[error(
        "the spend model needs at least {MIN_CUSTOMERS} customers with repeat orders of \
         positive value to fit, got {0}; use a longer observation window or more customers"
    )]
    TooFewCustomers(usize),
    #[error(
        "spend summary #{index} {summary:?} is invalid: {problem} ({invalid} of the summaries \
         are invalid); drop customers without positive spend before fitting"
    )]
    InvalidSummary {
        index: usize,
        summary: SpendSummary,
        problem: &'static str,
        invalid: usize,
    },
    #[error("Gamma-Gamma maximum-likelihood fit failed: {0}")]
    Diverged(String),
}

/// Three parameters need more than a handful of customers.
const MIN_CUSTOMERS: usize = 10;
/// Nelder–Mead settings, as for BG/NBD (the cost is a mean per customer).
const SD_TOLERANCE: f64 = 1e-12;
const MAX_ITERS: u64 = 3_000;
const MAX_RESTARTS: usize = 3;
const RESTART_GAIN: f64 = 1e-10;

impl GammaGamma {
    /// What is wrong with these parameters, if anything: all three must lie in the range the
    /// fit searches (`in_fit_range`), and q > 1 so that the population's mean order value
    /// pγ/(q−1) exists (a one-order customer's estimate leans on it).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, v) in [("p", self.p), ("q", self.q), ("gamma", self.gamma)] {
            if !in_fit_range(v) {
                problems.push(fit_range_problem(&format!("gamma_gamma.{name}"), v));
            }
        }
        if self.q.is_finite() && self.q > 0.0 && self.q <= 1.0 {
            problems.push(format!(
                "gamma_gamma.q is {}, must exceed 1 (otherwise the mean order value of the \
                 population is infinite)",
                self.q
            ));
        }
        problems
    }

    /// The population's mean order value, pγ/(q−1).
    pub(crate) fn population_mean(&self) -> f64 {
        self.p * self.gamma / (self.q - 1.0)
    }

    /// Expected value of a future order of a customer whose `orders` orders averaged `mean`
    /// (FHL 2005 eq. 5, lifetimes' `conditional_expected_average_profit`).
    ///
    /// A mean of zero or below (free orders, refunds as large as the purchases) counts as 0:
    /// the estimate then shrinks towards 0 as orders accumulate, pγ/(pn+q−1), but stays
    /// positive. No orders gives the population mean. Valid parameters never give NaN for
    /// finite input.
    pub(crate) fn expected_order_value(&self, orders: f64, mean: f64) -> f64 {
        let n = if orders.is_finite() && orders > 0.0 {
            orders
        } else {
            0.0
        };
        let m = if mean.is_finite() && mean > 0.0 {
            mean
        } else {
            0.0
        };
        self.p * (self.gamma + n * m) / (self.p * n + self.q - 1.0)
    }

    /// Total log-likelihood of the customers' mean order values (Hardie's note 025, eq. 1a).
    /// Summaries are not validated: invalid ones give NaN or infinities.
    pub fn log_likelihood(&self, data: &[SpendSummary]) -> f64 {
        data.iter().map(|s| self.customer_log_likelihood(s)).sum()
    }

    fn customer_log_likelihood(&self, s: &SpendSummary) -> f64 {
        let &GammaGamma { p, q, gamma } = self;
        let (n, m) = (s.orders, s.mean);
        let px = p * n;
        ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q)
            + q * gamma.ln()
            + (px - 1.0) * m.ln()
            + px * n.ln()
            - (px + q) * (gamma + n * m).ln()
    }

    /// Maximum-likelihood fit on customers' (orders, mean order value), by Nelder–Mead on the
    /// logarithms of p, q and γ, restarted from its best point until a restart no longer
    /// helps. A fit with q ≤ 1 is refused: such a spend distribution has no mean.
    pub fn fit(data: &[SpendSummary]) -> Result<Self, GammaGammaError> {
        validate(data)?;
        let objective = Objective { data };
        let mean = data.iter().map(|s| s.mean).sum::<f64>() / data.len() as f64;
        // p = 1, q = 2: the population mean is γ, so start γ at the data's mean.
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
            Array1::from(vec![0.0, 2f64.ln(), mean.ln()]),
            search,
        )
        .map_err(GammaGammaError::Diverged)?;
        let [p, q, gamma] =
            fitted_params(["p", "q", "gamma"], &best).map_err(GammaGammaError::Diverged)?;
        let fitted = GammaGamma { p, q, gamma };
        if fitted.q <= 1.0 {
            return Err(GammaGammaError::Diverged(format!(
                "q = {} ≤ 1: order values are so heavy-tailed that the population has no mean \
                 order value; check the amounts for outliers",
                fitted.q
            )));
        }
        Ok(fitted)
    }
}

fn validate(data: &[SpendSummary]) -> Result<(), GammaGammaError> {
    let problem = |s: &SpendSummary| {
        if !(s.orders.is_finite() && s.mean.is_finite()) {
            Some("orders and mean must be finite numbers")
        } else if s.orders < 1.0 || s.orders.fract() != 0.0 {
            Some("orders must be a whole number of at least 1")
        } else if s.mean <= 0.0 {
            Some("the mean order value must be positive")
        } else {
            None
        }
    };
    let mut first = None;
    let mut invalid = 0;
    for (index, s) in data.iter().enumerate() {
        if let Some(p) = problem(s) {
            invalid += 1;
            first.get_or_insert((index, *s, p));
        }
    }
    if let Some((index, summary, problem)) = first {
        return Err(GammaGammaError::InvalidSummary {
            index,
            summary,
            problem,
            invalid,
        });
    }
    if data.len() < MIN_CUSTOMERS {
        return Err(GammaGammaError::TooFewCustomers(data.len()));
    }
    Ok(())
}

struct Objective<'a> {
    data: &'a [SpendSummary],
}

impl Objective<'_> {
    /// Mean negative log-likelihood at log-parameters; +∞ where it is not finite.
    fn mean_nll(&self, log_params: &Array1<f64>) -> f64 {
        let params = GammaGamma {
            p: log_params[0].exp(),
            q: log_params[1].exp(),
            gamma: log_params[2].exp(),
        };
        let cost = -params.log_likelihood(self.data) / self.data.len() as f64;
        if cost.is_finite() {
            cost
        } else {
            f64::INFINITY
        }
    }
}

impl CostFunction for &Objective<'_> {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<Self::Output, ArgminError> {
        Ok(self.mean_nll(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Gamma};

    /// Fader, Hardie & Lee (2005), CDNOW repeat customers.
    const FHL: GammaGamma = GammaGamma {
        p: 6.25,
        q: 3.74,
        gamma: 15.44,
    };

    /// Hardie's spreadsheet for note 025, as lifetimes' `test_conditional_expected_average_profit`
    /// checks it (to 0.1): the first ten customers of the CDNOW sample, (repeat orders, mean
    /// repeat order value) → expected order value.
    #[test]
    fn expected_order_values_match_the_published_spreadsheet() {
        let cases = [
            (2.0, 22.35, 24.65),
            (1.0, 11.77, 18.91),
            (0.0, 0.0, 35.17),
            (0.0, 0.0, 35.17),
            (0.0, 0.0, 35.17),
            (7.0, 73.74, 71.46),
            (1.0, 11.77, 18.91),
            (0.0, 0.0, 35.17),
            (2.0, 25.55, 27.28),
            (0.0, 0.0, 35.17),
        ];
        for (orders, mean, want) in cases {
            let got = FHL.expected_order_value(orders, mean);
            assert!(
                (got - want).abs() < 0.1,
                "({orders}, {mean}): {got} vs {want}"
            );
        }
        assert!((FHL.population_mean() - 6.25 * 15.44 / 2.74).abs() < 1e-12);
    }

    #[test]
    fn bad_spend_gets_finite_estimates() {
        // Zero spend and refunds exceeding purchases count as a mean of 0.
        let zero = FHL.expected_order_value(3.0, 0.0);
        assert_eq!(FHL.expected_order_value(3.0, -40.0), zero);
        assert!((zero - FHL.p * FHL.gamma / (3.0 * FHL.p + FHL.q - 1.0)).abs() < 1e-12);
        assert!(zero > 0.0 && zero < FHL.population_mean());
        assert_eq!(FHL.expected_order_value(3.0, f64::NAN), zero);
        // More evidence of the customer's own mean moves the estimate towards it.
        let few = FHL.expected_order_value(1.0, 100.0);
        let many = FHL.expected_order_value(50.0, 100.0);
        assert!(FHL.population_mean() < few && few < many && many < 100.0);
        assert!(FHL.expected_order_value(4e9, 100.0).is_finite());
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        assert!(FHL.problems().is_empty());
        let bad = GammaGamma {
            p: -1.0,
            q: 0.5,
            gamma: f64::NAN,
        };
        let text = bad.problems().join("; ");
        for needle in [
            "gamma_gamma.p is -1",
            "gamma_gamma.q is 0.5, must exceed 1",
            "gamma_gamma.gamma is NaN",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in {text}");
        }
    }

    #[test]
    fn log_likelihood_matches_a_hand_computation() {
        // One order of 10 with p = 2, q = 3, γ = 20: the density of a single order value is
        // the Gamma-Gamma mixture Γ(p+q)/(Γ(p)Γ(q)) γ^q m^(p−1) / (γ+m)^(p+q).
        let m = GammaGamma {
            p: 2.0,
            q: 3.0,
            gamma: 20.0,
        };
        let want = (24.0f64 / 2.0).ln() + 3.0 * 20f64.ln() + 10f64.ln() - 5.0 * 30f64.ln();
        let got = m.log_likelihood(&[SpendSummary {
            orders: 1.0,
            mean: 10.0,
        }]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    /// Customers drawn from known parameters: ν ~ Gamma(q, γ), n orders each worth
    /// Gamma(p, ν); the fit must recover the parameters and reach the likelihood's maximum.
    #[test]
    fn fit_recovers_simulated_parameters() {
        let truth = GammaGamma {
            p: 4.0,
            q: 3.5,
            gamma: 20.0,
        };
        let mut rng = StdRng::seed_from_u64(2005);
        let nu = Gamma::new(truth.q, 1.0 / truth.gamma).unwrap();
        let data: Vec<SpendSummary> = (0..20_000)
            .map(|i| {
                let rate = nu.sample(&mut rng);
                let order = Gamma::new(truth.p, 1.0 / rate).unwrap();
                let n = 1 + i % 6;
                let total: f64 = (0..n).map(|_| order.sample(&mut rng)).sum();
                SpendSummary {
                    orders: f64::from(n),
                    mean: total / f64::from(n),
                }
            })
            .collect();
        let fitted = GammaGamma::fit(&data).unwrap();
        for (name, got, want) in [
            ("p", fitted.p, truth.p),
            ("q", fitted.q, truth.q),
            ("gamma", fitted.gamma, truth.gamma),
        ] {
            assert!(
                (got - want).abs() < 0.1 * want,
                "{name}: fitted {got}, true {want}"
            );
        }
        let ll = fitted.log_likelihood(&data);
        assert!(ll >= truth.log_likelihood(&data));
        for i in 0..3 {
            for step in [-1e-3, 1e-3] {
                let mut logs = [fitted.p, fitted.q, fitted.gamma].map(f64::ln);
                logs[i] += step;
                let [p, q, gamma] = logs.map(f64::exp);
                let moved = GammaGamma { p, q, gamma }.log_likelihood(&data);
                assert!(moved <= ll + 1e-6, "step {step} on {i}: {moved} > {ll}");
            }
        }
    }

    #[test]
    fn fit_refuses_bad_input_with_a_reason() {
        let good = |i: u32| SpendSummary {
            orders: f64::from(1 + i % 3),
            mean: 10.0 + f64::from(i),
        };
        let err = GammaGamma::fit(&(0..5).map(good).collect::<Vec<_>>()).unwrap_err();
        assert!(matches!(err, GammaGammaError::TooFewCustomers(5)), "{err}");
        for (bad, needle) in [
            (
                SpendSummary {
                    orders: 2.0,
                    mean: 0.0,
                },
                "positive",
            ),
            (
                SpendSummary {
                    orders: 0.0,
                    mean: 5.0,
                },
                "at least 1",
            ),
            (
                SpendSummary {
                    orders: 1.5,
                    mean: 5.0,
                },
                "whole number",
            ),
            (
                SpendSummary {
                    orders: 2.0,
                    mean: f64::INFINITY,
                },
                "finite",
            ),
        ] {
            let mut data: Vec<SpendSummary> = (0..20).map(good).collect();
            data[4] = bad;
            let err = GammaGamma::fit(&data).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    GammaGammaError::InvalidSummary {
                        index: 4,
                        invalid: 1,
                        ..
                    }
                ),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
        }
    }
}
