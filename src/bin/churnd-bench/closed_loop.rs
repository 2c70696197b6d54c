//! `churnd-bench closed-loop`: what win-back tasks add, in a closed loop, per targeting policy
//! under the same budget: incremental conversions per 1,000 tasks.
//!
//! For each policy (`winback.policy`: `learned`, `playbook`, `random`; `default` sets no key)
//! and each seed, a run
//!
//! 1. starts its own `redis-server` on a free port and the built `churnd` binary (`churnd run`,
//!    beside this program unless `--churnd`) against it, with `clock.mode = event`, the
//!    shipped model and default settings (budgets included: about 40 win-back tasks a simulated
//!    day, sized for a base of about 20,000; and the candidate actions per segment that
//!    `learned` chooses among, `[winback.candidates]`, while `playbook` and `random` give each
//!    segment its one `[winback.actions]` action), except: the policy, a temporary state directory,
//!    and every task kind but win-back turned off (their actions move no simulated customer;
//!    they would only take contacts from the contact cap);
//! 2. runs `churnd simulate --lockstep --respond-to churn:winback` in-process
//!    ([`churnd::simulate::lockstep`]): `--customers` arriving over `--days` simulated days,
//!    one day at a time, each day's events consumed by churnd before the tasks raised so far
//!    are answered. The customers' hidden personas (`src/simulate/response.rs`) answer some
//!    actions in some segments and most not at all; many come back on their own. The seed
//!    fixes the customers and their answers: the policies face the same people;
//! 3. reads the outcome stream (`churn:outcomes`, one record per task whose 30-day window
//!    closed, treatment and control alike) with the lift report's own code ([`churnd::lift`]).
//!
//! The measure is the lift report's win-back row: treated minus control conversion rate (the
//! control group is churnd's holdout, 10 % by stable hash, chosen under the same budget as the
//! treated), × 1,000, with Newcombe's 95 % interval: conversions the tasks added per 1,000
//! treated tasks. Per policy the program prints every seed, the seeds pooled (the same
//! computation on all their outcomes together) and the spread of the per-seed figures (mean,
//! standard deviation, min–max). Tasks raised in the last 30 days have no outcome yet and are
//! not counted. Tasks written are task records, told from the cancel records the same streams
//! carry; each run also prints the tasks without an outcome, and how many of them were raised
//! in the last 30 days (all of them, unless an outcome was lost).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use churnd::config::Settings;
use churnd::connection::Connector;
use churnd::lift::{self, Aggregates, Window};
use churnd::metrics::{Metrics, RedisRole};
use churnd::simulate::{self, Lockstep, SimulateOptions, SimulateReport};
use churnd::source::lag::group_info;

use crate::redis_server::{tempfile_dir::TempDir, RedisServer};

const EVENTS: &str = "churn:events";
const TASKS: &str = "churn:winback";
const CONTROL: &str = "churn:winback:control";
const OUTCOMES: &str = "churn:outcomes";
const GROUP: &str = "churnd";
/// Task kinds turned off: only win-back's tasks are measured.
const OTHER_KINDS: [&str; 6] = [
    "CONVERT",
    "WELCOME",
    "BIRTHDAY",
    "ANNIVERSARY",
    "REVISIT",
    "SERVICE_RECOVERY",
];

/// `churnd-bench closed-loop` options.
#[derive(clap::Args)]
pub struct Args {
    /// Policies compared (`winback.policy`); `default` runs churnd without the key.
    #[arg(long, value_delimiter = ',', default_value = "learned,playbook,random")]
    policies: Vec<Policy>,
    /// Seeds 1 to this, each a different customer base (the same for every policy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Customers arriving over the simulated days.
    #[arg(long, default_value_t = 20_000)]
    customers: u64,
    /// Simulated days.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The churnd binary; default: `churnd` beside this program (build it with the same
    /// profile: `cargo build --release --bins`).
    #[arg(long)]
    churnd: Option<PathBuf>,
    /// The model file; default: the shipped models/cdnow.json of this source tree.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The redis-server binary to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Win-back's actions draw on one spend a day (`[winback.budget] spend_per_day`)
    /// instead of a budget each; every action's own `per_day` is then lifted to this (no
    /// cap within the pool). The shipped per-action budgets add up to 202.
    #[arg(long)]
    pooled_spend_per_day: Option<f64>,
    /// A settings file layered over the shipped ones for every run (`churnd --config`), for
    /// example benches/playbook-misfit.toml: a playbook that does not fit the simulated
    /// customers.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    Learned,
    Playbook,
    Random,
    /// No `winback.policy` key: what churnd does by default.
    Default,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Self::Learned => "learned",
            Self::Playbook => "playbook",
            Self::Random => "random",
            Self::Default => "default",
        }
    }
}

