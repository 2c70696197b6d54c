//! The model life cycle through the built binary: `churnd train`, `churnd evaluate` and
//! `churnd score` on a generated transactions file, their output and their errors. No Redis.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use churnd::features::{FEATURE_COUNT, FEATURE_NAMES};
use churnd::model::derived::DERIVED_NAMES;
use churnd::model::evaluate::EvaluationReport;
use churnd::model::Model;
use churnd::time;

use crate::helpers::churnd;

const DAY: u32 = 86_400;
/// 1997-01-01T00:00:00Z: day 0 of the generated data.
const T0: u32 = 852_076_800;
/// The last day of the generated data: 1997-09-30.
const LAST_DAY: u32 = 272;
const CUSTOMERS: usize = 300;
const HEADER: &str = "customer_id,date,quantity,amount";

/// One purchase of the generated file.
#[derive(Debug, Clone)]
struct Row {
    customer: String,
    day: u32,
    quantity: u32,
    cents: u32,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{},{},{},{}.{:02}",
            self.customer,
            date(self.day),
            self.quantity,
            self.cents / 100,
            self.cents % 100
        )
    }
}

/// `YYYY-MM-DD` of a day of the generated data.
fn date(day: u32) -> String {
    time::rfc3339(T0 + day * DAY)[..10].to_owned()
}

/// Day number of a `YYYY-MM-DD` date.
fn day_of(date: &str) -> u32 {
    (time::parse_date_or_datetime(date).unwrap() - T0) / DAY
}

/// 300 customers over nine months from a fixed seed: first purchases spread over the first
/// four months, each with their own rhythm (gaps of 1 day to 3 months), about half of them
/// dropping out somewhere along the way. In time order, ties by customer.
fn generate() -> Vec<Row> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(n)) as u32
    };
    let mut rows = Vec::new();
    for c in 0..CUSTOMERS {
        let customer = format!("c{c:04}");
        let mut day = next(120);
        let gap = 3 + next(45);
        let stop = if next(2) == 0 {
            day + 20 + next(200)
        } else {
            LAST_DAY
        };
        while day <= stop.min(LAST_DAY) {
            let quantity = 1 + next(4);
            let cents = 500 + next(20_000);
            rows.push(Row {
                customer: customer.clone(),
                day,
                quantity,
                cents,
            });
            day += 1 + next(2 * gap);
        }
    }
    rows.sort_by(|a, b| (a.day, &a.customer).cmp(&(b.day, &b.customer)));
    rows
}

fn csv_text(rows: &[Row]) -> String {
    let mut text = format!("{HEADER}\n");
    for r in rows {
        text.push_str(&r.line());
        text.push('\n');
    }
    text
}

/// Customers with a purchase before `day`, in order of first purchase.
fn customers_before(rows: &[Row], day: u32) -> Vec<String> {
    let mut seen = HashSet::new();
    rows.iter()
        .filter(|r| r.day < day)
        .filter(|r| seen.insert(r.customer.clone()))
        .map(|r| r.customer.clone())
        .collect()
}

/// (customers who bought before `day`, those of them who did not buy in the `horizon` days
/// from it).
fn labels(rows: &[Row], day: u32, horizon: u32) -> (usize, usize) {
    let buyers = customers_before(rows, day);
    let bought_again: HashSet<&str> = rows
        .iter()
        .filter(|r| (day..day + horizon).contains(&r.day))
        .map(|r| r.customer.as_str())
        .collect();
    let churned = buyers
        .iter()
        .filter(|c| !bought_again.contains(c.as_str()))
        .count();
    (buyers.len(), churned)
}

