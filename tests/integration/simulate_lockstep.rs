//! `churnd simulate --lockstep`: the simulation and the daemon advance a simulated day at a
//! time under the event clock; tasks are answered, and outcome records come out of it.

use std::collections::HashSet;
use std::time::Duration;

use churnd::config::{ClockMode, Settings};
use churnd::connection::Connector;
use churnd::metrics::{Metrics, RedisRole};
use churnd::simulate::{self, Lockstep, SimulateOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const EVENTS: &str = "churn:events";
const TASKS: &str = "churn:winback";
const CONTROL: &str = "churn:winback:control";
const OUTCOMES: &str = "churn:outcomes";

fn daemon_settings(redis: &RedisServer, dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.redis.url = redis.url();
    s.source.streams = vec![EVENTS.into()];
    s.clock.mode = ClockMode::Event;
    s.model.path = repo().join("models/cdnow.json");
    s.http.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.state.dir = dir.join("state");
    // Win-back only, with a control group large enough to have outcomes at this size.
    s.winback.control_share = 0.25;
    s.tasks.convert.enabled = false;
    s.tasks.welcome.enabled = false;
    s.tasks.birthday.enabled = false;
    s.tasks.anniversary.enabled = false;
    s.tasks.revisit.enabled = false;
    s.tasks.service_recovery.enabled = false;
    s
}

#[tokio::test]
async fn in_lockstep_tasks_are_answered_and_their_outcomes_recorded() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app = App::spawn(daemon_settings(&redis, dir.path())).await;
    let mut conn = redis.conn().await;

    let settings = daemon_settings(&redis, dir.path());
    let connector = Connector::new(
        churnd::connection::client(&settings.redis).unwrap(),
        &settings.redis,
        Duration::from_secs(5),
        RedisRole::Simulate,
        &Metrics::new().redis,
    );
    let options = SimulateOptions {
        stream: EVENTS.into(),
        partitions: churnd::partition::PartitionCount::ONE,
        customers: 500,
        history_days: 150,
        rate: 1,
        speedup: 0.0,
        seed: 11,
        events: 0,
        invalid_per_mille: 0,
        max_len: 0,
        respond_to: vec![TASKS.into(), CONTROL.into()],
        lockstep: Some(Lockstep {
            group: settings.source.group.clone(),
            day_timeout: Duration::from_secs(60),
        }),
    };
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        simulate::run(options, connector, CancellationToken::new()),
    )
    .await
    .expect("the lockstep simulation ends")
    .expect("the lockstep simulation runs");

    // The last day was waited for too: the daemon has read everything written and written
    // its effects (positions committed with snapshots: the written group stands at the end).
    assert_eq!(
        drained(&mut conn, EVENTS, &settings.source.group).await,
        Ok(()),
        "consumed when the run returns"
    );
    assert_eq!(report.written() as usize, xlen(&mut conn, EVENTS).await);

    // Every task the daemon wrote was read back, the last day's included; the cancel
    // records in the same streams are not tasks and are not answered.
    let is_task = |(_, f): &StreamEntry| f.get("record").map(String::as_str) != Some("cancel");
    let tasks: Vec<_> = read_stream(&mut conn, TASKS)
        .await
        .into_iter()
        .filter(is_task)
        .collect();
    let control: Vec<_> = read_stream(&mut conn, CONTROL)
        .await
        .into_iter()
        .filter(is_task)
        .collect();
    assert!(!tasks.is_empty() && !control.is_empty(), "tasks raised");
    assert_eq!(report.tasks_read as usize, tasks.len() + control.len());
    assert_eq!(report.control_tasks_read as usize, control.len());
    // Some actions work on some customers, most do not.
    assert!(
        report.tasks_answered >= 1 && report.tasks_answered < tasks.len() as u64 / 2,
        "{} of {} treated tasks answered",
        report.tasks_answered,
        tasks.len()
    );

    // Outcome records for tasks of both groups, some converted; each of a task written.
    let task_ids: HashSet<&str> = tasks
        .iter()
        .chain(&control)
        .map(|(_, f)| f["task_id"].as_str())
        .collect();
    let outcomes = read_stream(&mut conn, OUTCOMES).await;
    assert!(
        !outcomes.is_empty(),
        "windows closed or customers converted"
    );
    for (_, f) in &outcomes {
        assert!(task_ids.contains(f["task_id"].as_str()), "{f:?}");
    }
    let converted = |group: &str| {
        outcomes
            .iter()
            .filter(|(_, f)| f["group"] == group && f["outcome"] == "converted")
            .count()
    };
    assert!(converted("treatment") >= 1, "some treated customers bought");
    assert!(
        outcomes.iter().any(|(_, f)| f["group"] == "control"),
        "control outcomes"
    );
    // The event clock moved with the simulation: outcomes closed on simulated days, whose
    // windows (30 days) lie within the 150 simulated.
    let day_ms = 86_400_000u64;
    for (_, f) in &outcomes {
        let raised: u64 = f["raised_at"].parse().unwrap();
        let closed: u64 = f["closed_at"].parse().unwrap();
        assert!(closed >= raised && closed <= raised + 31 * day_ms, "{f:?}");
    }
    app.stop().await;
}
