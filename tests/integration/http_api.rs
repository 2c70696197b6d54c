//! The HTTP API: metrics, health, readiness and the customer endpoint.

use std::time::Duration;

use crate::helpers::*;

const EVENTS: &str = "churn:events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_in_prometheus_format() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Acknowledged per entry: churnd_entries_acknowledged_total counts them.
    let mut settings = test_settings(&redis, dir.path());
    settings.source.acknowledge = churnd::config::Acknowledge::PerEntry;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    for i in 0..5 {
        xadd(
            &mut c,
            EVENTS,
            &purchase(&format!("c{i}"), 10.0, T0_MS + i * DAY_MS),
        )
        .await;
    }
    xadd(
        &mut c,
        EVENTS,
        &[
            ("customer_id", "c0".into()),
            ("type", "visit".into()),
            ("ts", T0_MS.to_string()),
        ],
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    wait_for(
        "the lag gauge to report the drained group",
        Duration::from_secs(5),
        || {
            let app = &app;
            async move {
                app.metric("churnd_consumer_group_lag{stream=\"churn:events\"}")
                    .await
                    == Some(0.0)
                    && app
                        .metric("churnd_consumer_group_pending{stream=\"churn:events\"}")
                        .await
                        == Some(0.0)
            }
        },
    )
    .await;

    let response = app.get("/metrics").await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let expect = [
        (
            "churnd_events_total{outcome=\"applied\",type=\"purchase\"}",
            5.0,
        ),
        (
            "churnd_events_total{outcome=\"applied\",type=\"visit\"}",
            1.0,
        ),
        ("churnd_entries_acknowledged_total", 6.0),
        ("churnd_customers_tracked", 5.0),
        ("churnd_model_info{version=\"recency-1\"}", 1.0),
        ("churnd_ready", 1.0),
        ("churnd_redis_connected{role=\"source\"}", 1.0),
        ("churnd_redis_connected{role=\"sink\"}", 1.0),
        ("churnd_customers_by_stage{stage=\"new\"}", 5.0),
    ];
    for (series, value) in expect {
        assert_eq!(parse_metric(&text, series), Some(value), "{series}");
    }
    for family in [
        "churnd_batch_processing_duration_seconds_count",
        "churnd_event_latency_seconds_count",
        "churnd_sink_write_duration_seconds_count",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "churnd_customers_by_churn_probability{range=\"0.0-0.1\"}",
        "churnd_customers_by_segment{segment=\"general_development\"}",
    ] {
        assert!(parse_metric(&text, family).is_some(), "{family} missing");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_endpoint_returns_json_or_404() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("known/with spaces", 10.0, T0_MS)).await;
    xadd(
        &mut c,
        EVENTS,
        &[
            ("customer_id", "window-shopper".into()),
            ("type", "visit".into()),
            ("ts", T0_MS.to_string()),
        ],
    )
    .await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let known = app.get_json("/v1/customers/known%2Fwith%20spaces").await;
    assert_eq!(known["customer_id"], "known/with spaces");
    assert_eq!(known["lifecycle_stage"], "new");
    assert!(known["churn_probability"].as_f64().is_some());
    assert!(known["segment"].is_string());

    let visitor = app.get_json("/v1/customers/window-shopper").await;
    assert_eq!(visitor["lifecycle_stage"], "potential");
    assert!(
        visitor["churn_probability"].is_null(),
        "no score before a first purchase"
    );

    let missing = app.get("/v1/customers/nobody").await;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["error"].is_string());

    let summary = app.get_json("/v1/summary").await;
    assert_eq!(summary["customers"], 2);
    assert_eq!(summary["by_stage"]["potential"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_while_health_stays_up() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    redis.stop();
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert!(body["reasons"].to_string().contains("Redis"), "{body}");

    redis.restart();
    wait_for(
        "readiness once Redis is up",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move { app.get("/readyz").await.status() == 200 }
        },
    )
    .await;
    assert_eq!(app.metric("churnd_ready").await, Some(1.0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_endpoints_require_the_bearer_token_when_one_is_set() {
    const TOKEN: &str = "3f9a1c-customer-token";
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.customer_token = Some(TOKEN.into());
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("guarded", 10.0, T0_MS)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let http = reqwest::Client::new();
    let get = |path: &str, authorization: Option<&str>| {
        let mut request = http.get(app.url(path));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send()
    };
    for (authorization, challenge) in [
        (None, r#"Bearer realm="churnd""#),
        (
            Some("Bearer wrong-token"),
            r#"Bearer realm="churnd", error="invalid_token""#,
        ),
        (Some(&*format!("Bearer {TOKEN}x")), "invalid_token"),
        (Some(&*format!("Basic {TOKEN}")), r#"Bearer realm="churnd""#),
    ] {
        for path in ["/v1/customers/guarded", "/v1/summary"] {
            let response = get(path, authorization).await.unwrap();
            assert_eq!(response.status(), 401, "{path} with {authorization:?}");
            let www = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(www.contains(challenge), "{www}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
            assert!(!body.to_string().contains(TOKEN), "{body}");
        }
    }
    assert_eq!(
        app.metric("churnd_http_unauthorized_total").await,
        Some(8.0)
    );

    let bearer = format!("Bearer {TOKEN}");
    let customer = get("/v1/customers/guarded", Some(&bearer)).await.unwrap();
    assert_eq!(customer.status(), 200);
    let customer: serde_json::Value = customer.json().await.unwrap();
    assert_eq!(customer["customer_id"], "guarded");
    let lower = format!("bearer {TOKEN}");
    assert_eq!(
        get("/v1/summary", Some(&lower)).await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/v1/customers/nobody", Some(&bearer))
            .await
            .unwrap()
            .status(),
        404
    );
    // Probes and scraping need no token; unknown paths stay unknown.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(path, None).await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(get("/v1/nothing", None).await.unwrap().status(), 404);
    app.stop().await;
}

/// A large snapshot takes seconds to load; meanwhile probes and scrapers get answers. Here
/// 1,000,000 customers (about 0.2 s to load on a 2-core VM), polled every
/// millisecond from the moment the daemon starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_while_the_snapshot_loads() {
    use churnd::engine::{Customers, EngineState, StateHeader};
    use churnd::state::{codec, SnapshotDir};

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path()).validated().unwrap();
    let mut customers = Customers::new();
    for i in 0..1_000_000 {
        customers.find_or_insert(&format!("customer-{i:08}"));
    }
    let state = EngineState {
        customers,
        header: StateHeader {
            watermark: 0,
            thresholds: settings.segments.fixed(),
            next_threshold_refresh: 0,
            scorings: 0,
            schedule_settings: 0,
            applied: Vec::new(),
            model_version: "recency-1".into(),
            budgets: Vec::new(),
            care_budgets: Vec::new(),
            pool: None,
            partitions: churnd::partition::PartitionCount::ONE,
            open_tasks: Vec::new(),
            uplift: Vec::new(),
        },
        profiles: Default::default(),
    };
    let bytes = codec::encode(&state, &settings.source.streams, 1);
    drop(state);
    SnapshotDir::open(&settings.state.dir, 1)
        .unwrap()
        .write(&bytes, 1)
        .unwrap();
    drop(bytes);

    let listener = churnd::daemon::bind(&settings).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let daemon = tokio::spawn(churnd::daemon::run(settings, listener, shutdown.clone()));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
    // While /readyz says the snapshot loads, the customer endpoint answers 503 with
    // Retry-After (the load may end between two requests, so it is asked until it does).
    let (mut loading_seen, mut refused_seen) = (false, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "never ready");
        let Ok(ready) = get("/readyz").await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        if ready.status() == 200 {
            break;
        }
        let reasons = ready.json::<serde_json::Value>().await.unwrap()["reasons"].to_string();
        if reasons.contains("loading the snapshot") {
            loading_seen = true;
            let customer = get("/v1/customers/customer-00000007").await.unwrap();
            if customer.status() == 503 {
                assert_eq!(customer.headers()["retry-after"], "1");
                refused_seen = true;
            }
            let metrics = get("/metrics").await.unwrap().text().await.unwrap();
            // The load may have ended and the replay caught up since /readyz answered: the
            // gauge must say not ready only if /readyz still does after it was read.
            let ready_after = get("/readyz").await.unwrap();
            if ready_after.status() != 200 {
                assert!(metrics.contains("churnd_ready 0"), "{metrics}");
            }
            assert_eq!(get("/healthz").await.unwrap().status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        loading_seen,
        "HTTP answered only once the snapshot was loaded"
    );
    assert!(
        refused_seen,
        "the customer endpoint never answered 503 while loading"
    );
    let view = get("/v1/customers/customer-00000007").await.unwrap();
    assert_eq!(view.status(), 200);
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}

/// Snapshots failing again and again make `/readyz` 503 after
/// `state.max_consecutive_snapshot_failures` in a row, naming the error, and a snapshot
/// written again makes the daemon ready. The directory is replaced by a regular file: that
/// stops root as well, which permissions would not (the tests run as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_snapshots_keep_failing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.state.max_consecutive_snapshot_failures = 2;
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("kept", 10.0, T0_MS)).await;
    wait_for(
        "ready, with a snapshot written",
        Duration::from_secs(20),
        || {
            let app = &app;
            async move {
                app.get("/readyz").await.status() == 200
                    && app
                        .metric("churnd_snapshots_total{outcome=\"written\"}")
                        .await
                        .is_some_and(|n| n >= 1.0)
            }
        },
    )
    .await;

    std::fs::remove_dir_all(&state_dir).unwrap();
    std::fs::write(&state_dir, "a file where the snapshot directory was\n").unwrap();
    wait_for(
        "/readyz to report the failing snapshots",
        Duration::from_secs(20),
        || {
            let app = &app;
            async move { app.get("/readyz").await.status() == 503 }
        },
    )
    .await;
    // Nothing else is wrong, and no snapshot can succeed while the file is there.
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let reasons = not_ready.json::<serde_json::Value>().await.unwrap()["reasons"].to_string();
    assert!(
        reasons.contains("the last 2 snapshots failed") && reasons.contains("Not a directory"),
        "{reasons}"
    );
    let failed = app
        .metric("churnd_snapshots_total{outcome=\"failed\"}")
        .await
        .unwrap();
    assert!(failed >= 2.0, "not ready after {failed} failures");
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.metric("churnd_ready").await, Some(0.0));

    std::fs::remove_file(&state_dir).unwrap();
    std::fs::create_dir(&state_dir).unwrap();
    wait_for(
        "ready again once a snapshot is written",
        Duration::from_secs(20),
        || {
            let app = &app;
            async move { app.get("/readyz").await.status() == 200 }
        },
    )
    .await;
    assert_eq!(app.metric("churnd_ready").await, Some(1.0));
    app.stop().await;
}
