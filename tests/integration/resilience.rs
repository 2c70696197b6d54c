//! Redis going away and coming back; entries left pending by an earlier run.

use std::time::{Duration, Instant};

use crate::helpers::*;

const EVENTS: &str = "churn:events";

async fn customer_count(app: &App) -> i64 {
    app.get_json("/v1/summary").await["customers"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pending_entries_are_processed_first_on_start() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    create_group(&mut c, EVENTS).await;
    for i in 0..3 {
        xadd(&mut c, EVENTS, &purchase(&format!("early-{i}"), 1.0, T0_MS)).await;
    }
    // A previous run of this consumer read them and died before acknowledging.
    leave_pending(&mut c, EVENTS).await;
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 3))
    );

    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(customer_count(&app).await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing() {
    let mut redis = RedisServer::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    let mut c = redis.conn().await;
    for i in 0..50 {
        xadd(
            &mut c,
            EVENTS,
            &purchase(&format!("before-{i}"), 1.0, T0_MS + i),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;

    redis.restart();
    let mut c = redis.conn().await;
    for i in 0..50 {
        xadd(
            &mut c,
            EVENTS,
            &purchase(&format!("after-{i}"), 1.0, T0_MS + DAY_MS + i),
        )
        .await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(customer_count(&app).await, 100);
    assert!(
        app.metric("churnd_redis_errors_total{role=\"source\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_the_group_back() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("before", 1.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    redis.restart(); // no persistence: stream and group are gone
    let mut c = redis.conn().await;
    wait_for("the group to be recreated", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { group_state(&mut c, EVENTS, "churnd").await.is_some() }
    })
    .await;
    xadd(&mut c, EVENTS, &purchase("after", 1.0, T0_MS + DAY_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(app.get("/v1/customers/after").await.status(), 200);
    assert_eq!(
        customer_count(&app).await,
        2,
        "state built before the loss is kept"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stranded_on_a_consumer_that_is_gone_are_claimed() {
    // Without kept state nothing is replayed: the entries are claimed.
    stranded_entries_are_applied_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stranded_on_a_consumer_that_is_gone_are_replayed_at_start() {
    // With kept state, the start moves the group back and delivers them again.
    stranded_entries_are_applied_once(true).await;
}

/// Entries a gone replica read and never acknowledged, one deleted since: each is applied
/// once, the deleted one dead-lettered, the gone consumer removed.
async fn stranded_entries_are_applied_once(keep_state: bool) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    create_group(&mut c, EVENTS).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            xadd(
                &mut c,
                EVENTS,
                &purchase(&format!("stranded-{i}"), 1.0, T0_MS + i),
            )
            .await,
        );
    }
    // A replica that died under another name: it read the entries and never acknowledged.
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("churnd")
        .arg("dead-replica")
        .arg("STREAMS")
        .arg(EVENTS)
        .arg(">")
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap();
    // One of them was deleted from the stream meanwhile.
    redis::cmd("XDEL")
        .arg(EVENTS)
        .arg(&ids[4])
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let mut settings = test_settings(&redis, dir.path());
    settings.source.claim_idle = Some(churnd::config::Interval::from_millis(300));
    if !keep_state {
        settings.state.dir = Default::default();
    }
    let app = App::spawn(settings).await;
    if !keep_state {
        wait_for(
            "the stranded entries to be claimed",
            Duration::from_secs(10),
            || {
                let app = &app;
                async move { app.metric("churnd_entries_claimed_total").await == Some(5.0) }
            },
        )
        .await;
    }
    wait_for("the group to be drained", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { group_state(&mut c, EVENTS, "churnd").await.map(|g| g.1) == Some(0) }
    })
    .await;
    wait_for(
        "the stranded entries to be applied",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move { customer_count(app).await == 4 }
        },
    )
    .await;
    if keep_state {
        assert_eq!(
            app.metric("churnd_entries_claimed_total").await,
            Some(0.0),
            "replayed, not claimed"
        );
    }
    let dead = read_stream(&mut c, "churn:events:dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1["dlq_reason"], "entry_deleted");
    assert_eq!(dead[0].1["dlq_source_id"], ids[4]);
    wait_for(
        "the gone consumer to be removed",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                let reply: redis::Value = redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(EVENTS)
                    .arg("churnd")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                churnd::source::lag::other_consumers(&reply, "test-consumer").is_empty()
            }
        },
    )
    .await;
    app.stop().await;
}

/// A Redis that stops answering (SIGSTOP: connections stay open, writes time out) shows as
/// disconnected for every role, the sink included, and as connected again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_shows_as_disconnected_until_it_answers_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let response_timeout = settings.redis.response_timeout.get();
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("before", 1.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    let connected = |role: &'static str| {
        let app = &app;
        async move {
            app.metric(&format!("churnd_redis_connected{{role=\"{role}\"}}"))
                .await
        }
    };
    wait_for(
        "the sink to be connected",
        Duration::from_secs(30),
        || async { connected("sink").await == Some(1.0) },
    )
    .await;

    redis.freeze();
    wait_for(
        "every role to show the frozen Redis",
        Duration::from_secs(60),
        || async {
            connected("sink").await == Some(0.0)
                && connected("source").await == Some(0.0)
                && connected("monitor").await == Some(0.0)
        },
    )
    .await;
    // Reconnecting reaches the kernel's listen backlog, not Redis: that is no connection.
    let until = Instant::now() + 2 * response_timeout;
    while Instant::now() < until {
        assert_eq!(connected("sink").await, Some(0.0), "while frozen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    redis.thaw();
    wait_for(
        "every role to be connected again",
        Duration::from_secs(60),
        || async {
            connected("sink").await == Some(1.0)
                && connected("source").await == Some(1.0)
                && connected("monitor").await == Some(1.0)
        },
    )
    .await;
    xadd(&mut c, EVENTS, &purchase("after", 1.0, T0_MS + DAY_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(customer_count(&app).await, 2);
    app.stop().await;
}
