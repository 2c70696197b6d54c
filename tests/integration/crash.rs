//! Crash safety, end to end: the built binary killed with SIGKILL at random points while
//! events stream in, Redis killed mid-stream, damaged snapshots. Each run is compared with
//! an uninterrupted run over the same events: every customer's final state must be equal,
//! every entry acknowledged, and no task or dead letter written twice.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use churnd::config::Settings;
use churnd::engine::Customer;
use churnd::state::SnapshotDir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

use crate::helpers::*;

mod committed;
mod early;
mod in_redis;
mod on_cluster;
mod partitions;
mod replicas;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const DLQ: &str = "churn:events:dlq";
const CONTROL: &str = "churn:winback:control";
const CARE: &str = "crm:tasks";
const OUTCOMES: &str = "churn:outcomes";
const GROUP: &str = "churnd";

/// The workload: `n` events over two years of event time. Customers come and go (a window
/// of 500 active customers slides over 5,000), so many fall silent and get a task; every
/// 997th entry is invalid and must be dead-lettered exactly once.
fn workload(n: usize) -> Vec<Vec<(&'static str, String)>> {
    const CUSTOMERS: usize = 5_000;
    const WINDOW: usize = 500;
    let span_ms = 730 * DAY_MS;
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            if i % 997 == 996 {
                return vec![
                    ("customer_id", format!("c{}", i % CUSTOMERS)),
                    ("type", "gift".into()),
                ];
            }
            let ts = T0_MS + (i as u64 * span_ms) / n as u64;
            let base = i * (CUSTOMERS - WINDOW) / n;
            let customer = format!("c{}", base + rng.random_range(0..WINDOW));
            let (kind, amount) = match rng.random_range(0..20) {
                0..=13 => ("purchase", Some(rng.random_range(1..20_000) as f64 / 100.0)),
                14 => ("refund", Some(5.0)),
                15 => ("complaint", None),
                _ => ("visit", None),
            };
            let mut fields = vec![
                ("customer_id", customer),
                ("type", kind.to_string()),
                ("ts", ts.to_string()),
            ];
            if let Some(a) = amount {
                fields.push(("amount", format!("{a}")));
            }
            fields
        })
        .collect()
}

