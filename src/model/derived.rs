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

/// The feature vector followed by the derived inputs under `bgnbd` (0 without one: a model
/// file of a format before the derived inputs gives them no weight).
pub(crate) fn inputs(x: &FeatureVector, bgnbd: Option<&BgNbd>, horizon_days: f64) -> InputVector {
    let mut out = [0.0; INPUT_COUNT];
    out[..FEATURE_COUNT].copy_from_slice(x);
    if let Some(b) = bgnbd {
        out[FEATURE_COUNT] = bgnbd_churn_logit(b, x, horizon_days);
    }
    out
}

/// The log-odds of BG/NBD's P(no purchase within `horizon_days`).
pub(crate) fn bgnbd_churn_logit(b: &BgNbd, x: &FeatureVector, horizon_days: f64) -> f64 {
    let p = b
        .p_no_purchase(&repeat_summary(x), horizon_days)
        .clamp(P_LIMIT, 1.0 - P_LIMIT);
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

    #[test]
    fn the_logit_is_finite_even_for_an_all_zero_vector() {
        let b = BgNbd {
            r: 0.24,
            alpha: 27.0,
            a: 0.75,
            b: 2.0,
        };
        let z = bgnbd_churn_logit(&b, &[0.0; FEATURE_COUNT], 90.0);
        assert!(z.is_finite(), "{z}");
        // Longer silence, same history: more likely to stay away.
        let mut x = [0.0; FEATURE_COUNT];
        x[1] = 100f64.ln_1p();
        x[2] = 3f64.ln_1p();
        x[0] = 10f64.ln_1p();
        let recent = bgnbd_churn_logit(&b, &x, 90.0);
        x[0] = 80f64.ln_1p();
        assert!(bgnbd_churn_logit(&b, &x, 90.0) > recent);
        assert_eq!(input_name(FEATURE_COUNT), "bgnbd_churn_logit");
        assert_eq!(input_name(0), "log_recency_days");
    }
}
