//! The lift report from the aggregates: per kind × action × segment (and per kind, every
//! action and segment together) both groups' conversion and revenue, and treatment vs
//! control with 95 % intervals; as JSON (`--format json`, `GET /v1/lift`) and as a text
//! table for people.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::{self, Interval};
use super::{Aggregates, CellTotals, GroupTotals, SkipReason};
use crate::decide::TaskKind;

/// The version of the report's JSON: fields may be added within one version.
pub const REPORT_VERSION: u32 = 1;

/// The lift report. The same JSON from `churnd report lift --format json` and `/v1/lift`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub report_version: u32,
    /// The outcome stream read.
    pub stream: String,
    /// Records whose `closed_at` is in [since, until) count (RFC 3339; `null`: unbounded).
    pub since: Option<String>,
    pub until: Option<String>,
    pub records: Records,
    /// Per kind, every action and segment together.
    pub kinds: Vec<Row>,
    /// Per kind × action × segment.
    pub rows: Vec<Row>,
}

/// What became of the stream's entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Records {
    pub read: u64,
    pub used: u64,
    pub outside_window: u64,
    /// By reason: `malformed`, `unknown_schema`, `not_an_outcome`, `too_many_cells`.
    pub skipped: BTreeMap<&'static str, u64>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub kind: &'static str,
    /// The configured action, or `all` in [`Report::kinds`].
    pub action: String,
    /// The RFM segment, `none` (customers without one: prospects), or `all`.
    pub segment: String,
    pub treatment: GroupSummary,
    pub control: GroupSummary,
    /// Treatment minus control conversion rate (a fraction: 0.02 is 2 points), with
    /// Newcombe's 95 % interval; `null` when a group has no outcome (see `note`).
    pub conversion_lift: Option<Interval>,
    /// `conversion_lift` × treatment tasks: conversions the action added.
    pub incremental_conversions: Option<Interval>,
    /// Treatment minus control revenue per task, with Welch's 95 % interval; `null` unless
    /// both groups have two or more outcomes.
    pub revenue_per_task_lift: Option<Interval>,
    /// `revenue_per_task_lift` × treatment tasks: revenue the action added.
    pub incremental_revenue: Option<Interval>,
    /// Why a comparison is missing, in words; `null` when every one is there.
    pub note: Option<String>,
}

/// One group of a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupSummary {
    /// Outcome records: tasks whose conversion window closed or that converted.
    pub tasks: u64,
    pub conversions: u64,
    /// conversions / tasks; `null` without tasks.
    pub conversion_rate: Option<f64>,
    /// Revenue of the conversions, summed.
    pub revenue: f64,
    /// revenue / tasks (tasks that did not convert count with 0); `null` without tasks.
    pub revenue_per_task: Option<f64>,
    /// Sample variance of revenue per task; `null` with fewer than two tasks.
    pub revenue_per_task_variance: Option<f64>,
    /// Mean days from the task to the conversion; `null` without conversions.
    pub mean_days_to_convert: Option<f64>,
}

impl From<&GroupTotals> for GroupSummary {
    fn from(g: &GroupTotals) -> Self {
        let sample = g.revenue_sample();
        let some = g.tasks > 0;
        Self {
            tasks: g.tasks,
            conversions: g.conversions,
            conversion_rate: some.then(|| g.conversions as f64 / g.tasks as f64),
            revenue: g.revenue,
            revenue_per_task: some.then_some(sample.mean),
            revenue_per_task_variance: (g.tasks > 1).then_some(sample.variance),
            mean_days_to_convert: (g.conversions > 0)
                .then(|| g.days_to_convert / g.conversions as f64),
        }
    }
}

impl Row {
    fn new(kind: TaskKind, action: String, segment: String, totals: &CellTotals) -> Self {
        let (t, c) = (&totals.treatment, &totals.control);
        let mut row = Self {
            kind: kind.as_str(),
            action,
            segment,
            treatment: t.into(),
            control: c.into(),
            conversion_lift: None,
            incremental_conversions: None,
            revenue_per_task_lift: None,
            incremental_revenue: None,
            note: None,
        };
        let treated = t.tasks as f64;
        match (t.tasks, c.tasks) {
            (_, 0) => {
                row.note = Some(
                    "no control outcomes: lift cannot be measured (is this kind's holdout on?)"
                        .into(),
                )
            }
            (0, _) => row.note = Some("no treatment outcomes: lift cannot be measured".into()),
            _ => {
                let lift = stats::newcombe(t.conversions, t.tasks, c.conversions, c.tasks);
                row.conversion_lift = Some(lift);
                row.incremental_conversions = Some(lift.scaled(treated));
                match stats::welch(t.revenue_sample(), c.revenue_sample()) {
                    Some(revenue) => {
                        row.revenue_per_task_lift = Some(revenue);
                        row.incremental_revenue = Some(revenue.scaled(treated));
                    }
                    None => {
                        row.note =
                            Some("revenue lift needs two or more outcomes in each group".into())
                    }
                }
            }
        }
        row
    }
}

