//! Evaluating a model on labelled history, and the statistical baseline it must beat.
//!
//! The labels are built exactly like training's: features of every buyer from events before
//! the date, label "no purchase within the horizon after it". The baseline is the BG/NBD model
//! fitted on the same customers' purchase histories before the date, predicting the same
//! event: no purchase in the horizon.
//!
//! A model with value parameters is also measured as a forecast of the window: purchases and
//! spend per customer, the spend captured by the customers it ranks highest, and the
//! calibration of the churn probability it implies ([`value::forecast`]).

mod value;

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::bgnbd::{BgNbd, BgNbdError};
use super::metrics::{evaluate, Evaluation};
use super::pareto_nbd::ParetoNbd;
use super::train::{
    build_examples, data_span, default_cutoffs, fit_logistic, Example, TrainOptions, LOG_RFM_NAMES,
};
use super::value::forecast::ValueForecast;
use super::Model;
use crate::time::{self, UnixSeconds};
use crate::transactions::Transactions;
use value::{render_value, value_forecast};

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("as of {as_of} with a horizon of {horizon_days} days does not fit the data (from {first} to just before {last}): the date must follow the first event and leave a full horizon of data after it")]
    DoesNotFit {
        as_of: String,
        horizon_days: u32,
        first: String,
        last: String,
    },
    #[error("the transactions hold no purchases: there is nothing to evaluate")]
    NoPurchases,
    #[error("nobody had bought before {0}: there is nothing to evaluate")]
    NoCustomers(String),
    #[error("the {customers} customers are all of one class ({churned} churned): ranking metrics are undefined; pick another date or horizon")]
    OneClass { customers: usize, churned: usize },
    #[error("the BG/NBD baseline could not be fitted: {0}")]
    Baseline(#[from] BgNbdError),
}

/// A model's metrics at one date, beside the baseline's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub model_version: String,
    pub as_of: String,
    pub horizon_days: u32,
    /// The horizon the model was trained for; a different `horizon_days` is a mismatch.
    pub model_horizon_days: u32,
    pub model: Evaluation,
    pub baseline: Option<BaselineReport>,
    /// With `--baseline`: Pareto/NBD fitted on the same customers.
    #[serde(default)]
    pub pareto_nbd: Option<ParetoNbdReport>,
    /// With `--baseline`: a logistic regression on log-RFM inputs, trained on the history
    /// before the date exactly as `churnd train --until DATE` trains the churn model.
    #[serde(default)]
    pub log_rfm: Option<LogRfmReport>,
    /// Baselines that were asked for but could not be fitted, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_errors: Vec<String>,
    /// The value model's forecast of the window; `None` when the model has no value
    /// parameters (a format 1 file).
    #[serde(default)]
    pub value: Option<ValueForecast>,
}

/// The BG/NBD model fitted on the evaluated customers' history, and its metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    pub name: String,
    pub params: BgNbd,
    pub metrics: Evaluation,
}

/// Pareto/NBD fitted on the evaluated customers' history, and its metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParetoNbdReport {
    pub params: ParetoNbd,
    pub metrics: Evaluation,
}

/// The log-RFM logistic regression: what it was trained on, its coefficients (per
/// standardised input), and its metrics at the evaluated date.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRfmReport {
    pub cutoffs: Vec<String>,
    pub training_examples: usize,
    /// (input, mean, scale, coefficient), in [`LOG_RFM_NAMES`] order.
    pub inputs: Vec<(String, f64, f64, f64)>,
    pub intercept: f64,
    pub metrics: Evaluation,
}

