//! How well the value model forecast a held-out window: per-customer error of the expected
//! purchases and spend, how much of the window's spend the customers it ranked highest made,
//! and the calibration of the churn probability it implies.
//!
//! Pure arithmetic on [`Outcome`]s; `churnd evaluate` builds them from a transactions file
//! (`model::evaluate`).

use serde::{Deserialize, Serialize};

use super::textbook::TextbookParams;
use super::{CustomerHistory, SpendSummary, ValueModel};
use crate::features::{FeatureVector, FEATURE_NAMES};
use crate::model::metrics::{calibration, expected_calibration_error, CalibrationBin};

/// One customer: what was forecast at the start of the window and what happened in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub predicted_purchases: f64,
    pub predicted_spend: f64,
    /// P(no purchase in the window) = 1 − p_alive · P(a purchase in the window | alive).
    pub p_no_purchase: f64,
    /// The naive forecast: the customer's past repeat-purchase rate (x / T a day) over the
    /// window, × their own mean order value.
    pub naive_purchases: f64,
    pub naive_spend: f64,
    /// Purchase events in the window.
    pub purchases: f64,
    /// Purchases minus refunds in the window.
    pub spend: f64,
    /// The two-part spend forecast ([`two_part_spend`]) with the churn model's P(a purchase
    /// in the window); `None` when the churn model's horizon is not the window's.
    pub two_part_spend: Option<f64>,
    /// The pooled two-part spend forecast ([`pooled_spend`]), beside the two-part one.
    pub pooled_spend: Option<f64>,
    /// The textbook baseline's forecast ([`super::textbook`]), when it was fitted.
    pub textbook: Option<TextbookOutcome>,
}

/// The textbook BG/NBD × Gamma-Gamma's forecasts of one customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextbookOutcome {
    pub spend: f64,
    /// BG/NBD's P(no purchase in the window).
    pub p_no_purchase: f64,
}

impl Outcome {
    /// The forecasts for a customer with history `h` over `horizon_days`, beside what they
    /// then did.
    pub fn forecast(
        model: &ValueModel,
        h: &CustomerHistory,
        horizon_days: f64,
        purchases: f64,
        spend: f64,
        p_buy: Option<f64>,
    ) -> Self {
        let bgnbd = &model.params().bgnbd;
        let predicted_purchases = bgnbd.expected_purchases(&h.repeat, horizon_days);
        let naive_purchases = if h.repeat.t > 0.0 {
            h.repeat.x / h.repeat.t * horizon_days
        } else {
            0.0
        };
        Self {
            two_part_spend: p_buy.map(|p| two_part_spend(model, h, horizon_days, p)),
            predicted_purchases,
            predicted_spend: predicted_purchases * model.expected_order_value(h),
            p_no_purchase: bgnbd.p_no_purchase(&h.repeat, horizon_days),
            naive_purchases,
            naive_spend: naive_purchases * h.spend.mean,
            purchases,
            spend,
            pooled_spend: None,
            textbook: None,
        }
    }
}

/// Spend in the `horizon_days` after T as a two-part model: P(a purchase) × E[spend | a
/// purchase], with `p_buy` from elsewhere (the churn model's 1 − P(churn)) and
///
/// ```text
/// E[spend | a purchase] = E[N] / P(N ≥ 1) × E[order value]
/// ```
///
/// N the purchases in the horizon under BG/NBD (E[N | N ≥ 1], at least 1), the order value
/// Gamma-Gamma's. With BG/NBD's own P(N ≥ 1) for `p_buy` it is BG/NBD × Gamma-Gamma exactly.
/// Finite and non-negative for `p_buy` in 0–1: when BG/NBD gives a purchase no chance at all
/// (no horizon), E[N | N ≥ 1] is taken at its limit, 1.
pub(crate) fn two_part_spend(
    model: &ValueModel,
    h: &CustomerHistory,
    horizon_days: f64,
    p_buy: f64,
) -> f64 {
    let bgnbd = &model.params().bgnbd;
    // P(N ≥ 1) = P(alive) · P(a purchase | alive), E[N] = P(alive) · E[N | alive]: P(alive)
    // cancels, and 1 − P(no purchase) is never formed (it cancels catastrophically for the
    // long gone, whose ratio would then blow up).
    let s = &h.repeat;
    let p_buy_if_alive =
        -(-(bgnbd.r + s.x) * (horizon_days / (bgnbd.alpha + s.t)).ln_1p()).exp_m1();
    let purchases_if_any = if p_buy_if_alive > 0.0 {
        (bgnbd.expected_purchases_if_alive(s, horizon_days) / p_buy_if_alive).max(1.0)
    } else {
        1.0
    };
    p_buy.clamp(0.0, 1.0) * purchases_if_any * model.expected_order_value(h)
}

