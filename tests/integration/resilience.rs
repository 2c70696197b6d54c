//! Redis going away and coming back; entries left pending by an earlier run.

use std::time::Duration;

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
