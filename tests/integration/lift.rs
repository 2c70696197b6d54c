//! The lift report on a hand-built outcome set with known rates and intervals: `churnd
//! report lift` (text and JSON), then the daemon's `/v1/lift` and `churnd_lift_*` gauges,
//! which must converge to the same numbers, also after a restart.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::helpers::*;

const OUTCOMES: &str = "churn:outcomes";
/// 2025-11-15 and 2025-11-20, midnight UTC, in ms: when the tasks were raised and closed.
const RAISED_MS: u64 = 1_763_164_800_000;
const CLOSED_MS: u64 = 1_763_596_800_000;
/// 2025-12-02, midnight UTC: when the welcome outcomes closed.
const LATER_MS: u64 = 1_764_633_600_000;

fn outcome(
    kind: &str,
    action: &str,
    segment: &str,
    group: &str,
    revenue: Option<f64>,
    closed_at: u64,
) -> Vec<(&'static str, String)> {
    let task = rand::random::<u128>();
    outcome_record(
        &[kind, action, segment, group],
        revenue,
        (RAISED_MS, closed_at),
        task,
    )
}

/// Appends `converted` converting records (each bringing `revenue`) and `total − converted`
/// others, in one pipeline.
async fn add_group(
    conn: &mut MultiplexedConnection,
    cell: (&str, &str, &str),
    group: &str,
    (converted, total): (u32, u32),
    revenue: f64,
    closed_at: u64,
) {
    let mut pipe = redis::pipe();
    for i in 0..total {
        let fields = outcome(
            cell.0,
            cell.1,
            cell.2,
            group,
            (i < converted).then_some(revenue),
            closed_at,
        );
        let cmd = pipe.cmd("XADD").arg(OUTCOMES).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
    }
    let _: () = pipe
        .query_async(conn)
        .await
        .expect("the outcomes are written");
}

/// The hand-built set: win-back coupons to general_winback, 56 of 70 treated and 48 of 80
/// control customers converted (Newcombe's example (a): lift 0.2, 95 % interval 0.0524 to
/// 0.3339), each treated conversion bringing 10 and each control one 5; birthday
/// greetings without a holdout; welcome follow-ups closed later, 1,100 of them so the report
/// reads more than one page; and two entries that are not valid outcome records.
async fn write_outcome_set(conn: &mut MultiplexedConnection) {
    let coupon = ("winback", "coupon", "general_winback");
    add_group(conn, coupon, "treatment", (56, 70), 10.0, CLOSED_MS).await;
    add_group(conn, coupon, "control", (48, 80), 5.0, CLOSED_MS).await;
    let greeting = ("birthday", "birthday_greeting", "");
    add_group(conn, greeting, "treatment", (3, 12), 20.0, CLOSED_MS).await;
    let welcome = ("welcome", "welcome_follow_up", "general_development");
    add_group(conn, welcome, "treatment", (100, 1000), 30.0, LATER_MS).await;
    add_group(conn, welcome, "control", (10, 100), 30.0, LATER_MS).await;
    let mut newer = outcome("winback", "coupon", "", "control", None, CLOSED_MS);
    newer[0].1 = "2".into();
    xadd(conn, OUTCOMES, &newer).await;
    let mut bad = outcome("winback", "coupon", "", "control", None, CLOSED_MS);
    bad[7].1 = "holdout".into();
    xadd(conn, OUTCOMES, &bad).await;
}

