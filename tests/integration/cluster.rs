//! `redis.mode = "cluster"` on a real three-node Redis Cluster: eight partition streams spread
//! over the nodes are all read, every event is applied, tasks and dead letters are written
//! once, a slot moved to another node while the daemon runs is followed (MOVED), and a
//! restart resumes without writing anything twice.

use std::collections::HashSet;
use std::time::Duration;

use churnd::config::RedisMode;
use churnd::partition::PartitionCount;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const DLQ: &str = "churn:events:dlq";

async fn wait_all_drained(c: &mut impl redis::aio::ConnectionLike, p: PartitionCount) {
    for partition in 0..p.get() {
        wait_drained(c, &p.stream(EVENTS, partition), "churnd").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_on_a_cluster_are_read_written_once_and_followed_when_a_slot_moves() {
    let cluster = RedisCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.conn().await;
    let p = PartitionCount::new(8).unwrap();
    let mut owners = HashSet::new();
    for partition in 0..p.get() {
        owners.insert(cluster.owner_of(&p.stream(EVENTS, partition)).await);
    }
    assert_eq!(owners.len(), 3, "the partitions spread over every node");

    // Quiet customers buy once; in every partition a busy one moves event time on to day
    // 120, so each quiet customer gets exactly one win-back task. (Each partition has a
    // clock of its own, moved by its own events only.)
    let quiet: Vec<String> = (0..24).map(|i| format!("quiet-{i}")).collect();
    for id in &quiet {
        xadd(
            &mut c,
            &p.stream(EVENTS, p.of(id)),
            &purchase(id, 50.0, T0_MS),
        )
        .await;
    }
    let busy = one_customer_per_partition(p);
    for id in &busy {
        for day in (0..=120).step_by(10) {
            let fields = purchase(id, 10.0, T0_MS + day * DAY_MS);
            xadd(&mut c, &p.stream(EVENTS, p.of(id)), &fields).await;
        }
    }
    // Two entries to dead-letter: an unknown type, and an event in the wrong partition.
    let bad = vec![
        ("customer_id", "quiet-0".to_string()),
        ("type", "teleport".to_string()),
        ("ts", T0_MS.to_string()),
    ];
    xadd(&mut c, &p.stream(EVENTS, p.of("quiet-0")), &bad).await;
    let wrong = (p.of("quiet-1") + 1) % p.get();
    xadd(
        &mut c,
        &p.stream(EVENTS, wrong),
        &purchase("quiet-1", 9.0, T0_MS),
    )
    .await;

    let mut settings = test_settings(&cluster.nodes[0], dir.path());
    settings.redis.mode = RedisMode::Cluster;
    settings.partitions.count = p;
    let app = App::spawn(settings.clone()).await;
    wait_all_drained(&mut c, p).await;

    let tasks = read_stream(&mut c, WINBACK).await;
    let customers: HashSet<&str> = tasks.iter().map(|t| t.1["customer_id"].as_str()).collect();
    let ids: HashSet<&str> = tasks.iter().map(|t| t.1["task_id"].as_str()).collect();
    assert_eq!(tasks.len(), quiet.len(), "{tasks:#?}");
    assert_eq!(customers, quiet.iter().map(String::as_str).collect());
    assert_eq!(ids.len(), tasks.len(), "no task twice");
    let dead = read_stream(&mut c, DLQ).await;
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.1["dlq_reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["unknown_type", "wrong_partition"], "{dead:#?}");
    for id in quiet.iter().chain(&busy) {
        let customer = app.get_json(&format!("/v1/customers/{id}")).await;
        assert_eq!(customer["customer_id"], id.as_str(), "{customer}");
    }
    assert_eq!(app.get("/readyz").await.status(), 200);

    // A partition's slot moves to another node while the daemon runs: its reads and
    // acknowledgements follow the MOVED, and new events there are applied.
    let moved = p.of("quiet-2");
    let stream = p.stream(EVENTS, moved);
    let to = (cluster.owner_of(&stream).await + 1) % cluster.nodes.len();
    cluster.migrate_slot_of(&stream, to).await;
    let newcomer = (0..)
        .map(|i| format!("newcomer-{i}"))
        .find(|id| p.of(id) == moved)
        .unwrap();
    xadd(
        &mut c,
        &stream,
        &purchase(&newcomer, 20.0, T0_MS + 120 * DAY_MS),
    )
    .await;
    wait_all_drained(&mut c, p).await;
    wait_for("the newcomer applied", Duration::from_secs(20), || async {
        app.get(&format!("/v1/customers/{newcomer}")).await.status() == 200
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.stop().await;

    // A restart replays from the snapshot's positions: nothing is written twice, and what
    // comes next is applied.
    let app = App::spawn(settings).await;
    let late = (0..)
        .map(|i| format!("late-{i}"))
        .find(|id| p.of(id) != moved)
        .unwrap();
    xadd(
        &mut c,
        &p.stream(EVENTS, p.of(&late)),
        &purchase(&late, 20.0, T0_MS + 120 * DAY_MS),
    )
    .await;
    wait_all_drained(&mut c, p).await;
    wait_for(
        "the late customer applied",
        Duration::from_secs(20),
        || async { app.get(&format!("/v1/customers/{late}")).await.status() == 200 },
    )
    .await;
    for id in [&newcomer, &quiet[0]] {
        let customer = app.get_json(&format!("/v1/customers/{id}")).await;
        assert_eq!(customer["customer_id"], id.as_str(), "{customer}");
    }
    assert_eq!(read_stream(&mut c, WINBACK).await.len(), quiet.len());
    assert_eq!(read_stream(&mut c, DLQ).await.len(), 2);
    app.stop().await;
}

/// With every node of the cluster down, the redis crate's cluster client retries its
/// recovery without pause and used to log each try (about 300 lines in the first second):
/// its lines are now held to one per place in its source every ten seconds, while churnd's
/// own retry lines go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_every_node_down_does_not_flood_the_log() {
    let mut cluster = RedisCluster::start(3).await;
    let churnd = DaemonProcess::spawn(&[
        ("CHURND__REDIS__URL", cluster.nodes[0].url()),
        ("CHURND__REDIS__MODE", "cluster".into()),
        ("CHURND__PARTITIONS__COUNT", "4".into()),
    ]);
    wait_for("churnd ready", Duration::from_secs(60), || async {
        churnd
            .get_text("/readyz")
            .await
            .is_some_and(|t| t.contains("true"))
    })
    .await;
    for node in &mut cluster.nodes {
        node.stop();
    }
    // Enough failed tries for the crate's recovery loop to have spun many times over: with
    // the test's 200 ms back-off cap, several seconds of outage.
    let errors = |text: String| {
        text.lines()
            .filter(|l| l.starts_with("churnd_redis_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    wait_for("churnd retrying", Duration::from_secs(60), || async {
        churnd.get_text("/metrics").await.map(errors).unwrap_or(0.0) >= 60.0
    })
    .await;
    let (_, log) = churnd.stop();
    let crate_lines = log.lines().filter(|l| l.contains(" redis::")).count();
    let own_retries = log
        .lines()
        .filter(|l| l.contains("churnd::connection") && l.contains("retrying"))
        .count();
    assert!(own_retries >= 3, "churnd's own retry lines go on:\n{log}");
    assert!(
        crate_lines <= 40,
        "{crate_lines} lines from the redis crate in an outage of seconds:\n{log}"
    );
}
