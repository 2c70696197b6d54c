//! Task kinds beyond win-back through real Redis: prospects' offers, welcomes, anniversaries,
//! revisits, the contact cap shared with win-back, per-kind switches and streams, and no
//! duplicates on a replay.

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const TASKS: &str = "crm:tasks";

/// Tasks of `stream` as (kind, customer) pairs, oldest first.
async fn kinds(c: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<(String, String)> {
    read_stream(c, stream)
        .await
        .into_iter()
        .map(|(_, f)| (f["kind"].clone(), f["customer_id"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prospects_get_an_offer_and_new_buyers_a_welcome_once_even_on_replay() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let app = App::spawn(settings.clone()).await;
    let mut c = redis.conn().await;
    for day in 0..4 {
        xadd(&mut c, EVENTS, &visit("browser", T0_MS + day * DAY_MS)).await;
    }
    xadd(&mut c, EVENTS, &purchase("newbie", 30.0, T0_MS)).await;
    xadd(&mut c, EVENTS, &purchase("regular", 30.0, T0_MS)).await;
    xadd(
        &mut c,
        EVENTS,
        &purchase("regular", 30.0, T0_MS + 5 * DAY_MS),
    )
    .await;
    // Event time passes the welcome day (14 days after the first purchase).
    xadd(&mut c, EVENTS, &visit("browser", T0_MS + 20 * DAY_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;

    let tasks = read_stream(&mut c, TASKS).await;
    assert_eq!(
        kinds(&mut c, TASKS).await,
        [
            ("convert".to_string(), "browser".to_string()),
            ("welcome".to_string(), "newbie".to_string())
        ],
        "{tasks:?}"
    );
    let (offer, welcome) = (&tasks[0].1, &tasks[1].1);
    assert_eq!(offer["action"], "first_purchase_offer");
    assert_eq!(offer["visits"], "3");
    assert_eq!(offer["lifecycle_stage"], "potential");
    assert_eq!(offer["as_of"], "1997-01-03T00:00:00Z");
    assert_eq!(welcome["action"], "welcome_follow_up");
    assert_eq!(welcome["first_purchase"], "1997-01-01T00:00:00Z");
    assert_eq!(welcome["as_of"], "1997-01-15T00:00:00Z");
    assert_eq!(welcome["task_id"].len(), 32);
    assert!(read_stream(&mut c, WINBACK).await.is_empty());

    // The whole stream again from its start, with no state: the same tasks, not written twice.
    let app = replay_without_state(&mut c, EVENTS, settings).await;
    assert_eq!(read_stream(&mut c, TASKS).await, tasks);
    assert_eq!(
        app.metric("churnd_tasks_total{kind=\"welcome\"}").await,
        Some(0.0),
        "the replay's welcome was a duplicate"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_cap_holds_a_welcome_after_a_win_back_and_releases_it_to_its_stream() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    // The win-back goes out on day 30 (the minimum silence; the test model scores the
    // customer over 0.3 from day 21), three days before the welcome falls due; the cap of 7
    // whole days after the win-back's day holds the welcome until day 38.
    settings.winback.threshold = 0.3;
    settings.winback.segment_thresholds.clear();
    settings.tasks.welcome.after_days = std::num::NonZeroU32::new(33).unwrap();
    settings.tasks.welcome.max_late_days = 14;
    settings.tasks.welcome.stream = "crm:welcome".into();
    settings.tasks.convert.enabled = false;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("held", 30.0, T0_MS)).await;
    for day in [0, 1, 2, 3, 4] {
        xadd(&mut c, EVENTS, &visit("prospect", T0_MS + day * DAY_MS)).await;
    }
    xadd(&mut c, EVENTS, &visit("prospect", T0_MS + 60 * DAY_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;

    let winback = read_stream(&mut c, WINBACK).await;
    assert_eq!(winback.len(), 1, "{winback:?}");
    assert_eq!(winback[0].1["customer_id"], "held");
    assert_eq!(winback[0].1["as_of"], "1997-01-31T00:00:00Z");
    let welcome = read_stream(&mut c, "crm:welcome").await;
    assert_eq!(welcome.len(), 1, "{welcome:?}");
    assert_eq!(welcome[0].1["kind"], "welcome");
    assert_eq!(welcome[0].1["customer_id"], "held");
    assert_eq!(welcome[0].1["as_of"], "1997-02-08T00:00:00Z");
    // Convert is switched off: the prospect gets nothing, and nothing went to the shared
    // stream.
    assert!(read_stream(&mut c, TASKS).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anniversaries_and_revisits_follow_the_calendar_under_the_event_clock() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    // Revisit every customer who has bought, whatever their segment, every 60 days.
    settings.tasks.revisit.segments = churnd::classify::Segment::ALL.to_vec();
    settings.tasks.revisit.every_days = std::num::NonZeroU32::new(60).unwrap();
    settings.tasks.welcome.enabled = false;
    settings.winback.enabled = false;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    // A weekly buyer for the first 10 weeks of 1997, then silence; a year and a half of
    // someone else's activity moves event time on.
    for week in 0..10 {
        xadd(
            &mut c,
            EVENTS,
            &purchase("loyal", 25.0, T0_MS + week * 7 * DAY_MS),
        )
        .await;
    }
    for day in (70..=560).step_by(7) {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;

    let loyal: Vec<(String, String)> = read_stream(&mut c, TASKS)
        .await
        .into_iter()
        .filter(|(_, f)| f["customer_id"] == "loyal")
        .map(|(_, f)| (f["kind"].clone(), f["as_of"].clone()))
        .collect();
    let at = |kind: &str, as_of: &str| (kind.to_string(), as_of.to_string());
    // Last purchase 1997-03-05 (day 63): revisits every 60 days from it, the anniversary
    // three days before 1 January; the revisit that would have fallen due on 1997-12-30
    // counts from the anniversary's contact instead.
    assert_eq!(
        loyal,
        [
            at("revisit", "1997-05-04T00:00:00Z"),
            at("revisit", "1997-07-03T00:00:00Z"),
            at("revisit", "1997-09-01T00:00:00Z"),
            at("revisit", "1997-10-31T00:00:00Z"),
            at("anniversary", "1997-12-29T00:00:00Z"),
            at("revisit", "1998-02-27T00:00:00Z"),
            at("revisit", "1998-04-28T00:00:00Z"),
            at("revisit", "1998-06-27T00:00:00Z")
        ]
    );
}
