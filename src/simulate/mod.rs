//! `churnd simulate`: synthetic customer activity written to the input stream, for demos and
//! load tests (the compose stack's live dashboard, the Prometheus test).
//!
//! The customers come from [`population`]. A run first writes `history_days` of the past (each
//! event with its own time in `ts`, as fast as `rate` allows), so that churnd starts with
//! customers who have gone quiet, then continues live: simulated time runs `speedup` times as
//! fast as the wall clock and every live event carries the time it is written. With
//! `speedup = 1` the live traffic is the population's natural pace; with more, a day's
//! activity comes in `1/speedup` of a day (silences in the live part are then shorter than
//! the customers' behaviour says); with 0 it comes as fast as `rate` allows.
//!
//! A share of events (`invalid_per_mille`) is deliberately malformed, in rotating ways, so that
//! the dead-letter path and its dashboards have something to show.
//!
//! With `respond_to` (task streams, e.g. `churn:winback`), the simulated customers answer
//! churnd's tasks: a task read back from those streams reaches its customer at the current
//! simulated time, and if its action works on the customer's hidden persona
//! ([`response`]) they buy a few days later. Control-group tasks are read, not answered.
//!
//! With `lockstep` (and `respond_to`), the simulation advances one simulated day at a time in
//! step with churnd under its event-time clock ([`lockstep`]): a closed loop whose answers
//! land in the following days' events, for measuring what a policy's tasks add.
//!
//! Started again on a stream that already has entries (a restarted compose stack), it does not
//! write the history a second time: it makes the same customers live through it unwritten and
//! continues live.

pub mod lockstep;
pub(crate) mod population;
pub mod respond;
mod response;

use crate::partition::PartitionCount;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::connection::{Connector, RedisConn};
use crate::time::{from_millis, rfc3339, wall_millis};
use population::{
    Activity, Params, ParamsError, Population, SimEvent, AGE_BANDS, CHANNELS, GENDERS, REGIONS,
};
use respond::TaskReader;

pub use lockstep::{Lockstep, NotConsumed};

const DAY_MS: u64 = 86_400_000;
/// Pacing step: each one writes, as one pipeline, the events due by then.
const STEP: Duration = Duration::from_millis(10);
/// Progress is logged this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What to simulate and how fast.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The stream to write (churnd's input); with partitions, the stream their names are
    /// made from: each event goes to its customer's partition stream.
    pub stream: String,
    /// `partitions.count`: 1 writes `stream` itself.
    pub partitions: PartitionCount,
    /// Customers arriving over the history (or over a year when there is none); they keep
    /// arriving at that pace afterwards.
    pub customers: u64,
    pub history_days: u32,
    /// At most this many events per second.
    pub rate: u64,
    /// Simulated time per wall-clock time once the history is written; 0: no pacing but `rate`.
    pub speedup: f64,
    pub seed: u64,
    /// Stop after this many events; 0: run until shut down.
    pub events: u64,
    /// Events in a thousand written malformed.
    pub invalid_per_mille: u32,
    /// Trim the stream to about this many entries (`XADD MAXLEN ~`); 0: never trim.
    pub max_len: u64,
    /// Task streams whose tasks the simulated customers answer; empty: none.
    pub respond_to: Vec<String>,
    /// Advance in lockstep with churnd, a simulated day at a time, over `history_days`
    /// (`rate`, `speedup`, `events`, `invalid_per_mille` and `max_len` do not apply).
    pub lockstep: Option<Lockstep>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("invalid simulate option {name}: {reason}")]
    Option { name: &'static str, reason: String },
    #[error("Redis refused the simulated events: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("reading the tasks back from --respond-to failed: {0}")]
    ReadTasks(respond::ReadError),
    #[error(transparent)]
    NotConsumed(Box<NotConsumed>),
}

/// What a run wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimulateReport {
    /// Events written, by type.
    pub purchases: u64,
    pub refunds: u64,
    pub visits: u64,
    pub complaints: u64,
    pub feedback: u64,
    pub profiles: u64,
    /// Malformed events written (churnd dead-letters them).
    pub invalid: u64,
    /// Events written with a time in the past (the history), then live.
    pub history: u64,
    pub live: u64,
    pub customers_arrived: usize,
    pub customers_active: usize,
    /// Tasks read back from `respond_to` for this simulation's customers, those of the
    /// control group among them, and the purchases the others' actions brought (scheduled:
    /// the ones due after the run ended are not written).
    pub tasks_read: u64,
    pub control_tasks_read: u64,
    pub tasks_answered: u64,
}

