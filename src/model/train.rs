//! Training a churn model with linfa-logistic on the same feature code the daemon serves.
//!
//! Examples are built the way a deployed model meets customers: at each cutoff date, the
//! features of every customer who has bought are computed only from events before the cutoff,
//! and the label is "no purchase within the horizon after it". Several cutoffs are stacked
//! (rolling origin). The latest cutoff is held out for validation, with a training set whose
//! labels were all known by then (when the data is long enough), beside the BG/NBD baseline
//! on the same customers; the shipped model is then refitted on every cutoff.
//!
//! The customer value model ([`super::value`]) is fitted beside it on every buyer's history
//! as of the end of the data, taken from the same per-customer state the daemon keeps.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::bgnbd::{BgNbd, RepeatSummary};
use super::derived::{self, InputVector, DERIVED_COUNT, INPUT_COUNT};
use super::evaluate::{bgnbd_baseline, BaselineReport};
use super::metrics::{evaluate, Evaluation};
use super::value::{self, CustomerHistory, ValueFitReport, ValueParams};
#[cfg(test)]
use super::Model;
use super::{FeatureParams, ModelFile, MODEL_FORMAT, MODEL_FORMAT_V1};
use crate::event::EventKind;
use crate::features::store::CustomerStore;
use crate::features::{CustomerFeatures, FeatureVector, FEATURE_COUNT};
use crate::time::{self, UnixSeconds};
use crate::transactions::Transactions;

/// Fewest examples a fit is attempted on.
pub(crate) const MIN_EXAMPLES: usize = 200;
/// Default spacing of rolling-origin cutoffs.
const CUTOFF_STEP_DAYS: u32 = 30;
/// History a cutoff needs before it, so that features describe some behaviour.
const MIN_HISTORY_DAYS: u32 = 30;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub horizon_days: u32,
    /// Explicit cutoffs; default: every 30 days back from the latest that fits the data.
    pub cutoffs: Option<Vec<UnixSeconds>>,
    /// L2 regularisation per example: the fit minimises the mean log loss plus
    /// `l2 / 2 · |w|²` over standardised features (linfa's `alpha` is `l2 × examples`).
    pub l2: f64,
    pub max_iterations: u64,
    /// Model version; default: derived from the name and the fitted coefficients.
    pub version: Option<String>,
    /// Names the data in the report, e.g. the file name.
    pub source: String,
    /// Used for the default version, e.g. the output file's stem.
    pub name: String,
    /// Discount rate per year of the value model's `clv_365d` (0: undiscounted).
    pub annual_discount_rate: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            horizon_days: 90,
            cutoffs: None,
            l2: 0.15,
            max_iterations: 500,
            version: None,
            source: String::new(),
            name: "churn".into(),
            annual_discount_rate: 0.0,
        }
    }
}

/// What training saw and how the model did on the held-out cutoff; stored in the model file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingReport {
    pub source: String,
    pub rows: usize,
    pub bad_rows: usize,
    pub customers: usize,
    pub first_event: String,
    pub last_event: String,
    pub horizon_days: u32,
    pub l2: f64,
    pub cutoffs: Vec<String>,
    /// Examples of the refit on all cutoffs, and their churn rate.
    pub examples: usize,
    pub churn_rate: f64,
    /// `None` when the data is too short to hold a cutoff out.
    pub validation: Option<ValidationReport>,
    /// What the value model was fitted on; `None` when it could not be (see `value_error`)
    /// and in reports of older files.
    #[serde(default)]
    pub value: Option<ValueFitReport>,
    /// Why the value model could not be fitted, when it could not: the file is then a format
    /// 1 file, a churn model without value estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The held-out cutoff.
    pub cutoff: String,
    /// Cutoffs trained on: those whose horizon ends by the held-out cutoff.
    pub trained_on: Vec<String>,
    pub training_examples: usize,
    pub metrics: Evaluation,
    /// BG/NBD fitted on the held-out customers' histories before the cutoff, on the same
    /// labels: the baseline the model has to beat.
    #[serde(default)]
    pub baseline: Option<BaselineReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the transactions hold no purchases")]
    NoPurchases,
    #[error("a horizon of {horizon_days} days does not fit the data (from {first} to just before {last}): no cutoff has {MIN_HISTORY_DAYS} days of history before it and a full horizon after it; use a shorter --horizon-days or more data")]
    HorizonDoesNotFit {
        horizon_days: u32,
        first: String,
        last: String,
    },
    #[error("cutoff {cutoff} does not fit the data (from {first} to just before {last}) with a horizon of {horizon_days} days: it needs history before it and a full horizon after it")]
    CutoffOutOfRange {
        cutoff: String,
        horizon_days: u32,
        first: String,
        last: String,
    },
    #[error(
        "{stage} has {found} examples, at least {MIN_EXAMPLES} are needed; add data or cutoffs"
    )]
    TooFewExamples { stage: &'static str, found: usize },
    #[error("{stage} examples are all of one class ({churn_rate:.0}% churned); the model cannot learn from them")]
    OneClass {
        stage: &'static str,
        churn_rate: f64,
    },
    #[error("fitting the logistic regression failed: {0}")]
    Fit(String),
}

