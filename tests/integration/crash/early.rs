//! Crashes at the edges of the snapshot lifecycle: before the first periodic snapshot of a
//! new deployment, after a snapshot taken before any entry arrived, after a stream was added
//! to `source.streams`, and at random points in the first seconds of a new deployment.
//! Entries are acknowledged before a snapshot holds them, so each of these once lost every
//! entry read since start; each run is compared with an uninterrupted one, output stream by
//! output stream and customer by customer.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use churnd::config::Settings;
use churnd::event::EntryId;
use churnd::state::SnapshotDir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Snapshots far apart: only the one written before reading and the final one exist.
pub(super) const NO_PERIODIC_SNAPSHOT_MS: u64 = 3_600_000;
const EXTRA: &str = "churn:events:extra";

/// The settings of these runs: a control group, so every output stream has entries to
/// compare (the other kinds are on by default), snapshots every `snapshot_every_ms`. The
/// playbook's priorities: learned ones depend on the outcomes the lift task has read when a
/// candidate is decided, which two runs reach at different moments (the engine is
/// deterministic given the book it has, not given the input alone).
pub(super) fn adjust(s: &mut Settings, snapshot_every_ms: u64) {
    s.winback.control_share = 0.2;
    s.winback.policy = churnd::decide::WinbackPolicy::Playbook;
    s.state.snapshot_interval = churnd::config::Interval::from_millis(snapshot_every_ms);
}

/// A daemon binary on settings of its own, with its HTTP port, its config file and a log
/// per start.
pub(super) struct Binary {
    dir: tempfile::TempDir,
    settings: Settings,
    config: std::path::PathBuf,
    starts: usize,
}

impl Binary {
    pub(super) fn new(redis: &RedisServer, snapshot_every_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(redis, dir.path());
        adjust(&mut settings, snapshot_every_ms);
        settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = config_file(&settings, dir.path());
        Self {
            dir,
            settings,
            config,
            starts: 0,
        }
    }

