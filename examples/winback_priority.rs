//! How well a win-back priority ranks who buys again, on a transactions file, with rolling
//! origins: at each origin a model is trained on the data before it (`churnd train --until`),
//! every customer is scored as `churnd score --as-of` the origin would, and the customers the
//! default win-back policy would task there (churn probability at their segment's threshold,
//! at least `min_silence_days` since their last purchase) are ranked by each candidate
//! priority against "bought again within the horizon after the origin" (ROC AUC).
//!
//! ```sh
//! cargo run --release --example winback_priority -- \
//!     data/cdnow/transactions_1997-01_to_1997-09.csv 1997-05-01,1997-06-01,1997-07-01
//! ```
//!
//! Every origin's horizon must end by the last day of the file: nothing after it is read.

use std::collections::HashMap;
use std::path::Path;

use churnd::batch::{self, Classification};
use churnd::config::Settings;
use churnd::event::EventKind;
use churnd::model::metrics;
use churnd::model::train::{self, TrainOptions};
use churnd::model::Model;
use churnd::time::{self, UnixSeconds};
use churnd::transactions::Transactions;

const HORIZON_DAYS: u32 = 90;

/// A tasked customer at an origin: what each candidate priority reads, and the outcome.
struct Candidate {
    p: f64,
    monetary_365d: f64,
    clv_365d: f64,
    expected_spend_90d: f64,
    bought_again: bool,
}

type Priority = (&'static str, fn(&Candidate) -> f64);

const PRIORITIES: [Priority; 6] = [
    ("p × monetary_365d (format 1, today)", |c| {
        c.p * c.monetary_365d
    }),
    ("monetary_365d", |c| c.monetary_365d),
    ("p", |c| c.p),
    ("clv_365d × p (value at stake)", |c| c.clv_365d * c.p),
    ("clv_365d", |c| c.clv_365d),
    ("expected_spend_90d", |c| c.expected_spend_90d),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, origins] = args.as_slice() else {
        return Err("usage: winback_priority <transactions.csv> <YYYY-MM-DD,...>".into());
    };
    let all = Transactions::read(Path::new(path))?;
    let end = all.rows.last().ok_or("no transactions")?.time;
    let settings = Settings::default();
    let classification = Classification::from(&settings);
    let winback = &settings.winback;
    let mut pooled: Vec<Candidate> = Vec::new();
    for origin in origins.split(',') {
        let as_of = time::parse_date_or_datetime(origin).ok_or("origins are YYYY-MM-DD")?;
        let horizon_end = as_of + time::days(HORIZON_DAYS);
        if horizon_end > end {
            return Err(
                format!("{origin}: its {HORIZON_DAYS}-day horizon ends after the data").into(),
            );
        }
        let mut before = Transactions {
            rows: all.rows.clone(),
            bad_rows: Vec::new(),
        };
        before.truncate_at(as_of);
        let file = train::train(
            &before,
            &TrainOptions {
                name: format!("until-{origin}"),
                ..TrainOptions::default()
            },
        )?;
        let model = Model::from_file(&file).map_err(|p| p.join("; "))?;
        let store = batch::features_as_of(&all, as_of);
        let bought_again = buyers_between(&all, as_of, horizon_end);
        let mut here = Vec::new();
        for s in batch::score(&all, as_of, &model, &classification) {
            let (Some(p), Some(segment), Some(value)) = (s.churn_probability, s.segment, s.value)
            else {
                continue;
            };
            let f = store.get(store.find(&s.customer_id).ok_or("scored, so stored")?);
            let rfm = f.rfm(as_of).ok_or("scored, so a buyer")?;
            let threshold = *winback
                .segment_thresholds
                .get(&segment)
                .unwrap_or(&winback.threshold);
            if p < threshold || rfm.recency_days < f64::from(winback.min_silence_days) {
                continue;
            }
            here.push(Candidate {
                p,
                monetary_365d: rfm.monetary_365d,
                clv_365d: value.clv_365d,
                expected_spend_90d: value.expected_spend_90d,
                bought_again: bought_again.contains_key(&*s.customer_id),
            });
        }
        report(&format!("origin {origin}"), &here);
        pooled.extend(here);
    }
    report("pooled", &pooled);
    Ok(())
}

/// Customers with a purchase in `[from, to)`.
fn buyers_between(t: &Transactions, from: UnixSeconds, to: UnixSeconds) -> HashMap<Box<str>, ()> {
    t.rows
        .iter()
        .filter(|r| r.kind == EventKind::Purchase && (from..to).contains(&r.time))
        .map(|r| (r.customer_id.clone(), ()))
        .collect()
}

fn report(name: &str, candidates: &[Candidate]) {
    let returned: Vec<bool> = candidates.iter().map(|c| c.bought_again).collect();
    let back = returned.iter().filter(|&&b| b).count();
    println!(
        "{name}: {} tasked customers, {back} bought again within {HORIZON_DAYS} days",
        candidates.len()
    );
    for (label, priority) in PRIORITIES {
        let scores: Vec<f64> = candidates.iter().map(priority).collect();
        // `evaluate` ranks scores against its labels: "bought again" is the positive class.
        let auc = metrics::evaluate(&scores, &returned).map_or(f64::NAN, |e| e.roc_auc);
        println!("  AUC {auc:.3}  {label}");
    }
}
