//! Events in, features, probabilities and win-back tasks out.

use std::time::Duration;

use churnd::config::ClockMode;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_and_probability_match_hand_computed_values() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("alice", 10.0, T0_MS)).await;
    xadd(
        &mut c,
        EVENTS,
        &purchase("alice", 20.0, T0_MS + 30 * DAY_MS),
    )
    .await;
    xadd(&mut c, EVENTS, &purchase("bob", 5.0, T0_MS + 60 * DAY_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let alice = app.get_json("/v1/customers/alice").await;
    assert_eq!(
        alice["as_of"], "1997-03-02T00:00:00Z",
        "now is bob's purchase, day 60"
    );
    let feature = |name: &str| alice["features"][name].as_f64().unwrap();
    // 30-day half-life at day 60: counts 2^-2 + 2^-1, spend 10·2^-2 + 20·2^-1.
    assert!((feature("log_frequency_30d") - 0.75f64.ln_1p()).abs() < 1e-6);
    assert!((feature("log_monetary_30d") - 12.5f64.ln_1p()).abs() < 1e-5);
    // 365-day half-life: 2^(-60/365) + 2^(-30/365).
    let f365 = (-60.0f64 / 365.0).exp2() + (-30.0f64 / 365.0).exp2();
    assert!((feature("log_frequency_365d") - f365.ln_1p()).abs() < 1e-6);
    assert!((feature("log_recency_days") - 30f64.ln_1p()).abs() < 1e-12);
    assert!((feature("overdue_ratio") - 1.0).abs() < 1e-12);
    let p = alice["churn_probability"].as_f64().unwrap();
    assert!((p - recency_model_probability(30.0)).abs() < 1e-12, "{p}");
    assert_eq!(alice["rfm"]["purchases"], 2);
    assert!((alice["rfm"]["total_spend"].as_f64().unwrap() - 30.0).abs() < 1e-9);
    assert_eq!(alice["lifecycle_stage"], "active");
    assert_eq!(alice["risk"], "medium", "p = {p}");
    assert_eq!(alice["reasons"][0], "log_recency_days:high");
    assert_eq!(alice["model_version"], "recency-1");
    app.stop().await;
}

/// Days of silence at which the test model's probability reaches 0.7.
fn days_to_threshold() -> f64 {
    (3.0 + 0.5 * (1.0 + (0.7f64 / 0.3).ln())).exp() - 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_customer_gets_a_task_without_further_events() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("quiet", 50.0, T0_MS)).await;
    // Only someone else's activity moves event time on.
    for day in (0..=120).step_by(10) {
        xadd(
            &mut c,
            EVENTS,
            &purchase("busy", 10.0, T0_MS + day * DAY_MS),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;

    let tasks = read_stream(&mut c, WINBACK).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0].1;
    assert_eq!(task["customer_id"], "quiet");
    assert_eq!(task["kind"], "winback");
    // Noticed within a day (scoring.rescore_interval_secs) of crossing the threshold.
    let as_of = churnd::time::parse_date_or_datetime(&task["as_of"]).expect("as_of is a time");
    let day = (u64::from(as_of) * 1000 - T0_MS) as f64 / DAY_MS as f64;
    assert!(
        (days_to_threshold()..=days_to_threshold() + 1.0).contains(&day),
        "task {day} days after the purchase, threshold crossed after {}",
        days_to_threshold()
    );
    assert_eq!(
        task["churn_probability"],
        format!("{:.6}", recency_model_probability(day))
    );
    assert_eq!(task["risk"], "high");
    assert_eq!(task["lifecycle_stage"], "active");
    // R high (50 ≤ 90 days), F low (one purchase), M low (about 45 < 100).
    assert_eq!(task["segment"], "general_development");
    assert_eq!(task["action"], "email_reminder");
    let m365 = 50.0 * (-day / 365.0).exp2();
    assert_eq!(
        task["priority"],
        format!("{:.2}", recency_model_probability(day) * m365)
    );
    assert_eq!(task["reasons"], "log_recency_days:high");
    assert_eq!(task["model_version"], "recency-1");
    assert_eq!(task["group"], "treatment");
    assert_eq!(task["episode_start"], "1997-01-01T00:00:00Z");
    assert_eq!(task["attempt"], "1");
    assert_eq!(task["task_id"].len(), 32);
    assert!(app.metric("churnd_silence_rescores_total").await.unwrap() > 0.0);
    assert_eq!(
        app.metric("churnd_winback_tasks_total{action=\"email_reminder\",group=\"treatment\"}")
            .await,
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_wall_clock_silence_alone_raises_the_task() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.clock.mode = ClockMode::Wall;
    settings.scoring.rescore_interval_secs = std::num::NonZeroU32::MIN;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The purchase is 4 s short of the silence that crosses the threshold.
    let crossing_ms = (days_to_threshold() * DAY_MS as f64) as u64;
    let ts = now_ms - crossing_ms + 4_000;
    xadd(&mut c, EVENTS, &purchase("drifting", 30.0, ts)).await;
    wait_for(
        "a task raised by the passing of time",
        Duration::from_secs(15),
        || {
            let mut c = c.clone();
            async move { xlen(&mut c, WINBACK).await == 1 }
        },
    )
    .await;
    let task = &read_stream(&mut c, WINBACK).await[0].1;
    let as_of = churnd::time::parse_date_or_datetime(&task["as_of"]).unwrap() as u64;
    assert!(
        as_of * 1000 >= ts + crossing_ms - 1000,
        "raised at the crossing, not at the event"
    );
    assert!(task["churn_probability"].parse::<f64>().unwrap() >= 0.7);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_events_yields_no_duplicate_task() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let app = App::spawn(settings.clone()).await;
    let mut c = redis.conn().await;
    let history = [
        purchase("quiet", 20.0, T0_MS),
        purchase("busy", 20.0, T0_MS + 100 * DAY_MS),
    ];
    for e in &history {
        xadd(&mut c, EVENTS, e).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(xlen(&mut c, WINBACK).await, 1);
    let first = read_stream(&mut c, WINBACK).await[0].1["task_id"].clone();

    // The same events again, to the same daemon.
    for e in &history {
        xadd(&mut c, EVENTS, e).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(xlen(&mut c, WINBACK).await, 1);
    app.stop().await;

    // A fresh daemon (empty memory) replaying the whole stream under a new group.
    let mut replay = settings;
    replay.source.group = "replay".into();
    replay.state.dir = dir.path().join("replay-state");
    let app = App::spawn(replay).await;
    wait_drained(&mut c, EVENTS, "replay").await;
    wait_for(
        "the replayed task to be recognised",
        Duration::from_secs(5),
        || {
            let app = &app;
            async move { app.metric("churnd_winback_tasks_duplicate_total").await == Some(1.0) }
        },
    )
    .await;
    let tasks = read_stream(&mut c, WINBACK).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].1["task_id"], first);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_spaces_tasks_and_a_purchase_counts_as_recovery() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.winback.max_tasks_per_episode = std::num::NonZeroU8::new(2).unwrap();
    settings.winback.cooldown_days = 30;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("quiet", 20.0, T0_MS)).await;
    xadd(
        &mut c,
        EVENTS,
        &purchase("busy", 20.0, T0_MS + 200 * DAY_MS),
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    let tasks = read_stream(&mut c, WINBACK).await;
    assert_eq!(
        tasks.len(),
        2,
        "two attempts in the episode, no more: {tasks:?}"
    );
    let (a, b) = (&tasks[0].1, &tasks[1].1);
    assert_eq!((a["attempt"].as_str(), b["attempt"].as_str()), ("1", "2"));
    assert_ne!(a["task_id"], b["task_id"]);
    let day = |t: &std::collections::HashMap<String, String>| {
        churnd::time::parse_date_or_datetime(&t["as_of"]).unwrap() as u64 * 1000
    };
    assert_eq!(day(b) - day(a), 30 * DAY_MS, "the cooldown is 30 days");

    xadd(
        &mut c,
        EVENTS,
        &purchase("quiet", 20.0, T0_MS + 201 * DAY_MS),
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    wait_for("a recovery", Duration::from_secs(5), || {
        let app = &app;
        async move {
            app.metric("churnd_winback_recoveries_total{group=\"treatment\"}")
                .await
                == Some(1.0)
        }
    })
    .await;
    assert_eq!(
        app.get_json("/v1/customers/quiet").await["winback_tasks_in_episode"],
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_group_gets_its_tasks_in_the_control_stream() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.winback.control_share = 1.0;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("held-out", 20.0, T0_MS)).await;
    xadd(
        &mut c,
        EVENTS,
        &purchase("busy", 20.0, T0_MS + 100 * DAY_MS),
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(
        xlen(&mut c, WINBACK).await,
        0,
        "marketing must not see control customers"
    );
    let control = read_stream(&mut c, "churn:winback:control").await;
    assert_eq!(control.len(), 1);
    assert_eq!(control[0].1["group"], "control");
    assert_eq!(control[0].1["customer_id"], "held-out");
    app.stop().await;
}
