//! Batch scoring: every customer of a transactions file as of a date, through the same
//! feature, model and classification code as the daemon, for backfills, audits and CRM
//! imports. Replaying the same events through the stream with the event-time clock gives the
//! same probabilities. The value estimates come from the same per-customer state
//! ([`CustomerHistory::of`]) the daemon keeps.

use std::io::Write;

use crate::classify::{LifecycleStage, RfmThresholds, Risk, RiskBands, Segment, StageBounds};
use crate::config::{SegmentMode, SegmentSettings, Settings};
use crate::features::store::CustomerStore;
use crate::features::{CustomerFeatures, Rfm};
use crate::model::value::{CustomerHistory, ValueEstimates};
use crate::model::{Model, ScoreReason};
use crate::time::{self, UnixSeconds};
use crate::transactions::Transactions;

/// Population thresholds need at least this many buyers to mean something (as in the daemon).
const MIN_POPULATION: usize = 30;

/// How customers are classified: the daemon's settings.
#[derive(Debug, Clone)]
pub struct Classification {
    pub stages: StageBounds,
    pub risk: RiskBands,
    pub segments: SegmentSettings,
    /// Reasons listed per customer.
    pub reasons: usize,
}

impl From<&Settings> for Classification {
    fn from(s: &Settings) -> Self {
        Self {
            stages: s.stages,
            risk: s.risk,
            segments: s.segments.clone(),
            reasons: s.winback.reasons,
        }
    }
}

/// One customer, scored as of the batch's date.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCustomer {
    pub customer_id: Box<str>,
    /// `None` for customers who have not bought yet (stage `potential`).
    pub churn_probability: Option<f64>,
    pub risk: Option<Risk>,
    pub lifecycle_stage: LifecycleStage,
    pub segment: Option<Segment>,
    pub reasons: Vec<ScoreReason>,
    /// `None` for customers who have not bought yet, and for every customer when the model
    /// has no value parameters (a format 1 file).
    pub value: Option<ValueEstimates>,
}

/// Every customer's features from the events strictly before `as_of`.
pub fn features_as_of(
    transactions: &Transactions,
    as_of: UnixSeconds,
) -> CustomerStore<CustomerFeatures> {
    let mut store: CustomerStore<CustomerFeatures> = CustomerStore::new();
    for t in transactions.rows.iter().take_while(|t| t.time < as_of) {
        let (idx, _) = store.find_or_insert(&t.customer_id);
        store.get_mut(idx).apply(&t.as_event());
    }
    store
}

/// Scores and classifies every customer seen before `as_of`, in order of first appearance.
pub fn score(
    transactions: &Transactions,
    as_of: UnixSeconds,
    model: &Model,
    classification: &Classification,
) -> Vec<ScoredCustomer> {
    let store = features_as_of(transactions, as_of);
    let thresholds = thresholds(&store, as_of, &classification.segments);
    store
        .iter()
        .map(|(idx, f)| {
            let purchases = f.first_purchase().zip(f.last_purchase());
            let score = f.vector(as_of).map(|x| model.score(&x));
            ScoredCustomer {
                customer_id: store.id(idx).into(),
                churn_probability: score.as_ref().map(|s| s.probability),
                risk: score
                    .as_ref()
                    .map(|s| classification.risk.risk(s.probability)),
                lifecycle_stage: classification.stages.stage(purchases, as_of),
                segment: f.rfm(as_of).map(|r| thresholds.segment(&r)),
                reasons: score
                    .map(|s| s.reasons(classification.reasons))
                    .unwrap_or_default(),
                value: model
                    .value()
                    .and_then(|v| v.estimate(&CustomerHistory::of(f, as_of)?, as_of)),
            }
        })
        .collect()
}

