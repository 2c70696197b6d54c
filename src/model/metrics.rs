//! How good a set of churn probabilities is against what happened: ranking (ROC AUC, average
//! precision, top-decile lift) and calibration (log loss, Brier score, calibration table).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub examples: usize,
    /// Examples labelled churned.
    pub positives: usize,
    pub roc_auc: f64,
    pub average_precision: f64,
    pub log_loss: f64,
    pub brier_score: f64,
    /// Churn rate among the 10 % highest scores divided by the overall churn rate.
    pub top_decile_lift: f64,
    /// Mean |predicted − observed| over ten equal-width bins, weighted by their examples.
    #[serde(default)]
    pub expected_calibration_error: f64,
    pub calibration: Vec<CalibrationBin>,
}

/// Examples whose probability fell in `[lower, upper)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

const CALIBRATION_BINS: usize = 10;

/// Evaluates probabilities of churn against labels (`true` = churned). `None` without both
/// classes, where ranking metrics are undefined.
pub fn evaluate(probabilities: &[f64], churned: &[bool]) -> Option<Evaluation> {
    assert_eq!(
        probabilities.len(),
        churned.len(),
        "one label per probability"
    );
    let n = probabilities.len();
    let positives = churned.iter().filter(|&&c| c).count();
    if positives == 0 || positives == n {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));

    let top = (n / 10).max(1);
    let top_rate = order[..top].iter().filter(|&&i| churned[i]).count() as f64 / top as f64;
    let base_rate = positives as f64 / n as f64;

    let eps = 1e-15;
    let log_loss = probabilities
        .iter()
        .zip(churned)
        .map(|(&p, &y)| {
            let p = p.clamp(eps, 1.0 - eps);
            -(if y { p.ln() } else { (1.0 - p).ln() })
        })
        .sum::<f64>()
        / n as f64;
    let calibration = calibration(probabilities, churned);
    let brier_score = probabilities
        .iter()
        .zip(churned)
        .map(|(&p, &y)| (p - f64::from(u8::from(y))).powi(2))
        .sum::<f64>()
        / n as f64;

    Some(Evaluation {
        examples: n,
        positives,
        roc_auc: roc_auc(probabilities, churned, &order, positives),
        average_precision: average_precision(churned, &order, positives),
        log_loss,
        brier_score,
        top_decile_lift: top_rate / base_rate,
        expected_calibration_error: expected_calibration_error(&calibration),
        calibration,
    })
}

/// Mann–Whitney U with average ranks for ties; `order` is by descending probability.
fn roc_auc(p: &[f64], y: &[bool], order: &[usize], positives: usize) -> f64 {
    let n = order.len();
    let negatives = n - positives;
    let mut rank_sum_pos = 0.0;
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && p[order[end]] == p[order[start]] {
            end += 1;
        }
        // Descending positions start..end hold ranks (ascending, 1-based) n-end+1 ..= n-start.
        let avg_rank = ((n - end + 1) + (n - start)) as f64 / 2.0;
        let tied_pos = order[start..end].iter().filter(|&&i| y[i]).count();
        rank_sum_pos += avg_rank * tied_pos as f64;
        start = end;
    }
    let u = rank_sum_pos - (positives * (positives + 1)) as f64 / 2.0;
    u / (positives as f64 * negatives as f64)
}

fn average_precision(y: &[bool], order: &[usize], positives: usize) -> f64 {
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (k, &i) in order.iter().enumerate() {
        if y[i] {
            hits += 1;
            sum += hits as f64 / (k + 1) as f64;
        }
    }
    sum / positives as f64
}

/// Ten equal-width bins of predicted probability, with the observed rate in each (empty bins
/// left out).
pub(crate) fn calibration(p: &[f64], y: &[bool]) -> Vec<CalibrationBin> {
    let mut count = [0usize; CALIBRATION_BINS];
    let mut sum_p = [0.0; CALIBRATION_BINS];
    let mut sum_y = [0.0; CALIBRATION_BINS];
    for (&pi, &yi) in p.iter().zip(y) {
        let b = ((pi * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        count[b] += 1;
        sum_p[b] += pi;
        sum_y[b] += f64::from(u8::from(yi));
    }
    (0..CALIBRATION_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| CalibrationBin {
            lower: b as f64 / CALIBRATION_BINS as f64,
            upper: (b + 1) as f64 / CALIBRATION_BINS as f64,
            count: count[b],
            mean_predicted: sum_p[b] / count[b] as f64,
            observed_rate: sum_y[b] / count[b] as f64,
        })
        .collect()
}

/// Expected calibration error of a calibration table: the mean over examples of
/// |mean predicted − observed rate| of their bin. 0 for an empty table.
pub fn expected_calibration_error(bins: &[CalibrationBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    bins.iter()
        .map(|b| b.count as f64 * (b.mean_predicted - b.observed_rate).abs())
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_ranking_has_auc_one_and_ap_one() {
        let e = evaluate(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]).unwrap();
        assert_eq!(e.roc_auc, 1.0);
        assert_eq!(e.average_precision, 1.0);
    }

    #[test]
    fn auc_counts_ties_as_half() {
        let e = evaluate(&[0.5, 0.5], &[true, false]).unwrap();
        assert_eq!(e.roc_auc, 0.5);
        // One inverted pair out of four.
        let e = evaluate(&[0.9, 0.3, 0.6, 0.1], &[true, true, false, false]).unwrap();
        assert_eq!(e.roc_auc, 0.75);
    }

    #[test]
    fn losses_match_hand_computation() {
        let e = evaluate(&[0.8, 0.4], &[true, false]).unwrap();
        assert!((e.brier_score - (0.04 + 0.16) / 2.0).abs() < 1e-12);
        assert!((e.log_loss - (-(0.8f64.ln()) - 0.6f64.ln()) / 2.0).abs() < 1e-12);
        assert_eq!(e.calibration.len(), 2);
        assert_eq!(e.calibration[1].observed_rate, 1.0);
    }

    #[test]
    fn average_precision_follows_the_ranking() {
        // Ranked: pos, neg, pos → (1/1 + 2/3) / 2.
        let e = evaluate(&[0.9, 0.5, 0.3], &[true, false, true]).unwrap();
        assert!((e.average_precision - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn one_class_only_has_no_evaluation() {
        assert!(evaluate(&[0.1, 0.2], &[true, true]).is_none());
    }

    #[test]
    fn expected_calibration_error_weights_bins_by_their_examples() {
        // Bin 0.1–0.2: three examples at 0.15, one churned; bin 0.8–0.9: one at 0.85, churned.
        let e = evaluate(&[0.15, 0.15, 0.15, 0.85], &[true, false, false, true]).unwrap();
        let want = (3.0 * (0.15f64 - 1.0 / 3.0).abs() + (0.85f64 - 1.0).abs()) / 4.0;
        let got = expected_calibration_error(&e.calibration);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(expected_calibration_error(&[]), 0.0);
    }
}