/// Evaluates `model` at `as_of` against what customers did in the following `horizon_days`;
/// with `baseline`, also fits and evaluates BG/NBD on the same customers.
pub fn evaluate_model(
    transactions: &Transactions,
    model: &Model,
    as_of: UnixSeconds,
    horizon_days: u32,
    baseline: bool,
) -> Result<EvaluationReport, EvaluateError> {
    let does_not_fit = |first: UnixSeconds, end: UnixSeconds| EvaluateError::DoesNotFit {
        as_of: time::rfc3339(as_of),
        horizon_days,
        first: time::rfc3339(first),
        last: time::rfc3339(end),
    };
    let (first, end) = data_span(transactions).ok_or(EvaluateError::NoPurchases)?;
    if as_of <= first || as_of.saturating_add(time::days(horizon_days)) > end {
        return Err(does_not_fit(first, end));
    }
    let examples = build_examples(transactions, &[as_of], horizon_days);
    if examples.is_empty() {
        return Err(EvaluateError::NoCustomers(time::rfc3339(as_of)));
    }
    let probabilities: Vec<f64> = examples
        .iter()
        .map(|e| model.probability(&e.features))
        .collect();
    let metrics = metrics_or_one_class(&examples, &probabilities)?;
    let examples: Vec<&Example> = examples.iter().collect();
    let (mut pareto_nbd, mut log_rfm, mut baseline_errors) = (None, None, Vec::new());
    let baseline = if baseline {
        match pareto_nbd_baseline(&examples, horizon_days) {
            Ok(b) => pareto_nbd = Some(b),
            Err(e) => baseline_errors.push(format!("Pareto/NBD: {e}")),
        }
        match log_rfm_baseline(transactions, &examples, as_of, horizon_days) {
            Ok(b) => log_rfm = Some(b),
            Err(e) => baseline_errors.push(format!("log-RFM regression: {e}")),
        }
        Some(bgnbd_baseline(&examples, horizon_days)?)
    } else {
        None
    };
    let value = model.value().and_then(|v| {
        let textbook_bgnbd = baseline.as_ref().map(|b| b.params);
        let (forecast, error) =
            value_forecast(transactions, model, v, as_of, horizon_days, textbook_bgnbd);
        baseline_errors.extend(error);
        forecast
    });
    Ok(EvaluationReport {
        model_version: model.version().to_owned(),
        as_of: time::rfc3339(as_of),
        horizon_days,
        model_horizon_days: model.horizon_days(),
        model: metrics,
        baseline,
        pareto_nbd,
        log_rfm,
        baseline_errors,
        value,
    })
}

/// Pareto/NBD fitted on the examples' purchase histories, scoring P(no purchase within the
/// horizon) in closed form.
fn pareto_nbd_baseline(
    examples: &[&Example],
    horizon_days: u32,
) -> Result<ParetoNbdReport, String> {
    let histories: Vec<_> = examples.iter().map(|e| e.history).collect();
    let params = ParetoNbd::fit(&histories).map_err(|e| e.to_string())?;
    let probabilities: Vec<f64> = histories
        .iter()
        .map(|h| params.p_no_purchase(h, f64::from(horizon_days)))
        .collect();
    let labels: Vec<bool> = examples.iter().map(|e| e.churned).collect();
    let metrics = evaluate(&probabilities, &labels)
        .ok_or_else(|| "the evaluated customers are all of one class".to_string())?;
    Ok(ParetoNbdReport { params, metrics })
}

/// The log-RFM regression's L2 penalty per example: churnd's earlier default, which suits it
/// better than the churn model's heavier one (lower Brier at every origin measured).
const LOG_RFM_L2: f64 = 0.02;

/// Trains the log-RFM regression on the history before `as_of`, on the cutoffs `churnd train
/// --until as_of` would use (every 30 days back from the latest that leaves a full horizon
/// before the date), and scores the evaluated customers.
fn log_rfm_baseline(
    transactions: &Transactions,
    examples: &[&Example],
    as_of: UnixSeconds,
    horizon_days: u32,
) -> Result<LogRfmReport, String> {
    let before = Transactions {
        rows: transactions.rows[..transactions.rows.partition_point(|t| t.time < as_of)].to_vec(),
        bad_rows: Vec::new(),
    };
    let (first, end) = data_span(&before).ok_or("no history before the date")?;
    let cutoffs = default_cutoffs(first, end, horizon_days);
    if cutoffs.is_empty() {
        return Err(format!(
            "no cutoff before the date leaves a full {horizon_days}-day horizon of labels"
        ));
    }
    let rows: Vec<([f64; 4], bool)> = build_examples(&before, &cutoffs, horizon_days)
        .iter()
        .map(|e| (e.log_rfm, e.churned))
        .collect();
    let fitted = fit_logistic(
        &rows,
        LOG_RFM_L2,
        TrainOptions::default().max_iterations,
        "the log-RFM baseline's training set",
    )
    .map_err(|e| e.to_string())?;
    let probabilities: Vec<f64> = examples
        .iter()
        .map(|e| fitted.probability(&e.log_rfm))
        .collect();
    let labels: Vec<bool> = examples.iter().map(|e| e.churned).collect();
    let metrics = evaluate(&probabilities, &labels)
        .ok_or_else(|| "the evaluated customers are all of one class".to_string())?;
    Ok(LogRfmReport {
        cutoffs: cutoffs.into_iter().map(time::rfc3339).collect(),
        training_examples: rows.len(),
        inputs: (0..4)
            .map(|i| {
                (
                    LOG_RFM_NAMES[i].to_string(),
                    fitted.mean[i],
                    fitted.scale[i],
                    fitted.coefficients[i],
                )
            })
            .collect(),
        intercept: fitted.intercept,
        metrics,
    })
}

