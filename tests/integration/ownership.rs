//! Ownership of partitions against a real Redis: replicas find each other, share the
//! partitions out, take over a dead one's, hand over on leaving, and a paused owner learns
//! that its lease is gone.

use std::collections::BTreeSet;
use std::time::Duration;

use churnd::ownership::assign;
use churnd::ownership::coordinator::Coordinator;
use churnd::ownership::fence::Fences;
use churnd::ownership::lease::{Acquired, Leases};
use churnd::ownership::membership::Membership;
use churnd::ownership::MemberName;
use churnd::partition::PartitionCount;
use redis::aio::MultiplexedConnection;

use crate::helpers::{xlen, RedisCluster, RedisServer};

const GROUP: &str = "churnd";

fn replica(name: &str, count: u16, lease: Duration) -> Coordinator {
    Coordinator::new(
        MemberName::new(name).unwrap(),
        PartitionCount::new(count).unwrap(),
        Membership::new(GROUP, lease),
        Leases::new(GROUP, lease),
    )
    .fencing(fences())
}

/// The fence records beside the default output streams, as the daemon raises them.
fn fences() -> Fences {
    let sink = churnd::sink::SinkSettings::from(&churnd::config::Settings::default());
    Fences::new(GROUP, sink.output_streams())
}

/// One round of each replica, handing over at once what a replica is told to (as the
/// daemon does after the final snapshot).
async fn rounds(conn: &mut MultiplexedConnection, replicas: &mut [&mut Coordinator]) {
    for r in replicas.iter_mut() {
        let changes = r.round(conn).await.expect("a round");
        for p in changes.hand_over {
            r.release(conn, p).await.expect("a release");
        }
    }
}

/// Rounds of every replica (20 ms apart) until `done` holds of them, panicking with `what`
/// after `timeout`.
async fn until(
    what: &str,
    timeout: Duration,
    conn: &mut MultiplexedConnection,
    replicas: &mut [&mut Coordinator],
    done: impl Fn(&[&mut Coordinator]) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        rounds(conn, replicas).await;
        if done(replicas) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the replicas hold every partition, each exactly once.
fn covered(replicas: &[&mut Coordinator], count: u16) -> bool {
    let mut all: Vec<u16> = replicas
        .iter()
        .flat_map(|r| r.held().keys().copied())
        .collect();
    all.sort_unstable();
    all == (0..count).collect::<Vec<_>>()
}

/// Replicas "a" and "b" with leases of `lease`, once they share 8 partitions, each some.
async fn two_sharing_8(
    conn: &mut MultiplexedConnection,
    lease: Duration,
) -> (Coordinator, Coordinator) {
    let (mut a, mut b) = (replica("a", 8, lease), replica("b", 8, lease));
    until(
        "two replicas to share 8 partitions",
        Duration::from_secs(30),
        conn,
        &mut [&mut a, &mut b],
        |r| covered(r, 8) && r.iter().all(|r| !r.held().is_empty()),
    )
    .await;
    (a, b)
}

async fn holder(conn: &mut MultiplexedConnection, p: u16) -> Option<String> {
    Leases::new(GROUP, Duration::from_secs(1))
        .holder(conn, p)
        .await
        .unwrap()
}

#[tokio::test]
async fn replicas_share_the_partitions_take_over_a_dead_one_and_give_back_on_its_return() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let lease = Duration::from_secs(3);
    let (mut a, mut b, mut c) = (
        replica("churnd-0", 16, lease),
        replica("churnd-1", 16, lease),
        replica("churnd-2", 16, lease),
    );

    // Three replicas: every partition held once, by its rendezvous owner.
    until(
        "three replicas to share 16 partitions",
        Duration::from_secs(30),
        &mut conn,
        &mut [&mut a, &mut b, &mut c],
        |r| covered(r, 16) && r.iter().all(|r| !r.held().is_empty()),
    )
    .await;
    let members: BTreeSet<MemberName> = [a.me(), b.me(), c.me()].into_iter().cloned().collect();
    for (r, name) in [(&a, "churnd-0"), (&b, "churnd-1"), (&c, "churnd-2")] {
        for &p in r.held().keys() {
            assert_eq!(
                assign::owner(p, &members, PartitionCount::new(16).unwrap())
                    .unwrap()
                    .as_str(),
                name
            );
            assert_eq!(holder(&mut conn, p).await, r.token(p));
        }
    }

    // churnd-2 stops (killed, or paused): the other two take its partitions once its
    // entry and leases expire, each with a new epoch.
    let dead = c.held().clone();
    until(
        "two replicas to take over the third's partitions",
        Duration::from_secs(60),
        &mut conn,
        &mut [&mut a, &mut b],
        |r| covered(r, 16),
    )
    .await;
    for (p, old) in &dead {
        let new = a.held().get(p).or_else(|| b.held().get(p)).unwrap();
        assert!(new > old, "partition {p}: epoch {new} after {old}");
    }

    // The paused one comes back: its first round tells it every lease is gone.
    let back = c.round(&mut conn).await.unwrap();
    assert_eq!(back.lost, dead.keys().copied().collect::<Vec<_>>());
    assert!(back.gained.is_empty(), "{back:?}");
    assert!(c.held().is_empty());

    // It is a member again, so the others hand its partitions back.
    let want: Vec<u16> = dead.keys().copied().collect();
    until(
        "the returning replica to get its partitions back",
        Duration::from_secs(60),
        &mut conn,
        &mut [&mut a, &mut b, &mut c],
        |r| covered(r, 16) && r[2].held().keys().copied().collect::<Vec<_>>() == want,
    )
    .await;
}