    pub(super) fn reconfigure(&mut self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.settings);
        self.config = config_file(&self.settings, self.dir.path());
    }

    pub(super) fn log(&self, start: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("run-{start}.log"))
    }

    pub(super) fn spawn(&mut self) -> Child {
        self.starts += 1;
        spawn_binary(&self.config, &self.log(self.starts))
    }

    pub(super) fn log_text(&self, start: usize) -> String {
        std::fs::read_to_string(self.log(start)).unwrap()
    }

    /// Waits until the daemon is ready: state recovered, the input read to its end.
    pub(super) async fn ready(&self) {
        ready(self.settings.http.addr).await;
    }

    pub(super) fn state_dir(&self) -> &Path {
        &self.settings.state.dir
    }

    /// The positions held by the newest snapshot.
    pub(super) fn snapshot_positions(&self) -> Vec<Option<EntryId>> {
        let (loaded, _) = SnapshotDir::open(self.state_dir(), 3)
            .unwrap()
            .load_newest(&self.settings.source.streams)
            .unwrap();
        loaded.expect("a snapshot").snapshot.state.header.applied
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_first_periodic_snapshot_loses_nothing() {
    let events = workload(4_000);
    let reference = uninterrupted_with(&events, |s| adjust(s, 200)).await;
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let mut binary = Binary::new(&redis, NO_PERIODIC_SNAPSHOT_MS);

    let mut daemon = binary.spawn();
    produce(&mut c, &events, Duration::ZERO).await;
    // Every entry read, applied, its effects written and acknowledged; no snapshot holds
    // them yet.
    drained(&mut c).await;
    kill9(&mut daemon);
    let positions_at_kill = binary.snapshot_positions();

    let daemon = binary.spawn();
    binary.ready().await;
    sigterm(daemon).await;
    let run = outcome(&mut c, binary.state_dir()).await;
    assert_same(
        &run,
        &reference,
        "killed before the first periodic snapshot",
    );
    assert_eq!(
        positions_at_kill,
        vec![Some(EntryId::default())],
        "the only snapshot at the kill holds the start of the stream"
    );
    assert!(
        binary.log_text(1).contains("written before reading them"),
        "a new deployment writes a snapshot with its start before reading:\n{}",
        binary.log_text(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_a_snapshot_taken_before_any_entry_arrived_loses_nothing() {
    let events = workload(4_000);
    let reference = uninterrupted_with(&events, |s| adjust(s, 200)).await;
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let mut binary = Binary::new(&redis, NO_PERIODIC_SNAPSHOT_MS);

    // Started on an empty stream: its snapshot holds the stream's beginning.
    let mut daemon = binary.spawn();
    binary.ready().await;
    produce(&mut c, &events, Duration::ZERO).await;
    drained(&mut c).await;
    kill9(&mut daemon);
    let positions_at_kill = binary.snapshot_positions();

    let daemon = binary.spawn();
    binary.ready().await;
    sigterm(daemon).await;
    let run = outcome(&mut c, binary.state_dir()).await;
    assert_same(&run, &reference, "killed after a snapshot at 0-0");
    assert_eq!(positions_at_kill, vec![Some(EntryId::default())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_a_stream_was_added_loses_nothing() {
    let events = workload(6_000);
    let (first, second) = events.split_at(events.len() / 2);
    let both = vec![EVENTS.to_string(), EXTRA.to_string()];

    // The reference: a run on the first stream, then one on both, the second half of the
    // events in the added stream.
    let reference = {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&redis, dir.path());
        adjust(&mut settings, 200);
        let mut c = redis.conn().await;
        produce(&mut c, first, Duration::ZERO).await;
        let app = App::spawn(settings.clone()).await;
        drained(&mut c).await;
        app.stop().await;
        settings.source.streams = both.clone();
        produce_to(&mut c, EXTRA, second, Duration::ZERO).await;
        let app = App::spawn(settings.clone()).await;
        drained_stream(&mut c, EXTRA).await;
        app.stop().await;
        outcome_of(&mut c, &settings.state.dir, &both).await
    };

    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let mut binary = Binary::new(&redis, NO_PERIODIC_SNAPSHOT_MS);
    produce(&mut c, first, Duration::ZERO).await;
    let daemon = binary.spawn();
    drained(&mut c).await;
    binary.ready().await;
    sigterm(daemon).await;

    binary.reconfigure(|s| s.source.streams = both.clone());
    produce_to(&mut c, EXTRA, second, Duration::ZERO).await;
    let mut daemon = binary.spawn();
    drained_stream(&mut c, EXTRA).await;
    kill9(&mut daemon);

    let daemon = binary.spawn();
    binary.ready().await;
    sigterm(daemon).await;
    let run = outcome_of(&mut c, binary.state_dir(), &both).await;
    assert_same(&run, &reference, "killed after a stream was added");
    assert!(
        binary
            .log_text(2)
            .contains("no position kept for this stream"),
        "the added stream's start is resolved:\n{}",
        binary.log_text(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_random_points_in_a_new_deployments_first_seconds_lose_nothing() {
    let events = workload(24_000);
    let reference = uninterrupted_with(&events, |s| adjust(s, 200)).await;
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    // The first kill lands before the first periodic snapshot, the others before, during or
    // after one.
    let mut binary = Binary::new(&redis, 1_500);
    let producer = {
        let mut c = c.clone();
        let events = events.clone();
        tokio::spawn(async move { produce(&mut c, &events, Duration::from_millis(40)).await })
    };

    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut daemon = binary.spawn();
    for kill in 1..=4 {
        let upto = if kill == 1 { 1_200 } else { 2_500 };
        let after = Duration::from_millis(rng.random_range(0..upto));
        tokio::time::sleep(after).await;
        kill9(&mut daemon);
        eprintln!("seed {seed}: kill {kill} after {after:?}");
        daemon = binary.spawn();
    }
    producer.await.unwrap();
    drained(&mut c).await;
    binary.ready().await;
    sigterm(daemon).await;
    let run = outcome(&mut c, binary.state_dir()).await;
    assert_same(&run, &reference, &format!("seed {seed}"));
}