/// One labelled example.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Example {
    pub cutoff: UnixSeconds,
    pub features: FeatureVector,
    /// The purchase history as BG/NBD sees it, for the baseline.
    pub history: RepeatSummary,
    /// The log-RFM baseline's inputs ([`LOG_RFM_NAMES`]).
    pub log_rfm: [f64; 4],
    /// The derived inputs ([`super::derived`]) under BG/NBD fitted at this example's cutoff
    /// (0 until [`add_derived_inputs`] sets them, or when that fit fails).
    pub derived: [f64; DERIVED_COUNT],
    pub churned: bool,
}

impl Example {
    /// The features followed by the derived inputs.
    pub(crate) fn inputs(&self) -> InputVector {
        let mut out = [0.0; INPUT_COUNT];
        out[..FEATURE_COUNT].copy_from_slice(&self.features);
        out[FEATURE_COUNT..].copy_from_slice(&self.derived);
        out
    }
}

/// Sets the derived inputs of every example: BG/NBD is fitted, per cutoff, on the histories
/// of that cutoff's customers as the model reads them back from their features (what the
/// value model is fitted on at the end of training). A cutoff where the fit fails keeps 0s.
pub(crate) fn add_derived_inputs(examples: &mut [Example], horizon_days: u32) {
    let mut cutoffs: Vec<UnixSeconds> = examples.iter().map(|e| e.cutoff).collect();
    cutoffs.sort_unstable();
    cutoffs.dedup();
    for cutoff in cutoffs {
        let summaries: Vec<RepeatSummary> = examples
            .iter()
            .filter(|e| e.cutoff == cutoff)
            .map(|e| derived::repeat_summary(&e.features))
            .collect();
        let bgnbd = match BgNbd::fit(&summaries) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(cutoff = %time::rfc3339(cutoff), error = %e, "no BG/NBD fit at this cutoff: its examples get no derived inputs");
                continue;
            }
        };
        let logit = derived::ChurnLogit::new(&bgnbd, f64::from(horizon_days));
        for e in examples.iter_mut().filter(|e| e.cutoff == cutoff) {
            e.derived = [logit.of(&e.features)];
        }
    }
}

/// The inputs of the log-RFM baseline regression, in the order of [`Example::log_rfm`].
pub(crate) const LOG_RFM_NAMES: [&str; 4] = [
    "ln(1 + recency days)",
    "ln(purchases)",
    "ln(1 + net spend)",
    "ln(1 + tenure days)",
];

#[derive(Default, Clone)]
struct History {
    features: CustomerFeatures,
    /// Purchase times, sorted, for labels.
    purchases: Vec<UnixSeconds>,
}

