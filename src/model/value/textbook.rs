//! BG/NBD × Gamma-Gamma as published and as lifetimes and PyMC-Marketing fit it: the
//! baseline `expected_spend_90d` is measured against (`churnd evaluate --baseline`).
//!
//! It differs from the value model ([`super::CustomerHistory`]) in what it reads, not in its
//! formulas: it has each customer's whole transaction history, so
//!
//! - the orders of one day are merged into one transaction (their values summed), and BG/NBD
//!   counts repeat transaction *days* (lifetimes' `summary_data_from_transaction_data` with
//!   daily periods);
//! - Gamma-Gamma averages the *repeat* transactions' values (the first is left out) and is
//!   fitted on the customers with at least one repeat transaction of positive mean value; a
//!   customer without one gets the population's mean order value (lifetimes'
//!   `conditional_expected_average_profit` with frequency 0).
//!
//! Refunds are not subtracted (lifetimes' summary sees transactions only; CDNOW has none).

use serde::{Deserialize, Serialize};

use super::gamma_gamma::{GammaGamma, GammaGammaError, SpendSummary};
use crate::model::bgnbd::{BgNbd, RepeatSummary};
use crate::time::{self, UnixSeconds};

/// The textbook models' parameters, fitted on the evaluated customers (α in days).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TextbookParams {
    pub bgnbd: BgNbd,
    pub gamma_gamma: GammaGamma,
}

/// One customer's purchases as the textbook models read them, built one purchase at a time
/// in time order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct DailyTransactions {
    /// Day numbers (days since the epoch) of the first and the latest purchase.
    first_day: u32,
    last_day: u32,
    /// Distinct purchase days so far; 0 before the first purchase.
    days: u32,
    /// Value of the latest day's orders, still open to more orders that day.
    open_day_value: f64,
    /// Value of the repeat days already closed.
    closed_repeat_value: f64,
}

impl DailyTransactions {
    /// Adds a purchase of `amount` at `at`, no earlier than the previous one.
    pub(crate) fn add(&mut self, at: UnixSeconds, amount: f64) {
        let day = at / time::days(1);
        if self.days > 0 && day == self.last_day {
            self.open_day_value += amount;
            return;
        }
        if self.days == 0 {
            self.first_day = day;
        } else if self.days > 1 {
            self.closed_repeat_value += self.open_day_value;
        }
        self.days += 1;
        self.last_day = day;
        self.open_day_value = amount;
    }

    /// BG/NBD's (x, t_x, T) as of `as_of` in whole days, and Gamma-Gamma's (repeat
    /// transactions, their mean value); `None` before the first purchase.
    pub(crate) fn summary(&self, as_of: UnixSeconds) -> Option<(RepeatSummary, SpendSummary)> {
        if self.days == 0 {
            return None;
        }
        let x = f64::from(self.days - 1);
        let mean = if self.days > 1 {
            (self.closed_repeat_value + self.open_day_value) / x
        } else {
            0.0
        };
        let t = f64::from(as_of) / time::SECONDS_PER_DAY - f64::from(self.first_day);
        Some((
            RepeatSummary {
                x,
                t_x: f64::from(self.last_day - self.first_day),
                t,
            },
            SpendSummary { orders: x, mean },
        ))
    }
}

/// Fits Gamma-Gamma on the repeat transactions, as lifetimes does: customers with at least
/// one repeat transaction and a positive mean value.
pub(crate) fn fit_gamma_gamma(spend: &[SpendSummary]) -> Result<GammaGamma, GammaGammaError> {
    let repeat: Vec<SpendSummary> = spend
        .iter()
        .filter(|s| s.orders >= 1.0 && s.mean > 0.0)
        .copied()
        .collect();
    GammaGamma::fit(&repeat)
}

impl TextbookParams {
    /// Spend expected in `horizon_days`: expected transactions × expected transaction value.
    pub(crate) fn expected_spend(
        &self,
        repeat: &RepeatSummary,
        spend: &SpendSummary,
        horizon_days: f64,
    ) -> f64 {
        self.bgnbd.expected_purchases(repeat, horizon_days)
            * self
                .gamma_gamma
                .expected_order_value(spend.orders, spend.mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800; // 1997-01-01

    fn summary_of(purchases: &[(u32, f64)], as_of_day: u32) -> (RepeatSummary, SpendSummary) {
        let mut d = DailyTransactions::default();
        for &(at, amount) in purchases {
            d.add(T0 + at, amount);
        }
        d.summary(T0 + as_of_day * DAY).unwrap()
    }

    #[test]
    fn orders_of_one_day_are_one_transaction_and_the_first_is_left_out_of_the_mean() {
        // Day 0: 10 + 5 (one transaction); day 3: 20; day 9: 7 + 8 + 1 at three times.
        let (r, s) = summary_of(
            &[
                (0, 10.0),
                (3600, 5.0),
                (3 * DAY, 20.0),
                (9 * DAY, 7.0),
                (9 * DAY + 60, 8.0),
                (9 * DAY + 7200, 1.0),
            ],
            30,
        );
        assert_eq!(
            r,
            RepeatSummary {
                x: 2.0,
                t_x: 9.0,
                t: 30.0
            }
        );
        assert_eq!(s.orders, 2.0);
        assert!((s.mean - (20.0 + 16.0) / 2.0).abs() < 1e-12, "{s:?}");
        // One day only, however many orders: no repeat transaction, no mean.
        let (r, s) = summary_of(&[(0, 10.0), (500, 4.0)], 12);
        assert_eq!((r.x, r.t_x, r.t), (0.0, 0.0, 12.0));
        assert_eq!((s.orders, s.mean), (0.0, 0.0));
        // Before the first purchase there is nothing.
        assert_eq!(DailyTransactions::default().summary(T0), None);
    }

    #[test]
    fn the_spend_forecast_is_expected_transactions_times_their_value() {
        let bgnbd = BgNbd {
            r: 0.243,
            alpha: 4.414 * 7.0,
            a: 0.793,
            b: 2.426,
        };
        let gg = GammaGamma {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let params = TextbookParams {
            bgnbd,
            gamma_gamma: gg,
        };
        let (r, s) = summary_of(&[(0, 10.0), (20 * DAY, 30.0), (50 * DAY, 50.0)], 100);
        let got = params.expected_spend(&r, &s, 90.0);
        let want = bgnbd.expected_purchases(&r, 90.0) * gg.p * (gg.gamma + 2.0 * 40.0)
            / (2.0 * gg.p + gg.q - 1.0);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // No repeat transaction: the population's mean transaction value.
        let (r, s) = summary_of(&[(0, 10.0)], 100);
        let got = params.expected_spend(&r, &s, 90.0);
        let want = bgnbd.expected_purchases(&r, 90.0) * gg.population_mean();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn gamma_gamma_is_fitted_on_repeat_transactions_of_positive_value_only() {
        let mut spend: Vec<SpendSummary> = (0..60)
            .map(|i| SpendSummary {
                orders: f64::from(1 + i % 4),
                mean: 10.0 + f64::from((i * 7) % 23),
            })
            .collect();
        let fitted = fit_gamma_gamma(&spend).unwrap();
        // One-time buyers (no mean) and free repeat transactions change nothing.
        spend.extend((0..30).map(|_| SpendSummary {
            orders: 0.0,
            mean: 0.0,
        }));
        spend.push(SpendSummary {
            orders: 2.0,
            mean: 0.0,
        });
        assert_eq!(fit_gamma_gamma(&spend).unwrap(), fitted);
    }
}
