//! Snapshots kept in Redis (`state.store = "redis"`), the store alone against a real
//! redis-server: a snapshot is listed only once committed whole, the newest `keep` are
//! kept, a damaged one is set aside and the previous one used, a later epoch's sort after an
//! earlier one's, a writer whose lease is gone cannot commit, and a snapshot of many pieces
//! reads back whole. The daemon restarting from them is in `crash/in_redis.rs`.

use std::path::Path;
use std::sync::Arc;

use churnd::config::{ClockMode, RedisMode, Settings};
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::source::batch::{Batch, Entry};
use churnd::state::redis_store::{RedisStore, LENGTH_PREFIX};
use churnd::state::{self, Location, SnapshotStore};
use redis::Value;

use crate::cluster_harness::RedisCluster;
use crate::helpers::*;

const GROUP: &str = "churnd";

/// A store of `keep` snapshots per partition on `redis`, pushing pieces of `piece` bytes.
fn store(redis: &RedisServer, keep: usize, piece: usize) -> RedisStore {
    let dir = tempfile::tempdir().unwrap();
    store_with(test_settings(redis, dir.path()), keep, piece)
}

/// [`store`] with the `[redis]` of `settings`.
fn store_with(settings: Settings, keep: usize, piece: usize) -> RedisStore {
    redis_snapshot_store(&settings, keep).with_piece_size(piece)
}

/// An engine that knows `customers` customers, one purchase each.
fn engine(customers: usize) -> Engine {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json"))
        .expect("the shipped model loads");
    let mut engine = Engine::new(
        EngineSettings::from(&settings),
        Arc::new(model),
        Metrics::new().engine,
    );
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let entries = (0..customers)
        .map(|i| {
            let ts = (T0_MS + i as u64).to_string();
            let id = format!("c{i}");
            Entry {
                stream: 0,
                id: EntryId {
                    ms: T0_MS,
                    seq: i as u64 + 1,
                },
                values: Some(
                    [
                        ("customer_id", id.as_str()),
                        ("type", "purchase"),
                        ("ts", ts.as_str()),
                        ("amount", "12.50"),
                    ]
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
                ),
            }
        })
        .collect();
    engine.apply_batch(Batch::new(entries), T0_MS);
    engine
}

fn streams() -> Vec<String> {
    vec!["churn:events".to_string()]
}

/// The snapshots' names in partition 0's index, oldest first.
async fn names(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(format!("{GROUP}:snapshots:{{0}}"))
        .arg(0)
        .arg(-1)
        .query_async(c)
        .await
        .unwrap()
}

