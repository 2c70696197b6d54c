//! The value model's part of `churnd evaluate`: its forecast of the held-out window per
//! customer, beside the naive forecast, the two-part spend and, with `--baseline`, BG/NBD ×
//! Gamma-Gamma as published ([`textbook`]), fitted on the same customers' whole histories.

use std::fmt::Write;

use crate::event::EventKind;
use crate::model::bgnbd::BgNbd;
use crate::model::value::forecast::{self, Outcome, TextbookOutcome, ValueForecast};
use crate::model::value::textbook::{self, DailyTransactions, TextbookParams};
use crate::model::value::{CustomerHistory, ValueModel};
use crate::model::Model;
use crate::time::{self, UnixSeconds};
use crate::transactions::Transactions;

/// The value model's forecast for every buyer before `as_of` (the customers the churn
/// metrics count), from the daemon's state as of then, against their purchases and net spend
/// in the `horizon_days` from it; beside it the two-part spend with `churn`'s P(a purchase),
/// when `churn` predicts that horizon, and with `textbook_bgnbd` (BG/NBD fitted on the
/// customers' transaction days, the churn baseline's) the textbook spend baseline. Returns
/// why that baseline could not be fitted, if it could not.
pub(crate) fn value_forecast(
    transactions: &Transactions,
    churn: &Model,
    value: &ValueModel,
    as_of: UnixSeconds,
    horizon_days: u32,
    textbook_bgnbd: Option<BgNbd>,
) -> (Option<ValueForecast>, Option<String>) {
    let store = crate::batch::features_as_of(transactions, as_of);
    let mut daily = vec![DailyTransactions::default(); store.len()];
    let mut purchases = vec![0.0; store.len()];
    let mut spend = vec![0.0; store.len()];
    let end = as_of.saturating_add(time::days(horizon_days));
    for t in transactions.rows.iter().take_while(|t| t.time < end) {
        let Some(idx) = store.find(&t.customer_id) else {
            continue;
        };
        let slot = idx as usize;
        match (t.kind, t.time < as_of) {
            (EventKind::Purchase, true) => daily[slot].add(t.time, t.amount),
            (EventKind::Purchase, false) => {
                purchases[slot] += 1.0;
                spend[slot] += t.amount;
            }
            (EventKind::Refund, false) => spend[slot] -= t.amount,
            _ => {}
        }
    }
    let summaries: Vec<_> = daily.iter().map(|d| d.summary(as_of)).collect();
    let (params, error) = match textbook_bgnbd {
        None => (None, None),
        Some(bgnbd) => {
            let spend: Vec<_> = summaries.iter().flatten().map(|(_, s)| *s).collect();
            match textbook::fit_gamma_gamma(&spend) {
                Ok(gamma_gamma) => (Some(TextbookParams { bgnbd, gamma_gamma }), None),
                Err(e) => (None, Some(format!("textbook BG/NBD x Gamma-Gamma: {e}"))),
            }
        }
    };
    let horizon = f64::from(horizon_days);
    let outcomes: Vec<Outcome> = store
        .iter()
        .filter_map(|(idx, f)| {
            let h = CustomerHistory::of(f, as_of)?;
            let slot = idx as usize;
            let churn_view = (churn.horizon_days() == horizon_days)
                .then(|| f.vector(as_of))
                .flatten()
                .map(|x| {
                    (
                        1.0 - churn.probability(&x),
                        forecast::recent_mean_order_value(&x),
                    )
                });
            let mut o = Outcome::forecast(
                value,
                &h,
                horizon,
                purchases[slot],
                spend[slot],
                churn_view.map(|(p_buy, _)| p_buy),
            );
            o.pooled_spend = churn_view
                .map(|(p_buy, recent)| forecast::pooled_spend(value, &h, horizon, p_buy, recent));
            o.textbook = params
                .zip(summaries[slot])
                .map(|(p, (repeat, spend))| TextbookOutcome {
                    spend: p.expected_spend(&repeat, &spend, horizon),
                    p_no_purchase: p.bgnbd.p_no_purchase(&repeat, horizon),
                });
            Some(o)
        })
        .collect();
    (forecast::report(&outcomes, horizon_days, params), error)
}

pub(super) fn render_value(s: &mut String, v: &ValueForecast) {
    let _ = writeln!(
        s,
        "\nvalue model forecast of the {} days, {} customers:",
        v.horizon_days, v.customers
    );
    let _ = writeln!(
        s,
        "{:<22} {:>8} {:>8} {:>15} {:>12}",
        "", "MAE", "RMSE", "mean forecast", "mean actual"
    );
    for (name, e) in [
        ("purchases", &v.purchases),
        ("spend", &v.spend),
        ("purchases (naive)", &v.naive_purchases),
        ("spend (naive)", &v.naive_spend),
    ]
    .into_iter()
    .chain(v.two_part_spend.as_ref().map(|e| ("spend (two-part)", e)))
    .chain(v.pooled_spend.as_ref().map(|e| ("spend (pooled)", e)))
    .chain(v.textbook.as_ref().map(|t| ("spend (textbook)", &t.spend)))
    {
        let _ = writeln!(
            s,
            "{:<22} {:>8.4} {:>8.4} {:>15.4} {:>12.4}",
            name, e.mae, e.rmse, e.mean_predicted, e.mean_actual
        );
    }
    let _ = writeln!(
        s,
        "share of the window's spend by the top 10 % by expected spend: {:.3} (naive {:.3}, perfect ranking {:.3})",
        v.top_decile_spend_share, v.naive_top_decile_spend_share, v.top_decile_spend_share_ceiling
    );
    if let Some(share) = v.two_part_top_decile_spend_share {
        let _ = writeln!(
            s,
            "two-part spend (the churn model's P(purchase) x the value model's spend given one): top 10 % share {share:.3}"
        );
    }
    if let Some(share) = v.pooled_top_decile_spend_share {
        let _ = writeln!(
            s,
            "pooled spend (P(purchase) pooled from the churn and value models x spend given one, at the recent mean order value): top 10 % share {share:.3}"
        );
    }
    if let Some(t) = &v.textbook {
        let (b, g) = (&t.params.bgnbd, &t.params.gamma_gamma);
        let _ = writeln!(
            s,
            "textbook BG/NBD x Gamma-Gamma (orders of a day merged, Gamma-Gamma on repeat transactions; BG/NBD r {:.4}, alpha {:.4}, a {:.4}, b {:.4}; Gamma-Gamma p {:.4}, q {:.4}, gamma {:.4}): top 10 % share {:.3}",
            b.r, b.alpha, b.a, b.b, g.p, g.q, g.gamma, t.top_decile_spend_share
        );
        let c = &t.p_alive_churn;
        let _ = writeln!(
            s,
            "textbook p_alive-based churn: expected calibration error {:.4}, Brier {:.4}, mean predicted {:.3}, observed {:.3}",
            c.expected_calibration_error, c.brier_score, c.mean_predicted, c.observed_rate
        );
    }
    let c = &v.p_alive_churn;
    let _ = writeln!(
        s,
        "p_alive-based churn, 1 - p_alive * P(purchase | alive): expected calibration error {:.4}, Brier {:.4}, mean predicted {:.3}, observed {:.3}",
        c.expected_calibration_error, c.brier_score, c.mean_predicted, c.observed_rate
    );
    for bin in &c.bins {
        let _ = writeln!(
            s,
            "  {:.1}-{:.1}: {:>7} customers, predicted {:.3}, observed {:.3}",
            bin.lower, bin.upper, bin.count, bin.mean_predicted, bin.observed_rate
        );
    }
}
