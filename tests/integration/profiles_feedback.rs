//! Profiles, tags and feedback through real Redis: a profile and its tags round trip through
//! the API and onto tasks, birthdays under the event clock, a service recovery at once (even
//! under the contact cap, holding back the win-back due with it), no duplicate on a replay,
//! and every malformed profile and feedback event dead-lettered with its reason.

use std::collections::HashMap;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const TASKS: &str = "crm:tasks";
const DLQ: &str = "churn:events:dlq";

/// Three purchases of 50 within ten days from `day`: important value under the test
/// settings' fixed thresholds.
async fn valuable(c: &mut redis::aio::MultiplexedConnection, customer: &str, day: u64) {
    for k in 0..3 {
        xadd(
            c,
            EVENTS,
            &purchase(customer, 50.0, T0_MS + (day + 5 * k) * DAY_MS),
        )
        .await;
    }
}

fn by_kind(tasks: &[StreamEntry], kind: &str) -> Vec<HashMap<String, String>> {
    tasks
        .iter()
        .filter(|(_, f)| f["kind"] == kind)
        .map(|(_, f)| f.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_and_its_tags_reach_the_api_and_the_tasks_once_even_on_replay() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.profiles.regions = vec!["eu".into()];
    settings.tasks.welcome.enabled = false;
    let app = App::spawn(settings.clone()).await;
    let mut c = redis.conn().await;
    valuable(&mut c, "ada", 0).await;
    xadd(
        &mut c,
        EVENTS,
        &event(
            "ada",
            "profile",
            T0_MS + 10 * DAY_MS,
            &[
                ("region", "eu"),
                ("age_band", "35-44"),
                ("birthday", "1970-01-20"),
                ("loyalty_tier", "gold"),
            ],
        ),
    )
    .await;
    // A very low score: a service recovery at once.
    xadd(
        &mut c,
        EVENTS,
        &event("ada", "feedback", T0_MS + 11 * DAY_MS, &[("score", "1")]),
    )
    .await;
    // Event time moves on past the birthday (20 January, greeted 3 days before).
    xadd(
        &mut c,
        EVENTS,
        &event("clock", "visit", T0_MS + 25 * DAY_MS, &[]),
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let view = app.get_json("/v1/customers/ada").await;
    assert_eq!(view["profile"]["region"], "eu");
    assert_eq!(view["profile"]["loyalty_tier"], "gold");
    assert_eq!(view["tags"], serde_json::json!(["vip"]));
    assert_eq!(view["dissatisfaction"]["last_feedback_score"], 1);
    let summary = app.get_json("/v1/summary").await;
    assert_eq!(summary["by_region"]["eu"], 1);
    assert_eq!(summary["by_region"]["none"], 1, "the clock customer");
    assert_eq!(
        app.metric("churnd_customers_by_region{region=\"eu\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        app.metric("churnd_tasks_total{kind=\"service_recovery\"}")
            .await,
        Some(1.0)
    );
    app.stop().await;

    let tasks = read_stream(&mut c, TASKS).await;
    let recovery = by_kind(&tasks, "service_recovery");
    assert_eq!(recovery.len(), 1, "{tasks:?}");
    let r = &recovery[0];
    assert_eq!(r["customer_id"], "ada");
    assert_eq!(r["action"], "service_recovery_call");
    assert_eq!(r["score"], "1");
    assert_eq!(r["feedback_at"], "1997-01-12T00:00:00Z");
    assert_eq!(r["segment"], "important_value");
    assert_eq!(r["tags"], "vip");
    assert_eq!(r["profile_region"], "eu");
    assert_eq!(r["profile_age_band"], "35-44");
    assert_eq!(r["profile_loyalty_tier"], "gold");
    let birthday = by_kind(&tasks, "birthday");
    assert_eq!(birthday.len(), 1, "{tasks:?}");
    assert_eq!(birthday[0]["birthday"], "1997-01-20T00:00:00Z");
    // Due from 17 January, but the service recovery on the 12th capped contacts for seven
    // whole days: the greeting goes out when the cap ends, on the day itself.
    assert_eq!(birthday[0]["as_of"], "1997-01-20T00:00:00Z");
    assert_eq!(birthday[0]["profile_birthday"], "1970-01-20");

    // The whole stream again with no state: the same tasks, none written twice.
    let app = replay_without_state(&mut c, EVENTS, settings).await;
    assert_eq!(read_stream(&mut c, TASKS).await, tasks);
    assert_eq!(
        app.metric("churnd_tasks_total{kind=\"service_recovery\"}")
            .await,
        Some(0.0),
        "the replay's service recovery was a duplicate"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_recovery_goes_out_under_the_cap_and_holds_back_the_win_back_due_with_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.tasks.welcome.enabled = false;
    // Every buyer over 0.3 gets a win-back after 30 days of silence.
    settings.winback.threshold = 0.3;
    settings.winback.segment_thresholds.clear();
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    valuable(&mut c, "bo", 0).await;
    // Silent since day 10, bo's win-back would be due on day 40. Two very low scores
    // before that, on days 35 and 37: both answered, the second under the cap the first set.
    for day in [35, 37] {
        xadd(
            &mut c,
            EVENTS,
            &event("bo", "feedback", T0_MS + day * DAY_MS, &[("score", "1")]),
        )
        .await;
    }
    for day in [41, 46, 60] {
        xadd(
            &mut c,
            EVENTS,
            &event("clock", "visit", T0_MS + day * DAY_MS, &[]),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;

    let recovery = by_kind(&read_stream(&mut c, TASKS).await, "service_recovery");
    let at: Vec<&str> = recovery.iter().map(|r| r["as_of"].as_str()).collect();
    assert_eq!(at, ["1997-02-05T00:00:00Z", "1997-02-07T00:00:00Z"]);
    let winback = read_stream(&mut c, WINBACK).await;
    let bo: Vec<_> = winback
        .iter()
        .filter(|(_, f)| f["customer_id"] == "bo")
        .collect();
    assert_eq!(bo.len(), 1, "{winback:?}");
    // Held until 7 whole days after the last recovery's day (day 45), not sent on day 40.
    assert_eq!(bo[0].1["as_of"], "1997-02-15T00:00:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_profile_and_feedback_events_are_dead_lettered_with_their_reason() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.profiles.max_free_keys = 1;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    let long = "x".repeat(65);
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        (event("p1", "profile", T0_MS, &[]), "empty_profile"),
        (
            event("p2", "profile", T0_MS, &[("Region", "eu")]),
            "invalid_profile_key",
        ),
        (
            event("p3", "profile", T0_MS, &[("region", &long)]),
            "invalid_profile_value",
        ),
        (
            event("p4", "profile", T0_MS, &[("birthday", "1990-02-30")]),
            "invalid_profile_value",
        ),
        (
            event(
                "p5",
                "profile",
                T0_MS,
                &[("region", "eu"), ("region", "us")],
            ),
            "duplicate_field",
        ),
        (
            event("p6", "profile", T0_MS, &[("loyalty_tier", "gold")]),
            "",
        ),
        (
            event("p7", "profile", T0_MS, &[("nickname", "bo")]),
            "unknown_profile_key",
        ),
        (event("f1", "feedback", T0_MS, &[]), "missing_score"),
        (
            event("f2", "feedback", T0_MS, &[("score", "6")]),
            "invalid_score",
        ),
        (
            event("f3", "feedback", T0_MS, &[("score", "four")]),
            "invalid_score",
        ),
        (event("f4", "feedback", T0_MS, &[("score", "4")]), ""),
    ];
    let mut ids = Vec::new();
    for (fields, _) in &cases {
        ids.push(xadd(&mut c, EVENTS, fields).await);
    }
    wait_drained(&mut c, EVENTS, "churnd").await;

    let dead = read_stream(&mut c, DLQ).await;
    let expected: Vec<(&str, &str)> = cases
        .iter()
        .zip(&ids)
        .filter(|((_, reason), _)| !reason.is_empty())
        .map(|((_, reason), id)| (id.as_str(), *reason))
        .collect();
    let got: Vec<(&str, &str)> = dead
        .iter()
        .map(|(_, f)| (f["dlq_source_id"].as_str(), f["dlq_reason"].as_str()))
        .collect();
    assert_eq!(got, expected);
    for (_, f) in &dead {
        assert!(!f["dlq_detail"].is_empty());
        assert!(f.contains_key("customer_id"), "original fields kept: {f:?}");
    }
    for reason in [
        "empty_profile",
        "invalid_profile_key",
        "unknown_profile_key",
        "missing_score",
    ] {
        assert_eq!(
            app.metric(&format!(
                "churnd_events_dead_lettered_total{{reason=\"{reason}\"}}"
            ))
            .await,
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        app.metric("churnd_events_dead_lettered_total{reason=\"invalid_profile_value\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        app.get("/v1/customers/p7").await.status(),
        404,
        "rejected: nobody made"
    );
    let p6 = app.get_json("/v1/customers/p6").await;
    assert_eq!(p6["profile"]["loyalty_tier"], "gold");
    app.stop().await;
}
