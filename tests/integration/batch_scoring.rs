//! Batch scoring (`churnd score`) and the daemon agree: replaying a transactions file through
//! the stream with the event-time clock gives the probabilities and the customer value
//! estimates `churnd score` computes from the file, in the API and on the tasks.

use std::collections::HashMap;
use std::path::Path;

use churnd::time;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const CARE: &str = "crm:tasks";
/// The value fields, named as in the API, on tasks and in `churnd score`'s columns.
const VALUE_FIELDS: [&str; 5] = [
    "p_alive",
    "expected_purchases_90d",
    "expected_spend_90d",
    "clv_365d",
    "next_purchase_at",
];
const DAY_MS: u64 = 86_400_000;

/// A row of the generated file: customer, event type, amount, time in ms.
type Row = (String, &'static str, f64, u64);

/// Every event type, irregular rhythms and times within the day, from a fixed seed.
fn transactions() -> Vec<Row> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut rows = Vec::new();
    for c in 0..150 {
        let customer = format!("cust-{c:03}");
        let mut t = T0_MS + next(120) * DAY_MS + next(DAY_MS);
        let stops_at = t + (30 + next(300)) * DAY_MS;
        while t < stops_at {
            let (kind, amount) = match next(10) {
                0..=5 => ("purchase", (next(20_000) as f64) / 100.0),
                6 => ("refund", (next(3_000) as f64) / 100.0),
                7 | 8 => ("visit", 0.0),
                _ => ("complaint", 0.0),
            };
            rows.push((customer.clone(), kind, amount, t));
            t += (1 + next(40)) * DAY_MS + next(DAY_MS);
        }
    }
    rows.sort_by_key(|r| r.3);
    rows
}

/// A pipeline that writes `rows` to the input stream, in order, with their event times.
fn xadd_rows(rows: &[Row]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (customer, kind, amount, ms) in rows {
        pipe.cmd("XADD")
            .arg(EVENTS)
            .arg("*")
            .arg("customer_id")
            .arg(customer)
            .arg("type")
            .arg(*kind)
            .arg("amount")
            .arg(amount.to_string())
            .arg("ts")
            .arg(ms)
            .ignore();
    }
    pipe
}

