//! `churnd-bench throughput`: events per second of the daemon against a bare consumer that
//! only reads the same stream (the Redis limit on this machine).
//!
//! Each run makes `--rounds` rounds (3 by default). A round starts its own `redis-server` on a
//! free port (no persistence), pre-loads the stream (70 % purchases, 20 % visits, 5 % refunds,
//! 5 % complaints; IDs of 12–24 bytes; event times spread evenly over the `--history-days`
//! before now, in stream order: all "now" by default), then times the two consumers below, in
//! turn (the bare consumer first in odd rounds, churnd first in even ones), and prints their
//! rates and ratio. The run ends with the median ratio and the range of each rate over the
//! rounds:
//!
//! 1. **bare consumer** (the Redis limit): one consumer group read with `XREADGROUP COUNT
//!    1000 NOACK` (`--bare noack`, the default: no pending entries list, nothing
//!    acknowledged), or with each batch acknowledged by one `XACK` sent in the same pipeline
//!    as the next read (`--bare ack`; one round trip per batch either way), the reply parsed
//!    into entries as churnd parses it, nothing else;
//! 2. **churnd**: the daemon in-process with default settings (wall clock unless `--clock
//!    event`, snapshots every 10 s) except a private group, a temporary `state.dir` and the
//!    shipped model, timed from start until it reports the stream's last entry processed and
//!    its tasks and dead letters written (`Observers::with_written`). With state kept churnd
//!    reads by position (`XREAD`, the same entries and replies as the bare consumer's read)
//!    and commits positions with snapshots (`src/source/commit.rs`). The program then prints
//!    what churnd wrote (tasks, control-group tasks, dead letters).
//!
//! In a backfill, where most entries raise a task, the sink's writes are the slowest stage
//! (see `src/sink/calls.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use churnd::config::{ClockMode, Settings};
use churnd::daemon;
use churnd::event::EntryId;
use tokio::sync::watch;

use crate::bare::BareConsumer;
use crate::http_probe::{family_total, http_get};
use crate::redis_server::{tempfile_dir, RedisServer};
use crate::workload::{daemon_settings, preload, STREAM};