/// Features of every buyer as of each cutoff (from events strictly before it), labelled by
/// whether they bought within `horizon_days` from it.
pub(crate) fn build_examples(
    transactions: &Transactions,
    cutoffs: &[UnixSeconds],
    horizon_days: u32,
) -> Vec<Example> {
    let mut store: CustomerStore<History> = CustomerStore::new();
    for t in transactions
        .rows
        .iter()
        .filter(|t| t.kind == EventKind::Purchase)
    {
        let (idx, _) = store.find_or_insert(&t.customer_id);
        store.get_mut(idx).purchases.push(t.time);
    }
    let horizon = time::days(horizon_days);
    let mut cutoffs = cutoffs.to_vec();
    cutoffs.sort_unstable();
    let mut examples = Vec::new();
    let mut rows = transactions.rows.iter().peekable();
    for cutoff in cutoffs {
        while let Some(t) = rows.next_if(|t| t.time < cutoff) {
            let (idx, _) = store.find_or_insert(&t.customer_id);
            store.get_mut(idx).features.apply(&t.as_event());
        }
        for (_, h) in store.iter() {
            let (Some(features), Some(rfm)) = (h.features.vector(cutoff), h.features.rfm(cutoff))
            else {
                continue;
            };
            let next = h.purchases.partition_point(|&p| p < cutoff);
            let Some(history) = repeat_summary(&h.purchases[..next], cutoff) else {
                continue;
            };
            let bought = h
                .purchases
                .get(next)
                .is_some_and(|&p| p < cutoff.saturating_add(horizon));
            examples.push(Example {
                cutoff,
                features,
                history,
                log_rfm: [
                    rfm.recency_days.ln_1p(),
                    f64::from(rfm.purchases).ln(),
                    rfm.total_spend.ln_1p(),
                    rfm.tenure_days.ln_1p(),
                ],
                derived: [0.0; DERIVED_COUNT],
                churned: !bought,
            });
        }
    }
    examples
}

/// BG/NBD's summary of sorted purchase times before `cutoff`, counted in whole days as
/// BG/NBD is usually fitted: repeat purchase days, first to last purchase day, first
/// purchase day to the cutoff. `None` without purchases.
fn repeat_summary(purchases: &[UnixSeconds], cutoff: UnixSeconds) -> Option<RepeatSummary> {
    let day = |t: UnixSeconds| t / time::days(1);
    let first = day(*purchases.first()?);
    let last = day(*purchases.last()?);
    let repeat_days = purchases
        .windows(2)
        .filter(|w| day(w[0]) != day(w[1]))
        .count();
    Some(RepeatSummary {
        x: repeat_days as f64,
        t_x: f64::from(last - first),
        t: f64::from(cutoff) / time::SECONDS_PER_DAY - f64::from(first),
    })
}

/// The data's time span: first event, and the end of the last event's day.
pub(crate) fn data_span(transactions: &Transactions) -> Option<(UnixSeconds, UnixSeconds)> {
    let first = transactions.rows.first()?.time;
    let last = transactions.rows.last()?.time;
    let day = time::days(1);
    Some((first, (last / day).saturating_add(1).saturating_mul(day)))
}