/// A second two-part candidate for `expected_spend_90d`, measured beside [`two_part_spend`]:
/// the chance of a purchase pooled from both models, √(`p_buy` · BG/NBD's P(N ≥ 1)) (each
/// alone leans one way: the churn model's gives the frequent buyers BG/NBD believes gone a
/// large E[N | N ≥ 1], BG/NBD's own under-forecasts), and Gamma-Gamma's order value taken with
/// `recent_mean`, the customer's decay-weighted mean order value ([`recent_mean_order_value`]),
/// in place of the lifetime mean: recent orders say more about the next ones.
pub(crate) fn pooled_spend(
    model: &ValueModel,
    h: &CustomerHistory,
    horizon_days: f64,
    p_buy: f64,
    recent_mean: f64,
) -> f64 {
    let p_bgnbd = 1.0 - model.params().bgnbd.p_no_purchase(&h.repeat, horizon_days);
    let recent = CustomerHistory {
        spend: SpendSummary {
            mean: recent_mean,
            ..h.spend
        },
        ..*h
    };
    two_part_spend(
        model,
        &recent,
        horizon_days,
        (p_buy.clamp(0.0, 1.0) * p_bgnbd.clamp(0.0, 1.0)).sqrt(),
    )
}

/// The mean order value with orders weighted by a 365-day half-life, read back from the
/// feature vector (decayed spend ÷ decayed purchases; both decay alike, so the ratio is a
/// weighted mean). 0 when the vector holds no purchase.
pub(crate) fn recent_mean_order_value(x: &FeatureVector) -> f64 {
    debug_assert_eq!(
        [FEATURE_NAMES[8], FEATURE_NAMES[11]],
        ["log_frequency_365d", "log_monetary_365d"]
    );
    let purchases = x[8].exp_m1();
    if purchases > 0.0 {
        (x[11].exp_m1() / purchases).max(0.0)
    } else {
        0.0
    }
}

/// Mean absolute and root-mean-square error of a forecast, with the means beside them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ForecastError {
    pub mae: f64,
    pub rmse: f64,
    pub mean_predicted: f64,
    pub mean_actual: f64,
}

impl ForecastError {
    fn of(pairs: impl Iterator<Item = (f64, f64)>) -> Self {
        let (mut n, mut abs, mut sq, mut pred, mut act) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (p, a) in pairs {
            n += 1.0;
            abs += (p - a).abs();
            sq += (p - a) * (p - a);
            pred += p;
            act += a;
        }
        let n = f64::max(n, 1.0);
        Self {
            mae: abs / n,
            rmse: (sq / n).sqrt(),
            mean_predicted: pred / n,
            mean_actual: act / n,
        }
    }
}

/// The value model's forecast quality over one window, beside the naive forecast's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueForecast {
    pub customers: usize,
    pub horizon_days: u32,
    /// Expected purchases vs purchase events in the window.
    pub purchases: ForecastError,
    /// Expected spend vs net spend in the window.
    pub spend: ForecastError,
    /// Share of the window's net spend made by the 10 % of customers with the highest
    /// expected spend.
    pub top_decile_spend_share: f64,
    /// The same share had the customers been ranked by what they actually spent: the ceiling.
    pub top_decile_spend_share_ceiling: f64,
    /// Calibration of P(no purchase in the window) = 1 − p_alive · P(purchase | alive)
    /// against who did not buy: the churn probability the value model implies.
    pub p_alive_churn: ChurnCalibration,
    /// The naive forecast (past repeat rate × own mean order value), for scale.
    pub naive_purchases: ForecastError,
    pub naive_spend: ForecastError,
    pub naive_top_decile_spend_share: f64,
    /// The two-part spend forecast ([`two_part_spend`]: the churn model's P(a purchase) ×
    /// BG/NBD × Gamma-Gamma's spend given one), a candidate for `expected_spend_90d`; `None`
    /// when the churn model's horizon is not the window's.
    #[serde(default)]
    pub two_part_spend: Option<ForecastError>,
    #[serde(default)]
    pub two_part_top_decile_spend_share: Option<f64>,
    /// The pooled two-part forecast ([`pooled_spend`]), another candidate; `None` as above.
    #[serde(default)]
    pub pooled_spend: Option<ForecastError>,
    #[serde(default)]
    pub pooled_top_decile_spend_share: Option<f64>,
    /// The baseline: BG/NBD × Gamma-Gamma as published, fitted on the same customers' whole
    /// transaction histories (`churnd evaluate --baseline`).
    #[serde(default)]
    pub textbook: Option<TextbookForecast>,
}