/// `churnd report lift` with these arguments: exit code, stdout, stderr.
fn report_lift(redis: &RedisServer, args: &[&str]) -> (Option<i32>, String, String) {
    let output = churnd()
        .args(["report", "lift", "--redis-url", &redis.url()])
        .args(args)
        .output()
        .expect("churnd report lift runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn row<'a>(report: &'a serde_json::Value, kind: &str, action: &str) -> &'a serde_json::Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["kind"] == kind && r["action"] == action)
        .unwrap_or_else(|| panic!("no {kind}/{action} row in {report}"))
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn near(v: &serde_json::Value, want: f64, tolerance: f64) -> bool {
    (number(v) - want).abs() <= tolerance
}

/// The series `name{labels}` of a Prometheus exposition, labels given in name order.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    parse_metric(text, &format!("{name}{{{}}}", labels.join(",")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lift_report_shows_the_known_rates_and_intervals_of_a_hand_built_outcome_set() {
    let redis = RedisServer::start();
    write_outcome_set(&mut redis.conn().await).await;

    let (code, json, stderr) = report_lift(&redis, &["--format", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(report["stream"], OUTCOMES);
    assert_eq!(report["records"]["read"], 1264);
    assert_eq!(report["records"]["used"], 1262);
    assert_eq!(report["records"]["skipped"]["unknown_schema"], 1);
    assert_eq!(report["records"]["skipped"]["malformed"], 1);
    // The bad entries are named on stderr, with the field and value.
    assert!(
        stderr.contains("schema_version \"2\" is not one this churnd reads"),
        "{stderr}"
    );
    assert!(
        stderr.contains("field group is \"holdout\": must be treatment or control"),
        "{stderr}"
    );

    let coupon = row(&report, "winback", "coupon");
    assert_eq!(coupon["segment"], "general_winback");
    assert_eq!(coupon["treatment"]["tasks"], 70);
    assert_eq!(coupon["treatment"]["conversions"], 56);
    assert_eq!(coupon["treatment"]["conversion_rate"], 0.8);
    assert_eq!(coupon["control"]["tasks"], 80);
    assert_eq!(coupon["control"]["conversion_rate"], 0.6);
    let lift = &coupon["conversion_lift"];
    assert!(near(&lift["estimate"], 0.2, 1e-12), "{lift}");
    assert!(near(&lift["low"], 0.0524, 5e-5), "{lift}");
    assert!(near(&lift["high"], 0.3339, 5e-5), "{lift}");
    let incremental = &coupon["incremental_conversions"];
    assert!(near(&incremental["estimate"], 14.0, 1e-9), "{incremental}");
    assert!(near(&incremental["low"], 0.0524 * 70.0, 70.0 * 5e-5));
    // Revenue per task: 8 treated (560 / 70), 3 control (240 / 80); variances 16.23 and
    // 6.08 (by hand: 56 tens and 14 zeros; 48 fives and 32 zeros).
    assert_eq!(coupon["treatment"]["revenue_per_task"], 8.0);
    assert_eq!(coupon["control"]["revenue_per_task"], 3.0);
    assert!(near(
        &coupon["treatment"]["revenue_per_task_variance"],
        1120.0 / 69.0,
        1e-9
    ));
    assert!(near(
        &coupon["control"]["revenue_per_task_variance"],
        480.0 / 79.0,
        1e-9
    ));
    // Welch: se² = 16.2319/70 + 6.0759/80 = 0.307833; df = 0.307833² / (0.231884²/69 +
    // 0.075949²/79) = 111.18; t(0.975, 111.18) = 1.98153 (Cornish–Fisher): half-width
    // 1.09941.
    let revenue = &coupon["revenue_per_task_lift"];
    assert!(near(&revenue["estimate"], 5.0, 1e-9), "{revenue}");
    assert!(near(&revenue["low"], 5.0 - 1.09941, 1e-4), "{revenue}");
    assert!(near(&revenue["high"], 5.0 + 1.09941, 1e-4), "{revenue}");
    assert!(near(
        &coupon["incremental_revenue"]["estimate"],
        350.0,
        1e-6
    ));
    assert_eq!(coupon["note"], serde_json::Value::Null);

    // Without a control group the row says so instead of a number.
    let greeting = row(&report, "birthday", "birthday_greeting");
    assert_eq!(greeting["segment"], "none");
    assert_eq!(greeting["treatment"]["tasks"], 12);
    assert_eq!(greeting["conversion_lift"], serde_json::Value::Null);
    assert_eq!(greeting["incremental_revenue"], serde_json::Value::Null);
    assert!(
        greeting["note"]
            .as_str()
            .unwrap()
            .contains("no control outcomes"),
        "{greeting}"
    );
    // The welcome cell: 10 % vs 10 %, no lift, an interval around 0.
    let welcome = row(&report, "welcome", "welcome_follow_up");
    assert_eq!(welcome["treatment"]["tasks"], 1000);
    let lift = &welcome["conversion_lift"];
    assert!(
        near(&lift["estimate"], 0.0, 1e-12)
            && number(&lift["low"]) < 0.0
            && number(&lift["high"]) > 0.0
    );
    // Per kind.
    let kinds = report["kinds"].as_array().unwrap();
    assert_eq!(kinds.len(), 3);
    assert!(kinds
        .iter()
        .all(|k| k["action"] == "all" && k["segment"] == "all"));

    // The text table, for people.
    let (code, text, stderr) = report_lift(&redis, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(text.contains("1264 records read: 1262 used, 0 outside the window, 2 skipped (malformed 1, unknown_schema 1)"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("winback") && l.contains("coupon"))
        .unwrap_or_else(|| panic!("no coupon row:\n{text}"));
    for shown in [
        "general_winback",
        "70",
        "80",
        "80.0 %",
        "60.0 %",
        "+20.0 pp (+5.2 pp to +33.4 pp)",
        "+14.0 (+3.7 to +23.4)",
        "8.00",
        "3.00",
    ] {
        assert!(line.contains(shown), "{shown:?} not in {line}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("birthday"))
        .unwrap_or_else(|| panic!("no birthday row:\n{text}"));
    assert!(line.contains("(no control outcomes"), "{line}");

    // --until leaves out the welcome outcomes, closed later.
    let (code, json, stderr) = report_lift(&redis, &["--format", "json", "--until", "2025-12-01"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["records"]["outside_window"], 1100);
    assert_eq!(report["until"], "2025-12-01T00:00:00Z");
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    let (code, json, _) = report_lift(&redis, &["--format", "json", "--since", "2025-12-01"]);
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["records"]["used"], 1100);

    // Bad arguments and an empty stream.
    let (code, _, stderr) = report_lift(&redis, &["--since", "yesterday"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("--since: \"yesterday\" is not a date"),
        "{stderr}"
    );
    let (code, text, _) = report_lift(&redis, &["--stream", "no:such:stream"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("No outcomes yet"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_the_same_lift_and_gauges_and_rebuilds_them_after_a_restart() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = redis.conn().await;
    // Some outcomes before the start, the rest while it runs.
    let coupon = ("winback", "coupon", "general_winback");
    add_group(&mut conn, coupon, "treatment", (56, 70), 10.0, CLOSED_MS).await;
    let settings = test_settings(&redis, dir.path());
    let app = App::spawn(settings.clone()).await;
    add_group(&mut conn, coupon, "control", (48, 80), 5.0, CLOSED_MS).await;
    write_outcome_set(&mut conn).await;

    let (code, json, stderr) = report_lift(&redis, &["--format", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let expected: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The coupon cell holds its outcomes twice: 140 treated, 160 control.
    assert_eq!(
        row(&expected, "winback", "coupon")["treatment"]["tasks"],
        140
    );

    let converged = |app: &App| {
        let (url, expected) = (app.url("/v1/lift"), expected.clone());
        async move {
            let Ok(response) = reqwest::get(url).await else {
                return false;
            };
            response.status().is_success()
                && response.json::<serde_json::Value>().await.ok() == Some(expected)
        }
    };
    wait_for(
        "/v1/lift to equal the report",
        Duration::from_secs(30),
        || converged(&app),
    )
    .await;
    let lift = &row(&expected, "winback", "coupon")["conversion_lift"];
    let cell = [
        ("action", "coupon"),
        ("kind", "winback"),
        ("segment", "general_winback"),
    ];
    let gauges_match = |app: &App| {
        let (metrics, lift) = (app.url("/metrics"), lift.clone());
        async move {
            let Ok(text) = reqwest::get(metrics).await else {
                return false;
            };
            let text = text.text().await.unwrap_or_default();
            let with_group = |group| {
                let mut labels = vec![cell[0], ("group", group)];
                labels.extend_from_slice(&cell[1..]);
                labels
            };
            series(&text, "churnd_lift_absolute", &cell) == lift["estimate"].as_f64()
                && series(&text, "churnd_lift_absolute_low", &cell) == lift["low"].as_f64()
                && series(&text, "churnd_lift_absolute_high", &cell) == lift["high"].as_f64()
                && series(&text, "churnd_lift_outcomes", &with_group("treatment")) == Some(140.0)
                && series(&text, "churnd_lift_conversions", &with_group("control")) == Some(96.0)
                && series(&text, "churnd_lift_conversion_rate", &with_group("control")) == Some(0.6)
                && series(&text, "churnd_lift_kind_absolute", &[("kind", "welcome")]) == Some(0.0)
                && parse_metric(&text, "churnd_lift_outcomes_read_total") == Some(1414.0)
                && series(&text, "churnd_lift_outcomes_skipped_total", &[("reason", "malformed")])
                    == Some(1.0)
                // No control: no lift gauge rather than an invented one.
                && !text.contains("churnd_lift_kind_absolute{kind=\"birthday\"}")
        }
    };
    wait_for(
        "the lift gauges to show the report",
        Duration::from_secs(30),
        || gauges_match(&app),
    )
    .await;
    app.stop().await;

    // A restart rebuilds the same aggregates from the stream.
    let app = App::spawn(settings.clone()).await;
    wait_for(
        "/v1/lift to equal the report after a restart",
        Duration::from_secs(30),
        || converged(&app),
    )
    .await;
    wait_for(
        "the lift gauges after a restart",
        Duration::from_secs(30),
        || gauges_match(&app),
    )
    .await;
    app.stop().await;

    // Behind the bearer token like every /v1/ endpoint, and off when turned off.
    let mut guarded = settings.clone();
    guarded.http.customer_token = Some("lift-t0ken".into());
    guarded.lift.enabled = false;
    let app = App::spawn(guarded).await;
    assert_eq!(app.get("/v1/lift").await.status(), 401);
    let response = reqwest::Client::new()
        .get(app.url("/v1/lift"))
        .bearer_auth("lift-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "the lift report is off (lift.enabled = false)"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lift_answers_503_with_retry_after_until_the_outcome_stream_is_read() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    redis.stop();
    let app = App::spawn(settings).await;
    let response = app.get("/v1/lift").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "the outcome stream is still being read; try again shortly"
    );
    // Redis comes back: the (empty) stream is read and the report is there.
    redis.restart();
    wait_for(
        "/v1/lift once Redis answers",
        Duration::from_secs(30),
        || {
            let url = app.url("/v1/lift");
            async move {
                match reqwest::get(url).await {
                    Ok(r) if r.status().is_success() => {
                        r.json::<serde_json::Value>().await.is_ok_and(|v| {
                            v["records"]["read"] == 0 && v["rows"] == serde_json::json!([])
                        })
                    }
                    _ => false,
                }
            }
        },
    )
    .await;
    app.stop().await;
}