/// Runs the store's blocking calls off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_redis_are_listed_once_whole_and_the_newest_kept() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let snapshots = SnapshotStore::Redis(store(&redis, 2, 64).partition(0));

    let (store, found) = {
        let s = snapshots.clone();
        blocking(move || {
            let found = s.load_newest(&streams()).unwrap();
            (s, found)
        })
        .await
    };
    assert!(found.0.is_none() && found.1.is_empty(), "none at first");

    // Three snapshots of growing engines, each in pieces of 64 bytes.
    let written = blocking(move || {
        (1..=3u64)
            .map(|n| {
                let mut e = engine(10 * n as usize);
                state::write_snapshot(&mut e, &store, &streams(), n).unwrap()
            })
            .collect::<Vec<_>>()
    })
    .await;
    let (Location::Key(newest), bytes) = written[2].clone() else {
        panic!("a Redis key: {:?}", written[2]);
    };
    assert_eq!(
        names(&mut c).await,
        [format!("{:020}", 2), format!("{:020}", 3)],
        "only the newest two are kept"
    );
    let oldest = format!("{GROUP}:snapshot:{{0}}:{:020}", 1);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&oldest)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "the pruned snapshot's key is deleted");
    let pieces: usize = redis::cmd("LLEN")
        .arg(&newest)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        pieces as u64,
        1 + bytes.div_ceil(64),
        "the length, then pieces of 64 bytes for {bytes}"
    );
    let first: String = redis::cmd("LINDEX")
        .arg(&newest)
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(first, format!("{LENGTH_PREFIX}{bytes}"));

    // A snapshot dropped before its commit is not listed, and its pieces go.
    let s = snapshots.clone();
    blocking(move || {
        let mut out = s.create(4).unwrap();
        out.write(&[7u8; 1000]).unwrap();
        drop(out);
    })
    .await;
    wait_for(
        "the abandoned snapshot's pieces to be deleted",
        std::time::Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*:tmp")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                keys.is_empty()
            }
        },
    )
    .await;
    assert_eq!(names(&mut c).await.len(), 2);

    let s = snapshots.clone();
    let (loaded, rejected) = blocking(move || s.load_newest(&streams()).unwrap()).await;
    let loaded = loaded.expect("the newest");
    assert!(rejected.is_empty());
    assert_eq!(loaded.location, Location::Key(newest));
    assert_eq!(loaded.bytes, bytes);
    assert_eq!(loaded.snapshot.created_ms, 3);
    assert_eq!(loaded.snapshot.state.customers.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_in_redis_is_set_aside_and_the_previous_one_used() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let snapshots = SnapshotStore::Redis(store(&redis, 3, 4096).partition(0));
    let s = snapshots.clone();
    blocking(move || {
        for n in 1..=2u64 {
            let mut e = engine(5 * n as usize);
            state::write_snapshot(&mut e, &s, &streams(), n).unwrap();
        }
    })
    .await;
    // One byte flipped in the middle of the newest's first piece.
    let newest = format!("{GROUP}:snapshot:{{0}}:{:020}", 2);
    let mut piece: Vec<u8> = redis::cmd("LINDEX")
        .arg(&newest)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let middle = piece.len() / 2;
    piece[middle] ^= 0x40;
    let () = redis::cmd("LSET")
        .arg(&newest)
        .arg(1)
        .arg(piece)
        .query_async(&mut c)
        .await
        .unwrap();

    let s = snapshots.clone();
    let (loaded, rejected) = blocking(move || s.load_newest(&streams()).unwrap()).await;
    assert_eq!(loaded.expect("the previous one").snapshot.created_ms, 1);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].location, Location::Key(newest.clone()));
    assert_eq!(names(&mut c).await, [format!("{:020}", 1)]);
    let aside: i64 = redis::cmd("PTTL")
        .arg(format!("{newest}:corrupt"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(aside > 0, "set aside, to expire: {aside}");

    // A listed snapshot whose key is gone is set aside too.
    let () = redis::cmd("ZADD")
        .arg(format!("{GROUP}:snapshots:{{0}}"))
        .arg(0)
        .arg(format!("{:020}", 9))
        .query_async(&mut c)
        .await
        .unwrap();
    let s = snapshots.clone();
    let (loaded, rejected) = blocking(move || s.load_newest(&streams()).unwrap()).await;
    assert_eq!(loaded.expect("the previous one").snapshot.created_ms, 1);
    assert!(rejected[0].error.contains("missing"), "{rejected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_epoch_sorts_last_and_a_writer_without_the_lease_cannot_commit() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let plain = SnapshotStore::Redis(store(&redis, 10, 4096).partition(0));
    let lease = format!("{GROUP}:lease:{{0}}");
    let () = redis::cmd("SET")
        .arg(&lease)
        .arg("replica-b#1:10")
        .query_async(&mut c)
        .await
        .unwrap();
    let owner = plain
        .clone()
        .owned(10, lease.clone(), "replica-b#1:10".into());
    // The previous owner, paused, wakes up with its old token.
    let stale = plain
        .clone()
        .owned(9, lease.clone(), "replica-a#1:9".into());
    let (p, o, s) = (plain.clone(), owner.clone(), stale.clone());
    let refused = blocking(move || {
        let mut e = engine(3);
        state::write_snapshot(&mut e, &p, &streams(), 9_000).unwrap();
        // A later owner whose clock is behind the earlier one's.
        state::write_snapshot(&mut e, &o, &streams(), 1_000).unwrap();
        state::write_snapshot(&mut e, &s, &streams(), 20_000)
            .expect_err("the stale owner is refused")
    })
    .await;
    assert!(
        refused.to_string().contains("lease is no longer"),
        "{refused}"
    );
    assert_eq!(
        names(&mut c).await,
        [
            format!("{:020}", 9_000),
            format!("e{:010}-{:020}", 10, 1_000)
        ]
    );
    let (loaded, _) = blocking(move || plain.load_newest(&streams()).unwrap()).await;
    assert_eq!(loaded.unwrap().snapshot.created_ms, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_partition_s_snapshots_commit_and_prune_in_its_own_slot() {
    let cluster = RedisCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&cluster.nodes[0], dir.path());
    settings.redis.mode = RedisMode::Cluster;
    const P: u16 = 6;
    let mut nodes = std::collections::HashSet::new();
    for p in 0..P {
        nodes.insert(
            cluster
                .owner_of(&format!("{GROUP}:snapshots:{{{p}}}"))
                .await,
        );
    }
    assert_eq!(
        nodes.len(),
        3,
        "the partitions' indexes spread over every node"
    );
    let store = store_with(settings, 2, 256);
    let loaded = blocking(move || {
        (0..P)
            .map(|p| {
                let snapshots = SnapshotStore::Redis(store.partition(p));
                for n in 1..=3u64 {
                    let mut e = engine(usize::from(p) + n as usize);
                    state::write_snapshot(&mut e, &snapshots, &streams(), n).unwrap();
                }
                let (loaded, rejected) = snapshots.load_newest(&streams()).unwrap();
                assert!(rejected.is_empty(), "{rejected:?}");
                let loaded = loaded.expect("the newest");
                (
                    loaded.snapshot.created_ms,
                    loaded.snapshot.state.customers.len(),
                )
            })
            .collect::<Vec<_>>()
    })
    .await;
    for (p, (created, customers)) in loaded.into_iter().enumerate() {
        assert_eq!((created, customers), (3, p + 3), "partition {p}");
    }
    let mut c = cluster.conn().await;
    for p in 0..P {
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{GROUP}:snapshots:{{{p}}}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            names,
            [format!("{:020}", 2), format!("{:020}", 3)],
            "partition {p}"
        );
        let pruned: bool = redis::cmd("EXISTS")
            .arg(format!("{GROUP}:snapshot:{{{p}}}:{:020}", 1))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!pruned, "partition {p}'s oldest is deleted");
    }
}

/// A rough measure, not a check (`--ignored`): a snapshot of 1,000,000 customers written
/// and loaded through files and through Redis, on this machine as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_a_million_customers_to_files_and_to_redis() {
    use std::time::Instant;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let files = SnapshotStore::from(churnd::state::SnapshotDir::open(dir.path(), 1).unwrap());
    let keys =
        SnapshotStore::Redis(store(&redis, 1, churnd::state::redis_store::CHUNK).partition(0));
    let report = blocking(move || {
        let mut e = engine(1_000_000);
        let mut lines = Vec::new();
        for (what, target) in [("files", &files), ("redis", &keys)] {
            let started = Instant::now();
            let (_, bytes) = state::write_snapshot(&mut e, target, &streams(), 1).unwrap();
            let write = started.elapsed();
            let started = Instant::now();
            let (loaded, _) = target.load_newest(&streams()).unwrap();
            let load = started.elapsed();
            assert_eq!(loaded.unwrap().snapshot.state.customers.len(), 1_000_000);
            lines.push(format!(
                "{what}: {bytes} bytes, write {write:?}, load {load:?}"
            ));
        }
        lines
    })
    .await;
    for line in report {
        eprintln!("{line}");
    }
}