fn write_csv(path: &Path, rows: &[Row]) {
    let mut text = String::from("customer_id,date,type,amount\n");
    for (customer, kind, amount, ms) in rows {
        let secs = u32::try_from(ms / 1000).unwrap();
        text.push_str(&format!(
            "{customer},{},{kind},{amount}\n",
            time::rfc3339(secs)
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_replay_and_batch_scoring_give_the_same_probabilities() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let rows = transactions();
    // Whole seconds: the file carries RFC 3339 times to the second.
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|(c, k, a, ms)| (c, k, a, ms / 1000 * 1000))
        .collect();
    let csv = dir.path().join("transactions.csv");
    write_csv(&csv, &rows);
    let last_ms = rows.last().unwrap().3;
    let as_of_ms = (last_ms / DAY_MS + 2) * DAY_MS;
    let as_of = time::rfc3339(u32::try_from(as_of_ms / 1000).unwrap());
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");

    // Batch: the binary, as users run it.
    let batch = score(&csv, &model, &as_of, dir.path());
    assert_eq!(batch.len(), 150, "every customer is scored");

    // Streaming: the same events, then one event at the as-of time to move the clock there
    // (the batch counts only events before it).
    let mut c = redis.conn().await;
    let mut pipe = xadd_rows(&rows);
    pipe.cmd("XADD")
        .arg(EVENTS)
        .arg("*")
        .arg("customer_id")
        .arg("clock")
        .arg("type")
        .arg("visit")
        .arg("ts")
        .arg(as_of_ms)
        .ignore();
    pipe.query_async::<()>(&mut c).await.unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.model.path = model.clone();
    let app = App::spawn(settings).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let mut compared = 0;
    for row in &batch {
        let id = &row["customer_id"];
        let live = app.get_json(&format!("/v1/customers/{id}")).await;
        assert_eq!(live["as_of"], as_of);
        assert_eq!(
            live["lifecycle_stage"],
            row["lifecycle_stage"].as_str(),
            "{id}"
        );
        assert_eq!(
            live["segment"].as_str().unwrap_or(""),
            row["segment"],
            "{id}"
        );
        let live_p = live["churn_probability"].as_f64();
        match row["churn_probability"].as_str() {
            "" => assert_eq!(live_p, None, "{id} has no purchase"),
            p => {
                let batch_p: f64 = p.parse().unwrap();
                let live_p = live_p.unwrap();
                assert!(
                    (batch_p - live_p).abs() <= 1e-6,
                    "{id}: batch {batch_p}, stream {live_p}"
                );
                compared += 1;
            }
        }
        assert_same_value(id, &live, row);
    }
    assert!(compared > 100, "most customers bought: {compared}");

    // Every task carries the value fields, and they are what `churnd score` gives at the
    // task's moment: checked for tasks at a second when the customer had no event of their
    // own (the batch counts only events before its as-of).
    wait_for("win-back tasks", std::time::Duration::from_secs(10), || {
        let redis = &redis;
        async move { xlen(&mut redis.conn().await, WINBACK).await > 0 }
    })
    .await;
    // Tasks only: the streams carry cancels too.
    let is_task = |(_, f): &StreamEntry| f["record"] == "task";
    let mut tasks: Vec<StreamEntry> = read_stream(&mut c, WINBACK).await;
    tasks.retain(is_task);
    let winbacks = tasks.len();
    tasks.extend(read_stream(&mut c, CARE).await.into_iter().filter(is_task));
    let mut checked = 0;
    for (_, task) in &tasks {
        let id = &task["customer_id"];
        // A customer who has not bought (a `convert` task) has no segment and no value.
        if !task.contains_key("segment") {
            assert_eq!(task["kind"], "convert", "{task:?}");
            assert!(
                VALUE_FIELDS.iter().all(|f| !task.contains_key(*f)),
                "{task:?}"
            );
            continue;
        }
        for field in &VALUE_FIELDS[..4] {
            let v: f64 = task[*field]
                .parse()
                .unwrap_or_else(|e| panic!("{field}: {e}"));
            assert!(v.is_finite() && v >= 0.0, "{id}: {field} = {v}");
        }
        if task["kind"] == "winback" {
            // The priority is the value at stake.
            let p: f64 = task["churn_probability"].parse().unwrap();
            let clv: f64 = task["clv_365d"].parse().unwrap();
            let priority: f64 = task["priority"].parse().unwrap();
            assert!((priority - p * clv).abs() <= 0.02, "{id}: {task:?}");
        }
        let at = time::parse_date_or_datetime(&task["as_of"]).unwrap();
        let own_event_then = rows
            .iter()
            .any(|(c, _, _, ms)| c == id && *ms == u64::from(at) * 1000);
        if checked < 4 && !own_event_then {
            let batch = score(&csv, &model, &task["as_of"], dir.path());
            let row = batch.iter().find(|r| &r["customer_id"] == id).unwrap();
            for field in VALUE_FIELDS {
                let want = Some(row[field].as_str()).filter(|v| !v.is_empty());
                assert_eq!(task.get(field).map(String::as_str), want, "{id}: {field}");
            }
            checked += 1;
        }
    }
    assert!(winbacks > 10, "{winbacks} win-back tasks");
    assert!(checked >= 2, "{checked} tasks compared with churnd score");
    app.stop().await;
}

/// `churnd score --as-of` of the file, by the binary, as rows of its CSV.
fn score(csv: &Path, model: &Path, as_of: &str, dir: &Path) -> Vec<HashMap<String, String>> {
    let scores_path = dir.join("scores.csv");
    let out = churnd()
        .args(["score", "--as-of", as_of])
        .arg("--transactions")
        .arg(csv)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(&scores_path)
        .env("CHURND__SEGMENTS__MODE", "fixed")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = csv::Reader::from_path(&scores_path).unwrap();
    reader.deserialize().map(Result::unwrap).collect()
}

/// The API's value fields against `churnd score`'s columns, which are rounded (6 decimals
/// for p_alive and expected purchases, 2 for money).
fn assert_same_value(id: &str, live: &serde_json::Value, row: &HashMap<String, String>) {
    for (field, decimals) in [
        ("p_alive", 6),
        ("expected_purchases_90d", 6),
        ("expected_spend_90d", 2),
        ("clv_365d", 2),
    ] {
        match row[field].as_str() {
            "" => assert_eq!(
                live.get(field),
                Some(&serde_json::Value::Null),
                "{id}: {field}"
            ),
            cell => {
                let batch: f64 = cell.parse().unwrap();
                let live = live[field]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{id}: {field}"));
                let tolerance = 0.5 * 10f64.powi(-decimals) + 1e-9;
                assert!(
                    (batch - live).abs() <= tolerance,
                    "{id}: {field}: batch {batch}, stream {live}"
                );
            }
        }
    }
    let next = live["next_purchase_at"].as_str().unwrap_or("");
    assert_eq!(next, row["next_purchase_at"], "{id}: next_purchase_at");
}

/// With a format 1 model (no value parameters) the value fields are null in the API and
/// absent from every task, and no number anywhere is NaN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_value_parameters_gives_no_value_fields_and_no_nan() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let rows = transactions();
    let mut c = redis.conn().await;
    let pipe = xadd_rows(&rows);
    pipe.query_async::<()>(&mut c).await.unwrap();
    // The test settings serve the recency model, a format 1 file.
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    wait_for("win-back tasks", std::time::Duration::from_secs(10), || {
        let redis = &redis;
        async move { xlen(&mut redis.conn().await, WINBACK).await > 0 }
    })
    .await;
    let mut tasks = read_stream(&mut c, WINBACK).await;
    tasks.extend(read_stream(&mut c, CARE).await);
    tasks.retain(|(_, f)| f["record"] == "task");
    let kinds: std::collections::BTreeSet<&str> =
        tasks.iter().map(|(_, t)| t["kind"].as_str()).collect();
    assert!(kinds.len() >= 2, "win-back and care tasks: {kinds:?}");
    for (_, task) in &tasks {
        for field in VALUE_FIELDS {
            assert!(!task.contains_key(field), "{field} on {task:?}");
        }
        for (name, value) in task {
            assert!(!value.to_lowercase().contains("nan"), "{name} = {value}");
        }
        if task["kind"] == "winback" {
            assert!(task["priority"].parse::<f64>().unwrap().is_finite());
        }
    }
    let mut buyers = 0;
    for c in 0..150 {
        let response = app.get(&format!("/v1/customers/cust-{c:03}")).await;
        let text = response.text().await.unwrap();
        assert!(!text.contains("NaN"), "{text}");
        let live: serde_json::Value = serde_json::from_str(&text).unwrap();
        for field in VALUE_FIELDS {
            assert_eq!(
                live.get(field),
                Some(&serde_json::Value::Null),
                "{field} of cust-{c:03}"
            );
        }
        buyers += usize::from(!live["churn_probability"].is_null());
    }
    assert!(buyers > 100, "{buyers} buyers");
    app.stop().await;
}
