//! Learning from the holdout through real Redis: given an outcome stream where coupons
//! clearly lift one segment and lower conversion in another, the daemon's next win-back tasks
//! go to the segment where they work (`winback.policy = learned`), while the playbook would task
//! both alike; a segment that may choose among actions moves to the one measured to work; and
//! a restore from a snapshot replays with the book that snapshot recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use churnd::classify::Segment;
use churnd::config::Settings;
use churnd::decide::{ActionBudget, WinbackPolicy};
use churnd::state::SnapshotDir;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const OUTCOMES: &str = "churn:outcomes";
/// 2025-11-15 and 2025-11-20, midnight UTC, in ms: when the past tasks were raised and closed.
const RAISED_MS: u64 = 1_763_164_800_000;
const CLOSED_MS: u64 = 1_763_596_800_000;

/// Appends `total` outcome records of coupons to `segment` in `group`, `converted` of them
/// converted, in one pipeline.
async fn add_group(
    conn: &mut MultiplexedConnection,
    segment: &str,
    group: &str,
    counts: (u32, u32),
    first_task: u128,
) {
    add_arm(conn, ["coupon", segment, group], counts, first_task).await;
}

/// Appends `total` outcome records of `action` to `segment` in `group`, `converted` of them
/// converted, in one pipeline.
pub(crate) async fn add_arm(
    conn: &mut MultiplexedConnection,
    [action, segment, group]: [&str; 3],
    (converted, total): (u32, u32),
    first_task: u128,
) {
    let mut pipe = redis::pipe();
    for i in 0..total {
        let fields = outcome_record(
            &["winback", action, segment, group],
            (i < converted).then_some(20.0),
            (RAISED_MS, CLOSED_MS),
            first_task + u128::from(i),
        );
        let cmd = pipe.cmd("XADD").arg(OUTCOMES).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
    }
    let _: () = pipe
        .query_async(conn)
        .await
        .expect("the outcomes are written");
}

/// One action, coupons (cost 5, no limit on volume), for every segment, under `policy`.
fn settings(redis: &RedisServer, dir: &std::path::Path, policy: WinbackPolicy) -> Settings {
    let mut settings = test_settings(redis, dir);
    settings.winback.actions = Segment::ALL
        .into_iter()
        .map(|s| (s, "coupon".to_string()))
        .collect();
    settings.winback.budgets = BTreeMap::from([("coupon".into(), ActionBudget::new(1e12, 5.0))]);
    // Coupons alone: no segment chooses among actions.
    settings.winback.candidates.clear();
    settings.winback.policy = policy;
    settings.winback.learn.min_outcomes = 200;
    settings.winback.learn.exploration = 0.1;
    settings.tasks.welcome.enabled = false;
    settings
}

