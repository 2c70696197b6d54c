//! The customer value model: beside the churn probability, what a customer is worth and when
//! they will be back, from the same O(1) state the daemon keeps ([`CustomerFeatures`]).
//!
//! Two buy-till-you-die models, fitted by `churnd train` and stored in the model file's
//! `value` section ([`ValueParams`]):
//!
//! - BG/NBD ([`BgNbd`], [`purchases`]) for how often a customer buys and whether they have
//!   silently dropped out;
//! - Gamma-Gamma ([`gamma_gamma`]) for how much each of their orders is worth.
//!
//! From them, per customer ([`ValueModel::estimate`]):
//!
//! - `p_alive`: P(the customer has not dropped out), BG/NBD's conditional probability. **A
//!   customer with a single purchase gets exactly 1**: in BG/NBD a customer can drop out only
//!   right after a repeat purchase, so nothing has been observed that could have ended them
//!   (lifetimes' `conditional_probability_alive` does the same). That is not "likely to buy
//!   again": a one-time buyer silent for months has p_alive 1 and yet few expected purchases,
//!   because their purchase rate is believed low. Read p_alive beside
//!   `expected_purchases_90d`, or use the churn probability, to judge one-time buyers;
//! - `expected_purchases_90d`: purchases expected in the next 90 days (FHL 2005 eq. 10);
//! - `expected_spend_90d`: that × the expected value of one order (Gamma-Gamma);
//! - `clv_365d`: expected spend over the next 365 days, discounted at the model file's
//!   `annual_discount_rate` ([`clv`]);
//! - `next_purchase_at`: the median time of the next purchase, the moment by which the
//!   customer has an even chance of having bought again (dropout included). `None` when that
//!   moment does not exist (p_alive ≤ 1/2: more likely gone for good) or lies more than
//!   [`NEXT_PURCHASE_MAX_DAYS`] ahead (likely gone, or so slow that a date means nothing).
//!
//! What the state gives ([`CustomerHistory::of`]), all derived, nothing stored:
//!
//! - x = purchase events − 1. BG/NBD as published counts repeat purchase *days* (several
//!   orders on one day are one); the state counts events and cannot tell days apart without
//!   storing more, so here every purchase event counts. On CDNOW 2.4 % of the purchase rows
//!   share a customer and a day with another.
//! - t_x = days from the first to the last purchase, T = days from the first purchase to now.
//! - Orders n = purchase events, and their mean value = lifetime spend net of refunds / n,
//!   floored at 0. FHL's Gamma-Gamma averages the *repeat* orders only; the state keeps one
//!   spend total, so here the first order counts too.
//!
//! Every function here is pure; times are in days, parameters too (α of BG/NBD is a rate
//! scale in days).

pub(crate) mod clv;
pub(crate) mod forecast;
pub(crate) mod gamma_gamma;
pub(crate) mod purchases;
#[cfg(test)]
mod reference_tests;
pub(crate) mod textbook;

use serde::{Deserialize, Serialize};

pub use self::gamma_gamma::{GammaGamma, GammaGammaError, SpendSummary};
use super::bgnbd::{BgNbd, BgNbdError, RepeatSummary};
use super::minimise::{fit_range_problem, in_fit_range};
use crate::features::CustomerFeatures;
use crate::time::{self, UnixSeconds};

/// The horizon of `expected_purchases_90d` and `expected_spend_90d`, in days.
pub(crate) const PURCHASE_HORIZON_DAYS: f64 = 90.0;
/// The horizon of `clv_365d`, in days.
pub(crate) const CLV_HORIZON_DAYS: f64 = 365.0;
/// `next_purchase_at` further ahead than this many days is reported as none.
pub(crate) const NEXT_PURCHASE_MAX_DAYS: f64 = 365.0;
/// Annual discount rates above this are refused: 0.1 means 10 % a year, and a rate of
/// 1,000 % is surely a percentage written where a fraction belongs.
pub const MAX_ANNUAL_DISCOUNT_RATE: f64 = 10.0;

/// The `value` section of a model file: the fitted parameters and the discount rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueParams {
    /// Purchase and dropout process; α in days.
    pub bgnbd: BgNbd,
    /// Spend per order.
    pub gamma_gamma: GammaGamma,
    /// Discount rate per year of `clv_365d` (0: undiscounted).
    pub annual_discount_rate: f64,
}