fn metrics_or_one_class(
    examples: &[Example],
    probabilities: &[f64],
) -> Result<Evaluation, EvaluateError> {
    let labels: Vec<bool> = examples.iter().map(|e| e.churned).collect();
    evaluate(probabilities, &labels).ok_or(EvaluateError::OneClass {
        customers: labels.len(),
        churned: labels.iter().filter(|&&c| c).count(),
    })
}

/// Fits BG/NBD on the examples' purchase histories (all from before their cutoff) and scores
/// P(no purchase within the horizon) for each. The examples must share one cutoff and hold
/// both classes.
pub(crate) fn bgnbd_baseline(
    examples: &[&Example],
    horizon_days: u32,
) -> Result<BaselineReport, BgNbdError> {
    let histories: Vec<_> = examples.iter().map(|e| e.history).collect();
    let params = BgNbd::fit(&histories)?;
    let probabilities: Vec<f64> = histories
        .iter()
        .map(|h| params.p_no_purchase(h, f64::from(horizon_days)))
        .collect();
    let labels: Vec<bool> = examples.iter().map(|e| e.churned).collect();
    let metrics = evaluate(&probabilities, &labels).ok_or_else(|| {
        BgNbdError::Diverged("the evaluated customers are all of one class".into())
    })?;
    Ok(BaselineReport {
        name: "bgnbd".into(),
        params,
        metrics,
    })
}

