//! The engine's part in fresh tasks and outcomes: time while catching up, expiry, cancels and
//! outcomes, open tasks across a restore.

use std::sync::Arc;

use super::tests::{batch, purchase, visit, winback_only, DAY, T0};
use super::*;
use crate::decide::{Task, TaskKind};
use crate::metrics::Metrics;

fn recency_model() -> Arc<Model> {
    Arc::new(Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap())
}

fn winback_engine(clock: ClockMode) -> Engine {
    Engine::new(winback_only(clock), recency_model(), Metrics::new().engine)
}

/// [`winback_engine`] under the wall clock, continuing from `state`.
fn restored_winback_engine(state: EngineState) -> Engine {
    let settings = winback_only(ClockMode::Wall);
    Engine::restore(settings, recency_model(), Metrics::new().engine, state)
}

fn at_end(entries: Vec<crate::source::batch::Entry>) -> Batch {
    let mut b = batch(entries);
    b.at_end = true;
    b
}

fn ms(day: u32) -> u64 {
    u64::from(T0 + day * DAY) * 1000
}

fn customers(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.customer_id.as_str()).collect()
}

/// Win-back tasks not written because they had expired.
fn winback_expired(e: &Engine) -> u64 {
    e.metrics
        .follow_up
        .tasks_expired
        .get(TaskKind::Winback)
        .get()
}

#[test]
fn a_backlog_is_judged_at_the_event_time_reached_and_stale_tasks_expire() {
    let mut e = winback_engine(ClockMode::Wall);
    let wall = ms(400);
    // A year of history read as a backlog: b's purchase two days ago is still unread when
    // the first batch is applied.
    let fx = e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 0)]), wall);
    assert!(fx.tasks.is_empty(), "judged at day 0, not at wall time");
    assert_eq!(e.now(), T0);
    assert_eq!(e.metrics.follow_up.catching_up.get(), 1);
    // Reaching day 398 replays the checks due on the way: both were tasked back then, and
    // those tasks expired long ago.
    let fx = e.apply_batch(at_end(vec![purchase(3, "b", 398)]), wall);
    assert!(fx.tasks.is_empty(), "{:?}", customers(&fx.tasks));
    assert_eq!(winback_expired(&e), 2);
    assert_eq!(
        e.metrics.follow_up.catching_up.get(),
        1,
        "that read brought the past"
    );
    // The read that finds the end with nothing from the past: wall time rules, and the
    // customer still silent gets a fresh task; the one who bought, none.
    let fx = e.apply_batch(at_end(vec![]), wall);
    assert_eq!(customers(&fx.tasks), ["a"]);
    let task = &fx.tasks[0];
    assert_eq!(task.as_of, T0 + 400 * DAY);
    assert_eq!(task.expires_at, T0 + 407 * DAY);
    assert_eq!(
        task.winback().unwrap().attempt,
        1,
        "the expired task was no attempt"
    );
    assert_eq!(e.metrics.follow_up.catching_up.get(), 0);
    assert_eq!(e.now(), T0 + 400 * DAY);
    assert!(e.tick(wall + 1000).tasks.is_empty());
}

/// While catching up, a silent customer's checks wait until eight weeks before the wall
/// clock: what they would decide earlier is never written.
#[test]
fn a_backlog_checks_silence_only_in_its_last_eight_weeks() {
    let mut e = winback_engine(ClockMode::Wall);
    let wall = ms(400);
    let from = 400 - super::catch_up::CHECKS_WITHIN_SECS / DAY;
    e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall);
    e.apply_batch(batch(vec![visit(2, "clock", from - 1)]), wall);
    assert_eq!(
        e.metrics.rescores.get(),
        0,
        "no check in the first ten months"
    );
    e.apply_batch(batch(vec![visit(3, "clock", from + 1)]), wall);
    assert_eq!(
        e.metrics.rescores.get(),
        1,
        "checked once the last weeks begin"
    );
    assert_eq!(
        winback_expired(&e),
        1,
        "tasked then; long expired by the wall clock"
    );
    // Caught up: still silent, `a` gets a fresh task at wall time.
    let fx = e.apply_batch(at_end(vec![]), wall);
    assert_eq!(customers(&fx.tasks), ["a"]);
    assert_eq!(fx.tasks[0].as_of, T0 + 400 * DAY);
}

