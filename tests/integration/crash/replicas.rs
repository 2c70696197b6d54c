//! Replicas that own partitions (`partitions.ownership = leases`, P = 8), real churnd
//! processes sharing one `state.dir`: one killed with SIGKILL mid-stream, scaling
//! 1 → 3 → 2 mid-stream, and one paused past its lease with a read waiting in Redis, each
//! end exactly as one process reading every partition, without a task or dead letter lost
//! or written twice.

use std::net::SocketAddr;
use std::process::Child;

use churnd::config::{Interval, Ownership};
use churnd::partition::PartitionCount;

use super::*;

const P: u16 = 8;

pub(super) fn count() -> PartitionCount {
    PartitionCount::new(P).unwrap()
}

pub(super) fn streams() -> Vec<String> {
    count().streams(&[EVENTS.to_string()])
}

/// The outcome of one process reading every partition over `events`.
pub(super) async fn one_process(events: &[Vec<(&'static str, String)>]) -> Outcome {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.partitions.count = count();
    let state_dir = settings.state.dir.clone();
    let mut c = redis.conn().await;
    produce_partitioned(&mut c, count(), events, Duration::ZERO).await;
    let app = App::spawn(settings).await;
    drained_all(&mut c, count()).await;
    app.stop().await;
    outcome_of(&mut c, &state_dir, &streams()).await
}

/// One replica process: its name, HTTP address and the process.
pub(super) struct Replica {
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) child: Child,
}

/// Starts replica `name` over `redis` with the shared `dir`, logging to `dir/<name>-<n>.log`.
fn replica(redis: &RedisServer, dir: &Path, name: &str, n: usize) -> Replica {
    replica_with(redis, dir, (name, n), |_| {})
}

/// [`replica`], with settings changed by `adjust`.
fn replica_with(
    redis: &RedisServer,
    dir: &Path,
    (name, n): (&str, usize),
    adjust: impl FnOnce(&mut Settings),
) -> Replica {
    let mut settings = test_settings(redis, dir);
    settings.partitions.count = count();
    settings.partitions.ownership = Ownership::Leases;
    // Well above the stalls of a busy 2-core machine: a replica starved past its lease
    // loses its partitions (see docs/operating.md, "Replicas that own partitions").
    settings.partitions.lease = Interval::from_millis(5_000);
    settings.source.consumer = name.to_string();
    settings.http.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    settings.shutdown.drain_timeout = Duration::from_secs(20);
    adjust(&mut settings);
    let config_dir = dir.join(format!("{name}-{n}"));
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_file(&settings, &config_dir);
    Replica {
        name: name.to_string(),
        addr: settings.http.addr,
        child: spawn_binary(&config, &dir.join(format!("{name}-{n}.log"))),
    }
}

/// A replica's `churnd_partitions_owned`, `None` while it does not answer.
async fn owned(addr: SocketAddr) -> Option<u16> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_metric(&text, "churnd_partitions_owned").map(|v| v as u16)
}

/// A replica's `churnd_partitions_restored_total`.
async fn restored(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_metric(&text, "churnd_partitions_restored_total").unwrap() as u64
}