/// The report for people.
pub fn render_text(r: &EvaluationReport) -> String {
    let mut s = String::new();
    let m = &r.model;
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "model {} as of {}, horizon {} days: {} customers, {} churned ({:.1} %)",
        r.model_version,
        r.as_of,
        r.horizon_days,
        m.examples,
        m.positives,
        100.0 * m.positives as f64 / m.examples.max(1) as f64
    );
    if r.model_horizon_days != r.horizon_days {
        let _ = writeln!(
            s,
            "note: the model was trained for a {}-day horizon",
            r.model_horizon_days
        );
    }
    let _ = writeln!(
        s,
        "\n{:<10} {:>8} {:>10} {:>9} {:>8} {:>12} {:>8}",
        "", "ROC AUC", "avg prec", "log loss", "Brier", "top-10% lift", "ECE"
    );
    let mut row = |name: &str, e: &Evaluation| {
        let _ = writeln!(
            s,
            "{:<10} {:>8.4} {:>10.4} {:>9.4} {:>8.4} {:>12.2} {:>8.4}",
            name,
            e.roc_auc,
            e.average_precision,
            e.log_loss,
            e.brier_score,
            e.top_decile_lift,
            e.expected_calibration_error
        );
    };
    row("model", m);
    if let Some(b) = &r.baseline {
        row("BG/NBD", &b.metrics);
    }
    if let Some(b) = &r.pareto_nbd {
        row("Pareto/NBD", &b.metrics);
    }
    if let Some(b) = &r.log_rfm {
        row("log-RFM", &b.metrics);
    }
    for e in &r.baseline_errors {
        let _ = writeln!(s, "no baseline {e}");
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            s,
            "\nBG/NBD fitted on the same customers: r {:.4}, alpha {:.4}, a {:.4}, b {:.4} (days)",
            b.params.r, b.params.alpha, b.params.a, b.params.b
        );
    }
    if let Some(b) = &r.pareto_nbd {
        let _ = writeln!(
            s,
            "Pareto/NBD fitted on the same customers: r {:.4}, alpha {:.4}, s {:.4}, beta {:.4} (days)",
            b.params.r, b.params.alpha, b.params.s, b.params.beta
        );
    }
    if let Some(b) = &r.log_rfm {
        let _ = writeln!(
            s,
            "log-RFM regression trained on {} examples at cutoffs {}; coefficients per standard deviation: {}",
            b.training_examples,
            b.cutoffs.join(", "),
            b.inputs
                .iter()
                .map(|(name, _, _, c)| format!("{name} {c:+.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\ncalibration of the model (predicted vs observed churn rate; expected calibration error {:.4}):",
        m.expected_calibration_error
    );
    for bin in m.calibration.iter().filter(|b| b.count > 0) {
        let _ = writeln!(
            s,
            "  {:.1}-{:.1}: {:>7} customers, predicted {:.3}, observed {:.3}",
            bin.lower, bin.upper, bin.count, bin.mean_predicted, bin.observed_rate
        );
    }
    match &r.value {
        None => {
            let _ = writeln!(
                s,
                "\nvalue model: none (the model file has no value parameters; `churnd train` fits them)"
            );
        }
        Some(v) => render_value(&mut s, v),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::model::metrics::{expected_calibration_error, CalibrationBin};
    use crate::model::tests::recency_only_model_file;
    use crate::model::value::{forecast, CustomerHistory};
    use crate::transactions::Transaction;

    const DAY: u32 = 86_400;
    /// 1997-01-01T00:00:00Z.
    const T0: u32 = 852_076_800;

    fn row(id: &str, kind: EventKind, day: u32) -> Transaction {
        Transaction {
            customer_id: id.into(),
            kind,
            amount: if kind == EventKind::Purchase {
                25.0
            } else {
                0.0
            },
            time: T0 + day * DAY,
        }
    }

    fn transactions(mut rows: Vec<Transaction>) -> Transactions {
        rows.sort_by_key(|t| t.time);
        Transactions {
            rows,
            bad_rows: vec![],
        }
    }

    /// The recency-only test model: P(churn) after `days` since the last purchase.
    fn recency_probability(days: f64) -> f64 {
        crate::model::sigmoid((days.ln_1p() - 3.0) / 0.5 - 1.0)
    }

    fn recency_model() -> Model {
        Model::from_file(&recency_only_model_file()).unwrap()
    }

    /// As of day 30 with a 30-day horizon (purchases on days 30 to 59 count), the buyers are
    /// a, b, c, d and g; b, c and g are churned. The data ends with day 70.
    fn hand_built() -> Transactions {
        use EventKind::{Purchase, Visit};
        transactions(vec![
            // Bought again inside the horizon: not churned.
            row("a", Purchase, 0),
            row("a", Purchase, 10),
            row("a", Purchase, 40),
            // Bought again only after the horizon: churned.
            row("b", Purchase, 5),
            row("b", Purchase, 70),
            // Never again: churned.
            row("c", Purchase, 20),
            // Bought again on the date itself: the horizon starts there, not churned.
            row("d", Purchase, 25),
            row("d", Purchase, 30),
            // Bought again on the first day after the horizon: churned.
            row("g", Purchase, 1),
            row("g", Purchase, 60),
            // Only visited before the date: not a customer to evaluate.
            row("e", Visit, 3),
            // First purchase on the date: not known yet.
            row("f", Purchase, 30),
        ])
    }

    const AS_OF_DAY: u32 = 30;

    #[test]
    fn counts_customers_and_churn_by_purchases_within_the_horizon() {
        let report = evaluate_model(
            &hand_built(),
            &recency_model(),
            T0 + AS_OF_DAY * DAY,
            30,
            false,
        )
        .unwrap();
        let m = &report.model;
        assert_eq!(m.examples, 5, "a, b, c, d and g had bought before the date");
        assert_eq!(m.positives, 3, "b, c and g did not buy within the horizon");
        assert_eq!(report.model_version, "test-1");
        assert_eq!(report.as_of, "1997-01-31T00:00:00Z");
        assert_eq!(report.horizon_days, 30);
        assert_eq!(report.model_horizon_days, 90);
        assert!(report.baseline.is_none());
    }

    #[test]
    fn metrics_match_a_hand_computation() {
        let report = evaluate_model(
            &hand_built(),
            &recency_model(),
            T0 + AS_OF_DAY * DAY,
            30,
            false,
        )
        .unwrap();
        let m = &report.model;
        // Recency on day 30 and label: g 29 churned, b 25 churned, a 20 not, c 10 churned,
        // d 5 not. The model ranks by recency: g, b, a, c, d.
        let cases = [
            (29.0, true),
            (25.0, true),
            (20.0, false),
            (10.0, true),
            (5.0, false),
        ];
        // Of the 3 × 2 churned/not pairs only (c, a) is ranked the wrong way round.
        assert!((m.roc_auc - 5.0 / 6.0).abs() < 1e-12, "{}", m.roc_auc);
        // Precision at each churned customer: 1/1, 2/2, 3/4.
        assert!(
            (m.average_precision - (1.0 + 1.0 + 0.75) / 3.0).abs() < 1e-12,
            "{}",
            m.average_precision
        );
        // Top 10 % of 5 is the single highest score, g (churned), over a base rate of 3/5.
        assert!(
            (m.top_decile_lift - 5.0 / 3.0).abs() < 1e-12,
            "{}",
            m.top_decile_lift
        );
        let n = cases.len() as f64;
        let brier: f64 = cases
            .iter()
            .map(|&(days, churned)| {
                (recency_probability(days) - f64::from(u8::from(churned))).powi(2)
            })
            .sum::<f64>()
            / n;
        let log_loss: f64 = cases
            .iter()
            .map(|&(days, churned)| {
                let p = recency_probability(days);
                -if churned { p.ln() } else { (1.0 - p).ln() }
            })
            .sum::<f64>()
            / n;
        assert!(
            (m.brier_score - brier).abs() < 1e-12,
            "{} vs {brier}",
            m.brier_score
        );
        assert!(
            (m.log_loss - log_loss).abs() < 1e-12,
            "{} vs {log_loss}",
            m.log_loss
        );
        assert_eq!(
            m.calibration.iter().map(|b| b.count).sum::<usize>(),
            5,
            "{:?}",
            m.calibration
        );
    }

    #[test]
    fn the_value_model_is_measured_on_the_same_customers_and_window() {
        let data = hand_built();
        let model = recency_model();
        let as_of = T0 + AS_OF_DAY * DAY;
        let report = evaluate_model(&data, &model, as_of, 30, false).unwrap();
        let v = report.value.expect("the test model has value parameters");
        assert_eq!(v.customers, 5);
        assert_eq!(v.horizon_days, 30);
        // In days 30 to 59: a bought on day 40 and d on day 30, 25 each.
        assert!((v.purchases.mean_actual - 2.0 / 5.0).abs() < 1e-15);
        assert!((v.spend.mean_actual - 50.0 / 5.0).abs() < 1e-12);
        assert!((v.p_alive_churn.observed_rate - 3.0 / 5.0).abs() < 1e-15);
        // The forecasts are the value model's, from each customer's state as of the date.
        let value = model.value().unwrap();
        let store = crate::batch::features_as_of(&data, as_of);
        let (mut purchases, mut spend) = (0.0, 0.0);
        for (_, f) in store.iter() {
            if let Some(h) = CustomerHistory::of(f, as_of) {
                let e = value.params().bgnbd.expected_purchases(&h.repeat, 30.0);
                purchases += e;
                spend += e * value.expected_order_value(&h);
            }
        }
        assert!((v.purchases.mean_predicted - purchases / 5.0).abs() < 1e-12);
        assert!((v.spend.mean_predicted - spend / 5.0).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&v.top_decile_spend_share));
        let text = render_text(&evaluate_model(&data, &model, as_of, 30, false).unwrap());
        assert!(
            text.contains("value model forecast of the 30 days, 5 customers:"),
            "{text}"
        );
        assert!(text.contains("p_alive-based churn"), "{text}");
        // The two-part spend needs the churn model's own horizon (90 days, not 30).
        assert_eq!(v.two_part_spend, None);
        assert!(!text.contains("two-part"), "{text}");
        let mut file = recency_only_model_file();
        file.horizon_days = 30;
        let model_30 = Model::from_file(&file).unwrap();
        let report = evaluate_model(&data, &model_30, as_of, 30, false).unwrap();
        let got = report.value.as_ref().unwrap().two_part_spend;
        let got = got.expect("a 30-day window, a 30-day model");
        let mut want = 0.0;
        for (_, f) in store.iter() {
            if let (Some(h), Some(x)) = (CustomerHistory::of(f, as_of), f.vector(as_of)) {
                let p_buy = 1.0 - model_30.probability(&x);
                want += forecast::two_part_spend(value, &h, 30.0, p_buy);
            }
        }
        assert!(want > 0.0);
        assert!((got.mean_predicted - want / 5.0).abs() < 1e-12, "{got:?}");
        assert!(render_text(&report).contains("spend (two-part)"));
        let pooled = report.value.as_ref().unwrap().pooled_spend;
        assert!(pooled.is_some_and(|e| e.mean_predicted > 0.0), "{pooled:?}");
        assert!(render_text(&report).contains("spend (pooled)"));
        // Without --baseline there is no textbook baseline.
        assert!(report.value.as_ref().unwrap().textbook.is_none());

        // A format 1 model has no value report, and says so.
        let old = crate::model::tests::format_1_model_file();
        let report = evaluate_model(&data, &Model::from_file(&old).unwrap(), as_of, 30, false);
        let report = report.unwrap();
        assert!(report.value.is_none());
        assert!(render_text(&report).contains("value model: none"));
    }

    #[test]
    fn a_horizon_running_past_the_end_of_the_data_is_refused() {
        let data = hand_built();
        let model = recency_model();
        // The data ends with day 70, i.e. at the start of day 71: day 41 + 30 fits exactly,
        // day 42 + 30 does not.
        evaluate_model(&data, &model, T0 + 41 * DAY, 30, false).unwrap();
        let err = evaluate_model(&data, &model, T0 + 42 * DAY, 30, false).unwrap_err();
        assert!(matches!(err, EvaluateError::DoesNotFit { .. }), "{err:?}");
        let text = err.to_string();
        for needle in [
            "1997-02-12T00:00:00Z",
            "horizon of 30 days",
            "1997-01-01T00:00:00Z",
            "1997-03-13T00:00:00Z",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in: {text}");
        }
        let err = evaluate_model(&data, &model, T0 + AS_OF_DAY * DAY, 365, false).unwrap_err();
        assert!(
            matches!(
                err,
                EvaluateError::DoesNotFit {
                    horizon_days: 365,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_date_on_or_before_the_first_event_is_refused() {
        let data = hand_built();
        let model = recency_model();
        for as_of in [T0, T0 - DAY] {
            let err = evaluate_model(&data, &model, as_of, 30, false).unwrap_err();
            assert!(matches!(err, EvaluateError::DoesNotFit { .. }), "{err:?}");
        }
    }

    #[test]
    fn data_without_purchases_is_refused_as_such() {
        let err =
            evaluate_model(&Transactions::default(), &recency_model(), T0, 30, false).unwrap_err();
        assert!(matches!(err, EvaluateError::NoPurchases), "{err:?}");
    }

    #[test]
    fn without_buyers_before_the_date_there_is_nothing_to_evaluate() {
        use EventKind::{Purchase, Visit};
        let data = transactions(vec![
            row("a", Visit, 0),
            row("a", Purchase, 10),
            row("b", Purchase, 100),
        ]);
        let err = evaluate_model(&data, &recency_model(), T0 + 5 * DAY, 30, false).unwrap_err();
        assert!(matches!(err, EvaluateError::NoCustomers(_)), "{err:?}");
        assert!(err.to_string().contains("1997-01-06T00:00:00Z"), "{err}");
    }

    #[test]
    fn a_single_class_is_refused_with_its_counts() {
        use EventKind::Purchase;
        let data = transactions(vec![
            row("a", Purchase, 0),
            row("b", Purchase, 1),
            row("a", Purchase, 20),
            row("b", Purchase, 25),
            row("a", Purchase, 100),
        ]);
        let err = evaluate_model(&data, &recency_model(), T0 + 10 * DAY, 30, false).unwrap_err();
        assert!(
            matches!(
                err,
                EvaluateError::OneClass {
                    customers: 2,
                    churned: 0
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_baseline_needs_enough_customers() {
        let err = evaluate_model(
            &hand_built(),
            &recency_model(),
            T0 + AS_OF_DAY * DAY,
            30,
            true,
        )
        .unwrap_err();
        assert!(
            matches!(err, EvaluateError::Baseline(BgNbdError::TooFewCustomers(5))),
            "{err:?}"
        );
    }

    /// 80 customers with varied rhythms; odd ones keep buying until day 120, even ones stop
    /// somewhere between day 20 and day 59. Returns the data and each customer's purchase days.
    fn rhythms() -> (Transactions, Vec<Vec<u32>>) {
        let mut rows = Vec::new();
        let mut days_of = Vec::new();
        for c in 0..80u32 {
            let id = format!("c{c:02}");
            let last = if c % 2 == 0 { 20 + (c * 7) % 40 } else { 120 };
            let mut days = Vec::new();
            let mut day = c % 10;
            let mut k = 0;
            while day <= last {
                rows.push(row(&id, EventKind::Purchase, day));
                days.push(day);
                day += 4 + (c + k) % 13;
                k += 1;
            }
            days_of.push(days);
        }
        (transactions(rows), days_of)
    }

    #[test]
    fn metrics_and_the_baseline_are_in_range_on_varied_rhythms() {
        let (data, days_of) = rhythms();
        let (as_of, horizon) = (60, 30);
        let buyers = days_of.iter().filter(|d| d[0] < as_of).count();
        let churned = days_of
            .iter()
            .filter(|d| d[0] < as_of && !d.iter().any(|&p| (as_of..as_of + horizon).contains(&p)))
            .count();
        assert!(
            churned > 0 && churned < buyers,
            "the data holds both classes"
        );

        let report =
            evaluate_model(&data, &recency_model(), T0 + as_of * DAY, horizon, true).unwrap();
        let baseline = report.baseline.as_ref().expect("a baseline was asked for");
        assert_eq!(baseline.name, "bgnbd");
        for p in [
            baseline.params.r,
            baseline.params.alpha,
            baseline.params.a,
            baseline.params.b,
        ] {
            assert!(p.is_finite() && p > 0.0, "{:?}", baseline.params);
        }
        for (name, e) in [("model", &report.model), ("baseline", &baseline.metrics)] {
            assert_eq!(e.examples, buyers, "{name}");
            assert_eq!(e.positives, churned, "{name}");
            for (metric, v) in [
                ("roc_auc", e.roc_auc),
                ("average_precision", e.average_precision),
                ("brier_score", e.brier_score),
            ] {
                assert!((0.0..=1.0).contains(&v), "{name} {metric} {v}");
            }
            assert!(
                e.log_loss.is_finite() && e.log_loss >= 0.0,
                "{name} {}",
                e.log_loss
            );
            let max_lift = buyers as f64 / churned as f64;
            assert!(
                (0.0..=max_lift + 1e-12).contains(&e.top_decile_lift),
                "{name} lift {}",
                e.top_decile_lift
            );
            assert_eq!(
                e.calibration.iter().map(|b| b.count).sum::<usize>(),
                buyers,
                "{name}"
            );
            for b in &e.calibration {
                assert!(
                    b.lower <= b.mean_predicted && b.mean_predicted <= b.upper,
                    "{name} {b:?}"
                );
                assert!((0.0..=1.0).contains(&b.observed_rate), "{name} {b:?}");
            }
        }
        // Recency separates those who stopped from those who did not.
        assert!(report.model.roc_auc > 0.7, "{}", report.model.roc_auc);
        // Every order is worth 25: the textbook Gamma-Gamma has nothing to fit, and says so.
        assert!(report.value.as_ref().unwrap().textbook.is_none());
        assert!(
            report
                .baseline_errors
                .iter()
                .any(|e| e.starts_with("textbook BG/NBD x Gamma-Gamma: ")),
            "{:?}",
            report.baseline_errors
        );
    }

    fn evaluation(roc_auc: f64, positives: usize, calibration: Vec<CalibrationBin>) -> Evaluation {
        Evaluation {
            examples: 200,
            positives,
            roc_auc,
            average_precision: 0.5,
            log_loss: 0.625,
            brier_score: 0.125,
            top_decile_lift: 2.5,
            expected_calibration_error: expected_calibration_error(&calibration),
            calibration,
        }
    }

    fn bin(lower: f64, count: usize) -> CalibrationBin {
        CalibrationBin {
            lower,
            upper: lower + 0.1,
            count,
            mean_predicted: lower + 0.05,
            observed_rate: 0.25,
        }
    }

    #[test]
    fn the_text_report_has_the_table_header_and_a_line_per_model() {
        let mut report = EvaluationReport {
            model_version: "v7".into(),
            as_of: "1997-07-01T00:00:00Z".into(),
            horizon_days: 90,
            model_horizon_days: 90,
            model: evaluation(0.75, 50, vec![bin(0.0, 150), bin(0.5, 50)]),
            baseline: None,
            pareto_nbd: None,
            log_rfm: None,
            baseline_errors: vec![],
            value: None,
        };
        let text = render_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "model v7 as of 1997-07-01T00:00:00Z, horizon 90 days: 200 customers, 50 churned (25.0 %)"
        );
        assert!(!text.contains("note:"), "same horizon: no note\n{text}");
        let header = lines
            .iter()
            .find(|l| l.contains("ROC AUC"))
            .unwrap_or_else(|| panic!("no table header in\n{text}"));
        for column in ["avg prec", "log loss", "Brier", "top-10% lift"] {
            assert!(header.contains(column), "{column:?} missing in {header:?}");
        }
        let model_line = "model        0.7500     0.5000    0.6250   0.1250         2.50   0.2250";
        assert!(lines.contains(&model_line), "no model line in\n{text}");
        assert!(
            !text.contains("BG/NBD"),
            "no baseline was asked for\n{text}"
        );
        assert!(
            text.contains("  0.0-0.1:     150 customers, predicted 0.050, observed 0.250"),
            "{text}"
        );
        assert!(
            text.contains("  0.5-0.6:      50 customers, predicted 0.550, observed 0.250"),
            "{text}"
        );

        report.horizon_days = 60;
        report.baseline = Some(BaselineReport {
            name: "bgnbd".into(),
            params: BgNbd {
                r: 0.25,
                alpha: 4.5,
                a: 0.8,
                b: 2.5,
            },
            metrics: evaluation(0.6125, 50, vec![]),
        });
        let text = render_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("horizon 60 days"), "{}", lines[0]);
        assert!(
            lines.contains(&"note: the model was trained for a 90-day horizon"),
            "{text}"
        );
        let model_at = lines.iter().position(|l| *l == model_line).unwrap();
        assert_eq!(
            lines[model_at + 1],
            "BG/NBD       0.6125     0.5000    0.6250   0.1250         2.50   0.0000",
            "the baseline follows the model\n{text}"
        );
        assert!(
            text.contains(
                "BG/NBD fitted on the same customers: r 0.2500, alpha 4.5000, a 0.8000, b 2.5000 (days)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_text_report_of_a_real_evaluation_names_its_counts() {
        let report = evaluate_model(
            &hand_built(),
            &recency_model(),
            T0 + AS_OF_DAY * DAY,
            30,
            false,
        )
        .unwrap();
        let text = render_text(&report);
        assert!(
            text.starts_with(
                "model test-1 as of 1997-01-31T00:00:00Z, horizon 30 days: 5 customers, 3 churned (60.0 %)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("note: the model was trained for a 90-day horizon"),
            "{text}"
        );
        // ROC AUC 5/6 and average precision 2.75/3, as computed above.
        assert!(text.contains("\nmodel        0.8333     0.9167 "), "{text}");
    }
}
