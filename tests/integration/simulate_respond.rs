//! `churnd simulate --respond-to`: the simulated customers answer the tasks they are sent, on
//! a real Redis: what an answered task adds to the event stream, and nothing else.

use std::collections::HashSet;
use std::time::Duration;

use churnd::config::Settings;
use churnd::connection::Connector;
use churnd::metrics::{Metrics, RedisRole};
use churnd::simulate::{self, SimulateOptions, SimulateReport};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const SEED: u64 = 7;
const EVENTS: u64 = 20_000;

fn options(stream: &str, rate: u64, respond_to: &[&str]) -> SimulateOptions {
    SimulateOptions {
        stream: stream.into(),
        partitions: churnd::partition::PartitionCount::ONE,
        customers: 20_000,
        history_days: 365,
        rate,
        speedup: 0.0,
        seed: SEED,
        events: EVENTS,
        invalid_per_mille: 0,
        max_len: 0,
        respond_to: respond_to.iter().map(|s| s.to_string()).collect(),
        lockstep: None,
    }
}

async fn simulate(redis_url: &str, options: SimulateOptions) -> SimulateReport {
    let mut settings = Settings::default();
    settings.redis.url = redis_url.to_owned();
    let connector = Connector::new(
        churnd::connection::client(&settings.redis).unwrap(),
        &settings.redis,
        Duration::from_secs(5),
        RedisRole::Simulate,
        &Metrics::new().redis,
    );
    simulate::run(options, connector, CancellationToken::new())
        .await
        .expect("the simulation runs")
}

/// (customer, type, amount, ms after the first event) of every event: a run's history
/// starts a year before its own start, so only times relative to it compare.
type Written = (String, String, String, u64);

async fn written(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<Written> {
    let entries = read_stream(conn, stream).await;
    let ts = |f: &std::collections::HashMap<String, String>| -> u64 { f["ts"].parse().unwrap() };
    let first = ts(&entries[0].1);
    entries
        .iter()
        .map(|(_, f)| {
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            (
                get("customer_id"),
                get("type"),
                get("amount"),
                ts(f) - first,
            )
        })
        .collect()
}

#[tokio::test]
async fn answered_tasks_add_purchases_of_treated_customers_and_nothing_else() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;

    // The customers' own behaviour, without tasks.
    let natural = simulate(&redis.url(), options("natural", 1_000_000, &[])).await;
    assert_eq!(natural.live, 0, "every event is history: times compare");
    let natural_events = written(&mut conn, "natural").await;

    // The same customers, sent tasks once the first few hundred have arrived: half of them
    // coupons, half control-group tasks; and tasks of another simulation.
    let url = redis.url();
    let acted =
        tokio::spawn(async move { simulate(&url, options("acted", 2_000, &["tasks"])).await });
    wait_for(
        "the first customers to arrive",
        Duration::from_secs(60),
        || {
            let mut conn = conn.clone();
            async move { xlen(&mut conn, "acted").await >= 3_000 }
        },
    )
    .await;
    let mut treated = HashSet::new();
    for n in 0..400u32 {
        let customer = format!("sim{SEED}-{n:07}");
        let group = if n % 2 == 0 { "treatment" } else { "control" };
        if group == "treatment" {
            treated.insert(customer.clone());
        }
        let task = [
            ("task_id", format!("t-{n}")),
            ("customer_id", customer),
            ("action", "coupon".to_string()),
            ("group", group.to_string()),
        ];
        xadd(&mut conn, "tasks", &task).await;
    }
    let stranger = [
        ("task_id", "t-x".to_string()),
        ("customer_id", format!("sim{}-0000001", SEED + 1)),
        ("action", "coupon".to_string()),
    ];
    xadd(&mut conn, "tasks", &stranger).await;
    let report = tokio::time::timeout(Duration::from_secs(300), acted)
        .await
        .expect("the acted-on simulation ends")
        .unwrap();
    assert_eq!(report.live, 0);
    assert_eq!(report.tasks_read, 400, "the stranger's task is not ours");
    assert_eq!(report.control_tasks_read, 200);
    // Coupons work on deal seekers (30 %) and a little on the nudgeable: some, not most.
    assert!(
        (3..=100).contains(&report.tasks_answered),
        "{} of 200 coupons answered",
        report.tasks_answered
    );

    // The acted-on stream is the natural one with the answers added: its other events are
    // the natural stream's, in order (cut short by as many as were added).
    let acted_events = written(&mut conn, "acted").await;
    let mut natural_iter = natural_events.iter().peekable();
    let mut extra = Vec::new();
    for event in &acted_events {
        if natural_iter.peek() == Some(&event) {
            natural_iter.next();
        } else {
            extra.push(event.clone());
        }
    }
    // Answers come within 25 days of the task; the run goes on for months after it.
    assert_eq!(
        extra.len(),
        report.tasks_answered as usize,
        "one purchase per answered task; the first extra events: {:?}",
        &extra[..extra.len().min(5)]
    );
    for (customer, kind, _, _) in &extra {
        assert_eq!(kind, "purchase");
        assert!(
            treated.contains(customer),
            "{customer} was not sent a coupon"
        );
    }
}
