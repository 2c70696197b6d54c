//! `churnd-bench cluster`: what the one output stream costs on a Redis Cluster. With
//! `partitions.count` = P the input streams spread over the nodes by their hash tags, but
//! every task of every partition goes to one `churn:winback` (one slot, so one node): is that
//! node the limit, or would output streams per partition be needed?
//!
//! A round starts `--nodes` cluster-enabled `redis-server`s (no persistence, no replicas),
//! joins them with `redis-cli --cluster create`, pre-loads the P partition streams with the
//! throughput benchmark's event mix (each customer's events in its partition; event times
//! spread over the `--history-days` before now, 365 by default: a backfill, in which most
//! customers lapse and get a win-back task, the most output there is), resets every node's
//! command statistics (`CONFIG RESETSTAT`), then runs the daemon in-process (`redis.mode =
//! "cluster"`, `partitions.count` = P, defaults otherwise) from start until every partition's
//! group has `lag` and `pending` 0. The win-back budgets are lifted, so every candidate gets
//! a task. Then the same on one standalone server with the same P
//! partition streams: the baseline. It prints both rates and their ratio, and per node the
//! Redis time its commands took (the sum of `INFO commandstats` usec), of which the effects
//! script (`EVALSHA`, the task and dead-letter writes), with the node of the task stream
//! marked; and the ceiling of the hot slot: tasks written per second of `EVALSHA` time on
//! that node, what it could take with a whole core for the script alone.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio_util::sync::CancellationToken;

use churnd::config::{RedisMode, Settings};
use churnd::daemon;
use churnd::partition::PartitionCount;
use churnd::source::commit::written_group;
use churnd::source::lag::group_info;

use crate::machine::load_average;
use crate::redis_server::{tempfile_dir, RedisServer};
use crate::workload::{daemon_settings, preload_partitioned};

/// `churnd-bench cluster` options.
#[derive(clap::Args)]
pub struct Args {
    /// Events pre-loaded, over every partition.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct customers among them.
    #[arg(long, default_value_t = 500_000)]
    customers: usize,
    /// `partitions.count`: the input partition streams.
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// Primaries of the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Event times are spread over this many days before now (365: a backfill, with a task
    /// for most customers; 0: live traffic, hardly any).
    #[arg(long, default_value_t = 365)]
    history_days: u64,
    /// Rounds, each on new servers; the cluster and the standalone run alternate in order.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The redis-server binary to start (redis-cli is taken from the PATH).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
}

/// One daemon run: its rate and what it wrote.
struct Run {
    rate: f64,
    tasks: u64,
}

pub async fn cluster(args: Args) -> Result<()> {
    let p = PartitionCount::new(args.partitions).context("--partitions must be 1 to 1024")?;
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        println!(
            "round {round} of {} (load average {})",
            args.rounds,
            load_average()
        );
        let (clustered, alone) = if round % 2 == 1 {
            (on_cluster(&args, p).await?, standalone(&args, p).await?)
        } else {
            let alone = standalone(&args, p).await?;
            (on_cluster(&args, p).await?, alone)
        };
        let ratio = clustered.rate / alone.rate;
        println!(
            "cluster / standalone: {ratio:.2} ({} and {} tasks written)",
            clustered.tasks, alone.tasks
        );
        ratios.push(ratio);
    }
    let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("cluster / standalone per round: {}", text.join(", "));
    Ok(())
}

/// The baseline: one server, the same partition streams.
async fn standalone(args: &Args, p: PartitionCount) -> Result<Run> {
    let redis = RedisServer::start(&args.redis_server)?;
    let mut conn = redis.conn().await?;
    preload(&mut conn, p, args).await?;
    let settings = settings(&redis, p, RedisMode::Standalone);
    let run = daemon_run(settings, &mut conn, p).await?;
    println!(
        "standalone, {} partitions: {:.0} events/s",
        p.get(),
        run.rate
    );
    Ok(run)
}

async fn on_cluster(args: &Args, p: PartitionCount) -> Result<Run> {
    let nodes = start_cluster(args).await?;
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let mut conn = redis::cluster::ClusterClientBuilder::new(urls)
        .response_timeout(Duration::from_secs(60))
        .build()?
        .get_async_connection()
        .await?;
    preload(&mut conn, p, args).await?;
    let mut direct = Vec::new();
    for node in &nodes {
        let mut c = node.conn().await?;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut c)
            .await?;
        direct.push(c);
    }
    let settings = settings(&nodes[0], p, RedisMode::Cluster);
    let winback = settings.0.winback.stream.clone();
    let run = daemon_run(settings, &mut conn, p).await?;
    println!(
        "cluster of {} primaries, {} partitions: {:.0} events/s",
        nodes.len(),
        p.get(),
        run.rate
    );
    let streams = p.streams(&Settings::default().source.streams);
    for (i, c) in direct.iter_mut().enumerate() {
        let hot = serves(c, &winback).await;
        let mut partitions = 0;
        for s in &streams {
            partitions += usize::from(serves(c, s).await);
        }
        let (total, script) = command_seconds(c).await?;
        println!(
            "  node {i}: {partitions} partitions{}; Redis time {total:.2} s, of which EVALSHA {script:.2} s{}",
            if hot { " and the task stream" } else { "" },
            if hot && script > 0.0 {
                format!(
                    " ({:.0} tasks per second of EVALSHA: the hot slot's ceiling)",
                    run.tasks as f64 / script
                )
            } else {
                String::new()
            },
        );
    }
    Ok(run)
}

