//! Inputs the churn model derives itself, from the feature vector and its own fitted value
//! model, beside [`FEATURE_NAMES`].
//!
//! `bgnbd_churn_logit` is the log-odds of BG/NBD's P(no purchase within the horizon) with the
//! BG/NBD parameters fitted on the population at the time the model is used: at each training
//! cutoff on the data before it, and when serving from the model file's `value.bgnbd`, fitted
//! by `churnd train` at the end of its data. The RFM features describe a customer against a
//! fixed scale; this one describes them against the population as it is now, which carries
//! over a shift of the base rate between the training windows and today.
//!
//! It needs no state: BG/NBD's (x, t_x, T) are read back from the feature vector's
//! `log_recency_days`, `log_tenure_days` and `log_purchases` ([`repeat_summary`]), exactly as
//! [`super::value::CustomerHistory::of`] takes them from the customer's state.

use super::bgnbd::{BgNbd, RepeatSummary};
use crate::features::{FeatureVector, FEATURE_COUNT, FEATURE_NAMES};

/// Names of the derived inputs, after [`FEATURE_NAMES`] in the model's input order.
pub const DERIVED_NAMES: [&str; DERIVED_COUNT] = ["bgnbd_churn_logit"];
pub(crate) const DERIVED_COUNT: usize = 1;
/// Feature vector and derived inputs.
pub(crate) const INPUT_COUNT: usize = FEATURE_COUNT + DERIVED_COUNT;
pub(crate) type InputVector = [f64; INPUT_COUNT];

/// The name of input `i` (a feature, then the derived inputs).
pub(crate) fn input_name(i: usize) -> &'static str {
    if i < FEATURE_COUNT {
        FEATURE_NAMES[i]
    } else {
        DERIVED_NAMES[i - FEATURE_COUNT]
    }
}

/// Probabilities are kept within this of 0 and 1 so that the log-odds stay finite.
const P_LIMIT: f64 = 1e-9;

/// BG/NBD's summary of the customer the feature vector describes: x = purchases − 1, t_x =
/// tenure − recency, T = tenure, in days (the features are ln(1 + value)).
pub(crate) fn repeat_summary(x: &FeatureVector) -> RepeatSummary {
    debug_assert_eq!(
        [FEATURE_NAMES[0], FEATURE_NAMES[1], FEATURE_NAMES[2]],
        ["log_recency_days", "log_tenure_days", "log_purchases"]
    );
    let recency = x[0].exp_m1().max(0.0);
    let tenure = x[1].exp_m1().max(0.0);
    let purchases = x[2].exp_m1().round();
    RepeatSummary {
        x: (purchases - 1.0).max(0.0),
        t_x: (tenure - recency).max(0.0),
        t: tenure,
    }
}

/// The feature vector followed by the derived inputs under `logit` (0 without one: a model
/// file of a format before the derived inputs gives them no weight).
pub(crate) fn inputs(x: &FeatureVector, logit: Option<&ChurnLogit>) -> InputVector {
    let mut out = [0.0; INPUT_COUNT];
    out[..FEATURE_COUNT].copy_from_slice(x);
    if let Some(l) = logit {
        out[FEATURE_COUNT] = l.of(x);
    }
    out
}

/// Repeat purchases x for which ln(a / (b + x − 1)) is read from a table (the rest compute it).
const LN_TABLE: usize = 32;

/// Below this, ln(1 + h/(α+T)) and 1 − S are taken with `ln_1p` and `exp_m1`, which keep
/// their digits there; above it with `ln` and `exp`, about half the cost, whose rounding
/// errors (an ulp of 1 + h/(α+T), of S) then weigh at most 1/`PRECISE_BELOW` ulps in the
/// result.
const PRECISE_BELOW: f64 = 1.0 / 256.0;