impl ValueParams {
    /// Every reason these parameters cannot be used, named by their key in the model file.
    pub fn problems(&self) -> Vec<String> {
        let b = &self.bgnbd;
        let mut problems: Vec<String> = [("r", b.r), ("alpha", b.alpha), ("a", b.a), ("b", b.b)]
            .into_iter()
            .filter(|(_, v)| !in_fit_range(*v))
            .map(|(name, v)| fit_range_problem(&format!("value.bgnbd.{name}"), v))
            .collect();
        problems.extend(
            self.gamma_gamma
                .problems()
                .into_iter()
                .map(|p| format!("value.{p}")),
        );
        let d = self.annual_discount_rate;
        if !(d.is_finite() && (0.0..=MAX_ANNUAL_DISCOUNT_RATE).contains(&d)) {
            problems.push(format!(
                "value.annual_discount_rate is {d}, must be between 0 and \
                 {MAX_ANNUAL_DISCOUNT_RATE} (a fraction per year: 0.1 is 10 %)"
            ));
        }
        problems
    }
}

/// Validated [`ValueParams`], ready to estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueModel(ValueParams);

/// One customer's value estimates at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueEstimates {
    pub p_alive: f64,
    pub expected_purchases_90d: f64,
    pub expected_spend_90d: f64,
    pub clv_365d: f64,
    pub next_purchase_at: Option<UnixSeconds>,
}

/// What the value model reads of a customer: BG/NBD's and Gamma-Gamma's summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CustomerHistory {
    pub repeat: RepeatSummary,
    pub spend: SpendSummary,
}

impl CustomerHistory {
    /// Derived from the daemon's per-customer state as of `now` (see the module
    /// documentation for the definitions); `None` before the first purchase.
    pub fn of(features: &CustomerFeatures, now: UnixSeconds) -> Option<Self> {
        let first = features.first_purchase()?;
        let last = features.last_purchase()?;
        let orders = f64::from(features.purchases());
        let t = time::days_between(first, now);
        // A clock behind the last purchase must not put it after "now".
        let t_x = time::days_between(first, last).min(t);
        Some(Self {
            repeat: RepeatSummary {
                x: orders - 1.0,
                t_x,
                t,
            },
            spend: SpendSummary {
                orders,
                mean: features.total_spend().max(0.0) / orders,
            },
        })
    }
}

impl ValueModel {
    pub fn new(params: ValueParams) -> Result<Self, Vec<String>> {
        let problems = params.problems();
        if problems.is_empty() {
            Ok(Self(params))
        } else {
            Err(problems)
        }
    }

    pub fn params(&self) -> &ValueParams {
        &self.0
    }

    /// Expected value of one future order of this customer.
    pub(crate) fn expected_order_value(&self, h: &CustomerHistory) -> f64 {
        self.0
            .gamma_gamma
            .expected_order_value(h.spend.orders, h.spend.mean)
    }

    /// The customer's value estimates at `now` (the moment the history was taken), or none
    /// when the formulas are past their precision: a number that is not finite, or a date
    /// for the next purchase while none is expected in 90 days (seen only with parameters at
    /// the far end of the fit range). This is the one gate the API, the tasks and `churnd
    /// score` all pass through, so that they never disagree or print NaN.
    pub(crate) fn estimate(&self, h: &CustomerHistory, now: UnixSeconds) -> Option<ValueEstimates> {
        let v = self.estimate_unchecked(h, now);
        let finite = [
            v.p_alive,
            v.expected_purchases_90d,
            v.expected_spend_90d,
            v.clv_365d,
        ]
        .iter()
        .all(|x| x.is_finite());
        let coherent = v.next_purchase_at.is_none() || v.expected_purchases_90d > 0.0;
        (finite && coherent).then_some(v)
    }

    fn estimate_unchecked(&self, h: &CustomerHistory, now: UnixSeconds) -> ValueEstimates {
        let bgnbd = &self.0.bgnbd;
        let s = &h.repeat;
        let p_alive = bgnbd.p_alive(s);
        let expected_purchases_90d =
            p_alive * bgnbd.expected_purchases_if_alive(s, PURCHASE_HORIZON_DAYS);
        let order_value = self.expected_order_value(h);
        let next_purchase_at = bgnbd
            .median_days_to_next_purchase(s, p_alive)
            .filter(|days| *days <= NEXT_PURCHASE_MAX_DAYS)
            .map(|days| now.saturating_add((days * time::SECONDS_PER_DAY).round() as u32));
        ValueEstimates {
            p_alive,
            expected_purchases_90d,
            expected_spend_90d: expected_purchases_90d * order_value,
            clv_365d: clv::lifetime_value(
                bgnbd,
                s,
                p_alive,
                order_value,
                CLV_HORIZON_DAYS,
                self.0.annual_discount_rate,
            ),
            next_purchase_at,
        }
    }
}