#[tokio::test]
async fn a_survivor_following_its_schedule_takes_a_dead_ones_partitions_as_its_lease_ends() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let lease = Duration::from_secs(3);
    let every = lease / 3;
    let (mut a, mut b) = two_sharing_8(&mut conn, lease).await;
    // While both are live, rounds come every third of the lease, no more often.
    let steady = a.round(&mut conn).await.unwrap();
    assert_eq!(steady.next_round, every, "no extra round while b renews");

    // b's last round, then it dies: its entry and leases end a lease time later.
    b.round(&mut conn).await.unwrap();
    let died = std::time::Instant::now();
    // a goes on as the owners' task does: each next round when the last one says.
    let mut next = a.round(&mut conn).await.unwrap().next_round;
    let (mut rounds, mut slept) = (0, Duration::ZERO);
    while a.held().len() < 8 {
        assert!(next <= every, "{next:?}");
        tokio::time::sleep(next).await;
        slept += next;
        next = a.round(&mut conn).await.unwrap().next_round;
        rounds += 1;
        assert!(rounds < 200, "no busy loop: {rounds} rounds");
    }
    let taken = died.elapsed();
    assert!(
        taken >= lease - Duration::from_millis(100),
        "taken {taken:?} after the death, before its lease {lease:?} ended"
    );
    // Taken at the round scheduled for the expiry, not up to a third of the lease later.
    // The waits a asked for, not the time that passed: a busy machine's stalls only bring
    // the take forward in those terms.
    assert!(
        slept < lease + Duration::from_millis(300),
        "a waited {slept:?} in all before taking the partitions, lease {lease:?}"
    );
}

#[tokio::test]
async fn a_replica_that_leaves_hands_over_without_waiting_for_its_leases_to_expire() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    // Leases far longer than the test's deadline: only a release can move a partition.
    let lease = Duration::from_secs(600);
    let (mut a, mut b) = two_sharing_8(&mut conn, lease).await;

    b.leave(&mut conn).await.unwrap();
    assert!(b.held().is_empty());
    until(
        "the remaining replica to hold all 8",
        Duration::from_secs(30),
        &mut conn,
        &mut [&mut a],
        |r| covered(r, 8),
    )
    .await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(Membership::new(GROUP, lease).key())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, vec!["a".to_string()]);
}

#[tokio::test]
async fn a_restarted_replica_takes_its_own_leases_back_at_once_and_fences_its_old_run() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let lease = Duration::from_secs(600);
    let mut old = replica("churnd-0", 4, lease);
    old.round(&mut conn).await.unwrap();
    assert_eq!(old.held().len(), 4);

    // The same name started again (the pod restarted), its old run not yet stopped.
    let mut new = replica("churnd-0", 4, lease);
    let changes = new.round(&mut conn).await.unwrap();
    assert_eq!(changes.gained.len(), 4, "{changes:?}");
    for (p, epoch) in &changes.gained {
        assert!(*epoch > old.held()[p]);
    }
    // The old run's next round finds every lease gone: it must write nothing more.
    let stale = old.round(&mut conn).await.unwrap();
    assert_eq!(stale.lost, vec![0, 1, 2, 3]);
    // ... and its attempt to take them again finds them held by the new run's epoch.
    assert!(old.held().is_empty(), "{:?}", old.held());
}