/// What one run measured.
struct Run {
    seed: u64,
    simulated: SimulateReport,
    /// Task records in the treated and the control stream (not their cancels).
    tasks_written: u64,
    control_written: u64,
    /// What the treated and the control tasks written cost.
    treated_spend: f64,
    control_spend: f64,
    /// Cancel records in both streams: a task stream also carries the cancels of its tasks
    /// (docs/tasks.md), which `XLEN` would count as tasks.
    cancels_written: u64,
    /// Tasks written without an outcome record, and how many of them were raised within 30
    /// days of the run's end (their window still open).
    without_outcome: u64,
    window_open: u64,
    aggregates: Aggregates,
    seconds: f64,
}

/// The churnd process of a run, killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// The last lines churnd wrote to standard error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An error if churnd has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "churnd exited ({status}); its last words:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn model_path(args: &Args) -> PathBuf {
    args.model
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json"))
}

/// Starts churnd against `redis` under `policy`, and waits until its group exists.
async fn start_daemon(
    args: &Args,
    policy: Policy,
    redis: &RedisServer,
    dir: &TempDir,
) -> Result<Daemon> {
    let log = dir.path().join("churnd.log");
    let mut command = Command::new(crate::replicas::churnd_binary(args.churnd.as_ref())?);
    if let Some(config) = &args.config {
        command.arg("--config").arg(std::path::absolute(config)?);
    }
    command
        .arg("run")
        .current_dir(dir.path())
        .env("CHURND__REDIS__URL", redis.url())
        .env("CHURND__CLOCK__MODE", "event")
        .env("CHURND__STATE__DIR", dir.path().join("state"))
        .env("CHURND__HTTP__ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("CHURND__MODEL__PATH", model_path(args))
        .env("CHURND__LOG__LEVEL", "warn")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    for kind in OTHER_KINDS {
        command.env(format!("CHURND__TASKS__{kind}__ENABLED"), "false");
    }
    if policy != Policy::Default {
        command.env("CHURND__WINBACK__POLICY", policy.name());
    }
    if let Some(spend) = args.pooled_spend_per_day {
        command.env("CHURND__WINBACK__BUDGET__SPEND_PER_DAY", spend.to_string());
        for action in Settings::default().winback.budgets.keys() {
            command.env(
                format!(
                    "CHURND__WINBACK__BUDGETS__{}__PER_DAY",
                    action.to_uppercase()
                ),
                spend.to_string(),
            );
        }
    }
    let mut daemon = Daemon {
        child: command.spawn().context("starting churnd")?,
        log,
    };
    let mut conn = redis.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        daemon.check_running()?;
        let reply: Result<redis::Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(EVENTS)
            .query_async(&mut conn)
            .await;
        if reply.is_ok_and(|r| group_info(&r, GROUP).is_some()) {
            return Ok(daemon);
        }
        if Instant::now() >= deadline {
            bail!(
                "churnd did not create its consumer group within 60 s; its log:\n{}",
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One run; its outcomes are also counted into `pooled`.
async fn run_once(args: &Args, policy: Policy, seed: u64, pooled: &mut Aggregates) -> Result<Run> {
    let started = Instant::now();
    let redis = RedisServer::start(&args.redis_server)?;
    let dir = TempDir::new("closed-loop")?;
    let mut daemon = start_daemon(args, policy, &redis, &dir).await?;
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    let connector = Connector::new(
        churnd::connection::client(&settings.redis)?,
        &settings.redis,
        Duration::from_secs(10),
        RedisRole::Simulate,
        &Metrics::new().redis,
    );
    let options = SimulateOptions {
        stream: EVENTS.into(),
        partitions: churnd::partition::PartitionCount::ONE,
        customers: args.customers,
        history_days: args.days,
        rate: 1,
        speedup: 0.0,
        seed,
        events: 0,
        invalid_per_mille: 0,
        max_len: 0,
        respond_to: vec![TASKS.into(), CONTROL.into()],
        lockstep: Some(Lockstep {
            group: GROUP.into(),
            day_timeout: Duration::from_secs(120),
        }),
    };
    let simulated = simulate::run(options, connector, CancellationToken::new())
        .await
        .with_context(|| {
            format!(
                "the lockstep simulation; churnd's log:\n{}",
                daemon.log_tail()
            )
        })?;
    daemon.check_running()?;
    let mut conn = redis.conn().await?;
    let mut aggregates = Aggregates::new(Window::default());
    let mut skipped = 0u64;
    lift::stream::read_all(&mut conn, OUTCOMES, &mut aggregates, |_, _| skipped += 1).await?;
    lift::stream::read_all(&mut conn, OUTCOMES, pooled, |_, _| skipped += 1).await?;
    if skipped > 0 {
        bail!("{skipped} outcome records could not be read: churnd and this program disagree on the schema");
    }
    let mut with_outcome = std::collections::HashSet::new();
    for_each_record(&mut conn, OUTCOMES, |fields| {
        with_outcome.insert(field(fields, "task_id").to_string());
    })
    .await?;
    // churnd's event time at the end: the last event's; windows closing after it are open.
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(EVENTS)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let last_ms: u64 = last
        .first()
        .and_then(|(_, fields)| field(fields, "ts").parse().ok())
        .context("the last event's time")?;
    let open_since = (last_ms / 1000).saturating_sub(30 * 86_400);
    let mut streams = [StreamCounts::default(), StreamCounts::default()];
    for (counts, stream) in streams.iter_mut().zip([TASKS, CONTROL]) {
        for_each_record(&mut conn, stream, |fields| {
            counts.add(fields, &with_outcome, open_since)
        })
        .await?;
    }
    let [treated, control] = streams;
    drop(daemon);
    Ok(Run {
        seed,
        simulated,
        tasks_written: treated.tasks,
        control_written: control.tasks,
        treated_spend: treated.spend,
        control_spend: control.spend,
        cancels_written: treated.cancels + control.cancels,
        without_outcome: treated.without_outcome + control.without_outcome,
        window_open: treated.window_open + control.window_open,
        aggregates,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a task stream holds: task records and cancel records, told apart by `record`
/// (docs/tasks.md), and the tasks without an outcome record.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct StreamCounts {
    tasks: u64,
    cancels: u64,
    without_outcome: u64,
    /// Of those, raised at or after `open_since`: their window had not closed.
    window_open: u64,
    /// What the tasks cost, by the shipped `[winback.budgets]` costs.
    spend: f64,
}

impl StreamCounts {
    /// Counts one entry of a task stream, given the task IDs that have an outcome record.
    fn add(
        &mut self,
        fields: &[(String, String)],
        with_outcome: &std::collections::HashSet<String>,
        open_since: u64,
    ) {
        if field(fields, "record") == "cancel" {
            self.cancels += 1;
            return;
        }
        self.tasks += 1;
        self.spend += cost(field(fields, "action"));
        if with_outcome.contains(field(fields, "task_id")) {
            return;
        }
        self.without_outcome += 1;
        let raised = chrono::DateTime::parse_from_rfc3339(field(fields, "as_of"))
            .map_or(0, |t| u64::try_from(t.timestamp()).unwrap_or(0));
        if raised >= open_since {
            self.window_open += 1;
        }
    }
}

/// What a task of `action` costs: the shipped `[winback.budgets]` cost (0 for an action
/// without one).
fn cost(action: &str) -> f64 {
    static COSTS: std::sync::LazyLock<std::collections::BTreeMap<String, f64>> =
        std::sync::LazyLock::new(|| {
            Settings::default()
                .winback
                .budgets
                .into_iter()
                .map(|(action, b)| (action, b.cost.unwrap_or(0.0)))
                .collect()
        });
    COSTS.get(action).copied().unwrap_or(0.0)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Calls `f` with the fields of every entry of `stream`, a page at a time.
async fn for_each_record(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    mut f: impl FnMut(&[(String, String)]),
) -> Result<()> {
    const PAGE: usize = 5_000;
    let mut from = "-".to_string();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await
            .with_context(|| format!("reading {stream}"))?;
        for (_, fields) in &page {
            f(fields);
        }
        match page.last() {
            // "(" makes the start exclusive (Redis 6.2 and later).
            Some((id, _)) if page.len() == PAGE => from = format!("({id}"),
            _ => return Ok(()),
        }
    }
}

/// The win-back row of the lift report of `aggregates`.
fn winback_row(aggregates: &Aggregates) -> Option<lift::Row> {
    lift::report::report(aggregates, OUTCOMES)
        .kinds
        .into_iter()
        .find(|row| row.kind == "winback")
}

/// Incremental conversions per 1,000 treated tasks, with the 95 % interval, as text.
fn per_thousand(row: &lift::Row) -> String {
    match row.conversion_lift {
        Some(lift) => {
            let l = lift.scaled(1000.0);
            format!("{:+.1} [{:+.1}, {:+.1}]", l.estimate, l.low, l.high)
        }
        None => "n/a".into(),
    }
}

/// Incremental conversions per 1,000 tasks × `factor` (tasks per unit of spend: per 1,000
/// spent), with the 95 % interval, as text.
fn scaled(row: &lift::Row, factor: f64) -> String {
    match row.conversion_lift {
        Some(lift) => {
            let l = lift.scaled(1000.0 * factor);
            format!("{:+.1} [{:+.1}, {:+.1}]", l.estimate, l.low, l.high)
        }
        None => "n/a".into(),
    }
}

fn counts(row: &lift::Row) -> String {
    format!(
        "{}/{} treated, {}/{} control",
        row.treatment.conversions, row.treatment.tasks, row.control.conversions, row.control.tasks
    )
}

/// Mean, standard deviation, min and max of `xs` (not empty).
fn spread(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, sd, min, max)
}

/// Win-back tasks churnd's default budgets afford per day.
fn daily_capacity() -> f64 {
    Settings::default()
        .winback
        .budgets
        .values()
        .filter_map(|b| Some((b.per_day? / b.cost?).floor()))
        .sum()
}

pub async fn closed_loop(args: Args) -> Result<()> {
    println!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::machine::load_average()
    );
    let budget = match args.pooled_spend_per_day {
        Some(spend) => format!("one pooled spend of {spend} a day, no cap per action"),
        None => format!(
            "budgets per action afford {} win-back tasks a day",
            daily_capacity()
        ),
    };
    println!(
        "closed loop: {} customers over {} simulated days, seeds 1..={}, policies {:?}; {budget}",
        args.customers,
        args.days,
        args.seeds,
        args.policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
    );
    let mut summary = String::new();
    let mut arms = String::new();
    for &policy in &args.policies {
        let mut pooled = Aggregates::new(Window::default());
        let mut figures = Vec::new();
        // All seeds: treated tasks written and their cost, all tasks' cost, tasks answered.
        let (mut treated, mut treated_spend, mut spend, mut answered) = (0u64, 0.0, 0.0, 0u64);
        for seed in 1..=args.seeds {
            let run = run_once(&args, policy, seed, &mut pooled)
                .await
                .with_context(|| format!("policy {}, seed {seed}", policy.name()))?;
            let row = winback_row(&run.aggregates).context("no win-back outcomes at all")?;
            println!(
                "{:<8} seed {}: {} tasks + {} control written ({:.1} a day; and {} cancels), {} answered by a purchase; {} without an outcome ({} raised in the last 30 days); outcomes: {}; incremental conversions per 1,000 tasks {} ({:.0} s)",
                policy.name(),
                run.seed,
                run.tasks_written,
                run.control_written,
                (run.tasks_written + run.control_written) as f64 / f64::from(args.days),
                run.cancels_written,
                run.simulated.tasks_answered,
                run.without_outcome,
                run.window_open,
                counts(&row),
                per_thousand(&row),
                run.seconds,
            );
            if let Some(lift) = row.conversion_lift {
                figures.push(lift.estimate * 1000.0);
            }
            println!(
                "{:<8} seed {}: spend {:.1} a day (with control), {:.2} per treated task",
                policy.name(),
                run.seed,
                (run.treated_spend + run.control_spend) / f64::from(args.days),
                run.treated_spend / run.tasks_written.max(1) as f64,
            );
            treated += run.tasks_written;
            treated_spend += run.treated_spend;
            spend += run.treated_spend + run.control_spend;
            answered += run.simulated.tasks_answered;
        }
        // Per 1,000 spent: the lift per task over the mean cost of a treated task.
        let per_cost = if treated_spend > 0.0 {
            treated as f64 / treated_spend
        } else {
            0.0
        };
        let row = winback_row(&pooled).context("no win-back outcomes at all")?;
        arm_rows(&mut arms, policy, &pooled)?;
        let (mean, sd, min, max) = spread(&figures);
        writeln!(
            summary,
            "| {} | {:.1} | {} | {:.1} % / {:.1} % | {} | {:+.1} ± {:.1} ({:+.1} to {:+.1}) | {} | {:.1} |",
            policy.name(),
            spend / f64::from(args.days) / args.seeds as f64,
            row.treatment.tasks,
            100.0 * row.treatment.conversion_rate.unwrap_or(0.0),
            100.0 * row.control.conversion_rate.unwrap_or(0.0),
            per_thousand(&row),
            mean,
            sd,
            min,
            max,
            scaled(&row, per_cost),
            1000.0 * answered as f64 / treated_spend.max(f64::MIN_POSITIVE),
        )?;
    }
    println!();
    println!("| policy | spend a day (with control) | treated tasks with an outcome (all seeds) | conversion treated / control | incremental conversions per 1,000 tasks, seeds pooled [95 %] | per seed: mean ± sd (min to max) | per 1,000 spent [95 %] | answered by a purchase per 1,000 spent (simulator) |");
    println!("|---|---|---|---|---|---|---|---|");
    print!("{summary}");
    println!();
    println!("Per action × segment, seeds pooled: treated tasks with an outcome, incremental conversions per 1,000 [95 %]");
    print!("{arms}");
    Ok(())
}

/// Where `policy` spent its tasks and what they added there: one line per win-back action ×
/// segment of the pooled outcomes, the learned policy's arms.
fn arm_rows(out: &mut String, policy: Policy, pooled: &Aggregates) -> std::fmt::Result {
    for row in lift::report::report(pooled, OUTCOMES)
        .rows
        .iter()
        .filter(|row| row.kind == "winback")
    {
        writeln!(
            out,
            "{:<8} {:<14} {:<22} {:>6}  {}",
            policy.name(),
            row.action,
            row.segment,
            row.treatment.tasks,
            per_thousand(row)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_seeds() {
        let (mean, sd, min, max) = spread(&[1.0, 2.0, 3.0]);
        assert_eq!((mean, min, max), (2.0, 1.0, 3.0));
        assert!((sd - 1.0).abs() < 1e-12);
        assert_eq!(spread(&[5.0]), (5.0, 0.0, 5.0, 5.0));
    }

    fn entry(record: &str, task_id: &str, as_of: &str) -> Vec<(String, String)> {
        [("record", record), ("task_id", task_id), ("as_of", as_of)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A task stream carries the cancels of its tasks: they are not tasks, and a task's
    /// outcome is looked up by its ID (counting entries, `XLEN`, made ~15 % of the tasks look
    /// like they had no outcome).
    #[test]
    fn cancels_are_not_counted_as_tasks() {
        let with_outcome: std::collections::HashSet<String> = ["t1".to_string()].into();
        let open_since = 1_764_547_200; // 2025-12-01T00:00:00Z
        let mut counts = StreamCounts::default();
        for e in [
            entry("task", "t1", "2025-10-01T00:00:00Z"),
            entry("cancel", "t1", ""),
            entry("task", "t2", "2025-10-01T00:00:00Z"),
            entry("task", "t3", "2025-12-02T00:00:00Z"),
        ] {
            counts.add(&e, &with_outcome, open_since);
        }
        assert_eq!(
            counts,
            StreamCounts {
                tasks: 3,
                cancels: 1,
                without_outcome: 2,
                window_open: 1,
                spend: 0.0,
            }
        );
    }
}
