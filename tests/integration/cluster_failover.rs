//! `redis.mode = "cluster"` through failovers: a real cluster of three primaries with a
//! replica each, churnd reading eight partition streams while events keep coming, and
//! primaries replaced under it. A coordinated failover (`CLUSTER FAILOVER`) loses nothing in
//! Redis, so every task and dead letter must come out exactly once; a killed primary can
//! take its last unreplicated writes with it (Redis replication is asynchronous), so there
//! churnd must keep going and write nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use churnd::config::RedisMode;
use churnd::partition::PartitionCount;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const DLQ: &str = "churn:events:dlq";
/// Quiet customers per wave of events.
const WAVE: usize = 15;
/// Waves a producer writes at most while a failover goes on (it goes on waiting after).
const MAX_WAVES: usize = 400;

/// Writes wave `k`: `WAVE` quiet customers who bought once at T0, each in their partition;
/// an entry of an unknown type (a dead letter); and a purchase of a busy customer in every
/// partition that keeps the partition's event time past day 120, so each quiet customer gets
/// one win-back task.
async fn write_wave(c: &mut impl redis::aio::ConnectionLike, p: PartitionCount, k: usize) {
    for i in 0..WAVE {
        let id = quiet(k, i);
        xadd(c, &p.stream(EVENTS, p.of(&id)), &purchase(&id, 50.0, T0_MS)).await;
    }
    let id = quiet(k, 0);
    let bad = vec![
        ("customer_id", id.clone()),
        ("type", "teleport".to_string()),
        ("ts", T0_MS.to_string()),
    ];
    xadd(c, &p.stream(EVENTS, p.of(&id)), &bad).await;
    let now = T0_MS + 120 * DAY_MS + k as u64 * 3_600_000;
    for id in one_customer_per_partition(p) {
        xadd(c, &p.stream(EVENTS, p.of(&id)), &purchase(&id, 10.0, now)).await;
    }
}

fn quiet(wave: usize, i: usize) -> String {
    format!("quiet-{wave}-{i}")
}

async fn wait_all_drained(c: &mut impl redis::aio::ConnectionLike, p: PartitionCount) {
    for partition in 0..p.get() {
        wait_drained(c, &p.stream(EVENTS, partition), "churnd").await;
    }
}

/// The win-back tasks written, per customer (more than one is a duplicate).
async fn tasks_per_customer(c: &mut impl redis::aio::ConnectionLike) -> HashMap<String, usize> {
    let tasks = read_stream(c, WINBACK).await;
    let ids: HashSet<&str> = tasks.iter().map(|t| t.1["task_id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        tasks.len(),
        "a task ID written twice: {tasks:#?}"
    );
    let mut per = HashMap::new();
    for (_, task) in &tasks {
        *per.entry(task["customer_id"].clone()).or_default() += 1;
    }
    per
}

/// Cluster mode, eight partitions, `seed` the node in `redis.url`.
fn settings_for(
    cluster: &RedisCluster,
    seed: usize,
    dir: &std::path::Path,
) -> churnd::config::Settings {
    let mut settings = test_settings(&cluster.nodes[seed], dir);
    settings.redis.mode = RedisMode::Cluster;
    settings.partitions.count = PartitionCount::new(8).unwrap();
    settings
}

/// Writes waves from `first` on, with its own connection, until `stop` is set (at least
/// one, at most `MAX_WAVES` in all); returns the next wave's number.
async fn produce(
    cluster: &RedisCluster,
    p: PartitionCount,
    first: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    let mut c = cluster.conn().await;
    tokio::spawn(async move {
        let mut k = first;
        loop {
            write_wave(&mut c, p, k).await;
            k += 1;
            if stop.load(Ordering::Relaxed) || k >= MAX_WAVES {
                return k;
            }
        }
    })
}

/// Fails the primary serving `key` over while waves from `first` on are written; returns
/// the next wave's number.
async fn fail_over_mid_stream(
    cluster: &RedisCluster,
    p: PartitionCount,
    key: &str,
    first: usize,
) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(cluster, p, first, stop.clone()).await;
    let to = cluster.begin_fail_over(key).await;
    cluster.wait_failed_over(key, to).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap()
}