/// A snapshot taken while catching up does not keep the position reached. Restored, the
/// engine judges no silence until the first read says whether the backlog goes on: the
/// daemon's first tick comes before that read, and judging at wall time then would task
/// customers whose later purchases are still unread.
#[test]
fn a_restored_engine_judges_silence_only_after_the_first_read() {
    let mut e = winback_engine(ClockMode::Wall);
    let wall = ms(400);
    e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall);
    e.apply_batch(batch(vec![visit(2, "clock", 100)]), wall);
    assert_eq!(e.metrics.follow_up.catching_up.get(), 1);
    let snapshot = e.snapshot();
    let restore = || restored_winback_engine(snapshot.clone());

    // The backlog goes on: `a` bought again on day 380.
    let mut r = restore();
    let fx = r.tick(wall + 1_000);
    assert_eq!(
        customers(&fx.tasks),
        Vec::<&str>::new(),
        "before the first read"
    );
    let fx = r.apply_batch(batch(vec![purchase(3, "a", 380)]), wall + 2_000);
    assert_eq!(customers(&fx.tasks), Vec::<&str>::new());
    assert_eq!(r.now(), T0 + 380 * DAY, "catching up again");

    // Nothing was left to read: `a` is judged at wall time.
    let mut r = restore();
    assert!(r.tick(wall + 1_000).tasks.is_empty());
    let fx = r.apply_batch(at_end(vec![]), wall + 2_000);
    assert_eq!(customers(&fx.tasks), ["a"]);
    assert!(r.tick(wall + 3_000).tasks.is_empty(), "tasked once");
}

/// The same after a stop: a snapshot taken live, and churnd down while purchases piled up.
#[test]
fn a_restart_after_downtime_reads_what_piled_up_before_judging_silence() {
    let mut e = winback_engine(ClockMode::Wall);
    e.apply_batch(at_end(vec![purchase(1, "a", 0)]), ms(0));
    assert_eq!(e.metrics.follow_up.catching_up.get(), 0, "live");
    let mut r = restored_winback_engine(e.snapshot());
    // Back 400 days later; `a` bought on day 390 meanwhile.
    assert_eq!(customers(&r.tick(ms(400)).tasks), Vec::<&str>::new());
    let fx = r.apply_batch(at_end(vec![purchase(2, "a", 390)]), ms(400));
    assert_eq!(customers(&fx.tasks), Vec::<&str>::new(), "ten days silent");
}

#[test]
fn live_events_neither_start_nor_end_a_catch_up() {
    let mut e = winback_engine(ClockMode::Wall);
    let wall = ms(400);
    // Live traffic first: then a backfill starts.
    e.apply_batch(at_end(vec![purchase(1, "live", 400)]), wall);
    assert_eq!(e.metrics.follow_up.catching_up.get(), 0);
    e.apply_batch(
        batch(vec![purchase(2, "old", 0), purchase(3, "live", 400)]),
        wall,
    );
    assert_eq!(
        e.now(),
        T0,
        "a live event read between does not carry it on"
    );
    assert_eq!(
        e.metrics.follow_up.catch_up_behind_seconds.get(),
        400 * 86_400
    );
}