/// `bgnbd_churn_logit` under one BG/NBD fit and horizon, with what does not depend on the
/// customer worked out once: the scorer evaluates it at every scoring.
///
/// The log-odds are taken in closed form rather than through the probability. With
/// S = ((α+T)/(α+T+h))^(r+x), a customer's chance of no purchase in h days if alive, and O =
/// a/(b+x−1) · ((α+T)/(α+t_x))^(r+x), the odds that they have dropped out (0 when x = 0),
/// P(alive) = 1/(1+O) and
///
/// ```text
/// P(no purchase) = 1 − (1−S)/(1+O) = (O+S)/(1+O),   so   logit = ln((O+S) / (1−S))
/// ```
///
/// (the 1+O cancels). What it costs is the number of `exp`/`ln` calls: two logarithms (of
/// 1 + h/(α+T) and of (α+T)/(α+t_x)), two exponentials (S and O) and the final logarithm,
/// plus one exponential per feature read back ([`Self::of`]); `ln(a/(b+x−1))` comes from a
/// table. O may overflow to +∞ or S underflow to 0: the result is then beyond the clamp,
/// which is where it lands. The result is clamped as the probability was, to the log-odds of
/// [`P_LIMIT`] and 1 − [`P_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ChurnLogit {
    r: f64,
    alpha: f64,
    ln_a: f64,
    b: f64,
    horizon_days: f64,
    /// ln(a / (b + x − 1)) for x = 1, 2, … [`LN_TABLE`] (index x − 1).
    ln_odds_factor: [f64; LN_TABLE],
    /// The log-odds of [`P_LIMIT`] and of 1 − [`P_LIMIT`], as the probability's clamp gave
    /// them: results are kept between the two.
    floor: f64,
    limit: f64,
}

impl ChurnLogit {
    pub(crate) fn new(b: &BgNbd, horizon_days: f64) -> Self {
        let ln_a = b.a.ln();
        let mut ln_odds_factor = [0.0; LN_TABLE];
        for (i, v) in ln_odds_factor.iter_mut().enumerate() {
            *v = ln_a - (b.b + i as f64).ln();
        }
        Self {
            r: b.r,
            alpha: b.alpha,
            ln_a,
            b: b.b,
            horizon_days,
            ln_odds_factor,
            floor: logit(P_LIMIT),
            limit: logit(1.0 - P_LIMIT),
        }
    }

    /// The input for the customer the feature vector describes: [`repeat_summary`]'s x, t_x
    /// and T, read back with `exp` rather than `exp_m1` (T and t_x only ever meet α in a
    /// sum, so the last bits of a short recency do not matter; the purchase count is whole
    /// and rounds the same).
    pub(crate) fn of(&self, x: &FeatureVector) -> f64 {
        let recency = (x[0].exp() - 1.0).max(0.0);
        let tenure = (x[1].exp() - 1.0).max(0.0);
        let purchases = (x[2].exp() - 1.0).round();
        self.of_parts(
            (purchases - 1.0).max(0.0),
            (tenure - recency).max(0.0),
            tenure,
        )
    }

    /// The log-odds of BG/NBD's P(no purchase within the horizon) for summary `s`.
    #[cfg(test)]
    pub(crate) fn of_summary(&self, s: &RepeatSummary) -> f64 {
        self.of_parts(s.x, s.t_x, s.t)
    }

    /// [`Self::of_summary`] for x, t_x and T.
    #[inline]
    fn of_parts(&self, x: f64, t_x: f64, t: f64) -> f64 {
        if self.horizon_days <= 0.0 {
            // No time to buy in: certain churn, as `BgNbd::p_no_purchase` says.
            return self.limit;
        }
        let rx = self.r + x;
        let alpha_t = self.alpha + t;
        let h = self.horizon_days / alpha_t;
        let ln_1_h = if h >= PRECISE_BELOW {
            (1.0 + h).ln()
        } else {
            h.ln_1p()
        };
        let ln_s = -rx * ln_1_h;
        // S and 1 − S, the latter exact for S near 1 (a short horizon) too.
        let (s, buy_if_alive) = if ln_s <= -PRECISE_BELOW {
            let s = ln_s.exp();
            (s, 1.0 - s)
        } else {
            let m = ln_s.exp_m1();
            (1.0 + m, -m)
        };
        let o = if x > 0.0 {
            // x counts purchase events: a whole number, small for almost everyone.
            let ln_factor = match self.ln_odds_factor.get((x as usize).wrapping_sub(1)) {
                Some(&v) if x.fract() == 0.0 => v,
                _ => self.ln_a - (self.b + x - 1.0).ln(),
            };
            (ln_factor + rx * (alpha_t / (self.alpha + t_x)).ln()).exp()
        } else {
            0.0
        };
        // 1 − S = 0 (S = 1) gives +∞: the limit.
        ((o + s) / buy_if_alive).ln().clamp(self.floor, self.limit)
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};
    use crate::features::CustomerFeatures;
    use crate::model::value::CustomerHistory;

