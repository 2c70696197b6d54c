//! The sink on its own against real Redis: batched script calls, their accounting, the
//! script reloaded after Redis forgets it, guards under their old names, a key of the wrong
//! type, and every call's keys in one Redis Cluster slot.

use std::sync::Arc;
use std::time::Duration;

use churnd::classify::{LifecycleStage, Risk, Segment};
use churnd::config::Settings;
use churnd::connection::Connector;
use churnd::decide::uplift::Effect;
use churnd::decide::Group;
use churnd::decide::{Detail, Task, TaskKind, WinbackDetail};
use churnd::engine::{DeadLetter, Effects};
use churnd::event::{EntryId, Reason};
use churnd::health::{Health, Part};
use churnd::metrics::{Metrics, RedisRole};
use churnd::model::ScoreReason;
use churnd::sink::{self, Sink, SinkSettings};
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const WINBACK: &str = "churn:winback";
const CONTROL: &str = "churn:winback:control";
const TASKS: &str = "crm:tasks";
const DLQ: &str = "churn:events:dlq";
const EVENTS: &str = "churn:events";

/// A sink task writing to `redis`, fed through a channel as the engine feeds it.
struct SinkUnderTest {
    tx: mpsc::Sender<Effects>,
    written: watch::Receiver<u64>,
    /// Batches sent so far.
    sent: u64,
    metrics: Metrics,
    health: Arc<Health>,
    abort: CancellationToken,
    handle: JoinHandle<()>,
}

impl SinkUnderTest {
    fn start(redis: &RedisServer) -> Self {
        Self::start_after(redis, Vec::new())
    }

    /// Starts with `queued` batches waiting in the channel already, as when the sink is behind.
    fn start_after(redis: &RedisServer, queued: Vec<Effects>) -> Self {
        Self::start_with(sink_test_settings(redis), queued, None)
    }

    /// Starts with `settings`, publishing the entries written to `written_positions`.
    fn start_with(
        settings: Settings,
        queued: Vec<Effects>,
        written_positions: Option<watch::Sender<churnd::daemon::Applied>>,
    ) -> Self {
        let metrics = Metrics::new();
        let health = Arc::new(Health::new(metrics.service.ready.clone()));
        for part in [Part::Source, Part::Model, Part::State] {
            health.set(part, true);
        }
        let connector = Connector::new(
            churnd::connection::client(&settings.redis).unwrap(),
            &settings.redis,
            Duration::from_secs(5),
            RedisRole::Sink,
            &metrics.redis,
        );
        let (tx, rx) = mpsc::channel(4);
        let sent = queued.len() as u64;
        for fx in queued {
            tx.try_send(fx).expect("room in the channel");
        }
        let (written_tx, written) = watch::channel(0);
        let sink = Sink::new(
            SinkSettings::from(&settings),
            connector,
            health.clone(),
            metrics.sink.clone(),
            rx,
            written_tx,
        )
        .with_written_positions(written_positions);
        let abort = CancellationToken::new();
        let handle = tokio::spawn(sink.run(abort.clone()));
        Self {
            tx,
            written,
            sent,
            metrics,
            health,
            abort,
            handle,
        }
    }

    /// Hands over one batch's effects and waits until they are written and acknowledged.
    async fn write(&mut self, fx: Effects) {
        self.send(fx).await;
        self.wait_written().await;
    }

    async fn send(&mut self, fx: Effects) {
        self.tx.send(fx).await.expect("the sink runs");
        self.sent += 1;
    }

    /// Waits until every batch sent is written.
    async fn wait_written(&mut self) {
        let sent = self.sent;
        tokio::time::timeout(
            Duration::from_secs(20),
            self.written.wait_for(|n| *n >= sent),
        )
        .await
        .expect("the sink writes within 20 s")
        .unwrap();
    }

    fn tasks_written(&self, kind: TaskKind) -> u64 {
        self.metrics.sink.tasks_by_kind.get(kind).get()
    }

    fn dead_lettered(&self, reason: Reason) -> u64 {
        self.metrics.sink.dead_lettered.get(reason).get()
    }

    fn errors(&self) -> u64 {
        self.metrics.redis.role(RedisRole::Sink).errors.get()
    }

