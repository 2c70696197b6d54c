//! The published CDNOW fits reproduced from the shipped data.
//!
//! Fader, Hardie & Lee fitted BG/NBD ("Counting your customers the easy way", 2005) and
//! Gamma-Gamma ("RFM and CLV", 2005) on a 1/10 sample of the CDNOW cohort: 2,357 customers,
//! purchases from 1997-01-01 to 1997-09-30 (39 weeks), several orders on one day merged into
//! one, x = repeat purchase days, t_x and T in weeks, T up to 1997-09-30, and the mean value
//! of the *repeat* orders. lifetimes ships that summary and checks its fitters against the
//! published parameters. `testdata/cdnow_sample_ids.txt` lists the sample's customers (their
//! IDs in the full data, from the sample's event log); the shipped
//! `data/cdnow/transactions_1997-01_to_1997-09.csv` holds every one of their purchases, so
//! the published summary can be rebuilt here and both fits checked end to end.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{BgNbd, GammaGamma, SpendSummary};
use crate::event::EventKind;
use crate::model::bgnbd::RepeatSummary;
use crate::time;
use crate::transactions::Transactions;

const IDS: &str = include_str!("testdata/cdnow_sample_ids.txt");

/// Per sample customer: purchase amounts by day (days since the epoch), up to 1997-09-30.
fn sample_days() -> HashMap<String, BTreeMap<u32, f64>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/cdnow/transactions_1997-01_to_1997-09.csv");
    let data = Transactions::read(&path).expect("the shipped CDNOW data");
    let ids: std::collections::HashSet<&str> = IDS.lines().collect();
    assert_eq!(ids.len(), 2357, "the sample's customers");
    let end = time::parse_date_or_datetime("1997-10-01").unwrap();
    let mut days: HashMap<String, BTreeMap<u32, f64>> = HashMap::new();
    for t in &data.rows {
        if t.kind == EventKind::Purchase && t.time < end && ids.contains(&*t.customer_id) {
            *days
                .entry(t.customer_id.to_string())
                .or_default()
                .entry(t.time / time::DAY)
                .or_default() += t.amount;
        }
    }
    assert_eq!(days.len(), 2357, "every sample customer bought in the data");
    days
}

/// FHL's summary of one customer, in weeks: (x, t_x, T) and the mean repeat order value.
fn fhl_summary(days: &BTreeMap<u32, f64>) -> (RepeatSummary, f64) {
    let last_day = time::parse_date_or_datetime("1997-09-30").unwrap() / time::DAY;
    let first = *days.keys().next().unwrap();
    let last = *days.keys().next_back().unwrap();
    let x = days.len() - 1;
    let repeat_spend: f64 = days.values().skip(1).sum();
    let weeks = |d: u32| f64::from(d) / 7.0;
    (
        RepeatSummary {
            x: x as f64,
            t_x: weeks(last - first),
            t: weeks(last_day - first),
        },
        if x > 0 { repeat_spend / x as f64 } else { 0.0 },
    )
}

#[test]
fn the_published_cdnow_bgnbd_and_gamma_gamma_fits_are_reproduced() {
    let days = sample_days();
    let summaries: HashMap<&str, (RepeatSummary, f64)> = days
        .iter()
        .map(|(id, d)| (id.as_str(), fhl_summary(d)))
        .collect();
    // lifetimes' cdnow_customers_summary_with_transactions.csv, customer 1 (ID 00004):
    // x 2, t_x 30.43, T 38.86, mean repeat order value 22.35.
    let (s, m) = summaries["00004"];
    assert_eq!(s.x, 2.0);
    assert!(
        (s.t_x - 30.43).abs() < 0.005 && (s.t - 38.86).abs() < 0.005,
        "{s:?}"
    );
    assert!((m - 22.35).abs() < 0.006, "{m}");

    let repeat: Vec<RepeatSummary> = summaries.values().map(|(s, _)| *s).collect();
    let bgnbd = BgNbd::fit(&repeat).unwrap();
    // FHL 2005 / lifetimes' test_params_out_is_close_to_Hardie_paper: to three decimals.
    for (name, got, want) in [
        ("r", bgnbd.r, 0.243),
        ("alpha", bgnbd.alpha, 4.414),
        ("a", bgnbd.a, 0.793),
        ("b", bgnbd.b, 2.426),
    ] {
        assert!(
            (got - want).abs() < 1.5e-3,
            "{name}: fitted {got}, published {want}"
        );
    }

    let spend: Vec<SpendSummary> = summaries
        .values()
        .filter(|(s, _)| s.x > 0.0)
        .map(|(s, m)| SpendSummary {
            orders: s.x,
            mean: *m,
        })
        .collect();
    assert_eq!(
        spend.len(),
        946,
        "FHL fit Gamma-Gamma on the 946 repeat buyers"
    );
    let gg = GammaGamma::fit(&spend).unwrap();
    // FHL 2005 (RFM and CLV) / lifetimes: p 6.25, q 3.74, γ 15.44, to two decimals.
    for (name, got, want) in [
        ("p", gg.p, 6.25),
        ("q", gg.q, 3.74),
        ("gamma", gg.gamma, 15.44),
    ] {
        assert!(
            (got - want).abs() < 0.015,
            "{name}: fitted {got}, published {want}"
        );
    }
}

#[test]
fn the_published_cdnow_pareto_nbd_fit_is_reproduced() {
    let repeat: Vec<RepeatSummary> = sample_days().values().map(|d| fhl_summary(d).0).collect();
    let fit = crate::model::pareto_nbd::ParetoNbd::fit(&repeat).unwrap();
    // Fader, Hardie & Lee (2005, "A note on implementing the Pareto/NBD model in MATLAB" and
    // lifetimes' ParetoNBDFitter on the same summary): r 0.55, α 10.58, s 0.61, β 11.67 weeks.
    for (name, got, want) in [
        ("r", fit.r, 0.553),
        ("alpha", fit.alpha, 10.58),
        ("s", fit.s, 0.606),
        ("beta", fit.beta, 11.67),
    ] {
        assert!(
            (got - want).abs() < 0.01 * want.max(1.0),
            "{name}: fitted {got}, published {want}"
        );
    }
}
