//! Budgets and holdouts through real Redis: a day's budget of N win-back tasks yields at most
//! N, the candidates held back get theirs on later days, and every kind holds out its
//! configured share of customers in its control stream.

use std::collections::BTreeMap;
use std::time::Duration;

use churnd::classify::Segment;
use churnd::decide::ActionBudget;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const WINBACK: &str = "churn:winback";
const TASKS: &str = "crm:tasks";
const TASKS_CONTROL: &str = "crm:tasks:control";

/// Win-back's one action a coupon (cost 1) for every segment, `per_day` a day: no segment
/// chooses among actions.
fn coupons_only(settings: &mut churnd::config::Settings, per_day: f64) {
    settings.winback.actions = Segment::ALL
        .into_iter()
        .map(|s| (s, "coupon".to_string()))
        .collect();
    settings.winback.candidates.clear();
    settings.winback.budgets = BTreeMap::from([("coupon".into(), ActionBudget::new(per_day, 1.0))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_days_budget_of_n_tasks_yields_at_most_n_and_the_rest_come_on_later_days() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    // One action for every segment, 3 tasks a day.
    coupons_only(&mut settings, 3.0);
    settings.tasks.welcome.enabled = false;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    // Ten buyers on day 0, with different spend: all cross the threshold on the same day
    // (about 50 days of silence under the recency model).
    let buyers = 10;
    for i in 0..buyers {
        let amount = 10.0 * f64::from(i + 1);
        xadd(&mut c, EVENTS, &purchase(&format!("c{i}"), amount, T0_MS)).await;
    }
    // A visitor moves event time on, a day at a time, past day 70.
    for day in 1..=70 {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    let held_back = app
        .metric("churnd_winback_candidates_held_back_total{action=\"coupon\"}")
        .await;
    let per_day = app
        .metric("churnd_winback_budget_per_day{action=\"coupon\"}")
        .await;
    app.stop().await;

    let tasks = read_stream(&mut c, WINBACK).await;
    let mut by_day: BTreeMap<String, usize> = BTreeMap::new();
    for (_, task) in &tasks {
        *by_day.entry(task["as_of"][..10].to_string()).or_default() += 1;
    }
    assert!(
        by_day.values().all(|&n| n <= 3),
        "at most 3 tasks a day: {by_day:?}"
    );
    // The action's first day: the ten come at once, which on a first day (no count of
    // candidates per day yet) looks like the start of a busy day, so it gives fewer.
    assert!(
        by_day
            .values()
            .next()
            .is_some_and(|&n| (1..=3).contains(&n)),
        "the first day is paced on the rate seen: {by_day:?}"
    );
    assert!(
        by_day.values().any(|&n| n == 3),
        "a later day's budget is spent: {by_day:?}"
    );
    assert!(
        by_day.len() >= 4,
        "ten candidates need four days: {by_day:?}"
    );
    let mut customers: Vec<&str> = tasks
        .iter()
        .map(|(_, t)| t["customer_id"].as_str())
        .collect();
    customers.sort_unstable();
    customers.dedup();
    assert_eq!(
        customers.len(),
        buyers as usize,
        "every candidate held back gets a task on a later day: {by_day:?}"
    );
    assert!(tasks.iter().all(|(_, t)| t["group"] == "treatment"));
    assert!(
        held_back.unwrap_or(0.0) >= 7.0,
        "held back: {held_back:?}, by day {by_day:?}"
    );
    assert_eq!(per_day, Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_holds_out_its_share_in_the_control_stream() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.tasks.control_share = 0.2;
    settings.tasks.convert.control_share = Some(0.5);
    settings.winback.enabled = false;
    let app = App::spawn(settings).await;
    let mut c = redis.conn().await;
    // 2,000 first-time buyers (a welcome each, 14 days on) and 1,000 prospects of three
    // visits (a first-purchase offer each).
    let (buyers, prospects) = (2_000u32, 1_000u32);
    let mut pipe = redis::pipe();
    for i in 0..buyers {
        let fields = purchase(&format!("b{i}"), 25.0, T0_MS);
        pipe.cmd("XADD").arg(EVENTS).arg("*");
        for (k, v) in &fields {
            pipe.arg(*k).arg(v);
        }
    }
    for i in 0..prospects {
        for day in 0..3 {
            let fields = visit(&format!("p{i}"), T0_MS + day * DAY_MS);
            pipe.cmd("XADD").arg(EVENTS).arg("*");
            for (k, v) in &fields {
                pipe.arg(*k).arg(v);
            }
        }
    }
    pipe.query_async::<()>(&mut c).await.unwrap();
    xadd(&mut c, EVENTS, &visit("clock", T0_MS + 20 * DAY_MS)).await;
    wait_for("every welcome and offer", Duration::from_secs(60), || {
        let mut c = c.clone();
        async move {
            xlen(&mut c, TASKS).await + xlen(&mut c, TASKS_CONTROL).await
                == (buyers + prospects) as usize
        }
    })
    .await;
    app.stop().await;

    let count = |entries: &[StreamEntry], kind: &str, group: &str| {
        entries
            .iter()
            .filter(|(_, t)| t["kind"] == kind && t["group"] == group)
            .count()
    };
    let treated = read_stream(&mut c, TASKS).await;
    let control = read_stream(&mut c, TASKS_CONTROL).await;
    assert!(treated.iter().all(|(_, t)| t["group"] == "treatment"));
    assert!(control.iter().all(|(_, t)| t["group"] == "control"));
    // Binomial bounds, 5 standard deviations: 2,000 × 0.2 (sd 17.9), 1,000 × 0.5 (sd 15.8).
    let welcomes_held_out = count(&control, "welcome", "control");
    assert!(
        (311..=489).contains(&welcomes_held_out),
        "{welcomes_held_out} of {buyers} welcomes held out at 20 %"
    );
    assert_eq!(
        welcomes_held_out + count(&treated, "welcome", "treatment"),
        buyers as usize
    );
    let offers_held_out = count(&control, "convert", "control");
    assert!(
        (421..=579).contains(&offers_held_out),
        "{offers_held_out} of {prospects} offers held out at 50 %"
    );
}

/// `[winback.budget]`: one spend of 100 a day for calls (cost 10) and email reminders (cost
/// 0.2), both candidates of the two segments the customers fall into, no cap per action.
/// The outcome stream says a call lifts conversion by 30 points there and a reminder by 1
/// (1,000 outcomes per group each): per unit of cost the reminder looks better (5 points
/// per unit against 3), and ranking actions by value per cost, as budgets per action do,
/// would send every candidate a reminder. The pool spends at most 100 a day, both groups
/// together, and most of it on calls: at the price the day's spend sets, the call is
/// worth more net of its cost for the customers it goes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_budget_stays_within_its_spend_and_buys_the_action_that_pays() {
    use churnd::decide::{PooledBudget, WinbackPolicy};
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn().await;
    let segments = ["general_development", "important_development"];
    for (i, segment) in segments.into_iter().enumerate() {
        let base = 100_000 * i as u128;
        for (j, (action, group, converted)) in [
            ("personal_call", "treatment", 400),
            ("personal_call", "control", 100),
            ("email_reminder", "treatment", 110),
            ("email_reminder", "control", 100),
        ]
        .into_iter()
        .enumerate()
        {
            let first = base + 10_000 * j as u128;
            crate::learning::add_arm(&mut c, [action, segment, group], (converted, 1000), first)
                .await;
        }
    }
    let mut settings = test_settings(&redis, dir.path());
    settings.winback.actions = Segment::ALL
        .into_iter()
        .map(|s| (s, "email_reminder".to_string()))
        .collect();
    let both = vec!["email_reminder".to_string(), "personal_call".to_string()];
    settings.winback.candidates = [
        (Segment::GeneralDevelopment, both.clone()),
        (Segment::ImportantDevelopment, both),
    ]
    .into();
    settings.winback.budgets = BTreeMap::from([
        ("email_reminder".into(), ActionBudget::new(1e12, 0.2)),
        ("personal_call".into(), ActionBudget::new(1e12, 10.0)),
    ]);
    settings.winback.budget = PooledBudget {
        spend_per_day: Some(100.0),
    };
    settings.winback.policy = WinbackPolicy::Learned;
    settings.winback.learn.min_outcomes = 200;
    settings.tasks.welcome.enabled = false;
    let state_dir = settings.state.dir.clone();
    let app = App::spawn(settings).await;
    crate::learning::wait_for_lift(&app, &state_dir, true).await;
    crate::learning::buy_then_fall_silent(&mut c).await;
    app.stop().await;

    let cost = |action: &str| if action == "personal_call" { 10.0 } else { 0.2 };
    let mut spend_by_day: BTreeMap<String, f64> = BTreeMap::new();
    let mut spend_by_action: BTreeMap<String, f64> = BTreeMap::new();
    let mut tasks = read_stream(&mut c, WINBACK).await;
    tasks.extend(read_stream(&mut c, "churn:winback:control").await);
    for (_, task) in tasks
        .iter()
        .filter(|(_, t)| t.get("record").map(String::as_str) != Some("cancel"))
    {
        let spend = cost(&task["action"]);
        *spend_by_day
            .entry(task["as_of"][..10].to_string())
            .or_default() += spend;
        *spend_by_action.entry(task["action"].clone()).or_default() += spend;
    }
    assert!(
        spend_by_day.values().all(|&s| s <= 100.0 + 1e-6),
        "at most 100 a day: {spend_by_day:?}"
    );
    let calls = spend_by_action.get("personal_call").copied().unwrap_or(0.0);
    let total: f64 = spend_by_action.values().sum();
    assert!(
        calls >= 0.8 * total && total >= 100.0,
        "the spend goes mostly to calls: {spend_by_action:?}, by day {spend_by_day:?}"
    );
}

/// A restart under a pooled budget continues where it stopped: the snapshot keeps the
/// pool's pacing in a record of its own (format 8), and the restored daemon reports the
/// same day's spend and the same bar, which only the pool's picture of the days before
/// sets; no day spends more than the pool across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_a_pooled_budget_keeps_its_spend_and_its_bar() {
    use churnd::decide::PooledBudget;
    use churnd::state::SnapshotDir;
    const SPENT: &str = "churnd_budget_pool_spent{kind=\"winback\"}";
    const BAR: &str = "churnd_budget_pool_value_per_cost_bar{kind=\"winback\"}";
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    coupons_only(&mut settings, 1e12);
    settings.winback.budget = PooledBudget {
        spend_per_day: Some(3.0),
    };
    settings.tasks.welcome.enabled = false;
    let state_dir = settings.state.dir.clone();
    let streams = settings.source.streams.clone();
    let app = App::spawn(settings.clone()).await;
    let mut c = redis.conn().await;
    // Ten buyers on day 0 cross the threshold together about 50 days later: three a day
    // get a coupon, the others are candidates again the next day.
    for i in 0..10 {
        let amount = 10.0 * f64::from(i + 1);
        xadd(&mut c, EVENTS, &purchase(&format!("c{i}"), amount, T0_MS)).await;
    }
    for day in 1..=51 {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    // A day closed with more candidates than the pool affords: the bar is set by its
    // picture.
    wait_for("the pool's bar", Duration::from_secs(10), || {
        let app = &app;
        async move { app.metric(BAR).await.is_some_and(|b| b > 0.0) }
    })
    .await;
    let (spent, bar) = (app.metric(SPENT).await, app.metric(BAR).await);
    app.stop().await;

    let (loaded, _) = SnapshotDir::open(&state_dir, 3)
        .unwrap()
        .load_newest(&streams)
        .unwrap();
    let header = loaded.expect("the final snapshot").snapshot.state.header;
    let pool = header.pool.expect("the pool's own record");
    assert!(pool.seen > 0.0 || pool.days > 0, "{pool:?}");
    assert!(pool.picture.total() > 0.0);
    let actions: Vec<&str> = header.budgets.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["coupon"], "no pseudo-action");

    let app = App::spawn(settings).await;
    wait_for("recovery", Duration::from_secs(20), || {
        let app = &app;
        async move { app.get("/readyz").await.status() == 200 }
    })
    .await;
    // The pool's series are published after a batch: one on the same day, a second on.
    xadd(&mut c, EVENTS, &visit("clock", T0_MS + 51 * DAY_MS + 1_000)).await;
    wait_drained(&mut c, EVENTS, "churnd").await;
    wait_for("the same spend and bar", Duration::from_secs(10), || {
        let app = &app;
        async move { (app.metric(SPENT).await, app.metric(BAR).await) == (spent, bar) }
    })
    .await;
    for day in 52..=60 {
        xadd(&mut c, EVENTS, &visit("clock", T0_MS + day * DAY_MS)).await;
    }
    wait_drained(&mut c, EVENTS, "churnd").await;
    app.stop().await;
    let mut by_day: BTreeMap<String, usize> = BTreeMap::new();
    let tasks = read_stream(&mut c, WINBACK).await;
    for (_, task) in tasks
        .iter()
        .filter(|(_, t)| t.get("record").map(String::as_str) != Some("cancel"))
    {
        *by_day.entry(task["as_of"][..10].to_string()).or_default() += 1;
    }
    assert!(by_day.values().all(|&n| n <= 3), "{by_day:?}");
    assert!(by_day.len() >= 3, "the others on later days: {by_day:?}");
}