impl SimulateReport {
    /// Counts the tasks read back (cancel records and other runs' customers left out) and
    /// has each treated one answered at `at_ms`.
    fn answer(
        &mut self,
        tasks: &[crate::source::batch::Entry],
        prefix: &str,
        population: &mut Population,
        at_ms: u64,
    ) {
        for task in tasks
            .iter()
            .filter_map(|e| respond::received(e.fields(), prefix))
        {
            self.tasks_read += 1;
            if !task.acted_on {
                self.control_tasks_read += 1;
            } else if population
                .respond(task.customer, &task.action, task.task, at_ms)
                .is_some()
            {
                self.tasks_answered += 1;
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.history + self.live
    }

    fn add(&mut self, batch: &Self) {
        self.purchases += batch.purchases;
        self.refunds += batch.refunds;
        self.visits += batch.visits;
        self.complaints += batch.complaints;
        self.feedback += batch.feedback;
        self.profiles += batch.profiles;
        self.invalid += batch.invalid;
        self.history += batch.history;
        self.live += batch.live;
    }

    fn count(&mut self, activity: &Activity) {
        match activity {
            Activity::Purchase { .. } => self.purchases += 1,
            Activity::Refund { .. } => self.refunds += 1,
            Activity::Visit => self.visits += 1,
            Activity::Complaint => self.complaints += 1,
            Activity::Feedback { .. } => self.feedback += 1,
            Activity::Profile { .. } => self.profiles += 1,
        }
    }
}

impl SimulateOptions {
    fn validate(&self) -> Result<(), SimulateError> {
        let fail = |name, reason: &str| {
            Err(SimulateError::Option {
                name,
                reason: reason.into(),
            })
        };
        if self.stream.is_empty() {
            return fail("stream", "must not be empty");
        }
        if self.customers == 0 {
            return fail("customers", "must be at least 1");
        }
        if self.rate == 0 {
            return fail("rate", "must be at least 1 event per second");
        }
        if !(self.speedup >= 0.0 && self.speedup.is_finite()) {
            return fail("speedup", "must be 0 (as fast as --rate allows) or more");
        }
        if self.invalid_per_mille > 1000 {
            return fail("invalid_per_mille", "must be between 0 and 1000");
        }
        if self.respond_to.iter().any(String::is_empty) {
            return fail("respond_to", "must name task streams, not empty names");
        }
        if let Some(lockstep) = &self.lockstep {
            if self.history_days == 0 {
                return fail(
                    "history_days",
                    "must be at least 1 with --lockstep (the days simulated)",
                );
            }
            if self.respond_to.is_empty() {
                return fail(
                    "lockstep",
                    "needs --respond-to (the task streams to answer)",
                );
            }
            if lockstep.group.is_empty() {
                return fail("lockstep", "needs churnd's consumer group (source.group)");
            }
        }
        Ok(())
    }

    /// The customer ID of customer `number`: distinct per seed, so that runs with different
    /// seeds into one stream make different customers.
    fn customer_id(&self, number: u32) -> String {
        format!("{}{number:07}", self.id_prefix())
    }

    fn id_prefix(&self) -> String {
        format!("sim{}-", self.seed)
    }
}

/// Ways an event is written malformed, taken in turn, each a reason churnd dead-letters:
/// 0 an amount with a decimal comma, 1 no customer ID, 2 a misspelt type, 3 a negative amount.
const MALFORMED_WAYS: usize = 4;

/// Appends the XADD of `event` (written at wall time `now_ms`, with `ts_ms` as its event
/// time) to `pipe`, malformed in the `malformed`th way if given.
fn push_event(
    pipe: &mut redis::Pipeline,
    options: &SimulateOptions,
    event: &SimEvent,
    ts_ms: u64,
    malformed: Option<usize>,
) {
    let customer_id = options.customer_id(event.customer);
    // An event without a customer ID (malformed) has no partition: the first one.
    let partition = match malformed {
        Some(1) => 0,
        _ => options.partitions.of(&customer_id),
    };
    let cmd = pipe
        .cmd("XADD")
        .arg(options.partitions.stream(&options.stream, partition));
    if options.max_len > 0 {
        cmd.arg("MAXLEN").arg("~").arg(options.max_len);
    }
    cmd.arg("*");
    if malformed != Some(1) {
        cmd.arg("customer_id").arg(customer_id);
    }
    let kind = match malformed {
        Some(2) => "purchace",
        _ => event.activity.event_type(),
    };
    cmd.arg("type").arg(kind).arg("ts").arg(ts_ms);
    let cents = match event.activity {
        Activity::Purchase { cents } | Activity::Refund { cents } => cents,
        // A malformed amount needs an amount to spoil.
        _ if matches!(malformed, Some(0 | 3)) => 1_000,
        Activity::Feedback { score } => {
            cmd.arg("score").arg(score);
            return;
        }
        Activity::Profile {
            region,
            age_band,
            gender,
            channel,
            birthday: (month, day),
        } => {
            cmd.arg("region")
                .arg(REGIONS[usize::from(region)])
                .arg("age_band")
                .arg(AGE_BANDS[usize::from(age_band)])
                .arg("gender")
                .arg(GENDERS[usize::from(gender)])
                .arg("channel")
                .arg(CHANNELS[usize::from(channel)])
                .arg("birthday")
                .arg(format!("{month:02}-{day:02}"));
            return;
        }
        Activity::Visit | Activity::Complaint => return,
    };
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    match malformed {
        Some(0) => cmd.arg("amount").arg(amount.replace('.', ",")),
        Some(3) => cmd.arg("amount").arg(format!("-{amount}")),
        _ => cmd.arg("amount").arg(amount),
    };
}

/// The population of `options`, its customers arriving from `start_ms` on, as many over
/// the history (or a year when there is none) as `options.customers`.
fn population(options: &SimulateOptions, start_ms: u64) -> Result<Population, SimulateError> {
    let arrival_days = match options.history_days {
        0 => 365,
        days => days,
    };
    let arrivals_per_day = options.customers as f64 / f64::from(arrival_days);
    Ok(Population::new(
        Params::default(),
        options.seed,
        start_ms,
        arrivals_per_day,
    )?)
}

/// Writes `pipe`, reconnecting whenever Redis goes away and retrying with the daemon's
/// back-off until it is written; `false` if shutdown came first.
async fn write(
    pipe: &redis::Pipeline,
    conn: &mut Option<RedisConn>,
    connector: &mut Connector,
    shutdown: &CancellationToken,
) -> Result<bool, SimulateError> {
    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connector.connect(shutdown).await {
                Some(c) => conn.insert(c),
                None => return Ok(false),
            },
        };
        match pipe.query_async::<()>(c).await {
            Ok(()) => {
                connector.succeeded();
                return Ok(true);
            }
            // The stream key holds something else: retrying would not help.
            Err(e) if e.code() == Some("WRONGTYPE") => return Err(e.into()),
            Err(e) => {
                if connector.failed(&e) {
                    *conn = None;
                }
                if !connector.pause(shutdown).await {
                    return Ok(false);
                }
            }
        }
    }
}