/// The textbook BG/NBD × Gamma-Gamma's forecast quality over the same window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextbookForecast {
    pub params: TextbookParams,
    pub spend: ForecastError,
    pub top_decile_spend_share: f64,
    /// Its churn probability, 1 − p_alive · P(purchase | alive), as for the value model.
    pub p_alive_churn: ChurnCalibration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnCalibration {
    /// Expected calibration error: the customer-weighted mean |mean predicted − observed|
    /// over ten equal-width probability bins.
    pub expected_calibration_error: f64,
    pub brier_score: f64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
    pub bins: Vec<CalibrationBin>,
}

/// Calibration of P(no purchase in the window), `p`, against who did not buy.
fn churn_calibration(p: &[f64], churned: &[bool]) -> ChurnCalibration {
    let n = p.len().max(1) as f64;
    let bins = calibration(p, churned);
    ChurnCalibration {
        expected_calibration_error: expected_calibration_error(&bins),
        brier_score: p
            .iter()
            .zip(churned)
            .map(|(p, &c)| (p - f64::from(u8::from(c))).powi(2))
            .sum::<f64>()
            / n,
        mean_predicted: p.iter().sum::<f64>() / n,
        observed_rate: churned.iter().filter(|&&c| c).count() as f64 / n,
        bins,
    }
}

/// The report over every customer's outcome; `None` without customers. The textbook
/// baseline is reported when every outcome has its forecast, under `textbook`'s parameters.
pub fn report(
    outcomes: &[Outcome],
    horizon_days: u32,
    textbook: Option<TextbookParams>,
) -> Option<ValueForecast> {
    if outcomes.is_empty() {
        return None;
    }
    let p: Vec<f64> = outcomes.iter().map(|o| o.p_no_purchase).collect();
    let churned: Vec<bool> = outcomes.iter().map(|o| o.purchases == 0.0).collect();
    let two_part = outcomes.iter().all(|o| o.two_part_spend.is_some());
    let pooled = outcomes.iter().all(|o| o.pooled_spend.is_some());
    let textbook = textbook.and_then(|params| {
        let t: Vec<TextbookOutcome> = outcomes.iter().map(|o| o.textbook).collect::<Option<_>>()?;
        let p: Vec<f64> = t.iter().map(|t| t.p_no_purchase).collect();
        Some(TextbookForecast {
            params,
            spend: ForecastError::of(t.iter().zip(outcomes).map(|(t, o)| (t.spend, o.spend))),
            top_decile_spend_share: top_decile_share(outcomes, |o| {
                o.textbook.map_or(0.0, |t| t.spend)
            }),
            p_alive_churn: churn_calibration(&p, &churned),
        })
    });
    Some(ValueForecast {
        customers: outcomes.len(),
        horizon_days,
        purchases: ForecastError::of(
            outcomes
                .iter()
                .map(|o| (o.predicted_purchases, o.purchases)),
        ),
        spend: ForecastError::of(outcomes.iter().map(|o| (o.predicted_spend, o.spend))),
        top_decile_spend_share: top_decile_share(outcomes, |o| o.predicted_spend),
        top_decile_spend_share_ceiling: top_decile_share(outcomes, |o| o.spend),
        p_alive_churn: churn_calibration(&p, &churned),
        naive_purchases: ForecastError::of(
            outcomes.iter().map(|o| (o.naive_purchases, o.purchases)),
        ),
        naive_spend: ForecastError::of(outcomes.iter().map(|o| (o.naive_spend, o.spend))),
        naive_top_decile_spend_share: top_decile_share(outcomes, |o| o.naive_spend),
        two_part_spend: two_part.then(|| {
            ForecastError::of(
                outcomes
                    .iter()
                    .map(|o| (o.two_part_spend.unwrap_or(0.0), o.spend)),
            )
        }),
        two_part_top_decile_spend_share: two_part
            .then(|| top_decile_share(outcomes, |o| o.two_part_spend.unwrap_or(0.0))),
        pooled_spend: pooled.then(|| {
            ForecastError::of(
                outcomes
                    .iter()
                    .map(|o| (o.pooled_spend.unwrap_or(0.0), o.spend)),
            )
        }),
        pooled_top_decile_spend_share: pooled
            .then(|| top_decile_share(outcomes, |o| o.pooled_spend.unwrap_or(0.0))),
        textbook,
    })
}