    async fn stop(self) {
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the sink stops once its input ends")
            .unwrap();
        self.abort.cancel();
    }
}

fn sink_test_settings(redis: &RedisServer) -> Settings {
    let mut s = Settings::default();
    s.redis.url = redis.url();
    s.redis.backoff_initial = churnd::config::Interval::from_millis(20);
    s.redis.backoff_max = churnd::config::Interval::from_millis(200);
    s.redis.connect_timeout = churnd::config::Interval::from_millis(500);
    // No kept state: entries are acknowledged per entry, once their effects are written.
    s.state.dir = Default::default();
    s
}

fn winback(n: usize, group: Group) -> Task {
    Task {
        task_id: format!("{n:032x}"),
        customer_id: format!("customer-{n}"),
        action: "call".into(),
        lifecycle_stage: LifecycleStage::Lost,
        segment: Some(Segment::ImportantWinback),
        as_of: 1_700_000_000,
        expires_at: 0,
        tags: Vec::new(),
        profile: None,
        detail: Detail::Winback(WinbackDetail {
            churn_probability: 0.8125,
            risk: Risk::High,
            priority: 12.5,
            effect: Effect::StandIn(0.8125),
            reasons: vec![ScoreReason {
                feature: "log_recency_days",
                high: true,
            }],
            model_version: "test-1".into(),
            episode_start: 1_690_000_000,
            attempt: 1,
        }),
        group,
        value: None,
    }
}

/// `count` win-back tasks, every `control_every`-th of the control group.
fn winbacks(count: usize, control_every: usize) -> impl Iterator<Item = Task> {
    (0..count).map(move |n| {
        let group = if n % control_every == 0 {
            Group::Control
        } else {
            Group::Treatment
        };
        winback(n, group)
    })
}

fn care(n: usize, kind: TaskKind, segment: Option<Segment>) -> Task {
    let detail = match kind {
        TaskKind::Welcome => Detail::Welcome {
            first_purchase: 1_699_000_000,
        },
        TaskKind::Revisit => Detail::Revisit { due: 1_699_000_000 },
        TaskKind::Convert => Detail::Convert { visits: 3 },
        other => panic!("no test task of kind {other:?}"),
    };
    Task {
        task_id: format!("c{n:031x}"),
        customer_id: format!("customer-{n}"),
        action: "follow_up".into(),
        lifecycle_stage: LifecycleStage::New,
        segment,
        as_of: 1_700_000_000,
        expires_at: 0,
        tags: Vec::new(),
        profile: None,
        detail,
        group: Group::Treatment,
        value: None,
    }
}

fn bulk(s: &str) -> redis::Value {
    redis::Value::BulkString(s.as_bytes().to_vec())
}

fn dead_letter(n: u64) -> DeadLetter {
    DeadLetter {
        stream: 0,
        id: EntryId {
            ms: 1_000 + n,
            seq: 0,
        },
        values: vec![
            bulk("customer_id"),
            bulk(&format!("c{n}")),
            bulk("type"),
            bulk("gift"),
        ],
        reason: Reason::UnknownType,
        detail: "type \"gift\" is not one of purchase, refund, visit, complaint".into(),
    }
}