/// Waits until the `replicas` own every partition between them, each owning some.
pub(super) async fn shared_by(replicas: &[&Replica], timeout: Duration) {
    let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    wait_for(
        &format!("{names:?} to own all {P} partitions, each some"),
        timeout,
        || async {
            let mut total = 0;
            for r in replicas {
                match owned(r.addr).await {
                    Some(n) if n > 0 => total += n,
                    _ => return false,
                }
            }
            total == P
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_mid_stream_end_as_one_process() {
    let events = workload(60_000);
    let reference = one_process(&events).await;
    assert!(
        reference.task_ids.len() > 100 && reference.customers.len() > 4_000,
        "the workload raises tasks: {} tasks, {} customers",
        reference.task_ids.len(),
        reference.customers.len()
    );

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let a = replica(&redis, dir.path(), "replica-a", 0);
    let b = replica(&redis, dir.path(), "replica-b", 0);
    let mut x = replica(&redis, dir.path(), "replica-c", 0);
    shared_by(&[&a, &b, &x], Duration::from_secs(60)).await;
    let producer = {
        let mut c = c.clone();
        let events = events.clone();
        tokio::spawn(async move {
            produce_partitioned(&mut c, count(), &events, Duration::from_millis(60)).await
        })
    };
    // Mid-stream: some of the input read by each, more to come.
    let fifth = events.len() / 5;
    wait_for(
        "the replicas to have read a fifth of the input",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move { read_so_far(&mut c).await > fifth }
        },
    )
    .await;
    let (owned_a, owned_b) = (owned(a.addr).await.unwrap(), owned(b.addr).await.unwrap());
    let restored_before = restored(a.addr).await + restored(b.addr).await;
    let killed_at = Instant::now();
    kill9(&mut x.child);
    eprintln!(
        "killed {} with SIGKILL; events still coming: {}",
        x.name,
        !producer.is_finished()
    );
    // The survivors take the dead one's partitions within the lease time plus a restore.
    shared_by(&[&a, &b], Duration::from_secs(60)).await;
    let taken = killed_at.elapsed();
    eprintln!("taken over after {taken:?}");
    // Within the lease (5 s) and a margin for restoring on a busy machine.
    assert!(
        taken < Duration::from_secs(20),
        "taken over after {taken:?}"
    );
    // The survivors kept their engines running: only the dead one's partitions were
    // restored, not theirs again.
    let dead = P - owned_a - owned_b;
    assert_eq!(
        restored(a.addr).await + restored(b.addr).await - restored_before,
        u64::from(dead),
        "partitions restored by the survivors at the takeover (the dead one held {dead})"
    );
    producer.await.unwrap();
    drained_all(&mut c, count()).await;
    let logs = [a.name.clone(), b.name.clone()];
    for r in [a, b] {
        sigterm(r.child).await;
    }
    for name in logs {
        let text = std::fs::read_to_string(dir.path().join(format!("{name}-0.log"))).unwrap();
        assert!(
            text.contains("serving partitions"),
            "{name} served no partitions:\n{text}"
        );
    }
    let run = outcome_of(&mut c, &dir.path().join("state"), &streams()).await;
    assert_same(&run, &reference, "3 replicas, one killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_two_replicas_mid_stream_ends_as_one_process() {
    let events = workload(60_000);
    let reference = one_process(&events).await;

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let a = replica(&redis, dir.path(), "replica-a", 0);
    shared_by(&[&a], Duration::from_secs(60)).await;
    let producer = {
        let mut c = c.clone();
        let events = events.clone();
        tokio::spawn(async move {
            produce_partitioned(&mut c, count(), &events, Duration::from_millis(60)).await
        })
    };
    let third = events.len() / 3;
    wait_for("a third of the input read", Duration::from_secs(60), || {
        let mut c = c.clone();
        async move { read_so_far(&mut c).await > third / 2 }
    })
    .await;
    let b = replica(&redis, dir.path(), "replica-b", 0);
    let x = replica(&redis, dir.path(), "replica-c", 0);
    shared_by(&[&a, &b, &x], Duration::from_secs(60)).await;
    eprintln!(
        "scaled to 3; events still coming: {}",
        !producer.is_finished()
    );
    wait_for(
        "two thirds of the input read",
        Duration::from_secs(90),
        || {
            let mut c = c.clone();
            async move { read_so_far(&mut c).await > third }
        },
    )
    .await;
    sigterm(x.child).await;
    shared_by(&[&a, &b], Duration::from_secs(60)).await;
    eprintln!(
        "scaled to 2; events still coming: {}",
        !producer.is_finished()
    );
    producer.await.unwrap();
    drained_all(&mut c, count()).await;
    for r in [a, b] {
        sigterm(r.child).await;
    }
    let run = outcome_of(&mut c, &dir.path().join("state"), &streams()).await;
    assert_same(&run, &reference, "1 → 3 → 2 replicas");
}

/// Sends `signal` to `child`.
fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// The paused-replica gap (issue 21 item 5): a replica stopped (SIGSTOP) past its lease
/// while its read waits in Redis, the other taking its partitions over, then events that
/// Redis hands to the stopped replica's read. Read through the consumer group, those
/// entries were taken out of the group ahead of the new owner, which never read them:
/// their events were missing from customer state. Read by position, nothing is taken from
/// anyone: the run ends exactly as one process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_takes_nothing_from_the_new_owner() {
    let events = workload(30_000);
    let reference = one_process(&events).await;
    let (first, rest) = events.split_at(10_000);
    let (nudge, rest) = rest.split_at(200);
    let (second, third) = rest.split_at(rest.len() / 2);

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    // The one to pause waits 30 s in each read: one sent just before the pause is still
    // waiting in Redis once the other has taken its partitions over (lease 5 s).
    let a = replica_with(&redis, dir.path(), ("replica-a", 0), |s| {
        s.source.block = Interval::from_millis(30_000);
    });
    let b = replica(&redis, dir.path(), "replica-b", 0);
    shared_by(&[&a, &b], Duration::from_secs(60)).await;
    produce_partitioned(&mut c, count(), first, Duration::ZERO).await;
    drained_all(&mut c, count()).await;
    // Entries on every partition: each replica's read returns and the next one waits anew.
    produce_partitioned(&mut c, count(), nudge, Duration::ZERO).await;
    drained_all(&mut c, count()).await;
    signal(&a.child, libc::SIGSTOP);
    let paused_at = Instant::now();
    shared_by(&[&b], Duration::from_secs(60)).await;
    eprintln!(
        "{} took every partition {:?} after {} was paused",
        b.name,
        paused_at.elapsed(),
        a.name
    );
    // Redis answers the paused replica's waiting read with the first of these.
    produce_partitioned(&mut c, count(), second, Duration::from_millis(20)).await;
    drained_all(&mut c, count()).await;
    signal(&a.child, libc::SIGCONT);
    produce_partitioned(&mut c, count(), third, Duration::from_millis(20)).await;
    // Back as a member, the resumed replica gets its share again.
    shared_by(&[&a, &b], Duration::from_secs(90)).await;
    drained_all(&mut c, count()).await;
    let metrics = reqwest::get(format!("http://{}/metrics", a.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        parse_metric(&metrics, "churnd_partition_lease_losses_total").is_some_and(|n| n >= 1.0),
        "the paused replica found its leases gone"
    );
    for r in [a, b] {
        sigterm(r.child).await;
    }
    let run = outcome_of(&mut c, &dir.path().join("state"), &streams()).await;
    assert_same(&run, &reference, "one replica paused past its lease");
}

/// Entries the consumer group has delivered, over every partition stream.
pub(super) async fn read_so_far(c: &mut impl redis::aio::ConnectionLike) -> usize {
    let mut total = 0;
    for stream in streams() {
        let reply: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(c)
            .await
            .unwrap_or(redis::Value::Nil);
        total += entries_read(&reply).unwrap_or(0);
    }
    total
}

fn entries_read(reply: &redis::Value) -> Option<usize> {
    let redis::Value::Array(groups) = reply else {
        return None;
    };
    let group = groups.first()?;
    let items: Vec<&redis::Value> = match group {
        redis::Value::Array(items) => items.iter().collect(),
        redis::Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let i = items.iter().position(
        |v| matches!(v, redis::Value::BulkString(b) if b.as_slice() == b"entries-read"),
    )?;
    match items.get(i + 1)? {
        redis::Value::Int(n) => Some(*n as usize),
        _ => None,
    }
}