/// Appends `events` to the input stream in pipelined chunks, pausing `pause` between chunks.
async fn produce(
    conn: &mut MultiplexedConnection,
    events: &[Vec<(&'static str, String)>],
    pause: Duration,
) {
    produce_to(conn, EVENTS, events, pause).await
}

/// [`produce`] to `stream`.
async fn produce_to(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    events: &[Vec<(&'static str, String)>],
    pause: Duration,
) {
    produce_routed(conn, events, pause, |_| stream.to_string()).await
}

/// Appends each event to the stream `route` names for it, in order, in pipelined chunks of
/// 500 with `pause` after each.
async fn produce_routed(
    conn: &mut impl redis::aio::ConnectionLike,
    events: &[Vec<(&'static str, String)>],
    pause: Duration,
    route: impl Fn(&[(&'static str, String)]) -> String,
) {
    for chunk in events.chunks(500) {
        // A pipeline per stream: on a Redis Cluster one pipeline reaches one slot.
        let mut pipes: BTreeMap<String, redis::Pipeline> = BTreeMap::new();
        for fields in chunk {
            let stream = route(fields);
            let cmd = pipes
                .entry(stream.clone())
                .or_insert_with(redis::pipe)
                .cmd("XADD")
                .arg(stream)
                .arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(v);
            }
            cmd.ignore();
        }
        for pipe in pipes.values() {
            pipe.query_async::<()>(conn).await.unwrap();
        }
        tokio::time::sleep(pause).await;
    }
}

/// Settings for the binary, as a config file in `dir`.
fn config_file(settings: &Settings, dir: &Path) -> PathBuf {
    let path = dir.join("churnd.toml");
    std::fs::write(&path, toml::to_string(settings).unwrap()).unwrap();
    path
}

/// Runs the binary with its log in `log`.
fn spawn_binary(config: &Path, log: &Path) -> Child {
    churnd()
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("churnd starts")
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Waits until the daemon serving HTTP on `addr` is ready: state recovered, the input read
/// to its end. A daemon restarted after the streams were drained has done nothing yet.
async fn ready(addr: std::net::SocketAddr) {
    let url = format!("http://{addr}/readyz");
    wait_for("the daemon to be ready", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
}

/// Whether process `pid` has installed a handler for SIGTERM (Linux: the `SigCgt` mask of
/// /proc/<pid>/status). Until it has, SIGTERM kills it outright instead of shutting it down.
fn handles_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let mask = line.strip_prefix("SigCgt:")?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Asks churnd to shut down and waits for a clean exit. A daemon just started (the streams
/// already drained by the one before it) is first given the time to install its handler;
/// one that exits before it has fails the test with its exit status.
async fn sigterm(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handles_sigterm(child.id()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("churnd exited with {status} before it was asked to stop");
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for churnd to handle SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: plain kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "churnd exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "churnd did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to two minutes) until the group has read every entry and written its effects.
async fn drained(conn: &mut impl redis::aio::ConnectionLike) {
    drained_stream(conn, EVENTS).await
}

/// [`drained`] for `stream`.
async fn drained_stream(conn: &mut impl redis::aio::ConnectionLike, stream: &str) {
    wait_drained_within(conn, stream, GROUP, Duration::from_secs(120)).await
}

/// Every customer's record in the newest snapshot of `dir`, by ID (with partitions, of
/// every partition's directory).
fn customers_in_snapshot(dir: &Path, streams: &[String]) -> BTreeMap<String, Customer> {
    let partitions: Vec<PathBuf> = (0..)
        .map(|p| dir.join(format!("partition-{p}")))
        .take_while(|d| d.is_dir())
        .collect();
    if !partitions.is_empty() {
        return partitions
            .iter()
            .flat_map(|d| customers_in_snapshot(d, streams))
            .collect();
    }
    let (loaded, rejected) = SnapshotDir::open(dir, 3)
        .unwrap()
        .load_newest(streams)
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let store = loaded.expect("a snapshot").snapshot.state.customers;
    (0..store.len() as u32)
        .map(|i| (store.id(i).to_string(), *store.get(i)))
        .collect()
}

/// What a run leaves behind, for comparison with the uninterrupted run.
struct Outcome {
    customers: BTreeMap<String, Customer>,
    /// Task IDs of the win-back stream, the control group's stream and the other kinds'
    /// stream, each in stream order.
    task_ids: Vec<String>,
    control_ids: Vec<String>,
    care_ids: Vec<String>,
    /// The task IDs of the cancels in those three streams, and of the outcome records.
    cancel_ids: Vec<String>,
    outcome_ids: Vec<String>,
    /// Per dead letter: its reason, source stream and customer, sorted (entry IDs differ
    /// from run to run).
    dead_lettered: Vec<(String, String, String)>,
}

async fn outcome(conn: &mut MultiplexedConnection, state_dir: &Path) -> Outcome {
    outcome_of(conn, state_dir, &[EVENTS.to_string()]).await
}

/// [`outcome`] of a run reading `streams`.
async fn outcome_of(
    conn: &mut MultiplexedConnection,
    state_dir: &Path,
    streams: &[String],
) -> Outcome {
    outcome_with(conn, customers_in_snapshot(state_dir, streams)).await
}

/// What a run left in Redis's streams, with `customers` as the state kept.
async fn outcome_with(
    conn: &mut impl redis::aio::ConnectionLike,
    customers: BTreeMap<String, Customer>,
) -> Outcome {
    let mut ids = Vec::new();
    let mut cancel_ids = Vec::new();
    for stream in [WINBACK, CONTROL, CARE] {
        let records = read_stream(conn, stream).await;
        let (cancels, tasks): (Vec<_>, Vec<_>) =
            records.iter().partition(|(_, f)| f["record"] == "cancel");
        ids.push(tasks.iter().map(|(_, f)| f["task_id"].clone()).collect());
        cancel_ids.extend(cancels.iter().map(|(_, f)| f["task_id"].clone()));
    }
    let outcome_ids = read_stream(conn, OUTCOMES)
        .await
        .iter()
        .map(|(_, f)| f["task_id"].clone())
        .collect();
    let [task_ids, control_ids, care_ids]: [Vec<String>; 3] = ids.try_into().unwrap();
    let mut dead_lettered: Vec<(String, String, String)> = read_stream(conn, DLQ)
        .await
        .into_iter()
        .map(|(_, f)| {
            let field = |k: &str| f.get(k).cloned().unwrap_or_default();
            (
                field("dlq_reason"),
                field("dlq_source_stream"),
                field("customer_id"),
            )
        })
        .collect();
    dead_lettered.sort();
    Outcome {
        customers,
        task_ids,
        control_ids,
        care_ids,
        cancel_ids,
        outcome_ids,
        dead_lettered,
    }
}

/// The uninterrupted run: every event loaded first, one daemon reads them all.
async fn uninterrupted(events: &[Vec<(&'static str, String)>]) -> Outcome {
    uninterrupted_with(events, |_| {}).await
}

/// [`uninterrupted`], with settings changed by `adjust`.
async fn uninterrupted_with(
    events: &[Vec<(&'static str, String)>],
    adjust: impl FnOnce(&mut Settings),
) -> Outcome {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    adjust(&mut settings);
    let state_dir = settings.state.dir.clone();
    let mut c = redis.conn().await;
    produce(&mut c, events, Duration::ZERO).await;
    let app = App::spawn(settings).await;
    drained(&mut c).await;
    app.stop().await;
    outcome(&mut c, &state_dir).await
}

/// Whether each of `run`'s outputs holds exactly what `reference`'s does, each entry once:
/// customers, win-back and control tasks, the other kinds' tasks and dead letters.
fn assert_same(run: &Outcome, reference: &Outcome, what: &str) {
    assert_eq!(
        run.dead_lettered, reference.dead_lettered,
        "{what}: dead letters (reason, stream, customer)"
    );
    assert_eq!(
        run.customers.len(),
        reference.customers.len(),
        "{what}: customers"
    );
    for (id, expected) in &reference.customers {
        assert_eq!(
            run.customers.get(id),
            Some(expected),
            "{what}: customer {id}"
        );
    }
    for (stream, ran, expected) in [
        (WINBACK, &run.task_ids, &reference.task_ids),
        (CONTROL, &run.control_ids, &reference.control_ids),
        (CARE, &run.care_ids, &reference.care_ids),
        (
            "the task streams' cancels",
            &run.cancel_ids,
            &reference.cancel_ids,
        ),
        (OUTCOMES, &run.outcome_ids, &reference.outcome_ids),
    ] {
        let unique: HashSet<&String> = ran.iter().collect();
        assert_eq!(
            unique.len(),
            ran.len(),
            "{what}: duplicate task IDs in {stream}"
        );
        let expected: HashSet<&String> = expected.iter().collect();
        let missing: Vec<_> = expected.difference(&unique).take(5).collect();
        let extra: Vec<_> = unique.difference(&expected).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: the tasks in {stream} differ: {} written, {} expected; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
            unique.len(),
            expected.len()
        );
    }
}

/// SIGTERM in the first moments of a start, with nothing to read (as a test that restarts
/// churnd after the streams were drained sends it): a clean exit, not death by the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_start_exits_cleanly() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config_file(&settings, dir.path());
    for run in 0..3 {
        let daemon = spawn_binary(&config, &dir.path().join(format!("run-{run}.log")));
        sigterm(daemon).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_three_times_changes_nothing() {
    let events = workload(200_000);
    let reference = uninterrupted(&events).await;
    assert!(
        reference.task_ids.len() > 1_000,
        "the workload raises tasks: {}",
        reference.task_ids.len()
    );
    assert!(
        reference.cancel_ids.len() > 20 && reference.outcome_ids.len() > 1_000,
        "the workload cancels tasks and closes their windows: {} cancels, {} outcomes",
        reference.cancel_ids.len(),
        reference.outcome_ids.len()
    );

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state_dir = settings.state.dir.clone();
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
    // Each restart must have a snapshot to load: on a busy machine the first one can take
    // longer than the shortest random delay.
    wait_for("a first snapshot", Duration::from_secs(120), || async {
        snapshot_count(&state_dir) > 0
    })
    .await;
    for kill in 1..=3 {
        let after = Duration::from_millis(rng.random_range(500..2_500));
        tokio::time::sleep(after).await;
        kill9(&mut daemon);
        eprintln!("seed {seed}: kill {kill} after {after:?}");
        daemon = spawn_binary(&config, &log(kill));
    }
    assert!(
        !producer.is_finished(),
        "the kills came while events were still streaming in"
    );
    producer.await.unwrap();
    ready(settings.http.addr).await;
    drained(&mut c).await;
    sigterm(daemon).await;
    for run in 1..=3 {
        let text = std::fs::read_to_string(log(run)).unwrap();
        for step in ["snapshot loaded", "replaying from the snapshot's position"] {
            assert!(
                text.contains(step),
                "seed {seed}: run {run} logged no {step:?}:\n{text}"
            );
        }
    }

    let run = outcome(&mut c, &state_dir).await;
    assert_same(&run, &reference, &format!("seed {seed}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_stream_changes_nothing() {
    let events = workload(40_000);
    let reference = uninterrupted(&events).await;

    let mut redis = RedisServer::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings).await;
    let (first, second) = events.split_at(events.len() / 2);
    let mut c = redis.conn().await;
    produce(&mut c, first, Duration::from_millis(5)).await;
    redis.restart(); // SIGKILL; the append-only file keeps every write
    let mut c = redis.conn().await;
    produce(&mut c, second, Duration::from_millis(5)).await;
    drained(&mut c).await;
    assert!(
        app.metric("churnd_redis_errors_total{role=\"source\"}")
            .await
            .unwrap()
            >= 1.0,
        "the daemon saw Redis go away"
    );
    app.stop().await;
    let run = outcome(&mut c, &state_dir).await;
    assert_same(&run, &reference, "Redis restart");
}

/// Flips one byte in the middle of a file.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() * 2 / 3]).unwrap();
}

fn newest_snapshot(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files.pop().expect("a snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_set_aside_and_the_previous_one_used() {
    for damage in [flip_a_byte as fn(&Path), truncate] {
        let events = workload(6_000);
        let reference = uninterrupted(&events).await;
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(&redis, dir.path());
        let state_dir = settings.state.dir.clone();
        let mut c = redis.conn().await;
        let (first, second) = events.split_at(events.len() / 2);

        // Two runs, each ending with a snapshot: the second is the newest, then damaged.
        produce(&mut c, first, Duration::ZERO).await;
        let app = App::spawn(settings.clone()).await;
        drained(&mut c).await;
        app.stop().await;
        produce(&mut c, second, Duration::ZERO).await;
        let app = App::spawn(settings.clone()).await;
        drained(&mut c).await;
        app.stop().await;
        let newest = newest_snapshot(&state_dir);
        damage(&newest);

        // The third run sets it aside, starts from the older one and replays the rest.
        let app = App::spawn(settings).await;
        wait_for("recovery", Duration::from_secs(20), || {
            let app = &app;
            async move { app.get("/readyz").await.status() == 200 }
        })
        .await;
        assert_eq!(
            app.metric("churnd_snapshots_rejected_total").await,
            Some(1.0)
        );
        assert!(newest.with_extension("bin.corrupt").exists());
        drained(&mut c).await;
        app.stop().await;
        let run = outcome(&mut c, &state_dir).await;
        assert_same(&run, &reference, "damaged snapshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_survive_a_restart_after_their_events_are_trimmed_away() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(&redis, dir.path());
    let mut c = redis.conn().await;
    let app = App::spawn(settings.clone()).await;
    xadd(&mut c, EVENTS, &purchase("loyal", 42.0, T0_MS)).await;
    drained(&mut c).await;
    wait_for("a periodic snapshot", Duration::from_secs(10), || {
        let app = &app;
        async move {
            app.metric("churnd_snapshots_total{outcome=\"written\"}")
                .await
                .is_some_and(|n| n >= 1.0)
        }
    })
    .await;
    assert!(
        app.metric("churnd_snapshot_bytes").await.unwrap() > 0.0,
        "the snapshot's size is exported"
    );
    app.stop().await;

    // The history is gone from Redis: only the snapshot knows the customer.
    redis::cmd("XTRIM")
        .arg(EVENTS)
        .arg("MAXLEN")
        .arg(0)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let app = App::spawn(settings).await;
    wait_for("recovery", Duration::from_secs(10), || {
        let app = &app;
        async move { app.get("/readyz").await.status() == 200 }
    })
    .await;
    let loyal = app.get_json("/v1/customers/loyal").await;
    assert!(
        loyal["first_purchase"]
            .as_str()
            .is_some_and(|d| d.starts_with("1997-01-01")),
        "{loyal}"
    );
    assert!(
        app.metric("churnd_recovery_duration_seconds")
            .await
            .unwrap()
            > 0.0
    );
    app.stop().await;
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files
}

/// An idle daemon does not rewrite the same state every interval (at 10 M customers that is
/// a gigabyte per interval for nothing); new input makes a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_state_is_not_written_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    // Ticks under the wall clock run the silence checks, which must not count as changes
    // while nobody is due.
    settings.clock.mode = churnd::config::ClockMode::Wall;
    settings.state.keep = std::num::NonZeroUsize::new(100).unwrap();
    let state_dir = settings.state.dir.clone();
    let mut c = redis.conn().await;
    let app = App::spawn(settings).await;
    xadd(&mut c, EVENTS, &purchase("idle-1", 5.0, T0_MS)).await;
    drained(&mut c).await;
    let counter = |outcome: &'static str| {
        let app = &app;
        async move {
            app.metric(&format!("churnd_snapshots_total{{outcome=\"{outcome}\"}}"))
                .await
                .unwrap_or(0.0)
        }
    };
    // Intervals with no input: skipped, after one snapshot of this state.
    let skips_after = |n: f64| {
        let counter = &counter;
        move || async move { counter("skipped").await >= n }
    };
    wait_for(
        "two skipped snapshots",
        Duration::from_secs(30),
        skips_after(2.0),
    )
    .await;
    let written = counter("written").await;
    let files = snapshot_files(&state_dir);
    assert_eq!(files.len() as f64, written, "{files:?}");
    let skipped = counter("skipped").await;
    wait_for(
        "two more skipped snapshots",
        Duration::from_secs(30),
        skips_after(skipped + 2.0),
    )
    .await;
    assert_eq!(counter("written").await, written, "idle intervals wrote");
    assert_eq!(snapshot_files(&state_dir), files);
    assert_eq!(counter("failed").await, 0.0);

    // Input makes a new one (a dead-lettered entry too: it moves the stream position).
    xadd(
        &mut c,
        EVENTS,
        &[("customer_id", "idle-2".into()), ("type", "gift".into())],
    )
    .await;
    drained(&mut c).await;
    wait_for(
        "a snapshot of the new state",
        Duration::from_secs(30),
        || async { counter("written").await == written + 1.0 },
    )
    .await;
    let files_after = snapshot_files(&state_dir);
    assert_eq!(files_after.len(), files.len() + 1, "{files_after:?}");
    let skipped = counter("skipped").await;
    wait_for(
        "the next interval",
        Duration::from_secs(30),
        skips_after(skipped + 1.0),
    )
    .await;
    assert_eq!(counter("written").await, written + 1.0);

    // Shutdown: the last one written holds this state, so no final one is written either.
    app.stop().await;
    assert_eq!(snapshot_files(&state_dir), files_after);
}

/// Appends each event to its customer's partition stream of `count`, in order, in pipelined
/// chunks of 500 with `pause` after each.
async fn produce_partitioned(
    conn: &mut impl redis::aio::ConnectionLike,
    count: churnd::partition::PartitionCount,
    events: &[Vec<(&'static str, String)>],
    pause: Duration,
) {
    produce_routed(conn, events, pause, |fields| {
        let customer = &fields.iter().find(|(k, _)| *k == "customer_id").unwrap().1;
        count.stream(EVENTS, count.of(customer))
    })
    .await
}

/// Waits until every partition stream of `count` is drained.
async fn drained_all(
    conn: &mut impl redis::aio::ConnectionLike,
    count: churnd::partition::PartitionCount,
) {
    for stream in count.streams(&[EVENTS.to_string()]) {
        drained_stream(conn, &stream).await;
    }
}