/// 100 buyers of 30 (general_development when they become candidates) and 100 of 300
/// (important_development) fall silent, event time moving on a day at a time: they cross the
/// threshold after about 50 days of silence, and a candidate passed over is looked at again
/// each day.
pub(crate) async fn buy_then_fall_silent(conn: &mut MultiplexedConnection) {
    let mut pipe = redis::pipe();
    for i in 0..200 {
        let amount = if i % 2 == 0 { 30.0 } else { 300.0 };
        let cmd = pipe.cmd("XADD").arg(EVENTS).arg("*");
        for (k, v) in purchase(&format!("c{i}"), amount, T0_MS) {
            cmd.arg(k).arg(v);
        }
    }
    let _: () = pipe.query_async(conn).await.unwrap();
    for day in 1..=70 {
        xadd(conn, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(conn, EVENTS, "churnd").await;
}

/// The win-back tasks written, per segment and per segment/effect.
async fn tasks_written(
    conn: &mut MultiplexedConnection,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let tasks = read_stream(conn, WINBACK).await;
    let (mut by_segment, mut by_effect) = (BTreeMap::new(), BTreeMap::new());
    for (_, task) in &tasks {
        *by_segment.entry(task["segment"].clone()).or_default() += 1;
        *by_effect
            .entry(format!("{}/{}", task["segment"], task["effect"]))
            .or_default() += 1;
    }
    (by_segment, by_effect)
}

/// Waits until the daemon serves the lift report, then (under `learned`) until a snapshot
/// holding the book is written: the engine takes a new book at a snapshot (so that a replay
/// from it decides with the same one), and decides with it from then on.
pub(crate) async fn wait_for_lift(app: &App, state_dir: &std::path::Path, learned: bool) {
    wait_for("the lift report", Duration::from_secs(30), || {
        let url = app.url("/v1/lift");
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    if !learned {
        return;
    }
    wait_for("a snapshot with the book", Duration::from_secs(30), || {
        let arms = arms_in_newest_snapshot(state_dir);
        async move { arms > 0 }
    })
    .await;
}

/// Arms of the book in the newest snapshot of `dir` (0 without a snapshot).
fn arms_in_newest_snapshot(dir: &std::path::Path) -> usize {
    SnapshotDir::open(dir, 3)
        .ok()
        .and_then(|d| d.load_newest(&[EVENTS.to_string()]).ok())
        .and_then(|(loaded, _)| loaded)
        .map_or(0, |l| l.snapshot.state.header.uplift.len())
}

/// Coupons: +30 points for general_development (40 % against 10 %), −10 for
/// important_development (10 % against 20 %), 1,000 outcomes per group.
async fn measured_outcomes(c: &mut MultiplexedConnection) {
    add_group(c, "general_development", "treatment", (400, 1000), 0).await;
    add_group(c, "general_development", "control", (100, 1000), 10_000).await;
    add_group(c, "important_development", "treatment", (100, 1000), 20_000).await;
    add_group(c, "important_development", "control", (200, 1000), 30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_go_to_the_segment_where_the_action_was_measured_to_work() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    measured_outcomes(&mut c).await;
    let settings = settings(&redis, dir.path(), WinbackPolicy::Learned);
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings).await;
    wait_for_lift(&app, &state_dir, true).await;
    buy_then_fall_silent(&mut c).await;
    let skipped = app
        .metric("churnd_winback_skipped_total{reason=\"no_lift\"}")
        .await
        .unwrap_or(0.0);
    app.stop().await;
    let (by_segment, by_effect) = tasks_written(&mut c).await;

    let works = by_segment.get("general_development").copied().unwrap_or(0);
    let harms = by_segment
        .get("important_development")
        .copied()
        .unwrap_or(0);
    // Where coupons work, the lift is drawn at 0.30 ± 0.02, three times win-back's pooled
    // 0.10: every candidate gets a task (no budget limits them). Where they harm, it is
    // drawn at −0.10 ± 0.02, never above zero: only the exploration share (10 % of the
    // candidates, binomial sd 3) gets a task, and the others are passed over, and counted,
    // each day they are looked at. The playbook would task all 100 of each.
    assert!(works >= 95, "{by_segment:?} {by_effect:?}");
    assert!((1..=25).contains(&harms), "{by_effect:?}");
    assert_eq!(
        by_effect.get("important_development/explored"),
        Some(&harms),
        "{by_effect:?}"
    );
    assert!(
        by_effect.keys().all(|k| !k.ends_with("/stand_in")),
        "both arms were measured before the first candidate: {by_effect:?}"
    );
    assert!(
        skipped >= (100 - harms) as f64,
        "skipped {skipped}, {by_segment:?}"
    );
}

/// A restore replays the entries after its snapshot with the book that snapshot recorded:
/// run 1 continues from the snapshot that holds the book but precedes every event, as after
/// a crash right after it, and decides as run 0 did: no task run 0 did not write. (Before,
/// a restored engine decided with the churn probability until the outcome stream was read
/// again, and raised the tasks run 0 had passed over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_replays_with_the_book_its_snapshot_recorded() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    measured_outcomes(&mut c).await;
    let settings = settings(&redis, dir.path(), WinbackPolicy::Learned);
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings.clone()).await;
    wait_for_lift(&app, &state_dir, true).await;
    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let snapshots = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        files.sort();
        files
    };
    let with_book = snapshots(&state_dir).pop().expect("a snapshot");
    std::fs::copy(&with_book, kept.join(with_book.file_name().unwrap())).unwrap();
    buy_then_fall_silent(&mut c).await;
    app.stop().await;
    let before = read_stream(&mut c, WINBACK).await;
    let control_before = read_stream(&mut c, "churn:winback:control").await.len();
    let harmed = before
        .iter()
        .filter(|(_, t)| t["segment"] == "important_development")
        .count();
    assert!(
        harmed < 50,
        "run 0 passed candidates over: {harmed} of 100 tasked"
    );

    // Run 1 from the snapshot with the book and no event.
    for f in snapshots(&state_dir) {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::copy(
        kept.join(with_book.file_name().unwrap()),
        state_dir.join(with_book.file_name().unwrap()),
    )
    .unwrap();
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(EVENTS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let last = newest[0].0.clone();
    let app = App::spawn(settings).await;
    wait_for(
        "a snapshot at the last event",
        Duration::from_secs(60),
        || {
            let applied = SnapshotDir::open(&state_dir, 3)
                .ok()
                .and_then(|d| d.load_newest(&[EVENTS.to_string()]).ok())
                .and_then(|(loaded, _)| loaded)
                .and_then(|l| l.snapshot.state.header.applied[0])
                .map(|id| format!("{}-{}", id.ms, id.seq));
            let done = applied.as_deref() == Some(last.as_str());
            async move { done }
        },
    )
    .await;
    app.stop().await;
    let after = read_stream(&mut c, WINBACK).await;
    assert_eq!(
        after.len(),
        before.len(),
        "the replay raised tasks run 0 had passed over"
    );
    assert_eq!(
        read_stream(&mut c, "churn:winback:control").await.len(),
        control_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playbook_ignores_the_outcomes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    add_group(&mut c, "important_development", "treatment", (200, 1000), 0).await;
    add_group(
        &mut c,
        "important_development",
        "control",
        (200, 1000),
        10_000,
    )
    .await;
    let settings = settings(&redis, dir.path(), WinbackPolicy::Playbook);
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings).await;
    wait_for_lift(&app, &state_dir, false).await;
    buy_then_fall_silent(&mut c).await;
    app.stop().await;
    let (by_segment, by_effect) = tasks_written(&mut c).await;
    assert_eq!(
        by_segment.get("important_development"),
        Some(&100),
        "{by_effect:?}"
    );
    assert_eq!(
        by_segment.get("general_development"),
        Some(&100),
        "{by_effect:?}"
    );
    assert!(
        by_effect.keys().all(|k| k.ends_with("/stand_in")),
        "{by_effect:?}"
    );
}

/// general_development chooses between email reminders (its playbook action) and coupons,
/// both at the same cost and within budget; the outcome stream says the reminders lower its
/// conversion by 10 points and coupons raise it by 30 (1,000 outcomes per group each). Under
/// `learned` the segment's tasks go to coupons, bar the exploration share; the playbook
/// sends every one of them a reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learned_policy_moves_a_segment_to_the_action_measured_to_work() {
    let mut written = Vec::new();
    for policy in [WinbackPolicy::Learned, WinbackPolicy::Playbook] {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut c = redis.conn().await;
        let segment = "general_development";
        add_arm(
            &mut c,
            ["email_reminder", segment, "treatment"],
            (100, 1000),
            0,
        )
        .await;
        add_arm(
            &mut c,
            ["email_reminder", segment, "control"],
            (200, 1000),
            10_000,
        )
        .await;
        add_arm(
            &mut c,
            ["coupon", segment, "treatment"],
            (400, 1000),
            20_000,
        )
        .await;
        add_arm(&mut c, ["coupon", segment, "control"], (100, 1000), 30_000).await;
        let mut settings = settings(&redis, dir.path(), policy);
        settings
            .winback
            .actions
            .insert(Segment::GeneralDevelopment, "email_reminder".into());
        settings.winback.candidates = [(
            Segment::GeneralDevelopment,
            vec!["email_reminder".to_string(), "coupon".to_string()],
        )]
        .into();
        settings
            .winback
            .budgets
            .insert("email_reminder".into(), ActionBudget::new(1e12, 5.0));
        let state_dir = settings.state.dir.clone();
        let app = App::spawn(settings).await;
        wait_for_lift(&app, &state_dir, policy == WinbackPolicy::Learned).await;
        buy_then_fall_silent(&mut c).await;
        app.stop().await;
        let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
        for (_, task) in read_stream(&mut c, WINBACK).await {
            if task["segment"] == segment {
                *by_action
                    .entry(format!("{}/{}", task["action"], task["effect"]))
                    .or_default() += 1;
            }
        }
        written.push(by_action);
    }
    let [learned, playbook] = [&written[0], &written[1]];
    let count = |m: &BTreeMap<String, usize>, key: &str| m.get(key).copied().unwrap_or(0);
    // The reminder's lift is drawn at −0.10 ± 0.02, never above zero: only the exploration
    // share (10 % of the candidates, half of it the reminder: binomial sd 2) gets one.
    assert!(count(learned, "coupon/learned") >= 85, "{learned:?}");
    assert_eq!(count(learned, "email_reminder/learned"), 0, "{learned:?}");
    assert!(
        count(learned, "email_reminder/explored") <= 15,
        "{learned:?}"
    );
    assert_eq!(
        learned.values().sum::<usize>(),
        100,
        "every candidate tasked: {learned:?}"
    );
    assert_eq!(
        playbook,
        &BTreeMap::from([("email_reminder/stand_in".to_string(), 100)]),
        "{playbook:?}"
    );
}