/// A temp dir holding the generated transactions file.
struct Fixture {
    dir: tempfile::TempDir,
    rows: Vec<Row>,
    transactions: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rows = generate();
        let transactions = dir.path().join("transactions.csv");
        std::fs::write(&transactions, csv_text(&rows)).unwrap();
        Self {
            dir,
            rows,
            transactions,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Trains on the data before `until` (90-day horizon) and returns the model's path.
    fn train_until(&self, until: &str, name: &str) -> PathBuf {
        let model = self.path(name);
        let run = run(churnd()
            .arg("train")
            .arg("--transactions")
            .arg(&self.transactions)
            .arg("--out")
            .arg(&model)
            .args(["--until", until]));
        run.assert_success();
        model
    }
}

/// What a run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts exit code 1 with nothing on stdout and an error line holding every needle.
    fn assert_fails_with(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(1), "stderr:\n{}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout:\n{}", self.stdout);
        assert!(self.stderr.starts_with("churnd: "), "{}", self.stderr);
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{needle:?} missing in:\n{}",
                self.stderr
            );
        }
    }
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("churnd runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

fn train(transactions: &Path, out: &Path) -> Command {
    let mut cmd = churnd();
    cmd.arg("train")
        .arg("--transactions")
        .arg(transactions)
        .arg("--out")
        .arg(out);
    cmd
}

fn evaluate(transactions: &Path, model: &Path, as_of: &str) -> Command {
    let mut cmd = churnd();
    cmd.arg("evaluate")
        .arg("--transactions")
        .arg(transactions)
        .arg("--model")
        .arg(model)
        .args(["--as-of", as_of]);
    cmd
}

fn score(transactions: &Path, model: &Path, as_of: &str, out: &Path) -> Command {
    let mut cmd = churnd();
    cmd.arg("score")
        .arg("--transactions")
        .arg(transactions)
        .arg("--model")
        .arg(model)
        .args(["--as-of", as_of])
        .arg("--out")
        .arg(out);
    cmd
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------
// train

#[test]
fn train_writes_a_complete_model_and_reports_what_it_saw() {
    let f = Fixture::new();
    let out = f.path("weekly.json");
    let run = run(&mut train(&f.transactions, &out));
    run.assert_success();

    let json = read_json(&out);
    let version = json["version"].as_str().unwrap();
    assert!(version.starts_with("weekly-h90-"), "{version}");
    assert!(
        run.stdout
            .starts_with(&format!("model {version} written to {}", out.display())),
        "{}",
        run.stdout
    );
    assert_eq!(json["format"], "churnd-logistic/3");
    // The value model's parameters, and what they were fitted on.
    let value = &json["value"];
    for key in [
        "bgnbd.r",
        "bgnbd.alpha",
        "bgnbd.a",
        "bgnbd.b",
        "gamma_gamma.p",
        "gamma_gamma.q",
        "gamma_gamma.gamma",
    ] {
        let (section, name) = key.split_once('.').unwrap();
        let v = value[section][name]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {value}"));
        assert!(v.is_finite() && v > 0.0, "{key} {v}");
    }
    assert!(value["gamma_gamma"]["q"].as_f64().unwrap() > 1.0);
    assert_eq!(value["annual_discount_rate"], 0.0);
    assert_eq!(json["training"]["value"]["customers"], CUSTOMERS);
    assert_eq!(json["training"]["value"]["as_of"], "1997-10-01T00:00:00Z");
    assert!(
        run.stdout
            .contains("  value model on 300 customers as of 1997-10-01T00:00:00Z"),
        "{}",
        run.stdout
    );
    assert_eq!(json["horizon_days"], 90);
    let features = json["features"].as_array().unwrap();
    assert_eq!(features.len(), FEATURE_COUNT + DERIVED_NAMES.len());
    let names: Vec<&str> = features
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [&FEATURE_NAMES[..], &DERIVED_NAMES[..]].concat());
    for p in features {
        let value = |key: &str| p[key].as_f64().unwrap_or_else(|| panic!("{key} of {p}"));
        assert!(
            value("mean").is_finite() && value("coefficient").is_finite(),
            "{p}"
        );
        assert!(value("scale") > 0.0, "{p}");
    }
    assert!(json["intercept"].as_f64().unwrap().is_finite());
    let model = Model::load(&out).expect("the daemon can load what train writes");
    assert_eq!(model.version(), version);

    let training = &json["training"];
    assert_eq!(training["source"], "transactions.csv");
    assert_eq!(training["rows"], f.rows.len());
    assert_eq!(training["bad_rows"], 0);
    assert_eq!(training["customers"], CUSTOMERS);
    assert_eq!(training["first_event"], "1997-01-01T00:00:00Z");
    assert_eq!(training["last_event"], "1997-09-30T00:00:00Z");
    assert_eq!(training["horizon_days"], 90);
    // Every 30 days back from the last date that leaves 90 days of data (day 273 - 90).
    let cutoffs: Vec<u32> = training["cutoffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| day_of(c.as_str().unwrap()))
        .collect();
    assert_eq!(cutoffs, [33, 63, 93, 123, 153, 183]);
    let expected_examples: usize = cutoffs
        .iter()
        .map(|&c| customers_before(&f.rows, c).len())
        .sum();
    assert_eq!(training["examples"], expected_examples);
    let churn_rate = training["churn_rate"].as_f64().unwrap();
    assert!(churn_rate > 0.0 && churn_rate < 1.0, "{churn_rate}");
    let validation = &training["validation"];
    assert_eq!(validation["cutoff"], "1997-07-03T00:00:00Z");
    let auc = validation["metrics"]["roc_auc"].as_f64().unwrap();
    assert!(auc > 0.7, "the model learns who drops out: {auc}");
    assert!(
        validation["baseline"]["metrics"]["roc_auc"].is_f64(),
        "{validation}"
    );

    assert!(
        run.stdout.contains(&format!(
            "data: {} rows, {CUSTOMERS} customers, 1997-01-01T00:00:00Z to 1997-09-30T00:00:00Z; {expected_examples} examples over 6 cutoffs",
            f.rows.len()
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("validation at 1997-07-03T00:00:00Z"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("    model:  ROC AUC 0."),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("    BG/NBD: ROC AUC 0."),
        "{}",
        run.stdout
    );
}

#[test]
fn train_takes_version_and_horizon_from_the_command_line() {
    let f = Fixture::new();
    let out = f.path("m.json");
    let run = run(train(&f.transactions, &out).args([
        "--version",
        "churn-2024-q1",
        "--horizon-days",
        "60",
    ]));
    run.assert_success();
    assert!(
        run.stdout.starts_with("model churn-2024-q1 written to "),
        "{}",
        run.stdout
    );
    let json = read_json(&out);
    assert_eq!(json["version"], "churn-2024-q1");
    assert_eq!(json["horizon_days"], 60);
    assert_eq!(json["training"]["horizon_days"], 60);
}

#[test]
fn train_skips_bad_rows_naming_their_lines_and_count() {
    let f = Fixture::new();
    let lines: Vec<String> = f.rows.iter().map(Row::line).collect();
    // Header on line 1, four good rows on lines 2 to 5, the bad ones on lines 6, 7 and 8.
    let mut text = format!("{HEADER}\n");
    for l in &lines[..4] {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("x1,1997-02-30,1,10.00\n");
    text.push_str("x2,1997-02-03,1,-5\n");
    text.push_str("x3,1997-02-04\n");
    for l in &lines[4..] {
        text.push_str(l);
        text.push('\n');
    }
    let input = f.path("with-bad-rows.csv");
    std::fs::write(&input, text).unwrap();
    let out = f.path("m.json");

    let run = run(&mut train(&input, &out));
    run.assert_success();
    let shown = input.display();
    for needle in [
        format!("{shown}:6: skipped: date \"1997-02-30\""),
        format!("{shown}:7: skipped: amount \"-5\" must be between 0 and"),
        format!("{shown}:8: skipped: amount is missing (required for purchase)"),
        format!("3 bad rows skipped, {} rows read", f.rows.len()),
    ] {
        assert!(
            run.stderr.contains(&needle),
            "{needle:?} missing in:\n{}",
            run.stderr
        );
    }
    let training = &read_json(&out)["training"];
    assert_eq!(training["bad_rows"], 3);
    assert_eq!(training["rows"], f.rows.len());
    assert_eq!(
        training["customers"], CUSTOMERS,
        "x1, x2, x3 are not customers"
    );
}

#[test]
fn only_the_first_ten_bad_rows_are_listed() {
    let f = Fixture::new();
    let mut text = csv_text(&f.rows);
    for i in 0..12 {
        text.push_str(&format!("bad{i},not-a-date,1,1.00\n"));
    }
    let input = f.path("many-bad-rows.csv");
    std::fs::write(&input, text).unwrap();
    let run = run(&mut train(&input, &f.path("m.json")));
    run.assert_success();
    let listed = run
        .stderr
        .lines()
        .filter(|l| l.contains(": skipped: "))
        .count();
    assert_eq!(listed, 10, "{}", run.stderr);
    // The last listed is the tenth bad row, after the header and the good rows.
    let tenth = f.rows.len() + 1 + 10;
    assert!(
        run.stderr
            .contains(&format!("{}:{tenth}: skipped:", input.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("12 bad rows skipped, {} rows read", f.rows.len())),
        "{}",
        run.stderr
    );
}

#[test]
fn train_fails_on_a_missing_file_naming_it() {
    let f = Fixture::new();
    let missing = f.path("no-such-file.csv");
    let out = f.path("m.json");
    run(&mut train(&missing, &out)).assert_fails_with(&[
        "cannot read transactions file",
        &missing.display().to_string(),
    ]);
    assert!(!out.exists(), "no model is written");
}

#[test]
fn train_fails_on_a_file_without_a_date_column_naming_it() {
    let f = Fixture::new();
    let input = f.path("no-date.csv");
    std::fs::write(&input, "customer_id,when,amount\nc1,1997-01-01,3.00\n").unwrap();
    run(&mut train(&input, &f.path("m.json"))).assert_fails_with(&[
        &input.display().to_string(),
        "no \"date\" column",
        "header: customer_id,when,amount",
    ]);
}

#[test]
fn train_refuses_a_horizon_the_data_cannot_hold() {
    let f = Fixture::new();
    let out = f.path("m.json");
    run(train(&f.transactions, &out).args(["--horizon-days", "400"])).assert_fails_with(&[
        "a horizon of 400 days does not fit the data",
        "1997-01-01T00:00:00Z",
        "use a shorter --horizon-days",
    ]);
    assert!(!out.exists(), "no model is written");
}

#[test]
fn train_refuses_a_cutoff_outside_the_data() {
    let f = Fixture::new();
    run(train(&f.transactions, &f.path("m.json")).args(["--cutoffs", "1997-05-01,1997-09-01"]))
        .assert_fails_with(&[
            "cutoff 1997-09-01T00:00:00Z does not fit the data",
            "horizon of 90 days",
        ]);
    run(train(&f.transactions, &f.path("m.json")).args(["--cutoffs", "1997-05-01,May"]))
        .assert_fails_with(&["--cutoffs", "\"May\" is not a date"]);
}

#[test]
fn train_until_uses_only_the_data_before_the_date() {
    let f = Fixture::new();
    let until = day_of("1997-07-01");
    let model = f.train_until("1997-07-01", "until.json");
    let training = &read_json(&model)["training"];
    let before: Vec<&Row> = f.rows.iter().filter(|r| r.day < until).collect();
    assert!(before.len() < f.rows.len());
    assert_eq!(training["rows"], before.len());
    assert_eq!(
        training["customers"],
        customers_before(&f.rows, until).len()
    );
    let last = before.iter().map(|r| r.day).max().unwrap();
    assert_eq!(
        training["last_event"],
        format!("{}T00:00:00Z", date(last)),
        "the last event before --until"
    );
    // Every label is known before the date: each cutoff's horizon ends by the end of the
    // last day of data.
    let cutoffs = training["cutoffs"].as_array().unwrap();
    assert!(!cutoffs.is_empty());
    for c in cutoffs {
        let c = day_of(c.as_str().unwrap());
        assert!(c + 90 <= last + 1, "cutoff day {c} looks past --until");
    }
    let expected_examples: usize = cutoffs
        .iter()
        .map(|c| customers_before(&f.rows, day_of(c.as_str().unwrap())).len())
        .sum();
    assert_eq!(training["examples"], expected_examples);

    run(train(&f.transactions, &f.path("m.json")).args(["--until", "1997-13-01"]))
        .assert_fails_with(&["--until", "\"1997-13-01\" is not a date"]);
}

// ---------------------------------------------------------------------------------------
// evaluate

/// The five numbers of a table row (`model` or `BG/NBD`) of the text report.
fn table_row(text: &str, name: &str) -> Vec<f64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name) && !l.contains(" as of "))
        .unwrap_or_else(|| panic!("no {name} row in:\n{text}"));
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{v:?} in {line:?}")))
        .collect();
    assert_eq!(values.len(), 6, "{line:?}");
    values
}

#[test]
fn evaluate_prints_counts_and_the_metrics_table() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let version = read_json(&model)["version"].as_str().unwrap().to_owned();
    let (customers, churned) = labels(&f.rows, day_of("1997-07-01"), 90);

    let run = run(evaluate(&f.transactions, &model, "1997-07-01").args(["--horizon-days", "90"]));
    run.assert_success();
    let text = &run.stdout;
    let first = text.lines().next().unwrap();
    let percent = 100.0 * churned as f64 / customers as f64;
    assert_eq!(
        first,
        format!("model {version} as of 1997-07-01T00:00:00Z, horizon 90 days: {customers} customers, {churned} churned ({percent:.1} %)")
    );
    assert!(
        !text.contains("note:"),
        "same horizon as the model:\n{text}"
    );
    let header = text.lines().find(|l| l.contains("ROC AUC")).unwrap();
    for column in ["avg prec", "log loss", "Brier", "top-10% lift"] {
        assert!(header.contains(column), "{column:?} missing in {header:?}");
    }
    let [auc, ap, log_loss, brier, lift, _ece] = table_row(text, "model")[..] else {
        unreachable!()
    };
    assert!(auc > 0.7 && auc <= 1.0, "{auc}");
    assert!(ap > 0.0 && ap <= 1.0, "{ap}");
    assert!(
        log_loss > 0.0 && brier > 0.0 && brier < 0.25,
        "{log_loss} {brier}"
    );
    assert!(lift > 1.0, "{lift}");
    assert!(
        !text.contains("BG/NBD"),
        "no baseline without --baseline:\n{text}"
    );
    assert!(text.contains("calibration of the model"), "{text}");
    // The churn model's table, before the value model's part.
    let (churn_part, value_part) = text
        .split_once("value model forecast")
        .unwrap_or_else(|| panic!("no value model part in:\n{text}"));
    assert!(value_part.contains("p_alive-based churn"), "{text}");
    let binned: usize = churn_part
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .split_once(" customers")?
                .0
                .trim()
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(
        binned, customers,
        "the calibration bins hold every customer:\n{text}"
    );
}

#[test]
fn evaluate_with_baseline_adds_a_bgnbd_line() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let run = run(evaluate(&f.transactions, &model, "1997-07-01").args([
        "--horizon-days",
        "90",
        "--baseline",
    ]));
    run.assert_success();
    let text = &run.stdout;
    let model_row = table_row(text, "model");
    let baseline_row = table_row(text, "BG/NBD");
    assert_ne!(model_row, baseline_row);
    assert!(baseline_row[0] > 0.5 && baseline_row[0] <= 1.0, "{text}");
    assert!(
        text.contains("BG/NBD fitted on the same customers: r "),
        "{text}"
    );
}

#[test]
fn evaluate_json_has_the_metric_fields() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let version = read_json(&model)["version"].clone();
    let (customers, churned) = labels(&f.rows, day_of("1997-07-01"), 60);

    let args = ["--horizon-days", "60", "--json"];
    let plain = run(evaluate(&f.transactions, &model, "1997-07-01").args(args));
    plain.assert_success();
    let json: serde_json::Value = serde_json::from_str(&plain.stdout).expect("valid JSON");
    assert_eq!(json["model_version"], version);
    assert_eq!(json["as_of"], "1997-07-01T00:00:00Z");
    assert_eq!(json["horizon_days"], 60);
    assert_eq!(json["model_horizon_days"], 90);
    assert!(json["baseline"].is_null(), "{json}");
    let m = &json["model"];
    assert_eq!(m["examples"], customers);
    assert_eq!(m["positives"], churned);
    for key in ["roc_auc", "average_precision", "brier_score"] {
        let v = m[key].as_f64().unwrap_or_else(|| panic!("{key} in {m}"));
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    assert!(m["log_loss"].as_f64().unwrap() > 0.0);
    assert!(m["top_decile_lift"].as_f64().unwrap() > 0.0);
    let bins = m["calibration"].as_array().unwrap();
    let binned: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(binned, customers as u64);
    for key in ["lower", "upper", "mean_predicted", "observed_rate"] {
        assert!(bins[0][key].is_f64(), "{key} in {}", bins[0]);
    }

    let with_baseline =
        run(evaluate(&f.transactions, &model, "1997-07-01")
            .args([&args[..], &["--baseline"]].concat()));
    with_baseline.assert_success();
    let report: EvaluationReport =
        serde_json::from_str(&with_baseline.stdout).expect("an EvaluationReport");
    let baseline = report.baseline.expect("--baseline adds the baseline");
    assert_eq!(baseline.name, "bgnbd");
    assert_eq!(baseline.metrics.examples, customers);
    assert_eq!(baseline.metrics.positives, churned);
    let json: serde_json::Value = serde_json::from_str(&with_baseline.stdout).unwrap();
    for key in ["r", "alpha", "a", "b"] {
        let v = json["baseline"]["params"][key].as_f64().unwrap();
        assert!(v > 0.0, "{key} {v}");
    }
    assert_eq!(
        json["model"],
        m.clone(),
        "the model's metrics do not depend on --baseline"
    );
    // The value model's forecast of the same window, for the same customers.
    let value = report
        .value
        .expect("the trained model has value parameters");
    assert_eq!(value.customers, customers);
    assert_eq!(value.horizon_days, 60);
    assert!((value.p_alive_churn.observed_rate - churned as f64 / customers as f64).abs() < 1e-12);
    for e in [&value.purchases, &value.spend] {
        assert!(
            e.mae >= 0.0 && e.rmse >= e.mae && e.mean_predicted > 0.0,
            "{e:?}"
        );
    }
    assert!((0.0..=1.0).contains(&value.top_decile_spend_share));
    assert!(value.top_decile_spend_share <= value.top_decile_spend_share_ceiling);
    let ece = value.p_alive_churn.expected_calibration_error;
    assert!((0.0..=1.0).contains(&ece), "{ece}");

    // The text report shows the same numbers, rounded.
    let text = run(evaluate(&f.transactions, &model, "1997-07-01").args(["--horizon-days", "60"]));
    text.assert_success();
    assert!(
        text.stdout
            .contains("note: the model was trained for a 90-day horizon"),
        "{}",
        text.stdout
    );
    let row = table_row(&text.stdout, "model");
    assert_eq!(
        format!("{:.4}", row[0]),
        format!("{:.4}", m["roc_auc"].as_f64().unwrap())
    );
    assert_eq!(
        format!("{:.4}", row[3]),
        format!("{:.4}", m["brier_score"].as_f64().unwrap())
    );
}

#[test]
fn evaluate_defaults_to_the_models_horizon() {
    let f = Fixture::new();
    let model = f.path("h60.json");
    run(train(&f.transactions, &model).args(["--horizon-days", "60", "--until", "1997-07-01"]))
        .assert_success();
    let (customers, churned) = labels(&f.rows, day_of("1997-07-01"), 60);
    let run = run(&mut evaluate(&f.transactions, &model, "1997-07-01"));
    run.assert_success();
    assert!(
        run.stdout.contains(&format!(
            "horizon 60 days: {customers} customers, {churned} churned"
        )),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("note:"), "{}", run.stdout);
}

#[test]
fn evaluate_refuses_a_date_whose_horizon_runs_past_the_data() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    run(evaluate(&f.transactions, &model, "1997-08-01").args(["--horizon-days", "90"]))
        .assert_fails_with(&[
            "as of 1997-08-01T00:00:00Z with a horizon of 90 days does not fit the data",
            "1997-01-01T00:00:00Z",
            "leave a full horizon of data after it",
        ]);
    // The last date that still fits: the data ends with 1997-09-30, i.e. at 10-01 00:00,
    // 90 days after 07-03 (train's held-out cutoff).
    run(evaluate(&f.transactions, &model, "1997-07-03").args(["--horizon-days", "90"]))
        .assert_success();
    run(evaluate(&f.transactions, &model, "1997-07-04").args(["--horizon-days", "90"]))
        .assert_fails_with(&["does not fit the data"]);
}

#[test]
fn evaluate_names_the_flag_of_a_bad_date() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    run(&mut evaluate(&f.transactions, &model, "07/01/1997"))
        .assert_fails_with(&["--as-of", "\"07/01/1997\" is not a date (YYYY-MM-DD)"]);
}