/// Cutoffs every 30 days back from the latest one that leaves a full horizon of data.
pub(crate) fn default_cutoffs(
    first: UnixSeconds,
    end: UnixSeconds,
    horizon_days: u32,
) -> Vec<UnixSeconds> {
    let earliest = first.saturating_add(time::days(MIN_HISTORY_DAYS));
    let Some(latest) = end.checked_sub(time::days(horizon_days)) else {
        return Vec::new();
    };
    let day = time::days(1);
    let latest = latest / day * day;
    (0..)
        .map(|k: u32| latest.checked_sub(k * time::days(CUTOFF_STEP_DAYS)))
        .take_while(|c| c.is_some_and(|c| c >= earliest))
        .flatten()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Trains a model: validation on the latest cutoff, then the refit that is shipped.
pub fn train(transactions: &Transactions, options: &TrainOptions) -> Result<ModelFile, TrainError> {
    if !transactions
        .rows
        .iter()
        .any(|t| t.kind == EventKind::Purchase)
    {
        return Err(TrainError::NoPurchases);
    }
    let (first, end) = data_span(transactions).ok_or(TrainError::NoPurchases)?;
    let (first_s, last_s) = (time::rfc3339(first), time::rfc3339(end));
    let cutoffs = match &options.cutoffs {
        Some(explicit) => {
            for &c in explicit {
                if c <= first || c.saturating_add(time::days(options.horizon_days)) > end {
                    return Err(TrainError::CutoffOutOfRange {
                        cutoff: time::rfc3339(c),
                        horizon_days: options.horizon_days,
                        first: first_s,
                        last: last_s,
                    });
                }
            }
            let mut c = explicit.clone();
            c.sort_unstable();
            c.dedup();
            c
        }
        None => default_cutoffs(first, end, options.horizon_days),
    };
    if cutoffs.is_empty() {
        return Err(TrainError::HorizonDoesNotFit {
            horizon_days: options.horizon_days,
            first: first_s,
            last: last_s,
        });
    }
    let mut examples = build_examples(transactions, &cutoffs, options.horizon_days);
    add_derived_inputs(&mut examples, options.horizon_days);
    let validation = validate(&examples, &cutoffs, options)?;
    if validation.is_none() {
        tracing::warn!(
            "no cutoff's labels are known by the latest cutoff, so nothing is held out: validate the model with `churnd evaluate` on later data"
        );
    }

    let all_rows: Vec<&Example> = examples.iter().collect();
    let final_fit = fit(&all_rows, options, "the full training set")?;
    let version = options.version.clone().unwrap_or_else(|| {
        let digest = final_fit
            .coefficients
            .iter()
            .chain([&final_fit.intercept])
            .fold(0u64, |h, c| h.rotate_left(5) ^ c.to_bits());
        format!(
            "{}-h{}-{:08x}",
            options.name, options.horizon_days, digest as u32
        )
    });
    // The value model on every buyer's history at the end of the data, from the daemon's
    // per-customer state. Data it cannot be fitted on (e.g. every order at one price, which
    // leaves the spend model nothing to estimate) still gives a churn model, without values.
    let store = crate::batch::features_as_of(transactions, end);
    let histories: Vec<CustomerHistory> = store
        .iter()
        .filter_map(|(_, f)| CustomerHistory::of(f, end))
        .collect();
    let (value_params, value_report, value_error) = match value::fit(
        &histories,
        options.annual_discount_rate,
        end,
    ) {
        Ok((params, report)) => (Some(params), Some(report), None),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the value model could not be fitted: the model file carries no value parameters (format {MODEL_FORMAT_V1})"
            );
            (None, None, Some(e.to_string()))
        }
    };
    let mut file = model_file(&final_fit, options, &version, value_params);
    let customers = {
        let mut ids: Vec<&str> = transactions.rows.iter().map(|t| &*t.customer_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let report = TrainingReport {
        source: options.source.clone(),
        rows: transactions.rows.len(),
        bad_rows: transactions.bad_rows.len(),
        customers,
        first_event: time::rfc3339(first),
        last_event: transactions
            .rows
            .last()
            .map(|t| time::rfc3339(t.time))
            .unwrap_or_default(),
        horizon_days: options.horizon_days,
        l2: options.l2,
        cutoffs: cutoffs.iter().copied().map(time::rfc3339).collect(),
        examples: all_rows.len(),
        churn_rate: all_rows.iter().filter(|e| e.churned).count() as f64 / all_rows.len() as f64,
        validation,
        value: value_report,
        value_error,
    };
    file.training = serde_json::to_value(report).map_err(|e| TrainError::Fit(e.to_string()))?;
    Ok(file)
}

/// Fits on the cutoffs whose labels were known by the latest one and measures the fit there,
/// beside the BG/NBD baseline. `None` when no cutoff's horizon ends by the latest one.
fn validate(
    examples: &[Example],
    cutoffs: &[UnixSeconds],
    options: &TrainOptions,
) -> Result<Option<ValidationReport>, TrainError> {
    let Some(&holdout) = cutoffs.last() else {
        return Ok(None);
    };
    let horizon = time::days(options.horizon_days);
    let known_by_holdout = |c: UnixSeconds| c.saturating_add(horizon) <= holdout;
    let train_rows: Vec<&Example> = examples
        .iter()
        .filter(|e| known_by_holdout(e.cutoff))
        .collect();
    if train_rows.is_empty() {
        return Ok(None);
    }
    let holdout_rows: Vec<&Example> = examples.iter().filter(|e| e.cutoff == holdout).collect();
    let trained_on: Vec<String> = cutoffs
        .iter()
        .copied()
        .filter(|&c| known_by_holdout(c))
        .map(time::rfc3339)
        .collect();

    let fitted = fit(&train_rows, options, "the validation training set")?;
    // The derived inputs of the held-out rows come from BG/NBD fitted at the held-out cutoff,
    // as a model trained then would have them from its value model.
    let probabilities: Vec<f64> = holdout_rows
        .iter()
        .map(|e| fitted.probability(&e.inputs()))
        .collect();
    let labels: Vec<bool> = holdout_rows.iter().map(|e| e.churned).collect();
    let metrics = evaluate(&probabilities, &labels).ok_or(TrainError::OneClass {
        stage: "the held-out cutoff",
        churn_rate: 100.0 * labels.iter().filter(|&&c| c).count() as f64
            / labels.len().max(1) as f64,
    })?;
    let baseline = match bgnbd_baseline(&holdout_rows, options.horizon_days) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no BG/NBD baseline for the held-out cutoff");
            None
        }
    };
    Ok(Some(ValidationReport {
        cutoff: time::rfc3339(holdout),
        trained_on,
        training_examples: train_rows.len(),
        metrics,
        baseline,
    }))
}

