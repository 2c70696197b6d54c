//! Snapshots kept in Redis (`state.store = "redis"`) with no `state.dir`: the binary killed
//! with SIGKILL mid-stream and restarted resumes from its snapshots in Redis and ends as an
//! uninterrupted run; replicas under `partitions.ownership = leases` that share no
//! directory, one killed mid-stream, end as one process reading every partition.

use std::net::SocketAddr;

use churnd::config::{Interval, Ownership, RedisMode, StateStore};
use churnd::partition::PartitionCount;

use super::replicas::{self, Replica};
use super::*;

/// `settings` with the snapshots in Redis and no state directory.
pub(super) fn in_redis(mut settings: Settings) -> Settings {
    settings.state.store = StateStore::Redis;
    settings.state.dir = PathBuf::new();
    settings
}

/// Every customer in the newest snapshot kept in Redis of each of `count` partitions.
pub(super) async fn customers_in_redis(
    settings: &Settings,
    count: PartitionCount,
) -> BTreeMap<String, Customer> {
    let store = redis_snapshot_store(settings, 3);
    tokio::task::spawn_blocking(move || {
        let mut customers = BTreeMap::new();
        for p in 0..count.get() {
            let (loaded, rejected) = store.partition(p).load_newest(&[]).unwrap();
            assert!(rejected.is_empty(), "{rejected:?}");
            let table = loaded
                .unwrap_or_else(|| panic!("partition {p}'s snapshot in Redis"))
                .snapshot
                .state
                .customers;
            for i in 0..table.len() as u32 {
                customers.insert(table.id(i).to_string(), *table.get(i));
            }
        }
        customers
    })
    .await
    .unwrap()
}

/// Snapshots listed in partition `p`'s index.
async fn snapshots_in_redis(c: &mut MultiplexedConnection, p: u16) -> usize {
    redis::cmd("ZCARD")
        .arg(format!("{GROUP}:snapshots:{{{p}}}"))
        .query_async(c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_with_snapshots_in_redis_and_no_state_dir_changes_nothing() {
    let events = workload(60_000);
    let reference = uninterrupted(&events).await;

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = in_redis(test_settings(&redis, dir.path()));
    settings.http.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config_file(&settings, dir.path());
    let mut c = redis.conn().await;
    let producer = {
        let mut c = c.clone();
        let events = events.clone();
        tokio::spawn(async move { produce(&mut c, &events, Duration::from_millis(15)).await })
    };
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let log = |run: usize| dir.path().join(format!("run-{run}.log"));
    let mut daemon = spawn_binary(&config, &log(0));
    wait_for(
        "a first snapshot in Redis",
        Duration::from_secs(120),
        || {
            let mut c = c.clone();
            async move { snapshots_in_redis(&mut c, 0).await > 0 }
        },
    )
    .await;
    for kill in 1..=2 {
        let after = Duration::from_millis(rng.random_range(500..2_500));
        tokio::time::sleep(after).await;
        kill9(&mut daemon);
        eprintln!("seed {seed}: kill {kill} after {after:?}");
        daemon = spawn_binary(&config, &log(kill));
    }
    producer.await.unwrap();
    ready(settings.http.addr).await;
    drained(&mut c).await;
    sigterm(daemon).await;
    for run in 1..=2 {
        let text = std::fs::read_to_string(log(run)).unwrap();
        for step in [
            "Redis key churnd:snapshot:{0}:",
            "snapshot loaded",
            "replaying from the snapshot's position",
        ] {
            assert!(
                text.contains(step),
                "seed {seed}: run {run} logged no {step:?}:\n{text}"
            );
        }
    }
    assert!(
        !dir.path().join("state").exists(),
        "nothing written to a state directory"
    );
    let customers = customers_in_redis(&settings, PartitionCount::ONE).await;
    let run = outcome_with(&mut c, customers).await;
    assert_same(
        &run,
        &reference,
        &format!("seed {seed}, snapshots in Redis"),
    );
}

/// Replica `name` over `redis` keeping its snapshots in Redis, with a directory of its own
/// (for its config file and log only).
fn replica(redis: &RedisServer, root: &Path, name: &str) -> Replica {
    replica_in(redis, RedisMode::Standalone, root, name)
}

/// [`replica`] with `redis` reached in `mode` (a cluster's node as its seed).
pub(super) fn replica_in(redis: &RedisServer, mode: RedisMode, root: &Path, name: &str) -> Replica {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = in_redis(test_settings(redis, &dir));
    settings.redis.mode = mode;
    settings.partitions.count = replicas::count();
    settings.partitions.ownership = Ownership::Leases;
    settings.partitions.lease = Interval::from_millis(5_000);
    settings.source.consumer = name.to_string();
    settings.http.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    settings.shutdown.drain_timeout = Duration::from_secs(20);
    let config = config_file(&settings, &dir);
    Replica {
        name: name.to_string(),
        addr: settings.http.addr,
        child: spawn_binary(&config, &dir.join("run.log")),
    }
}

/// Replicas `a` and `x` share the partitions while `events` are produced; `x` is killed with
/// SIGKILL once a fifth is read, `a` takes its partitions, reads everything and is stopped
/// with SIGTERM. Each wait is bounded by `timeout`.
pub(super) async fn kill_one_of_two<C>(
    c: &C,
    events: &[Vec<(&'static str, String)>],
    (a, mut x): (Replica, Replica),
    timeout: Duration,
) where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    replicas::shared_by(&[&a, &x], timeout).await;
    let producer = {
        let mut c = c.clone();
        let events = events.to_vec();
        tokio::spawn(async move {
            produce_partitioned(
                &mut c,
                replicas::count(),
                &events,
                Duration::from_millis(60),
            )
            .await
        })
    };
    let fifth = events.len() / 5;
    wait_for(
        "the replicas to have read a fifth of the input",
        timeout,
        || {
            let mut c = c.clone();
            async move { replicas::read_so_far(&mut c).await > fifth }
        },
    )
    .await;
    kill9(&mut x.child);
    eprintln!(
        "killed {} with SIGKILL; events still coming: {}",
        x.name,
        !producer.is_finished()
    );
    replicas::shared_by(&[&a], timeout).await;
    producer.await.unwrap();
    drained_all(&mut c.clone(), replicas::count()).await;
    sigterm(a.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_only_redis_one_killed_mid_stream_end_as_one_process() {
    let events = workload(40_000);
    let reference = replicas::one_process(&events).await;

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let a = replica(&redis, dir.path(), "replica-a");
    let x = replica(&redis, dir.path(), "replica-b");
    kill_one_of_two(&c, &events, (a, x), Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(dir.path().join("replica-a/run.log")).unwrap();
    assert!(text.contains("snapshot loaded"), "{text}");
    let settings = in_redis(test_settings(&redis, dir.path()));
    let customers = customers_in_redis(&settings, replicas::count()).await;
    let run = outcome_with(&mut c, customers).await;
    assert_same(
        &run,
        &reference,
        "2 replicas sharing only Redis, one killed",
    );
}
