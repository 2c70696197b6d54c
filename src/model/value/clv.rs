//! Customer lifetime value over a fixed horizon: expected purchases (BG/NBD) × expected order
//! value (Gamma-Gamma), optionally discounted.
//!
//! Undiscounted, the value over `days` is simply E[purchases in `days`] × E[order value].
//! With an annual discount rate d, purchases later in the horizon are worth less: the horizon
//! is cut into [`STEPS`] equal periods (months for a year), the purchases expected in each
//! period are E[Y(k·Δ)] − E[Y((k−1)·Δ)], and each period's value is discounted by
//! (1+d)^(−k·Δ/365) as if it were paid at the period's end. This is lifetimes'
//! `customer_lifetime_value` (monthly periods, end-of-period discounting) with an annual rate
//! and 365/12-day months instead of a monthly rate and 30-day months; its error against
//! continuous discounting is below half a period's discount, ≈ d/24 of the value.

use crate::model::bgnbd::{BgNbd, RepeatSummary};

/// Discounting periods over the horizon.
pub(crate) const STEPS: u32 = 12;

/// Expected spend over the `days` after T, discounted at `annual_discount_rate` (0: none).
///
/// `p_alive` is the customer's [`BgNbd::p_alive`], which the caller has at hand (it does
/// not depend on the horizon); `order_value` is the expected value of one future order.
/// Finite and non-negative for valid parameters, a valid summary, a finite non-negative
/// order value and a rate ≥ 0.
pub(crate) fn lifetime_value(
    bgnbd: &BgNbd,
    s: &RepeatSummary,
    p_alive: f64,
    order_value: f64,
    days: f64,
    annual_discount_rate: f64,
) -> f64 {
    if days <= 0.0 {
        return 0.0;
    }
    if annual_discount_rate == 0.0 {
        return p_alive * bgnbd.expected_purchases_if_alive(s, days) * order_value;
    }
    let step = days / f64::from(STEPS);
    let ln_growth = annual_discount_rate.ln_1p();
    let mut previous = 0.0;
    let mut value = 0.0;
    for k in 1..=STEPS {
        let t = step * f64::from(k);
        let cumulative = p_alive * bgnbd.expected_purchases_if_alive(s, t);
        let discount = (-ln_growth * t / 365.0).exp();
        value += (cumulative - previous).max(0.0) * discount;
        previous = cumulative;
    }
    value * order_value
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: BgNbd = BgNbd {
        r: 0.243,
        alpha: 30.9,
        a: 0.793,
        b: 2.426,
    };

    fn summary() -> RepeatSummary {
        RepeatSummary {
            x: 4.0,
            t_x: 230.0,
            t: 260.0,
        }
    }

    #[test]
    fn undiscounted_value_is_purchases_times_order_value() {
        let s = summary();
        let v = lifetime_value(&M, &s, M.p_alive(&s), 30.0, 365.0, 0.0);
        assert!((v - 30.0 * M.expected_purchases(&s, 365.0)).abs() < 1e-12);
        assert_eq!(lifetime_value(&M, &s, M.p_alive(&s), 30.0, 0.0, 0.1), 0.0);
        assert_eq!(lifetime_value(&M, &s, M.p_alive(&s), 0.0, 365.0, 0.1), 0.0);
    }

    #[test]
    fn discounting_takes_off_what_the_rate_says() {
        let s = summary();
        let plain = lifetime_value(&M, &s, M.p_alive(&s), 30.0, 365.0, 0.0);
        let mut previous = plain;
        for rate in [0.01, 0.1, 0.5] {
            let v = lifetime_value(&M, &s, M.p_alive(&s), 30.0, 365.0, rate);
            assert!(v < previous, "rate {rate}: {v} after {previous}");
            // Every purchase is discounted by at most a year's rate and at least a month's.
            assert!(v >= plain / (1.0 + rate) && v <= plain / (1.0 + rate).powf(1.0 / 12.0));
            previous = v;
        }
        // Purchases spread over the year: the discount is near the mid-year one.
        let v = lifetime_value(&M, &s, M.p_alive(&s), 30.0, 365.0, 0.1);
        let mid_year = plain / 1.1f64.sqrt();
        assert!((v - mid_year).abs() < 0.02 * plain, "{v} vs {mid_year}");
    }
}