/// The report of `aggregates`, read from `stream`.
pub fn report(aggregates: &Aggregates, stream: &str) -> Report {
    let window = aggregates.window();
    let rfc3339 = |ms: u64| crate::time::rfc3339((ms / 1000) as crate::time::UnixSeconds);
    Report {
        report_version: REPORT_VERSION,
        stream: stream.into(),
        since: window.since_ms.map(rfc3339),
        until: window.until_ms.map(rfc3339),
        records: Records {
            read: aggregates.read,
            used: aggregates.used,
            outside_window: aggregates.outside_window,
            skipped: SkipReason::ALL
                .iter()
                .map(|r| (r.as_str(), aggregates.skipped.get(r).copied().unwrap_or(0)))
                .collect(),
        },
        kinds: aggregates
            .kinds()
            .values()
            .map(|(kind, totals)| Row::new(*kind, "all".into(), "all".into(), totals))
            .collect(),
        rows: aggregates
            .cells()
            .map(|(key, totals)| {
                Row::new(
                    key.kind,
                    key.action.to_string(),
                    key.segment_name().into(),
                    totals,
                )
            })
            .collect(),
    }
}

/// What the columns of the text table mean, printed under it.
const NOTES: [&str; 7] = [
    "treated, control: tasks whose outcome is known, in each group (control: held out, nobody acted).",
    "conv.: share of those customers who converted within the task's window.",
    "lift: treated minus control conversion, in percentage points, with its 95 % interval (Newcombe);",
    "  an interval that includes 0 is no measured effect yet, one above 0 is a measured gain.",
    "incr. conv.: conversions the action added (lift x treated), 95 % interval.",
    "rev/task: revenue per task, treated vs control; incr. revenue: revenue the action added",
    "  ((treated - control revenue per task) x treated), 95 % interval (Welch).",
];

/// The report as a table for people: counts, rates in per cent, lifts in percentage points
/// with their intervals, and what the columns mean.
pub fn render_text(report: &Report) -> String {
    let window = match (&report.since, &report.until) {
        (None, None) => "every outcome in the stream".to_string(),
        (Some(s), None) => format!("outcomes closed from {s}"),
        (None, Some(u)) => format!("outcomes closed before {u}"),
        (Some(s), Some(u)) => format!("outcomes closed from {s} to before {u}"),
    };
    let r = &report.records;
    let skipped: u64 = r.skipped.values().sum();
    let mut text = format!(
        "Lift report from {}: {window}\n{} records read: {} used, {} outside the window, {} skipped",
        report.stream, r.read, r.used, r.outside_window, skipped
    );
    if skipped > 0 {
        let reasons: Vec<String> = r
            .skipped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        text += &format!(" ({})", reasons.join(", "));
    }
    text += "\n\n";
    if report.rows.is_empty() {
        text += "No outcomes yet: a task's outcome is written when its conversion window closes or the customer converts.\n";
        return text;
    }
    text += "Per kind, all actions and segments together:\n";
    text += &table(&report.kinds);
    text += "\nPer kind, action and segment:\n";
    text += &table(&report.rows);
    text += "\n";
    for note in NOTES {
        text += note;
        text.push('\n');
    }
    text
}

fn table(rows: &[Row]) -> String {
    let header = [
        "kind",
        "action",
        "segment",
        "treated",
        "control",
        "treated conv.",
        "control conv.",
        "lift (95 % interval)",
        "incr. conv. (95 %)",
        "rev/task treated",
        "rev/task control",
        "incr. revenue (95 %)",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let (t, c) = (&row.treatment, &row.control);
        let mut line = vec![
            row.kind.to_string(),
            row.action.clone(),
            row.segment.clone(),
            t.tasks.to_string(),
            c.tasks.to_string(),
            percent(t.conversion_rate),
            percent(c.conversion_rate),
            interval(row.conversion_lift, |v| format!("{:+.1} pp", v * 100.0)),
            interval(row.incremental_conversions, |v| format!("{v:+.1}")),
            money(t.revenue_per_task),
            money(c.revenue_per_task),
            interval(row.incremental_revenue, |v| format!("{v:+.2}")),
        ];
        if let Some(note) = &row.note {
            line.push(format!("({note})"));
        }
        cells.push(line);
    }
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            cells
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in &cells {
        let padded: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        text += padded.join("  ").trim_end();
        text.push('\n');
    }
    text
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
}