    #[test]
    fn the_summary_read_back_from_the_features_is_the_value_models() {
        let day = 86_400;
        let t0 = 852_076_800;
        let mut f = CustomerFeatures::default();
        for d in [0, 3, 3, 40, 97] {
            f.apply(&Event::new("c", EventKind::Purchase, 12.5, t0 + d * day));
        }
        let now = t0 + 151 * day + 3_600;
        let from_state = CustomerHistory::of(&f, now).unwrap().repeat;
        let from_features = repeat_summary(&f.vector(now).unwrap());
        assert_eq!(from_features.x, from_state.x);
        assert!((from_features.t_x - from_state.t_x).abs() < 1e-9);
        assert!((from_features.t - from_state.t).abs() < 1e-9);
    }

    /// The log-odds as they were first computed: through P(alive) and the probability.
    fn logit_through_the_probability(b: &BgNbd, s: &RepeatSummary, horizon: f64) -> f64 {
        logit(b.p_no_purchase(s, horizon).clamp(P_LIMIT, 1.0 - P_LIMIT))
    }

    #[test]
    fn the_closed_form_matches_the_logit_of_the_probability() {
        let b = BgNbd {
            r: 0.2358,
            alpha: 27.32,
            a: 0.7496,
            b: 2.0446,
        };
        let mut checked = 0;
        for horizon in [0.0, 1e-6, 1.0, 30.0, 90.0, 365.0] {
            let l = ChurnLogit::new(&b, horizon);
            // Whole repeat counts inside and beyond the table, and one that is not whole.
            for x in [0.0, 1.0, 2.0, 7.0, 31.0, 32.0, 33.0, 250.0, 2.5] {
                for t in [0.0, 0.5, 10.0, 100.0, 270.0, 3_000.0] {
                    for share in [0.0, 0.3, 0.9, 1.0] {
                        let s = RepeatSummary {
                            x,
                            t_x: t * share,
                            t,
                        };
                        let (got, want) = (
                            l.of_summary(&s),
                            logit_through_the_probability(&b, &s, horizon),
                        );
                        assert!(got.is_finite(), "{s:?} h {horizon}: {got}");
                        // The probability form loses digits in 1 − p near the ends: allow its
                        // rounding error, a few ulps of p over min(p, 1 − p).
                        let p = b.p_no_purchase(&s, horizon).clamp(P_LIMIT, 1.0 - P_LIMIT);
                        let slack = 4.0 * f64::EPSILON / p.min(1.0 - p);
                        assert!(
                            (got - want).abs() <= 1e-12 * want.abs().max(1.0) + slack,
                            "{s:?} h {horizon}: {got} vs {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 9 * 6 * 4);
    }

    /// The closed form as it was before [`ChurnLogit`] was rewritten for speed (`ln_1p`,
    /// `exp_m1` and log-add-exp throughout, the summary read back with `exp_m1`): the
    /// reference the faster form must stay within a few ulps of.
    fn logit_as_before(b: &BgNbd, x: &FeatureVector, horizon: f64) -> f64 {
        use crate::model::bgnbd::log_add_exp;
        let s = repeat_summary(x);
        if horizon <= 0.0 {
            return logit(1.0 - P_LIMIT);
        }
        let rx = b.r + s.x;
        let ln_s = -rx * (horizon / (b.alpha + s.t)).ln_1p();
        let ln_o_plus_s = if s.x > 0.0 {
            let ln_o = b.a.ln() - (b.b + s.x - 1.0).ln()
                + rx * ((s.t - s.t_x) / (b.alpha + s.t_x)).ln_1p();
            log_add_exp(ln_o, ln_s)
        } else {
            ln_s
        };
        let ln_buy_if_alive = (-ln_s.exp_m1()).ln();
        (ln_o_plus_s - ln_buy_if_alive).clamp(logit(P_LIMIT), logit(1.0 - P_LIMIT))
    }

    #[test]
    fn the_faster_form_stays_within_a_few_ulps_of_the_previous_one() {
        // The shipped fit, and one with a small r and α (S near 1, O large) to reach the
        // precise branches and the clamps.
        let fits = [
            BgNbd {
                r: 0.2358,
                alpha: 27.32,
                a: 0.7496,
                b: 2.0446,
            },
            BgNbd {
                r: 0.01,
                alpha: 0.5,
                a: 3.0,
                b: 0.2,
            },
        ];
        let mut checked = 0;
        let mut worst: f64 = 0.0;
        for b in &fits {
            for horizon in [0.0, 1e-6, 0.5, 1.0, 30.0, 90.0, 365.0] {
                let l = ChurnLogit::new(b, horizon);
                // One purchase, a few, either side of the table's end, and huge counts.
                for purchases in [1u32, 2, 3, 8, 32, 33, 34, 251, 10_000, u32::MAX] {
                    for tenure in [0.0, 1.0 / 24.0, 0.5, 10.0, 100.0, 270.0, 3_000.0, 1e5] {
                        // Zero recency (bought just now), partway, and all of the tenure.
                        for share in [0.0, 1e-6, 0.3, 0.9, 1.0] {
                            let mut x = [0.0; FEATURE_COUNT];
                            x[0] = f64::ln_1p(tenure * share);
                            x[1] = f64::ln_1p(tenure);
                            x[2] = f64::from(purchases).ln_1p();
                            let (got, want) = (l.of(&x), logit_as_before(b, &x, horizon));
                            assert!(got.is_finite(), "{x:?} h {horizon}: {got}");
                            // 1/PRECISE_BELOW ulps from `ln` and `exp` (module notes), twice,
                            // and the rounding both forms share, which grows with r + x (it
                            // multiplies a logarithm): 4 ulps per repeat purchase.
                            let rx = b.r + f64::from(purchases) - 1.0;
                            let tolerance = (2.0 / PRECISE_BELOW + 4.0 * rx)
                                * f64::EPSILON
                                * want.abs().max(1.0);
                            assert!(
                                (got - want).abs() <= tolerance,
                                "{purchases} purchases, T {tenure}, share {share}, h {horizon}: \
                                 {got} vs {want}"
                            );
                            if purchases <= 251 {
                                worst = worst.max((got - want).abs() / want.abs().max(1.0));
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 7 * 10 * 8 * 5);
        // Up to 251 purchases, relative to max(1, |logit|): measured 4.4e-14 (196 ulps), at a
        // half-day horizon, where 1 + h/(α+T) is just above PRECISE_BELOW.
        assert!(worst <= 1e-13, "{worst:e}");
    }

    #[test]
    fn the_logit_is_finite_even_for_an_all_zero_vector() {
        let b = BgNbd {
            r: 0.24,
            alpha: 27.0,
            a: 0.75,
            b: 2.0,
        };
        let z = ChurnLogit::new(&b, 90.0).of(&[0.0; FEATURE_COUNT]);
        assert!(z.is_finite(), "{z}");
        // Longer silence, same history: more likely to stay away.
        let mut x = [0.0; FEATURE_COUNT];
        x[1] = 100f64.ln_1p();
        x[2] = 3f64.ln_1p();
        x[0] = 10f64.ln_1p();
        let recent = ChurnLogit::new(&b, 90.0).of(&x);
        x[0] = 80f64.ln_1p();
        assert!(ChurnLogit::new(&b, 90.0).of(&x) > recent);
        assert_eq!(input_name(FEATURE_COUNT), "bgnbd_churn_logit");
        assert_eq!(input_name(0), "log_recency_days");
    }
}