/// What fitting the value model saw; stored in the model file's training report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueFitReport {
    /// The histories were taken as of this moment (the end of the training data).
    pub as_of: String,
    /// Buyers BG/NBD was fitted on.
    pub customers: usize,
    /// Of them, customers with more than one purchase.
    pub repeat_buyers: usize,
    /// Repeat buyers Gamma-Gamma was fitted on: those whose net spend is positive.
    pub spend_customers: usize,
    /// The population's mean order value under the fitted Gamma-Gamma, pγ/(q−1).
    pub population_mean_order_value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ValueFitError {
    #[error("fitting the value model's BG/NBD failed: {0}")]
    Purchases(#[from] BgNbdError),
    #[error("fitting the value model's Gamma-Gamma spend model failed: {0}")]
    Spend(#[from] GammaGammaError),
    #[error("the fitted value model is unusable: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Fits BG/NBD on every history and Gamma-Gamma on the repeat buyers with positive spend.
pub fn fit(
    histories: &[CustomerHistory],
    annual_discount_rate: f64,
    as_of: UnixSeconds,
) -> Result<(ValueParams, ValueFitReport), ValueFitError> {
    let repeat: Vec<RepeatSummary> = histories.iter().map(|h| h.repeat).collect();
    let bgnbd = BgNbd::fit(&repeat)?;
    let spend: Vec<SpendSummary> = histories
        .iter()
        .filter(|h| h.spend.orders >= 2.0 && h.spend.mean > 0.0)
        .map(|h| h.spend)
        .collect();
    let gamma_gamma = GammaGamma::fit(&spend)?;
    let params = ValueParams {
        bgnbd,
        gamma_gamma,
        annual_discount_rate,
    };
    ValueModel::new(params).map_err(ValueFitError::Invalid)?;
    let report = ValueFitReport {
        as_of: time::rfc3339(as_of),
        customers: histories.len(),
        repeat_buyers: histories.iter().filter(|h| h.repeat.x > 0.0).count(),
        spend_customers: spend.len(),
        population_mean_order_value: gamma_gamma.population_mean(),
    };
    Ok((params, report))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Event, EventKind};

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800; // 1997-01-01

    pub(crate) fn cdnow_like() -> ValueParams {
        ValueParams {
            bgnbd: BgNbd {
                r: 0.243,
                alpha: 4.414 * 7.0,
                a: 0.793,
                b: 2.426,
            },
            gamma_gamma: GammaGamma {
                p: 6.25,
                q: 3.74,
                gamma: 15.44,
            },
            annual_discount_rate: 0.0,
        }
    }

    fn customer(events: &[(EventKind, f64, u32)]) -> CustomerFeatures {
        let mut f = CustomerFeatures::default();
        for &(kind, amount, day) in events {
            f.apply(&Event::new("c", kind, amount, T0 + day * DAY));
        }
        f
    }

    #[test]
    fn the_history_is_derived_from_the_daemon_state() {
        use EventKind::{Purchase, Refund, Visit};
        let f = customer(&[
            (Purchase, 20.0, 3),
            (Visit, 0.0, 10),
            (Purchase, 30.0, 40),
            (Purchase, 10.0, 40),
            (Refund, 12.0, 45),
        ]);
        let h = CustomerHistory::of(&f, T0 + 100 * DAY).unwrap();
        // Three purchase events, two of them on day 40: x counts events.
        assert_eq!(
            h.repeat,
            RepeatSummary {
                x: 2.0,
                t_x: 37.0,
                t: 97.0
            }
        );
        assert_eq!(h.spend.orders, 3.0);
        assert!((h.spend.mean - 48.0 / 3.0).abs() < 1e-5, "{:?}", h.spend);
        assert_eq!(CustomerHistory::of(&customer(&[(Visit, 0.0, 1)]), T0), None);
        // "now" before the last purchase (a late clock): T never falls below t_x.
        let h = CustomerHistory::of(&f, T0 + 20 * DAY).unwrap();
        assert_eq!((h.repeat.t_x, h.repeat.t), (17.0, 17.0));
    }

    /// The customers whose values need care: one purchase, no spend, refunds above
    /// purchases, two purchases at one instant, and 50,000 purchases (one every 400 s for
    /// 231 days, the last 400 s before `now`).
    fn awkward_customers(now: UnixSeconds) -> [(&'static str, CustomerFeatures); 5] {
        use EventKind::{Purchase, Refund};
        let one_purchase = customer(&[(Purchase, 15.0, 10)]);
        let zero_spend = customer(&[(Purchase, 0.0, 10), (Purchase, 0.0, 100)]);
        let refunded = customer(&[
            (Purchase, 15.0, 10),
            (Purchase, 10.0, 50),
            (Refund, 60.0, 60),
        ]);
        let same_instant = customer(&[(Purchase, 15.0, 10), (Purchase, 15.0, 10)]);
        let mut frantic = CustomerFeatures::default();
        for i in 1..=50_000u32 {
            frantic.apply(&Event::new("c", Purchase, 9.0, now - i * 400));
        }
        [
            ("one purchase", one_purchase),
            ("zero spend", zero_spend),
            ("refunds above purchases", refunded),
            ("two purchases at one instant", same_instant),
            ("50,000 purchases", frantic),
        ]
    }

    #[test]
    fn awkward_customers_get_finite_documented_values() {
        let model = ValueModel::new(ValueParams {
            annual_discount_rate: 0.1,
            ..cdnow_like()
        })
        .unwrap();
        let now = T0 + 272 * DAY;
        let awkward = awkward_customers(now);
        let [one_purchase, zero_spend, refunded, _, frantic] = awkward.map(|(_, f)| f);
        for (name, f) in awkward {
            let h = CustomerHistory::of(&f, now).unwrap();
            let e = model.estimate(&h, now).unwrap();
            for (field, v) in [
                ("p_alive", e.p_alive),
                ("expected_purchases_90d", e.expected_purchases_90d),
                ("expected_spend_90d", e.expected_spend_90d),
                ("clv_365d", e.clv_365d),
            ] {
                assert!(v.is_finite() && v >= 0.0, "{name}: {field} = {v}");
            }
            assert!(e.p_alive <= 1.0, "{name}");
            assert!(e.clv_365d >= e.expected_spend_90d, "{name}: {e:?}");
            if let Some(at) = e.next_purchase_at {
                assert!(
                    at >= now && f64::from(at - now) <= 365.0 * 86_400.0,
                    "{name}"
                );
            }
        }
        // One purchase: alive by BG/NBD's convention, yet few purchases expected and no date
        // within a year (the posterior purchase rate is low).
        let e = model
            .estimate(&CustomerHistory::of(&one_purchase, now).unwrap(), now)
            .unwrap();
        assert_eq!(e.p_alive, 1.0);
        assert!(e.expected_purchases_90d < 0.2, "{e:?}");
        assert_eq!(e.next_purchase_at, None);
        // No spend to go on: the order value is the model's, shrunk for two free orders.
        let h = CustomerHistory::of(&zero_spend, now).unwrap();
        let gg = cdnow_like().gamma_gamma;
        let order = gg.p * gg.gamma / (2.0 * gg.p + gg.q - 1.0);
        let e = model.estimate(&h, now).unwrap();
        assert!((e.expected_spend_90d - e.expected_purchases_90d * order).abs() < 1e-9);
        // Refunds above purchases: the same as no spend, not negative value.
        let h = CustomerHistory::of(&refunded, now).unwrap();
        assert_eq!(h.spend.mean, 0.0);
        // A frequent, recent buyer is due back soon.
        let e = model
            .estimate(&CustomerHistory::of(&frantic, now).unwrap(), now)
            .unwrap();
        assert!(e.next_purchase_at.is_some_and(|at| at - now < DAY), "{e:?}");
    }

    #[test]
    fn estimates_follow_the_definitions() {
        let model = ValueModel::new(cdnow_like()).unwrap();
        let h = CustomerHistory {
            repeat: RepeatSummary {
                x: 5.0,
                t_x: 250.0,
                t: 260.0,
            },
            spend: SpendSummary {
                orders: 6.0,
                mean: 40.0,
            },
        };
        let now = T0 + 300 * DAY;
        let e = model.estimate(&h, now).unwrap();
        let b = &cdnow_like().bgnbd;
        assert_eq!(e.p_alive, b.p_alive(&h.repeat));
        let purchases = b.expected_purchases(&h.repeat, 90.0);
        assert!((e.expected_purchases_90d - purchases).abs() < 1e-15);
        let order = cdnow_like().gamma_gamma.expected_order_value(6.0, 40.0);
        assert!((e.expected_spend_90d - purchases * order).abs() < 1e-12);
        let year = b.expected_purchases(&h.repeat, 365.0) * order;
        assert!((e.clv_365d - year).abs() < 1e-12);
        let wait = b
            .median_days_to_next_purchase(&h.repeat, e.p_alive)
            .unwrap();
        assert!(wait < 365.0);
        assert_eq!(
            e.next_purchase_at,
            Some(now + (wait * 86_400.0).round() as u32)
        );
    }

    /// A file may hold any parameter `churnd train` could fit. At both ends of that range,
    /// one parameter at a time, the awkward customers and one with orders of a billion get
    /// finite estimates that agree with each other, or none at all (never NaN); a step beyond
    /// the range is refused.
    #[test]
    fn parameters_at_the_ends_of_the_fit_range_give_finite_values() {
        use crate::model::minimise::LOG_PARAM_LIMIT;
        let now = T0 + 272 * DAY;
        let mut customers = awkward_customers(now).to_vec();
        let big = [
            (EventKind::Purchase, 1e9, 10),
            (EventKind::Purchase, 1e9, 200),
        ];
        customers.push(("orders of a billion", customer(&big)));
        type Setter = fn(&mut ValueParams, f64);
        let params: [(&str, Setter); 7] = [
            ("bgnbd.r", |p, v| p.bgnbd.r = v),
            ("bgnbd.alpha", |p, v| p.bgnbd.alpha = v),
            ("bgnbd.a", |p, v| p.bgnbd.a = v),
            ("bgnbd.b", |p, v| p.bgnbd.b = v),
            ("gamma_gamma.p", |p, v| p.gamma_gamma.p = v),
            ("gamma_gamma.q", |p, v| p.gamma_gamma.q = v),
            ("gamma_gamma.gamma", |p, v| p.gamma_gamma.gamma = v),
        ];
        let (low, high) = ((-LOG_PARAM_LIMIT).exp(), LOG_PARAM_LIMIT.exp());
        for (key, set) in params {
            // q ≤ 1 is refused for its own reason.
            let ends: &[(f64, f64)] = if key == "gamma_gamma.q" {
                &[(high, high * 1.001)]
            } else {
                &[(low, low / 1.001), (high, high * 1.001)]
            };
            for &(end, beyond) in ends {
                let mut p = cdnow_like();
                set(&mut p, end);
                let model = ValueModel::new(p).unwrap_or_else(|e| panic!("{key} = {end:e}: {e:?}"));
                for (who, f) in &customers {
                    let h = CustomerHistory::of(f, now).unwrap();
                    let Some(e) = model.estimate(&h, now) else {
                        // Only where the formulas lose their precision.
                        assert!(end == high, "{key} = {end:e}, {who}");
                        continue;
                    };
                    assert!(
                        e.expected_purchases_90d >= 0.0,
                        "{key} = {end:e}, {who}: {e:?}"
                    );
                    assert!(
                        e.p_alive >= 0.0 && e.p_alive <= 1.0,
                        "{key} = {end:e}, {who}: {e:?}"
                    );
                    assert!(
                        e.expected_spend_90d >= 0.0 && e.clv_365d >= 0.0,
                        "{key} = {end:e}, {who}: {e:?}"
                    );
                    if e.next_purchase_at.is_some() {
                        assert!(
                            e.expected_purchases_90d > 0.0,
                            "{key} = {end:e}, {who}: {e:?}"
                        );
                    }
                }
                set(&mut p, beyond);
                let refused = ValueModel::new(p).unwrap_err().join("\n");
                assert!(
                    refused.contains(&format!(
                        "value.{key} is {beyond}, must be a positive number from 1.4e-11 to 7.2e10"
                    )),
                    "{refused}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_parameters_are_refused_with_every_reason() {
        assert!(ValueModel::new(cdnow_like()).is_ok());
        let mut bad = cdnow_like();
        bad.bgnbd.r = -0.2;
        bad.bgnbd.alpha = f64::NAN;
        bad.bgnbd.b = 0.0;
        bad.gamma_gamma.q = 0.9;
        bad.annual_discount_rate = -0.05;
        let text = ValueModel::new(bad).unwrap_err().join("\n");
        for needle in [
            "value.bgnbd.r is -0.2",
            "value.bgnbd.alpha is NaN",
            "value.bgnbd.b is 0",
            "value.gamma_gamma.q is 0.9, must exceed 1",
            "value.annual_discount_rate is -0.05",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        assert!(!text.contains("value.bgnbd.a "), "{text}");
        bad = cdnow_like();
        bad.annual_discount_rate = 25.0;
        assert!(ValueModel::new(bad).unwrap_err()[0].contains("0.1 is 10 %"));
    }
}