/// Keys matching `pattern`, by SCAN.
async fn keys(c: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .unwrap();
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// `n` purchases added to the input stream and read by the daemon's group without being
/// acknowledged, as the acknowledgements of a batch name them.
async fn pending_purchases(c: &mut MultiplexedConnection, n: usize) -> Vec<(u16, EntryId)> {
    create_group(c, EVENTS).await;
    let mut acks = Vec::new();
    for i in 0..n {
        let id = xadd(c, EVENTS, &purchase(&format!("p{i}"), 1.0, T0_MS)).await;
        acks.push((0, EntryId::parse(id.as_bytes()).unwrap()));
    }
    leave_pending(c, EVENTS).await;
    acks
}

async fn ttl(c: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_beyond_one_script_call_is_written_once_and_counted_then_dropped_on_replay() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    // Entries the batch acknowledges once its effects are written.
    let acks = pending_purchases(&mut c, 5).await;

    let batch = |acks: Vec<_>| Effects {
        tasks: winbacks(600, 3)
            .chain((0..300).map(|n| match n % 3 {
                0 => care(n, TaskKind::Welcome, None),
                1 => care(n, TaskKind::Welcome, Some(Segment::GeneralValue)),
                _ => care(n, TaskKind::Convert, None),
            }))
            .collect(),
        dead_letters: (0..700).map(dead_letter).collect(),
        acks,
        ..Effects::default()
    };
    let fx = batch(acks);
    let settings = SinkSettings::from(&sink_test_settings(&redis));
    // 400 + 200 win-back tasks, three sets of care-task fields, 700 dead letters: more calls
    // than streams.
    let calls = settings.effect_calls(&fx, false).len();
    assert_eq!(calls, 8);

    let mut sink = SinkUnderTest::start(&redis);
    sink.write(fx).await;
    assert_eq!(xlen(&mut c, WINBACK).await, 400);
    assert_eq!(xlen(&mut c, CONTROL).await, 200);
    assert_eq!(xlen(&mut c, TASKS).await, 300);
    assert_eq!(xlen(&mut c, DLQ).await, 700);
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 0)),
        "acknowledged after the writes"
    );
    assert_eq!(sink.tasks_written(TaskKind::Winback), 600);
    assert_eq!(sink.tasks_written(TaskKind::Welcome), 200);
    assert_eq!(sink.tasks_written(TaskKind::Convert), 100);
    assert_eq!(sink.dead_lettered(Reason::UnknownType), 700);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 0);
    assert_eq!(
        sink.metrics
            .sink
            .tasks
            .with_label_values(&["call", "control"])
            .get(),
        200
    );

    // Every field in its order, whichever way the call carried it.
    let (_, first) = &read_stream(&mut c, CONTROL).await[0];
    assert_eq!(first["task_id"], format!("{:032x}", 0));
    assert_eq!(first["reasons"], "log_recency_days:high");
    assert_eq!(
        (first["effect"].as_str(), first["chance"].as_str()),
        ("stand_in", "0.812500")
    );
    assert_eq!(first.len(), 21);
    assert_eq!(first["tags"], "");
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(TASKS)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    let names =
        |i: usize| -> Vec<&str> { raw[i].1.iter().step_by(2).map(String::as_str).collect() };
    assert_eq!(
        names(0),
        [
            "schema_version",
            "record",
            "task_id",
            "kind",
            "customer_id",
            "action",
            "lifecycle_stage",
            "as_of",
            "expires_at",
            "first_purchase",
            "group",
            "tags"
        ]
    );
    assert_eq!(
        names(1),
        [
            "schema_version",
            "record",
            "task_id",
            "kind",
            "customer_id",
            "action",
            "lifecycle_stage",
            "segment",
            "as_of",
            "expires_at",
            "first_purchase",
            "group",
            "tags"
        ]
    );
    let dead = read_stream(&mut c, DLQ).await;
    assert_eq!(dead[699].1["customer_id"], "c699");
    assert_eq!(dead[699].1["dlq_source_id"], "1699-0");
    assert_eq!(dead[699].1["dlq_source_stream"], EVENTS);

    // Guards: one per effect, hash-tagged on its stream, with the configured expiry.
    let guards = keys(&mut c, "{churn:winback}:dedup:*").await;
    assert_eq!(guards.len(), 400);
    let day_ttl = ttl(&mut c, &format!("{{{WINBACK}}}:dedup:{:032x}", 1)).await;
    assert!(
        day_ttl > 399 * 86_400 && day_ttl <= 400 * 86_400,
        "{day_ttl}"
    );
    let dl_ttl = ttl(&mut c, &format!("{{{DLQ}}}:dedup:{EVENTS}:1000-0")).await;
    assert!(dl_ttl > 604_000 && dl_ttl <= 604_800, "{dl_ttl}");

    // The same batch again (a replay): nothing written, every task counted a duplicate.
    sink.write(batch(Vec::new())).await;
    assert_eq!(xlen(&mut c, WINBACK).await, 400);
    assert_eq!(xlen(&mut c, CONTROL).await, 200);
    assert_eq!(xlen(&mut c, TASKS).await, 300);
    assert_eq!(xlen(&mut c, DLQ).await, 700);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 600);
    assert_eq!(sink.tasks_written(TaskKind::Winback), 600);
    assert_eq!(sink.tasks_written(TaskKind::Welcome), 200);
    assert_eq!(sink.dead_lettered(Reason::UnknownType), 700);
    assert_eq!(sink.errors(), 0);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_waiting_behind_a_write_are_written_together_in_order() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let acks: Vec<_> = pending_purchases(&mut c, 3)
        .await
        .into_iter()
        .map(|ack| vec![ack])
        .collect();
    // Three batches; the third raises the first's task again (a replay).
    let batches: Vec<Effects> = [vec![0, 1], vec![2], vec![3, 0]]
        .into_iter()
        .zip(acks)
        .map(|(tasks, acks)| Effects {
            tasks: tasks
                .into_iter()
                .map(|n| winback(n, Group::Treatment))
                .collect(),
            acks,
            ..Effects::default()
        })
        .collect();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let mut sink = SinkUnderTest::start_after(&redis, batches);
    sink.wait_written().await;
    let ids: Vec<String> = read_stream(&mut c, WINBACK)
        .await
        .into_iter()
        .map(|(_, f)| f["task_id"].clone())
        .collect();
    let id = |n: usize| format!("{n:032x}");
    assert_eq!(ids, [id(0), id(1), id(2), id(3)]);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 1);
    assert_eq!(sink.tasks_written(TaskKind::Winback), 4);
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 0))
    );
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_evalsha:calls=1,"),
        "one script call for the three batches: {stats}"
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_state_kept_effects_are_written_and_nothing_is_acknowledged_per_entry() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    let acks = pending_purchases(&mut c, 3).await;
    let last = acks.iter().map(|&(_, id)| id).max().unwrap();
    let mut settings = sink_test_settings(&redis);
    settings.state.dir = "state".into();
    settings.source.acknowledge = churnd::config::Acknowledge::Snapshots;
    let (positions_tx, mut positions) = watch::channel(churnd::daemon::Applied::default());
    let fx = Effects {
        tasks: vec![winback(7, Group::Treatment)],
        acks,
        ..Effects::default()
    };
    let mut sink = SinkUnderTest::start_with(settings, vec![fx], Some(positions_tx));
    sink.wait_written().await;
    assert_eq!(xlen(&mut c, WINBACK).await, 1);
    tokio::time::timeout(
        Duration::from_secs(10),
        positions.wait_for(|p| p.positions == [last]),
    )
    .await
    .expect("the entries written are published")
    .unwrap();
    assert_eq!(
        group_state(&mut c, EVENTS, "churnd").await,
        Some((Some(0), 3)),
        "left pending: the positions are committed with snapshots"
    );
    assert_eq!(sink.metrics.sink.entries_acked.get(), 0);
    // What is written shows in Redis: the written group, created at the first write,
    // stands at the last entry (one XGROUP SETID per stream and write).
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(EVENTS)
        .query_async(&mut c)
        .await
        .unwrap();
    let written = churnd::source::lag::group_info(&reply, "churnd:written").expect("created");
    assert_eq!(written.last_delivered, Some(last));
    assert_eq!(written.pending, 0);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_is_loaded_again_after_script_flush_and_after_a_restart() {
    let mut redis = RedisServer::start_persistent();
    let mut c = redis.conn().await;
    let mut sink = SinkUnderTest::start(&redis);
    let tasks = |range: std::ops::Range<usize>| Effects {
        tasks: range.map(|n| winback(n, Group::Treatment)).collect(),
        ..Effects::default()
    };
    sink.write(tasks(0..10)).await;

    // Redis forgets the script; the connection stays.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    sink.write(tasks(5..20)).await;
    assert_eq!(xlen(&mut c, WINBACK).await, 20);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 5);
    assert_eq!(
        sink.errors(),
        0,
        "an unknown script is loaded, not an error"
    );

    // Redis restarts with its data (scripts are not kept): a new connection loads it.
    redis.restart();
    let mut c = redis.conn().await;
    sink.write(tasks(15..30)).await;
    assert_eq!(xlen(&mut c, WINBACK).await, 30);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 10);
    assert_eq!(sink.tasks_written(TaskKind::Winback), 30);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_under_their_old_names_are_honoured_and_moved_with_their_expiry() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    // Guards the sink wrote before the hash tag: a task and a dead letter written then.
    let old_task = format!("{WINBACK}:dedup:{:032x}", 7);
    let old_dead_letter = format!("{DLQ}:dedup:{EVENTS}:1003-0");
    for key in [&old_task, &old_dead_letter] {
        redis::cmd("SET")
            .arg(key)
            .arg("1-1")
            .arg("EX")
            .arg(5_000)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
    // Keys of someone else that look alike stay where they are.
    for key in ["other:app:dedup:x", "{churn:winback}:dedup:not-old"] {
        redis::cmd("SET")
            .arg(key)
            .arg("1")
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }

    let mut sink = SinkUnderTest::start(&redis);
    sink.write(Effects {
        tasks: (6..9).map(|n| winback(n, Group::Treatment)).collect(),
        dead_letters: (2..5).map(dead_letter).collect(),
        ..Effects::default()
    })
    .await;
    let written: Vec<String> = read_stream(&mut c, WINBACK)
        .await
        .into_iter()
        .map(|(_, f)| f["task_id"].clone())
        .collect();
    assert_eq!(written, [format!("{:032x}", 6), format!("{:032x}", 8)]);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 1);
    let dead: Vec<String> = read_stream(&mut c, DLQ)
        .await
        .into_iter()
        .map(|(_, f)| f["dlq_source_id"].clone())
        .collect();
    assert_eq!(dead, ["1002-0", "1004-0"]);
    assert_eq!(sink.dead_lettered(Reason::UnknownType), 2);

    // The start's pass renamed them, expiry kept.
    let new_task = format!("{{{WINBACK}}}:dedup:{:032x}", 7);
    wait_for(
        "the old guard names to be moved",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let old = old_task.clone();
            async move { !keys(&mut c, &old).await.contains(&old) }
        },
    )
    .await;
    let t = ttl(&mut c, &new_task).await;
    assert!(t > 4_900 && t <= 5_000, "{t}");
    let value: String = redis::cmd("GET")
        .arg(&new_task)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(value, "1-1");
    assert!(ttl(&mut c, &format!("{{{DLQ}}}:dedup:{EVENTS}:1003-0")).await > 4_900);
    assert_eq!(keys(&mut c, &old_dead_letter).await, Vec::<String>::new());
    assert_eq!(keys(&mut c, "other:app:dedup:x").await.len(), 1);
    assert_eq!(
        keys(&mut c, "{churn:winback}:dedup:*").await.len(),
        4,
        "tasks 6, 7 (moved), 8 and the look-alike"
    );

    // Moved, the guard still holds.
    sink.write(Effects {
        tasks: vec![winback(7, Group::Treatment)],
        ..Effects::default()
    })
    .await;
    assert_eq!(xlen(&mut c, WINBACK).await, 2);
    assert_eq!(sink.metrics.sink.tasks_duplicate.get(), 2);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_checks_the_old_guard_name_while_old_names_are_being_moved() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    sink::load_effects_script(&mut churnd::connection::RedisConn::Standalone(c.clone()))
        .await
        .unwrap();
    let settings = SinkSettings::from(&sink_test_settings(&redis));
    redis::cmd("SET")
        .arg(format!("{WINBACK}:dedup:{:032x}", 1))
        .arg("1-1")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let fx = Effects {
        tasks: (0..3).map(|n| winback(n, Group::Treatment)).collect(),
        ..Effects::default()
    };
    let calls = settings.effect_calls(&fx, true);
    assert_eq!(calls.len(), 1);
    let reply: String = calls[0].query_async(&mut c).await.unwrap();
    assert_eq!(reply, "101", "task 1 was written under the old guard name");
    let again: String = calls[0].query_async(&mut c).await.unwrap();
    assert_eq!(again, "000");
    assert_eq!(xlen(&mut c, WINBACK).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_key_of_another_type_fails_its_call_before_anything_is_written() {
    let redis = RedisServer::start();
    let mut c = redis.conn().await;
    sink::load_effects_script(&mut churnd::connection::RedisConn::Standalone(c.clone()))
        .await
        .unwrap();
    let settings = SinkSettings::from(&sink_test_settings(&redis));
    redis::cmd("SET")
        .arg(WINBACK)
        .arg("oops")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let fx = Effects {
        tasks: (0..3).map(|n| winback(n, Group::Treatment)).collect(),
        dead_letters: vec![dead_letter(1)],
        ..Effects::default()
    };
    let calls = settings.effect_calls(&fx, false);
    assert_eq!(calls.len(), 2);
    let e = calls[0]
        .query_async::<String>(&mut c)
        .await
        .expect_err("the win-back stream is a string");
    assert_eq!(e.code(), Some("WRONGTYPE"), "{e}");
    assert!(
        keys(&mut c, "{churn:winback}:dedup:*").await.is_empty(),
        "no guard set"
    );
    let reply: String = calls[1].query_async(&mut c).await.unwrap();
    assert_eq!(reply, "1");

    // A running sink (connected while the key was a stream, or absent) holds the batch,
    // not ready, until the key is fixed, then writes each effect once; the dead letter's call,
    // which succeeded at once, is not sent again.
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let mut sink = SinkUnderTest::start(&redis);
    sink.write(Effects {
        dead_letters: vec![dead_letter(0)],
        ..Effects::default()
    })
    .await;
    assert!(sink.health.is_ready());
    redis::cmd("SET")
        .arg(WINBACK)
        .arg("oops")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    sink.send(fx).await;
    wait_for("failed writes", Duration::from_secs(10), || async {
        sink.errors() >= 2 && !sink.health.is_ready()
    })
    .await;
    assert_eq!(*sink.written.borrow(), 1);
    assert_eq!(xlen(&mut c, DLQ).await, 2);
    redis::cmd("DEL")
        .arg(WINBACK)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    sink.wait_written().await;
    assert_eq!(xlen(&mut c, WINBACK).await, 3);
    assert_eq!(xlen(&mut c, DLQ).await, 2);
    assert_eq!(sink.tasks_written(TaskKind::Winback), 3);
    assert_eq!(sink.dead_lettered(Reason::UnknownType), 2);
    assert!(sink.health.is_ready());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_keeps_to_one_cluster_slot() {
    // A Redis Cluster node owning every slot refuses a command whose keys span slots
    // (CROSSSLOT), and computes slots for the check below.
    let redis = RedisServer::start_with(ServerOptions {
        cluster: true,
        ..ServerOptions::default()
    });
    redis.own_all_slots().await;
    let mut c = redis.conn().await;
    let refused = redis::cmd("EXISTS")
        .arg(WINBACK)
        .arg(DLQ)
        .query_async::<i64>(&mut c)
        .await
        .expect_err("keys of two slots");
    assert_eq!(refused.code(), Some("CROSSSLOT"), "{refused}");
    let mut sink = SinkUnderTest::start(&redis);
    sink.write(Effects {
        tasks: winbacks(300, 2)
            .chain((0..10).map(|n| care(n, TaskKind::Revisit, None)))
            .collect(),
        dead_letters: (0..10).map(dead_letter).collect(),
        ..Effects::default()
    })
    .await;
    assert_eq!(
        xlen(&mut c, WINBACK).await + xlen(&mut c, CONTROL).await,
        300
    );
    assert_eq!(xlen(&mut c, TASKS).await, 10);
    assert_eq!(xlen(&mut c, DLQ).await, 10);
    assert_eq!(sink.errors(), 0);
    sink.stop().await;

    let slots = c.clone();
    let slot = |key: String| {
        let mut c = slots.clone();
        async move {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    for stream in [WINBACK, CONTROL, TASKS, DLQ] {
        let own = slot(stream.to_string()).await;
        let guards = keys(&mut c, &format!("{{{stream}}}:dedup:*")).await;
        assert!(!guards.is_empty(), "{stream}");
        for guard in guards {
            assert_eq!(slot(guard.clone()).await, own, "{guard}");
        }
    }
}