/// The daemon's settings for these runs: the benchmarks' defaults, `mode` and P partitions.
fn settings(seed: &RedisServer, p: PartitionCount, mode: RedisMode) -> (Settings, TempState) {
    let state = tempfile_dir::TempDir::new("state").expect("a temporary state directory");
    let mut settings = daemon_settings(seed, state.path());
    settings.redis.mode = mode;
    settings.partitions.count = p;
    settings.source.consumer = "bench".into();
    // Every candidate gets its task, as in a backfill before budgets: the most output.
    settings.winback.lift_budgets();
    (settings, state)
}

type TempState = tempfile_dir::TempDir;

/// Runs the daemon until every partition's group has read and acknowledged everything.
async fn daemon_run(
    (settings, _state): (Settings, TempState),
    conn: &mut impl ConnectionLike,
    p: PartitionCount,
) -> Result<Run> {
    let settings = settings.validated()?;
    let winback = settings.winback.stream.clone();
    let streams = settings.input_streams();
    let events = total_len(conn, &streams).await?;
    let listener = daemon::bind(&settings).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(daemon::run(settings, listener, shutdown.clone()));
    'wait: loop {
        if handle.is_finished() {
            bail!("the daemon stopped early: {:?}", handle.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for s in &streams {
            let reply: Option<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(s)
                .query_async(conn)
                .await
                .ok();
            // With state kept, drained is the written group at the stream's end.
            let info = reply.as_ref().and_then(|r| {
                group_info(r, &written_group("churnd")).or_else(|| group_info(r, "churnd"))
            });
            if !info.is_some_and(|g| g.lag == Some(0) && g.pending == 0) {
                continue 'wait;
            }
        }
        break;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    handle.await??;
    debug_assert_eq!(streams.len(), usize::from(p.get()));
    let tasks: u64 = redis::cmd("XLEN").arg(&winback).query_async(conn).await?;
    Ok(Run {
        rate: events as f64 / elapsed.as_secs_f64(),
        tasks,
    })
}

async fn total_len(conn: &mut impl ConnectionLike, streams: &[String]) -> Result<u64> {
    let mut n = 0;
    for s in streams {
        n += redis::cmd("XLEN").arg(s).query_async::<u64>(conn).await?;
    }
    Ok(n)
}

/// Appends `--events` events of the throughput mix over `--customers` customers, each in
/// its customer's partition stream.
async fn preload(conn: &mut impl ConnectionLike, p: PartitionCount, args: &Args) -> Result<()> {
    let loading = Instant::now();
    let customers = args.customers;
    preload_partitioned(
        conn,
        p,
        args.events,
        |_, rng| rng.random_range(0..customers),
        args.history_days,
    )
    .await?;
    println!(
        "pre-loaded {} events over {} customers into {} partition streams in {:.1} s",
        args.events,
        args.customers,
        p.get(),
        loading.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts the nodes and joins them into a cluster that every node sees as ok.
async fn start_cluster(args: &Args) -> Result<Vec<RedisServer>> {
    let nodes = (0..args.nodes)
        .map(|_| RedisServer::start_cluster_node(&args.redis_server))
        .collect::<Result<Vec<_>>>()?;
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for node in &nodes {
        create.arg(node.address());
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-cli (it comes with redis-server)")?;
    if !out.status.success() {
        bail!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for node in &nodes {
        let mut c = node.conn().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await?;
            let known = format!("cluster_known_nodes:{}\r", nodes.len());
            if info.contains("cluster_state:ok") && info.contains(&known) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the cluster did not come up: {info}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

/// Whether this node serves `key`'s slot (answers rather than redirecting).
async fn serves(c: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(c)
        .await
        .is_ok()
}

/// Seconds the node's commands took since the last `CONFIG RESETSTAT`: all of them, and
/// `EVALSHA` alone.
async fn command_seconds(c: &mut MultiplexedConnection) -> Result<(f64, f64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let (mut total, mut script) = (0u64, 0u64);
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let usec = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("usec="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total += usec;
        if name == "evalsha" {
            script += usec;
        }
    }
    Ok((total as f64 / 1e6, script as f64 / 1e6))
}
