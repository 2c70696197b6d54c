//! The lift of the tasks over their control groups, from the outcome records the daemon has
//! read (`src/daemon/lift.rs`): gauges of churnd's own aggregates, so that a dashboard
//! shows the lift right after a restart (the aggregates are rebuilt from the stream) and
//! needs no `increase()` over a month of samples.
//!
//! Labels: `kind`, `segment` (or `none`) and `group` are closed sets; `action` is a
//! configured action name. The cells are bounded by [`crate::lift::MAX_CELLS`].

use prometheus::{GaugeVec, IntCounter, IntGaugeVec};

use super::{PerLabel, Registrar};
use crate::lift::report::{Report, Row};
use crate::lift::SkipReason;

const CELL: &[&str] = &["kind", "action", "segment"];
const CELL_GROUP: &[&str] = &["kind", "action", "segment", "group"];

#[derive(Clone)]
pub struct LiftMetrics {
    outcomes: IntGaugeVec,
    conversions: IntGaugeVec,
    conversion_rate: GaugeVec,
    revenue_per_task: GaugeVec,
    absolute: GaugeVec,
    absolute_low: GaugeVec,
    absolute_high: GaugeVec,
    kind_absolute: GaugeVec,
    kind_absolute_low: GaugeVec,
    kind_absolute_high: GaugeVec,
    pub read: IntCounter,
    pub skipped: PerLabel<SkipReason, IntCounter>,
}

impl LiftMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        let skipped = r.counter_vec(
            "churnd_lift_outcomes_skipped_total",
            "Entries of the outcome stream not counted in the lift, by reason (malformed, unknown_schema, not_an_outcome, too_many_cells).",
            &["reason"],
        );
        Self {
            outcomes: r.gauge_vec(
                "churnd_lift_outcomes",
                "Tasks whose outcome is known (their conversion window closed, or they converted), per kind, action, segment and group, from the outcome stream.",
                CELL_GROUP,
            ),
            conversions: r.gauge_vec(
                "churnd_lift_conversions",
                "Tasks whose customer converted within the window, per kind, action, segment and group.",
                CELL_GROUP,
            ),
            conversion_rate: r.float_gauge_vec(
                "churnd_lift_conversion_rate",
                "Conversions per task whose outcome is known (0 to 1), per kind, action, segment and group.",
                CELL_GROUP,
            ),
            revenue_per_task: r.float_gauge_vec(
                "churnd_lift_revenue_per_task",
                "Revenue of the conversions per task whose outcome is known, per kind, action, segment and group.",
                CELL_GROUP,
            ),
            absolute: r.float_gauge_vec(
                "churnd_lift_absolute",
                "Treatment minus control conversion rate (a fraction), per kind, action and segment; absent until both groups have an outcome.",
                CELL,
            ),
            absolute_low: r.float_gauge_vec(
                "churnd_lift_absolute_low",
                "Lower bound of the 95 % interval (Newcombe) of churnd_lift_absolute.",
                CELL,
            ),
            absolute_high: r.float_gauge_vec(
                "churnd_lift_absolute_high",
                "Upper bound of the 95 % interval (Newcombe) of churnd_lift_absolute.",
                CELL,
            ),
            kind_absolute: r.float_gauge_vec(
                "churnd_lift_kind_absolute",
                "Treatment minus control conversion rate per kind, every action and segment together; absent until both groups have an outcome.",
                &["kind"],
            ),
            kind_absolute_low: r.float_gauge_vec(
                "churnd_lift_kind_absolute_low",
                "Lower bound of the 95 % interval (Newcombe) of churnd_lift_kind_absolute.",
                &["kind"],
            ),
            kind_absolute_high: r.float_gauge_vec(
                "churnd_lift_kind_absolute_high",
                "Upper bound of the 95 % interval (Newcombe) of churnd_lift_kind_absolute.",
                &["kind"],
            ),
            read: r.counter(
                "churnd_lift_outcomes_read_total",
                "Entries of the outcome stream read since start (the stream is read from its beginning at every start).",
            ),
            skipped: PerLabel::new(&skipped),
        }
    }

    /// Sets every gauge to the report's figures. Cells only ever gain outcomes, so a series
    /// once set stays meaningful; a lift whose comparison is missing is left absent rather
    /// than shown as 0.
    pub fn publish(&self, report: &Report) {
        for row in &report.rows {
            let cell = [row.kind, row.action.as_str(), row.segment.as_str()];
            for (group, summary) in [("treatment", &row.treatment), ("control", &row.control)] {
                let labels = [cell[0], cell[1], cell[2], group];
                self.outcomes
                    .with_label_values(&labels)
                    .set(summary.tasks as i64);
                self.conversions
                    .with_label_values(&labels)
                    .set(summary.conversions as i64);
                if let Some(rate) = summary.conversion_rate {
                    self.conversion_rate.with_label_values(&labels).set(rate);
                }
                if let Some(revenue) = summary.revenue_per_task {
                    self.revenue_per_task
                        .with_label_values(&labels)
                        .set(revenue);
                }
            }
            set_lift(
                row,
                &cell,
                [&self.absolute, &self.absolute_low, &self.absolute_high],
            );
        }
        for row in &report.kinds {
            set_lift(
                row,
                &[row.kind],
                [
                    &self.kind_absolute,
                    &self.kind_absolute_low,
                    &self.kind_absolute_high,
                ],
            );
        }
    }
}

fn set_lift(row: &Row, labels: &[&str], [estimate, low, high]: [&GaugeVec; 3]) {
    if let Some(lift) = row.conversion_lift {
        estimate.with_label_values(labels).set(lift.estimate);
        low.with_label_values(labels).set(lift.low);
        high.with_label_values(labels).set(lift.high);
    }
}