#[test]
fn evaluate_names_a_missing_or_broken_model_file() {
    let f = Fixture::new();
    let missing = f.path("no-such-model.json");
    run(&mut evaluate(&f.transactions, &missing, "1997-07-01"))
        .assert_fails_with(&["cannot read model file", &missing.display().to_string()]);
    // A transactions file is no model.
    run(&mut evaluate(
        &f.transactions,
        &f.transactions,
        "1997-07-01",
    ))
    .assert_fails_with(&[
        "is not valid model JSON",
        &f.transactions.display().to_string(),
    ]);
}

// ---------------------------------------------------------------------------------------
// score

const SCORE_HEADER: &str = "customer_id,churn_probability,risk,lifecycle_stage,segment,reasons,\
     p_alive,expected_purchases_90d,expected_spend_90d,clv_365d,next_purchase_at";

/// The decimals of a number written by `churnd score`.
fn decimals(cell: &str) -> usize {
    cell.split_once('.').map_or(0, |(_, d)| d.len())
}

#[test]
fn score_writes_one_row_per_customer_seen_before_the_date() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let version = read_json(&model)["version"].as_str().unwrap().to_owned();
    let as_of = day_of("1997-03-01");
    let run = run(&mut score(
        &f.transactions,
        &model,
        "1997-03-01",
        Path::new("-"),
    ));
    run.assert_success();

    let mut reader = csv::Reader::from_reader(run.stdout.as_bytes());
    assert_eq!(
        reader
            .headers()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
            .join(","),
        SCORE_HEADER
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let ids: Vec<&str> = records.iter().map(|r| &r[0]).collect();
    let expected = customers_before(&f.rows, as_of);
    assert_eq!(
        ids, expected,
        "every customer seen before the date, in order of first purchase"
    );
    // Customers whose first purchase falls on the date itself are not known yet.
    let first_on_the_date: Vec<&Row> = f
        .rows
        .iter()
        .filter(|r| r.day == as_of && !expected.contains(&r.customer))
        .collect();
    assert!(
        !first_on_the_date.is_empty(),
        "the data holds such a customer"
    );
    for r in first_on_the_date {
        assert!(!ids.contains(&r.customer.as_str()), "{}", r.customer);
    }

    for r in &records {
        let p: f64 = r[1].parse().unwrap_or_else(|_| panic!("{r:?}"));
        assert!((0.0..=1.0).contains(&p), "{r:?}");
        assert_eq!(
            r[1].split_once('.').unwrap().1.len(),
            6,
            "six decimals: {r:?}"
        );
        assert!(["low", "medium", "high"].contains(&&r[2]), "{r:?}");
        assert!(!r[3].is_empty() && !r[4].is_empty(), "{r:?}");
        for reason in r[5].split(',').filter(|s| !s.is_empty()) {
            let (feature, level) = reason.split_once(':').unwrap();
            assert!(
                FEATURE_NAMES.contains(&feature) || DERIVED_NAMES.contains(&feature),
                "{reason}"
            );
            assert!(level == "high" || level == "low", "{reason}");
        }
        // The value estimates: finite, in range, at their precision.
        let number = |i: usize| -> f64 { r[i].parse().unwrap_or_else(|_| panic!("{i} in {r:?}")) };
        let (p_alive, purchases, spend, clv) = (number(6), number(7), number(8), number(9));
        assert!((0.0..=1.0).contains(&p_alive), "{r:?}");
        assert!(purchases >= 0.0 && spend >= 0.0 && clv >= spend, "{r:?}");
        assert_eq!((decimals(&r[6]), decimals(&r[7])), (6, 6), "{r:?}");
        assert_eq!((decimals(&r[8]), decimals(&r[9])), (2, 2), "{r:?}");
        if !r[10].is_empty() {
            let next = time::parse_date_or_datetime(&r[10]).unwrap_or_else(|| panic!("{r:?}"));
            let now = T0 + as_of * DAY;
            assert!(next >= now && next <= now + 365 * DAY, "{r:?}");
            assert!(
                p_alive > 0.5,
                "a date only for customers more likely alive: {r:?}"
            );
        }
    }
    assert!(
        records.iter().any(|r| !r[10].is_empty()),
        "customers a few weeks into their history are due back"
    );
    assert!(
        run.stderr.contains(&format!(
            "scored {} customers as of 1997-03-01T00:00:00Z with model {version}",
            expected.len()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn score_to_a_file_writes_what_stdout_would_show() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let to_stdout = run(&mut score(
        &f.transactions,
        &model,
        "1997-05-15",
        Path::new("-"),
    ));
    to_stdout.assert_success();
    let out = f.path("scores.csv");
    let to_file = run(&mut score(&f.transactions, &model, "1997-05-15", &out));
    to_file.assert_success();
    assert!(to_file.stdout.is_empty(), "{}", to_file.stdout);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, to_stdout.stdout);
    assert!(written.starts_with(&format!("{SCORE_HEADER}\n")));
    assert_eq!(
        written.lines().count(),
        1 + customers_before(&f.rows, day_of("1997-05-15")).len()
    );
}

/// A model file from before the value model (format 1) still scores and evaluates, with the
/// value columns empty and a word about why.
#[test]
fn a_format_1_model_scores_without_value_estimates() {
    let f = Fixture::new();
    let trained = f.train_until("1997-07-01", "until.json");
    // The derived input needs the value model: give it no weight in the current file, and
    // leave it out of the format 1 file, so that both score churn alike.
    let mut json = read_json(&trained);
    for p in json["features"].as_array_mut().unwrap() {
        if DERIVED_NAMES.contains(&p["name"].as_str().unwrap()) {
            p["coefficient"] = 0.0.into();
        }
    }
    let model = f.path("no-derived.json");
    std::fs::write(&model, json.to_string()).unwrap();
    json["format"] = "churnd-logistic/1".into();
    json.as_object_mut().unwrap().remove("value");
    json["features"]
        .as_array_mut()
        .unwrap()
        .retain(|p| !DERIVED_NAMES.contains(&p["name"].as_str().unwrap()));
    let old = f.path("old.json");
    std::fs::write(&old, json.to_string()).unwrap();

    let new_scores = run(&mut score(
        &f.transactions,
        &model,
        "1997-05-15",
        Path::new("-"),
    ));
    let old_scores = run(&mut score(
        &f.transactions,
        &old,
        "1997-05-15",
        Path::new("-"),
    ));
    old_scores.assert_success();
    assert!(
        old_scores.stderr.contains("has no value parameters"),
        "{}",
        old_scores.stderr
    );
    for (new, old) in new_scores
        .stdout
        .lines()
        .zip(old_scores.stdout.lines())
        .skip(1)
    {
        let cells: Vec<&str> = new.rsplitn(6, ',').collect();
        // The churn columns are the same; the value columns are empty.
        assert!(old.ends_with(",,,,,"), "{old}");
        assert_eq!(
            old.trim_end_matches(','),
            cells[5].trim_end_matches(','),
            "{new}"
        );
    }

    let evaluated = run(&mut evaluate(&f.transactions, &old, "1997-07-01"));
    evaluated.assert_success();
    assert!(
        evaluated.stdout.contains("value model: none"),
        "{}",
        evaluated.stdout
    );

    // A format 2 file without its value section is refused, naming what is missing.
    json["format"] = "churnd-logistic/2".into();
    std::fs::write(&old, json.to_string()).unwrap();
    run(&mut score(
        &f.transactions,
        &old,
        "1997-05-15",
        Path::new("-"),
    ))
    .assert_fails_with(&["old.json", "value parameters (\"value\") are missing"]);
}

/// `churnd score --out - | head`: once the reader has gone, the rest of the scores have
/// nowhere to go, which is not an error (it was: "churnd: Broken pipe", exit 1).
#[test]
fn score_to_a_closed_stdout_is_not_an_error() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    let mut child = score(&f.transactions, &model, "1997-05-15", Path::new("-"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("churnd runs");
    // The reading end closes before churnd writes its first row.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("churnd ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("scored "), "{stderr}");
}

#[test]
fn score_names_the_flag_of_a_bad_date_and_an_unwritable_output() {
    let f = Fixture::new();
    let model = f.train_until("1997-07-01", "until.json");
    run(&mut score(
        &f.transactions,
        &model,
        "1997-3-1x",
        Path::new("-"),
    ))
    .assert_fails_with(&["--as-of", "\"1997-3-1x\" is not a date"]);
    let out = f.path("no-such-dir/scores.csv");
    run(&mut score(&f.transactions, &model, "1997-03-01", &out))
        .assert_fails_with(&["cannot create", &out.display().to_string()]);
    let missing = f.path("no-such-model.json");
    run(&mut score(
        &f.transactions,
        &missing,
        "1997-03-01",
        Path::new("-"),
    ))
    .assert_fails_with(&["cannot read model file", &missing.display().to_string()]);
    run(&mut score(
        &f.transactions,
        &model,
        "1990-01-01",
        Path::new("-"),
    ))
    .assert_fails_with(&["is before --as-of 1990-01-01", "nothing to score"]);
}