/// Standardisation and fitted coefficients (of the churn model: the features in
/// [`FEATURE_NAMES`] order, then the derived inputs).
pub(crate) struct Fitted<const N: usize = INPUT_COUNT> {
    pub mean: [f64; N],
    pub scale: [f64; N],
    pub coefficients: [f64; N],
    pub intercept: f64,
}

impl<const N: usize> Fitted<N> {
    /// P(churned) of one row of inputs.
    pub(crate) fn probability(&self, x: &[f64; N]) -> f64 {
        let logit = (0..N).fold(self.intercept, |z, i| {
            z + self.coefficients[i] * (x[i] - self.mean[i]) / self.scale[i]
        });
        super::sigmoid(logit)
    }
}

/// The file of a fitted churn model; without value parameters (the transient model of the
/// validation, which only scores churn) it is a format 1 file.
fn model_file(
    f: &Fitted,
    options: &TrainOptions,
    version: &str,
    value: Option<ValueParams>,
) -> ModelFile {
    ModelFile {
        format: if value.is_some() {
            MODEL_FORMAT
        } else {
            MODEL_FORMAT_V1
        }
        .into(),
        version: version.into(),
        horizon_days: options.horizon_days,
        // The derived inputs need the value model's BG/NBD: without it (a format 1 file) they
        // are left out, and their coefficients with them.
        features: (0..if value.is_some() {
            INPUT_COUNT
        } else {
            FEATURE_COUNT
        })
            .map(|i| FeatureParams {
                name: derived::input_name(i).into(),
                mean: f.mean[i],
                scale: f.scale[i],
                coefficient: f.coefficients[i],
            })
            .collect(),
        intercept: f.intercept,
        value,
        training: serde_json::Value::Null,
    }
}

fn fit(
    rows: &[&Example],
    options: &TrainOptions,
    stage: &'static str,
) -> Result<Fitted, TrainError> {
    let data: Vec<(InputVector, bool)> = rows.iter().map(|e| (e.inputs(), e.churned)).collect();
    fit_logistic(&data, options.l2, options.max_iterations, stage)
}