/// Share of the total net spend made by the top 10 % (at least one customer) by `key`.
/// Ties are broken by position, so the result does not depend on the sort's stability; 0
/// when nobody spent anything.
fn top_decile_share(outcomes: &[Outcome], key: impl Fn(&Outcome) -> f64) -> f64 {
    let total: f64 = outcomes.iter().map(|o| o.spend).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..outcomes.len()).collect();
    order.sort_by(|&i, &j| {
        key(&outcomes[j])
            .total_cmp(&key(&outcomes[i]))
            .then(i.cmp(&j))
    });
    let top = (outcomes.len() / 10).max(1);
    order[..top].iter().map(|&i| outcomes[i].spend).sum::<f64>() / total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(predicted: f64, purchases: f64, spend: f64, p_no: f64) -> Outcome {
        Outcome {
            predicted_purchases: predicted,
            predicted_spend: predicted * 10.0,
            p_no_purchase: p_no,
            naive_purchases: 0.0,
            naive_spend: 0.0,
            purchases,
            spend,
            two_part_spend: Some(predicted * 5.0),
            pooled_spend: None,
            textbook: None,
        }
    }

    #[test]
    fn errors_and_shares_match_a_hand_computation() {
        // Twenty customers: the first two forecast 2 and 1 purchases and made 3 and 0; the
        // rest forecast 0 and made nothing but customer 19, who spent 30.
        let mut rows = vec![outcome(2.0, 3.0, 60.0, 0.1), outcome(1.0, 0.0, 0.0, 0.4)];
        rows.extend((2..20).map(|i| {
            outcome(
                0.0,
                if i == 19 { 1.0 } else { 0.0 },
                if i == 19 { 30.0 } else { 0.0 },
                0.9,
            )
        }));
        let r = report(&rows, 90, None).unwrap();
        assert_eq!(r.customers, 20);
        // Purchase errors: |2−3| + |1−0| + |0−1| = 3 over 20; squares 1 + 1 + 1.
        assert!((r.purchases.mae - 3.0 / 20.0).abs() < 1e-15);
        assert!((r.purchases.rmse - (3.0f64 / 20.0).sqrt()).abs() < 1e-15);
        assert!((r.purchases.mean_predicted - 3.0 / 20.0).abs() < 1e-15);
        assert!((r.purchases.mean_actual - 4.0 / 20.0).abs() < 1e-15);
        // Spend: |20−60| + |10−0| + |0−30| = 80; squares 1600 + 100 + 900.
        assert!((r.spend.mae - 4.0).abs() < 1e-12);
        assert!((r.spend.rmse - (2600.0f64 / 20.0).sqrt()).abs() < 1e-12);
        // Top 10 % = 2 customers by expected spend: 60 of 90; the ceiling is the same here.
        assert!((r.top_decile_spend_share - 60.0 / 90.0).abs() < 1e-15);
        assert!((r.top_decile_spend_share_ceiling - 1.0).abs() < 1e-15);
        // Churned: customer 1 and 17 of the rest. Bins: 0.1 (1, not churned), 0.4 (1,
        // churned), 0.9 (18, 17 churned).
        let c = &r.p_alive_churn;
        assert!((c.observed_rate - 18.0 / 20.0).abs() < 1e-15);
        let ece = (0.1 + 0.6 + 18.0 * (0.9f64 - 17.0 / 18.0).abs()) / 20.0;
        assert!((c.expected_calibration_error - ece).abs() < 1e-12, "{c:?}");
        assert_eq!(c.bins.len(), 3);
        // Two-part forecasts of half the spend: |10−60| + |5−0| + |0−30| = 85.
        assert!((r.two_part_spend.unwrap().mae - 85.0 / 20.0).abs() < 1e-12);
        assert!((r.two_part_top_decile_spend_share.unwrap() - 60.0 / 90.0).abs() < 1e-15);
        let mut without = rows.clone();
        without[3].two_part_spend = None;
        assert_eq!(report(&without, 90, None).unwrap().two_part_spend, None);
        // Naive forecasts of zero: errors are the actual values.
        assert!((r.naive_purchases.mae - 4.0 / 20.0).abs() < 1e-15);
        assert_eq!(report(&[], 90, None), None);
    }

    #[test]
    fn two_part_spend_follows_its_definition_and_stays_finite() {
        use crate::model::bgnbd::RepeatSummary;
        use crate::model::value::tests::cdnow_like;
        use crate::model::value::SpendSummary;
        let model = ValueModel::new(cdnow_like()).unwrap();
        let b = &cdnow_like().bgnbd;
        let history = |x: f64, t_x: f64, t: f64, mean: f64| CustomerHistory {
            repeat: RepeatSummary { x, t_x, t },
            spend: SpendSummary {
                orders: x + 1.0,
                mean,
            },
        };
        let h = history(4.0, 150.0, 200.0, 30.0);
        let (n, p_any) = (
            b.expected_purchases(&h.repeat, 90.0),
            1.0 - b.p_no_purchase(&h.repeat, 90.0),
        );
        let order = model.expected_order_value(&h);
        // By hand: P(buy) × E[N] / P(N ≥ 1) × order value.
        let got = two_part_spend(&model, &h, 90.0, 0.3);
        assert!((got - 0.3 * n / p_any * order).abs() < 1e-12, "{got}");
        assert!(n / p_any > 1.0);
        // With BG/NBD's own chance of a purchase it is BG/NBD × Gamma-Gamma.
        let own = two_part_spend(&model, &h, 90.0, p_any);
        assert!((own - n * order).abs() < 1e-12 * n * order, "{own}");
        // One purchase, zero spend, a long silence, no horizon: finite, never negative.
        for (h, horizon) in [
            (history(0.0, 0.0, 250.0, 12.0), 90.0),
            (history(3.0, 20.0, 270.0, 0.0), 90.0),
            (history(2.0, 10.0, 1e7, 5.0), 90.0),
            (history(2.0, 10.0, 40.0, 5.0), 0.0),
        ] {
            for p in [0.0, 0.5, 1.0] {
                let v = two_part_spend(&model, &h, horizon, p);
                assert!(v.is_finite() && v >= 0.0, "{h:?} {horizon} {p}: {v}");
            }
        }
        // Long gone: a purchase is unlikely, and if one comes it is about one, not the
        // ratio of two rounding errors.
        let gone = history(2.0, 10.0, 1e7, 5.0);
        let v = two_part_spend(&model, &gone, 90.0, 1.0);
        let order = model.expected_order_value(&gone);
        assert!(v >= order && v < 1.01 * order, "{v} vs {order}");
    }

    #[test]
    fn pooled_spend_follows_its_definition() {
        use crate::model::bgnbd::RepeatSummary;
        use crate::model::value::tests::cdnow_like;
        let model = ValueModel::new(cdnow_like()).unwrap();
        let b = &cdnow_like().bgnbd;
        let h = CustomerHistory {
            repeat: RepeatSummary {
                x: 4.0,
                t_x: 150.0,
                t: 200.0,
            },
            spend: SpendSummary {
                orders: 5.0,
                mean: 30.0,
            },
        };
        let p_bgnbd = 1.0 - b.p_no_purchase(&h.repeat, 90.0);
        let recent = CustomerHistory {
            spend: SpendSummary {
                orders: 5.0,
                mean: 50.0,
            },
            ..h
        };
        let want = two_part_spend(&model, &recent, 90.0, (0.4 * p_bgnbd).sqrt());
        let got = pooled_spend(&model, &h, 90.0, 0.4, 50.0);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Agreeing models pool to BG/NBD × Gamma-Gamma at the recent mean.
        let same = pooled_spend(&model, &h, 90.0, p_bgnbd, 50.0);
        let order = model.expected_order_value(&recent);
        let n = b.expected_purchases(&h.repeat, 90.0);
        assert!((same - n * order).abs() < 1e-9 * n * order, "{same}");
        assert_eq!(pooled_spend(&model, &h, 90.0, 0.0, 50.0), 0.0);
    }

    #[test]
    fn the_recent_mean_order_value_weights_recent_orders_more() {
        use crate::event::{Event, EventKind};
        use crate::features::CustomerFeatures;
        let day = 86_400;
        let mut f = CustomerFeatures::default();
        // 10 a year before now, 40 today: weights 1/2 and 1.
        f.apply(&Event::new("c", EventKind::Purchase, 10.0, 1_000_000_000));
        let now = 1_000_000_000 + 365 * day;
        f.apply(&Event::new("c", EventKind::Purchase, 40.0, now));
        let got = recent_mean_order_value(&f.vector(now).unwrap());
        let want = (0.5 * 10.0 + 40.0) / 1.5;
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    }

    #[test]
    fn nobody_spending_gives_a_share_of_zero() {
        let rows: Vec<Outcome> = (0..5).map(|_| outcome(1.0, 0.0, 0.0, 0.5)).collect();
        let r = report(&rows, 30, None).unwrap();
        assert_eq!(r.top_decile_spend_share, 0.0);
        assert!(r.spend.mae.is_finite());
    }
}