/// `churnd-bench throughput` options.
#[derive(clap::Args)]
pub struct Args {
    /// Events pre-loaded into the stream.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Distinct customers among them.
    #[arg(long, default_value_t = 1_000_000)]
    customers: usize,
    /// Entries per read (XREADGROUP COUNT), for both consumers.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Event times are spread over this many days before now. 0 (the default): live
    /// traffic, every event happens now. 365: a backfill of a year of history, in which
    /// most customers lapse, so many win-back tasks are written (and under
    /// `--clock event` every silence check of the year is made).
    #[arg(long, default_value_t = 0)]
    history_days: u64,
    /// The daemon's clock: `wall` (the default, as in production: silence is checked as
    /// real time passes, so hardly during the run) or `event` (a replay: the event time
    /// the stream covers passes during the run, with every silence check it implies).
    #[arg(long, value_enum, default_value = "wall")]
    clock: ClockArg,
    /// Rounds, each on a new redis-server with the stream loaded afresh; the order of the
    /// two consumers alternates from round to round. The VM's speed moves between runs by
    /// more than the code does, so the ratio is reported per round and as the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The bare consumer's reads: `noack` (`XREADGROUP … NOACK`, the fastest read of a
    /// group: the baseline) or `ack` (an `XACK` per batch, pipelined with the next
    /// read).
    #[arg(long, value_enum, default_value = "noack")]
    bare: BareArg,
    /// The redis-server binary to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BareArg {
    Noack,
    Ack,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ClockArg {
    Wall,
    Event,
}

impl From<ClockArg> for ClockMode {
    fn from(clock: ClockArg) -> Self {
        match clock {
            ClockArg::Wall => ClockMode::Wall,
            ClockArg::Event => ClockMode::Event,
        }
    }
}

/// Reads the whole stream with its own group, with `NOACK` or acknowledging every entry
/// after reading it (one XACK per batch), and doing nothing else. Returns the time it took
/// (and prints it).
async fn bare_consumer(
    conn: &mut MultiplexedConnection,
    events: usize,
    batch: usize,
    bare: BareArg,
) -> Result<Duration> {
    let mut consumer = BareConsumer::create(conn, STREAM, "0", batch, None).await?;
    if bare == BareArg::Noack {
        consumer = consumer.without_acks();
    }
    let started = Instant::now();
    let mut read = 0;
    while read < events {
        let entries = consumer.next(conn).await?;
        if entries.is_empty() {
            bail!("the stream ended after {read} of {events} entries");
        }
        read += entries.len();
    }
    consumer.finish(conn).await?;
    let took = started.elapsed();
    let reads = match bare {
        BareArg::Noack => "NOACK",
        BareArg::Ack => "XACK of each batch pipelined with the next read",
    };
    println!(
        "bare consumer (XREADGROUP COUNT {batch}, {reads}): {:.2} s, {:.0} events/s",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
    Ok(took)
}

/// Runs the daemon until every entry is processed and its tasks and dead letters written
/// (the daemon's own report, [`daemon::Observers::with_written`]: with state kept, entries
/// are not acknowledged per entry, so the group's pending count no longer tells).
async fn daemon_run(
    redis: &RedisServer,
    conn: &mut MultiplexedConnection,
    events: usize,
    batch: usize,
    clock: ClockMode,
) -> Result<Duration> {
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = daemon_settings(redis, state.path());
    settings.source.streams = vec![STREAM.into()];
    settings.source.group = "churnd".into();
    settings.source.consumer = "bench".into();
    settings.source.batch_size =
        churnd::config::BatchSize::new(batch).context("--batch must be 1 to 100000")?;
    settings.clock.mode = clock;
    // Positions committed with snapshots: the same NOACK read as the bare consumer's.
    settings.source.acknowledge = churnd::config::Acknowledge::Snapshots;
    let settings = settings.validated()?;
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let last = last
        .first()
        .and_then(|(id, _)| EntryId::parse(id.as_bytes()))
        .context("the stream is empty")?;
    let (written_tx, mut written) = watch::channel(daemon::Applied::default());
    let observers = daemon::Observers::default().with_written(written_tx);
    let listener = daemon::bind(&settings).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut handle = tokio::spawn(daemon::run_observed(
        settings,
        listener,
        shutdown.clone(),
        observers,
    ));
    tokio::select! {
        done = written.wait_for(|w| w.positions.first().is_some_and(|&p| p >= last)) => {
            done.context("the daemon stopped publishing")?;
        }
        stopped = &mut handle => bail!("the daemon stopped early: {stopped:?}"),
    }
    let elapsed = started.elapsed();
    // What the engine did besides applying events: where a backfill's time goes.
    let (_, metrics) = http_get(addr, "/metrics").await?;
    shutdown.cancel();
    handle.await??;
    let defaults = Settings::default();
    let mut written = Vec::new();
    for stream in [
        &defaults.winback.stream,
        &defaults.winback.control_stream,
        &defaults.dead_letter.stream,
    ] {
        let len: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
        written.push(format!("{len} in {stream}"));
    }
    println!(
        "churnd (start to every entry processed and its effects written): {:.2} s, {:.0} events/s; it wrote {}",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        written.join(", ")
    );
    let total = |family: &str| family_total(&metrics, family);
    println!(
        "  silence checks {:.0}, win-back candidates held back by budgets {:.0}, tasks not written while catching up {:.0} (and {:.0} expired)",
        total("churnd_silence_rescores_total"),
        total("churnd_winback_candidates_held_back_total"),
        total("churnd_tasks_held_back_total"),
        total("churnd_tasks_expired_total"),
    );
    Ok(elapsed)
}

/// What one round measured.
struct Round {
    bare_rate: f64,
    churnd_rate: f64,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.churnd_rate / self.bare_rate
    }
}

pub async fn throughput(args: Args) -> Result<()> {
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        println!("round {round} of {}", args.rounds);
        // Alternating the order cancels whatever the first consumer leaves to the second.
        rounds.push(measure(&args, round % 2 == 0).await?);
    }
    if rounds.len() > 1 {
        let mut ratios: Vec<f64> = rounds.iter().map(Round::ratio).collect();
        ratios.sort_by(f64::total_cmp);
        let rates = |rate: fn(&Round) -> f64| {
            let (lo, hi) = rounds
                .iter()
                .map(rate)
                .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
            format!("{lo:.0}–{hi:.0} events/s")
        };
        println!(
            "over {} rounds: churnd / bare consumer median {:.2} (min {:.2}, max {:.2}); bare consumer {}, churnd {}",
            rounds.len(),
            median(&ratios),
            ratios[0],
            ratios[ratios.len() - 1],
            rates(|r| r.bare_rate),
            rates(|r| r.churnd_rate),
        );
    }
    Ok(())
}

/// The median of sorted, non-empty `values`.
fn median(values: &[f64]) -> f64 {
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One round: a new redis-server, the stream loaded, both consumers timed over it.
async fn measure(args: &Args, churnd_first: bool) -> Result<Round> {
    let &Args {
        events,
        customers,
        batch_size: batch,
        history_days,
        clock,
        bare,
        ..
    } = args;
    let clock = ClockMode::from(clock);
    let redis = RedisServer::start(&args.redis_server)?;
    let mut conn = redis.conn().await?;
    let loading = Instant::now();
    preload(&mut conn, events, customers, history_days).await?;
    println!(
        "pre-loaded {events} events over {customers} customers in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let (bare, churnd) = if churnd_first {
        let churnd = daemon_run(&redis, &mut conn, events, batch, clock).await?;
        (bare_consumer(&mut conn, events, batch, bare).await?, churnd)
    } else {
        let bare = bare_consumer(&mut conn, events, batch, bare).await?;
        (
            bare,
            daemon_run(&redis, &mut conn, events, batch, clock).await?,
        )
    };
    let round = Round {
        bare_rate: events as f64 / bare.as_secs_f64(),
        churnd_rate: events as f64 / churnd.as_secs_f64(),
    };
    println!("churnd / bare consumer: {:.2}", round.ratio());
    Ok(round)
}
