//! `churnd-bench replicas`: does the work per event stay the same from 1 to N replicas that
//! own partitions by leases (issue 21: events per CPU-second within 15 % from 1 to 4
//! replicas, no per-replica coordination cost on the hot path)?
//!
//! A run starts its own `redis-server` (no persistence), pre-loads `--events` events of the
//! throughput mix over `--customers` customers into the P = `--partitions` partition streams
//! `churn:events:{p}` (each customer's events in its partition; event times now by default:
//! live traffic), then starts N replicas, each a `churnd run` process of the built binary
//! (`partitions.ownership = "leases"`, `partitions.lease_ms` 10 s, snapshots every 10 s in a
//! shared `state.dir` or with `--store redis` in Redis, the defaults otherwise). The N names
//! are listed as live members before they start ([`announce`]), so each takes only its own
//! share from its first round and nothing is handed over; the run checks that no replica
//! rebalanced. The run ends when every partition is drained (nothing pending,
//! `churnd:written` at the stream's last entry: docs/redis.md), checked every 50 ms;
//! then the CPU time (user + system, /proc/<pid>/stat) of every replica process is read and
//! summed, from its start (start-up included) to that moment, and the replicas are stopped.
//! The figure is events per CPU-second over all replicas: on a shared 2-core machine wall
//! time says how busy the machine was, CPU time says what the work cost. Beside it: Redis's
//! CPU per event (`INFO cpu`, from just before the replicas start: reads, effects, lag
//! polls, heartbeats and leases, snapshots with `--store redis`), the events each replica
//! applied (`churnd_events_total{outcome="applied"}`), and the CPU each replica burns idle
//! (measured for `--idle-ms` after the drain: what a replica that finished its partitions
//! early costs while it waits for the others).
//!
//! Each round runs every replica count once, in the given order in odd rounds and reversed
//! in even ones; the ratio to one replica is taken within a round.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;

use churnd::config::{Interval, Settings};
use churnd::partition::PartitionCount;

use crate::machine::load_average;
use crate::redis_server::{tempfile_dir::TempDir, RedisServer};
use crate::replicas::{
    announce, churnd_binary, median, redis_cpu, stop_all, sum_samples, wait_streams, Fleet, Groups,
    StoreArg,
};
use crate::workload::preload_partitioned;

/// `churnd-bench replicas` options.
#[derive(clap::Args)]
pub struct Args {
    /// Events pre-loaded, over every partition.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct customers among them.
    #[arg(long, default_value_t = 300_000)]
    customers: usize,
    /// `partitions.count`.
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// Replica counts to run, each over the same input.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    replicas: Vec<usize>,
    /// Rounds; each runs every replica count on a new Redis.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Event times are spread over this many days before now (0: live traffic; 365: a
    /// backfill, with a win-back task for most customers).
    #[arg(long, default_value_t = 0)]
    history_days: u64,
    /// Where the replicas keep their snapshots.
    #[arg(long, value_enum, default_value = "dir")]
    store: StoreArg,
    /// `partitions.lease_ms`.
    #[arg(long, default_value_t = Settings::default().partitions.lease.as_millis())]
    lease_ms: u64,
    /// After the drain, how long to measure the replicas' CPU time idle.
    #[arg(long, default_value_t = 2_000)]
    idle_ms: u64,
    /// The churnd binary; default: `churnd` beside this program (`cargo build --release
    /// --bins`).
    #[arg(long)]
    churnd: Option<PathBuf>,
    /// The redis-server binary to start.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
}

/// What one run measured.
struct Run {
    replicas: usize,
    events: u64,
    /// Summed over the replicas, start to drained.
    cpu: Duration,
    wall: Duration,
    redis_cpu: f64,
    /// CPU-seconds per second of one idle replica, averaged over the replicas.
    idle: f64,
}

impl Run {
    fn per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64()
    }
}

pub async fn replicas(args: Args) -> Result<()> {
    let p = PartitionCount::new(args.partitions).context("--partitions must be 1 to 1024")?;
    let lease = Interval::try_from_millis(args.lease_ms).context("--lease-ms must be above 0")?;
    let churnd = churnd_binary(args.churnd.as_ref())?;
    if args.replicas.is_empty() || args.replicas.contains(&0) {
        bail!("--replicas: a list of counts of at least 1");
    }
    let mut rounds: Vec<Vec<Run>> = Vec::new();
    for round in 1..=args.rounds {
        println!("round {round} of {}", args.rounds);
        let mut order = args.replicas.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        let mut runs = Vec::new();
        for n in order {
            runs.push(run(&args, &churnd, p, lease, n).await?);
        }
        rounds.push(runs);
    }
    summary(&args, &rounds);
    Ok(())
}