/// Under the event clock: `a` and `b` bought on day 0 and are tasked on the same day; `a`
/// buys 5 days later, `b` never.
#[test]
fn a_purchase_cancels_and_converts_an_open_task_and_silence_closes_the_window() {
    let mut e = winback_engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 0)]), 0);
    let mut raised = Vec::new();
    let mut seq = 3;
    for day in 1..300 {
        raised.extend(
            e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0)
                .tasks,
        );
        seq += 1;
        if raised.len() == 2 {
            break;
        }
    }
    assert_eq!(customers(&raised), ["a", "b"]);
    let as_of = raised[0].as_of;
    let day = (as_of - T0) / DAY + 5;
    let fx = e.apply_batch(batch(vec![purchase(seq, "a", day)]), 0);
    seq += 1;
    assert_eq!(fx.cancels.len(), 1);
    assert_eq!(fx.cancels[0].task_id, raised[0].task_id);
    assert_eq!(fx.outcomes.len(), 1);
    let o = &fx.outcomes[0];
    assert_eq!(
        (o.task_id.as_str(), o.result()),
        (&*raised[0].task_id, "converted")
    );
    assert_eq!(o.converted.unwrap().revenue, 20.0);
    assert_eq!(o.raised_at, as_of);

    // A restart in between keeps b's task open.
    let mut e = Engine::restore(
        winback_only(ClockMode::Event),
        recency_model(),
        Metrics::new().engine,
        e.snapshot(),
    );
    assert_eq!(e.open_tasks.len(), 1);
    let closes = as_of + 30 * DAY;
    let mut outcomes = Vec::new();
    for day in day..day + 40 {
        outcomes.extend(
            e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0)
                .outcomes,
        );
        seq += 1;
    }
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].task_id, raised[1].task_id);
    assert_eq!(outcomes[0].result(), "not_converted");
    assert_eq!(outcomes[0].closed_at, closes);
    assert!(e.open_tasks.is_empty());
}

/// A task held back or expired while catching up spends nothing: `a`'s budget affords one
/// task a day, and `a` was a candidate twice while the backlog was read (on day ~350, long
/// expired, and on the wall clock's day, held back); once caught up, that same day's budget
/// still gives `a` the task.
#[test]
fn tasks_not_written_while_catching_up_leave_the_budget_unspent() {
    let mut settings = winback_only(ClockMode::Wall);
    settings.winback.budgets = settings
        .winback
        .actions
        .values()
        .map(|action| (action.clone(), crate::decide::ActionBudget::new(1.0, 1.0)))
        .collect();
    let mut e = Engine::new(settings, recency_model(), Metrics::new().engine);
    // Past their first day: about one candidate a day until the day before.
    let history = crate::decide::PacerState {
        day: T0 / DAY + 399,
        expected: 1.0,
        days: 30,
        first_at: T0,
        ..crate::decide::PacerState::default()
    };
    let states = e.budgets.states();
    e.budgets.restore(
        states
            .into_iter()
            .map(|(a, _)| (a, history.clone()))
            .collect(),
        Vec::new(),
    );
    let wall = ms(400) + 12 * 3_600_000;
    assert!(e
        .apply_batch(batch(vec![purchase(1, "a", 0)]), wall)
        .tasks
        .is_empty());
    // `a` visits early on the wall clock's day, read from the backlog.
    let early = super::tests::entry(
        2,
        &[
            ("customer_id", "a".into()),
            ("type", "visit".into()),
            ("ts", (ms(400) + 3_600_000).to_string()),
        ],
    );
    assert!(e.apply_batch(batch(vec![early]), wall).tasks.is_empty());
    let f = &e.metrics.follow_up;
    assert_eq!(f.tasks_expired.get(TaskKind::Winback).get(), 1);
    assert_eq!(f.tasks_held_back.get(TaskKind::Winback).get(), 1);
    let spent = e.budgets.take_report(e.now());
    assert!(spent.iter().all(|b| b.spent_today == 0.0), "{spent:?}");
    // Caught up: the day's one task goes to `a`.
    let fx = e.apply_batch(at_end(vec![]), wall);
    assert_eq!(customers(&fx.tasks), ["a"]);
    assert_eq!(fx.tasks[0].as_of, T0 + 400 * DAY + 12 * 3_600);
    let report = e.budgets.take_report(e.now());
    assert_eq!(report.iter().map(|b| b.spent_today).sum::<f64>(), 1.0);
    assert_eq!(report.iter().map(|b| b.held_back).sum::<u64>(), 0);
}