/// A logistic regression on standardised inputs, fitted with linfa-logistic: the churn model
/// on [`FEATURE_NAMES`], and the log-RFM baseline on its four inputs.
pub(crate) fn fit_logistic<const N: usize>(
    rows: &[([f64; N], bool)],
    l2: f64,
    max_iterations: u64,
    stage: &'static str,
) -> Result<Fitted<N>, TrainError> {
    if rows.len() < MIN_EXAMPLES {
        return Err(TrainError::TooFewExamples {
            stage,
            found: rows.len(),
        });
    }
    let churned = rows.iter().filter(|(_, c)| *c).count();
    if churned == 0 || churned == rows.len() {
        return Err(TrainError::OneClass {
            stage,
            churn_rate: 100.0 * churned as f64 / rows.len() as f64,
        });
    }
    let n = rows.len() as f64;
    let mut mean = [0.0; N];
    for (x, _) in rows {
        for (m, x) in mean.iter_mut().zip(x) {
            *m += x / n;
        }
    }
    let mut scale = [0.0; N];
    for (x, _) in rows {
        for ((v, x), m) in scale.iter_mut().zip(x).zip(&mean) {
            *v += (x - m).powi(2) / n;
        }
    }
    // A constant feature (e.g. complaints in purchase-only data) keeps scale 1: it
    // standardises to 0 and its coefficient stays at 0 under regularisation.
    let scale = scale.map(|v| if v > 1e-24 { v.sqrt() } else { 1.0 });

    let x = Array2::from_shape_fn((rows.len(), N), |(r, i)| {
        (rows[r].0[i] - mean[i]) / scale[i]
    });
    let y: Array1<bool> = rows.iter().map(|(_, c)| *c).collect();
    let fitted = LogisticRegression::default()
        .alpha(l2 * n)
        .max_iterations(max_iterations)
        .fit(&Dataset::new(x, y))
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    // linfa's "positive" class is whichever label it met first, not `true`: orient the
    // coefficients so that the model gives P(churned).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let mut coefficients = [0.0; N];
    for (c, p) in coefficients.iter_mut().zip(fitted.params()) {
        *c = sign * p;
    }
    Ok(Fitted {
        mean,
        scale,
        coefficients,
        intercept: sign * fitted.intercept(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transactions::Transaction;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800;

    fn purchase(id: &str, day: u32) -> Transaction {
        Transaction {
            customer_id: id.into(),
            kind: EventKind::Purchase,
            amount: 10.0,
            time: T0 + day * DAY,
        }
    }

    #[test]
    fn examples_use_only_the_past_and_label_the_horizon() {
        let tx = Transactions {
            rows: vec![
                purchase("a", 0),
                purchase("b", 5),
                purchase("a", 50),
                purchase("b", 200),
            ],
            bad_rows: vec![],
        };
        let ex = build_examples(&tx, &[T0 + 10 * DAY], 90);
        assert_eq!(ex.len(), 2);
        // a bought on day 50 (inside the horizon), b only on day 200.
        let mut labels: Vec<bool> = ex.iter().map(|e| e.churned).collect();
        labels.sort();
        assert_eq!(labels, vec![false, true]);
        // Features at day 10 know only the first purchase of each.
        assert!(
            ex.iter().all(|e| e.features[3] == 0.0),
            "nobody is a repeat buyer yet"
        );
    }

    #[test]
    fn default_cutoffs_leave_history_and_a_full_horizon() {
        let cutoffs = default_cutoffs(T0, T0 + 273 * DAY, 90);
        assert_eq!(cutoffs.last(), Some(&(T0 + 183 * DAY)));
        assert!(cutoffs.first().unwrap() >= &(T0 + 30 * DAY));
        assert!(cutoffs.windows(2).all(|w| w[1] - w[0] == 30 * DAY));
        assert!(default_cutoffs(T0, T0 + 60 * DAY, 90).is_empty());
    }

    #[test]
    fn a_horizon_longer_than_the_data_is_refused() {
        let tx = Transactions {
            rows: vec![purchase("a", 0), purchase("a", 20)],
            bad_rows: vec![],
        };
        let options = TrainOptions {
            horizon_days: 365,
            ..TrainOptions::default()
        };
        let err = train(&tx, &options).unwrap_err();
        assert!(matches!(err, TrainError::HorizonDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn learns_that_long_silence_means_churn() {
        // Synthetic: half the customers buy every 20 days throughout, half stop after day 40.
        let mut rows = Vec::new();
        for c in 0..400 {
            let id = format!("c{c}");
            let stops = c % 2 == 0;
            let last = if stops { 40 } else { 360 };
            let mut day = c % 20;
            while day <= last {
                rows.push(purchase(&id, day));
                day += 20;
            }
        }
        rows.sort_by_key(|t| t.time);
        let tx = Transactions {
            rows,
            bad_rows: vec![],
        };
        let options = TrainOptions {
            source: "synthetic".into(),
            ..TrainOptions::default()
        };
        let file = train(&tx, &options).unwrap();
        let model = Model::from_file(&file).unwrap();
        let report: TrainingReport = serde_json::from_value(file.training.clone()).unwrap();
        assert!(
            report.validation.as_ref().unwrap().metrics.roc_auc > 0.9,
            "{:?}",
            report.validation
        );
        // Same rhythm, one silent for 160 days: the silent one must score higher.
        let features_at = |last_day: u32| {
            let mut f = CustomerFeatures::default();
            for day in (0..=last_day).step_by(20) {
                f.apply(&purchase("x", day).as_event());
            }
            f.vector(T0 + 200 * DAY).unwrap()
        };
        let silent = model.probability(&features_at(40));
        let regular = model.probability(&features_at(200));
        assert!(
            silent > 0.8 && regular < 0.2,
            "silent {silent}, regular {regular}"
        );
        assert!(model.version().starts_with("churn-h90-"));
        // Every order is worth 10: the spend model has nothing to estimate, so the file is a
        // churn model without value parameters, and says why.
        assert!(model.value().is_none() && file.value.is_none());
        assert_eq!(file.format, MODEL_FORMAT_V1);
        let why = report.value_error.as_deref().unwrap_or_default();
        assert!(why.contains("Gamma-Gamma"), "{why:?}");
    }

    #[test]
    fn the_value_model_is_fitted_beside_the_churn_model() {
        // 400 customers buying every 10 to 50 days at varied prices, some stopping early.
        let mut rows = Vec::new();
        for c in 0..400u32 {
            let id = format!("c{c}");
            let gap = 10 + c % 41;
            let last = if c % 3 == 0 { 60 + c % 90 } else { 360 };
            let mut day = c % 30;
            let mut k = 0;
            while day <= last {
                let mut t = purchase(&id, day);
                t.amount = 5.0 + f64::from((c * 7 + k * 13) % 60);
                rows.push(t);
                day += gap + (k * 7) % 11;
                k += 1;
            }
        }
        rows.sort_by_key(|t| t.time);
        let tx = Transactions {
            rows,
            bad_rows: vec![],
        };
        let options = TrainOptions {
            annual_discount_rate: 0.1,
            ..TrainOptions::default()
        };
        let file = train(&tx, &options).unwrap();
        assert_eq!(file.format, MODEL_FORMAT);
        let model = Model::from_file(&file).unwrap();
        let value = model.value().expect("a value model");
        assert_eq!(value.params().annual_discount_rate, 0.1);
        let report: TrainingReport = serde_json::from_value(file.training.clone()).unwrap();
        let fit = report.value.expect("what the value model saw");
        assert_eq!(fit.customers, 400);
        assert_eq!(fit.repeat_buyers, 400);
        assert_eq!(fit.spend_customers, 400);
        assert_eq!(fit.as_of, time::rfc3339(data_span(&tx).unwrap().1));
        assert!(report.value_error.is_none());
        // Orders average 34.5 here; the spend model's population mean must be near it.
        let mean = fit.population_mean_order_value;
        assert!((25.0..45.0).contains(&mean), "{mean}");
        // And the file round-trips through JSON to the same model.
        let text = serde_json::to_string(&file).unwrap();
        let again = Model::from_json(&text, std::path::Path::new("m.json")).unwrap();
        assert_eq!(again, model);
    }
}
