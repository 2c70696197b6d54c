//! Batch scoring (`churnd score`) and the daemon agree: replaying a transactions file through
//! the stream with the event-time clock gives the probabilities `churnd score` computes from
//! the file.

use std::collections::HashMap;
use std::path::Path;

use churnd::time;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
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
    let scores_path = dir.path().join("scores.csv");
    let out = churnd()
        .args(["score", "--as-of", &as_of])
        .arg("--transactions")
        .arg(&csv)
        .arg("--model")
        .arg(&model)
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
    let batch: Vec<HashMap<String, String>> = reader.deserialize().map(Result::unwrap).collect();
    assert_eq!(batch.len(), 150, "every customer is scored");

    // Streaming: the same events, then one event at the as-of time to move the clock there
    // (the batch counts only events before it).
    let mut c = redis.conn().await;
    let mut pipe = redis::pipe();
    for (customer, kind, amount, ms) in &rows {
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
    settings.model.path = model;
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
    }
    assert!(compared > 100, "most customers bought: {compared}");
    app.stop().await;
}