async fn redis_errors(app: &App) -> String {
    app.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("churnd_redis_errors_total"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_failovers_mid_stream_lose_and_duplicate_nothing() {
    let cluster = RedisCluster::start_with_replicas(3, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.conn().await;
    let settings = settings_for(&cluster, 0, dir.path());
    let p = settings.partitions.count;
    let app = App::spawn(settings).await;

    for k in 0..4 {
        write_wave(&mut c, p, k).await;
    }
    wait_for("the first tasks", Duration::from_secs(30), || async {
        xlen(&mut cluster.conn().await, WINBACK).await > 0
    })
    .await;
    // The primary of the task stream fails over while events keep coming: the sink's
    // writes (and its script) move to the new primary, and so do the reads of the
    // partitions that node served.
    let k = fail_over_mid_stream(&cluster, p, WINBACK, 4).await;
    let first = cluster.owner_of(WINBACK).await;
    // Then the primary of a partition stream served by another node: reads, claims and
    // acknowledgements of that partition move.
    let mut elsewhere = None;
    for q in 0..p.get() {
        let stream = p.stream(EVENTS, q);
        if cluster.owner_of(&stream).await != first {
            elsewhere = Some(stream);
            break;
        }
    }
    let elsewhere = elsewhere.expect("a partition on another node");
    let k = fail_over_mid_stream(&cluster, p, &elsewhere, k).await;
    let waves = k + 4;
    for k in k..waves {
        write_wave(&mut c, p, k).await;
    }
    wait_all_drained(&mut c, p).await;

    let expected: HashSet<String> = (0..waves)
        .flat_map(|k| (0..WAVE).map(move |i| quiet(k, i)))
        .collect();
    wait_for(
        "every quiet customer's task",
        Duration::from_secs(30),
        || async { tasks_per_customer(&mut cluster.conn().await).await.len() == expected.len() },
    )
    .await;
    let per = tasks_per_customer(&mut c).await;
    assert_eq!(per.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(per.values().all(|&n| n == 1), "a task twice: {per:?}");
    let dead = dead_letters(&mut c).await;
    assert_eq!(
        dead,
        (0..waves).map(|k| quiet(k, 0)).collect(),
        "one dead letter per wave"
    );
    let counted = app
        .metric(r#"churnd_events_dead_lettered_total{reason="unknown_type"}"#)
        .await;
    assert_eq!(counted, Some(waves as f64), "dead letters counted once");
    wait_for(
        "ready after the failovers",
        Duration::from_secs(30),
        || async { app.get("/readyz").await.status() == 200 },
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    eprintln!(
        "{waves} waves through two failovers; {}",
        redis_errors(&app).await
    );
    app.stop().await;
}

/// The customers of the dead letters written, each once.
async fn dead_letters(c: &mut impl redis::aio::ConnectionLike) -> HashSet<String> {
    let dead = read_stream(c, DLQ).await;
    let sources: HashSet<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.1["dlq_source_stream"].as_str(),
                d.1["dlq_source_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(sources.len(), dead.len(), "a dead letter twice: {dead:#?}");
    dead.iter().map(|d| d.1["customer_id"].clone()).collect()
}

/// A primary killed outright, the seed node churnd was given among them: the cluster
/// promotes its replica after `cluster-node-timeout`, and churnd, which reaches the cluster
/// through the nodes it has learnt, carries on. Writes the dead primary acknowledged but had
/// not replicated are Redis' loss (asynchronous replication), so the waves before the kill
/// may miss a task or two; nothing is written twice, and everything after the takeover is
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_churnd_carries_on_without_duplicates() {
    let mut cluster = RedisCluster::start_with_replicas(3, Some(3_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.conn().await;
    let seed = cluster.owner_of(WINBACK).await;
    let settings = settings_for(&cluster, seed, dir.path());
    let p = settings.partitions.count;
    let app = App::spawn(settings).await;

    let before = 8;
    for k in 0..before {
        write_wave(&mut c, p, k).await;
    }
    wait_for("the first tasks", Duration::from_secs(30), || async {
        xlen(&mut cluster.conn().await, WINBACK).await > 0
    })
    .await;
    let (killed, _) = cluster.kill_primary_of(WINBACK).await;
    assert_eq!(killed, seed, "the seed node is the one killed");
    let mut c = cluster.conn().await;
    let waves = before + 8;
    for k in before..waves {
        write_wave(&mut c, p, k).await;
    }
    wait_all_drained(&mut c, p).await;
    let after: HashSet<String> = (before..waves)
        .flat_map(|k| (0..WAVE).map(move |i| quiet(k, i)))
        .collect();
    wait_for(
        "the tasks of the waves after the takeover",
        Duration::from_secs(60),
        || async {
            let per = tasks_per_customer(&mut cluster.conn().await).await;
            after.iter().all(|id| per.contains_key(id))
        },
    )
    .await;
    let per = tasks_per_customer(&mut c).await;
    assert!(per.values().all(|&n| n == 1), "a task twice: {per:?}");
    let dead = dead_letters(&mut c).await;
    assert!(
        (before..waves).all(|k| dead.contains(&quiet(k, 0))),
        "{dead:?}"
    );
    let lost = before * WAVE - per.keys().filter(|id| !after.contains(*id)).count();
    wait_for(
        "ready after the takeover",
        Duration::from_secs(30),
        || async { app.get("/readyz").await.status() == 200 },
    )
    .await;
    eprintln!(
        "killed primary: {lost} of {} tasks before the kill lost with it; {}",
        before * WAVE,
        redis_errors(&app).await
    );
    app.stop().await;
}
