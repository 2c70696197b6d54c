//! Fresh tasks and outcomes, end to end on a real Redis: a backfill under the wall clock,
//! cancels when a customer buys while a task is open, outcome records. (Outcomes and cancels
//! exactly once across kill -9: tests/integration/crash.rs.)

use std::time::Duration;

use churnd::config::{BatchSize, ClockMode};

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const OUTCOMES: &str = "churn:outcomes";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn visit(customer: &str, ts_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("customer_id", customer.into()),
        ("type", "visit".into()),
        ("ts", ts_ms.to_string()),
    ]
}

/// Records of `record` kind (`task`, `cancel`) in a task stream.
async fn records(
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    record: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    read_stream(c, stream)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| f.get("record").map(String::as_str) == Some(record))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_year_under_the_wall_clock_tasks_only_who_is_still_silent_once_caught_up() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.clock.mode = ClockMode::Wall;
    settings.scoring.rescore_interval_secs = std::num::NonZeroU32::MIN;
    // Small reads: the backlog takes many, as a large one would.
    settings.source.batch_size = BatchSize::new(10).unwrap();
    let mut c = redis.conn().await;
    let now = now_ms();
    let year_ago = now - 365 * DAY_MS;
    // A year of history written before churnd starts: `back` bought a year ago and again two
    // days ago, 300 entries later; `gone` only a year ago.
    xadd(&mut c, EVENTS, &purchase("back", 40.0, year_ago)).await;
    xadd(&mut c, EVENTS, &purchase("gone", 40.0, year_ago)).await;
    for i in 0..300u64 {
        let ts = year_ago + (i + 1) * DAY_MS;
        xadd(&mut c, EVENTS, &visit(&format!("browser-{i}"), ts)).await;
    }
    xadd(&mut c, EVENTS, &purchase("back", 25.0, now - 2 * DAY_MS)).await;
    let app = App::spawn(settings).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    // Live traffic, then the task of the customer still silent, raised once caught up.
    xadd(&mut c, EVENTS, &visit("live", now_ms())).await;
    wait_for(
        "a fresh task for the customer still silent",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move { !records(&mut c, WINBACK, "task").await.is_empty() }
        },
    )
    .await;
    wait_for("caught up", Duration::from_secs(30), || {
        let app = &app;
        async move { app.metric("churnd_catching_up").await == Some(0.0) }
    })
    .await;
    let tasks = records(&mut c, WINBACK, "task").await;
    let customers: Vec<&str> = tasks.iter().map(|t| t["customer_id"].as_str()).collect();
    assert_eq!(
        customers,
        ["gone"],
        "no task for `back`, whose purchase was in the backlog"
    );
    let task = &tasks[0];
    assert_eq!(task["schema_version"], "1");
    let as_of = churnd::time::parse_date_or_datetime(&task["as_of"]).unwrap() as u64 * 1000;
    assert!(
        as_of + 60_000 >= now,
        "raised at wall time, not back then: {as_of} vs {now}"
    );
    let expires_at =
        churnd::time::parse_date_or_datetime(&task["expires_at"]).unwrap() as u64 * 1000;
    assert_eq!(expires_at, as_of + 7 * DAY_MS);
    // The tasks raised back then (welcomes, a year ago) were never written.
    let text = app.metrics().await;
    let dropped: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("churnd_tasks_expired_total{")
                || l.starts_with("churnd_tasks_held_back_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped >= 2.0, "tasks expired or held back: {dropped}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_while_a_task_is_open_cancels_it_and_every_task_gets_one_outcome() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.winback.control_share = 0.5;
    // Win-back alone: the care kinds would raise tasks (and outcomes) of their own.
    settings.tasks.welcome.enabled = false;
    settings.tasks.convert.enabled = false;
    settings.tasks.revisit.enabled = false;
    let app = App::spawn(settings.clone()).await;
    let mut c = redis.conn().await;
    for customer in ["buyer", "quiet"] {
        xadd(&mut c, EVENTS, &purchase(customer, 30.0, T0_MS)).await;
    }
    // Event time moves on: both are tasked once silent long enough (about 50 days).
    for day in 1..=60 {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    let group = |customer: &str| {
        let settings = &settings;
        churnd::decide::Playbook::new(&settings.winback, &settings.tasks, &[])
            .group(customer)
            .as_str()
            .to_string()
    };
    let stream_of = |customer: &str| {
        if group(customer) == "control" {
            "churn:winback:control"
        } else {
            WINBACK
        }
    };
    let task_of = |customer: &'static str| {
        let c = c.clone();
        async move {
            let mut c = c;
            records(&mut c, stream_of(customer), "task")
                .await
                .into_iter()
                .find(|t| t["customer_id"] == customer)
                .unwrap_or_else(|| panic!("a task for {customer}"))
        }
    };
    let buyer_task = task_of("buyer").await;
    let quiet_task = task_of("quiet").await;
    let raised_ms = |t: &std::collections::HashMap<String, String>| {
        churnd::time::parse_date_or_datetime(&t["as_of"]).unwrap() as u64 * 1000
    };

    // The buyer comes back 5 days after the task: a cancel at once, in the task's stream
    // after it, and a converted outcome.
    let bought_ms = raised_ms(&buyer_task) + 5 * DAY_MS;
    xadd(&mut c, EVENTS, &purchase("buyer", 12.5, bought_ms)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    let stream = read_stream(&mut c, stream_of("buyer")).await;
    let at = |record: &str| {
        stream
            .iter()
            .position(|(_, f)| f["task_id"] == buyer_task["task_id"] && f["record"] == record)
    };
    assert!(at("task") < at("cancel"), "{stream:?}");
    let cancel = &stream[at("cancel").expect("a cancel")].1;
    assert_eq!(cancel["schema_version"], "1");
    assert_eq!(cancel["kind"], "winback");
    assert_eq!(cancel["customer_id"], "buyer");
    assert_eq!(cancel["action"], buyer_task["action"]);
    assert_eq!(cancel["reason"], "purchase");
    assert_eq!(cancel["cancelled_at"], bought_ms.to_string());

    // The quiet one's window closes 30 days after its task.
    let closes_ms = raised_ms(&quiet_task) + 30 * DAY_MS;
    for day in 61..=120 {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    let outcomes: Vec<_> = read_stream(&mut c, OUTCOMES)
        .await
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let of = |task: &std::collections::HashMap<String, String>| {
        outcomes
            .iter()
            .find(|o| o["task_id"] == task["task_id"])
            .unwrap_or_else(|| panic!("no outcome for {task:?}"))
            .clone()
    };
    let converted = of(&buyer_task);
    let expected = [
        ("schema_version", "1".to_string()),
        ("record", "outcome".into()),
        ("customer_id", "buyer".into()),
        ("kind", "winback".into()),
        ("action", buyer_task["action"].clone()),
        ("segment", buyer_task["segment"].clone()),
        ("group", group("buyer")),
        ("outcome", "converted".into()),
        ("revenue", "12.5".into()),
        ("days_to_convert", "5.000".into()),
        ("raised_at", raised_ms(&buyer_task).to_string()),
        ("closed_at", bought_ms.to_string()),
    ];
    for (field, value) in &expected {
        assert_eq!(&converted[*field], value, "{field}");
    }
    assert_eq!(converted.len(), expected.len() + 1, "{converted:?}");
    let lapsed = of(&quiet_task);
    assert_eq!(lapsed["outcome"], "not_converted");
    assert_eq!(lapsed["revenue"], "0");
    assert_eq!(lapsed["days_to_convert"], "");
    assert_eq!(lapsed["group"], group("quiet"));
    assert_eq!(lapsed["closed_at"], closes_ms.to_string());
    assert_eq!(
        app.metric("churnd_task_outcomes_total{kind=\"winback\",outcome=\"converted\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        app.metric("churnd_task_cancels_total{kind=\"winback\"}")
            .await,
        Some(1.0)
    );
    app.stop().await;
}
