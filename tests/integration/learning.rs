//! Learning from the holdout through real Redis: given an outcome stream where coupons
//! clearly lift one segment and do nothing for another, the daemon's next win-back tasks go
//! to the segment where they work (`winback.policy = learned`), while the playbook would task
//! both alike.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use churnd::classify::Segment;
use churnd::config::Settings;
use churnd::decide::{ActionBudget, WinbackPolicy};

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const OUTCOMES: &str = "churn:outcomes";
/// 2025-11-15 and 2025-11-20, midnight UTC, in ms: when the past tasks were raised and closed.
const RAISED_MS: u64 = 1_763_164_800_000;
const CLOSED_MS: u64 = 1_763_596_800_000;

/// Appends `total` outcome records of coupons to `segment` in `group`, `converted` of them
/// converted, in one pipeline.
async fn add_group(
    conn: &mut MultiplexedConnection,
    segment: &str,
    group: &str,
    (converted, total): (u32, u32),
    first_task: u128,
) {
    let mut pipe = redis::pipe();
    for i in 0..total {
        let fields = outcome_record(
            &["winback", "coupon", segment, group],
            (i < converted).then_some(20.0),
            (RAISED_MS, CLOSED_MS),
            first_task + u128::from(i),
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

/// One action, coupons (cost 5, no limit on volume), for every segment, under `policy`.
fn settings(redis: &RedisServer, dir: &std::path::Path, policy: WinbackPolicy) -> Settings {
    let mut settings = test_settings(redis, dir);
    settings.winback.actions = Segment::ALL
        .into_iter()
        .map(|s| (s, "coupon".to_string()))
        .collect();
    settings.winback.budgets = BTreeMap::from([("coupon".into(), ActionBudget::new(1e12, 5.0))]);
    settings.winback.policy = policy;
    settings.winback.learn.min_outcomes = 200;
    settings.winback.learn.exploration = 0.1;
    settings.tasks.welcome.enabled = false;
    settings
}

/// 100 buyers of 30 (general_development when they become candidates) and 100 of 300
/// (important_development) fall silent, event time moving on a day at a time: they cross the
/// threshold after about 50 days of silence, and a candidate passed over is looked at again
/// each day.
async fn buy_then_fall_silent(conn: &mut MultiplexedConnection) {
    let mut pipe = redis::pipe();
    for i in 0..200 {
        let amount = if i % 2 == 0 { 30.0 } else { 300.0 };
        let cmd = pipe.cmd("XADD").arg(EVENTS).arg("*");
        for (k, v) in purchase(&format!("c{i}"), amount, T0_MS) {
            cmd.arg(k).arg(v);
        }
    }
    let _: () = pipe.query_async(conn).await.unwrap();
    for day in 1..=70 {
        xadd(conn, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(conn, EVENTS, "churnd").await;
}

/// The win-back tasks written, per segment and per segment/effect.
async fn tasks_written(
    conn: &mut MultiplexedConnection,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let tasks = read_stream(conn, WINBACK).await;
    let (mut by_segment, mut by_effect) = (BTreeMap::new(), BTreeMap::new());
    for (_, task) in &tasks {
        *by_segment.entry(task["segment"].clone()).or_default() += 1;
        *by_effect
            .entry(format!("{}/{}", task["segment"], task["effect"]))
            .or_default() += 1;
    }
    (by_segment, by_effect)
}

/// Waits until the daemon serves the lift report: the engine has the book by then.
async fn wait_for_lift(app: &App) {
    wait_for("the lift report", Duration::from_secs(30), || {
        let url = app.url("/v1/lift");
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_go_to_the_segment_where_the_action_was_measured_to_work() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    // Coupons: +30 points for general_development (40 % against 10 %), nothing for
    // important_development (20 % either way), 1,000 outcomes per group.
    add_group(&mut c, "general_development", "treatment", (400, 1000), 0).await;
    add_group(
        &mut c,
        "general_development",
        "control",
        (100, 1000),
        10_000,
    )
    .await;
    add_group(
        &mut c,
        "important_development",
        "treatment",
        (200, 1000),
        20_000,
    )
    .await;
    add_group(
        &mut c,
        "important_development",
        "control",
        (200, 1000),
        30_000,
    )
    .await;

    let app = App::spawn(settings(&redis, dir.path(), WinbackPolicy::Learned)).await;
    wait_for_lift(&app).await;
    buy_then_fall_silent(&mut c).await;
    let skipped = app
        .metric("churnd_winback_skipped_total{reason=\"no_lift\"}")
        .await
        .unwrap_or(0.0);
    app.stop().await;
    let (by_segment, by_effect) = tasks_written(&mut c).await;

    let works = by_segment.get("general_development").copied().unwrap_or(0);
    let useless = by_segment
        .get("important_development")
        .copied()
        .unwrap_or(0);
    // Where coupons work, each draw of the lift (0.30 ± 0.02) × value (about 27) pays the
    // cost of 5: every candidate gets one. Where they do nothing, only the exploration floor
    // (10 %) and the posterior's tail above a lift of 5/274 (about 16 % of the rest) do:
    // about 25 of 100 (binomial sd 4.3). The playbook would task all 100 of each.
    assert!(works >= 95, "{by_segment:?} {by_effect:?}");
    assert!(useless <= 50, "{by_segment:?} {by_effect:?}");
    assert!(
        useless >= 3,
        "the exploration floor keeps measuring: {by_effect:?}"
    );
    assert!(
        by_effect.keys().all(|k| !k.ends_with("/stand_in")),
        "both arms were measured before the first candidate: {by_effect:?}"
    );
    // Each passed-over candidate is counted, again each day it is looked at.
    assert!(
        skipped >= (100 - useless) as f64,
        "skipped {skipped}, {by_segment:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playbook_ignores_the_outcomes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    add_group(&mut c, "important_development", "treatment", (200, 1000), 0).await;
    add_group(
        &mut c,
        "important_development",
        "control",
        (200, 1000),
        10_000,
    )
    .await;
    let app = App::spawn(settings(&redis, dir.path(), WinbackPolicy::Playbook)).await;
    wait_for_lift(&app).await;
    buy_then_fall_silent(&mut c).await;
    app.stop().await;
    let (by_segment, by_effect) = tasks_written(&mut c).await;
    assert_eq!(
        by_segment.get("important_development"),
        Some(&100),
        "{by_effect:?}"
    );
    assert_eq!(
        by_segment.get("general_development"),
        Some(&100),
        "{by_effect:?}"
    );
    assert!(
        by_effect.keys().all(|k| k.ends_with("/stand_in")),
        "{by_effect:?}"
    );
}