fn money(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

fn interval(value: Option<Interval>, show: impl Fn(f64) -> String) -> String {
    value.map_or("-".into(), |i| {
        format!("{} ({} to {})", show(i.estimate), show(i.low), show(i.high))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{as_bytes, record};
    use super::super::Window;
    use super::*;

    /// Adds `converted` converting win-back coupon records for general_winback (each
    /// bringing `revenue`) and `total − converted` others, in `group`.
    fn add_coupons(a: &mut Aggregates, group: &str, (converted, total): (u32, u32), revenue: f64) {
        for i in 0..total {
            let converting = (i < converted).then_some(revenue);
            let r = record("winback", "coupon", "general_winback", group, converting);
            a.add_entry(as_bytes(&r)).unwrap();
        }
    }

    /// A hand-built outcome set: 56 of 70 treated and 48 of 80 control customers converted
    /// (Newcombe's example (a)), each conversion bringing 10 in the treatment group and 5
    /// in the control group; then 1 of 4 more treated customers converted, for 20.
    fn newcombe_example() -> Aggregates {
        let mut a = Aggregates::new(Window::default());
        add_coupons(&mut a, "treatment", (56, 70), 10.0);
        add_coupons(&mut a, "control", (48, 80), 5.0);
        add_coupons(&mut a, "treatment", (1, 4), 20.0);
        a
    }

    #[test]
    fn the_report_has_the_rates_lift_and_intervals_of_the_outcomes() {
        let mut a = newcombe_example();
        // A kind without a holdout: one birthday greeting, no control.
        let r = record("birthday", "birthday_greeting", "none", "treatment", None);
        a.add_entry(as_bytes(&r)).unwrap();
        let report = report(&a, "churn:outcomes");
        assert_eq!(report.rows.len(), 2);
        let row = &report.rows[0];
        assert_eq!((row.kind, row.action.as_str()), ("winback", "coupon"));
        assert_eq!(row.segment, "general_winback");
        // 57 of 74 treated (56/70 + 1/4), 48 of 80 control.
        assert_eq!((row.treatment.tasks, row.treatment.conversions), (74, 57));
        assert_eq!((row.control.tasks, row.control.conversions), (80, 48));
        assert_eq!(row.control.conversion_rate, Some(0.6));
        let lift = row.conversion_lift.unwrap();
        let want = stats::newcombe(57, 74, 48, 80);
        assert_eq!(lift, want);
        let incremental = row.incremental_conversions.unwrap();
        assert!((incremental.estimate - (57.0 / 74.0 - 0.6) * 74.0).abs() < 1e-9);
        assert!((incremental.low - want.low * 74.0).abs() < 1e-9);
        // Revenue per task: treated (560 + 20) / 74, control 240 / 80 = 3.
        assert_eq!(row.treatment.revenue, 580.0);
        assert_eq!(row.control.revenue_per_task, Some(3.0));
        let revenue = row.revenue_per_task_lift.unwrap();
        assert!((revenue.estimate - (580.0 / 74.0 - 3.0)).abs() < 1e-12);
        assert!(revenue.low < revenue.estimate && revenue.estimate < revenue.high);
        assert_eq!(row.note, None);
        // The birthday row has no control: it says so instead of a number.
        let birthday = &report.rows[1];
        assert_eq!(birthday.kind, "birthday");
        assert_eq!(birthday.segment, "none");
        assert_eq!(birthday.conversion_lift, None);
        assert_eq!(birthday.incremental_revenue, None);
        assert!(birthday
            .note
            .as_deref()
            .unwrap()
            .contains("no control outcomes"));
        // Per kind.
        assert_eq!(report.kinds.len(), 2);
        assert_eq!(report.kinds[0].action, "all");
        assert_eq!(report.kinds[0].treatment.tasks, 74);
        assert_eq!(report.records.read, 155);
        assert_eq!(report.records.skipped["malformed"], 0);
    }

    #[test]
    fn the_exact_newcombe_example_is_in_the_json() {
        let mut a = Aggregates::new(Window::default());
        add_coupons(&mut a, "treatment", (56, 70), 1.0);
        add_coupons(&mut a, "control", (48, 80), 1.0);
        let json = serde_json::to_value(report(&a, "s")).unwrap();
        let lift = &json["rows"][0]["conversion_lift"];
        let rounded = |v: &serde_json::Value| (v.as_f64().unwrap() * 10_000.0).round() / 10_000.0;
        assert_eq!(rounded(&lift["estimate"]), 0.2);
        assert_eq!(rounded(&lift["low"]), 0.0524);
        assert_eq!(rounded(&lift["high"]), 0.3339);
        assert_eq!(json["rows"][0]["treatment"]["conversion_rate"], 0.8);
        assert_eq!(json["rows"][0]["note"], serde_json::Value::Null);
        assert_eq!(json["report_version"], 1);
    }

    #[test]
    fn the_text_table_shows_rates_lifts_and_notes() {
        let text = render_text(&report(&newcombe_example(), "churn:outcomes"));
        assert!(text.starts_with("Lift report from churn:outcomes: every outcome in the stream\n154 records read: 154 used"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("winback  coupon"))
            .unwrap_or_else(|| panic!("no coupon row in\n{text}"));
        assert!(line.contains("77.0 %"), "{line}"); // 57 / 74
        assert!(line.contains("60.0 %"), "{line}");
        assert!(text.contains("lift (95 % interval)"));
        let empty = render_text(&report(&Aggregates::default(), "s"));
        assert!(empty.contains("No outcomes yet"), "{empty}");
    }
}