/// R/F/M thresholds: the configured ones, or under `segments.mode = population` the medians
/// of every buyer (the daemon uses a sample of them).
fn thresholds(
    store: &CustomerStore<CustomerFeatures>,
    as_of: UnixSeconds,
    segments: &SegmentSettings,
) -> RfmThresholds {
    if segments.mode == SegmentMode::Population {
        let mut rfm: Vec<Rfm> = store.iter().filter_map(|(_, f)| f.rfm(as_of)).collect();
        if rfm.len() >= MIN_POPULATION {
            if let Some(t) = RfmThresholds::medians(&mut rfm) {
                return t;
            }
        }
    }
    segments.fixed()
}

/// Columns of [`write_csv`].
pub(crate) const CSV_HEADER: [&str; 11] = [
    "customer_id",
    "churn_probability",
    "risk",
    "lifecycle_stage",
    "segment",
    "reasons",
    "p_alive",
    "expected_purchases_90d",
    "expected_spend_90d",
    "clv_365d",
    "next_purchase_at",
];

/// Writes scores as CSV ([`CSV_HEADER`]): customer_id, churn_probability (6 decimals), risk,
/// lifecycle_stage, segment, reasons (comma-separated `feature:high|low`), then the value
/// estimates: p_alive and expected_purchases_90d (6 decimals), expected_spend_90d and
/// clv_365d (in the data's currency, 2 decimals), next_purchase_at (RFC 3339, empty when the
/// customer is likely gone). Empty cells for non-buyers, empty value cells throughout when
/// the model has no value parameters, and for a customer whose estimates the value model
/// does not vouch for (`ValueModel::estimate`).
pub fn write_csv(out: impl Write, scores: &[ScoredCustomer]) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_HEADER)?;
    for s in scores {
        let reasons: Vec<String> = s.reasons.iter().map(ToString::to_string).collect();
        let value = |f: fn(&ValueEstimates) -> String| s.value.as_ref().map_or_else(String::new, f);
        w.write_record([
            &*s.customer_id,
            &s.churn_probability
                .map_or_else(String::new, |p| format!("{p:.6}")),
            s.risk.map_or("", Risk::as_str),
            s.lifecycle_stage.as_str(),
            s.segment.map_or("", Segment::as_str),
            &reasons.join(","),
            &value(|v| format!("{:.6}", v.p_alive)),
            &value(|v| format!("{:.6}", v.expected_purchases_90d)),
            &value(|v| format!("{:.2}", v.expected_spend_90d)),
            &value(|v| format!("{:.2}", v.clv_365d)),
            &value(|v| v.next_purchase_at.map_or_else(String::new, time::rfc3339)),
        ])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::model::tests::recency_only_model_file;
    use crate::transactions::Transaction;

    const DAY: u32 = 86_400;
    const T0: u32 = 852_076_800;

    fn row(customer: &str, kind: EventKind, day: u32) -> Transaction {
        Transaction {
            customer_id: customer.into(),
            kind,
            amount: if kind == EventKind::Visit { 0.0 } else { 20.0 },
            time: T0 + day * DAY,
        }
    }

    fn classification() -> Classification {
        Classification::from(&Settings::default())
    }

    #[test]
    fn only_events_before_the_date_count() {
        let data = Transactions {
            rows: vec![
                row("a", EventKind::Purchase, 0),
                row("b", EventKind::Visit, 5),
                row("a", EventKind::Purchase, 10),
                row("c", EventKind::Purchase, 30),
            ],
            bad_rows: vec![],
        };
        let store = features_as_of(&data, T0 + 10 * DAY);
        assert_eq!(
            store.len(),
            2,
            "c and a's second purchase lie on or after the date"
        );
        let a = store.get(store.find("a").unwrap());
        assert_eq!(a.last_purchase(), Some(T0));
    }

    #[test]
    fn every_customer_is_scored_and_classified() {
        let model = Model::from_file(&recency_only_model_file()).unwrap();
        let data = Transactions {
            rows: vec![
                row("recent", EventKind::Purchase, 0),
                row("lurker", EventKind::Visit, 1),
                row("old", EventKind::Purchase, 2),
                row("recent", EventKind::Purchase, 195),
            ],
            bad_rows: vec![],
        };
        let as_of = T0 + 200 * DAY;
        let scores = score(&data, as_of, &model, &classification());
        let ids: Vec<&str> = scores.iter().map(|s| &*s.customer_id).collect();
        assert_eq!(ids, ["recent", "lurker", "old"]);
        let (recent, lurker, old) = (&scores[0], &scores[1], &scores[2]);
        assert_eq!(recent.lifecycle_stage, LifecycleStage::Active);
        assert_eq!(old.lifecycle_stage, LifecycleStage::Sleeping);
        assert!(old.churn_probability > recent.churn_probability);
        assert_eq!(old.risk, Some(Risk::High));
        assert_eq!(lurker.lifecycle_stage, LifecycleStage::Potential);
        assert_eq!(lurker.churn_probability, None);
        assert_eq!(old.reasons[0].to_string(), "log_recency_days:high");

        let mut csv = Vec::new();
        write_csv(&mut csv, &scores).unwrap();
        let text = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "customer_id,churn_probability,risk,lifecycle_stage,segment,reasons,\
             p_alive,expected_purchases_90d,expected_spend_90d,clv_365d,next_purchase_at"
        );
        assert_eq!(lines[2], "lurker,,,potential,,,,,,,");
        let p = old.churn_probability.unwrap();
        assert!(
            lines[3].starts_with(&format!("old,{p:.6},high,sleeping,")),
            "{}",
            lines[3]
        );
        // The value cells: the estimates of the customer's state, one purchase on day 2.
        let v = old.value.expect("the test model has value parameters");
        assert_eq!(v.p_alive, 1.0, "one purchase: alive by BG/NBD's convention");
        assert!(
            lines[3].ends_with(&format!(
                ",1.000000,{:.6},{:.2},{:.2},",
                v.expected_purchases_90d, v.expected_spend_90d, v.clv_365d
            )),
            "{}",
            lines[3]
        );
        assert_eq!(lurker.value, None);
    }

    #[test]
    fn value_estimates_come_from_the_daemon_state() {
        let model = Model::from_file(&recency_only_model_file()).unwrap();
        let data = Transactions {
            rows: (0..12)
                .map(|k| {
                    let mut t = row("weekly", EventKind::Purchase, 7 * k);
                    t.amount = 10.0 + f64::from(k);
                    t
                })
                .collect(),
            bad_rows: vec![],
        };
        let as_of = T0 + 80 * DAY;
        let scores = score(&data, as_of, &model, &classification());
        let store = features_as_of(&data, as_of);
        let history = CustomerHistory::of(store.get(store.find("weekly").unwrap()), as_of);
        let want = model
            .value()
            .unwrap()
            .estimate(&history.unwrap(), as_of)
            .unwrap();
        assert_eq!(scores[0].value, Some(want));
        // A weekly buyer seen three days ago is due back within about a week.
        let next = want.next_purchase_at.expect("likely alive");
        assert!(
            next > as_of && next < as_of + 14 * DAY,
            "{}",
            time::rfc3339(next)
        );

        let mut csv = Vec::new();
        write_csv(&mut csv, &scores).unwrap();
        let text = String::from_utf8(csv).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.ends_with(&time::rfc3339(next)), "{line}");

        // A model without value parameters (format 1): the value cells stay empty.
        let old = crate::model::tests::format_1_model_file();
        let old = Model::from_file(&old).unwrap();
        let scores = score(&data, as_of, &old, &classification());
        assert_eq!(scores[0].value, None);
        let mut csv = Vec::new();
        write_csv(&mut csv, &scores).unwrap();
        let text = String::from_utf8(csv).unwrap();
        assert!(text.lines().nth(1).unwrap().ends_with(",,,,,"), "{text}");
    }
}
