//! The JSON Schemas of the records marketing automation reads (docs/schemas/: task, cancel,
//! outcome) against records churnd really wrote: the daemon runs on a real Redis, the test
//! reads every record of the task and outcome streams and validates each with
//! `check-jsonschema` (from `.ci/install-tools`). The schemas are closed sets, so a record
//! that gains an undocumented field or loses a required one fails; so does each schema when
//! a real record is changed that way.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const TASK_STREAMS: [&str; 4] = [
    "churn:winback",
    "churn:winback:control",
    "crm:tasks",
    "crm:tasks:control",
];
const OUTCOMES: &str = "churn:outcomes";

type Record = HashMap<String, String>;

/// `check-jsonschema` of `records` (each written to a file of its own) against the schema
/// `docs/schemas/<name>.schema.json`.
fn check(name: &str, records: &[Record], dir: &Path) -> Output {
    let dir = dir.join(format!("{name}-{}", next_batch()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = dir.join(format!("{name}-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(r).unwrap()).unwrap();
            path.display().to_string()
        })
        .collect();
    let schema = repo().join(format!("docs/schemas/{name}.schema.json"));
    Command::new(ops_tool("check-jsonschema"))
        .arg("--schemafile")
        .arg(&schema)
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("check-jsonschema could not be started: {e}"))
}

fn next_batch() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn assert_valid(name: &str, records: &[Record], dir: &Path) {
    let out = check(name, records, dir);
    assert!(
        out.status.success(),
        "{name} records do not match docs/schemas/{name}.schema.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_invalid(name: &str, record: Record, what: &str, dir: &Path) {
    let out = check(name, &[record], dir);
    assert!(
        !out.status.success(),
        "docs/schemas/{name}.schema.json accepts a record {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_cancel_and_outcome_record_matches_its_json_schema() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    // Both groups of every kind.
    settings.winback.control_share = 0.5;
    settings.tasks.control_share = 0.5;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;

    // Win-back and welcome for one-time buyers; a convert for a prospect; a service
    // recovery (and a profile) for a valuable customer who complains.
    for customer in ["ann", "ben", "cat", "dan", "eve", "fay"] {
        xadd(&mut c, EVENTS, &purchase(customer, 30.0, T0_MS)).await;
    }
    for day in 0..3 {
        xadd(
            &mut c,
            EVENTS,
            &purchase("vip", 400.0, T0_MS + day * DAY_MS),
        )
        .await;
        for prospect in ["pia", "pat"] {
            xadd(
                &mut c,
                EVENTS,
                &event(prospect, "visit", T0_MS + day * DAY_MS, &[]),
            )
            .await;
        }
    }
    let t = T0_MS + 3 * DAY_MS;
    xadd(
        &mut c,
        EVENTS,
        &event("vip", "profile", t, &[("region", "eu")]),
    )
    .await;
    xadd(
        &mut c,
        EVENTS,
        &event("vip", "feedback", t + 1, &[("score", "1")]),
    )
    .await;
    // Event time moves on: the one-time buyers are tasked once silent long enough.
    for day in 4..=60 {
        xadd(
            &mut c,
            EVENTS,
            &event("clock", "visit", T0_MS + day * DAY_MS, &[]),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    // Some buy again while their win-back task is open: cancels and conversions.
    for customer in ["ann", "ben", "cat"] {
        xadd(
            &mut c,
            EVENTS,
            &purchase(customer, 12.5, T0_MS + 61 * DAY_MS),
        )
        .await;
    }
    // The other windows close.
    for day in 62..=120 {
        xadd(
            &mut c,
            EVENTS,
            &event("clock", "visit", T0_MS + day * DAY_MS, &[]),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;

    let (mut tasks, mut cancels) = (Vec::new(), Vec::new());
    for stream in TASK_STREAMS {
        for (_, record) in read_stream(&mut c, stream).await {
            match record.get("record").map(String::as_str) {
                Some("task") => tasks.push(record),
                Some("cancel") => cancels.push(record),
                other => panic!("{stream}: a record of type {other:?}: {record:?}"),
            }
        }
    }
    let outcomes: Vec<Record> = read_stream(&mut c, OUTCOMES)
        .await
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    app.stop().await;

    // What the run must have covered for the check to mean something.
    let kinds: BTreeSet<&str> = tasks.iter().map(|t| t["kind"].as_str()).collect();
    for kind in ["winback", "convert", "welcome", "service_recovery"] {
        assert!(kinds.contains(kind), "no {kind} task among {kinds:?}");
    }
    let groups: BTreeSet<&str> = tasks.iter().map(|t| t["group"].as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["control", "treatment"]));
    assert!(
        tasks.iter().any(|t| t.contains_key("profile_region")),
        "no task with a profile"
    );
    assert!(!cancels.is_empty(), "no cancel");
    let results: BTreeSet<&str> = outcomes.iter().map(|o| o["outcome"].as_str()).collect();
    assert_eq!(results, BTreeSet::from(["converted", "not_converted"]));

    let out = dir.path();
    assert_valid("task", &tasks, out);
    assert_valid("cancel", &cancels, out);
    assert_valid("outcome", &outcomes, out);

    // The schemas are closed and complete: a real record with a field more, or one of its
    // required fields fewer, fails.
    let winback = tasks.iter().find(|t| t["kind"] == "winback").unwrap();
    for (name, record, required) in [
        ("task", winback, "churn_probability"),
        ("task", winback, "task_id"),
        ("cancel", &cancels[0], "cancelled_at"),
        ("outcome", &outcomes[0], "closed_at"),
    ] {
        let mut more = record.clone();
        more.insert("undocumented".into(), "1".into());
        assert_invalid(name, more, "with an undocumented field", out);
        let mut fewer = record.clone();
        fewer.remove(required);
        assert_invalid(name, fewer, &format!("without {required}"), out);
    }
    // A field of another kind is not one of this kind's.
    let welcome = tasks.iter().find(|t| t["kind"] == "welcome").unwrap();
    let mut mixed = welcome.clone();
    mixed.insert("attempt".into(), "1".into());
    assert_invalid(
        "task",
        mixed,
        "of kind welcome with win-back's attempt",
        out,
    );
}
