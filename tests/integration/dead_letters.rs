//! Every kind of bad input is dead-lettered with a reason, counted and acknowledged; good
//! input beside it is not lost.

use std::time::Duration;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const DLQ: &str = "churn:events:dlq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let mut c = redis.conn().await;

    // An entry read by this consumer in an earlier life, then deleted before processing.
    create_group(&mut c, EVENTS).await;
    let deleted = xadd(&mut c, EVENTS, &purchase("ghost", 1.0, T0_MS)).await;
    leave_pending(&mut c, EVENTS).await;
    redis::cmd("XDEL")
        .arg(EVENTS)
        .arg(&deleted)
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let s = |v: &str| v.to_string();
    let long_id = "x".repeat(129);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("type", s("visit"))], "missing_customer_id"),
        (
            vec![("customer_id", long_id), ("type", s("visit"))],
            "invalid_customer_id",
        ),
        (vec![("customer_id", s("c"))], "missing_type"),
        (
            vec![("customer_id", s("c")), ("type", s("gift"))],
            "unknown_type",
        ),
        (
            vec![("customer_id", s("c")), ("type", s("refund"))],
            "missing_amount",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("type", s("purchase")),
                ("amount", s("-1")),
            ],
            "invalid_amount",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("type", s("purchase")),
                ("amount", s("NaN")),
            ],
            "invalid_amount",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("type", s("purchase")),
                ("amount", s("12,50")),
            ],
            "invalid_amount",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("type", s("visit")),
                ("ts", s("yesterday")),
            ],
            "invalid_timestamp",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("type", s("visit")),
                ("ts", s("99999999999999")),
            ],
            "invalid_timestamp",
        ),
        (
            vec![
                ("customer_id", s("c")),
                ("customer_id", s("d")),
                ("type", s("visit")),
            ],
            "duplicate_field",
        ),
    ];
    let mut expected = vec![(deleted.clone(), "entry_deleted".to_string())];
    for (fields, reason) in &cases {
        expected.push((xadd(&mut c, EVENTS, fields).await, reason.to_string()));
    }
    // Invalid UTF-8 in the customer ID.
    let raw: String = redis::cmd("XADD")
        .arg(EVENTS)
        .arg("*")
        .arg("customer_id")
        .arg(&[0xffu8, 0xfe][..])
        .arg("type")
        .arg("visit")
        .query_async(&mut c)
        .await
        .unwrap();
    expected.push((raw, "invalid_customer_id".into()));
    xadd(&mut c, EVENTS, &purchase("good", 5.0, T0_MS)).await;

    let app = App::spawn(settings).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let dead = read_stream(&mut c, DLQ).await;
    assert_eq!(dead.len(), expected.len(), "{dead:#?}");
    for ((source_id, reason), (_, entry)) in expected.iter().zip(&dead) {
        assert_eq!(&entry["dlq_source_id"], source_id);
        assert_eq!(&entry["dlq_reason"], reason, "{entry:?}");
        assert_eq!(entry["dlq_source_stream"], EVENTS);
        assert!(!entry["dlq_detail"].is_empty());
    }
    // The original fields travel with the reason.
    assert_eq!(dead[4].1["type"], "gift");
    assert_eq!(dead[6].1["amount"], "-1");
    assert_eq!(
        dead[0].1.len(),
        4,
        "a deleted entry has only the dead-letter fields left"
    );

    let metric = |reason: &str| format!("churnd_events_dead_lettered_total{{reason=\"{reason}\"}}");
    let text = app.metrics().await;
    assert_eq!(parse_metric(&text, &metric("invalid_amount")), Some(3.0));
    assert_eq!(
        parse_metric(&text, &metric("invalid_customer_id")),
        Some(2.0)
    );
    assert_eq!(parse_metric(&text, &metric("entry_deleted")), Some(1.0));
    assert_eq!(
        parse_metric(
            &text,
            "churnd_events_total{outcome=\"applied\",type=\"purchase\"}"
        ),
        Some(1.0)
    );
    assert_eq!(app.get("/v1/customers/good").await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_key_of_the_wrong_type_holds_back_acknowledgements_until_fixed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Acknowledged per entry, so the group's pending count shows what waits.
    let mut settings = test_settings(&redis, dir.path());
    settings.source.acknowledge = churnd::config::Acknowledge::PerEntry;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    wait_for("ready", Duration::from_secs(10), || async {
        app.get("/readyz").await.status() == 200
    })
    .await;

    // Someone overwrites the dead-letter stream with a string while the daemon runs.
    redis::cmd("SET")
        .arg(DLQ)
        .arg("oops")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let bad = vec![("customer_id", "c".to_string()), ("type", "gift".into())];
    xadd(&mut c, EVENTS, &bad).await;
    xadd(&mut c, EVENTS, &purchase("good", 5.0, T0_MS)).await;

    wait_for("not ready", Duration::from_secs(10), || async {
        app.get("/readyz").await.status() == 503
    })
    .await;
    // Nothing was acknowledged: the batch waits for its dead letter to be written.
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 2))
    );

    redis::cmd("DEL")
        .arg(DLQ)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    wait_drained(&mut c, EVENTS, "churnd").await;
    let dead = read_stream(&mut c, DLQ).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].1["dlq_reason"], "unknown_type");
    wait_for("ready again", Duration::from_secs(10), || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_again_is_dead_lettered_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let bad = vec![("customer_id", "c".to_string()), ("type", "gift".into())];
    let id = xadd(&mut c, EVENTS, &bad).await;

    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;
    assert_eq!(xlen(&mut c, DLQ).await, 1);

    // The acknowledgement is lost (a crash between the write and the XACK looks the same):
    // the entry is pending on the consumer again and the next run processes it again.
    redis::cmd("XCLAIM")
        .arg(EVENTS)
        .arg("churnd")
        .arg("test-consumer")
        .arg(0)
        .arg(&id)
        .arg("FORCE")
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap();
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 1))
    );
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    assert_eq!(
        xlen(&mut c, DLQ).await,
        1,
        "the dead letter is not written twice"
    );
    app.stop().await;
}

/// A customer ID with a control character (a newline forging a line in a consumer's log or
/// CSV, a NUL cutting a C string) is dead-lettered, not copied onto tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_ids_with_control_characters_are_dead_lettered() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let ids = ["c-1\nstatus: vip", "c-2\0", "\u{1b}[2Jc-3", "c-4\u{85}"];
    let mut sent = Vec::new();
    for id in ids {
        sent.push(xadd(&mut c, EVENTS, &purchase(id, 5.0, T0_MS)).await);
    }
    xadd(&mut c, EVENTS, &purchase("c-5", 5.0, T0_MS)).await;
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;

    let dead = read_stream(&mut c, DLQ).await;
    assert_eq!(dead.len(), ids.len(), "{dead:#?}");
    for ((id, source_id), (_, entry)) in ids.iter().zip(&sent).zip(&dead) {
        assert_eq!(&entry["dlq_source_id"], source_id);
        assert_eq!(entry["dlq_reason"], "invalid_customer_id", "{entry:?}");
        assert!(
            entry["dlq_detail"].contains("control character"),
            "{entry:?}"
        );
        assert_eq!(
            &entry["customer_id"], id,
            "the original field travels with it"
        );
    }
    let metric = "churnd_events_dead_lettered_total{reason=\"invalid_customer_id\"}";
    assert_eq!(app.metric(metric).await, Some(ids.len() as f64));
    let summary = app.get_json("/v1/summary").await;
    assert_eq!(summary["customers"], 1, "only the good one: {summary}");
    app.stop().await;
}