/// A sink writing on behalf of `old`'s lease of partition 0, with the counter and token a
/// refusal is told to.
struct FencedSink {
    tx: tokio::sync::mpsc::Sender<churnd::engine::Effects>,
    written: tokio::sync::watch::Receiver<u64>,
    fenced: tokio_util::sync::CancellationToken,
    metrics: churnd::metrics::Metrics,
    handle: tokio::task::JoinHandle<()>,
}

fn fenced_sink(
    mut settings: churnd::config::Settings,
    leases: &[(u16, String)],
    check_leases: bool,
) -> FencedSink {
    use churnd::sink::{Fence, Fencing, Lease, Sink, SinkSettings};
    use std::sync::Arc;

    settings.redis.backoff_initial = churnd::config::Interval::from_millis(20);
    settings.redis.backoff_max = churnd::config::Interval::from_millis(200);
    let metrics = churnd::metrics::Metrics::new();
    let health = Arc::new(churnd::health::Health::new(metrics.service.ready.clone()));
    let connector = churnd::connection::Connector::new(
        churnd::connection::client(&settings.redis).unwrap(),
        &settings.redis,
        Duration::from_secs(5),
        churnd::metrics::RedisRole::Sink,
        &metrics.redis,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (written_tx, written) = tokio::sync::watch::channel(0);
    let fenced = tokio_util::sync::CancellationToken::new();
    let sink = Sink::new(
        SinkSettings {
            fence: Some(Fence {
                group: GROUP.to_string(),
                leases: leases
                    .iter()
                    .map(|(p, token)| Lease {
                        partition: *p,
                        key: Leases::new(GROUP, Duration::from_secs(1)).key(*p),
                        token: token.clone(),
                    })
                    .collect(),
                check_leases,
            }),
            ..SinkSettings::from(&settings)
        },
        connector,
        health,
        metrics.sink.clone(),
        rx,
        written_tx,
    )
    .with_fencing(Fencing {
        refused: metrics.ownership.fenced_writes.clone(),
        fenced: fenced.clone(),
    });
    let handle = tokio::spawn(sink.run(tokio_util::sync::CancellationToken::new()));
    FencedSink {
        tx,
        written,
        fenced,
        metrics,
        handle,
    }
}

/// Sends `sink` a second dead letter after its first was written, and checks that Redis
/// refuses it: the refusal reported and counted once, nothing of it written.
async fn next_write_refused(sink: &FencedSink, conn: &mut impl redis::aio::ConnectionLike) {
    sink.tx.send(rejected(2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), sink.fenced.cancelled())
        .await
        .expect("the refusal is reported");
    assert_eq!(sink.metrics.ownership.fenced_writes.get(), 1);
    assert_eq!(xlen(conn, "churn:events:dlq").await, 1, "nothing written");
}

/// An entry of partition 0's stream, rejected: its dead letter is the effect written.
fn rejected(n: u64) -> churnd::engine::Effects {
    let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
    churnd::engine::Effects {
        dead_letters: vec![churnd::engine::DeadLetter {
            stream: 0,
            id: churnd::event::EntryId {
                ms: 1_000 + n,
                seq: 0,
            },
            values: vec![
                bulk("customer_id"),
                bulk(&format!("c{n}")),
                bulk("type"),
                bulk("gift"),
            ],
            reason: churnd::event::Reason::UnknownType,
            detail: "type \"gift\" is not known".into(),
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_write_after_the_lease_passed_to_another_replica_is_refused_and_counted() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let lease = Duration::from_secs(600);
    let mut old = replica("churnd-0", 1, lease);
    old.round(&mut conn).await.unwrap();
    let token = old.token(0).expect("partition 0 held");
    let mut settings = churnd::config::Settings::default();
    settings.redis.url = server.url();
    let mut sink = fenced_sink(settings, &[(0, token)], true);

    // While the lease is held, effects are written.
    sink.tx.send(rejected(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), sink.written.wait_for(|n| *n >= 1))
        .await
        .expect("written while the lease is held")
        .unwrap();
    assert_eq!(xlen(&mut conn, "churn:events:dlq").await, 1);

    // The lease passes to another replica (the old one was paused past its expiry): the
    // old one's next write is refused, nothing of it written.
    let _: () = redis::cmd("DEL")
        .arg(Leases::new(GROUP, lease).key(0))
        .query_async(&mut conn)
        .await
        .unwrap();
    let leases = Leases::new(GROUP, lease);
    let next = leases
        .new_run(&mut conn, &MemberName::new("churnd-1").unwrap())
        .await
        .unwrap();
    let taken = leases.acquire(&mut conn, &next, 0).await.unwrap();
    assert!(matches!(taken, Acquired::Held(_)), "{taken:?}");
    next_write_refused(&sink, &mut conn).await;
    assert_eq!(
        *sink.written.borrow(),
        1,
        "the refused batch is not reported written"
    );
    tokio::time::timeout(Duration::from_secs(10), sink.handle)
        .await
        .expect("the sink stops after a refusal")
        .unwrap();
}

/// A Redis Cluster keeps each partition's lease in the partition's slot and each output
/// stream in its own, out of the effects script's reach: there the fence record beside the
/// stream, raised by the new owner, refuses the old owner's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_new_owners_fence_refuses_the_old_owners_writes() {
    let cluster = RedisCluster::start(3).await;
    let mut conn = cluster.conn().await;
    let lease = Duration::from_secs(600);
    let mut old = replica("churnd-0", 4, lease);
    old.round(&mut conn).await.unwrap();
    assert_eq!(old.held().len(), 4);
    let tokens: Vec<(u16, String)> = (0..4).map(|p| (p, old.token(p).unwrap())).collect();
    let mut settings = churnd::config::Settings::default();
    settings.redis.url = cluster.nodes[0].url();
    settings.redis.mode = churnd::config::RedisMode::Cluster;
    let mut sink = fenced_sink(settings, &tokens, false);
    sink.tx.send(rejected(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), sink.written.wait_for(|n| *n >= 1))
        .await
        .expect("written while the fences show the writer's tokens")
        .unwrap();
    assert_eq!(xlen(&mut conn, "churn:events:dlq").await, 1);

    // The old owner pauses past its leases and its member entry; another replica takes
    // every partition with new epochs and raises its fences.
    let members = Membership::new(GROUP, lease);
    let _: () = redis::cmd("ZREM")
        .arg(members.key())
        .arg("churnd-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    for p in 0..4 {
        let _: () = redis::cmd("DEL")
            .arg(Leases::new(GROUP, lease).key(p))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut new = replica("churnd-1", 4, lease);
    let taken = new.round(&mut conn).await.unwrap();
    assert_eq!(taken.gained.len(), 4, "{taken:?}");

    // The old owner's next write is refused, nothing of it written.
    next_write_refused(&sink, &mut conn).await;

    // A stale raise (the old owner taking partition 0 again at its old epoch, as if paused
    // between acquiring and raising) is refused by the newer epoch recorded.
    let refused = fences()
        .raise(
            &mut conn,
            &churnd::ownership::lease::Holder {
                member: MemberName::new("churnd-0").unwrap(),
                run: 1,
            },
            &[(0, old.held()[&0])].into(),
        )
        .await
        .unwrap();
    assert_eq!(refused.get(&0), Some(&taken.gained[0].1), "{refused:?}");
}

/// A Redis that lost writes (a failover before they were replicated, an old backup) can
/// hand out an epoch again that a fence records for another holder: the replica gives the
/// lease up and takes it again above the recorded epoch, and only then reads.
#[tokio::test]
async fn an_epoch_counter_that_went_back_is_taken_again_above_the_recorded_epoch() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    let lease = Duration::from_secs(600);
    for key in fences().keys() {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg(0)
            .arg("gone#3:5")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut r = replica("churnd-0", 1, lease);
    let first = r.round(&mut conn).await.unwrap();
    assert!(first.gained.is_empty(), "epoch 1 is refused: {first:?}");
    assert_eq!(first.conflicts, vec![0]);
    assert_eq!(holder(&mut conn, 0).await, None, "its lease given up");
    let second = r.round(&mut conn).await.unwrap();
    assert_eq!(second.gained, vec![(0, churnd::ownership::Epoch(6))]);
    for key in fences().keys() {
        let token: String = redis::cmd("HGET")
            .arg(key)
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(Some(token), r.token(0));
    }
}
