//! Positions committed with snapshots (state kept): reads keep no pending entries list, the
//! `churnd:committed` group follows the durable snapshots (its lag: what a restart would
//! replay), and a SIGKILL after entries were read, applied and their effects written but
//! before a snapshot held them replays exactly those: nothing lost, nothing twice.

use churnd::event::EntryId;
use churnd::source::lag::{group_info, GroupInfo};

use super::early::{adjust, Binary, NO_PERIODIC_SNAPSHOT_MS};
use super::*;

const COMMITTED: &str = "churnd:committed";

/// The main group's and the committed group's rows of `XINFO GROUPS`.
async fn groups(c: &mut MultiplexedConnection) -> (Option<GroupInfo>, Option<GroupInfo>) {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(EVENTS)
        .query_async(c)
        .await
        .unwrap();
    (group_info(&reply, GROUP), group_info(&reply, COMMITTED))
}

async fn last_id(c: &mut MultiplexedConnection) -> EntryId {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(EVENTS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(c)
        .await
        .unwrap();
    EntryId::parse(reply[0].0.as_bytes()).unwrap()
}

/// Waits until `done` holds of the groups, checking on every look that nothing is pending.
async fn groups_until(
    c: &mut MultiplexedConnection,
    what: &str,
    done: impl Fn(&GroupInfo, Option<&GroupInfo>) -> bool,
) -> (GroupInfo, Option<GroupInfo>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (main, committed) = groups(c).await;
        if let Some(main) = main {
            assert_eq!(main.pending, 0, "no pending entries list: {main:?}");
            if done(&main, committed.as_ref()) {
                return (main, committed);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {main:?}, committed {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_follow_snapshots_and_a_kill_before_one_replays_the_rest_once() {
    let events = workload(12_000);
    let reference = uninterrupted_with(&events, |s| {
        adjust(s, 200);
        s.source.acknowledge = churnd::config::Acknowledge::Snapshots;
    })
    .await;
    let (first, second) = events.split_at(events.len() / 2);
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let mut binary = Binary::new(&redis, 200);
    binary.reconfigure(|s| s.source.acknowledge = churnd::config::Acknowledge::Snapshots);

    // Run 1: snapshots every 200 ms; the committed group follows them to the end.
    let mut daemon = binary.spawn();
    produce(&mut c, first, Duration::ZERO).await;
    let end_of_first = last_id(&mut c).await;
    let (_, committed) = groups_until(&mut c, "the first half committed", |_, committed| {
        committed.is_some_and(|g| g.last_delivered == Some(end_of_first))
    })
    .await;
    assert_eq!(committed.unwrap().lag, Some(0), "nothing left to replay");
    assert_eq!(
        binary.snapshot_positions(),
        vec![Some(end_of_first)],
        "committed once a snapshot holds it"
    );
    kill9(&mut daemon);

    // Run 2: no periodic snapshot. Everything read, applied and partly written out, none
    // of it in a snapshot: the committed group stays, its lag counts the second half.
    binary.reconfigure(|s| adjust(s, NO_PERIODIC_SNAPSHOT_MS));
    let tasks_before = xlen(&mut c, WINBACK).await;
    let mut daemon = binary.spawn();
    produce(&mut c, second, Duration::ZERO).await;
    let end = last_id(&mut c).await;
    groups_until(&mut c, "the second half read", |main, _| {
        main.last_delivered == Some(end) && main.lag == Some(0)
    })
    .await;
    wait_for(
        "tasks of the second half written",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move { xlen(&mut c, WINBACK).await > tasks_before }
        },
    )
    .await;
    let (_, committed) = groups(&mut c).await;
    let committed = committed.expect("the committed group");
    assert_eq!(committed.last_delivered, Some(end_of_first));
    assert_eq!(
        committed.lag,
        Some(second.len() as i64),
        "what a restart would replay"
    );
    kill9(&mut daemon);
    assert_eq!(binary.snapshot_positions(), vec![Some(end_of_first)]);

    // Run 3: replays the second half, writes nothing twice, commits the end.
    binary.reconfigure(|s| adjust(s, 200));
    let daemon = binary.spawn();
    binary.ready().await;
    groups_until(&mut c, "the end committed", |_, committed| {
        committed.is_some_and(|g| g.last_delivered == Some(end) && g.lag == Some(0))
    })
    .await;
    sigterm(daemon).await;
    assert!(
        binary
            .log_text(3)
            .contains("replaying from the snapshot's position"),
        "{}",
        binary.log_text(3)
    );
    let run = outcome(&mut c, binary.state_dir()).await;
    assert_same(&run, &reference, "killed after reading, before a snapshot");
    let (main, _) = groups(&mut c).await;
    assert_eq!(main.unwrap().pending, 0);
}