/// Writes simulated events until `options.events` are written or `shutdown`. Reconnects
/// (with the daemon's back-off) whenever Redis goes away; a pipeline that failed is written
/// again, so an event may be written twice then, never lost.
pub async fn run(
    options: SimulateOptions,
    mut connector: Connector,
    shutdown: CancellationToken,
) -> Result<SimulateReport, SimulateError> {
    options.validate()?;
    let started_ms = wall_millis();
    if let Some(lockstep) = &options.lockstep {
        return lockstep::run(&options, lockstep, connector, started_ms, shutdown).await;
    }
    let history_ms = u64::from(options.history_days) * DAY_MS;
    let mut population = population(&options, started_ms.saturating_sub(history_ms))?;
    // Its own stream of draws, so that the malformed share does not change the population.
    let mut malformed_rng = StdRng::seed_from_u64(options.seed.wrapping_add(1));
    let mut malformed_turn = 0usize;
    let mut report = SimulateReport::default();
    // Where live pacing starts: (simulated time, wall instant); set when the history is done.
    let mut live_origin: Option<(u64, Instant)> = None;
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    let mut step = tokio::time::interval(STEP);
    step.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let Some(mut first) = connector.connect(&shutdown).await else {
        return Ok(report);
    };
    let resuming = options.history_days > 0
        && redis::cmd("XLEN")
            .arg(options.partitions.stream(&options.stream, 0))
            .query_async::<u64>(&mut first)
            .await?
            > 0;
    if resuming {
        // A restart (the compose stack's `up` again): the same customers, but their history
        // is in the stream already; live from here.
        let now_ms = wall_millis();
        let mut skipped = 0u64;
        while population.peek_ms() <= now_ms {
            population.next_event();
            skipped += 1;
        }
        tracing::info!(
            stream = %options.stream,
            skipped,
            "the stream has entries: not writing the history again, continuing live"
        );
    }
    let mut reader = TaskReader::new(options.respond_to.clone(), resuming, &mut first)
        .await
        .map_err(SimulateError::ReadTasks)?;
    let prefix = options.id_prefix();
    // The simulated time reached: where a task read now reaches its customer.
    let mut simulated_ms = started_ms.saturating_sub(history_ms);
    let mut conn = Some(first);
    tracing::info!(
        stream = %options.stream,
        customers = options.customers,
        history_days = options.history_days,
        rate = options.rate,
        speedup = options.speedup,
        seed = options.seed,
        "simulating customers"
    );
    // A token bucket holding at most two steps' worth: a stall (a slow Redis, a reconnect) is
    // not made up for by a burst afterwards.
    let burst = (options.rate as f64 * 2.0 * STEP.as_secs_f64()).max(1.0);
    let (mut tokens, mut refilled) = (0.0f64, Instant::now());
    while options.events == 0 || report.written() < options.events {
        tokio::select! {
            _ = step.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if let Some(c) = conn.as_mut() {
            match reader.read(c).await {
                Ok(tasks) => {
                    report.answer(&tasks, &prefix, &mut population, simulated_ms);
                }
                // Read again at the next step; the writes reconnect.
                Err(respond::ReadError::Redis(e)) => {
                    tracing::warn!(error = %e, "reading the tasks back failed");
                    if connector.failed(&e) {
                        conn = None;
                    }
                }
                Err(e @ respond::ReadError::Reply(_)) => return Err(SimulateError::ReadTasks(e)),
            }
        }
        let now = Instant::now();
        tokens = (tokens + options.rate as f64 * (now - refilled).as_secs_f64()).min(burst);
        refilled = now;
        let mut budget = tokens as u64;
        if options.events > 0 {
            budget = budget.min(options.events - report.written());
        }
        let now_ms = wall_millis();
        let mut pipe = redis::pipe();
        let mut batch = SimulateReport::default();
        while budget > 0 {
            let next_ms = population.peek_ms();
            let in_history = live_origin.is_none() && next_ms <= now_ms;
            if !in_history {
                let (origin_ms, origin) =
                    *live_origin.get_or_insert((next_ms.min(now_ms), Instant::now()));
                let simulated_now =
                    origin_ms + (origin.elapsed().as_millis() as f64 * options.speedup) as u64;
                if options.speedup > 0.0 && next_ms > simulated_now {
                    break;
                }
            }
            let event = population.next_event();
            simulated_ms = simulated_ms.max(event.ts_ms);
            let ts_ms = if in_history { event.ts_ms } else { now_ms };
            let malformed = malformed_rng
                .random_bool(f64::from(options.invalid_per_mille) / 1000.0)
                .then(|| {
                    malformed_turn += 1;
                    malformed_turn % MALFORMED_WAYS
                });
            push_event(&mut pipe, &options, &event, ts_ms, malformed);
            if malformed.is_some() {
                batch.invalid += 1;
            } else {
                batch.count(&event.activity);
            }
            if in_history {
                batch.history += 1;
            } else {
                batch.live += 1;
            }
            budget -= 1;
        }
        if batch.written() > 0 {
            if !write(&pipe, &mut conn, &mut connector, &shutdown).await? {
                break;
            }
            report.add(&batch);
            tokens -= batch.written() as f64;
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            tracing::info!(
                written = report.written(),
                history = report.history,
                live = report.live,
                invalid = report.invalid,
                customers_arrived = population.arrived(),
                customers_active = population.active(),
                tasks_read = report.tasks_read,
                tasks_answered = report.tasks_answered,
                simulated_time = %rfc3339(from_millis(population.peek_ms())),
                "simulation progress"
            );
        }
    }
    report.customers_arrived = population.arrived();
    report.customers_active = population.active();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SimulateOptions {
        SimulateOptions {
            stream: "events".into(),
            partitions: PartitionCount::ONE,
            customers: 100,
            history_days: 30,
            rate: 1000,
            speedup: 1.0,
            seed: 4,
            events: 0,
            invalid_per_mille: 1,
            max_len: 0,
            respond_to: Vec::new(),
            lockstep: None,
        }
    }

    fn args(pipe: &redis::Pipeline) -> Vec<String> {
        let packed = String::from_utf8(pipe.get_packed_pipeline()).unwrap();
        // RESP: every argument follows its "$len" line.
        let lines: Vec<&str> = packed.split("\r\n").collect();
        lines
            .windows(2)
            .filter(|w| w[0].starts_with('$'))
            .map(|w| w[1].to_string())
            .collect()
    }

    fn purchase() -> SimEvent {
        SimEvent {
            customer: 12,
            ts_ms: 1_000,
            activity: Activity::Purchase { cents: 1_999 },
        }
    }

    #[test]
    fn a_purchase_is_written_in_churnds_input_format() {
        let mut pipe = redis::pipe();
        push_event(&mut pipe, &options(), &purchase(), 1_000, None);
        assert_eq!(
            args(&pipe),
            [
                "XADD",
                "events",
                "*",
                "customer_id",
                "sim4-0000012",
                "type",
                "purchase",
                "ts",
                "1000",
                "amount",
                "19.99"
            ]
        );
    }

    #[test]
    fn each_malformed_way_spoils_one_field_and_trimming_is_approximate() {
        let spoiled = |way| {
            let mut pipe = redis::pipe();
            let options = SimulateOptions {
                max_len: 500,
                ..options()
            };
            push_event(&mut pipe, &options, &purchase(), 1_000, Some(way));
            args(&pipe)
        };
        assert!(spoiled(0).contains(&"19,99".to_string()));
        assert!(!spoiled(1).contains(&"customer_id".to_string()));
        assert!(spoiled(2).contains(&"purchace".to_string()));
        assert!(spoiled(3).contains(&"-19.99".to_string()));
        assert_eq!(spoiled(0)[2..5], ["MAXLEN", "~", "500"]);
    }

    #[test]
    fn with_partitions_each_event_goes_to_its_customers_partition_stream() {
        let options = SimulateOptions {
            partitions: PartitionCount::new(16).unwrap(),
            ..options()
        };
        let written = |way| {
            let mut pipe = redis::pipe();
            push_event(&mut pipe, &options, &purchase(), 1_000, way);
            args(&pipe)[1].clone()
        };
        let partition = crate::partition::PartitionCount::new(16)
            .unwrap()
            .of("sim4-0000012");
        assert_eq!(written(None), format!("events:{{{partition}}}"));
        assert_eq!(written(Some(1)), "events:{0}", "no customer ID: the first");
    }

    #[test]
    fn options_are_checked_by_name() {
        let name = |o: SimulateOptions| match o.validate() {
            Err(SimulateError::Option { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            name(SimulateOptions {
                rate: 0,
                ..options()
            }),
            "rate"
        );
        assert_eq!(
            name(SimulateOptions {
                customers: 0,
                ..options()
            }),
            "customers"
        );
        assert_eq!(
            name(SimulateOptions {
                speedup: -1.0,
                ..options()
            }),
            "speedup"
        );
        assert_eq!(
            name(SimulateOptions {
                invalid_per_mille: 1001,
                ..options()
            }),
            "invalid_per_mille"
        );
        let lockstep = Some(Lockstep {
            group: "churnd".into(),
            day_timeout: Duration::from_secs(1),
        });
        assert_eq!(
            name(SimulateOptions {
                lockstep: lockstep.clone(),
                ..options()
            }),
            "lockstep",
            "lockstep without --respond-to"
        );
        assert_eq!(
            name(SimulateOptions {
                lockstep,
                history_days: 0,
                respond_to: vec!["churn:winback".into()],
                ..options()
            }),
            "history_days"
        );
    }
}
