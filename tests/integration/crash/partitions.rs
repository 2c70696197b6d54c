//! One engine per partition (`partitions.count` = 4), each with snapshots of its own in
//! `state.dir/partition-<p>`: the binary killed with SIGKILL mid-stream and restarted from
//! them ends exactly as an uninterrupted run, without a task lost or written twice.

use churnd::partition::PartitionCount;

use super::*;

fn count() -> PartitionCount {
    PartitionCount::new(4).unwrap()
}

fn streams() -> Vec<String> {
    count().streams(&[EVENTS.to_string()])
}

fn partitioned_settings(redis: &RedisServer, dir: &Path) -> Settings {
    let mut settings = test_settings(redis, dir);
    settings.partitions.count = count();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_restart_from_their_own_snapshots_after_sigkill_changing_nothing() {
    let events = workload(60_000);
    let reference = {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let settings = partitioned_settings(&redis, dir.path());
        let state_dir = settings.state.dir.clone();
        let mut c = redis.conn().await;
        produce_partitioned(&mut c, count(), &events, Duration::ZERO).await;
        let app = App::spawn(settings).await;
        drained_all(&mut c, count()).await;
        app.stop().await;
        outcome_of(&mut c, &state_dir, &streams()).await
    };
    assert!(
        reference.task_ids.len() > 100 && reference.outcome_ids.len() > 100,
        "the workload raises tasks and closes their windows: {} tasks, {} outcomes",
        reference.task_ids.len(),
        reference.outcome_ids.len()
    );
    assert!(
        reference.customers.len() > 4_000,
        "{}",
        reference.customers.len()
    );

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = partitioned_settings(&redis, dir.path());
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state_dir = settings.state.dir.clone();
    let config = config_file(&settings, dir.path());
    let mut c = redis.conn().await;
    let producer = {
        let mut c = c.clone();
        let events = events.clone();
        tokio::spawn(async move {
            produce_partitioned(&mut c, count(), &events, Duration::from_millis(20)).await
        })
    };
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let log = |run: usize| dir.path().join(format!("run-{run}.log"));
    let mut daemon = spawn_binary(&config, &log(0));
    // Each restart must have a snapshot of every partition to load: on a busy machine the
    // first ones can take longer than the shortest random delay.
    wait_for(
        "a first snapshot of every partition",
        Duration::from_secs(120),
        || async { (0..4).all(|p| snapshot_count(&state_dir.join(format!("partition-{p}"))) > 0) },
    )
    .await;
    for kill in 1..=2 {
        let after = Duration::from_millis(rng.random_range(500..1_500));
        tokio::time::sleep(after).await;
        kill9(&mut daemon);
        eprintln!(
            "seed {seed}: kill {kill} after {after:?}, events still coming: {}",
            !producer.is_finished()
        );
        daemon = spawn_binary(&config, &log(kill));
    }
    producer.await.unwrap();
    ready(settings.http.addr).await;
    drained_all(&mut c, count()).await;
    sigterm(daemon).await;
    for run in 1..=2 {
        let text = std::fs::read_to_string(log(run)).unwrap();
        for p in 0..4 {
            let path = format!("partition-{p}");
            assert!(
                text.lines()
                    .any(|l| l.contains("snapshot loaded") && l.contains(&path)),
                "seed {seed}: run {run} restored no snapshot of {path}:\n{text}"
            );
        }
    }
    assert_eq!(
        snapshot_count(&state_dir),
        0,
        "no snapshot of every partition at once"
    );
    for p in 0..4 {
        assert!(snapshot_count(&state_dir.join(format!("partition-{p}"))) > 0);
    }

    let run = outcome_of(&mut c, &state_dir, &streams()).await;
    assert_same(&run, &reference, &format!("seed {seed}"));
}
