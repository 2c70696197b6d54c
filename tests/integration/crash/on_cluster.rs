//! Replicas under `partitions.ownership = leases` on a real three-node Redis Cluster, sharing
//! only the cluster (snapshots in it): one killed mid-stream, the survivor ends as one
//! process reading every partition of a single Redis. The leases sit in their partitions'
//! slots and the output streams in slots of their own, so every write is fenced by the
//! records beside the output streams (`ownership::fence`), not by the leases.

use churnd::config::RedisMode;

use super::in_redis::{customers_in_redis, in_redis, kill_one_of_two, replica_in};
use super::replicas::{self, Replica};
use super::*;

fn replica(cluster: &RedisCluster, root: &Path, name: &str) -> Replica {
    replica_in(&cluster.nodes[0], RedisMode::Cluster, root, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_cluster_one_killed_mid_stream_end_as_one_process() {
    let events = workload(40_000);
    let reference = replicas::one_process(&events).await;

    let cluster = RedisCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.conn().await;
    let fence = churnd::ownership::fence::key(GROUP, WINBACK);
    let lease = churnd::ownership::lease::Leases::new(GROUP, Duration::from_secs(5));
    let fence_node = cluster.owner_of(&fence).await;
    let mut apart = 0;
    for p in 0..replicas::count().get() {
        apart += usize::from(cluster.owner_of(&lease.key(p)).await != fence_node);
    }
    assert!(
        apart > 0,
        "some leases sit on other nodes than the fence record"
    );

    let a = replica(&cluster, dir.path(), "replica-a");
    let x = replica(&cluster, dir.path(), "replica-b");
    kill_one_of_two(&c, &events, (a, x), Duration::from_secs(90)).await;
    let text = std::fs::read_to_string(dir.path().join("replica-a/run.log")).unwrap();
    assert!(text.contains("snapshot loaded"), "{text}");
    // (A write of the survivor may be refused here on a busy machine, where its own lease
    // can lapse between rounds: it takes the partition again and replays, as after any
    // lease loss. What matters is the state it ends with.)
    // The nodes run without persistence: each primary is named in a warning of its own.
    let warned = text
        .lines()
        .filter(|l| l.contains("Redis keeps nothing on disk"))
        .count();
    assert!(warned >= 3, "a warning per primary: {text}");

    let mut settings = in_redis(test_settings(&cluster.nodes[0], dir.path()));
    settings.redis.mode = RedisMode::Cluster;
    let customers = customers_in_redis(&settings, replicas::count()).await;
    let run = outcome_with(&mut c, customers).await;
    assert_same(
        &run,
        &reference,
        "2 replicas on a Redis Cluster, one killed",
    );
}
