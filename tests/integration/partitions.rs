//! Partitioned input streams (`partitions.count` > 1): every partition stream is read, each
//! customer ends as it would from one stream, an event in the wrong partition stream is
//! dead-lettered and never applied, and state kept under another count is refused. Each
//! partition's state is a snapshot of its own, restored at start.

use std::time::Duration;

use churnd::config::Settings;
use churnd::daemon::{self, DaemonError};
use churnd::partition::PartitionCount;
use churnd::state::{codec, SnapshotDir};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const DLQ: &str = "churn:events:dlq";
const DAY_MS: u64 = 86_400_000;
const CUSTOMERS: usize = 40;

fn partitions(n: u16) -> PartitionCount {
    PartitionCount::new(n).unwrap()
}

/// Every customer's events, oldest first: two purchases and a visit each.
fn events() -> Vec<(String, Vec<(&'static str, String)>)> {
    let mut events = Vec::new();
    for i in 0..CUSTOMERS {
        let id = format!("customer-{i}");
        events.push((id.clone(), purchase(&id, 10.0 + i as f64, T0_MS + i as u64)));
        let again = T0_MS + (10 + i as u64 % 5) * DAY_MS + i as u64;
        events.push((id.clone(), purchase(&id, 5.0, again)));
        let visit = vec![
            ("customer_id", id.clone()),
            ("type", "visit".to_string()),
            ("ts", (T0_MS + 30 * DAY_MS + i as u64).to_string()),
        ];
        events.push((id, visit));
    }
    events.sort_by_key(|(_, fields)| fields.iter().find(|(k, _)| *k == "ts").unwrap().1.clone());
    events
}

/// What a customer's state must be whatever the partitions: everything but what depends on
/// when the customer was last scored.
async fn state_of(app: &App, id: &str) -> serde_json::Value {
    let c = app.get_json(&format!("/v1/customers/{id}")).await;
    serde_json::json!({
        "features": c["features"],
        "first_purchase": c["first_purchase"],
        "last_purchase": c["last_purchase"],
        "last_event": c["last_event"],
        "lifecycle_stage": c["lifecycle_stage"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_in_partition_streams_end_as_from_one_stream_and_strays_are_dead_lettered() {
    let (one, four) = (RedisServer::start(), RedisServer::start());
    let (dir_one, dir_four) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut c1, mut c4) = (one.conn().await, four.conn().await);
    let p = partitions(4);
    for (id, fields) in events() {
        xadd(&mut c1, EVENTS, &fields).await;
        xadd(&mut c4, &p.stream(EVENTS, p.of(&id)), &fields).await;
    }
    // A purchase of customer-7 written to the wrong partition: never applied.
    let right = p.of("customer-7");
    let wrong = (right + 1) % 4;
    let wrong_stream = p.stream(EVENTS, wrong);
    let stray = xadd(
        &mut c4,
        &wrong_stream,
        &purchase("customer-7", 1_000.0, T0_MS + DAY_MS),
    )
    .await;

    let single = App::spawn(test_settings(&one, dir_one.path())).await;
    let mut settings = test_settings(&four, dir_four.path());
    settings.partitions.count = p;
    let partitioned = App::spawn(settings).await;
    wait_drained(&mut c1, EVENTS, "churnd").await;
    for partition in 0..4 {
        wait_drained(&mut c4, &p.stream(EVENTS, partition), "churnd").await;
    }
    assert_eq!(
        xlen(&mut c4, EVENTS).await,
        0,
        "the unpartitioned name is not read"
    );

    let dead = read_stream(&mut c4, DLQ).await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let letter = &dead[0].1;
    assert_eq!(letter["dlq_reason"], "wrong_partition");
    assert_eq!(letter["dlq_source_id"], stray);
    assert_eq!(letter["dlq_source_stream"], wrong_stream);
    assert!(
        letter["dlq_detail"].contains(&format!(
            "belongs in partition {right} (churn:events:{{{right}}}) of 4"
        )),
        "{letter:?}"
    );
    assert_eq!(
        partitioned
            .metric("churnd_events_dead_lettered_total{reason=\"wrong_partition\"}")
            .await,
        Some(1.0)
    );
    assert!(read_stream(&mut c1, DLQ).await.is_empty());

    for i in 0..CUSTOMERS {
        let id = format!("customer-{i}");
        assert_eq!(
            state_of(&partitioned, &id).await,
            state_of(&single, &id).await,
            "{id}"
        );
    }
    single.stop().await;
    partitioned.stop().await;
}

/// Runs the daemon on `settings` until it ends by itself (or fails within 20 s).
async fn run_until_it_ends(settings: Settings) -> Result<(), DaemonError> {
    let listener = daemon::bind(&settings).await.unwrap();
    let shutdown = CancellationToken::new();
    let run = daemon::run(settings, listener, shutdown.clone());
    let ended = tokio::time::timeout(Duration::from_secs(20), run).await;
    shutdown.cancel();
    ended.expect("the daemon refuses to start within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_partition_count_is_refused_at_start_with_the_reason() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    xadd(&mut c, EVENTS, &purchase("c1", 5.0, T0_MS)).await;
    let app = App::spawn(test_settings(&redis, dir.path())).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;

    let mut settings = test_settings(&redis, dir.path());
    settings.partitions.count = partitions(4);
    let refused = run_until_it_ends(settings.clone())
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        matches!(refused, DaemonError::PartitionsChanged { .. }),
        "{message}"
    );
    assert!(
        message.contains("written with partitions.count = 1, but partitions.count is now 4"),
        "{message}"
    );
    // Nothing was read from the partition streams.
    assert_eq!(xlen(&mut c, &partitions(4).stream(EVENTS, 0)).await, 0);

    // The count it was kept under starts as before.
    settings.partitions.count = PartitionCount::ONE;
    // Once it has restored its snapshot (503 until then, longer on a busy machine).
    let app = App::spawn(settings).await;
    wait_for(
        "the restart to serve c1",
        Duration::from_secs(60),
        || async { app.get("/v1/customers/c1").await.status() != 503 },
    )
    .await;
    assert_eq!(app.get("/v1/customers/c1").await.status(), 200);
    app.stop().await;
}

#[test]
fn the_partition_command_prints_a_customers_partition() {
    let partition = |args: &[&str], env: &[(&str, &str)]| {
        let out = churnd()
            .arg("partition")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The documented test vectors (docs/configuration.md).
    assert_eq!(partition(&["customer-1", "--count", "16"], &[]), "12\n");
    assert_eq!(
        partition(&["alice@example.com", "--count", "2"], &[]),
        "1\n"
    );
    assert_eq!(
        partition(&["customer-2"], &[("CHURND__PARTITIONS__COUNT", "16")]),
        "9\n"
    );
    assert_eq!(partition(&["customer-2"], &[]), "0\n", "one partition");
    let out = churnd()
        .args(["partition", "c", "--count", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be a whole number from 1 to 1024"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_restores_its_own_snapshot_and_one_file_of_all_is_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let p = partitions(4);
    for (id, fields) in events() {
        xadd(&mut c, &p.stream(EVENTS, p.of(&id)), &fields).await;
    }
    let mut settings = test_settings(&redis, dir.path());
    settings.partitions.count = p;
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings.clone()).await;
    for partition in 0..4 {
        wait_drained(&mut c, &p.stream(EVENTS, partition), "churnd").await;
    }
    let mut before = Vec::new();
    for i in 0..CUSTOMERS {
        before.push(state_of(&app, &format!("customer-{i}")).await);
    }
    app.stop().await;
    assert_eq!(
        snapshot_count(&state_dir),
        0,
        "no snapshot of every partition"
    );
    for partition in 0..4 {
        let own = state_dir.join(format!("partition-{partition}"));
        assert!(snapshot_count(&own) > 0, "{own:?}");
    }

    // Restarted, every partition continues from its own snapshot.
    let app = App::spawn(settings.clone()).await;
    wait_for(
        "the restart to serve customer-0",
        Duration::from_secs(60),
        || async { app.get("/v1/customers/customer-0").await.status() != 503 },
    )
    .await;
    for (i, expected) in before.iter().enumerate() {
        let id = format!("customer-{i}");
        assert_eq!(&state_of(&app, &id).await, expected, "{id}");
    }
    assert_eq!(
        app.metric("churnd_customers_tracked").await,
        Some(CUSTOMERS as f64)
    );
    app.stop().await;

    // One snapshot holding every partition (as a churnd before per-partition snapshots
    // wrote it) is refused, not split.
    let streams = p.streams(&[EVENTS.to_string()]);
    let own = SnapshotDir::open(&state_dir.join("partition-0"), 3).unwrap();
    let (loaded, _) = own.load_newest(&streams).unwrap();
    let state = loaded.expect("partition 0's snapshot").snapshot.state;
    SnapshotDir::open(&state_dir, 3)
        .unwrap()
        .write(&codec::encode(&state, &streams, 1), 1)
        .unwrap();
    let refused = run_until_it_ends(settings).await.expect_err("refused");
    let message = refused.to_string();
    assert!(
        matches!(refused, DaemonError::OneSnapshotForAllPartitions { .. }),
        "{message}"
    );
    assert!(
        message.contains("holds a snapshot of all 4 partitions in one file"),
        "{message}"
    );
}