async fn run(
    args: &Args,
    churnd: &Path,
    p: PartitionCount,
    lease: Interval,
    n: usize,
) -> Result<Run> {
    let redis = RedisServer::start(&args.redis_server)?;
    let mut conn = redis.conn().await?;
    let loading = Instant::now();
    let customers = args.customers;
    preload_partitioned(
        &mut conn,
        p,
        args.events,
        |_, rng| rng.random_range(0..customers),
        args.history_days,
    )
    .await?;
    let loaded = loading.elapsed();
    let dir = TempDir::new("replicas")?;
    let fleet = Fleet::new(
        churnd.to_path_buf(),
        &redis,
        dir.path(),
        (p, lease, args.store),
        args.customers,
    );
    let streams = fleet.streams();
    let names: Vec<String> = (0..n).map(|i| format!("replica-{i}")).collect();
    announce(&mut conn, fleet.group(), &names, lease.get()).await?;
    let load = load_average();
    let redis_before = redis_cpu(&mut conn).await?;
    let mut replicas = names
        .iter()
        .map(|name| fleet.spawn(name))
        .collect::<Result<Vec<_>>>()?;
    let wall = wait_streams(
        &mut conn,
        &streams,
        fleet.group(),
        &mut replicas,
        Groups::drained,
        Duration::from_secs(1800),
    )
    .await?;
    let cpus = replicas
        .iter()
        .map(|r| r.cpu())
        .collect::<Result<Vec<_>>>()?;
    let redis_used = redis_cpu(&mut conn).await? - redis_before;
    // Idle: what each replica burns while it has nothing to read.
    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let mut idle = 0.0;
    for (r, before) in replicas.iter().zip(&cpus) {
        idle += (r.cpu()? - *before).as_secs_f64();
    }
    let idle = idle / n as f64 / (args.idle_ms as f64 / 1000.0);
    let (mut applied, mut rebalances, mut owned) = (Vec::new(), 0.0, Vec::new());
    for r in &replicas {
        let m = r.metrics().await.unwrap_or_default();
        applied.push(sum_samples(&m, "churnd_events_total", "outcome=\"applied\"") as u64);
        rebalances += sum_samples(&m, "churnd_partition_rebalances_total", "");
        owned.push(sum_samples(&m, "churnd_partitions_owned", "") as u64);
    }
    stop_all(replicas)?;
    let events = args.events as u64;
    let cpu: Duration = cpus.iter().sum();
    let run = Run {
        replicas: n,
        events,
        cpu,
        wall,
        redis_cpu: redis_used,
        idle,
    };
    let each: Vec<String> = cpus
        .iter()
        .map(|c| format!("{:.2}", c.as_secs_f64()))
        .collect();
    println!(
        "  {n} replica(s): {:.0} events per CPU-second (CPU {:.2} s = {} s; wall {:.2} s, {:.0} events/s); Redis {:.2} µs CPU per event; partitions owned {owned:?}, events applied {applied:?} (sum {}), rebalances {rebalances}; idle {:.3} CPU-s/s per replica; pre-load {:.1} s; load average {load}",
        run.per_cpu_second(),
        cpu.as_secs_f64(),
        each.join(" + "),
        wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64(),
        redis_used * 1e6 / events as f64,
        applied.iter().sum::<u64>(),
        idle,
        loaded.as_secs_f64(),
    );
    if applied.iter().sum::<u64>() != events {
        println!("  note: the replicas report {} events applied, not {events}: entries replayed after a hand-over count twice", applied.iter().sum::<u64>());
    }
    if rebalances > 0.0 {
        println!(
            "  note: {rebalances} rebalance(s) during the run: its CPU time includes hand-overs"
        );
    }
    Ok(run)
}

/// Per replica count: events per CPU-second in each round, the median, and the median of the
/// ratios to one replica (or to the first count given) within each round.
fn summary(args: &Args, rounds: &[Vec<Run>]) {
    let base = args.replicas.iter().copied().min().unwrap_or(1);
    println!(
        "\nevents per CPU-second of all replicas, {} events, {} customers, P = {}, load average {}:",
        args.events,
        args.customers,
        args.partitions,
        load_average()
    );
    println!("| replicas | events per CPU-second, per round | median | / {base} replica(s), median (range) | wall events/s, median | Redis µs CPU per event, median | idle CPU-s/s per replica |");
    println!("|---|---|---|---|---|---|---|");
    let mut counts = args.replicas.clone();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        let of = |round: &[Run], k: usize| {
            round
                .iter()
                .find(|r| r.replicas == k)
                .map(Run::per_cpu_second)
        };
        let rates: Vec<f64> = rounds.iter().filter_map(|r| of(r, n)).collect();
        let ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(of(r, n)? / of(r, base)?))
            .collect();
        let runs: Vec<&Run> = rounds
            .iter()
            .flatten()
            .filter(|r| r.replicas == n)
            .collect();
        let wall: Vec<f64> = runs
            .iter()
            .map(|r| r.events as f64 / r.wall.as_secs_f64())
            .collect();
        let redis: Vec<f64> = runs
            .iter()
            .map(|r| r.redis_cpu * 1e6 / r.events as f64)
            .collect();
        let idle: Vec<f64> = runs.iter().map(|r| r.idle).collect();
        let text: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {n} | {} | {:.0} | {:.2} ({lo:.2}–{hi:.2}) | {:.0} | {:.2} | {:.3} |",
            text.join(", "),
            median(&rates),
            median(&ratios),
            median(&wall),
            median(&redis),
            median(&idle),
        );
    }
}
